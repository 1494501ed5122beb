//! How every command reaches PostgreSQL: the way psql and pg_basebackup do.
//!
//! ```text
//!   PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSSLMODE PGAPPNAME PGCONNECT_TIMEOUT
//!     < -h/--host  -p/--port  -U/--username
//!       < -d/--dbname: a database name, or a connection string (host=... port=...) or a
//!         URI (postgresql://user@host:port/db?sslmode=...) whose values win, as libpq's
//!         expanded dbname does (psql passes -h, -p, -U before it)
//!   nothing anywhere: the Unix socket directory /var/run/postgresql (127.0.0.1 where it
//!   does not exist), port 5432, the login name, a database of the user's name
//! ```
//!
//! Hosts and ports may list several, comma separated, as libpq's do.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

/// The connection flags of psql, shared by the commands that reach one server.
#[derive(Args, Debug, Clone, Default)]
pub struct PgConnArgs {
    /// A database name, or a connection string (`host=... port=... user=...`) or URI
    /// (`postgresql://...`), as psql's -d. Its values win over the flags below and the PG*
    /// variables.
    #[arg(short = 'd', long = "dbname", visible_alias = "conninfo", global = true)]
    pub dbname: Option<String>,
    /// Host name, IP address or Unix socket directory; several, comma separated (PGHOST).
    #[arg(short = 'h', long = "host", global = true)]
    pub host: Option<String>,
    /// Port; several, comma separated, pair with the hosts (PGPORT).
    #[arg(short = 'p', long = "port", global = true)]
    pub port: Option<String>,
    /// Role to connect as (PGUSER; default: the login name). The password comes from
    /// PGPASSWORD or the connection string.
    #[arg(short = 'U', long = "username", visible_alias = "user", global = true)]
    pub username: Option<String>,
}

/// Where and as whom to connect, every source applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSpec {
    /// Hosts (names, addresses or socket directories), in order.
    pub hosts: Vec<String>,
    /// Ports: one for all hosts, or one per host.
    pub ports: Vec<u16>,
    /// The role.
    pub user: String,
    /// Its password, if any.
    pub password: Option<String>,
    /// The database.
    pub dbname: String,
    /// `disable`, `prefer` or `require`, if set.
    pub sslmode: Option<String>,
    /// `application_name`, if set.
    pub application_name: Option<String>,
    /// How long to wait for a connection, if set.
    pub connect_timeout: Option<Duration>,
}

/// One source's values (each `None` when the source does not set it).
#[derive(Debug, Default, Clone)]
struct Values {
    hosts: Option<Vec<String>>,
    ports: Option<Vec<u16>>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<Duration>,
}

impl Values {
    /// `other`'s values where it has them.
    fn overlay(self, other: Values) -> Values {
        Values {
            hosts: other.hosts.or(self.hosts),
            ports: other.ports.or(self.ports),
            user: other.user.or(self.user),
            password: other.password.or(self.password),
            dbname: other.dbname.or(self.dbname),
            sslmode: other.sslmode.or(self.sslmode),
            application_name: other.application_name.or(self.application_name),
            connect_timeout: other.connect_timeout.or(self.connect_timeout),
        }
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).collect()
}

fn ports(s: &str, what: &str) -> Result<Vec<u16>> {
    list(s)
        .iter()
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{what}: {p:?} is not a port number"))
        })
        .collect()
}

fn sslmode(v: &str, what: &str) -> Result<String> {
    match v {
        "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => Ok(v.to_string()),
        other => bail!("{what}: sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"),
    }
}

impl PgConnArgs {
    /// Applies the PG* variables of `env`, then the flags, then `-d`.
    pub fn resolve_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnSpec> {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        let from_env = Values {
            hosts: var("PGHOST").map(|h| list(&h)),
            ports: var("PGPORT").map(|p| ports(&p, "PGPORT")).transpose()?,
            user: var("PGUSER"),
            password: var("PGPASSWORD"),
            dbname: var("PGDATABASE"),
            sslmode: var("PGSSLMODE").map(|m| sslmode(&m, "PGSSLMODE")).transpose()?,
            application_name: var("PGAPPNAME"),
            connect_timeout: var("PGCONNECT_TIMEOUT")
                .map(|t| {
                    t.parse::<u64>()
                        .map(Duration::from_secs)
                        .context("PGCONNECT_TIMEOUT: not a number of seconds")
                })
                .transpose()?,
        };
        let from_flags = Values {
            hosts: self.host.as_deref().map(list),
            ports: self.port.as_deref().map(|p| ports(p, "--port")).transpose()?,
            user: self.username.clone(),
            ..Values::default()
        };
        let from_dbname = match self.dbname.as_deref() {
            None => Values::default(),
            Some(d) if looks_like_conninfo(d) => parse_conninfo(d)?,
            Some(d) => Values { dbname: Some(d.to_string()), ..Values::default() },
        };
        let v = from_env.overlay(from_flags).overlay(from_dbname);
        let user = v
            .user
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".to_string());
        let hosts = v.hosts.filter(|h| !h.is_empty()).unwrap_or_else(|| {
            let socket_dir = "/var/run/postgresql";
            vec![if std::path::Path::new(socket_dir).is_dir() { socket_dir } else { "127.0.0.1" }.to_string()]
        });
        let ports = v.ports.unwrap_or_else(|| vec![5432]);
        if ports.len() > 1 && ports.len() != hosts.len() {
            bail!("{} hosts but {} ports: give one port, or one per host", hosts.len(), ports.len());
        }
        Ok(ConnSpec {
            dbname: v.dbname.unwrap_or_else(|| user.clone()),
            user,
            hosts,
            ports,
            password: v.password,
            sslmode: v.sslmode,
            application_name: v.application_name,
            connect_timeout: v.connect_timeout,
        })
    }

    /// [`PgConnArgs::resolve_with`] this process's environment.
    pub fn resolve(&self) -> Result<ConnSpec> {
        self.resolve_with(&|k| std::env::var(k).ok())
    }

    /// A connection string for the WAL streaming client, which applies the PG* variables
    /// itself and knows keys tokio-postgres does not (`sslrootcert`): the flags, then `-d`
    /// as written (a connection string), converted (a URI) or as `dbname` (a name), so that
    /// later values win in the same order as [`PgConnArgs::resolve`].
    pub fn walstream_conninfo(&self) -> Result<String> {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host={}", quote(h)));
        }
        if let Some(p) = &self.port {
            ports(p, "--port")?;
            parts.push(format!("port={}", quote(p)));
        }
        if let Some(u) = &self.username {
            parts.push(format!("user={}", quote(u)));
        }
        match self.dbname.as_deref() {
            None => {}
            Some(d) if d.starts_with("postgresql://") || d.starts_with("postgres://") => {
                let v = parse_conninfo(d)?;
                if let Some(h) = v.hosts {
                    parts.push(format!("host={}", quote(&h.join(","))));
                }
                if let Some(p) = v.ports {
                    let p: Vec<String> = p.iter().map(u16::to_string).collect();
                    parts.push(format!("port={}", quote(&p.join(","))));
                }
                for (k, val) in [
                    ("user", v.user),
                    ("password", v.password),
                    ("dbname", v.dbname),
                    ("sslmode", v.sslmode),
                    ("application_name", v.application_name),
                ] {
                    if let Some(val) = val {
                        parts.push(format!("{k}={}", quote(&val)));
                    }
                }
                if let Some(t) = v.connect_timeout {
                    parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
                }
            }
            Some(d) if d.contains('=') => parts.push(d.to_string()),
            Some(d) => parts.push(format!("dbname={}", quote(d))),
        }
        Ok(parts.join(" "))
    }
}

/// Whether psql would take `-d`'s value as a connection string rather than a name.
fn looks_like_conninfo(d: &str) -> bool {
    d.contains('=') || d.starts_with("postgresql://") || d.starts_with("postgres://")
}

/// A connection string or URI's values (the parsing is tokio-postgres's, libpq's syntax).
fn parse_conninfo(d: &str) -> Result<Values> {
    let cfg: postgres::Config =
        d.parse().with_context(|| "-d/--dbname: not a valid connection string or URI")?;
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    // sslmode has a default in the parsed form: set only if written.
    let mode = d.contains("sslmode").then(|| {
        match cfg.get_ssl_mode() {
            postgres::config::SslMode::Disable => "disable",
            postgres::config::SslMode::Require => "require",
            _ => "prefer",
        }
        .to_string()
    });
    Ok(Values {
        hosts: (!hosts.is_empty()).then_some(hosts),
        ports: (!cfg.get_ports().is_empty()).then(|| cfg.get_ports().to_vec()),
        user: cfg.get_user().map(str::to_string),
        password: cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
        dbname: cfg.get_dbname().map(str::to_string),
        sslmode: mode,
        application_name: cfg.get_application_name().map(str::to_string),
        connect_timeout: cfg.get_connect_timeout().copied(),
    })
}

/// Quotes a connection-string value.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl ConnSpec {
    /// The libpq `key=value` connection string of these values.
    pub fn conninfo(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut parts = vec![
            format!("host={}", quote(&self.hosts.join(","))),
            format!("port={}", quote(&ports.join(","))),
            format!("user={}", quote(&self.user)),
            format!("dbname={}", quote(&self.dbname)),
        ];
        if let Some(p) = &self.password {
            parts.push(format!("password={}", quote(p)));
        }
        if let Some(m) = &self.sslmode {
            parts.push(format!("sslmode={m}"));
        }
        if let Some(a) = &self.application_name {
            parts.push(format!("application_name={}", quote(a)));
        }
        if let Some(t) = self.connect_timeout {
            parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
        }
        parts.join(" ")
    }
}
