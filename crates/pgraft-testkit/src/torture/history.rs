//! The history of a run: every client operation with its invocation and completion time
//! and what the client heard, as Jepsen records it.
//!
//! Times are microseconds since the run started, from one monotonic clock shared by every
//! client, so "completed before invoked" is meaningful across clients. An operation whose
//! answer never came (a timeout, a lost connection, an error after the request may have
//! been proposed) is `Unknown`: it may have taken effect at any point after its invocation,
//! or never.

use std::sync::{Arc, Mutex};

use pgraft_core::linearizability::{Call, Operation, Ret};
use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum OpCall {
    /// `pgraft_kv_put(key, value)`.
    Put {
        /// The key.
        key: String,
        /// The value (unique in the run).
        value: String,
    },
    /// `pgraft_kv_get(key)` (or the serializable read of the broken mode).
    Get {
        /// The key.
        key: String,
    },
    /// `pgraft_kv_delete(key)`.
    Delete {
        /// The key.
        key: String,
    },
    /// `pgraft_kv_cas(key, expected, new)`.
    Cas {
        /// The key.
        key: String,
        /// The value compared (`None`: the key must be absent).
        expected: Option<String>,
        /// What is written when it matches (`None`: delete).
        new: Option<String>,
    },
    /// `pgraft_replicate_entry(data)`.
    Append {
        /// The entry (unique in the run).
        data: String,
    },
}

impl OpCall {
    /// The operation's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            OpCall::Put { .. } => "put",
            OpCall::Get { .. } => "get",
            OpCall::Delete { .. } => "delete",
            OpCall::Cas { .. } => "cas",
            OpCall::Append { .. } => "append",
        }
    }

    /// The key, for KV operations.
    pub fn key(&self) -> Option<&str> {
        match self {
            OpCall::Put { key, .. }
            | OpCall::Get { key }
            | OpCall::Delete { key }
            | OpCall::Cas { key, .. } => Some(key),
            OpCall::Append { .. } => None,
        }
    }

    /// Whether the operation can change state.
    pub fn is_write(&self) -> bool {
        !matches!(self, OpCall::Get { .. })
    }
}

/// What the client heard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpResult {
    /// A write was acknowledged (`t`).
    Ok,
    /// A read returned this value (`None`: SQL NULL, the key is absent).
    Value {
        /// The value.
        value: Option<String>,
    },
    /// A compare-and-swap answered whether it matched.
    Cas {
        /// Whether it matched (and wrote).
        matched: bool,
    },
    /// A read failed, or a write was refused before anything was proposed: it changed
    /// nothing and is left out of the checks.
    Failed {
        /// Why.
        error: String,
    },
    /// No definite answer: the operation may or may not have happened.
    Unknown {
        /// Why.
        error: String,
    },
}

impl OpResult {
    /// Whether the client got a definite successful answer.
    pub fn is_ok(&self) -> bool {
        matches!(self, OpResult::Ok | OpResult::Value { .. } | OpResult::Cas { .. })
    }
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryOp {
    /// The client (each client is one session at a time, on one member).
    pub client: u64,
    /// The member the client's session was on.
    pub node: u64,
    /// The request.
    pub call: OpCall,
    /// The answer.
    pub result: OpResult,
    /// When it was invoked, in microseconds since the run started.
    pub invoke_us: u64,
    /// When the answer arrived (or the client gave up), in microseconds since the start.
    pub complete_us: u64,
    /// Wall-clock time of the invocation, in milliseconds since the Unix epoch (to compare
    /// with the `applied_at` of the members' entries).
    pub invoke_unix_ms: u64,
}

impl HistoryOp {
    /// The operation as the linearizability checker sees it; `None` for operations that
    /// are not KV operations or that certainly did nothing (failed reads).
    pub fn to_checker(&self) -> Option<Operation> {
        let key = self.call.key()?.to_string();
        let call = match &self.call {
            OpCall::Put { value, .. } => Call::Put(value.clone()),
            OpCall::Get { .. } => Call::Get,
            OpCall::Delete { .. } => Call::Delete,
            OpCall::Cas { expected, new, .. } => Call::Cas { expect: expected.clone(), new: new.clone() },
            OpCall::Append { .. } => return None,
        };
        let (ret, complete) = match &self.result {
            OpResult::Ok => (Ret::Ok, Some(self.complete_us)),
            OpResult::Value { value } => (Ret::Value(value.clone()), Some(self.complete_us)),
            OpResult::Cas { matched } => (Ret::Cas(*matched), Some(self.complete_us)),
            OpResult::Failed { .. } => return None,
            OpResult::Unknown { .. } => (Ret::Unknown, None),
        };
        Some(Operation { client: self.client, key, call, ret, invoke: self.invoke_us, complete })
    }
}

/// The history being recorded, shared by every client: KV operations ([`HistoryOp`]) or,
/// for the database workload, transactions (`Txn`).
#[derive(Debug)]
pub struct History<T = HistoryOp> {
    ops: Arc<Mutex<Vec<T>>>,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        History { ops: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl<T> Clone for History<T> {
    fn clone(&self) -> Self {
        History { ops: Arc::clone(&self.ops) }
    }
}

impl<T: Clone> History<T> {
    /// Records one finished operation.
    pub fn push(&self, op: T) {
        self.lock().push(op);
    }

    /// Everything recorded so far, in completion order.
    pub fn snapshot(&self) -> Vec<T> {
        self.lock().clone()
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A client that panicked mid-push cannot leave a half-pushed element behind.
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: OpCall, result: OpResult) -> HistoryOp {
        HistoryOp { client: 1, node: 1, call, result, invoke_us: 10, complete_us: 20, invoke_unix_ms: 0 }
    }

    #[test]
    fn unknown_writes_have_no_return_and_failed_reads_vanish() {
        let put =
            op(OpCall::Put { key: "k".into(), value: "v".into() }, OpResult::Unknown { error: "t".into() });
        let c = put.to_checker().expect("a KV op");
        assert_eq!(c.ret, Ret::Unknown);
        assert_eq!(c.complete, None);
        let get = op(OpCall::Get { key: "k".into() }, OpResult::Failed { error: "no leader".into() });
        assert!(get.to_checker().is_none());
        let append = op(OpCall::Append { data: "d".into() }, OpResult::Ok);
        assert!(append.to_checker().is_none());
        let read = op(OpCall::Get { key: "k".into() }, OpResult::Value { value: Some("v".into()) });
        assert_eq!(read.to_checker().expect("a read").complete, Some(20));
    }

    #[test]
    fn json_round_trip() {
        let o = op(
            OpCall::Cas { key: "k".into(), expected: None, new: Some("x".into()) },
            OpResult::Cas { matched: true },
        );
        let text = serde_json::to_string(&o).expect("serialise");
        assert_eq!(serde_json::from_str::<HistoryOp>(&text).expect("parse"), o);
    }
}
