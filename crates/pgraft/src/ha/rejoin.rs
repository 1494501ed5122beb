//! Bringing a fenced primary, or a standby that diverged, back as a standby, outside the
//! postmaster.
//!
//! The worker is a child of the postmaster it shuts down, so it cannot rewind or restart its
//! own server. Before the fast shutdown of a fenced primary, or once its standby turns out
//! to hold WAL the new primary's timeline does not (`pgraft_core::ha::divergence`), it
//! writes a small `sh` script under `pgraft.data_dir` and starts it in a session of its
//! own; the script
//!
//! ```text
//!  1. waits for the fenced postmaster to exit (a diverged standby keeps running)
//!  2. waits until some other member's server is a primary (each in turn, with
//!     target_session_attrs=read-write): a promoted one, on a new timeline
//!     and asks it for a CHECKPOINT (so its control file names its new timeline)
//!     a standby that runs (diverged, or started early below) is done if it follows that
//!     primary; if not, it is stopped, but only once the primary's member says the Raft
//!     majority can spare this one (`pgraft_can_spare`): a rewind never costs the cluster
//!     its majority
//!     meanwhile, if none appears within a few election timeouts, starts the server as
//!     a standby (its member votes again) and records where it shut down; if its own
//!     member then promotes it again, the helper is done; once another primary
//!     appears, stops it and goes on
//!     (a standby it stopped in an earlier round starts again as the standby it was)
//!  3. saves the configuration files (pg_rewind copies the source's over them)
//!  4. pg_rewind --source-server=<that primary>      ("no rewind required" is fine)
//!     if it fails, or `rejoin.reclone` exists: pg_basebackup a fresh copy and swap it in
//!     (a failed rewind writes `rejoin.reclone` first: a half-rewound directory never
//!     starts again); a primary lost half-way (no checkpoint, no copy) sends the helper
//!     back to step 2, so the server is never left down for good
//!  5. restores the configuration files, writes standby.signal
//!  6. starts the server: pgraft.server_start_command (a service manager's), else
//!     pg_ctl restart with the options in postmaster.opts
//! ```
//!
//! and records each step, with the time, in `rejoin.state` (written to a temporary file and
//! renamed) and its output in `rejoin.log`, both beside the script. Once the server runs
//! again its worker points it at the recorded primary like any other standby. The helper
//! needs `pgraft.data_dir` outside the data directory: `pg_rewind` and `pg_basebackup` copy
//! everything under it, the Raft state of another member included.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// What the helper needs to know, gathered by the worker before the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejoin {
    /// The member.
    pub node: u64,
    /// How long to wait for another primary before starting the server as a standby.
    pub standby_after_s: u64,
    /// PGDATA.
    pub pgdata: PathBuf,
    /// `pgraft.data_dir`: where the script, its state and its log go.
    pub raft_dir: PathBuf,
    /// PostgreSQL's programs (`pg_rewind`, `pg_ctl`, `psql`, `pg_basebackup`).
    pub bindir: PathBuf,
    /// The postmaster to wait for.
    pub postmaster_pid: i32,
    /// Where the server's output goes (`pg_ctl -l`).
    pub server_log: PathBuf,
    /// A libpq connection string for each other member's server (with
    /// `target_session_attrs=read-write`: the primary's answers).
    pub sources: Vec<String>,
    /// libpq keywords (user, passfile, ...) for a connection to this server itself.
    pub local_extra: String,
    /// `pgraft.server_start_command`: how to start the server (empty: `pg_ctl`).
    pub start_command: String,
    /// `pgraft.server_stop_command`: how to stop it (empty: `pg_ctl`).
    pub stop_command: String,
    /// Why a standby that keeps running must be rewound or re-cloned (it diverged, or the
    /// primary no longer has the WAL it needs); `None` for a fenced primary that is
    /// shutting down.
    pub problem: Option<String>,
    /// Re-clone rather than rewind (a rewind cannot bring back WAL the primary removed).
    pub reclone: bool,
}

/// The helper's files under `pgraft.data_dir`.
pub const SCRIPT: &str = "rejoin.sh";
/// Its current step.
pub const STATE: &str = "rejoin.state";
/// Its output.
pub const LOG: &str = "rejoin.log";
/// When this file exists, the next rejoin re-clones instead of rewinding (an operator's
/// choice after a rewind went wrong; the tests use it to take the re-clone path).
pub const RECLONE: &str = "rejoin.reclone";
/// Written by the helper when it starts the server as a standby before any other server
/// is a primary: `TIMELINE LSN` of the clean shutdown it started from (the position of the
/// shutdown checkpoint, which every commit the server acknowledged as a primary precedes).
/// The worker reports it ([`pgraft_core::ha::ServerView::stood_down`]); the helper removes
/// it before it stops the server again, and the worker once the server is a primary.
pub const STOOD_DOWN: &str = "rejoin.standby";
/// How long a standby the helper started waits to follow a new primary before the helper
/// stops it to rewind it.
const FOLLOW_S: u64 = 8;
/// The helper that is current: one spawned later takes over, and an older one exits.
pub const PID: &str = "rejoin.pid";

/// How long the helper waits for another primary before starting the server as a standby:
/// two fencing bounds (a failover that can happen has happened by then), at least 3 s.
pub fn standby_after_s(election_timeout_ms: u64) -> u64 {
    (2 * pgraft_core::ha::fencing_bound_ms(election_timeout_ms)).div_ceil(1000).max(3)
}

/// Reads [`STOOD_DOWN`]: a timeline and an LSN (`X/Y`, as `pg_controldata` prints it).
pub fn parse_stood_down(text: &str) -> Option<(u32, u64)> {
    let mut words = text.split_whitespace();
    let timeline: u32 = words.next()?.parse().ok()?;
    let lsn = pgraft_core::ha::parse_lsn(words.next()?)?;
    (timeline > 0 && words.next().is_none()).then_some((timeline, lsn))
}

/// A word quoted for `sh`.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

/// Files kept across a rewind or a re-clone: the configuration (pg_rewind copies the
/// source's over it) and the options the server was started with (`pg_ctl restart` reads
/// them; a re-clone has none).
const CONFIG_FILES: [&str; 5] =
    ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf", "postmaster.opts"];

impl Rejoin {
    /// The script.
    pub fn script(&self) -> String {
        let saved = self.raft_dir.join("rejoin-config");
        let files = CONFIG_FILES.join(" ");
        format!(
            r#"#!/bin/sh
# Written by the pgraft worker of node {node}: rejoins this server as a standby of the
# current primary after it was fenced, or when its standby cannot follow the primary.
# Steps are recorded in {state}.
set -u
PGDATA={pgdata}
BIN={bindir}
SERVER_LOG={server_log}
STATE={state}
SAVED={saved}
# Every other member's server, a libpq connection string a line; the primary is the one
# that answers read-write. One at a time, not as libpq's multi-host list: that list ends at
# a host that accepts the connection and closes it (a proxy or a load balancer in front of
# a dead server).
SOURCES={sources}
PRIMARY=
LOCAL_EXTRA={local_extra}
START_COMMAND={start_command}
STOP_COMMAND={stop_command}
# No libpq call of this script waits on an address that does not answer.
PGCONNECT_TIMEOUT=5
export PGCONNECT_TIMEOUT
find_primary() {{
    PRIMARY=
    while IFS= read -r C; do
        if [ -n "$C" ] && "$BIN/psql" "$C" -XAtqc 'SELECT 1' >/dev/null 2>&1; then
            PRIMARY=$C
            return 0
        fi
    done <<SOURCES_END
$SOURCES
SOURCES_END
    return 1
}}
step() {{
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" > "$STATE.tmp" && mv "$STATE.tmp" "$STATE"
    echo "pgraft rejoin (node {node}): $1"
}}
echo $$ > {pidfile}
# A helper spawned later (the server was promoted and fenced again) takes over.
current() {{ [ "$(cat {pidfile} 2>/dev/null)" = "$$" ] || {{ echo "pgraft rejoin (node {node}): a newer helper took over"; exit 0; }}; }}
# pgraft.server_start_command / server_stop_command (a service manager's), else pg_ctl
# with the options the server was started with (postmaster.opts).
start_server() {{
    if [ -n "$START_COMMAND" ]; then sh -c "$START_COMMAND"; else "$BIN/pg_ctl" restart -D "$PGDATA" -l "$SERVER_LOG" -w -t 300 -s; fi
}}
stop_server() {{
    if [ -n "$STOP_COMMAND" ]; then sh -c "$STOP_COMMAND"; else "$BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 300 -s; fi
}}
control() {{ LC_ALL=C "$BIN/pg_controldata" -D "$PGDATA" 2>/dev/null | sed -n "s/^$1: *//p"; }}
# This server, as postmaster.pid says it listens: its socket directory (else its first
# listen address) and port.
local_conninfo() {{
    L_PORT=$(sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null)
    L_HOST=$(sed -n 5p "$PGDATA/postmaster.pid" 2>/dev/null)
    if [ -z "$L_HOST" ]; then
        L_HOST=$(sed -n 6p "$PGDATA/postmaster.pid" 2>/dev/null | cut -d, -f1 | tr -d ' ')
        case "$L_HOST" in ''|'*'|'0.0.0.0') L_HOST=127.0.0.1 ;; '::') L_HOST=::1 ;; esac
    fi
    echo "host=$L_HOST port=$L_PORT dbname=postgres $LOCAL_EXTRA"
}}
# Whether this standby streams from the primary on its timeline $TLI.
follows_primary() {{
    [ -n "$TLI" ] && [ "$("$BIN/psql" "$(local_conninfo)" -XAtqc "SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'" 2>/dev/null)" = "$TLI" ]
}}
PROBLEM={problem}
RECLONE_NOW={reclone_now}
if [ -n "$PROBLEM" ]; then
    # The standby keeps running (its member votes) until it is stopped below.
    if [ "$RECLONE_NOW" = yes ]; then
        step "this standby cannot get the WAL it needs ($PROBLEM): re-cloning it"
    else
        step "this standby diverged from the new primary's timeline ($PROBLEM): rewinding it"
    fi
    STANDBY=yes
else
    step "waiting for the fenced server (postmaster {pid}) to stop"
    while kill -0 {pid} 2>/dev/null; do sleep 0.1; done
    STANDBY=no
fi
# Every round waits for a primary, then rewinds (or re-clones) from it. A round that loses
# its primary half-way (a fault elsewhere) starts again; nothing leaves the server down
# for good while a primary can come back.
while :; do
current
step "waiting for another member's server to be the primary"
SINCE=$(date +%s)
# "never": an early start already failed in an earlier round; this round may try again.
if [ "$STANDBY" = never ]; then STANDBY=no; fi
until find_primary; do
    current
    if [ "$STANDBY" = no ] && [ $(( $(date +%s) - SINCE )) -ge {standby_after} ]; then
        # No primary: this server's member may be needed for a Raft majority. Start it as
        # a standby so that the member votes again.
        STANDBY=never
        STATE_NOW=$(control "Database cluster state")
        if [ -e {reclone} ]; then
            step "not starting early: the data directory must be re-cloned (a rewind did not finish); waiting for a primary"
        elif [ "$STATE_NOW" = "shut down" ]; then
            # The fenced primary: its member reports the position it stood down at.
            TLI=$(control "Latest checkpoint's TimeLineID")
            AT=$(control "Latest checkpoint location")
            printf '%s %s\n' "$TLI" "$AT" > {marker}.tmp && mv {marker}.tmp {marker}
            rm -f "$PGDATA/postmaster.pid" "$PGDATA/promote"
            : > "$PGDATA/standby.signal"
            step "no primary after {standby_after} s: starting as a standby (stood down on timeline $TLI at $AT)"
            if start_server; then
                STANDBY=yes
                step "running as a standby; waiting for a primary"
            else
                rm -f {marker}
                step "could not start as a standby (see $SERVER_LOG); waiting for a primary"
            fi
        elif [ "$STATE_NOW" = "shut down in recovery" ]; then
            # A standby this helper stopped to rewind: it starts again as the standby it was.
            rm -f "$PGDATA/postmaster.pid" "$PGDATA/promote"
            : > "$PGDATA/standby.signal"
            step "no primary after {standby_after} s: starting again as the standby it was"
            if start_server; then
                STANDBY=yes
                step "running as a standby; waiting for a primary"
            else
                step "could not start as a standby (see $SERVER_LOG); waiting for a primary"
            fi
        else
            step "not starting early: the server did not shut down cleanly ($STATE_NOW); waiting for a primary"
        fi
    fi
    if [ "$STANDBY" = yes ] && [ "$(control "Database cluster state")" = "in production" ]; then
        rm -f {marker}
        step "done: promoted again by its member (no other server had become the primary)"
        exit 0
    fi
    sleep 0.5
done
current
if [ "$STANDBY" = yes ]; then
    rm -f {marker}
    # Stopping this standby takes its Raft member down again, which with a member already
    # down costs the new primary its majority: only when it cannot follow (it diverged).
    step "another member's server is the primary: waiting for this standby to follow it"
    TLI=$(timeout 120 "$BIN/psql" "$PRIMARY" -XAtq -c 'CHECKPOINT' -c 'SELECT timeline_id FROM pg_control_checkpoint()' 2>/dev/null | tail -1)
    # A standby with a problem cannot follow: no wait for it.
    if [ -n "$PROBLEM" ]; then UNTIL=0; else UNTIL=$(( $(date +%s) + {follow_s} )); fi
    while [ -n "$TLI" ] && [ "$(date +%s)" -lt "$UNTIL" ]; do
        current
        if follows_primary; then
            step "done: this standby follows the new primary on timeline $TLI, no rewind needed"
            exit 0
        fi
        sleep 0.5
    done
    # Its member votes while it runs: stop it only if the leader keeps a majority without
    # it (psql: 1 is an SQL error, an older extension without the function; 2 and
    # timeout's 124, no answer: the primary is gone).
    LOST=no
    WAITED=no
    while :; do
        current
        SPARE=$(timeout 30 "$BIN/psql" "$PRIMARY" -XAtqc 'SELECT pgraft_can_spare({node})' 2>/dev/null)
        RC=$?
        if [ "$RC" -eq 0 ] && [ "$SPARE" = t ]; then break; fi
        if [ "$RC" -eq 1 ]; then break; fi
        if [ "$RC" -ne 0 ]; then LOST=yes; break; fi
        if follows_primary; then
            step "done: this standby follows the new primary on timeline $TLI, no rewind needed"
            exit 0
        fi
        if [ "$WAITED" = no ]; then
            step "this standby does not follow the new primary, but the Raft majority cannot spare its member now: waiting"
            WAITED=yes
        fi
        sleep 1
    done
    if [ "$LOST" = yes ]; then
        step "the primary stopped answering before this standby could be stopped; waiting for a primary again"
        sleep 1
        continue
    fi
    step "this standby does not follow the new primary (timeline ${{TLI:-unknown}}): stopping it to rewind it"
    # (A server that died meanwhile needs no stop.)
    if "$BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1 && ! stop_server; then
        step "could not stop the standby; trying again"
        sleep 2
        continue
    fi
    STANDBY=no
fi
mkdir -p "$SAVED" || {{ step "failed: cannot create $SAVED"; exit 1; }}
# Not from a directory a failed rewind left (it holds the source's configuration).
if [ ! -e {reclone} ] || [ -z "$(ls -A "$SAVED")" ]; then
    for f in {files}; do
        if [ -f "$PGDATA/$f" ]; then cp -p "$PGDATA/$f" "$SAVED/$f" || {{ step "failed: cannot save $f"; exit 1; }}; fi
    done
fi
# A promoted server's control file names its new timeline only after a checkpoint;
# pg_rewind reads it there, and without one it may see "the same timeline" and skip a
# rewind that is needed.
step "asking the primary for a checkpoint"
if ! timeout 120 "$BIN/psql" "$PRIMARY" -XAtqc 'CHECKPOINT' >/dev/null 2>&1; then
    step "the primary did not take a checkpoint; waiting for a primary again"
    sleep 1
    continue
fi
if [ -e {reclone} ] || [ "$RECLONE_NOW" = yes ]; then
    step "re-cloning with pg_basebackup (asked for, or a rewind did not finish)"
    REWOUND=no
else
    step "rewinding with pg_rewind"
    # pg_rewind brings a server that did not shut down cleanly (killed) to a clean state
    # itself, by crash recovery in single-user mode, which refuses to run in standby mode.
    case "$(control "Database cluster state")" in
        "shut down"|"shut down in recovery") ;;
        *) rm -f "$PGDATA/standby.signal" "$PGDATA/recovery.signal" ;;
    esac
    if "$BIN/pg_rewind" -D "$PGDATA" --source-server="$PRIMARY" --progress; then
        REWOUND=yes
    else
        # A failed rewind may have copied part of the source: this data directory must
        # never start again, whichever helper comes next.
        : > {reclone}
        step "pg_rewind failed: re-cloning with pg_basebackup"
        REWOUND=no
    fi
fi
if [ "$REWOUND" = yes ]; then
    HOW=rewound
    step "rewound"
else
    rm -rf "$PGDATA.reclone"
    if "$BIN/pg_basebackup" -D "$PGDATA.reclone" -X stream -c fast -d "$PRIMARY"; then
        mv "$PGDATA" "$PGDATA.old.$$" && mv "$PGDATA.reclone" "$PGDATA" && rm -rf "$PGDATA.old.$$" \
            || {{ step "failed: cannot swap in the re-cloned data directory"; exit 1; }}
        chmod 700 "$PGDATA"
        rm -f {reclone}
        HOW=re-cloned
        step "re-cloned"
    else
        rm -rf "$PGDATA.reclone"
        step "pg_basebackup could not re-clone; trying again once a primary answers"
        sleep 2
        continue
    fi
fi
for f in {files}; do
    if [ -f "$SAVED/$f" ]; then cp -p "$SAVED/$f" "$PGDATA/$f"; fi
done
rm -f "$PGDATA/postmaster.pid" "$PGDATA/promote"
: > "$PGDATA/standby.signal"
step "starting as a standby"
if start_server; then
    step "done: running as a standby ($HOW)"
    exit 0
fi
# A start can fail for good: rewound from a primary that was itself replaced before this
# server reached its minimum recovery point, recovery meets the new timeline too early
# ("unexpected timeline ID ... before reaching minimum recovery point"). Only a re-clone
# from the primary of now helps.
: > {reclone}
STANDBY=no
step "could not start as a standby after it was $HOW (see $SERVER_LOG): re-cloning it from the primary"
sleep 1
done
"#,
            node = self.node,
            pgdata = qp(&self.pgdata),
            bindir = qp(&self.bindir),
            server_log = qp(&self.server_log),
            state = qp(&self.raft_dir.join(STATE)),
            saved = qp(&saved),
            sources = q(&self.sources.join("\n")),
            pid = self.postmaster_pid,
            files = files,
            reclone = qp(&self.raft_dir.join(RECLONE)),
            pidfile = qp(&self.raft_dir.join(PID)),
            marker = qp(&self.raft_dir.join(STOOD_DOWN)),
            standby_after = self.standby_after_s,
            follow_s = FOLLOW_S,
            local_extra = q(&self.local_extra),
            start_command = q(&self.start_command),
            stop_command = q(&self.stop_command),
            problem = q(self.problem.as_deref().unwrap_or("")),
            reclone_now = if self.reclone { "yes" } else { "no" },
        )
    }

    /// Writes the script and starts it in a session of its own, its output appended to
    /// `rejoin.log`.
    pub fn spawn(&self) -> std::io::Result<()> {
        let script = self.raft_dir.join(SCRIPT);
        let tmp = self.raft_dir.join(format!("{SCRIPT}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.script().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        std::fs::rename(&tmp, &script)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.raft_dir.join(LOG))?;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg(&script)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(&self.raft_dir);
        // SAFETY: setsid is async-signal-safe; it detaches the helper from the postmaster's
        // session and process group, so the shutdown's signals do not reach it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().map(|_| ())
    }
}

/// Whether a helper started for this member is running: the process `rejoin.pid` names
/// runs this member's script.
pub fn helper_running(raft_dir: &Path) -> bool {
    let Some(pid) =
        std::fs::read_to_string(raft_dir.join(PID)).ok().and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let script = raft_dir.join(SCRIPT);
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)) == script))
}

/// Where this process's stderr goes, if it is a file (the server log `pg_ctl -l` named).
pub fn server_log() -> Option<PathBuf> {
    let target = std::fs::read_link("/proc/self/fd/2").ok()?;
    std::fs::metadata(&target).ok().filter(|m| m.is_file()).map(|_| target)
}

/// The directory of the running `postgres` program.
pub fn bindir() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/exe").ok()?.parent().map(Path::to_path_buf)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn the_stood_down_position_reads_as_pg_controldata_prints_it() {
        assert_eq!(parse_stood_down("1 0/3000028\n"), Some((1, 0x300_0028)));
        assert_eq!(parse_stood_down("3 1A/FF"), Some((3, (0x1A << 32) | 0xFF)));
        for bad in ["", "1", "0 0/1", "x 0/1", "1 01", "1 0/1 extra", "1 g/1"] {
            assert_eq!(parse_stood_down(bad), None, "{bad:?}");
        }
        assert_eq!(standby_after_s(1000), 5);
        assert_eq!(standby_after_s(100), 3);
    }

    #[pg_test]
    fn the_rejoin_script_quotes_and_checks_its_inputs() {
        let r = Rejoin {
            node: 2,
            standby_after_s: 5,
            pgdata: "/data/it's here".into(),
            raft_dir: "/raft".into(),
            bindir: "/usr/lib/postgresql/15/bin".into(),
            postmaster_pid: 4242,
            server_log: "/log/pg.log".into(),
            sources: vec!["host=a port=1 target_session_attrs=read-write".into(), "host=b port=2".into()],
            local_extra: "user=postgres".into(),
            start_command: "systemctl start 'postgresql@15-main'".into(),
            stop_command: String::new(),
            problem: None,
            reclone: false,
        };
        let s = r.script();
        assert!(s.contains(r#"PGDATA='/data/it'\''s here'"#), "{s}");
        assert!(s.contains("while kill -0 4242"));
        assert!(s.contains("SOURCES='host=a port=1 target_session_attrs=read-write\nhost=b port=2'"), "{s}");
        assert!(s.contains("pg_rewind\" -D \"$PGDATA\" --source-server=\"$PRIMARY\""));
        assert!(s.contains("pg_basebackup"));
        assert!(s.contains("standby.signal"));
        assert!(s.contains("-ge 5 ]"));
        assert!(s.contains("LOCAL_EXTRA='user=postgres'"));
        assert!(s.contains(r#"START_COMMAND='systemctl start '\''postgresql@15-main'\'''"#), "{s}");
        assert!(s.contains("STOP_COMMAND=''"));
        // The shell accepts it.
        let dir = std::env::temp_dir().join(format!("pgraft-rejoin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("r.sh"), &s).expect("write");
        let ok =
            std::process::Command::new("/bin/sh").arg("-n").arg(dir.join("r.sh")).status().expect("sh -n");
        assert!(ok.success());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
