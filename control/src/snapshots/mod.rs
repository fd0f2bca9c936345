//! Health snapshots, uptime and SLA (issue #4, SPEC 4 and 10; design in
//! `docs/uptime.md`).
//!
//! A sampler reads `Engine::snapshot()` every tick and accumulates, per
//! service, the minute in progress: checks and failures (deltas of the
//! engine's counters), probe latency samples of the active upstream,
//! seconds per status, and the down seconds split into client-visible and
//! absorbed. Closed minutes roll into hours; minutes are kept for the
//! minute retention (24 h), hours for the hour retention (62 days, so the
//! current and the previous month's SLA are always complete). Closed
//! minutes are appended to `buckets.jsonl` under the snapshots directory;
//! a restart loads it back.

mod bucket;
mod clock;
mod history;
mod report;
mod routes;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use continuity_proxy::config::Category;
use continuity_proxy::events::{Event, EventKind};
use continuity_proxy::snapshot::EngineSnapshot;
use continuity_proxy::Engine;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::task::JoinHandle;

pub use bucket::{Bucket, BucketStatus};
pub use clock::{Clock, ManualClock, SystemClock};
pub use report::{BucketView, Month, ServiceWindow, SlaEntry, SlaReport, Window, WindowReport};
pub use routes::routes;

use bucket::{floor_to, HOUR};
use history::{Policy, ServiceHistory};
use store::Line;

/// `buffer_timeout_ms` assumed for a service nobody told us about (SPEC 2 default).
pub const DEFAULT_BUFFER_TIMEOUT: Duration = Duration::from_millis(5000);
/// Sampler period unless [`Snapshots::with_tick`] says otherwise.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// How long buckets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Minute buckets (the 1h and 24h windows); at least 24 h.
    pub minutes: Duration,
    /// Hour buckets (the 30d window and the monthly SLA).
    pub hours: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            minutes: Duration::from_secs(24 * 3600),
            hours: Duration::from_secs(62 * 24 * 3600),
        }
    }
}

impl Retention {
    /// From `[health] snapshot_retention_hours`: minute buckets for that
    /// long, but never less than the 24h window needs.
    pub fn from_hours(snapshot_retention_hours: u32) -> Retention {
        Retention {
            minutes: Duration::from_secs(u64::from(snapshot_retention_hours.max(24)) * 3600),
            ..Retention::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SnapshotError {
    fn io(path: &Path, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The snapshot store (cheap to clone; every clone is the same store).
/// `Default` is in memory, without persistence.
#[derive(Clone, Default)]
pub struct Snapshots {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// The file; its lock also orders persistence jobs.
    file: Mutex<Option<PathBuf>>,
}

struct State {
    services: Vec<(String, ServiceHistory)>,
    /// Closed buckets not yet appended.
    pending: Vec<Line>,
    compacted_cut: Option<i64>,
    force_rewrite: bool,
    tick: Duration,
    retention: Retention,
    buffer: HashMap<String, Duration>,
    clock: Arc<dyn Clock>,
}

impl Default for State {
    fn default() -> State {
        State {
            services: Vec::new(),
            pending: Vec::new(),
            compacted_cut: None,
            force_rewrite: false,
            tick: DEFAULT_TICK,
            retention: Retention::default(),
            buffer: HashMap::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl State {
    fn history(&mut self, name: &str) -> &mut ServiceHistory {
        let i = match self.services.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.services
                    .push((name.to_string(), ServiceHistory::default()));
                self.services.len() - 1
            }
        };
        &mut self.services[i].1
    }

    fn queue(&mut self, name: &str, closed: Vec<(i64, Bucket)>) {
        let cat = self.history(name).category.map(|c| c.as_str());
        let lines: Vec<Line> = closed
            .iter()
            .map(|(start, b)| Line::new(name, cat, history::Res::Minute, *start, b))
            .collect();
        self.pending.extend(lines);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_f64(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

enum Job {
    Append(Vec<Line>),
    Rewrite(Vec<Line>),
}

impl Snapshots {
    /// Opens (creating) `dir` and loads `buckets.jsonl`. Unreadable lines
    /// are skipped and logged; the first write rewrites the file clean.
    pub fn open(dir: &Path, retention: Retention) -> Result<Snapshots, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|e| SnapshotError::io(dir, e))?;
        let path = dir.join(store::FILE);
        let (lines, bad) = store::read(&path)?;
        let mut st = State {
            retention,
            force_rewrite: true,
            ..State::default()
        };
        let n = lines.len();
        for l in lines {
            let (Some(res), start) = (l.res(), l.start.timestamp()) else {
                continue;
            };
            let h = st.history(&l.service);
            if let Some(c) = l.category.as_deref().and_then(Category::parse) {
                h.category = Some(c);
            }
            h.load(res, start, &l.bucket);
        }
        for (_, h) in &mut st.services {
            h.finish_load();
        }
        if bad > 0 {
            tracing::warn!(file = %path.display(), skipped = bad, loaded = n, "snapshot history had unreadable lines");
        }
        Ok(Snapshots {
            inner: Arc::new(Inner {
                state: Mutex::new(st),
                file: Mutex::new(Some(path)),
            }),
        })
    }

    /// Replaces the clock (tests: a [`ManualClock`]).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Snapshots {
        lock(&self.inner.state).clock = clock;
        self
    }

    /// The sampler period (default 1 s).
    pub fn with_tick(self, tick: Duration) -> Snapshots {
        lock(&self.inner.state).tick = tick.max(Duration::from_millis(10));
        self
    }

    /// Each service's `buffer_timeout_ms`, which bounds how much of an
    /// outage the proxy can absorb. Unlisted services get 5000 ms.
    pub fn with_buffer_timeouts<I>(self, timeouts: I) -> Snapshots
    where
        I: IntoIterator<Item = (String, Duration)>,
    {
        lock(&self.inner.state).buffer.extend(timeouts);
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        lock(&self.inner.state).clock.now()
    }

    /// One sampler step at the clock's now.
    pub fn observe(&self, snap: &EngineSnapshot) {
        let mut st = lock(&self.inner.state);
        let t = unix_f64(st.clock.now());
        let max_gap = (st.tick.as_secs_f64() * 3.0).max(5.0);
        for s in &snap.services {
            let policy = Policy {
                proxied: s.listen.is_some(),
                buffer_seconds: st
                    .buffer
                    .get(&s.name)
                    .copied()
                    .unwrap_or(DEFAULT_BUFFER_TIMEOUT)
                    .as_secs_f64(),
                max_gap_seconds: max_gap,
            };
            let mut closed = Vec::new();
            st.history(&s.name).observe(t, s, &policy, &mut closed);
            st.queue(&s.name, closed);
        }
    }

    /// Takes what the sampler needs from an engine event: hold timeouts
    /// and status changes.
    pub fn note_event(&self, ev: &Event) {
        let Some(service) = ev.service.as_deref() else {
            return;
        };
        let mut st = lock(&self.inner.state);
        match &ev.kind {
            EventKind::HoldTimedOut { .. } => st.history(service).note_hold_timeout(),
            EventKind::ServiceStatusChanged { new, .. } => {
                st.history(service).note_status((*new).into())
            }
            _ => {}
        }
    }

    /// Samples `engine` every tick until aborted; closed minutes are
    /// written as they close. Abort it, then [`Snapshots::flush`], at shutdown.
    pub fn spawn_sampler(&self, engine: Engine) -> JoinHandle<()> {
        let me = self.clone();
        let mut events = engine.subscribe();
        let period = lock(&self.inner.state).tick;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                loop {
                    match events.try_recv() {
                        Ok(ev) => me.note_event(&ev),
                        Err(TryRecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "snapshot sampler lagged behind engine events"
                            )
                        }
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                me.observe(&engine.snapshot());
                if !lock(&me.inner.state).pending.is_empty() {
                    if let Err(e) = me.persist().await {
                        tracing::error!(error = %e, "cannot write snapshot history");
                    }
                }
            }
        })
    }

    /// Writes everything, the minute in progress included (it goes on
    /// accumulating afterwards).
    pub async fn flush(&self) -> Result<(), SnapshotError> {
        {
            let mut st = lock(&self.inner.state);
            let names: Vec<String> = st.services.iter().map(|(n, _)| n.clone()).collect();
            for name in names {
                let mut closed = Vec::new();
                st.history(&name).split(&mut closed);
                st.queue(&name, closed);
            }
        }
        self.persist().await
    }

    async fn persist(&self) -> Result<(), SnapshotError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || persist_blocking(&inner))
            .await
            .unwrap_or(Ok(()))
    }

    /// The `/api/ops/health/snapshots` answer; `live` orders the services
    /// and names those not sampled yet.
    pub fn window(&self, window: Window, live: &EngineSnapshot) -> WindowReport {
        let st = lock(&self.inner.state);
        report::window(&st.services, st.clock.now(), window, live)
    }

    /// The `/api/ops/sla` answer for `month`.
    pub fn sla(&self, month: Month, live: &EngineSnapshot) -> SlaReport {
        let st = lock(&self.inner.state);
        report::sla(&st.services, st.clock.now(), month, live)
    }
}

/// Prunes, then appends the pending lines, or rewrites the whole file when
/// the minute cut moved (once an hour) or after a failed write.
fn persist_blocking(inner: &Inner) -> Result<(), SnapshotError> {
    let file = lock(&inner.file);
    let job = {
        let mut st = lock(&inner.state);
        let now = st.clock.now().timestamp();
        let r = st.retention;
        let minute_cut = floor_to(now - r.minutes.as_secs() as i64, HOUR);
        let hour_cut = floor_to(now - r.hours.as_secs() as i64, HOUR);
        for (_, h) in &mut st.services {
            h.prune(minute_cut, hour_cut);
        }
        if file.is_none() {
            st.pending.clear();
            return Ok(());
        }
        if st.force_rewrite || st.compacted_cut != Some(minute_cut) {
            st.force_rewrite = false;
            st.compacted_cut = Some(minute_cut);
            st.pending.clear();
            let mut lines = Vec::new();
            for (name, h) in &st.services {
                let cat = h.category.map(|c| c.as_str());
                for (res, start, b) in h.lines() {
                    lines.push(Line::new(name, cat, res, start, b));
                }
            }
            Job::Rewrite(lines)
        } else {
            Job::Append(std::mem::take(&mut st.pending))
        }
    };
    let Some(path) = file.as_deref() else {
        return Ok(());
    };
    let result = match &job {
        Job::Append(lines) => store::append(path, lines),
        Job::Rewrite(lines) => store::rewrite(path, lines),
    };
    if result.is_err() {
        // Memory is the truth: the next write rewrites the whole file.
        lock(&inner.state).force_rewrite = true;
    }
    result
}

#[cfg(test)]
mod tests;
