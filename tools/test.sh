#!/usr/bin/env bash
# The one test command. On a cold machine it builds the Kubernetes control plane
# from Go modules into $HOME/.cache/crmessenger (15-30 min on 2 cores); on a warm one
# it reuses that cache. Then: rustfmt, clippy (warnings are errors) and every test,
# with one feature set so clippy and the tests share what they compile.
#
# Tests run under `cargo test`: one process per test binary, one control plane per
# test binary (started on first use, killed when the binary exits), one namespace
# per test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crmessenger/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Each clean clone is a new path, and incremental caches are kept per path: they
# would only pile up in the shared target directory (tens of GB), not be reused.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"

step() { echo "=== $* ($(date -u +%H:%M:%S))"; }

step "control plane binaries"
CRMESSENGER_CONTROLPLANE_BIN="$(tools/build-controlplane.sh)"
export CRMESSENGER_CONTROLPLANE_BIN
"$CRMESSENGER_CONTROLPLANE_BIN/kube-apiserver" --version

step "postgresql"
# The storage tests start their own server from the installed binaries.
tools/postgres.sh
ls -d /usr/lib/postgresql/*/bin 2>/dev/null || echo "CRMESSENGER_POSTGRES_BIN=$CRMESSENGER_POSTGRES_BIN"

step "system packages"
# Chromium checks the pages a person looks at (the amoCRM sandbox); the image tests
# (tools/ocimage/tests/image.rs) build the Containerfile with Buildah and run the
# image's binaries under runc; the real test node runs containers with runc and
# kube-proxy programs iptables (inside the node's network namespace only); tmux is
# the terminal `kubectl crmessenger login` draws its QR code in; promtool (Debian's
# prometheus package, whose service is not started) checks and unit-tests the
# chart's alert rules.
missing=()
for tool in chromium buildah runc iptables conntrack tmux; do command -v "$tool" >/dev/null || missing+=("$tool"); done
sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing the Debian packages ${missing[*]}"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v promtool >/dev/null; then
  echo "installing the Debian package prometheus (for promtool)"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
chromium --version; buildah --version; runc --version | sed -n 1p; iptables --version; promtool --version | sed -n 1p

step "node binaries"
# The real test node: kubelet, kube-proxy, containerd, CNI plugins, CoreDNS and the
# sandbox image, built from Go modules into the cache.
CRMESSENGER_NODE_DIR="$(tools/build-node.sh)"
export CRMESSENGER_NODE_DIR
"$CRMESSENGER_NODE_DIR/bin/kubelet" --version

step "cargo fmt --check"
cargo fmt --all --check

# One feature set for clippy and the tests: everything, including the optional
# WhatsApp Web adapter (off in a default build).
features=(--features crmessenger-connector/whatsapp-web)

step "cargo clippy"
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings

step "cargo test --no-run, and the image from its binaries"
cargo test --workspace --locked "${features[@]}" --no-run
# From the test build's binaries (nothing is compiled), so it is the whatsapp-web
# variant; the tests on the real node run their pods from it.
tools/image.sh --test-build
CRMESSENGER_IMAGE_ARCHIVE="$CARGO_TARGET_DIR/image/whatsapp-web-dev/crmessenger.oci.tar"
export CRMESSENGER_IMAGE_ARCHIVE

step "cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked "${features[@]}" 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1); if ($(i) ~ /^ignored/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

step "done"
