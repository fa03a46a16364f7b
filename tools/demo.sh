#!/usr/bin/env bash
# The main job: CRMessenger end to end on this machine. Builds what it needs (cached
# in $HOME/.cache/crmessenger), starts a local control plane, PostgreSQL and the
# sandboxes, installs the chart, applies examples/quickstart/ and plays a
# conversation; then keeps running until Ctrl-C. `--once` exits after the
# conversation, non-zero if anything did not arrive.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crmessenger/target}"
CRMESSENGER_CONTROLPLANE_BIN="$("$root/tools/build-controlplane.sh")"
export CRMESSENGER_CONTROLPLANE_BIN
"$root/tools/postgres.sh"
cargo build --quiet --manifest-path "$root/Cargo.toml" --features crmessenger-connector/whatsapp-web \
  -p crmessenger-demo -p crmessenger-operator -p crmessenger-connector
exec "$CARGO_TARGET_DIR/debug/crmessenger-demo" "$@"
