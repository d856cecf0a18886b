//! An identification unit store in a directory.
//!
//! ```text
//!  DIR/idunit.tlv   id, K_id, unused values   (0600, replaced atomically)
//!  DIR/lock         held (flock) while a process uses the id unit
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{IdStoreError, IdUnitRecord, IdUnitStore};

const RECORD_FILE: &str = "idunit.tlv";

/// A file-backed id-unit store rooted at one directory; one process at a time.
#[derive(Debug)]
pub struct FileIdStore {
    dir: PathBuf,
    _lock: File,
}

impl FileIdStore {
    /// Opens (creating if needed, mode 0700) the id-unit directory `dir`.
    /// Fails with [`ErrorKind::WouldBlock`] while another process holds it.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))?;
        if let Err(err) = lock.try_lock() {
            return Err(match err {
                fs::TryLockError::WouldBlock => std::io::Error::new(
                    ErrorKind::WouldBlock,
                    "the identification unit directory is in use by another process",
                ),
                fs::TryLockError::Error(err) => err,
            });
        }
        Ok(Self { dir, _lock: lock })
    }

    /// Creates a new id unit in `dir` holding `record`; refuses to overwrite one.
    pub fn create(dir: impl AsRef<Path>, record: &IdUnitRecord) -> std::io::Result<Self> {
        let mut store = Self::open(dir)?;
        if store.dir.join(RECORD_FILE).exists() {
            return Err(std::io::Error::new(
                ErrorKind::AlreadyExists,
                "the directory already holds an identification unit",
            ));
        }
        store
            .commit(record)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl IdUnitStore for FileIdStore {
    fn load(&mut self) -> Result<IdUnitRecord, IdStoreError> {
        let mut file = File::open(self.dir.join(RECORD_FILE)).map_err(|_| IdStoreError::Io)?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.read_to_end(&mut bytes).map_err(|_| IdStoreError::Io)?;
        IdUnitRecord::decode(&bytes)
    }

    /// Write a temporary file, sync it, rename it over the record, sync the
    /// directory: a crash leaves the old record or the new one.
    fn commit(&mut self, record: &IdUnitRecord) -> Result<(), IdStoreError> {
        let path = self.dir.join(RECORD_FILE);
        let tmp = path.with_extension("tmp");
        let bytes = record.encode();
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|_| IdStoreError::Io)
    }
}
