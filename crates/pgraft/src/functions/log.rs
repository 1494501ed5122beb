//! The replicated log: raw entries.

use pgraft_core::command::Body;
use pgraft_core::{Request, Response};
use pgrx::prelude::*;

use crate::bridge;

/// Replicates an entry through Raft; returns once it is committed and applied here.
#[pg_extern]
fn pgraft_replicate_entry(entry_data: &str) -> bool {
    matches!(
        bridge::raft(Request::Propose(Body::Raw(entry_data.as_bytes().to_vec()))),
        Response::Applied { .. }
    )
}
