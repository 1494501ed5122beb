//! The local fence: a primary whose member is not the current leader refuses client
//! sessions, whatever the client asks for.
//!
//! `default_transaction_read_only` is a client's to change; a connection refused during
//! authentication is not. The hook runs in every new backend after authentication and
//! reads the worker's decision from shared memory. Replication connections pass (the
//! standbys of a fenced primary may still fetch what it has), and so do sessions on a
//! standby (read-only anyway). The worker also shuts a fenced primary down, which ends
//! the sessions opened before; this hook covers the time until then and a server that was
//! started again as a primary before its worker decided (after a crash, `Unknown` refuses
//! too while `pgraft.failover_enabled` is on).

use std::ffi::c_int;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::gucs;
use crate::shmem::{self, GateState};

type ClientAuthHook = Option<unsafe extern "C-unwind" fn(*mut pg_sys::Port, c_int)>;

unsafe extern "C-unwind" {
    // libpq/auth.h; not in pgrx's bindings.
    static mut ClientAuthentication_hook: ClientAuthHook;
}

static mut PREVIOUS: ClientAuthHook = None;

/// Installs the hook; called once from `_PG_init` in the postmaster.
pub fn install() {
    // SAFETY: _PG_init runs single-threaded in the postmaster before any backend exists.
    unsafe {
        PREVIOUS = ClientAuthentication_hook;
        ClientAuthentication_hook = Some(check_client);
    }
}

/// Whether a client session must be refused, given the worker's gate.
pub fn refuses(gate: GateState, failover_guc: bool, in_recovery: bool) -> bool {
    if in_recovery {
        return false;
    }
    match gate {
        GateState::Open => false,
        GateState::Fenced => true,
        GateState::Unknown => failover_guc,
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_client(port: *mut pg_sys::Port, status: c_int) {
    // SAFETY: chaining to the hook that was installed before ours, with PostgreSQL's
    // arguments.
    unsafe {
        if let Some(prev) = PREVIOUS {
            prev(port, status);
        }
    }
    // SAFETY: plain reads of backend globals.
    let (walsender, in_recovery) = unsafe { (pg_sys::am_walsender, pg_sys::RecoveryInProgress()) };
    if status != pg_sys::STATUS_OK as c_int || walsender {
        return;
    }
    let gate = shmem::read().gate;
    if refuses(gate, gucs::FAILOVER_ENABLED.get(), in_recovery) {
        let why = match gate {
            GateState::Fenced => "this server is not the primary of the cluster's current Raft term",
            _ => "the pgraft worker has not yet confirmed that this server is the primary",
        };
        ereport!(
            FATAL,
            PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
            format!("pgraft: {why}"),
            "Connect with target_session_attrs=read-write to reach the current primary; pgraft_ha_status() on any member shows it."
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::refuses;
    use crate::shmem::GateState;
    use pgrx::prelude::*;

    #[pg_test]
    fn the_gate_refuses_only_on_a_primary() {
        assert!(!refuses(GateState::Open, true, false));
        assert!(refuses(GateState::Fenced, false, false));
        assert!(refuses(GateState::Unknown, true, false));
        assert!(!refuses(GateState::Unknown, false, false), "no failover, no gate");
        assert!(!refuses(GateState::Fenced, true, true), "standbys are read-only anyway");
    }
}
