//! An OTLP/HTTP trace receiver on loopback, for tests of trace export.

/// One span as the receiver decoded it: its name and its string attributes.
#[derive(Debug, Clone)]
pub struct Span {
    /// The span's name.
    pub name: String,
    /// Its attributes whose values are strings.
    pub attributes: Vec<(String, String)>,
}

impl Span {
    /// The string attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Starts a receiver that decodes what it is sent (OTLP/HTTP protobuf): its base
/// URL, and every span of every export, in the order they arrive.
pub async fn span_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Span>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let (url, mut bodies) = receiver().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(body) = bodies.recv().await {
            let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) else { continue };
            for span in request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans) {
                let attributes = span
                    .attributes
                    .into_iter()
                    .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                        Some(Value::StringValue(s)) => Some((kv.key, s)),
                        _ => None,
                    })
                    .collect();
                let _ = tx.send(Span { name: span.name, attributes });
            }
        }
    });
    (url, rx)
}

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
