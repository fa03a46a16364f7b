#!/usr/bin/env bash
# Builds what a real test node runs, from Go modules, into a cache outside the clone,
# and prints the cache directory on stdout. It holds:
#   bin/      kubelet and kube-proxy (the control plane's Kubernetes version and wrapper
#             module), containerd, containerd-shim-runc-v2 and ctr, CoreDNS (with the
#             plugins a cluster's DNS uses and no forwarder)
#   cni/      the CNI plugins bridge, host-local, loopback and portmap
#   images/   pause.oci.tar, coredns.oci.tar and probe.oci.tar: the sandbox image,
#             CoreDNS's, and a network probe for tests (tools/node/probe),
#             written without a daemon by tools/ocimage (nothing is ever pulled)
# runc, iptables and conntrack are Debian's (tools/test.sh installs them).
# A warm cache is reused as it is; a cold one takes 5-10 minutes on 2 cores.
#
# Cache: ${CRMESSENGER_CACHE:-$HOME/.cache/crmessenger}/node/<versions>-<modules hash>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${CRMESSENGER_CACHE:-$HOME/.cache/crmessenger}"
hash="$(cat "$here/versions.env" "$here"/kubernetes/go.{mod,sum} "$here"/node/*/go.mod "$here"/node/*/go.sum \
  "$here"/node/*/*.go "$here"/node/*/Containerfile "$here"/node/*/TAG 2>/dev/null | sha256sum | cut -c1-12)"
dir="$cache_root/node/k8s-${K8S_VERSION}-${hash}"
if [ -f "$dir/complete" ]; then
  echo "$dir"
  exit 0
fi

log() { echo "build-node: $*" >&2; }
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/cni" "$dir/images"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
start=$SECONDS

log "kubernetes ${K8S_VERSION}: kubelet kube-proxy"
(cd "$here/kubernetes" && go build -trimpath -o "$dir/bin/" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} \
    -X k8s.io/component-base/version.gitTreeState=clean" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
log "done in $((SECONDS - start)) s; containerd"
containerd_version="$(cd "$here/node/containerd" && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)"
(cd "$here/node/containerd" && go build -trimpath -o "$dir/bin/" \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${containerd_version}" \
  github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  github.com/containerd/containerd/v2/cmd/ctr)
log "done in $((SECONDS - start)) s; CNI plugins"
(cd "$here/node/cni" && go build -trimpath -ldflags "-s -w" -o "$dir/cni/" \
  github.com/containernetworking/plugins/plugins/ipam/host-local \
  github.com/containernetworking/plugins/plugins/main/bridge \
  github.com/containernetworking/plugins/plugins/main/loopback \
  github.com/containernetworking/plugins/plugins/meta/portmap)
log "done in $((SECONDS - start)) s; CoreDNS and pause"
(cd "$here/node/coredns" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/coredns" .)
(cd "$here/node/pause" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/pause" .)
(cd "$here/node/probe" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/probe" .)

log "done in $((SECONDS - start)) s; images"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache_root/target}"
# As tools/image.sh builds it (optimised: it hashes and compresses).
cargo build --quiet --locked --release --manifest-path "$root/Cargo.toml" -p crmessenger-ocimage --bin ocimage
ocimage="$CARGO_TARGET_DIR/release/ocimage"
for image in pause coredns probe; do
  ctx="$dir/images/$image-context"
  mkdir -p "$ctx/rootfs"
  install -m 0755 "$dir/bin/$image" "$ctx/rootfs/$image"
  "$ocimage" --context "$ctx" --containerfile "$here/node/$image/Containerfile" --layout "$ctx/oci" \
    --archive "$dir/images/$image.oci.tar" --name "crmessenger.test/$image" --tag "$(cat "$here/node/$image/TAG")" >/dev/null
  rm -rf "$ctx"
done
log "all built in $((SECONDS - start)) s into $dir"
touch "$dir/complete"
# Earlier entries (other versions or modules) are not used again.
find "$cache_root/node" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" -exec rm -rf {} +
echo "$dir"
