//! redis probe: `AUTH` (when a password is set), then `PING` and `ROLE`;
//! plus the admin commands ([`command`]: `INFO replication`, `CLIENT
//! PAUSE`, `WAIT`, ...) and promotion (`REPLICAOF NO ONE`, `REPLICAOF host
//! port`).
//!
//! The client is the `redis` crate's [`MultiplexedConnection`], built on
//! the stream [`super::connect`] opened (our connect timeout), with reads
//! capped at [`MAX_REPLY`]; its driver runs in the probe's task. Replies
//! are handed out as [`Reply`].
//!
//! [`Reply`] and [`MAX_REPLY`] are the codec's (`protocol::resp`): this
//! module parses no RESP itself.

use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, ProtocolVersion, RedisConnectionInfo, RedisError, Value};

use super::stream::{drive, find_io, io_error, Capped};
use super::{BoxFuture, HealthCheck, ObservedRole, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

pub use crate::protocol::resp::{Reply, MAX_REPLY};

fn proto(msg: impl Into<String>) -> ProbeError {
    ProbeError::Protocol(msg.into())
}

/// Maps an error reply: auth problems to [`ProbeError::Auth`], the rest to
/// [`ProbeError::Protocol`].
pub fn error_reply(msg: &str) -> ProbeError {
    let auth = [
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "ERR invalid password",
        "ERR AUTH",
    ];
    if auth.iter().any(|p| msg.starts_with(p)) {
        ProbeError::Auth(msg.to_string())
    } else if msg.starts_with("BUSY") || msg.starts_with("LOADING") {
        ProbeError::Busy(msg.to_string())
    } else {
        ProbeError::Protocol(format!("server replied: {msg}"))
    }
}

/// The connection info the `redis` crate authenticates with (`AUTH
/// [user] password` when a password is set; database 0, RESP2).
fn connection_info(upstream: &UpstreamConfig) -> RedisConnectionInfo {
    RedisConnectionInfo {
        db: 0,
        username: upstream.user.clone(),
        password: upstream.password.clone(),
        protocol: ProtocolVersion::RESP2,
    }
}

/// A `redis` crate error as a probe error: server error replies as
/// [`error_reply`] maps them, failed `AUTH` as [`ProbeError::Auth`], I/O
/// (and the reply cap) as I/O, the rest as protocol errors.
fn client_error(e: RedisError) -> ProbeError {
    if let Some(io) = find_io(&e) {
        return io_error(io);
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => ProbeError::Auth(e.to_string()),
        _ => match e.code() {
            Some(code) => error_reply(&match e.detail() {
                Some(detail) => format!("{code} {detail}"),
                None => code.to_string(),
            }),
            None => proto(e.to_string()),
        },
    }
}

/// A reply from the crate; error replies (top level) become errors.
fn reply(value: Value) -> Result<Reply, ProbeError> {
    match to_reply(value) {
        Reply::Error(msg) => Err(error_reply(&msg)),
        other => Ok(other),
    }
}

/// The crate's value as our [`Reply`] (RESP3-only types, never seen on a
/// RESP2 connection, map to their nearest RESP2 shape).
fn to_reply(value: Value) -> Reply {
    match value {
        Value::Nil => Reply::Nil,
        Value::Int(i) => Reply::Integer(i),
        Value::BulkString(b) => Reply::Bulk(b),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            Reply::Array(items.into_iter().map(to_reply).collect())
        }
        Value::SimpleString(s) => Reply::Simple(s),
        Value::Okay => Reply::Simple("OK".into()),
        Value::Map(pairs) => Reply::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [to_reply(k), to_reply(v)])
                .collect(),
        ),
        Value::Attribute { data, .. } => to_reply(*data),
        Value::Double(d) => Reply::Simple(d.to_string()),
        Value::Boolean(b) => Reply::Integer(i64::from(b)),
        Value::VerbatimString { text, .. } => Reply::Bulk(text.into_bytes()),
        Value::BigNumber(n) => Reply::Simple(n.to_string()),
        Value::ServerError(e) => Reply::Error(match e.details() {
            Some(detail) => format!("{} {detail}", e.code()),
            None => e.code().to_string(),
        }),
    }
}

/// Connects (our connect path, reads capped at [`MAX_REPLY`]), hands the
/// stream to the `redis` crate (which authenticates), and runs `work` on
/// the connection while its driver runs in this task.
async fn with_conn<T, F>(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    work: impl FnOnce(MultiplexedConnection) -> F,
) -> Result<T, ProbeError>
where
    F: std::future::Future<Output = Result<T, ProbeError>>,
{
    let stream = super::connect(service, upstream).await?;
    let stream = Capped::new(stream, MAX_REPLY, "reply too large");
    let (conn, driver) = MultiplexedConnection::new(&connection_info(upstream), stream)
        .await
        .map_err(client_error)?;
    drive(
        work(conn),
        async move {
            driver.await;
            Ok::<(), std::convert::Infallible>(())
        },
        |never| match never {},
        None,
    )
    .await
}

/// Sends one command; error replies become errors.
async fn request(conn: &mut MultiplexedConnection, args: &[&str]) -> Result<Reply, ProbeError> {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    reply(conn.send_packed_command(&cmd).await.map_err(client_error)?)
}

fn expect_ok(reply: &Reply, what: &str) -> Result<(), ProbeError> {
    match reply {
        Reply::Simple(s) if s.starts_with("OK") => Ok(()),
        other => Err(proto(format!("{what}: expected +OK, got {other:?}"))),
    }
}

/// The role named by a `ROLE` reply.
pub fn role_of(reply: &Reply) -> Result<ObservedRole, ProbeError> {
    let name = match reply {
        Reply::Array(items) => items.first().and_then(Reply::as_text),
        _ => None,
    };
    match name.as_deref() {
        Some("master") => Ok(ObservedRole::Primary),
        Some("slave") | Some("replica") => Ok(ObservedRole::Replica),
        Some("sentinel") => Err(proto("upstream is a sentinel, not a data node")),
        Some(other) => Err(proto(format!("unknown ROLE {other:?}"))),
        None => Err(proto(format!("unexpected ROLE reply {reply:?}"))),
    }
}

pub struct RedisCheck;

impl HealthCheck for RedisCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            // PING, then ROLE: two round trips, as the probe has always
            // made them (latency alerts and predictions are calibrated on
            // it). A server that answers one error and closes (maxclients)
            // is judged by that error.
            with_conn(service, upstream, |mut conn| async move {
                match request(&mut conn, &["PING"]).await {
                    Ok(Reply::Simple(s)) if s == "PONG" => {}
                    // Alive, as Sentinel counts it: a script is running or
                    // the dataset is loading. Good, but slow; the role is
                    // the one seen last.
                    Err(ProbeError::Busy(m)) => {
                        return Ok(Probed::degraded(format!("{m} (busy: counted as alive)")))
                    }
                    Ok(other) => return Err(proto(format!("PING: expected +PONG, got {other:?}"))),
                    Err(e) => return Err(e),
                }
                let role = request(&mut conn, &["ROLE"]).await?;
                Ok(Probed::role(role_of(&role)?))
            })
            .await
        })
    }
}

/// Connects, authenticates and runs one command. Error replies become
/// errors (auth ones [`ProbeError::Auth`]). The caller bounds the call.
pub async fn command(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    args: &[&str],
) -> Result<Reply, ProbeError> {
    with_conn(service, upstream, |mut conn| async move {
        request(&mut conn, args).await
    })
    .await
}

/// `REPLICAOF NO ONE`: makes `upstream` a primary.
pub async fn promote(service: &ServiceConfig, upstream: &UpstreamConfig) -> Result<(), ProbeError> {
    let reply = command(service, upstream, &["REPLICAOF", "NO", "ONE"]).await?;
    expect_ok(&reply, "REPLICAOF NO ONE")
}

/// `REPLICAOF host port`: makes `upstream` a replica of `host:port`.
pub async fn replicate_from(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
    host: &str,
    port: u16,
) -> Result<(), ProbeError> {
    let port = port.to_string();
    let reply = command(service, upstream, &["REPLICAOF", host, &port]).await?;
    expect_ok(&reply, "REPLICAOF")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    /// ROLE replies as the codec (`protocol::resp`, whose tests parse the
    /// wire forms) hands them over.
    #[test]
    fn judges_role_replies() {
        let replica = Reply::Array(vec![bulk("127.0.0.1"), bulk("9001"), bulk("3129242")]);
        let m = Reply::Array(vec![
            bulk("master"),
            Reply::Integer(3129659),
            Reply::Array(vec![replica]),
        ]);
        assert_eq!(role_of(&m).unwrap(), ObservedRole::Primary);
        let s = Reply::Array(vec![
            bulk("slave"),
            bulk("127.0.0.1"),
            Reply::Integer(9000),
            bulk("connected"),
            Reply::Integer(3167038),
        ]);
        assert_eq!(role_of(&s).unwrap(), ObservedRole::Replica);
        let sentinel = Reply::Array(vec![bulk("sentinel"), Reply::Array(vec![])]);
        assert!(matches!(role_of(&sentinel), Err(ProbeError::Protocol(_))));
        assert!(role_of(&Reply::Integer(1)).is_err());
    }

    #[test]
    fn maps_errors() {
        for auth in [
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair or user is disabled.",
            "ERR invalid password",
        ] {
            assert!(matches!(error_reply(auth), ProbeError::Auth(_)), "{auth}");
        }
        assert!(matches!(
            error_reply("ERR unknown command"),
            ProbeError::Protocol(_)
        ));
        assert!(matches!(
            error_reply("LOADING Redis is loading the dataset in memory"),
            ProbeError::Busy(_)
        ));
        assert!(matches!(
            error_reply("BUSY Redis is busy running a script."),
            ProbeError::Busy(_)
        ));
    }

    /// A one-connection fake redis: for each answer, reads a little and
    /// writes it; then closes.
    async fn fake_seq(answers: Vec<Vec<u8>>) -> (ServiceConfig, UpstreamConfig) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 256];
                for answer in answers {
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&answer).await;
                }
            }
        });
        let up = UpstreamConfig::at("u", &addr, crate::config::Role::Primary);
        let svc = ServiceConfig::new("s", crate::config::Kind::Redis, vec![up.clone()]);
        (svc, up)
    }

    async fn fake(answer: Vec<u8>) -> (ServiceConfig, UpstreamConfig) {
        fake_seq(vec![answer]).await
    }

    #[tokio::test]
    async fn probe_judges_ping_then_role_and_caps_replies() {
        let role = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n".to_vec();
        let (svc, up) = fake_seq(vec![b"+PONG\r\n".to_vec(), role]).await;
        let probed = RedisCheck.check(&svc, &up).await.unwrap();
        assert_eq!(probed.role, Some(ObservedRole::Primary));

        let (svc, up) = fake(b"-ERR max number of clients reached\r\n".to_vec()).await;
        let err = RedisCheck.check(&svc, &up).await.unwrap_err();
        assert!(
            matches!(&err, ProbeError::Protocol(m) if m == "server replied: ERR max number of clients reached"),
            "{err:?}"
        );
        let (svc, up) = fake(b"-NOAUTH Authentication required.\r\n".to_vec()).await;
        let err = RedisCheck.check(&svc, &up).await.unwrap_err();
        assert!(matches!(err, ProbeError::Auth(_)), "{err:?}");

        let mut huge = format!("${}\r\n", MAX_REPLY + 10).into_bytes();
        huge.resize(huge.len() + MAX_REPLY + 12, b'x');
        let (svc, up) = fake(huge).await;
        let err = command(&svc, &up, &["GET", "k"]).await.unwrap_err();
        assert!(
            matches!(&err, ProbeError::Protocol(m) if m == "reply too large"),
            "{err:?}"
        );

        let (svc, up) = fake(b"+PONG\r\n".to_vec()).await;
        let err = RedisCheck.check(&svc, &up).await.unwrap_err();
        assert_eq!(
            err.failure_kind(),
            crate::health::FailureKind::Refused,
            "{err:?}"
        );
    }
}
