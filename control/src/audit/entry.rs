//! One audit line: its exact byte format (SPEC 7), the hash rule, and the
//! cheap scanner that verification runs on every line.
//!
//! A line is compact JSON whose members come in a fixed order:
//!
//! ```text
//! {"seq":N,"entry_id":"…","timestamp":"…","action":"…","severity":"…",
//!  "actor":"…","service":"…"|null,"details":{…},"prev_hash":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! Because `prev_hash` and `hash` are fixed-width and last, and `seq` to
//! `severity` are first and never need escaping, the scanner reads them at
//! known places from both ends without building a JSON tree; the whole line
//! is still checked to be well-formed JSON (`IgnoredAny`, no allocation), so
//! a line is only accepted if a full parser would accept it too.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of `seq` 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"}`: what the hash rule cuts off (and replaces by `}`).
pub const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
/// `,"prev_hash":"` + 64 hex + `"`, just before the hash suffix.
const PREV_SUFFIX_LEN: usize = 14 + 64 + 1;

macro_rules! names {
    ($(#[$m:meta])* $ty:ident { $($v:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $ty { $($v),* }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];
            /// The wire name (SPEC 7).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$v => $s),* }
            }
            pub(crate) fn from_bytes(b: &[u8]) -> Option<$ty> {
                match b { $(x if x == $s.as_bytes() => Some($ty::$v),)* _ => None }
            }
            pub(crate) fn index(self) -> usize { self as usize }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<$ty, String> {
                $ty::from_bytes(s.as_bytes()).ok_or_else(|| {
                    let all: Vec<&str> = $ty::ALL.iter().map(|a| a.as_str()).collect();
                    format!("unknown {} `{s}`; one of {}", stringify!($ty).to_lowercase(), all.join(", "))
                })
            }
        }
    };
}

names!(
    /// What an entry records (SPEC 7).
    Action {
        HealthCheck => "health_check",
        FailoverActivated => "failover_activated",
        FailoverRecovered => "failover_recovered",
        RedundancySync => "redundancy_sync",
        DiagnosticEvent => "diagnostic_event",
        Escalation => "escalation",
        ManualIntervention => "manual_intervention",
        ConfigChange => "config_change",
        Checkpoint => "checkpoint",
    }
);

names!(
    Severity {
        Info => "info",
        Warning => "warning",
        Error => "error",
        Critical => "critical",
    }
);

/// Lowercase hex of a SHA-256 digest, without allocating.
pub fn hex32(digest: &[u8; 32]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

/// The hash rule applied to a line's unhashed part (everything up to and
/// including the closing quote of `prev_hash`): SHA-256 of that plus `}`.
pub fn hash_unhashed(unhashed: &[u8]) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(unhashed);
    h.update(b"}");
    hex32(&h.finalize().into())
}

/// Builds a complete line (with its `\n`) from the parts the writer owns.
/// `body` is `"action":…,"severity":…,"actor":…,"service":…,"details":{…}`.
/// Returns the line and its hash.
pub fn build_line(
    seq: u64,
    entry_id: &str,
    timestamp: &str,
    body: &str,
    prev_hash: &str,
) -> (String, String) {
    let mut line = String::with_capacity(body.len() + 300);
    line.push_str("{\"seq\":");
    line.push_str(&seq.to_string());
    line.push_str(",\"entry_id\":\"");
    line.push_str(entry_id);
    line.push_str("\",\"timestamp\":\"");
    line.push_str(timestamp);
    line.push_str("\",");
    line.push_str(body);
    line.push_str(",\"prev_hash\":\"");
    line.push_str(prev_hash);
    line.push('"');
    let hash = hash_unhashed(line.as_bytes());
    // hex32 only yields ASCII hex digits.
    let hash = String::from_utf8_lossy(&hash).into_owned();
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}\n");
    (line, hash)
}

/// The fields verification needs, borrowed from the line.
#[derive(Debug, Clone, Copy)]
pub struct Scanned<'a> {
    pub seq: u64,
    pub entry_id: &'a str,
    pub timestamp: &'a str,
    pub action: Action,
    pub severity: Severity,
    pub prev_hash: &'a str,
    pub hash: &'a str,
    /// True when the stored `hash` is the hash of the line.
    pub hash_ok: bool,
}

/// Why a line cannot be read as an entry at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

fn is_hex64(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads `"…"` content after `prefix` at `*pos`; content must not contain
/// `"` or `\` (ids, timestamps and names never do).
fn plain_string<'a>(line: &'a [u8], pos: &mut usize, prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = line.get(*pos..)?;
    if !rest.starts_with(prefix) {
        return None;
    }
    let start = *pos + prefix.len();
    let len = line.get(start..)?.iter().position(|&c| c == b'"')?;
    let s = &line[start..start + len];
    if s.contains(&b'\\') {
        return None;
    }
    *pos = start + len + 1;
    Some(s)
}

/// Scans one line (without its `\n`): the fixed members at both ends, JSON
/// well-formedness, and the hash. `Err` means the line is not an entry at
/// all (torn, garbage, wrong member order); a readable line whose hash is
/// wrong is `Ok` with `hash_ok == false`.
pub fn scan(line: &[u8]) -> Result<Scanned<'_>, Malformed> {
    let n = line.len();
    if n < HASH_SUFFIX_LEN + PREV_SUFFIX_LEN + 20 || !line.starts_with(b"{\"seq\":") {
        return Err(Malformed("not an audit entry"));
    }
    let tail = &line[n - HASH_SUFFIX_LEN..];
    if !tail.starts_with(b",\"hash\":\"") || !tail.ends_with(b"\"}") || !is_hex64(&tail[9..73]) {
        return Err(Malformed(
            "`hash` is not the last member, or not 64 lowercase hex",
        ));
    }
    let unhashed = &line[..n - HASH_SUFFIX_LEN];
    let prev = &unhashed[unhashed.len() - PREV_SUFFIX_LEN..];
    if !prev.starts_with(b",\"prev_hash\":\"") || !prev.ends_with(b"\"") || !is_hex64(&prev[14..78])
    {
        return Err(Malformed(
            "`prev_hash` missing before `hash`, or not 64 lowercase hex",
        ));
    }
    let mut pos = 7;
    let digits = line[pos..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count();
    let seq = std::str::from_utf8(&line[pos..pos + digits])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .ok_or(Malformed("`seq` is not a positive integer"))?;
    pos += digits;
    let bad =
        || Malformed("members out of order (seq, entry_id, timestamp, action, severity, actor)");
    let entry_id = plain_string(line, &mut pos, b",\"entry_id\":\"").ok_or_else(bad)?;
    let timestamp = plain_string(line, &mut pos, b",\"timestamp\":\"").ok_or_else(bad)?;
    let action = plain_string(line, &mut pos, b",\"action\":\"").ok_or_else(bad)?;
    let severity = plain_string(line, &mut pos, b",\"severity\":\"").ok_or_else(bad)?;
    if !line[pos..].starts_with(b",\"actor\":") {
        return Err(bad());
    }
    let action = Action::from_bytes(action).ok_or(Malformed("unknown `action`"))?;
    let severity = Severity::from_bytes(severity).ok_or(Malformed("unknown `severity`"))?;
    // The whole line must be one JSON object (this also checks UTF-8).
    if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
        return Err(Malformed("not valid JSON"));
    }
    let computed = hash_unhashed(unhashed);
    let hash = &tail[9..73];
    // Safe conversions: every slice below was checked to be ASCII above,
    // or comes from a line serde_json accepted as UTF-8.
    Ok(Scanned {
        seq,
        entry_id: utf8(entry_id)?,
        timestamp: utf8(timestamp)?,
        action,
        severity,
        prev_hash: utf8(&prev[14..78])?,
        hash: utf8(hash)?,
        hash_ok: computed[..] == hash[..],
    })
}

fn utf8(b: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(b).map_err(|_| Malformed("not UTF-8"))
}

/// A random id shaped like a UUID v4 (`8-4-4-4-12` lowercase hex).
pub fn new_entry_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> &'static str {
        r#""action":"failover_activated","severity":"warning","actor":"system","service":"redis","details":{"old_epoch":0}"#
    }

    #[test]
    fn line_round_trips_through_the_scanner() {
        let (line, hash) = build_line(
            1,
            &new_entry_id(),
            "2025-01-02T03:04:05.000006Z",
            body(),
            GENESIS_HASH,
        );
        assert!(line.ends_with("\"}\n"));
        let s = scan(line.trim_end_matches('\n').as_bytes()).unwrap();
        assert_eq!(s.seq, 1);
        assert_eq!(s.action, Action::FailoverActivated);
        assert_eq!(s.severity, Severity::Warning);
        assert_eq!(s.prev_hash, GENESIS_HASH);
        assert_eq!(s.hash, hash);
        assert!(s.hash_ok);
        // The hash rule as SPEC 7 words it: replace `,"hash":"<hex>"}` by `}`.
        let raw = line.trim_end_matches('\n');
        let cut = raw.replace(&format!(",\"hash\":\"{hash}\"}}"), "}");
        let digest: [u8; 32] = Sha256::digest(cut.as_bytes()).into();
        assert_eq!(hex::encode(digest), hash);
        let v: serde_json::Value = serde_json::from_str(raw).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 10);
    }

    #[test]
    fn scanner_rejects_garbage_and_flags_edits() {
        let (line, _) = build_line(7, "id", "t", body(), GENESIS_HASH);
        let raw = line.trim_end_matches('\n');
        assert!(scan(&raw.as_bytes()[..raw.len() - 10]).is_err());
        assert!(scan(b"\0\0\0\0").is_err());
        let edited = raw.replace("\"old_epoch\":0", "\"old_epoch\":1");
        let s = scan(edited.as_bytes()).unwrap();
        assert!(!s.hash_ok);
        let broken_json = raw.replace("{\"old_epoch\":0}", "{\"old_epoch\":0");
        assert!(scan(broken_json.as_bytes()).is_err());
    }

    #[test]
    fn names_parse_and_print() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
            assert_eq!(serde_json::to_string(a).unwrap(), format!("\"{a}\""));
        }
        assert!("nope".parse::<Severity>().is_err());
        let id = new_entry_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
