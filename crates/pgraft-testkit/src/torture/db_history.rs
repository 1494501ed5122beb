//! The history of a database torture run: every SQL transaction a client ran against the
//! HA cluster's primary, with its invocation and completion time, the server that answered
//! and what the client heard.
//!
//! A transaction is `Ok` when COMMIT returned success, `Failed` when the server said it was
//! rolled back (any error before COMMIT was sent, or a serialization failure at COMMIT),
//! and `Unknown` when the answer to COMMIT never came (a timeout, a lost connection): it
//! may have committed at any point after its invocation, or never, as Jepsen treats it.

use serde::{Deserialize, Serialize};

/// One step of a list-append transaction (Elle's model): read a key's list, or append a
/// value unique in the run to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Micro {
    /// `SELECT v FROM torture_lists WHERE k = key`; `value` is what it returned (an absent
    /// row is the empty list), filled in when the read ran.
    Read {
        /// The key.
        key: i32,
        /// The list read, `None` until the read ran.
        value: Option<Vec<i64>>,
    },
    /// `INSERT ... ON CONFLICT DO UPDATE SET v = v || value`.
    Append {
        /// The key.
        key: i32,
        /// The value, unique in the run.
        value: i64,
    },
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TxnCall {
    /// Reads and appends on a few keys (every read of a key comes before the
    /// transaction's own appends to it).
    ListAppend {
        /// The steps, in order.
        ops: Vec<Micro>,
    },
    /// Moves `amount` from account `from` to `to` and records the transfer in the ledger
    /// under `id` (unique in the run).
    Transfer {
        /// The ledger row's id.
        id: i64,
        /// The debited account.
        from: i32,
        /// The credited account.
        to: i32,
        /// How much.
        amount: i64,
    },
    /// Reads every balance in one snapshot.
    Balances {
        /// `(account, balance)`, filled in when the read ran.
        read: Option<Vec<(i32, i64)>>,
    },
}

impl TxnCall {
    /// The transaction's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            TxnCall::ListAppend { .. } => "list-append",
            TxnCall::Transfer { .. } => "transfer",
            TxnCall::Balances { .. } => "balances",
        }
    }

    /// Whether the transaction writes.
    pub fn writes(&self) -> bool {
        match self {
            TxnCall::ListAppend { ops } => ops.iter().any(|m| matches!(m, Micro::Append { .. })),
            TxnCall::Transfer { .. } => true,
            TxnCall::Balances { .. } => false,
        }
    }
}

/// How a transaction ended, as the client heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TxnOutcome {
    /// COMMIT succeeded.
    Ok,
    /// Rolled back for certain.
    Failed {
        /// Why.
        error: String,
    },
    /// COMMIT was sent and no answer came.
    Unknown {
        /// What happened instead.
        error: String,
    },
}

/// The server a session was connected to, read when the session started: a read-write
/// session lives on one primary, whose timeline does not change while it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServerId {
    /// The member whose server it is (from `inet_server_port()`).
    pub node: u64,
    /// `pg_control_system().system_identifier`: every server of one cluster shares it.
    pub system_id: i64,
    /// The timeline the server was writing on.
    pub timeline: u32,
}

/// One transaction of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The client that ran it.
    pub client: u64,
    /// What it did (reads filled in).
    pub call: TxnCall,
    /// How it ended.
    pub outcome: TxnOutcome,
    /// The server that answered.
    pub server: ServerId,
    /// When BEGIN was sent, in microseconds since the run started.
    pub invoke_us: u64,
    /// When the outcome was known.
    pub complete_us: u64,
    /// A writing transaction's WAL insert position after its last write, read before
    /// COMMIT (its commit record lies just past it): where asynchronous mode's loss is
    /// measured. `None` for reads and for transactions that failed before.
    #[serde(default)]
    pub lsn: Option<u64>,
}

impl Txn {
    /// Whether COMMIT was acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, TxnOutcome::Ok)
    }
}

/// The shared, append-only record of every client's transactions.
pub type DbHistory = super::history::History<Txn>;
