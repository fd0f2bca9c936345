//! Where the engine's log lines go: stderr, through a writer thread that
//! takes them in batches.
//!
//! The HTTP gateway writes one access-log line per request. Handing each
//! line to a writer thread that sleeps until it arrives (tracing-appender's
//! non-blocking writer) costs a thread wake-up and a `write` per request:
//! about a tenth of the gateway's CPU at 50k requests/s (BENCHMARKS.md).
//! Here, lines are appended to a shared buffer under a short lock, and the
//! writer thread wakes every [`FLUSH_EVERY`], or at once when the buffer
//! passes [`FLUSH_AT`] or a warning or an error is logged.
//!
//! Nothing is dropped: past [`MAX_PENDING`] bytes waiting (stderr stalled),
//! loggers wait for the writer. [`Guard`] writes what is left when dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// Lines wait at most this long before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written without waiting for the tick.
const FLUSH_AT: usize = 64 * 1024;
/// Loggers wait past this many bytes not yet written.
const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// A warning or an error is waiting, or the buffer is full: write now.
    urgent: bool,
    closed: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the writer thread.
    wake: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line`; `false` when the writer thread is gone (the caller
    /// writes it itself).
    fn append(&self, line: &[u8], urgent: bool) -> bool {
        let mut st = self.lock();
        while st.pending.len() >= MAX_PENDING && !st.closed {
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.closed {
            return false;
        }
        st.pending.extend_from_slice(line);
        // Wake the writer once per batch: `notify_one` is a futex syscall
        // even with nobody waiting, and while the writer is busy writing a
        // large batch every line would pay it. A writer that is not waiting
        // sees `urgent` before it next waits.
        if (urgent || st.pending.len() >= FLUSH_AT) && !st.urgent {
            st.urgent = true;
            self.wake.notify_one();
        }
        true
    }
}

/// Hands out writers to the fmt layer (one per event).
#[derive(Clone)]
pub struct BatchWriter {
    inner: Arc<Inner>,
}

/// Writes what is left and stops the writer thread when dropped.
pub struct Guard {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        {
            let mut st = self.inner.lock();
            st.closed = true;
            self.inner.wake.notify_one();
            self.inner.room.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A writer to `out` and the guard that flushes it.
pub fn batch_writer<W: Write + Send + 'static>(mut out: W) -> (BatchWriter, Guard) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        room: Condvar::new(),
    });
    let shared = inner.clone();
    let thread = std::thread::Builder::new()
        .name("continuity-log".into())
        .spawn(move || {
            let mut batch = Vec::new();
            loop {
                let closed = {
                    let mut st = shared.lock();
                    if !st.urgent && !st.closed {
                        st = shared
                            .wake
                            .wait_timeout(st, FLUSH_EVERY)
                            .map_or_else(|e| e.into_inner().0, |(g, _)| g);
                    }
                    std::mem::swap(&mut batch, &mut st.pending);
                    st.urgent = false;
                    shared.room.notify_all();
                    st.closed
                };
                if !batch.is_empty() {
                    // stderr gone: nothing better to do than to go on.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    batch.clear();
                    if batch.capacity() > 4 * FLUSH_AT {
                        batch.shrink_to(FLUSH_AT);
                    }
                }
                if closed && shared.lock().pending.is_empty() {
                    return;
                }
            }
        });
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            // No thread: lines would wait forever; say so and fail open.
            eprintln!("continuity: cannot start the log writer thread: {e}");
            None
        }
    };
    let direct = thread.is_none();
    let writer = BatchWriter {
        inner: inner.clone(),
    };
    if direct {
        let mut st = inner.lock();
        st.closed = true;
    }
    (writer, Guard { inner, thread })
}

impl continuity_proxy::AccessSink for BatchWriter {
    fn write_line(&self, line: &[u8]) {
        if !self.inner.append(line, false) {
            let _ = std::io::stderr().write_all(line);
        }
    }
}

/// One event's writer: the fmt layer writes its line, which is appended
/// when the writer is dropped (one lock per line).
pub struct LineWriter<'a> {
    inner: &'a Inner,
    line: Vec<u8>,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if !self.inner.append(&self.line, self.urgent) {
            // After shutdown (or with no writer thread): straight out.
            let _ = std::io::stderr().write_all(&self.line);
        }
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            inner: &self.inner,
            line: Vec::new(),
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            inner: &self.inner,
            line: Vec::with_capacity(256),
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &BatchWriter, text: &str) {
        let mut lw = w.make_writer();
        lw.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (w, guard) = batch_writer(sink.clone());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        line(&w, &format!("t{t} line {i}\n"));
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 20_000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..5000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines out of order or lost");
        }
    }

    #[test]
    fn lines_are_written_within_the_tick_without_a_flush() {
        let sink = Sink::default();
        let (w, _guard) = batch_writer(sink.clone());
        line(&w, "one\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&sink.0.lock().unwrap()[..], b"one\n");
    }
}
