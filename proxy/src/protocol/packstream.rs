//! PackStream, the value encoding of Bolt (Neo4j): [`decode`] one value
//! from bytes (with [`Error::Incomplete`] when more are needed, in the way
//! of the other codecs here) and [`encode`] one back, in the smallest form.
//! Structures (nodes, dates, ...) are kept as a tag and their fields, not
//! interpreted. Used to rewrite the routing table a `ROUTE` answers
//! (protocol/bolt_route.rs); the statement observer reads only message
//! headers and needs none of this.

/// How deep lists, maps and structures may nest; deeper input is refused
/// (a hostile server cannot make the decoder recurse without bound).
pub const MAX_DEPTH: usize = 32;

/// One PackStream value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    String(String),
    List(Vec<Value>),
    /// In wire order (keys are strings).
    Map(Vec<(String, Value)>),
    Struct {
        tag: u8,
        fields: Vec<Value>,
    },
}

impl Value {
    /// The value under `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key` of a map, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("incomplete PackStream value")]
    Incomplete,
    #[error("invalid PackStream: {0}")]
    Invalid(&'static str),
}

/// Decodes one value from the start of `buf`; returns it and the bytes it
/// took. Every length is checked against what is there before anything is
/// allocated for it.
pub fn decode(buf: &[u8]) -> Result<(Value, usize), Error> {
    let mut r = Reader { buf, pos: 0 };
    let v = r.value(0)?;
    Ok((v, r.pos))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Invalid("length"))?;
        let s = self.buf.get(self.pos..end).ok_or(Error::Incomplete)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn be(&mut self, n: usize) -> Result<u64, Error> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// A size after a marker: `n` bytes, big-endian.
    fn size(&mut self, n: usize) -> Result<usize, Error> {
        usize::try_from(self.be(n)?).map_err(|_| Error::Invalid("size"))
    }

    /// At least `n` items of one byte each must still be there: a list of
    /// a billion entries in a 20-byte message is refused, not allocated.
    fn room(&self, n: usize) -> Result<(), Error> {
        if self.buf.len().saturating_sub(self.pos) < n {
            return Err(Error::Incomplete);
        }
        Ok(())
    }

    fn text(&mut self, n: usize) -> Result<String, Error> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::Invalid("string is not UTF-8"))
    }

    fn list(&mut self, n: usize, depth: usize) -> Result<Value, Error> {
        self.room(n)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::List(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, Error> {
        self.room(n.saturating_mul(2))?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let Value::String(k) = self.value(depth + 1)? else {
                return Err(Error::Invalid("map key is not a string"));
            };
            entries.push((k, self.value(depth + 1)?));
        }
        Ok(Value::Map(entries))
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Invalid("nested too deep"));
        }
        let m = self.byte()?;
        let low = usize::from(m & 0x0F);
        Ok(match m {
            0x00..=0x7F => Value::Int(i64::from(m)),
            0xF0..=0xFF => Value::Int(i64::from(m as i8)),
            0x80..=0x8F => Value::String(self.text(low)?),
            0x90..=0x9F => self.list(low, depth)?,
            0xA0..=0xAF => self.map(low, depth)?,
            0xB0..=0xBF => {
                let tag = self.byte()?;
                let Value::List(fields) = self.list(low, depth)? else {
                    return Err(Error::Invalid("structure"));
                };
                Value::Struct { tag, fields }
            }
            0xC0 => Value::Null,
            0xC1 => Value::Float(f64::from_bits(self.be(8)?)),
            0xC2 => Value::Bool(false),
            0xC3 => Value::Bool(true),
            0xC8 => Value::Int(i64::from(self.be(1)? as u8 as i8)),
            0xC9 => Value::Int(i64::from(self.be(2)? as u16 as i16)),
            0xCA => Value::Int(i64::from(self.be(4)? as u32 as i32)),
            0xCB => Value::Int(self.be(8)? as i64),
            0xCC..=0xCE => {
                let n = self.size(1 << (m - 0xCC))?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xD0..=0xD2 => {
                let n = self.size(1 << (m - 0xD0))?;
                Value::String(self.text(n)?)
            }
            0xD4..=0xD6 => {
                let n = self.size(1 << (m - 0xD4))?;
                self.list(n, depth)?
            }
            0xD8..=0xDA => {
                let n = self.size(1 << (m - 0xD8))?;
                self.map(n, depth)?
            }
            _ => return Err(Error::Invalid("unknown marker")),
        })
    }
}

/// Appends `v` to `out`, each part in its smallest form.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xC0),
        Value::Bool(b) => out.push(if *b { 0xC3 } else { 0xC2 }),
        Value::Int(i) => int(*i, out),
        Value::Float(f) => {
            out.push(0xC1);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Bytes(b) => {
            header(b.len(), None, 0xCC, out);
            out.extend_from_slice(b);
        }
        Value::String(s) => {
            header(s.len(), Some(0x80), 0xD0, out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::List(items) => {
            header(items.len(), Some(0x90), 0xD4, out);
            for i in items {
                encode(i, out);
            }
        }
        Value::Map(entries) => {
            header(entries.len(), Some(0xA0), 0xD8, out);
            for (k, v) in entries {
                header(k.len(), Some(0x80), 0xD0, out);
                out.extend_from_slice(k.as_bytes());
                encode(v, out);
            }
        }
        Value::Struct { tag, fields } => {
            // At most 15 fields in Bolt; more cannot be written.
            out.push(0xB0 | (fields.len().min(15) as u8));
            out.push(*tag);
            for f in fields.iter().take(15) {
                encode(f, out);
            }
        }
    }
}

fn int(i: i64, out: &mut Vec<u8>) {
    if (-16..=127).contains(&i) {
        out.push(i as u8);
    } else if let Ok(b) = i8::try_from(i) {
        out.extend_from_slice(&[0xC8, b as u8]);
    } else if let Ok(s) = i16::try_from(i) {
        out.push(0xC9);
        out.extend_from_slice(&s.to_be_bytes());
    } else if let Ok(w) = i32::try_from(i) {
        out.push(0xCA);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(0xCB);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

/// A size marker: tiny (`tiny | n`, n < 16) where the type has one, else
/// `base` (8-bit size), `base + 1` (16) or `base + 2` (32).
fn header(n: usize, tiny: Option<u8>, base: u8, out: &mut Vec<u8>) {
    match (tiny, n) {
        (Some(t), 0..=15) => out.push(t | n as u8),
        (_, 0..=0xFF) => out.extend_from_slice(&[base, n as u8]),
        (_, 0x100..=0xFFFF) => {
            out.push(base + 1);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(base + 2);
            out.extend_from_slice(&(n.min(u32::MAX as usize) as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn round(v: &Value) -> Value {
        let mut out = Vec::new();
        encode(v, &mut out);
        let (back, used) = decode(&out).unwrap();
        assert_eq!(used, out.len());
        back
    }

    #[test]
    fn known_encodings() {
        let cases: Vec<(Value, Vec<u8>)> = vec![
            (Value::Int(1), vec![0x01]),
            (Value::Int(-16), vec![0xF0]),
            (Value::Int(-17), vec![0xC8, 0xEF]),
            (Value::Int(128), vec![0xC9, 0x00, 0x80]),
            (Value::Int(1 << 40), vec![0xCB, 0, 0, 1, 0, 0, 0, 0, 0]),
            (Value::String("rt".into()), vec![0x82, b'r', b't']),
            (
                Value::Map(vec![("a".into(), Value::Bool(true))]),
                vec![0xA1, 0x81, b'a', 0xC3],
            ),
            (
                Value::Struct {
                    tag: 0x70,
                    fields: vec![Value::Map(vec![])],
                },
                vec![0xB1, 0x70, 0xA0],
            ),
        ];
        for (v, bytes) in cases {
            let mut out = Vec::new();
            encode(&v, &mut out);
            assert_eq!(out, bytes, "{v:?}");
            assert_eq!(decode(&bytes).unwrap(), (v, bytes.len()));
        }
    }

    #[test]
    fn short_input_is_incomplete_and_bad_input_is_refused() {
        assert_eq!(decode(&[]), Err(Error::Incomplete));
        assert_eq!(decode(&[0x82, b'r']), Err(Error::Incomplete));
        // A list that claims 2^32-1 items in 5 bytes: refused, not allocated.
        assert_eq!(
            decode(&[0xD6, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(Error::Incomplete)
        );
        assert!(matches!(decode(&[0xE0]), Err(Error::Invalid(_))));
        assert!(matches!(
            decode(&[0xA1, 0x01, 0x01]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(decode(&[0x81, 0xFF]), Err(Error::Invalid(_))));
        let deep = vec![0x91; MAX_DEPTH + 2];
        assert!(matches!(decode(&deep), Err(Error::Invalid(_))));
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN != NaN", |f| !f.is_nan())
                .prop_map(Value::Float),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 20, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::List),
                proptest::collection::vec(("[a-z]{0,20}", inner.clone()), 0..20)
                    .prop_map(Value::Map),
                (any::<u8>(), proptest::collection::vec(inner, 0..15))
                    .prop_map(|(tag, fields)| Value::Struct { tag, fields }),
            ]
        })
    }

    proptest! {
        #[test]
        fn values_round_trip(v in value()) {
            prop_assert_eq!(round(&v), v);
        }

        /// Arbitrary bytes: no panic, and what decodes re-encodes to
        /// something that decodes to the same value.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((v, used)) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(round(&v), v);
            }
        }
    }
}
