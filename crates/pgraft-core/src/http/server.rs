//! The HTTP/1.x listener of the health and metrics endpoints.
//!
//! Built for load-balancer checks and scrapes, and for clients that misbehave: one request
//! per connection (every answer closes it), a head of at most [`MAX_HEAD`] bytes read
//! within [`HEAD_TIMEOUT`] (a slowloris client gets 408 and is dropped), at most
//! [`MAX_CONNECTIONS`] at once (more get 503 at once), and a handler that only copies
//! what the worker published: no request ever waits for the Raft thread or PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::request::{base64, head_end, parse_head, HeadError, HttpRequest, Method, MAX_HEAD};

/// How long a client has to send its request head (and the TLS handshake before it).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 256;

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The address to bind.
    pub listen: SocketAddr,
    /// TLS with this certificate chain and key (PEM), when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `user:password` every request must present as HTTP basic auth, when set.
    pub basic_auth: Option<String>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body (left out for `HEAD`).
    pub body: String,
}

impl HttpResponse {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        HttpResponse { status, content_type: "application/json", body: format!("{body}\n") }
    }

    /// A JSON answer `{"error": why}`.
    pub fn error(status: u16, why: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": why }))
    }
}

/// What the server answers a request with (it must not block).
pub type Handler = Arc<dyn Fn(&HttpRequest) -> HttpResponse + Send + Sync>;

/// Counters of the listener itself.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Requests answered by the handler.
    pub answered: AtomicU64,
    /// Requests refused before the handler: bad heads, wrong credentials, methods not
    /// served, timeouts, overload.
    pub refused: AtomicU64,
}

/// A running listener; dropping it stops it.
pub struct HttpServer {
    /// The address bound (port 0 resolved).
    pub local_addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<HttpStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    /// Binds and starts serving on `rt`.
    pub fn start(
        cfg: HttpConfig,
        handler: Handler,
        rt: &tokio::runtime::Handle,
    ) -> Result<HttpServer, String> {
        let tls = match &cfg.tls {
            Some((cert, key)) => {
                Some(crate::transport::tls_server_only(cert, key).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let std_listener = std::net::TcpListener::bind(cfg.listen)
            .map_err(|e| format!("HTTP listen on {}: {e}", cfg.listen))?;
        std_listener.set_nonblocking(true).map_err(|e| format!("HTTP listener: {e}"))?;
        let local_addr = std_listener.local_addr().map_err(|e| format!("HTTP listener: {e}"))?;
        let listener = {
            let _g = rt.enter();
            TcpListener::from_std(std_listener).map_err(|e| format!("HTTP listener: {e}"))?
        };
        let stats = Arc::new(HttpStats::default());
        let ctx = Arc::new(Ctx {
            handler,
            auth: cfg.basic_auth.map(|a| format!("Basic {}", base64(a.as_bytes()))),
            tls,
            stats: Arc::clone(&stats),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        });
        let task = rt.spawn(accept_loop(listener, ctx));
        Ok(HttpServer { local_addr, stats, task })
    }
}

struct Ctx {
    handler: Handler,
    /// The whole `Authorization` value expected, when auth is on.
    auth: Option<String>,
    tls: Option<TlsAcceptor>,
    stats: Arc<HttpStats>,
    slots: Arc<tokio::sync::Semaphore>,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                log::debug!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let Ok(permit) = Arc::clone(&ctx.slots).try_acquire_owned() else {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let r = HttpResponse::error(503, "too many connections to the health endpoint");
                let _ =
                    tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut stream, &r, false, &[])).await;
            });
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            match &ctx.tls {
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(tls, &ctx).await,
                        _ => {
                            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                None => serve(stream, &ctx).await,
            }
        });
    }
}

/// Reads one head, answers it, closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, ctx: &Ctx) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut s)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return, // closed before a full head: nothing to answer
        Ok(Err(e)) => {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            let r = HttpResponse::error(if e == HeadError::TooLarge { 431 } else { 400 }, &e.to_string());
            let _ = tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut s, &r, false, &[])).await;
            return;
        }
        Err(_) => {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            let r = HttpResponse::error(408, "the request head did not arrive in time");
            let _ = tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut s, &r, false, &[])).await;
            return;
        }
    };
    let (response, head_only, extra): (HttpResponse, bool, &[(&str, &str)]) = match parse_head(&head) {
        Err(e) => {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            (
                HttpResponse::error(if e == HeadError::TooLarge { 431 } else { 400 }, &e.to_string()),
                false,
                &[],
            )
        }
        Ok(req) => {
            if ctx.auth.as_deref().is_some_and(|want| !same(req.authorization.as_deref().unwrap_or(""), want))
            {
                ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                (
                    HttpResponse::error(401, "authentication required"),
                    false,
                    &[("WWW-Authenticate", "Basic realm=\"pgraft\"")],
                )
            } else if let Method::Other(m) = &req.method {
                ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                let why = format!("method {m} is not served: use GET, HEAD or OPTIONS");
                (HttpResponse::error(405, &why), false, &[("Allow", "GET, HEAD, OPTIONS")])
            } else {
                ctx.stats.answered.fetch_add(1, Ordering::Relaxed);
                let extra: &[(&str, &str)] =
                    if req.method == Method::Options { &[("Allow", "GET, HEAD, OPTIONS")] } else { &[] };
                ((ctx.handler)(&req), req.method == Method::Head, extra)
            }
        }
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut s, &response, head_only, extra)).await;
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bytes through the blank line; `None` if the client closed first.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<Vec<u8>>, HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.map_err(|_| HeadError::Malformed("the connection failed"))?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    r: &HttpResponse,
    head_only: bool,
    extra: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&r.body);
    }
    s.write_all(out.as_bytes()).await?;
    s.flush().await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn server(auth: Option<&str>) -> (tokio::runtime::Runtime, HttpServer) {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let handler: Handler = Arc::new(|r: &HttpRequest| match r.path.as_str() {
            "/ok" => HttpResponse::json(200, &serde_json::json!({"lag": r.param("lag")})),
            _ => HttpResponse::error(404, "unknown"),
        });
        let cfg = HttpConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls: None,
            basic_auth: auth.map(str::to_string),
        };
        let s = HttpServer::start(cfg, handler, rt.handle()).expect("start");
        (rt, s)
    }

    fn ask(addr: SocketAddr, raw: &[u8]) -> String {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        c.write_all(raw).expect("write");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_and_refusals() {
        let (_rt, s) = server(None);
        let a = ask(s.local_addr, b"GET /ok?lag=5 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n") && a.ends_with("{\"lag\":\"5\"}\n"), "{a}");
        let a = ask(s.local_addr, b"HEAD /ok HTTP/1.1\r\n\r\n");
        assert!(
            a.starts_with("HTTP/1.1 200 OK\r\n")
                && a.contains("Content-Length: 13\r\n")
                && a.ends_with("\r\n\r\n"),
            "{a}"
        );
        let a = ask(s.local_addr, b"OPTIONS /nope HTTP/1.1\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 404 ") && a.contains("Allow: GET, HEAD, OPTIONS"), "{a}");
        let a = ask(s.local_addr, b"POST /ok HTTP/1.1\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 405 ") && a.contains("Allow: GET"), "{a}");
        let a = ask(s.local_addr, b"\x16\x03\x01garbage\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 400 "), "{a}");
        let big = [b"GET /ok HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 2 * MAX_HEAD]].concat();
        let a = ask(s.local_addr, &big);
        assert!(a.starts_with("HTTP/1.1 431 "), "{a}");
        assert!(s.stats.refused.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn basic_auth_is_checked() {
        let (_rt, s) = server(Some("user:pass"));
        let a = ask(s.local_addr, b"GET /ok HTTP/1.1\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 401 ") && a.contains("WWW-Authenticate: Basic"), "{a}");
        let a = ask(s.local_addr, b"GET /ok HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNy\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 401 "), "{a}");
        let a = ask(s.local_addr, b"GET /ok HTTP/1.1\r\nauthorization: Basic dXNlcjpwYXNz\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
    }

    #[test]
    fn a_slow_client_is_dropped_and_does_not_hold_others() {
        let (_rt, s) = server(None);
        // A client that sends half a head and stalls, as slowloris does.
        let mut slow: Vec<std::net::TcpStream> = (0..8)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(s.local_addr).expect("connect");
                c.write_all(b"GET /ok HTTP/1.1\r\nX-a: ").expect("write");
                c
            })
            .collect();
        let started = std::time::Instant::now();
        let a = ask(s.local_addr, b"GET /ok HTTP/1.1\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
        // Answered before the stalled heads time out: they held no one.
        assert!(started.elapsed() < HEAD_TIMEOUT, "held by slow clients");
        let c = &mut slow[0];
        c.set_read_timeout(Some(HEAD_TIMEOUT * 3)).expect("timeout");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    }
}
