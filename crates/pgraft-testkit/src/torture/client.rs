//! The workload: concurrent clients over libpq on every member.
//!
//! Client `i` keeps one session to member `i mod N + 1` and runs operations back to back:
//! puts, linearizable gets, deletes, compare-and-swaps and log appends, each recorded with
//! its invocation and completion time. Keys change every `key_period` (`t/<generation>/<k>`)
//! so each key's history stays small enough to check exhaustively; values are unique in
//! the run (`c<client>-<seq>`), so a read names the write it saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::history::{History, HistoryOp, OpCall, OpResult};
use super::seeded_rng::SeededRng;
use super::session::{QueryError, Session};

/// What every client shares.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `(node_id, conninfo)` of every member.
    pub members: Vec<(u64, String)>,
    /// How many clients per member.
    pub clients_per_member: u64,
    /// The run's seed.
    pub seed: u64,
    /// Keys in use at any time.
    pub keys: u64,
    /// How long a generation of keys is used.
    pub key_period: Duration,
    /// The client-side deadline of one operation.
    pub op_timeout: Duration,
    /// The server-side statement_timeout (a little shorter than `op_timeout`).
    pub statement_timeout: Duration,
    /// The deliberately broken mode: reads are served from the member's local state
    /// (`pgraft_kv_get_serializable`), without ReadIndex. The checks must catch it.
    pub broken_local_reads: bool,
    /// When the run started (the zero of every time in the history).
    pub start: Instant,
}

impl Workload {
    /// A workload of no clients over these members: what the leader monitor needs.
    pub fn watching(members: Vec<(u64, String)>, start: Instant) -> Self {
        Self {
            members,
            clients_per_member: 0,
            seed: 0,
            keys: 0,
            key_period: Duration::from_secs(1),
            op_timeout: Duration::from_secs(8),
            statement_timeout: Duration::from_secs(5),
            broken_local_reads: false,
            start,
        }
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Starts every client on `rt`; they run until `stop` is set, then finish their
    /// operation in flight (or give up on it at its deadline).
    pub fn spawn(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        history: &History,
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let n = self.members.len() as u64 * self.clients_per_member;
        (0..n)
            .map(|id| {
                let (w, h, s) = (Arc::clone(self), history.clone(), Arc::clone(stop));
                rt.spawn(async move { w.run_client(id, h, s).await })
            })
            .collect()
    }

    async fn run_client(&self, id: u64, history: History, stop: Arc<AtomicBool>) {
        let (node, conninfo) = self.members[(id % self.members.len() as u64) as usize].clone();
        let mut rng = SeededRng::derive(self.seed, 1_000 + id);
        let mut session: Option<Session> = None;
        // The last value this client saw for each key: what its CAS expects.
        let mut seen: HashMap<String, Option<String>> = HashMap::new();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Some(s) = session.as_ref() else {
                match Session::connect(&conninfo, Duration::from_secs(3), Some(self.statement_timeout)).await
                {
                    Ok(s) => session = Some(s),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                continue;
            };
            seq += 1;
            let call = self.choose(&mut rng, id, seq, &seen);
            let invoke_unix_ms =
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
            let invoke_us = self.now_us();
            let answer = self.execute(s, &call).await;
            let complete_us = self.now_us();
            let result = match answer {
                Ok(r) => r,
                Err(e) => {
                    if e.session_lost() {
                        session = None;
                    }
                    // Like a real client, do not hammer a member that just refused.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // A failed read changed nothing. A failed write may have been proposed
                    // before it failed: its outcome is unknown, unless it was refused
                    // before anything was proposed. (A removed member refuses at once, so
                    // its clients fail fast; as unknowns those failures would each be a
                    // write that may land at any later time, and the checker's search
                    // would explode.)
                    if call.is_write() && !e.refused_before_proposing() {
                        OpResult::Unknown { error: e.to_string() }
                    } else {
                        OpResult::Failed { error: e.to_string() }
                    }
                }
            };
            if let Some(key) = call.key() {
                match (&call, &result) {
                    (_, OpResult::Value { value }) => {
                        seen.insert(key.to_string(), value.clone());
                    }
                    (OpCall::Put { value, .. }, OpResult::Ok) => {
                        seen.insert(key.to_string(), Some(value.clone()));
                    }
                    (OpCall::Delete { .. }, OpResult::Ok) => {
                        seen.insert(key.to_string(), None);
                    }
                    (OpCall::Cas { new, .. }, OpResult::Cas { matched: true }) => {
                        seen.insert(key.to_string(), new.clone());
                    }
                    _ => {}
                }
            }
            history.push(HistoryOp {
                client: id,
                node,
                call,
                result,
                invoke_us,
                complete_us,
                invoke_unix_ms,
            });
        }
    }

    /// The next operation: 40% get, 25% put, 15% cas, 8% delete, 12% append.
    fn choose(
        &self,
        rng: &mut SeededRng,
        client: u64,
        seq: u64,
        seen: &HashMap<String, Option<String>>,
    ) -> OpCall {
        let generation = self.start.elapsed().as_millis() as u64 / self.key_period.as_millis().max(1) as u64;
        let key = format!("t/{generation}/{}", rng.below(self.keys.max(1)));
        let value = format!("c{client}-{seq}");
        match rng.below(100) {
            0..=39 => OpCall::Get { key },
            40..=64 => OpCall::Put { key, value },
            65..=79 => {
                let expected = seen.get(&key).cloned().flatten();
                let new = if rng.below(100) < 15 { None } else { Some(value) };
                OpCall::Cas { key, expected, new }
            }
            80..=87 => OpCall::Delete { key },
            _ => OpCall::Append { data: format!("torture {value}") },
        }
    }

    async fn execute(&self, s: &Session, call: &OpCall) -> Result<OpResult, QueryError> {
        let t = self.op_timeout;
        Ok(match call {
            OpCall::Put { key, value } => {
                let r = s.one("SELECT pgraft_kv_put($1::text, $2::text)", &[key, value], t).await?;
                ok_or_unknown(r.get(0))
            }
            OpCall::Get { key } => {
                let sql = if self.broken_local_reads {
                    "SELECT pgraft_kv_get_serializable($1::text)"
                } else {
                    "SELECT pgraft_kv_get($1::text)"
                };
                let r = s.one(sql, &[key], t).await?;
                OpResult::Value { value: r.get(0) }
            }
            OpCall::Delete { key } => {
                let r = s.one("SELECT pgraft_kv_delete($1::text)", &[key], t).await?;
                ok_or_unknown(r.get(0))
            }
            OpCall::Cas { key, expected, new } => {
                let r = s
                    .one("SELECT pgraft_kv_cas($1::text, $2::text, $3::text)", &[key, expected, new], t)
                    .await?;
                OpResult::Cas { matched: r.get(0) }
            }
            OpCall::Append { data } => {
                let r = s.one("SELECT pgraft_replicate_entry($1::text)", &[data], t).await?;
                ok_or_unknown(r.get(0))
            }
        })
    }
}

/// Writes answer `t` when applied; an `f` promises nothing either way.
fn ok_or_unknown(applied: bool) -> OpResult {
    if applied {
        OpResult::Ok
    } else {
        OpResult::Unknown { error: "the function returned false".into() }
    }
}
