//! The local cluster tool against real servers: `up`, `kill`/`start`, `partition`/`heal`,
//! two clusters side by side, and `down` leaving nothing behind.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use pgraft_core::transport::{Ack, Hello, PROTOCOL_VERSION};
use pgraft_testkit::wait_until;

#[test]
fn up_kill_start_partition_heal_down() {
    for pg_config in pg_configs() {
        let pgc = pg_config.to_string_lossy().into_owned();
        let dir = cluster_dir("spine");
        let d = dir.to_string_lossy().into_owned();
        let _guard = Down(dir.clone());

        // up --no-init: three servers with the extension preloaded, one JSON line each.
        let nodes = json_lines(&pgraftctl(&[
            "local",
            "up",
            "--nodes",
            "3",
            "--dir",
            &d,
            "--no-init",
            "--pg-config",
            &pgc,
        ]));
        assert_eq!(nodes.len(), 3, "one JSON line per member");
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n["node_id"].as_u64(), Some(i as u64 + 1));
            for field in ["pg_port", "raft_port", "data_dir", "conninfo"] {
                assert!(!n[field].is_null(), "{field} missing in {n}");
            }
            let mut c = connect(n["conninfo"].as_str().expect("conninfo")).expect("connect as superuser");
            let node_id: String = c.query_one("SHOW pgraft.node_id", &[]).expect("SHOW").get(0);
            assert_eq!(node_id, (i + 1).to_string());
            let preload: String = c.query_one("SHOW shared_preload_libraries", &[]).expect("SHOW").get(0);
            assert!(preload.contains("pgraft"), "{preload}");
            let su: bool = c
                .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
                .expect("query")
                .get(0);
            assert!(su, "the conninfo must connect as a superuser");
        }
        let conninfo = |i: usize| nodes[i]["conninfo"].as_str().expect("conninfo").to_string();
        let mut c1 = connect(&conninfo(0)).expect("connect node 1");
        c1.batch_execute("CREATE EXTENSION pgraft").expect("CREATE EXTENSION");
        let v: String = c1.query_one("SELECT pgraft_get_version()", &[]).expect("version").get(0);
        assert_eq!(v, "1.0.0");

        // kill -9 node 2: its SQL port goes away; start brings it back.
        pgraftctl(&["local", "kill", "2", "--dir", &d]);
        assert!(connect(&conninfo(1)).is_err(), "node 2 still answers after kill -9");
        let st = json_lines(&pgraftctl(&["local", "status", "--dir", &d]));
        assert_eq!(st[1]["running"].as_bool(), Some(false));
        assert_eq!(st[0]["running"].as_bool(), Some(true));
        pgraftctl(&["local", "start", "2", "--dir", &d]);
        let mut c2 = connect(&conninfo(1)).expect("node 2 answers after start");
        c2.query_one("SELECT 1", &[]).expect("query node 2");

        // partition: the member's Raft port is cut for the other members while its SQL
        // port answers. A probe dials node 3's Raft port the way node 1 does (from node 1's
        // listen address) and sends a pgraft hello; any handshake answer proves the link.
        let n3 = &nodes[2];
        let front: SocketAddr = format!("127.0.0.1:{}", n3["raft_port"]).parse().expect("socket address");
        let from1 = nodes[0]["listen_address"].as_str().expect("listen_address").to_string();
        let probe = |from: &str| -> std::io::Result<TcpStream> {
            let mut s = dial_from(from, front)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let hello = Hello {
                version: PROTOCOL_VERSION,
                from: 1,
                to: 3,
                cluster_id: "probe".into(),
                address: String::new(),
                nonce: None,
            };
            s.write_all(&hello.encode())?;
            let mut ack = [0u8; 15];
            s.read_exact(&mut ack)?;
            Ack::decode(&ack).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(s)
        };
        wait_until(
            "node 3's Raft port to answer",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok(probe(&from1).ok().map(|_| ())),
        )
        .expect("node 1 reaches node 3 before the partition");
        // An open link, closed by the partition.
        let open = dial_from(&from1, front).expect("dial node 3");

        pgraftctl(&["local", "partition", "3", "--dir", &d]);
        let mut buf = [0u8; 1];
        let mut o = open;
        o.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        assert_eq!(o.read(&mut buf).unwrap_or(0), 0, "the open link to node 3 was not cut");
        assert!(probe(&from1).is_err(), "node 1 still reaches node 3's Raft port during the partition");
        let mut c3 = connect(&conninfo(2)).expect("node 3's SQL port answers during the partition");
        c3.query_one("SELECT 1", &[]).expect("query node 3");
        let st = json_lines(&pgraftctl(&["local", "status", "--dir", &d]));
        assert_eq!(st[2]["partitioned"].as_bool(), Some(true));
        assert_eq!(st[0]["partitioned"].as_bool(), Some(false));

        pgraftctl(&["local", "heal", "--dir", &d]);
        probe(&from1).expect("node 1 reaches node 3 after heal");

        // Bad arguments are refused with the reason.
        let err = pgraftctl_fails(&["local", "kill", "9", "--dir", &d]);
        assert!(err.contains("node 9 is not a member"), "{err}");
        let err =
            pgraftctl_fails(&["local", "up", "--nodes", "3", "--dir", &d, "--no-init", "--pg-config", &pgc]);
        assert!(err.contains("already holds a local cluster"), "{err}");

        // down: every process of the directory is gone.
        drop((c1, c2, c3));
        pgraftctl(&["local", "down", "--dir", &d]);
        assert_eq!(processes_left(&dir), Vec::<i32>::new(), "processes left after down");
        assert!(connect(&conninfo(0)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn two_clusters_side_by_side() {
    let pgc = pg_configs()[0].to_string_lossy().into_owned();
    let (a, b) = (cluster_dir("side-a"), cluster_dir("side-b"));
    let (da, db) = (a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned());
    let (_ga, _gb) = (Down(a.clone()), Down(b.clone()));
    let na = json_lines(&pgraftctl(&[
        "local",
        "up",
        "--nodes",
        "2",
        "--dir",
        &da,
        "--no-init",
        "--pg-config",
        &pgc,
    ]));
    let nb = json_lines(&pgraftctl(&[
        "local",
        "up",
        "--nodes",
        "2",
        "--dir",
        &db,
        "--no-init",
        "--pg-config",
        &pgc,
    ]));
    let cluster_id = |n: &serde_json::Value| -> String {
        let mut c = connect(n["conninfo"].as_str().expect("conninfo")).expect("connect");
        c.query_one("SHOW pgraft.cluster_id", &[]).expect("SHOW").get(0)
    };
    assert_ne!(cluster_id(&na[0]), cluster_id(&nb[0]), "two local clusters share a cluster id");
    assert_eq!(cluster_id(&na[0]), cluster_id(&na[1]));
    pgraftctl(&["local", "down", "--dir", &db]);
    assert!(processes_left(&b).is_empty());
    // Stopping one leaves the other running.
    connect(na[1]["conninfo"].as_str().expect("conninfo")).expect("cluster A still answers");
    assert!(!processes_left(&a).is_empty());
    pgraftctl(&["local", "down", "--dir", &da]);
    assert!(processes_left(&a).is_empty());
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}
