//! Literal masking for slow-query records: what an operator may see of a
//! statement without the data in it. Numbers and strings become `?`;
//! identifiers, keywords, parameters (`$1`, `$name`) and structure stay,
//! comments go, runs of whitespace collapse to one space, and the result
//! is cut at [`MAX_STATEMENT`] bytes.
//!
//! Runs only for statements already found slow (or failed writes), so it
//! may allocate; it never panics on any input, text or not.

/// Longest normalized statement kept (1 KiB).
pub const MAX_STATEMENT: usize = 1024;

/// Which quoting rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `'..'` (with `''`), `E'..'` (backslash escapes),
    /// `$tag$..$tag$`, `B'..'`/`X'..'`/`N'..'`/`U&'..'`; `".."` is an identifier.
    Sql,
    /// Cypher: `'..'` and `".."` strings with backslash escapes; backticks
    /// quote identifiers.
    Cypher,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Masks the literals of `text`.
pub fn mask(text: &[u8], dialect: Dialect) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(text.len().min(MAX_STATEMENT + 8));
    let mut i = 0;
    // Last byte written that was not whitespace-collapsed: tells identifiers
    // (`t1`, `x2`) from numbers and string prefixes (`E'`) from identifiers.
    let mut prev: u8 = b' ';
    while i < text.len() && out.len() <= MAX_STATEMENT {
        let b = text[i];
        let next = text.get(i + 1).copied();
        // Whitespace collapses.
        if b.is_ascii_whitespace() {
            i += 1;
            space(&mut out, &mut prev);
            continue;
        }
        // Comments are dropped.
        if (b == b'-' && next == Some(b'-') && dialect == Dialect::Sql)
            || (b == b'/' && next == Some(b'/') && dialect == Dialect::Cypher)
        {
            i = find(text, i, b"\n").map_or(text.len(), |p| p + 1);
            space(&mut out, &mut prev);
            continue;
        }
        if b == b'/' && next == Some(b'*') {
            i = find(text, i + 2, b"*/").map_or(text.len(), |p| p + 2);
            space(&mut out, &mut prev);
            continue;
        }
        match (dialect, b) {
            (_, b'\'') => {
                // E'..' strings take backslash escapes; a preceding `E` was
                // already copied as if an identifier: take it back.
                let escaped = dialect == Dialect::Cypher || prefix_e(&out);
                strip_prefix(&mut out, dialect);
                i = skip_quoted(text, i, b'\'', escaped);
                literal(&mut out, &mut prev);
            }
            (Dialect::Cypher, b'"') => {
                i = skip_quoted(text, i, b'"', true);
                literal(&mut out, &mut prev);
            }
            (Dialect::Sql, b'"') | (Dialect::Cypher, b'`') => {
                let end = skip_quoted(text, i, b, false);
                out.extend_from_slice(text.get(i..end).unwrap_or_default());
                prev = b;
                i = end;
            }
            (Dialect::Sql, b'$') if !is_ident(prev) => match dollar_tag(text, i) {
                Some(tag_end) => {
                    let tag = text.get(i..tag_end).unwrap_or_default();
                    i = find(text, tag_end, tag).map_or(text.len(), |p| p + tag.len());
                    literal(&mut out, &mut prev);
                }
                None => i = copy_param(text, i, &mut out, &mut prev),
            },
            (Dialect::Cypher, b'$') => i = copy_param(text, i, &mut out, &mut prev),
            _ if b.is_ascii_digit() && !is_ident(prev) && prev != b'$' => {
                i = skip_number(text, i);
                literal(&mut out, &mut prev);
            }
            _ if b == b'.' && next.is_some_and(|n| n.is_ascii_digit()) && !is_ident(prev) => {
                i = skip_number(text, i);
                literal(&mut out, &mut prev);
            }
            _ => {
                out.push(b);
                prev = b;
                i += 1;
            }
        }
    }
    finish(out)
}

fn space(out: &mut Vec<u8>, prev: &mut u8) {
    if !out.is_empty() && *prev != b' ' {
        out.push(b' ');
        *prev = b' ';
    }
}

fn literal(out: &mut Vec<u8>, prev: &mut u8) {
    out.push(b'?');
    *prev = b'?';
}

/// Whether the identifier just copied is the `E` of an `E'..'` string.
fn prefix_e(out: &[u8]) -> bool {
    match out {
        [e] => e.eq_ignore_ascii_case(&b'E'),
        [.., before, e] => e.eq_ignore_ascii_case(&b'E') && !is_ident(*before),
        [] => false,
    }
}

/// Removes a string-prefix identifier (`E`, `B`, `X`, `N`, `U&`) just before a quote.
fn strip_prefix(out: &mut Vec<u8>, dialect: Dialect) {
    if dialect != Dialect::Sql {
        return;
    }
    let single = |c: &u8| matches!(c.to_ascii_uppercase(), b'E' | b'B' | b'X' | b'N');
    let standalone = |rest: &[u8]| rest.last().is_none_or(|b| !is_ident(*b));
    let cut = match out.as_slice() {
        [rest @ .., u, b'&'] if u.eq_ignore_ascii_case(&b'U') && standalone(rest) => 2,
        [rest @ .., c] if single(c) && standalone(rest) => 1,
        _ => 0,
    };
    out.truncate(out.len() - cut);
}

/// Index just past the closing quote (or the end of the text).
fn skip_quoted(text: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < text.len() {
        let b = text[i];
        if backslash && b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            // A doubled quote is an escaped one.
            if text.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    text.len()
}

/// `$tag$` or `$$` at `i`: the index past the opening tag.
fn dollar_tag(text: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if text.get(j).is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    while let Some(&b) = text.get(j) {
        if b == b'$' {
            return Some(j + 1);
        }
        if !is_ident(b) {
            return None;
        }
        j += 1;
    }
    None
}

/// Copies `$1` or `$name` as it is.
fn copy_param(text: &[u8], i: usize, out: &mut Vec<u8>, prev: &mut u8) -> usize {
    let mut j = i + 1;
    while text.get(j).is_some_and(|&b| is_ident(b)) {
        j += 1;
    }
    out.extend_from_slice(text.get(i..j).unwrap_or_default());
    *prev = text.get(j - 1).copied().unwrap_or(b'$');
    j
}

fn skip_number(text: &[u8], start: usize) -> usize {
    let mut i = start;
    let digit = |i: usize| text.get(i).is_some_and(|b| b.is_ascii_digit());
    if text.get(i) == Some(&b'0') && matches!(text.get(i + 1), Some(b'x' | b'X')) {
        i += 2;
        while text
            .get(i)
            .is_some_and(|b| b.is_ascii_hexdigit() || *b == b'_')
        {
            i += 1;
        }
        return i;
    }
    while digit(i) || text.get(i) == Some(&b'_') {
        i += 1;
    }
    if text.get(i) == Some(&b'.') && text.get(i + 1) != Some(&b'.') {
        i += 1;
        while digit(i) {
            i += 1;
        }
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        let sign = matches!(text.get(i + 1), Some(b'+' | b'-'));
        let at = i + 1 + usize::from(sign);
        if digit(at) {
            i = at;
            while digit(i) {
                i += 1;
            }
        }
    }
    i
}

fn find(text: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Trims and cuts at [`MAX_STATEMENT`] bytes on a character boundary.
fn finish(mut out: Vec<u8>) -> String {
    while out.last() == Some(&b' ') {
        out.pop();
    }
    let s = String::from_utf8_lossy(&out).into_owned();
    truncate(s)
}

/// Cuts `s` to at most [`MAX_STATEMENT`] bytes, marking the cut with `...`.
pub fn truncate(mut s: String) -> String {
    if s.len() <= MAX_STATEMENT {
        return s;
    }
    let mut cut = MAX_STATEMENT - 3;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str("...");
    s
}

/// Whether a Cypher statement looks like a write: one of CREATE, MERGE,
/// SET, DELETE, REMOVE as a whole word outside string literals and comments.
pub fn looks_like_write(text: &[u8]) -> bool {
    const WRITES: [&[u8]; 5] = [b"CREATE", b"MERGE", b"SET", b"DELETE", b"REMOVE"];
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b'\'' | b'"' => i = skip_quoted(text, i, b, true),
            b'`' => i = skip_quoted(text, i, b, false),
            b'/' if text.get(i + 1) == Some(&b'/') => {
                i = find(text, i, b"\n").map_or(text.len(), |p| p + 1)
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                i = find(text, i + 2, b"*/").map_or(text.len(), |p| p + 2)
            }
            _ if is_ident(b) => {
                let start = i;
                while text.get(i).is_some_and(|&c| is_ident(c)) {
                    i += 1;
                }
                let word = text.get(start..i).unwrap_or_default();
                if WRITES.iter().any(|w| w.eq_ignore_ascii_case(word)) {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// Redis commands whose first argument is a subcommand kept in the record.
const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Whether a (already upper-cased) redis command name takes a subcommand.
pub fn has_subcommand(name: &[u8]) -> bool {
    CONTAINERS.iter().any(|c| c.as_bytes() == name)
}

/// `NAME [SUB] ? ? ...`: every argument after the command name (and the
/// subcommand of a container command) becomes `?`.
pub fn redis_command(name: &[u8], sub: Option<&[u8]>, masked_args: u64) -> String {
    let mut out = String::with_capacity(32);
    out.push_str(&String::from_utf8_lossy(name).to_ascii_uppercase());
    if let Some(sub) = sub {
        out.push(' ');
        out.push_str(&String::from_utf8_lossy(sub).to_ascii_uppercase());
    }
    for _ in 0..masked_args {
        if out.len() + 6 > MAX_STATEMENT {
            out.push_str(" ...");
            break;
        }
        out.push_str(" ?");
    }
    out
}
