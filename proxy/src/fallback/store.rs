//! The in-memory keyspace of the fallback: strings and hashes with lazy
//! expiry, and an approximate byte count (keys, values, fields and a fixed
//! overhead per key and per field) that bounds it.

use std::collections::HashMap;
use std::time::Instant;

/// Bytes counted per key besides its name and value.
pub const KEY_OVERHEAD: usize = 64;
/// Bytes counted per hash field besides its name and value.
pub const FIELD_OVERHEAD: usize = 32;

/// A hash's fields and values.
pub type Fields = HashMap<Vec<u8>, Vec<u8>>;
/// One field and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(Vec<u8>),
    Hash(Fields),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires: Option<Instant>,
    /// Counted bytes of this entry, key included.
    size: usize,
}

/// Why a command cannot apply to the value it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    WrongType,
    NotInteger,
    Overflow,
}

impl StoreError {
    pub fn message(self) -> &'static str {
        match self {
            StoreError::WrongType => {
                "WRONGTYPE Operation against a key holding the wrong kind of value"
            }
            StoreError::NotInteger => "ERR value is not an integer or out of range",
            StoreError::Overflow => "ERR increment or decrement would overflow",
        }
    }
}

fn str_size(key: &[u8], v: &[u8]) -> usize {
    KEY_OVERHEAD + key.len() + v.len()
}

#[derive(Debug, Default)]
pub struct Store {
    map: HashMap<Vec<u8>, Entry>,
    bytes: usize,
}

impl Store {
    /// Counted bytes of every key held (expired ones until they are purged).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Drops every expired key.
    pub fn purge_expired(&mut self) {
        let now = Instant::now();
        let mut freed = 0;
        self.map.retain(|_, e| {
            let live = e.expires.is_none_or(|t| t > now);
            if !live {
                freed += e.size;
            }
            live
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    /// The live entry for `key`, dropping it first if it has expired.
    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let expired = self
            .map
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|t| t <= Instant::now()));
        if expired {
            self.del(key);
        }
        self.map.get_mut(key)
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.live(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Str(v)) => Ok(Some(v.clone())),
            Some(Value::Hash(_)) => Err(StoreError::WrongType),
        }
    }

    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.live(key).is_some()
    }

    /// When `key` expires; `None` when it has no TTL or does not exist.
    pub fn expires(&mut self, key: &[u8]) -> Option<Instant> {
        self.live(key).and_then(|e| e.expires)
    }

    /// Replaces `key` with a string.
    pub fn set(&mut self, key: &[u8], value: Vec<u8>, expires: Option<Instant>) {
        self.del(key);
        let size = str_size(key, &value);
        self.bytes += size;
        self.map.insert(
            key.to_vec(),
            Entry {
                value: Value::Str(value),
                expires,
                size,
            },
        );
    }

    pub fn del(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(e) => {
                self.bytes = self.bytes.saturating_sub(e.size);
                true
            }
            None => false,
        }
    }

    /// Sets (or with `None` clears) the expiry of a live key.
    pub fn expire(&mut self, key: &[u8], at: Option<Instant>) -> bool {
        match self.live(key) {
            Some(e) => {
                e.expires = at;
                true
            }
            None => false,
        }
    }

    /// Redis `TTL`: -2 missing, -1 no expiry, else whole seconds left
    /// (rounded up).
    pub fn ttl(&mut self, key: &[u8]) -> i64 {
        match self.live(key) {
            None => -2,
            Some(Entry { expires: None, .. }) => -1,
            Some(Entry {
                expires: Some(t), ..
            }) => {
                let ms = t.saturating_duration_since(Instant::now()).as_millis() as i64;
                (ms + 999) / 1000
            }
        }
    }

    /// `INCRBY`: keeps the key's expiry, creates it at 0 when missing.
    pub fn incr_by(&mut self, key: &[u8], delta: i64) -> Result<i64, StoreError> {
        let (current, expires) = match self.live(key) {
            None => (0, None),
            Some(Entry {
                value: Value::Str(v),
                expires,
                ..
            }) => {
                let s = std::str::from_utf8(v).map_err(|_| StoreError::NotInteger)?;
                (
                    s.parse::<i64>().map_err(|_| StoreError::NotInteger)?,
                    *expires,
                )
            }
            Some(_) => return Err(StoreError::WrongType),
        };
        let new = current.checked_add(delta).ok_or(StoreError::Overflow)?;
        self.set(key, new.to_string().into_bytes(), expires);
        Ok(new)
    }

    fn hash(&mut self, key: &[u8]) -> Result<Option<&Fields>, StoreError> {
        match self.live(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Hash(h)) => Ok(Some(h)),
            Some(Value::Str(_)) => Err(StoreError::WrongType),
        }
    }

    /// Length of a live string value, without copying it; `None` when the
    /// key is missing or holds a hash (what `MGET` answers nil for).
    pub fn str_len(&mut self, key: &[u8]) -> Option<usize> {
        match self.live(key).map(|e| &e.value) {
            Some(Value::Str(v)) => Some(v.len()),
            _ => None,
        }
    }

    /// Length of one field's value, without copying it.
    pub fn hget_len(&mut self, key: &[u8], field: &[u8]) -> Option<usize> {
        match self.live(key).map(|e| &e.value) {
            Some(Value::Hash(h)) => h.get(field).map(Vec::len),
            _ => None,
        }
    }

    /// (fields, bytes of their names and values) of a live hash, without
    /// copying it.
    pub fn hash_len(&mut self, key: &[u8]) -> Option<(usize, usize)> {
        match self.live(key).map(|e| &e.value) {
            Some(Value::Hash(h)) => Some((
                h.len(),
                h.iter().fold(0usize, |n, (f, v)| {
                    n.saturating_add(f.len()).saturating_add(v.len())
                }),
            )),
            _ => None,
        }
    }

    pub fn hget(&mut self, key: &[u8], field: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.hash(key)?.and_then(|h| h.get(field).cloned()))
    }

    /// Every field and value, sorted by field for stable output.
    pub fn hgetall(&mut self, key: &[u8]) -> Result<Vec<Pair>, StoreError> {
        let mut all: Vec<_> = self
            .hash(key)?
            .map(|h| h.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
            .unwrap_or_default();
        all.sort();
        Ok(all)
    }

    /// `HSET`: returns how many fields were new.
    pub fn hset(&mut self, key: &[u8], pairs: &[Pair]) -> Result<i64, StoreError> {
        if self.hash(key)?.is_none() {
            self.bytes += KEY_OVERHEAD + key.len();
        }
        let entry = self.map.entry(key.to_vec()).or_insert_with(|| Entry {
            value: Value::Hash(HashMap::new()),
            expires: None,
            size: KEY_OVERHEAD + key.len(),
        });
        let mut grown = 0usize;
        let mut shrunk = 0usize;
        let mut added = 0;
        if let Value::Hash(h) = &mut entry.value {
            for (f, v) in pairs {
                match h.insert(f.clone(), v.clone()) {
                    Some(old) => shrunk += old.len(),
                    None => {
                        added += 1;
                        grown += FIELD_OVERHEAD + f.len();
                    }
                }
                grown += v.len();
            }
        }
        entry.size = (entry.size + grown).saturating_sub(shrunk);
        self.bytes = (self.bytes + grown).saturating_sub(shrunk);
        Ok(added)
    }

    /// `HDEL`: returns how many fields existed; an emptied hash is removed.
    pub fn hdel(&mut self, key: &[u8], fields: &[Vec<u8>]) -> Result<i64, StoreError> {
        if self.hash(key)?.is_none() {
            return Ok(0);
        }
        let Some(entry) = self.map.get_mut(key) else {
            return Ok(0);
        };
        let mut removed = 0;
        let mut freed = 0;
        let mut empty = false;
        if let Value::Hash(h) = &mut entry.value {
            for f in fields {
                if let Some(v) = h.remove(f) {
                    removed += 1;
                    freed += FIELD_OVERHEAD + f.len() + v.len();
                }
            }
            empty = h.is_empty();
        }
        entry.size = entry.size.saturating_sub(freed);
        self.bytes = self.bytes.saturating_sub(freed);
        if empty {
            self.del(key);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn pairs(v: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        v.iter()
            .map(|(f, x)| (f.as_bytes().to_vec(), x.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn strings_expiry_and_bytes() {
        let mut s = Store::default();
        s.set(b"a", b"12345".to_vec(), None);
        assert_eq!(s.bytes(), KEY_OVERHEAD + 1 + 5);
        assert_eq!(s.get(b"a").unwrap(), Some(b"12345".to_vec()));
        assert_eq!(s.ttl(b"a"), -1);
        assert_eq!(s.ttl(b"zz"), -2);
        s.set(
            b"a",
            b"1".to_vec(),
            Some(Instant::now() + Duration::from_secs(10)),
        );
        assert_eq!(s.bytes(), KEY_OVERHEAD + 2);
        assert_eq!(s.ttl(b"a"), 10);
        assert_eq!(s.incr_by(b"a", 4).unwrap(), 5);
        assert!(s.expires(b"a").is_some(), "INCR keeps the TTL");
        s.set(b"gone", b"x".to_vec(), Some(Instant::now()));
        assert!(!s.exists(b"gone"));
        assert_eq!(s.bytes(), KEY_OVERHEAD + 2);
        assert!(s.del(b"a"));
        assert_eq!(s.bytes(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn incr_errors() {
        let mut s = Store::default();
        s.set(b"t", b"x".to_vec(), None);
        assert_eq!(s.incr_by(b"t", 1), Err(StoreError::NotInteger));
        s.set(b"m", i64::MAX.to_string().into_bytes(), None);
        assert_eq!(s.incr_by(b"m", 1), Err(StoreError::Overflow));
        assert_eq!(s.incr_by(b"new", -3).unwrap(), -3);
    }

    #[test]
    fn hashes_and_accounting() {
        let mut s = Store::default();
        assert_eq!(s.hset(b"h", &pairs(&[("f", "v"), ("g", "ww")])).unwrap(), 2);
        let base = KEY_OVERHEAD + 1;
        assert_eq!(s.bytes(), base + 2 * FIELD_OVERHEAD + 2 + 3);
        assert_eq!(s.hset(b"h", &pairs(&[("f", "vvv")])).unwrap(), 0);
        assert_eq!(s.bytes(), base + 2 * FIELD_OVERHEAD + 2 + 5);
        assert_eq!(s.hget(b"h", b"f").unwrap(), Some(b"vvv".to_vec()));
        assert_eq!(
            s.hgetall(b"h").unwrap(),
            pairs(&[("f", "vvv"), ("g", "ww")])
        );
        assert_eq!(s.get(b"h"), Err(StoreError::WrongType));
        s.set(b"str", b"x".to_vec(), None);
        assert_eq!(s.hget(b"str", b"f"), Err(StoreError::WrongType));
        assert_eq!(s.hdel(b"h", &[b"f".to_vec(), b"nope".to_vec()]).unwrap(), 1);
        assert_eq!(s.hdel(b"h", &[b"g".to_vec()]).unwrap(), 1);
        assert!(!s.exists(b"h"));
        s.del(b"str");
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn lengths_without_copies() {
        let mut s = Store::default();
        s.set(b"a", b"12345".to_vec(), None);
        s.hset(b"h", &pairs(&[("f", "vv"), ("gg", "w")])).unwrap();
        assert_eq!(s.str_len(b"a"), Some(5));
        assert_eq!(s.str_len(b"h"), None);
        assert_eq!(s.str_len(b"zz"), None);
        assert_eq!(s.hget_len(b"h", b"f"), Some(2));
        assert_eq!(s.hget_len(b"h", b"x"), None);
        assert_eq!(s.hash_len(b"h"), Some((2, 6)));
        assert_eq!(s.hash_len(b"a"), None);
    }

    #[test]
    fn purge_frees_bytes() {
        let mut s = Store::default();
        s.set(b"a", b"x".to_vec(), Some(Instant::now()));
        s.set(b"b", b"y".to_vec(), None);
        s.purge_expired();
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), KEY_OVERHEAD + 2);
    }
}
