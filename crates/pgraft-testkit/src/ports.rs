//! Free TCP ports on 127.0.0.1.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::{Context, Result};

/// A TCP port that was free on 127.0.0.1 a moment ago (the OS picked it).
///
/// There is a window between this call and the caller's bind; the cluster tool binds its
/// ports right after choosing them, and a lost race shows up as a clear bind error.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(l.local_addr().context("local address of a bound socket")?.port())
}
