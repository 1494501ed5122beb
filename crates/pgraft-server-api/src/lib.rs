//! The server APIs of `reference/server-apis.txt`: what a backup or HA tool asks of a
//! PostgreSQL server over an ordinary connection (server facts, binary file reads,
//! checkpoints, backup start and stop), with every value sent as a bind parameter.
//!
//! A [`Server`] is one server: connection settings, a name, the `online` flag and the
//! facts [`Server::info`] gathers. Every function that needs a privilege first asks the
//! server whether the connected role has it, and when it does not, fails with
//! [`Error::PermissionDenied`] naming the missing role or grant and the `GRANT` that fixes
//! it, without sending the call (and without retrying: a retry cannot grant anything).
//! SQL that differs between PostgreSQL versions is chosen from `server_version_num`
//! ([`PgVersion`]).
//!
//! | reference function | here | needs (15+) |
//! |---|---|---|
//! | `server_info` | [`Server::info`] | nothing |
//! | `server_valid` | [`Server::valid`] | nothing (no call) |
//! | `server_is_online` / `server_set_online` | [`Server::is_online`] / [`Server::set_online`] | nothing (no call) |
//! | `server_verify_connection` | [`Server::verify_connection`] | nothing |
//! | `server_read_binary_file` | [`Server::read_binary_file`], [`Server::read_binary_file_to`] | `pg_read_server_files`, EXECUTE on `pg_read_binary_file(text, bigint, bigint, boolean)` |
//! | `server_checkpoint` | [`Server::checkpoint`] | `pg_checkpoint` |
//! | `server_file_stat` | [`Server::file_stat`] | EXECUTE on `pg_stat_file(text, boolean)` |
//! | `server_backup_start` | [`Server::backup_start`] | EXECUTE on `pg_backup_start(text, boolean)` |
//! | `server_backup_stop` | [`Server::backup_stop`] | EXECUTE on `pg_backup_stop(boolean)` |
//! | (walking a data directory) | [`Server::list_dir`] | EXECUTE on `pg_ls_dir(text, boolean, boolean)` and `pg_stat_file(text, boolean)` |
//!
//! ```no_run
//! use pgraft_server_api::Server;
//! let mut s = Server::from_conninfo("main", "host=127.0.0.1 port=5432 user=backup dbname=postgres")?;
//! let info = s.info()?.clone();
//! assert!(s.valid());
//! let start = s.backup_start("nightly", true)?;
//! let control = s.read_binary_file("global/pg_control", 0, 8192)?;
//! let stop = s.backup_stop(false)?;
//! assert!(start <= stop.lsn && control.len() == 8192 && info.block_size > 0);
//! # Ok::<(), pgraft_server_api::Error>(())
//! ```

mod backup;
mod error;
mod file_stat;
mod files;
mod info;
mod privilege;
mod server;
mod version;

pub use backup::{BackupStop, Checkpoint};
pub use error::{Error, Result};
pub use file_stat::{check_path, format_utc, DirEntry, FileStat};
pub use info::ServerInfo;
pub use pgraft_walstream::{Lsn, SegmentSize, TimeLineId};
pub use privilege::{Access, Api, Requirement};
pub use server::{host_names, Server};
pub use version::PgVersion;
