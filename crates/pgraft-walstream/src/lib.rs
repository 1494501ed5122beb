//! A client of PostgreSQL's streaming replication protocol.
//!
//! This crate grows into the WAL streaming library of `reference/wal-replication-api.txt`.
//! Its foundation is exact WAL position arithmetic: [`Lsn`] parses and prints PostgreSQL's
//! `X/X` text form (never compared as strings), and [`SegmentSize`] maps positions to WAL
//! segment file names and back.
//!
//! ```
//! use pgraft_walstream::{Lsn, SegmentSize};
//! let lsn: Lsn = "16/B374D848".parse()?;
//! let seg = SegmentSize::new(16 * 1024 * 1024)?;
//! assert_eq!(seg.file_name(1, lsn), "0000000100000016000000B3");
//! assert!(lsn < "17/0".parse()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod lsn;
mod segment;

pub use error::{Error, Result};
pub use lsn::Lsn;
pub use segment::{SegmentSize, TimeLineId};
