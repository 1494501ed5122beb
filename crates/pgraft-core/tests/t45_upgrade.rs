//! A rolling upgrade from the previous release's storage format: three members of the
//! last build that kept the Raft log in redb (`raft.redb`, commit `PREVIOUS`) take writes;
//! then, one member at a time, each is stopped and started again with this build on the
//! same data directory, which carries its log over to the segment files, while the others
//! go on taking writes. Each upgraded member announces the entry format it reads (an
//! entry the old members apply; see `member/cluster_format.rs`) before writes go through
//! all three again. Every acknowledged write is on every member at the end, every member
//! has announced, and no member keeps a `raft.redb`.
//!
//! The previous build is compiled from the repository's history (once; cached under the
//! target directory): the test needs the commit, so a shallow clone fails it and says how
//! to fetch it.

mod node_proc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use node_proc::{wait_for, Proc};
use pgraft_testkit::free_port;

/// The last commit whose members kept their log in `raft.redb`.
const PREVIOUS: &str = "7a80ca409dbc71ed900462210cc6befa299c22fe";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds `pgraft-node` of the previous release; returns the binary.
fn previous_build() -> PathBuf {
    let root = repo_root();
    let commit = Command::new("git")
        .args(["-C"])
        .arg(&root)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{PREVIOUS}^{{commit}}"))
        .output()
        .expect("run git");
    assert!(
        commit.status.success(),
        "the upgrade test builds the previous release (commit {PREVIOUS}) from the repository's history, \
         which this clone does not have: run `git fetch --unshallow` (or clone without --depth)"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("previous-release");
    let src = target.join("src");
    let binary = target.join("debug").join("pgraft-node");
    if !src.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).expect("a source directory");
        let archive = target.join("src.tar");
        run(
            Command::new("git").arg("-C").arg(&root).args(["archive", "-o"]).arg(&archive).arg(PREVIOUS),
            "git archive",
        );
        run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&src), "tar");
    }
    // Its own target directory: this test's cargo holds the lock of the outer one.
    run(
        Command::new("cargo")
            .args(["build", "--locked", "-q", "-p", "pgraft-core", "--bin", "pgraft-node"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target),
        "building the previous release's pgraft-node",
    );
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

/// Writes `k` = `v` through member `on` (retried until acknowledged) and remembers it.
fn put(procs: &mut [Proc], on: usize, k: String, v: String, acked: &mut Vec<(String, String)>) {
    wait_for(&format!("put {k} on member {}", on + 1), Duration::from_secs(20), || {
        procs[on].ask(&format!("put {k} {v}")).filter(|a| a.starts_with("ok put")).map(|_| ())
    });
    acked.push((k, v));
}

#[test]
fn a_three_member_cluster_is_upgraded_one_member_at_a_time() {
    let previous = previous_build();
    let current = Path::new(env!("CARGO_BIN_EXE_pgraft-node"));
    let root = std::env::temp_dir().join(format!("pgraft-t45-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ports: Vec<u16> = (0..3).map(|_| free_port().expect("port")).collect();
    let members = (1..=3).map(|i| format!("{i}=127.0.0.1:{}", ports[i - 1])).collect::<Vec<_>>().join(",");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.join(format!("n{i}"))).collect();
    let mut procs: Vec<Proc> =
        (0..3).map(|i| Proc::spawn(&previous, "t45", i as u64 + 1, &dirs[i], &members, ports[i])).collect();
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..60 {
        put(&mut procs, i % 3, format!("old-{i}"), format!("v{i}"), &mut acked);
    }
    for dir in &dirs {
        assert!(dir.join("raft.redb").exists(), "the previous release keeps raft.redb in {}", dir.display());
    }
    for up in 0..3 {
        let _ = procs[up].ask("quit");
        procs[up].kill();
        // The others take writes while it is down.
        let others: Vec<usize> = (0..3).filter(|o| *o != up).collect();
        for i in 0..20 {
            put(&mut procs, others[i % 2], format!("during-{up}-{i}"), format!("w{i}"), &mut acked);
        }
        procs[up] = Proc::spawn(current, "t45", up as u64 + 1, &dirs[up], &members, ports[up]);
        // It announces the entry format it reads, in an entry the old members apply too
        // (the writes through them below would time out if it stopped their applying).
        let own = format!("{}:{}:true", up + 1, pgraft_core::command::PROPOSAL_FORMAT);
        wait_for(&format!("member {}'s format announcement", up + 1), Duration::from_secs(20), || {
            procs[up].ask("formats").filter(|a| a.split(' ').any(|f| f == own)).map(|_| ())
        });
        // The upgraded member answers writes, mixed with the others.
        for i in 0..20 {
            put(&mut procs, (up + i) % 3, format!("after-{up}-{i}"), format!("x{i}"), &mut acked);
        }
        assert!(!dirs[up].join("raft.redb").exists(), "member {} kept raft.redb", up + 1);
        assert!(dirs[up].join("raftlog").is_dir(), "member {} has no raftlog/", up + 1);
    }
    // Every member announced, so a new kind of entry could now be proposed.
    let all: Vec<String> =
        (1..=3).map(|id| format!("{id}:{}:true", pgraft_core::command::PROPOSAL_FORMAT)).collect();
    wait_for("every member's format announcement", Duration::from_secs(20), || {
        procs[0].ask("formats").filter(|a| all.iter().all(|f| a.split(' ').any(|x| x == f))).map(|_| ())
    });
    // Every acknowledged write on every member, read linearizably on each.
    for (m, p) in procs.iter_mut().enumerate() {
        for (k, v) in &acked {
            let want = format!("ok get {k} {v}");
            wait_for(&format!("{k} on member {}", m + 1), Duration::from_secs(15), || {
                p.ask(&format!("get {k}")).filter(|a| *a == want).map(|_| ())
            });
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&root);
}
