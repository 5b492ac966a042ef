//! Small file-system helpers shared by the `local://` backends: durable
//! atomic replacement of a file and fsync of a directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, StorageError};

/// fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Replaces `path` with `data` atomically: write a temp file, fsync it,
/// rename it over `path`, fsync the directory. With `sync == false` the
/// fsyncs are skipped (the rename still makes the switch atomic).
pub fn write_atomic(path: &Path, data: &[u8], sync: bool) -> Result<(), StorageError> {
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Invalid(format!("{} has no parent", path.display())))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(tmp)
        .ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(data)
        .ctx(|| format!("write {}", tmp.display()))?;
    if sync {
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    drop(f);
    fs::rename(tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(dir).ctx(|| format!("create directory {}", dir.display()))
}

/// Frames `body` as `magic | len u32 | crc32c u32 | body` for small metadata files.
pub fn frame_checked(magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(magic);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks and strips the framing written by [`frame_checked`].
pub fn unframe_checked<'a>(
    magic: &[u8; 4],
    data: &'a [u8],
    path: &Path,
) -> Result<&'a [u8], StorageError> {
    let corrupt = |reason: &str| StorageError::Corruption {
        path: path.to_path_buf(),
        offset: 0,
        reason: reason.to_string(),
    };
    if data.len() < 12 || &data[..4] != magic {
        return Err(corrupt("bad magic or short file"));
    }
    let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize;
    let crc = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    let body = &data[12..];
    if body.len() != len {
        return Err(corrupt("length does not match the file size"));
    }
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body)
}
