//! Patroni with etcd, from Debian's `patroni` and `etcd-server` packages, as the failover
//! comparison runs it: three etcd members and three Patroni nodes over the same PostgreSQL
//! installation as pgraft, every address on 127.0.0.1.
//!
//! ```text
//!   Patroni node i ──▶ etcd proxies (one per etcd member) ──▶ etcd 0, 1, 2
//!   standby j ─────▶ node i's PostgreSQL proxy (its connect_address) ──▶ node i's server
//!   Patroni j ─────▶ node i's REST proxy (its api_url) ──▶ node i's REST API
//!   the client ────▶ node i's server, directly
//! ```
//!
//! Every link a node has to the others goes through a [`LinkProxy`], so [`isolate`]
//! (`PatroniCluster::isolate`) takes a node off the network the way the test kit's
//! partition proxy does for pgraft (Raft and replication links), while the application
//! still reaches every server. `use_proxies: true` keeps Patroni on the proxies instead of
//! the etcd members' own client URLs. Patroni runs as the account that runs pgraft's
//! servers (PostgreSQL refuses root); each node's processes, Patroni and PostgreSQL,
//! work in the node's directory, so [`pgraft_testkit::processes_in`] finds them all.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgraft_testkit::{free_port, kill_all_in, wait_until, ServerUser};

use crate::etcd::EtcdCluster;
use crate::health::request;
use crate::link_proxy::LinkProxy;

/// Patroni's three timers (its dynamic configuration), in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniTimers {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl PatroniTimers {
    /// Patroni's defaults.
    pub const DEFAULTS: PatroniTimers = PatroniTimers { ttl: 30, loop_wait: 10, retry_timeout: 10 };
    /// The fastest that Debian's Patroni (3.0.2, which checks no lower bound) runs stably
    /// on this machine while idle, within Patroni's rule `loop_wait + 2 * retry_timeout
    /// <= ttl`; Patroni 3.2 and later refuse a ttl under 20.
    pub const FASTEST: PatroniTimers = PatroniTimers { ttl: 10, loop_wait: 1, retry_timeout: 4 };

    pub fn label(&self) -> String {
        format!("ttl {}, loop_wait {}, retry_timeout {}", self.ttl, self.loop_wait, self.retry_timeout)
    }
}

/// One Patroni node.
struct PatroniNode {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pg_port: u16,
    rest_port: u16,
    pg_proxy: LinkProxy,
    rest_proxy: LinkProxy,
    etcd_proxies: Vec<LinkProxy>,
    child: Option<Child>,
}

/// Three Patroni nodes and their etcd; everything is killed when dropped.
pub struct PatroniCluster {
    patroni: PathBuf,
    user: ServerUser,
    nodes: Vec<PatroniNode>,
    _etcd: EtcdCluster,
}

/// The table every node's configuration file is made from.
struct NodeConfig<'a> {
    name: &'a str,
    dir: &'a Path,
    bin_dir: &'a Path,
    pg_port: u16,
    pg_front: u16,
    rest_port: u16,
    rest_front: u16,
    etcd_fronts: &'a [u16],
    timers: PatroniTimers,
}

fn yaml(c: &NodeConfig<'_>) -> String {
    let mut hosts = String::new();
    for p in c.etcd_fronts {
        let _ = writeln!(hosts, "    - 127.0.0.1:{p}");
    }
    let dir = c.dir.display();
    format!(
        "scope: pgraft-bench
namespace: /service/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_front}
etcd3:
  use_proxies: true
  hosts:
{hosts}bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_front}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  use_pg_rewind: true
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
    rewind:
      username: rewinder
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  parameters:
    unix_socket_directories: '{dir}'
    fsync: 'on'
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
",
        name = c.name,
        rest_port = c.rest_port,
        rest_front = c.rest_front,
        ttl = c.timers.ttl,
        loop_wait = c.timers.loop_wait,
        retry_timeout = c.timers.retry_timeout,
        pg_port = c.pg_port,
        pg_front = c.pg_front,
        bin_dir = c.bin_dir.display(),
    )
}

impl PatroniCluster {
    /// Starts three etcd members (heartbeat and election timeout in ms), then Patroni node
    /// 1, which initdbs the cluster and leads, then nodes 2 and 3, which clone it; returns
    /// once both stream from node 1.
    pub fn start(
        patroni: &Path,
        etcd: &Path,
        dir: &Path,
        bin_dir: &Path,
        timers: PatroniTimers,
        etcd_timing: (u64, u64),
    ) -> Result<Self> {
        let etcd = EtcdCluster::start(etcd, &dir.join("etcd"), 3, etcd_timing.0, etcd_timing.1)
            .context("start 3 etcd members for Patroni")?;
        let etcd_ports: Vec<u16> = etcd
            .client_urls
            .iter()
            .map(|u| u.rsplit(':').next().and_then(|p| p.parse().ok()).context("an etcd client port"))
            .collect::<Result<_>>()?;
        let user = ServerUser::for_invoker()?;
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let name = format!("pg{i}");
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir).with_context(|| format!("create {}", node_dir.display()))?;
            user.chown(&node_dir)?;
            let (pg_port, rest_port) = (free_port()?, free_port()?);
            let pg_proxy = LinkProxy::start(pg_port)?;
            let rest_proxy = LinkProxy::start(rest_port)?;
            let etcd_proxies: Vec<LinkProxy> =
                etcd_ports.iter().map(|p| LinkProxy::start(*p)).collect::<Result<_>>()?;
            let fronts: Vec<u16> = etcd_proxies.iter().map(|p| p.front).collect();
            let config = node_dir.join("patroni.yml");
            let text = yaml(&NodeConfig {
                name: &name,
                dir: &node_dir,
                bin_dir,
                pg_port,
                pg_front: pg_proxy.front,
                rest_port,
                rest_front: rest_proxy.front,
                etcd_fronts: &fronts,
                timers,
            });
            std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
            nodes.push(PatroniNode {
                name,
                log: node_dir.join("patroni.log"),
                dir: node_dir,
                config,
                pg_port,
                rest_port,
                pg_proxy,
                rest_proxy,
                etcd_proxies,
                child: None,
            });
        }
        let mut c = PatroniCluster { patroni: patroni.to_path_buf(), user, nodes, _etcd: etcd };
        c.spawn(0)?;
        wait_until("Patroni's first node to initdb and lead", Duration::from_secs(120), POLL, || {
            c.check_running(0)?;
            Ok(c.writable(0).then_some(()))
        })?;
        c.spawn(1)?;
        c.spawn(2)?;
        wait_until("Patroni's nodes 2 and 3 to stream from node 1", Duration::from_secs(180), POLL, || {
            c.check_running(1)?;
            c.check_running(2)?;
            Ok((crate::ha_cases::streaming(c.pg_port(0), &[c.app_name(1), c.app_name(2)])).then_some(()))
        })?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("open {}", n.log.display()))?;
        self.user.chown(&n.log)?;
        let mut cmd = Command::new(&self.patroni);
        cmd.arg(&n.config)
            .current_dir(&n.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &n.dir)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log);
        if let ServerUser::Other { uid, gid, .. } = &self.user {
            cmd.uid(*uid).gid(*gid);
        }
        n.child = Some(cmd.spawn().with_context(|| format!("start {}", self.patroni.display()))?);
        Ok(())
    }

    fn check_running(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        if let Some(c) = &mut n.child {
            if let Some(status) = c.try_wait().context("poll patroni")? {
                n.child = None;
                bail!("Patroni {} exited with {status}; see {}", n.name, n.log.display());
            }
        }
        Ok(())
    }

    /// Whether node `i`'s server takes writes.
    fn writable(&self, i: usize) -> bool {
        crate::ha_cases::is_primary(self.pg_port(i)) == Some(true)
    }

    pub fn pg_port(&self, i: usize) -> u16 {
        self.nodes[i].pg_port
    }

    /// The name node `i`'s standby streams as (`application_name`).
    pub fn app_name(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    /// kill -9 of node `i`'s Patroni and every PostgreSQL process of its data directory
    /// (the postmaster runs in a session of its own, not as Patroni's child).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        kill_all_in(&n.dir, Duration::from_secs(30))?;
        if let Some(mut c) = n.child.take() {
            c.wait().context("reap patroni")?;
        }
        Ok(())
    }

    /// Starts node `i`'s Patroni again (which starts, rewinds or re-clones its server).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)
    }

    /// Cuts node `i` off: its etcd links, its server's replication port and its REST API
    /// as the other nodes reach them. The application still reaches its server.
    pub fn isolate(&self, i: usize) {
        let n = &self.nodes[i];
        n.etcd_proxies.iter().for_each(LinkProxy::cut);
        n.pg_proxy.cut();
        n.rest_proxy.cut();
    }

    /// Lifts every cut.
    pub fn heal(&self) {
        for n in &self.nodes {
            n.etcd_proxies.iter().for_each(LinkProxy::heal);
            n.pg_proxy.heal();
            n.rest_proxy.heal();
        }
    }

    /// A planned switchover from `from` to `to` through the REST API of `from`; returns
    /// once Patroni answers (it waits for the switch itself).
    pub fn switchover(&self, from: usize, to: usize) -> Result<()> {
        let body =
            format!(r#"{{"leader":"{}","candidate":"{}"}}"#, self.nodes[from].name, self.nodes[to].name);
        let (code, text) =
            request(self.nodes[from].rest_port, "POST", "/switchover", &body, Duration::from_secs(60))
                .context("POST /switchover: no answer")?;
        if code != 200 {
            bail!("POST /switchover answered {code}: {text}");
        }
        Ok(())
    }

    /// Changes the timers through the REST API (`PATCH /config`); returns once every node
    /// shows them in its `GET /config` and then ran its loop once more with `old`'s
    /// `loop_wait` (a node applies a new dynamic configuration at the start of a cycle;
    /// nothing outside shows that it did, so this waits out the bound).
    pub fn set_timers(&self, t: PatroniTimers, old: PatroniTimers) -> Result<()> {
        let body =
            format!(r#"{{"ttl":{},"loop_wait":{},"retry_timeout":{}}}"#, t.ttl, t.loop_wait, t.retry_timeout);
        let (code, text) =
            request(self.nodes[0].rest_port, "PATCH", "/config", &body, Duration::from_secs(10))
                .context("PATCH /config: no answer")?;
        if code != 200 {
            bail!("PATCH /config answered {code}: {text}");
        }
        let want = [("ttl", t.ttl), ("loop_wait", t.loop_wait), ("retry_timeout", t.retry_timeout)];
        wait_until("every Patroni node to show the new timers", Duration::from_secs(60), POLL, || {
            Ok(self
                .nodes
                .iter()
                .all(|n| {
                    let Some((200, text)) =
                        request(n.rest_port, "GET", "/config", "", Duration::from_secs(2))
                    else {
                        return false;
                    };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
                    want.iter().all(|(k, x)| v[k].as_u64() == Some(u64::from(*x)))
                })
                .then_some(()))
        })?;
        std::thread::sleep(Duration::from_secs(u64::from(old.loop_wait) * 2));
        Ok(())
    }

    /// The installed Patroni's version line.
    pub fn version(patroni: &Path) -> String {
        Command::new(patroni)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

const POLL: Duration = Duration::from_millis(100);

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}
