//! tuma's apalis backend: a lane's worker claims due deliveries from the
//! `deliveries` table itself (`Db::claim_due_rows`), so apalis's `WorkerBuilder`,
//! `Monitor`, concurrency, graceful shutdown and tower layers run over the
//! one source of truth, with no second table to keep in step.
//!
//! A worker claims only as many deliveries as it has free slots, so a claim
//! never waits in a buffer while its lease runs. It claims again at once
//! while claims come back full; otherwise it sleeps until the first of: a
//! wake-up (this process's commits, or on Postgres any process's `NOTIFY`,
//! see `worker.rs`), the next delivery of the lane coming due (a retry, a
//! scheduled send: `Db::next_due`), or `worker.poll_interval` (for what
//! another SQLite process wrote, and claims whose lease ran out). A wake-up
//! that comes while a claim runs is kept, and claims once more after it, so
//! nothing committed during a claim waits for the poll.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tower::layer::util::Identity;
use tracing::warn;

use crate::app::App;
use crate::config::Config;
use crate::queue::{DeliveryJob, Lane};
use crate::store::{ClaimedDelivery, StoreError};

/// How long a claim holds its delivery: the handler's own time limit (the
/// longest send, see `worker.rs`) and a margin. A live worker settles every
/// delivery it claimed before its lease runs out; a dead one's are taken
/// over by whoever finds them after it.
pub fn lease(config: &Config) -> Duration {
    config.longest_send() + Duration::from_secs(10)
}

/// Deliveries a worker is handling now: counted when the backend hands one
/// out, uncounted when the handler drops [`InFlight::ends_on_drop`]'s guard.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

/// One delivery in a worker's hands; dropped when its handler ends.
#[derive(Debug)]
pub struct Handling(Arc<AtomicUsize>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InFlight {
    /// The guard a handler holds while it runs; its drop ends the count of
    /// the delivery the backend handed out.
    pub fn ends_on_drop(&self) -> Handling {
        Handling(self.0.clone())
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The result of one claim.
struct Claimed {
    jobs: Vec<ClaimedDelivery>,
    /// How many were asked for: a full claim is followed by another.
    asked: usize,
    /// When the lane's next delivery not yet due comes due (asked only after
    /// a claim that was not full).
    next_due: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

enum State {
    /// Claim at the next poll.
    Claim,
    Claiming(BoxFuture<'static, Result<Claimed, StoreError>>),
    /// Asleep until a wake-up or the timer.
    Waiting(std::pin::Pin<Box<tokio::time::Sleep>>),
    /// Giving back what was claimed and not started.
    Closing(BoxFuture<'static, ()>),
    Closed,
}

/// One lane's worker's source of tasks (see the module docs).
pub struct LaneBackend {
    app: Arc<App>,
    lane: Lane,
    owner: Arc<str>,
    concurrency: usize,
    in_flight: InFlight,
    wakeups: mpsc::Receiver<()>,
    claimed: VecDeque<ClaimedDelivery>,
    state: State,
    /// Claims failed in a row (the database is away): the pause grows.
    failures: u32,
}

impl std::fmt::Debug for LaneBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneBackend")
            .field("lane", &self.lane)
            .field("owner", &self.owner)
            .field("claimed", &self.claimed.len())
            .finish_non_exhaustive()
    }
}

impl LaneBackend {
    /// A backend for one worker of `lane`, named `owner` (the name leases
    /// carry), running `concurrency` deliveries at a time, counted by
    /// `in_flight` (whose guard the handler must hold).
    pub fn new(
        app: Arc<App>,
        lane: Lane,
        owner: &str,
        concurrency: usize,
        in_flight: InFlight,
    ) -> LaneBackend {
        let wakeups = app.wakers.subscribe(lane);
        LaneBackend {
            app,
            lane,
            owner: owner.into(),
            concurrency: concurrency.max(1),
            in_flight,
            wakeups,
            claimed: VecDeque::new(),
            state: State::Claim,
            failures: 0,
        }
    }

    fn claim(&self) -> BoxFuture<'static, Result<Claimed, StoreError>> {
        let app = self.app.clone();
        let lane = self.lane;
        let owner = self.owner.clone();
        let asked = self
            .concurrency
            .saturating_sub(self.in_flight.count())
            .max(1);
        async move {
            let now = app.clock.now();
            let until = now
                + chrono::Duration::from_std(lease(&app.config)).unwrap_or(chrono::Duration::MAX);
            let jobs = app
                .db
                .claim_due_rows(lane, &owner, now, until, asked)
                .await?;
            let next_due = if jobs.len() < asked {
                app.db.next_due(lane, now).await?
            } else {
                None
            };
            Ok(Claimed {
                jobs,
                asked,
                next_due,
                now,
            })
        }
        .boxed()
    }

    /// The pause before the next claim after one that was not full.
    fn pause(&self, claimed: &Claimed) -> Duration {
        let poll = self.app.config.worker.poll_interval;
        let until_due = claimed
            .next_due
            .map(|at| (at - claimed.now).to_std().unwrap_or_default());
        until_due
            .map_or(poll, |d| d.min(poll))
            .max(Duration::from_millis(1))
    }
}

impl Backend for LaneBackend {
    type Task = Task<ClaimedDelivery>;
    type Error = StoreError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), StoreError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<ClaimedDelivery>, StoreError>>> {
        loop {
            if let Some(job) = self.claimed.pop_front() {
                // Counted here; the handler's guard ends the count.
                self.in_flight.0.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(Some(Ok(Task::new(job))));
            }
            match &mut self.state {
                State::Claim => self.state = State::Claiming(self.claim()),
                State::Claiming(claim) => match claim.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(claimed)) => {
                        self.failures = 0;
                        self.state = if claimed.jobs.len() >= claimed.asked {
                            State::Claim
                        } else {
                            State::Waiting(Box::pin(tokio::time::sleep(self.pause(&claimed))))
                        };
                        self.claimed.extend(claimed.jobs);
                    }
                    Poll::Ready(Err(e)) => {
                        self.failures = self.failures.saturating_add(1);
                        let pause = Duration::from_millis(100)
                            .saturating_mul(1 << self.failures.min(6))
                            .min(Duration::from_secs(5));
                        warn!(lane = self.lane.queue_name(), error = %e, "claiming deliveries failed; will try again");
                        self.state = State::Waiting(Box::pin(tokio::time::sleep(pause)));
                    }
                },
                State::Waiting(sleep) => {
                    if self.failures == 0
                        && let Poll::Ready(Some(())) = self.wakeups.poll_recv(cx)
                    {
                        self.state = State::Claim;
                        continue;
                    }
                    match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => self.state = State::Claim,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Closing(_) | State::Closed => return Poll::Ready(None),
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), StoreError>> {
        loop {
            match &mut self.state {
                State::Claiming(claim) => match claim.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(claimed)) => {
                        self.claimed.extend(claimed.jobs);
                        self.state = State::Claim;
                    }
                    Poll::Ready(Err(_)) => self.state = State::Claim,
                },
                State::Claim | State::Waiting(_) => {
                    // Claimed and never started: due again at once for any worker.
                    let jobs: Vec<DeliveryJob> = self.claimed.drain(..).map(|c| c.job).collect();
                    let db = self.app.db.clone();
                    let lane = self.lane;
                    self.state = State::Closing(
                        async move {
                            if jobs.is_empty() {
                                return;
                            }
                            if let Err(e) = db.release_claims(&jobs).await {
                                warn!(lane = lane.queue_name(), error = %e, "giving back claims failed; their leases will run out");
                            }
                        }
                        .boxed(),
                    );
                }
                State::Closing(release) => match release.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => self.state = State::Closed,
                },
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl BackendConfig for LaneBackend {
    type Args = ClaimedDelivery;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}
