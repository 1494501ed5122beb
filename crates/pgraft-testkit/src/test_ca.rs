//! Certificates for tests: a throwaway certificate authority that issues certificates for
//! 127.0.0.1 and `localhost`, for pgraft members (mutual TLS between peers) and for
//! PostgreSQL servers alike.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A certificate authority that lives only as long as the test.
pub struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// The files of one pgraft member, as `pgraft.ssl_*` name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTlsFiles {
    /// `pgraft.ssl_cert_file`.
    pub cert: PathBuf,
    /// `pgraft.ssl_key_file` (mode 0600).
    pub key: PathBuf,
    /// `pgraft.ssl_ca_file`.
    pub ca: PathBuf,
}

impl TestCa {
    /// A new authority named `name`.
    pub fn new(name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate().context("generate the CA key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).context("self-sign the CA")?;
        Ok(Self { cert, issuer: rcgen::Issuer::new(params, key) })
    }

    /// The authority's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `common_name`, valid for `dns_names`, 127.0.0.1 and `localhost`.
    pub fn issue(&self, common_name: &str, dns_names: &[&str]) -> Result<IssuedCert> {
        let key = rcgen::KeyPair::generate().context("generate a key")?;
        let mut names: Vec<String> = dns_names.iter().map(|s| s.to_string()).collect();
        names.push("localhost".into());
        let mut p = rcgen::CertificateParams::new(names).context("certificate parameters")?;
        p.subject_alt_names.push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        p.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let cert = p.signed_by(&key, &self.issuer).context("sign the certificate")?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes `ca.crt` and `node<id>.crt` / `node<id>.key` for members 1..=n into `dir`,
    /// each certificate naming its node id (`pgraft-node-<id>`, which members check); keys
    /// are readable by their owner only, as a server insists.
    pub fn write_member_files(&self, dir: &Path, n: u64) -> Result<Vec<MemberTlsFiles>> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let ca = dir.join("ca.crt");
        fs::write(&ca, self.pem()).with_context(|| format!("write {}", ca.display()))?;
        (1..=n)
            .map(|id| {
                let issued = self.issue(&format!("node{id}"), &[&pgraft_core::transport::node_name(id)])?;
                let files = MemberTlsFiles {
                    cert: dir.join(format!("node{id}.crt")),
                    key: dir.join(format!("node{id}.key")),
                    ca: ca.clone(),
                };
                fs::write(&files.cert, &issued.cert_pem)
                    .with_context(|| format!("write {}", files.cert.display()))?;
                fs::write(&files.key, &issued.key_pem)
                    .with_context(|| format!("write {}", files.key.display()))?;
                fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("chmod 600 {}", files.key.display()))?;
                Ok(files)
            })
            .collect()
    }
}
