//! `pgraftctl wal`: WAL streaming for operators.
//!
//! `wal receive` keeps a directory of WAL segment files up to date from a server, like
//! `pg_receivewal` (see docs/wal.md for the layout and the durability rules); `wal decode`
//! prints a logical slot's changes as they happen, like `pg_recvlogical --start -f -`.
//! Both report progress to the server only for what they have made durable (written to
//! disk and fsynced, or printed and flushed), and stop cleanly on SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::pg_conn::PgConnArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use pgraft_walstream::{
    Config, Error, Lsn, PgTimestamp, ReceiverEvent, ReceiverOptions, ReplicationClient, ReplicationMode,
    RunEnd, SlotKind, StandbyStatusUpdate, StreamEvent, WalMessage, WalReceiver,
};
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Args)]
pub struct WalArgs {
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Subcommand)]
enum WalCommand {
    /// Stream WAL into a directory of segment files, like pg_receivewal: `.partial` while
    /// being written, fsynced and renamed when complete; resumes where it stopped; follows
    /// timeline switches. Prints one JSON line per event.
    Receive(ReceiveArgs),
    /// Print the changes of a logical replication slot as they are decoded (test_decoding by
    /// default), confirming to the server what has been printed.
    Decode(DecodeArgs),
}

#[derive(Args)]
struct ReceiveArgs {
    /// Host, port, role, and -d: a connection string (`host=... sslmode=... sslrootcert=...`)
    /// or URI; the PG* variables fill in what they leave out, as psql.
    #[command(flatten)]
    conn: PgConnArgs,
    /// The directory to write WAL segments into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// A physical replication slot, so the server keeps WAL until it is flushed here.
    #[arg(long)]
    slot: Option<String>,
    /// Create the slot if it does not exist (reserving WAL from now).
    #[arg(long, requires = "slot")]
    create_slot: bool,
    /// Seconds between fsync-and-report rounds (keep it below the server's
    /// wal_sender_timeout).
    #[arg(long, default_value_t = 10)]
    status_interval: u64,
    /// fsync and report after every message (for use as a synchronous standby).
    #[arg(long)]
    synchronous: bool,
    /// Exit on the first error or end of streaming instead of reconnecting.
    #[arg(long)]
    no_loop: bool,
}

#[derive(Args)]
struct DecodeArgs {
    /// Host, port, role, and -d: the database the slot belongs to, or a connection string
    /// or URI naming it.
    #[command(flatten)]
    conn: PgConnArgs,
    /// The logical replication slot.
    #[arg(long)]
    slot: String,
    /// Create the slot if it does not exist.
    #[arg(long)]
    create_slot: bool,
    /// The output plugin, when creating the slot.
    #[arg(long, default_value = "test_decoding")]
    plugin: String,
    /// An output plugin option, NAME=VALUE or NAME (repeatable), for example
    /// `-o include-xids=0 -o skip-empty-xacts=1`.
    #[arg(short = 'o', long = "option")]
    options: Vec<String>,
    /// Where to start (default: the slot's confirmed position).
    #[arg(long)]
    start: Option<String>,
    /// Stop once this position is reached, like pg_recvlogical --endpos.
    #[arg(long)]
    end_lsn: Option<String>,
    /// Seconds between progress reports to the server.
    #[arg(long, default_value_t = 10)]
    status_interval: u64,
}

pub fn run(args: WalArgs) -> Result<()> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the runtime")?;
    rt.block_on(async {
        match args.command {
            WalCommand::Receive(a) => receive(a).await,
            WalCommand::Decode(a) => decode(a).await,
        }
    })
}

/// A watch that turns true at the first SIGINT or SIGTERM.
fn stop_signal() -> Result<watch::Receiver<bool>> {
    let mut int = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the receiver: the files are what matters.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn event_json(e: &ReceiverEvent) -> serde_json::Value {
    match e {
        ReceiverEvent::Started { timeline, start, system_id } => {
            json!({"event": "started", "timeline": timeline, "start": start.to_string(), "system_id": system_id.to_string()})
        }
        ReceiverEvent::SlotCreated { slot } => json!({"event": "slot_created", "slot": slot}),
        ReceiverEvent::SegmentCompleted { path } => json!({"event": "segment", "path": path}),
        ReceiverEvent::HistoryWritten { path } => json!({"event": "history", "path": path}),
        ReceiverEvent::TimelineSwitched { from, to } => {
            json!({"event": "timeline", "from": from, "to": to.timeline, "at": to.start.to_string()})
        }
        ReceiverEvent::Stopped { flushed, reason } => {
            json!({"event": "stopped", "flushed": flushed.to_string(), "reason": reason})
        }
    }
}

/// Errors a retry cannot fix.
fn is_fatal(e: &Error) -> bool {
    match e {
        Error::WalDir(_)
        | Error::Config(_)
        | Error::Auth(_)
        | Error::Tls(_)
        | Error::InvalidSegmentSize(_) => true,
        Error::Server(s) => s.code == "28P01" || s.code == "28000",
        _ => false,
    }
}

async fn receive(a: ReceiveArgs) -> Result<()> {
    let cfg = Config::from_conninfo(&a.conn.walstream_conninfo()?).context("connection string")?;
    let opts = ReceiverOptions {
        slot: a.slot.clone(),
        create_slot: a.create_slot,
        status_interval: Duration::from_secs(a.status_interval.max(1)),
        synchronous: a.synchronous,
    };
    let stop = stop_signal()?;
    let mut receiver = WalReceiver::new(&cfg, a.dir.clone(), opts);
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut rx = stop.clone();
        let mut stop_fut = Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        let mut on_event = |e: ReceiverEvent| {
            emit(event_json(&e));
        };
        let result = receiver.run(stop_fut.as_mut(), &mut on_event).await;
        match result {
            Ok(RunEnd::Stopped) => return Ok(()),
            Ok(RunEnd::ServerEnded) => {
                backoff = Duration::from_millis(200);
                if a.no_loop {
                    return Ok(());
                }
            }
            Err(e) => {
                emit(json!({"event": "error", "error": e.to_string(), "fatal": is_fatal(&e)}));
                if a.no_loop || is_fatal(&e) {
                    return Err(e).context(format!("receive WAL into {}", a.dir.display()));
                }
            }
        }
        // Reconnect after a pause, unless asked to stop meanwhile.
        let mut rx = stop.clone();
        if *rx.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = rx.wait_for(|s| *s) => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn parse_option(o: &str) -> (String, Option<String>) {
    match o.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (o.to_string(), None),
    }
}

async fn decode(a: DecodeArgs) -> Result<()> {
    let cfg = Config::from_conninfo(&a.conn.walstream_conninfo()?)
        .context("connection string")?
        .with_replication(ReplicationMode::Logical);
    let start: Lsn = match &a.start {
        Some(s) => s.parse().context("--start")?,
        None => Lsn::INVALID,
    };
    let end: Option<Lsn> = a.end_lsn.as_deref().map(str::parse).transpose().context("--end-lsn")?;
    let options: Vec<(String, Option<String>)> = a.options.iter().map(|o| parse_option(o)).collect();
    let mut stop = stop_signal()?;
    let mut c = ReplicationClient::connect(&cfg).await.context("connect")?;
    if a.create_slot {
        match c.create_replication_slot(&a.slot, &SlotKind::Logical { plugin: a.plugin.clone() }, false).await
        {
            Ok(s) => eprintln!("created slot {} at {}", s.slot_name, s.consistent_point.unwrap_or_default()),
            Err(e) if e.sqlstate() == Some("42710") => {}
            Err(e) => return Err(e).context(format!("create slot {}", a.slot)),
        }
    }
    c.start_logical(&a.slot, start, &options).await.context("start logical streaming")?;

    let interval = Duration::from_secs(a.status_interval.max(1));
    // Everything up to `flushed` has been printed and flushed to stdout.
    let mut flushed = Lsn::INVALID;
    let mut next_status = tokio::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let mut reached_end = false;
    loop {
        let mut reply = false;
        let wait = next_status.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            ev = c.recv(Some(wait)) => match ev.context("receive")? {
                None => {}
                Some(StreamEvent::Message(WalMessage::XLogData(x))) => {
                    if end.is_some_and(|e| x.wal_start > e) {
                        reached_end = true;
                    } else {
                        match std::str::from_utf8(&x.data) {
                            Ok(text) => writeln!(out, "{text}"),
                            Err(_) => writeln!(out, "\\x{}", hex(&x.data)),
                        }
                        .and_then(|_| out.flush())
                        .context("write to stdout")?;
                        flushed = flushed.max(x.wal_start);
                        reached_end = end.is_some_and(|e| x.wal_start == e);
                    }
                }
                Some(StreamEvent::Message(WalMessage::PrimaryKeepalive(k))) => {
                    // Everything the server sent is printed: its position is ours too.
                    flushed = flushed.max(k.wal_end);
                    reply = k.reply_requested;
                    reached_end = end.is_some_and(|e| k.wal_end >= e);
                }
                Some(StreamEvent::End(_)) => bail!("the server ended logical streaming"),
            }
        }
        if reached_end {
            break;
        }
        if reply || tokio::time::Instant::now() >= next_status {
            c.send_standby_status(status(flushed)).await.context("report progress")?;
            next_status = tokio::time::Instant::now() + interval;
        }
    }
    c.send_standby_status(status(flushed)).await.context("report progress")?;
    c.stop_streaming().await.context("stop streaming")?;
    c.disconnect().await.context("disconnect")?;
    Ok(())
}

fn status(flushed: Lsn) -> StandbyStatusUpdate {
    StandbyStatusUpdate {
        written: flushed,
        flushed,
        applied: flushed,
        client_time: PgTimestamp::now(),
        reply_requested: false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
