//! Group commit for the dispatcher's three statements per delivery.
//!
//! Every worker slot reads its delivery, opens an attempt and closes it: three
//! statements per delivery, each a round trip (and, for the two writes, a
//! commit). Under load many slots wait to run the same statement at the same
//! moment, so each kind of statement has one task that takes everything
//! waiting and runs it as one batch ([`Db::deliveries_to_send`],
//! [`Db::begin_attempts`], [`Db::finish_attempts`]): one round trip and one
//! commit for the lot. Nothing waits on purpose: a lone call runs at once, and
//! calls that come while a batch is running make up the next one.
//!
//! A batch is all or none. When one fails, each of its calls is run again on
//! its own, so one bad row fails only its own caller. A caller that stops
//! waiting does not stop its statement: it runs as if the caller had stayed,
//! like a statement already sent.

use std::collections::{HashSet, VecDeque};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{AttemptEnd, AttemptResult, AttemptStart, Db, Delivery, NextStep, StoreError};
use crate::queue::{DeliveryJob, Lane};

/// The most calls one batch carries.
const MAX_BATCH: usize = 64;

/// A statement that can run for many calls at once.
trait Statement: 'static {
    type Call: Send + Sync + 'static;
    type Answer: Send + 'static;
    /// The delivery a call is about: a batch holds each delivery once.
    fn delivery(call: &Self::Call) -> &str;
    /// Runs the calls as one batch, all or none; answers in their order.
    fn run<'a>(
        db: &'a Db,
        calls: &'a [Self::Call],
    ) -> BoxFuture<'a, Result<Vec<Self::Answer>, StoreError>>;
}

struct Reads;
struct Starts;
struct Ends;

impl Statement for Reads {
    type Call = String;
    type Answer = Option<(Delivery, Option<String>)>;
    fn delivery(call: &String) -> &str {
        call
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
    fn delivery(call: &AttemptStart) -> &str {
        &call.delivery_id
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
    fn delivery(call: &AttemptEnd) -> &str {
        &call.delivery_id
    }
    fn run<'a>(
        db: &'a Db,
        calls: &'a [AttemptEnd],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(db.finish_attempts(calls))
    }
}

type Waiting<S> = (
    <S as Statement>::Call,
    oneshot::Sender<Result<<S as Statement>::Answer, StoreError>>,
);

/// The queue in front of one statement's task, started on first use.
struct Line<S: Statement> {
    sender: OnceLock<Option<mpsc::UnboundedSender<Waiting<S>>>>,
}

impl<S: Statement> Default for Line<S> {
    fn default() -> Self {
        Line {
            sender: OnceLock::new(),
        }
    }
}

impl<S: Statement> Line<S> {
    async fn call(&self, db: &Db, call: S::Call) -> Result<S::Answer, StoreError> {
        let sender = self.sender.get_or_init(|| {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(serve::<S>(db.clone(), rx));
            Some(tx)
        });
        let Some(sender) = sender else {
            return run_alone::<S>(db, &call).await;
        };
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError((call, _))) = sender.send((call, reply)) {
            // The task is gone (its runtime stopped): nothing of this call ran.
            return run_alone::<S>(db, &call).await;
        }
        answer.await.unwrap_or(Err(StoreError::BatchLost))
    }
}

async fn run_alone<S: Statement>(db: &Db, call: &S::Call) -> Result<S::Answer, StoreError> {
    S::run(db, std::slice::from_ref(call))
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("a batch of one gave no answer".into()))
}

/// One statement's task: runs whatever is waiting as one batch, until every
/// sender is gone.
async fn serve<S: Statement>(db: Db, mut rx: mpsc::UnboundedReceiver<Waiting<S>>) {
    let mut waiting: VecDeque<Waiting<S>> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(w) => waiting.push_back(w),
                None => return,
            }
        }
        while let Ok(w) = rx.try_recv() {
            waiting.push_back(w);
        }
        let mut batch = Vec::new();
        let mut later = VecDeque::new();
        let mut seen = HashSet::new();
        for w in waiting.drain(..) {
            if batch.len() < MAX_BATCH && seen.insert(S::delivery(&w.0).to_owned()) {
                batch.push(w);
            } else {
                later.push_back(w);
            }
        }
        waiting = later;
        let (calls, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match S::run(&db, &calls).await {
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
                for (call, reply) in calls.iter().zip(replies) {
                    let _ = reply.send(run_alone::<S>(&db, call).await);
                }
            }
            Err(e) => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}

/// The dispatcher's statements, batched across the worker slots of this
/// process (see the module docs). Same answers as the [`Db`] methods of the
/// same names.
pub struct Batcher {
    db: Db,
    reads: Line<Reads>,
    starts: Line<Starts>,
    ends: Line<Ends>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Batches over `db`; each statement's task starts on its first call.
    pub fn new(db: Db) -> Batcher {
        Batcher {
            db,
            reads: Line::default(),
            starts: Line::default(),
            ends: Line::default(),
        }
    }

    /// [`Db::delivery_to_send`].
    pub async fn delivery_to_send(
        &self,
        id: &str,
    ) -> Result<Option<(Delivery, Option<String>)>, StoreError> {
        self.reads.call(&self.db, id.to_owned()).await
    }

    /// [`Db::begin_attempt`].
    pub async fn begin_attempt(
        &self,
        job: &DeliveryJob,
        provider: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let start = AttemptStart::new(job, provider, reason, at);
        self.starts.call(&self.db, start).await
    }

    /// [`Db::finish_attempt`].
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
        self.ends.call(&self.db, end).await
    }
}
