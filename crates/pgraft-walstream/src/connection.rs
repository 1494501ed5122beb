//! A replication connection: login, replication commands, and the COPY BOTH stream.
//!
//! ```text
//!  client                                   server (walsender)
//!    │ SSLRequest ─────────────────────────▶ │   (unless sslmode=disable)
//!    │ ◀───────────────────────── 'S' | 'N'  │   'S': TLS handshake follows
//!    │ StartupMessage replication=true|database
//!    │ ◀──── AuthenticationSASL / MD5 / Cleartext / Ok
//!    │ SASLInitialResponse, SASLResponse ──▶ │   (SCRAM-SHA-256, server proof checked)
//!    │ ◀──── ParameterStatus*, BackendKeyData, ReadyForQuery
//!    │ Query "IDENTIFY_SYSTEM" ────────────▶ │
//!    │ ◀──── RowDescription, DataRow, CommandComplete, ReadyForQuery
//!    │ Query "START_REPLICATION ..." ──────▶ │
//!    │ ◀──── CopyBothResponse                │
//!    │ ◀──── CopyData('w' XLogData | 'k' keepalive) ...
//!    │ CopyData('r' status | 'h' feedback) ▶ │
//!    │ CopyDone ─────────────────────────▶   │   either side may end first; at the end of
//!    │ ◀────────────────────────── CopyDone  │   a historic timeline the server does
//!    │ ◀──── [RowDescription, DataRow(next tli, start)], CommandComplete*, ReadyForQuery
//! ```
//!
//! Reads are cancel-safe (bytes go into a buffer before a message is split off), so
//! [`ReplicationClient::recv`] can wait with a timeout and be called again without losing
//! a byte. Commands carry a deadline ([`ReplicationClient::set_io_timeout`]); a command that
//! times out leaves the connection unusable, since its answer may still arrive.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Config, ReplicationMode, SslMode};
use crate::error::{Error, Result, ServerError};
use crate::frame::{self, Backend};
use crate::lsn::Lsn;
use crate::message::{HotStandbyFeedback, StandbyMessage, StandbyStatusUpdate, WalMessage};
use crate::replies::{
    CreatedSlot, QueryResult, SlotInfo, SlotKind, StartOutcome, StreamEnd, StreamEvent, SystemIdentity,
    TimelineSwitch,
};
use crate::segment::TimeLineId;
use crate::timeline::TimelineHistory;
use crate::tls;

/// A byte stream to the server: TCP, TLS over TCP, or a Unix-domain socket.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands.
    Ready,
    /// In COPY BOTH mode.
    Streaming,
    /// A command failed half-way (timeout, I/O error): nothing more can be sent.
    Broken,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsWant {
    No,
    IfOffered,
    Must,
}

/// A connection in replication mode to one PostgreSQL server.
pub struct ReplicationClient {
    io: Box<dyn Transport>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    state: State,
    mode: ReplicationMode,
    tls: bool,
    params: HashMap<String, String>,
    backend_pid: i32,
    io_timeout: Duration,
    target: String,
    /// Whether logical streaming already ran on this connection (see `start_logical`).
    logical_streamed: bool,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("target", &self.target)
            .field("mode", &self.mode)
            .field("tls", &self.tls)
            .field("state", &self.state)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

impl ReplicationClient {
    /// Connects and logs in, with TLS as `sslmode` asks and whatever password method the
    /// server picks (SCRAM-SHA-256, MD5, cleartext), within `connect_timeout`.
    pub async fn connect(cfg: &Config) -> Result<Self> {
        let what = format!("connect to {} within {:?}", cfg.target(), cfg.connect_timeout);
        match tokio::time::timeout(cfg.connect_timeout, Self::connect_any(cfg)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(what)),
        }
    }

    async fn connect_any(cfg: &Config) -> Result<Self> {
        match cfg.sslmode {
            SslMode::Disable => Self::attempt(cfg, TlsWant::No).await,
            // libpq's `allow`: plain first; TLS when the server refuses plain connections
            // (pg_hba has only `hostssl` lines for us: SQLSTATE 28000).
            SslMode::Allow => match Self::attempt(cfg, TlsWant::No).await {
                Err(Error::Server(e))
                    if e.code == "28000" && (cfg.hostaddr.is_some() || !cfg.host.starts_with('/')) =>
                {
                    Self::attempt(cfg, TlsWant::Must).await
                }
                other => other,
            },
            SslMode::Prefer => Self::attempt(cfg, TlsWant::IfOffered).await,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::attempt(cfg, TlsWant::Must).await
            }
        }
    }

    async fn attempt(cfg: &Config, want: TlsWant) -> Result<Self> {
        let target = cfg.target();
        let (io, tls): (Box<dyn Transport>, bool) = if cfg.host.starts_with('/') && cfg.hostaddr.is_none() {
            // No TLS over a Unix-domain socket, as in libpq.
            let s = UnixStream::connect(&target)
                .await
                .map_err(|e| Error::io(format!("connect to {target}"), e))?;
            (Box::new(s), false)
        } else {
            let tcp = match cfg.hostaddr {
                Some(addr) => TcpStream::connect((addr, cfg.port)).await,
                None => TcpStream::connect((cfg.host.as_str(), cfg.port)).await,
            };
            let mut tcp = tcp.map_err(|e| Error::io(format!("connect to {target}"), e))?;
            tcp.set_nodelay(true).map_err(|e| Error::io("set TCP_NODELAY", e))?;
            if want == TlsWant::No {
                (Box::new(tcp), false)
            } else {
                let mut req = BytesMut::new();
                frontend::ssl_request(&mut req);
                tcp.write_all(&req)
                    .await
                    .map_err(|e| Error::io(format!("send SSLRequest to {target}"), e))?;
                // Exactly one byte: anything the server sent after it unencrypted must not
                // be taken as part of the TLS stream.
                let answer =
                    tcp.read_u8().await.map_err(|e| Error::io(format!("read SSL answer of {target}"), e))?;
                match answer {
                    b'S' => {
                        let (connector, name) = tls::connector(cfg)?;
                        let s = connector
                            .connect(name, tcp)
                            .await
                            .map_err(|e| Error::Tls(format!("handshake with {target}: {e}")))?;
                        (Box::new(s), true)
                    }
                    b'N' if want == TlsWant::IfOffered => (Box::new(tcp), false),
                    b'N' => {
                        return Err(Error::Tls(format!(
                            "{target} does not accept TLS, and sslmode={:?} requires it",
                            cfg.sslmode
                        )))
                    }
                    other => {
                        return Err(Error::Protocol(format!(
                            "answer {other:#04x} to SSLRequest from {target}"
                        )))
                    }
                }
            }
        };
        let mut c = ReplicationClient {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            state: State::Ready,
            mode: cfg.replication,
            tls,
            params: HashMap::new(),
            backend_pid: 0,
            io_timeout: Duration::from_secs(60),
            target,
            logical_streamed: false,
        };
        c.startup(cfg).await?;
        Ok(c)
    }

    async fn startup(&mut self, cfg: &Config) -> Result<()> {
        let mut params: Vec<(&str, &str)> = vec![("user", cfg.user.as_str()), ("client_encoding", "UTF8")];
        match cfg.replication {
            ReplicationMode::Physical => params.push(("replication", "true")),
            ReplicationMode::Logical => {
                params.push(("replication", "database"));
                params.push(("database", cfg.dbname.as_deref().unwrap_or(cfg.user.as_str())));
            }
        }
        if let Some(app) = &cfg.application_name {
            params.push(("application_name", app));
        }
        frontend::startup_message(params, &mut self.wbuf)
            .map_err(|e| Error::Config(format!("startup parameters: {e}")))?;
        self.send().await?;

        let target = self.target.clone();
        let password = || {
            cfg.password.as_deref().ok_or_else(|| {
                Error::Auth(format!(
                    "{target} asks for a password and none was given (password= or PGPASSWORD)"
                ))
            })
        };
        // Set while a SCRAM exchange is under way: AuthenticationOk before the server has
        // proven it knows the password too would let an impostor skip that proof.
        let mut scram: Option<ScramSha256> = None;
        let mut scram_done = false;
        loop {
            match self.read_backend().await? {
                Backend::Other(Message::AuthenticationOk) => {
                    if scram.is_some() && !scram_done {
                        return Err(Error::Auth(
                            "the server ended SCRAM without proving its identity".into(),
                        ));
                    }
                    break;
                }
                Backend::Other(Message::AuthenticationCleartextPassword) => {
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(format!("password message: {e}")))?;
                    self.send().await?;
                }
                Backend::Other(Message::AuthenticationMd5Password(body)) => {
                    let hash = md5_hash(cfg.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(format!("password message: {e}")))?;
                    self.send().await?;
                }
                Backend::Other(Message::AuthenticationSasl(body)) => {
                    let mechanisms: Vec<String> =
                        body.mechanisms().map(|m| Ok(m.to_string())).collect().map_err(|e| {
                            Error::Decode { what: "AuthenticationSASL", reason: e.to_string() }
                        })?;
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(Error::Auth(format!("no supported SASL mechanism among {mechanisms:?}")));
                    }
                    // No channel binding (libpq's channel_binding=disable): over TLS with
                    // SCRAM-SHA-256-PLUS offered we must say "n", else the server takes
                    // "y" for a downgrade attack.
                    let binding = if self.tls && !mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS") {
                        ChannelBinding::unrequested()
                    } else {
                        ChannelBinding::unsupported()
                    };
                    let s = ScramSha256::new(password()?.as_bytes(), binding);
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(format!("SASL message: {e}")))?;
                    scram = Some(s);
                    self.send().await?;
                }
                Backend::Other(Message::AuthenticationSaslContinue(body)) => {
                    let s =
                        scram.as_mut().ok_or_else(|| Error::Protocol("SASL continue without SASL".into()))?;
                    s.update(body.data()).map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)
                        .map_err(|e| Error::Auth(format!("SASL message: {e}")))?;
                    self.send().await?;
                }
                Backend::Other(Message::AuthenticationSaslFinal(body)) => {
                    let s =
                        scram.as_mut().ok_or_else(|| Error::Protocol("SASL final without SASL".into()))?;
                    s.finish(body.data()).map_err(|e| Error::Auth(format!("SCRAM server proof: {e}")))?;
                    scram_done = true;
                }
                Backend::Other(Message::ErrorResponse(body)) => {
                    return Err(Error::Server(frame::server_error(body.fields())?));
                }
                Backend::Other(Message::NoticeResponse(_)) | Backend::NegotiateProtocolVersion => {}
                Backend::Other(
                    Message::AuthenticationGss
                    | Message::AuthenticationKerberosV5
                    | Message::AuthenticationScmCredential
                    | Message::AuthenticationSspi
                    | Message::AuthenticationGssContinue(_),
                ) => {
                    return Err(Error::Auth(
                        "the server asks for GSSAPI/SSPI/Kerberos, which is not supported".into(),
                    ))
                }
                _ => return Err(Error::Protocol("unexpected message during authentication".into())),
            }
        }
        loop {
            match self.read_backend().await? {
                Backend::Other(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Other(Message::BackendKeyData(k)) => self.backend_pid = k.process_id(),
                other => self.common(other)?,
            }
        }
    }

    /// Messages that may come at any time: parameter changes, notices, errors.
    fn common(&mut self, m: Backend) -> Result<()> {
        match m {
            Backend::Other(Message::ParameterStatus(p)) => {
                let name =
                    p.name().map_err(|e| Error::Decode { what: "ParameterStatus", reason: e.to_string() })?;
                let value = p
                    .value()
                    .map_err(|e| Error::Decode { what: "ParameterStatus", reason: e.to_string() })?;
                self.params.insert(name.to_string(), value.to_string());
                Ok(())
            }
            Backend::Other(Message::NoticeResponse(_)) | Backend::NegotiateProtocolVersion => Ok(()),
            Backend::Other(Message::ErrorResponse(body)) => {
                Err(Error::Server(frame::server_error(body.fields())?))
            }
            _ => Err(Error::Protocol("unexpected message".into())),
        }
    }

    /// Sets the deadline for each command's answer (default 60 s).
    pub fn set_io_timeout(&mut self, timeout: Duration) {
        self.io_timeout = timeout;
    }

    /// A run-time parameter the server reported (`server_version`, `integer_datetimes`...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server's major version (15, 17, ...), from `server_version`.
    pub fn server_major_version(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        v.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
    }

    /// The process id of the walsender serving us (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Physical or logical.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// Whether START_REPLICATION is under way.
    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    async fn send(&mut self) -> Result<()> {
        let r = tokio::time::timeout(self.io_timeout, async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        })
        .await;
        self.wbuf.clear();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.state = State::Broken;
                Err(Error::io(format!("write to {}", self.target), e))
            }
            Err(_) => {
                self.state = State::Broken;
                Err(Error::Timeout(format!("write to {}", self.target)))
            }
        }
    }

    /// The next backend message. Cancel-safe: bytes read are kept in `rbuf`.
    async fn read_backend(&mut self) -> Result<Backend> {
        loop {
            match frame::split(&mut self.rbuf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => {
                    self.state = State::Broken;
                    return Err(e);
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    self.state = State::Broken;
                    return Err(Error::Closed);
                }
                Ok(_) => {}
                Err(e) => {
                    self.state = State::Broken;
                    return Err(Error::io(format!("read from {}", self.target), e));
                }
            }
        }
    }

    /// The next message within the command deadline; a timeout breaks the connection.
    async fn read_timed(&mut self, what: &str) -> Result<Backend> {
        match tokio::time::timeout(self.io_timeout, self.read_backend()).await {
            Ok(r) => r,
            Err(_) => {
                self.state = State::Broken;
                Err(Error::Timeout(format!(
                    "{what}: no answer from {} within {:?}",
                    self.target, self.io_timeout
                )))
            }
        }
    }

    fn ready(&self, what: &str) -> Result<()> {
        match self.state {
            State::Ready => Ok(()),
            State::Streaming => Err(Error::State(format!("{what} while streaming; stop streaming first"))),
            State::Broken => Err(Error::State(format!("{what} on a connection that failed earlier"))),
        }
    }

    /// Runs a plain query (a replication command such as `SHOW wal_segment_size`, or SQL on
    /// a logical connection) and returns every result set.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        self.ready("a query")?;
        frontend::query(sql, &mut self.wbuf).map_err(|e| Error::Config(format!("query text: {e}")))?;
        self.send().await?;
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error: Option<ServerError> = None;
        loop {
            match self.read_timed(sql).await? {
                Backend::Other(Message::RowDescription(b)) => {
                    current = Some(QueryResult { columns: frame::columns(&b)?, ..QueryResult::default() })
                }
                Backend::Other(Message::DataRow(b)) => match current.as_mut() {
                    Some(r) => r.rows.push(frame::values(&b)?),
                    None => return Err(self.broken("DataRow without RowDescription")),
                },
                Backend::Other(Message::CommandComplete(b)) => {
                    let tag = b
                        .tag()
                        .map_err(|e| Error::Decode { what: "CommandComplete", reason: e.to_string() })?;
                    let mut r = current.take().unwrap_or_default();
                    r.command_tag = tag.to_string();
                    results.push(r);
                }
                Backend::Other(Message::EmptyQueryResponse) => {}
                Backend::Other(Message::ErrorResponse(b)) => error = Some(frame::server_error(b.fields())?),
                Backend::Other(Message::ReadyForQuery(_)) => break,
                Backend::CopyBothResponse
                | Backend::CopyData(_)
                | Backend::Other(
                    Message::CopyInResponse(_) | Message::CopyOutResponse(_) | Message::CopyDone,
                ) => {
                    return Err(self.broken("a plain query started COPY; use start_physical/start_logical"));
                }
                other => self.common(other)?,
            }
        }
        match error {
            Some(e) => Err(Error::Server(e)),
            None => Ok(results),
        }
    }

    fn broken(&mut self, what: &str) -> Error {
        self.state = State::Broken;
        Error::Protocol(what.to_string())
    }

    /// The one result set of a command that answers with exactly one.
    async fn one_result(&mut self, sql: &str) -> Result<QueryResult> {
        let results = self.simple_query(sql).await?;
        results
            .into_iter()
            .find(|r| !r.columns.is_empty())
            .ok_or_else(|| Error::Protocol(format!("{sql} returned no result set")))
    }

    /// `IDENTIFY_SYSTEM`: the cluster id, timeline and current WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let r = self.one_result("IDENTIFY_SYSTEM").await?;
        let system_id = r.required(0, "systemid")?;
        let timeline = r.required(0, "timeline")?;
        Ok(SystemIdentity {
            system_id: system_id
                .parse()
                .map_err(|_| Error::Protocol(format!("IDENTIFY_SYSTEM systemid {system_id:?}")))?,
            timeline: timeline
                .parse()
                .map_err(|_| Error::Protocol(format!("IDENTIFY_SYSTEM timeline {timeline:?}")))?,
            xlogpos: r.required(0, "xlogpos")?.parse()?,
            dbname: r.text(0, "dbname")?.map(str::to_string),
        })
    }

    /// `SHOW wal_segment_size`, in bytes: the unit of WAL files.
    pub async fn wal_segment_size(&mut self) -> Result<u64> {
        let r = self.one_result("SHOW wal_segment_size").await?;
        let text = r.required(0, "wal_segment_size")?;
        parse_size(text).ok_or_else(|| Error::Protocol(format!("wal_segment_size {text:?}")))
    }

    /// `TIMELINE_HISTORY tli`: the history file of a timeline (not for timeline 1, which has
    /// none).
    pub async fn timeline_history(&mut self, tli: TimeLineId) -> Result<TimelineHistory> {
        let r = self.one_result(&format!("TIMELINE_HISTORY {tli}")).await?;
        let file_name = r.required(0, "filename")?.to_string();
        let col = r
            .columns
            .iter()
            .position(|c| c == "content")
            .ok_or_else(|| Error::Protocol("TIMELINE_HISTORY without content".into()))?;
        // The content is the file's raw bytes, sent as-is (not escaped bytea text).
        let content = r.rows[0]
            .get(col)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Protocol("TIMELINE_HISTORY content is NULL".into()))?;
        if file_name != TimelineHistory::file_name_of(tli) {
            return Err(Error::Protocol(format!("TIMELINE_HISTORY {tli} named its file {file_name:?}")));
        }
        Ok(TimelineHistory { timeline: tli, file_name, content })
    }

    /// `CREATE_REPLICATION_SLOT`: a physical or logical slot, temporary (dropped when this
    /// connection ends) or permanent. Logical slots export no snapshot.
    pub async fn create_replication_slot(
        &mut self,
        name: &str,
        kind: &SlotKind,
        temporary: bool,
    ) -> Result<CreatedSlot> {
        check_slot_name(name)?;
        let temp = if temporary { " TEMPORARY" } else { "" };
        let sql = match kind {
            SlotKind::Physical { reserve_wal: true } => {
                format!("CREATE_REPLICATION_SLOT {name}{temp} PHYSICAL RESERVE_WAL")
            }
            SlotKind::Physical { reserve_wal: false } => {
                format!("CREATE_REPLICATION_SLOT {name}{temp} PHYSICAL")
            }
            SlotKind::Logical { plugin } => {
                format!(
                    "CREATE_REPLICATION_SLOT {name}{temp} LOGICAL {} NOEXPORT_SNAPSHOT",
                    quote_ident(plugin)
                )
            }
        };
        let r = self.one_result(&sql).await?;
        Ok(CreatedSlot {
            slot_name: r.required(0, "slot_name")?.to_string(),
            consistent_point: r.text(0, "consistent_point")?.map(str::parse).transpose()?,
            snapshot_name: r.text(0, "snapshot_name")?.map(str::to_string),
            output_plugin: r.text(0, "output_plugin")?.map(str::to_string),
        })
    }

    /// `DROP_REPLICATION_SLOT`; with `wait`, waits for a slot in use to become free.
    pub async fn drop_replication_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        check_slot_name(name)?;
        let sql = format!("DROP_REPLICATION_SLOT {name}{}", if wait { " WAIT" } else { "" });
        self.simple_query(&sql).await.map(|_| ())
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15+): `None` when no slot has this name.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotInfo>> {
        check_slot_name(name)?;
        let r = self.one_result(&format!("READ_REPLICATION_SLOT {name}")).await?;
        let Some(slot_type) = r.text(0, "slot_type")? else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            slot_type: slot_type.to_string(),
            restart_lsn: r.text(0, "restart_lsn")?.map(str::parse).transpose()?,
            restart_tli: r
                .text(0, "restart_tli")?
                .map(|t| t.parse().map_err(|_| Error::Protocol(format!("restart_tli {t:?}"))))
                .transpose()?,
        }))
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL start [TIMELINE tli]`. Streams WAL from
    /// `start` (which should be a segment start to get whole files) on `timeline`
    /// (default: the server's current one).
    pub async fn start_physical(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<TimeLineId>,
    ) -> Result<StartOutcome> {
        let mut sql = String::from("START_REPLICATION ");
        if let Some(s) = slot {
            check_slot_name(s)?;
            sql.push_str(&format!("SLOT {s} "));
        }
        sql.push_str(&format!("PHYSICAL {start}"));
        if let Some(t) = timeline {
            sql.push_str(&format!(" TIMELINE {t}"));
        }
        self.start_streaming(&sql).await
    }

    /// `START_REPLICATION SLOT s LOGICAL start (options)`: decoded changes of a logical
    /// slot from `start` (`0/0`: from the slot's confirmed position), with output plugin
    /// options such as `("include-xids", Some("0"))`.
    ///
    /// Once per connection: PostgreSQL's walsender (15 to 17 at least) does not reset its
    /// end-of-streaming state for logical streaming, so a second START_REPLICATION LOGICAL
    /// on the same connection would end at once. This is refused with [`Error::State`];
    /// reconnect instead, as `pg_recvlogical` does.
    pub async fn start_logical(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(String, Option<String>)],
    ) -> Result<()> {
        check_slot_name(slot)?;
        let mut sql = format!("START_REPLICATION SLOT {slot} LOGICAL {start}");
        if !options.is_empty() {
            let opts: Vec<String> = options
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{} {}", quote_ident(k), quote_literal(v)),
                    None => quote_ident(k),
                })
                .collect();
            sql.push_str(&format!(" ({})", opts.join(", ")));
        }
        match self.start_streaming(&sql).await? {
            StartOutcome::Streaming => Ok(()),
            StartOutcome::EndOfTimeline(_) => {
                Err(Error::Protocol("logical START_REPLICATION did not stream".into()))
            }
        }
    }

    /// Sends a `START_REPLICATION` command as written and waits for CopyBothResponse (the
    /// reference API's `start_streaming`); [`ReplicationClient::start_physical`] and
    /// [`ReplicationClient::start_logical`] build the command for you.
    pub async fn start_streaming(&mut self, sql: &str) -> Result<StartOutcome> {
        self.ready("START_REPLICATION")?;
        let logical = sql.to_ascii_uppercase().contains(" LOGICAL ");
        if logical && self.logical_streamed {
            return Err(Error::State(
                "logical streaming already ran on this connection; the server cannot restart it: reconnect"
                    .into(),
            ));
        }
        frontend::query(sql, &mut self.wbuf).map_err(|e| Error::Config(format!("query text: {e}")))?;
        self.send().await?;
        let mut next: Option<TimelineSwitch> = None;
        let mut error: Option<ServerError> = None;
        loop {
            match self.read_timed(sql).await? {
                Backend::CopyBothResponse => {
                    self.state = State::Streaming;
                    self.logical_streamed |= logical;
                    return Ok(StartOutcome::Streaming);
                }
                Backend::Other(Message::ErrorResponse(b)) => error = Some(frame::server_error(b.fields())?),
                Backend::Other(Message::RowDescription(_) | Message::CommandComplete(_)) => {}
                Backend::Other(Message::DataRow(b)) => next = Some(timeline_switch(&frame::values(&b)?)?),
                Backend::Other(Message::ReadyForQuery(_)) => {
                    return match (error, next) {
                        (Some(e), _) => Err(Error::Server(e)),
                        (None, Some(n)) => Ok(StartOutcome::EndOfTimeline(n)),
                        (None, None) => Err(Error::Protocol(format!("{sql} ended without streaming"))),
                    };
                }
                other => self.common(other)?,
            }
        }
    }

    /// The next message of the stream, waiting at most `wait` (`None`: forever); `Ok(None)`
    /// when the wait ran out. Cancel-safe.
    ///
    /// When the server ends the stream (it reached the end of a historic timeline, or it is
    /// shutting down), the CopyDone handshake is completed here and
    /// [`StreamEvent::End`] says which timeline follows, if any.
    pub async fn recv(&mut self, wait: Option<Duration>) -> Result<Option<StreamEvent>> {
        if self.state != State::Streaming {
            return Err(Error::State("recv without START_REPLICATION".into()));
        }
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let m = match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.read_backend()).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(None),
                },
                None => self.read_backend().await?,
            };
            match m {
                Backend::CopyData(payload) => match WalMessage::decode(&payload) {
                    Ok(msg) => return Ok(Some(StreamEvent::Message(msg))),
                    Err(e) => {
                        self.state = State::Broken;
                        return Err(e);
                    }
                },
                Backend::Other(Message::CopyDone) => {
                    frontend::copy_done(&mut self.wbuf);
                    self.send().await?;
                    let end = self.finish_copy(0).await?;
                    return Ok(Some(StreamEvent::End(end)));
                }
                Backend::Other(Message::CommandComplete(_)) => {
                    // The server left COPY without CopyDone: it is shutting down. What
                    // follows is ReadyForQuery or the connection closing.
                    self.state = State::Broken;
                    if let Ok(Ok(Backend::Other(Message::ReadyForQuery(_)))) =
                        tokio::time::timeout(Duration::from_secs(1), self.read_backend()).await
                    {
                        self.state = State::Ready;
                    }
                    return Ok(Some(StreamEvent::End(StreamEnd::default())));
                }
                Backend::Other(Message::ErrorResponse(b)) => {
                    self.state = State::Broken;
                    return Err(Error::Server(frame::server_error(b.fields())?));
                }
                other => {
                    if let Err(e) = self.common(other) {
                        self.state = State::Broken;
                        return Err(e);
                    }
                }
            }
        }
    }

    /// After CopyDone went both ways: the optional next-timeline row, CommandCompletes,
    /// ReadyForQuery. WAL still in flight is dropped and counted.
    async fn finish_copy(&mut self, mut discarded: u64) -> Result<StreamEnd> {
        let mut next = None;
        let mut error = None;
        loop {
            match self.read_timed("end of streaming").await? {
                Backend::CopyData(p) => discarded += p.len().saturating_sub(25) as u64,
                Backend::Other(
                    Message::CopyDone | Message::RowDescription(_) | Message::CommandComplete(_),
                ) => {}
                Backend::Other(Message::DataRow(b)) => next = Some(timeline_switch(&frame::values(&b)?)?),
                Backend::Other(Message::ErrorResponse(b)) => error = Some(frame::server_error(b.fields())?),
                Backend::Other(Message::ReadyForQuery(_)) => {
                    self.state = State::Ready;
                    return match error {
                        Some(e) => Err(Error::Server(e)),
                        None => Ok(StreamEnd { next_timeline: next, discarded_bytes: discarded }),
                    };
                }
                other => self.common(other)?,
            }
        }
    }

    /// Ends streaming from our side: CopyDone, then the server's CopyDone and the end of
    /// the command. Returns the next timeline if the server was streaming a historic one.
    pub async fn stop_streaming(&mut self) -> Result<StreamEnd> {
        if self.state != State::Streaming {
            return Err(Error::State("stop_streaming without START_REPLICATION".into()));
        }
        frontend::copy_done(&mut self.wbuf);
        self.send().await?;
        self.finish_copy(0).await
    }

    async fn send_copy_data(&mut self, payload: Bytes) -> Result<()> {
        if self.state != State::Streaming {
            return Err(Error::State("a standby message without START_REPLICATION".into()));
        }
        frontend::CopyData::new(payload)
            .map_err(|e| Error::Protocol(format!("CopyData: {e}")))?
            .write(&mut self.wbuf);
        self.send().await
    }

    /// Sends a standby status update: tells the server what is written, flushed (so a slot
    /// may advance) and applied.
    pub async fn send_standby_status(&mut self, status: StandbyStatusUpdate) -> Result<()> {
        self.send_copy_data(StandbyMessage::Status(status).encode()).await
    }

    /// Sends hot standby feedback.
    pub async fn send_hot_standby_feedback(&mut self, feedback: HotStandbyFeedback) -> Result<()> {
        self.send_copy_data(StandbyMessage::Feedback(feedback).encode()).await
    }

    /// Says goodbye (Terminate) and closes the connection. A temporary slot goes with it.
    pub async fn disconnect(mut self) -> Result<()> {
        if self.state != State::Broken {
            frontend::terminate(&mut self.wbuf);
            self.send().await?;
        }
        let _ = self.io.shutdown().await;
        Ok(())
    }
}

/// The `next_tli`, `next_tli_startpos` row ending a historic timeline's stream.
fn timeline_switch(values: &[Option<Bytes>]) -> Result<TimelineSwitch> {
    let text = |i: usize| -> Result<&str> {
        let v = values
            .get(i)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| Error::Protocol("next timeline row too short or NULL".into()))?;
        std::str::from_utf8(v).map_err(|_| Error::Protocol("next timeline row not UTF-8".into()))
    };
    let tli = text(0)?;
    Ok(TimelineSwitch {
        timeline: tli.parse().map_err(|_| Error::Protocol(format!("next timeline {tli:?}")))?,
        start: text(1)?.parse()?,
    })
}

/// PostgreSQL's rule for slot names: 1 to 63 of `a-z`, `0-9`, `_`. Checking it here also
/// keeps names out of the command text unquoted.
fn check_slot_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::Config(format!(
            "replication slot name {name:?}: use 1 to 63 lower-case letters, digits and underscores"
        )));
    }
    Ok(())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `SHOW` sizes: "16MB", "1GB", "8192" (bytes), "512kB".
fn parse_size(text: &str) -> Option<u64> {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = match &text[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("1 MB"), None);
        assert!(check_slot_name("pgraft_1").is_ok());
        assert!(check_slot_name("Bad").is_err());
        assert!(check_slot_name("a; DROP").is_err());
        assert!(check_slot_name("").is_err());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn next_timeline_row() {
        let row = vec![Some(Bytes::from_static(b"2")), Some(Bytes::from_static(b"0/3000160"))];
        assert_eq!(timeline_switch(&row).ok(), Some(TimelineSwitch { timeline: 2, start: Lsn(0x300_0160) }));
        assert!(timeline_switch(&row[..1]).is_err());
        assert!(timeline_switch(&[None, None]).is_err());
    }
}
