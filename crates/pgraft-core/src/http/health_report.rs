//! What a member's worker last published about itself, its server and the cluster, and the
//! status codes it earns on each endpoint (Patroni's REST API, so HAProxy and Kubernetes
//! set-ups written for it work unchanged):
//!
//! | path | 200 when |
//! |---|---|
//! | `/primary`, `/read-write`, `/` | this server is the primary on record, its gate is open (not fenced), and with failover on its member leads with a lease that has not ended by the time the request arrives |
//! | `/replica` | a standby whose WAL receiver streams, replay within `?lag=` bytes of the primary (default `pgraft.maximum_lag_on_failover`), and that can serve |
//! | `/read-only`, `/readiness` | `/primary` or `/replica` would be 200 |
//! | `/health` | the server accepts connections (not recovering from a crash, probes answered) |
//! | `/leader` | this member is the Raft leader and holds its lease (a majority heard from within the election timeout) |
//! | `/liveness` | the worker's report is fresh |
//! | `/cluster` | always: every member as this one knows it |
//!
//! Every answer but `/cluster` is 503 when the report is older than [`STALE_AFTER_MS`]:
//! the worker's loop (or the Raft thread it reads) has stopped, so nothing it said still
//! holds. The body says why a status is 503.

use serde::Serialize;

use super::request::{parse_bytes, HttpRequest};
use super::server::HttpResponse;
use crate::ha::{lsn_text, Lsn};

/// A report older than this answers 503: the worker publishes every 50 ms, and a primary
/// must stop being advertised well within the election timeout once its loop stops.
pub const STALE_AFTER_MS: i64 = 1_000;

/// The member's Raft state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RaftReport {
    /// `leader`, `follower`, `candidate` or `precandidate`.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The leader known here (0: none).
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Whether a majority is reachable.
    pub quorum: bool,
    /// Until when this leader holds its lease, ms since the Unix epoch: the moment fewer
    /// than a majority will have been heard from within the election timeout. Judged when
    /// a request arrives, so a primary stops being advertised when its lease ends even if
    /// the worker's loop is stuck (a new primary is promoted only after it ends).
    pub lease_until_ms: Option<i64>,
}

/// The member's PostgreSQL server, as its worker read it from shared memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerReport {
    /// `primary`, `standby`, or `recovering` (replaying WAL after a crash).
    pub role: String,
    /// Its timeline.
    pub timeline: u32,
    /// Received and flushed WAL (a primary: flushed).
    #[serde(serialize_with = "as_lsn")]
    pub received_lsn: Lsn,
    /// Replayed WAL (a primary: flushed).
    #[serde(serialize_with = "as_lsn")]
    pub replayed_lsn: Lsn,
    /// A standby's WAL receiver is streaming.
    pub streaming: bool,
    /// The end of the primary's WAL as its last message to this standby said.
    #[serde(serialize_with = "as_opt_lsn")]
    pub upstream_lsn: Option<Lsn>,
    /// Why the server cannot serve, if it cannot.
    pub problem: Option<String>,
}

impl ServerReport {
    /// How far replay is behind the primary's WAL, for a streaming standby.
    pub fn lag_bytes(&self) -> Option<u64> {
        (self.role == "standby").then_some(())?;
        self.upstream_lsn.map(|end| end.saturating_sub(self.replayed_lsn))
    }
}

/// Failover as this member sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HaReport {
    /// `pgraft.failover_enabled` in force.
    pub failover_enabled: bool,
    /// The member whose server is the primary on record.
    pub primary: Option<u64>,
    /// The term in which it was named.
    pub primary_term: Option<u64>,
    /// This server's gate: `open`, `fenced` or `unknown`.
    pub gate: String,
    /// What the failover loop waits for, if anything.
    pub note: Option<String>,
    /// `pgraft.maximum_lag_on_failover` in bytes: `/replica`'s default limit.
    pub max_lag_bytes: u64,
    /// `pgraft.synchronous_mode`.
    pub synchronous_mode: String,
    /// Primary decisions applied in the cluster (the bootstrap one included).
    pub promotions: u64,
}

/// A standby as the primary's `pg_stat_replication` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StandbyReport {
    /// The WAL sender's state (`streaming`, `catchup`, ...).
    pub state: String,
    /// What the standby flushed.
    #[serde(serialize_with = "as_lsn")]
    pub flushed_lsn: Lsn,
    /// What it replayed.
    #[serde(serialize_with = "as_lsn")]
    pub replayed_lsn: Lsn,
    /// The primary's flushed WAL minus what the standby flushed.
    pub lag_bytes: u64,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
}

/// One member of the cluster, as this member knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemberReport {
    /// Its node id.
    pub id: u64,
    /// `leader`, `follower`, `learner`, or this member's own role.
    pub raft_state: String,
    /// Its Raft address.
    pub raft_address: Option<String>,
    /// Its PostgreSQL server's `host:port`, as registered.
    pub server: Option<String>,
    /// `primary` for the primary on record, `standby` for another registered server.
    pub role: Option<String>,
    /// Why its server cannot serve, as it published.
    pub problem: Option<String>,
    /// The server position it last published.
    #[serde(serialize_with = "as_opt_lsn")]
    pub position_lsn: Option<Lsn>,
    /// How this member's primary sees it streaming (on the primary only).
    pub standby: Option<StandbyReport>,
    /// Milliseconds since this member last heard from it (None: never, or itself).
    pub last_heard_ms_ago: Option<i64>,
}

/// Everything an endpoint answers from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// This member.
    pub member: u64,
    /// When the worker made the report, ms since the Unix epoch.
    pub at_ms: i64,
    /// Raft.
    pub raft: RaftReport,
    /// The server (None until the worker has looked).
    pub server: Option<ServerReport>,
    /// Failover.
    pub ha: HaReport,
    /// Every member.
    pub members: Vec<MemberReport>,
}

fn as_lsn<S: serde::Serializer>(v: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&lsn_text(*v))
}

fn as_opt_lsn<S: serde::Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&lsn_text(*v)),
        None => s.serialize_none(),
    }
}

impl HealthReport {
    /// The answer to `req` at `now_ms` (`/metrics` is the host's).
    pub fn answer(&self, now_ms: i64, req: &HttpRequest) -> HttpResponse {
        let max_lag = match req.param("lag") {
            None => self.ha.max_lag_bytes,
            Some(text) => match parse_bytes(text) {
                Some(n) => n,
                None => {
                    return HttpResponse::error(
                        400,
                        &format!("lag={text:?}: give bytes, or a number with kB, MB or GB"),
                    )
                }
            },
        };
        let problem = match req.path.as_str() {
            "/" | "/primary" | "/read-write" => self.primary_problem(now_ms),
            "/replica" => self.replica_problem(now_ms, max_lag),
            "/read-only" | "/readiness" => {
                self.primary_problem(now_ms).and(self.replica_problem(now_ms, max_lag))
            }
            "/health" => self.health_problem(now_ms),
            "/leader" => self.leader_problem(now_ms),
            "/liveness" => self.stale(now_ms),
            "/cluster" => {
                return HttpResponse::json(
                    200,
                    &serde_json::json!({ "age_ms": now_ms - self.at_ms, "member": self.member, "raft": self.raft,
                        "ha": self.ha, "members": self.members }),
                )
            }
            other => {
                return HttpResponse::error(
                    404,
                    &format!("no endpoint {other:?}: /primary, /replica, /read-only, /health, /leader, /cluster, /metrics"),
                )
            }
        };
        let mut body = self.summary(now_ms);
        let status = match problem {
            None => 200,
            Some(why) => {
                body["reason"] = why.into();
                503
            }
        };
        HttpResponse::json(status, &body)
    }

    /// The short state every status answer carries.
    fn summary(&self, now_ms: i64) -> serde_json::Value {
        let s = self.server.as_ref();
        serde_json::json!({
            "member": self.member,
            "role": s.map(|s| s.role.as_str()),
            "raft_role": self.raft.role,
            "term": self.raft.term,
            "leader": self.raft.leader,
            "primary": self.ha.primary,
            "timeline": s.map(|s| s.timeline),
            "received_lsn": s.map(|s| lsn_text(s.received_lsn)),
            "replayed_lsn": s.map(|s| lsn_text(s.replayed_lsn)),
            "lag_bytes": s.and_then(ServerReport::lag_bytes),
            "gate": self.ha.gate,
            "lease_ms_left": self.raft.lease_until_ms.map(|t| t - now_ms),
            "age_ms": now_ms - self.at_ms,
        })
    }

    fn stale(&self, now_ms: i64) -> Option<String> {
        let age = now_ms - self.at_ms;
        (self.at_ms == 0 || age > STALE_AFTER_MS).then(|| {
            if self.at_ms == 0 {
                "the worker has not reported yet".to_string()
            } else {
                format!("the worker's last report is {age} ms old: its loop or its Raft thread is stuck")
            }
        })
    }

    fn server(&self) -> Result<&ServerReport, String> {
        self.server.as_ref().ok_or_else(|| "the worker has not looked at the server yet".to_string())
    }

    /// Why this server is not the writable primary, if it is not.
    pub fn primary_problem(&self, now_ms: i64) -> Option<String> {
        if let Some(why) = self.stale(now_ms) {
            return Some(why);
        }
        let s = match self.server() {
            Ok(s) => s,
            Err(why) => return Some(why),
        };
        if s.role != "primary" {
            return Some(format!(
                "this server is a {} (node {:?} is the primary on record)",
                s.role, self.ha.primary
            ));
        }
        match self.ha.primary {
            None => return Some("no primary on record: failover is not set up in this cluster".into()),
            Some(p) if p != self.member => {
                return Some(format!(
                    "node {p} is the primary on record; this server is fenced or about to be"
                ))
            }
            Some(_) => {}
        }
        if self.ha.gate != "open" {
            return Some(format!("this server's sessions are closed (gate {})", self.ha.gate));
        }
        if self.ha.failover_enabled && !self.leads_with_lease(now_ms) {
            return Some("this member does not lead with a majority's lease".into());
        }
        None
    }

    /// Why this server is not a standby fit for reads within `max_lag` bytes, if it is not.
    pub fn replica_problem(&self, now_ms: i64, max_lag: u64) -> Option<String> {
        if let Some(why) = self.stale(now_ms) {
            return Some(why);
        }
        let s = match self.server() {
            Ok(s) => s,
            Err(why) => return Some(why),
        };
        if s.role != "standby" {
            return Some(format!("this server is a {}, not a standby", s.role));
        }
        if let Some(why) = &s.problem {
            return Some(why.clone());
        }
        if !s.streaming {
            return Some("the standby's WAL receiver is not streaming".into());
        }
        match s.lag_bytes() {
            None => Some("the primary's position is not known yet".into()),
            Some(lag) if lag > max_lag => {
                Some(format!("replay is {lag} bytes behind the primary's WAL (limit {max_lag})"))
            }
            Some(_) => None,
        }
    }

    fn health_problem(&self, now_ms: i64) -> Option<String> {
        if let Some(why) = self.stale(now_ms) {
            return Some(why);
        }
        let s = match self.server() {
            Ok(s) => s,
            Err(why) => return Some(why),
        };
        if s.role == "recovering" {
            return Some("the server is replaying WAL after a crash".into());
        }
        s.problem.clone()
    }

    fn leader_problem(&self, now_ms: i64) -> Option<String> {
        if let Some(why) = self.stale(now_ms) {
            return Some(why);
        }
        if self.raft.role != "leader" {
            return Some(match self.raft.leader {
                0 => "no Raft leader is known".to_string(),
                n => format!("node {n} is the Raft leader"),
            });
        }
        (!self.leads_with_lease(now_ms))
            .then(|| "this member leads in its own view but has not heard from a majority lately".to_string())
    }

    /// This member leads, and its lease has not ended by `now_ms`.
    fn leads_with_lease(&self, now_ms: i64) -> bool {
        self.raft.role == "leader" && self.raft.lease_until_ms.is_some_and(|t| t >= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse_head;

    const NOW: i64 = 1_000_000;

    fn get(r: &HealthReport, target: &str) -> (u16, serde_json::Value) {
        let req = parse_head(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes()).expect("head");
        let a = r.answer(NOW, &req);
        (a.status, serde_json::from_str(&a.body).expect("json body"))
    }

    fn primary() -> HealthReport {
        HealthReport {
            member: 1,
            at_ms: NOW - 30,
            raft: RaftReport {
                role: "leader".into(),
                term: 4,
                leader: 1,
                quorum: true,
                lease_until_ms: Some(NOW + 500),
                ..Default::default()
            },
            server: Some(ServerReport {
                role: "primary".into(),
                timeline: 2,
                replayed_lsn: 500,
                received_lsn: 500,
                ..Default::default()
            }),
            ha: HaReport {
                failover_enabled: true,
                primary: Some(1),
                primary_term: Some(3),
                gate: "open".into(),
                max_lag_bytes: 1 << 20,
                ..Default::default()
            },
            members: vec![MemberReport { id: 1, raft_state: "leader".into(), ..Default::default() }],
        }
    }

    fn standby(lag: u64) -> HealthReport {
        HealthReport {
            member: 2,
            raft: RaftReport {
                role: "follower".into(),
                term: 4,
                leader: 1,
                quorum: true,
                ..Default::default()
            },
            server: Some(ServerReport {
                role: "standby".into(),
                timeline: 2,
                replayed_lsn: 100,
                received_lsn: 100,
                streaming: true,
                upstream_lsn: Some(100 + lag),
                problem: None,
            }),
            ..primary()
        }
    }

    #[test]
    fn the_primary_answers_200_on_primary_and_503_on_replica() {
        let r = primary();
        for p in ["/primary", "/read-write", "/", "/read-only", "/health", "/leader", "/liveness"] {
            assert_eq!(get(&r, p).0, 200, "{p}");
        }
        let (code, body) = get(&r, "/replica");
        assert_eq!(code, 503);
        assert!(body["reason"].as_str().expect("reason").contains("not a standby"), "{body}");
        assert_eq!(body["role"], "primary");
        assert_eq!(get(&r, "/cluster").0, 200);
        assert_eq!(get(&r, "/nope").0, 404);
    }

    #[test]
    fn a_primary_is_not_advertised_when_fenced_deposed_stale_or_without_lease() {
        let mut fenced = primary();
        fenced.ha.gate = "fenced".into();
        let mut deposed = primary();
        deposed.ha.primary = Some(3);
        let mut no_lease = primary();
        no_lease.raft.lease_until_ms = None;
        let mut lease_ended = primary();
        lease_ended.raft.lease_until_ms = Some(NOW - 1);
        let mut stale = primary();
        stale.at_ms = NOW - STALE_AFTER_MS - 1;
        let mut not_ha = primary();
        not_ha.ha.primary = None;
        assert_eq!(get(&lease_ended, "/leader").0, 503, "a leader without a lease is not advertised");
        for (what, r) in [
            ("fenced", fenced),
            ("deposed", deposed),
            ("lease", no_lease),
            ("lease ended", lease_ended),
            ("stale", stale),
            ("not ha", not_ha),
        ] {
            let (code, body) = get(&r, "/primary");
            assert_eq!(code, 503, "{what}");
            assert!(body["reason"].is_string(), "{what}: {body}");
        }
        // Failover paused: the primary on record is advertised whoever leads.
        let mut paused = primary();
        paused.ha.failover_enabled = false;
        paused.raft.role = "follower".into();
        assert_eq!(get(&paused, "/primary").0, 200);
        assert_eq!(get(&paused, "/leader").0, 503);
    }

    #[test]
    fn a_standby_is_a_replica_within_the_lag_limit() {
        let r = standby(1000);
        assert_eq!(get(&r, "/replica").0, 200);
        assert_eq!(get(&r, "/read-only").0, 200);
        assert_eq!(get(&r, "/health").0, 200);
        assert_eq!(get(&r, "/primary").0, 503);
        assert_eq!(get(&r, "/leader").0, 503);
        let (code, body) = get(&r, "/replica?lag=999");
        assert_eq!(code, 503);
        assert!(body["reason"].as_str().expect("reason").contains("1000 bytes behind"), "{body}");
        assert_eq!(body["lag_bytes"], 1000);
        assert_eq!(get(&r, "/replica?lag=1kB").0, 200);
        assert_eq!(get(&r, "/replica?lag=lots").0, 400);
        assert_eq!(get(&standby(2 << 20), "/replica").0, 503, "past the default limit");
        let mut cut = standby(0);
        cut.server.as_mut().expect("server").streaming = false;
        assert_eq!(get(&cut, "/replica").0, 503);
        let mut sick = standby(0);
        sick.server.as_mut().expect("server").problem = Some("not consistent".into());
        assert_eq!(get(&sick, "/replica").0, 503);
        assert_eq!(get(&sick, "/health").0, 503);
    }

    #[test]
    fn a_member_that_has_not_reported_answers_503() {
        let r = HealthReport::default();
        for p in ["/primary", "/replica", "/read-only", "/health", "/leader", "/liveness"] {
            let (code, body) = get(&r, p);
            assert_eq!(code, 503, "{p}");
            assert!(body["reason"].as_str().expect("reason").contains("not reported"), "{p}: {body}");
        }
    }

    #[test]
    fn cluster_lists_members_with_lsns_as_text() {
        let mut r = primary();
        r.members.push(MemberReport {
            id: 2,
            raft_state: "follower".into(),
            standby: Some(StandbyReport {
                state: "streaming".into(),
                flushed_lsn: 0x1_0000_0010,
                lag_bytes: 5,
                ..Default::default()
            }),
            ..Default::default()
        });
        let (code, body) = get(&r, "/cluster");
        assert_eq!(code, 200);
        assert_eq!(body["members"][1]["standby"]["flushed_lsn"], "1/10");
        assert_eq!(body["members"][1]["standby"]["lag_bytes"], 5);
        assert_eq!(body["age_ms"], 30);
    }
}
