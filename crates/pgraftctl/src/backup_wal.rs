//! The WAL of a backup, streamed into its `pg_wal` while the files are copied, as
//! `pg_basebackup -X stream` does, through `pgraft-walstream`.
//!
//! ```text
//!   main thread (pgraftctl backup)            WAL thread (tokio, one replication connection)
//!   ─────────────────────────────             ───────────────────────────────────────────────
//!   BackupWal::open ────────────────────────▶ IDENTIFY_SYSTEM, SHOW wal_segment_size,
//!                                             CREATE_REPLICATION_SLOT s TEMPORARY PHYSICAL
//!                    ◀──────── ready ──────── RESERVE_WAL   (the server keeps WAL from here)
//!   backup_start ─▶ start LSN
//!   start(start) ──────────── Start ────────▶ START_REPLICATION SLOT s PHYSICAL <segment of
//!   copy files (check() after each)           start> TIMELINE t; XLogData ─▶ WalWriter
//!                                             (.partial, fsync, rename, fsync dir);
//!                                             status updates: flushed = what is fsynced
//!   backup_stop ─▶ end LSN
//!   finish(end) ──────────── Finish ────────▶ until the segment holding end-1 is complete:
//!                                             drop what lies beyond it, CopyDone ⇄ CopyDone,
//!                    ◀── files streamed ───── DROP_REPLICATION_SLOT s, Terminate
//! ```
//!
//! The slot is created before backup start, so every segment from the backup's start on
//! stays on the server until it is durable in the backup, however long the copy takes and
//! however many checkpoints run meanwhile. It is temporary: if pgraftctl dies, the server
//! drops it with the connection.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use pgraft_walstream::{
    Config, Lsn, ReplicationClient, ReplicationMode, SegmentSize, SlotKind, StartOutcome, StreamEvent,
    TimeLineId, WalDir, WalMessage, WalWriter,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often the WAL thread fsyncs and reports its position (below any sane
/// `wal_sender_timeout`).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// After backup stop, how long the WAL thread waits for WAL it still needs without any
/// arriving before it gives up (the server has flushed that WAL, so it should come at once).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

enum Command {
    /// Stream from the segment holding this position (the backup's start).
    Start(Lsn),
    /// Stop once everything before this position (the backup's end) is durable.
    Finish(Lsn),
}

/// What the WAL thread streamed.
#[derive(Debug)]
pub struct StreamedWal {
    /// The timeline streamed.
    pub timeline: TimeLineId,
    /// File names in `pg_wal`, in order: the timeline's history file (timelines above 1),
    /// then every segment from the backup's start to its end.
    pub files: Vec<String>,
}

/// The WAL thread of one backup. Dropping it before [`BackupWal::finish`] ends streaming
/// and drops the slot (the backup failed).
pub struct BackupWal {
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<Result<StreamedWal>>>,
}

impl BackupWal {
    /// Opens the replication connection and creates the temporary slot reserving WAL;
    /// returns once the slot exists. WAL is written into `pg_wal` (created if missing).
    pub fn open(cfg: &Config, pg_wal: &Path, seg: SegmentSize) -> Result<BackupWal> {
        let mut cfg = cfg.with_replication(ReplicationMode::Physical);
        if cfg.application_name.is_none() {
            cfg.application_name = Some("pgraftctl backup".into());
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let slot = format!("pgraft_backup_{}_{stamp}", std::process::id());
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let dir = pg_wal.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("backup-wal".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("start the WAL thread's runtime")?;
                rt.block_on(stream(cfg, slot, dir, seg, ready_tx, cmd_rx))
            })
            .context("start the WAL thread")?;
        let mut wal = BackupWal { commands: Some(cmd_tx), thread: Some(thread) };
        match ready_rx.recv() {
            Ok(()) => Ok(wal),
            // The thread ended without the slot: its error says why.
            Err(_) => Err(wal.join().err().unwrap_or_else(|| anyhow!("the WAL thread ended at once"))),
        }
    }

    /// Starts streaming from the segment holding `start` (the backup's start LSN).
    pub fn start(&mut self, start: Lsn) -> Result<()> {
        self.send(Command::Start(start))
    }

    /// `Err` with the WAL thread's error if it has ended (it must run until `finish`), so
    /// a backup stops copying as soon as its WAL is lost.
    pub fn check(&mut self) -> Result<()> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return Err(self.join().err().unwrap_or_else(|| anyhow!("the WAL thread ended early")))
                .context("stream the backup's WAL");
        }
        Ok(())
    }

    /// Waits until every segment up to the one holding the byte before `end` (the backup's
    /// end LSN) is durable in `pg_wal`, then ends streaming and drops the slot.
    pub fn finish(mut self, end: Lsn) -> Result<StreamedWal> {
        self.send(Command::Finish(end))?;
        self.join().context("stream the backup's WAL")
    }

    fn send(&mut self, c: Command) -> Result<()> {
        let sent = self.commands.as_ref().is_some_and(|tx| tx.send(c).is_ok());
        if !sent {
            // The thread is gone; its error is the one to report.
            return Err(self.join().err().unwrap_or_else(|| anyhow!("the WAL thread ended early")))
                .context("stream the backup's WAL");
        }
        Ok(())
    }

    fn join(&mut self) -> Result<StreamedWal> {
        self.commands = None;
        let t = self.thread.take().ok_or_else(|| anyhow!("the WAL thread was already joined"))?;
        t.join().map_err(|_| anyhow!("the WAL thread panicked"))?
    }
}

impl Drop for BackupWal {
    fn drop(&mut self) {
        // Closing the command channel tells the thread to stop streaming and drop the
        // slot; wait for it, so the slot is gone before the backup reports its failure.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The WAL thread: the replication connection's whole life.
async fn stream(
    cfg: Config,
    slot: String,
    pg_wal: PathBuf,
    seg: SegmentSize,
    ready: std_mpsc::Sender<()>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Result<StreamedWal> {
    let mut client = ReplicationClient::connect(&cfg)
        .await
        .with_context(|| format!("open a replication connection to {}", cfg.target()))?;
    let id = client.identify_system().await.context("IDENTIFY_SYSTEM")?;
    let server_seg = client.wal_segment_size().await.context("SHOW wal_segment_size")?;
    if server_seg != seg.bytes() {
        bail!(
            "the replication connection reports wal_segment_size {server_seg}, the backup's server {}; \
             do both connections reach the same server?",
            seg.bytes()
        );
    }
    client
        .create_replication_slot(&slot, &SlotKind::Physical { reserve_wal: true }, true)
        .await
        .with_context(|| format!("create the temporary replication slot {slot}"))?;
    let tli = id.timeline;
    let dir = WalDir::open(&pg_wal, seg).with_context(|| format!("open {}", pg_wal.display()))?;
    if ready.send(()).is_err() {
        bail!("the backup ended while the slot was created");
    }

    let from = match commands.recv().await {
        Some(Command::Start(lsn)) => lsn,
        Some(Command::Finish(_)) => bail!("asked to finish before streaming started"),
        None => {
            let _ = client.drop_replication_slot(&slot, false).await;
            let _ = client.disconnect().await;
            bail!("the backup ended before its WAL was streamed");
        }
    };
    let mut files = Vec::new();
    if tli > 1 && !dir.has_history(tli) {
        let h = client.timeline_history(tli).await.with_context(|| format!("TIMELINE_HISTORY {tli}"))?;
        files.push(h.file_name.clone());
        dir.write_history(&h).with_context(|| format!("write {}", h.file_name))?;
    }
    let start = seg.align_down(from);
    match client.start_physical(Some(&slot), start, Some(tli)).await {
        Ok(StartOutcome::Streaming) => {}
        Ok(StartOutcome::EndOfTimeline(sw)) => bail!(
            "timeline {tli} ended at {} (timeline {} follows) before the backup's WAL could be streamed",
            sw.start,
            sw.timeline
        ),
        Err(e) => return Err(e).with_context(|| format!("START_REPLICATION SLOT {slot} PHYSICAL {start}")),
    }

    let mut w = WalWriter::new(&dir, tli, start)?;
    let mut completed: Vec<PathBuf> = Vec::new();
    // The first position not needed: the end of the segment holding the byte before the
    // backup's end LSN (backup stop switched the server away from that segment).
    let mut target: Option<Lsn> = None;
    let mut next_status = Instant::now();
    let mut last_data = Instant::now();
    loop {
        if target.is_some_and(|t| w.written() >= t) {
            break;
        }
        let mut reply = false;
        let wait = next_status.saturating_duration_since(Instant::now());
        tokio::select! {
            c = commands.recv(), if target.is_none() => match c {
                Some(Command::Finish(end)) => {
                    if end < from {
                        bail!("the backup's end {end} is before its start {from}");
                    }
                    let last = seg.segment_of(Lsn(end.0.saturating_sub(1)));
                    target = Some(seg.segment_start(last + 1)?);
                    last_data = Instant::now();
                }
                Some(Command::Start(_)) => bail!("asked to start streaming twice"),
                None => {
                    // The backup failed: end cleanly; the slot goes with it.
                    let _ = w.sync();
                    let _ = client.stop_streaming().await;
                    let _ = client.drop_replication_slot(&slot, false).await;
                    let _ = client.disconnect().await;
                    bail!("the backup ended before its WAL was complete");
                }
            },
            ev = client.recv(Some(wait)) => match ev.context("receive WAL")? {
                None => {}
                Some(StreamEvent::Message(WalMessage::XLogData(x))) => {
                    w.write(x.wal_start, &x.data, &mut |p| completed.push(p))
                        .with_context(|| format!("write WAL into {}", pg_wal.display()))?;
                    last_data = Instant::now();
                }
                Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(k))) => reply = k.reply_requested,
                Some(StreamEvent::End(e)) => bail!(
                    "the server ended streaming at {} before the backup's WAL was complete{}",
                    w.written(),
                    e.next_timeline
                        .map(|n| format!(" (timeline {} began at {})", n.timeline, n.start))
                        .unwrap_or_default()
                ),
            }
        }
        if let Some(t) = target {
            if w.written() < t && last_data.elapsed() > STALL_TIMEOUT {
                bail!(
                    "no WAL arrived for {} s; the backup needs WAL up to {t} and has it up to {}",
                    STALL_TIMEOUT.as_secs(),
                    w.written()
                );
            }
        }
        if reply || Instant::now() >= next_status {
            w.sync().context("fsync the backup's WAL")?;
            client.send_standby_status(w.status(false)).await.context("report the WAL position")?;
            next_status = Instant::now() + STATUS_INTERVAL;
        }
    }
    let target = target.expect("the loop ends only with a target");
    w.sync().context("fsync the backup's WAL")?;
    drop(w);
    // The stream may have run past the backup's end before it was known: the backup holds
    // exactly the WAL up to its end segment, so recovery stops there.
    let last = seg.segment_of(Lsn(target.0 - 1));
    remove_beyond(&dir, last)?;
    let first = seg.segment_of(start);
    for segno in first..=last {
        let name = seg.segment_file_name(tli, segno);
        if !completed.iter().any(|p| p.ends_with(&name)) {
            bail!("segment {name} was not streamed completely");
        }
        files.push(name);
    }
    client.stop_streaming().await.context("end streaming (CopyDone)")?;
    client.drop_replication_slot(&slot, false).await.with_context(|| format!("drop the slot {slot}"))?;
    client.disconnect().await.context("disconnect the replication connection")?;
    // The directory lock is the receiver's; a backup's pg_wal holds only WAL.
    drop(dir);
    let lock = pg_wal.join(".lock");
    fs::remove_file(&lock).with_context(|| format!("remove {}", lock.display()))?;
    fs::File::open(&pg_wal)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", pg_wal.display()))?;
    Ok(StreamedWal { timeline: tli, files })
}

/// Removes the segments (complete or partial) after `last` from the directory.
fn remove_beyond(dir: &WalDir, last: u64) -> Result<()> {
    let mut removed = false;
    for (_, segno, _, name) in dir.segments()? {
        if segno > last {
            let p = dir.path().join(&name);
            fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
            removed = true;
        }
    }
    if removed {
        fs::File::open(dir.path())
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.path().display()))?;
    }
    Ok(())
}
