//! Hostile peers on a real cluster's Raft port: each is refused and logged, and the
//! cluster keeps serving writes. (Reference: ARCHITECTURE.md decision 8, "a peer that
//! fails the handshake is dropped and logged"; decision 1, frames have a size cap.)
//!
//! With TLS between members (`UpOptions::tls`): a peer without a client certificate and a
//! peer with a certificate from another CA are refused the same way.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use pgraft_core::transport::{Ack, AckStatus, Hello, DEFAULT_FRAME_CAP, PROTOCOL_VERSION};
use pgraft_testkit::{wait_until, LocalCluster, UpOptions};

/// Bytes of a handshake answer: "PGRA", version, status, node id (see pgraft-core's
/// `transport/handshake.rs`).
const ACK_LEN: usize = 4 + 2 + 1 + 8;

fn pg_config() -> PathBuf {
    std::env::var("PGRAFT_TEST_PG_CONFIGS")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_string())
        .split_whitespace()
        .next()
        .map(PathBuf::from)
        .expect("a pg_config")
}

/// A three-member cluster, taken down when dropped.
struct Cluster(LocalCluster);

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.0.down();
        let _ = std::fs::remove_dir_all(self.0.dir());
    }
}

fn up(name: &str) -> Cluster {
    up_with(name, false)
}

fn up_with(name: &str, tls: bool) -> Cluster {
    up_opts(name, tls, false)
}

fn up_opts(name: &str, tls: bool, cluster_secret: bool) -> Cluster {
    let dir = std::env::temp_dir().join(format!("pgraft-t-sec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let opts = UpOptions {
        nodes: 3,
        dir,
        pg_config: pg_config(),
        proxy_exe: PathBuf::from(env!("CARGO_BIN_EXE_pgraft-torture")),
        tls,
        cluster_secret,
        ..UpOptions::default()
    };
    Cluster(LocalCluster::up(&opts).expect("start a three-member cluster"))
}

impl Cluster {
    fn refused(&self, id: u64) -> i64 {
        let mut c = self.0.connect(id).expect("connect");
        let v: String = c
            .query_one(
                "SELECT value FROM pgraft_health_check() WHERE metric = 'refused_peer_connections'",
                &[],
            )
            .expect("health check")
            .get(0);
        v.parse().expect("a count")
    }

    /// Waits until member `id` has logged a refusal containing `needle` and counted it.
    fn wait_refusal(&self, id: u64, before: i64, needle: &str) {
        let log = self.0.node(id).expect("node").log_file.clone();
        wait_until(
            &format!("node {id} to log {needle:?}"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let logged =
                    text.lines().any(|l| l.contains("refused peer connection") && l.contains(needle));
                Ok((logged && self.refused(id) > before).then_some(()))
            },
        )
        .expect("the refusal is logged and counted");
    }

    /// The cluster still commits writes, through every member.
    fn still_serves(&self, tag: &str) {
        for id in 1..=3 {
            let ok = wait_until(
                "a write to be accepted",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    let mut c = self.0.connect(id)?;
                    Ok(c.query_one("SELECT pgraft_kv_put($1::text, 'v')", &[&format!("{tag}/{id}")])?
                        .get::<_, bool>(0)
                        .then_some(()))
                },
            );
            ok.expect("the cluster keeps serving");
        }
        let mut c = self.0.connect(2).expect("connect");
        let leader: i32 = c.query_one("SELECT pgraft_get_leader()", &[]).expect("leader").get(0);
        assert!(leader > 0);
    }

    fn dial(&self, id: u64) -> TcpStream {
        let s = TcpStream::connect_timeout(
            &self.0.node(id).expect("node").listen_socket().into(),
            Duration::from_secs(3),
        )
        .expect("dial the Raft port");
        s.set_read_timeout(Some(Duration::from_secs(15))).expect("read timeout");
        s
    }

    fn cluster_id(&self) -> String {
        self.0.state().cluster_id.clone()
    }
}

/// Reads until the peer closes; returns what came.
fn drain(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn hostile_peers_are_refused_logged_and_the_cluster_keeps_serving() {
    let c = up("hostile");
    c.still_serves("before");

    // Random bytes on the Raft port.
    let before = c.refused(1);
    let mut s = c.dial(1);
    let mut noise = vec![0u8; 4096];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let _ = s.write_all(&noise);
    let answer = drain(s);
    assert!(answer.is_empty(), "random bytes got an answer: {answer:?}");
    c.wait_refusal(1, before, "127.0.0.1");
    c.still_serves("noise");

    // A handshake with a wrong cluster id: answered "other cluster", then closed.
    let before = c.refused(2);
    let mut s = c.dial(2);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        from: 1,
        to: 2,
        cluster_id: "some-other-cluster".into(),
        address: "127.0.0.1:1".into(),
        nonce: None,
    };
    s.write_all(&hello.encode()).expect("send the hello");
    let answer = drain(s);
    assert!(answer.len() >= ACK_LEN, "no answer to a foreign hello: {answer:?}");
    let ack = Ack::decode(&answer).expect("an ack");
    assert_eq!(ack.status, AckStatus::OtherCluster);
    c.wait_refusal(2, before, "some-other-cluster");
    c.still_serves("foreign");

    // A frame above the size cap after a valid handshake: refused before reading it.
    let before = c.refused(3);
    let mut s = c.dial(3);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        from: 1,
        to: 3,
        cluster_id: c.cluster_id(),
        address: String::new(),
        nonce: None,
    };
    s.write_all(&hello.encode()).expect("send the hello");
    let mut ack = [0u8; ACK_LEN];
    s.read_exact(&mut ack).expect("read the ack");
    assert_eq!(Ack::decode(&ack).expect("an ack").status, AckStatus::Accepted);
    s.write_all(&(DEFAULT_FRAME_CAP + 1).to_be_bytes()).expect("send a frame length");
    let _ = s.write_all(&[0u8; 1024]);
    drain(s);
    c.wait_refusal(3, before, "exceeds the cap");
    c.still_serves("frame");
}

/// Completes a TLS handshake (as a client trusting the cluster's CA, presenting `client`
/// if any) on member `id`'s Raft port and sends a hello from node `from`; returns what the
/// member answered before closing, or the TLS error.
fn tls_attempt(
    c: &Cluster,
    id: u64,
    from: u64,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = c.0.tls_files(id).ca;
    for cert in CertificateDer::pem_file_iter(&ca).expect("read the CA") {
        roots.add(cert.expect("a CA certificate")).expect("add the CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .expect("read the certificate")
                .collect::<Result<_, _>>()
                .expect("certificates");
            let key = PrivateKeyDer::from_pem_file(key).expect("read the key");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
    };
    let name = ServerName::try_from("127.0.0.1").expect("a server name");
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("a TLS client");
    let mut tcp = c.dial(id);
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        from,
        to: id,
        cluster_id: c.cluster_id(),
        address: String::new(),
        nonce: None,
    };
    if let Err(e) = tls.write_all(&hello.encode()).and_then(|()| tls.flush()) {
        return format!("refused: {e}");
    }
    let mut answer = [0u8; ACK_LEN];
    match tls.read_exact(&mut answer) {
        Ok(()) => format!("answered: {:?}", Ack::decode(&answer).map(|a| a.status)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "closed without an answer".to_string(),
        Err(e) => format!("refused: {e}"),
    }
}

#[test]
fn with_tls_peers_without_a_certificate_or_from_another_ca_are_refused() {
    let c = up_with("tls", true);
    c.still_serves("before");

    // No client certificate: the member requires one.
    let before = c.refused(1);
    let r = tls_attempt(&c, 1, 3, None);
    assert!(r.starts_with("refused") || r.starts_with("closed"), "a peer without a certificate got in: {r}");
    c.wait_refusal(1, before, "TLS handshake failed");
    c.still_serves("no-cert");

    // A certificate from another CA, for the right cluster and node ids.
    let other = pgraft_testkit::TestCa::new("an attacker's CA").expect("another CA");
    let dir = c.0.dir().join("other-ca");
    let files = other.write_member_files(&dir, 1).expect("a foreign certificate");
    let before = c.refused(2);
    let r = tls_attempt(&c, 2, 1, Some((&files[0].cert, &files[0].key)));
    assert!(r.starts_with("refused") || r.starts_with("closed"), "a foreign certificate got in: {r}");
    c.wait_refusal(2, before, "TLS handshake failed");
    c.still_serves("other-ca");

    // A member's valid certificate, speaking as another node id: its certificate names
    // pgraft-node-3, not node 1.
    let own = c.0.tls_files(3);
    let before = c.refused(2);
    let r = tls_attempt(&c, 2, 1, Some((&own.cert, &own.key)));
    assert_eq!(r, "answered: Ok(NotAuthenticated)", "node 3's certificate speaking as node 1");
    c.wait_refusal(2, before, "does not name pgraft-node-1");
    c.still_serves("impostor");

    // The same certificate as the node it names is accepted (the test's client is sound).
    let r = tls_attempt(&c, 2, 3, Some((&own.cert, &own.key)));
    assert_eq!(r, "answered: Ok(Accepted)", "a member's own certificate");
}

/// With a cluster secret, a peer that offers no proof of it is answered "not authenticated"
/// and refused; the members prove it to each other and keep serving, and the views say
/// what is enforced.
#[test]
fn with_a_cluster_secret_a_peer_without_it_is_refused() {
    let c = up_opts("secret", false, true);
    c.still_serves("before");
    let mut s = c.0.connect(1).expect("connect");
    let row =
        s.query_one("SELECT enabled, peer_authentication FROM pgraft.auth_status", &[]).expect("auth_status");
    assert_eq!((row.get::<_, bool>(0), row.get::<_, String>(1)), (true, "cluster secret".to_string()));
    let before = c.refused(2);
    let mut peer = c.dial(2);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        from: 1,
        to: 2,
        cluster_id: c.cluster_id(),
        address: String::new(),
        nonce: None,
    };
    peer.write_all(&hello.encode()).expect("send the hello");
    let answer = drain(peer);
    let ack = Ack::decode(&answer).expect("an ack");
    assert_eq!(ack.status, AckStatus::NotAuthenticated);
    c.wait_refusal(2, before, "offers no proof of the cluster secret");
    c.still_serves("after");
}
