//! The WAL receiver behind `pgraftctl wal receive`: physical streaming into a
//! [`WalDir`], like `pg_receivewal`.
//!
//! ```text
//!   resume point ──▶ START_REPLICATION [SLOT s] PHYSICAL start TIMELINE t
//!        ▲                    │ XLogData
//!        │                    ▼
//!        │           write at offset in NNN.partial ── full? ─▶ fsync, rename, fsync dir
//!        │                    │ every status interval / keepalive asking for a reply:
//!        │                    ▼
//!        │           fdatasync, then report written = flushed = what is durable
//!        │                    │ end of timeline (CopyDone + next tli, start)
//!        │                    ▼
//!        └── keep .partial, write NNNNNNNN.history, restart at the segment start of the
//!            switch point on the next timeline
//! ```
//!
//! Only fsynced WAL is reported as flushed, so with a slot the server never drops WAL the
//! directory does not hold durably.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, ReplicationMode};
use crate::connection::ReplicationClient;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::message::WalMessage;
use crate::replies::{SlotKind, StartOutcome, StreamEnd, StreamEvent, TimelineSwitch};
use crate::segment::{SegmentSize, TimeLineId};
use crate::wal_writer::WalWriter;
use crate::waldir::WalDir;

/// How the receiver behaves.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// The physical replication slot to stream from (it keeps WAL we have not flushed).
    pub slot: Option<String>,
    /// Create the slot (physical, reserving WAL) if it does not exist.
    pub create_slot: bool,
    /// How often to fsync and report progress; the server's `wal_sender_timeout` must be
    /// longer.
    pub status_interval: Duration,
    /// fsync and report after every message, as `pg_receivewal --synchronous` (for a
    /// synchronous standby).
    pub synchronous: bool,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            slot: None,
            create_slot: false,
            status_interval: Duration::from_secs(10),
            synchronous: false,
        }
    }
}

/// What the receiver did, for the operator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Connected and streaming from `start` on `timeline`.
    Started {
        /// The timeline streamed.
        timeline: TimeLineId,
        /// The first position requested.
        start: Lsn,
        /// The server's system identifier.
        system_id: u64,
    },
    /// The slot was created.
    SlotCreated {
        /// Its name.
        slot: String,
    },
    /// A segment is complete, durable and renamed.
    SegmentCompleted {
        /// The final path.
        path: PathBuf,
    },
    /// A timeline's history file was written.
    HistoryWritten {
        /// The path.
        path: PathBuf,
    },
    /// The server streamed a timeline to its end; streaming goes on with the next one.
    TimelineSwitched {
        /// The timeline that ended.
        from: TimeLineId,
        /// Where it ended and which timeline follows.
        to: TimelineSwitch,
    },
    /// Streaming ended; everything up to `flushed` is durable.
    Stopped {
        /// The durable end of the WAL received.
        flushed: Lsn,
        /// Why: "stop requested", "server ended streaming".
        reason: String,
    },
}

/// How one [`WalReceiver::run`] ended (errors are returned as errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop future completed: a clean stop.
    Stopped,
    /// The server ended streaming without a next timeline (it is shutting down).
    ServerEnded,
}

/// A physical WAL receiver writing into one directory.
pub struct WalReceiver {
    cfg: Config,
    dir_path: PathBuf,
    opts: ReceiverOptions,
}

enum TimelineEnd {
    Stopped,
    Ended(StreamEnd),
}

impl WalReceiver {
    /// A receiver for the server of `cfg` (a physical replication connection is used
    /// whatever `cfg.replication` says) writing into `dir`.
    pub fn new(cfg: &Config, dir: PathBuf, opts: ReceiverOptions) -> Self {
        WalReceiver { cfg: cfg.with_replication(ReplicationMode::Physical), dir_path: dir, opts }
    }

    /// One session: connect, find where to start, stream (following timeline switches)
    /// until `stop` completes or the server ends streaming. Errors (connection lost,
    /// server refusals, a directory that does not fit the stream) end the session; the
    /// caller decides whether to retry. Everything reported flushed is durable whatever
    /// way this ends.
    pub async fn run(
        &mut self,
        mut stop: Pin<&mut (dyn Future<Output = ()> + Send)>,
        events: &mut dyn FnMut(ReceiverEvent),
    ) -> Result<RunEnd> {
        let mut client = ReplicationClient::connect(&self.cfg).await?;
        let id = client.identify_system().await?;
        let seg = SegmentSize::new(client.wal_segment_size().await?)?;
        let dir = WalDir::open(&self.dir_path, seg)?;
        let slot = self.opts.slot.clone();
        if let (Some(s), true) = (&slot, self.opts.create_slot) {
            match client.create_replication_slot(s, &SlotKind::Physical { reserve_wal: true }, false).await {
                Ok(_) => events(ReceiverEvent::SlotCreated { slot: s.clone() }),
                Err(e) if e.sqlstate() == Some("42710") => {} // duplicate_object: it exists
                Err(e) => return Err(e),
            }
        }

        let (mut tli, mut start) = match dir.resume_point()? {
            Some(rp) => {
                if let Some(sysid) = WalDir::system_id_of(&rp.newest_file)? {
                    if sysid != id.system_id {
                        return Err(Error::WalDir(format!(
                            "{} holds WAL of system {sysid}, but the server is system {}",
                            dir.path().display(),
                            id.system_id
                        )));
                    }
                }
                (rp.timeline, rp.start)
            }
            None => {
                let from_slot = match (&slot, client.server_major_version()) {
                    (Some(s), Some(v)) if v >= 15 => client.read_replication_slot(s).await?,
                    _ => None,
                };
                match from_slot {
                    Some(info) if info.slot_type != "physical" => {
                        return Err(Error::Config(format!(
                            "slot {:?} is a {} slot",
                            slot.as_deref().unwrap_or(""),
                            info.slot_type
                        )))
                    }
                    Some(info) => match (info.restart_lsn, info.restart_tli) {
                        (Some(lsn), Some(t)) if !lsn.is_invalid() => (t, seg.align_down(lsn)),
                        _ => (id.timeline, seg.align_down(id.xlogpos)),
                    },
                    None => (id.timeline, seg.align_down(id.xlogpos)),
                }
            }
        };
        if tli > id.timeline {
            return Err(Error::WalDir(format!(
                "{} holds timeline {tli}, ahead of the server's timeline {}",
                dir.path().display(),
                id.timeline
            )));
        }
        events(ReceiverEvent::Started { timeline: tli, start, system_id: id.system_id });

        loop {
            if tli > 1 && !dir.has_history(tli) {
                let h = client.timeline_history(tli).await?;
                events(ReceiverEvent::HistoryWritten { path: dir.write_history(&h)? });
            }
            let outcome = client.start_physical(slot.as_deref(), start, Some(tli)).await?;
            let end = match outcome {
                StartOutcome::EndOfTimeline(sw) => StreamEnd { next_timeline: Some(sw), discarded_bytes: 0 },
                StartOutcome::Streaming => {
                    let mut stream = WalWriter::new(&dir, tli, start)?;
                    let r = self.stream_timeline(&mut client, &mut stream, stop.as_mut(), events).await;
                    // Whatever happened, make what was written durable before returning.
                    let synced = stream.sync();
                    let end = r?;
                    synced?;
                    match end {
                        TimelineEnd::Stopped => {
                            events(ReceiverEvent::Stopped {
                                flushed: stream.flushed(),
                                reason: "stop requested".into(),
                            });
                            client.disconnect().await?;
                            return Ok(RunEnd::Stopped);
                        }
                        TimelineEnd::Ended(e) => {
                            if e.next_timeline.is_none() {
                                events(ReceiverEvent::Stopped {
                                    flushed: stream.flushed(),
                                    reason: "server ended streaming".into(),
                                });
                            }
                            e
                        }
                    }
                }
            };
            match end.next_timeline {
                Some(sw) => {
                    if sw.timeline <= tli {
                        return Err(Error::Protocol(format!(
                            "timeline {tli} ended with next timeline {}, which is not newer",
                            sw.timeline
                        )));
                    }
                    events(ReceiverEvent::TimelineSwitched { from: tli, to: sw });
                    // The new timeline's copy of the switch segment holds the old
                    // timeline's WAL before the switch point: stream it whole.
                    tli = sw.timeline;
                    start = seg.align_down(sw.start);
                }
                None => {
                    let _ = client.disconnect().await;
                    return Ok(RunEnd::ServerEnded);
                }
            }
        }
    }

    async fn stream_timeline(
        &self,
        client: &mut ReplicationClient,
        s: &mut WalWriter<'_>,
        mut stop: Pin<&mut (dyn Future<Output = ()> + Send)>,
        events: &mut dyn FnMut(ReceiverEvent),
    ) -> Result<TimelineEnd> {
        let interval = self.opts.status_interval;
        // Report at once, so the slot and pg_stat_replication see us from the start.
        let mut next_status = Instant::now();
        loop {
            let mut reply_now = false;
            let wait = next_status.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = stop.as_mut() => {
                    s.sync()?;
                    client.send_standby_status(s.status(false)).await?;
                    client.stop_streaming().await?;
                    return Ok(TimelineEnd::Stopped);
                }
                ev = client.recv(Some(wait)) => match ev? {
                    None => {}
                    Some(StreamEvent::Message(WalMessage::XLogData(x))) => {
                        s.write(x.wal_start, &x.data, &mut |path| events(ReceiverEvent::SegmentCompleted { path }))?;
                        if self.opts.synchronous {
                            reply_now = true;
                        }
                    }
                    Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(k))) => {
                        reply_now = k.reply_requested;
                    }
                    Some(StreamEvent::End(end)) => {
                        s.sync()?;
                        return Ok(TimelineEnd::Ended(end));
                    }
                }
            }
            if reply_now || Instant::now() >= next_status {
                s.sync()?;
                client.send_standby_status(s.status(false)).await?;
                next_status = Instant::now() + interval;
            }
        }
    }
}
