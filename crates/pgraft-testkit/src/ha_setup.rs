//! The PostgreSQL side of an HA local cluster: one primary and its streaming standbys.
//!
//! ```text
//!   node 1: initdb, HA settings, start            (the primary)
//!           a physical slot per other member:    pgraft_node_2, pgraft_node_3, ...
//!   node N: pg_basebackup -R -S pgraft_node_N from node 1, N's own settings, start
//!                                                 (a hot standby streaming from node 1)
//! ```
//!
//! Each standby streams through its own slot, so the primary keeps every WAL segment a
//! standby still needs while it is down. The Raft members are bootstrapped over these
//! servers afterwards, as in any local cluster; the extension reaches the standbys by
//! replication (they are read-only), and `pgraft_init()` there only talks to the worker.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::local_cluster::{server_role, LocalCluster};
use crate::node::Node;
use crate::plain_server::append_conf;
use crate::proxy::replication_ip;
use crate::wait::wait_until;

/// Settings every server of an HA cluster gets (the primary's are cloned to the
/// standbys): enough senders and slots for every member, hot standbys, and WAL that
/// `pg_rewind` can use (`wal_log_hints`).
const HA_SETTINGS: &str = "\n# HA cluster (pgraftctl local up --ha)\n\
     wal_level = replica\n\
     max_wal_senders = 16\n\
     max_replication_slots = 16\n\
     max_slot_wal_keep_size = '1GB'\n\
     wal_log_hints = on\n\
     hot_standby = on\n\
     hot_standby_feedback = on\n\
     wal_receiver_status_interval = 1s\n\
     wal_keep_size = '256MB'\n\
     pgraft.synchronous_mode = on\n\
     pgraft.replication_conninfo = 'user=postgres'\n";

/// A member's standby dials every other member's server through its own front of the
/// partition proxy (`pgraft.replication_host`), so replication links can be cut one by one.
fn replication_host_conf(n: &Node) -> String {
    format!("pgraft.replication_host = '{}'\n", replication_ip(n.node_id))
}

/// The physical replication slot of member `id` (on whichever server it streams from).
pub fn slot_name(id: u64) -> String {
    format!("pgraft_node_{id}")
}

impl LocalCluster {
    /// initdb and start node 1 as the primary, then clone and start every other member as
    /// its streaming standby, and wait until each streams.
    pub(crate) fn up_primary_and_standbys(&self) -> Result<()> {
        let nodes = self.nodes().to_vec();
        let (primary, standbys) = nodes.split_first().context("an HA cluster needs at least one member")?;
        self.initdb(primary)?;
        append_conf(&primary.data_dir, HA_SETTINGS)?;
        append_conf(&primary.data_dir, &replication_host_conf(primary))?;
        self.ensure_proxy()?;
        self.start(primary.node_id)?;
        let mut c = self.connect(primary.node_id)?;
        for n in standbys {
            c.execute("SELECT pg_create_physical_replication_slot($1, true)", &[&slot_name(n.node_id)])
                .with_context(|| {
                    format!("create the slot of node {} on node {}", n.node_id, primary.node_id)
                })?;
        }
        for n in standbys {
            self.clone_standby(n, primary)?;
            self.start(n.node_id)?;
        }
        for n in standbys {
            self.wait_streaming(n, primary)?;
        }
        Ok(())
    }

    /// Makes member `n`'s data directory a copy of `from`'s that streams from it.
    fn clone_standby(&self, n: &Node, from: &Node) -> Result<()> {
        self.make_node_dir(n)?;
        let port = from.pg_port.to_string();
        let data = n.data_dir.to_string_lossy();
        let slot = slot_name(n.node_id);
        self.run_as(
            &self.install.bin("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-X",
                "stream",
                "-S",
                &slot,
                "-R",
                "-c",
                "fast",
                "--no-sync",
            ],
            &format!("pg_basebackup of node {} from node {}", n.node_id, from.node_id),
        )?;
        // The copy carries node 1's settings (port, node id, directories): N's own come after.
        self.write_node_conf(n)?;
        append_conf(&n.data_dir, &format!("cluster_name = 'pgraft_node_{}'\n", n.node_id))?;
        append_conf(&n.data_dir, &replication_host_conf(n))?;
        // Stream through the partition proxy's front for this link, so the replication link
        // can be cut on its own. postgresql.auto.conf (where -R wrote the direct one) is
        // read last, and a later line there wins.
        let auto = n.data_dir.join("postgresql.auto.conf");
        let line = format!(
            "primary_conninfo = 'host={} port={} user=postgres application_name=pgraft_node_{}'\n",
            replication_ip(n.node_id),
            from.pg_port,
            n.node_id
        );
        let mut text = fs::read_to_string(&auto).with_context(|| format!("read {}", auto.display()))?;
        text.push_str(&line);
        fs::write(&auto, text).with_context(|| format!("write {}", auto.display()))
    }

    /// Turns automatic failover on in every member (`pgraft.failover_enabled`, reloaded)
    /// once the Raft cluster stands, and waits until the leader's worker has taken charge
    /// of the primary: it names it in the log and makes its standbys synchronous.
    pub(crate) fn enable_failover(&self) -> Result<()> {
        for n in self.nodes() {
            append_conf(&n.data_dir, "pgraft.failover_enabled = on\n")?;
            self.connect(n.node_id)?
                .batch_execute("SELECT pg_reload_conf()")
                .with_context(|| format!("reload node {}", n.node_id))?;
        }
        let standbys = self.nodes().len() - 1;
        if standbys == 0 {
            return Ok(());
        }
        wait_until(
            "node 1's worker to make its standbys synchronous",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let mut c = self.connect(1)?;
                let n: i64 = c
                    .query_one("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'", &[])?
                    .get(0);
                Ok((n as usize == standbys).then_some(()))
            },
        )
    }

    /// Waits until `n` is a standby whose WAL receiver streams from `from`.
    fn wait_streaming(&self, n: &Node, from: &Node) -> Result<()> {
        wait_until(
            &format!("node {} to stream from node {}", n.node_id, from.node_id),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let mut c = self.connect(from.node_id)?;
                let rows = c.query(
                    "SELECT 1 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                      WHERE s.slot_name = $1 AND r.state = 'streaming'",
                    &[&slot_name(n.node_id)],
                )?;
                Ok((!rows.is_empty()).then_some(()))
            },
        )
    }

    /// On a standby of an HA cluster: waits for the extension to arrive by replication,
    /// then initialises the member.
    pub(crate) fn init_standby_member(&self, id: u64) -> Result<()> {
        wait_until(
            &format!("the extension to replicate to node {id}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let mut c = self.connect(id)?;
                let rows = c.query("SELECT 1 FROM pg_extension WHERE extname = 'pgraft'", &[])?;
                Ok((!rows.is_empty()).then_some(()))
            },
        )?;
        let mut c = self.connect(id)?;
        c.batch_execute("SELECT pgraft_init();").with_context(|| format!("SELECT pgraft_init() on node {id}"))
    }

    /// `primary` or `standby`: what member `id`'s server is now.
    pub fn role(&self, id: u64) -> Result<&'static str> {
        server_role(&mut self.connect(id)?)
    }

    /// A libpq connection string naming every member, which connects to whichever server
    /// accepts writes (`target_session_attrs=read-write`): what an application of an HA
    /// cluster uses.
    pub fn read_write_conninfo(&self) -> String {
        let hosts = vec!["127.0.0.1"; self.nodes().len()].join(",");
        let ports: Vec<String> = self.nodes().iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "host={hosts} port={} user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
            ports.join(",")
        )
    }
}
