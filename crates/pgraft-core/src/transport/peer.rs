//! The task that delivers messages to one peer.

use std::time::Duration;

use raft::prelude::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;

use super::{
    certificate_names, dial, node_name, write_frame, Ack, AckStatus, Challenge, ClusterSecret, Frame,
    HandshakeError, Hello, Inbound, InboundSink, Tls, TransportConfig, PROTOCOL_VERSION,
};

type Conn = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The most queued messages written to a peer before one flush.
const MAX_BATCH: usize = 256;

/// Bytes buffered before a write to the socket (larger frames go straight through).
const WRITE_BUFFER: usize = 64 * 1024;

/// Dials, handshakes, and writes queued messages; reconnects with backoff (50 ms doubling
/// to 2 s) when anything fails.
pub(super) async fn run(
    cfg: TransportConfig,
    to: u64,
    address: String,
    mut rx: Receiver<Message>,
    sink: InboundSink,
) {
    let mut backoff = Duration::from_millis(50);
    let mut logged_failure = false;
    // Whether a connection failed or broke since the task started.
    let mut reconnecting = false;
    loop {
        let conn = match connect(&cfg, to, &address).await {
            Ok(c) => {
                if logged_failure {
                    log::info!("connected to node {to} at {address}");
                }
                logged_failure = false;
                backoff = Duration::from_millis(50);
                // What was queued while the link was down (up to a backoff of 2 s of
                // heartbeats and appends) is stale too. Sent now, it made the peer answer
                // hundreds of old heartbeats at once, and raft-rs answers each heartbeat
                // reply of a lagging follower with another append of up to 1 MiB: the
                // leader's member thread was busy for seconds (a torture run). Raft sends
                // again what matters; tell it the peer was unreachable.
                if reconnecting {
                    drop_queued(&mut rx, &sink);
                }
                c
            }
            Err(e) => {
                reconnecting = true;
                if !logged_failure {
                    log::warn!("cannot reach node {to} at {address}: {e}");
                    logged_failure = true;
                }
                // Messages queued meanwhile are stale by the time we connect; raft
                // retransmits what matters. Tell it the peer is unreachable.
                drop_queued(&mut rx, &sink);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut conn = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, conn);
        while let Some(m) = rx.recv().await {
            // Everything queued goes out in one batch with one flush: under load a
            // leader's appends, heartbeats and read rounds to a peer share a write.
            let mut batch = vec![m];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut sent = Vec::with_capacity(batch.len());
            let mut failed = false;
            let mut batch = batch.into_iter();
            for m in batch.by_ref() {
                let what = (m.get_msg_type(), m.to);
                for f in Frame::split(m, cfg.frame_cap) {
                    if write_frame(&mut conn, &f).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                sent.push(what);
                if failed {
                    break;
                }
            }
            if !failed {
                failed = conn.flush().await.is_err();
            }
            if failed {
                // Nothing of the batch is known to have arrived.
                for (kind, to) in sent.into_iter().chain(batch.map(|m| (m.get_msg_type(), m.to))) {
                    report_failure(&sink, kind, to);
                }
                reconnecting = true;
                break;
            }
            for (kind, to) in sent {
                if kind == MessageType::MsgSnapshot {
                    sink(Inbound::SnapshotSent { to, ok: true });
                }
            }
        }
        if rx.is_closed() {
            return;
        }
    }
}

/// Drops every queued message, each reported as not sent.
fn drop_queued(rx: &mut Receiver<Message>, sink: &InboundSink) {
    while let Ok(m) = rx.try_recv() {
        report_failure(sink, m.get_msg_type(), m.to);
    }
}

fn report_failure(sink: &InboundSink, kind: MessageType, to: u64) {
    if kind == MessageType::MsgSnapshot {
        sink(Inbound::SnapshotSent { to, ok: false });
    }
    sink(Inbound::Unreachable(to));
}

async fn connect(cfg: &TransportConfig, to: u64, address: &str) -> Result<Conn, String> {
    let tcp = dial(address, cfg.source_ip).await.map_err(|e| e.to_string())?;
    let nonce = match cfg.secret {
        Some(_) => Some(super::peer_auth::nonce().map_err(|e| e.to_string())?),
        None => None,
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        from: cfg.node_id,
        to,
        cluster_id: cfg.cluster_id.clone(),
        address: cfg.advertise.clone(),
        nonce,
    };
    match &cfg.tls {
        Some(tls) => {
            let host = address
                .rsplit_once(':')
                .map_or(address, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = Tls::server_name(host).map_err(|e| e.to_string())?;
            let mut s = tls.connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
            let names_it = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|c| certificate_names(c, to));
            if !names_it {
                return Err(format!("the certificate at {address} does not name {}", node_name(to)));
            }
            greet(&mut s, &hello, cfg.secret.as_ref()).await?;
            Ok(Box::new(s))
        }
        None => {
            let mut s = tcp;
            greet(&mut s, &hello, cfg.secret.as_ref()).await?;
            Ok(Box::new(s))
        }
    }
}

/// Sends the hello; with a cluster secret, checks the listener's challenge proves it too
/// before answering with this member's proof; then reads the verdict.
async fn greet<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    hello: &Hello,
    secret: Option<&ClusterSecret>,
) -> Result<(), String> {
    let bytes = hello.encode();
    s.write_all(&bytes).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let answer = async {
        let mut magic = [0u8; 4];
        s.read_exact(&mut magic).await?;
        let mut proved = false;
        if let (true, Some(secret)) = (Challenge::starts(&magic), secret) {
            let challenge = Challenge::read_rest(s).await?;
            if !secret.listener_proved(&bytes, &challenge) {
                return Err(HandshakeError::Malformed(format!(
                    "node {} did not prove the cluster secret",
                    hello.to
                )));
            }
            s.write_all(&secret.proof(&bytes, &challenge).encode()).await?;
            s.flush().await?;
            s.read_exact(&mut magic).await?;
            proved = true;
        }
        let ack = Ack::read_rest(&magic, s).await?;
        // A listener that accepts without having proved the secret is not a member: it
        // would receive every message (entries included) and could drop them.
        if secret.is_some() && !proved && ack.status == AckStatus::Accepted {
            return Err(HandshakeError::Malformed(format!(
                "node {} accepted the connection without proving the cluster secret",
                hello.to
            )));
        }
        Ok(ack)
    };
    let ack = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .map_err(|_| "no handshake answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    if ack.status != AckStatus::Accepted {
        return Err(format!("node {} refused the connection: {}", ack.node, ack.status.describe()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::transport::{ClusterSecret, PROTOCOL_VERSION};

    /// A listener that answers "accepted" without a challenge does not fool a dialer that
    /// holds a cluster secret; one that proves the secret does not either when it then lies.
    #[tokio::test]
    async fn a_dialer_with_a_secret_refuses_a_listener_that_skips_the_challenge() {
        let secret = ClusterSecret::new(b"sixteen or more bytes of secret").expect("a secret");
        let hello = Hello {
            version: PROTOCOL_VERSION,
            from: 1,
            to: 2,
            cluster_id: "c".into(),
            address: String::new(),
            nonce: Some([5; 16]),
        };
        let (mut dialer, mut fake) = tokio::io::duplex(4096);
        let listener = tokio::spawn(async move {
            let mut buf = vec![0u8; hello_len()];
            fake.read_exact(&mut buf).await.expect("the hello");
            let ack = Ack { version: PROTOCOL_VERSION, status: AckStatus::Accepted, node: 2 };
            fake.write_all(&ack.encode()).await.expect("a bare ack");
            fake
        });
        let r = greet(&mut dialer, &hello.clone(), Some(&secret)).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("without proving the cluster secret")), "{r:?}");
        drop(listener.await);

        // The honest exchange, by hand: the listener proves the secret, checks the proof.
        let (mut dialer, mut honest) = tokio::io::duplex(4096);
        let key = secret.clone();
        let listener = tokio::spawn(async move {
            let mut buf = vec![0u8; hello_len()];
            honest.read_exact(&mut buf).await.expect("the hello");
            let c = key.challenge(&buf).expect("a challenge");
            honest.write_all(&c.encode()).await.expect("the challenge");
            let p = crate::transport::Proof::read(&mut honest).await.expect("the proof");
            let ok = key.dialer_proved(&buf, &c, &p);
            let status = if ok { AckStatus::Accepted } else { AckStatus::NotAuthenticated };
            honest
                .write_all(&Ack { version: PROTOCOL_VERSION, status, node: 2 }.encode())
                .await
                .expect("ack");
            ok
        });
        greet(&mut dialer, &hello, Some(&secret)).await.expect("an honest listener");
        assert!(listener.await.expect("the listener"), "the dialer's proof was wrong");
    }

    fn hello_len() -> usize {
        crate::transport::handshake::HELLO_HEAD + 1 + 1 + 16
    }
}
