//! The connection probe of the server's health (see `pgraft_core::ha::judge_health`): once
//! a second the worker opens a connection to its own server and waits for the first answer
//! of the backend the postmaster starts for it.
//!
//! It sends an `SSLRequest`, the 8 bytes a client may send first, and waits for the one-byte
//! answer (`N` on a Unix socket, where PostgreSQL never offers TLS), then closes. Nobody
//! logs in and PostgreSQL logs nothing for a connection that ends before its startup
//! packet, yet the answer proves that the postmaster accepted the connection and that a
//! backend it forked ran. A postmaster that is stuck, out of processes or out of memory
//! leaves the probe waiting, which the worker judges against `pgraft.health_check_timeout`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgraft_core::ha::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// How often a probe starts.
const INTERVAL_MS: i64 = 1_000;
/// A probe still waiting after this long is abandoned (and a new one starts); the server
/// counted as unhealthy long before.
const GIVE_UP: Duration = Duration::from_secs(60);

/// Where the server listens, as the probe reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix_socket_directories`' first directory and the port: `DIR/.s.PGSQL.PORT`.
    Unix(PathBuf),
    /// No Unix socket: host and port.
    Tcp(String, u16),
}

/// The probe's state, shared with the task that runs it.
#[derive(Default)]
pub struct ConnectionProbe {
    state: Arc<Mutex<Probe>>,
}

impl ConnectionProbe {
    /// The state now.
    pub fn state(&self) -> Probe {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a probe on `rt` if none is waiting and the last one is a second old.
    pub fn maybe_start(&self, target: Target, now_ms: i64, rt: &tokio::runtime::Runtime) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let recent = s.ok_ms.is_some_and(|t| now_ms - t < INTERVAL_MS);
            if s.pending_since_ms.is_some() || recent {
                return;
            }
            s.pending_since_ms = Some(now_ms);
        }
        let state = Arc::clone(&self.state);
        rt.spawn(async move {
            let answered =
                tokio::time::timeout(GIVE_UP, ask(&target)).await.ok().and_then(Result::ok).is_some();
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.pending_since_ms = None;
            if answered {
                s.ok_ms = Some(crate::worker::now_ms());
            }
        });
    }
}

/// One probe: connect, send `SSLRequest`, read one byte.
async fn ask(target: &Target) -> std::io::Result<u8> {
    match target {
        Target::Unix(path) => exchange(tokio::net::UnixStream::connect(path).await?).await,
        Target::Tcp(host, port) => {
            exchange(tokio::net::TcpStream::connect((host.as_str(), *port)).await?).await
        }
    }
}

/// Sends `SSLRequest` on a connected stream and reads the one-byte answer.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> std::io::Result<u8> {
    let mut byte = [0u8; 1];
    s.write_all(&SSL_REQUEST).await?;
    s.read_exact(&mut byte).await?;
    Ok(byte[0])
}

/// This server's probe target: its first Unix socket directory, else `host` (the member's
/// registered address) over TCP.
pub fn target(host: &str, port: u16) -> Target {
    // SAFETY: a GUC string PostgreSQL sets at start (PGC_POSTMASTER); read on the worker's
    // main thread.
    let dirs = unsafe { crate::gucs::c_string(pgrx::pg_sys::Unix_socket_directories) };
    match dirs.split(',').map(|d| d.trim().trim_matches('"')).find(|d| !d.is_empty() && !d.starts_with('@')) {
        Some(dir) => Target::Unix(PathBuf::from(dir).join(format!(".s.PGSQL.{port}"))),
        None => Target::Tcp(host.to_string(), port),
    }
}
