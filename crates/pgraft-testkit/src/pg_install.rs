//! A PostgreSQL installation, found through its `pg_config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where a PostgreSQL installation keeps its programs, and which version it is.
#[derive(Debug, Clone)]
pub struct PgInstall {
    /// The `pg_config` this was read from.
    pub pg_config: PathBuf,
    /// `pg_config --bindir`: initdb, pg_ctl, postgres, psql.
    pub bindir: PathBuf,
    /// `pg_config --pkglibdir`: where `pgraft.so` must be installed.
    pub pkglibdir: PathBuf,
    /// The major version, for example 15.
    pub major: u32,
}

impl PgInstall {
    /// The Debian PostgreSQL 15, the default install of the local cluster.
    pub const DEFAULT_PG_CONFIG: &'static str = "/usr/lib/postgresql/15/bin/pg_config";

    /// Reads an installation's facts from its `pg_config`.
    pub fn from_pg_config(pg_config: &Path) -> Result<Self> {
        let ask = |flag: &str| -> Result<String> {
            let out = Command::new(pg_config)
                .arg(flag)
                .output()
                .with_context(|| format!("run {} {flag}", pg_config.display()))?;
            if !out.status.success() {
                bail!(
                    "{} {flag} failed: {}",
                    pg_config.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let version = ask("--version")?;
        let major = parse_major(&version)
            .with_context(|| format!("unexpected `pg_config --version` output {version:?}"))?;
        Ok(Self {
            pg_config: pg_config.to_path_buf(),
            bindir: PathBuf::from(ask("--bindir")?),
            pkglibdir: PathBuf::from(ask("--pkglibdir")?),
            major,
        })
    }

    /// The path of one of the installation's programs.
    /// Whether this installation has the loadable module `name` (a contrib module such as
    /// `test_decoding`, which a build without contrib lacks).
    pub fn has_module(&self, name: &str) -> bool {
        self.pkglibdir.join(format!("{name}.so")).exists()
    }

    /// Whether this installation was built with TLS (`--with-openssl`, or
    /// `--with-ssl=openssl`), as `pg_config --configure` says.
    pub fn has_ssl(&self) -> bool {
        Command::new(&self.pg_config).arg("--configure").output().is_ok_and(|o| {
            let flags = String::from_utf8_lossy(&o.stdout);
            flags.contains("--with-openssl") || flags.contains("--with-ssl=openssl")
        })
    }

    pub fn bin(&self, program: &str) -> PathBuf {
        self.bindir.join(program)
    }

    /// Fails with a hint when the pgraft extension is not installed here.
    pub fn check_extension_installed(&self) -> Result<()> {
        let so = self.pkglibdir.join("pgraft.so");
        if !so.exists() {
            bail!(
                "the pgraft extension is not installed in this PostgreSQL ({} is missing); \
                 run `cargo pgrx install --pg-config {}` in crates/pgraft first",
                so.display(),
                self.pg_config.display()
            );
        }
        Ok(())
    }
}

/// "PostgreSQL 15.18 (Debian 15.18-0+deb12u1)" -> 15; "PostgreSQL 18beta1" -> 18.
fn parse_major(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("PostgreSQL ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn major_versions() {
        assert_eq!(parse_major("PostgreSQL 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_major("PostgreSQL 16.2"), Some(16));
        assert_eq!(parse_major("PostgreSQL 18beta1"), Some(18));
        assert_eq!(parse_major("PostgreSQL 9.6.24"), Some(9));
        assert_eq!(parse_major("postgres 15"), None);
        assert_eq!(parse_major("PostgreSQL x"), None);
    }
}
