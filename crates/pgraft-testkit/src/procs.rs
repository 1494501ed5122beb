//! Finding and signalling the processes that belong to a cluster directory.
//!
//! Every PostgreSQL process (postmaster, backends, background workers) changes its working
//! directory to its data directory, so "the processes of a cluster" are exactly the
//! processes whose working directory lies under the cluster's directory. That survives the
//! postmaster's death: its orphaned children are still found and can be waited for.

use std::fs;
use std::path::{Path, PathBuf};

/// The process ids whose current working directory is `dir` or below it.
///
/// Processes that vanish while being looked at, and those we may not inspect, are skipped.
pub fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cwd: PathBuf = match fs::read_link(e.path().join("cwd")) {
            Ok(p) => p,
            Err(_) => continue,
        };
        if cwd.starts_with(&dir) && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// kill -9 of every process working in `dir` (see [`processes_in`]), repeated until none
/// is left (a process may start while the others die), for at most `within`.
pub fn kill_all_in(dir: &Path, within: std::time::Duration) -> anyhow::Result<()> {
    crate::wait_until(
        &format!("the processes in {} to end", dir.display()),
        within,
        std::time::Duration::from_millis(10),
        || {
            let pids = processes_in(dir);
            for p in &pids {
                let _ = signal(*p, libc::SIGKILL);
            }
            Ok(pids.is_empty().then_some(()))
        },
    )
}

/// Whether a process with this id exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    // /proc/PID/stat is "pid (comm) S ..."; comm may hold spaces and parentheses, so the
    // state is the first field after the last ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false)
        }
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; a stale pid at worst signals
    // nothing (ESRCH), which we treat as success.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn finds_a_child_by_its_working_directory_and_sees_it_die() {
        let dir = std::env::temp_dir().join(format!("pgraft-procs-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create a scratch directory");
        let mut child = Command::new("sleep").arg("30").current_dir(&dir).spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        assert!(processes_in(&dir).contains(&pid));
        assert!(alive(pid));
        signal(pid, libc::SIGKILL).expect("kill the child");
        child.wait().expect("reap the child");
        assert!(!processes_in(&dir).contains(&pid));
        assert!(!alive(pid));
        fs::remove_dir_all(&dir).expect("remove the scratch directory");
    }
}
