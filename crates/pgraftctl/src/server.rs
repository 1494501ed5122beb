//! `pgraftctl server`: the server API functions for operators.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use pgraft_server_api::{format_utc, FileStat, Server};
use serde_json::{json, Value};

use crate::pg_conn::PgConnArgs;

/// How to reach the server, as psql takes it (`-h`, `-p`, `-U`, `-d` with a name, a
/// connection string or a URI, and the `PG*` variables); shared with `pgraftctl backup`.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Host, port, role and database.
    #[command(flatten)]
    pub pg: PgConnArgs,
    /// A name for the server in messages.
    #[arg(long, global = true, default_value = "server")]
    pub name: String,
}

impl ConnArgs {
    /// The libpq connection string of these settings, every source applied.
    pub fn conninfo(&self) -> Result<String> {
        Ok(self.pg.resolve()?.conninfo())
    }

    /// A server handle for these settings (nothing is sent yet).
    pub fn server(&self) -> Result<Server> {
        Server::from_conninfo(self.name.clone(), &self.conninfo()?).context("the connection settings")
    }
}

/// Output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned `key  value` lines for people.
    Table,
    /// One JSON object, for scripts.
    Json,
}

#[derive(Args)]
pub struct ServerArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: ServerCommand,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Version, checksums, primary or standby, wal_level, WAL segment, relation segment and
    /// block sizes, summarize_wal.
    Info,
    /// Connect and disconnect, read the facts, and show which API functions this role may
    /// call (with the GRANT for each one it may not).
    Check,
    /// Force a checkpoint; shows its LSN and timeline.
    Checkpoint,
    /// Size, kind and times of a file in the data directory.
    Stat {
        /// The path, relative to the data directory.
        path: String,
    },
    /// Bytes of a file in the data directory, read in chunks, to a file or stdout.
    Read {
        /// The path, relative to the data directory.
        path: String,
        /// The first byte.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// How many bytes (exactly; past the end of the file is an error). Without it, to
        /// the end of the file.
        #[arg(long)]
        length: Option<u64>,
        /// Where to write the bytes (default: stdout, and no summary).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Bytes per pg_read_binary_file call.
        #[arg(long, default_value_t = Server::DEFAULT_CHUNK_SIZE)]
        chunk_size: u64,
    },
}

pub fn run(args: ServerArgs) -> Result<()> {
    let mut s = args.conn.server()?;
    let out = args.output;
    match args.command {
        ServerCommand::Info => {
            let info = s.info()?.clone();
            print(
                out,
                &json!({
                    "server": s.name(),
                    "version": info.version_string,
                    "version_num": info.version.0,
                    "checksums": info.checksums,
                    "primary": info.primary,
                    "wal_level": info.wal_level,
                    "wal_segment_size": info.wal_segment_size,
                    "segment_size": info.segment_size,
                    "block_size": info.block_size,
                    "wal_block_size": info.wal_block_size,
                    "summarize_wal": info.summarize_wal,
                }),
            )
        }
        ServerCommand::Check => {
            s.verify_connection()?;
            s.info()?;
            let valid = s.valid();
            let access = s.check_privileges()?;
            let apis: Vec<Value> = access
                .iter()
                .map(|a| {
                    json!({
                        "api": a.api.name(),
                        "allowed": a.allowed(),
                        "missing": a.missing.iter().map(|m| m.describe()).collect::<Vec<_>>(),
                        "grant": a.grants(),
                    })
                })
                .collect();
            if out == Output::Json {
                return print(
                    out,
                    &json!({ "server": s.name(), "connection": "ok", "valid": valid, "apis": apis }),
                );
            }
            println!("server      {}\nconnection  ok\nvalid       {valid}", s.name());
            for a in &access {
                if a.allowed() {
                    println!("{:<17} allowed", a.api.name());
                } else {
                    println!("{:<17} DENIED  fix: {}", a.api.name(), a.grants());
                }
            }
            Ok(())
        }
        ServerCommand::Checkpoint => {
            let c = s.checkpoint()?;
            print(
                out,
                &json!({ "server": s.name(), "checkpoint_lsn": c.lsn.to_string(), "timeline": c.timeline }),
            )
        }
        ServerCommand::Stat { path } => {
            let st = s.file_stat(&path)?;
            print(out, &stat_json(&path, &st))
        }
        ServerCommand::Read { path, offset, length, out: file, chunk_size } => {
            s.set_chunk_size(chunk_size);
            let (mut sink, to_file): (Box<dyn Write>, bool) = match &file {
                Some(f) => (
                    Box::new(BufWriter::new(
                        File::create(f).with_context(|| format!("create {}", f.display()))?,
                    )),
                    true,
                ),
                None => (Box::new(std::io::stdout().lock()), false),
            };
            let mut hashing = crate::manifest::HashingWriter::new(&mut sink);
            match length {
                Some(len) => s.read_binary_file_to(&path, offset, len, &mut hashing)?,
                None => {
                    let mut pos = offset;
                    loop {
                        let chunk = s
                            .read_chunk(&path, pos, chunk_size)?
                            .with_context(|| format!("{path:?} does not exist on the server"))?;
                        hashing.write_all(&chunk).context("write the bytes")?;
                        pos += chunk.len() as u64;
                        if (chunk.len() as u64) < chunk_size {
                            break;
                        }
                    }
                }
            }
            let (bytes, sha256) = hashing.finish();
            sink.flush().context("flush the output")?;
            if to_file {
                print(out, &json!({ "path": path, "offset": offset, "bytes": bytes, "sha256": sha256 }))?;
            }
            Ok(())
        }
    }
}

/// A file's metadata as printed: times in the reference's `%Y-%m-%d %H:%M:%S` (UTC).
fn stat_json(path: &str, st: &FileStat) -> Value {
    json!({
        "path": path,
        "size": st.size,
        "is_dir": st.is_dir,
        "access": format_utc(st.access),
        "modification": format_utc(st.modification),
        "change": st.change.map(format_utc),
        "creation": st.creation.map(format_utc),
    })
}

/// Prints a flat object as a table or JSON.
pub fn print(out: Output, v: &Value) -> Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string(v).context("serialise")?),
        Output::Table => {
            let Some(obj) = v.as_object() else {
                println!("{v}");
                return Ok(());
            };
            let width = obj.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in obj {
                let text = match val {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".to_string(),
                    other => other.to_string(),
                };
                println!("{k:<width$}  {text}");
            }
        }
    }
    Ok(())
}
