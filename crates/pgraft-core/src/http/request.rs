//! The head of an HTTP/1.x request, parsed from bytes a client sent: method, path, query
//! and the one header the endpoint reads (`Authorization`). Anything else in the head is
//! skipped; a body is never read (the endpoints take none, and every answer closes the
//! connection).

use std::fmt;

/// The most bytes a request head may take (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// A request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the status and headers of `GET`, no body.
    Head,
    /// `OPTIONS`: what HAProxy's `option httpchk` sends by default; answered as `GET`.
    Options,
    /// Any other token (answered 405).
    Other(String),
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The query's `name=value` pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The `Authorization` header's value, if sent.
    pub authorization: Option<String>,
}

impl HttpRequest {
    /// The value of the first query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// More than [`MAX_HEAD`] bytes (431).
    TooLarge,
    /// Not an HTTP/1.x request head (400).
    Malformed(&'static str),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => write!(f, "the request head is larger than {MAX_HEAD} bytes"),
            HeadError::Malformed(why) => write!(f, "malformed request: {why}"),
        }
    }
}

/// Where the head ends in `buf` (the index after its blank line), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a complete head (through its blank line).
pub fn parse_head(head: &[u8]) -> Result<HttpRequest, HeadError> {
    if head.len() > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("the head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(HeadError::Malformed("no request line"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("the request line is not `METHOD target HTTP/1.x`"));
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(HeadError::Malformed("only HTTP/1.0 and HTTP/1.1 are served"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_') {
        return Err(HeadError::Malformed("the method is not a token"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("the target is not an absolute path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(path).ok_or(HeadError::Malformed("bad percent-encoding in the path"))?;
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or(HeadError::Malformed("bad percent-encoding in the query"))?;
        let v = percent_decode(v).ok_or(HeadError::Malformed("bad percent-encoding in the query"))?;
        params.push((k, v));
    }
    let mut authorization = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) =
            line.split_once(':').ok_or(HeadError::Malformed("a header line without a colon"))?;
        if name.is_empty() || name.contains(' ') {
            return Err(HeadError::Malformed("a header name with spaces"));
        }
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_string());
        }
    }
    Ok(HttpRequest { method, path, query: params, authorization })
}

/// `%XX` and `+` decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A byte count as Patroni's `?lag=` takes it: a number, or one with a unit (`16MB`,
/// `512kB`, `1GB`; powers of 1024, as PostgreSQL's memory units).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `text` in base64 (RFC 4648, with padding): how a client sends `user:password` in
/// `Authorization: Basic ...`.
pub fn base64(text: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(text.len().div_ceil(3) * 4);
    for chunk in text.chunks(3) {
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_parsed() {
        let head =
            b"GET /replica?lag=16MB&x=%41+b HTTP/1.1\r\nHost: a\r\nAuthorization:  Basic dTpw \r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        let r = parse_head(head).expect("parse");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/replica");
        assert_eq!(r.param("lag"), Some("16MB"));
        assert_eq!(r.param("x"), Some("A b"));
        assert_eq!(r.authorization.as_deref(), Some("Basic dTpw"));
        let r = parse_head(b"OPTIONS /primary HTTP/1.0\n\n").expect("bare newlines");
        assert_eq!((r.method, r.path.as_str()), (Method::Options, "/primary"));
        let r = parse_head(b"DELETE / HTTP/1.1\r\n\r\n").expect("other methods parse");
        assert_eq!(r.method, Method::Other("DELETE".into()));
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET primary HTTP/1.1\r\n\r\n",
            b"GET /%zz HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"G\xffT / HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD], b"\r\n\r\n"].concat();
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn byte_counts_and_base64() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_bytes("512kB"), Some(512 << 10));
        assert_eq!(parse_bytes("1 GB"), Some(1 << 30));
        for bad in ["", "MB", "-1", "1.5MB", "3 parsecs", "99999999999999999999TB"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_head(&bytes);
            let _ = head_end(&bytes);
        }
    }
}
