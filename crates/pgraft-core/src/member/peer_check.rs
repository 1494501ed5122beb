//! What a peer's message must look like before raft-rs sees it.
//!
//! raft-rs trusts its peers: a message that breaks an invariant it relies on is a panic
//! (`fatal!`), which here would be the Raft thread's death and a worker restart, and the
//! same message again after the restart. A member authenticated at the handshake may still
//! run a broken build, hold a damaged log or replay an old message, so every message from
//! the network passes these checks first; one that fails is dropped and counted
//! (`messages_dropped`), and raft's own retries recover (a leader probes again, a
//! candidate asks again, a client's request times out and is retried).
//!
//! ```text
//!   any                     to this member, from another id; not a kind only the member
//!                           itself makes (hup, beat, unreachable, snapshot status, check quorum)
//!   all other kinds         a term (0 is taken for a message the member made itself)
//!   propose, read index,    forwarded by a follower: the term is cleared (raft-rs would
//!   transfer leader         forward it again and refuse to send a set term); a proposal
//!                           carries entries
//!   append                  entries follow the index one by one, their terms never fall,
//!                           none above the message's; none rewrites a committed entry;
//!                           every payload decodes, or says it is of a newer format (a
//!                           newer build wrote it: stored, and applying stops there)
//!   append answer           acknowledges nothing past this member's last index
//!   heartbeat               commits no further than this member's log goes (clamped, and
//!                           logged: the member lost its Raft data)
//!   snapshot                metadata present; its state machine image decodes or says
//!                           it is of a newer format (checked in `Member::step`, which
//!                           keeps the decoded state for `process_ready`)
//! ```

use raft::prelude::{ConfChange, ConfChangeV2, EntryType, Message, MessageType};

use super::Member;
use crate::command::{is_newer_proposal_format, Proposal};
use crate::storage::LogStore;

impl<S: LogStore> Member<S> {
    /// Checks a peer's message (and clears what raft-rs must not see set); `Err` says why
    /// it must be dropped.
    pub(super) fn check_peer_message(&self, m: &mut Message) -> Result<(), String> {
        use MessageType::*;
        let me = self.cfg.id;
        if m.to != me {
            return Err(format!("addressed to node {}", m.to));
        }
        if m.from == me || m.from == 0 {
            return Err(format!("claims to come from node {}", m.from));
        }
        let log = &self.raw.raft.raft_log;
        let last = log.last_index();
        match m.get_msg_type() {
            MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => {
                return Err("a kind of message only a member makes for itself".into());
            }
            MsgPropose | MsgReadIndex | MsgTransferLeader => {
                if m.get_msg_type() != MsgTransferLeader && m.entries.is_empty() {
                    return Err("no entries (a proposal, or a read's context)".into());
                }
                m.term = 0;
            }
            // raft-rs takes term 0 for a message the member made for itself, and stepped
            // from a peer it breaks what raft-rs assumes of the network's (that the term
            // check already ran).
            _ if m.term == 0 => return Err("no term".into()),
            // raft-rs takes term 0 for "any term" at an index past its log.
            MsgAppend if m.log_term == 0 && m.index != 0 => {
                return Err(format!("says index {} has term 0", m.index));
            }
            // Only a leader of the message's term takes an acknowledgement (raft-rs ignores
            // it elsewhere), and its log never shrinks in its term; a member that led that
            // term, crashed and lost its unsynced tail still hears its followers' answers.
            MsgAppendResponse
                if !m.reject
                    && m.index > last
                    && self.raw.raft.state == raft::StateRole::Leader
                    && m.term == self.raw.raft.term =>
            {
                return Err(format!("acknowledges index {} beyond the last one here, {last}", m.index));
            }
            MsgSnapshot => {
                let Some(snap) = m.snapshot.as_ref() else {
                    return Err("a snapshot message without one".into());
                };
                match snap.metadata.as_ref() {
                    None => return Err("a snapshot without metadata".into()),
                    Some(meta) if meta.index == 0 || meta.term == 0 => {
                        return Err(format!("a snapshot at index {} of term {}", meta.index, meta.term))
                    }
                    Some(_) => {}
                }
            }
            _ => {}
        }
        let append = m.get_msg_type() == MsgAppend;
        if append || m.get_msg_type() == MsgPropose {
            let committed = log.committed;
            let mut term = m.log_term;
            for (i, e) in m.entries.iter().enumerate() {
                if append && (e.index != m.index.saturating_add(1 + i as u64) || e.term == 0) {
                    return Err(format!(
                        "entry {} of term {} does not follow index {}",
                        e.index, e.term, m.index
                    ));
                }
                if append && (e.term < term || e.term > m.term) {
                    return Err(format!("entry {} has term {} out of order", e.index, e.term));
                }
                term = e.term;
                if append && e.index <= committed {
                    // raft-rs's log (its unwritten entries first, then the store); an
                    // index it no longer holds (compacted) cannot be compared.
                    match log.term(e.index) {
                        Ok(t) if t != 0 && t != e.term => {
                            return Err(format!("entry {} rewrites a committed entry of term {t}", e.index));
                        }
                        _ => {}
                    }
                }
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        if let Err(err) = Proposal::decode(&e.data) {
                            if !is_newer_proposal_format(&e.data) {
                                return Err(format!("entry {} does not decode: {err}", e.index));
                            }
                        }
                    }
                    EntryType::EntryConfChangeV2 => {
                        if let Err(err) = <ConfChangeV2 as prost::Message>::decode(e.data.as_ref()) {
                            return Err(format!("configuration change {} does not decode: {err}", e.index));
                        }
                    }
                    EntryType::EntryConfChange => {
                        if let Err(err) = <ConfChange as prost::Message>::decode(e.data.as_ref()) {
                            return Err(format!("configuration change {} does not decode: {err}", e.index));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
