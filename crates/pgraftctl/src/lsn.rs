//! `pgraftctl lsn`: WAL position arithmetic for operators.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pgraft_walstream::{Lsn, SegmentSize};

#[derive(Args)]
pub struct LsnArgs {
    #[command(subcommand)]
    command: LsnCommand,
}

#[derive(Subcommand)]
enum LsnCommand {
    /// Show an LSN as a byte position and the WAL segment file that holds it.
    Info {
        /// The LSN, as PostgreSQL prints it (for example 16/B374D848).
        lsn: String,
        /// The timeline.
        #[arg(long, default_value_t = 1)]
        timeline: u32,
        /// wal_segment_size in bytes.
        #[arg(long, default_value_t = SegmentSize::DEFAULT.bytes())]
        segment_size: u64,
    },
    /// The number of WAL bytes from FROM to TO (like pg_wal_lsn_diff).
    Diff {
        /// The later position.
        to: String,
        /// The earlier position.
        from: String,
    },
}

pub fn run(args: LsnArgs) -> Result<()> {
    match args.command {
        LsnCommand::Info { lsn, timeline, segment_size } => {
            let lsn: Lsn = lsn.parse()?;
            let seg = SegmentSize::new(segment_size)?;
            let out = serde_json::json!({
                "lsn": lsn.to_string(),
                "padded": lsn.to_padded_string(),
                "bytes": lsn.0,
                "timeline": timeline,
                "segment": seg.segment_of(lsn),
                "segment_offset": seg.offset_in_segment(lsn),
                "file_name": seg.file_name(timeline, lsn),
            });
            println!("{}", serde_json::to_string(&out).context("serialise")?);
        }
        LsnCommand::Diff { to, from } => {
            let (to, from): (Lsn, Lsn) = (to.parse()?, from.parse()?);
            let diff = i128::from(to.0) - i128::from(from.0);
            println!("{diff}");
        }
    }
    Ok(())
}
