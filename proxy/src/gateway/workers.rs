//! The threads the lean HTTP/1.1 path serves its connections on: one
//! single-threaded tokio runtime per core, each with its own epoll and its
//! own accept loop on the service's listening socket (the kernel hands a new
//! connection to whichever thread accepts first). A connection then lives on
//! one thread: no task moves between threads, and no thread wakes another
//! for it, which is how HAProxy's `nbthread` works. On the shared work-stealing runtime the same
//! path had a p99 10-40 % above HAProxy's (BENCHMARKS.md).
//!
//! After the service's stop, a thread lives on while it still serves a
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
    /// `n` threads named after `service`.
    pub fn start(
        service: &str,
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
                .name(format!("gw-{service}-{i}"))
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
                .map_err(|e| format!("gateway thread: {e}"))?;
            let handle = rx
                .recv()
                .map_err(|_| "gateway thread ended at start".to_string())?
                .map_err(|e| format!("gateway runtime: {e}"))?;
            workers.push(Worker { handle, live });
        }
        Ok(Workers { workers })
    }

    /// Runs `make(live)` on every thread: the future is built there (a
    /// socket registers with the reactor of the runtime it is made on).
    /// `live` counts the connections that thread serves (see [`Live`]).
    pub fn on_each<F>(&self, make: impl Fn(usize, Arc<AtomicUsize>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        for (i, w) in self.workers.iter().enumerate() {
            w.handle.spawn(make(i, w.live.clone()));
        }
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }
}

/// One connection served on a worker: counted in its thread's `live` while
/// this lives.
pub struct Live(Arc<AtomicUsize>);

impl Live {
    pub fn new(live: &Arc<AtomicUsize>) -> Live {
        live.fetch_add(1, Ordering::SeqCst);
        Live(live.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
