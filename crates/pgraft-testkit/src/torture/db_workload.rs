//! The database workload: clients of an HA cluster, as applications are, running ordinary
//! SQL transactions on ordinary tables through the cluster's multi-host conninfo
//! (`target_session_attrs=read-write`), reconnecting after every error.
//!
//! ```text
//!   torture_lists(k int PRIMARY KEY, v bigint[])      list-append: read some keys' lists,
//!                                                     append unique values to others
//!   torture_accounts(id int PRIMARY KEY, balance)     bank: move money between two
//!   torture_transfers(id bigint PRIMARY KEY, ...)     accounts and record it in the
//!                                                     ledger; read every balance
//! ```
//!
//! Every transaction runs at SERIALIZABLE and is recorded with the server that answered
//! (its port, system identifier and timeline, read when the session connected), its
//! invocation and completion times, and its outcome. Keys change every `key_period` so
//! lists stay short.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use super::db_history::{DbHistory, Micro, ServerId, Txn, TxnCall, TxnOutcome};
use super::seeded_rng::SeededRng;
use pgraft_core::ha::parse_lsn;

use super::session::{QueryError, Session};
use super::timelines::HistoryFiles;

/// The tables, created once on the primary before the clients start.
pub const SCHEMA: &str = "\
    CREATE TABLE IF NOT EXISTS torture_lists (k int PRIMARY KEY, v bigint[] NOT NULL);\n\
    CREATE TABLE IF NOT EXISTS torture_accounts (id int PRIMARY KEY, balance bigint NOT NULL);\n\
    CREATE TABLE IF NOT EXISTS torture_transfers (id bigint PRIMARY KEY, src int NOT NULL, \
        dst int NOT NULL, amount bigint NOT NULL);\n\
    CREATE TABLE IF NOT EXISTS torture_probe (at bigint NOT NULL);";

/// What every client shares.
#[derive(Debug, Clone)]
pub struct DbWorkload {
    /// The cluster's read-write conninfo.
    pub conninfo: String,
    /// Member id of each server port.
    pub ports: Vec<(u16, u64)>,
    /// Clients.
    pub clients: u64,
    /// The run's seed.
    pub seed: u64,
    /// List keys in use at any time.
    pub keys: u32,
    /// How long a generation of list keys is used.
    pub key_period: Duration,
    /// Bank accounts (each starts with [`DbWorkload::INITIAL_BALANCE`]).
    pub accounts: i32,
    /// The client-side deadline of one statement.
    pub op_timeout: Duration,
    /// When the run started (the zero of every time in the history).
    pub start: Instant,
    /// The history file of every timeline a session wrote on, by timeline and member
    /// (`None` for timeline 1, or where it could not be read), read when it connected:
    /// where each timeline forked, for the asynchronous loss check. Two servers promoted
    /// apart onto the same timeline number would show two histories for it.
    pub histories: Arc<Mutex<HistoryFiles>>,
}

/// A session and the server it is on.
struct DbSession {
    session: Session,
    server: ServerId,
}

/// Why a transaction did not commit, and whether the session survives.
struct Abort {
    error: QueryError,
    /// COMMIT had been sent: the outcome is unknown unless the server answered.
    at_commit: bool,
}

impl DbWorkload {
    /// Every account's opening balance.
    pub const INITIAL_BALANCE: i64 = 100;

    /// The rows the bank starts with.
    pub fn seed_sql(&self) -> String {
        format!(
            "INSERT INTO torture_accounts SELECT g, {} FROM generate_series(1, {}) g ON CONFLICT DO NOTHING",
            Self::INITIAL_BALANCE,
            self.accounts
        )
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Starts every client on `rt`; they run until `stop` is set.
    pub fn spawn(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        history: &DbHistory,
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.clients)
            .map(|id| {
                let (w, h, s) = (Arc::clone(self), history.clone(), Arc::clone(stop));
                rt.spawn(async move { w.run_client(id, h, s).await })
            })
            .collect()
    }

    async fn run_client(&self, id: u64, history: DbHistory, stop: Arc<AtomicBool>) {
        let mut rng = SeededRng::derive(self.seed, 7_000 + id);
        let mut session: Option<DbSession> = None;
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Some(s) = session.as_ref() else {
                match self.connect().await {
                    Ok(s) => session = Some(s),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                continue;
            };
            seq += 1;
            let server = s.server;
            let mut call = self.choose(&mut rng, id, seq);
            let invoke_us = self.now_us();
            let mut lsn = None;
            let result = self.execute(s, &mut call, &mut lsn).await;
            let complete_us = self.now_us();
            let outcome = match result {
                Ok(()) => TxnOutcome::Ok,
                Err(Abort { error, at_commit }) => {
                    if error.session_lost() {
                        session = None;
                    } else if !at_commit {
                        // The transaction is aborted but open: without a ROLLBACK every
                        // later statement of the session fails ("current transaction is
                        // aborted"), and the client would do nothing until a fault closed
                        // its connection (the 30-minute runs lost half their clients so).
                        let rollback =
                            bounded(self.op_timeout, s.session.client.batch_execute("ROLLBACK")).await;
                        if rollback.is_err() {
                            session = None;
                        }
                    }
                    if at_commit && !rolled_back(&error) {
                        TxnOutcome::Unknown { error: error.to_string() }
                    } else {
                        TxnOutcome::Failed { error: error.to_string() }
                    }
                }
            };
            let failed = !matches!(outcome, TxnOutcome::Ok);
            history.push(Txn { client: id, call, outcome, server, invoke_us, complete_us, lsn });
            if failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Opens a read-write session and learns which server it is on.
    async fn connect(&self) -> Result<DbSession> {
        // No statement_timeout: a cancelled wait for the synchronous standbys returns
        // success for a commit they never received (PostgreSQL's behaviour, see
        // docs/failover.md); the client-side deadline drops a stuck session instead, and its
        // transaction's outcome is then unknown.
        let session = Session::connect(&self.conninfo, Duration::from_secs(10), None)
            .await
            .context("connect with the read-write conninfo")?;
        let client = &session.client;
        let set = "SET default_transaction_isolation = 'serializable'";
        let who = "SELECT inet_server_port(), (SELECT system_identifier FROM pg_control_system())::bigint, \
                   w, pg_read_file('pg_wal/' || substr(w, 1, 8) || '.history', 0, 1048576, true) \
                   FROM pg_walfile_name(pg_current_wal_lsn()) w";
        let row = tokio::time::timeout(self.op_timeout, async {
            client.batch_execute(set).await?;
            client.query_one(who, &[]).await
        })
        .await
        .map_err(|_| anyhow!("the session's first statements took longer than {:?}", self.op_timeout))?
        .context("identify the server")?;
        let port: i32 = row.get(0);
        let walfile: String = row.get(2);
        let timeline = u32::from_str_radix(walfile.get(..8).unwrap_or(""), 16)
            .with_context(|| format!("timeline of WAL file {walfile:?}"))?;
        let node = self
            .ports
            .iter()
            .find(|(p, _)| i32::from(*p) == port)
            .map(|(_, n)| *n)
            .with_context(|| format!("port {port} is no member's"))?;
        let history: Option<String> = row.get(3);
        if let Ok(mut seen) = self.histories.lock() {
            seen.entry((timeline, node)).or_insert(history);
        }
        Ok(DbSession { session, server: ServerId { node, system_id: row.get(1), timeline } })
    }

    /// The next transaction: 70% list-append, 20% transfer, 10% balance read.
    fn choose(&self, rng: &mut SeededRng, client: u64, seq: u64) -> TxnCall {
        let unique = |i: u64| ((client as i64) << 40) | ((seq as i64) << 3) | i as i64;
        match rng.below(100) {
            0..=69 => {
                let generation =
                    self.start.elapsed().as_millis() as u64 / self.key_period.as_millis().max(1) as u64;
                let key = |rng: &mut SeededRng| (generation * 1_000 + rng.below(u64::from(self.keys))) as i32;
                let mut reads = Vec::new();
                let mut appends = Vec::new();
                for i in 0..1 + rng.below(4) {
                    if rng.below(2) == 0 {
                        reads.push(Micro::Read { key: key(rng), value: None });
                    } else {
                        appends.push(Micro::Append { key: key(rng), value: unique(i) });
                    }
                }
                // Reads first: a read never has to see the transaction's own appends.
                reads.extend(appends);
                TxnCall::ListAppend { ops: reads }
            }
            70..=89 => {
                let from = 1 + rng.below(self.accounts as u64) as i32;
                let to = 1 + (from as u64 + rng.below(self.accounts as u64 - 1)) as i32 % self.accounts;
                TxnCall::Transfer { id: unique(0), from, to, amount: 1 + rng.below(10) as i64 }
            }
            _ => TxnCall::Balances { read: None },
        }
    }

    /// Runs `call` in one transaction; `lsn` gets the WAL insert position after its last
    /// write.
    async fn execute(&self, s: &DbSession, call: &mut TxnCall, lsn: &mut Option<u64>) -> Result<(), Abort> {
        let c = &s.session.client;
        let t = self.op_timeout;
        let step = |e: QueryError| Abort { error: e, at_commit: false };
        bounded(t, c.batch_execute("BEGIN")).await.map_err(step)?;
        let body = async {
            match call {
                TxnCall::ListAppend { ops } => {
                    for m in ops.iter_mut() {
                        match m {
                            Micro::Read { key, value } => {
                                let rows =
                                    bounded(t, c.query("SELECT v FROM torture_lists WHERE k = $1", &[&*key]))
                                        .await?;
                                *value = Some(rows.first().map(|r| r.get(0)).unwrap_or_default());
                            }
                            Micro::Append { key, value } => {
                                let row = bounded(
                                    t,
                                    c.query_one(
                                        "INSERT INTO torture_lists VALUES ($1, ARRAY[$2::bigint]) \
                                         ON CONFLICT (k) DO UPDATE SET v = torture_lists.v || $2::bigint \
                                         RETURNING pg_current_wal_insert_lsn()::text",
                                        &[&*key, &*value],
                                    ),
                                )
                                .await?;
                                *lsn = parse_lsn(row.get(0));
                            }
                        }
                    }
                }
                TxnCall::Transfer { id, from, to, amount } => {
                    bounded(
                        t,
                        c.execute(
                            "UPDATE torture_accounts SET balance = balance + CASE id WHEN $1 THEN -$3::bigint \
                             ELSE $3::bigint END WHERE id IN ($1, $2)",
                            &[&*from, &*to, &*amount],
                        ),
                    )
                    .await?;
                    let row = bounded(
                        t,
                        c.query_one(
                            "INSERT INTO torture_transfers VALUES ($1, $2, $3, $4) \
                             RETURNING pg_current_wal_insert_lsn()::text",
                            &[&*id, &*from, &*to, &*amount],
                        ),
                    )
                    .await?;
                    *lsn = parse_lsn(row.get(0));
                }
                TxnCall::Balances { read } => {
                    let rows =
                        bounded(t, c.query("SELECT id, balance FROM torture_accounts ORDER BY id", &[]))
                            .await?;
                    *read = Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
                }
            }
            Ok::<(), QueryError>(())
        };
        body.await.map_err(step)?;
        bounded(t, c.batch_execute("COMMIT")).await.map_err(|e| Abort { error: e, at_commit: true })
    }
}

/// Whether an error answered to COMMIT means the transaction rolled back: a
/// serialization failure or deadlock (class 40) does; a connection ended by the server
/// (FATAL, class 57 or 08) may have come after the commit record was written.
fn rolled_back(e: &QueryError) -> bool {
    matches!(e, QueryError::Server { code, .. } if code.starts_with("40"))
}

/// Awaits a statement within `t`; a missed deadline leaves the session unusable.
async fn bounded<T>(
    t: Duration,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, QueryError> {
    match tokio::time::timeout(t, f).await {
        Err(_) => Err(QueryError::Timeout),
        Ok(r) => r.map_err(QueryError::from),
    }
}
