//! One plain PostgreSQL server (no pgraft extension) on 127.0.0.1, for the tests of the
//! client libraries: WAL streaming, logical decoding, TLS.
//!
//! `initdb` runs with 1 MiB WAL segments so that tests fill and switch segments quickly;
//! the server keeps 256 MiB of WAL so that every segment a test streamed is still in
//! `pg_wal` to compare with. Two roles log in over TCP: `postgres` (trust, for the test's
//! own SQL) and `replicator` (SCRAM-SHA-256, replication).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{free_port, wait_until, PgInstall, ServerUser};

/// The password of the `replicator` role.
pub const REPLICATOR_PASSWORD: &str = "repl-secret-7";

/// How to set a server up.
#[derive(Debug, Clone, Default)]
pub struct ReplicationServerOptions {
    /// Extra lines for postgresql.conf.
    pub conf: Vec<String>,
    /// pg_hba.conf lines placed before the defaults (first match wins).
    pub hba_first: Vec<String>,
    /// Files to copy into the data directory (name, contents), readable by the server
    /// only (certificates and keys).
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running server; stopped (immediately) and removed when dropped.
pub struct ReplicationServer {
    /// The installation it runs from.
    pub install: PgInstall,
    /// The test's scratch directory (data directory, log, socket).
    pub root: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    user: ServerUser,
}

impl ReplicationServer {
    /// initdb, configure and start a server.
    pub fn start_new(
        name: &str,
        pg_config: &Path,
        opts: &ReplicationServerOptions,
    ) -> Result<ReplicationServer> {
        let install = PgInstall::from_pg_config(pg_config)?;
        let user = ServerUser::for_invoker()?;
        let root =
            std::env::temp_dir().join(format!("pgraft-ws-{name}-{}-pg{}", std::process::id(), install.major));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .context("chmod the scratch directory")?;
        user.chown(&root)?;
        let data = root.join("data");
        let out = user
            .command(install.bin("initdb"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--wal-segsize=1",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .context("run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             wal_keep_size = '256MB'\nmax_wal_size = '64MB'\nmin_wal_size = '8MB'\nfsync = off\n\
             password_encryption = 'scram-sha-256'\nlog_min_messages = warning\n",
            root.display()
        );
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf)?;
        let mut hba = String::new();
        for line in &opts.hba_first {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "host all postgres 127.0.0.1/32 trust\n\
             host replication postgres 127.0.0.1/32 trust\n\
             host all replicator 127.0.0.1/32 scram-sha-256\n\
             host replication replicator 127.0.0.1/32 scram-sha-256\n",
        );
        fs::write(data.join("pg_hba.conf"), hba).context("write pg_hba.conf")?;
        for (name, contents) in &opts.files {
            let p = data.join(name);
            fs::write(&p, contents).with_context(|| format!("write {}", p.display()))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
            user.chown(&p)?;
        }
        let server = ReplicationServer { install, root, data, port, user };
        server.start()?;
        let mut c = server.sql()?;
        c.batch_execute(&format!(
            "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '{REPLICATOR_PASSWORD}';
             GRANT pg_read_all_stats TO replicator;"
        ))
        .context("create the replicator role")?;
        Ok(server)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let log = self.root.join("server.log");
        let out = self
            .user
            .command(self.install.bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .context("run pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        wait_until(
            "the server to accept connections",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || Ok(self.sql().ok().map(|_| ())),
        )
    }

    /// Stops the server with `mode` (`fast`, `immediate`).
    pub fn stop(&self, mode: &str) -> Result<()> {
        let out = self
            .user
            .command(self.install.bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
            .context("run pg_ctl stop")?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `pg_ctl promote` on a server started in standby mode.
    pub fn promote(&self) -> Result<()> {
        let out = self
            .user
            .command(self.install.bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"])
            .output()
            .context("run pg_ctl promote")?;
        if !out.status.success() {
            bail!("pg_ctl promote failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Makes the next start a standby start (an empty `standby.signal`).
    pub fn make_standby(&self) -> Result<()> {
        let p = self.data.join("standby.signal");
        fs::write(&p, b"").context("write standby.signal")?;
        self.user.chown(&p)
    }

    /// A superuser SQL connection (trust over TCP).
    pub fn sql(&self) -> Result<postgres::Client> {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5", self.port),
            postgres::NoTls,
        )
        .context("connect as postgres")
    }

    /// A conninfo for the replication role with its password.
    pub fn replicator_conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=replicator password={REPLICATOR_PASSWORD}", self.port)
    }

    /// The path of a file in `pg_wal`.
    pub fn wal_file(&self, name: &str) -> PathBuf {
        self.data.join("pg_wal").join(name)
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f =
        fs::OpenOptions::new().append(true).open(path).with_context(|| format!("open {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}

impl Drop for ReplicationServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        if std::env::var_os("PGRAFT_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
