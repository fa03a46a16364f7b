#!/usr/bin/env bash
# The main job: CRMessenger end to end on this machine. Builds what it needs (cached
# in $HOME/.cache/crmessenger): the control plane and a real node from Go modules,
# the project's image (tools/image.sh, the whatsapp-web variant). Then starts a
# local cluster with that node (root: the node runs in namespaces of its own),
# PostgreSQL and the sandboxes, installs the chart, applies examples/quickstart/ and
# plays a conversation; then keeps running until Ctrl-C. `--once` exits after the
# conversation, non-zero if anything did not arrive.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crmessenger/target}"
if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: the local cluster's node needs root (network, mount and PID namespaces); run it with sudo" >&2
  exit 2
fi
CRMESSENGER_CONTROLPLANE_BIN="$("$root/tools/build-controlplane.sh")"
export CRMESSENGER_CONTROLPLANE_BIN
CRMESSENGER_NODE_DIR="$("$root/tools/build-node.sh")"
export CRMESSENGER_NODE_DIR
"$root/tools/postgres.sh"
for tool in runc iptables; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc iptables conntrack >/dev/null; break; }
done
echo "demo.sh: building the image (tools/image.sh --variant whatsapp-web)" >&2
"$root/tools/image.sh" --variant whatsapp-web >/dev/null
export CRMESSENGER_IMAGE_ARCHIVE="$CARGO_TARGET_DIR/image/whatsapp-web-dev/crmessenger.oci.tar"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p crmessenger-demo -p crmessenger-kubectl
exec "$CARGO_TARGET_DIR/debug/crmessenger-demo" "$@"
