//! A cluster of real PostgreSQL servers with the pgraft extension, in one directory.
//!
//! Layout of a cluster directory:
//!
//! ```text
//! DIR/cluster.json        the state file: cluster id, install, members (see ClusterState)
//! DIR/proxy.sock          control socket of the partition proxy; proxy.pid, proxy.log
//! DIR/nodeN/pgdata        PGDATA of member N; DIR/nodeN/postgres.log its server log
//! DIR/nodeN/raft          pgraft.data_dir of member N
//! DIR/nodeN/.s.PGSQL.*    its Unix socket
//! ```
//!
//! An HA cluster (`UpOptions::ha`, see `ha_setup.rs`) has one primary (node 1) and
//! streaming standbys cloned from it; a plain one has independent servers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::haproxy::HaProxy;
use crate::node::Node;
use crate::pg_install::PgInstall;
use crate::plain_server::append_conf;
use crate::ports::free_port;
use crate::procs::{alive, processes_in, signal};
use crate::proxy::ProxyClient;
use crate::server_user::ServerUser;
use crate::test_ca::{MemberTlsFiles, TestCa};
use crate::wait::wait_until;

const STATE_FILE: &str = "cluster.json";
/// How long a start waits for a member's rejoin helper (a rewind, or a re-clone of a small
/// test database, while the primary may change under it).
const REJOIN_WAIT: Duration = Duration::from_secs(180);
/// How long the supervisor's start of a member may take: a helper that was running, the
/// start itself, and a helper that a fence at start spawned.
const START_WITHIN: Duration = Duration::from_secs(2 * REJOIN_WAIT.as_secs() + 120);
const PROXY_SOCKET: &str = "proxy.sock";
const PROXY_PID: &str = "proxy.pid";

/// What `up` is asked to build.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How many members.
    pub nodes: u64,
    /// The cluster directory; created if missing, must not hold a cluster yet.
    pub dir: PathBuf,
    /// The first Raft port; members get consecutive ports. Free ports when `None`.
    pub raft_port: Option<u16>,
    /// The first PostgreSQL port; members get consecutive ports. Free ports when `None`.
    pub pg_port: Option<u16>,
    /// Start the servers with the extension preloaded, but run no SQL.
    pub no_init: bool,
    /// The PostgreSQL installation (into which the extension was installed).
    pub pg_config: PathBuf,
    /// The program that serves `local proxy --dir DIR` (the `pgraftctl` binary).
    pub proxy_exe: PathBuf,
    /// Mutual TLS between members: a certificate authority and one certificate per
    /// member are made under `DIR/tls`, and the `pgraft.ssl_*` settings point at them.
    pub tls: bool,
    /// Members prove a cluster secret to each other at every connection (a random one,
    /// written to every member's `pgraft.cluster_secret`).
    pub cluster_secret: bool,
    /// Members dial each other's listen address directly instead of through the partition
    /// proxy: one hop less on the Raft path (for benchmarks), but `partition` has no effect.
    pub direct_peers: bool,
    /// One PostgreSQL cluster instead of N: node 1 is initdb'd as the primary, the others
    /// are cloned from it as streaming standbys with a physical slot each.
    pub ha: bool,
    /// Each member serves its HTTP endpoints (`pgraft.http_port`) on a free port of
    /// 127.0.0.1.
    pub http: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            dir: PathBuf::from("pgraft-local"),
            raft_port: None,
            pg_port: None,
            no_init: false,
            pg_config: PathBuf::from(PgInstall::DEFAULT_PG_CONFIG),
            proxy_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pgraftctl")),
            tls: false,
            cluster_secret: false,
            direct_peers: false,
            ha: false,
            http: false,
        }
    }
}

/// The state file of a cluster directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// `pgraft.cluster_id` of every member: unique per cluster directory.
    pub cluster_id: String,
    /// The PostgreSQL installation the servers run from.
    pub pg_config: PathBuf,
    /// The program that serves the partition proxy.
    pub proxy_exe: PathBuf,
    /// The members.
    pub nodes: Vec<Node>,
    /// Whether members talk over mutual TLS (certificates in `DIR/tls`).
    #[serde(default)]
    pub tls: bool,
    /// The cluster secret members prove to each other, if any.
    #[serde(default)]
    pub cluster_secret: Option<String>,
    /// Whether members dial each other's listen address, bypassing the partition proxy.
    #[serde(default)]
    pub direct_peers: bool,
    /// Whether the servers are one primary and its streaming standbys.
    #[serde(default)]
    pub ha: bool,
}

/// One line of `pgraftctl local status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The member.
    pub node_id: u64,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// The advertised Raft port.
    pub raft_port: u16,
    /// Whether the postmaster is alive.
    pub running: bool,
    /// The postmaster's process id while it runs.
    pub pid: Option<i32>,
    /// Whether the partition proxy cuts this member off.
    pub partitioned: bool,
    /// `primary` or `standby` (in recovery), when the server answers.
    pub role: Option<String>,
    /// The pgraft extension version created in database `postgres`, if any.
    pub extension: Option<String>,
    /// The worker's state (`running`, ...), when the extension is created.
    pub worker: Option<String>,
    /// Whether this member leads.
    pub is_leader: Option<bool>,
    /// The leader it knows of (0: none).
    pub leader: Option<i32>,
    /// Its current term.
    pub term: Option<i64>,
    /// Its commit index.
    pub commit_index: Option<i64>,
    /// What went wrong when asking the server, if it runs but did not answer.
    pub error: Option<String>,
}

/// A local cluster: its directory, state and the account that runs its servers.
pub struct LocalCluster {
    dir: PathBuf,
    state: ClusterState,
    pub(crate) install: PgInstall,
    user: ServerUser,
}

impl LocalCluster {
    /// Creates, starts and (unless `no_init`) bootstraps a cluster.
    pub fn up(opts: &UpOptions) -> Result<Self> {
        if opts.nodes == 0 || opts.nodes > 64 {
            bail!("--nodes must be between 1 and 64, got {}", opts.nodes);
        }
        let install = PgInstall::from_pg_config(&opts.pg_config)?;
        install.check_extension_installed()?;
        let user = ServerUser::for_invoker()?;
        fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
        let dir = opts.dir.canonicalize().with_context(|| format!("resolve {}", opts.dir.display()))?;
        if dir.join(STATE_FILE).exists() {
            bail!(
                "{} already holds a local cluster; `pgraftctl local down --dir {0}` stops it, \
                 `start` restarts it, or pick another directory",
                dir.display()
            );
        }
        check_reachable(&dir, &user)?;

        let ports = |first: Option<u16>, what: &str| -> Result<Vec<u16>> {
            (0..opts.nodes)
                .map(|i| match first {
                    Some(p) => u16::try_from(u64::from(p) + i)
                        .map_err(|_| anyhow!("{what} ports starting at {p} run past 65535")),
                    None => free_port(),
                })
                .collect()
        };
        let raft_ports = ports(opts.raft_port, "Raft")?;
        let pg_ports = ports(opts.pg_port, "PostgreSQL")?;
        let mut nodes: Vec<Node> = (1..=opts.nodes)
            .map(|id| {
                let i = (id - 1) as usize;
                Node::new(id, pg_ports[i], raft_ports[i], dir.join(format!("node{id}")))
            })
            .collect();
        if opts.http {
            for n in &mut nodes {
                n.http_port = Some(free_port()?);
            }
        }
        let state = ClusterState {
            cluster_id: cluster_id_for(&dir),
            pg_config: opts.pg_config.clone(),
            proxy_exe: opts.proxy_exe.clone(),
            nodes,
            tls: opts.tls,
            cluster_secret: if opts.cluster_secret { Some(random_secret()?) } else { None },
            direct_peers: opts.direct_peers,
            ha: opts.ha,
        };
        let cluster = Self { dir, state, install, user };
        cluster.save_state()?;
        if opts.tls {
            cluster.make_certificates()?;
        }
        if opts.ha {
            cluster.up_primary_and_standbys()?;
        } else {
            for n in &cluster.state.nodes {
                cluster.initdb(n)?;
            }
            cluster.ensure_proxy()?;
            for n in &cluster.state.nodes {
                cluster.start(n.node_id)?;
            }
        }
        if !opts.no_init {
            cluster.bootstrap()?;
            if opts.ha {
                cluster.enable_failover()?;
            }
        }
        Ok(cluster)
    }

    /// Opens the cluster that lives in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let dir = dir.canonicalize().with_context(|| format!("no cluster directory {}", dir.display()))?;
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("{} holds no local cluster (no {STATE_FILE})", dir.display()))?;
        let state: ClusterState =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let install = PgInstall::from_pg_config(&state.pg_config)?;
        let user = ServerUser::for_invoker()?;
        Ok(Self { dir, state, install, user })
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The members, in node id order.
    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    /// The cluster's state as recorded in its directory.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// One member by id.
    pub fn node(&self, id: u64) -> Result<&Node> {
        self.state.nodes.iter().find(|n| n.node_id == id).ok_or_else(|| {
            anyhow!(
                "node {id} is not a member of the local cluster in {} (members: 1..={})",
                self.dir.display(),
                self.state.nodes.len()
            )
        })
    }

    /// A superuser connection to member `id`.
    pub fn connect(&self, id: u64) -> Result<postgres::Client> {
        let n = self.node(id)?;
        postgres::Client::connect(&format!("{} connect_timeout=10", n.conninfo), postgres::NoTls)
            .with_context(|| format!("connect to node {id} ({})", n.conninfo))
    }

    /// The postmaster's pid of member `id`, if it runs.
    pub fn postmaster_pid(&self, id: u64) -> Result<Option<i32>> {
        let n = self.node(id)?;
        Ok(read_postmaster_pid(&n.data_dir).filter(|pid| alive(*pid)))
    }

    /// Kills member `id`'s postmaster with SIGKILL and waits until it is gone.
    pub fn kill(&self, id: u64) -> Result<()> {
        let Some(pid) = self.postmaster_pid(id)? else {
            bail!("node {id} is not running");
        };
        signal(pid, libc::SIGKILL).with_context(|| format!("kill -9 {pid} (node {id})"))?;
        wait_until(
            &format!("the postmaster of node {id} to die"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok((!alive(pid)).then_some(())),
        )
    }

    /// Starts member `id` (after `kill` or a stop). The cluster's supervisor runs the
    /// start, so the new postmaster is its descendant and gets reaped when it dies.
    pub fn start(&self, id: u64) -> Result<()> {
        self.node(id)?;
        self.ensure_proxy()?;
        self.proxy().request_within(&format!("start {id}"), START_WITHIN).map(|_| ())
    }

    /// Starts every member that is not running, and the supervisor.
    pub fn start_all(&self) -> Result<()> {
        self.ensure_proxy()?;
        for n in &self.state.nodes {
            if self.postmaster_pid(n.node_id)?.is_none() {
                self.start(n.node_id)?;
            }
        }
        Ok(())
    }

    /// Runs the cluster's supervisor in this process until `down`: the partition proxy, the
    /// starts of servers, and the reaping of dead postmasters.
    ///
    /// A killed postmaster stays a zombie until its parent reaps it, and PostgreSQL will
    /// not start while its old postmaster's pid exists. `pg_ctl` leaves the postmaster
    /// orphaned, so the supervisor declares itself a child subreaper: orphans below it
    /// become its children, and it reaps them.
    pub fn serve(dir: &Path) -> Result<()> {
        let cluster = std::sync::Arc::new(Self::open(dir)?);
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            bail!("prctl(PR_SET_CHILD_SUBREAPER): {}", std::io::Error::last_os_error());
        }
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(|| loop {
                reap_dead_servers();
                std::thread::sleep(Duration::from_millis(20));
            })
            .context("spawn the reaper")?;
        let c = std::sync::Arc::clone(&cluster);
        crate::proxy::PartitionProxy::new(cluster.nodes()).run(
            &cluster.dir.join(PROXY_SOCKET),
            move |words| match words {
                ["start", n] => Some(
                    n.parse::<u64>()
                        .with_context(|| format!("{n:?} is not a node id"))
                        .and_then(|id| c.node(id).cloned())
                        .and_then(|node| {
                            c.start_node(&node).map(|()| format!("started node {}", node.node_id))
                        }),
                ),
                _ => None,
            },
        )
    }

    /// Stops member `id` cleanly (fast shutdown).
    pub fn stop(&self, id: u64) -> Result<()> {
        let n = self.node(id)?;
        self.pg_ctl_stop(n)
    }

    /// Cuts member `id` off from the other members on the Raft ports; SQL still works.
    pub fn partition(&self, id: u64) -> Result<()> {
        self.node(id)?;
        self.proxy().request(&format!("partition {id}")).map(|_| ())
    }

    /// Cuts the one link between members `a` and `b` (both directions); their links to
    /// the others stay up. Several cuts make bridge, ring and minority partitions.
    pub fn cut(&self, a: u64, b: u64) -> Result<()> {
        self.node(a)?;
        self.node(b)?;
        self.proxy().request(&format!("cut {a} {b}")).map(|_| ())
    }

    /// Cuts every replication link of member `id` (HA clusters): it neither streams from
    /// nor serves WAL to the others; its Raft links stay up.
    pub fn repl_partition(&self, id: u64) -> Result<()> {
        self.node(id)?;
        self.proxy().request(&format!("repl-partition {id}")).map(|_| ())
    }

    /// Cuts the replication link between members `a` and `b`; Raft links stay up.
    pub fn repl_cut(&self, a: u64, b: u64) -> Result<()> {
        self.node(a)?;
        self.node(b)?;
        self.proxy().request(&format!("repl-cut {a} {b}")).map(|_| ())
    }

    /// Kills member `id`'s pgraft background worker alone with SIGKILL. PostgreSQL treats
    /// a child killed by a signal as a crash: it ends every backend, reinitialises shared
    /// memory and starts the worker again, without a new postmaster.
    pub fn kill_worker(&self, id: u64) -> Result<i32> {
        let mut c = self.connect(id)?;
        let pid: i32 = c
            .query_one("SELECT worker_pid FROM pgraft_worker_status", &[])
            .with_context(|| format!("ask node {id} for its worker's pid"))?
            .get(0);
        if pid <= 0 {
            bail!("node {id} has no running pgraft worker");
        }
        if !processes_in(&self.node(id)?.data_dir).contains(&pid) {
            bail!("process {pid} is not a server process of node {id}");
        }
        signal(pid, libc::SIGKILL).with_context(|| format!("kill -9 {pid} (the worker of node {id})"))?;
        Ok(pid)
    }

    /// Freezes every process of member `id` with SIGSTOP: the member neither answers nor
    /// times anything out, like a machine that stalls, until [`LocalCluster::resume`].
    /// Returns how many processes were stopped.
    pub fn pause(&self, id: u64) -> Result<usize> {
        let pids = processes_in(&self.node(id)?.data_dir);
        if pids.is_empty() {
            bail!("node {id} is not running");
        }
        for p in &pids {
            signal(*p, libc::SIGSTOP).with_context(|| format!("SIGSTOP {p} (node {id})"))?;
        }
        Ok(pids.len())
    }

    /// Undoes [`LocalCluster::pause`] (SIGCONT to every process of member `id`).
    pub fn resume(&self, id: u64) -> Result<()> {
        for p in processes_in(&self.node(id)?.data_dir) {
            signal(p, libc::SIGCONT).with_context(|| format!("SIGCONT {p} (node {id})"))?;
        }
        Ok(())
    }

    /// Undoes `partition` and `cut` for one member, or every cut when `id` is `None`.
    pub fn heal(&self, id: Option<u64>) -> Result<()> {
        match id {
            Some(id) => {
                self.node(id)?;
                self.proxy().request(&format!("heal {id}")).map(|_| ())
            }
            None => self.proxy().request("heal").map(|_| ()),
        }
    }

    /// What each member is doing.
    pub fn status(&self) -> Result<Vec<NodeStatus>> {
        let cut = self.proxy().cut().unwrap_or_default();
        let mut out = Vec::new();
        for n in &self.state.nodes {
            let pid = self.postmaster_pid(n.node_id)?;
            let mut st = NodeStatus {
                node_id: n.node_id,
                pg_port: n.pg_port,
                raft_port: n.raft_port,
                running: pid.is_some(),
                pid,
                partitioned: cut.contains(&n.node_id),
                role: None,
                extension: None,
                worker: None,
                is_leader: None,
                leader: None,
                term: None,
                commit_index: None,
                error: None,
            };
            if pid.is_some() {
                if let Err(e) = self.query_status(n.node_id, &mut st) {
                    st.error = Some(format!("{e:#}"));
                }
            }
            out.push(st);
        }
        Ok(out)
    }

    fn query_status(&self, id: u64, st: &mut NodeStatus) -> Result<()> {
        let mut c = self.connect(id)?;
        st.role = Some(server_role(&mut c)?.to_string());
        let row = c
            .query_opt("SELECT extversion FROM pg_extension WHERE extname = 'pgraft'", &[])
            .context("query pg_extension")?;
        st.extension = row.map(|r| r.get(0));
        if st.extension.is_none() {
            return Ok(());
        }
        let r = c
            .query_one(
                "SELECT pgraft_get_worker_state(), pgraft_is_leader(), pgraft_get_leader(), pgraft_get_term(), \
                 (SELECT commit_index FROM pgraft_get_cluster_status() \
                   WHERE node_id = current_setting('pgraft.node_id')::int)",
                &[],
            )
            .context("query pgraft's state")?;
        st.worker = Some(r.get(0));
        st.is_leader = Some(r.get(1));
        st.leader = Some(r.get(2));
        st.term = Some(r.get(3));
        st.commit_index = r.get(4);
        Ok(())
    }

    /// Starts HAProxy in front of the cluster (see [`HaProxy`]): a read-write port for the
    /// primary and a read-only port for the standbys, free ports unless given. The members
    /// must serve HTTP (`up` with `http`).
    pub fn haproxy(&self, read_write_port: Option<u16>, read_only_port: Option<u16>) -> Result<HaProxy> {
        let rw = match read_write_port {
            Some(p) => p,
            None => free_port()?,
        };
        let ro = match read_only_port {
            Some(p) => p,
            None => free_port()?,
        };
        HaProxy::start(&self.dir, &self.state.nodes, rw, ro)
    }

    /// Stops every server and the proxy, and waits until no process of the directory is left.
    pub fn down(&self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = HaProxy::stop(&self.dir) {
            errors.push(format!("haproxy: {e:#}"));
        }
        for n in &self.state.nodes {
            if let Err(e) = self.pg_ctl_stop(n) {
                errors.push(format!("node {}: {e:#}", n.node_id));
            }
        }
        if self.proxy().request("stop").is_err() {
            if let Some(pid) = self.proxy_pid() {
                let _ = signal(pid, libc::SIGKILL);
            }
        }
        // Whatever survived a clean stop (orphans of a killed postmaster, a stuck proxy).
        let me = std::process::id() as i32;
        let left = wait_until(
            "the cluster's processes to exit",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let pids: Vec<i32> = processes_in(&self.dir).into_iter().filter(|p| *p != me).collect();
                if pids.is_empty() {
                    return Ok(Some(()));
                }
                for p in &pids {
                    let _ = signal(*p, libc::SIGKILL);
                }
                Ok(None)
            },
        );
        if let Err(e) = left {
            errors.push(format!("{e:#}"));
        }
        let _ = fs::remove_file(self.dir.join(PROXY_PID));
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("down finished with errors: {}", errors.join("; "))
        }
    }

    // ---- internals -------------------------------------------------------------------

    fn save_state(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.state).context("serialise the cluster state")?;
        fs::write(&tmp, text + "\n").with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))
    }

    fn proxy(&self) -> ProxyClient {
        ProxyClient::new(self.dir.join(PROXY_SOCKET))
    }

    fn proxy_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join(PROXY_PID)).ok()?.trim().parse().ok()
    }

    /// Starts the partition proxy unless it already answers.
    pub(crate) fn ensure_proxy(&self) -> Result<()> {
        if self.proxy().request("status").is_ok() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("proxy.log"))
            .context("open proxy.log")?;
        let mut cmd = Command::new(&self.state.proxy_exe);
        cmd.args(["local", "proxy", "--dir"])
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup proxy.log")?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; it detaches the proxy from our session so a
        // Ctrl-C on the terminal that ran `up` does not take it down.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start the partition proxy ({})", self.state.proxy_exe.display()))?;
        fs::write(self.dir.join(PROXY_PID), format!("{}\n", child.id())).context("write proxy.pid")?;
        let pid = child.id() as i32;
        // The child is reaped by init once we exit; we never wait for it.
        std::mem::forget(child);
        wait_until(
            "the partition proxy to answer",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                if !alive(pid) {
                    let log = fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
                    bail!("the partition proxy exited: {}", log.lines().last().unwrap_or("no output"));
                }
                Ok(self.proxy().request("status").ok().map(|_| ()))
            },
        )
    }

    pub(crate) fn run_as(&self, program: &Path, args: &[&str], what: &str) -> Result<String> {
        let out = self
            .user
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{what}: run {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates member `n`'s own directory, owned by the server account.
    pub(crate) fn make_node_dir(&self, n: &Node) -> Result<()> {
        let node_dir = n.node_dir();
        fs::create_dir_all(&node_dir).with_context(|| format!("create {}", node_dir.display()))?;
        fs::set_permissions(&node_dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", node_dir.display()))?;
        self.user.chown(&node_dir)
    }

    pub(crate) fn initdb(&self, n: &Node) -> Result<()> {
        self.make_node_dir(n)?;
        let data = n.data_dir.to_string_lossy();
        self.run_as(
            &self.install.bin("initdb"),
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            &format!("initdb for node {}", n.node_id),
        )?;
        self.write_node_conf(n)
    }

    /// Appends member `n`'s own settings to its postgresql.conf (a later line wins, so this
    /// also turns a clone of another member's data directory into `n`'s).
    pub(crate) fn write_node_conf(&self, n: &Node) -> Result<()> {
        let mut text = n.postgresql_conf(&self.state.cluster_id);
        if self.state.direct_peers {
            // A later line wins: peers are told the listen address, not the proxy's.
            text.push_str(&format!("pgraft.address = '{}'\n", n.listen_address));
        }
        if self.state.tls {
            let t = self.tls_files(n.node_id);
            text.push_str(&format!(
                "pgraft.ssl_enabled = on\n\
                 pgraft.ssl_cert_file = '{}'\n\
                 pgraft.ssl_key_file = '{}'\n\
                 pgraft.ssl_ca_file = '{}'\n",
                t.cert.display(),
                t.key.display(),
                t.ca.display()
            ));
        }
        if let Some(secret) = &self.state.cluster_secret {
            text.push_str(&format!("pgraft.cluster_secret = '{secret}'\n"));
        }
        append_conf(&n.data_dir, &text)
    }

    /// Where member `id`'s TLS files are (in a cluster made with `tls`).
    pub fn tls_files(&self, id: u64) -> MemberTlsFiles {
        let dir = self.dir.join("tls");
        MemberTlsFiles {
            cert: dir.join(format!("node{id}.crt")),
            key: dir.join(format!("node{id}.key")),
            ca: dir.join("ca.crt"),
        }
    }

    /// A certificate authority for this cluster and a certificate per member, owned by
    /// the account that runs the servers.
    fn make_certificates(&self) -> Result<()> {
        let dir = self.dir.join("tls");
        let ca = TestCa::new(&format!("pgraft local cluster {}", self.state.cluster_id))?;
        let files = ca.write_member_files(&dir, self.state.nodes.len() as u64)?;
        self.user.chown(&dir)?;
        for f in &files {
            self.user.chown(&f.cert)?;
            self.user.chown(&f.key)?;
        }
        self.user.chown(&dir.join("ca.crt"))?;
        Ok(())
    }

    fn start_node(&self, n: &Node) -> Result<()> {
        // A rejoin helper (HA clusters) stops, rewinds and starts its server by itself; a
        // start in the middle would race pg_rewind. Let it finish.
        if self.rejoin_helper(n).is_some() && self.wait_for_rejoin(n, false)? {
            return Ok(());
        }
        if let Some(pid) = read_postmaster_pid(&n.data_dir) {
            if alive(pid) {
                bail!("node {} is already running (postmaster pid {pid})", n.node_id);
            }
            // A dead postmaster's pid must be gone entirely (reaped) before PostgreSQL
            // accepts the lock file as stale.
            wait_until(
                "the old postmaster to be reaped",
                Duration::from_secs(10),
                Duration::from_millis(20),
                || Ok((!Path::new(&format!("/proc/{pid}")).exists()).then_some(())),
            )?;
        }
        // Children of a killed postmaster exit when they notice its death; a new postmaster
        // refuses to start while they still hold the old shared memory.
        let data = n.data_dir.clone();
        let leftovers = wait_until(
            "old server processes to exit",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(processes_in(&data).is_empty().then_some(())),
        );
        if leftovers.is_err() {
            for p in processes_in(&data) {
                let _ = signal(p, libc::SIGKILL);
            }
        }
        let log = n.log_file.to_string_lossy();
        let data = n.data_dir.to_string_lossy();
        let log_start = fs::metadata(&n.log_file).map(|m| m.len()).unwrap_or(0);
        let started = self.run_as(
            &self.install.bin("pg_ctl"),
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
            &format!("start node {}", n.node_id),
        );
        if started.is_err() && self.state.ha {
            // An HA primary that started while another server is the primary is fenced at
            // once (shut down before pg_ctl saw it ready), and its rejoin helper brings it
            // back as a standby; or the helper started it first. That is the cluster
            // working: wait for the helper, then for a running postmaster.
            if self.wait_for_rejoin(n, true).unwrap_or(false) {
                return Ok(());
            }
        }
        started.with_context(|| {
            format!("{} says: {}", n.log_file.display(), log_since(&n.log_file, log_start, 2_000))
        })?;
        Ok(())
    }

    /// Waits until member `n` has no rejoin helper running and, if `until_running`, its
    /// server runs (a helper may start a moment after a fence); whether its server runs.
    fn wait_for_rejoin(&self, n: &Node, until_running: bool) -> Result<bool> {
        let running = || read_postmaster_pid(&n.data_dir).is_some_and(alive);
        wait_until(
            &format!("the rejoin helper of node {} to finish", n.node_id),
            REJOIN_WAIT,
            Duration::from_millis(100),
            || Ok((self.rejoin_helper(n).is_none() && (!until_running || running())).then_some(())),
        )?;
        Ok(running())
    }

    /// Whether member `id`'s rejoin helper (HA clusters) is at work on its server.
    pub fn rejoining(&self, id: u64) -> Result<bool> {
        Ok(self.rejoin_helper(self.node(id)?).is_some())
    }

    /// The pid of member `n`'s running rejoin helper, if one runs.
    fn rejoin_helper(&self, n: &Node) -> Option<i32> {
        let text = fs::read_to_string(n.raft_data_dir.join("rejoin.pid")).ok()?;
        text.trim().parse().ok().filter(|p| alive(*p))
    }

    fn pg_ctl_stop(&self, n: &Node) -> Result<()> {
        if read_postmaster_pid(&n.data_dir).filter(|p| alive(*p)).is_none() {
            return Ok(());
        }
        let data = n.data_dir.to_string_lossy();
        let pg_ctl = self.install.bin("pg_ctl");
        let fast =
            self.run_as(&pg_ctl, &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"], "pg_ctl stop");
        if fast.is_err() {
            self.run_as(
                &pg_ctl,
                &["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"],
                "pg_ctl stop -m immediate",
            )
            .with_context(|| format!("stop node {}", n.node_id))?;
        }
        Ok(())
    }

    /// The reference bootstrap: every member runs `CREATE EXTENSION pgraft; SELECT
    /// pgraft_init()`, node 1 becomes leader of a one-member cluster, then adds the others.
    fn bootstrap(&self) -> Result<()> {
        let init = |id: u64| -> Result<()> {
            let mut c = self.connect(id)?;
            if self.state.ha && id != 1 {
                // A standby is read-only: the extension arrives by replication from node 1.
                return self.init_standby_member(id);
            }
            c.batch_execute("CREATE EXTENSION IF NOT EXISTS pgraft; SELECT pgraft_init();")
                .with_context(|| format!("CREATE EXTENSION pgraft; SELECT pgraft_init() on node {id}"))
        };
        init(1)?;
        wait_until(
            "node 1 to lead its one-member cluster",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let mut c = self.connect(1)?;
                Ok(c.query_one("SELECT pgraft_is_leader()", &[])?.get::<_, bool>(0).then_some(()))
            },
        )?;
        for n in self.state.nodes.iter().skip(1) {
            init(n.node_id)?;
        }
        let mut leader = self.connect(1)?;
        for n in self.state.nodes.iter().skip(1) {
            let id = i32::try_from(n.node_id).context("node id")?;
            let host = if self.state.direct_peers { n.listen_address.as_str() } else { "127.0.0.1" };
            leader
                .query_one("SELECT pgraft_add_node($1, $2, $3)", &[&id, &host, &i32::from(n.raft_port)])
                .with_context(|| format!("pgraft_add_node({id}) on node 1"))?;
        }
        for n in &self.state.nodes {
            wait_until(
                &format!("node {} to follow node 1", n.node_id),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    let mut c = self.connect(n.node_id)?;
                    Ok((c.query_one("SELECT pgraft_get_leader()", &[])?.get::<_, i32>(0) == 1).then_some(()))
                },
            )?;
        }
        Ok(())
    }
}

/// `primary` or `standby`: what the server `c` is connected to is now.
pub(crate) fn server_role(c: &mut postgres::Client) -> Result<&'static str> {
    let in_recovery: bool =
        c.query_one("SELECT pg_is_in_recovery()", &[]).context("query pg_is_in_recovery()")?.get(0);
    Ok(if in_recovery { "standby" } else { "primary" })
}

/// Reaps our zombie children that are PostgreSQL processes (orphaned postmasters). Other
/// children (the `runuser`/`pg_ctl` a request is waiting for) are left to their waiters.
fn reap_dead_servers() {
    // Only when some child has exited: the scan of every /proc entry costs 1-3 ms of CPU,
    // which every 20 ms was 3% of a two-core machine under the benchmark's load.
    if !some_child_exited() {
        return;
    }
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, ppid) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok()));
        if state == Some("Z") && ppid == Some(me) && (comm == "postgres" || comm == "postmaster") {
            let mut status = 0;
            // SAFETY: waitpid on our own zombie child with WNOHANG; status is a valid int.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}

/// Whether a child of this process has exited and waits to be reaped (it is left for
/// whoever reaps it: `pg_ctl` runs are waited for by the threads that started them).
fn some_child_exited() -> bool {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own children, without blocking (WNOHANG) or reaping (WNOWAIT).
    let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    // SAFETY: waitid sets si_pid for an exited child and leaves it 0 when none has.
    r == 0 && unsafe { info.si_pid() } != 0
}

fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// A cluster id unique to this directory and moment: two clusters never share one.
fn cluster_id_for(dir: &Path) -> String {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    let mut h = DefaultHasher::new();
    dir.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    format!("local-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// As root the servers run as another account: it must reach the cluster directory.
fn check_reachable(dir: &Path, user: &ServerUser) -> Result<()> {
    let ServerUser::Other { name, .. } = user else { return Ok(()) };
    for a in dir.ancestors() {
        let mode = fs::metadata(a).with_context(|| format!("stat {}", a.display()))?.permissions().mode();
        if mode & 0o001 == 0 {
            bail!(
                "the servers run as `{name}`, which cannot enter {} (mode {:o}); \
                 use a directory under /tmp or `chmod o+x` it",
                a.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// What `file` gained after byte `from`, at most its last `max` bytes on one line: the
/// server's own words on why it did not start, for an error that is read where the log is
/// gone (a CI machine).
fn log_since(file: &Path, from: u64, max: usize) -> String {
    let Ok(bytes) = fs::read(file) else { return "(no log)".to_string() };
    let new = bytes.get(from as usize..).unwrap_or(&bytes);
    let tail = &new[new.len().saturating_sub(max)..];
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        "(nothing logged)".to_string()
    } else {
        lines.join(" | ")
    }
}

/// 32 random hexadecimal characters, from the kernel.
fn random_secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read random bytes for the cluster secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
