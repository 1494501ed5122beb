//! TLS for replication connections, with libpq's `sslmode` semantics (rustls, ring).
//!
//! | sslmode | certificate checks |
//! |---|---|
//! | `require` | none (encryption only), as libpq without a root certificate file |
//! | `verify-ca` | chains to `sslrootcert` (default `~/.postgresql/root.crt`) |
//! | `verify-full` | as `verify-ca`, and names the host (DNS name or IP address) |

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::{Config, SslMode};
use crate::error::{Error, Result};

/// The connector and the name to present (SNI) for one connection.
pub(crate) fn connector(cfg: &Config) -> Result<(TlsConnector, ServerName<'static>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match cfg.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(root_store(cfg)?);
            let inner = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| Error::Tls(format!("certificate verifier: {e}")))?;
            if cfg.sslmode == SslMode::VerifyFull {
                inner
            } else {
                Arc::new(ChainOnly { inner })
            }
        }
        _ => Arc::new(NoCheck { provider: Arc::clone(&provider) }),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from(cfg.host.clone())
        .map_err(|e| Error::Tls(format!("{:?} as a TLS server name: {e}", cfg.host)))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

fn root_store(cfg: &Config) -> Result<RootCertStore> {
    let path = match &cfg.sslrootcert {
        Some(p) => p.clone(),
        None => {
            let home = std::env::var("HOME").map_err(|_| {
                Error::Tls("no sslrootcert given and HOME is not set to find ~/.postgresql/root.crt".into())
            })?;
            PathBuf::from(home).join(".postgresql/root.crt")
        }
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| Error::Tls(format!("read root certificates from {}: {e}", path.display())))?;
    for c in certs {
        let c = c.map_err(|e| Error::Tls(format!("parse {}: {e}", path.display())))?;
        roots.add(c).map_err(|e| Error::Tls(format!("root certificate in {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", path.display())));
    }
    Ok(roots)
}

/// `verify-ca`: the chain must verify; a name mismatch is accepted (rustls checks the
/// chain before the name, so a name error means the chain was good).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `require` (and `prefer`): encryption without checking who holds the certificate, as
/// libpq does in these modes. The handshake signatures are still verified.
#[derive(Debug)]
struct NoCheck {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
