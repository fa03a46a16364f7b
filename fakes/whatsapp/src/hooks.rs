//! Webhooks out (signed, retried until answered 200) and the server loop.

use crate::*;
use std::sync::Arc;

/// Delivers queued webhooks in order; a webhook not answered 200 is retried with
/// backoff (as Meta does, for up to 7 days) and holds the ones behind it.
pub(crate) async fn webhooks(s: Arc<Shared>) {
    loop {
        let next = s.world.lock().unwrap().hooks.front().cloned();
        let Some((body, attempts)) = next else {
            s.kick.notified().await;
            continue;
        };
        let Some(url) = s.config.webhook_url.clone() else {
            s.kick.notified().await;
            continue;
        };
        let key = {
            let mut w = s.world.lock().unwrap();
            if w.bad_signatures > 0 {
                w.bad_signatures -= 1;
                "not-the-app-secret".to_string()
            } else {
                s.config.app_secret.clone()
            }
        };
        let sig = signature(&key, body.as_bytes());
        let answer = s
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let status = answer.map(|r| r.status().as_u16()).unwrap_or(0);
        let retry = {
            let mut w = s.world.lock().unwrap();
            w.deliveries.push(Delivery { body: body.clone(), status });
            if status == 200 {
                w.hooks.pop_front();
                false
            } else {
                if let Some(front) = w.hooks.front_mut() {
                    front.1 = attempts + 1;
                }
                true
            }
        };
        if retry {
            tokio::time::sleep(Duration::from_millis(100u64 << attempts.min(6))).await;
        }
    }
}

pub(crate) async fn serve(listener: TcpListener, acceptor: Option<tokio_rustls::TlsAcceptor>, router: Router) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (router, acceptor) = (router.clone(), acceptor.clone());
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let http = hyper::server::conn::http1::Builder::new();
            let _ = match acceptor {
                Some(a) => match a.accept(tcp).await {
                    Ok(tls) => http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await,
                    Err(_) => return,
                },
                None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await,
            };
        });
    }
}
