//! The operator's commands (`pgraftctl member|endpoint|leader|kv|log|config`) against one
//! real three-member cluster: every subcommand in table and JSON form, connection settings
//! from --endpoints and from PG* variables, and the errors: an unreachable endpoint, a
//! stopped member, a leader-only request sent to a follower, a server refusal with its
//! SQLSTATE, bad arguments.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `pgraftctl` with a clean libpq environment: PGUSER and PGDATABASE set, nothing else.
fn command(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgraftctl"));
    for v in ["PGHOST", "PGPORT", "PGPASSWORD", "PGRAFTCTL_ENDPOINTS", "PGUSER", "PGDATABASE"] {
        cmd.env_remove(v);
    }
    cmd.env("PGUSER", "postgres").env("PGDATABASE", "postgres");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args);
    cmd
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    command(env, args).output().expect("run pgraftctl")
}

/// Succeeds; returns stdout.
fn ok(args: &[&str]) -> String {
    ok_env(&[], args)
}

fn ok_env(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = run(env, args);
    assert!(
        out.status.success(),
        "pgraftctl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Fails with exit status `code`; returns (stdout, stderr).
fn fails(code: i32, args: &[&str]) -> (String, String) {
    let out = run(&[], args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "pgraftctl {}: stdout {stdout} stderr {stderr}",
        args.join(" ")
    );
    (stdout, stderr)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

/// The leader every endpoint reports, once they agree.
fn agreed_leader(eps: &str) -> i64 {
    wait("every endpoint to agree on a leader", Duration::from_secs(15), || {
        let out = run(&[], &["endpoint", "status", "--endpoints", eps, "-w", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = v["endpoints"].as_array()?;
        let leaders: Vec<i64> = rows.iter().filter_map(|r| r["leader"].as_i64()).collect();
        let leading: Vec<i64> = rows
            .iter()
            .filter(|r| r["is_leader"] == Value::Bool(true))
            .filter_map(|r| r["id"].as_i64())
            .collect();
        (leaders.len() == rows.len()
            && leaders.iter().all(|l| *l > 0 && *l == leaders[0])
            && leading == [leaders[0]])
        .then_some(leaders[0])
    })
}

#[test]
fn operator_commands_on_a_live_cluster() {
    for pg_config in pg_configs() {
        let started = Instant::now();
        let dir = cluster_dir("operator");
        let d = dir.to_string_lossy().into_owned();
        let _guard = Down(dir.clone());
        let nodes = json_lines(&pgraftctl(&[
            "local",
            "up",
            "--nodes",
            "3",
            "--dir",
            &d,
            "--pg-config",
            &pg_config.to_string_lossy(),
        ]));
        let ep: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n["pg_port"])).collect();
        let raft: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n["raft_port"])).collect();
        let all = ep.join(",");
        let dead = format!("127.0.0.1:{}", closed_port());

        // ---- endpoint status / health: every endpoint at once.
        let leader = agreed_leader(&all);
        let follower = (1..=3).find(|n| *n != leader).expect("a follower");
        let other = (1..=3).find(|n| *n != leader && *n != follower).expect("a third member");
        let ep_of = |id: i64| ep[(id - 1) as usize].clone();
        let st = json(&ok(&["endpoint", "status", "--endpoints", &all, "-w", "json"]));
        let rows = st["endpoints"].as_array().expect("rows");
        assert_eq!(rows.len(), 3);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["endpoint"], ep[i].as_str(), "rows in endpoint order");
            assert_eq!(r["id"], (i + 1) as i64);
            assert_eq!(r["raft_addr"], raft[i].as_str());
            assert_eq!(r["version"], "1.0.0");
            assert!(r["raft_applied_index"].as_i64() <= r["raft_index"].as_i64());
            assert_eq!(r["errors"], Value::Null);
        }
        let table = ok(&["endpoint", "status", "--endpoints", &all]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "a header and three rows: {table}");
        assert!(lines[0].starts_with("ENDPOINT") && lines[0].contains("RAFT APPLIED INDEX"), "{table}");
        let col = lines[0].find("RAFT ADDR").expect("RAFT ADDR column");
        for (i, l) in lines[1..].iter().enumerate() {
            assert!(l.starts_with(&ep[i]) && l[col..].starts_with(&raft[i]), "aligned columns: {table}");
        }
        // An unreachable endpoint: its row carries the error, the others still answer,
        // and the exit status says something failed.
        let with_dead = format!("{all},{dead}");
        let (stdout, stderr) = fails(1, &["endpoint", "status", "--endpoints", &with_dead, "-o", "json"]);
        let rows = json(&stdout)["endpoints"].as_array().expect("rows").clone();
        assert_eq!(rows.len(), 4);
        assert!(rows[..3].iter().all(|r| r["reachable"] == Value::Bool(true)));
        assert_eq!(rows[3]["reachable"], Value::Bool(false));
        assert!(rows[3]["errors"].as_str().unwrap_or("").contains("Connection refused"), "{stdout}");
        assert!(stderr.contains(&dead) && stderr.contains("Connection refused"), "{stderr}");

        let h = json(&ok(&["endpoint", "health", "--endpoints", &all, "-w", "json"]));
        assert!(
            h["endpoints"].as_array().expect("rows").iter().all(|r| r["health"] == Value::Bool(true)),
            "{h}"
        );
        let table = ok(&["endpoint", "health", "--endpoints", &all]);
        assert_eq!(table.lines().filter(|l| l.contains(" true ")).count(), 3, "{table}");
        let (stdout, stderr) = fails(1, &["endpoint", "health", "--endpoints", &with_dead]);
        assert!(stdout.lines().last().unwrap_or("").starts_with(&dead), "{stdout}");
        assert!(stderr.contains(&dead), "{stderr}");

        // --watch: one JSON line per round without a terminal; tables one after another.
        let out = ok(&[
            "endpoint",
            "status",
            "--endpoints",
            &all,
            "-w",
            "json",
            "--watch",
            "--count",
            "3",
            "--interval",
            "100ms",
        ]);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.lines().all(|l| json(l)["endpoints"].as_array().map(Vec::len) == Some(3)));
        let out = ok(&[
            "endpoint",
            "health",
            "--endpoints",
            &all,
            "--watch",
            "--count",
            "2",
            "--interval",
            "100ms",
        ]);
        assert_eq!(out.lines().filter(|l| l.starts_with("ENDPOINT")).count(), 2, "{out}");
        assert!(!out.contains('\x1b'), "no terminal codes when stdout is not a terminal");

        // ---- connection settings from PG* variables, and libpq's host and port lists.
        let port = |id: i64| nodes[(id - 1) as usize]["pg_port"].to_string();
        let ls = json(&ok_env(
            &[("PGHOST", "127.0.0.1"), ("PGPORT", &port(follower))],
            &["log", "stats", "-w", "json"],
        ));
        assert_eq!(ls["node_id"], follower);
        assert_eq!(ls["endpoint"], ep_of(follower).as_str());
        let listed = format!("{},{}", dead.rsplit_once(':').expect("port").1, port(other));
        let st = json(&ok_env(
            &[("PGHOST", "127.0.0.1,127.0.0.1"), ("PGPORT", &listed)],
            &["log", "stats", "-w", "json"],
        ));
        assert_eq!(st["node_id"], other, "the first endpoint that answers");
        let st = json(&ok_env(&[("PGRAFTCTL_ENDPOINTS", &ep_of(other))], &["log", "stats", "-w", "json"]));
        assert_eq!(st["node_id"], other);

        // ---- log stats.
        let ls = json(&ok(&["log", "stats", "--endpoints", &all, "-w", "json"]));
        let (first, last, commit, applied) = (
            ls["first_index"].as_i64().expect("first"),
            ls["last_index"].as_i64().expect("last"),
            ls["commit_index"].as_i64().expect("commit"),
            ls["last_applied"].as_i64().expect("applied"),
        );
        assert!(first >= 1 && first <= last && applied <= commit && commit <= last, "{ls}");
        assert_eq!(ls["total_entries"], last - first + 1);
        let table = ok(&["log", "stats", "--endpoints", &all]);
        assert!(
            table.lines().any(|l| l.starts_with("last_index") && l.ends_with(&format!(" {last}"))),
            "{table}"
        );

        // ---- kv: writes through a follower, reads anywhere, keys and values as bind
        // parameters (quotes and SQL in them are data).
        let tricky_key = "app/it's'); DROP TABLE pgraft.kv; --";
        let tricky_value = "line one\nline \"two\"\t'three'";
        assert_eq!(
            ok(&["kv", "put", "--endpoints", &ep_of(follower), tricky_key, tricky_value]).trim(),
            "OK"
        );
        let mut put = command(&[], &["kv", "put", "--endpoints", &ep_of(other), "app/from-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        put.stdin.take().expect("stdin").write_all(b"piped value").expect("write stdin");
        assert!(put.wait_with_output().expect("wait").status.success());
        let p = json(&ok(&["kv", "put", "--endpoints", &all, "app/z", "last", "-w", "json"]));
        assert_eq!(p["ok"], Value::Bool(true));
        ok(&["kv", "put", "--endpoints", &all, "other/x", "1"]);

        let g = json(&ok(&["kv", "get", "--endpoints", &ep_of(other), tricky_key, "-w", "json"]));
        assert_eq!(g["count"], 1);
        assert_eq!(g["kvs"][0]["key"], tricky_key);
        assert_eq!(g["kvs"][0]["value"], tricky_value);
        let table = ok(&["kv", "get", "--endpoints", &all, tricky_key]);
        assert_eq!(table.lines().count(), 2, "line breaks in a value stay in one row: {table}");
        assert!(table.contains("line one\\nline \"two\"\\t'three'"), "{table}");
        let g = json(&ok(&["kv", "get", "--endpoints", &all, "app/", "--prefix", "-w", "json"]));
        let keys: Vec<&str> =
            g["kvs"].as_array().expect("kvs").iter().filter_map(|k| k["key"].as_str()).collect();
        assert_eq!(keys, vec!["app/from-stdin", tricky_key, "app/z"], "in byte order, prefix only");
        assert_eq!(g["kvs"][0]["value"], "piped value");
        assert!(g["kvs"]
            .as_array()
            .expect("kvs")
            .iter()
            .all(|k| k["version"] == 1 && k["mod_revision"].as_i64() > Some(0)));
        // A serializable read answers from the member's own state, which may be behind.
        wait("the follower to apply app/z", Duration::from_secs(10), || {
            let s = json(&ok(&[
                "kv",
                "get",
                "--endpoints",
                &ep_of(follower),
                "app/z",
                "--serializable",
                "-w",
                "json",
            ]));
            (s["count"] == 1 && s["kvs"][0]["value"] == "last").then_some(())
        });
        assert_eq!(ok(&["kv", "get", "--endpoints", &all, "app/nothing"]), "", "absent: no output");
        assert_eq!(json(&ok(&["kv", "get", "--endpoints", &all, "app/nothing", "-w", "json"]))["count"], 0);

        assert_eq!(ok(&["kv", "del", "--endpoints", &ep_of(follower), "app/z"]).trim(), "1");
        assert_eq!(ok(&["kv", "del", "--endpoints", &all, "app/z"]).trim(), "0", "already gone");
        let del = json(&ok(&["kv", "del", "--endpoints", &all, "app/", "--prefix", "-w", "json"]));
        assert_eq!(del["deleted"], 2);
        assert_eq!(
            json(&ok(&["kv", "get", "--endpoints", &all, "app/", "--prefix", "-w", "json"]))["count"],
            0
        );
        assert_eq!(
            json(&ok(&["kv", "get", "--endpoints", &all, "other/", "--prefix", "-w", "json"]))["count"],
            1,
            "other prefixes untouched"
        );
        // The wrong database: the missing function is named, with a hint.
        let (_, stderr) = fails(1, &["kv", "get", "--endpoints", &all, "--dbname", "template1", "k"]);
        assert!(stderr.contains("42883") && stderr.contains("extension created"), "{stderr}");

        // ---- config get / set.
        let cfg = json(&ok(&["config", "get", "--endpoints", &all, "-w", "json"]));
        let names: Vec<&str> =
            cfg["settings"].as_array().expect("settings").iter().filter_map(|s| s["name"].as_str()).collect();
        assert!(
            names.contains(&"heartbeat_interval") && names.contains(&"node_id") && names.len() >= 10,
            "{cfg}"
        );
        let set = json(&ok(&[
            "config",
            "set",
            "--endpoints",
            &ep_of(follower),
            "pgraft.Heartbeat_Interval",
            "80ms",
            "-w",
            "json",
        ]));
        assert_eq!(set["settings"][0]["value"], "80ms");
        assert_eq!(set["settings"][0]["source"], "cluster (pgraft_set_config)");
        wait("the setting on every member", Duration::from_secs(10), || {
            ep.iter()
                .all(|e| {
                    let out = ok(&["config", "get", "heartbeat_interval", "--endpoints", e]);
                    out.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("80ms"))
                })
                .then_some(())
        });
        let (_, stderr) = fails(1, &["config", "set", "--endpoints", &all, "heartbeat_interval", "banana"]);
        assert!(stderr.contains("SQLSTATE 22023") && stderr.contains("is not a duration"), "{stderr}");
        let (_, stderr) = fails(1, &["config", "set", "--endpoints", &all, "port", "7009"]);
        assert!(stderr.contains("cannot be changed at run time"), "{stderr}");
        let (_, stderr) = fails(1, &["config", "get", "--endpoints", &all, "colour"]);
        assert!(stderr.contains("no setting pgraft.colour"), "{stderr}");
        ok(&["config", "set", "--endpoints", &all, "heartbeat_interval", "100ms"]);

        // ---- member list / add / remove, the leader found among the endpoints.
        let ml = json(&ok(&["member", "list", "--endpoints", &all, "-w", "json"]));
        let members = ml["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m["id"], (i + 1) as i64);
            assert_eq!(m["peer_addr"], raft[i].as_str());
            assert_eq!(m["is_leader"], Value::Bool((i + 1) as i64 == leader));
        }
        let table = ok(&["member", "list", "--endpoints", &ep_of(follower)]);
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.lines().next().unwrap_or("").starts_with("ID  NAME  "), "{table}");

        let spare = format!("127.0.0.1:{}", closed_port());
        // Follower first: the request follows the leader.
        let follower_first = format!("{},{}", ep_of(follower), ep_of(leader));
        let out = run(&[], &["member", "add", "4", &spare, "--endpoints", &follower_first]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("Member 4 added to the cluster at {spare}")
        );
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains(&format!("following the leader to {}", ep_of(leader))));
        let ml = json(&ok(&["member", "list", "--endpoints", &all, "-w", "json"]));
        let m4 = ml["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["id"] == 4)
            .cloned()
            .expect("member 4");
        assert_eq!(m4["peer_addr"], spare.as_str());
        // Only a follower given: refused here, naming the leader and its Raft address.
        let (_, stderr) = fails(1, &["member", "remove", "4", "--endpoints", &ep_of(follower)]);
        assert!(
            stderr.contains(&format!(
                "the leader is node {leader} (Raft address {})",
                raft[(leader - 1) as usize]
            )) && stderr.contains("not among the endpoints"),
            "{stderr}"
        );
        // Told not to follow: the server's own refusal, SQLSTATE and hint.
        let (_, stderr) =
            fails(1, &["member", "remove", "4", "--endpoints", &follower_first, "--no-follow-leader"]);
        assert!(
            stderr.contains("not the leader")
                && stderr.contains("SQLSTATE 55000")
                && stderr.contains("hint: Run it on the leader"),
            "{stderr}"
        );
        let r = json(&ok(&["member", "remove", "4", "--endpoints", &follower_first, "-w", "json"]));
        assert_eq!(r["removed"], 4);
        assert_eq!(r["endpoint"], ep_of(leader).as_str());
        let ml = json(&ok(&["member", "list", "--endpoints", &all, "-w", "json"]));
        assert_eq!(ml["members"].as_array().map(Vec::len), Some(3));
        let (_, stderr) = fails(1, &["member", "remove", "42", "--endpoints", &all]);
        assert!(stderr.contains("node 42 is not a member") && stderr.contains("SQLSTATE 22023"), "{stderr}");

        // ---- leader transfer.
        let t = json(&ok(&[
            "leader",
            "transfer",
            &other.to_string(),
            "--endpoints",
            &follower_first,
            "-w",
            "json",
        ]));
        assert_eq!(
            (t["from"].as_i64(), t["to"].as_i64(), t["leader"].as_i64()),
            (Some(leader), Some(other), Some(other)),
            "{t}"
        );
        assert_eq!(agreed_leader(&all), other);
        let out = ok(&["leader", "transfer", &other.to_string(), "--endpoints", &all]);
        assert!(out.starts_with(&format!("Node {other} already leads")), "{out}");
        let (_, stderr) = fails(1, &["leader", "transfer", "9", "--endpoints", &all]);
        assert!(stderr.contains("not a voting member") && stderr.contains("SQLSTATE 22023"), "{stderr}");
        let (_, stderr) =
            fails(1, &["leader", "transfer", &leader.to_string(), "--endpoints", &ep_of(follower)]);
        assert!(stderr.contains(&format!("the leader is node {other}")), "{stderr}");
        let out = ok(&["leader", "transfer", &leader.to_string(), "--endpoints", &all]);
        assert!(
            out.starts_with(&format!("Leadership transferred from node {other} to node {leader}")),
            "{out}"
        );

        // ---- bad arguments: usage errors exit 2, bad values 1, before anything is sent.
        for args in [
            vec!["kv"],
            vec!["kv", "get"],
            vec!["member", "add", "0", "127.0.0.1:7"],
            vec!["leader", "transfer", "x"],
            vec!["endpoint", "status", "-w", "yaml"],
            vec!["endpoint", "status", "--command-timeout", "soon"],
            vec!["endpoint", "status", "--count", "2"],
        ] {
            let (_, stderr) = fails(2, &args);
            assert!(stderr.contains("error:") || stderr.contains("Usage"), "{args:?}: {stderr}");
        }
        let (_, stderr) = fails(1, &["member", "add", "5", "nonsense", "--endpoints", &all]);
        assert!(stderr.contains("expected host:port"), "{stderr}");
        let (_, stderr) = fails(1, &["log", "stats", "--endpoints", "127.0.0.1:x"]);
        assert!(stderr.contains("not a port number"), "{stderr}");
        let (_, stderr) = fails(1, &["kv", "get", "k", "--endpoints", &dead]);
        assert!(stderr.contains("no endpoint answered") && stderr.contains("Connection refused"), "{stderr}");

        // ---- a member that is down: its row fails, the rest keeps working.
        pgraftctl(&["local", "stop", &follower.to_string(), "--dir", &d]);
        let (stdout, stderr) = fails(1, &["endpoint", "status", "--endpoints", &all, "-w", "json"]);
        let rows = json(&stdout)["endpoints"].as_array().expect("rows").clone();
        assert_eq!(rows[(follower - 1) as usize]["reachable"], Value::Bool(false));
        assert!(stderr.contains(&ep_of(follower)), "{stderr}");
        fails(1, &["endpoint", "health", "--endpoints", &all]);
        let healthy = json(&ok(&[
            "endpoint",
            "health",
            "--endpoints",
            &format!("{},{}", ep_of(leader), ep_of(other)),
            "-w",
            "json",
        ]));
        assert!(healthy["endpoints"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["health"] == Value::Bool(true)));
        // The stopped member first in the list: the next endpoint serves, with a warning.
        let down_first = format!("{},{}", ep_of(follower), ep_of(other));
        let out = run(&[], &["kv", "put", "--endpoints", &down_first, "after", "stop"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("warning"), "the skipped endpoint is reported");
        wait("the leader to see the stopped member as unreachable", Duration::from_secs(15), || {
            let ml = json(&ok(&[
                "member",
                "list",
                "--endpoints",
                &format!("{down_first},{}", ep_of(leader)),
                "-w",
                "json",
            ]));
            let m = ml["members"].as_array()?.iter().find(|m| m["id"] == follower)?.clone();
            (m["state"] == "Unreachable").then_some(())
        });

        pgraftctl(&["local", "down", "--dir", &d]);
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("{}: operator commands checked in {:?}", pg_config.display(), started.elapsed());
    }
}
