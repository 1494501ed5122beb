//! Who runs the servers.
//!
//! `initdb` and `postgres` refuse to run as root. When the cluster tool is invoked as root
//! it runs every server program as an unprivileged account: `postgres` when it exists
//! (postgresql-common creates it), else a `pgraft` account it creates. Otherwise the
//! servers run as the invoking user.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The account that owns and runs a cluster's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerUser {
    /// The invoking account (not root).
    Current,
    /// Another account; commands go through `runuser -u NAME --`.
    Other {
        /// Login name.
        name: String,
        /// Numeric user id, for chown.
        uid: u32,
        /// Numeric group id, for chown.
        gid: u32,
    },
}

impl ServerUser {
    /// Picks the account for this invocation, creating `pgraft` as root if no `postgres`
    /// account exists.
    pub fn for_invoker() -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(Self::Current);
        }
        for name in ["postgres", "pgraft"] {
            if let Some(u) = Self::lookup(name)? {
                return Ok(u);
            }
        }
        let status = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell", "/bin/sh", "pgraft"])
            .status()
            .context("run useradd to create the unprivileged `pgraft` account")?;
        if !status.success() {
            bail!("useradd pgraft failed ({status}); create an unprivileged account for the servers");
        }
        Self::lookup("pgraft")?.context("the `pgraft` account is missing right after useradd")
    }

    /// Looks an account up by name in the passwd database.
    pub fn lookup(name: &str) -> Result<Option<Self>> {
        let out = Command::new("getent").args(["passwd", name]).output().context("run getent passwd")?;
        if !out.status.success() {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = line.trim().split(':').collect();
        if fields.len() < 4 {
            bail!("unexpected getent output for {name}: {line:?}");
        }
        Ok(Some(Self::Other {
            name: name.to_string(),
            uid: fields[2].parse().with_context(|| format!("uid of {name}"))?,
            gid: fields[3].parse().with_context(|| format!("gid of {name}"))?,
        }))
    }

    /// The login name the servers run under, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Current => std::env::var("USER").unwrap_or_else(|_| "the current user".into()),
            Self::Other { name, .. } => name.clone(),
        }
    }

    /// A command that runs `program` as this account.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match self {
            Self::Current => Command::new(program),
            Self::Other { name, .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", name, "--"]).arg(program);
                c
            }
        }
    }

    /// Makes `path` owned by this account (a no-op for the current one).
    pub fn chown(&self, path: &Path) -> Result<()> {
        if let Self::Other { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("chown {} to uid {uid}", path.display()))?;
        }
        Ok(())
    }
}
