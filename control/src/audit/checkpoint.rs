//! Signed checkpoints (Ed25519) and `audit keygen`.
//!
//! A hash chain alone proves nothing against someone who can write the
//! files: they can edit an entry and recompute every hash after it. A
//! `checkpoint` entry carries `details.signed_hash` (the `hash` of the entry
//! just before it, which is also the checkpoint's own `prev_hash`) and
//! `details.signature`, base64 of the Ed25519 signature over those 64 ASCII
//! hex characters. Each signed hash covers, through the chain, every entry
//! before it; rewriting any of them changes that hash, and without the
//! private key the signature cannot follow. `details` also carry
//! `interval` (the number of other entries after which the next checkpoint
//! is due) and `key_id` (first 16 hex of SHA-256 of the raw public key).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuditError;

/// What a checkpoint's `details` hold.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckpointDetails {
    pub signed_hash: String,
    pub signature: String,
    #[serde(default)]
    pub interval: Option<u64>,
    #[serde(default)]
    pub key_id: Option<String>,
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

/// The `details` object of a checkpoint, serialised compactly with its
/// members in a fixed order.
pub fn checkpoint_details(key: &SigningKey, signed_hash: &str, interval: u64) -> String {
    let sig = key.sign(signed_hash.as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    format!(
        "{{\"signed_hash\":\"{signed_hash}\",\"signature\":\"{b64}\",\"interval\":{interval},\"key_id\":\"{}\"}}",
        key_id(&key.verifying_key())
    )
}

/// Checks one checkpoint's signature; `Err` says why it fails.
pub fn verify_signature(key: &VerifyingKey, d: &CheckpointDetails) -> Result<(), String> {
    if let Some(id) = &d.key_id {
        let ours = key_id(key);
        if *id != ours {
            return Err(format!(
                "bad signature: checkpoint signed by key {id}, not by the given key {ours}"
            ));
        }
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(d.signature.as_bytes())
        .map_err(|_| "bad signature: `signature` is not base64".to_string())?;
    let sig = Signature::from_slice(&raw)
        .map_err(|_| "bad signature: not a 64-byte Ed25519 signature".to_string())?;
    key.verify(d.signed_hash.as_bytes(), &sig)
        .map_err(|_| "bad signature: Ed25519 verification failed".to_string())
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
        let json = checkpoint_details(&key, &h, 1000);
        let d: CheckpointDetails = serde_json::from_str(&json).unwrap();
        assert_eq!(d.interval, Some(1000));
        verify_signature(&key.verifying_key(), &d).unwrap();
        let other = SigningKey::generate(&mut rand::rngs::OsRng);
        assert!(verify_signature(&other.verifying_key(), &d).is_err());
        let mut forged = d.clone();
        forged.signed_hash = "cd".repeat(32);
        assert!(verify_signature(&key.verifying_key(), &forged).is_err());
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
