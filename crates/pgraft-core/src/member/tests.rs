//! Members on a hand-driven network: every message is delivered (or held back) by the
//! test, and time moves only when it ticks.

use raft::prelude::{Message, MessageType};

use super::{Member, MemberConfig, Token};
use crate::request::{Consistency, Read, Request, Response};

type Net = super::hand_net::HandNet;

impl Net {
    fn answered(&mut self, id: u64, token: Token) -> bool {
        self.member(id).take_answers().iter().any(|(t, r)| *t == token && matches!(r, Ok(Response::Kvs(_))))
    }
}

/// A linearizable read that reaches a new leader before it has committed in its term
/// (its own, or a follower's forwarded request) is answered as soon as it has, not an
/// election timeout later.
#[test]
fn reads_wait_for_the_new_leaders_first_commit_not_for_a_timeout() {
    let mut net = Net::three();
    // Node 1 campaigns and wins; the followers' answers to its first append wait.
    let to_leader_acks = |m: &Message| m.to == 1 && m.get_msg_type() == MessageType::MsgAppendResponse;
    let mut acks = Vec::new();
    for _ in 0..40 {
        net.tick_all();
        acks.extend(net.pump(to_leader_acks));
        if net.member(1).role() == crate::Role::Leader && net.member(2).leader_id() == 1 {
            break;
        }
    }
    assert_eq!(net.member(1).role(), crate::Role::Leader);
    assert!(!acks.is_empty(), "the leader's first append was answered");
    let get = || Request::Read(Read::Get { key: "k".into(), revision: None }, Consistency::Linearizable);
    net.member(1).submit(1, get());
    net.member(2).submit(2, get());
    acks.extend(net.pump(to_leader_acks));
    assert!(!net.answered(1, 1) && !net.answered(2, 2), "answered before the leader committed");
    // The acknowledgements arrive: the leader commits its first entry and both reads are
    // answered, without a single tick.
    for m in acks {
        net.member(1).step(m).expect("step");
    }
    net.pump(|_| false);
    let (on_leader, on_follower) = (net.answered(1, 1), net.answered(2, 2));
    assert!(on_leader && on_follower, "leader's read answered: {on_leader}, follower's: {on_follower}");
}

/// A member whose snapshot cannot be read refuses to start and says why; it does not start
/// on an empty state machine with the entries after the snapshot applied on top of nothing.
/// Only a store with no snapshot yet starts empty.
#[test]
fn a_member_whose_snapshot_cannot_be_read_refuses_to_start() {
    use crate::storage::SegmentStore;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let dir = std::env::temp_dir().join(format!("pgraft-member-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = MemberConfig::new(1, "t", 1);
    {
        let empty = SegmentStore::open(&dir).expect("open");
        Member::new(cfg.clone(), empty, &logger).expect("a store with no snapshot yet starts empty");
    }
    {
        let mut store = SegmentStore::open(&dir).expect("open");
        Member::bootstrap(&mut store, &[(1, "t:1".into())]).expect("bootstrap");
        let m = Member::new(cfg.clone(), store, &logger).expect("a readable snapshot");
        assert_eq!(m.state().members.len(), 1);
    }
    let images: Vec<_> = std::fs::read_dir(dir.join("snap"))
        .expect("list the images")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let mut bytes = std::fs::read(&images[0]).expect("read the image");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&images[0], bytes).expect("corrupt the image");
    let store = SegmentStore::open(&dir).expect("the log itself opens");
    let err =
        Member::new(cfg, store, &logger).err().expect("a member on an unreadable snapshot must not start");
    let text = err.to_string();
    assert!(text.contains("refusing to start") && text.contains("checksum"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Messages raft-rs would panic on (each one did, found by the `peer_messages` fuzz target)
/// are dropped and counted, and the cluster goes on committing.
#[test]
fn messages_raft_rs_would_panic_on_are_dropped_and_counted() {
    use raft::prelude::Entry;
    let mut net = Net::three();
    net.elect_one();
    let (term, last) = (net.member(1).term(), net.member(1).status().last_index);
    let msg = |t: MessageType, from: u64, to: u64, term: u64| Message {
        msg_type: t as i32,
        from,
        to,
        term,
        ..Default::default()
    };
    let forged = [
        // To the leader: a read index without its context; an acknowledgement past its log.
        (1, msg(MessageType::MsgReadIndex, 2, 1, 0)),
        (1, Message { index: last + 10, ..msg(MessageType::MsgAppendResponse, 2, 1, term) }),
        // To a follower: a vote request without a term; a proposal without entries; a
        // transfer with a term set (raft-rs forwards it and refuses to send it).
        (2, msg(MessageType::MsgRequestVote, 3, 2, 0)),
        (2, msg(MessageType::MsgPropose, 3, 2, term)),
        (2, msg(MessageType::MsgTransferLeader, 3, 2, term)),
        // An append whose entry rewrites a committed one, and one that says an index past
        // the log has term 0.
        (
            2,
            Message {
                index: 1,
                log_term: 1,
                entries: vec![Entry { index: 2, term: term + 1, ..Default::default() }],
                ..msg(MessageType::MsgAppend, 1, 2, term + 1)
            },
        ),
        (
            2,
            Message {
                index: last + 5,
                log_term: 0,
                commit: last + 5,
                ..msg(MessageType::MsgAppend, 1, 2, term)
            },
        ),
        // A read index answer with no term commits nowhere.
        (2, Message { index: last + 5, ..msg(MessageType::MsgReadIndexResp, 1, 2, 0) }),
    ];
    let n = forged.len() as u64;
    let transfer = forged.iter().filter(|(to, _)| *to == 2).count() as u64;
    for (to, m) in forged {
        net.member(to).step(m).expect("a dropped message is not an error");
    }
    assert_eq!(net.member(1).messages_dropped().0, n - transfer);
    // The transfer is not dropped: its term is cleared and the follower forwards it.
    assert_eq!(net.member(2).messages_dropped().0, transfer - 1, "{}", net.member(2).messages_dropped().1);
    net.pump(|_| false);
    net.member(1).submit(7, Request::Propose(crate::command::Body::Raw(b"after".to_vec())));
    net.pump(|_| false);
    let answers = net.member(1).take_answers();
    assert!(answers.iter().any(|(t, r)| *t == 7 && r.is_ok()), "{answers:?}");
}

/// An entry written by a newer build (a payload format this one does not know) stops
/// applying on each member that meets it: none fails (which, restarted, would fail again on
/// the same entry: a crash loop), each says why and answers what needs its state machine
/// at once, the log goes on, the leader hands its leadership on, and a restart on the same
/// build stops at the same place.
#[test]
fn an_entry_this_build_cannot_read_stops_applying_and_waits() {
    use crate::command::Body;
    use crate::kv::KvOp;
    use crate::Error;
    let mut net = Net::three();
    net.elect_one();
    let put = |k: &str| {
        Request::Propose(Body::Kv(KvOp::Put { key: k.into(), value: b"v".to_vec(), time_ms: 1000 }))
    };
    net.member(1).submit(1, put("before"));
    net.pump(|_| false);
    assert!(
        net.member(1).take_answers().iter().any(|(t, r)| *t == 1 && r.is_ok()),
        "the first write applies"
    );
    let applied = net.member(1).state().applied_index;
    // A newer build's entry: proposal format 99.
    net.member(1).raw.propose(vec![], vec![99, 1, 2, 3]).expect("propose");
    net.pump(|_| false);
    let bad = applied + 1;
    for id in 1..=3 {
        let m = net.member(id);
        let why = m.apply_blocked().map(str::to_string).unwrap_or_default();
        assert!(why.contains(&format!("entry {bad} cannot be read")), "node {id}: {why:?}");
        assert_eq!(m.state().applied_index, applied, "node {id} applied past the entry");
        assert_eq!(m.status().apply_blocked.as_deref(), Some(why.as_str()));
    }
    // What needs the state machine is refused at once, with the reason.
    let get = Request::Read(Read::Get { key: "before".into(), revision: None }, Consistency::Serializable);
    net.member(2).submit(2, get);
    let answers = net.member(2).take_answers();
    assert!(
        matches!(answers.as_slice(), [(2, Err(Error::ApplyBlocked(why)))] if why.contains("newer pgraft")),
        "{answers:?}"
    );
    // The log goes on (entries are stored and committed, not applied), and the leader
    // hands its leadership to another member.
    let commit = net.member(2).status().commit;
    for _ in 0..200 {
        net.tick_all();
        net.pump(|_| false);
        if net.member(1).role() != crate::Role::Leader && net.member(2).status().commit > commit {
            break;
        }
    }
    assert_ne!(net.member(1).role(), crate::Role::Leader, "the blocked leader kept its leadership");
    assert!(net.member(2).status().commit > commit, "nothing was committed after the entry");
    // A restart on the same build: it stops at the same entry, without an error.
    let store = net.member(3).store().clone();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut m = Member::new(MemberConfig::new(3, "t", 2), store, &logger).expect("restart");
    while m.has_ready() {
        m.process_ready().expect("a restart does not fail on the entry");
    }
    assert_eq!(m.state().applied_index, applied);
    assert!(m.apply_blocked().is_some_and(|w| w.contains(&format!("entry {bad} cannot be read"))));
}

/// Every member announces the entry format it reads through the log; an entry of a format
/// some member does not read is refused with the members it waits for, and a member whose
/// replicated announcement is not its own (started on another build) announces again.
#[test]
fn entries_are_proposed_only_in_a_format_every_member_announced() {
    use super::cluster_format::{cluster_format, member_formats};
    use crate::command::{format_setting, Body, Proposal, PROPOSAL_FORMAT};
    use crate::kv::KvOp;
    use crate::Error;
    let mut net = Net::three();
    net.elect_one();
    let announced = |net: &mut Net| member_formats(net.member(1).state()).iter().all(|(_, _, a)| *a);
    for _ in 0..100 {
        if announced(&mut net) {
            break;
        }
        net.tick_all();
        net.pump(|_| false);
    }
    for id in 1..=3 {
        let formats = member_formats(net.member(id).state());
        assert_eq!(
            formats,
            vec![(1, PROPOSAL_FORMAT, true), (2, PROPOSAL_FORMAT, true), (3, PROPOSAL_FORMAT, true)]
        );
        assert_eq!(cluster_format(net.member(id).state()), PROPOSAL_FORMAT);
    }
    // Node 3 says it reads only format 1 (a build from before `low`), as that build would.
    let origin = crate::command::Origin { node: 3, incarnation: 99, seq: 1 };
    let body = Body::SetConfig { name: format_setting(3), value: "1".into() };
    let data = Proposal { origin, time_ms: 0, body, low: 0 }.encode();
    net.member(1).raw.propose(vec![], data).expect("propose");
    net.pump(|_| false);
    assert_eq!(cluster_format(net.member(1).state()), 1);
    let put = Request::Propose(Body::Kv(KvOp::Put { key: "k".into(), value: b"v".to_vec(), time_ms: 1 }));
    net.member(1).submit(1, put.clone());
    let answers = net.member(1).take_answers();
    assert!(
        matches!(answers.as_slice(), [(1, Err(Error::NotUpgraded(why)))]
            if why.contains("node 3 reads up to format 1") && !why.contains("node 2")),
        "{answers:?}"
    );
    // Node 3 runs this build: it sees the replicated value is not its own and says so again.
    for _ in 0..100 {
        net.tick_all();
        net.pump(|_| false);
        if cluster_format(net.member(1).state()) == PROPOSAL_FORMAT {
            break;
        }
    }
    assert_eq!(cluster_format(net.member(1).state()), PROPOSAL_FORMAT, "node 3 announced again");
    net.member(1).submit(2, put);
    net.pump(|_| false);
    let answers = net.member(1).take_answers();
    assert!(answers.iter().any(|(t, r)| *t == 2 && r.is_ok()), "{answers:?}");
}
