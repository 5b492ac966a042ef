//! `local://<dir>`: the raft meta (identity, term, vote) in one small file,
//! `<dir>/raft_meta`, replaced atomically (temp file, fsync, rename, fsync
//! the directory) and guarded by a crc32c.

use std::fs;
use std::path::PathBuf;

use super::fsutil;
use super::{RaftMeta, RaftMetaStorage, StorageOptions};
use crate::error::StorageError;

const FILE: &str = "raft_meta";
const MAGIC: &[u8; 4] = b"RKRM";

/// Opens the meta storage in directory `path`.
pub fn open(path: &str, opts: &StorageOptions) -> Result<Box<dyn RaftMetaStorage>, StorageError> {
    if path.is_empty() {
        return Err(StorageError::InvalidUri {
            uri: "local://".to_string(),
            reason: "a directory is required, as in local:///var/lib/raftkit/meta".to_string(),
        });
    }
    let dir = PathBuf::from(path);
    fsutil::create_dir_all(&dir)?;
    Ok(Box::new(LocalMeta {
        path: dir.join(FILE),
        sync: opts.sync,
    }))
}

/// The `local://` meta storage.
#[derive(Debug)]
pub struct LocalMeta {
    path: PathBuf,
    sync: bool,
}

impl RaftMetaStorage for LocalMeta {
    fn load(&self) -> Result<Option<RaftMeta>, StorageError> {
        let data = match fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(format!("read {}", self.path.display()), e)),
        };
        let body = fsutil::unframe_checked(MAGIC, &data, &self.path)?;
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| StorageError::Corruption {
                path: self.path.clone(),
                offset: 0,
                reason: format!("undecodable raft meta: {e}"),
            })
    }

    fn save(&mut self, meta: &RaftMeta) -> Result<(), StorageError> {
        let body = serde_json::to_vec(meta)
            .map_err(|e| StorageError::Invalid(format!("encode raft meta: {e}")))?;
        fsutil::write_atomic(&self.path, &fsutil::frame_checked(MAGIC, &body), self.sync)
    }
}
