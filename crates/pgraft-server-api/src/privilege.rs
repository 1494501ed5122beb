//! What each API function needs of the connected role, per PostgreSQL version, and the
//! check made before every privileged call.
//!
//! The check asks the server (`pg_has_role`, `has_function_privilege`, `rolsuper`) with
//! the role and function names as bind parameters. A missing privilege becomes
//! [`Error::PermissionDenied`] naming exactly what is missing and the `GRANT` that fixes
//! it; the privileged call itself is then never sent, so the server logs no permission
//! error and nothing is retried.

use std::fmt;

use crate::error::{Error, Result};
use crate::version::PgVersion;

/// The functions of the server API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `server_info`: version, checksums, primary, WAL and block sizes.
    Info,
    /// `server_verify_connection`: connect and disconnect.
    VerifyConnection,
    /// `server_read_binary_file`: bytes of a file in the data directory.
    ReadBinaryFile,
    /// `server_checkpoint`: CHECKPOINT, then the checkpoint's LSN and timeline.
    Checkpoint,
    /// `server_file_stat`: size, kind and times of a file.
    FileStat,
    /// Listing a directory of the data directory (what a backup walks with).
    ListDir,
    /// `server_backup_start`: start a non-exclusive backup.
    BackupStart,
    /// `server_backup_stop`: stop it; end LSN, backup_label, tablespace map.
    BackupStop,
    /// Streaming WAL over a physical replication connection (and a replication slot), as
    /// a backup takes its WAL. Not in the reference; the connection itself is opened with
    /// `pgraft-walstream`.
    StreamWal,
}

impl Api {
    /// Every function that talks to the server, in the order of the reference document.
    pub const ALL: [Api; 9] = [
        Api::Info,
        Api::VerifyConnection,
        Api::ReadBinaryFile,
        Api::Checkpoint,
        Api::FileStat,
        Api::ListDir,
        Api::BackupStart,
        Api::BackupStop,
        Api::StreamWal,
    ];

    /// The function's name in this library.
    pub fn name(self) -> &'static str {
        match self {
            Api::Info => "info",
            Api::VerifyConnection => "verify_connection",
            Api::ReadBinaryFile => "read_binary_file",
            Api::Checkpoint => "checkpoint",
            Api::FileStat => "file_stat",
            Api::ListDir => "list_dir",
            Api::BackupStart => "backup_start",
            Api::BackupStop => "backup_stop",
            Api::StreamWal => "stream_wal",
        }
    }

    /// What the connected role needs on a server of `version`. All of them are needed;
    /// a superuser has every one.
    pub fn requirements(self, version: PgVersion) -> Vec<Requirement> {
        use Requirement::*;
        match self {
            Api::Info | Api::VerifyConnection => vec![],
            Api::ReadBinaryFile if version.has_file_roles() => vec![
                PredefinedRole("pg_read_server_files"),
                Execute("pg_read_binary_file(text, bigint, bigint, boolean)"),
            ],
            Api::Checkpoint if version.has_pg_checkpoint_role() => vec![PredefinedRole("pg_checkpoint")],
            Api::FileStat if version.has_file_roles() => vec![Execute("pg_stat_file(text, boolean)")],
            Api::ListDir if version.has_file_roles() => {
                vec![Execute("pg_ls_dir(text, boolean, boolean)"), Execute("pg_stat_file(text, boolean)")]
            }
            Api::ReadBinaryFile | Api::Checkpoint | Api::FileStat | Api::ListDir => vec![Superuser],
            Api::BackupStart => vec![Execute(version.backup_start_function())],
            Api::BackupStop => vec![Execute(version.backup_stop_function())],
            Api::StreamWal => vec![Replication],
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing a role must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// The SUPERUSER attribute.
    Superuser,
    /// The privileges of a predefined role (membership with INHERIT), or SUPERUSER.
    PredefinedRole(&'static str),
    /// EXECUTE on a function, given by its signature.
    Execute(&'static str),
    /// The REPLICATION attribute (or SUPERUSER): replication connections and slots.
    Replication,
}

impl Requirement {
    /// What is missing, in words.
    pub fn describe(self) -> String {
        match self {
            Requirement::Superuser => "the SUPERUSER attribute".to_string(),
            Requirement::PredefinedRole(r) => format!("the privileges of role {r} (or SUPERUSER)"),
            Requirement::Execute(f) => format!("EXECUTE on function {f}"),
            Requirement::Replication => "the REPLICATION attribute (or SUPERUSER)".to_string(),
        }
    }

    /// The statement that grants it to `role` (already quoted as an identifier).
    pub fn grant_sql(self, role: &str) -> String {
        match self {
            Requirement::Superuser => format!("ALTER ROLE {role} SUPERUSER;"),
            Requirement::PredefinedRole(r) => format!("GRANT {r} TO {role};"),
            Requirement::Execute(f) => format!("GRANT EXECUTE ON FUNCTION {f} TO {role};"),
            Requirement::Replication => format!("ALTER ROLE {role} REPLICATION;"),
        }
    }
}

/// Whether the connected role may call one API function, and if not, what it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The function.
    pub api: Api,
    /// What it needs on this server.
    pub required: Vec<Requirement>,
    /// What of that the role lacks (empty: allowed).
    pub missing: Vec<Requirement>,
    /// The connected role, quoted as an SQL identifier.
    pub role: String,
}

impl Access {
    /// Whether the role may call the function.
    pub fn allowed(&self) -> bool {
        self.missing.is_empty()
    }

    /// The statements that grant what is missing (empty when allowed).
    pub fn grants(&self) -> String {
        self.missing.iter().map(|r| r.grant_sql(&self.role)).collect::<Vec<_>>().join(" ")
    }

    /// `Ok` when allowed, else the error naming what is missing.
    pub fn into_result(self, server: &str) -> Result<()> {
        if self.allowed() {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            server: server.to_string(),
            api: self.api.name(),
            missing: self.missing.iter().map(|r| r.describe()).collect::<Vec<_>>().join(" and "),
            grant: self.grants(),
            role: self.role,
        })
    }
}

/// Asks the server which of `api`'s requirements the connected role lacks.
pub(crate) fn check(
    client: &mut postgres::Client,
    server: &str,
    api: Api,
    version: PgVersion,
) -> Result<Access> {
    let q = |source| Error::Query {
        server: server.to_string(),
        what: format!("privilege check for {api}"),
        source,
    };
    let row = client
        .query_one(
            "SELECT quote_ident(current_user)::text, rolsuper, rolreplication FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .map_err(q)?;
    let role: String = row.get(0);
    let superuser: bool = row.get(1);
    let replication: bool = row.get(2);
    let required = api.requirements(version);
    let mut missing = Vec::new();
    if !superuser {
        for req in &required {
            let has = match *req {
                Requirement::Superuser => false,
                Requirement::Replication => replication,
                Requirement::PredefinedRole(r) => client
                    .query_one("SELECT pg_has_role(current_user, $1::text, 'USAGE')", &[&r])
                    .map_err(q)?
                    .get::<_, bool>(0),
                Requirement::Execute(f) => client
                    .query_one("SELECT has_function_privilege(current_user, $1::text, 'EXECUTE')", &[&f])
                    .map_err(q)?
                    .get::<_, bool>(0),
            };
            if !has {
                missing.push(*req);
            }
        }
    }
    Ok(Access { api, required, missing, role })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_follow_the_reference_per_version() {
        let v13 = PgVersion(130012);
        let v15 = PgVersion(150013);
        assert_eq!(Api::Checkpoint.requirements(v13), vec![Requirement::Superuser]);
        assert_eq!(Api::Checkpoint.requirements(v15), vec![Requirement::PredefinedRole("pg_checkpoint")]);
        assert_eq!(
            Api::BackupStart.requirements(v13),
            vec![Requirement::Execute("pg_start_backup(text, boolean, boolean)")]
        );
        assert_eq!(Api::BackupStop.requirements(v15), vec![Requirement::Execute("pg_backup_stop(boolean)")]);
        assert_eq!(Api::ReadBinaryFile.requirements(PgVersion(100000)), vec![Requirement::Superuser]);
        assert!(Api::Info.requirements(v15).is_empty());
        assert_eq!(Api::StreamWal.requirements(v13), vec![Requirement::Replication]);
        assert_eq!(Requirement::Replication.grant_sql("backup"), "ALTER ROLE backup REPLICATION;");
    }

    #[test]
    fn the_error_names_the_grant() {
        let a = Access {
            api: Api::ReadBinaryFile,
            required: Api::ReadBinaryFile.requirements(PgVersion(170000)),
            missing: vec![Requirement::PredefinedRole("pg_read_server_files")],
            role: "\"Backup User\"".into(),
        };
        let msg = a.into_result("s1").expect_err("missing a role").to_string();
        assert!(msg.contains("role \"Backup User\" may not call read_binary_file"), "{msg}");
        assert!(msg.contains("GRANT pg_read_server_files TO \"Backup User\";"), "{msg}");
    }
}
