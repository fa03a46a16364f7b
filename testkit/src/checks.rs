//! Small checks the end-to-end tests of every crate share: reading objects and
//! conditions, polling until something holds, a plain HTTP GET.

use crate::ControlPlane;
use serde_json::Value;
use std::future::Future;
use std::time::{Duration, Instant};

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((status, body))
}

/// `kubectl get -o json`, or None when the object does not exist (the API server
/// says NotFound). Any other failure — kubectl not running, the API server
/// erring — is retried a few times and then panics: it never reads as "gone".
pub fn get(cp: &ControlPlane, ns: &str, what: &str) -> Option<Value> {
    let mut last = String::new();
    for attempt in 0..4 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = match cp.kubectl_output(&["get", what, "-n", ns, "-o", "json"]) {
            Ok(out) => out,
            Err(e) => {
                last = format!("{e:#}");
                continue;
            }
        };
        if out.status.success() {
            match serde_json::from_slice(&out.stdout) {
                Ok(v) => return Some(v),
                Err(e) => {
                    last = format!("not JSON: {e}");
                    continue;
                }
            }
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if is_not_found(&stderr) {
            return None;
        }
        last = stderr.trim().to_string();
    }
    panic!("kubectl get {what} -n {ns} failed (not a NotFound): {last}")
}

/// Whether kubectl's error output is the API server's NotFound.
pub fn is_not_found(stderr: &str) -> bool {
    stderr.contains("(NotFound)")
}

/// The condition `type_` of an object.
pub fn condition(obj: &Value, type_: &str) -> Option<Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

/// Polls `check` until it returns Some, or panics after `secs` with `what` and the
/// last observation.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match wait_until(what, secs, check).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Polls `check` until it returns Ok, or gives up after `secs` with an error that
/// names `what` and the last observation (for programs, which report rather than panic).
pub async fn wait_until<T, F, Fut>(what: &str, secs: u64, check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(what, secs, Duration::from_millis(250), check).await
}

/// Like [`eventually`] for a check that reads memory (a fake's record, a counter)
/// instead of calling out: polled every 50 ms.
pub async fn eventually_some<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let check = || std::future::ready(check().ok_or_else(|| "not yet".to_string()));
    match poll(what, secs, Duration::from_millis(50), check).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

async fn poll<T, F, Fut>(what: &str, secs: u64, every: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() > deadline => {
                return Err(format!("timed out waiting for {what}; last: {last}"));
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
