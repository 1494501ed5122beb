//! Errors of the WAL streaming library.
//!
//! One enum for the crate. Variants separate what a caller handles differently: a bad
//! input ([`Error::InvalidLsn`], [`Error::Config`]), the server saying no
//! ([`Error::Server`], with its SQLSTATE), the connection failing ([`Error::Io`],
//! [`Error::Closed`], [`Error::Timeout`]) and the server breaking the protocol
//! ([`Error::Protocol`], [`Error::Decode`]).

use std::fmt;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A text that is not an LSN in PostgreSQL's `X/X` form.
    #[error("invalid LSN {input:?}: {reason}")]
    InvalidLsn {
        /// The text as given.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// LSN arithmetic left the 64-bit WAL address space.
    #[error("LSN overflow: {0}")]
    LsnOverflow(String),
    /// A WAL segment size PostgreSQL cannot have (a power of two from 1 MiB to 1 GiB).
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
    InvalidSegmentSize(u64),
    /// A file name that is not a WAL segment name (24 hex digits).
    #[error("invalid WAL segment file name {input:?}: {reason}")]
    InvalidSegmentName {
        /// The name as given.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A connection string or option that cannot be used.
    #[error("connection settings: {0}")]
    Config(String),
    /// A system call failed; `context` says what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, for example "connect to 127.0.0.1:5432".
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up or negotiated.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication failed on our side (the server's refusal is [`Error::Server`]).
    #[error("authentication: {0}")]
    Auth(String),
    /// The server answered with an ErrorResponse.
    #[error("{0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A message's bytes do not have the layout the protocol documents.
    #[error("malformed {what} message: {reason}")]
    Decode {
        /// Which message was being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// A call that the connection's state does not allow (for example receiving WAL when
    /// no streaming was started).
    #[error("not allowed now: {0}")]
    State(String),
    /// The WAL directory of a receiver is not in a state it can continue from, or the
    /// stream does not continue what it holds.
    #[error("WAL directory: {0}")]
    WalDir(String),
}

/// An ErrorResponse: the fields PostgreSQL sends, so callers can act on the SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    /// ERROR, FATAL or PANIC (localized by the server).
    pub severity: String,
    /// The SQLSTATE, for example `42704` (undefined object).
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The optional detail.
    pub detail: Option<String>,
    /// The optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server {}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

impl Error {
    /// An I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// The SQLSTATE when the server refused, so callers can tell "slot exists" (42710)
    /// from "slot missing" (42704) without matching message text.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
