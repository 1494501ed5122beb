//! Failover in the extension: the worker's control loop ([`reconciler`]) and what it
//! touches in PostgreSQL: the server's state ([`server_probe`]), its settings and signals
//! ([`auto_conf`]), the local fence on new sessions ([`gate`]), and the helper that brings a
//! fenced primary back as a standby ([`rejoin`]). The rules themselves
//! are `pgraft_core::ha`'s.

pub mod auto_conf;
pub mod connection_probe;
pub mod gate;
pub mod reconciler;
pub mod rejoin;
pub mod server_probe;
pub mod slot_keeper;
