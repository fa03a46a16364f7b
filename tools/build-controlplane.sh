#!/usr/bin/env bash
# Builds the test control plane from Go modules into a cache outside the clone
# and prints the directory of the binaries on stdout:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#   (one Kubernetes version), kwok (a fake kubelet) and helm.
# A warm cache is reused as it is; a cold one takes 15-30 minutes on 2 cores.
#
# Cache: ${CRMESSENGER_CACHE:-$HOME/.cache/crmessenger}/controlplane/<versions>-<wrapper hash>/bin
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${CRMESSENGER_CACHE:-$HOME/.cache/crmessenger}"
wrapper_hash="$(cat "$here/versions.env" "$here"/kubernetes/go.{mod,sum} "$here"/etcd/go.{mod,sum} |
  sha256sum | cut -c1-12)"
dir="$cache_root/controlplane/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}-${wrapper_hash}"
bin="$dir/bin"
if [ -f "$dir/complete" ]; then
  echo "$bin"
  exit 0
fi

log() { echo "build-controlplane: $*" >&2; }
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
start=$SECONDS

log "kubernetes ${K8S_VERSION}: kube-apiserver kube-controller-manager kube-scheduler kubectl"
(cd "$here/kubernetes" && go build -trimpath -o "$bin/" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=${K8S_VERSION} \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} \
    -X k8s.io/component-base/version.gitTreeState=clean \
    -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION} \
    -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
log "done in $((SECONDS - start)) s; etcd ${ETCD_VERSION}"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
log "done in $((SECONDS - start)) s; kwok ${KWOK_VERSION}"
GOBIN="$bin" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
log "done in $((SECONDS - start)) s; helm ${HELM_VERSION}"
GOBIN="$bin" GOFLAGS="-buildvcs=false" go install -trimpath -ldflags "-s -w \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor} \
  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor} \
  -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
# kwok needs stages (how fake nodes and pods move through their lifecycle); use the
# "fast" set that the kwok module itself ships: nodes initialise and keep a lease,
# pods become Ready at once.
kwok_dir="$(go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo "---"
  cat "$kwok_dir/kustomize/stage/$f"
done >"$bin/kwok-stages.yaml"
log "all built in $((SECONDS - start)) s into $bin"
touch "$dir/complete"
echo "$bin"
