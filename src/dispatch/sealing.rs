//! Sealing of the secrets the server must read back: AccessKey secrets, with which it
//! recomputes the signature of each ECS API request (a hash, as tokens get, would not do).
//!
//! ChaCha20-Poly1305 (ring) under one 256-bit key kept in a file of its own, by default
//! `<data-dir>/secret.key` (`--secret-key-file`). A sealed secret is `nonce (12 bytes) ||
//! ciphertext || tag (16 bytes)`: each seal draws a random nonce, and a key seals only a few
//! secrets (two per account), far from where random 96-bit nonces could repeat. The associated
//! data names the row the secret belongs to (the access key id), so a sealed secret copied into
//! another row does not open. The database alone (a dump, a backup, a disk image without the
//! key file) reveals no secret; the key file alone reveals nothing either.
//!
//! Depends on nothing of fleetrun; it knows files and bytes, not rows.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize as _, Zeroizing};

/// Length of the key, and so of the key file, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the authentication tag after the ciphertext.
const TAG_LEN: usize = 16;

/// What can go wrong with the key file or a sealed secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the secret key file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the secret key file {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key this server wrote.
    #[error(
        "the secret key file {} holds {len} bytes, not {KEY_LEN}: restore the right file from a backup \
         (the AccessKey secrets in the database open only with it), or move it away to start with a new \
         key and create new AccessKeys",
        .path.display()
    )]
    Size { path: PathBuf, len: u64 },
    /// Users other than the server's may read or write the file.
    #[error(
        "other users have access to the secret key file {} (mode {mode:04o}): run `chmod 600 {}`; \
         if anyone else may have read it, create new AccessKeys and delete the old ones",
        .path.display(),
        .path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("the system's random number generator failed")]
    Random,
    /// ring refused a key or a seal; neither happens with a 32-byte key and a secret in memory.
    #[error("the cipher refused the key or the secret")]
    Cipher,
    /// Sealed under another key, for another row, or altered since.
    #[error("the sealed secret does not open with this key and row")]
    Open,
}

/// The key that seals and opens secrets. Its `Debug` shows nothing of it.
pub struct SecretKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// A new random key, kept in memory only (tests, and the first start before it is written).
    pub fn generate() -> Result<SecretKey, Error> {
        SecretKey::from_bytes(&*random_key()?)
    }

    /// Reads the key from `path`, or creates the file with a new random key (mode 0600) when
    /// there is none. Refuses a file of another size or one that other users may read or
    /// write, rather than using (or tightening) a key that may have leaked.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, Error> {
        match std::fs::File::open(path) {
            Ok(file) => SecretKey::read(path, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretKey::create(path),
            Err(source) => Err(Error::Read {
                path: path.into(),
                source,
            }),
        }
    }

    fn read(path: &Path, mut file: std::fs::File) -> Result<SecretKey, Error> {
        let read_error = |source| Error::Read {
            path: path.into(),
            source,
        };
        let metadata = file.metadata().map_err(read_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = metadata.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(Error::Mode {
                    path: path.into(),
                    mode,
                });
            }
        }
        if metadata.len() != KEY_LEN as u64 {
            return Err(Error::Size {
                path: path.into(),
                len: metadata.len(),
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        file.read_exact(&mut bytes[..]).map_err(read_error)?;
        SecretKey::from_bytes(&bytes)
    }

    /// Creates the key file, exclusively (`create_new`): when another process created it
    /// first, its key is read instead, so both use one key.
    fn create(path: &Path) -> Result<SecretKey, Error> {
        let create_error = |source| Error::Create {
            path: path.into(),
            source,
        };
        let bytes = random_key()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return SecretKey::load_or_create(path),
            Err(source) => return Err(create_error(source)),
        };
        if let Err(source) = file.write_all(&bytes[..]).and_then(|()| file.sync_all()) {
            // A short key left behind would be refused at every later start.
            let _ = std::fs::remove_file(path);
            return Err(create_error(source));
        }
        // The file's name must survive a power cut too: every secret sealed from now on
        // opens only with this key.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(create_error)?;
        tracing::info!(
            path = %path.display(),
            "created the secret key that seals AccessKey secrets; back it up with the database"
        );
        SecretKey::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<SecretKey, Error> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| Error::Cipher)?;
        Ok(SecretKey {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `secret` for the row named `ad`: `nonce || ciphertext || tag`.
    pub fn seal(&self, ad: &str, secret: &str) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| Error::Random)?;
        // Sized once, so the plaintext is never left behind in a buffer given up on growth.
        let mut sealed = Vec::with_capacity(NONCE_LEN + secret.len() + TAG_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(secret.as_bytes());
        let nonce = Nonce::assume_unique_for_key(nonce);
        match self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(ad.as_bytes()), &mut sealed[NONCE_LEN..])
        {
            Ok(tag) => {
                sealed.extend_from_slice(tag.as_ref());
                Ok(sealed)
            }
            Err(_) => {
                sealed.zeroize();
                Err(Error::Cipher)
            }
        }
    }

    /// Opens what [`SecretKey::seal`] sealed for the row named `ad`; [`Error::Open`] when it was
    /// sealed under another key or for another row, or has been altered.
    pub fn open(&self, ad: &str, sealed: &[u8]) -> Result<Zeroizing<String>, Error> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Open)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(ad.as_bytes()), &mut buffer)
            .map_err(|_| Error::Open)?
            .len();
        buffer.truncate(len);
        match String::from_utf8(std::mem::take(&mut *buffer)) {
            Ok(secret) => Ok(Zeroizing::new(secret)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(Error::Open)
            }
        }
    }
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, Error> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new().fill(&mut bytes[..]).map_err(|_| Error::Random)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const SECRET: &str = "n8QzV1cPq4Rk7TfWb2YxHs5Lm9Gd3J";

    #[test]
    fn sealed_bytes_do_not_contain_the_secret_and_open_only_for_their_own_key_id() {
        let key = SecretKey::generate().unwrap();

        let sealed = key.seal("LTAIaaaaaaaaaaaaaaaaaaaa", SECRET).unwrap();

        assert_eq!(sealed.len(), NONCE_LEN + SECRET.len() + TAG_LEN);
        assert!(
            !sealed.windows(8).any(|w| SECRET.as_bytes().windows(8).any(|s| s == w)),
            "no 8 bytes of the secret appear in the sealed form"
        );
        assert_eq!(*key.open("LTAIaaaaaaaaaaaaaaaaaaaa", &sealed).unwrap(), SECRET);
        assert!(matches!(
            key.open("LTAIbbbbbbbbbbbbbbbbbbbb", &sealed),
            Err(Error::Open)
        ));
        let mut altered = sealed.clone();
        altered[NONCE_LEN] ^= 1;
        assert!(matches!(
            key.open("LTAIaaaaaaaaaaaaaaaaaaaa", &altered),
            Err(Error::Open)
        ));
        assert!(matches!(
            key.open("LTAIaaaaaaaaaaaaaaaaaaaa", &sealed[..20]),
            Err(Error::Open)
        ));
    }

    #[test]
    fn each_seal_draws_its_own_nonce_and_another_key_opens_nothing() {
        let (key, other) = (SecretKey::generate().unwrap(), SecretKey::generate().unwrap());

        let (first, second) = (key.seal("id", SECRET).unwrap(), key.seal("id", SECRET).unwrap());

        assert_ne!(first, second);
        assert!(matches!(other.open("id", &first), Err(Error::Open)));
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
    }

    #[test]
    fn the_key_file_is_created_private_once_and_read_back_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");

        let first = SecretKey::load_or_create(&path).unwrap();
        let again = SecretKey::load_or_create(&path).unwrap();

        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
        assert_eq!(metadata.len(), KEY_LEN as u64);
        let sealed = first.seal("id", SECRET).unwrap();
        assert_eq!(*again.open("id", &sealed).unwrap(), SECRET);
    }

    #[test]
    fn a_key_file_others_may_read_or_of_the_wrong_size_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let loose = dir.path().join("loose.key");
        SecretKey::load_or_create(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o640)).unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"not a key").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();

        let loose_refused = SecretKey::load_or_create(&loose).unwrap_err();
        let short_refused = SecretKey::load_or_create(&short).unwrap_err();

        assert!(matches!(loose_refused, Error::Mode { mode: 0o640, .. }));
        assert!(loose_refused.to_string().contains("chmod 600"), "{loose_refused}");
        assert!(matches!(short_refused, Error::Size { len: 9, .. }));
        assert!(short_refused.to_string().contains("backup"), "{short_refused}");
    }
}
