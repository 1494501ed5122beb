//! Mutual TLS between members (rustls), from PEM files.
//!
//! Both sides present a certificate and check the other's against the configured CA:
//! a peer without a certificate, or with one from another CA, fails the TLS handshake
//! before a single pgraft byte is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The three files of `pgraft.ssl_cert_file`, `ssl_key_file` and `ssl_ca_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This member's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificates peers must chain to (PEM).
    pub ca: PathBuf,
}

/// A TLS setup that failed; names the file, never prints key material.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup: {0}")]
pub struct TlsError(pub String);

/// Ready-made acceptor and connector for peer connections.
#[derive(Clone)]
pub struct Tls {
    /// Accepts peers, requiring a client certificate from the CA.
    pub acceptor: TlsAcceptor,
    /// Dials peers, presenting our certificate.
    pub connector: TlsConnector,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("read certificates from {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("parse certificates in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("no certificate found in {}", path.display())));
    }
    Ok(certs)
}

/// An acceptor that presents `cert` (chain) and `key` and asks clients for no certificate:
/// the HTTP endpoints' TLS, where load balancers and scrapers connect.
pub fn server_only(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("read the private key in {}: {e}", key.display())))?;
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("certificate and key in {}: {e}", cert.display())))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

impl Tls {
    /// Loads the files and builds both sides.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| TlsError(format!("read the private key in {}: {e}", files.key.display())))?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&files.ca)? {
            roots.add(ca).map_err(|e| TlsError(format!("CA certificate in {}: {e}", files.ca.display())))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError(format!("client verifier: {e}")))?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError(format!("certificate and key in {}: {e}", files.cert.display())))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError(format!("client certificate in {}: {e}", files.cert.display())))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a peer's certificate must carry: its host (an IP address or a DNS name).
    pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(host.to_string())
            .map_err(|e| TlsError(format!("{host:?} as a TLS server name: {e}")))
    }
}
