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
mod tests {
    use super::Class::{Private, Refused, Shared};
    use super::*;

    fn c(sql: &str) -> Class {
        classify(sql.as_bytes())
    }

    #[track_caller]
    fn all(expected: Class, texts: &[&str]) {
        for sql in texts {
            assert_eq!(c(sql), expected, "{sql:?}");
        }
    }

    #[test]
    fn shared_keywords() {
        all(
            Shared,
            &[
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                "SELECT 1",
                "INSERT INTO t VALUES (1) RETURNING *",
                "UPDATE t SET x = 1 WHERE id = 2",
                "DELETE FROM t WHERE id = 2",
                "WITH a AS (SELECT 1) SELECT * FROM a",
                "WITH u AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM u",
                "VALUES (1), (2)",
                "TABLE t",
                "SHOW search_path",
                "EXPLAIN SELECT 1",
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = 1",
                "SELECT * FROM t FOR UPDATE",
            ],
        );
    }

    #[test]
    fn case_insensitive() {
        all(
            Shared,
            &["select 1", "sElEcT 1", "insert into t values (1)"],
        );
        all(Private, &["begin", "BeGiN", "Set Local x = 1", "commit"]);
        all(Refused("SET"), &["set x = 1", "sEt x = 1"]);
        all(Refused(TEMP), &["create TEMP table t(x int)"]);
    }

    #[test]
    fn whole_words_only() {
        all(
            Private,
            &["SELECTX 1", "select1", "setx = 1", "SET$ x", "BEGINx"],
        );
        assert_eq!(c("sets = 1"), Private);
        assert_eq!(c("SELECT set FROM t"), Shared);
    }

    #[test]
    fn leading_comments_and_parens() {
        all(
            Shared,
            &[
                "/* hint */ SELECT 1",
                "-- c\nSELECT 1",
                "-- c\rSELECT 1",
                "/* a /* nested */ b */SELECT 1",
                "(SELECT 1)",
                "((VALUES (1)))",
                "( /* c */ SELECT 1) UNION (SELECT 2)",
                "\n\t  SELECT 1",
            ],
        );
        assert_eq!(c("/* a */ -- b\n SET x = 1"), Refused("SET"));
        assert_eq!(c("(SET x = 1)"), Refused("SET"));
        assert_eq!(c("(BEGIN)"), Private);
    }

    #[test]
    fn semicolons_in_strings() {
        all(
            Shared,
            &[
                "SELECT ';SET x = 1'",
                "SELECT 'it''s; SET x = 1'",
                "SELECT '' ; SELECT ''''",
                "SELECT N'a;b'",
                "SELECT U&'d\\0061;t'",
                "SELECT B'1;0', X'1F;'",
            ],
        );
        assert_eq!(c("SELECT 'a'; SET x = 1"), Refused("SET"));
        assert_eq!(c("SELECT 'a''; SET x = 1"), Private);
    }

    #[test]
    fn e_strings() {
        all(
            Shared,
            &[
                "SELECT E'it\\'s; SET x = 1'",
                "SELECT e'a''b;'",
                "SELECT E'\\\\'",
                "SELECT E'\\\\''; SET x = 1'",
            ],
        );
        assert_eq!(c("SELECT E'\\\\'; SET x = 1"), Refused("SET"));
        // Only at the start of a token: `xe'…'` is xe then a plain string.
        assert_eq!(c("SELECT xe'\\'; SET x = 1"), Refused("SET"));
        // `1e'…'`: 1, then an E string (the server refuses it from 15 on).
        assert_eq!(c("SELECT 1e'\\'; SET x = 1'"), Shared);
        assert_eq!(c("SELECT E'abc\\'"), Private);
    }

    #[test]
    fn string_continuation() {
        // E'a' then '\'' across a newline is one E string: a'.
        assert_eq!(c("SELECT E'a'\n'\\''"), Shared);
        assert_eq!(c("SELECT E'a' -- c\n  '\\''"), Shared);
        assert_eq!(c("SELECT E'a'\r\n\t'\\''; SELECT 1"), Shared);
        // Without the newline the second string is a plain one.
        assert_eq!(c("SELECT E'a' '\\''"), Private);
        assert_eq!(c("SELECT E'a'\n' \\' , ' ; SET x = 1; --'"), Refused("SET"));
        // B'…' continues as a bit string: no escapes.
        assert_eq!(c("SELECT B'1'\n'0'"), Shared);
        assert_eq!(c("SELECT B'\\'"), Shared);
        assert_eq!(c("SELECT B'1''0'"), Shared);
    }

    #[test]
    fn standard_conforming_strings_off_too() {
        // With standard_conforming_strings off, 'a\', ' is one string and
        // the SET a statement: both readings count.
        assert_eq!(c("SELECT 'a\\', ' ; SET x = 1; --'"), Refused("SET"));
        assert_eq!(c("SELECT 'C:\\'"), Private);
        assert_eq!(c("SELECT 'C:\\temp\\x'"), Shared);
        assert_eq!(c("SELECT '\\\\'"), Shared);
    }

    #[test]
    fn quoted_identifiers() {
        all(
            Shared,
            &[
                "SELECT \"a;b\" FROM t",
                "SELECT \"a\"\"; SET x = 1\" FROM t",
                "SELECT U&\"a;b\" FROM t",
                "SELECT \"'\" FROM t",
            ],
        );
        assert_eq!(c("\"SELECT\" 1"), Private);
        assert_eq!(c("SELECT \"a; SET x = 1"), Private);
    }

    #[test]
    fn comments() {
        all(
            Shared,
            &[
                "SELECT 1 -- ; SET x = 1",
                "SELECT 1 -- ; SET x = 1\n",
                "SELECT 1 /* ; SET x = 1 */",
                "SELECT 1 /* a /* b */ ; SET x = 1 */",
                "SELECT 1 /**/",
                "SELECT 1 /* */ -- '\n; SELECT 2",
                "SELECT 1 + /* ; */ 2",
                "SELECT 1 +-- ;\n 2",
                "SELECT 1 /* -- */ ; SELECT 2",
                "SELECT 1 -- /*\n; SELECT 2",
            ],
        );
        assert_eq!(c("SELECT 1 -- x\n; SET y = 1"), Refused("SET"));
        assert_eq!(c("SELECT 1 -- x\r; SET y = 1"), Refused("SET"));
        assert_eq!(c("SELECT 1 /* a /* b */ SET x = 1"), Private);
        assert_eq!(c("SELECT 1 /* a */ */ ; SET x = 1"), Refused("SET"));
        assert_eq!(c("SELECT 1 /*/ ; SET x = 1"), Private);
        assert_eq!(c("SELECT 2 - -1"), Shared);
    }

    #[test]
    fn dollar_quotes() {
        all(
            Shared,
            &[
                "SELECT $$;SET x = 1$$",
                "SELECT $$a$ ; $ b$$",
                "SELECT $tag$ $$ ; $tag$",
                "SELECT $_t1$ ; $_t1$",
                "SELECT $a$ x $ab$ ; $a$",
                "SELECT $é$ ; $é$",
                "SELECT $A$ ; $a$ ; $A$",
                "SELECT $$'$$; SELECT 1",
            ],
        );
        assert_eq!(c("SELECT $$a$$; SET x = 1"), Refused("SET"));
        // As in the server, `$b$a$` closes `$a$`: the last `$a$` opens.
        assert_eq!(c("SELECT $a$ x $b$a$ ; $a$"), Private);
        assert_eq!(c("SELECT $$x"), Private);
        assert_eq!(c("SELECT $t$ x $$"), Private);
        // $ in an identifier, and a $ that opens nothing.
        assert_eq!(c("SELECT a$b$ ; SET x = 1 -- $b$"), Refused("SET"));
        assert_eq!(c("SELECT $x ; SET y = 1"), Refused("SET"));
        assert_eq!(c("SELECT $ ; SELECT 1"), Shared);
    }

    #[test]
    fn parameters() {
        all(
            Shared,
            &[
                "SELECT $1",
                "SELECT $1::int, $2 FROM t WHERE a = $3",
                "UPDATE t SET x = $1 WHERE id = $2",
                "SELECT $12$",
            ],
        );
        assert_eq!(c("SELECT $1; SET x = $2"), Refused("SET"));
        assert_eq!(c("SELECT $1$ ; SET x = 1 $1$"), Refused("SET"));
        // After a parameter, `$a$` opens a dollar quote.
        assert_eq!(c("SELECT $1$a$ ; SET x = 1 $a$"), Shared);
    }

    #[test]
    fn several_statements() {
        assert_eq!(c("SELECT 1; SELECT 2"), Shared);
        assert_eq!(c("SELECT 1; SELECT 2;"), Shared);
        assert_eq!(c("SELECT 1;;; ; SELECT 2; ;"), Shared);
        assert_eq!(c("SELECT 1; BEGIN"), Private);
        assert_eq!(c("BEGIN; SELECT 1; COMMIT"), Private);
        assert_eq!(c("SELECT 1; SET x = 1"), Refused("SET"));
        assert_eq!(c("SET x = 1; SELECT 1"), Refused("SET"));
        assert_eq!(c("BEGIN; SET x = 1; COMMIT"), Refused("SET"));
        assert_eq!(c("LISTEN a; SET b = 1"), Refused("LISTEN"));
        assert_eq!(
            c("SELECT 1; COPY t FROM STDIN; LISTEN a"),
            Refused("LISTEN")
        );
        assert_eq!(c("SELECT 1;SET x=1"), Refused("SET"));
    }

    #[test]
    fn set() {
        all(
            Private,
            &[
                "SET LOCAL search_path = x",
                "set local statement_timeout = 0",
                "SET LOCAL \"my.var\" = 1",
                "SET LOCAL TIME ZONE 'UTC'",
                "SET/**/LOCAL x = 1",
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SET TRANSACTION READ ONLY",
                "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
                "SET CONSTRAINTS ALL DEFERRED",
                "SET CONSTRAINTS c1, c2 IMMEDIATE",
            ],
        );
        all(
            Refused("SET"),
            &[
                "SET search_path = x",
                "set search_path = x",
                "SET statement_timeout TO 0",
                "SET TIME ZONE 'UTC'",
                "SET ROLE r",
                "SET SESSION search_path = x",
                "SET SESSION AUTHORIZATION u",
                // The session's default transaction modes.
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                // Variables named local.x, transaction.x, constraints.x.
                "SET local.x = 1",
                "SET transaction.x = 1",
                "SET constraints . x = 1",
                "SET LOCAL",
                "SET",
            ],
        );
    }

    #[test]
    fn refused() {
        assert_eq!(c("RESET ALL"), Refused("RESET"));
        assert_eq!(c("RESET search_path"), Refused("RESET"));
        assert_eq!(c("DISCARD ALL"), Refused("DISCARD"));
        assert_eq!(c("LISTEN c"), Refused("LISTEN"));
        assert_eq!(c("UNLISTEN *"), Refused("UNLISTEN"));
        assert_eq!(c("PREPARE p AS SELECT 1"), Refused("PREPARE"));
        assert_eq!(c("PREPARE p (int) AS SELECT $1"), Refused("PREPARE"));
        assert_eq!(c("PREPARE transaction AS SELECT 1"), Refused("PREPARE"));
        assert_eq!(c("DEALLOCATE p"), Refused("DEALLOCATE"));
        assert_eq!(c("DEALLOCATE ALL"), Refused("DEALLOCATE"));
        assert_eq!(c("LOAD 'auto_explain'"), Refused("LOAD"));
    }

    #[test]
    fn prepare_transaction() {
        all(
            Private,
            &[
                "PREPARE TRANSACTION 'x'",
                "prepare transaction 'x'",
                "PREPARE TRANSACTION E'x'",
                "PREPARE TRANSACTION $$x$$",
                "COMMIT PREPARED 'x'",
                "ROLLBACK PREPARED 'x'",
            ],
        );
    }

    #[test]
    fn declare() {
        let hold = Refused("DECLARE ... WITH HOLD");
        all(
            hold,
            &[
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                "declare c binary no scroll cursor with hold for select 1",
                "DECLARE hold CURSOR WITH /* c */ HOLD FOR SELECT 1",
            ],
        );
        all(
            Private,
            &[
                "DECLARE c CURSOR FOR SELECT 1",
                "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
                "DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold",
                "DECLARE c CURSOR FOR SELECT 'WITH HOLD'",
                "FETCH 10 FROM c",
                "CLOSE c",
            ],
        );
    }

    #[test]
    fn temporary_objects() {
        all(
            Refused(TEMP),
            &[
                "create temp table t(x int)",
                "CREATE TEMPORARY TABLE t (x int)",
                "CREATE GLOBAL TEMPORARY TABLE t (x int)",
                "CREATE LOCAL TEMP TABLE t (x int)",
                "CREATE TEMP TABLE t AS SELECT 1",
                "CREATE TEMP VIEW v AS SELECT 1",
                "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
                "CREATE TEMP SEQUENCE s",
                "CREATE TABLE pg_temp.t (x int)",
                "CREATE TABLE PG_TEMP . t (x int)",
                "CREATE TABLE \"pg_temp\".t (x int)",
                "CREATE TABLE pg_temp_3.t (x int)",
                "CREATE FUNCTION pg_temp.f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
                "SELECT 1; CREATE TEMP TABLE t (x int)",
            ],
        );
        all(
            Private,
            &[
                "CREATE TABLE t (x int)",
                "CREATE UNLOGGED TABLE t (x int)",
                "CREATE TABLE temp (x int)",
                "CREATE TABLE t (pg_temp int)",
                "CREATE TABLE pg_temporary.t (x int)",
                "CREATE TABLE pg_temp_x.t (x int)",
                "CREATE OR REPLACE VIEW v AS SELECT 1",
                "CREATE FUNCTION f() RETURNS int AS 'SELECT * FROM pg_temp.t' LANGUAGE sql",
            ],
        );
    }

    #[test]
    fn select_into() {
        all(
            Shared,
            &[
                "SELECT * INTO t FROM x",
                "SELECT * INTO TABLE t FROM x",
                "SELECT * INTO UNLOGGED t FROM x",
                "SELECT * INTO temp FROM x",
                "SELECT * INTO temp.t FROM x",
                "SELECT * INTO local FROM x",
                "SELECT 1 INTO temp",
                "INSERT INTO temp VALUES (1)",
                "INSERT INTO temp SELECT * FROM x",
                "INSERT /* c */ INTO TEMP VALUES (1)",
                "WITH a AS (SELECT 1) INSERT INTO temp SELECT * FROM a",
                "MERGE INTO temp t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            ],
        );
        all(
            Refused(TEMP),
            &[
                "SELECT * INTO TEMP t FROM x",
                "select * into temporary table t from x",
                "SELECT * INTO LOCAL TEMP t FROM x",
                "SELECT * INTO GLOBAL TEMPORARY t FROM x",
                "SELECT * INTO TEMP \"t\" FROM x",
                "SELECT 1 INTO pg_temp.t",
                "SELECT 1 INTO TABLE pg_temp.t",
                "WITH a AS (SELECT 1) SELECT * INTO TEMPORARY TABLE t FROM a",
                "(SELECT 1 INTO TEMP t)",
                // Before PostgreSQL 15, 1into is 1 INTO.
                "SELECT 1into temp t",
            ],
        );
    }

    #[test]
    fn explain() {
        all(
            Shared,
            &[
                "EXPLAIN SELECT 1",
                "explain analyze select 1",
                "EXPLAIN ANALYZE VERBOSE UPDATE t SET x = 1",
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1",
                "EXPLAIN (ANALYZE true, SETTINGS (x)) DELETE FROM t",
                "EXPLAIN (SELECT 1)",
                "EXPLAIN ((SELECT 1))",
                "EXPLAIN (ANALYZE) (SELECT 1)",
            ],
        );
        all(
            Private,
            &[
                "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
                "EXPLAIN EXECUTE p",
                "EXPLAIN (ANALYZE) DECLARE c CURSOR FOR SELECT 1",
                "EXPLAIN EXPLAIN SELECT 1",
                "EXPLAIN",
                "EXPLAIN (ANALYZE",
            ],
        );
        all(
            Refused(TEMP),
            &[
                "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
                "EXPLAIN (ANALYZE) SELECT * INTO TEMP t FROM x",
            ],
        );
    }

    #[test]
    fn private() {
        all(
            Private,
            &[
                "BEGIN",
                "BEGIN ISOLATION LEVEL SERIALIZABLE",
                "START TRANSACTION",
                "COMMIT",
                "COMMIT AND CHAIN",
                "END",
                "ROLLBACK",
                "ABORT",
                "SAVEPOINT a",
                "RELEASE a",
                "ROLLBACK TO a",
                "COPY t FROM STDIN",
                "COPY t TO STDOUT",
                "COPY (SELECT 1) TO STDOUT",
                "CREATE TABLE t(x int)",
                "ALTER TABLE t ADD COLUMN y int",
                "ALTER ROLE r SET search_path = x",
                "DROP TABLE t",
                "TRUNCATE t",
                "LOCK TABLE t",
                "VACUUM",
                "ANALYZE t",
                "DO $$BEGIN END$$",
                "CALL p()",
                "NOTIFY c, 'x'",
                "EXECUTE p",
                "CHECKPOINT",
                "COMMENT ON TABLE t IS 'x'",
                "(",
                "()",
                ")",
                "1",
                "'x'",
                "$$x$$",
                "+",
            ],
        );
    }

    #[test]
    fn unterminated() {
        all(
            Private,
            &[
                "SELECT 'abc",
                "SELECT 'abc''",
                "SELECT E'abc\\'",
                "SELECT E'abc\\",
                "SELECT \"abc",
                "SELECT 1 /* x",
                "SELECT 1 /* /* */",
                "SELECT $$x",
                "SELECT $t$ x $$",
                "SELECT B'1",
                "SET x = 1; SELECT 'abc",
                "'",
                "/*",
            ],
        );
    }

    #[test]
    fn empty() {
        all(
            Shared,
            &[
                "",
                " \n\t\r\x0b\x0c",
                "-- c",
                "-- c\n",
                "/* c */",
                "/* a /* b */ c */ -- d",
                ";",
                " ; ; ",
                "\0",
                ";\0",
            ],
        );
    }

    #[test]
    fn nul() {
        assert_eq!(c("SELECT 1\0"), Shared);
        assert_eq!(c("SET x = 1\0"), Refused("SET"));
        assert_eq!(c("BEGIN\0"), Private);
        // The server reads up to the first NUL.
        assert_eq!(c("SELECT 1\0; SET x = 1"), Shared);
        assert_eq!(c("SELECT 'a\0'; SET x = 1"), Private);
    }

    #[test]
    fn bytes_that_are_not_utf8() {
        assert_eq!(classify(b"SELECT '\xff\xfe'"), Shared);
        assert_eq!(classify(b"SELECT \xe9t\xe9 FROM t"), Shared);
        assert_eq!(classify(b"SELECT $\xe9$;$\xe9$"), Shared);
        assert_eq!(classify(b"\xff\xff"), Private);
        assert_eq!(classify(b"SET\xc2\xa0x = 1"), Private);
        assert_eq!(classify(b"SELECT 1; \xc3("), Private);
    }

    /// Every prefix of every text above, and every short text over an
    /// alphabet of the lexer's special bytes: no panic, no endless loop.
    #[test]
    fn never_panics() {
        let texts: &[&[u8]] = &[
            b"SELECT E'a\\'b' -- c\n'd' /* e /* f */ */ $t$ g $t$ \"h\"\"i\" $1 B'1'\n'0'; SET x",
            b"EXPLAIN (ANALYZE) CREATE OR REPLACE TEMP VIEW pg_temp.v AS SELECT 1 INTO TEMP t",
            b"DECLARE c CURSOR WITH HOLD FOR SELECT 'a\\', ' ; PREPARE TRANSACTION 'x'",
            b"\xff\x00\xfe$\xe9$'\\",
        ];
        for text in texts {
            for n in 0..=text.len() {
                let _ = classify(text.get(..n).unwrap_or_default());
            }
        }
        let alphabet = b"'\"$\\;-/*()eEbB1 \nxa.";
        let mut buf = [0u8; 4];
        let k = alphabet.len();
        let mut n = 0usize;
        while n < k.pow(4) {
            let mut m = n;
            for slot in &mut buf {
                *slot = alphabet.get(m % k).copied().unwrap_or(b' ');
                m /= k;
            }
            for len in 1..=buf.len() {
                let _ = classify(buf.get(..len).unwrap_or_default());
            }
            n += 1;
        }
    }
}
