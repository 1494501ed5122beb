//! The `Server` handle: connection settings, name, the `online` flag and the facts, plus
//! the functions that need no privilege.

use std::fmt;
use std::time::Duration;

use pgraft_walstream::Lsn;

use crate::error::{Error, Result};
use crate::info::{self, ServerInfo};
use crate::privilege::{self, Access, Api};
use crate::version::PgVersion;

/// One PostgreSQL server, as a backup or HA tool knows it.
///
/// The handle keeps one connection open between calls (opened on first use and again
/// after it drops). A non-exclusive backup belongs to the session that started it, so
/// [`Server::backup_start`] and [`Server::backup_stop`] must run on the same handle; if
/// the connection is lost in between, the server aborts the backup and
/// [`Error::BackupConnectionLost`] says so.
pub struct Server {
    pub(crate) name: String,
    config: postgres::Config,
    online: bool,
    facts: Option<ServerInfo>,
    version: Option<PgVersion>,
    client: Option<postgres::Client>,
    pub(crate) chunk_size: u64,
    pub(crate) backup_start_lsn: Option<Lsn>,
}

/// The hosts of a connection configuration as libpq writes them: names and addresses, or
/// Unix socket directories.
pub fn host_names(config: &postgres::Config) -> Vec<String> {
    config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect()
}

impl Server {
    /// The default size of one `pg_read_binary_file` call: large enough that a round trip
    /// is cheap next to the bytes, small enough that the server's buffer for it (the
    /// server allocates the whole requested length) stays modest.
    pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

    /// A server named `name`, reached with `config`. Nothing is sent until a call needs it.
    pub fn new(name: impl Into<String>, config: postgres::Config) -> Self {
        Self {
            name: name.into(),
            config,
            online: false,
            facts: None,
            version: None,
            client: None,
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
            backup_start_lsn: None,
        }
    }

    /// A server from a libpq-style connection string (`host=127.0.0.1 port=5432
    /// user=backup dbname=postgres`). A `connect_timeout` of 10 s applies unless given.
    pub fn from_conninfo(name: impl Into<String>, conninfo: &str) -> Result<Self> {
        let name = name.into();
        let mut config: postgres::Config = conninfo.parse().map_err(|source| Error::Connect {
            server: name.clone(),
            target: "(unparsable connection string)".to_string(),
            source,
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("pgraft-server-api");
        }
        Ok(Self::new(name, config))
    }

    /// The server's name, as the caller gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the handle connects: hosts, ports, user and database, never the password.
    pub fn target(&self) -> String {
        let hosts = host_names(&self.config);
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        format!(
            "host={} port={} user={} dbname={}",
            hosts.join(","),
            ports.join(","),
            self.config.get_user().unwrap_or("(default)"),
            self.config.get_dbname().unwrap_or("(default)")
        )
    }

    /// Sets how many bytes one `pg_read_binary_file` call asks for (at least 1; at most
    /// 1 GiB - 1 KiB, below the server's allocation limit).
    pub fn set_chunk_size(&mut self, bytes: u64) {
        self.chunk_size = bytes.clamp(1, (1 << 30) - 1024);
    }

    /// `server_is_online`: the `online` flag, which background loops consult to keep
    /// running only while the server is usable. Only [`Server::set_online`] changes it.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// `server_set_online`: marks the server usable or not.
    pub fn set_online(&mut self, online: bool) {
        self.online = online;
    }

    /// `server_verify_connection`: opens a new connection to the configured address and
    /// closes it at once. The handle's own connection is left alone.
    pub fn verify_connection(&self) -> Result<()> {
        let client = self.config.connect(postgres::NoTls).map_err(|source| Error::Connect {
            server: self.name.clone(),
            target: self.target(),
            source,
        })?;
        client.close().map_err(|source| Error::Query {
            server: self.name.clone(),
            what: "closing the verification connection".to_string(),
            source,
        })
    }

    /// `server_info`: reads the facts from the server, keeps them on the handle and
    /// returns them.
    pub fn info(&mut self) -> Result<&ServerInfo> {
        let name = self.name.clone();
        let facts = info::query(self.client()?, &name)?;
        self.version = Some(facts.version);
        Ok(self.facts.insert(facts))
    }

    /// The facts of the last [`Server::info`], if any.
    pub fn facts(&self) -> Option<&ServerInfo> {
        self.facts.as_ref()
    }

    /// `server_valid`: whether the facts a tool relies on are known: version, WAL
    /// segment size, relation segment size and block size (all set by [`Server::info`]).
    pub fn valid(&self) -> bool {
        self.facts.as_ref().is_some_and(|f| {
            f.version.0 > 0 && f.wal_segment_size > 0 && f.segment_size > 0 && f.block_size > 0
        })
    }

    /// Which API functions the connected role may call, and the grants it lacks for the
    /// others.
    pub fn check_privileges(&mut self) -> Result<Vec<Access>> {
        let version = self.version()?;
        let name = self.name.clone();
        let client = self.client()?;
        Api::ALL.iter().map(|&api| privilege::check(client, &name, api, version)).collect()
    }

    /// The server's version: from the facts, else asked once per connection.
    pub(crate) fn version(&mut self) -> Result<PgVersion> {
        if let Some(v) = self.version {
            return Ok(v);
        }
        let name = self.name.clone();
        let num: i32 = self
            .client()?
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .map_err(|source| Error::Query {
                server: name.clone(),
                what: "reading server_version_num".into(),
                source,
            })?
            .get(0);
        let v = PgVersion(u32::try_from(num).unwrap_or(0));
        if v < PgVersion::MIN_SUPPORTED {
            return Err(Error::UnsupportedVersion { server: name, version_num: v.0 });
        }
        self.version = Some(v);
        Ok(v)
    }

    /// Checks that the connected role may call `api`: `Err(PermissionDenied)` naming what
    /// is missing otherwise. The library's functions run it themselves before each call;
    /// a caller uses it for [`Api::StreamWal`], whose connection another crate opens.
    pub fn require(&mut self, api: Api) -> Result<()> {
        let version = self.version()?;
        let name = self.name.clone();
        privilege::check(self.client()?, &name, api, version)?.into_result(&name)
    }

    /// Whether the handle's connection was open and has been lost.
    pub(crate) fn connection_closed(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.is_closed())
    }

    /// Whether `e` means the handle's session has ended (closed connection, terminated
    /// backend), so anything tied to the session (a running backup) is gone.
    pub(crate) fn connection_lost(&self, e: &Error) -> bool {
        let session_ended = match e {
            Error::Query { source, .. } => {
                source.is_closed() || source.code() == Some(&postgres::error::SqlState::ADMIN_SHUTDOWN)
            }
            Error::Connect { .. } | Error::BackupConnectionLost { .. } => true,
            _ => false,
        };
        session_ended || self.connection_closed()
    }

    /// The open connection, opened (again) if needed.
    pub(crate) fn client(&mut self) -> Result<&mut postgres::Client> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.version = None;
            if let Some(start_lsn) = self.backup_start_lsn.take() {
                return Err(Error::BackupConnectionLost { server: self.name.clone(), start_lsn });
            }
        }
        if self.client.is_none() {
            let c = self.config.connect(postgres::NoTls).map_err(|source| Error::Connect {
                server: self.name.clone(),
                target: self.target(),
                source,
            })?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("set just above"))
    }
}

impl fmt::Debug for Server {
    /// Name, target and state; never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("target", &self.target())
            .field("online", &self.online)
            .field("facts", &self.facts)
            .field("backup_start_lsn", &self.backup_start_lsn)
            .finish()
    }
}
