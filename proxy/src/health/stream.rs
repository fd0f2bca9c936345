//! What the probes put around the client crates (`redis`, `tokio-postgres`,
//! hyper): a read cap on the stream we hand them ([`Capped`]), the error
//! mapping of that cap, and [`drive`], which runs a crate's connection
//! future in the probe's own task instead of a spawned one (so a probe that
//! times out leaves nothing behind, and no cross-task wake-up is added).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ProbeError;

/// The marker inside the `io::Error` a [`Capped`] stream returns once more
/// than its limit was read; [`io_error`] turns it into a protocol error.
#[derive(Debug)]
pub struct Oversize(pub String);

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Oversize {}

/// A stream that fails reads once more than `limit` bytes came in (the
/// bound the hand-written clients had on what a peer may make us buffer).
/// Reads are sized so that at most `limit + 1` bytes are ever read.
/// With `eof_on_unexpected_eof`, an `UnexpectedEof` read error (rustls: the
/// peer closed without `close_notify`) is taken as the end of the stream.
pub struct Capped<S> {
    inner: S,
    left: usize,
    message: &'static str,
    eof_on_unexpected_eof: bool,
}

impl<S> Capped<S> {
    /// Caps reads of `inner` at `limit` bytes; over it, reads fail with
    /// [`Oversize`]`(message)`.
    pub fn new(inner: S, limit: usize, message: &'static str) -> Capped<S> {
        Capped {
            inner,
            left: limit,
            message,
            eof_on_unexpected_eof: false,
        }
    }

    /// Takes an `UnexpectedEof` read error as the end of the stream.
    pub fn eof_on_unexpected_eof(mut self) -> Capped<S> {
        self.eof_on_unexpected_eof = true;
        self
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let room = buf.remaining().min(this.left.saturating_add(1));
        let dst = buf.initialize_unfilled_to(room);
        let mut sub = ReadBuf::new(dst);
        match Pin::new(&mut this.inner).poll_read(cx, &mut sub) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e))
                if this.eof_on_unexpected_eof && e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                return Poll::Ready(Ok(()));
            }
            other => return other,
        }
        let n = sub.filled().len();
        if n > this.left {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Oversize(this.message.to_string()),
            )));
        }
        this.left -= n;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The `io::Error` somewhere in `e`'s source chain (the crates wrap ours).
pub fn find_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// A copy of an `io::Error` (kind and text), for errors only borrowed
/// from a crate's error.
pub fn copy_io(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// An I/O error from a [`Capped`] stream: the cap becomes a protocol error
/// with its message, anything else stays I/O (classified by `classify_io`).
pub fn io_error(e: &io::Error) -> ProbeError {
    match e.get_ref().and_then(|i| i.downcast_ref::<Oversize>()) {
        Some(o) => ProbeError::Protocol(o.0.clone()),
        None => ProbeError::Io(copy_io(e)),
    }
}

/// Runs `work` while polling `conn`, the crate's connection future, in
/// this task. When `conn` ends first it is dropped (failing what `work`
/// still waits for) and `work` is awaited: its result wins, unless it
/// failed and `conn` had an error, which is then the better reason. When
/// `work` ends first and `linger` is set, `conn` gets that long to finish
/// (postgres: send Terminate once the client is dropped).
pub async fn drive<T, E>(
    work: impl Future<Output = Result<T, ProbeError>>,
    conn: impl Future<Output = Result<(), E>>,
    conn_error: impl FnOnce(E) -> ProbeError,
    linger: Option<Duration>,
) -> Result<T, ProbeError> {
    let mut work = std::pin::pin!(work);
    let mut conn = Box::pin(conn);
    let ended = tokio::select! {
        biased;
        r = &mut work => Ok(r),
        c = &mut conn => Err(c),
    };
    match ended {
        Ok(r) => {
            if let Some(limit) = linger {
                let _ = tokio::time::timeout(limit, conn).await;
            }
            r
        }
        Err(c) => {
            drop(conn);
            let r = work.await;
            match (r, c) {
                (Err(_), Err(e)) => Err(conn_error(e)),
                (r, _) => r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_up_to_the_limit_and_fails_past_it() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = tx.write_all(&[b'x'; 10]).await;
        });
        let mut capped = Capped::new(rx, 10, "too big");
        let mut all = Vec::new();
        capped.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 10);

        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = tx.write_all(&[b'x'; 11]).await;
        });
        let mut capped = Capped::new(rx, 10, "too big");
        let err = capped.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert!(matches!(io_error(&err), ProbeError::Protocol(m) if m == "too big"));
        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(
            matches!(io_error(&plain), ProbeError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn drive_prefers_the_work_result() {
        let ok = drive(
            async { Ok::<_, ProbeError>(1) },
            std::future::pending::<Result<(), ()>>(),
            |_| ProbeError::Timeout,
            None,
        )
        .await;
        assert_eq!(ok.unwrap(), 1);
        let conn_failed = drive(
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Err::<(), _>(ProbeError::Protocol("closed".into()))
            },
            async { Err::<(), _>("reset") },
            |e| ProbeError::Protocol(e.to_string()),
            None,
        )
        .await;
        assert!(matches!(conn_failed, Err(ProbeError::Protocol(m)) if m == "reset"));
    }
}
