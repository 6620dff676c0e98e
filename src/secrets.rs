//! OTP codes sealed at rest: what `deliveries.otp_code` holds.
//!
//! A code is sealed with XChaCha20-Poly1305 under a 32-byte key, with a fresh
//! random 24-byte nonce and the delivery's id as associated data, so a sealed
//! code copied to another row does not open. It is stored as text,
//! `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`: the key id (a hash of
//! the key, never the key) says which key opens it, so codes sealed with the
//! previous key still open after a rotation. The database file, its WAL, dead
//! Postgres rows, dumps and backups then hold no readable code.
//!
//! The key comes from the environment variable `otp.key_env` names, or, on
//! the embedded SQLite default without it, from a key file beside the
//! database (`<database file>.key`, created with mode 0600 on first run).
//! Nothing here prints a key or a code: errors name the setting, the
//! variable or the file, and why.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest;

use crate::config::OtpConfig;
use crate::domain::otp::OtpCode;
use crate::store::DbFile;

/// The format tag every sealed code starts with.
const VERSION: &str = "v1";

/// Bytes in a key.
const KEY_BYTES: usize = 32;

/// Bytes in a nonce.
const NONCE_BYTES: usize = 24;

/// Why the OTP key could not be had. No message holds a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A variable named in the configuration is unset or does not hold a key.
    #[error("{key}: environment variable {var} {reason}")]
    Env {
        /// The setting that names the variable (`otp.key_env`, `otp.previous_key_env`).
        key: &'static str,
        /// The variable.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file is unusable.
    #[error("OTP key file {}: {reason}", path.display())]
    File {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Postgres and no `otp.key_env`.
    #[error("otp.key_env: {POSTGRES_NEEDS_ENV}")]
    PostgresNeedsEnv,
}

/// Why Postgres needs `otp.key_env`.
const POSTGRES_NEEDS_ENV: &str = "not set, and Postgres needs it: every worker must seal and \
    open OTP codes with one key, which a key file on one machine cannot give; set `[otp] \
    key_env = \"TUMA_OTP_KEY\"` and put 32 random bytes in that variable, base64 or hex (for \
    example `openssl rand -base64 32`)";

impl KeyError {
    /// The error as a configuration error of `file`, naming the file as
    /// every configuration error does, when the configuration is at fault (a
    /// variable unset or not holding a key, Postgres without `key_env`);
    /// itself for the key file, which names itself.
    pub fn in_config(self, file: &Path) -> Result<crate::config::ConfigError, KeyError> {
        let (key, reason) = match self {
            KeyError::Env { key, var, reason } => {
                (key, format!("environment variable {var} {reason}"))
            }
            KeyError::PostgresNeedsEnv => ("otp.key_env", POSTGRES_NEEDS_ENV.to_owned()),
            KeyError::File { .. } => return Err(self),
        };
        Ok(crate::config::ConfigError {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        })
    }
}

/// Why a stored code did not open. No message holds the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not in the sealed format (written before codes were sealed, or by hand).
    #[error("the stored code is not sealed")]
    NotSealed,
    /// Sealed with a key tuma does not have now.
    #[error(
        "it was sealed with key {0}, which is neither the current OTP key nor \
         otp.previous_key_env (lost or rotated away)"
    )]
    UnknownKey(String),
    /// The key is known but the code does not open: changed, or copied from another delivery.
    #[error("it does not open with key {0} (changed, or copied from another delivery)")]
    DoesNotOpen(String),
    /// It opened, but is not a code.
    #[error("the opened code is not usable: {0}")]
    NotACode(String),
}

/// One key and its cipher.
struct SealingKey {
    /// The hash prefix that names it in sealed codes.
    id: String,
    cipher: XChaCha20Poly1305,
}

impl SealingKey {
    fn new(bytes: &[u8; KEY_BYTES]) -> SealingKey {
        let mut hash = sha2::Sha256::new();
        hash.update(b"tuma otp key id\0");
        hash.update(bytes);
        let id = hash
            .finalize()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        SealingKey {
            id,
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }
}

/// The keys OTP codes are sealed and opened with: the current one seals,
/// and it or the previous one opens. `Debug` shows the key ids only.
pub struct OtpKeys {
    current: SealingKey,
    previous: Option<SealingKey>,
    /// Where the current key came from, for `tuma check` and logs.
    source: String,
}

impl fmt::Debug for OtpKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpKeys")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .field("source", &self.source)
            .finish()
    }
}

impl OtpKeys {
    /// Keys from raw bytes (tests, benchmarks): `current` seals, both open.
    pub fn from_bytes(current: &[u8; KEY_BYTES], previous: Option<&[u8; KEY_BYTES]>) -> OtpKeys {
        OtpKeys {
            current: SealingKey::new(current),
            previous: previous.map(SealingKey::new),
            source: "given".into(),
        }
    }

    /// The keys the configuration names in the environment, if it names one
    /// (`tuma check` reads them so; [`OtpKeys::load`] too).
    pub fn from_env(config: &OtpConfig) -> Result<Option<OtpKeys>, KeyError> {
        let previous = config
            .previous_key_env
            .as_deref()
            .map(|var| key_from_env("otp.previous_key_env", var))
            .transpose()?;
        let Some(var) = config.key_env.as_deref() else {
            return Ok(None);
        };
        let current = key_from_env("otp.key_env", var)?;
        Ok(Some(OtpKeys {
            current: SealingKey::new(&current),
            previous: previous.as_ref().map(SealingKey::new),
            source: format!("environment variable {var}"),
        }))
    }

    /// The keys for an app on the database at `db`: from `otp.key_env`;
    /// else, on SQLite, the key file beside the database (created on first
    /// run), or a key of this process alone for an in-memory database; on
    /// Postgres, an error. Read before the database is opened
    /// ([`DbFile::of_url`]), so a bad key touches no database.
    pub fn load(config: &OtpConfig, db: &DbFile) -> Result<OtpKeys, KeyError> {
        if let Some(keys) = OtpKeys::from_env(config)? {
            return Ok(keys);
        }
        let previous = config
            .previous_key_env
            .as_deref()
            .map(|var| key_from_env("otp.previous_key_env", var))
            .transpose()?;
        let (current, source) = match db {
            DbFile::Postgres => return Err(KeyError::PostgresNeedsEnv),
            DbFile::InMemory => (rand::random(), "this process (in-memory database)".into()),
            DbFile::Sqlite(file) => {
                let path = key_file_path(file);
                let key = key_from_file(&path)?;
                (key, format!("key file {}", path.display()))
            }
        };
        Ok(OtpKeys {
            current: SealingKey::new(&current),
            previous: previous.as_ref().map(SealingKey::new),
            source,
        })
    }

    /// Where the current key came from, and the ids of both keys (never a key).
    pub fn describe(&self) -> String {
        match &self.previous {
            Some(p) => format!(
                "key {} from {}; previous key {}",
                self.current.id, self.source, p.id
            ),
            None => format!("key {} from {}", self.current.id, self.source),
        }
    }

    /// Seals `code` for the delivery `delivery_id`.
    pub fn seal(&self, delivery_id: &str, code: &OtpCode) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = self
            .current
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: code.expose().as_bytes(),
                    aad: delivery_id.as_bytes(),
                },
            )
            // Encryption fails only for messages of gigabytes.
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_BYTES + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        format!(
            "{VERSION}.{}.{}",
            self.current.id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        )
    }

    /// Opens a code sealed for the delivery `delivery_id`.
    pub fn open(&self, delivery_id: &str, stored: &str) -> Result<OtpCode, OpenError> {
        let mut parts = stored.splitn(3, '.');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::NotSealed);
        };
        let key = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let does_not_open = || OpenError::DoesNotOpen(id.to_owned());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| does_not_open())?;
        if raw.len() <= NONCE_BYTES {
            return Err(does_not_open());
        }
        let (nonce, sealed) = raw.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| does_not_open())?;
        let plain = key
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: delivery_id.as_bytes(),
                },
            )
            .map_err(|_| does_not_open())?;
        let text = String::from_utf8(plain).map_err(|_| OpenError::NotACode("not text".into()))?;
        OtpCode::parse(&text).map_err(|e| OpenError::NotACode(e.to_string()))
    }
}

/// The key file of a SQLite database file: `tuma.db` → `tuma.db.key`.
pub fn key_file_path(db_file: &Path) -> PathBuf {
    let mut name = db_file.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// Reads a key written as base64 (standard or URL-safe, padded or not) or
/// as 64 hex digits; surrounding whitespace is ignored.
fn parse_key(text: &str) -> Result<[u8; KEY_BYTES], String> {
    let text = text.trim();
    let bytes = if text.len() == 2 * KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..KEY_BYTES)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "is not hex".to_owned())?
    } else {
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|e| e.decode(text).ok())
            .ok_or_else(|| "is neither base64 nor 64 hex digits".to_owned())?
    };
    <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "must hold {KEY_BYTES} bytes (base64 or hex), but holds {}",
            bytes.len()
        )
    })
}

fn key_from_env(key: &'static str, var: &str) -> Result<[u8; KEY_BYTES], KeyError> {
    let err = |reason: String| KeyError::Env {
        key,
        var: var.to_owned(),
        reason,
    };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse_key(&v).map_err(err),
        Ok(_) => Err(err("is empty".into())),
        Err(std::env::VarError::NotPresent) => Err(err("is not set".into())),
        Err(std::env::VarError::NotUnicode(_)) => Err(err("is not text".into())),
    }
}

/// Reads the key file, creating it on first run. An existing one must be a
/// regular file that only its owner can read or write, holding one key.
fn key_from_file(path: &Path) -> Result<[u8; KEY_BYTES], KeyError> {
    let err = |reason: String| KeyError::File {
        path: path.to_owned(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(err("is not a regular file".into()));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "has mode {mode:04o}, so others may read it; it must be 0600 \
                         (chmod 600 {})",
                        path.display()
                    )));
                }
            }
            let text =
                std::fs::read_to_string(path).map_err(|e| err(format!("cannot be read: {e}")))?;
            parse_key(&text).map_err(|reason| err(format!("does not hold a key: it {reason}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(path),
        Err(e) => Err(err(format!("cannot be read: {e}"))),
    }
}

/// Writes a new random key to a temporary file with mode 0600 and links it
/// in place: of two processes starting at once, one key wins and both use it.
fn create_key_file(path: &Path) -> Result<[u8; KEY_BYTES], KeyError> {
    let err = |reason: String| KeyError::File {
        path: path.to_owned(),
        reason,
    };
    let key: [u8; KEY_BYTES] = rand::random();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        file.write_all(format!("{text}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(dir) = std::fs::File::open(dir)
            {
                let _ = dir.sync_all();
            }
            tracing::info!(file = %path.display(), "created the OTP key file");
            Ok(key)
        }
        // Another process made it first: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => key_from_file(path),
        Err(e) => Err(err(format!("cannot be created: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(digits: &str) -> OtpCode {
        OtpCode::parse(digits).unwrap()
    }

    #[test]
    fn a_sealed_code_opens_for_its_own_delivery_only() {
        let keys = OtpKeys::from_bytes(&[7; 32], None);
        let sealed = keys.seal("d-1", &code("4815162342"));
        assert!(sealed.starts_with("v1."), "{sealed}");
        assert!(!sealed.contains("4815162342"));
        assert_eq!(keys.open("d-1", &sealed).unwrap().expose(), "4815162342");
        assert!(matches!(
            keys.open("d-2", &sealed),
            Err(OpenError::DoesNotOpen(_))
        ));
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let keys = OtpKeys::from_bytes(&[7; 32], None);
        assert_ne!(
            keys.seal("d", &code("123456")),
            keys.seal("d", &code("123456"))
        );
    }

    #[test]
    fn codes_sealed_with_the_previous_key_open_and_new_ones_use_the_current() {
        let old = OtpKeys::from_bytes(&[1; 32], None);
        let sealed_old = old.seal("d", &code("123456"));
        let rotated = OtpKeys::from_bytes(&[2; 32], Some(&[1; 32]));
        assert_eq!(rotated.open("d", &sealed_old).unwrap().expose(), "123456");
        let sealed_new = rotated.seal("d", &code("654321"));
        assert!(matches!(
            old.open("d", &sealed_new),
            Err(OpenError::UnknownKey(_))
        ));
        let after = OtpKeys::from_bytes(&[2; 32], None);
        assert!(matches!(
            after.open("d", &sealed_old),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn plain_tampered_or_foreign_values_do_not_open() {
        let keys = OtpKeys::from_bytes(&[7; 32], None);
        let sealed = keys.seal("d", &code("123456"));
        assert_eq!(keys.open("d", "123456"), Err(OpenError::NotSealed));
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(matches!(
            keys.open("d", &flipped),
            Err(OpenError::DoesNotOpen(_))
        ));
        let other = OtpKeys::from_bytes(&[8; 32], None);
        // Same key id claimed, other key: forge the id.
        let forged = sealed.replacen(&keys.current.id, &other.current.id, 1);
        assert!(matches!(
            other.open("d", &forged),
            Err(OpenError::DoesNotOpen(_))
        ));
    }

    #[test]
    fn keys_are_read_as_base64_or_hex_and_must_be_32_bytes() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [9; 32]);
        assert_eq!(parse_key(&format!(" {b64}\n")).unwrap(), [9; 32]);
        assert_eq!(parse_key(&"0a".repeat(32)).unwrap(), [10; 32]);
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 31]);
        assert!(parse_key(&short).unwrap_err().contains("holds 31"));
        assert!(
            parse_key("not a key!")
                .unwrap_err()
                .contains("neither base64")
        );
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let keys = OtpKeys::from_bytes(&[7; 32], Some(&[8; 32]));
        let (current, previous) = (&keys.current.id, &keys.previous.as_ref().unwrap().id);
        assert_eq!(current.len(), 8);
        assert_ne!(current, previous);
        assert_eq!(
            format!("{keys:?}"),
            format!(
                "OtpKeys {{ current: {current:?}, previous: Some({previous:?}), source: \"given\" }}"
            )
        );
        assert_eq!(
            keys.describe(),
            format!("key {current} from given; previous key {previous}")
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_created_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = key_file_path(&dir.path().join("tuma.db"));
        assert!(path.ends_with("tuma.db.key"));
        let first = key_from_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            key_from_file(&path).unwrap(),
            first,
            "the same key next run"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_or_of_the_wrong_length_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tuma.db.key");
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = key_from_file(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(key_from_file(&path).is_ok());
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.encode([1u8; 16]),
        )
        .unwrap();
        let e = key_from_file(&path).unwrap_err().to_string();
        assert!(e.contains("tuma.db.key") && e.contains("holds 16"), "{e}");
    }
}
