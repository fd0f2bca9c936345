//! Masking: secrets never reach an audit file, so they can never reach the
//! API that reads it. Applied to `actor`, `service`, and every string (keys
//! included) anywhere in `details`, before the entry is hashed. The same
//! [`Masker`] is applied wherever the same kind of data leaves the process
//! otherwise: WebSocket messages, operator reasons (masked as they come
//! in, so logs, events and diagnostics only ever see the masked text),
//! and queued HTTP requests shown by `GET /api/ops/queue/{id}`
//! ([`Masker::mask_header`] for their headers). See docs/audit.md.
//!
//! What becomes `***` (SPEC 7):
//! - the password of a URL: `scheme://user:pw@` → `scheme://user:***@`,
//!   `scheme://:pw@` → `scheme://:***@`;
//! - the value of a secret-named pair, `name=value` or `name: value`
//!   (also `"name": value`), up to whitespace, `&`, `;`, `,` or a quote; a
//!   quoted value is masked whole. A name is secret when it ends with
//!   `password`, `passwd`, `pwd`, `secret`, `token`, `apikey`, `privatekey`
//!   or `credentials` (`access_token=`, `PGPASSWORD=`, `db_password:`), or
//!   when its last `_`/`-`/`.`-separated part is `key` (`key=`,
//!   `api_key=`, `X-Api-Key:`, but not `monkey=`);
//! - `Authorization: <scheme> <credentials>` (and `Proxy-Authorization`)
//!   → `Authorization: <scheme> ***` for the usual schemes (`Basic`,
//!   `Bearer`, `Digest`, ...), `Authorization: ***` otherwise;
//! - `Cookie: …` and `Set-Cookie: …` → masked to the end of the line;
//! - `Bearer <token>` → `Bearer ***`;
//! - every match of a configured `mask_patterns` regex;
//! - the whole value of an object member whose key names a secret
//!   (ends with `password`, `passwd`, `secret`, `token`, `authorization`,
//!   `apikey`, `privatekey`, `credentials` or `cookie`, ignoring case and
//!   `_`/`-`).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

pub const MASK: &str = "***";

/// Key endings (lowercase, separators removed) whose value is masked whole.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "apikey",
    "privatekey",
    "credentials",
    "cookie",
];

/// Headers that name a key but carry none (shown as they are).
const PLAIN_KEY_HEADERS: &[&str] = &["idempotency-key"];

/// The built-in rules are constants, all compiled by the unit tests below.
fn rule(re: &str) -> Regex {
    Regex::new(re).expect("built-in mask rule")
}

/// userinfo with a password; the password runs to the last `@` before the
/// path, so a password containing `@` is masked whole.
static URL: LazyLock<Regex> =
    LazyLock::new(|| rule(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^:/?#@\s]*):[^/?#\s]*@"));

/// `name=value`, `name: value`, `"name": value` for a secret name. The
/// `key` form needs a word start before it (`\b`) or a separator inside
/// the name, so that `monkey=1` stays as it is.
static PAIRS: LazyLock<Regex> = LazyLock::new(|| {
    rule(concat!(
        r#"(?i)(?P<name>[a-z0-9_.\-]*(?:password|passwd|pwd|secret|token|apikey|privatekey|credentials)"#,
        r#"|\b(?:[a-z0-9_.\-]*[_.\-])?key)"#,
        r#"(?P<sep>["']?[ \t]*[:=][ \t]*)"#,
        r#"(?:"[^"]*"|'[^']*'|[^\s&;,"']+)"#,
    ))
});

/// `Authorization: Basic dXNlcjpwYXNz` keeps its scheme, loses the rest.
static AUTHORIZATION: LazyLock<Regex> = LazyLock::new(|| {
    rule(concat!(
        r#"(?i)\b(?P<name>(?:proxy-)?authorization)(?P<sep>["']?[ \t]*[:=][ \t]*)"#,
        r#"(?P<scheme>(?:basic|bearer|digest|negotiate|ntlm|token|hoba|mutual|vapid|"#,
        r#"scram-sha-1|scram-sha-256|aws4-hmac-sha256|apikey)[ \t]+)?"#,
        r#"(?:"[^"]*"|'[^']*'|[^\s&;,"']+)"#,
    ))
});

/// A `Cookie:`/`Set-Cookie:` line: every cookie on it.
static COOKIE: LazyLock<Regex> =
    LazyLock::new(|| rule(r"(?i)\b(?P<name>(?:set-)?cookie)(?P<sep>[ \t]*:[ \t]*)[^\r\n]+"));

/// A cheap first look: a string without any of these words has no secret
/// pair in it (one literal search instead of the full [`PAIRS`] rule).
static PAIR_WORDS: LazyLock<Regex> =
    LazyLock::new(|| rule(r"(?i)passw|pwd|secret|token|key|credentials"));

static BEARER: LazyLock<Regex> = LazyLock::new(|| rule(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"));

#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// All configured patterns as one alternation: one pass per string.
    custom: Option<Regex>,
}

/// The built-in rules alone (no `mask_patterns`).
pub static BUILTIN: Masker = Masker { custom: None };

impl Masker {
    /// Compiles `patterns` next to the built-in rules; an invalid pattern
    /// is an error naming it (config validation should already have
    /// caught it).
    pub fn new(patterns: &[String]) -> Result<Masker, String> {
        for p in patterns {
            Regex::new(p).map_err(|e| format!("invalid mask pattern `{p}`: {e}"))?;
        }
        let custom = if patterns.is_empty() {
            None
        } else {
            let joined: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
            Some(Regex::new(&joined.join("|")).map_err(|e| format!("mask patterns: {e}"))?)
        };
        Ok(Masker { custom })
    }

    /// Masks one string. Borrowed when nothing matched (the common case).
    pub fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        if s.contains("://") {
            out = replace(out, &URL, "${1}${2}:***@");
        }
        if s.contains([':', '=']) {
            let b = s.as_bytes();
            if contains_ci(b, b"authorization") {
                out = replace(out, &AUTHORIZATION, "${name}${sep}${scheme}***");
            }
            if contains_ci(b, b"cookie") {
                out = replace(out, &COOKIE, "${name}${sep}***");
            }
            if PAIR_WORDS.is_match(s) {
                out = replace(out, &PAIRS, "${name}${sep}***");
            }
        }
        if contains_ci(s.as_bytes(), b"bearer") {
            out = replace(out, &BEARER, "${1} ***");
        }
        if let Some(custom) = &self.custom {
            out = replace(out, custom, MASK);
        }
        out
    }

    /// Masks a JSON value in place.
    pub fn mask_value(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(m) = self.mask_str(s) {
                    *s = m;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.mask_value(i)),
            Value::Object(map) => {
                let needs_key_mask = map
                    .keys()
                    .any(|k| matches!(self.mask_str(k), Cow::Owned(_)));
                if needs_key_mask {
                    let old = std::mem::take(map);
                    for (k, val) in old {
                        map.insert(self.mask_str(&k).into_owned(), val);
                    }
                }
                for (k, val) in map.iter_mut() {
                    if is_secret_key(k) && !val.is_null() {
                        *val = Value::String(MASK.to_string());
                    } else {
                        self.mask_value(val);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A masked copy of `v`, or `None` when nothing in it needs masking
    /// (no copy is made then).
    pub fn masked(&self, v: &Value) -> Option<Value> {
        if !self.needs_mask(v) {
            return None;
        }
        let mut copy = v.clone();
        self.mask_value(&mut copy);
        Some(copy)
    }

    fn needs_mask(&self, v: &Value) -> bool {
        match v {
            Value::String(s) => matches!(self.mask_str(s), Cow::Owned(_)),
            Value::Array(items) => items.iter().any(|i| self.needs_mask(i)),
            Value::Object(map) => map.iter().any(|(k, val)| {
                (is_secret_key(k) && !val.is_null())
                    || matches!(self.mask_str(k), Cow::Owned(_))
                    || self.needs_mask(val)
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// The value of an HTTP header as it may be shown: `***` for a header
    /// that carries a credential ([`is_secret_header`]), otherwise the
    /// value with [`Masker::mask_str`] applied (a URL with a password, a
    /// `?token=` in a `Location`, ...). Borrowed when unchanged.
    pub fn mask_header<'a>(&self, name: &str, value: &'a str) -> Cow<'a, str> {
        if is_secret_header(name) {
            if value == MASK {
                Cow::Borrowed(value)
            } else {
                Cow::Owned(MASK.to_string())
            }
        } else {
            self.mask_str(value)
        }
    }
}

/// Whether a header carries a credential and is shown as `***`:
/// `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, and any
/// name a JSON key would be masked for (`X-Api-Key`, `X-Auth-Token`,
/// `X-Client-Secret`, ...) or whose last part is `key` (`Api-Key`,
/// `X-Access-Key`), except `Idempotency-Key`.
pub fn is_secret_header(name: &str) -> bool {
    if PLAIN_KEY_HEADERS
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
    {
        return false;
    }
    let last = name.rsplit(['-', '_', '.']).next().unwrap_or(name);
    is_secret_key(name) || last.eq_ignore_ascii_case("key")
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn replace<'a>(s: Cow<'a, str>, re: &Regex, with: &str) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => re.replace_all(b, with),
        Cow::Owned(o) => match re.replace_all(&o, with) {
            Cow::Borrowed(_) => Cow::Owned(o),
            Cow::Owned(n) => Cow::Owned(n),
        },
    }
}

fn is_secret_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_KEYS.iter().any(|s| norm.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m() -> Masker {
        Masker::new(&[r"\d{3}-\d{2}-\d{4}".to_string()]).unwrap()
    }

    #[test]
    fn urls_lose_their_passwords_only() {
        let m = m();
        assert_eq!(
            m.mask_str("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            m.mask_str("postgres://app:pa@ss@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            m.mask_str("bolt://neo4j:hunter2@graph:7687"),
            "bolt://neo4j:***@graph:7687"
        );
        assert_eq!(m.mask_str("redis://host:6379"), "redis://host:6379");
        assert_eq!(m.mask_str("bolt://user@host:7687"), "bolt://user@host:7687");
    }

    #[test]
    fn pairs_bearer_and_patterns() {
        let m = m();
        assert_eq!(
            m.mask_str("host=db password=hunter2 user=app"),
            "host=db password=*** user=app"
        );
        assert_eq!(m.mask_str("a?token=abc.def&b=1"), "a?token=***&b=1");
        assert_eq!(m.mask_str("PGPASSWORD='x y z';"), "PGPASSWORD=***;");
        assert_eq!(m.mask_str("access_token=zzz,"), "access_token=***,");
        assert_eq!(
            m.mask_str("Authorization: Bearer eyJhbGciOi.J9.x-_y=="),
            "Authorization: Bearer ***"
        );
        assert_eq!(m.mask_str("ssn 123-45-6789 ok"), "ssn *** ok");
        assert!(matches!(m.mask_str("nothing to see"), Cow::Borrowed(_)));
    }

    #[test]
    fn values_keys_and_nesting() {
        let m = m();
        let mut v = json!({
            "password": "pw", "db_password": 1234, "accessToken": {"a": 1},
            "token_name": "ops-console", "signature": "abc", "none": null,
            "list": ["redis://:pw@h", {"Authorization": "Basic xyz"}],
            "redis://:pw@h:1": "down",
        });
        m.mask_value(&mut v);
        assert_eq!(v["password"], "***");
        assert_eq!(v["db_password"], "***");
        assert_eq!(v["accessToken"], "***");
        assert_eq!(v["token_name"], "ops-console");
        assert_eq!(v["signature"], "abc");
        assert_eq!(v["none"], Value::Null);
        assert_eq!(v["list"][0], "redis://:***@h");
        assert_eq!(v["list"][1]["Authorization"], "***");
        assert_eq!(v["redis://:***@h:1"], "down");
        assert!(!v.to_string().contains("pw@"));
    }

    #[test]
    fn bad_pattern_is_an_error() {
        assert!(Masker::new(&["(".to_string()]).is_err());
    }

    #[test]
    fn key_forms_are_masked() {
        let m = m();
        assert_eq!(m.mask_str("/v1?api_key=abc123&x=1"), "/v1?api_key=***&x=1");
        assert_eq!(m.mask_str("key=abc"), "key=***");
        assert_eq!(m.mask_str("a?key=abc&b=2"), "a?key=***&b=2");
        assert_eq!(m.mask_str("apikey=abc"), "apikey=***");
        assert_eq!(m.mask_str("X-Api-Key: abc"), "X-Api-Key: ***");
        assert_eq!(m.mask_str("access.key = 'a b'"), "access.key = ***");
        assert_eq!(m.mask_str("KEY=abc"), "KEY=***");
    }

    #[test]
    fn words_that_end_in_key_are_not_keys() {
        let m = m();
        for plain in [
            "monkey=1",
            "turkey: roast",
            "hotkey=F5",
            "keyboard=us",
            "key_id=ops-2026",
            "the key is in the drawer",
            "Key (id)=(5) already exists.",
            "passwords=3",
            "token_name=ops-console",
        ] {
            assert_eq!(m.mask_str(plain), plain, "{plain}");
            assert!(matches!(m.mask_str(plain), Cow::Borrowed(_)), "{plain}");
        }
    }

    #[test]
    fn colon_forms_are_masked() {
        let m = m();
        assert_eq!(m.mask_str("password: x"), "password: ***");
        assert_eq!(
            m.mask_str("db password: s3cr3t now"),
            "db password: *** now"
        );
        assert_eq!(m.mask_str("Password:hunter2"), "Password:***");
        assert_eq!(
            m.mask_str(r#"{"password": "a b", "user": "app"}"#),
            r#"{"password": ***, "user": "app"}"#
        );
        assert_eq!(m.mask_str("client_secret: abc,"), "client_secret: ***,");
        assert_eq!(m.mask_str("X-Auth-Token: t0k"), "X-Auth-Token: ***");
        // Other `name: value` pairs and times are left alone.
        let plain = "reason: drill at 12:30, host: db";
        assert_eq!(m.mask_str(plain), plain);
    }

    #[test]
    fn authorization_keeps_the_scheme_only() {
        let m = m();
        assert_eq!(
            m.mask_str("Authorization: Basic dXNlcjpwYXNz"),
            "Authorization: Basic ***"
        );
        assert_eq!(
            m.mask_str("saw authorization:basic dXNlcjpwYXNz= in the log"),
            "saw authorization:basic *** in the log"
        );
        assert_eq!(
            m.mask_str("Proxy-Authorization: Basic Zm9vOmJhcg=="),
            "Proxy-Authorization: Basic ***"
        );
        assert_eq!(
            m.mask_str("Authorization: Bearer abc.def"),
            "Authorization: Bearer ***"
        );
        assert_eq!(
            m.mask_str("Authorization: Digest username=\"u\""),
            "Authorization: Digest ***\"u\""
        );
        assert_eq!(
            m.mask_str("Authorization: r4wt0k3n x"),
            "Authorization: *** x"
        );
        assert_eq!(m.mask_str("authorization=abc"), "authorization=***");
        // No credentials after it: nothing to mask.
        let plain = "authorization failed for ops";
        assert_eq!(m.mask_str(plain), plain);
    }

    #[test]
    fn cookies_are_masked_to_the_end_of_the_line() {
        let m = m();
        assert_eq!(
            m.mask_str("Set-Cookie: session=abc; Path=/; HttpOnly\nnext"),
            "Set-Cookie: ***\nnext"
        );
        assert_eq!(m.mask_str("cookie: a=1; b=2"), "cookie: ***");
    }

    #[test]
    fn masking_twice_changes_nothing_more() {
        let m = m();
        for s in [
            "password=hunter2 Authorization: Basic dXNlcjpwYXNz api_key=k, password: p",
            "redis://:pw@h Set-Cookie: a=b Bearer x.y",
        ] {
            let once = m.mask_str(s).into_owned();
            assert_eq!(m.mask_str(&once), once.as_str());
        }
    }

    #[test]
    fn builtin_has_no_patterns_and_config_patterns_still_apply() {
        assert_eq!(BUILTIN.mask_str("ssn 123-45-6789"), "ssn 123-45-6789");
        assert_eq!(BUILTIN.mask_str("key=abc"), "key=***");
        let m = Masker::new(&[r"case-\d+".to_string(), r"ssn \S+".to_string()]).unwrap();
        assert_eq!(m.mask_str("case-42 ssn 1 key=z"), "*** *** key=***");
    }

    #[test]
    fn masked_copies_only_when_needed() {
        let m = m();
        assert!(m.masked(&json!({"a": ["x", 1, {"b": "c"}]})).is_none());
        assert!(m.masked(&json!({"token": "x"})).is_some());
        let v = json!({"reason": "drill password=x", "n": 1});
        let masked = m.masked(&v).unwrap();
        assert_eq!(masked["reason"], "drill password=***");
        assert_eq!(v["reason"], "drill password=x");
        assert_eq!(
            m.masked(&json!({"cookie": "a=b"})).unwrap()["cookie"],
            "***"
        );
    }

    #[test]
    fn headers() {
        let m = m();
        for secret in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "Set-Cookie",
            "X-Api-Key",
            "api-key",
            "X-Auth-Token",
            "X-Amz-Security-Token",
            "X-Client-Secret",
            "X-Access-Key",
        ] {
            assert!(is_secret_header(secret), "{secret}");
            assert_eq!(m.mask_header(secret, "v"), "***", "{secret}");
        }
        for plain in ["Content-Type", "Idempotency-Key", "X-Monkey", "Keep-Alive"] {
            assert!(!is_secret_header(plain), "{plain}");
        }
        assert!(matches!(m.mask_header("Cookie", "a=1"), Cow::Owned(_)));
        assert!(matches!(m.mask_header("Cookie", "***"), Cow::Borrowed(_)));
        assert_eq!(m.mask_header("Idempotency-Key", "q1"), "q1");
        assert_eq!(
            m.mask_header("Location", "https://u:pw@h/x?token=t"),
            "https://u:***@h/x?token=***"
        );
    }
}
