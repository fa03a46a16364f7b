//! A port-forward of our own through the API server (no `kubectl port-forward`
//! process): a listener on 127.0.0.1 whose every connection becomes a stream to
//! the pod's port. The API server checks `pods/portforward` on each one.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An open forward; it closes when dropped.
pub struct Forward {
    /// The local end, `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards a local port to `port` of the pod `namespace/pod`, once it runs.
pub async fn open(client: Client, namespace: &str, pod: &str, port: u16) -> Result<Forward> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let p = pods.get_opt(pod).await?.with_context(|| format!("the pod {namespace}/{pod} does not exist"))?;
    let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase != "Running" {
        bail!("the pod {namespace}/{pod} is {phase}, not Running (kubectl describe pod {pod} -n {namespace})");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.context("listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let pod = pod.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut local, _)) = listener.accept().await {
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                let mut forwarder = match pods.portforward(&pod, &[port]).await {
                    Ok(f) => f,
                    Err(e) => return eprintln!("port-forward to {pod}:{port}: {e}"),
                };
                if let Some(mut remote) = forwarder.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    drop(remote);
                }
                let _ = forwarder.join().await;
            });
        }
    });
    Ok(Forward { addr, task })
}
