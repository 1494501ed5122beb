//! One plain PostgreSQL server (no pgraft extension) on 127.0.0.1, for tests of the
//! client libraries: initdb, start, stop, and start a data directory made elsewhere (a
//! restored backup).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{free_port, PgInstall, ServerUser};

/// How to initialise a [`PlainServer`].
#[derive(Debug, Clone, Default)]
pub struct PlainOptions {
    /// `initdb --data-checksums`.
    pub checksums: bool,
    /// `initdb --wal-segsize` in MiB (default: the server's, 16).
    pub wal_segsize_mb: Option<u32>,
    /// Lines appended to postgresql.conf.
    pub extra_conf: Vec<String>,
}

/// A running server owned by a test; stopped (immediate) when dropped.
#[derive(Debug)]
pub struct PlainServer {
    /// The installation it runs from.
    pub install: PgInstall,
    /// Who runs it.
    pub user: ServerUser,
    /// Its own directory: PGDATA's parent, the socket directory and the log.
    pub dir: PathBuf,
    /// PGDATA.
    pub data_dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The server log.
    pub log_file: PathBuf,
}

impl PlainServer {
    /// initdb into `dir/pgdata` and start on a free port of 127.0.0.1. `dir` is created
    /// and must be enterable by the server account.
    pub fn init(pg_config: &Path, dir: &Path, opts: &PlainOptions) -> Result<Self> {
        let install = PgInstall::from_pg_config(pg_config)?;
        let user = ServerUser::for_invoker()?;
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
        user.chown(dir)?;
        let data_dir = dir.join("pgdata");
        let data = data_dir.to_string_lossy().into_owned();
        let mut args = vec![
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ];
        let segsize;
        if opts.checksums {
            args.push("--data-checksums");
        } else if install.major >= 18 {
            // 18 turned checksums on by default.
            args.push("--no-data-checksums");
        }
        if let Some(mb) = opts.wal_segsize_mb {
            segsize = format!("--wal-segsize={mb}");
            args.push(&segsize);
        }
        run(user.command(install.bin("initdb")).args(&args).current_dir(dir), "initdb")?;
        let server = Self::adopt(install, user, dir, data_dir)?;
        let mut conf = String::from("\n# written by the pgraft test kit\n");
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        server.append_conf(&conf)?;
        server.start()?;
        Ok(server)
    }

    /// A server for an existing data directory (for example a restored backup), on a new
    /// free port; not started. The directory is given to the server account with mode
    /// 0700, as PostgreSQL requires.
    pub fn adopt(install: PgInstall, user: ServerUser, dir: &Path, data_dir: PathBuf) -> Result<Self> {
        let port = free_port()?;
        let server = Self {
            install,
            user,
            dir: dir.to_path_buf(),
            log_file: dir.join("postgres.log"),
            data_dir,
            port,
        };
        server.user.chown(dir)?;
        server.chown_tree(&server.data_dir)?;
        fs::set_permissions(&server.data_dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {}", server.data_dir.display()))?;
        server.append_conf(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            server.port,
            dir.display()
        ))?;
        Ok(server)
    }

    /// Appends `text` to postgresql.conf (later lines win).
    pub fn append_conf(&self, text: &str) -> Result<()> {
        append_conf(&self.data_dir, text)
    }

    /// `pg_ctl start`, waiting until the server accepts connections (for a restored
    /// backup: until recovery has finished, up to 120 s).
    pub fn start(&self) -> Result<()> {
        let data = self.data_dir.to_string_lossy();
        let log = self.log_file.to_string_lossy();
        run(
            self.user
                .command(self.install.bin("pg_ctl"))
                .args(["-D", &data, "-l", &log, "-w", "-t", "120", "start"])
                .current_dir(&self.dir),
            "pg_ctl start",
        )
        .with_context(|| format!("see {}", self.log_file.display()))
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) -> Result<()> {
        let data = self.data_dir.to_string_lossy();
        run(
            self.user
                .command(self.install.bin("pg_ctl"))
                .args(["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"])
                .current_dir(&self.dir),
            "pg_ctl stop",
        )
    }

    /// A connection string on which the invoking account is a superuser.
    pub fn conninfo(&self) -> String {
        self.conninfo_as("postgres")
    }

    /// A connection string for role `user` (trust authentication).
    pub fn conninfo_as(&self, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname=postgres", self.port)
    }

    /// A superuser connection.
    pub fn connect(&self) -> Result<postgres::Client> {
        postgres::Client::connect(&format!("{} connect_timeout=10", self.conninfo()), postgres::NoTls)
            .with_context(|| format!("connect to the server on port {}", self.port))
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_file).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Gives every file under `path` to the server account.
    pub fn chown_tree(&self, path: &Path) -> Result<()> {
        self.user.chown(path)?;
        if path.is_dir() && !path.is_symlink() {
            for e in fs::read_dir(path).with_context(|| format!("read {}", path.display()))? {
                self.chown_tree(&e.with_context(|| format!("read {}", path.display()))?.path())?;
            }
        }
        Ok(())
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let data = self.data_dir.to_string_lossy().into_owned();
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self
                .user
                .command(self.install.bin("pg_ctl"))
                .args(["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// Appends `text` to the postgresql.conf of the data directory `data_dir` (later lines
/// win).
pub(crate) fn append_conf(data_dir: &Path, text: &str) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .with_context(|| format!("open {}", conf.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("append to {}", conf.display()))
}
