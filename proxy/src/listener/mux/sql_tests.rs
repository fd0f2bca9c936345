//! sql.rs: how query texts are classified (Shared, Private, Refused).

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
