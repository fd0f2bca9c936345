//! Key paths (`service[1].upstreams[0].address`) and the 1-based line of a
//! key path in the file, found from the spans of toml's own spanned parser
//! (the same parser that read the values, so TOML 1.1 inline tables that span
//! several lines resolve too).

use std::fmt;

use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the config tree, displayed as `service[1].upstreams[0].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    pub fn join(&self, other: &KeyPath) -> KeyPath {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }

    /// True when `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The 1-based line of byte offset `offset` in `src`.
pub fn line_at(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// 1-based line and column of byte offset `offset` in `src`.
pub fn line_col_at(src: &str, offset: usize) -> (usize, usize) {
    let end = offset.min(src.len());
    let before = &src.as_bytes()[..end];
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line_at(src, offset), col)
}

/// Finds lines of key paths in one source text.
pub struct LineIndex<'a> {
    src: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> LineIndex<'a> {
    pub fn new(src: &'a str) -> LineIndex<'a> {
        LineIndex {
            src,
            root: DeTable::parse(src).ok(),
        }
    }

    /// The line of the deepest part of `path` present in the file: the key
    /// itself when it is there, else (a missing field) the table that lacks it.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut best: Option<usize> = None;
        let mut table: Option<&DeTable<'a>> = Some(root.get_ref());
        let mut array: Option<&DeArray<'a>> = None;
        for seg in &path.0 {
            let next: Option<&Spanned<DeValue<'a>>> = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => {
                    let found = t
                        .iter()
                        .find(|(key, _)| key.get_ref().as_ref() == k.as_str());
                    match found {
                        Some((key, value)) => {
                            best = Some(key.span().start);
                            Some(value)
                        }
                        None => None,
                    }
                }
                (Seg::Index(i), _, Some(a)) => match a.get(*i) {
                    Some(value) => {
                        best = Some(value.span().start);
                        Some(value)
                    }
                    None => None,
                },
                _ => None,
            };
            let Some(value) = next else { break };
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        best.map(|offset| line_at(self.src, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_paths_like_the_file() {
        let p = KeyPath::root()
            .key("service")
            .index(1)
            .key("upstreams")
            .index(0);
        assert_eq!(
            p.key("address").to_string(),
            "service[1].upstreams[0].address"
        );
        assert!(p.key("x").starts_with(&p));
        assert!(!p.starts_with(&p.key("x")));
    }

    #[test]
    fn finds_lines_of_keys_headers_and_inline_tables() {
        let src = "a = 1\n\n[[service]]\nname = \"x\"\n\n[[service]]\nupstreams = [\n  { name = \"u\",\n    address = \"h:1\" },\n]\n";
        let idx = LineIndex::new(src);
        let svc = KeyPath::root().key("service").index(1);
        assert_eq!(idx.line_of(&KeyPath::root().key("a")), Some(1));
        assert_eq!(
            idx.line_of(&KeyPath::root().key("service").index(0).key("name")),
            Some(4)
        );
        assert_eq!(idx.line_of(&svc.key("kind")), Some(6));
        let up = svc.key("upstreams").index(0);
        assert_eq!(idx.line_of(&up.key("address")), Some(9));
        assert_eq!(idx.line_of(&up.key("missing")), Some(8));
        assert_eq!(line_col_at("ab\ncd", 4), (2, 2));
    }
}
