//! Starts a test control plane for people: `tools/controlplane.sh` runs this.
//! Prints how to use it and runs until interrupted; everything it started stops
//! and its directory is removed when it exits. `--node` starts a real node
//! (containerd, kubelet, kube-proxy, CoreDNS; needs root) instead of kwok's.

use crmessenger_testkit::ControlPlane;

fn main() -> anyhow::Result<()> {
    let with_node = std::env::args().skip(1).any(|a| a == "--node");
    let cp = if with_node { ControlPlane::start_with_node()? } else { ControlPlane::start()? };
    println!("control plane ready at {}", cp.server());
    if let Some(link) = cp.link() {
        println!("real node {} at {} (host end {})", cp.node_name(), link.node_ip, link.host_ip);
        println!("node dir: {}", cp.node_dir().display());
    }
    println!();
    println!("  export KUBECONFIG={}", cp.kubeconfig().display());
    println!("  export PATH={}:$PATH", cp.bin_dir().display());
    println!("  kubectl get nodes");
    println!();
    println!("component logs: {}/logs; press Ctrl-C to stop", cp.dir().display());
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx)?;
    let _ = rx.recv();
    println!("stopping");
    Ok(())
}

/// Sends on `tx` when SIGINT or SIGTERM arrives.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            let _ = tx.send(());
        })
    });
    Ok(())
}
