//! A follower's messages that promise a write (append answers, votes), held until the log
//! says the write is durable, and sent by whichever thread learns it first.
//!
//! ```text
//!  Raft thread: Ready N written (persist_async) ──▶ hold(N, answers)
//!  log I/O thread: sync of N done ──▶ durable(N): answers ≤ N sent at once, then wakes
//!  Raft thread: poll_durable says N ──▶ release(N): what is left ≤ N (none, usually)
//! ```
//!
//! Without a sender (the simulation, unit tests) only the Raft thread releases them. With
//! one (`node.rs` gives the transport), an append answer leaves from the I/O thread the
//! moment its sync returns: it does not wait for the Raft thread to be scheduled, which on
//! a machine with more runnable threads than cores is the larger part of a follower's
//! answer time. Both paths take the same lock, so held messages leave in Ready order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use raft::prelude::Message;

/// Sends one message to its peer; must not block.
pub type Sender = Arc<dyn Fn(Message) + Send + Sync>;

/// See the module's documentation.
#[derive(Default)]
pub struct HeldMessages {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The highest `Ready` number the log reported durable.
    durable: u64,
    /// Messages by the `Ready` whose write they promise, in order.
    queue: VecDeque<(u64, Vec<Message>)>,
    send: Option<Sender>,
    /// Messages the I/O thread sent.
    sent_by_io: u64,
}

impl HeldMessages {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets [`HeldMessages::durable`] send what a write releases itself.
    pub fn set_sender(&self, send: Sender) {
        self.lock().send = Some(send);
    }

    /// Holds `msgs` until `Ready` `number` is durable; returns them if it already is.
    pub(crate) fn hold(&self, number: u64, msgs: Vec<Message>) -> Vec<Message> {
        let mut g = self.lock();
        if number <= g.durable {
            return msgs;
        }
        g.queue.push_back((number, msgs));
        Vec::new()
    }

    /// Called on the log's I/O thread right after a sync: every `Ready` up to `number` is
    /// durable. Sends the messages that waited for them, if a sender is set.
    pub fn durable(&self, number: u64) {
        let mut g = self.lock();
        g.durable = g.durable.max(number);
        let Some(send) = g.send.clone() else { return };
        // Sent under the lock: a `release` on the Raft thread cannot overtake them.
        while g.queue.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = g.queue.pop_front() {
                g.sent_by_io += msgs.len() as u64;
                msgs.into_iter().for_each(|m| send(m));
            }
        }
    }

    /// The member learned that every `Ready` up to `number` is durable: the messages that
    /// waited for them and are not sent yet.
    pub(crate) fn release(&self, number: u64) -> Vec<Message> {
        let mut g = self.lock();
        g.durable = g.durable.max(number);
        let mut out = Vec::new();
        while g.queue.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = g.queue.pop_front() {
                out.extend(msgs);
            }
        }
        out
    }

    /// How many held messages the I/O thread sent.
    pub fn sent_by_io(&self) -> u64 {
        self.lock().sent_by_io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: u64) -> Message {
        Message { to, ..Default::default() }
    }

    #[test]
    fn messages_leave_once_their_write_is_durable_by_whichever_thread_learns_it() {
        let held = HeldMessages::default();
        assert!(held.hold(1, vec![msg(1)]).is_empty());
        assert!(held.hold(2, vec![msg(2)]).is_empty());
        // No sender: the I/O thread only records, the Raft thread releases.
        held.durable(1);
        assert_eq!(held.release(1).iter().map(|m| m.to).collect::<Vec<_>>(), vec![1]);
        // A write already durable: its messages leave at once.
        assert_eq!(held.hold(1, vec![msg(9)]).len(), 1);

        let sent = Arc::new(Mutex::new(Vec::new()));
        let s2 = Arc::clone(&sent);
        held.set_sender(Arc::new(move |m: Message| s2.lock().unwrap().push(m.to)));
        assert!(held.hold(3, vec![msg(3)]).is_empty());
        held.durable(2);
        assert_eq!(*sent.lock().unwrap(), vec![2], "3 is not durable yet");
        held.durable(3);
        assert_eq!(*sent.lock().unwrap(), vec![2, 3]);
        assert!(held.release(3).is_empty(), "sent once");
        assert_eq!(held.sent_by_io(), 2);
    }
}
