//! `pgraftctl backup`: a full file-level base backup of a running primary through the
//! server API and the WAL streaming library, and `--verify` of a finished one.
//!
//! ```text
//!   check grants (REPLICATION too) ─▶ replication connection + temporary slot (RESERVE_WAL)
//!        ─▶ backup_start ─▶ stream WAL from the start segment into data/pg_wal (a thread)
//!        ─▶ walk the data directory (list_dir) ─▶ read every file in chunks (read_chunk)
//!        ─▶ backup_stop (server switches WAL) ─▶ stream until the end segment is complete,
//!           CopyDone, drop the slot ─▶ backup_label + tablespace_map
//!        ─▶ manifest (size + SHA-256 per file), written last
//!
//!   DIR/data/                 the data directory, ready to start (after chown/chmod 0700)
//!   DIR/data/pg_wal/          the WAL from the start to the end LSN
//!   DIR/tablespaces/OID/      the contents of each tablespace (see tablespace_map)
//!   DIR/backup_manifest.json  every file's size and SHA-256
//! ```
//!
//! The WAL is streamed while the files are copied ([`crate::backup_wal`]); the slot keeps
//! every segment from the backup's start on the server until the backup holds it.

use std::fs::{self, File};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use pgraft_server_api::{Api, Lsn, SegmentSize, Server};
use pgraft_walstream::Config as WalConfig;

use crate::backup_wal::BackupWal;
use crate::manifest::{self, FileEntry, HashingWriter, Manifest};
use crate::server::ConnArgs;

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The backup directory: created, or empty.
    #[arg(long)]
    dir: PathBuf,
    /// Re-read the finished backup in --dir against its manifest; contacts no server.
    #[arg(long)]
    verify: bool,
    /// The backup label recorded in backup_label.
    #[arg(long)]
    label: Option<String>,
    /// Let backup start wait for a spread checkpoint instead of an immediate one.
    #[arg(long)]
    spread_checkpoint: bool,
    /// Bytes per pg_read_binary_file call.
    #[arg(long, default_value_t = Server::DEFAULT_CHUNK_SIZE)]
    chunk_size: u64,
    /// Do not fsync the backup's files (faster; for tests and throw-away copies).
    #[arg(long)]
    no_sync: bool,
}

pub fn run(args: BackupArgs) -> Result<()> {
    if args.verify {
        let t0 = Instant::now();
        let (files, bytes) = manifest::verify(&args.dir)?;
        println!(
            "{}",
            serde_json::json!({
                "verified": true, "files": files, "bytes": bytes, "seconds": t0.elapsed().as_secs_f64()
            })
        );
        return Ok(());
    }
    let t0 = Instant::now();
    let m = make_backup(&args)?;
    let bytes: u64 = m.files.iter().map(|f| f.size).sum();
    println!(
        "{}",
        serde_json::json!({
            "dir": args.dir, "label": m.label, "start_lsn": m.start_lsn, "end_lsn": m.end_lsn,
            "timeline": m.timeline, "files": m.files.len(), "wal_files": m.wal_files.len(), "bytes": bytes,
            "seconds": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Directories whose contents a backup leaves out (their files are rebuilt or useless
/// after a restore); the directories themselves are created empty. `pg_wal` is filled
/// with the backup's own WAL afterwards.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files a backup leaves out anywhere: the running server's lock and options, the label
/// and map of another backup, relcache init files, the log-file pointer.
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "current_logfiles",
    "pg_internal.init",
    "postgresql.auto.conf.tmp",
];

fn skip(name: &str) -> bool {
    SKIP_FILES.contains(&name) || name.starts_with("pgsql_tmp") || name.starts_with(".s.PGSQL.")
}

/// One file to copy: where it is on the server and where it goes in the backup.
struct Planned {
    server_path: String,
    backup_path: String,
    size: u64,
}

fn make_backup(args: &BackupArgs) -> Result<Manifest> {
    let dir = &args.dir;
    prepare_dir(dir)?;
    let mut s = args.conn.server()?;
    s.set_chunk_size(args.chunk_size);
    let info = s.info()?.clone();
    if !info.primary {
        bail!("server {} is a standby; pgraftctl backup copies a primary (it needs the WAL switch of backup stop)", s.name());
    }
    let seg = SegmentSize::new(info.wal_segment_size)?;
    // Every grant the backup needs, checked before anything starts, all named at once.
    let needed = [Api::ListDir, Api::ReadBinaryFile, Api::BackupStart, Api::BackupStop, Api::StreamWal];
    let denied: Vec<String> = s
        .check_privileges()?
        .into_iter()
        .filter(|a| needed.contains(&a.api) && !a.allowed())
        .map(|a| format!("{}: {}", a.api, a.grants()))
        .collect();
    if !denied.is_empty() {
        bail!(
            "role may not make a backup of {}; grant (as a superuser):\n  {}",
            s.name(),
            denied.join("\n  ")
        );
    }

    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "pgraftctl backup {}",
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
        )
    });
    // The slot first, so the server keeps every segment from the backup's start on.
    let wal_cfg = WalConfig::from_conninfo(&args.conn.conninfo()?)
        .context("the connection settings, for the replication connection that streams the WAL")?;
    let data = dir.join("data");
    let mut wal = BackupWal::open(&wal_cfg, &data.join("pg_wal"), seg)
        .context("prepare streaming the backup's WAL (a replication connection and a temporary slot)")?;
    let start = s.backup_start(&label, !args.spread_checkpoint).context("backup start")?;
    let copied = test_pause(start)
        .and_then(|()| wal.start(start))
        .and_then(|()| copy_data_directory(&mut s, dir, args.chunk_size, !args.no_sync, &mut wal));
    // Stop the backup even when the copy failed, so the server does not keep it open; the
    // copy's error is the one to report then.
    let stopped = s.backup_stop(info.archive_mode != "off").context("backup stop");
    let mut files = copied?;
    let stop = stopped?;
    if stop.lsn < start {
        bail!("backup stop LSN {} is before the start LSN {start}", stop.lsn);
    }
    let streamed = wal.finish(stop.lsn)?;
    let tli = stop.start_timeline().context("backup_label has no START TIMELINE")?;
    if tli != streamed.timeline {
        bail!(
            "the backup started on timeline {tli}, but its WAL was streamed from timeline {}",
            streamed.timeline
        );
    }

    files.push(write_small(dir, "data/backup_label", stop.label_file.as_bytes(), !args.no_sync)?);
    if !stop.tablespace_map.is_empty() {
        files.push(write_small(dir, "data/tablespace_map", stop.tablespace_map.as_bytes(), !args.no_sync)?);
    }
    fs::create_dir_all(data.join("pg_wal/archive_status")).context("create pg_wal/archive_status")?;
    for name in &streamed.files {
        let rel = format!("data/pg_wal/{name}");
        let (size, sha256) = manifest::hash_file(&dir.join(&rel))?;
        files.push(FileEntry { path: rel, size, sha256 });
    }
    let wal_files = streamed.files;

    if !args.no_sync {
        sync_dirs(dir)?;
    }
    let m = Manifest {
        format: Manifest::FORMAT,
        label,
        server: s.name().to_string(),
        server_version: info.version_string.clone(),
        start_lsn: start.to_string(),
        end_lsn: stop.lsn.to_string(),
        timeline: tli,
        wal_segment_size: seg.bytes(),
        wal_files,
        files,
    };
    m.write(dir, !args.no_sync)?;
    Ok(m)
}

/// Creates the backup directory, or accepts an empty one.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
        if entries.next().is_some() {
            bail!("backup directory {} is not empty", dir.display());
        }
    }
    fs::create_dir_all(dir.join("data")).with_context(|| format!("create {}", dir.display()))
}

/// Walks the data directory (and tablespaces, through `pg_tblspc`), then copies every
/// file in chunks with a progress bar on a terminal.
fn copy_data_directory(
    s: &mut Server,
    dir: &Path,
    chunk: u64,
    sync: bool,
    wal: &mut BackupWal,
) -> Result<Vec<FileEntry>> {
    let mut plan = Vec::new();
    // (server path, backup path)
    let mut stack = vec![(".".to_string(), "data".to_string())];
    while let Some((server_dir, backup_dir)) = stack.pop() {
        fs::create_dir_all(dir.join(&backup_dir)).with_context(|| format!("create {backup_dir}"))?;
        for e in s.list_dir(&server_dir).with_context(|| format!("list {server_dir}"))? {
            if skip(&e.name) {
                continue;
            }
            let (sp, bp) = (e.path.clone(), format!("{backup_dir}/{}", e.name));
            if e.stat.is_dir {
                if server_dir == "." && EMPTY_DIRS.contains(&e.name.as_str()) {
                    fs::create_dir_all(dir.join(&bp)).with_context(|| format!("create {bp}"))?;
                } else if server_dir == "pg_tblspc" {
                    // A tablespace: its files go beside the data directory; tablespace_map
                    // says where it lived.
                    fs::create_dir_all(dir.join(&bp)).with_context(|| format!("create {bp}"))?;
                    stack.push((sp, format!("tablespaces/{}", e.name)));
                } else {
                    stack.push((sp, bp));
                }
            } else {
                plan.push(Planned { server_path: sp, backup_path: bp, size: e.stat.size });
            }
        }
    }
    let total: u64 = plan.iter().map(|p| p.size).sum();
    let mut progress = Progress::new(total);
    let mut files = Vec::with_capacity(plan.len());
    for p in plan {
        // A backup whose WAL stream failed is lost: stop copying at once.
        wal.check()?;
        let path = dir.join(&p.backup_path);
        let f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, f));
        let mut pos = 0u64;
        let mut vanished = false;
        loop {
            match s.read_chunk(&p.server_path, pos, chunk)? {
                // Removed while the backup ran (a dropped relation): WAL replay accounts for it.
                None => {
                    vanished = true;
                    break;
                }
                Some(bytes) => {
                    w.write_all(&bytes).with_context(|| format!("write {}", path.display()))?;
                    pos += bytes.len() as u64;
                    progress.advance(bytes.len() as u64, &p.backup_path);
                    if (bytes.len() as u64) < chunk {
                        break;
                    }
                }
            }
        }
        w.get_mut().flush().with_context(|| format!("write {}", path.display()))?;
        if sync {
            w.get_mut().get_ref().sync_all().with_context(|| format!("fsync {}", path.display()))?;
        }
        let (size, sha256) = w.finish();
        if vanished {
            fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            continue;
        }
        files.push(FileEntry { path: p.backup_path, size, sha256 });
    }
    progress.done();
    Ok(files)
}

fn write_small(dir: &Path, rel: &str, bytes: &[u8], sync: bool) -> Result<FileEntry> {
    let path = dir.join(rel);
    let mut w =
        HashingWriter::new(File::create(&path).with_context(|| format!("create {}", path.display()))?);
    w.write_all(bytes).with_context(|| format!("write {}", path.display()))?;
    if sync {
        w.get_mut().sync_all().with_context(|| format!("fsync {}", path.display()))?;
    }
    let (size, sha256) = w.finish();
    Ok(FileEntry { path: rel.to_string(), size, sha256 })
}

/// For tests only (documented in docs/backup.md): with `PGRAFT_BACKUP_TEST_PAUSE` set to
/// a file name, the backup writes its start LSN into that file right after backup start,
/// before streaming WAL and copying files, and waits (up to 10 minutes) until the file is
/// removed. A test uses the pause to run checkpoints and WAL switches that would recycle
/// the backup's first segments were it not for the slot.
fn test_pause(start: Lsn) -> Result<()> {
    let Some(file) = std::env::var_os("PGRAFT_BACKUP_TEST_PAUSE") else {
        return Ok(());
    };
    let file = PathBuf::from(file);
    fs::write(&file, start.to_string()).with_context(|| format!("write {}", file.display()))?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while file.exists() {
        if Instant::now() > deadline {
            bail!("PGRAFT_BACKUP_TEST_PAUSE: {} was not removed within 10 minutes", file.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// fsyncs every directory of the backup, so the new names are durable.
fn sync_dirs(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync {}", dir.display()))?;
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let e = e.with_context(|| format!("read {}", dir.display()))?;
        if e.file_type().with_context(|| format!("type of {}", e.path().display()))?.is_dir() {
            sync_dirs(&e.path())?;
        }
    }
    Ok(())
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
struct Progress {
    total: u64,
    done: u64,
    tty: bool,
    last_draw: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self { total, done: 0, tty: std::io::stderr().is_terminal(), last_draw: None }
    }

    fn advance(&mut self, bytes: u64, current: &str) {
        self.done += bytes;
        if !self.tty || self.last_draw.is_some_and(|t| t.elapsed().as_millis() < 100) {
            return;
        }
        self.last_draw = Some(Instant::now());
        self.draw(current);
    }

    fn draw(&self, current: &str) {
        // Files grow while the backup runs, so "done" may pass the planned total.
        let pct = (self.done * 100).checked_div(self.total).unwrap_or(100).min(100);
        let filled = (pct / 4) as usize;
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let chars: Vec<char> = current.chars().collect();
        let name: String = if chars.len() > 40 {
            std::iter::once('…').chain(chars[chars.len() - 39..].iter().copied()).collect()
        } else {
            current.to_string()
        };
        eprint!(
            "\r[{}{}] {pct:>3}% {:>8.1}/{:.1} MiB  {name:<40}",
            "#".repeat(filled),
            " ".repeat(25 - filled),
            mib(self.done),
            mib(self.total)
        );
    }

    /// Draws the final state (the last chunks may have come faster than a redraw).
    fn done(&self) {
        if self.tty {
            self.draw("done");
            eprintln!();
        }
    }
}
