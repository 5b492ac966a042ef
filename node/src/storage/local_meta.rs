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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta() -> RaftMeta {
        RaftMeta {
            peer_id: 0x1234_5678_9abc_def0,
            term: 7,
            vote: 0x0fed_cba9_8765_4321,
            commit: 120,
            applied: 118,
            initial_conf: Vec::new(),
            cluster_id: 0x0bad_cafe,
            log_format: 2,
            cluster_format: 2,
        }
    }

    #[test]
    fn saved_meta_loads_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let mut store = open(path, &StorageOptions::default()).unwrap();
        assert_eq!(store.load().unwrap(), None);
        store.save(&meta()).unwrap();
        assert_eq!(store.load().unwrap(), Some(meta()));
    }

    /// Term and vote must never come back wrong or silently empty (a voter
    /// that forgot its vote can vote twice in a term): every single damaged
    /// byte, and every truncation, is reported as corruption.
    #[test]
    fn any_damaged_byte_or_truncation_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let mut store = open(path, &StorageOptions::default()).unwrap();
        store.save(&meta()).unwrap();
        let file = dir.path().join(FILE);
        let good = fs::read(&file).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            fs::write(&file, &bad).unwrap();
            assert!(
                matches!(store.load(), Err(StorageError::Corruption { .. })),
                "a flipped bit at byte {at} of {} went unnoticed",
                good.len()
            );
        }
        for len in 0..good.len() {
            fs::write(&file, &good[..len]).unwrap();
            assert!(
                matches!(store.load(), Err(StorageError::Corruption { .. })),
                "a file cut to {len} bytes went unnoticed"
            );
        }
        fs::write(&file, &good).unwrap();
        assert_eq!(store.load().unwrap(), Some(meta()));
    }
}
