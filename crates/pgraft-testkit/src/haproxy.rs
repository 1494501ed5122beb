//! HAProxy in front of a local HA cluster, as operators run it in front of Patroni: a
//! read-write port whose only server is the one answering 200 on `GET /primary`, and a
//! read-only port balanced over the servers answering 200 on `GET /replica`. Debian's
//! `haproxy`; the configuration is written into the cluster directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::node::Node;
use crate::procs::{alive, signal};
use crate::wait::wait_until;

/// The configuration's file name in the cluster directory.
pub const CONFIG: &str = "haproxy.cfg";
/// The pid file's name in the cluster directory.
pub const PID_FILE: &str = "haproxy.pid";
/// The stats socket's name in the cluster directory.
pub const STATS_SOCKET: &str = "haproxy.sock";

/// A running HAProxy.
#[derive(Debug, Clone, Serialize)]
pub struct HaProxy {
    /// Port of the primary (read-write) on 127.0.0.1.
    pub read_write_port: u16,
    /// Port of the standbys (read-only) on 127.0.0.1.
    pub read_only_port: u16,
    /// The configuration file.
    pub config: PathBuf,
    /// The daemon's process id.
    pub pid: i32,
}

impl HaProxy {
    /// How often HAProxy asks each member (`inter`; half of it, `fastinter`, after a
    /// failed check).
    pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

    /// The HAProxy program (`haproxy` on PATH, else Debian's `/usr/sbin/haproxy`).
    pub fn program() -> Result<PathBuf> {
        if let Ok(path) = std::env::var("PATH") {
            for d in path.split(':') {
                let p = Path::new(d).join("haproxy");
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        let p = PathBuf::from("/usr/sbin/haproxy");
        if p.is_file() {
            return Ok(p);
        }
        bail!("haproxy is not installed (Debian's package `haproxy`; scripts/setup.sh installs it)")
    }

    /// The configuration for `nodes`, each with an HTTP port; `stats` is the stats
    /// socket's path.
    pub fn config_text(
        nodes: &[Node],
        read_write_port: u16,
        read_only_port: u16,
        stats: &Path,
    ) -> Result<String> {
        let ms = Self::CHECK_INTERVAL.as_millis();
        let mut text = format!(
            "# written by pgraftctl local haproxy\n\
             global\n    maxconn 512\n    stats socket {stats} mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 1s\n\
             \x20   default-server inter {ms}ms fastinter {fast}ms downinter {ms}ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
            fast = ms / 2,
            stats = stats.display(),
        );
        for (name, port, path) in
            [("primary", read_write_port, "/primary"), ("replicas", read_only_port, "/replica")]
        {
            text.push_str(&format!(
                "\nlisten {name}\n    bind 127.0.0.1:{port}\n    balance roundrobin\n    option httpchk\n    http-check send meth GET uri {path}\n    http-check expect status 200\n"
            ));
            for n in nodes {
                let http = n.http_port.ok_or_else(|| {
                    anyhow!(
                        "node {} serves no HTTP endpoints: start the cluster with `local up --http`",
                        n.node_id
                    )
                })?;
                text.push_str(&format!(
                    "    server node{id} 127.0.0.1:{pg} check port {http}\n",
                    id = n.node_id,
                    pg = n.pg_port
                ));
            }
        }
        Ok(text)
    }

    /// Writes the configuration into `dir`, checks it, and starts HAProxy as a daemon;
    /// returns once the read-write port listens.
    pub fn start(dir: &Path, nodes: &[Node], read_write_port: u16, read_only_port: u16) -> Result<HaProxy> {
        Self::stop(dir)?;
        let program = Self::program()?;
        let config = dir.join(CONFIG);
        let stats = dir.join(STATS_SOCKET);
        fs::write(&config, Self::config_text(nodes, read_write_port, read_only_port, &stats)?)
            .with_context(|| format!("write {}", config.display()))?;
        let check = Command::new(&program)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&config)
            .output()
            .with_context(|| format!("run {}", program.display()))?;
        if !check.status.success() {
            bail!("haproxy refuses {}: {}", config.display(), String::from_utf8_lossy(&check.stderr).trim());
        }
        let pid_file = dir.join(PID_FILE);
        let out = Command::new(&program)
            .arg("-D")
            .arg("-p")
            .arg(&pid_file)
            .arg("-f")
            .arg(&config)
            .output()
            .with_context(|| format!("start {}", program.display()))?;
        if !out.status.success() {
            bail!("haproxy did not start: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let pid =
            wait_until("haproxy's pid file", Duration::from_secs(10), Duration::from_millis(50), || {
                Ok(fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok()))
            })?;
        wait_until("haproxy to listen", Duration::from_secs(10), Duration::from_millis(50), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", read_write_port)).ok().map(|_| ()))
        })?;
        // HAProxy counts every server up until its checks say otherwise: return once each
        // has been checked and settled, so no client is sent by the initial state.
        wait_until(
            "haproxy's first checks of every member",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                Ok(Self::servers(&stats)?
                    .iter()
                    .all(|s| {
                        s.check != "INI" && !s.check.is_empty() && (s.status == "UP" || s.status == "DOWN")
                    })
                    .then_some(()))
            },
        )?;
        Ok(HaProxy { read_write_port, read_only_port, config, pid })
    }

    /// Each server of each proxy as HAProxy's stats socket shows it.
    pub fn servers(stats: &Path) -> Result<Vec<ServerState>> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(stats)
            .with_context(|| format!("connect to haproxy's stats socket {}", stats.display()))?;
        s.write_all(b"show stat\n").context("ask haproxy for its stats")?;
        let mut text = String::new();
        s.read_to_string(&mut text).context("read haproxy's stats")?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .context("haproxy's stats have no header")?
            .split(',')
            .collect();
        let col =
            |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("no {name} column"));
        let (px, sv, st, ck) = (col("pxname")?, col("svname")?, col("status")?, col("check_status")?);
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > ck.max(st) && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| ServerState {
                proxy: f[px].to_string(),
                server: f[sv].to_string(),
                status: f[st].to_string(),
                check: f[ck].trim_start_matches('*').to_string(),
            })
            .collect())
    }

    /// Stops the HAProxy started in `dir`, if one runs.
    pub fn stop(dir: &Path) -> Result<()> {
        let pid_file = dir.join(PID_FILE);
        let Some(pid) = fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok()) else {
            return Ok(());
        };
        if alive(pid) && is_haproxy(pid) {
            let _ = signal(pid, libc::SIGTERM);
            wait_until("haproxy to exit", Duration::from_secs(10), Duration::from_millis(50), || {
                Ok((!alive(pid)).then_some(()))
            })
            .or_else(|_| signal(pid, libc::SIGKILL).map(|_| ()))?;
        }
        let _ = fs::remove_file(&pid_file);
        Ok(())
    }
}

/// One server of one proxy, as HAProxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `primary` or `replicas`.
    pub proxy: String,
    /// `nodeN`.
    pub server: String,
    /// `UP`, `DOWN`, or a transition such as `UP 1/2`.
    pub status: String,
    /// The last check's result (`L7OK`, `L7STS`, `L4CON`, `INI` before the first).
    pub check: String,
}

/// Whether `pid` runs HAProxy (a pid file can outlive its process, and the id be reused).
fn is_haproxy(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "haproxy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_checks_each_member_on_its_http_port() {
        let mut nodes: Vec<Node> =
            (1..=2).map(|i| Node::new(i, 5430 + i as u16, 7000, "/tmp/x".into())).collect();
        let stats = Path::new("/tmp/x/haproxy.sock");
        assert!(HaProxy::config_text(&nodes, 5000, 5001, stats).is_err(), "no HTTP ports");
        nodes[0].http_port = Some(8001);
        nodes[1].http_port = Some(8002);
        let text = HaProxy::config_text(&nodes, 5000, 5001, stats).expect("config");
        assert!(text.contains("stats socket /tmp/x/haproxy.sock mode 600 level admin\n"), "{text}");
        assert!(text.contains("bind 127.0.0.1:5000\n"), "{text}");
        assert!(text.contains("http-check send meth GET uri /primary\n"), "{text}");
        assert!(text.contains("http-check send meth GET uri /replica\n"), "{text}");
        assert!(text.contains("server node2 127.0.0.1:5432 check port 8002\n"), "{text}");
        assert!(text.contains("on-marked-down shutdown-sessions"), "{text}");
    }
}
