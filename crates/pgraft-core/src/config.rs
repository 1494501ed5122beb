//! Configuration values of a member and the rules they must follow.
//!
//! The extension validates its GUCs with these functions, and `pgraft_set_config` runs the
//! same rules before a change enters the log, so a value is judged the same way wherever
//! it comes from.

use std::net::IpAddr;

/// A configuration value that breaks a rule. The message names the setting, the value and
/// the rule, so it can be shown to an operator as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Results of this module.
pub type Result<T> = std::result::Result<T, ConfigError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ConfigError(msg.into()))
}

/// Longest cluster id accepted.
pub const MAX_CLUSTER_ID_LEN: usize = 63;

/// A cluster id: 1 to 63 characters of letters, digits, `-`, `_` and `.`.
///
/// It travels in every peer handshake and is recorded in the member's storage, so it is
/// kept short and printable.
pub fn validate_cluster_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return err("pgraft.cluster_id must not be empty");
    }
    if id.len() > MAX_CLUSTER_ID_LEN {
        return err(format!(
            "pgraft.cluster_id is {} characters long; at most {MAX_CLUSTER_ID_LEN} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return err(format!(
            "pgraft.cluster_id {id:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// A host: an IPv4 or IPv6 literal, or a DNS name (RFC 1123 labels).
pub fn validate_host(setting: &str, host: &str) -> Result<()> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return err(format!("{setting} {host:?} is neither an IP address nor a host name"));
    }
    Ok(())
}

/// A TCP port: 1 to 65535.
pub fn validate_port(setting: &str, port: i64) -> Result<u16> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => err(format!("{setting} {port} is out of range: a port is 1 to 65535")),
    }
}

/// A node id: 1 or more (0 means "no node" in Raft).
pub fn validate_node_id(setting: &str, id: i64) -> Result<u64> {
    match u64::try_from(id) {
        Ok(n) if n > 0 => Ok(n),
        _ => err(format!("{setting} {id} is not a valid node id: node ids are 1 or greater")),
    }
}

/// One member of a static initial member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    /// Its node id.
    pub node_id: u64,
    /// Its host.
    pub host: String,
    /// Its Raft port.
    pub port: u16,
}

/// Parses etcd's initial-cluster style: `1=127.0.0.1:7001,2=host-b:7002,3=[::1]:7003`.
/// An empty string is an empty list. Node ids must be unique.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>> {
    const SETTING: &str = "pgraft.initial_cluster";
    let mut members: Vec<InitialMember> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            return err(format!("{SETTING}: {item:?} is not of the form id=host:port"));
        };
        let id: i64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{SETTING}: {:?} is not a node id", id.trim())))?;
        let node_id = validate_node_id(SETTING, id)?;
        let addr = addr.trim();
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| ConfigError(format!("{SETTING}: {addr:?} is not of the form [ipv6]:port")))?;
            (h, p)
        } else {
            addr.rsplit_once(':').ok_or_else(|| ConfigError(format!("{SETTING}: {addr:?} has no :port")))?
        };
        validate_host(SETTING, host)?;
        let port: i64 =
            port.parse().map_err(|_| ConfigError(format!("{SETTING}: {port:?} is not a port number")))?;
        let port = validate_port(SETTING, port)?;
        if members.iter().any(|m| m.node_id == node_id) {
            return err(format!("{SETTING}: node {node_id} is listed twice"));
        }
        members.push(InitialMember { node_id, host: host.to_string(), port });
    }
    Ok(members)
}

/// Parses a duration in milliseconds the way PostgreSQL reads time GUCs: a number with an
/// optional unit `us`, `ms` (the default), `s`, `min`, `h`. Fractions are allowed when
/// the result is a whole number of milliseconds (`1.5s`); white space between number and
/// unit is allowed (`75 ms`).
pub fn parse_duration_ms(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return err(format!(
            "{text:?} is not a duration: expected a number with an optional unit (us, ms, s, min, h)"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| ConfigError(format!("{text:?} is not a duration: {num:?} is not a number")))?;
    let factor = match unit {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1_000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return err(format!(
                "{text:?} is not a duration: unknown unit {unit:?} (use us, ms, s, min or h)"
            ))
        }
    };
    let ms = value * factor;
    if ms.fract() != 0.0 {
        return err(format!("{text:?} is not a whole number of milliseconds"));
    }
    if !(0.0..=(u32::MAX as f64)).contains(&ms) {
        return err(format!("{text:?} is out of range"));
    }
    Ok(ms as u64)
}

/// The Raft timing of a member, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a follower waits without hearing from a leader before it campaigns.
    pub election_timeout_ms: u64,
    /// How often a leader sends heartbeats; also the tick of the Raft loop.
    pub heartbeat_interval_ms: u64,
}

impl Default for Timing {
    /// The reference documents' defaults: 1000 ms and 100 ms.
    fn default() -> Self {
        Self { election_timeout_ms: 1000, heartbeat_interval_ms: 100 }
    }
}

impl Timing {
    /// Shortest heartbeat interval accepted.
    pub const MIN_HEARTBEAT_MS: u64 = 10;
    /// Longest election timeout accepted.
    pub const MAX_ELECTION_TIMEOUT_MS: u64 = 600_000;

    /// Checks the pair: Raft elects reliably only when the election timeout spans several
    /// heartbeats, so it must be at least twice the heartbeat interval.
    pub fn validate(&self) -> Result<()> {
        let Timing { election_timeout_ms: e, heartbeat_interval_ms: h } = *self;
        if h < Self::MIN_HEARTBEAT_MS {
            return err(format!(
                "heartbeat_interval {h}ms is below the minimum of {}ms",
                Self::MIN_HEARTBEAT_MS
            ));
        }
        if e > Self::MAX_ELECTION_TIMEOUT_MS {
            return err(format!(
                "election_timeout {e}ms is above the maximum of {}ms",
                Self::MAX_ELECTION_TIMEOUT_MS
            ));
        }
        if e < 2 * h {
            return err(format!(
                "election_timeout {e}ms must be at least twice heartbeat_interval {h}ms, or followers campaign between heartbeats"
            ));
        }
        Ok(())
    }

    /// Heartbeat ticks and election ticks for raft-rs, whose clock is one tick per
    /// heartbeat interval.
    pub fn ticks(&self) -> (usize, usize) {
        let h = self.heartbeat_interval_ms.max(1);
        let election = self.election_timeout_ms.div_ceil(h).max(2);
        (1, election as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids() {
        assert!(validate_cluster_id("production-cluster").is_ok());
        assert!(validate_cluster_id("a.b_c-1").is_ok());
        assert!(validate_cluster_id("").is_err());
        assert!(validate_cluster_id("has space").is_err());
        assert!(validate_cluster_id("quote'").is_err());
        assert!(validate_cluster_id(&"x".repeat(64)).is_err());
    }

    #[test]
    fn hosts() {
        for ok in ["127.0.0.1", "::1", "db-1.example.org", "localhost"] {
            assert!(validate_host("h", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "-lead", "x..y", "300.1.1.1.1 ", "h@st"] {
            assert!(validate_host("h", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_and_ids() {
        assert_eq!(validate_port("p", 7001), Ok(7001));
        let e = validate_port("port", 70000).expect_err("70000 is too large");
        assert!(e.0.starts_with("port 70000"), "{e}");
        assert!(validate_port("p", 0).is_err());
        assert!(validate_node_id("n", 0).is_err());
        assert!(validate_node_id("n", -1).is_err());
        assert_eq!(validate_node_id("n", 3), Ok(3));
    }

    #[test]
    fn initial_cluster() {
        let m = parse_initial_cluster(" 1=127.0.0.1:7001, 2=host-b:7002,3=[::1]:7003 ").expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m[2], InitialMember { node_id: 3, host: "::1".into(), port: 7003 });
        assert_eq!(parse_initial_cluster(""), Ok(vec![]));
        for bad in [
            "1=127.0.0.1",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "1=127.0.0.1:0",
            "1=a:1,1=b:2",
            "1:2",
            "1=[::1:7",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("75ms"), Ok(75));
        assert_eq!(parse_duration_ms("900"), Ok(900));
        assert_eq!(parse_duration_ms("1s"), Ok(1000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("75 ms"), Ok(75));
        assert_eq!(parse_duration_ms("2min"), Ok(120_000));
        assert_eq!(parse_duration_ms("2000us"), Ok(2));
        for bad in ["banana", "", "ms", "75 parsecs", "1.5ms", "-5ms", "1e3"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timing_rules() {
        assert!(Timing::default().validate().is_ok());
        assert_eq!(Timing::default().ticks(), (1, 10));
        assert!(Timing { election_timeout_ms: 900, heartbeat_interval_ms: 75 }.validate().is_ok());
        assert_eq!(Timing { election_timeout_ms: 900, heartbeat_interval_ms: 75 }.ticks(), (1, 12));
        assert!(Timing { election_timeout_ms: 100, heartbeat_interval_ms: 100 }.validate().is_err());
        assert!(Timing { election_timeout_ms: 1000, heartbeat_interval_ms: 5 }.validate().is_err());
    }
}
