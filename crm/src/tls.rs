//! HTTPS clients that trust the public web PKI plus, optionally, one extra CA (a
//! private CRM host, or a test fake), using rustls with the ring provider.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// A reqwest client builder whose TLS trusts the web PKI and `extra_ca_pem`.
pub fn client_builder(extra_ca_pem: Option<&str>) -> Result<reqwest::ClientBuilder, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("extra CA certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("extra CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("extra CA certificate: no PEM certificate found".into());
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(50)))
}
