//! The SQL functions of the reference documents.

mod cluster;
mod config;
mod kv;
mod log;
mod views;
