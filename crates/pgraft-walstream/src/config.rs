//! Connection settings, from a libpq connection string (`key=value ...`) and the `PG*`
//! environment variables, the way operators already write them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Which kind of replication connection the server should start (the `replication`
/// startup parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// `replication=true`: physical replication; no database is attached.
    Physical,
    /// `replication=database`: logical replication in the database of `dbname`; plain
    /// SQL is allowed too.
    Logical,
}

/// libpq's `sslmode`: whether to use TLS and how much of the server's certificate to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS only if the server refuses a plain connection.
    Allow,
    /// TLS if the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is not checked.
    Require,
    /// TLS, and the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(Error::Config(format!("invalid sslmode {other:?}"))),
        })
    }
}

/// Everything needed to open a replication connection.
///
/// `Debug` never shows the password.
#[derive(Clone)]
pub struct Config {
    /// A host name or IP address for TCP, or a directory (starting with `/`) holding the
    /// server's Unix-domain socket.
    pub host: String,
    /// An IP address to connect to instead of resolving `host`; `host` is still the name
    /// the TLS certificate must carry (libpq's `hostaddr`).
    pub hostaddr: Option<std::net::IpAddr>,
    /// The server port (also names the socket file in a socket directory).
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// The password, when the server asks for one.
    pub password: Option<String>,
    /// The database (used by logical replication connections).
    pub dbname: Option<String>,
    /// Shown in `pg_stat_replication.application_name`.
    pub application_name: Option<String>,
    /// TLS policy.
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-ca` and `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// How long to wait for the TCP connection and the login.
    pub connect_timeout: Duration,
    /// Physical or logical.
    pub replication: ReplicationMode,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("connect_timeout", &self.connect_timeout)
            .field("replication", &self.replication)
            .finish()
    }
}

impl Default for Config {
    /// libpq's defaults: the Unix socket in /var/run/postgresql, port 5432, the login
    /// name of this process, `sslmode=prefer`; physical replication.
    fn default() -> Self {
        Config {
            host: "/var/run/postgresql".into(),
            hostaddr: None,
            port: 5432,
            user: std::env::var("USER").unwrap_or_else(|_| "postgres".into()),
            password: None,
            dbname: None,
            application_name: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(30),
            replication: ReplicationMode::Physical,
        }
    }
}

impl Config {
    /// Parses a libpq key/value connection string, on top of the defaults and the
    /// `PG*` environment variables (the connection string wins, as in libpq).
    ///
    /// Keys: host, hostaddr, port, user, password, dbname, application_name, sslmode, sslrootcert,
    /// connect_timeout, replication (`true`/`on`/`yes`/`1` or `database`). Values may be
    /// single-quoted, with `\'` and `\\` escapes. Unknown keys are refused, as libpq does.
    pub fn from_conninfo(conninfo: &str) -> Result<Config> {
        let mut cfg = Config::default();
        let env: Vec<(&str, &str)> = vec![
            ("PGHOST", "host"),
            ("PGHOSTADDR", "hostaddr"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
            ("PGDATABASE", "dbname"),
            ("PGAPPNAME", "application_name"),
            ("PGSSLMODE", "sslmode"),
            ("PGSSLROOTCERT", "sslrootcert"),
            ("PGCONNECT_TIMEOUT", "connect_timeout"),
        ];
        for (var, key) in env {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    cfg.set(key, &v).map_err(|e| Error::Config(format!("environment {var}: {e}")))?;
                }
            }
        }
        for (k, v) in parse_pairs(conninfo)? {
            cfg.set(&k, &v)?;
        }
        Ok(cfg)
    }

    /// Sets one connection-string key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "host" => self.host = value.to_string(),
            "hostaddr" => {
                self.hostaddr =
                    Some(value.parse().map_err(|_| Error::Config(format!("invalid hostaddr {value:?}")))?)
            }
            "port" => {
                self.port = value.parse().map_err(|_| Error::Config(format!("invalid port {value:?}")))?
            }
            "user" => self.user = value.to_string(),
            "password" => self.password = Some(value.to_string()),
            "dbname" => self.dbname = Some(value.to_string()),
            "application_name" => self.application_name = Some(value.to_string()),
            "sslmode" => self.sslmode = SslMode::parse(value)?,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(value)),
            "connect_timeout" => {
                let secs: u64 =
                    value.parse().map_err(|_| Error::Config(format!("invalid connect_timeout {value:?}")))?;
                // libpq: 0 means wait forever; we cap "forever" at a day.
                self.connect_timeout = Duration::from_secs(if secs == 0 { 86_400 } else { secs.max(2) });
            }
            "replication" => {
                self.replication = match value {
                    "database" => ReplicationMode::Logical,
                    "true" | "on" | "yes" | "1" => ReplicationMode::Physical,
                    other => {
                        return Err(Error::Config(format!(
                            "replication={other:?}: a replication connection needs true or database"
                        )))
                    }
                }
            }
            other => return Err(Error::Config(format!("invalid connection option {other:?}"))),
        }
        Ok(())
    }

    /// A copy for the other replication mode (the same server and login).
    pub fn with_replication(&self, mode: ReplicationMode) -> Config {
        Config { replication: mode, ..self.clone() }
    }

    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        if self.host.starts_with('/') && self.hostaddr.is_none() {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else if let Some(a) = self.hostaddr {
            format!("{a}:{} ({})", self.port, self.host)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits `key=value key='quoted value'` into pairs.
fn parse_pairs(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::Config(format!("missing \"=\" after {key:?} in the connection string")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(Error::Config(format!("unterminated quoted value of {key:?}"))),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(Error::Config(format!("unterminated quoted value of {key:?}"))),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(Error::Config("empty key in the connection string".into()));
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_with_quotes_and_escapes() {
        let p = parse_pairs("host=127.0.0.1  port = 5433").expect("valid");
        assert_eq!(p[0], ("host".into(), "127.0.0.1".into()));
        assert_eq!(p[1], ("port".into(), "5433".into()));
        assert!(parse_pairs("host").is_err());
        assert!(parse_pairs("host='x").is_err());
        let p = parse_pairs("user='a \\'b\\' c' dbname=x\\ y application_name=''").expect("valid");
        assert_eq!(p[0].1, "a 'b' c");
        assert_eq!(p[1].1, "x y");
        assert_eq!(p[2].1, "");
    }

    #[test]
    fn keys_and_modes() {
        let mut c = Config::default();
        c.set("replication", "database").expect("valid");
        assert_eq!(c.replication, ReplicationMode::Logical);
        c.set("sslmode", "verify-full").expect("valid");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert!(c.set("sslmode", "sometimes").is_err());
        assert!(c.set("port", "70000").is_err());
        assert!(c.set("hostaddr2", "x").is_err());
        c.set("password", "secret").expect("valid");
        assert!(!format!("{c:?}").contains("secret"), "Debug hides the password");
    }
}
