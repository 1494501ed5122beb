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
        "disable" | "prefer" | "require" => Ok(v.to_string()),
        "allow" | "verify-ca" | "verify-full" => {
            bail!("{what}: sslmode {v:?} is not supported here (disable, prefer or require)")
        }
        other => bail!("{what}: sslmode {other:?} (disable, prefer or require)"),
    }
}

/// Whether the connection string or URI `d` sets `key` itself (not merely contains the
/// word, in a password or a database name).
fn sets_key(d: &str, key: &str) -> bool {
    if is_uri(d) {
        let query = d.split_once('?').map_or("", |(_, q)| q);
        return query.split('&').any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == key));
    }
    // key=value pairs: a key starts the string or follows whitespace outside quotes.
    let (mut quoted, mut escaped, mut at_start) = (false, false, true);
    for (i, c) in d.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                at_start = true;
                continue;
            }
            _ if !quoted && at_start => {
                let k = d[i..].split(|c: char| c == '=' || c.is_whitespace()).next().unwrap_or("");
                if k == key {
                    return true;
                }
            }
            _ => {}
        }
        at_start = false;
    }
    false
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
            Some(d) if is_uri(d) => parts.extend(parse_conninfo(d)?.pairs()),
            Some(d) if d.contains('=') => parts.push(d.to_string()),
            Some(d) => parts.push(format!("dbname={}", quote(d))),
        }
        Ok(parts.join(" "))
    }
}

/// Whether psql would take `-d`'s value as a connection string rather than a name.
fn looks_like_conninfo(d: &str) -> bool {
    d.contains('=') || is_uri(d)
}

/// Whether `d` is a connection URI rather than a `key=value` string.
fn is_uri(d: &str) -> bool {
    d.starts_with("postgresql://") || d.starts_with("postgres://")
}

/// A connection string or URI's values (the parsing is tokio-postgres's, libpq's syntax).
fn parse_conninfo(d: &str) -> Result<Values> {
    let cfg: postgres::Config =
        d.parse().with_context(|| "-d/--dbname: not a valid connection string or URI")?;
    let hosts = pgraft_server_api::host_names(&cfg);
    // sslmode has a default in the parsed form: set only if written.
    let mode = sets_key(d, "sslmode").then(|| {
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

impl Values {
    /// The `key=value` pairs of the values set, quoted.
    fn pairs(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(h) = &self.hosts {
            parts.push(format!("host={}", quote(&h.join(","))));
        }
        if let Some(p) = &self.ports {
            let p: Vec<String> = p.iter().map(u16::to_string).collect();
            parts.push(format!("port={}", quote(&p.join(","))));
        }
        for (k, v) in [
            ("user", &self.user),
            ("dbname", &self.dbname),
            ("password", &self.password),
            ("sslmode", &self.sslmode),
            ("application_name", &self.application_name),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", quote(v)));
            }
        }
        if let Some(t) = self.connect_timeout {
            parts.push(format!("connect_timeout={}", t.as_secs().max(1)));
        }
        parts
    }
}

impl ConnSpec {
    /// The libpq `key=value` connection string of these values.
    pub fn conninfo(&self) -> String {
        let v = Values {
            hosts: Some(self.hosts.clone()),
            ports: Some(self.ports.clone()),
            user: Some(self.user.clone()),
            password: self.password.clone(),
            dbname: Some(self.dbname.clone()),
            sslmode: self.sslmode.clone(),
            application_name: self.application_name.clone(),
            connect_timeout: self.connect_timeout,
        };
        v.pairs().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: PgConnArgs, env: &[(&str, &str)]) -> Result<ConnSpec> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        args.resolve_with(&|k| env.get(k).cloned())
    }

    #[test]
    fn variables_then_flags_then_the_connection_string() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "disable"),
            ("USER", "login"),
        ];
        let s = resolve(PgConnArgs::default(), &env).expect("from the variables");
        assert_eq!(
            (s.hosts.clone(), s.ports.clone(), s.user.as_str(), s.dbname.as_str()),
            (vec!["envhost".to_string()], vec![6000], "envuser", "envdb")
        );
        assert_eq!((s.password.as_deref(), s.sslmode.as_deref()), (Some("pw"), Some("disable")));
        let flags = PgConnArgs {
            host: Some("a,b".into()),
            port: Some("7001,7002".into()),
            username: Some("flaguser".into()),
            dbname: Some("flagdb".into()),
        };
        let s = resolve(flags.clone(), &env).expect("flags");
        assert_eq!(s.hosts, vec!["a", "b"]);
        assert_eq!(s.ports, vec![7001, 7002]);
        assert_eq!((s.user.as_str(), s.dbname.as_str()), ("flaguser", "flagdb"));
        // A connection string's values win over the flags; what it leaves out stays.
        let cs = PgConnArgs { dbname: Some("host=c port=7003 dbname=csdb".into()), ..flags.clone() };
        let s = resolve(cs, &env).expect("a connection string");
        assert_eq!((s.hosts.clone(), s.ports.clone()), (vec!["c".to_string()], vec![7003]));
        assert_eq!(
            (s.user.as_str(), s.dbname.as_str(), s.password.as_deref()),
            ("flaguser", "csdb", Some("pw"))
        );
        // A URI.
        let uri = PgConnArgs {
            dbname: Some("postgresql://u:secret@h:7004/db?sslmode=require".into()),
            ..Default::default()
        };
        let s = resolve(uri, &[]).expect("a URI");
        assert_eq!((s.hosts.clone(), s.ports.clone()), (vec!["h".to_string()], vec![7004]));
        assert_eq!((s.user.as_str(), s.dbname.as_str()), ("u", "db"));
        assert_eq!((s.password.as_deref(), s.sslmode.as_deref()), (Some("secret"), Some("require")));
        assert!(!format!("{:?}", s.hosts).contains("secret"));
        // A password that merely contains the word does not set sslmode.
        let pw =
            PgConnArgs { dbname: Some("host=h password='my sslmode=x pw'".into()), ..Default::default() };
        let s = resolve(pw, &[("PGSSLMODE", "require")]).expect("a password with the word");
        assert_eq!(s.sslmode.as_deref(), Some("require"), "PGSSLMODE stays");
        assert!(sets_key("host=h sslmode=disable", "sslmode") && sets_key("sslmode=disable", "sslmode"));
        assert!(!sets_key("host=h password='sslmode=disable'", "sslmode"));
        assert!(sets_key("postgresql://h/db?sslmode=require", "sslmode"));
        assert!(!sets_key("postgresql://u:sslmode@h/db", "sslmode"));
        // Nothing at all: libpq's defaults.
        let s = resolve(PgConnArgs::default(), &[("USER", "login")]).expect("defaults");
        assert_eq!((s.user.as_str(), s.dbname.as_str(), s.ports.clone()), ("login", "login", vec![5432]));
    }

    #[test]
    fn bad_values_are_errors_that_say_which() {
        let e = |args: PgConnArgs, env: &[(&str, &str)]| {
            format!("{:#}", resolve(args, env).expect_err("refused"))
        };
        assert!(e(PgConnArgs::default(), &[("PGPORT", "x")]).contains("PGPORT"));
        assert!(e(PgConnArgs { port: Some("0".into()), ..Default::default() }, &[]).contains("--port"));
        assert!(e(PgConnArgs::default(), &[("PGSSLMODE", "maybe")]).contains("sslmode"));
        assert!(e(PgConnArgs::default(), &[("PGSSLMODE", "verify-full")]).contains("not supported"));
        assert!(e(PgConnArgs { dbname: Some("host='unterminated".into()), ..Default::default() }, &[])
            .contains("-d"));
        assert!(e(
            PgConnArgs { host: Some("a,b,c".into()), port: Some("1,2".into()), ..Default::default() },
            &[]
        )
        .contains("3 hosts but 2 ports"));
    }

    #[test]
    fn the_connection_string_round_trips_through_both_parsers() {
        let spec = ConnSpec {
            hosts: vec!["h1".into(), "h2".into()],
            ports: vec![5432, 5433],
            user: "o'brien".into(),
            password: Some("p w\\x".into()),
            dbname: "db".into(),
            sslmode: Some("disable".into()),
            application_name: None,
            connect_timeout: Some(Duration::from_secs(3)),
        };
        let text = spec.conninfo();
        let cfg: postgres::Config = text.parse().expect("tokio-postgres parses it");
        assert_eq!(cfg.get_user(), Some("o'brien"));
        assert_eq!(cfg.get_password(), Some(&b"p w\\x"[..]));
        assert_eq!(cfg.get_ports(), &[5432, 5433]);
        let again =
            PgConnArgs { dbname: Some(text), ..Default::default() }.resolve_with(&|_| None).expect("again");
        assert_eq!(again, spec);
    }
}
