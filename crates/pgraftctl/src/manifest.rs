//! The backup manifest: every file of a backup with its size and SHA-256, written last,
//! and the `--verify` pass that re-reads a finished backup against it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's file name, at the top of the backup directory.
pub const MANIFEST_NAME: &str = "backup_manifest.json";

/// What a finished backup holds. Written after everything else, so a backup without a
/// manifest is unfinished.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format; readers refuse formats they do not know.
    pub format: u32,
    /// The backup label given to the server.
    pub label: String,
    /// The server's name and `server_version`.
    pub server: String,
    /// The server's `server_version`.
    pub server_version: String,
    /// The backup's start LSN (from backup start).
    pub start_lsn: String,
    /// The backup's end LSN (from backup stop).
    pub end_lsn: String,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// The WAL segment files copied into `data/pg_wal`, first to last.
    pub wal_files: Vec<String>,
    /// Every file of the backup, relative to the backup directory.
    pub files: Vec<FileEntry>,
}

/// One file of the backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the backup directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the contents, lower-case hex.
    pub sha256: String,
}

impl Manifest {
    /// The current format.
    pub const FORMAT: u32 = 1;

    /// Writes the manifest into `dir` crash-safely: temporary name, fsync, rename, fsync
    /// the directory.
    pub fn write(&self, dir: &Path, sync: bool) -> Result<()> {
        let tmp = dir.join(format!("{MANIFEST_NAME}.tmp"));
        let text = serde_json::to_vec_pretty(self).context("serialise the manifest")?;
        let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&text).with_context(|| format!("write {}", tmp.display()))?;
        if sync {
            f.sync_all().with_context(|| format!("fsync {}", tmp.display()))?;
        }
        drop(f);
        fs::rename(&tmp, dir.join(MANIFEST_NAME)).context("rename the manifest into place")?;
        if sync {
            File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync {}", dir.display()))?;
        }
        Ok(())
    }

    /// Reads the manifest of the backup in `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_NAME);
        let text = fs::read(&path).with_context(|| {
            format!("read {} (a backup without a manifest is unfinished)", path.display())
        })?;
        let m: Manifest =
            serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
        if m.format != Self::FORMAT {
            bail!("{}: manifest format {} is not {}", path.display(), m.format, Self::FORMAT);
        }
        Ok(m)
    }
}

/// Re-reads every file of the backup in `dir` and compares size and SHA-256 with the
/// manifest. Returns the number of files and bytes checked, or an error listing every
/// file that differs or is missing.
pub fn verify(dir: &Path) -> Result<(usize, u64)> {
    let m = Manifest::read(dir)?;
    let mut problems = Vec::new();
    let mut bytes = 0;
    for e in &m.files {
        let path = dir.join(&e.path);
        if let Err(err) = File::open(&path) {
            problems.push(format!("{}: cannot open: {err}", e.path));
            continue;
        }
        let (size, sha256) = hash_file(&path)?;
        bytes += size;
        if size != e.size {
            problems.push(format!("{}: size {size}, manifest says {}", e.path, e.size));
        } else if sha256 != e.sha256 {
            problems.push(format!("{}: SHA-256 {sha256}, manifest says {}", e.path, e.sha256));
        }
    }
    if !problems.is_empty() {
        bail!("backup {} does not match its manifest:\n  {}", dir.display(), problems.join("\n  "));
    }
    Ok((m.files.len(), bytes))
}

/// The size and SHA-256 (lower-case hex) of a file's contents.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut w = HashingWriter::new(std::io::sink());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).context("hash")?;
    }
    Ok(w.finish())
}

/// A writer that passes bytes on while counting them and computing their SHA-256.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// The number of bytes written and their SHA-256 in lower-case hex.
    pub fn finish(self) -> (u64, String) {
        let digest = self.hasher.finalize();
        (self.bytes, digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The wrapped writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").expect("write to a Vec");
        let (n, h) = w.finish();
        assert_eq!(n, 3);
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn verify_catches_a_flipped_byte() {
        let dir = std::env::temp_dir().join(format!("pgraft-manifest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("mkdir");
        fs::write(dir.join("data/f"), b"hello").expect("write");
        let mut w = HashingWriter::new(std::io::sink());
        w.write_all(b"hello").expect("hash");
        let (size, sha256) = w.finish();
        let m = Manifest {
            format: Manifest::FORMAT,
            label: "l".into(),
            server: "s".into(),
            server_version: "15".into(),
            start_lsn: "0/1".into(),
            end_lsn: "0/2".into(),
            timeline: 1,
            wal_segment_size: 16 << 20,
            wal_files: vec![],
            files: vec![FileEntry { path: "data/f".into(), size, sha256 }],
        };
        m.write(&dir, false).expect("write manifest");
        assert_eq!(verify(&dir).expect("intact"), (1, 5));
        fs::write(dir.join("data/f"), b"hellp").expect("flip");
        let err = verify(&dir).expect_err("flipped").to_string();
        assert!(err.contains("data/f: SHA-256"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
