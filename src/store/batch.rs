//! Group commit for the statements every delivery and every API request runs.
//!
//! Every worker slot opens an attempt and closes it (the claim already read
//! the delivery; a job handed over without its row reads it first): two
//! statements per delivery, each a round trip and a commit. Every `POST`
//! looks up its API key and records its delivery (a transaction of half a
//! dozen statements). Under load many callers wait to run the same
//! statement at the same moment, so each kind of statement has one task
//! that takes everything waiting and runs it as one batch
//! ([`Db::deliveries_to_send`], [`Db::begin_attempts`],
//! [`Db::finish_attempts`], [`Db::live_api_keys`],
//! [`Db::insert_deliveries_guarded`], and, for sends with a budget, the
//! spend guard's [`Db::reserve_budgets`] and [`Db::close_reservations`],
//! which take the budget's counter row once per batch rather than once per
//! send): a few round trips and one commit for the lot. The dispatcher's
//! statements take as many statements however many calls a batch holds
//! (SQLite reads the rows from one JSON array with `json_each`). Nothing
//! waits on purpose: a lone call runs at once, and calls that come while a
//! batch is running make up the next one.
//!
//! A batch is all or none. When one fails, each of its calls is run again on
//! its own, so one bad row fails only its own caller. A call whose caller has
//! stopped waiting (a request past its timeout, a worker shutting down) is
//! not run, and a batch whose callers all stopped waiting is abandoned (its
//! transaction rolls back), as the callers' own statements would have been;
//! except the closing of an attempt, which records a send that happened and
//! runs whoever waits.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{
    ApiKeyRow, AttemptEnd, AttemptResult, AttemptStart, Db, Delivery, InsertGuards, Inserted,
    NewDelivery, NextStep, ReserveCall, Reserved, SettleCall, StoreError,
};
use crate::domain::budget::Crossing;
use crate::queue::{DeliveryJob, Lane};

/// The most calls one batch carries.
const MAX_BATCH: usize = 64;

/// A statement that can run for many calls at once.
trait Statement: 'static {
    type Call: Send + Sync + 'static;
    type Answer: Send + 'static;
    /// Whether a call runs even when its caller has stopped waiting.
    const RUNS_UNWATCHED: bool = false;
    /// What a batch holds once: calls with the same key go in separate
    /// batches, in their order (`None`: calls never clash).
    fn key(call: &Self::Call) -> Option<String>;
    /// Runs the calls as one batch, all or none; answers in their order.
    fn run<'a>(
        db: &'a Db,
        calls: &'a [Self::Call],
    ) -> BoxFuture<'a, Result<Vec<Self::Answer>, StoreError>>;
}

struct Reads;
struct Starts;
struct Ends;
struct Keys;
struct Inserts;
struct Reserves;
struct Settles;

impl Statement for Reads {
    type Call = String;
    type Answer = Option<(Delivery, Option<String>)>;
    fn key(call: &String) -> Option<String> {
        Some(call.clone())
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Self::Answer>, StoreError>> {
        Box::pin(db.deliveries_to_send(calls))
    }
}

impl Statement for Starts {
    type Call = AttemptStart;
    type Answer = Option<i64>;
    fn key(call: &AttemptStart) -> Option<String> {
        Some(call.delivery_id.clone())
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [AttemptStart],
    ) -> BoxFuture<'a, Result<Vec<Option<i64>>, StoreError>> {
        Box::pin(db.begin_attempts(calls))
    }
}

impl Statement for Ends {
    type Call = AttemptEnd;
    type Answer = bool;
    const RUNS_UNWATCHED: bool = true;
    fn key(call: &AttemptEnd) -> Option<String> {
        Some(call.delivery_id.clone())
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [AttemptEnd],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(db.finish_attempts(calls))
    }
}

impl Statement for Keys {
    type Call = String;
    type Answer = Option<ApiKeyRow>;
    fn key(_: &String) -> Option<String> {
        None
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Self::Answer>, StoreError>> {
        Box::pin(db.live_api_keys(calls))
    }
}

impl Statement for Inserts {
    type Call = (NewDelivery, InsertGuards);
    type Answer = Inserted;
    fn key((_, guards): &Self::Call) -> Option<String> {
        guards
            .idempotency
            .as_ref()
            .map(|c| format!("{}/{}", c.api_key_id, c.key))
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [Self::Call],
    ) -> BoxFuture<'a, Result<Vec<Inserted>, StoreError>> {
        Box::pin(async move {
            let items: Vec<_> = calls.iter().map(|(d, g)| (d, g)).collect();
            db.insert_deliveries_guarded(&items).await
        })
    }
}

impl Statement for Reserves {
    type Call = ReserveCall;
    type Answer = Reserved;
    fn key(call: &ReserveCall) -> Option<String> {
        Some(call.delivery_id.clone())
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [ReserveCall],
    ) -> BoxFuture<'a, Result<Vec<Reserved>, StoreError>> {
        Box::pin(db.reserve_budgets(calls))
    }
}

impl Statement for Settles {
    type Call = SettleCall;
    type Answer = Vec<Crossing>;
    // A send that happened is counted even if its worker stopped waiting.
    const RUNS_UNWATCHED: bool = true;
    fn key(call: &SettleCall) -> Option<String> {
        Some(call.delivery_id.clone())
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [SettleCall],
    ) -> BoxFuture<'a, Result<Vec<Vec<Crossing>>, StoreError>> {
        Box::pin(db.close_reservations(calls))
    }
}

type Reply<S> = oneshot::Sender<Result<<S as Statement>::Answer, StoreError>>;
type Waiting<S> = (<S as Statement>::Call, Reply<S>);
/// A batch's calls and, in the same order, where their answers go.
type Batch<S> = (Vec<<S as Statement>::Call>, Vec<Reply<S>>);

/// The queue in front of one statement's task.
struct Line<S: Statement> {
    /// Where calls go to the task; `None` when it was never started (built
    /// outside a runtime): then every call runs on its own.
    sender: Option<mpsc::UnboundedSender<Waiting<S>>>,
}

impl<S: Statement> Line<S> {
    /// Starts the line's task on `tasks`; a bulk line's batches (`yields`)
    /// start when no OTP is in flight. The task ends once `stop` turns true
    /// and what was queued by then has run, or once the line is dropped.
    fn start(
        db: &Db,
        yields: Option<Arc<Gate>>,
        stop: &watch::Receiver<bool>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Line { sender: None };
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(runtime.spawn(serve::<S>(db.clone(), rx, yields, stop.clone())));
        Line { sender: Some(tx) }
    }

    async fn call(&self, db: &Db, call: S::Call) -> Result<S::Answer, StoreError> {
        let Some(sender) = &self.sender else {
            return run_alone::<S>(db, &call).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((call, _))) = sender.send((call, reply)) {
            // The task has stopped: nothing of this call ran.
            return run_alone::<S>(db, &call).await;
        }
        answer.await.unwrap_or(Err(StoreError::BatchLost))
    }
}

/// The longest a bulk batch waits for OTPs to clear.
const YIELD_AT_MOST: Duration = Duration::from_millis(20);

/// How long after an OTP is recorded bulk batches expect its worker.
const OTP_PICKUP: Duration = Duration::from_millis(20);

/// OTPs first: while an OTP is being recorded, picked up (see
/// [`Gate::expect`]) or sent in this process, bulk batches wait to start
/// (each for [`YIELD_AT_MOST`] at most, so a slow OTP provider slows bulk
/// sends but never stops them), and the OTP is not queued behind them for
/// the one SQLite writer, Postgres or the cores.
#[derive(Default)]
struct Gate {
    otps: AtomicUsize,
    clear: Notify,
    /// An OTP was just recorded: its worker is about to take it.
    expected_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// An OTP in flight (see [`Batcher::otp_in_flight`]); bulk batches go on
/// once the last one is dropped.
pub struct OtpInFlight<'a>(&'a Gate);

impl Drop for OtpInFlight<'_> {
    fn drop(&mut self) {
        if self.0.otps.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.clear.notify_waiters();
        }
    }
}

impl Gate {
    fn enter(&self) -> OtpInFlight<'_> {
        self.otps.fetch_add(1, Ordering::SeqCst);
        OtpInFlight(self)
    }

    /// Holds the gate for [`OTP_PICKUP`] after an OTP is recorded, about the
    /// time its worker takes to pick it up (the fetch is the queue's, not a
    /// batch, so nothing enters the gate meanwhile). The hold runs its full
    /// time even if the worker is quicker.
    fn expect(&self) {
        let until = tokio::time::Instant::now() + OTP_PICKUP;
        if let Ok(mut expected) = self.expected_until.lock() {
            *expected = Some(expected.map_or(until, |at| at.max(until)));
        }
    }

    async fn wait_clear(&self) {
        let deadline = tokio::time::Instant::now() + YIELD_AT_MOST;
        loop {
            let cleared = self.clear.notified();
            let now = tokio::time::Instant::now();
            let expected = self
                .expected_until
                .lock()
                .ok()
                .and_then(|at| *at)
                .filter(|at| *at > now);
            let until = match (self.otps.load(Ordering::SeqCst), expected) {
                (0, None) => return,
                (0, Some(at)) => at.min(deadline),
                _ => deadline,
            };
            if tokio::time::timeout_at(until, cleared).await.is_err() && until == deadline {
                return;
            }
        }
    }
}

async fn run_alone<S: Statement>(db: &Db, call: &S::Call) -> Result<S::Answer, StoreError> {
    S::run(db, std::slice::from_ref(call))
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("a batch of one gave no answer".into()))
}

/// One statement's task: runs whatever is waiting as one batch, until every
/// sender is gone or `stop` turns true (then it runs what was queued and ends;
/// later calls run on their own).
async fn serve<S: Statement>(
    db: Db,
    mut rx: mpsc::UnboundedReceiver<Waiting<S>>,
    yields: Option<Arc<Gate>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut waiting: VecDeque<Waiting<S>> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            tokio::select! {
                biased;
                w = rx.recv() => match w {
                    Some(w) => waiting.push_back(w),
                    None => return,
                },
                // Closed, the channel hands out what it holds, then `None`.
                _ = stop.wait_for(|stop| *stop) => {
                    rx.close();
                    continue;
                }
            }
        }
        if let Some(gate) = &yields {
            gate.wait_clear().await;
        }
        while let Ok(w) = rx.try_recv() {
            waiting.push_back(w);
        }
        if let Some((calls, replies)) = next_batch::<S>(&mut waiting) {
            run_batch::<S>(&db, calls, replies).await;
        }
    }
}

/// The next batch from `waiting`: calls in order, each key once, up to
/// [`MAX_BATCH`]; calls whose callers have stopped waiting are dropped
/// unless the statement runs unwatched. `None` when none is left.
fn next_batch<S: Statement>(waiting: &mut VecDeque<Waiting<S>>) -> Option<Batch<S>> {
    let (mut calls, mut replies) = (Vec::new(), Vec::new());
    let mut later = VecDeque::new();
    let mut seen = HashSet::new();
    for (call, reply) in waiting.drain(..) {
        if !S::RUNS_UNWATCHED && reply.is_closed() {
            continue;
        }
        if calls.len() < MAX_BATCH && S::key(&call).is_none_or(|k| seen.insert(k)) {
            calls.push(call);
            replies.push(reply);
        } else {
            later.push_back((call, reply));
        }
    }
    *waiting = later;
    (!calls.is_empty()).then_some((calls, replies))
}

/// Runs one batch and answers its callers.
async fn run_batch<S: Statement>(db: &Db, calls: Vec<S::Call>, mut replies: Vec<Reply<S>>) {
    let Some(result) = watched::<S, _>(&mut replies, S::run(db, &calls)).await else {
        return;
    };
    match result {
        Ok(answers) if answers.len() == calls.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(_) => {
            // Written, but not answerable call by call: never run again.
            for reply in replies {
                let _ = reply.send(Err(StoreError::Corrupt(
                    "a batch gave the wrong number of answers".into(),
                )));
            }
        }
        Err(_) if calls.len() > 1 => {
            // Nothing of the batch was written: each call on its own.
            for (call, mut reply) in calls.iter().zip(replies) {
                if !S::RUNS_UNWATCHED && reply.is_closed() {
                    continue;
                }
                let run = run_alone::<S>(db, call);
                if let Some(answer) = watched::<S, _>(std::slice::from_mut(&mut reply), run).await {
                    let _ = reply.send(answer);
                }
            }
        }
        Err(e) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Runs `work` until it ends or, unless the statement runs unwatched, until
/// every caller in `replies` has stopped waiting (`None`: dropped unfinished,
/// so a transaction it had open rolls back).
async fn watched<S: Statement, T>(
    replies: &mut [Reply<S>],
    work: impl Future<Output = T>,
) -> Option<T> {
    if S::RUNS_UNWATCHED || replies.is_empty() {
        return Some(work.await);
    }
    let all_gone = futures::future::join_all(replies.iter_mut().map(|r| r.closed()));
    tokio::select! {
        done = work => Some(done),
        _ = all_gone => None,
    }
}

/// The dispatcher's statements, batched across the worker slots of this
/// process, and the API's, across its requests (see the module docs): the
/// one door to them. Its tasks start with it ([`Batcher::start`], by `App`)
/// and end on [`Batcher::stop`] or when it is dropped.
pub struct Batcher {
    db: Db,
    gate: Arc<Gate>,
    // The dispatcher's, one of each per lane: an OTP never waits behind a
    // batch of bulk notifications.
    reads: [Line<Reads>; 2],
    starts: [Line<Starts>; 2],
    ends: [Line<Ends>; 2],
    // The spend guard's, one of each per lane (sends with a budget only).
    reserves: [Line<Reserves>; 2],
    settles: [Line<Settles>; 2],
    keys: Line<Keys>,
    inserts: Line<Inserts>,
    /// Turned true by [`Batcher::stop`]: the tasks finish and end.
    stop: watch::Sender<bool>,
    /// The tasks, awaited by [`Batcher::stop`].
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Batches over `db`, starting every statement's task on the current
    /// Tokio runtime (outside one, every call runs on its own).
    pub fn start(db: Db) -> Batcher {
        let gate = Arc::new(Gate::default());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let t = &mut tasks;
        // A statement's two lines: the OTP lane's, then the bulk lane's
        // (which yields to OTPs).
        let reads = [
            Line::start(&db, None, &stopped, t),
            Line::start(&db, Some(gate.clone()), &stopped, t),
        ];
        let starts = [
            Line::start(&db, None, &stopped, t),
            Line::start(&db, Some(gate.clone()), &stopped, t),
        ];
        let ends = [
            Line::start(&db, None, &stopped, t),
            Line::start(&db, Some(gate.clone()), &stopped, t),
        ];
        let reserves = [
            Line::start(&db, None, &stopped, t),
            Line::start(&db, Some(gate.clone()), &stopped, t),
        ];
        let settles = [
            Line::start(&db, None, &stopped, t),
            Line::start(&db, Some(gate.clone()), &stopped, t),
        ];
        let keys = Line::start(&db, None, &stopped, t);
        let inserts = Line::start(&db, None, &stopped, t);
        Batcher {
            db,
            gate,
            reads,
            starts,
            ends,
            reserves,
            settles,
            keys,
            inserts,
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// Stops the tasks once they have run every call queued so far; calls
    /// made after run on their own. Waits for them to end.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Marks an OTP as being recorded or sent until the guard is dropped:
    /// meanwhile the bulk lane's batches wait (see [`Gate`]).
    pub fn otp_in_flight(&self) -> OtpInFlight<'_> {
        self.gate.enter()
    }

    /// An OTP was recorded: bulk batches wait for its worker to take it
    /// (see [`Gate`]).
    pub fn otp_recorded(&self) {
        self.gate.expect();
    }

    /// [`Db::live_api_key`].
    pub async fn live_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        self.keys.call(&self.db, key_hash.to_owned()).await
    }

    /// [`Db::insert_delivery_guarded`].
    pub async fn insert_delivery_guarded(
        &self,
        d: NewDelivery,
        guards: InsertGuards,
    ) -> Result<Inserted, StoreError> {
        self.inserts.call(&self.db, (d, guards)).await
    }

    /// For a job handed over without its row (the claim returns it): the
    /// delivery about to be sent, with its OTP code while it is stored
    /// ([`Db::deliveries_to_send`]).
    pub async fn delivery_to_send(
        &self,
        lane: Lane,
        id: &str,
    ) -> Result<Option<(Delivery, Option<String>)>, StoreError> {
        self.reads[lane.index()].call(&self.db, id.to_owned()).await
    }

    /// The dispatcher's second statement, for a worker of `lane`: moves the
    /// pending delivery owned by `job` to `sending` and opens an attempt row
    /// ([`Db::begin_attempts`]). The attempt number, or `None` when the
    /// delivery is no longer this job's to send.
    pub async fn begin_attempt(
        &self,
        lane: Lane,
        job: &DeliveryJob,
        provider: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let start = AttemptStart::new(job, provider, reason, at);
        self.starts[lane.index()].call(&self.db, start).await
    }

    /// The dispatcher's third statement: closes the open attempt of the
    /// `sending` delivery owned by `job` and moves the delivery on, due again
    /// at the retry's time when there is one ([`Db::finish_attempts`]); false
    /// when the delivery was no longer this claim's. `lane` is the
    /// delivery's: its line runs the statement.
    pub async fn finish_attempt(
        &self,
        job: &DeliveryJob,
        result: AttemptResult,
        next: NextStep,
        lane: Lane,
    ) -> Result<bool, StoreError> {
        let end = AttemptEnd {
            delivery_id: job.delivery_id.clone(),
            job_id: job.job_id.clone(),
            result,
            next,
            lane,
        };
        self.ends[lane.index()].call(&self.db, end).await
    }

    /// The spend guard's first statement, for a worker of `lane`: room for
    /// the send in each of its budgets, or the budget that is reached
    /// ([`Db::reserve_budgets`]).
    pub async fn reserve_budget(
        &self,
        lane: Lane,
        call: ReserveCall,
    ) -> Result<Reserved, StoreError> {
        self.reserves[lane.index()].call(&self.db, call).await
    }

    /// The spend guard's second statement, for a worker of `lane`: the
    /// send's reservations spent or given back; the thresholds crossed
    /// ([`Db::close_reservations`]).
    pub async fn close_reservations(
        &self,
        lane: Lane,
        call: SettleCall,
    ) -> Result<Vec<Crossing>, StoreError> {
        self.settles[lane.index()].call(&self.db, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bulk_batches_wait_for_otps_but_never_long() {
        let gate = Arc::new(Gate::default());
        let started = tokio::time::Instant::now();
        gate.wait_clear().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing to wait for");

        // An OTP that ends after 5 ms: the bulk batch goes on then.
        let held = gate.clone();
        let otp = tokio::spawn(async move {
            let _otp = held.enter();
            tokio::time::sleep(Duration::from_millis(5)).await;
        });
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        gate.wait_clear().await;
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        otp.await.unwrap();

        // An OTP just recorded: bulk waits for its worker to take it, for
        // OTP_PICKUP at most.
        gate.expect();
        let started = tokio::time::Instant::now();
        gate.wait_clear().await;
        assert_eq!(started.elapsed(), OTP_PICKUP.min(YIELD_AT_MOST));
        let started = tokio::time::Instant::now();
        gate.wait_clear().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the hold has passed");

        // An OTP held for a long time (a slow provider): bulk waits at most
        // YIELD_AT_MOST per batch.
        let _slow = gate.enter();
        let started = tokio::time::Instant::now();
        gate.wait_clear().await;
        assert_eq!(started.elapsed(), YIELD_AT_MOST);
    }
}
