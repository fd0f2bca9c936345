//! Signed checkpoints (Ed25519) and `audit keygen`.
//!
//! A hash chain alone proves nothing against someone who can write the
//! files: they can edit an entry and recompute every hash after it. A
//! `checkpoint` entry carries `details.signed_hash` (the `hash` of the entry
//! just before it, which is also the checkpoint's own `prev_hash`),
//! `details.interval` (the number of other entries after which the next
//! checkpoint is due), `details.key_id` (first 16 hex of SHA-256 of the raw
//! public key) and `details.signature`. Each signed hash covers, through the
//! chain, every entry before it; rewriting any of them changes that hash,
//! and without the private key the signature cannot follow.
//!
//! Two formats, told apart by `details.version`:
//!
//! - **v2** (`"version":2`, written since issue #12): the signature covers
//!   [`signed_message`]: a domain marker, the checkpoint's own `seq`,
//!   `signed_hash`, `interval` and `key_id`. Everything the verifier
//!   trusts in a checkpoint is signed.
//! - **v1** (no `version`, written before): the signature covers the 64
//!   hex characters of `signed_hash` only. Its `interval` and `key_id` are
//!   not signed, so the verifier never takes a v1 `interval` above
//!   [`LEGACY_INTERVAL`] (the only value the engine ever wrote).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuditError;

/// `details.version` of the checkpoints this writer signs.
pub const CHECKPOINT_VERSION: u64 = 2;
/// The first line of a v2 [`signed_message`]: no other message this key
/// could ever be asked to sign starts with it.
pub const SIGNED_MESSAGE_DOMAIN: &str = "continuity-audit-checkpoint-v2";
/// The most entries a v1 checkpoint may be followed by before the next
/// one: its `interval` is not signed, so a larger claim is not believed.
/// 1000 is the `checkpoint_every` every engine before v2 wrote.
pub const LEGACY_INTERVAL: u64 = 1000;

/// What a checkpoint's `details` hold.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckpointDetails {
    /// `None`: a v1 checkpoint.
    #[serde(default)]
    pub version: Option<u64>,
    pub signed_hash: String,
    pub signature: String,
    #[serde(default)]
    pub interval: Option<u64>,
    #[serde(default)]
    pub key_id: Option<String>,
}

/// Which format a checkpoint verified under, and what it vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Signed `seq`, `signed_hash`, `interval` and `key_id`.
    V2 { interval: u64 },
    /// Signed `signed_hash` only; `interval` is the trusted bound.
    V1 { interval: u64 },
}

impl Verified {
    pub fn interval(self) -> u64 {
        match self {
            Verified::V2 { interval } | Verified::V1 { interval } => interval,
        }
    }
}

/// `key_id` of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    hex::encode(&d[..8])
}

/// Reads a PKCS#8 PEM private key (as `openssl genpkey -algorithm ed25519`
/// or `continuity audit keygen` write it).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let pem = std::fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        AuditError::Key(format!(
            "{}: not an Ed25519 PKCS#8 PEM private key ({e})",
            path.display()
        ))
    })
}

/// Reads an SPKI PEM public key; a PKCS#8 private key file is accepted too
/// (its public half is used), so a test can point at either.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let pem = std::fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    if let Ok(k) = VerifyingKey::from_public_key_pem(&pem) {
        return Ok(k);
    }
    SigningKey::from_pkcs8_pem(&pem)
        .map(|k| k.verifying_key())
        .map_err(|e| {
            AuditError::Key(format!(
                "{}: not an Ed25519 SPKI PEM public key ({e})",
                path.display()
            ))
        })
}

/// The exact bytes a v2 checkpoint signature covers: five lines of ASCII,
/// each ended by `\n`, in this order:
///
/// ```text
/// continuity-audit-checkpoint-v2
/// seq=<the checkpoint's seq, decimal>
/// signed_hash=<64 lowercase hex>
/// interval=<decimal>
/// key_id=<16 lowercase hex>
/// ```
pub fn signed_message(seq: u64, signed_hash: &str, interval: u64, key_id: &str) -> Vec<u8> {
    format!(
        "{SIGNED_MESSAGE_DOMAIN}\nseq={seq}\nsigned_hash={signed_hash}\ninterval={interval}\nkey_id={key_id}\n"
    )
    .into_bytes()
}

/// The `details` object of the v2 checkpoint at `seq`, serialised
/// compactly with its members in a fixed order.
pub fn checkpoint_details(key: &SigningKey, seq: u64, signed_hash: &str, interval: u64) -> String {
    let id = key_id(&key.verifying_key());
    let sig = key.sign(&signed_message(seq, signed_hash, interval, &id));
    let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    format!(
        "{{\"version\":{CHECKPOINT_VERSION},\"signed_hash\":\"{signed_hash}\",\"interval\":{interval},\"key_id\":\"{id}\",\"signature\":\"{b64}\"}}"
    )
}

/// Checks the signature of the checkpoint at `seq`; `Ok` says which format
/// it verified under and the interval it vouches for, `Err` why it fails.
pub fn verify_signature(
    key: &VerifyingKey,
    seq: u64,
    d: &CheckpointDetails,
) -> Result<Verified, String> {
    let ours = key_id(key);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(d.signature.as_bytes())
        .map_err(|_| "bad signature: `signature` is not base64".to_string())?;
    let sig = Signature::from_slice(&raw)
        .map_err(|_| "bad signature: not a 64-byte Ed25519 signature".to_string())?;
    match d.version {
        Some(CHECKPOINT_VERSION) => {
            let (Some(interval), Some(id)) = (d.interval, d.key_id.as_deref()) else {
                return Err("bad signature: a v2 checkpoint needs `interval` and `key_id`".into());
            };
            if id != ours {
                return Err(format!(
                    "bad signature: checkpoint signed by key {id}, not by the given key {ours}"
                ));
            }
            if interval == 0 {
                return Err("bad signature: `interval` is 0".into());
            }
            key.verify(&signed_message(seq, &d.signed_hash, interval, id), &sig)
                .map_err(|_| "bad signature: Ed25519 verification failed".to_string())?;
            Ok(Verified::V2 { interval })
        }
        None => {
            if let Some(id) = &d.key_id {
                if *id != ours {
                    return Err(format!(
                        "bad signature: checkpoint signed by key {id}, not by the given key {ours}"
                    ));
                }
            }
            key.verify(d.signed_hash.as_bytes(), &sig).map_err(|_| {
                "bad signature: Ed25519 verification failed (legacy v1 checkpoint)".to_string()
            })?;
            let interval = d
                .interval
                .unwrap_or(LEGACY_INTERVAL)
                .clamp(1, LEGACY_INTERVAL);
            Ok(Verified::V1 { interval })
        }
        Some(v) => Err(format!(
            "bad signature: checkpoint format version {v} is unknown to this continuity (it checks versions 1 and {CHECKPOINT_VERSION})"
        )),
    }
}

/// `PREFIX.pem` and `PREFIX.pub.pem` for `prefix` (a trailing `.pem` is
/// dropped, so `--out keys/audit.pem` does not make `audit.pem.pem`).
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let base = match prefix.extension() {
        Some(ext) if ext == "pem" => prefix.with_extension(""),
        _ => prefix.to_path_buf(),
    };
    let s = base.into_os_string();
    let mut private = s.clone();
    private.push(".pem");
    let mut public = s;
    public.push(".pub.pem");
    (PathBuf::from(private), PathBuf::from(public))
}

/// Writes a fresh key pair: `PREFIX.pem` (PKCS#8, mode 0600) and
/// `PREFIX.pub.pem` (SPKI, 0644). Refuses to overwrite either file.
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = key_paths(prefix);
    for p in [&private, &public] {
        if p.exists() {
            return Err(AuditError::Key(format!(
                "{} already exists; not overwriting a key",
                p.display()
            )));
        }
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let le = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
    // PKCS#8 v1 (private key only), the form OpenSSL writes and reads;
    // the v2 form with the public key inside is not read by OpenSSL 3.0.
    let v1 = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private_pem = v1
        .to_pkcs8_pem(le)
        .map_err(|e| AuditError::Key(format!("cannot encode the private key: {e}")))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(le)
        .map_err(|e| AuditError::Key(format!("cannot encode the public key: {e}")))?;
    let write = |path: &Path, mode: u32, text: &str| -> Result<(), AuditError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| AuditError::io(path, e))
    };
    write(&private, 0o600, &private_pem)?;
    write(&public, 0o644, &public_pem)?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let h = "ab".repeat(32);
        let json = checkpoint_details(&key, 7, &h, 1000);
        let d: CheckpointDetails = serde_json::from_str(&json).unwrap();
        assert_eq!((d.version, d.interval), (Some(2), Some(1000)));
        let vk = key.verifying_key();
        assert_eq!(
            verify_signature(&vk, 7, &d),
            Ok(Verified::V2 { interval: 1000 })
        );
        let other = SigningKey::generate(&mut rand::rngs::OsRng);
        assert!(verify_signature(&other.verifying_key(), 7, &d).is_err());
        // Every member the verifier trusts is covered.
        let mut forged = d.clone();
        forged.signed_hash = "cd".repeat(32);
        assert!(verify_signature(&vk, 7, &forged).is_err());
        assert!(verify_signature(&vk, 8, &d).is_err(), "seq");
        let mut forged = d.clone();
        forged.interval = Some(1_000_000_000);
        assert!(verify_signature(&vk, 7, &forged).is_err(), "interval");
        let mut forged = d.clone();
        forged.key_id = Some("0".repeat(16));
        assert!(verify_signature(&vk, 7, &forged).is_err(), "key_id");
        // Downgrading it to v1 does not make the signature fit.
        let mut forged = d.clone();
        forged.version = None;
        assert!(verify_signature(&vk, 7, &forged).is_err(), "version");
        let mut forged = d;
        forged.version = Some(3);
        assert!(
            verify_signature(&vk, 7, &forged).is_err(),
            "unknown version"
        );
    }

    #[test]
    fn signed_message_is_byte_for_byte_what_docs_audit_md_says() {
        let h = "0".repeat(64);
        assert_eq!(
            signed_message(1, &h, 1000, "8cac55fb7b153ef7"),
            format!("continuity-audit-checkpoint-v2\nseq=1\nsigned_hash={h}\ninterval=1000\nkey_id=8cac55fb7b153ef7\n").into_bytes()
        );
    }

    #[test]
    fn v1_checkpoints_verify_but_their_interval_is_capped() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let vk = key.verifying_key();
        let h = "ab".repeat(32);
        let sig =
            base64::engine::general_purpose::STANDARD.encode(key.sign(h.as_bytes()).to_bytes());
        let v1 = |interval: u64| CheckpointDetails {
            version: None,
            signed_hash: h.clone(),
            signature: sig.clone(),
            interval: Some(interval),
            key_id: Some(key_id(&vk)),
        };
        assert_eq!(
            verify_signature(&vk, 9, &v1(1000)),
            Ok(Verified::V1 { interval: 1000 })
        );
        assert_eq!(
            verify_signature(&vk, 9, &v1(500)),
            Ok(Verified::V1 { interval: 500 })
        );
        assert_eq!(
            verify_signature(&vk, 9, &v1(1_000_000_000)),
            Ok(Verified::V1 {
                interval: LEGACY_INTERVAL
            })
        );
    }

    #[test]
    fn key_paths_drop_a_pem_suffix() {
        let (a, b) = key_paths(Path::new("k/audit.pem"));
        assert_eq!(a, PathBuf::from("k/audit.pem"));
        assert_eq!(b, PathBuf::from("k/audit.pub.pem"));
        let (a, b) = key_paths(Path::new("audit"));
        assert_eq!(
            (a.to_str(), b.to_str()),
            (Some("audit.pem"), Some("audit.pub.pem"))
        );
    }
}
