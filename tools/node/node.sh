#!/usr/bin/env bash
# One real test node: containerd (CRI, overlayfs, runc), kubelet and kube-proxy
# (iptables mode), with the CNI bridge for pods. testkit's node harness
# (testkit/src/node.rs) runs it as PID 1 of its own PID namespace, in its own mount
# namespace, inside the node's network namespace:
#
#   nsenter --net=/run/netns/NETNS unshare --mount --pid --fork --kill-child \
#     --mount-proc --propagation private bash tools/node/node.sh DIR
#
# so every process it starts (shims and containers included) dies with it, every
# mount it makes is gone with it, and every sysctl, iptables rule and route it sets
# belongs to the node's network namespace, never to the host's. DIR/node.env names
# the binaries and addresses (see the harness); everything the node writes is under
# DIR or on a tmpfs of its own mount namespace.
set -euo pipefail
dir="$1"
# shellcheck source=/dev/null
source "$dir/node.env"
export PATH="$NODE_BIN/bin:$PATH:/usr/sbin:/sbin"

# Paths the node's parts write to that are not configurable: private tmpfs
# (/var/lib/cni is libcni's cache; made here if the host has none, marked in the
# host's /run, and removed by the cleanup of the last test node).
# mkdir is the test and the creation in one step: another node starting at the
# same moment either made it (and marked it) or finds it made.
if mkdir /var/lib/cni 2>/dev/null; then
  touch /run/crmessenger-made-var-lib-cni
fi
[ -d /var/lib/cni ] || { echo "no /var/lib/cni and cannot make it" >&2; exit 1; }
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/log
mount -t tmpfs -o mode=0755 tmpfs /var/lib/cni
# The kubelet's cgroups (and so the pods') go under a root of this node's own, in
# every hierarchy; the harness removes them.
for h in /sys/fs/cgroup/*/; do mkdir -p "$h$CGROUP_ROOT"; done

# The network: no default route, the service range to an interface that drops
# what kube-proxy did not rewrite, forwarding between pods, services and the host
# link only.
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.route_localnet=1 net.bridge.bridge-nf-call-iptables=1
ip link add svc0 type ifb
ip link set svc0 up
ip route add "$SERVICE_CIDR" dev svc0

mkdir -p "$dir/containerd" "$dir/cni" "$dir/kubelet" "$dir/pod-logs" "$dir/ipam"
cat >"$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # This machine gives root no CAP_SYS_RESOURCE, so no process may lower its OOM
  # score below 0 (the kubelet asks -998 for sandboxes): bounded at containerd's own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$NODE_BIN/cni"]
    conf_dir = "$dir/cni"
    max_conf_num = 1
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
containerd --config "$dir/containerd/config.toml" >"$dir/logs/containerd.log" 2>&1 &
for _ in $(seq 100); do [ -S "$dir/containerd.sock" ] && break; sleep 0.1; done
for image in "$NODE_BIN"/images/*.oci.tar $EXTRA_IMAGES; do
  ctr --address "$dir/containerd.sock" -n k8s.io images import --no-unpack=false --all-platforms "$image" >>"$dir/logs/images.log"
done

# Pods: one bridge, addresses from host-local, a route to the service range and
# nothing else (no default route, no masquerade).
cat >"$dir/cni/10-crmessenger.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "crmessenger-test",
  "plugins": [
    { "type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": false, "ipMasq": false,
      "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$dir/ipam", "ranges": [[{ "subnet": "$POD_CIDR" }]],
                "routes": [{ "dst": "$SERVICE_CIDR" }] } },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
EOF

cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$dir/containerd.sock
address: $NODE_IP
healthzBindAddress: 127.0.0.1
healthzPort: 0
readOnlyPort: 0
port: $KUBELET_PORT
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $CA_FILE }
authorization: { mode: Webhook }
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: $dir/pod-logs
failSwapOn: false
protectKernelDefaults: false
makeIPTablesUtilChains: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: { memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%" }
localStorageCapacityIsolation: false
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
maxPods: 40
EOF
kubelet --config="$dir/kubelet/config.yaml" --kubeconfig="$KUBECONFIG" --root-dir="$dir/kubelet/root" \
  --cert-dir="$dir/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
  --node-labels="crmessenger.io/test-node=true" --v=1 >"$dir/logs/kubelet.log" 2>&1 &

cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: { kubeconfig: $KUBECONFIG }
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: { masqueradeAll: true, syncPeriod: 5s, minSyncPeriod: 0s }
conntrack: { maxPerCore: 0 }
EOF
kube-proxy --config="$dir/kube-proxy.yaml" --v=1 >"$dir/logs/kube-proxy.log" 2>&1 &

echo "node $NODE_NAME: containerd, kubelet and kube-proxy started" >&2
# One part ending ends the node (and so, as PID 1, every process in it).
wait -n
echo "node $NODE_NAME: a part exited; stopping" >&2
exit 1
