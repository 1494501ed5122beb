//! A plain HTTP/1.1 client for the members' endpoints: one request per connection, as load
//! balancers send them, with a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// An answer: status code, headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `raw` to 127.0.0.1:`port`; `None` when nothing answers within `timeout`.
pub fn raw(port: u16, bytes: &[u8], timeout: Duration) -> Option<Answer> {
    let mut c = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    c.set_read_timeout(Some(timeout)).ok()?;
    c.set_write_timeout(Some(timeout)).ok()?;
    c.write_all(bytes).ok()?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer { status, head: head.to_string(), body: body.to_string() })
}

/// `METHOD path` on 127.0.0.1:`port`, waiting at most 5 s.
pub fn request(port: u16, method: &str, path: &str) -> Option<Answer> {
    raw(
        port,
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
}

/// `GET path`; panics when nothing answers.
pub fn get(port: u16, path: &str) -> Answer {
    request(port, "GET", path).unwrap_or_else(|| panic!("no answer to GET {path} on port {port}"))
}

/// The status of `GET path`, 0 when nothing answers.
pub fn status(port: u16, path: &str) -> u16 {
    request(port, "GET", path).map_or(0, |a| a.status)
}

/// Member `i`'s HTTP port from `pgraftctl local up --http`'s JSON lines.
pub fn http_port(lines: &[Value], i: usize) -> u16 {
    lines[i]["http_port"].as_u64().expect("http_port: the cluster was started with --http") as u16
}
