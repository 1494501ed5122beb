//! The torture tool on real clusters: a short run with several fault kinds must pass, and
//! the same tool must catch a deliberately broken store (reads served from a member's own
//! state, without ReadIndex).
//!
//! The database torture on real HA clusters too: SQL transactions through the read-write
//! conninfo while the nemesis kills, pauses and cuts off the primary, cuts replication and
//! Raft links apart, switches over, pauses failover and kills the last synchronous
//! standby. In synchronous mode nothing acknowledged may be lost and no two servers may
//! take writes at once; a cluster whose cut-off primary does not fence must fail.
//!
//! `PGRAFT_TEST_PG_CONFIGS` (space separated) picks the PostgreSQL installs, default the
//! Debian PostgreSQL 15; `PGRAFT_TORTURE_SEED` overrides the fixed seed.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use pgraft_testkit::torture::Report;

/// Torture runs take the machine; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn pg_configs() -> Vec<PathBuf> {
    std::env::var("PGRAFT_TEST_PG_CONFIGS")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".to_string())
        .split_whitespace()
        .map(PathBuf::from)
        .collect()
}

fn seed() -> String {
    std::env::var("PGRAFT_TORTURE_SEED").unwrap_or_else(|_| "20260505".to_string())
}

/// Runs the torture binary; returns its exit code and its report.
fn torture(name: &str, pg_config: &PathBuf, args: &[&str]) -> (i32, Report) {
    let dir = std::env::temp_dir().join(format!("pgraft-t-torture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let out = Command::new(env!("CARGO_BIN_EXE_pgraft-torture"))
        .args(args)
        .args(["--seed", &seed(), "--json", "--keep", "--dir"])
        .arg(&dir)
        .arg("--pg-config")
        .arg(pg_config)
        .output()
        .expect("run pgraft-torture");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "pgraft-torture could not run (exit {code}): {stderr}");
    let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("a JSON report on stdout ({e}): {}", String::from_utf8_lossy(&out.stdout))
    });
    eprintln!("{}", report.render());
    assert!(pgraft_testkit::processes_in(&dir).is_empty(), "the run left processes in {}", dir.display());
    if code == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    (code, report)
}

#[test]
fn a_short_run_with_several_fault_kinds_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for pg_config in pg_configs() {
        let (code, report) = torture(
            "short",
            &pg_config,
            &[
                "--nodes",
                "3",
                "--duration",
                "2m",
                "--faults",
                "kill,kill-worker,isolate,leader-minority,bridge,pause,transfer,remove-add",
            ],
        );
        assert_eq!(report.anomalies, vec![], "anomalies; replay with: {}", report.replay);
        assert_eq!(code, 0, "verdict {}", report.verdict);
        assert!(report.passed());
        let kinds: std::collections::BTreeSet<_> = report.faults.iter().map(|f| f.kind).collect();
        assert!(kinds.len() >= 5, "only {kinds:?} were injected");
        let ok: u64 = report.ops.values().map(|c| c.ok).sum();
        assert!(ok >= 500, "only {ok} successful operations");
        for kind in ["put", "get", "cas", "delete", "append"] {
            assert!(report.ops.get(kind).is_some_and(|c| c.ok > 0), "no successful {kind}");
        }
        assert!(report.checks.len() >= 7 && report.checks.iter().all(|c| c.passed));
        assert!(report.final_recovery_ms.is_some());
        assert!(report.terms_seen >= 2, "faults should have forced at least one election");
    }
}

#[test]
fn reads_without_read_index_are_caught() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pg_config = pg_configs().remove(0);
    let (code, report) = torture(
        "broken",
        &pg_config,
        &["--nodes", "3", "--duration", "45s", "--faults", "isolate,leader-minority", "--broken-local-reads"],
    );
    assert_eq!(code, 1, "the broken store passed: {}", report.render());
    assert_eq!(report.verdict, "fail");
    assert!(
        report.anomalies.iter().any(|a| a.check == "linearizable"),
        "expected a linearizability violation, got {:?}",
        report.anomalies
    );
    assert!(report.replay.contains("--broken-local-reads") && report.replay.contains(&seed()));
    // The failing run kept its logs and history for the replay.
    let dir = PathBuf::from(&report.dir);
    assert!(dir.join("history.jsonl").is_file());
    assert!(dir.join("cluster/node1/postgres.log").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_synchronous_run_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pg_config = pg_configs().remove(0);
    let (code, report) = torture(
        "db",
        &pg_config,
        &[
            "--workload",
            "db",
            "--synchronous-mode",
            "on",
            "--nodes",
            "3",
            "--duration",
            "2m",
            "--faults",
            "all",
        ],
    );
    assert_eq!(report.anomalies, vec![], "anomalies; replay with: {}", report.replay);
    assert_eq!(code, 0, "verdict {}", report.verdict);
    assert_eq!(report.lost_acknowledged, 0);
    let kinds: std::collections::BTreeSet<_> = report.faults.iter().map(|f| f.kind).collect();
    assert!(kinds.len() >= 6, "only {kinds:?} were injected");
    for kind in ["list-append", "transfer", "balances"] {
        assert!(
            report.ops.get(kind).is_some_and(|c| c.ok >= 50),
            "too few successful {kind}: {:?}",
            report.ops
        );
    }
    assert!(report.primaries >= 2, "the faults should have moved the primary at least once");
    assert!(report.checks.len() >= 7 && report.checks.iter().all(|c| c.passed));
    assert!(report.final_recovery_ms.is_some());
}

#[test]
fn a_primary_that_does_not_fence_is_caught() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pg_config = pg_configs().remove(0);
    let (code, report) = torture(
        "db-broken",
        &pg_config,
        &[
            "--workload",
            "db",
            "--nodes",
            "3",
            "--duration",
            "40s",
            "--faults",
            "isolate-all",
            "--broken-no-fencing",
        ],
    );
    assert_eq!(code, 1, "the broken cluster passed: {}", report.render());
    let caught: std::collections::BTreeSet<&str> =
        report.anomalies.iter().map(|a| a.check.as_str()).collect();
    assert!(
        caught.contains("one server acknowledges commits at a time")
            || caught.contains("no acknowledged commit lost"),
        "expected two writers or lost commits, got {caught:?}"
    );
    assert!(report.replay.contains("--broken-no-fencing"));
    let _ = std::fs::remove_dir_all(&report.dir);
}
