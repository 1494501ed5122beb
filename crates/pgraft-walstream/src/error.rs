//! Errors of the WAL streaming library.

/// What went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
