//! One libpq session to a member, with a client-side deadline on everything.
//!
//! A paused member (SIGSTOP) still has its TCP connections acknowledged by the kernel, so
//! neither `statement_timeout` (the server is frozen) nor TCP timeouts end a query. Every
//! wait is therefore bounded here, on the client; a session that missed a deadline is
//! dropped, and its connection task aborted, because its state is unknown.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// A connected session; dropping it closes the connection.
pub struct Session {
    /// The client half.
    pub client: tokio_postgres::Client,
    conn: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Session {
    /// Connects within `within` and, given one, sets the server-side `statement_timeout`,
    /// so pgraft answers with its reason ("no leader", ...) before the client-side deadline.
    pub async fn connect(
        conninfo: &str,
        within: Duration,
        statement_timeout: Option<Duration>,
    ) -> Result<Session> {
        let cfg = format!("{conninfo} connect_timeout=3 application_name=pgraft-torture");
        let (client, conn) = tokio::time::timeout(within, tokio_postgres::connect(&cfg, NoTls))
            .await
            .map_err(|_| anyhow!("connecting took longer than {within:?}"))?
            .with_context(|| format!("connect to {conninfo}"))?;
        let conn = tokio::spawn(async move {
            // The connection ends with an error when the server goes away; the client
            // half reports that on its next query.
            let _ = conn.await;
        });
        let s = Session { client, conn };
        let Some(statement_timeout) = statement_timeout else { return Ok(s) };
        let set = format!("SET statement_timeout = {}", statement_timeout.as_millis());
        tokio::time::timeout(within, s.client.batch_execute(&set))
            .await
            .map_err(|_| anyhow!("SET statement_timeout took longer than {within:?}"))?
            .context("SET statement_timeout")?;
        Ok(s)
    }

    /// Runs a query expecting one row, within `within`.
    pub async fn one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        within: Duration,
    ) -> Result<tokio_postgres::Row, QueryError> {
        match tokio::time::timeout(within, self.client.query_one(sql, params)).await {
            Err(_) => Err(QueryError::Timeout),
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) => Err(QueryError::from(e)),
        }
    }
}

/// A blocking session for the harness (the nemesis, the final reads): connected within
/// `connect_timeout`, with a server-side `statement_timeout` if given.
pub fn connect_blocking(
    conninfo: &str,
    connect_timeout: Duration,
    statement_timeout: Option<Duration>,
) -> Result<postgres::Client> {
    let mut cfg = <postgres::Config as std::str::FromStr>::from_str(conninfo).context("parse conninfo")?;
    cfg.connect_timeout(connect_timeout);
    cfg.application_name("pgraft-torture-harness");
    let mut c = cfg.connect(postgres::NoTls).with_context(|| format!("connect to {conninfo}"))?;
    if let Some(t) = statement_timeout {
        c.batch_execute(&format!("SET statement_timeout = {}", t.as_millis()))
            .context("SET statement_timeout")?;
    }
    Ok(c)
}

/// How a query failed, sorted by what it tells about the session and the operation.
#[derive(Debug)]
pub enum QueryError {
    /// The client-side deadline passed: the session is in an unknown state.
    Timeout,
    /// The server answered with an error; the session is still usable.
    Server {
        /// SQLSTATE.
        code: String,
        /// The message.
        message: String,
    },
    /// The connection broke.
    Connection(String),
}

impl QueryError {
    /// Whether the session must be dropped.
    pub fn session_lost(&self) -> bool {
        !matches!(self, QueryError::Server { .. })
    }

    /// Whether pgraft refused the request before proposing anything, so that a write
    /// that failed this way certainly did not happen: the member was removed from the
    /// cluster (it checks that before it proposes).
    pub fn refused_before_proposing(&self) -> bool {
        matches!(self, QueryError::Server { code, message }
            if code == "55000" && message.contains("was removed from the cluster"))
    }
}

impl From<tokio_postgres::Error> for QueryError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                QueryError::Server { code: db.code().code().to_string(), message: db.message().to_string() }
            }
            None => QueryError::Connection(e.to_string()),
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Timeout => f.write_str("client-side timeout"),
            QueryError::Server { code, message } => write!(f, "{code}: {message}"),
            QueryError::Connection(e) => write!(f, "connection lost: {e}"),
        }
    }
}
