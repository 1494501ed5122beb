//! `pgraft-node`: one pgraft member outside PostgreSQL, driven by lines on standard input.
//! For crash tests, benchmarks and experiments with the consensus core.
//!
//! ```text
//! pgraft-node --id 1 --cluster c1 --dir DIR --listen 127.0.0.1:7001 \
//!             --members 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!             [--election-ms 1000] [--heartbeat-ms 100]
//! stdin:  put KEY VALUE | get KEY | status | quit
//! stdout: ok put KEY INDEX | ok get KEY VALUE|- | status {json} | err MESSAGE
//! ```

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgraft_core::command::Body;
use pgraft_core::config::{parse_initial_cluster, Timing};
use pgraft_core::kv::KvOp;
use pgraft_core::{Bootstrap, Consistency, MemberConfig, Node, NodeConfig, Read, Request, Response};

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned()
}

fn fail(msg: &str) -> ! {
    eprintln!("pgraft-node: {msg}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let need = |flag: &str| arg(&args, flag).unwrap_or_else(|| fail(&format!("{flag} is required")));
    let id: u64 = need("--id").parse().unwrap_or_else(|_| fail("--id must be a number"));
    let listen: SocketAddr = need("--listen").parse().unwrap_or_else(|_| fail("--listen must be ip:port"));
    let members = parse_initial_cluster(&need("--members")).unwrap_or_else(|e| fail(&e.to_string()));
    let ms = |flag: &str, default: u64| {
        arg(&args, flag).map_or(default, |v| v.parse().unwrap_or_else(|_| fail(flag)))
    };
    let timing = Timing {
        election_timeout_ms: ms("--election-ms", 1000),
        heartbeat_interval_ms: ms("--heartbeat-ms", 100),
    };
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let cfg = NodeConfig {
        member: MemberConfig::new(id, need("--cluster"), incarnation),
        data_dir: PathBuf::from(need("--dir")),
        listen,
        advertise: members
            .iter()
            .find(|m| m.node_id == id)
            .map(|m| format!("{}:{}", m.host, m.port))
            .unwrap_or_else(|| listen.to_string()),
        source_ip: Some(listen.ip()),
        tls: None,
        secret: None,
        timing,
        bootstrap: Bootstrap::Static(
            members.iter().map(|m| (m.node_id, format!("{}:{}", m.host, m.port))).collect(),
        ),
    };
    let node = Node::start(cfg).unwrap_or_else(|e| fail(&e.to_string()));
    let h = node.handle();
    let timeout = Duration::from_secs(5);
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = match words.as_slice() {
            ["put", key, value] => {
                let op = KvOp::Put { key: key.to_string(), value: value.as_bytes().to_vec(), time_ms: 0 };
                match h.call_blocking(Request::Propose(Body::Kv(op)), timeout) {
                    Ok(Response::Applied { index, .. }) => format!("ok put {key} {index}"),
                    Ok(other) => format!("err unexpected answer {other:?}"),
                    Err(e) => format!("err {e}"),
                }
            }
            ["get", key] => {
                match h.call_blocking(Request::Read(Read::Get { key: key.to_string(), revision: None }, Consistency::Linearizable), timeout) {
                    Ok(Response::Kvs(kvs)) => match kvs.first() {
                        Some(kv) => format!("ok get {key} {}", String::from_utf8_lossy(&kv.value)),
                        None => format!("ok get {key} -"),
                    },
                    Ok(other) => format!("err unexpected answer {other:?}"),
                    Err(e) => format!("err {e}"),
                }
            }
            ["status"] => match h.status() {
                Some(s) => format!(
                    "status {{\"id\":{},\"role\":\"{}\",\"term\":{},\"vote\":{},\"durable_term\":{},\"durable_vote\":{},\"leader\":{},\"commit\":{},\"applied\":{}}}",
                    s.id,
                    s.role.as_str(),
                    s.term,
                    s.vote,
                    s.durable_term,
                    s.durable_vote,
                    s.leader_id,
                    s.commit,
                    s.applied
                ),
                None => "err no status yet".to_string(),
            },
            // The entry format each member announced (`member/cluster_format.rs`):
            // `formats <id>:<format>:<announced> ...`.
            ["formats"] => match h.status() {
                Some(s) => {
                    let f: Vec<String> =
                        s.entry_formats.iter().map(|(id, f, a)| format!("{id}:{f}:{a}")).collect();
                    format!("formats {}", f.join(" "))
                }
                None => "err no status yet".to_string(),
            },
            ["quit"] => break,
            _ => format!("err unknown command {line:?}"),
        };
        let mut o = stdout.lock();
        let _ = writeln!(o, "{out}");
        let _ = o.flush();
    }
    node.stop();
}
