//! A CPU profile of pgraft's leader while a case runs: `perf record` on the leader's
//! worker (the process that hosts the Raft member), sampled with call graphs, and the
//! functions where the samples fell, for the report: it names the next bottleneck.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The top of one profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// What ran while it was taken.
    pub case: String,
    /// Samples taken.
    pub samples: u64,
    /// (share of the samples in the function itself, function), largest first.
    pub top: Vec<(f64, String)>,
}

/// A running `perf record`.
pub struct Recording {
    child: Child,
    data: std::path::PathBuf,
}

/// The index in `conninfos` of the member that leads.
pub fn leader_index(conninfos: &[String]) -> Result<usize> {
    for (i, c) in conninfos.iter().enumerate() {
        let mut conn = postgres::Client::connect(c, postgres::NoTls).context("connect to find the leader")?;
        if conn.query_one("SELECT pgraft_is_leader()", &[])?.get::<_, bool>(0) {
            return Ok(i);
        }
    }
    anyhow::bail!("no member leads")
}

/// The pid of the pgraft worker on the member that leads: the postmaster's child whose
/// title is `pgraft worker` (a worker without a database connection is not in
/// `pg_stat_activity`).
pub fn leader_worker_pid(conninfos: &[String]) -> Result<u32> {
    for c in conninfos {
        let mut conn = postgres::Client::connect(c, postgres::NoTls).context("connect to find the leader")?;
        let leads: bool = conn.query_one("SELECT pgraft_is_leader()", &[])?.get(0);
        if !leads {
            continue;
        }
        let dir: String = conn.query_one("SHOW data_directory", &[])?.get(0);
        let pidfile = Path::new(&dir).join("postmaster.pid");
        let text =
            std::fs::read_to_string(&pidfile).with_context(|| format!("read {}", pidfile.display()))?;
        let postmaster: u32 =
            text.lines().next().and_then(|l| l.trim().parse().ok()).context("postmaster.pid")?;
        for entry in std::fs::read_dir("/proc").context("list /proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if ppid == Some(postmaster) && String::from_utf8_lossy(&cmdline).contains("pgraft worker") {
                return Ok(pid);
            }
        }
        bail!("no pgraft worker among the children of postmaster {postmaster}");
    }
    bail!("no member leads")
}

/// Starts sampling `pid` (99 Hz, call graphs) into `dir`.
pub fn start(perf: &Path, pid: u32, dir: &Path) -> Result<Recording> {
    let data = dir.join(format!("perf-{pid}.data"));
    let child = Command::new(perf)
        .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", perf.display()))?;
    Ok(Recording { child, data })
}

impl Recording {
    /// Stops sampling and reads the top `n` functions by samples spent in them.
    pub fn finish(mut self, perf: &Path, case: &str, n: usize) -> Result<Profile> {
        // perf writes its file on SIGINT.
        // SAFETY: signalling the child process we started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        self.child.wait().context("wait for perf record")?;
        let out = Command::new(perf)
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "symbol",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .context("perf report")?;
        let _ = std::fs::remove_file(&self.data);
        if !out.status.success() {
            bail!("perf report failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(parse(case, &String::from_utf8_lossy(&out.stdout), n))
    }
}

/// Reads `perf report --stdio --sort symbol` output: `# Samples: 12K of event ...`, then
/// lines `    12.34%  [.] symbol`.
fn parse(case: &str, text: &str, n: usize) -> Profile {
    let samples = text
        .lines()
        .find_map(|l| l.strip_prefix("# Samples: "))
        .and_then(|s| s.split_whitespace().next())
        .map_or(0, |s| {
            let (num, mult) = match s.chars().last() {
                Some('K') => (&s[..s.len() - 1], 1_000.0),
                Some('M') => (&s[..s.len() - 1], 1_000_000.0),
                _ => (s, 1.0),
            };
            (num.parse::<f64>().unwrap_or(0.0) * mult) as u64
        });
    let top = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let sym = rest.trim().trim_start_matches("[.]").trim_start_matches("[k]").trim();
            // perf pads the symbol into a column and may print more columns after it.
            let sym = sym.split("  ").next().unwrap_or(sym).trim();
            Some((pct, sym.to_string()))
        })
        .take(n)
        .collect();
    Profile { case: case.to_string(), samples, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_reports_top_entries() {
        let text = "# Samples: 12K of event 'cpu-clock'\n#\n    20.50%  [k] finish_task_switch.isra.0                  -      -\n     3.10%  [.] pgraft_core::member::Member::step\n";
        let p = parse("put, 64 clients", text, 10);
        assert_eq!(p.samples, 12_000);
        assert_eq!(
            p.top,
            vec![
                (20.5, "finish_task_switch.isra.0".into()),
                (3.1, "pgraft_core::member::Member::step".into())
            ]
        );
    }
}
