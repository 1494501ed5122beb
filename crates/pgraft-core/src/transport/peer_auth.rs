//! How members prove who they are when a connection opens.
//!
//! With TLS, both certificates chain to the cluster's CA, and each must also name the node
//! id it speaks for: the DNS name `pgraft-node-<id>` in its subjectAltName
//! ([`node_name`]). A listener checks the dialer's certificate against the `from` of its
//! hello; a dialer checks the listener's against the node it dialed. A member holding a
//! valid certificate of the CA cannot speak as another node id.
//!
//! Without TLS, an optional cluster secret (`pgraft.cluster_secret`) authenticates the
//! handshake by challenge and response, in both directions; the secret never crosses the
//! wire:
//!
//! ```text
//! dialer -> listener   HELLO v2   (v1's fields, then nonce_d: 16 random bytes)
//! listener -> dialer   CHALLENGE  "PGRC" | nonce_l (16) | HMAC-SHA256(secret, "listener" | hello | nonce_l)
//!                      the dialer checks the listener knows the secret (for its own fresh
//!                      nonce_d, inside the hello) before it answers
//! dialer -> listener   PROOF      "PGRP" | HMAC-SHA256(secret, "dialer" | hello | nonce_l)
//! listener -> dialer   ACK        accepted, or 4: not authenticated
//! ```
//!
//! Each side's MAC covers the other's fresh nonce, so no recorded exchange can be replayed,
//! and the hello (cluster, from, to), so a proof for one link opens no other. A member
//! without a secret sends the version-1 hello of earlier releases. A listener with a
//! secret refuses a hello without a proof, and one without a secret refuses a hello that
//! offers one: both ends must be configured alike. The messages after the handshake are not
//! authenticated; against a peer that can rewrite the stream, use TLS.

use ring::hmac;
use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::handshake::HandshakeError;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// The shortest secret accepted: an exchange can be recorded and the secret guessed
/// offline, so it must not be short.
pub const MIN_SECRET_LEN: usize = 16;
const CHALLENGE_MAGIC: &[u8; 4] = b"PGRC";
const PROOF_MAGIC: &[u8; 4] = b"PGRP";

/// The DNS name a member's certificate carries for node `id`.
pub fn node_name(id: u64) -> String {
    format!("pgraft-node-{id}")
}

/// Whether `cert` (DER) names node `id` ([`node_name`] in its subjectAltName). The chain
/// was checked by the TLS handshake already; this checks only the name.
pub fn certificate_names(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = DnsName::try_from(node_name(id)) else { return false };
    ee.verify_is_valid_for_subject_name(&ServerName::DnsName(name)).is_ok()
}

/// Fresh random bytes for a nonce.
pub fn nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut n = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
        .map_err(|_| HandshakeError::Malformed("no random bytes for a nonce".into()))?;
    Ok(n)
}

/// The cluster secret, as an HMAC key (never printed).
#[derive(Clone)]
pub struct ClusterSecret(hmac::Key);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the cluster secret has {} bytes; it needs at least {MIN_SECRET_LEN}",
                secret.len()
            ));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    fn tag(&self, role: &[u8], hello: &[u8], nonce: &[u8; NONCE_LEN]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(role);
        ctx.update(hello);
        ctx.update(nonce);
        ctx.sign()
    }

    fn verify(&self, role: &[u8], hello: &[u8], nonce: &[u8; NONCE_LEN], mac: &[u8]) -> bool {
        let mut msg = role.to_vec();
        msg.extend_from_slice(hello);
        msg.extend_from_slice(nonce);
        hmac::verify(&self.0, &msg, mac).is_ok()
    }

    /// The listener's challenge for `hello` (its encoding).
    pub fn challenge(&self, hello: &[u8]) -> Result<Challenge, HandshakeError> {
        let nonce = nonce()?;
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(self.tag(b"listener", hello, &nonce).as_ref());
        Ok(Challenge { nonce, mac })
    }

    /// Whether the challenge proves the listener knows the secret, for this hello.
    pub fn listener_proved(&self, hello: &[u8], c: &Challenge) -> bool {
        self.verify(b"listener", hello, &c.nonce, &c.mac)
    }

    /// The dialer's proof for `hello` and the listener's challenge.
    pub fn proof(&self, hello: &[u8], c: &Challenge) -> Proof {
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(self.tag(b"dialer", hello, &c.nonce).as_ref());
        Proof { mac }
    }

    /// Whether the proof answers the challenge for this hello.
    pub fn dialer_proved(&self, hello: &[u8], c: &Challenge, p: &Proof) -> bool {
        self.verify(b"dialer", hello, &c.nonce, &p.mac)
    }
}

/// The listener's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The listener's fresh nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Its MAC over the hello and that nonce.
    pub mac: [u8; MAC_LEN],
}

/// Bytes of a challenge.
pub const CHALLENGE_LEN: usize = 4 + NONCE_LEN + MAC_LEN;
/// Bytes of a proof.
pub const PROOF_LEN: usize = 4 + MAC_LEN;

impl Challenge {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = CHALLENGE_MAGIC.to_vec();
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.mac);
        b
    }

    /// Whether a frame starting with `magic` is a challenge.
    pub fn starts(magic: &[u8; 4]) -> bool {
        magic == CHALLENGE_MAGIC
    }

    /// Decodes one from its bytes.
    pub fn decode(b: &[u8]) -> Result<Challenge, HandshakeError> {
        if b.len() < CHALLENGE_LEN || &b[..4] != CHALLENGE_MAGIC {
            return Err(HandshakeError::Malformed("not a challenge".into()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&b[4..4 + NONCE_LEN]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&b[4 + NONCE_LEN..CHALLENGE_LEN]);
        Ok(Challenge { nonce, mac })
    }

    /// Reads the rest of a challenge whose magic was read.
    pub async fn read_rest<R: AsyncRead + Unpin>(r: &mut R) -> Result<Challenge, HandshakeError> {
        let mut b = [0u8; CHALLENGE_LEN];
        b[..4].copy_from_slice(CHALLENGE_MAGIC);
        r.read_exact(&mut b[4..]).await?;
        Self::decode(&b)
    }
}

/// The dialer's answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Its MAC over the hello and the listener's nonce.
    pub mac: [u8; MAC_LEN],
}

impl Proof {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = PROOF_MAGIC.to_vec();
        b.extend_from_slice(&self.mac);
        b
    }

    /// Decodes one from its bytes.
    pub fn decode(b: &[u8]) -> Result<Proof, HandshakeError> {
        if b.len() < PROOF_LEN || &b[..4] != PROOF_MAGIC {
            return Err(HandshakeError::Malformed("not a proof of the cluster secret".into()));
        }
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&b[4..PROOF_LEN]);
        Ok(Proof { mac })
    }

    /// Reads one.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Proof, HandshakeError> {
        let mut b = [0u8; PROOF_LEN];
        r.read_exact(&mut b).await?;
        Self::decode(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_prove_the_secret_and_nothing_replays() {
        let k = ClusterSecret::new(b"0123456789abcdef-secret").expect("long enough");
        let other = ClusterSecret::new(b"another secret of the same size").expect("long enough");
        assert!(ClusterSecret::new(b"short").is_err());
        let hello = b"hello from 1 to 2, nonce_d".to_vec();
        let c = k.challenge(&hello).expect("challenge");
        assert!(k.listener_proved(&hello, &c));
        assert!(!other.listener_proved(&hello, &c), "a listener without the secret");
        assert!(!k.listener_proved(b"another hello (another nonce_d)", &c), "a replayed challenge");
        let p = k.proof(&hello, &c);
        assert!(k.dialer_proved(&hello, &c, &p));
        assert!(!k.dialer_proved(&hello, &c, &other.proof(&hello, &c)), "a dialer without the secret");
        let c2 = k.challenge(&hello).expect("a second challenge");
        assert_ne!(c.nonce, c2.nonce);
        assert!(!k.dialer_proved(&hello, &c2, &p), "a replayed proof");
        assert!(!k.dialer_proved(b"hello from 3 to 2, nonce_d", &c, &p), "a proof for another link");
        assert_eq!(Challenge::decode(&c.encode()).expect("decodes"), c);
        assert_eq!(Proof::decode(&p.encode()).expect("decodes"), p);
        assert!(Challenge::decode(b"PGRC").is_err() && Proof::decode(&c.encode()).is_err());
        assert_eq!(format!("{k:?}"), "ClusterSecret(..)");
    }
}
