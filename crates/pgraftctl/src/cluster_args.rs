//! How the cluster commands (`member`, `endpoint`, `leader`, `kv`, `log`, `config`) reach
//! the members: etcdctl's `--endpoints` list, or psql's ways (`-h`, `-p`, `-U`, `-d` with
//! a name, a connection string or a URI, and the `PG*` variables; see `pg_conn.rs`).
//!
//! ```text
//!   --endpoints a:5432,b:5433     (or PGRAFTCTL_ENDPOINTS, or -h a,b -p 5432,5433, or
//!                                  PGHOST=a,b PGPORT=5432,5433, or -d 'host=a,b port=...')
//!        │
//!        ├─ any():    the first endpoint that answers (the next on a refused connection)
//!        ├─ leader(): any(), then the member that pgraft_get_leader() names, found among
//!        │            the endpoints by its pgraft.node_id; retried when the leader moves
//!        └─ each():   every endpoint at once (endpoint status and health)
//! ```
//!
//! Every value travels as a bind parameter; every statement runs under
//! `statement_timeout = --command-timeout`.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use postgres::{Client, NoTls};

use crate::pg_conn::{ConnSpec, PgConnArgs};
use crate::server::Output;

/// Connection settings and the output format, shared by the cluster commands.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Members' PostgreSQL addresses, `host:port` (or `host`, or a Unix socket directory),
    /// comma separated. Default: the hosts and ports of -h/-p, -d or PGHOST/PGPORT, which
    /// may list several like libpq's.
    #[arg(long, global = true, value_delimiter = ',', env = "PGRAFTCTL_ENDPOINTS")]
    pub endpoints: Vec<String>,
    /// Host, port, role and database (the database where the pgraft extension was created),
    /// as psql takes them.
    #[command(flatten)]
    pub pg: PgConnArgs,
    /// How long to wait for a connection to one endpoint (`500ms`, `2s`).
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// statement_timeout of every statement sent (`5s`, `1m`).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Output format: an aligned table for people, or JSON for scripts.
    #[arg(
        long = "write-out",
        short = 'w',
        visible_alias = "output",
        short_alias = 'o',
        value_enum,
        default_value_t = Output::Table,
        global = true
    )]
    pub output: Output,
}

/// One member's PostgreSQL address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// A host name, an IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// The PostgreSQL port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An open connection to one member.
pub struct Session {
    /// Where it goes.
    pub endpoint: Endpoint,
    /// The libpq connection.
    pub client: Client,
}

impl Session {
    /// This member's `pgraft.node_id`.
    pub fn node_id(&mut self) -> Result<i32> {
        let row = self
            .client
            .query_one("SELECT current_setting('pgraft.node_id')::int", &[])
            .map_err(sql_error)
            .with_context(|| format!("read pgraft.node_id on {}", self.endpoint))?;
        Ok(row.get(0))
    }

    /// Whether this member leads, and the leader it knows of (0 when none).
    pub fn leadership(&mut self) -> Result<(bool, i32)> {
        let row = self
            .client
            .query_one("SELECT pgraft_is_leader(), pgraft_get_leader()", &[])
            .map_err(sql_error)
            .with_context(|| format!("ask {} for the leader", self.endpoint))?;
        Ok((row.get(0), row.get(1)))
    }
}

impl ClusterArgs {
    /// The endpoints to use, in order.
    pub fn endpoint_list(&self) -> Result<Vec<Endpoint>> {
        endpoints_of(&self.endpoints, &self.pg.resolve()?)
    }

    /// Opens a connection to one endpoint.
    pub fn connect(&self, ep: &Endpoint) -> Result<Session> {
        let spec = self.pg.resolve()?;
        if spec.sslmode.as_deref() == Some("require") {
            bail!(
                "sslmode=require: the cluster commands connect to PostgreSQL without TLS; \
                 use sslmode=disable or prefer (or reach the members over a trusted network)"
            );
        }
        let mut cfg = postgres::Config::new();
        cfg.host(&ep.host)
            .port(ep.port)
            .user(&spec.user)
            .dbname(&spec.dbname)
            .application_name(spec.application_name.as_deref().unwrap_or("pgraftctl"))
            .connect_timeout(self.dial_timeout)
            .options(&format!("-c statement_timeout={}", self.command_timeout.as_millis()));
        if let Some(pw) = &spec.password {
            cfg.password(pw);
        }
        let client = cfg.connect(NoTls).map_err(sql_error).with_context(|| format!("connect to {ep}"))?;
        Ok(Session { endpoint: ep.clone(), client })
    }

    /// The first endpoint that answers. Unreachable endpoints before it are reported on
    /// stderr; when none answers, the error lists each one's failure.
    pub fn any(&self) -> Result<Session> {
        let eps = self.endpoint_list()?;
        let mut failures = Vec::new();
        for ep in &eps {
            match self.connect(ep) {
                Ok(s) => {
                    for f in &failures {
                        eprintln!("pgraftctl: warning: {f}; used {ep}");
                    }
                    return Ok(s);
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        Err(anyhow!("no endpoint answered: {}", failures.join("; ")))
    }

    /// A connection to the leader, found among the endpoints: etcdctl's habit of sending a
    /// leader-only request where it can succeed. Fails with the leader's id and Raft
    /// address when it is not among the endpoints.
    pub fn leader(&self) -> Result<Session> {
        let mut first = self.any()?;
        let (leads, leader) = first.leadership()?;
        if leads {
            return Ok(first);
        }
        if leader <= 0 {
            bail!(
                "{} knows no leader (an election is under way, or a majority is unreachable); retry later",
                first.endpoint
            );
        }
        for ep in self.endpoint_list()?.iter().filter(|ep| **ep != first.endpoint) {
            let Ok(mut s) = self.connect(ep) else { continue };
            if s.node_id().ok() == Some(leader) && s.leadership().map(|(l, _)| l).unwrap_or(false) {
                return Ok(s);
            }
        }
        let raft_addr = first
            .client
            .query_opt("SELECT address || ':' || port FROM pgraft_get_nodes() WHERE node_id = $1", &[&leader])
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|| "an unknown address".to_string());
        bail!(
            "{} is not the leader; the leader is node {leader} (Raft address {raft_addr}), which is not \
             among the endpoints; add its PostgreSQL address to --endpoints",
            first.endpoint
        )
    }

    /// Runs `f` on the leader (`follow`) or on the first endpoint that answers; when the
    /// leader moved between finding it and running `f`, finds it again (three tries).
    pub fn on_leader<T>(
        &self,
        follow: bool,
        what: &str,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<(Endpoint, T)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut s = if follow { self.leader()? } else { self.any()? };
            if follow && Some(&s.endpoint) != self.endpoint_list()?.first() {
                eprintln!("pgraftctl: following the leader to {}", s.endpoint);
            }
            match f(&mut s.client) {
                Ok(v) => return Ok((s.endpoint, v)),
                Err(e) if follow && attempt < 3 && is_not_leader(&e) => continue,
                Err(e) => return Err(sql_error(e)).with_context(|| format!("{what} on {}", s.endpoint)),
            }
        }
    }
}

/// Whether a member refused a leader-only request because it does not lead.
pub fn is_not_leader(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
            && d.message().starts_with("not the leader")
    })
}

/// A libpq error as an operator needs it: the server's message, SQLSTATE, detail and hint.
pub fn sql_error(e: postgres::Error) -> anyhow::Error {
    let Some(db) = e.as_db_error() else {
        return anyhow!(e);
    };
    let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(d) = db.detail() {
        text.push_str(&format!("; detail: {d}"));
    }
    if matches!(db.code().code(), "42883" | "42P01" | "3F000") && db.message().contains("pgraft") {
        // The server's own hint (explicit casts) misleads here.
        text.push_str("; hint: is the pgraft extension created in this database (--dbname)?");
    } else if let Some(h) = db.hint() {
        text.push_str(&format!("; hint: {h}"));
    }
    anyhow!(text)
}

/// The endpoints: `--endpoints` (each with its port, or the one port of `spec`), else the
/// hosts of `spec` paired with its ports.
fn endpoints_of(endpoints: &[String], spec: &ConnSpec) -> Result<Vec<Endpoint>> {
    if !endpoints.is_empty() {
        let default_port = match spec.ports.as_slice() {
            [p] => *p,
            _ => bail!("--port lists several ports; with --endpoints give each endpoint its port"),
        };
        return endpoints.iter().map(|e| parse_endpoint(e, default_port)).collect();
    }
    Ok(spec
        .hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Endpoint {
            host: host.clone(),
            port: spec.ports.get(i).or(spec.ports.first()).copied().unwrap_or(5432),
        })
        .collect())
}

/// `host:port`, `[v6]:port`, `host` or `/socket/dir` (port from `default_port`).
fn parse_endpoint(s: &str, default_port: u16) -> Result<Endpoint> {
    let s = s.trim();
    if s.is_empty() {
        bail!("an empty endpoint in --endpoints");
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').with_context(|| format!("endpoint {s:?}: no closing ]"))?;
        (h.to_string(), tail.strip_prefix(':'))
    } else if s.starts_with('/') || s.matches(':').count() != 1 {
        (s.to_string(), None)
    } else {
        let (h, p) = s.rsplit_once(':').expect("one colon");
        (h.to_string(), Some(p))
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).with_context(|| {
            format!("endpoint {s:?}: {p:?} is not a port number (host:port, e.g. 127.0.0.1:5432)")
        })?,
        None => default_port,
    };
    if host.is_empty() {
        bail!("endpoint {s:?} names no host");
    }
    Ok(Endpoint { host, port })
}

/// `250ms`, `2s`, `1.5s`, `1m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 1m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s or m)")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("{s:?} is out of range (more than 0, less than a day)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_etcdctl_and_libpq() {
        let e = |s: &str| parse_endpoint(s, 5432).map(|e| e.to_string());
        assert_eq!(e("127.0.0.1:5433").unwrap(), "127.0.0.1:5433");
        assert_eq!(e("localhost").unwrap(), "localhost:5432");
        assert_eq!(e("[::1]:7").unwrap(), "[::1]:7");
        assert_eq!(e("/var/run/postgresql").unwrap(), "/var/run/postgresql:5432");
        assert!(e("127.0.0.1:x").unwrap_err().to_string().contains("not a port number"));
        assert!(e("127.0.0.1:0").is_err());
        assert!(e(":5432").is_err());
        assert!(e("").is_err());
    }

    #[test]
    fn host_and_port_lists_pair_up() {
        let list = |host: Option<&str>, port: Option<&str>, eps: &[&str]| {
            let pg = PgConnArgs {
                host: host.map(str::to_string),
                port: port.map(str::to_string),
                ..Default::default()
            };
            let spec = pg.resolve_with(&|_| None)?;
            let eps: Vec<String> = eps.iter().map(|s| s.to_string()).collect();
            endpoints_of(&eps, &spec).map(|v| v.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(","))
        };
        assert_eq!(list(Some("127.0.0.1"), None, &[]).unwrap(), "127.0.0.1:5432");
        assert_eq!(list(Some("a,b"), Some("1,2"), &[]).unwrap(), "a:1,b:2");
        assert_eq!(list(Some("a,b"), Some("7"), &[]).unwrap(), "a:7,b:7");
        assert!(list(Some("a,b,c"), Some("1,2"), &[]).is_err());
        assert_eq!(list(Some("ignored"), Some("9"), &["x", "y:3"]).unwrap(), "x:9,y:3");
        assert!(list(Some("a,b"), Some("1,2"), &["x"]).is_err(), "several ports with --endpoints");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
