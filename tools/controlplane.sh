#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on 127.0.0.1 for trying things by hand:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (one fake
# node), with kubectl and helm of the same version. Builds the binaries on first use.
# Prints the KUBECONFIG to export; Ctrl-C stops everything and removes its files
# (set CRMESSENGER_KEEP_CONTROLPLANE=1 to keep them, e.g. to read the logs).
# `--node` runs a real node instead of kwok's (needs root; tools/build-node.sh
# builds its parts on first use): pods run for real.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CRMESSENGER_CONTROLPLANE_BIN="$("$root/tools/build-controlplane.sh")"
export CRMESSENGER_CONTROLPLANE_BIN
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/crmessenger/target}"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p crmessenger-testkit --bin controlplane
exec "$CARGO_TARGET_DIR/debug/controlplane" "$@"
