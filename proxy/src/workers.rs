//! The threads proxied connections are served on: one single-threaded
//! tokio runtime per core, each with its own epoll. An accept loop (on the
//! engine's runtime) deals each new connection to the thread serving the
//! fewest. A connection then lives on one thread: no task moves between
//! threads, and no thread wakes another for it, which is how HAProxy's
//! `nbthread` works. On the shared work-stealing runtime the HTTP path had
//! a p99 10-40 % above HAProxy's (BENCHMARKS.md).
//!
//! Two users: each HTTP gateway service starts its own set (its
//! thread-local upstream pool relies on that, gateway/h1/pool.rs), and the
//! engine starts one set for all L4 services (listener/), which live as
//! long as the engine. Probes, the control plane and the audit stay on
//! the engine's runtime.
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
        let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.live.load(Ordering::SeqCst))
        else {
            return;
        };
        let live = Live::new(&w.live);
        w.handle.spawn(async move {
            let _live = live;
            make().await;
        });
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
