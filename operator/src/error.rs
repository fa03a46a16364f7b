//! Errors of a reconcile, labelled for metrics.

/// Why a reconcile failed. The object is requeued with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object lacks something every object has (name, namespace, uid).
    #[error("malformed object: {0}")]
    Malformed(String),
    /// JSON (de)serialisation of something we built.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short, bounded label for the reconcile-errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Malformed(_) => "malformed",
            Error::Serialization(_) => "serialization",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
