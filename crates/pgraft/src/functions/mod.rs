//! The SQL functions of the reference documents.

mod cluster;
mod kv;
mod log;
