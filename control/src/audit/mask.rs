//! Masking: secrets never reach an audit file, so they can never reach the
//! API that reads it. Applied to `actor`, `service`, and every string (keys
//! included) anywhere in `details`, before the entry is hashed.
//!
//! What becomes `***` (SPEC 7):
//! - the password of a URL: `scheme://user:pw@` → `scheme://user:***@`,
//!   `scheme://:pw@` → `scheme://:***@`;
//! - `password=`, `passwd=`, `pwd=`, `secret=` and `token=` values (also as the end of
//!   a longer name: `access_token=`, `PGPASSWORD=`), up to whitespace, `&`,
//!   `;`, `,` or a quote; a quoted value is masked whole;
//! - `Bearer <token>` → `Bearer ***`;
//! - every match of a configured `mask_patterns` regex;
//! - the whole value of an object member whose key names a secret
//!   (ends with `password`, `passwd`, `secret`, `token`, `authorization`,
//!   `apikey`, `privatekey` or `credentials`, ignoring case and `_`/`-`).

use std::borrow::Cow;

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
];

#[derive(Debug, Clone)]
pub struct Masker {
    url: Regex,
    pairs: Regex,
    bearer: Regex,
    /// All configured patterns as one alternation: one pass per string.
    custom: Option<Regex>,
}

impl Masker {
    /// Compiles the built-in rules and `patterns`; an invalid pattern is an
    /// error naming it (config validation should already have caught it).
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
        let builtin = |re: &str| Regex::new(re).map_err(|e| format!("built-in mask rule: {e}"));
        Ok(Masker {
            // userinfo with a password; the password runs to the last `@`
            // before the path, so a password containing `@` is masked whole.
            url: builtin(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^:/?#@\s]*):[^/?#\s]*@")?,
            pairs: builtin(
                r#"(?i)(password|passwd|pwd|secret|token)=("[^"]*"|'[^']*'|[^\s&;,"']+)"#,
            )?,
            bearer: builtin(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")?,
            custom,
        })
    }

    /// Masks one string. Borrowed when nothing matched (the common case).
    pub fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        if s.contains("://") {
            out = replace(out, &self.url, "${1}${2}:***@");
        }
        if s.contains('=') {
            out = replace(out, &self.pairs, "${1}=***");
        }
        if s.as_bytes()
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"bearer"))
        {
            out = replace(out, &self.bearer, "${1} ***");
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
}
