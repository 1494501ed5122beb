//! The pgraft test kit: real PostgreSQL servers with the extension, on one machine.
//!
//! A [`LocalCluster`] lives in one directory. `up` runs `initdb` for every member, writes
//! its configuration, starts the servers on 127.0.0.1 and (unless told not to) bootstraps
//! the Raft cluster through SQL. Every member's Raft port is fronted by a
//! [`PartitionProxy`], so a member can be cut off from the others and healed again without
//! root and without touching the servers:
//!
//! ```text
//!   member 1 ─dial 127.0.0.1:7002─▶ ┌───────────────┐ ─▶ 127.0.1.2:7002  member 2
//!   (from 127.0.1.1)                │ proxy (:7002)  │    (its listen address)
//!                                   └───────────────┘
//!   `partition 2` closes every link whose source or target is member 2.
//! ```
//!
//! Members advertise `127.0.0.1:<raft port>` (the proxy) and listen on `127.0.1.<id>`; they
//! originate peer connections from their listen address, which tells the proxy who is
//! calling. Nothing ever leaves 127.0.0.0/8.
//!
//! ```no_run
//! use pgraft_testkit::{LocalCluster, UpOptions};
//! let opts = UpOptions { nodes: 3, dir: "/tmp/c1".into(), ..UpOptions::default() };
//! let cluster = LocalCluster::up(&opts)?;
//! cluster.kill(2)?;
//! cluster.start(2)?;
//! cluster.down()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

mod ha_setup;
mod haproxy;
mod local_cluster;
mod node;
mod pg_install;
mod plain_server;
mod ports;
mod procs;
mod proxy;
mod replication_server;
mod server_user;
mod test_ca;
pub mod torture;
mod wait;

pub use ha_setup::slot_name;
pub use haproxy::{HaProxy, ServerState};
pub use local_cluster::{ClusterState, LocalCluster, NodeStatus, UpOptions};
pub use node::Node;
pub use pg_install::PgInstall;
pub use plain_server::{PlainOptions, PlainServer};
pub use ports::free_port;
pub use procs::{kill_all_in, processes_in};
pub use proxy::{PartitionProxy, ProxyClient};
pub use replication_server::{ReplicationServer, ReplicationServerOptions, REPLICATOR_PASSWORD};
pub use server_user::ServerUser;
pub use test_ca::{IssuedCert, MemberTlsFiles, TestCa};
pub use wait::wait_until;
