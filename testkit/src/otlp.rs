//! An OTLP/HTTP trace receiver on loopback, for tests of trace export.

/// Starts a receiver: its base URL (for `OTEL_EXPORTER_OTLP_ENDPOINT`), and the
/// protobuf bodies posted to `/v1/traces`.
pub async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    use axum::{Router, body::Bytes, routing::post};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}
