//! The SQL functions of the reference documents.

mod cluster;
mod config;
mod ha;
mod kv;
mod log;
mod views;
mod watch;
