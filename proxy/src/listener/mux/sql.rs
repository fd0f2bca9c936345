//! What a multiplexed PostgreSQL client's statements ask of the
//! multiplexer ([`classify`]): whether they may be pipelined on a shared
//! server connection with other clients' statements, need a server
//! connection of the client's own until its transaction ends, or are
//! refused because they would leave session state on a connection that
//! other clients use next.
//!
//! The text of a simple Query or a Parse is split as the server's lexer
//! (src/backend/parser/scan.l) reads it: on `;` outside string constants
//! (`'…'` with `''`, `E'…'` with backslash escapes, `B'…'`, `X'…'`,
//! constants continued across a newline, `$tag$…$tag$`), quoted
//! identifiers and comments (`--`, nested `/* */`). Each statement is
//! judged by its first keywords:
//!
//! - Shared: SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, VALUES, TABLE,
//!   SHOW, and EXPLAIN of one of them. None opens a transaction block or
//!   leaves session state, save `SELECT … INTO TEMP` (refused).
//! - Refused: SET (but SET LOCAL, SET TRANSACTION, SET CONSTRAINTS),
//!   RESET, DISCARD, LISTEN, UNLISTEN, PREPARE (but PREPARE TRANSACTION),
//!   DEALLOCATE, LOAD, DECLARE … WITH HOLD, and whatever creates a
//!   temporary object: CREATE [GLOBAL | LOCAL] TEMP[ORARY] …, CREATE …
//!   pg_temp.name, SELECT … INTO TEMP. SET SESSION CHARACTERISTICS sets
//!   the session's default transaction modes, so it is refused too.
//! - Private: everything else (BEGIN, COMMIT, COPY, DDL, DO, CALL, …), and
//!   text the server will reject whole (an unterminated quote or comment).
//!
//! A text is Shared when every statement in it is, Refused when one is.
//! Splitting on every `;` cuts more than the grammar does (a rule's action
//! list, a BEGIN ATOMIC body): that only ever makes a text Private or
//! Refused, never Shared.
//!
//! This is a lexical check. Functions that a Shared statement calls
//! (`set_config(…, false)`, `pg_advisory_lock`) and the code that DO or
//! CALL runs are not seen.

/// What a query text asks of the multiplexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Every statement is one that cannot open a transaction block or leave
    /// session state: may share a connection, pipelined.
    Shared,
    /// Allowed, but must run on a connection of the client's own until its
    /// transaction ends (BEGIN, COMMIT, COPY, DDL, anything not known to be
    /// Shared).
    Private,
    /// Refused: would leave state on the server connection after the
    /// client's transaction; names the statement ("SET", "LISTEN", …).
    Refused(&'static str),
}

/// The name every refusal of a temporary object carries.
const TEMP: &str = "CREATE TEMPORARY TABLE";
const TEMPORARY: &[&str] = &["TEMP", "TEMPORARY"];

/// Classifies the text of a simple Query or a Parse: any number of
/// statements separated by `;`, with or without its terminating NUL.
pub(crate) fn classify(sql: &[u8]) -> Class {
    // The server reads the text up to its first NUL.
    let sql = sql.split(|&b| b == 0).next().unwrap_or_default();
    let (class, backslash) = scan(sql, false);
    if !backslash || matches!(class, Class::Refused(_)) {
        return class;
    }
    // A plain '…' string held a backslash: where it ends depends on the
    // server's standard_conforming_strings (off, `\'` does not end it).
    // Take the stricter of both readings.
    match scan(sql, true).0 {
        Class::Shared => class,
        other => other,
    }
}

/// One reading of the text, plain strings taking backslash escapes or
/// not; also whether a plain string held a backslash.
fn scan(sql: &[u8], escapes: bool) -> (Class, bool) {
    let mut lx = Lexer {
        sql,
        pos: 0,
        escapes,
        backslash: false,
        unterminated: false,
        stmt_end: false,
    };
    let mut class = Class::Shared;
    while lx.pos < sql.len() {
        lx.stmt_end = false;
        match statement(&mut lx) {
            Some(Class::Refused(name)) if !matches!(class, Class::Refused(_)) => {
                class = Class::Refused(name);
            }
            Some(Class::Private) if class == Class::Shared => class = Class::Private,
            _ => {}
        }
    }
    if lx.unterminated {
        class = Class::Private;
    }
    (class, lx.backslash)
}

/// Classifies the statement at the lexer and reads it to its end: None
/// if it is empty.
fn statement(lx: &mut Lexer<'_>) -> Option<Class> {
    let mut tok = lx.next();
    let mut parens = false;
    while tok == Tok::Open {
        parens = true;
        tok = lx.next();
    }
    let class = match tok {
        Tok::End if !parens => return None,
        Tok::Word(word) => command(lx, word, false),
        _ => Class::Private,
    };
    while lx.next() != Tok::End {}
    Some(class)
}

/// How a statement's first keyword is judged.
#[derive(Clone, Copy)]
enum Cmd {
    /// Shared, unless it is a SELECT … INTO a temporary table.
    Query,
    /// Shared; the INTO that follows names an existing table (INSERT, MERGE).
    Write,
    Explain,
    Set,
    Prepare,
    Declare,
    Create,
    Refuse(&'static str),
}

const COMMANDS: &[(&str, Cmd)] = &[
    ("SELECT", Cmd::Query),
    ("INSERT", Cmd::Write),
    ("UPDATE", Cmd::Query),
    ("DELETE", Cmd::Query),
    ("WITH", Cmd::Query),
    ("VALUES", Cmd::Query),
    ("TABLE", Cmd::Query),
    ("SHOW", Cmd::Query),
    ("MERGE", Cmd::Write),
    ("EXPLAIN", Cmd::Explain),
    ("SET", Cmd::Set),
    ("RESET", Cmd::Refuse("RESET")),
    ("DISCARD", Cmd::Refuse("DISCARD")),
    ("LISTEN", Cmd::Refuse("LISTEN")),
    ("UNLISTEN", Cmd::Refuse("UNLISTEN")),
    ("PREPARE", Cmd::Prepare),
    ("DEALLOCATE", Cmd::Refuse("DEALLOCATE")),
    ("LOAD", Cmd::Refuse("LOAD")),
    ("DECLARE", Cmd::Declare),
    ("CREATE", Cmd::Create),
];

/// Judges the statement whose first keyword is `word`, reading as much of
/// it as that takes. `nested`: the statement under an EXPLAIN.
fn command(lx: &mut Lexer<'_>, word: &[u8], nested: bool) -> Class {
    let cmd = COMMANDS
        .iter()
        .find(|(kw, _)| word.eq_ignore_ascii_case(kw.as_bytes()))
        .map(|&(_, cmd)| cmd);
    match cmd {
        Some(Cmd::Query) => query(lx, false),
        Some(Cmd::Write) => query(lx, true),
        Some(Cmd::Explain) if !nested => explain(lx),
        Some(Cmd::Set) => set(lx),
        // PREPARE TRANSACTION 'gid' hands the transaction over; PREPARE
        // transaction AS … names a statement "transaction".
        Some(Cmd::Prepare) => {
            if is(lx.next(), &["TRANSACTION"]) && lx.next() == Tok::Str {
                Class::Private
            } else {
                Class::Refused("PREPARE")
            }
        }
        Some(Cmd::Declare) => declare(lx),
        Some(Cmd::Create) => create(lx),
        Some(Cmd::Refuse(name)) => Class::Refused(name),
        Some(Cmd::Explain) | None => Class::Private,
    }
}

/// A statement that cannot open a transaction block: Shared, unless a
/// SELECT … INTO makes a temporary table. `into_target`: an INTO right
/// after the first keyword names an existing table (INSERT, MERGE).
fn query(lx: &mut Lexer<'_>, mut into_target: bool) -> Class {
    loop {
        let tok = lx.next();
        match tok {
            Tok::End => return Class::Shared,
            Tok::Word(w) if !into_target && w.eq_ignore_ascii_case(b"INTO") && into_temp(lx) => {
                return Class::Refused(TEMP);
            }
            _ => {}
        }
        into_target = is(tok, &["INSERT", "MERGE"]);
    }
}

/// After SELECT's INTO: whether the new table is temporary.
fn into_temp(lx: &mut Lexer<'_>) -> bool {
    let mut tok = lx.next();
    if is(tok, &["GLOBAL", "LOCAL"]) {
        tok = lx.next();
        if !is(tok, TEMPORARY) {
            return false;
        }
    }
    if is(tok, TEMPORARY) {
        // `INTO temp FROM …` names a table "temp".
        return match lx.next() {
            Tok::Quoted(_) => true,
            Tok::Word(w) => !CLAUSES
                .iter()
                .any(|kw| w.eq_ignore_ascii_case(kw.as_bytes())),
            _ => false,
        };
    }
    if is(tok, &["UNLOGGED"]) {
        tok = lx.next();
    }
    if is(tok, &["TABLE"]) {
        tok = lx.next();
    }
    temp_schema(tok) && lx.next() == Tok::Punct(b'.')
}

/// The reserved words that may follow SELECT … INTO's table name.
const CLAUSES: &[&str] = &[
    "FROM",
    "WHERE",
    "GROUP",
    "HAVING",
    "WINDOW",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "FETCH",
    "FOR",
    "UNION",
    "INTERSECT",
    "EXCEPT",
];

/// EXPLAIN [(options)] [ANALYZE] [VERBOSE] statement: judged as its
/// statement (EXPLAIN ANALYZE runs it; EXPLAIN ANALYZE CREATE TABLE … AS
/// creates the table).
fn explain(lx: &mut Lexer<'_>) -> Class {
    let mut tok = lx.next();
    if tok == Tok::Open {
        // An option list, unless a parenthesised query follows.
        let peek = lx.clone().next();
        if peek != Tok::Open && !is(peek, &["SELECT", "VALUES", "WITH", "TABLE"]) {
            let mut depth = 1usize;
            while depth > 0 {
                match lx.next() {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    Tok::End => return Class::Private,
                    _ => {}
                }
            }
            tok = lx.next();
        }
    }
    while is(tok, &["ANALYZE", "ANALYSE", "VERBOSE"]) {
        tok = lx.next();
    }
    while tok == Tok::Open {
        tok = lx.next();
    }
    match tok {
        Tok::Word(word) => command(lx, word, true),
        _ => Class::Private,
    }
}

/// SET: refused, but for the forms scoped to the current transaction.
fn set(lx: &mut Lexer<'_>) -> Class {
    // `SET local.x = 1` sets a variable named local.x, for the session.
    if is(lx.next(), &["LOCAL", "TRANSACTION", "CONSTRAINTS"])
        && matches!(lx.next(), Tok::Word(_) | Tok::Quoted(_))
    {
        Class::Private
    } else {
        Class::Refused("SET")
    }
}

/// DECLARE name … CURSOR [WITH HOLD] FOR query: a holdable cursor
/// outlives the transaction.
fn declare(lx: &mut Lexer<'_>) -> Class {
    let mut with = false;
    loop {
        let tok = lx.next();
        if tok == Tok::End || is(tok, &["FOR"]) {
            return Class::Private;
        }
        if with && is(tok, &["HOLD"]) {
            return Class::Refused("DECLARE ... WITH HOLD");
        }
        with = is(tok, &["WITH"]);
    }
}

/// CREATE: Private, but for a temporary object.
fn create(lx: &mut Lexer<'_>) -> Class {
    let mut tok = lx.next();
    if is(tok, &["OR"]) {
        lx.next(); // REPLACE
        tok = lx.next();
    }
    if is(tok, &["GLOBAL", "LOCAL"]) {
        tok = lx.next();
    }
    if is(tok, TEMPORARY) {
        return Class::Refused(TEMP);
    }
    // An object created in the session's pg_temp schema is temporary too.
    let mut schema = false;
    loop {
        if tok == Tok::End {
            return Class::Private;
        }
        if schema && tok == Tok::Punct(b'.') {
            return Class::Refused(TEMP);
        }
        schema = temp_schema(tok);
        tok = lx.next();
    }
}

/// Whether the token is a bare word among `keywords` (upper case).
fn is(tok: Tok<'_>, keywords: &[&str]) -> bool {
    matches!(tok, Tok::Word(w) if keywords.iter().any(|kw| w.eq_ignore_ascii_case(kw.as_bytes())))
}

/// `pg_temp` or `pg_temp_<n>`, the session's temporary schema.
fn temp_schema(tok: Tok<'_>) -> bool {
    let name = match tok {
        Tok::Word(w) => w,
        Tok::Quoted(q) => q.get(1..q.len().saturating_sub(1)).unwrap_or_default(),
        _ => return false,
    };
    let (Some(head), Some(tail)) = (name.get(..7), name.get(7..)) else {
        return false;
    };
    head.eq_ignore_ascii_case(b"pg_temp")
        && match tail.split_first() {
            None => true,
            Some((b'_', n)) => !n.is_empty() && n.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

/// A token of the server's lexer, as far as [`classify`] tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// A bare word: a keyword or an identifier.
    Word(&'a [u8]),
    /// A quoted identifier, quotes included.
    Quoted(&'a [u8]),
    /// A string constant.
    Str,
    Open,
    Close,
    /// An integer or a `$n` parameter.
    Number,
    /// Any other byte: operators, punctuation.
    Punct(u8),
    /// The statement's `;`, or the end of the text.
    End,
}

/// How a string constant's body is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `'…'`: `''` is a quote.
    Plain,
    /// `E'…'` (and `'…'` with standard_conforming_strings off): `''` or a
    /// backslash and the byte after it.
    Escape,
    /// `B'…'`, `X'…'`: the first quote ends it.
    Bits,
}

#[derive(Clone)]
struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    /// Plain strings take backslash escapes (standard_conforming_strings off).
    escapes: bool,
    /// A plain string held a backslash.
    backslash: bool,
    /// A quote or comment ran to the end of the text.
    unterminated: bool,
    /// The current statement's `;`, or the end of the text, was read:
    /// [`Lexer::next`] answers [`Tok::End`] until the next statement.
    stmt_end: bool,
}

impl<'a> Lexer<'a> {
    /// The byte at `i`; 0 past the end (the text holds no NUL).
    fn at(&self, i: usize) -> u8 {
        self.sql.get(i).copied().unwrap_or(0)
    }

    fn next(&mut self) -> Tok<'a> {
        if self.stmt_end {
            return Tok::End;
        }
        let tok = self.lex();
        self.stmt_end = tok == Tok::End;
        tok
    }

    fn lex(&mut self) -> Tok<'a> {
        self.skip_space();
        let start = self.pos;
        let b = self.at(start);
        if b == 0 {
            return Tok::End;
        }
        self.pos += 1;
        let quote_next = self.at(self.pos) == b'\'';
        match b {
            b';' => Tok::End,
            b'(' => Tok::Open,
            b')' => Tok::Close,
            b'\'' if self.escapes => self.string(Quoting::Escape),
            b'\'' => self.string(Quoting::Plain),
            b'e' | b'E' if quote_next => {
                self.pos += 1;
                self.string(Quoting::Escape)
            }
            b'b' | b'B' | b'x' | b'X' if quote_next => {
                self.pos += 1;
                self.string(Quoting::Bits)
            }
            b'"' => self.quoted(start),
            b'$' => self.dollar(start),
            // Digits only: the server reads `1e'…'` as 1 and E'…' (or
            // refuses it), `1into` as 1 and INTO (before PostgreSQL 15).
            b'0'..=b'9' => {
                self.skip_while(|c| c.is_ascii_digit());
                Tok::Number
            }
            _ if ident_start(b) => {
                self.skip_while(ident_cont);
                Tok::Word(self.sql.get(start..self.pos).unwrap_or_default())
            }
            _ => Tok::Punct(b),
        }
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        let rest = self.sql.get(self.pos..).unwrap_or_default();
        self.pos += rest.iter().position(|&c| !f(c)).unwrap_or(rest.len());
    }

    /// Skips whitespace and comments.
    fn skip_space(&mut self) {
        loop {
            match self.at(self.pos) {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => self.pos += 1,
                b'-' if self.at(self.pos + 1) == b'-' => self.pos = self.line_end(self.pos),
                b'/' if self.at(self.pos + 1) == b'*' => self.block_comment(),
                _ => return,
            }
        }
    }

    /// Where the line holding `i` ends.
    fn line_end(&self, mut i: usize) -> usize {
        while !matches!(self.at(i), b'\n' | b'\r' | 0) {
            i += 1;
        }
        i
    }

    /// Skips a `/* */` comment, nested ones in it too.
    fn block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1usize;
        while depth > 0 {
            match (self.at(self.pos), self.at(self.pos + 1)) {
                (0, _) => {
                    self.unterminated();
                    return;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    self.pos += 2;
                }
                (b'/', b'*') => {
                    depth += 1;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Reads a string constant from after its opening quote.
    fn string(&mut self, quoting: Quoting) -> Tok<'a> {
        loop {
            match self.at(self.pos) {
                0 => return self.unterminated(),
                b'\'' => {
                    self.pos += 1;
                    if quoting != Quoting::Bits && self.at(self.pos) == b'\'' {
                        self.pos += 1;
                    } else if !self.continuation() {
                        return Tok::Str;
                    }
                }
                b'\\' => {
                    self.pos += 1;
                    match quoting {
                        Quoting::Escape => self.pos += 1,
                        Quoting::Plain => self.backslash = true,
                        Quoting::Bits => {}
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// After a closing quote, whitespace holding a newline and then a
    /// quote continue the same constant, read the same way (scan.l's
    /// quotecontinue); if so, moves past that quote.
    fn continuation(&mut self) -> bool {
        let mut i = self.pos;
        let mut newline = false;
        loop {
            match self.at(i) {
                b' ' | b'\t' | 0x0b | 0x0c => i += 1,
                b'\n' | b'\r' => {
                    newline = true;
                    i += 1;
                }
                b'-' if self.at(i + 1) == b'-' => i = self.line_end(i),
                b'\'' if newline => {
                    self.pos = i + 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Reads a quoted identifier from after its opening quote.
    fn quoted(&mut self, start: usize) -> Tok<'a> {
        loop {
            match self.at(self.pos) {
                0 => return self.unterminated(),
                b'"' if self.at(self.pos + 1) == b'"' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Tok::Quoted(self.sql.get(start..self.pos).unwrap_or_default());
                }
                _ => self.pos += 1,
            }
        }
    }

    /// After a `$`: a `$n` parameter, a dollar-quoted string, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Tok<'a> {
        let first = self.at(self.pos);
        if first.is_ascii_digit() {
            self.skip_while(|c| c.is_ascii_digit());
            return Tok::Number;
        }
        let mut end = self.pos;
        if ident_start(first) {
            end += 1;
            while tag_cont(self.at(end)) {
                end += 1;
            }
        }
        if self.at(end) != b'$' {
            return Tok::Punct(b'$');
        }
        let Some(tag) = self.sql.get(start..=end) else {
            return Tok::Punct(b'$');
        };
        let body = end + 1;
        let rest = self.sql.get(body..).unwrap_or_default();
        let mut i = 0;
        while let Some(n) = rest
            .get(i..)
            .and_then(|r| r.iter().position(|&c| c == b'$'))
        {
            i += n;
            if rest.get(i..i + tag.len()) == Some(tag) {
                self.pos = body + i + tag.len();
                return Tok::Str;
            }
            i += 1;
        }
        self.unterminated()
    }

    fn unterminated(&mut self) -> Tok<'a> {
        self.unterminated = true;
        self.pos = self.sql.len();
        Tok::End
    }
}

/// scan.l's ident_start (and dolq_start): bytes from 0x80 are letters.
fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// scan.l's dolq_cont.
fn tag_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit()
}

/// scan.l's ident_cont, by table: the loop over a word's bytes is most
/// of the work.
fn ident_cont(b: u8) -> bool {
    IDENT_CONT.get(usize::from(b)).copied().unwrap_or(false)
}

const IDENT_CONT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        // A constant: an index out of range would fail the build.
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        b += 1;
    }
    table
};

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
