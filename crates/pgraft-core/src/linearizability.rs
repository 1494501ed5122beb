//! A linearizability checker for histories of KV operations, per key.
//!
//! The algorithm is Wing and Gong's search with Lowe's memoisation, the one porcupine
//! implements: walk the history's call and return events in time order, tentatively
//! linearize an operation whose call has been seen, backtrack when a return event is
//! reached whose operation could not be placed, and never explore the same (set of
//! linearized operations, state) twice. Keys are independent registers, so each key's
//! sub-history is checked on its own.
//!
//! Operations whose outcome is unknown (a timeout, a lost connection) have no return
//! event: they may take effect at any point after their call, or never, exactly as
//! Jepsen treats `:info` operations.

use std::collections::{BTreeMap, HashSet};

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Write a value.
    Put(String),
    /// Read the key.
    Get,
    /// Delete the key.
    Delete,
    /// If the key's value is `expect` (`None`: absent), set it to `new` (`None`: delete).
    Cas {
        /// The value compared.
        expect: Option<String>,
        /// What to write when it matches.
        new: Option<String>,
    },
}

/// What the client heard back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A write succeeded.
    Ok,
    /// A read returned this.
    Value(Option<String>),
    /// A compare-and-swap answered whether it matched.
    Cas(bool),
    /// No answer: the operation may or may not have happened.
    Unknown,
}

/// One operation of a history. Times are any monotonic clock shared by all clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it (for reports).
    pub client: u64,
    /// The key.
    pub key: String,
    /// The request.
    pub call: Call,
    /// The answer.
    pub ret: Ret,
    /// When it was invoked.
    pub invoke: u64,
    /// When the answer arrived; `None` when it never did.
    pub complete: Option<u64>,
}

type State = Option<String>;

/// The register model: the states an operation can leave behind, given the state before
/// it and what the client heard. Empty: impossible here.
fn step(state: &State, call: &Call, ret: &Ret) -> Vec<State> {
    match (call, ret) {
        (Call::Put(v), Ret::Ok | Ret::Unknown) => vec![Some(v.clone())],
        (Call::Get, Ret::Value(x)) => {
            if x == state {
                vec![state.clone()]
            } else {
                vec![]
            }
        }
        (Call::Get, Ret::Unknown) => vec![state.clone()],
        (Call::Delete, Ret::Ok | Ret::Unknown) => vec![None],
        (Call::Cas { expect, new }, Ret::Cas(true)) => {
            if state == expect {
                vec![new.clone()]
            } else {
                vec![]
            }
        }
        (Call::Cas { expect, .. }, Ret::Cas(false)) => {
            if state != expect {
                vec![state.clone()]
            } else {
                vec![]
            }
        }
        (Call::Cas { expect, new }, Ret::Unknown) => {
            if state == expect {
                vec![new.clone()]
            } else {
                vec![state.clone()]
            }
        }
        // An answer that does not fit the call never linearizes.
        _ => vec![],
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// This key's history is not; the operations are listed for the report.
    Violation {
        /// The key.
        key: String,
        /// Its operations, in invocation order.
        ops: Vec<Operation>,
    },
}

/// Checks a whole history, key by key. Every key starts absent.
pub fn check(history: &[Operation]) -> Verdict {
    match check_bounded(history, usize::MAX) {
        Ok(v) => v,
        Err(key) => unreachable!("an unbounded search gave up on key {key}"),
    }
}

/// [`check`] that explores at most `max_states` (linearized set, state) pairs per key, so
/// a pathological history (many concurrent operations without answers) cannot take the
/// machine. `Err(key)`: the search of that key was abandoned undecided.
pub fn check_bounded(history: &[Operation], max_states: usize) -> Result<Verdict, String> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        match check_key(&ops, max_states) {
            Some(true) => {}
            Some(false) => {
                let mut ops: Vec<Operation> = ops.into_iter().cloned().collect();
                ops.sort_by_key(|o| o.invoke);
                return Ok(Verdict::Violation { key: key.to_string(), ops });
            }
            None => return Err(key.to_string()),
        }
    }
    Ok(Verdict::Linearizable)
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A doubly linked list of events, in which an operation's call and return can be lifted
/// out and put back in O(1).
struct Events {
    ev: Vec<Event>,
    head: Option<usize>,
    /// For each op, the index of its call and return events.
    of_op: Vec<(usize, Option<usize>)>,
}

impl Events {
    fn new(ops: &[&Operation]) -> Self {
        // (time, is_return, op): calls sort before returns at equal times, which makes
        // simultaneous operations concurrent (the permissive reading).
        let mut order: Vec<(u64, bool, usize)> = Vec::new();
        for (i, o) in ops.iter().enumerate() {
            order.push((o.invoke, false, i));
            if let Some(c) = o.complete {
                order.push((c, true, i));
            }
        }
        order.sort();
        let n = order.len();
        let mut of_op = vec![(0, None); ops.len()];
        let ev = order
            .iter()
            .enumerate()
            .map(|(pos, &(_, is_ret, op))| {
                if is_ret {
                    of_op[op].1 = Some(pos);
                } else {
                    of_op[op].0 = pos;
                }
                Event {
                    op,
                    is_call: !is_ret,
                    prev: pos.checked_sub(1),
                    next: (pos + 1 < n).then_some(pos + 1),
                }
            })
            .collect();
        Self { ev, head: (n > 0).then_some(0), of_op }
    }

    fn unlink(&mut self, i: usize) {
        let Event { prev, next, .. } = self.ev[i];
        match prev {
            Some(p) => self.ev[p].next = next,
            None => self.head = next,
        }
        if let Some(n) = next {
            self.ev[n].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Event { prev, next, .. } = self.ev[i];
        match prev {
            Some(p) => self.ev[p].next = Some(i),
            None => self.head = Some(i),
        }
        if let Some(n) = next {
            self.ev[n].prev = Some(i);
        }
    }

    /// Removes an operation's events (return first, so links stay consistent).
    fn lift(&mut self, op: usize) {
        let (c, r) = self.of_op[op];
        self.unlink(c);
        if let Some(r) = r {
            self.unlink(r);
        }
    }

    /// Puts them back, in reverse order of removal.
    fn unlift(&mut self, op: usize) {
        let (c, r) = self.of_op[op];
        if let Some(r) = r {
            self.relink(r);
        }
        self.relink(c);
    }
}

struct Frame {
    call_event: usize,
    op: usize,
    before: State,
    alternatives: Vec<State>,
}

/// `Some(linearizable?)`, or `None` when more than `max_states` states were explored.
fn check_key(ops: &[&Operation], max_states: usize) -> Option<bool> {
    let n = ops.len();
    let mut events = Events::new(ops);
    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state: State = None;
    let mut cursor = events.head;
    let set = |bits: &mut Vec<u64>, i: usize, on: bool| {
        if on {
            bits[i / 64] |= 1 << (i % 64);
        } else {
            bits[i / 64] &= !(1 << (i % 64));
        }
    };
    loop {
        let Some(e) = cursor else {
            // Only operations without a return event may remain: place them at the end,
            // where they affect nothing.
            return Some(true);
        };
        if events.head.is_none() {
            return Some(true);
        }
        if cache.len() > max_states {
            return None;
        }
        let ev = events.ev[e];
        if ev.is_call {
            let op = ops[ev.op];
            let mut alternatives = step(&state, &op.call, &op.ret);
            let mut placed = false;
            while let Some(next_state) = alternatives.pop() {
                set(&mut linearized, ev.op, true);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push(Frame { call_event: e, op: ev.op, before: state.clone(), alternatives });
                    state = next_state;
                    events.lift(ev.op);
                    cursor = events.head;
                    placed = true;
                    break;
                }
                set(&mut linearized, ev.op, false);
            }
            if !placed {
                cursor = ev.next;
            }
        } else {
            // A return whose operation is not linearized yet: undo the last choice, try its
            // other outcomes, else move on past its call.
            let Some(mut frame) = stack.pop() else { return Some(false) };
            events.unlift(frame.op);
            state = frame.before.clone();
            set(&mut linearized, frame.op, false);
            let mut placed = false;
            while let Some(next_state) = frame.alternatives.pop() {
                set(&mut linearized, frame.op, true);
                if cache.insert((linearized.clone(), next_state.clone())) {
                    let op = frame.op;
                    stack.push(Frame {
                        call_event: frame.call_event,
                        op,
                        before: state.clone(),
                        alternatives: std::mem::take(&mut frame.alternatives),
                    });
                    state = next_state;
                    events.lift(op);
                    cursor = events.head;
                    placed = true;
                    break;
                }
                set(&mut linearized, frame.op, false);
            }
            if !placed {
                cursor = events.ev[frame.call_event].next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: Call, ret: Ret, invoke: u64, complete: Option<u64>) -> Operation {
        Operation { client, key: "k".into(), call, ret, invoke, complete }
    }
    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }
    fn val(v: Option<&str>) -> Ret {
        Ret::Value(v.map(str::to_string))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, put("a"), Ret::Ok, 0, Some(1)),
            op(1, Call::Get, val(Some("a")), 2, Some(3)),
            op(1, Call::Delete, Ret::Ok, 4, Some(5)),
            op(1, Call::Get, val(None), 6, Some(7)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        let h = vec![
            op(1, put("a"), Ret::Ok, 0, Some(1)),
            op(2, put("b"), Ret::Ok, 2, Some(3)),
            op(3, Call::Get, val(Some("a")), 4, Some(5)),
        ];
        assert!(matches!(check(&h), Verdict::Violation { .. }));
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        let h = vec![
            op(1, put("a"), Ret::Ok, 0, Some(10)),
            op(2, put("b"), Ret::Ok, 1, Some(9)),
            op(3, Call::Get, val(Some("a")), 11, Some(12)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
        let h = vec![
            op(1, put("a"), Ret::Ok, 0, Some(10)),
            op(2, put("b"), Ret::Ok, 1, Some(9)),
            op(3, Call::Get, val(Some("b")), 11, Some(12)),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn reads_cannot_flip_back() {
        // Two reads during a write: a then b is fine, b then a is not (once b is seen, the
        // write has happened).
        let ok = vec![
            op(1, put("b"), Ret::Ok, 0, Some(10)),
            op(2, Call::Get, val(None), 1, Some(2)),
            op(3, Call::Get, val(Some("b")), 3, Some(4)),
        ];
        assert_eq!(check(&ok), Verdict::Linearizable);
        let bad = vec![
            op(1, put("b"), Ret::Ok, 0, Some(10)),
            op(2, Call::Get, val(Some("b")), 1, Some(2)),
            op(3, Call::Get, val(None), 3, Some(4)),
        ];
        assert!(matches!(check(&bad), Verdict::Violation { .. }));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        // A timed-out write that a later read sees.
        let seen = vec![op(1, put("x"), Ret::Unknown, 0, None), op(2, Call::Get, val(Some("x")), 5, Some(6))];
        assert_eq!(check(&seen), Verdict::Linearizable);
        // ...or does not see.
        let unseen = vec![op(1, put("x"), Ret::Unknown, 0, None), op(2, Call::Get, val(None), 5, Some(6))];
        assert_eq!(check(&unseen), Verdict::Linearizable);
        // But a read cannot see a value nobody wrote.
        let invented =
            vec![op(1, put("x"), Ret::Unknown, 0, None), op(2, Call::Get, val(Some("y")), 5, Some(6))];
        assert!(matches!(check(&invented), Verdict::Violation { .. }));
        // An unknown write cannot take effect before it was invoked.
        let early =
            vec![op(2, Call::Get, val(Some("x")), 0, Some(1)), op(1, put("x"), Ret::Unknown, 2, None)];
        assert!(matches!(check(&early), Verdict::Violation { .. }));
    }

    #[test]
    fn compare_and_swap() {
        let cas = |e: Option<&str>, n: Option<&str>| Call::Cas {
            expect: e.map(str::to_string),
            new: n.map(str::to_string),
        };
        let ok = vec![
            op(1, cas(None, Some("l1")), Ret::Cas(true), 0, Some(1)),
            op(2, cas(None, Some("l2")), Ret::Cas(false), 2, Some(3)),
            op(1, cas(Some("l1"), None), Ret::Cas(true), 4, Some(5)),
            op(2, Call::Get, val(None), 6, Some(7)),
        ];
        assert_eq!(check(&ok), Verdict::Linearizable);
        // Two clients both acquire the same free lock, one after the other: impossible.
        let double = vec![
            op(1, cas(None, Some("l1")), Ret::Cas(true), 0, Some(1)),
            op(2, cas(None, Some("l2")), Ret::Cas(true), 2, Some(3)),
        ];
        assert!(matches!(check(&double), Verdict::Violation { .. }));
        // An unknown CAS may have succeeded or failed.
        let unknown = vec![
            op(1, put("a"), Ret::Ok, 0, Some(1)),
            op(2, cas(Some("a"), Some("b")), Ret::Unknown, 2, None),
            op(3, Call::Get, val(Some("b")), 3, Some(4)),
            op(3, Call::Get, val(Some("b")), 5, Some(6)),
        ];
        assert_eq!(check(&unknown), Verdict::Linearizable);
    }

    #[test]
    fn a_bounded_search_gives_up_instead_of_exhausting_memory() {
        // Many overlapping writes without answers and reads that contradict each other
        // force a wide search.
        let mut h = Vec::new();
        for i in 0..40u64 {
            h.push(op(i, put(&format!("v{i}")), Ret::Unknown, i, None));
        }
        for i in 0..40u64 {
            h.push(op(
                100 + i,
                Call::Get,
                val(Some(&format!("v{}", 39 - i))),
                100 + 2 * i,
                Some(101 + 2 * i),
            ));
        }
        h.push(op(200, Call::Get, val(Some("nobody")), 300, Some(301)));
        assert_eq!(check_bounded(&h, 50), Err("k".to_string()));
        let fine = vec![op(1, put("a"), Ret::Ok, 0, Some(1))];
        assert_eq!(check_bounded(&fine, 50), Ok(Verdict::Linearizable));
    }

    #[test]
    fn keys_are_independent() {
        let mut h = vec![op(1, put("a"), Ret::Ok, 0, Some(1))];
        h.push(Operation { key: "other".into(), ..op(2, Call::Get, val(None), 2, Some(3)) });
        assert_eq!(check(&h), Verdict::Linearizable);
        h.push(Operation { key: "other".into(), ..op(2, Call::Get, val(Some("zz")), 4, Some(5)) });
        match check(&h) {
            Verdict::Violation { key, .. } => assert_eq!(key, "other"),
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn many_concurrent_writers_stay_fast() {
        // 8 clients x 30 rounds of overlapping puts and reads of the last value.
        let mut h = Vec::new();
        let mut t = 0;
        for round in 0..30u64 {
            for c in 0..8u64 {
                h.push(op(c, put(&format!("v{round}-{c}")), Ret::Ok, t + c, Some(t + 20 + c)));
            }
            t += 40;
            h.push(op(99, Call::Get, val(Some(&format!("v{round}-7"))), t - 5, Some(t - 4)));
        }
        // The read at t-5 follows all writes of the round (they completed by t-20+7),
        // and v{round}-7 is one possible last write.
        assert_eq!(check(&h), Verdict::Linearizable);
    }
}
