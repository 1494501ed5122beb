//! From a SQL session to the worker: requests over a Unix socket.
//!
//! The extension's background worker listens on `pgraft.sock` in the data directory
//! (PostgreSQL processes run there, so the path is relative and never too long). A session
//! connects once and keeps the connection ([`Connection`]); each call sends one request
//! and waits for the answer while checking for query cancel and statement_timeout every
//! 100 ms. There is no fixed-size slot anywhere: a request or
//! answer is as large as it needs to be, up to [`MAX_MESSAGE`], and a larger one is refused
//! with an error that says so.
//!
//! ```text
//! message = len: u32 BE | postcard(IpcRequest or IpcResponse)
//! session ── IpcRequest ──▶ worker (tokio) ── NodeHandle ──▶ member thread
//!         ◀── IpcResponse ──
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest request or answer (1 GiB, PostgreSQL's own limit for a text value).
pub const MAX_MESSAGE: usize = 1 << 30;

/// The socket's file name.
pub const SOCKET_NAME: &str = "pgraft.sock";

/// Where the worker listens, relative to the data directory: in `pg_stat_tmp`, whose
/// contents `pg_basebackup` and `pg_rewind` skip (they cannot copy a socket, and
/// `pg_rewind` fails on one).
pub const SOCKET_PATH: &str = "pg_stat_tmp/pgraft.sock";

/// Why a call to the worker failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The worker is not listening (not started, restarting, or stopped).
    #[error("the pgraft worker is not running (cannot connect to {path}: {source})")]
    NotRunning {
        /// The socket path.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The deadline passed before an answer came.
    #[error("timed out after {0:?} waiting for the pgraft worker")]
    Timeout(Duration),
    /// The connection broke, or carried something that is not an answer.
    #[error("talking to the pgraft worker failed: {0}")]
    Protocol(String),
    /// The message is larger than [`MAX_MESSAGE`].
    #[error("the request is {0} bytes, above pgraft's limit of {MAX_MESSAGE} bytes")]
    TooLarge(usize),
}

/// Encodes a message with its length prefix.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let body = postcard::to_stdvec(msg).map_err(|e| IpcError::Protocol(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(IpcError::TooLarge(body.len()));
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

/// Decodes a message body (after the length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, IpcError> {
    postcard::from_bytes(body).map_err(|e| IpcError::Protocol(format!("undecodable message: {e}")))
}

/// A session's connection to the worker, kept between calls: a call costs one write and
/// one read, not a connect and an accept as well.
///
/// The connection is taken out for the length of a call and put back only after a whole
/// answer arrived, so a call that ends any other way (a timeout, an error, a query cancel
/// raised from the check) leaves no half-read answer behind: the next call connects
/// afresh.
#[derive(Debug, Default)]
pub struct Connection {
    stream: Option<UnixStream>,
}

impl Connection {
    /// No connection yet: the first call connects.
    pub const fn new() -> Self {
        Self { stream: None }
    }

    /// Sends `req` over the socket at `path` and waits for the answer until `deadline`,
    /// calling `check` every 100 ms (the extension raises query cancel and
    /// statement_timeout from there).
    ///
    /// A kept connection that the worker closed since (it restarted) fails on the write,
    /// before the worker could read anything, so the request is sent again on a new
    /// connection; once written, it is never sent twice.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        path: &Path,
        req: &Req,
        deadline: Instant,
        check: impl FnMut(),
    ) -> Result<Resp, IpcError> {
        let bytes = encode(req)?;
        let mut s = match self.stream.take() {
            Some(mut kept) => match kept.write_all(&bytes) {
                Ok(()) => kept,
                Err(_) => send_on_new(path, &bytes)?,
            },
            None => send_on_new(path, &bytes)?,
        };
        let answer = receive(&mut s, deadline, check)?;
        self.stream = Some(s);
        Ok(answer)
    }
}

/// Sends `req` over a new connection to the socket at `path` and waits for the answer
/// until `deadline`, calling `check` every 100 ms (see [`Connection::call`]).
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    path: &Path,
    req: &Req,
    deadline: Instant,
    check: impl FnMut(),
) -> Result<Resp, IpcError> {
    Connection::new().call(path, req, deadline, check)
}

fn send_on_new(path: &Path, bytes: &[u8]) -> Result<UnixStream, IpcError> {
    let mut s = UnixStream::connect(path)
        .map_err(|source| IpcError::NotRunning { path: path.display().to_string(), source })?;
    s.set_write_timeout(Some(Duration::from_secs(30))).map_err(|e| IpcError::Protocol(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| IpcError::Protocol(e.to_string()))?;
    s.write_all(bytes).map_err(|e| IpcError::Protocol(format!("send: {e}")))?;
    Ok(s)
}

/// Reads one answer, checking every 100 ms (the socket's read timeout).
fn receive<Resp: DeserializeOwned>(
    s: &mut UnixStream,
    deadline: Instant,
    mut check: impl FnMut(),
) -> Result<Resp, IpcError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    let mut body: Vec<u8> = Vec::new();
    let mut want: Option<usize> = None;
    let started = Instant::now();
    loop {
        check();
        if let Some(n) = want {
            if body.len() == n {
                return decode(&body);
            }
        }
        if Instant::now() >= deadline {
            return Err(IpcError::Timeout(started.elapsed()));
        }
        // Read exactly one message: the length, then its body, nothing after it.
        let r = match want {
            None => s.read(&mut head[got..]),
            Some(n) => {
                let from = body.len();
                body.resize(n.min(from + 64 * 1024), 0);
                let r = s.read(&mut body[from..]);
                body.truncate(from + r.as_ref().map_or(0, |k| *k));
                r
            }
        };
        match r {
            Ok(0) => return Err(IpcError::Protocol("the worker closed the connection".into())),
            Ok(k) => {
                if want.is_none() {
                    got += k;
                    if got == 4 {
                        let n = u32::from_be_bytes(head) as usize;
                        if n > MAX_MESSAGE {
                            return Err(IpcError::TooLarge(n));
                        }
                        want = Some(n);
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IpcError::Protocol(format!("receive: {e}"))),
        }
    }
}

/// Reads one message on the worker's side.
pub async fn read_message<T: DeserializeOwned, R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<T>, IpcError> {
    use tokio::io::AsyncReadExt;
    let n = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(IpcError::Protocol(e.to_string())),
    };
    if n > MAX_MESSAGE {
        return Err(IpcError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await.map_err(|e| IpcError::Protocol(e.to_string()))?;
    decode(&body).map(Some)
}

/// Writes one message on the worker's side.
pub async fn write_message<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> Result<(), IpcError> {
    use tokio::io::AsyncWriteExt;
    let bytes = encode(msg)?;
    w.write_all(&bytes).await.map_err(|e| IpcError::Protocol(e.to_string()))?;
    w.flush().await.map_err(|e| IpcError::Protocol(e.to_string()))
}

/// A value that travels unchanged (for tests of the framing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo(pub Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_messages_round_trip_through_a_socket_with_interrupt_checks() {
        let dir = std::env::temp_dir().join(format!("pgraft-ipc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&path).expect("bind")
        };
        std::thread::spawn(move || {
            rt.block_on(async move {
                loop {
                    let (mut s, _) = listener.accept().await.expect("accept");
                    tokio::spawn(async move {
                        while let Ok(Some(Echo(v))) = read_message::<Echo, _>(&mut s).await {
                            // Answer slowly, so the client waits across several checks.
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            write_message(&mut s, &Echo(v)).await.expect("answer");
                        }
                    });
                }
            })
        });
        let big = Echo((0..3_000_000u32).map(|i| i as u8).collect());
        let mut checks = 0;
        let back: Echo =
            call(&path, &big, Instant::now() + Duration::from_secs(10), || checks += 1).expect("answer");
        assert_eq!(back, big);
        assert!(checks >= 2, "interrupts were checked {checks} times while waiting");
        let r: Result<Echo, _> =
            call(&path, &Echo(vec![1]), Instant::now() + Duration::from_millis(50), || {});
        assert!(matches!(r, Err(IpcError::Timeout(_))));
        let none: Result<Echo, _> =
            call(&dir.join("missing.sock"), &Echo(vec![]), Instant::now() + Duration::from_secs(1), || {});
        assert!(matches!(none, Err(IpcError::NotRunning { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A kept connection carries many calls; one the worker closed (a restart) is replaced
    /// on the next call, which still gets its answer; a timed-out call's late answer is
    /// never read as the next call's.
    #[test]
    fn a_kept_connection_serves_many_calls_and_is_replaced_when_closed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let dir = std::env::temp_dir().join(format!("pgraft-ipc-kept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let count = Arc::clone(&accepted);
        // Each connection answers until it gets [0] (then it closes, as a dying worker's
        // would) or [9] (answered late, after the caller's deadline).
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let closed_tx = closed_tx.clone();
                std::thread::spawn(move || loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    s.read_exact(&mut body).expect("a body");
                    let Echo(v) = decode(&body).expect("an echo");
                    if v == [9] {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    s.write_all(&encode(&Echo(v.clone())).expect("encode")).expect("answer");
                    if v == [0] {
                        drop(s);
                        closed_tx.send(()).expect("tell");
                        return;
                    }
                });
            }
        });
        let deadline = || Instant::now() + Duration::from_secs(10);
        let mut conn = Connection::new();
        for i in 1..=5u8 {
            let back: Echo = conn.call(&path, &Echo(vec![i]), deadline(), || {}).expect("an answer");
            assert_eq!(back, Echo(vec![i]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five calls on one connection");
        let back: Echo = conn.call(&path, &Echo(vec![0]), deadline(), || {}).expect("an answer");
        assert_eq!(back, Echo(vec![0]));
        closed_rx.recv_timeout(Duration::from_secs(10)).expect("the worker side closed");
        let back: Echo =
            conn.call(&path, &Echo(vec![7]), deadline(), || {}).expect("an answer after the close");
        assert_eq!(back, Echo(vec![7]));
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection after the close");
        let late: Result<Echo, _> =
            conn.call(&path, &Echo(vec![9]), Instant::now() + Duration::from_millis(50), || {});
        assert!(matches!(late, Err(IpcError::Timeout(_))), "{late:?}");
        let back: Echo = conn.call(&path, &Echo(vec![8]), deadline(), || {}).expect("an answer");
        assert_eq!(back, Echo(vec![8]), "the late answer was not taken for this one");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "the timed-out connection was not reused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
