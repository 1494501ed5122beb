//! Real members on 127.0.0.1 over TCP: elections, forwarding, leader loss, partitions,
//! restarts, and refused peers (untrusted certificate, a certificate of another node id,
//! wrong cluster id, a wrong or missing cluster secret).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgraft_core::command::Body;
use pgraft_core::config::Timing;
use pgraft_core::kv::KvOp;
use pgraft_core::transport::{ClusterSecret, TlsFiles};
use pgraft_core::{Bootstrap, Consistency, MemberConfig, Node, NodeConfig, Read, Request, Response, Role};
use pgraft_testkit::{free_port, wait_until, PartitionProxy, ProxyClient};

const TIMING: Timing = Timing { election_timeout_ms: 500, heartbeat_interval_ms: 50 };
const CALL: Duration = Duration::from_secs(5);

struct Member {
    id: u64,
    spec: pgraft_testkit::Node,
    dir: PathBuf,
    node: Option<Node>,
}

struct Cluster {
    members: Vec<Member>,
    list: Vec<(u64, String)>,
    proxy: PathBuf,
    cluster_id: String,
    tls: Option<PathBuf>,
    secret: Option<ClusterSecret>,
    timing: Timing,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgraft-t30-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn node_config(c: &Cluster, m: &Member, incarnation: u64) -> NodeConfig {
    let listen = SocketAddr::V4(m.spec.listen_socket());
    NodeConfig {
        member: MemberConfig::new(m.id, c.cluster_id.clone(), incarnation),
        data_dir: m.dir.clone(),
        listen,
        advertise: m.spec.advertised_socket().to_string(),
        source_ip: Some(listen.ip()),
        tls: c.tls.as_ref().map(|d| tls_files(d, m.id)),
        secret: c.secret.clone(),
        timing: c.timing,
        bootstrap: Bootstrap::Static(c.list.clone()),
    }
}

fn tls_files(dir: &Path, id: u64) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("node{id}.crt")),
        key: dir.join(format!("node{id}.key")),
        ca: dir.join("ca.crt"),
    }
}

impl Cluster {
    fn start(name: &str, n: u64, tls: bool) -> Cluster {
        Cluster::start_with(name, n, tls, TIMING)
    }

    fn start_with(name: &str, n: u64, tls: bool, timing: Timing) -> Cluster {
        Cluster::start_opts(name, n, tls, None, timing)
    }

    fn start_opts(name: &str, n: u64, tls: bool, secret: Option<ClusterSecret>, timing: Timing) -> Cluster {
        let dir = scratch(name);
        let members: Vec<Member> = (1..=n)
            .map(|id| Member {
                id,
                spec: pgraft_testkit::Node::new(
                    id,
                    0,
                    free_port().expect("port"),
                    dir.join(format!("n{id}")),
                ),
                dir: dir.join(format!("n{id}")),
                node: None,
            })
            .collect();
        let list = members.iter().map(|m| (m.id, m.spec.advertised_socket().to_string())).collect();
        let proxy = dir.join("proxy.sock");
        let specs: Vec<pgraft_testkit::Node> = members.iter().map(|m| m.spec.clone()).collect();
        let p = proxy.clone();
        let proxy_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let e = proxy_error.clone();
        std::thread::spawn(move || {
            if let Err(err) = PartitionProxy::new(&specs).run(&p, |_| None) {
                *e.lock().expect("lock") = Some(format!("{err:#}"));
            }
        });
        wait_until("the proxy", Duration::from_secs(15), Duration::from_millis(10), || {
            if let Some(err) = proxy_error.lock().expect("lock").as_ref() {
                panic!("the proxy failed: {err}");
            }
            Ok(ProxyClient::new(proxy.clone()).request("status").ok())
        })
        .expect("proxy up");
        let tls = tls.then(|| {
            let d = dir.join("tls");
            make_certs(&d, n, "pgraft test CA");
            d
        });
        let mut c = Cluster { members, list, proxy, cluster_id: format!("t30-{name}"), tls, secret, timing };
        for i in 0..c.members.len() {
            c.boot(i, 1);
        }
        c
    }

    fn boot(&mut self, i: usize, incarnation: u64) {
        let cfg = node_config(self, &self.members[i], incarnation);
        self.members[i].node = Some(Node::start(cfg).expect("node starts"));
    }

    fn handle(&self, id: u64) -> pgraft_core::NodeHandle {
        self.members[(id - 1) as usize].node.as_ref().expect("running").handle()
    }

    fn leader(&self, timeout: Duration) -> u64 {
        wait_until("a leader all running members agree on", timeout, Duration::from_millis(10), || {
            let mut leaders = Vec::new();
            for m in self.members.iter().filter(|m| m.node.is_some()) {
                let st = self.handle(m.id).status();
                leaders
                    .push(st.map(|s| if s.role == Role::Leader { s.id } else { s.leader_id }).unwrap_or(0));
            }
            let first = leaders[0];
            Ok((first != 0 && leaders.iter().all(|l| *l == first)).then_some(first))
        })
        .expect("a leader")
    }

    fn put(&self, via: u64, key: &str, value: &str) -> pgraft_core::Result<Response> {
        let op = KvOp::Put { key: key.into(), value: value.as_bytes().to_vec(), time_ms: 0 };
        self.handle(via).call_blocking(Request::Propose(Body::Kv(op)), CALL)
    }

    fn get(&self, via: u64, key: &str, c: Consistency) -> Option<String> {
        match self
            .handle(via)
            .call_blocking(Request::Read(Read::Get { key: key.into(), revision: None }, c), CALL)
        {
            Ok(Response::Kvs(kvs)) => kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            other => panic!("get {key} on node {via}: {other:?}"),
        }
    }

    /// Connections the three members refused so far.
    fn refused(&self) -> u64 {
        (1..=3).map(|id| self.handle(id).refused_connections()).sum()
    }

    /// Waits until the members refused more connections than `before`.
    fn wait_refused(&self, before: u64, who: &str) {
        wait_until(
            &format!("the members to refuse {who}"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok((self.refused() > before).then_some(())),
        )
        .expect("refused");
    }

    fn partition(&self, id: u64) {
        ProxyClient::new(self.proxy.clone()).request(&format!("partition {id}")).expect("partition");
    }

    fn heal(&self) {
        ProxyClient::new(self.proxy.clone()).request("heal").expect("heal");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.node.take();
        }
        let _ = ProxyClient::new(self.proxy.clone()).request("stop");
    }
}

fn make_certs(dir: &Path, n: u64, ca_name: &str) {
    let ca = pgraft_testkit::TestCa::new(ca_name).expect("a CA");
    ca.write_member_files(dir, n).expect("member certificates");
}

#[test]
fn three_members_elect_forward_and_survive_leader_loss() {
    let mut c = Cluster::start("three", 3, false);
    let leader = c.leader(Duration::from_secs(10));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // A write on a follower is forwarded to the leader and visible everywhere at once.
    assert!(matches!(c.put(follower, "k", "v1"), Ok(Response::Applied { .. })));
    for id in 1..=3 {
        assert_eq!(c.get(id, "k", Consistency::Linearizable).as_deref(), Some("v1"), "node {id}");
    }
    // A transfer asked on a follower, toward the other follower: raft forwards it to the
    // leader with the transferee as sender, which the transport lets through.
    let other = (1..=3).find(|id| *id != leader && *id != follower).expect("another follower");
    let r = c.handle(follower).call_blocking(Request::TransferLeader { to: other }, Duration::from_secs(10));
    assert!(matches!(r, Ok(Response::Reached(_))), "transfer asked on a follower: {r:?}");
    let leader = c.leader(Duration::from_secs(10));
    assert_eq!(leader, other);
    // Lose the leader: a new one within 3 election timeouts.
    let lost = Instant::now();
    c.members[(leader - 1) as usize].node.take();
    let new_leader = wait_until("a new leader", Duration::from_secs(10), Duration::from_millis(5), || {
        Ok(running_leader(&c))
    })
    .expect("new leader");
    let took = lost.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        took <= Duration::from_millis(3 * TIMING.election_timeout_ms),
        "new leader after {took:?}, more than 3 election timeouts"
    );
    assert!(matches!(c.put(new_leader, "k", "v2"), Ok(Response::Applied { .. })));
    // The old leader restarts from its files and catches up as a follower.
    c.boot((leader - 1) as usize, 2);
    wait_until("the old leader to catch up", Duration::from_secs(10), Duration::from_millis(20), || {
        Ok((c.get(leader, "k", Consistency::Serializable).as_deref() == Some("v2")).then_some(()))
    })
    .expect("caught up");
    assert_eq!(c.get(leader, "k", Consistency::Linearizable).as_deref(), Some("v2"));
    assert_eq!(
        c.handle(leader).status().map(|s| s.role),
        Some(Role::Follower),
        "the old leader rejoins as a follower"
    );
}

#[test]
fn a_value_larger_than_a_frame_is_replicated() {
    // Writing 20 MiB to disk holds the Raft loop for a while in a debug build on a busy
    // machine: an election timeout of seconds keeps leadership stable meanwhile.
    let timing = Timing { election_timeout_ms: 3000, heartbeat_interval_ms: 100 };
    let c = Cluster::start_with("big", 3, false, timing);
    let leader = c.leader(Duration::from_secs(20));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // Larger than a frame (16 MiB): it travels in chunks; there is no fixed size limit.
    let big = "x".repeat(20 << 20);
    let op = KvOp::Put { key: "big".into(), value: big.clone().into_bytes(), time_ms: 0 };
    let r = c.handle(follower).call_blocking(Request::Propose(Body::Kv(op)), Duration::from_secs(60));
    assert!(matches!(r, Ok(Response::Applied { .. })), "a 20 MiB put: {r:?}");
    for id in 1..=3 {
        assert_eq!(
            c.get(id, "big", Consistency::Linearizable).map(|v| v.len()),
            Some(big.len()),
            "node {id}"
        );
    }
}

#[test]
fn five_members_a_partitioned_minority_cannot_commit() {
    let c = Cluster::start("five", 5, false);
    let leader = c.leader(Duration::from_secs(10));
    // Cut the leader and one follower off: the minority side cannot commit.
    let other = (1..=5).find(|id| *id != leader).expect("a follower");
    c.partition(leader);
    c.partition(other);
    let majority: Vec<u64> = (1..=5).filter(|id| *id != leader && *id != other).collect();
    let r = c.put(other, "m", "minority");
    assert!(r.is_err(), "a write in the minority was acknowledged: {r:?}");
    // The majority elects a leader of its own and keeps writing.
    let started = Instant::now();
    wait_until("the majority to accept writes", Duration::from_secs(10), Duration::from_millis(20), || {
        Ok(c.put(majority[0], "m", "majority").ok().map(|_| ()))
    })
    .expect("majority writes");
    assert!(started.elapsed() < Duration::from_secs(10));
    c.heal();
    wait_until("the minority to catch up", Duration::from_secs(10), Duration::from_millis(20), || {
        Ok((c.get(other, "m", Consistency::Serializable).as_deref() == Some("majority")
            && c.get(leader, "m", Consistency::Serializable).as_deref() == Some("majority"))
        .then_some(()))
    })
    .expect("healed");
    assert_eq!(c.get(leader, "m", Consistency::Linearizable).as_deref(), Some("majority"));
}

#[test]
fn tls_peers_with_untrusted_certificates_or_other_clusters_are_refused() {
    let c = Cluster::start("tls", 3, true);
    let leader = c.leader(Duration::from_secs(10));
    assert!(matches!(c.put(leader, "secure", "yes"), Ok(Response::Applied { .. })));

    // An intruder with a certificate from another CA, claiming to be node 4 of this
    // cluster, dials every member: TLS refuses it before any pgraft byte is read.
    let rogue_dir = c.members[0].dir.parent().expect("cluster dir").join("rogue");
    make_certs(&rogue_dir.join("tls"), 4, "some other CA");
    let before = c.refused();
    let rogue = Node::start(NodeConfig {
        member: MemberConfig::new(4, c.cluster_id.clone(), 1),
        data_dir: rogue_dir.join("data"),
        listen: SocketAddr::from(([127, 0, 1, 44], free_port().expect("port"))),
        advertise: "127.0.1.44:1".into(),
        source_ip: Some(IpAddr::from([127, 0, 1, 44])),
        tls: Some(tls_files(&rogue_dir.join("tls"), 4)),
        secret: None,
        timing: TIMING,
        bootstrap: Bootstrap::Static(
            c.list.iter().cloned().chain([(4, "127.0.0.1:1".to_string())]).collect(),
        ),
    })
    .expect("the rogue node starts");
    c.wait_refused(before, "the rogue");
    assert_eq!(c.leader(Duration::from_secs(5)), leader, "the rogue disturbed the cluster");
    drop(rogue);

    // An impostor with a valid certificate of this cluster's CA, node 3's, speaking as
    // node 4: the certificate does not name pgraft-node-4.
    let before = c.refused();
    let impostor = Node::start(NodeConfig {
        member: MemberConfig::new(4, c.cluster_id.clone(), 1),
        data_dir: rogue_dir.join("impostor"),
        listen: SocketAddr::from(([127, 0, 1, 46], free_port().expect("port"))),
        advertise: "127.0.1.46:1".into(),
        source_ip: Some(IpAddr::from([127, 0, 1, 46])),
        tls: Some(tls_files(c.tls.as_ref().expect("tls dir"), 3)),
        secret: None,
        timing: TIMING,
        bootstrap: Bootstrap::Static(
            c.list.iter().cloned().chain([(4, "127.0.0.1:1".to_string())]).collect(),
        ),
    })
    .expect("the impostor starts");
    c.wait_refused(before, "the impostor");
    assert_eq!(c.leader(Duration::from_secs(5)), leader, "the impostor disturbed the cluster");
    drop(impostor);

    // A member of another cluster with a trusted certificate is refused at the handshake.
    let before = c.refused();
    let tls_dir = c.tls.clone().expect("tls dir");
    let stranger = Node::start(NodeConfig {
        member: MemberConfig::new(1, "another-cluster", 1),
        data_dir: rogue_dir.join("stranger"),
        listen: SocketAddr::from(([127, 0, 1, 45], free_port().expect("port"))),
        advertise: "127.0.1.45:1".into(),
        source_ip: Some(IpAddr::from([127, 0, 1, 45])),
        tls: Some(tls_files(&tls_dir, 1)),
        secret: None,
        timing: TIMING,
        bootstrap: Bootstrap::Static(vec![
            (1, "127.0.0.1:1".into()),
            (2, c.list[1].1.clone()),
            (3, c.list[2].1.clone()),
        ]),
    })
    .expect("the stranger starts");
    c.wait_refused(before, "the stranger");
    drop(stranger);
    assert_eq!(c.get(leader, "secure", Consistency::Linearizable).as_deref(), Some("yes"));
}

#[test]
fn a_learner_is_added_promoted_and_a_removed_member_added_back() {
    let c = Cluster::start("learner", 3, false);
    let leader = c.leader(Duration::from_secs(10));
    assert!(matches!(c.put(leader, "before", "learner"), Ok(Response::Applied { .. })));
    // A fourth member starts empty, waits to be added, and never campaigns meanwhile.
    let dir = c.members[0].dir.parent().expect("cluster dir").join("n4");
    let listen = SocketAddr::from(([127, 0, 1, 4], free_port().expect("port")));
    let fourth = Node::start(NodeConfig {
        member: MemberConfig::new(4, c.cluster_id.clone(), 1),
        data_dir: dir,
        listen,
        advertise: listen.to_string(),
        source_ip: Some(listen.ip()),
        tls: None,
        secret: None,
        timing: TIMING,
        bootstrap: Bootstrap::Join,
    })
    .expect("the fourth member starts");
    let h4 = fourth.handle();
    std::thread::sleep(Duration::from_millis(3 * TIMING.election_timeout_ms));
    assert_eq!(
        h4.status().map(|s| (s.role, s.term)),
        Some((Role::Follower, 0)),
        "an unadded member campaigned"
    );
    // Added as a learner: it receives the log but does not vote.
    let add = Request::AddMember { id: 4, address: listen.to_string(), learner: true };
    assert!(matches!(c.handle(leader).call_blocking(add, CALL), Ok(Response::Applied { .. })));
    wait_until("the learner to catch up", Duration::from_secs(10), Duration::from_millis(20), || {
        let read =
            Request::Read(Read::Get { key: "before".into(), revision: None }, Consistency::Serializable);
        Ok(matches!(h4.call_blocking(read, CALL), Ok(Response::Kvs(k)) if k.len() == 1).then_some(()))
    })
    .expect("learner caught up");
    let st = c.handle(leader).status().expect("status");
    assert!(st.learners.contains(&4) && !st.voters.contains(&4), "{st:?}");
    // Promoted to a voter, once the leader has seen it hold the log (until then the
    // promotion is refused as busy: a voter that has not caught up would count in a quorum).
    wait_until("the learner's promotion", Duration::from_secs(10), Duration::from_millis(50), || {
        let r = c.handle(leader).call_blocking(Request::PromoteLearner { id: 4 }, CALL);
        Ok(matches!(r, Ok(Response::Applied { .. })).then_some(()))
    })
    .expect("promoted");
    let st = c.handle(leader).status().expect("status");
    assert!(st.voters.contains(&4) && !st.learners.contains(&4), "{st:?}");
    // Re-adding it with the same address changes nothing; with another address is refused.
    let again = Request::AddMember { id: 4, address: listen.to_string(), learner: false };
    assert_eq!(c.handle(leader).call_blocking(again, CALL), Ok(Response::Unchanged));
    let moved = Request::AddMember { id: 4, address: "127.0.0.1:1".into(), learner: false };
    assert!(matches!(
        c.handle(leader).call_blocking(moved, CALL),
        Err(pgraft_core::Error::InvalidArgument(_))
    ));
    // Removed, then added back: it catches up again.
    assert!(matches!(
        c.handle(leader).call_blocking(Request::RemoveMember { id: 4 }, CALL),
        Ok(Response::Applied { .. })
    ));
    assert!(matches!(c.put(leader, "while-removed", "x"), Ok(Response::Applied { .. })));
    let back = Request::AddMember { id: 4, address: listen.to_string(), learner: false };
    assert!(matches!(c.handle(leader).call_blocking(back, CALL), Ok(Response::Applied { .. })));
    wait_until("the re-added member to catch up", Duration::from_secs(10), Duration::from_millis(20), || {
        let read = Request::Read(
            Read::Get { key: "while-removed".into(), revision: None },
            Consistency::Linearizable,
        );
        Ok(matches!(h4.call_blocking(read, CALL), Ok(Response::Kvs(k)) if k.len() == 1).then_some(()))
    })
    .expect("re-added member caught up");
    // Membership changes are the leader's: a follower names it.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    match c.handle(follower).call_blocking(Request::RemoveMember { id: 4 }, CALL) {
        Err(pgraft_core::Error::NotLeader { leader_id: Some(l), leader_address: Some(_) }) => {
            assert_eq!(l, leader)
        }
        other => panic!("expected NotLeader naming node {leader}, got {other:?}"),
    }
}

/// etcd's strict reconfiguration check: with one of three members cut off, removing
/// another would leave the leader alone among two voters, without a quorum; it is refused.
/// Removing the cut-off one leaves two voters that hear each other, and goes ahead.
#[test]
fn a_removal_that_would_leave_no_reachable_majority_is_refused() {
    let c = Cluster::start("strict", 3, false);
    let leader = c.leader(Duration::from_secs(10));
    let mut followers = (1..=3).filter(|id| *id != leader);
    let (gone, other) = (followers.next().expect("a follower"), followers.next().expect("another"));
    c.partition(gone);
    wait_until(
        "the leader to stop hearing the cut-off member",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let st = c.handle(leader).status().expect("status");
            Ok(st.unreachable.contains(&gone).then_some(()))
        },
    )
    .expect("unheard");
    match c.handle(leader).call_blocking(Request::RemoveMember { id: other }, CALL) {
        Err(pgraft_core::Error::Busy(why)) => assert!(why.contains("not a majority"), "{why}"),
        r => panic!("removing node {other} with node {gone} cut off: {r:?}"),
    }
    assert!(matches!(
        c.handle(leader).call_blocking(Request::RemoveMember { id: gone }, CALL),
        Ok(Response::Applied { .. })
    ));
    assert!(matches!(c.put(leader, "after", "removal"), Ok(Response::Applied { .. })));
    c.heal();
}

/// A proposal a follower forwards while its link to the leader is down is lost in
/// transit; the follower sends it again after an election timeout, and the state machine
/// applies it once even if both copies land.
#[test]
fn a_forwarded_proposal_lost_on_a_cut_link_is_sent_again_and_applied_once() {
    let c = Cluster::start("resend", 3, false);
    let leader = c.leader(Duration::from_secs(10));
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    assert!(matches!(c.put(follower, "warm", "up"), Ok(Response::Applied { .. })));
    let revision = |via: u64| match c
        .handle(via)
        .call_blocking(Request::Read(Read::Stats, Consistency::Linearizable), CALL)
    {
        Ok(Response::KvFigures(f)) => f.revision,
        other => panic!("stats on node {via}: {other:?}"),
    };
    let before = revision(leader);
    let resent_before = c.handle(follower).status().expect("status").counters.proposals_resent;
    let client = ProxyClient::new(c.proxy.clone());
    client.request(&format!("cut {follower} {leader}")).expect("cut");
    let h = c.handle(follower);
    let started = Instant::now();
    let put = std::thread::spawn(move || {
        let op = KvOp::Put { key: "resent".into(), value: b"once".to_vec(), time_ms: 0 };
        h.call_blocking(Request::Propose(Body::Kv(op)), Duration::from_secs(20))
    });
    // Shorter than an election timeout: the follower still follows the same leader.
    std::thread::sleep(Duration::from_millis(TIMING.election_timeout_ms / 5));
    client.request("heal").expect("heal");
    let r = put.join().expect("the client thread");
    let took = started.elapsed();
    assert!(matches!(r, Ok(Response::Applied { .. })), "the put through a cut link: {r:?}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}: the proposal waited for a timeout");
    let resent = c.handle(follower).status().expect("status").counters.proposals_resent;
    assert!(resent > resent_before, "the put was answered without being sent again");
    assert_eq!(c.get(leader, "resent", Consistency::Linearizable).as_deref(), Some("once"));
    assert_eq!(revision(leader), before + 1, "a proposal sent twice was applied twice");
    eprintln!("answered after {took:?}, proposals sent again: {}", resent - resent_before);
}

/// The running member that leads in its own view, if one does.
fn running_leader(c: &Cluster) -> Option<u64> {
    c.members
        .iter()
        .filter(|m| m.node.is_some())
        .find_map(|m| c.handle(m.id).status().filter(|s| s.role == Role::Leader).map(|s| s.id))
}

/// Makes each member lead once, so that every member's links to the others are up (a
/// member started again is reached through links that were backing off, and a vote
/// request sent on a link that is down is dropped).
fn warm_links(c: &Cluster) {
    for id in 1..=3 {
        let r = c.handle(id).call_blocking(Request::TransferLeader { to: id }, Duration::from_secs(10));
        assert!(matches!(r, Ok(Response::Reached(_))), "transfer to {id}: {r:?}");
        assert_eq!(c.leader(Duration::from_secs(10)), id);
    }
}

/// A member whose campaigns are held (its server cannot serve) lets the others win: when
/// the leader is lost, the member that is not held takes over, every round; and when every
/// remaining member is held, one is elected anyway, later.
#[test]
fn held_campaigns_let_the_other_members_win() {
    let mut c = Cluster::start("hold", 3, false);
    for round in 0..4u64 {
        c.leader(Duration::from_secs(10));
        warm_links(&c);
        let leader = c.leader(Duration::from_secs(10));
        let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let (held, free) = if round % 2 == 0 { (others[0], others[1]) } else { (others[1], others[0]) };
        c.handle(held).hold_campaigns(true);
        c.members[(leader - 1) as usize].node.take();
        let new_leader =
            wait_until("a new leader", Duration::from_secs(10), Duration::from_millis(5), || {
                Ok(running_leader(&c))
            })
            .expect("new leader");
        assert_eq!(new_leader, free, "round {round}: the member not held won");
        c.handle(held).hold_campaigns(false);
        c.boot((leader - 1) as usize, 2 + round);
    }
    // Both remaining members held: still a leader, after the held rounds.
    c.leader(Duration::from_secs(10));
    warm_links(&c);
    let leader = c.leader(Duration::from_secs(10));
    for id in (1..=3).filter(|id| *id != leader) {
        c.handle(id).hold_campaigns(true);
    }
    c.members[(leader - 1) as usize].node.take();
    let lost = Instant::now();
    wait_until("a leader among held members", Duration::from_secs(20), Duration::from_millis(5), || {
        Ok(running_leader(&c))
    })
    .expect("a leader");
    assert!(
        lost.elapsed() >= Duration::from_millis(2 * TIMING.election_timeout_ms),
        "held members waited at least two more election timeouts ({:?})",
        lost.elapsed()
    );
}

/// With a cluster secret, members prove it to each other by challenge and response; a
/// member with another secret, or none, is refused in both directions, and the cluster goes
/// on. The secret never crosses the wire (`transport/peer_auth.rs`).
#[test]
fn a_cluster_secret_is_proved_both_ways_and_strangers_are_refused() {
    let secret = ClusterSecret::new(b"t30 cluster secret, 32 bytes long").expect("a secret");
    let c = Cluster::start_opts("secret", 3, false, Some(secret), TIMING);
    let leader = c.leader(Duration::from_secs(10));
    assert!(matches!(c.put(leader, "guarded", "yes"), Ok(Response::Applied { .. })));
    let dir = c.members[0].dir.parent().expect("cluster dir").join("strangers");
    for (n, secret) in [
        (47u8, Some(ClusterSecret::new(b"a different secret of some length").expect("a secret"))),
        (48, None),
    ] {
        let before = c.refused();
        let ip = IpAddr::from([127, 0, 1, n]);
        let stranger = Node::start(NodeConfig {
            member: MemberConfig::new(4, c.cluster_id.clone(), 1),
            data_dir: dir.join(format!("s{n}")),
            listen: SocketAddr::new(ip, free_port().expect("port")),
            advertise: format!("{ip}:1"),
            source_ip: Some(ip),
            tls: None,
            secret,
            timing: TIMING,
            bootstrap: Bootstrap::Static(
                c.list.iter().cloned().chain([(4, "127.0.0.1:1".to_string())]).collect(),
            ),
        })
        .expect("the stranger starts");
        let h = stranger.handle();
        c.wait_refused(before, "the stranger");
        assert_eq!(c.leader(Duration::from_secs(5)), leader, "a stranger disturbed the cluster");
        // Nothing got through to the stranger either: it never learned a leader.
        assert_eq!(h.status().map(|s| s.leader_id), Some(0), "the stranger heard a member");
        drop(stranger);
    }
    assert_eq!(c.get(leader, "guarded", Consistency::Linearizable).as_deref(), Some("yes"));
}
