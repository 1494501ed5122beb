//! Free TCP ports on 127.0.0.1 for servers the tests start.
//!
//! A port the OS hands out for `bind(0)` comes from the ephemeral range, the same range
//! outgoing connections take their local ports from: between choosing it and the server's
//! bind, any client connection on the machine may take it (seen under load: a PostgreSQL
//! server failing with "Address already in use"). So ports are drawn at random from below
//! the ephemeral range, where outgoing connections never go, and checked free by binding.
//!
//! A port checked free stays unbound until its server starts, which for a cluster is after
//! every initdb: seconds to a minute on a loaded machine. Tests run in parallel processes,
//! each drawing a dozen ports, and two drawing the same port in that window lost a CI run
//! (a postmaster exiting at start). So every port handed out is claimed by a file in a
//! directory all processes share, created exclusively; a claim younger than ten minutes
//! keeps the port from every other draw, an older one is taken over.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};

/// The lowest port handed out.
const FLOOR: u16 = 10_000;

/// A TCP port free on 127.0.0.1 now, outside the ephemeral port range.
///
/// No other caller on the machine gets the same port for ten minutes, unless the claim
/// directory cannot be written (then the random draw alone keeps collisions rare).
pub fn free_port() -> Result<u16> {
    let ceiling = ephemeral_low().saturating_sub(1).max(FLOOR + 1_000);
    let span = u64::from(ceiling - FLOOR);
    let claims = claim_dir();
    for _ in 0..1_000 {
        let port = FLOOR + (next_random() % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() && claim(&claims, port) {
            return Ok(port);
        }
    }
    bail!("no free port between {FLOOR} and {ceiling} on 127.0.0.1 after 1,000 tries")
}

/// How long a drawn port is kept from other draws: longer than any cluster's set-up.
const CLAIM_TTL: Duration = Duration::from_secs(600);

/// The directory of claims, shared by every process of the machine.
fn claim_dir() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join("pgraft-port-claims");
    fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// Claims `port`: false while another draw holds a claim younger than [`CLAIM_TTL`].
fn claim(dir: &Option<PathBuf>, port: u16) -> bool {
    let Some(dir) = dir else { return true };
    let file = dir.join(port.to_string());
    let create = || OpenOptions::new().write(true).create_new(true).open(&file).is_ok();
    if create() {
        return true;
    }
    let stale = fs::metadata(&file)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > CLAIM_TTL)
        .unwrap_or(false);
    // Of several processes taking over a stale claim, the one whose create wins gets it.
    stale && fs::remove_file(&file).is_ok() && create()
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// A splitmix64 stream seeded from the clock and the process id: different in every
/// process and every call.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = || {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    };
    let _ = STATE.compare_exchange(0, seed() | 1, Ordering::Relaxed, Ordering::Relaxed);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a port")).collect();
        assert!(ports.iter().all(|p| *p >= FLOOR && *p < ephemeral_low()));
        let mut d = ports.clone();
        d.sort_unstable();
        d.dedup();
        assert!(d.len() >= 45, "50 draws gave only {} distinct ports", d.len());
    }
}
