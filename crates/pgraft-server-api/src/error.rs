//! Errors of the server API library.

use pgraft_walstream::Lsn;

/// What went wrong talking to a server.
///
/// Permission problems are found *before* the privileged call is sent
/// ([`Error::PermissionDenied`] names the missing role or grant and the statement that
/// fixes it) and are never retried: asking again cannot grant a privilege.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection could not be opened.
    #[error("server {server}: cannot connect to {target}: {source}")]
    Connect {
        /// The server's name.
        server: String,
        /// Where we tried to connect (host, port, user; never the password).
        target: String,
        /// The client library's error.
        #[source]
        source: postgres::Error,
    },
    /// A statement failed on the server.
    #[error("server {server}: {what} failed: {}", describe_pg_error(source))]
    Query {
        /// The server's name.
        server: String,
        /// What we asked for, for example `pg_read_binary_file("base/1/1259", 0, 8192)`.
        what: String,
        /// The client library's error, carrying the server's SQLSTATE and message.
        #[source]
        source: postgres::Error,
    },
    /// The connected role lacks what an API function needs. Found before the call.
    #[error(
        "server {server}: role {role} may not call {api}: missing {missing}; fix (as a superuser): {grant}"
    )]
    PermissionDenied {
        /// The server's name.
        server: String,
        /// The API function, for example `read_binary_file`.
        api: &'static str,
        /// The connected role, quoted as an SQL identifier.
        role: String,
        /// Every missing role membership, attribute or grant, joined by "and".
        missing: String,
        /// The statements that grant what is missing.
        grant: String,
    },
    /// The server is older than anything this library speaks.
    #[error("server {server}: PostgreSQL {version_num} is not supported (10 or later is needed)")]
    UnsupportedVersion {
        /// The server's name.
        server: String,
        /// `server_version_num`.
        version_num: u32,
    },
    /// A path that would leave the data directory, or that is not a usable path.
    #[error("path {path:?} is refused: {reason}; give a path relative to the data directory")]
    PathOutsideDataDirectory {
        /// The path as given.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The file does not exist on the server.
    #[error("server {server}: file {path:?} does not exist in the data directory")]
    FileNotFound {
        /// The server's name.
        server: String,
        /// The path as given.
        path: String,
    },
    /// A read that starts at or past the end of the file.
    #[error(
        "server {server}: cannot read {path:?} at offset {offset}: the file ends at or before that offset"
    )]
    OffsetPastEndOfFile {
        /// The server's name.
        server: String,
        /// The path as given.
        path: String,
        /// The requested first byte.
        offset: u64,
    },
    /// A read that ends past the end of the file.
    #[error(
        "server {server}: cannot read {length} bytes of {path:?} at offset {offset}: the file ends at byte {file_end}"
    )]
    PastEndOfFile {
        /// The server's name.
        server: String,
        /// The path as given.
        path: String,
        /// The requested first byte.
        offset: u64,
        /// The requested number of bytes.
        length: u64,
        /// Where the file ended (its size when the read reached it).
        file_end: u64,
    },
    /// An offset or length outside what PostgreSQL's `bigint` can carry.
    #[error("offset {offset} and length {length} are out of range (their sum must fit in a signed 64-bit integer)")]
    RangeTooLarge {
        /// The requested first byte.
        offset: u64,
        /// The requested number of bytes.
        length: u64,
    },
    /// The server answered something this library cannot make sense of.
    #[error("server {server}: unexpected answer to {what}: {detail}")]
    Protocol {
        /// The server's name.
        server: String,
        /// What we asked for.
        what: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
    /// `backup_stop` without a `backup_start` on this connection.
    #[error("server {server}: no backup is in progress on this connection; call backup_start first")]
    NoBackupInProgress {
        /// The server's name.
        server: String,
    },
    /// `backup_start` while this connection already runs a backup.
    #[error("server {server}: a backup started at {start_lsn} is already in progress on this connection")]
    BackupAlreadyInProgress {
        /// The server's name.
        server: String,
        /// Where the running backup started.
        start_lsn: Lsn,
    },
    /// The connection that started a backup was lost; the server has aborted that backup.
    #[error(
        "server {server}: the connection that started the backup at {start_lsn} was lost, so the server aborted the backup; start a new one"
    )]
    BackupConnectionLost {
        /// The server's name.
        server: String,
        /// Where the lost backup started.
        start_lsn: Lsn,
    },
    /// WAL position arithmetic failed.
    #[error(transparent)]
    Wal(#[from] pgraft_walstream::Error),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a client error of `what` on `server`.
pub(crate) fn query_err(server: &str, what: impl Into<String>) -> impl FnOnce(postgres::Error) -> Error {
    let (server, what) = (server.to_string(), what.into());
    move |source| Error::Query { server, what, source }
}

/// The server's own message and SQLSTATE when there is one; the client error otherwise.
fn describe_pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
