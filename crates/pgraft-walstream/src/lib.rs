//! A client of PostgreSQL's streaming replication protocol, and a WAL receiver built on it.
//!
//! - [`Lsn`] parses and prints PostgreSQL's `X/X` positions exactly and orders them as
//!   numbers; [`SegmentSize`] maps positions to WAL segment file names and back.
//! - [`ReplicationClient`] opens a replication connection (`replication=true` for
//!   physical, `replication=database` for logical) with TLS and SCRAM as libpq does, runs
//!   the replication commands (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`, slots) and streams:
//!   [`WalMessage`]s in, [`StandbyStatusUpdate`]s out, and the end of a timeline reported
//!   with the timeline that follows.
//! - [`WalReceiver`] is what `pgraftctl wal receive` runs: WAL segment files written as
//!   `.partial`, fsynced and renamed when complete, resumed after a crash, following
//!   timeline switches. Its [`WalWriter`] (one timeline's stream into a [`WalDir`]) is
//!   also what `pgraftctl backup` writes the backup's WAL with.
//!
//! ```no_run
//! use pgraft_walstream::{Config, Lsn, ReplicationClient, StandbyStatusUpdate, StreamEvent, WalMessage, PgTimestamp};
//! # async fn demo() -> pgraft_walstream::Result<()> {
//! let cfg = Config::from_conninfo("host=127.0.0.1 port=5432 user=replicator password=secret")?;
//! let mut client = ReplicationClient::connect(&cfg).await?;
//! let id = client.identify_system().await?;
//! client.start_physical(None, Lsn(id.xlogpos.0 & !0xFFFFFF), Some(id.timeline)).await?;
//! while let Some(StreamEvent::Message(m)) = client.recv(None).await? {
//!     if let WalMessage::XLogData(x) = m {
//!         let end = x.wal_start.checked_add(x.data.len() as u64)?;
//!         client.send_standby_status(StandbyStatusUpdate {
//!             written: end, flushed: end, applied: Lsn::INVALID,
//!             client_time: PgTimestamp::now(), reply_requested: false,
//!         }).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The LSN and segment arithmetic alone:
//!
//! ```
//! use pgraft_walstream::{Lsn, SegmentSize};
//! let lsn: Lsn = "16/B374D848".parse()?;
//! let seg = SegmentSize::new(16 * 1024 * 1024)?;
//! assert_eq!(seg.file_name(1, lsn), "0000000100000016000000B3");
//! assert!(lsn < "17/0".parse()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod connection;
mod error;
mod frame;
pub mod fuzzing;
mod lsn;
mod message;
mod receiver;
mod replies;
mod segment;
mod time;
mod timeline;
mod tls;
mod wal_writer;
mod waldir;

pub use config::{Config, ReplicationMode, SslMode};
pub use connection::ReplicationClient;
pub use error::{Error, Result, ServerError};
pub use frame::MAX_MESSAGE_LEN;
pub use lsn::Lsn;
pub use message::{
    HotStandbyFeedback, PrimaryKeepalive, StandbyMessage, StandbyStatusUpdate, WalMessage, XLogData,
};
pub use receiver::{ReceiverEvent, ReceiverOptions, RunEnd, WalReceiver};
pub use replies::{
    CreatedSlot, QueryResult, SlotInfo, SlotKind, StartOutcome, StreamEnd, StreamEvent, SystemIdentity,
    TimelineSwitch,
};
pub use segment::{SegmentSize, TimeLineId};
pub use time::{PgTimestamp, POSTGRES_EPOCH_UNIX_SECONDS};
pub use timeline::{HistoryEntry, TimelineHistory};
pub use wal_writer::WalWriter;
pub use waldir::{ResumePoint, WalDir};
