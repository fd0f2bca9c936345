//! postgres probe: a minimal PostgreSQL v3 frontend (startup, cleartext /
//! MD5 / SCRAM-SHA-256 authentication, simple query) running
//! `SELECT pg_is_in_recovery()`; plus promotion with `SELECT pg_promote()`.
//!
//! Every backend message length is bounded ([`MAX_MESSAGE`]) and malformed
//! bytes become [`ProbeError::Protocol`], never a panic.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{BoxFuture, HealthCheck, ObservedRole, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

/// Largest backend message accepted (length field included).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest total size of a query result kept in memory.
pub const MAX_RESULT: usize = 16 * 1024 * 1024;
/// Most PBKDF2 iterations a server may ask for (PostgreSQL uses 4096).
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;
const PROTOCOL_V3: i32 = 196_608;

fn proto(msg: impl Into<String>) -> ProbeError {
    ProbeError::Protocol(msg.into())
}

fn unexpected(tag: u8, phase: &str) -> ProbeError {
    proto(format!("unexpected message {:?} {phase}", tag as char))
}

fn utf8(b: &[u8]) -> Result<&str, ProbeError> {
    std::str::from_utf8(b).map_err(|_| proto("SCRAM: non-UTF-8 message"))
}

/// Reads fields out of a message body without ever panicking.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProbeError> {
        if n > self.data.len() {
            return Err(proto("truncated backend message"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, ProbeError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| proto("short int32"))?;
        Ok(i32::from_be_bytes(b))
    }

    fn i16(&mut self) -> Result<i16, ProbeError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| proto("short int16"))?;
        Ok(i16::from_be_bytes(b))
    }

    fn cstr(&mut self) -> Result<&'a [u8], ProbeError> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| proto("unterminated string in backend message"))?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Fields of an ErrorResponse / NoticeResponse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Parses an ErrorResponse body.
pub fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut out = ServerError::default();
    let mut c = Cursor::new(body);
    while let Ok(kind) = c.take(1) {
        let Some(&kind) = kind.first() else { break };
        if kind == 0 {
            break;
        }
        let Ok(value) = c.cstr() else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'S' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
    out
}

/// Class 28 (invalid authorization) is an auth failure; anything else is
/// reported as a protocol error with its SQLSTATE.
fn server_error(body: &[u8]) -> ProbeError {
    let e = parse_error_fields(body);
    if e.code.starts_with("28") {
        ProbeError::Auth(format!("{} (SQLSTATE {})", e.message, e.code))
    } else {
        ProbeError::Protocol(format!("{} (SQLSTATE {})", e.message, e.code))
    }
}

/// `md5` + md5hex(md5hex(password + user) + salt), as PasswordMessage wants.
pub fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    let inner = hex::encode(Md5::new_with_prefix(password).chain_update(user).finalize());
    let outer = hex::encode(Md5::new_with_prefix(inner).chain_update(salt).finalize());
    format!("md5{outer}")
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Result<[u8; 32], ProbeError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| proto("bad HMAC key"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

/// SCRAM-SHA-256 client (RFC 5802 / RFC 7677), without channel binding.
/// The nonce is passed in so tests can use the RFC vectors.
pub struct ScramClient {
    password: Vec<u8>,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// `user` goes into `n=`; PostgreSQL ignores it and libpq sends "".
    pub fn new(user: &str, password: &str, nonce: &str) -> ScramClient {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            password: password.as_bytes().to_vec(),
            nonce: nonce.to_string(),
            client_first_bare: format!("n={user},r={nonce}"),
            server_signature: None,
        }
    }

    /// A client with a fresh random nonce.
    pub fn with_random_nonce(user: &str, password: &str) -> ScramClient {
        let bytes: [u8; 18] = rand::random();
        ScramClient::new(user, password, &B64.encode(bytes))
    }

    /// The client-first-message (`n,,` GS2 header + bare part).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ProbeError> {
        let (mut nonce, mut salt, mut iters) = (None, None, None);
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iters = Some(v);
            } else if attr.starts_with("m=") {
                return Err(proto("SCRAM: unsupported mandatory extension"));
            }
        }
        let (Some(nonce), Some(salt), Some(iters)) = (nonce, salt, iters) else {
            return Err(proto("SCRAM: malformed server-first-message"));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(proto(
                "SCRAM: server nonce does not extend the client nonce",
            ));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| proto("SCRAM: salt is not base64"))?;
        let iters: u32 = iters
            .parse()
            .map_err(|_| proto("SCRAM: bad iteration count"))?;
        if iters == 0 || iters > MAX_SCRAM_ITERATIONS {
            return Err(proto(format!(
                "SCRAM: iteration count {iters} out of range"
            )));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&self.password, &salt, iters, &mut salted);
        let client_key = hmac(&salted, b"Client Key")?;
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_sig = hmac(&stored_key, auth_message.as_bytes())?;
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_sig.iter()) {
            *p ^= s;
        }
        let server_key = hmac(&salted, b"Server Key")?;
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes())?);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message's `v=` signature.
    pub fn verify_final(&self, server_final: &str) -> Result<(), ProbeError> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(ProbeError::Auth(format!("SCRAM: server error {e}")));
        }
        let Some(v) = server_final.split(',').find_map(|a| a.strip_prefix("v=")) else {
            return Err(proto("SCRAM: malformed server-final-message"));
        };
        let got = B64
            .decode(v)
            .map_err(|_| proto("SCRAM: server signature is not base64"))?;
        match &self.server_signature {
            Some(expected) if expected.as_slice() == got.as_slice() => Ok(()),
            _ => Err(ProbeError::Auth("SCRAM: server signature mismatch".into())),
        }
    }
}

/// One frontend message: tag, then length-prefixed body.
fn message(tag: u8, body: &[u8]) -> Result<Vec<u8>, ProbeError> {
    let len = i32::try_from(body.len().saturating_add(4)).map_err(|_| proto("message too long"))?;
    let mut out = Vec::with_capacity(body.len().saturating_add(5));
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn cstring(out: &mut Vec<u8>, s: &str) -> Result<(), ProbeError> {
    if s.as_bytes().contains(&0) {
        return Err(proto("string contains a NUL byte"));
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

/// The StartupMessage for `user` / `database`.
pub fn startup_message(user: &str, database: &str) -> Result<Vec<u8>, ProbeError> {
    let mut body = PROTOCOL_V3.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", user),
        ("database", database),
        ("application_name", "continuity-probe"),
    ] {
        cstring(&mut body, k)?;
        cstring(&mut body, v)?;
    }
    body.push(0);
    let len = i32::try_from(body.len().saturating_add(4)).map_err(|_| proto("startup too long"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Rows of text columns (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Parses a DataRow body.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProbeError> {
    let mut c = Cursor::new(body);
    let n = c.i16()?;
    let n = usize::try_from(n).map_err(|_| proto("negative column count"))?;
    let mut row = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = c.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let len = usize::try_from(len).map_err(|_| proto("bad column length"))?;
            row.push(Some(String::from_utf8_lossy(c.take(len)?).into_owned()));
        }
    }
    Ok(row)
}

struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        self.io.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// Reads one backend message: (tag, body).
    async fn recv(&mut self) -> Result<(u8, Vec<u8>), ProbeError> {
        let tag = self.io.read_u8().await?;
        let len = self.io.read_i32().await?;
        let len = usize::try_from(len).map_err(|_| proto("negative message length"))?;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(proto(format!("backend message length {len} out of range")));
        }
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.io.read_exact(&mut body).await?;
        Ok((tag, body))
    }

    async fn send_password(&mut self, password: &str) -> Result<(), ProbeError> {
        let mut body = Vec::new();
        cstring(&mut body, password)?;
        self.send(&message(b'p', &body)?).await
    }

    /// Expects an Authentication message with `code`; returns its payload.
    async fn expect_auth(&mut self, code: i32) -> Result<Vec<u8>, ProbeError> {
        let (tag, body) = self.recv().await?;
        match tag {
            b'E' => Err(server_error(&body)),
            b'R' => {
                let mut c = Cursor::new(&body);
                let got = c.i32()?;
                if got != code {
                    return Err(proto(format!("expected authentication {code}, got {got}")));
                }
                Ok(c.rest().to_vec())
            }
            other => Err(unexpected(other, "during SASL")),
        }
    }

    async fn sasl(&mut self, mechanisms: &[u8], password: &str) -> Result<(), ProbeError> {
        let mut c = Cursor::new(mechanisms);
        let mut offered = Vec::new();
        while let Ok(m) = c.cstr() {
            if m.is_empty() {
                break;
            }
            offered.push(String::from_utf8_lossy(m).into_owned());
        }
        if !offered.iter().any(|m| m == "SCRAM-SHA-256") {
            return Err(ProbeError::Auth(format!(
                "unsupported SASL mechanisms {offered:?}"
            )));
        }
        let mut scram = ScramClient::with_random_nonce("", password);
        let first = scram.client_first();
        let mut body = Vec::new();
        cstring(&mut body, "SCRAM-SHA-256")?;
        let first_len = i32::try_from(first.len()).map_err(|_| proto("SCRAM message too long"))?;
        body.extend_from_slice(&first_len.to_be_bytes());
        body.extend_from_slice(first.as_bytes());
        self.send(&message(b'p', &body)?).await?;
        let server_first = self.expect_auth(11).await?;
        let last = scram.client_final(utf8(&server_first)?)?;
        self.send(&message(b'p', last.as_bytes())?).await?;
        scram.verify_final(utf8(&self.expect_auth(12).await?)?)
    }

    /// Startup and authentication, until ReadyForQuery.
    async fn startup(&mut self, upstream: &UpstreamConfig) -> Result<(), ProbeError> {
        let user = upstream.user.as_deref().unwrap_or("postgres");
        let database = upstream.database.as_deref().unwrap_or(user);
        self.send(&startup_message(user, database)?).await?;
        let password = || {
            upstream.password.as_deref().ok_or_else(|| {
                ProbeError::Auth("password required but password_env not set".into())
            })
        };
        loop {
            let (tag, body) = self.recv().await?;
            match tag {
                b'R' => {
                    let mut c = Cursor::new(&body);
                    match c.i32()? {
                        0 => break,
                        3 => self.send_password(password()?).await?,
                        5 => {
                            let salt = c.take(4)?;
                            let hashed = md5_password(user, password()?, salt);
                            self.send_password(&hashed).await?;
                        }
                        10 => self.sasl(c.rest(), password()?).await?,
                        other => {
                            return Err(ProbeError::Auth(format!(
                                "unsupported authentication method {other}"
                            )))
                        }
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'N' | b'v' => {}
                other => return Err(unexpected(other, "during auth")),
            }
        }
        loop {
            let (tag, body) = self.recv().await?;
            match tag {
                b'Z' => return Ok(()),
                b'S' | b'K' | b'N' => {}
                b'E' => return Err(server_error(&body)),
                other => return Err(unexpected(other, "after auth")),
            }
        }
    }

    /// Runs a simple query; returns the rows of every statement in order.
    async fn query(&mut self, sql: &str) -> Result<Rows, ProbeError> {
        let mut body = Vec::new();
        cstring(&mut body, sql)?;
        self.send(&message(b'Q', &body)?).await?;
        let mut rows = Vec::new();
        let mut size = 0usize;
        let mut error = None;
        loop {
            let (tag, body) = self.recv().await?;
            match tag {
                b'D' => {
                    size = size.saturating_add(body.len());
                    if size > MAX_RESULT {
                        return Err(proto("query result too large"));
                    }
                    rows.push(parse_data_row(&body)?);
                }
                b'E' => error = Some(server_error(&body)),
                b'Z' => break,
                b'T' | b'C' | b'I' | b'N' | b'S' | b'A' => {}
                other => return Err(unexpected(other, "in query")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}

/// Connects, authenticates, runs `f`, then sends Terminate (best effort).
async fn with_conn<T>(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    sql: &[&str],
    f: impl FnOnce(Vec<Rows>) -> Result<T, ProbeError>,
) -> Result<T, ProbeError> {
    let stream = super::connect(service, upstream).await?;
    let mut conn = Conn {
        io: BufReader::new(stream),
    };
    let result = async {
        conn.startup(upstream).await?;
        let mut all = Vec::with_capacity(sql.len());
        for q in sql {
            all.push(conn.query(q).await?);
        }
        Ok::<_, ProbeError>(all)
    }
    .await;
    if let Ok(terminate) = message(b'X', &[]) {
        let _ = conn.send(&terminate).await;
        let _ = conn.io.get_mut().shutdown().await;
    }
    f(result?)
}

/// Connects, authenticates and runs `sql` as a simple query: the rows of
/// text columns. The caller bounds the call.
pub async fn simple_query(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    sql: &str,
) -> Result<Rows, ProbeError> {
    with_conn(service, upstream, &[sql], |mut all| {
        Ok(all.pop().unwrap_or_default())
    })
    .await
}

/// The single boolean of a one-row, one-column result.
fn single_bool(rows: &Rows, what: &str) -> Result<bool, ProbeError> {
    let cell = rows.first().and_then(|r| r.first()).cloned().flatten();
    match cell.as_deref() {
        Some("t") => Ok(true),
        Some("f") => Ok(false),
        other => Err(proto(format!("{what}: unexpected result {other:?}"))),
    }
}

pub struct PostgresCheck;

impl HealthCheck for PostgresCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            let rows = simple_query(service, upstream, "SELECT pg_is_in_recovery()").await?;
            Ok(Probed::role(
                if single_bool(&rows, "pg_is_in_recovery()")? {
                    ObservedRole::Replica
                } else {
                    ObservedRole::Primary
                },
            ))
        })
    }
}

/// `SELECT pg_promote()` (server waits up to 60 s). An upstream already out
/// of recovery is left alone and counts as promoted.
pub async fn promote(service: &ServiceConfig, upstream: &UpstreamConfig) -> Result<(), ProbeError> {
    let rows = simple_query(service, upstream, "SELECT pg_is_in_recovery()").await?;
    if !single_bool(&rows, "pg_is_in_recovery()")? {
        return Ok(());
    }
    let rows = simple_query(service, upstream, "SELECT pg_promote()").await?;
    if single_bool(&rows, "pg_promote()")? {
        Ok(())
    } else {
        Err(proto(
            "pg_promote() returned false (promotion not finished in time)",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scram_rfc7677_vector() {
        let mut c = ScramClient::new("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            c.client_final(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(matches!(
            c.verify_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ProbeError::Auth(_))
        ));
        assert!(matches!(
            c.verify_final("e=invalid-proof"),
            Err(ProbeError::Auth(_))
        ));
    }

    #[test]
    fn scram_rejects_bad_server_first() {
        for bad in [
            "r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=!!!,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            "",
        ] {
            let mut c = ScramClient::new("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
            assert!(c.client_final(bad).is_err(), "{bad}");
        }
        let c = ScramClient::new("user", "pencil", "n");
        assert!(c
            .verify_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
    }

    #[test]
    fn md5_known_value() {
        // python3: "md5" + md5(md5(b"secret"+b"postgres").hexdigest().encode() + b"\x01\x02\x03\x04").hexdigest()
        assert_eq!(
            md5_password("postgres", "secret", &[1, 2, 3, 4]),
            "md5bb41a296aab6baccb36ff243a562abff"
        );
    }

    #[test]
    fn codec_helpers() {
        let s = startup_message("u", "d").unwrap();
        assert_eq!(s.get(..4).unwrap(), &(s.len() as i32).to_be_bytes());
        assert_eq!(s.get(4..8).unwrap(), &196_608i32.to_be_bytes());
        assert!(s.ends_with(b"continuity-probe\0\0"));
        assert!(startup_message("a\0b", "d").is_err());

        let row = [0u8, 2, 0, 0, 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&row).unwrap(), vec![Some("t".into()), None]);
        assert!(parse_data_row(&[0, 1, 0, 0, 0, 9, b'x']).is_err());
        assert!(parse_data_row(&[0xff, 0xff]).is_err());
        assert!(parse_data_row(&[]).is_err());

        let e = parse_error_fields(b"SFATAL\0C28P01\0Mpassword authentication failed\0\0");
        assert_eq!(e.code, "28P01");
        assert!(matches!(
            server_error(b"SFATAL\0C28P01\0Mbad\0\0"),
            ProbeError::Auth(_)
        ));
        assert!(matches!(
            server_error(b"SERROR\0C55000\0Mrecovery is not in progress\0\0"),
            ProbeError::Protocol(m) if m.contains("55000")
        ));
        // Truncated / garbage error bodies never panic.
        let _ = parse_error_fields(b"SFAT");
        let _ = parse_error_fields(&[0xff; 7]);
    }
}
