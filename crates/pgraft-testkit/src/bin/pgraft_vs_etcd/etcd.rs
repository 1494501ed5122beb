//! An etcd cluster from Debian's `etcd-server`, on 127.0.0.1 ports: start, kill -9 a
//! member, restart it on its data directory, find the leader.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgraft_testkit::{free_port, wait_until};

use crate::clients::EtcdClient;

/// One member: how to start it again, and its process while it runs.
struct Member {
    command: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// Running etcd members; killed and reaped when dropped.
pub struct EtcdCluster {
    etcd: PathBuf,
    members: Vec<Member>,
    /// Each member's client URL (`http://127.0.0.1:P`).
    pub client_urls: Vec<String>,
    /// Each member's data directory.
    pub data_dirs: Vec<PathBuf>,
    /// Each member's etcd member id, in the order of `client_urls`.
    pub member_ids: Vec<u64>,
}

impl EtcdCluster {
    /// Starts `n` members under `dir` with pgraft's timing (heartbeat and election
    /// timeout in milliseconds); returns once every member knows the leader.
    pub fn start(etcd: &Path, dir: &Path, n: usize, heartbeat_ms: u64, election_ms: u64) -> Result<Self> {
        let ports: Vec<(u16, u16)> =
            (0..n).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
        let mut cluster = EtcdCluster {
            etcd: etcd.to_path_buf(),
            members: Vec::new(),
            client_urls: Vec::new(),
            data_dirs: Vec::new(),
            member_ids: Vec::new(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data: PathBuf = dir.join(format!("etcd{i}"));
            std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            // On a restart the data directory exists and etcd ignores the initial-* flags.
            let command: Vec<String> = [
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &data.to_string_lossy(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "pgraft-bench",
                "--heartbeat-interval",
                &heartbeat_ms.to_string(),
                "--election-timeout",
                &election_ms.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            cluster.members.push(Member { command, log: dir.join(format!("etcd{i}.log")), child: None });
            cluster.client_urls.push(client_url);
            cluster.data_dirs.push(data);
        }
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_for_leader(i, Duration::from_secs(30))?;
        }
        for url in cluster.client_urls.clone() {
            let mut c = EtcdClient::connect(&url, Some(Duration::from_secs(5)))?;
            let st = c.block(|mut c| async move { c.status().await })?;
            let id = st.header().map(|h| h.member_id()).context("a status without a header")?;
            cluster.member_ids.push(id);
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let log = File::options().create(true).append(true).open(&m.log).context("open the etcd log")?;
        let child = Command::new(&self.etcd)
            .args(&m.command)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.etcd.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    /// kill -9 of member `i`; returns once it is reaped.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().context("kill etcd")?;
            c.wait().context("reap etcd")?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory; returns once it knows a leader.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.wait_for_leader(i, Duration::from_secs(30))
    }

    /// The index of the member that leads, as member `i` sees it (None: no leader known).
    pub fn leader_seen_by(&self, i: usize, timeout: Duration) -> Result<Option<usize>> {
        let mut c = EtcdClient::connect(&self.client_urls[i], Some(timeout))?;
        let st = c.block(|mut c| async move { c.status().await })?;
        Ok(self.member_ids.iter().position(|id| *id == st.leader()))
    }

    fn wait_for_leader(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let url = self.client_urls[i].clone();
        wait_until(&format!("etcd at {url} to know a leader"), timeout, Duration::from_millis(50), || {
            for m in &mut self.members {
                if let Some(c) = &mut m.child {
                    if let Some(status) = c.try_wait().context("poll etcd")? {
                        bail!("etcd exited with {status}; see {}", m.log.display());
                    }
                }
            }
            let mut c = match EtcdClient::connect(&url, Some(Duration::from_millis(500))) {
                Ok(c) => c,
                Err(_) => return Ok(None),
            };
            Ok(c.block(|mut c| async move { c.status().await }).ok().filter(|s| s.leader() != 0).map(|_| ()))
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
