//! The deterministic simulation, many seeds per run of the test command.
//!
//! `PGRAFT_SIM_SEEDS` sets the number of 3-member seeds (default 500; a fifth as many
//! 5-member seeds run too). A longer run: `cargo run --release -p pgraft-core --bin
//! pgraft-sim -- --seeds 100000`.

use pgraft_core::sim::{run, SimOptions};

fn seeds() -> u64 {
    std::env::var("PGRAFT_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
}

fn run_seeds(members: u64, count: u64) {
    let opts = SimOptions { members, ..SimOptions::default() };
    let failures: Vec<String> =
        (0..count).filter_map(|seed| run(seed, &opts).err()).map(|f| f.to_string()).collect();
    assert!(failures.is_empty(), "{} of {count} seeds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn three_members_survive_faults() {
    run_seeds(3, seeds());
}

#[test]
fn five_members_survive_faults() {
    run_seeds(5, seeds() / 5);
}

/// Lost proposals are sent again and copies are skipped: over many seeds both happen (so
/// the checks above cover them), and every run still passes.
#[test]
fn lost_proposals_are_sent_again_and_applied_once() {
    let opts = SimOptions::default();
    let (mut resent, mut duplicates, mut wipes, mut lost_writes) = (0, 0, 0, 0);
    for seed in 10_000..10_100 {
        let r = run(seed, &opts).unwrap_or_else(|f| panic!("{f}"));
        resent += r.resent;
        duplicates += r.duplicates;
        lost_writes += r.lost_writes;
        wipes += r.faults.iter().filter(|f| f.contains("wipe node")).count();
    }
    assert!(resent > 0, "100 faulty runs and no proposal was sent again");
    assert!(duplicates > 0, "100 faulty runs and no copy reached the log: the dedupe went untested");
    // A removed member whose Raft data is wiped before it is added back must not vote
    // while empty (members that have not applied its removal still count it).
    assert!(wipes > 0, "100 faulty runs and no member was wiped: empty members' votes went untested");
    // The log's writes are durable later than they are made (as on the I/O thread): some
    // crash must find one not yet durable, or the checks never saw a write lost.
    assert!(lost_writes > 0, "100 faulty runs and no crash lost a write not yet durable");
}

/// The checks are not vacuous for durability either: with a log that says its writes are
/// durable before they are, members promise entries and votes a crash loses, and the
/// checks find a lost or diverging commit.
#[test]
fn a_log_that_acknowledges_early_is_caught() {
    let opts = SimOptions { broken_early_durability: true, ..SimOptions::default() };
    let caught = (0..300).filter_map(|seed| run(seed, &opts).err()).count();
    assert!(caught > 0, "300 seeds with writes acknowledged before they were durable, and no failure");
}

/// The checks are not vacuous: with reads served locally (no ReadIndex), stale reads
/// appear under partitions and the linearizability check catches them.
#[test]
fn a_broken_read_path_is_caught() {
    let opts = SimOptions { broken_local_reads: true, ..SimOptions::default() };
    let caught = (0..200)
        .filter_map(|seed| run(seed, &opts).err())
        .filter(|f| f.what.contains("not linearizable"))
        .count();
    assert!(caught > 0, "200 seeds with local reads and no violation found: the checker is blind");
}
