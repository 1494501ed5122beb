//! The HTTP endpoints of an HA cluster's members (`pgraftctl local up --ha --http`), on real
//! servers: the status codes of `/primary`, `/replica`, `/read-only`, `/health`, `/leader`
//! and `/cluster` on the primary, a standby, a lagging standby, a member cut off from the
//! majority, a paused worker, and after the failover that follows; `/metrics` checked by
//! `promtool` with counters that move under load; bad requests answered without harm; and
//! Debian's HAProxy in front, moving a writing client to the new primary; HTTPS and basic
//! auth on a member.

mod common;

use std::time::{Duration, Instant};

use common::ha::*;
use common::http::*;
use common::*;

/// How long the endpoints may take to reflect a change the worker sees (it publishes every
/// 50 ms; replication and elections take their own time).
const SETTLE: Duration = Duration::from_secs(30);

fn wait_status(port: u16, path: &str, want: u16, what: &str) {
    wait(what, SETTLE, || (status(port, path) == want).then_some(()));
}

/// Waits until node 1 is advertised as the primary and the others as replicas.
fn wait_roles(ports: &[u16]) {
    wait_status(ports[0], "/primary", 200, "node 1 to be advertised as the primary");
    for (i, p) in ports.iter().enumerate().skip(1) {
        wait_status(*p, "/replica", 200, &format!("node {} to be advertised as a replica", i + 1));
    }
}

/// The members whose `/primary` answers 200 now; fails the test if two do, with what each
/// said.
fn advertised_primaries(ports: &[u16]) -> Vec<usize> {
    let answers: Vec<Option<Answer>> = ports.iter().map(|p| request(*p, "GET", "/primary")).collect();
    let adv: Vec<usize> =
        (0..ports.len()).filter(|i| answers[*i].as_ref().is_some_and(|a| a.status == 200)).collect();
    assert!(adv.len() <= 1, "two members advertised as the primary at once: {adv:?}: {answers:#?}");
    adv
}

#[test]
fn endpoints_answer_by_role_lag_partition_pause_and_failover() {
    let pgc = pg_configs()[0].to_string_lossy().into_owned();
    let c = HaCluster::up_with(&pgc, "http", 100, 3, &["--http"]);
    let ports: Vec<u16> = (0..3).map(|i| http_port(&c.lines, i)).collect();
    wait_roles(&ports);

    // The primary.
    let p = ports[0];
    for (path, want) in [
        ("/primary", 200),
        ("/read-write", 200),
        ("/", 200),
        ("/replica", 503),
        ("/read-only", 200),
        ("/health", 200),
        ("/leader", 200),
        ("/liveness", 200),
        ("/nope", 404),
    ] {
        assert_eq!(get(p, path).status, want, "GET {path} on the primary");
    }
    let a = get(p, "/primary").json();
    assert_eq!(
        (a["role"].as_str(), a["member"].as_u64(), a["primary"].as_u64()),
        (Some("primary"), Some(1), Some(1))
    );
    let head = request(p, "HEAD", "/primary").expect("HEAD");
    assert!(head.status == 200 && head.body.is_empty() && head.head.contains("Content-Length: "), "{head:?}");
    let options = request(p, "OPTIONS", "/replica").expect("OPTIONS");
    assert!(options.status == 503 && options.head.contains("Allow: GET, HEAD, OPTIONS"), "{options:?}");
    assert_eq!(request(p, "POST", "/primary").expect("POST").status, 405);
    let cluster = get(p, "/cluster").json();
    let members = cluster["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{cluster}");
    assert_eq!(members[0]["role"], "primary");
    // The primary sees its standbys stream (its keeper reads pg_stat_replication each second).
    wait("the primary's /cluster to show both standbys streaming", SETTLE, || {
        let cl = get(p, "/cluster").json();
        let ok = (1..3).all(|i| cl["members"][i]["standby"]["state"] == "streaming");
        ok.then_some(())
    });

    // A standby.
    let s = ports[1];
    for (path, want) in
        [("/primary", 503), ("/replica", 200), ("/read-only", 200), ("/health", 200), ("/leader", 503)]
    {
        assert_eq!(get(s, path).status, want, "GET {path} on a standby");
    }
    let a = get(s, "/primary").json();
    assert!(a["reason"].as_str().expect("a reason").contains("standby"), "{a}");

    // A lagging standby: node 3 stops replaying while the primary writes ~3 MB of WAL.
    let mut s3 = connect(&conninfo(&c.lines, 2)).expect("connect to node 3");
    s3.batch_execute("SELECT pg_wal_replay_pause()").expect("pause replay");
    let mut app = connect(&c.rw).expect("connect read-write");
    app.batch_execute("INSERT INTO t SELECT generate_series(1000, 60000)").expect("write");
    wait_status(ports[2], "/replica", 503, "node 3's /replica to refuse past the default lag (1 MB)");
    let a = get(ports[2], "/replica?lag=1GB");
    assert_eq!(a.status, 200, "within a lag limit given in the query: {}", a.body);
    let a = get(ports[2], "/replica").json();
    assert!(a["reason"].as_str().expect("reason").contains("behind"), "{a}");
    assert!(a["lag_bytes"].as_u64().expect("lag_bytes") > 1 << 20, "{a}");
    assert_eq!(get(ports[2], "/replica?lag=forty").status, 400);
    wait_status(ports[1], "/replica", 200, "node 2, which replays, to catch up within the default lag");
    s3.batch_execute("SELECT pg_wal_replay_resume()").expect("resume replay");
    wait_status(ports[2], "/replica", 200, "node 3 to be a replica again once it replays");

    // A paused worker answers nothing (its threads serve the endpoints): a load balancer's
    // check times out and counts the server as down. Resumed, it answers again.
    let worker: i32 =
        s3.query_one("SELECT worker_pid FROM pgraft_worker_status", &[]).expect("worker pid").get(0);
    // SAFETY: kill(2) on a process of the test's own cluster.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGSTOP) }, 0);
    // A stop reaches every thread soon, not at once: wait until each is stopped.
    wait("the worker's threads to stop", Duration::from_secs(10), || {
        let tasks = std::fs::read_dir(format!("/proc/{worker}/task")).ok()?;
        let stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|st| st.rsplit(')').next().map(|r| r.trim_start().starts_with('T')))
                .unwrap_or(true)
        });
        stopped.then_some(())
    });
    let silent = request(ports[2], "GET", "/replica");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGCONT) }, 0);
    assert!(silent.is_none(), "a paused worker answered: {silent:?}");
    wait_status(ports[2], "/replica", 200, "node 3 to answer again after its worker resumed");
    drop(s3);

    // The primary cut off from the majority on its Raft links: it stops being advertised
    // (its lease lapses and it is fenced), and after the failover exactly one other member
    // is. At no poll do two members answer 200 on /primary.
    let cut = Instant::now();
    pgraftctl(&["local", "partition", "1", "--dir", &c.d]);
    let new = wait("another member to be advertised as the primary", Duration::from_secs(60), || {
        let adv = advertised_primaries(&ports);
        adv.first().copied().filter(|i| *i != 0)
    });
    println!("{pgc}: Raft partition of the primary to /primary 200 on node {}: {:?}", new + 1, cut.elapsed());
    assert_ne!(status(ports[0], "/primary"), 200, "the cut-off primary is not advertised");
    // 503, or no answer at all while its fenced server restarts as a standby (the
    // endpoints live in its worker): never 200. make test met the restart once.
    let leader_status = status(ports[0], "/leader");
    assert!(leader_status == 503 || leader_status == 0, "the cut-off member answers /leader {leader_status}");
    assert_eq!(get(ports[new], "/leader").status, 200, "the new primary's member leads");
    let a = get(ports[new], "/cluster").json();
    assert_eq!(a["ha"]["primary"].as_u64(), Some(new as u64 + 1), "{a}");

    // After the heal the old primary rejoins as a standby and is advertised as a replica.
    pgraftctl(&["local", "heal", "--dir", &c.d]);
    wait("node 1 to be advertised as a replica after it rejoined", Duration::from_secs(180), || {
        advertised_primaries(&ports);
        (status(ports[0], "/replica") == 200).then_some(())
    });
    assert_eq!(advertised_primaries(&ports), vec![new]);
}

#[test]
fn metrics_pass_promtool_and_move_under_load_and_bad_requests_cost_nothing() {
    let pgc = pg_configs()[0].to_string_lossy().into_owned();
    let c = HaCluster::up_with(&pgc, "http-metrics", 10, 3, &["--http"]);
    let p = http_port(&c.lines, 0);
    wait_status(p, "/primary", 200, "node 1 to be advertised as the primary");
    let metric = |page: &str, name: &str| -> f64 {
        page.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = get(p, "/metrics");
    assert_eq!(before.status, 200);
    assert!(before.head.contains("Content-Type: text/plain; version=0.0.4"), "{}", before.head);
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(before.body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut db = connect(&conninfo(&c.lines, 0)).expect("connect to the primary");
    for i in 0..200 {
        db.execute("SELECT pgraft_kv_put($1, 'v')", &[&format!("m/{i}")]).expect("kv put");
    }
    let after = get(p, "/metrics").body;
    let puts = |page: &str| metric(page, "pgraft_requests_total{op=\"kv_put\",result=\"ok\"}");
    assert!(puts(&after) - puts(&before.body) >= 200.0, "kv_put count moved by 200:\n{after}");
    for name in ["pgraft_raft_proposals_total", "pgraft_raft_applied_entries_total", "pgraft_kv_revision"] {
        assert!(metric(&after, name) > metric(&before.body, name), "{name} moved under load");
    }
    assert!(metric(&after, "pgraft_storage_sync_duration_seconds_count") > 0.0);
    assert_eq!(metric(&after, "pgraft_ha_is_primary"), 1.0);
    assert!(after.contains("pgraft_ha_replication_lag_bytes{standby=\"2\"}"), "{after}");

    // Bad requests: each gets its status, and neither they nor stalled clients hold the
    // endpoint or Raft.
    let big = [b"GET /primary HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; 20_000], b"\r\n\r\n"].concat();
    assert_eq!(raw(p, &big, Duration::from_secs(5)).expect("an answer").status, 431);
    assert_eq!(
        raw(p, b"\x16\x03\x01\x02\x00garbage\r\n\r\n", Duration::from_secs(5)).expect("answer").status,
        400
    );
    assert_eq!(request(p, "DELETE", "/primary").expect("answer").status, 405);
    assert_eq!(get(p, "/no/such/thing").status, 404);
    let stalled: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", p)).expect("connect");
            s.write_all(b"GET /primary HTTP/1.1\r\nX-Slow: ").expect("write");
            s
        })
        .collect();
    assert_eq!(get(p, "/primary").status, 200, "answered while 50 clients stall");
    db.execute("SELECT pgraft_kv_put('after-stall', 'v')", &[]).expect("Raft still commits");
    for mut s in stalled {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "a stalled client is answered 408 and dropped: {out:?}");
    }
    let page = get(p, "/metrics").body;
    assert!(metric(&page, "pgraft_http_requests_refused_total") >= 53.0, "{page}");
}

#[test]
fn haproxy_moves_a_writing_client_to_the_new_primary() {
    let pgc = pg_configs()[0].to_string_lossy().into_owned();
    let c = HaCluster::up_with(&pgc, "haproxy", 100, 3, &["--http"]);
    let ports: Vec<u16> = (0..3).map(|i| http_port(&c.lines, i)).collect();
    wait_roles(&ports);
    let h = json_lines(&pgraftctl(&["local", "haproxy", "--dir", &c.d]));
    let rw = h[0]["read_write_conninfo"].as_str().expect("read_write_conninfo").to_string();
    let ro = h[0]["read_only_conninfo"].as_str().expect("read_only_conninfo").to_string();
    // HAProxy marks the members up after its first checks.
    let port_of = |conninfo: &str| -> Option<i32> {
        connect(conninfo).ok()?.query_one("SELECT inet_server_port()", &[]).ok().map(|r| r.get(0))
    };
    wait("HAProxy's read-write port to reach node 1", SETTLE, || {
        (port_of(&rw) == Some(pg_port(&c.lines, 0))).then_some(())
    });
    let ro_port = wait("HAProxy's read-only port to reach a standby", SETTLE, || port_of(&ro));
    assert_ne!(ro_port, pg_port(&c.lines, 0), "the read-only port leads to a standby");

    let writer = Writer::start(rw.clone(), 1000);
    wait("the writer to get going", Duration::from_secs(10), || (writer.count() >= 20).then_some(()));
    let killed = Instant::now();
    pgraftctl(&["local", "kill", "1", "--dir", &c.d]);
    let old = pg_port(&c.lines, 0);
    wait("a write through HAProxy on another server", Duration::from_secs(60), || {
        writer.acked.lock().ok()?.iter().any(|(_, port, _)| *port != old).then_some(())
    });
    // Some more writes on the new primary, to see that none goes astray.
    let n = writer.count();
    wait("more writes on the new primary", Duration::from_secs(10), || {
        (writer.count() >= n + 50).then_some(())
    });
    assert_eq!(writer.read_only_errors(), 0, "HAProxy's read-write port led a write to a standby");
    let acked = writer.finish();
    let last_old =
        acked.iter().filter(|(_, p, _)| *p == old).map(|(_, _, t)| *t).max().expect("writes on node 1");
    let first_new =
        acked.iter().filter(|(_, p, _)| *p != old).map(|(_, _, t)| *t).min().expect("writes after");
    println!(
        "{pgc}: HAProxy (checks every {:?}): kill -9 of the primary to the first write through the read-write port \
         on the new primary: {:?}; write gap seen by the client: {:?}",
        pgraft_testkit::HaProxy::CHECK_INTERVAL,
        first_new.duration_since(killed),
        first_new.duration_since(last_old)
    );
    // Writes went to node 1 and then to one new primary, never back and never elsewhere.
    let new = acked.iter().find(|(_, p, _)| *p != old).map(|(_, p, _)| *p).expect("new primary");
    let mut seen_new = false;
    for (v, port, _) in &acked {
        seen_new |= *port == new;
        assert!(*port == old || *port == new, "write {v} acknowledged by a third server {port}");
        assert!(!(seen_new && *port == old), "write {v} went back to the old primary");
    }
    // Synchronous mode: every acknowledged row is on the new primary.
    let i = (0..3).find(|i| pg_port(&c.lines, *i) == new).expect("member of the new primary");
    let have = values_on(&conninfo(&c.lines, i)).expect("read t");
    let lost: Vec<i64> = acked.iter().map(|(v, _, _)| *v).filter(|v| !have.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    pgraftctl(&["local", "down", "--dir", &c.d]);
    assert!(!std::path::Path::new(&c.d).join("haproxy.pid").exists(), "`local down` stops HAProxy too");
}

/// `curl`'s status code for `url` (0: no HTTP answer), with `args` before it.
fn curl_status(args: &[&str], url: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn https_and_basic_auth_on_a_member() {
    let pgc = pg_configs()[0].to_string_lossy().into_owned();
    let dir = cluster_dir("http-tls");
    let d = dir.to_string_lossy().into_owned();
    let _down = Down(dir.clone());
    let lines = json_lines(&pgraftctl(&[
        "local",
        "up",
        "--nodes",
        "3",
        "--tls",
        "--http",
        "--dir",
        &d,
        "--pg-config",
        &pgc,
    ]));
    let port = http_port(&lines, 0);
    // pgraft.ssl_cert_file and ssl_key_file are set by --tls; the endpoint's settings take
    // effect at server start.
    let conf = std::path::Path::new(lines[0]["data_dir"].as_str().expect("data_dir")).join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
    text.push_str("pgraft.http_tls = on\npgraft.http_auth = 'watch:s3cret'\n");
    std::fs::write(&conf, text).expect("write postgresql.conf");
    pgraftctl(&["local", "stop", "1", "--dir", &d]);
    pgraftctl(&["local", "start", "1", "--dir", &d]);
    let ca = dir.join("tls").join("ca.crt");
    let ca = ca.to_string_lossy().into_owned();
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    wait("node 1's endpoint to answer over TLS", SETTLE, || {
        (curl_status(&["--cacert", &ca, "-u", "watch:s3cret"], &url("/liveness")) == 200).then_some(())
    });
    assert_eq!(curl_status(&["--cacert", &ca], &url("/liveness")), 401, "no credentials");
    assert_eq!(
        curl_status(&["--cacert", &ca, "-u", "watch:wrong"], &url("/liveness")),
        401,
        "wrong password"
    );
    assert_eq!(curl_status(&["--cacert", &ca, "-u", "watch:s3cret"], &url("/metrics")), 200);
    // The certificate is checked: without the cluster's CA the client refuses it.
    assert_eq!(
        curl_status(&["-u", "watch:s3cret"], &url("/liveness")),
        0,
        "a certificate from an unknown CA"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert_eq!(status(port, "/liveness"), 0);
    // The other members still serve plain HTTP without credentials.
    assert_eq!(status(http_port(&lines, 1), "/liveness"), 200);
}
