//! A key memory in a directory: one module per directory.
//!
//! ```text
//!  DIR/records.tlv   lifecycle, certificates, watermark,     (0600)
//!                    user PIN verifier and retry counter
//!  DIR/identity.key  identity private scalar, 48 bytes       (0600)
//!  DIR/module.key    module private scalar, 48 bytes         (0600)
//!  DIR/lock          held (flock) while a process uses the module
//! ```
//!
//! Every file is replaced by writing a temporary file, syncing it, renaming it
//! over the old one and syncing the directory, so a crash leaves either the old
//! file or the new one. The applet orders its commits so that any mix of old
//! and new files is a defined state (see `docs/protocol.md`, "Failure atomicity").

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use p384::PublicKey;
use p384::ecdsa::signature::hazmat::RandomizedPrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use zeroize::Zeroizing;

use super::{KeyMemory, KeyMemoryError, KeySlot, Records};
use crate::channel::derive_scalar;

const RECORDS_FILE: &str = "records.tlv";
const SCALAR_LEN: usize = 48;

/// A file-backed key memory rooted at one directory.
///
/// One process at a time: [`FileKeyMemory::open`] takes an exclusive lock on
/// the directory, released when the value is dropped.
#[derive(Debug)]
pub struct FileKeyMemory {
    dir: PathBuf,
    _lock: File,
}

impl FileKeyMemory {
    /// Opens (creating if needed, mode 0700) the module directory `dir`.
    ///
    /// Fails with [`ErrorKind::WouldBlock`] while another process (or another
    /// value in this one) has the module open. Temporary files left by a
    /// crash in the middle of a write are wiped and removed.
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            std::fs::DirBuilder::new()
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
                std::fs::TryLockError::WouldBlock => std::io::Error::new(
                    ErrorKind::WouldBlock,
                    "the module directory is in use by another process",
                ),
                std::fs::TryLockError::Error(err) => err,
            });
        }
        let memory = Self { dir, _lock: lock };
        for entry in fs::read_dir(&memory.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                memory.wipe_and_remove(&path)?;
            }
        }
        Ok(memory)
    }

    /// The module directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_path(&self, slot: KeySlot) -> PathBuf {
        self.dir.join(match slot {
            KeySlot::Identity => "identity.key",
            KeySlot::Module => "module.key",
        })
    }

    fn read_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, KeyMemoryError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(KeyMemoryError::Io),
        };
        let mut bytes = Zeroizing::new(Vec::new());
        file.read_to_end(&mut bytes)
            .map_err(|_| KeyMemoryError::Io)?;
        Ok(Some(bytes))
    }

    /// Atomically replaces `path` with `bytes` (0600).
    fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), KeyMemoryError> {
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|_| KeyMemoryError::Io)
    }

    fn remove_file(&self, path: &Path) -> Result<(), KeyMemoryError> {
        if path.exists() {
            self.wipe_and_remove(path).map_err(|_| KeyMemoryError::Io)?;
        }
        Ok(())
    }

    /// Overwrites a file's bytes in place with zeros, syncs, unlinks it and
    /// makes the removal durable, so a scalar does not linger in its blocks on
    /// simple filesystems (journaling and flash translation layers may still
    /// keep copies: the file memory is for development, not tamper resistance).
    fn wipe_and_remove(&self, path: &Path) -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(0);
        file.write_all(&vec![0u8; len])?;
        file.sync_all()?;
        drop(file);
        fs::remove_file(path)?;
        File::open(&self.dir)?.sync_all()
    }

    fn signing_key(&self, slot: KeySlot) -> Result<Option<SigningKey>, KeyMemoryError> {
        let Some(bytes) = Self::read_file(&self.key_path(slot))? else {
            return Ok(None);
        };
        if bytes.len() != SCALAR_LEN {
            return Err(KeyMemoryError::Corrupt);
        }
        SigningKey::from_slice(&bytes)
            .map(Some)
            .map_err(|_| KeyMemoryError::Corrupt)
    }
}

impl KeyMemory for FileKeyMemory {
    fn load(&mut self) -> Result<Records, KeyMemoryError> {
        match Self::read_file(&self.dir.join(RECORDS_FILE))? {
            Some(bytes) => Records::decode(&bytes),
            None => Ok(Records::default()),
        }
    }

    fn commit(&mut self, records: &Records) -> Result<(), KeyMemoryError> {
        // The records may hold the transaction key set.
        let encoded = Zeroizing::new(records.encode());
        self.replace_file(&self.dir.join(RECORDS_FILE), &encoded)
    }

    fn generate(&mut self, slot: KeySlot, variation: &[u8]) -> Result<PublicKey, KeyMemoryError> {
        let path = self.key_path(slot);
        self.remove_file(&path)?;
        let mut randomness = Zeroizing::new([0u8; 48]);
        self.random(&mut randomness[..])?;
        let scalar =
            derive_scalar(&randomness, variation, b"key memory").ok_or(KeyMemoryError::Crypto)?;
        let key = SigningKey::from(scalar);
        let bytes = Zeroizing::new(key.to_bytes());
        self.replace_file(&path, &bytes)?;
        Ok(PublicKey::from(key.verifying_key()))
    }

    fn erase(&mut self, slot: KeySlot) -> Result<(), KeyMemoryError> {
        self.remove_file(&self.key_path(slot))
    }

    fn public_key(&mut self, slot: KeySlot) -> Result<Option<PublicKey>, KeyMemoryError> {
        Ok(self
            .signing_key(slot)?
            .map(|key| PublicKey::from(key.verifying_key())))
    }

    fn sign_digest(
        &mut self,
        slot: KeySlot,
        digest: &[u8; 48],
    ) -> Result<Signature, KeyMemoryError> {
        let key = self.signing_key(slot)?.ok_or(KeyMemoryError::NoKey)?;
        key.sign_prehash_with_rng(&mut getrandom::SysRng, digest)
            .map_err(|_| KeyMemoryError::Crypto)
    }

    fn agree(
        &mut self,
        slot: KeySlot,
        peer: &PublicKey,
    ) -> Result<Zeroizing<[u8; 48]>, KeyMemoryError> {
        let key = self.signing_key(slot)?.ok_or(KeyMemoryError::NoKey)?;
        Ok(crate::channel::ecdh(key.as_nonzero_scalar(), peer))
    }

    fn random(&mut self, out: &mut [u8]) -> Result<(), KeyMemoryError> {
        getrandom::fill(out).map_err(|_| KeyMemoryError::Random)
    }
}
