//! Runs the deterministic simulation: `pgraft-sim --seeds N` (from seed 0, or `--from S`),
//! or one seed with `--seed S`. Prints one line per failing seed and a summary.
//! `--broken-local-reads` runs with a deliberate bug (reads without ReadIndex) that the
//! checks must catch.

use pgraft_core::sim::{run, SimOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| -> Option<u64> {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
    };
    let mut opts = SimOptions::default();
    if let Some(m) = get("--members") {
        opts.members = m;
    }
    if let Some(t) = get("--ticks") {
        opts.fault_ticks = t;
    }
    opts.trace = args.iter().any(|a| a == "--trace");
    opts.broken_local_reads = args.iter().any(|a| a == "--broken-local-reads");
    let seeds: Vec<u64> = match (get("--seed"), get("--seeds")) {
        (Some(s), _) => vec![s],
        (None, Some(n)) => {
            let from = get("--from").unwrap_or(0);
            (from..from + n).collect()
        }
        (None, None) => {
            eprintln!(
                "usage: pgraft-sim (--seed S | --seeds N [--from S]) [--members 3|5] [--ticks T] [--verbose] [--trace] [--broken-local-reads]"
            );
            std::process::exit(2);
        }
    };
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in seeds {
        match run(seed, &opts) {
            Ok(r) => {
                passed += 1;
                if args.iter().any(|a| a == "--verbose") {
                    println!(
                        "seed {seed}: ok, {} ops completed, {} unknown, max term {}, recovery {} ticks, faults: {}",
                        r.completed, r.unknown, r.max_term, r.recovery_ticks, r.faults.len()
                    );
                    for f in &r.faults {
                        println!("  {f}");
                    }
                }
            }
            Err(f) => {
                failed += 1;
                println!("{f}");
                if args.iter().any(|a| a == "--verbose") {
                    for fault in &f.faults {
                        println!("  {fault}");
                    }
                }
            }
        }
    }
    println!("simulation: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
