//! `continuity audit verify` and `continuity audit keygen`, offline.

use std::path::Path;

use super::checkpoint::{key_id, load_verifying_key};
use super::verify::{self, Options, VerifyReport};
use super::AuditError;

pub const EXIT_OK: i32 = 0;
pub const EXIT_BROKEN: i32 = 1;
pub const EXIT_UNREADABLE: i32 = 2;

/// Verifies the segments of `dir`, stopping at the first break. With a
/// public key, every checkpoint signature is checked and the log must be
/// covered by checkpoints (see [`verify`]); an empty log, or one without
/// any checkpoint, is then broken. `Err` when the directory, a
/// segment or the key cannot be read.
pub fn verify_dir(dir: &Path, public_key: Option<&Path>) -> Result<VerifyReport, AuditError> {
    let key = public_key.map(load_verifying_key).transpose()?;
    let inputs = verify::dir_inputs(dir)?;
    let opts = Options {
        key: key.as_ref(),
        ..Options::default()
    };
    Ok(verify::run(&inputs, &opts, |_, _, _, _| {})?.report)
}

/// `continuity audit verify DIR [--public-key PATH]`: prints what it checked,
/// then, as its last line, `ok: N entries` or `broken at seq N: REASON`.
/// Returns 0 intact, 1 broken, 2 unreadable (message on stderr).
pub fn verify_cli(dir: &Path, public_key: Option<&Path>) -> i32 {
    let (code, out) = verify_cli_output(dir, public_key);
    if code == EXIT_UNREADABLE {
        eprint!("{out}");
    } else {
        print!("{out}");
    }
    code
}

/// What [`verify_cli`] prints, and its exit code.
pub fn verify_cli_output(dir: &Path, public_key: Option<&Path>) -> (i32, String) {
    use std::fmt::Write as _;
    let report = match verify_dir(dir, public_key) {
        Ok(r) => r,
        Err(e) => {
            return (
                EXIT_UNREADABLE,
                format!("continuity: cannot verify {}: {e}\n", dir.display()),
            );
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "audit log {}: {} segment(s)",
        dir.display(),
        report.segments
    );
    if let Some(note) = &report.starts_at_note {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(pk) = public_key {
        let id = load_verifying_key(pk)
            .map(|k| key_id(&k))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "signatures: {} checkpoint(s) checked with {} (key {id})",
            report.checkpoints,
            pk.display()
        );
        if report.legacy_checkpoints > 0 {
            let _ = writeln!(
                out,
                "note: {} of them are legacy v1 checkpoints (written before continuity signed seq, interval and key_id; the signature covers signed_hash only): their `interval` is not believed above {}",
                report.legacy_checkpoints,
                super::checkpoint::LEGACY_INTERVAL
            );
        }
    } else if report.checkpoints > 0 {
        let _ = writeln!(
            out,
            "signatures: {} checkpoint(s) not checked (give --public-key to check them)",
            report.checkpoints
        );
    }
    let code = match (report.first_broken_seq, &report.reason) {
        (Some(seq), reason) => {
            let _ = writeln!(out, "verified {} entries before the break", report.entries);
            let _ = writeln!(
                out,
                "broken at seq {seq}: {}",
                reason.as_deref().unwrap_or("unknown")
            );
            EXIT_BROKEN
        }
        (None, _) => {
            if let (Some(first), Some(last)) = (report.first_seq, report.last_seq) {
                let _ = writeln!(out, "seqs {first}..{last}");
            }
            let _ = writeln!(out, "ok: {} entries", report.entries);
            EXIT_OK
        }
    };
    (code, out)
}

/// `continuity audit keygen --out PREFIX`: writes the key pair, prints both
/// paths; 0 on success, 1 on failure (message on stderr).
pub fn keygen_cli(prefix: &Path) -> i32 {
    match super::checkpoint::keygen(prefix) {
        Ok((private, public)) => {
            println!(
                "wrote {} (Ed25519 private key, PKCS#8, mode 0600): set [audit] signing_key to it",
                private.display()
            );
            println!(
                "wrote {} (public key, SPKI): for `continuity audit verify --public-key`",
                public.display()
            );
            0
        }
        Err(e) => {
            eprintln!("continuity: audit keygen: {e}");
            1
        }
    }
}
