//! The WebSocket test harness: a control plane served on a real port and
//! tokio-tungstenite clients (`ws.rs`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use continuity_control::AppState;
use continuity_proxy::config::ServiceConfig;
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::*;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Server {
    pub api: Api,
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    pub async fn start(services: Vec<ServiceConfig>) -> Server {
        let api = Api::start(services, control_config()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(continuity_control::serve(
            listener,
            api.state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            api,
            addr,
            _stop: stop,
        }
    }

    pub fn state(&self) -> &AppState {
        &self.api.state
    }

    pub fn request(
        &self,
        path: &str,
        bearer: Option<&str>,
    ) -> tungstenite::handshake::client::Request {
        let mut req = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .expect("request");
        if let Some(t) = bearer {
            let v = format!("Bearer {t}").parse().expect("header");
            req.headers_mut().insert("authorization", v);
        }
        req
    }

    pub async fn try_connect(
        &self,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<Ws, tungstenite::Error> {
        let (ws, resp) = tokio_tungstenite::connect_async(self.request(path, bearer)).await?;
        assert_eq!(resp.status(), 101);
        Ok(ws)
    }

    pub async fn connect(&self, path: &str) -> Ws {
        self.try_connect(path, Some(VIEWER)).await.expect("upgrade")
    }

    /// A client whose socket barely buffers anything, so that a client
    /// that stops reading blocks the server's sends quickly.
    pub async fn connect_tiny(&self, path: &str) -> WebSocketStream<TcpStream> {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(self.addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(self.request(path, Some(VIEWER)), stream)
            .await
            .expect("upgrade");
        ws
    }

    pub async fn wait_clients(&self, n: usize) {
        let start = Instant::now();
        while self.state().ws.clients() != n {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "never {n} clients"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The next text message as JSON (control frames skipped); checks the
/// envelope.
pub async fn next_json<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("still open")
            .expect("no error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("JSON");
            assert_eq!(
                sorted_keys(&v),
                ["data", "seq", "service", "timestamp", "type"]
            );
            assert!(v["seq"].is_u64(), "{v}");
            let ts = v["timestamp"].as_str().expect("timestamp");
            assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
            return v;
        }
    }
}

pub fn unauthorized(r: Result<Ws, tungstenite::Error>) {
    match r {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert!(resp.headers().get("upgrade").is_none());
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("JSON");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        Err(e) => panic!("expected a 401, got {e}"),
        Ok(_) => panic!("upgraded without a valid token"),
    }
}

/// A real upstream that can be closed: then connects are refused.
pub async fn closable_server() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move { while l.accept().await.is_ok() {} });
    (addr, task)
}

/// Reads until a message of `kind` about `service` arrives, checking that
/// seq increases.
pub async fn until(ws: &mut Ws, kind: &str, service: &str, mut last: u64) -> Value {
    loop {
        let m = next_json(ws).await;
        let seq = m["seq"].as_u64().expect("seq");
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
        if m["type"] == kind && m["service"] == service {
            return m;
        }
    }
}
