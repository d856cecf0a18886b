//! Private-key files and crash-safe file replacement, shared by every role that
//! keeps a P-384 signing key on disk (the central system here, the
//! manufacturer and the personalization unit in `imprint-host`).
//!
//! ```text
//!  SigningKey ─▶ PKCS#8 PEM (zeroized buffer)
//!      ─▶ DIR/.NAME.tmp-XXXX  (created 0600, O_EXCL) ─▶ write ─▶ fsync
//!      ─▶ link/rename to DIR/NAME ─▶ fsync DIR
//! ```
//!
//! A key file is created with mode 0600 from the start (never widened and then
//! narrowed), and a crash at any point leaves either no key file or a
//! complete one. Reading refuses a key file that group or others may access.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p384::ecdsa::SigningKey;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use zeroize::Zeroizing;

#[cfg(test)]
mod tests;

/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Mode of directories that hold private keys.
pub const KEY_DIR_MODE: u32 = 0o700;

/// Mode of public files (certificates, requests).
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// What to do when the destination of a write already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`KeyFileError::Exists`]; the existing file is untouched.
    Refuse,
    /// Replace the existing file atomically.
    Replace,
}

/// A failure reading or writing key material or other files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A file-system operation failed.
    #[error("cannot {op} {path}", path = .path.display())]
    Io {
        /// What was being done ("create", "read", …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The destination exists and [`Overwrite::Refuse`] was asked for.
    #[error("{path} already exists; refusing to overwrite it", path = .0.display())]
    Exists(PathBuf),
    /// A key file that group or others may read or write.
    #[error(
        "{path} has mode {mode:03o}; a private key file must not be accessible to group or others (chmod 600 it)",
        path = .path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that is not a regular file.
    #[error("{path} is not a regular file", path = .0.display())]
    NotAFile(PathBuf),
    /// The key could not be encoded as PKCS#8.
    #[error("cannot encode the private key as PKCS#8")]
    Encode(#[source] p384::pkcs8::Error),
    /// The file is not text, so not PEM.
    #[error("{path} is not a PEM file", path = .0.display())]
    NotPem(PathBuf),
    /// The file is not a PKCS#8 PEM P-384 private key.
    #[error("{path} is not a PKCS#8 PEM P-384 private key", path = .path.display())]
    Decode {
        /// The key file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: p384::pkcs8::Error,
    },
    /// The operating system's random generator failed.
    #[error("the operating system random generator failed")]
    Random,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + use<> {
    let path = path.to_path_buf();
    move |source| KeyFileError::Io { op, path, source }
}

/// Generates a P-384 signing key from the operating system's random generator
/// (uniform, by rejection sampling of 48-byte candidates).
pub fn generate_signing_key() -> Result<SigningKey, KeyFileError> {
    for _ in 0..64 {
        let mut candidate = Zeroizing::new([0u8; 48]);
        getrandom::fill(&mut candidate[..]).map_err(|_| KeyFileError::Random)?;
        if let Ok(key) = SigningKey::from_slice(&candidate[..]) {
            return Ok(key);
        }
    }
    Err(KeyFileError::Random)
}

/// Creates `dir` (and missing parents) with mode 0700. An existing directory
/// is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), KeyFileError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(KEY_DIR_MODE)
        .create(dir)
        .map_err(io_error("create directory", dir))
}

/// Writes `key` to `path` as PKCS#8 PEM with mode 0600, atomically, refusing to
/// overwrite an existing file.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(KeyFileError::Encode)?;
    write_atomic(path, pem.as_bytes(), KEY_FILE_MODE, Overwrite::Refuse)
}

/// Reads a PKCS#8 PEM P-384 key written by [`write_signing_key`]. Refuses a
/// file that group or others may access; the file's bytes are zeroized after use.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let metadata = file.metadata().map_err(io_error("inspect", path))?;
    if !metadata.is_file() {
        return Err(KeyFileError::NotAFile(path.to_path_buf()));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(512));
    file.read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| KeyFileError::NotPem(path.to_path_buf()))?;
    SigningKey::from_pkcs8_pem(text).map_err(|source| KeyFileError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a whole (public) text file.
pub fn read_text(path: &Path) -> Result<String, KeyFileError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

/// Replaces (or creates) `path` with `bytes` so that a crash leaves either the
/// old content or the new, never a mix: a temporary file in the same directory
/// is created with `mode` (exclusively), written, fsynced, then moved into
/// place, and the directory is fsynced.
///
/// With [`Overwrite::Refuse`] the move is a hard link, which fails atomically
/// if `path` exists; on file systems without hard links it falls back to an
/// existence check followed by a rename.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: Overwrite,
) -> Result<(), KeyFileError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| KeyFileError::NotAFile(path.to_path_buf()))?
        .to_string_lossy()
        .into_owned();
    if overwrite == Overwrite::Refuse && fs::symlink_metadata(path).is_ok() {
        return Err(KeyFileError::Exists(path.to_path_buf()));
    }
    let (tmp, mut file) = create_temp(&dir, &name, mode)?;
    let result = (|| {
        file.write_all(bytes).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("sync", &tmp))?;
        drop(file);
        match overwrite {
            Overwrite::Replace => fs::rename(&tmp, path).map_err(io_error("replace", path)),
            Overwrite::Refuse => publish_no_clobber(&tmp, path),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

fn publish_no_clobber(tmp: &Path, path: &Path) -> Result<(), KeyFileError> {
    match fs::hard_link(tmp, path) {
        Ok(()) => fs::remove_file(tmp).map_err(io_error("remove", tmp)),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {
            Err(KeyFileError::Exists(path.to_path_buf()))
        }
        Err(_) => {
            if fs::symlink_metadata(path).is_ok() {
                return Err(KeyFileError::Exists(path.to_path_buf()));
            }
            fs::rename(tmp, path).map_err(io_error("create", path))
        }
    }
}

fn create_temp(dir: &Path, name: &str, mode: u32) -> Result<(PathBuf, File), KeyFileError> {
    for _ in 0..16 {
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|_| KeyFileError::Random)?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!(".{name}.tmp-{suffix}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(KeyFileError::Io {
                    op: "create",
                    path: tmp,
                    source,
                });
            }
        }
    }
    Err(KeyFileError::Io {
        op: "create a temporary file in",
        path: dir.to_path_buf(),
        source: ErrorKind::AlreadyExists.into(),
    })
}

fn sync_dir(dir: &Path) -> Result<(), KeyFileError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("sync directory", dir))
}
