//! A three-member etcd cluster from Debian's `etcd-server`, on 127.0.0.1 ports.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgraft_testkit::{free_port, wait_until};

/// Running etcd members; killed and reaped when dropped.
pub struct EtcdCluster {
    children: Vec<Child>,
    /// Each member's client URL (`http://127.0.0.1:P`).
    pub client_urls: Vec<String>,
}

impl EtcdCluster {
    /// Starts `n` members under `dir` with pgraft's timing (heartbeat and election
    /// timeout in milliseconds); returns once every member answers a status request.
    pub fn start(etcd: &Path, dir: &Path, n: usize, heartbeat_ms: u64, election_ms: u64) -> Result<Self> {
        let ports: Vec<(u16, u16)> =
            (0..n).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
        let mut cluster = EtcdCluster { children: Vec::new(), client_urls: Vec::new() };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let data: PathBuf = dir.join(format!("etcd{i}"));
            std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
            let log = File::create(dir.join(format!("etcd{i}.log"))).context("create the etcd log")?;
            let client_url = format!("http://127.0.0.1:{client}");
            let child = Command::new(etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "pgraft-bench"])
                .args(["--heartbeat-interval", &heartbeat_ms.to_string()])
                .args(["--election-timeout", &election_ms.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("clone the log handle")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {}", etcd.display()))?;
            cluster.children.push(child);
            cluster.client_urls.push(client_url);
        }
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("a tokio runtime")?;
        for url in cluster.client_urls.clone() {
            wait_until(
                &format!("etcd at {url} to answer"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    for c in &mut cluster.children {
                        if let Some(status) = c.try_wait().context("poll etcd")? {
                            bail!("etcd exited with {status}; see {}", dir.display());
                        }
                    }
                    rt.block_on(async {
                        let mut c = match etcd_client::Client::connect([url.as_str()], None).await {
                            Ok(c) => c,
                            Err(_) => return Ok(None),
                        };
                        Ok(c.status().await.ok().filter(|s| s.leader() != 0).map(|_| ()))
                    })
                },
            )?;
        }
        Ok(cluster)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
