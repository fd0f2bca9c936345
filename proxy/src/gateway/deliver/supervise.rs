//! The supervisor of a service's delivery loop: a loop that dies (a
//! panic) is logged at ERROR and started again after a pause, and the
//! entry it held goes back to `queued`, or is given up at its
//! [`MAX_DEATHS_PER_ENTRY`]th death so that it cannot stop the rest.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gateway::queue::QueueStore;
use crate::upstream::runtime::lock;

/// Pause before restarting a delivery loop that died: doubling from this...
const RESTART_MIN: Duration = Duration::from_millis(500);
/// ...up to this.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// An entry in hand at this many deaths of the loop is given up.
const MAX_DEATHS_PER_ENTRY: u32 = 3;

/// The queue id a delivery loop has in hand, for its supervisor.
#[derive(Clone, Default)]
pub(crate) struct Holding(Arc<Mutex<Option<String>>>);

impl Holding {
    pub(crate) fn set(&self, id: Option<&str>) {
        *lock(&self.0) = id.map(str::to_string);
    }

    fn take(&self) -> Option<String> {
        lock(&self.0).take()
    }
}

/// Aborts the task when dropped (the supervisor itself aborted).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make(holding)` as a task; when it ends normally, returns. When it
/// panics: logs it, puts the entry it held back to `queued` (or `failed`
/// at its [`MAX_DEATHS_PER_ENTRY`]th death), waits (500 ms doubling to
/// 30 s, or until `stop`), and starts it again.
pub(crate) async fn supervise<F, Fut>(
    service: &str,
    queue: &QueueStore,
    mut stop: watch::Receiver<bool>,
    mut make: F,
) where
    F: FnMut(Holding) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut deaths: u32 = 0;
    let mut by_entry: HashMap<String, u32> = HashMap::new();
    loop {
        let holding = Holding::default();
        let mut task = AbortOnDrop(tokio::spawn(make(holding.clone())));
        let died = match (&mut task.0).await {
            Ok(()) => return,
            Err(e) if e.is_cancelled() => return,
            Err(e) => panic_text(e),
        };
        deaths = deaths.saturating_add(1);
        let held = holding.take();
        tracing::error!(
            service,
            held = held.as_deref().unwrap_or("-"),
            restarts = deaths,
            panic = %died,
            "queue delivery task died; restarting it"
        );
        if let Some(id) = held {
            let n = by_entry.entry(id.clone()).or_insert(0);
            *n += 1;
            let give_up = *n >= MAX_DEATHS_PER_ENTRY;
            let q = queue.clone();
            let why = format!("delivery task died: {died}");
            let marked = tokio::task::spawn_blocking(move || {
                if give_up {
                    q.mark_failed(
                        &id,
                        &format!("{why} ({MAX_DEATHS_PER_ENTRY} times; given up)"),
                    )
                } else {
                    q.mark_retry(&id, &why)
                }
            })
            .await;
            if let Ok(Err(e)) = marked {
                tracing::warn!(service, error = %e, "could not put the held queue entry back");
            }
        }
        let pause = RESTART_MIN
            .saturating_mul(1u32 << deaths.min(6))
            .min(RESTART_MAX);
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::gateway::queue::{DeliveryResult, NewRequest, QueueState};

    fn new_request() -> NewRequest {
        NewRequest {
            service: "ndex".to_string(),
            method: "POST".to_string(),
            path: "/submissions/1".to_string(),
            headers: vec![],
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn a_delivery_task_that_panics_is_restarted_and_its_entry_goes_back_to_queued() {
        let tmp = tempfile::tempdir().unwrap();
        let queue = QueueStore::open(tmp.path()).unwrap();
        let entry = queue.enqueue(new_request(), 10).unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Mutex::new(None));
        let (_stop_tx, stop) = watch::channel(false);
        let (q, r, s, id) = (queue.clone(), runs.clone(), seen.clone(), entry.id.clone());
        let supervised = supervise("ndex", &queue, stop, move |holding| {
            let (q, r, s, id) = (q.clone(), r.clone(), s.clone(), id.clone());
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Hold the entry mid-attempt, then die.
                    q.mark_attempt(&id).unwrap();
                    holding.set(Some(&id));
                    panic!("injected: Instant + Retry-After overflow");
                }
                // The restarted loop finds the entry queued again.
                *lock(&s) = q.get(&id).map(|e| (e.state, e.last_error));
            }
        });
        tokio::time::timeout(Duration::from_secs(30), supervised)
            .await
            .expect("the supervisor returns once the restarted loop ends");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted once");
        let (state, error) = lock(&seen).clone().expect("restarted loop ran");
        assert_eq!(state, QueueState::Queued);
        assert!(
            error.as_deref().unwrap_or_default().contains("injected"),
            "{error:?}"
        );
        // Still pending, and durable: a reopen sees it queued.
        drop(queue);
        let queue = QueueStore::open(tmp.path()).unwrap();
        assert_eq!(queue.get(&entry.id).unwrap().state, QueueState::Queued);
        assert_eq!(queue.depth("ndex"), 1);
    }

    #[tokio::test]
    async fn an_entry_in_hand_at_three_deaths_is_given_up_so_the_rest_can_go() {
        let tmp = tempfile::tempdir().unwrap();
        let queue = QueueStore::open(tmp.path()).unwrap();
        let bad = queue.enqueue(new_request(), 10).unwrap();
        let good = queue.enqueue(new_request(), 10).unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let (_stop_tx, stop) = watch::channel(false);
        let (q, r) = (queue.clone(), runs.clone());
        let supervised = supervise("ndex", &queue, stop, move |holding| {
            let (q, r) = (q.clone(), r.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                let Some(next) = q.next_pending("ndex") else {
                    return;
                };
                holding.set(Some(&next.id));
                if next.path.is_empty() || next.seq == 0 {
                    panic!("this entry always kills the loop");
                }
                q.mark_attempt(&next.id).unwrap();
                q.mark_delivered(
                    &next.id,
                    DeliveryResult {
                        status: 200,
                        headers: vec![],
                        body: vec![],
                        upstream: "a".into(),
                    },
                )
                .unwrap();
                holding.set(None);
            }
        });
        tokio::time::timeout(Duration::from_secs(60), supervised)
            .await
            .expect("supervisor ends");
        let bad = queue.get(&bad.id).unwrap();
        assert_eq!(bad.state, QueueState::Failed);
        assert!(bad.last_error.unwrap().contains("given up"));
        assert_eq!(queue.get(&good.id).unwrap().state, QueueState::Delivered);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }
}
