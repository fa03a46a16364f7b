//! rustls configuration: the serving identity and the client used for hooks.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsIdentity;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config serving `identity` over HTTP/1.1.
pub fn server_config(identity: &TlsIdentity) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the certificate PEM")?;
    anyhow::ensure!(!certs.is_empty(), "the certificate PEM holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).context("parsing the private key PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("building the TLS server config")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTP client for outgoing hooks: trusts the web PKI plus `extra_roots_pem`,
/// never follows redirects (a 3xx is an invalid webhook reply).
pub fn hook_client(extra_roots_pem: &[String]) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for pem in extra_roots_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.context("parsing an extra root PEM")?).context("adding an extra root")?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the hook HTTP client")
}
