//! Secrets on disk: the pair key both sides of an FT pair hold, and any
//! other small secret (the status endpoint's bearer token) kept the same
//! way — one line of hex in a file only its owner may read.
//!
//! ```text
//! # lockstep pair key: anyone holding it can act as either side of the pair
//! lockstep-pair-key-v1 3f6c…(64 hex digits)
//! ```
//!
//! A missing file, a file that group or others may read or write, a
//! symbolic link or anything but one well-formed key line is refused with
//! an error that says what to do. The key's bytes never reach a log: its
//! `Debug` prints a fingerprint only.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::digest;
use thiserror::Error;

/// Bytes of a pair key (the Noise PSK).
pub const PAIR_KEY_LEN: usize = 32;
/// The word before a pair key's hex digits.
pub const PAIR_KEY_LABEL: &str = "lockstep-pair-key-v1";
/// The word before a bearer token's hex digits.
pub const TOKEN_LABEL: &str = "lockstep-token-v1";
/// Larger files are not key files.
const MAX_FILE: u64 = 4096;

/// Why a secret could not be read or written.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{}: no such file (create one with `lockstep keygen {}` and copy it to both hosts)", path.display(), path.display())]
    Missing { path: PathBuf },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: mode {mode:04o} lets others read or change it; a key must be private to its owner (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{}: {why}", path.display())]
    Malformed { path: PathBuf, why: String },
    #[error("{} exists already (remove it first: a key is never overwritten)", path.display())]
    Exists { path: PathBuf },
    #[error("no randomness for a key")]
    NoRandomness,
}

/// The secret both sides of a pair share: it authenticates the logging
/// channel's handshake (the Noise PSK). Overwritten when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PairKey([u8; PAIR_KEY_LEN]);

impl PairKey {
    pub fn from_bytes(bytes: [u8; PAIR_KEY_LEN]) -> PairKey {
        PairKey(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Result<PairKey, KeyError> {
        let mut k = [0u8; PAIR_KEY_LEN];
        fill_random(&mut k)?;
        Ok(PairKey(k))
    }

    pub(crate) fn bytes(&self) -> &[u8; PAIR_KEY_LEN] {
        &self.0
    }

    /// Reads a pair key file, checking who may read it.
    pub fn read(path: &Path) -> Result<PairKey, KeyError> {
        let bytes = read_secret(path, PAIR_KEY_LABEL)?;
        let key: [u8; PAIR_KEY_LEN] =
            bytes.try_into().map_err(|b: Vec<u8>| KeyError::Malformed {
                path: path.to_path_buf(),
                why: format!("the key has {} bytes, a pair key {PAIR_KEY_LEN}", b.len()),
            })?;
        Ok(PairKey(key))
    }

    /// Writes a fresh key file (mode 0600, never over an existing file).
    pub fn write_new(path: &Path) -> Result<PairKey, KeyError> {
        let key = PairKey::generate()?;
        write_secret(
            path,
            PAIR_KEY_LABEL,
            "lockstep pair key: anyone holding it can act as either side of the pair",
            &key.0,
        )?;
        Ok(key)
    }

    /// A short public name for the key (the first 8 bytes of its SHA-256,
    /// in hex): lets an operator check both hosts hold the same key
    /// without showing it.
    pub fn fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.0);
        hex(&d.as_ref()[..8])
    }
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairKey(fingerprint {})", self.fingerprint())
    }
}

impl Drop for PairKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites a secret so it does not linger in freed memory.
pub(crate) fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a byte;
        // the volatile write only keeps the compiler from eliding it.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// Fills `buf` from the kernel's entropy pool (through ring).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| KeyError::NoRandomness)
}

/// Writes a fresh bearer token file (32 random bytes as hex) and returns
/// the token as it goes on the wire.
pub fn write_new_token(path: &Path) -> Result<String, KeyError> {
    let mut t = [0u8; 32];
    fill_random(&mut t)?;
    write_secret(
        path,
        TOKEN_LABEL,
        "lockstep status token: lets its holder read this VMM's status endpoint",
        &t,
    )?;
    let token = hex(&t);
    wipe(&mut t);
    Ok(token)
}

/// Reads a bearer token file (as `write_new_token` writes it); the token
/// is its hex text.
pub fn read_token(path: &Path) -> Result<String, KeyError> {
    let mut bytes = read_secret(path, TOKEN_LABEL)?;
    if bytes.len() < 16 {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            why: "a token needs at least 16 bytes (32 hex digits)".into(),
        });
    }
    let token = hex(&bytes);
    wipe(&mut bytes);
    Ok(token)
}

/// Reads `LABEL HEX` from a private file; `#` lines are comments.
fn read_secret(path: &Path, label: &str) -> Result<Vec<u8>, KeyError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            KeyError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            KeyError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    // O_NOFOLLOW: a link planted in place of the key is refused, not read.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE).read_to_string(&mut text).map_err(io)?;
    let malformed = |why: String| KeyError::Malformed {
        path: path.to_path_buf(),
        why,
    };
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines
        .next()
        .ok_or_else(|| malformed(format!("no `{label} HEX` line")))?;
    if lines.next().is_some() {
        return Err(malformed("more than one key line".into()));
    }
    let digits = line.strip_prefix(label).map(str::trim).ok_or_else(|| {
        malformed(format!(
            "expected `{label} HEX` (is this the right kind of file?)"
        ))
    })?;
    let bytes = unhex(digits).ok_or_else(|| malformed("the key is not hex digits".into()))?;
    text.clear();
    Ok(bytes)
}

/// Creates `path` (mode 0600, failing if it exists) with a comment and
/// `LABEL HEX`, and syncs it.
fn write_secret(path: &Path, label: &str, comment: &str, bytes: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let mut text = format!("# {comment}\n{label} {}\n", hex(bytes));
    let result = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    // SAFETY: the string's bytes are overwritten with zeros, which is valid
    // UTF-8, and the string is not used again but to be dropped.
    wipe(unsafe { text.as_bytes_mut() });
    result.map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_written_key_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.key");
        let key = PairKey::write_new(&path).unwrap();
        assert_eq!(PairKey::read(&path).unwrap(), key);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            PairKey::write_new(&path),
            Err(KeyError::Exists { .. })
        ));
        // The key is not in its Debug form.
        assert!(!format!("{key:?}").contains(&hex(key.bytes())));
    }

    #[test]
    fn exposed_missing_and_malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.key");
        assert!(matches!(
            PairKey::read(&path),
            Err(KeyError::Missing { .. })
        ));
        PairKey::write_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PairKey::read(&path).unwrap_err();
        assert!(matches!(e, KeyError::Exposed { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "lockstep-pair-key-v1 zz\n").unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            PairKey::read(&bad),
            Err(KeyError::Malformed { .. })
        ));
        let token = dir.path().join("token");
        write_new_token(&token).unwrap();
        // A token file is not a pair key.
        assert!(matches!(
            PairKey::read(&token),
            Err(KeyError::Malformed { .. })
        ));
        assert_eq!(read_token(&token).unwrap().len(), 64);
    }
}
