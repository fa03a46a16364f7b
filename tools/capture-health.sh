#!/usr/bin/env bash
# Captures the objects the GitOps health checks are tested against: runs the
# end-to-end tests that reach each state with CRMESSENGER_CAPTURE_DIR set, then
# puts each object beside the Argo CD check of its kind
# (integrations/argocd/crmessenger.io/KIND/testdata/). Needs what tools/test.sh
# needs (root, the control plane and node binaries, the image).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crmessenger/target}"
CRMESSENGER_CONTROLPLANE_BIN="$(tools/build-controlplane.sh)"; export CRMESSENGER_CONTROLPLANE_BIN
CRMESSENGER_NODE_DIR="$(tools/build-node.sh)"; export CRMESSENGER_NODE_DIR
features=(--features crmessenger-connector/whatsapp-web)
cargo test -q --workspace --locked "${features[@]}" --no-run
tools/image.sh --test-build >/dev/null
export CRMESSENGER_IMAGE_ARCHIVE="$CARGO_TARGET_DIR/image/whatsapp-web-dev/crmessenger.oci.tar"
CRMESSENGER_CAPTURE_DIR="$(mktemp -d)"; export CRMESSENGER_CAPTURE_DIR
trap 'rm -rf "$CRMESSENGER_CAPTURE_DIR"' EXIT
cargo test -q --workspace --locked "${features[@]}" --test it -- plugin:: bindings::
cargo test -q --workspace --locked "${features[@]}" --test operator_chart -- the_chart_installs
cargo test -q --workspace --locked "${features[@]}" --test real_node
for file in "$CRMESSENGER_CAPTURE_DIR"/*.yaml; do
  name="$(basename "$file")"
  case "$name" in
    messengeraccount-*) kind=MessengerAccount ;;
    crmbinding-*) kind=CrmBinding ;;
    syncpolicy-*) kind=SyncPolicy ;;
  esac
  mkdir -p "integrations/argocd/crmessenger.io/$kind/testdata"
  cp "$file" "integrations/argocd/crmessenger.io/$kind/testdata/${name#*-}"
  echo "captured $kind ${name#*-}"
done
