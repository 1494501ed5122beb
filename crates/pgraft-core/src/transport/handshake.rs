//! The handshake that opens every peer connection, before any Raft message is decoded.
//!
//! ```text
//! dialer -> listener   HELLO = "PGRF" | version: u16 BE | from: u64 BE | to: u64 BE
//!                              | cluster_len: u8 | cluster_id (1..=63 bytes)
//!                              | address_len: u8 | address (the dialer's host:port, 0..=255)
//!                              | version 2 only: nonce (16 bytes)
//! listener -> dialer   ACK   = "PGRA" | version: u16 BE | status: u8 | node: u64 BE
//! status 0 accepted, 1 version unsupported, 2 other cluster, 3 not this node,
//!        4 not authenticated
//! ```
//!
//! Version 2 is the hello of a member with a cluster secret: a challenge and a proof come
//! between hello and ack (see `peer_auth.rs`). A member without one speaks version 1.
//!
//! With TLS the handshake runs inside the TLS session, after both certificates were
//! checked. A listener answers a refusal with its reason and closes; the dialer logs it.
//!
//! The dialer's address lets a member that has just been added answer its leader before
//! it has received the membership (which arrives with the first snapshot).

use tokio::io::{AsyncRead, AsyncReadExt};

use super::peer_auth::NONCE_LEN;
use crate::config::MAX_CLUSTER_ID_LEN;

/// The protocol version spoken.
pub const PROTOCOL_VERSION: u16 = 1;
/// The version of a hello that offers a proof of the cluster secret.
pub const PROTOCOL_VERSION_SECRET: u16 = 2;
const HELLO_MAGIC: &[u8; 4] = b"PGRF";
const ACK_MAGIC: &[u8; 4] = b"PGRA";
/// Bytes of a hello before the cluster id.
pub const HELLO_HEAD: usize = 4 + 2 + 8 + 8 + 1;
/// Bytes of an ack.
pub const ACK_LEN: usize = 4 + 2 + 1 + 8;

/// What a dialer announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u16,
    /// The dialing member.
    pub from: u64,
    /// The member it means to reach.
    pub to: u64,
    /// Its cluster.
    pub cluster_id: String,
    /// Where the dialer can be reached (`host:port`; may be empty).
    pub address: String,
    /// The dialer's fresh nonce, when it proves the cluster secret (version 2).
    pub nonce: Option<[u8; NONCE_LEN]>,
}

/// How a listener answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Go ahead.
    Accepted = 0,
    /// The version is not spoken here.
    VersionUnsupported = 1,
    /// The dialer belongs to another cluster.
    OtherCluster = 2,
    /// This listener is not the member the dialer wanted.
    NotThisNode = 3,
    /// The dialer did not prove the node id it claims (certificate) or the cluster secret.
    NotAuthenticated = 4,
}

impl AckStatus {
    /// What the status means, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::VersionUnsupported => "protocol version not supported",
            AckStatus::OtherCluster => "the peer belongs to another cluster",
            AckStatus::NotThisNode => "the peer is not the node that was dialed",
            AckStatus::NotAuthenticated => {
                "the peer did not prove who it is (a certificate naming its node id, or the cluster secret)"
            }
        }
    }
}

/// A listener's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Protocol version.
    pub version: u16,
    /// The verdict.
    pub status: AckStatus,
    /// The listener's node id.
    pub node: u64,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a handshake.
    #[error("malformed handshake: {0}")]
    Malformed(String),
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Hello {
    /// The bytes of the hello.
    pub fn encode(&self) -> Vec<u8> {
        let id = &self.cluster_id.as_bytes()[..self.cluster_id.len().min(255)];
        let addr = &self.address.as_bytes()[..self.address.len().min(255)];
        let mut b = HELLO_MAGIC.to_vec();
        let version = if self.nonce.is_some() { PROTOCOL_VERSION_SECRET } else { self.version };
        b.extend(version.to_be_bytes());
        b.extend(self.from.to_be_bytes());
        b.extend(self.to.to_be_bytes());
        b.push(id.len() as u8);
        b.extend(id);
        b.push(addr.len() as u8);
        b.extend(addr);
        if let Some(n) = &self.nonce {
            b.extend(n);
        }
        b
    }

    /// Checks the fixed head; returns the hello without its cluster id and the id's length.
    pub fn decode_head(head: &[u8; HELLO_HEAD]) -> Result<(Hello, usize), HandshakeError> {
        if &head[..4] != HELLO_MAGIC {
            return Err(HandshakeError::Malformed("not a pgraft peer (bad magic)".into()));
        }
        let len = head[22] as usize;
        if len == 0 || len > MAX_CLUSTER_ID_LEN {
            return Err(HandshakeError::Malformed(format!("cluster id of {len} bytes")));
        }
        let hello = Hello {
            version: be_u16(&head[4..6]),
            from: be_u64(&head[6..14]),
            to: be_u64(&head[14..22]),
            cluster_id: String::new(),
            address: String::new(),
            nonce: None,
        };
        Ok((hello, len))
    }

    /// Decodes a complete hello from bytes (the fuzz target's entry point).
    pub fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        let head: &[u8; HELLO_HEAD] = bytes
            .get(..HELLO_HEAD)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| HandshakeError::Malformed("short hello".into()))?;
        let (mut hello, len) = Self::decode_head(head)?;
        let id = bytes
            .get(HELLO_HEAD..HELLO_HEAD + len)
            .ok_or_else(|| HandshakeError::Malformed("short cluster id".into()))?;
        hello.cluster_id = String::from_utf8(id.to_vec())
            .map_err(|_| HandshakeError::Malformed("cluster id is not UTF-8".into()))?;
        let at = HELLO_HEAD + len;
        let alen =
            *bytes.get(at).ok_or_else(|| HandshakeError::Malformed("no address length".into()))? as usize;
        let addr = bytes
            .get(at + 1..at + 1 + alen)
            .ok_or_else(|| HandshakeError::Malformed("short address".into()))?;
        hello.address = String::from_utf8(addr.to_vec())
            .map_err(|_| HandshakeError::Malformed("address is not UTF-8".into()))?;
        if hello.version == PROTOCOL_VERSION_SECRET {
            let at = at + 1 + alen;
            let n = bytes
                .get(at..at + NONCE_LEN)
                .ok_or_else(|| HandshakeError::Malformed("short nonce".into()))?;
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(n);
            hello.nonce = Some(nonce);
        }
        Ok(hello)
    }

    /// Reads a hello: the fixed head, then at most 63 bytes of cluster id.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Hello, HandshakeError> {
        let mut head = [0u8; HELLO_HEAD];
        r.read_exact(&mut head).await?;
        let (mut hello, len) = Self::decode_head(&head)?;
        let mut id = vec![0u8; len + 1];
        r.read_exact(&mut id).await?;
        let alen = id.pop().unwrap_or(0) as usize;
        hello.cluster_id =
            String::from_utf8(id).map_err(|_| HandshakeError::Malformed("cluster id is not UTF-8".into()))?;
        let mut addr = vec![0u8; alen];
        r.read_exact(&mut addr).await?;
        hello.address =
            String::from_utf8(addr).map_err(|_| HandshakeError::Malformed("address is not UTF-8".into()))?;
        if hello.version == PROTOCOL_VERSION_SECRET {
            let mut nonce = [0u8; NONCE_LEN];
            r.read_exact(&mut nonce).await?;
            hello.nonce = Some(nonce);
        }
        Ok(hello)
    }

    /// The listener's verdict on this hello.
    pub fn judge(&self, cluster_id: &str, me: u64) -> AckStatus {
        if self.version != PROTOCOL_VERSION && self.version != PROTOCOL_VERSION_SECRET {
            AckStatus::VersionUnsupported
        } else if self.cluster_id != cluster_id {
            AckStatus::OtherCluster
        } else if self.to != me {
            AckStatus::NotThisNode
        } else {
            AckStatus::Accepted
        }
    }
}

impl Ack {
    /// The bytes of the ack.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = ACK_MAGIC.to_vec();
        b.extend(self.version.to_be_bytes());
        b.push(self.status as u8);
        b.extend(self.node.to_be_bytes());
        b
    }

    /// Decodes an ack.
    pub fn decode(b: &[u8]) -> Result<Ack, HandshakeError> {
        if b.len() < ACK_LEN || &b[..4] != ACK_MAGIC {
            return Err(HandshakeError::Malformed("not a pgraft handshake answer".into()));
        }
        let status = match b[6] {
            0 => AckStatus::Accepted,
            1 => AckStatus::VersionUnsupported,
            2 => AckStatus::OtherCluster,
            3 => AckStatus::NotThisNode,
            4 => AckStatus::NotAuthenticated,
            s => return Err(HandshakeError::Malformed(format!("unknown status {s}"))),
        };
        Ok(Ack { version: be_u16(&b[4..6]), status, node: be_u64(&b[7..15]) })
    }

    /// Reads the rest of an ack whose first four bytes were read.
    pub async fn read_rest<R: AsyncRead + Unpin>(magic: &[u8; 4], r: &mut R) -> Result<Ack, HandshakeError> {
        let mut b = [0u8; ACK_LEN];
        b[..4].copy_from_slice(magic);
        r.read_exact(&mut b[4..]).await?;
        Self::decode(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trip_and_judgement() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            from: 1,
            to: 2,
            cluster_id: "prod".into(),
            address: "127.0.0.1:7001".into(),
            nonce: None,
        };
        assert_eq!(Hello::decode(&h.encode()).expect("decodes"), h);
        let with_nonce = Hello { version: PROTOCOL_VERSION_SECRET, nonce: Some([7; NONCE_LEN]), ..h.clone() };
        assert_eq!(Hello::decode(&with_nonce.encode()).expect("decodes"), with_nonce);
        assert_eq!(with_nonce.judge("prod", 2), AckStatus::Accepted);
        assert_eq!(h.judge("prod", 2), AckStatus::Accepted);
        assert_eq!(h.judge("other", 2), AckStatus::OtherCluster);
        assert_eq!(h.judge("prod", 3), AckStatus::NotThisNode);
        let old = Hello { version: 0, ..h.clone() };
        assert_eq!(old.judge("prod", 2), AckStatus::VersionUnsupported);
        let a = Ack { version: PROTOCOL_VERSION, status: AckStatus::OtherCluster, node: 2 };
        assert_eq!(Ack::decode(&a.encode()).expect("decodes"), a);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(Hello::decode(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let mut long = Hello {
            version: 1,
            from: 1,
            to: 2,
            cluster_id: "x".repeat(64),
            address: String::new(),
            nonce: None,
        }
        .encode();
        assert!(Hello::decode(&long).is_err(), "a 64-byte cluster id");
        long.truncate(10);
        assert!(Hello::decode(&long).is_err());
        assert!(Ack::decode(b"PGRA\0\x01\x09\0\0\0\0\0\0\0\x01").is_err(), "unknown status");
        let mut short = Hello {
            version: PROTOCOL_VERSION_SECRET,
            from: 1,
            to: 2,
            cluster_id: "x".into(),
            address: String::new(),
            nonce: Some([1; NONCE_LEN]),
        }
        .encode();
        short.pop();
        assert!(Hello::decode(&short).is_err(), "a nonce one byte short");
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Hello::decode(&bytes);
            let _ = Ack::decode(&bytes);
        }
    }
}
