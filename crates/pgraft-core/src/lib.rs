//! pgraft-core: the Raft member of pgraft, with no PostgreSQL inside.
//!
//! The member drives raft-rs's `RawNode` over durable storage and a TCP transport and
//! applies committed entries to an etcd-style key-value state machine (see
//! `docs/architecture.md`). The crate builds and tests without PostgreSQL, so the
//! consensus core can be simulated deterministically.
//!
//! Today it holds the member's configuration rules, shared by the extension's GUCs and
//! `pgraft_set_config`:
//!
//! ```
//! use pgraft_core::config::{parse_duration_ms, parse_initial_cluster};
//! assert_eq!(parse_duration_ms("75ms")?, 75);
//! assert_eq!(parse_duration_ms("1.5s")?, 1500);
//! let members = parse_initial_cluster("1=127.0.0.1:7001,2=127.0.0.1:7002")?;
//! assert_eq!(members[1].port, 7002);
//! # Ok::<(), pgraft_core::config::ConfigError>(())
//! ```

pub mod command;
pub mod config;
pub mod error;
pub mod fuzzing;
pub mod ha;
pub mod http;
pub mod ipc;
pub mod kv;
pub mod linearizability;
pub mod logger;
pub mod member;
pub mod metrics;
pub mod node;
mod persistent_serde;
mod proposals;
pub mod request;
pub mod sessions;
pub mod sim;
pub mod snapshot_job;
pub mod state_machine;
pub mod storage;
pub mod thread_slice;
pub mod transport;

pub use error::{Error, Result};
pub use member::{Member, MemberConfig, MemberStatus, Role, Token};
pub use node::{Bootstrap, HaView, KvGauges, Node, NodeConfig, NodeHandle};
pub use request::{Consistency, Read, Request, Response};
