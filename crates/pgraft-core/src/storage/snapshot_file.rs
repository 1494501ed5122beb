//! Snapshot images, written away from the Raft thread.
//!
//! Encoding a state machine image and making it durable takes time that grows with the
//! store. A [`SnapshotWriter`] is `Send`: the member hands it, with a clone of its state
//! machine, to another thread, which writes the image and sends back a [`SnapshotImage`];
//! only then does the Raft thread record the snapshot and compact the log (a small
//! transaction). A durable store keeps images as files beside its database:
//!
//! ```text
//! snap/<index, 20 digits>-<term, 20 digits>.snap
//!   "PGRAFTSN" | version u8 (1) | crc32(image) u32 LE | length u64 LE | image
//! ```
//!
//! A file is written as `.tmp`, fsynced, renamed and the directory fsynced; the store
//! names it in its database only afterwards, so a crash leaves at worst an unnamed file,
//! removed at the next start.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use raft::prelude::SnapshotMetadata;

use super::{Result, StorageError};

const MAGIC: &[u8; 8] = b"PGRAFTSN";
const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 4 + 8;

/// The current snapshot's image, read once and kept while it is the current one: a
/// leader sends it to every follower that needs it without reading the file again.
#[derive(Debug, Default)]
pub(crate) struct ImageCache(std::sync::Mutex<Option<(u64, std::sync::Arc<Vec<u8>>)>>);

impl ImageCache {
    /// The image of the snapshot at `index`, from `load` unless it is kept already.
    pub fn get(&self, index: u64, load: impl FnOnce() -> Result<Vec<u8>>) -> Result<std::sync::Arc<Vec<u8>>> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((i, data)) = cache.as_ref() {
            if *i == index {
                return Ok(std::sync::Arc::clone(data));
            }
        }
        let data = std::sync::Arc::new(load()?);
        *cache = Some((index, std::sync::Arc::clone(&data)));
        Ok(data)
    }
}

/// [`raft::Storage::snapshot`] of a durable store whose current snapshot is `meta`, its
/// image from `image` (see [`super::LogStore`] for when it is unavailable).
pub(crate) fn serve_snapshot(
    meta: &SnapshotMetadata,
    request_index: u64,
    to: u64,
    image: impl FnOnce() -> Result<std::sync::Arc<Vec<u8>>>,
) -> raft::Result<raft::prelude::Snapshot> {
    if meta.index < request_index || !super::snapshot_usable_for(meta, to) {
        return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
    }
    let data = image().map_err(super::to_raft)?;
    Ok(raft::prelude::Snapshot { data: data.as_ref().clone(), metadata: Some(meta.clone()) })
}

/// Where an image lives.
#[derive(Debug)]
pub(crate) enum ImageData {
    /// In memory (the memory store).
    Memory(Vec<u8>),
    /// In a durable file.
    File(PathBuf),
}

/// A snapshot image made durable by a [`SnapshotWriter`], ready for
/// [`super::LogStore::create_snapshot`].
#[derive(Debug)]
pub struct SnapshotImage {
    /// Index, term and membership of the snapshot.
    pub metadata: SnapshotMetadata,
    /// Bytes of the image.
    pub len: u64,
    pub(crate) data: ImageData,
}

impl SnapshotImage {
    /// Removes the file of an image that will not be recorded.
    pub(crate) fn discard(self) {
        if let ImageData::File(path) = self.data {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes snapshot images where its store keeps them. Cheap to clone and `Send`.
#[derive(Debug, Clone)]
pub struct SnapshotWriter {
    dir: Option<PathBuf>,
}

impl SnapshotWriter {
    /// Keeps images in memory.
    pub fn memory() -> Self {
        Self { dir: None }
    }

    /// Writes images as files in `dir`.
    pub fn in_dir(dir: PathBuf) -> Self {
        Self { dir: Some(dir) }
    }

    /// Makes `data` durable as the image of the snapshot `metadata`. Borrowed, so a
    /// snapshot received from the leader is written without a copy.
    pub fn write(&self, metadata: SnapshotMetadata, data: &[u8]) -> Result<SnapshotImage> {
        let len = data.len() as u64;
        let Some(dir) = &self.dir else {
            return Ok(SnapshotImage { metadata, len, data: ImageData::Memory(data.to_vec()) });
        };
        let path = dir.join(file_name(metadata.index, metadata.term));
        let tmp = path.with_extension("tmp");
        let io = |what: &str, e: std::io::Error| StorageError::Io(format!("{what} {}: {e}", tmp.display()));
        let mut f = File::create(&tmp).map_err(|e| io("create", e))?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        header.extend_from_slice(&len.to_le_bytes());
        f.write_all(&header).map_err(|e| io("write", e))?;
        f.write_all(data).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
        sync_dir(dir)?;
        Ok(SnapshotImage { metadata, len, data: ImageData::File(path) })
    }
}

/// The file name of the image of the snapshot at `index` in `term`.
pub(crate) fn file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}.snap")
}

/// fsyncs a directory, so a rename or removal in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::Io(format!("fsync {}: {e}", dir.display())))
}

/// Reads and checks an image file.
pub(crate) fn read_image(path: &Path) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(|e| StorageError::Io(format!("open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| StorageError::Io(format!("read {}: {e}", path.display())))?;
    let corrupt = |what: String| StorageError::Corrupt(format!("snapshot file {}: {what}", path.display()));
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("not a pgraft snapshot image".into()));
    }
    if bytes[8] != VERSION {
        return Err(corrupt(format!("unknown image version {}", bytes[8])));
    }
    let word4 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let want_crc = word4(&bytes[9..13]);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[13..21]);
    let len = u64::from_le_bytes(len8);
    if len != (bytes.len() - HEADER) as u64 {
        return Err(corrupt(format!("header says {len} bytes, the file holds {}", bytes.len() - HEADER)));
    }
    bytes.drain(..HEADER);
    let got = crc32fast::hash(&bytes);
    if got != want_crc {
        return Err(corrupt(format!("checksum mismatch (stored {want_crc:08x}, computed {got:08x})")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_and_damage_is_caught() {
        let dir = std::env::temp_dir().join(format!("pgraft-snapfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let w = SnapshotWriter::in_dir(dir.clone());
        let meta = SnapshotMetadata { index: 42, term: 3, ..Default::default() };
        let img = w.write(meta, b"the state").expect("written");
        let ImageData::File(path) = &img.data else { panic!("a file store writes files") };
        assert!(path.ends_with(file_name(42, 3)));
        assert_eq!(read_image(path).expect("reads back"), b"the state");
        let mut bytes = std::fs::read(path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(path, &bytes).expect("write");
        assert!(matches!(read_image(path), Err(StorageError::Corrupt(m)) if m.contains("checksum")));
        std::fs::write(path, &bytes[..10]).expect("write");
        assert!(matches!(read_image(path), Err(StorageError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
