//! The threads proxied connections are served on: one single-threaded
//! tokio runtime per core, each with its own epoll. An accept loop (on the
//! engine's runtime) deals each new connection to the thread serving the
//! fewest. A connection then lives on one thread: no task moves between
//! threads, and no thread wakes another for it, which is how HAProxy's
//! `nbthread` works. On the shared work-stealing runtime the HTTP path had
//! a p99 10-40 % above HAProxy's (BENCHMARKS.md).
//!
//! Three users: each HTTP gateway service starts its own set (its
//! thread-local upstream pool relies on that, gateway/h1/pool.rs); the
//! engine starts one set for all L4 services (listener/), which live as
//! long as the engine; and the engine runs its periodic health probes on
//! one more thread, `probe-0` ([`Workers::run`], engine/probe.rs). The
//! control plane, the audit and what a probe result triggers (state,
//! switches) stay on the engine's runtime.
//!
//! After the stop signal, a thread lives on while it still serves a
//! connection (the drain), for `grace` at most, then ends.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections served on this thread now.
    live: Arc<AtomicUsize>,
}

impl Workers {
    /// `n` threads named `{name}-{i}`.
    pub fn start(
        name: &str,
        n: usize,
        stop: &watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<Workers, String> {
        let mut workers = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let live = Arc::new(AtomicUsize::new(0));
            let (count, mut stop) = (live.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async move {
                        // A dropped sender is a stop too.
                        let _ = stop.wait_for(|s| *s).await;
                        let until = Instant::now() + grace;
                        while count.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    });
                })
                .map_err(|e| format!("{name} thread: {e}"))?;
            let handle = rx
                .recv()
                .map_err(|_| format!("{name} thread ended at start"))?
                .map_err(|e| format!("{name} runtime: {e}"))?;
            workers.push(Worker { handle, live });
        }
        Ok(Workers { workers })
    }

    /// Runs one connection's task on the thread serving the fewest
    /// connections now (HAProxy's listener does the same): with 64 clients
    /// connecting at once, threads that each accepted for themselves ended
    /// up with 62 % and 38 % of them, and the busier one set the p99.
    /// `make` builds the future on that thread (a socket registers with the
    /// reactor of the runtime it is made on).
    pub fn spawn<F>(&self, make: impl FnOnce() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.live.load(Ordering::SeqCst))
        {
            w.spawn(make);
        }
    }
}

impl Worker {
    /// `make()`'s future on this thread, counted in its `live` meanwhile.
    fn spawn<F>(&self, make: impl FnOnce() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let live = Live::new(&self.live);
        self.handle.spawn(async move {
            let _live = live;
            make().await;
        });
    }
}

impl Workers {
    /// Runs one connection's task on thread `slot` (modulo their number):
    /// every client of a multiplexed Redis service goes to the same
    /// thread, so that they share one upstream connection (listener/mux).
    pub fn spawn_at<F>(&self, slot: usize, make: impl FnOnce() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(w) = self.workers.get(slot % self.workers.len().max(1)) {
            w.spawn(make);
        }
    }

    /// Runs `make()`'s future to its end on the thread serving the fewest
    /// tasks and hands back its output; `None` if that thread's runtime is
    /// gone (the engine is stopping). The future is built and polled on
    /// that thread, so the sockets it opens register with its reactor.
    ///
    /// Why probes use it: on the engine's work-stealing runtime, a client
    /// crate whose connection driver wakes its own task (the `redis`
    /// crate's multiplexer, hyper's connection) makes the scheduler wake a
    /// parked sibling thread for nothing: per redis probe, about three
    /// more `eventfd` writes and two more futex calls than the
    /// hand-written client made, and a higher probe latency
    /// (BENCHMARKS.md, issue #15). A current-thread runtime has no sibling
    /// to wake.
    pub async fn run<F, T>(&self, make: impl FnOnce() -> F + Send + 'static) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.live.load(Ordering::SeqCst))?;
        let live = Live::new(&w.live);
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.handle.spawn(async move {
            let _live = live;
            let _ = tx.send(make().await);
        });
        rx.await.ok()
    }
}

/// One connection served on a worker: counted in its thread's `live` while
/// this lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(live: &Arc<AtomicUsize>) -> Live {
        live.fetch_add(1, Ordering::SeqCst);
        Live(live.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
