//! The dispatcher's and the API's statements run in batches
//! (`Db::deliveries_to_send`, `begin_attempts`, `finish_attempts`,
//! `insert_deliveries_guarded`, and the `Batcher` that groups concurrent
//! calls): each call in a batch gets the answer it would get alone, and one
//! bad row fails only its own caller.

use std::sync::Arc;

use futures::future::join_all;
use serde_json::{Map, json};
use tuma::clock::Clock;
use tuma::domain::money::Money;
use tuma::domain::{Channel, DeliveryKind, DeliveryStatus};
use tuma::intake::{NotificationRequest, OtpRequest};
use tuma::queue::{DeliveryJob, Lane};
use tuma::store::{
    AttemptEnd, AttemptResult, AttemptStart, Batcher, Db, IdempotencyClaim, InsertGuards, Inserted,
    NewDelivery, NextStep, OtpLimit, Outcome, ReplayLink, StoreError,
};

use crate::on_both_backends;
use crate::support::*;

async fn notification(t: &TestApp, to: &str) -> DeliveryJob {
    let d = t
        .app
        .enqueue_notification(NotificationRequest {
            to: to.into(),
            template: "welcome".into(),
            locale: None,
            vars: Map::from_iter([("name".to_owned(), json!("Amina"))]),
            send_at: None,
            expires: None,
        })
        .await
        .unwrap();
    DeliveryJob {
        delivery_id: d.row.id.clone(),
        job_id: d.row.job_id.clone().unwrap(),
    }
}

/// `n` notifications to numbers starting with `prefix`.
async fn notifications(t: &TestApp, prefix: &str, n: usize) -> Vec<DeliveryJob> {
    let mut jobs = Vec::new();
    for i in 0..n {
        jobs.push(notification(t, &format!("{prefix}{i:05}")).await);
    }
    jobs
}

fn start(t: &TestApp, job: &DeliveryJob) -> AttemptStart {
    AttemptStart::new(job, "outbox", "primary", t.clock.now())
}

fn end(t: &TestApp, job: &DeliveryJob, outcome: Outcome, next: NextStep) -> AttemptEnd {
    let mut result = AttemptResult::error(outcome, t.clock.now(), "no");
    if outcome == Outcome::Accepted {
        result.error = None;
        result.provider_message_id = Some(format!("msg-{}", job.delivery_id));
        result.cost = Some((Money::parse("0.80", "KES").unwrap(), false));
        result.segments = Some(1);
    }
    result.latency_ms = Some(3);
    AttemptEnd {
        delivery_id: job.delivery_id.clone(),
        job_id: job.job_id.clone(),
        result,
        next,
        lane: Lane::Notifications,
    }
}

async fn one_batch_answers_each_delivery_as_it_would_alone(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let otp = t
        .app
        .enqueue_otp(OtpRequest {
            to: "+254711000300".into(),
            code: "135790".into(),
            channel: None,
            locale: None,
            ttl: None,
        })
        .await
        .unwrap();
    let otp = DeliveryJob {
        delivery_id: otp.row.id.clone(),
        job_id: otp.row.job_id.clone().unwrap(),
    };
    let a = notification(&t, "+254711000301").await;
    let b = notification(&t, "+254711000302").await;
    let c = notification(&t, "+254711000303").await;

    // Reads: in the order asked, the code only for the OTP, nothing for an unknown id.
    let ids = [&otp, &a, &b, &c]
        .iter()
        .map(|j| j.delivery_id.clone())
        .chain(["no-such-delivery".to_owned()])
        .collect::<Vec<_>>();
    let read = t.app.db.deliveries_to_send(&ids).await.unwrap();
    assert_eq!(read.len(), 5);
    for (got, id) in read.iter().zip(&ids).take(4) {
        assert_eq!(got.as_ref().unwrap().0.row.id, *id);
    }
    let sealed = read[0].as_ref().unwrap().1.as_deref().unwrap();
    let code = t.app.otp_keys.open(&ids[0], sealed).unwrap();
    assert_eq!(code.expose(), "135790");
    assert_eq!(read[1].as_ref().unwrap().1, None);
    assert!(read[4].is_none());

    // Starts: a job that no longer owns its delivery opens nothing.
    let stale = DeliveryJob {
        delivery_id: b.delivery_id.clone(),
        job_id: DeliveryJob::new(&b.delivery_id).job_id,
    };
    let starts = [&otp, &a, &stale, &c].map(|j| start(&t, j));
    let opened = t.app.db.begin_attempts(&starts).await.unwrap();
    assert_eq!(opened, vec![Some(1), Some(1), None, Some(1)]);
    assert_eq!(
        t.delivery(&b.delivery_id).await.status,
        DeliveryStatus::Pending
    );
    assert_eq!(t.app.db.attempts(&b.delivery_id).await.unwrap().len(), 0);
    assert_eq!(
        t.app.db.begin_attempts(&starts[..1]).await.unwrap(),
        vec![None],
        "a delivery already sending is not started twice"
    );

    // Ends, all final: sent and failed, plus the stale job, which moves nothing.
    let ends = [
        end(&t, &otp, Outcome::Accepted, NextStep::Sent),
        end(&t, &a, Outcome::Permanent, NextStep::Failed),
        end(&t, &stale, Outcome::Accepted, NextStep::Sent),
    ];
    let closed = t.app.db.finish_attempts(&ends).await.unwrap();
    assert_eq!(closed, vec![true, true, false]);
    let sent = t.delivery(&otp.delivery_id).await;
    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert_eq!(sent.cost, Some(Money::parse("0.80", "KES").unwrap()));
    assert_eq!(
        t.app
            .batcher
            .delivery_to_send(Lane::Otp, &otp.delivery_id)
            .await
            .unwrap()
            .unwrap()
            .1,
        None,
        "the code is wiped once sent"
    );
    let attempt = &t.app.db.attempts(&otp.delivery_id).await.unwrap()[0];
    assert_eq!(attempt.outcome.map(|o| o.as_str()), Some("accepted"));
    assert_eq!(
        attempt.provider_message_id.as_deref(),
        Some(format!("msg-{}", otp.delivery_id).as_str())
    );
    assert_eq!(attempt.latency_ms, Some(3));
    let failed = t.delivery(&a.delivery_id).await;
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.row.last_error.as_deref(), Some("no"));

    // Ends with a retry: the row is due again at its time, with a new token.
    let retry_job = DeliveryJob::new(&c.delivery_id);
    let retry_at = t.clock.now() + chrono::Duration::seconds(30);
    let closed = t
        .app
        .db
        .finish_attempts(&[
            end(
                &t,
                &c,
                Outcome::Transient,
                NextStep::Retry {
                    job: retry_job.clone(),
                    at: retry_at,
                },
            ),
            end(&t, &otp, Outcome::Accepted, NextStep::Sent),
        ])
        .await
        .unwrap();
    assert_eq!(closed, vec![true, false], "a delivery is closed only once");
    let retried = t.delivery(&c.delivery_id).await;
    assert_eq!(retried.status, DeliveryStatus::Pending);
    assert_eq!(
        retried.row.job_id.as_deref(),
        Some(retry_job.job_id.as_str())
    );
    assert_eq!(retried.row.next_attempt_at, Some(retry_at));
}
on_both_backends!(one_batch_answers_each_delivery_as_it_would_alone);

async fn concurrent_callers_each_get_their_own_answer(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let jobs = notifications(&t, "+2547113", 40).await;
    let app = t.app.clone();
    let now = t.clock.now();
    // Every job twice at once: exactly one of each pair opens the attempt.
    let starts = jobs.iter().chain(jobs.iter()).map(|job| {
        let app = app.clone();
        let job = job.clone();
        async move {
            app.batcher
                .begin_attempt(Lane::Notifications, &job, "outbox", "primary", now)
                .await
        }
    });
    let opened: Vec<Option<i64>> = join_all(starts)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, job) in jobs.iter().enumerate() {
        let pair = [opened[i], opened[i + jobs.len()]];
        assert!(
            pair == [Some(1), None] || pair == [None, Some(1)],
            "{}: {pair:?}",
            job.delivery_id
        );
    }
    let ends = jobs.iter().map(|job| {
        let app = app.clone();
        let end = end(&t, job, Outcome::Accepted, NextStep::Sent);
        let job = job.clone();
        async move {
            app.batcher
                .finish_attempt(&job, end.result, end.next, end.lane)
                .await
        }
    });
    let closed: Vec<bool> = join_all(ends)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(closed.iter().all(|c| *c));
    for job in &jobs {
        assert_eq!(
            t.delivery(&job.delivery_id).await.status,
            DeliveryStatus::Sent
        );
        assert_eq!(t.app.db.attempts(&job.delivery_id).await.unwrap().len(), 1);
    }
}
on_both_backends!(concurrent_callers_each_get_their_own_answer);

async fn a_bad_row_fails_only_its_own_caller(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let jobs = notifications(&t, "+2547114", 20).await;
    // A currency no code knows, as if written by hand.
    let bad = jobs[7].delivery_id.clone();
    let sql = "UPDATE deliveries SET cost_micros = 1, currency = 'K$S' WHERE id = $1";
    match &t.app.db {
        Db::Sqlite(pool) => sqlx::query(sql).bind(&bad).execute(pool).await.map(|_| ()),
        Db::Postgres(pool) => sqlx::query(sql).bind(&bad).execute(pool).await.map(|_| ()),
    }
    .unwrap();
    let app: Arc<_> = t.app.clone();
    let reads = jobs.iter().map(|job| {
        let app = app.clone();
        let id = job.delivery_id.clone();
        async move {
            (
                id.clone(),
                app.batcher.delivery_to_send(Lane::Notifications, &id).await,
            )
        }
    });
    for (id, read) in join_all(reads).await {
        if id == bad {
            assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
        } else {
            assert_eq!(read.unwrap().unwrap().0.row.id, id);
        }
    }
}
on_both_backends!(a_bad_row_fails_only_its_own_caller);

/// An OTP to `to` as intake would record it, created now.
fn new_otp(t: &TestApp, to: &str) -> NewDelivery {
    let now = t.clock.now();
    let id = uuid::Uuid::now_v7().to_string();
    let code = tuma::domain::otp::OtpCode::parse("246810").unwrap();
    NewDelivery {
        otp_code: Some(t.app.otp_keys.seal(&id, &code)),
        id,
        kind: DeliveryKind::Otp,
        channel: Channel::Sms,
        recipient: to.into(),
        quota_key: None,
        template: "otp".into(),
        locale: "en".into(),
        vars: json!({ "ttl_minutes": 5 }),
        subject: None,
        body: "Your code is ******".into(),
        body_html: None,
        max_attempts: 6,
        expires_at: Some(now + chrono::Duration::minutes(5)),
        created_at: now,
        send_at: now,
        segments: Some(1),
        encoding: Some("gsm7".into()),
        api_key_name: None,
        purpose: None,
    }
}

fn limit(t: &TestApp, max: u32) -> OtpLimit {
    OtpLimit {
        max,
        since: t.clock.now() - chrono::Duration::hours(1),
    }
}

fn claim(t: &TestApp, api_key_id: i64, key: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        api_key_id,
        key: key.into(),
        request_hash: format!("hash-{key}"),
        response_status: 202,
        response_body: format!("{{\"key\":\"{key}\"}}"),
        expired_before: t.clock.now() - chrono::Duration::hours(24),
    }
}

fn guards(claim: Option<IdempotencyClaim>, otp_limit: Option<OtpLimit>) -> InsertGuards {
    InsertGuards {
        idempotency: claim,
        otp_limit,
        replay: None,
        pumping: None,
    }
}

async fn api_key(t: &TestApp) -> i64 {
    let db = &t.app.db;
    assert!(
        db.create_api_key("batch", "hash-of-batch", "send", t.clock.now())
            .await
            .unwrap()
    );
    let key = db.live_api_key("hash-of-batch").await.unwrap().unwrap();
    key.id
}

async fn idempotency_row(db: &Db, key: &str) -> Option<String> {
    let sql = "SELECT delivery_id FROM idempotency_keys WHERE key = $1";
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).bind(key).fetch_optional(pool).await,
        Db::Postgres(pool) => sqlx::query_scalar(sql).bind(key).fetch_optional(pool).await,
    }
    .unwrap()
}

async fn guarded_inserts_in_one_batch_answer_as_if_one_after_another(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let key_id = api_key(&t).await;
    let db = &t.app.db;
    // Earlier: one OTP to the first recipient, and a claim made 25 hours ago
    // (expired) and one made an hour ago (live).
    let earlier = new_otp(&t, "+254711000500");
    db.insert_delivery(&earlier).await.unwrap();
    let mut old = claim(&t, key_id, "expired");
    let mut stale_otp = new_otp(&t, "+254711000599");
    stale_otp.created_at = t.clock.now() - chrono::Duration::hours(25);
    old.expired_before = stale_otp.created_at - chrono::Duration::seconds(1);
    let live = new_otp(&t, "+254711000598");
    for (d, c) in [(&stale_otp, old), (&live, claim(&t, key_id, "live"))] {
        assert!(matches!(
            db.insert_delivery_guarded(d, &guards(Some(c), None))
                .await
                .unwrap(),
            Inserted::Created(_)
        ));
    }

    let a = [(); 4].map(|_| new_otp(&t, "+254711000500"));
    let b = [(); 2].map(|_| new_otp(&t, "+254711000501"));
    let items = [
        // The limit is 3 and one is already in the window: two more go.
        (
            &a[0],
            guards(Some(claim(&t, key_id, "a0")), Some(limit(&t, 3))),
        ),
        (&a[1], guards(None, Some(limit(&t, 3)))),
        // The third is refused, and its claim taken back with it.
        (
            &a[2],
            guards(Some(claim(&t, key_id, "a2")), Some(limit(&t, 3))),
        ),
        // Another recipient is counted apart.
        (
            &b[0],
            guards(Some(claim(&t, key_id, "b0")), Some(limit(&t, 1))),
        ),
        (&b[1], guards(None, Some(limit(&t, 1)))),
        // A key claimed before is taken; an expired one is claimed afresh.
        (
            &a[3],
            guards(Some(claim(&t, key_id, "live")), Some(limit(&t, 3))),
        ),
        (
            &new_otp(&t, "+254711000502"),
            guards(Some(claim(&t, key_id, "expired")), None),
        ),
        // The same key twice in one batch: the first claims it.
        (
            &new_otp(&t, "+254711000503"),
            guards(Some(claim(&t, key_id, "twice")), None),
        ),
        (
            &new_otp(&t, "+254711000504"),
            guards(Some(claim(&t, key_id, "twice")), None),
        ),
    ];
    let deliveries_before = count(db, "SELECT COUNT(*) FROM deliveries").await;
    let refs: Vec<_> = items.iter().map(|(d, g)| (*d, g)).collect();
    let answers = db.insert_deliveries_guarded(&refs).await.unwrap();
    let shape: Vec<&str> = answers
        .iter()
        .map(|a| match a {
            Inserted::Created(_) => "created",
            Inserted::KeyTaken => "taken",
            Inserted::Limited { .. } => "limited",
            Inserted::Pumped(_) => "pumped",
        })
        .collect();
    assert_eq!(
        shape,
        [
            "created", "created", "limited", "created", "limited", "taken", "created", "created",
            "taken"
        ]
    );
    let Inserted::Limited { oldest } = &answers[2] else {
        unreachable!()
    };
    assert_eq!(*oldest, earlier.created_at);
    // Each created delivery is stored with its own token; the rest wrote nothing.
    for ((d, _), answer) in items.iter().zip(&answers) {
        let stored = db.delivery(&d.id).await.unwrap();
        match answer {
            Inserted::Created(job) => {
                let stored = stored.unwrap();
                assert_eq!(stored.row.job_id.as_deref(), Some(job.job_id.as_str()));
                assert_eq!(stored.status, DeliveryStatus::Pending);
                assert_eq!(stored.row.recipient, d.recipient);
                let sealed = db
                    .deliveries_to_send(std::slice::from_ref(&d.id))
                    .await
                    .unwrap();
                let sealed = sealed.into_iter().flatten().next().unwrap().1;
                let code = t.app.otp_keys.open(&d.id, &sealed.unwrap()).unwrap();
                assert_eq!(code.expose(), "246810");
            }
            _ => assert!(stored.is_none(), "{} was written", d.id),
        }
    }
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM deliveries").await,
        deliveries_before + 5
    );
    assert_eq!(idempotency_row(db, "a0").await, Some(a[0].id.clone()));
    assert_eq!(idempotency_row(db, "a2").await, None, "taken back");
    assert_eq!(idempotency_row(db, "live").await, Some(live.id.clone()));
    assert_eq!(
        idempotency_row(db, "expired").await,
        Some(items[6].0.id.clone())
    );
    assert_eq!(
        idempotency_row(db, "twice").await,
        Some(items[7].0.id.clone())
    );

    // All or none: a row the database refuses (a replay of a delivery that
    // does not exist) fails the batch, and its good neighbour is not written.
    let good = new_otp(&t, "+254711000505");
    let bad = new_otp(&t, "+254711000506");
    let dangling = InsertGuards {
        replay: Some(ReplayLink {
            replay_of: "no-such-delivery".into(),
            replayed_by: "ops".into(),
            replayed_at: t.clock.now(),
            note: None,
        }),
        ..InsertGuards::default()
    };
    let good_guards = guards(Some(claim(&t, key_id, "good")), None);
    assert!(
        db.insert_deliveries_guarded(&[(&good, &good_guards), (&bad, &dangling)])
            .await
            .is_err()
    );
    assert!(db.delivery(&good.id).await.unwrap().is_none());
    assert_eq!(idempotency_row(db, "good").await, None);
}
on_both_backends!(guarded_inserts_in_one_batch_answer_as_if_one_after_another);

async fn concurrent_guarded_inserts_keep_the_limit_and_one_claim_per_key(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let key_id = api_key(&t).await;
    let app: Arc<_> = t.app.clone();
    // 30 OTPs to one recipient at once, limit 4; and 30 other sends sharing
    // three Idempotency-Keys.
    let limited = (0..30).map(|_| {
        let (app, d, g) = (
            app.clone(),
            new_otp(&t, "+254711000600"),
            guards(None, Some(limit(&t, 4))),
        );
        async move { app.batcher.insert_delivery_guarded(d, g).await }
    });
    let keyed = (0..30).map(|i| {
        let d = new_otp(&t, &format!("+2547110007{i:02}"));
        let g = guards(Some(claim(&t, key_id, &format!("k{}", i % 3))), None);
        let app = app.clone();
        async move { app.batcher.insert_delivery_guarded(d, g).await }
    });
    let (limited, keyed) = tokio::join!(join_all(limited), join_all(keyed));
    let created = |answers: &[Result<Inserted, StoreError>]| {
        answers
            .iter()
            .filter(|a| matches!(a, Ok(Inserted::Created(_))))
            .count()
    };
    assert_eq!(created(&limited), 4, "{limited:?}");
    assert!(
        limited
            .iter()
            .all(|a| matches!(a, Ok(Inserted::Created(_) | Inserted::Limited { .. })))
    );
    assert_eq!(created(&keyed), 3, "{keyed:?}");
    assert!(
        keyed
            .iter()
            .all(|a| matches!(a, Ok(Inserted::Created(_) | Inserted::KeyTaken)))
    );
    assert_eq!(
        count(
            &t.app.db,
            "SELECT COUNT(*) FROM deliveries WHERE recipient = '+254711000600'"
        )
        .await,
        4
    );
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM idempotency_keys").await,
        3
    );
}
on_both_backends!(concurrent_guarded_inserts_keep_the_limit_and_one_claim_per_key);

async fn two_processes_racing_for_one_recipient_keep_the_limit(backend: Backend) {
    // Two pools with their own batchers on one database: what two tuma
    // processes are. Their batches of sends to one recipient race; the
    // recipient's lock lets exactly the limit through.
    let t = TestApp::new(backend, 6).await;
    let other = Arc::new(Batcher::start(t.db.connect().await));
    let ours = Arc::new(Batcher::start(t.db.connect().await));
    let sends = (0..40).map(|i| {
        let batcher = if i % 2 == 0 {
            ours.clone()
        } else {
            other.clone()
        };
        let (d, g) = (
            new_otp(&t, "+254711000900"),
            guards(None, Some(limit(&t, 5))),
        );
        async move { batcher.insert_delivery_guarded(d, g).await }
    });
    let answers = join_all(sends).await;
    let created = answers
        .iter()
        .filter(|a| matches!(a, Ok(Inserted::Created(_))))
        .count();
    assert_eq!(created, 5, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Inserted::Created(_) | Inserted::Limited { .. })))
    );
    assert_eq!(
        count(
            &t.app.db,
            "SELECT COUNT(*) FROM deliveries WHERE recipient = '+254711000900'"
        )
        .await,
        5
    );
}
on_both_backends!(two_processes_racing_for_one_recipient_keep_the_limit);

/// A message sent in several parts keeps every part's id, whether its batch
/// is one statement or has a retry; a one-id message and an end whose job no
/// longer owns its delivery write no part.
async fn a_batch_keeps_every_part_of_a_long_message(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let jobs = notifications(&t, "+2547114", 4).await;
    let stale = DeliveryJob {
        delivery_id: jobs[3].delivery_id.clone(),
        job_id: DeliveryJob::new(&jobs[3].delivery_id).job_id,
    };
    let starts: Vec<AttemptStart> = jobs.iter().map(|j| start(&t, j)).collect();
    t.app.db.begin_attempts(&starts).await.unwrap();
    let parts = |j: &DeliveryJob, n: usize| -> Vec<String> {
        (1..=n)
            .map(|i| format!("{}-part{i}", j.delivery_id))
            .collect()
    };
    // All final (one statement on Postgres): three parts, one id, and a
    // stale job whose parts are not written.
    let mut ends = vec![
        end(&t, &jobs[0], Outcome::Accepted, NextStep::Sent),
        end(&t, &stale, Outcome::Accepted, NextStep::Sent),
    ];
    ends[0].result.part_ids = parts(&jobs[0], 3);
    ends[1].result.part_ids = parts(&stale, 2);
    assert_eq!(
        t.app.db.finish_attempts(&ends).await.unwrap(),
        vec![true, false]
    );
    // With a retry (one transaction on both backends): two parts.
    let mut ends = vec![
        end(&t, &jobs[1], Outcome::Accepted, NextStep::Sent),
        end(
            &t,
            &jobs[2],
            Outcome::Transient,
            NextStep::Retry {
                job: DeliveryJob::new(&jobs[2].delivery_id),
                at: t.clock.now(),
            },
        ),
    ];
    ends[0].result.part_ids = parts(&jobs[1], 2);
    assert_eq!(
        t.app.db.finish_attempts(&ends).await.unwrap(),
        vec![true, true]
    );
    // A one-id message.
    let sent = t
        .app
        .db
        .finish_attempts(&[end(&t, &jobs[3], Outcome::Accepted, NextStep::Sent)])
        .await
        .unwrap();
    assert_eq!(sent, vec![true]);

    let attempts = t.app.db.attempts(&jobs[0].delivery_id).await.unwrap();
    assert_eq!(attempts[0].part_ids, parts(&jobs[0], 3));
    assert_eq!(
        attempts[0].provider_message_id.as_deref(),
        Some(format!("msg-{}", jobs[0].delivery_id).as_str())
    );
    let attempts = t.app.db.attempts(&jobs[1].delivery_id).await.unwrap();
    assert_eq!(attempts[0].part_ids, parts(&jobs[1], 2));
    for j in &jobs[2..] {
        assert!(
            t.app.db.attempts(&j.delivery_id).await.unwrap()[0]
                .part_ids
                .is_empty(),
            "{} has no parts",
            j.delivery_id
        );
    }
    assert_eq!(
        count(&t.app.db, "SELECT COUNT(*) FROM provider_message_parts").await,
        5
    );
}
on_both_backends!(a_batch_keeps_every_part_of_a_long_message);

/// Every stored column of a delivery, its attempts and its message parts, as
/// JSON (SQLite: text stays a string, an integer a number), with `id`
/// written as `role` and the columns that differ between twin deliveries
/// (ids, tokens, recipients, sealed codes) left out or reduced.
async fn stored(db: &Db, id: &str, role: &str) -> String {
    let tables = [
        ("deliveries", "id"),
        ("delivery_attempts", "delivery_id"),
        ("provider_message_parts", "delivery_id"),
    ];
    let mut out = Vec::new();
    for (table, key) in tables {
        let rows: Vec<String> = match db {
            Db::Sqlite(pool) => {
                let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
                )))
                .fetch_all(pool)
                .await
                .unwrap();
                let object = columns
                    .iter()
                    .map(|c| format!("'{c}', {c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT json_object({object}) FROM {table} WHERE {key} = $1 ORDER BY rowid"
                )))
                .bind(id)
                .fetch_all(pool)
                .await
                .unwrap()
            }
            Db::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT to_jsonb(t)::text FROM {table} t WHERE {key} = $1 ORDER BY 1"
            )))
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap(),
        };
        for row in rows {
            let mut row: serde_json::Value = serde_json::from_str(&row).unwrap();
            let fields = row.as_object_mut().unwrap();
            for gone in ["id", "job_id", "recipient", "quota_key", "country"] {
                fields.remove(gone);
            }
            if let Some(code) = fields.get_mut("otp_code") {
                *code = json!(!code.is_null());
            }
            out.push(format!("{table} {}", row.to_string().replace(id, role)));
        }
    }
    out.join("\n")
}

/// A batch mixing every kind of start and end stores, column by column, what
/// the same calls store one at a time: a stale job at the start and at the
/// end, a permanent failure, a retry due again later, an estimated cost
/// with the provider's segment count, and a message in three parts. Times
/// keep the text sqlx binds (compared as text by other statements).
async fn a_mixed_batch_stores_what_one_at_a_time_stores(backend: Backend) {
    let t = TestApp::new(backend, 6).await;
    let roles = [
        "sent-in-parts",
        "failed",
        "retried",
        "stale-start",
        "stale-end",
        "estimated",
    ];
    let mut twins = Vec::new();
    for (i, _) in roles.iter().enumerate() {
        let otp = |to: String| {
            let app = t.app.clone();
            async move {
                let d = app
                    .enqueue_otp(OtpRequest {
                        to,
                        code: "135790".into(),
                        channel: None,
                        locale: None,
                        ttl: None,
                    })
                    .await
                    .unwrap();
                DeliveryJob {
                    delivery_id: d.row.id.clone(),
                    job_id: d.row.job_id.clone().unwrap(),
                }
            }
        };
        let pair = if i == 0 {
            (
                otp("+254711000500".into()).await,
                otp("+254711000501".into()).await,
            )
        } else {
            (
                notification(&t, &format!("+2547110006{i}0")).await,
                notification(&t, &format!("+2547110006{i}1")).await,
            )
        };
        twins.push(pair);
    }
    let stale = |j: &DeliveryJob| DeliveryJob {
        delivery_id: j.delivery_id.clone(),
        job_id: DeliveryJob::new(&j.delivery_id).job_id,
    };
    let starts = |alone: bool| -> Vec<AttemptStart> {
        twins
            .iter()
            .zip(roles)
            .map(|((a, b), role)| {
                let j = if alone { a } else { b };
                if role == "stale-start" {
                    start(&t, &stale(j))
                } else {
                    start(&t, j)
                }
            })
            .collect()
    };
    t.clock
        .advance(std::time::Duration::from_nanos(1_234_567_891));
    let mut one_by_one = Vec::new();
    for s in starts(true) {
        one_by_one.extend(t.app.db.begin_attempts(&[s]).await.unwrap());
    }
    let batched = t.app.db.begin_attempts(&starts(false)).await.unwrap();
    assert_eq!(
        batched,
        vec![Some(1), Some(1), Some(1), None, Some(1), Some(1)]
    );
    assert_eq!(batched, one_by_one);

    // Every claim holds a lease, which the end clears.
    let lease = "UPDATE deliveries SET lease_until = updated_at, leased_by = 'w1' \
                 WHERE status = 'sending'";
    match &t.app.db {
        Db::Sqlite(pool) => sqlx::query(lease).execute(pool).await.map(|_| ()),
        Db::Postgres(pool) => sqlx::query(lease).execute(pool).await.map(|_| ()),
    }
    .unwrap();

    t.clock.advance(std::time::Duration::from_millis(2_500));
    // Postgres keeps microseconds.
    let retry_at = chrono::SubsecRound::trunc_subsecs(
        t.clock.now() + chrono::Duration::milliseconds(30_125),
        6,
    );
    let ends = |alone: bool| -> Vec<AttemptEnd> {
        twins
            .iter()
            .zip(roles)
            .map(|((a, b), role)| {
                let j = if alone { a } else { b };
                match role {
                    "sent-in-parts" => {
                        let mut e = end(&t, j, Outcome::Accepted, NextStep::Sent);
                        e.result.part_ids = (1..=3)
                            .map(|n| format!("{}-part{n}", j.delivery_id))
                            .collect();
                        e.result.provider_status = Some("queued".into());
                        e.lane = Lane::Otp;
                        e
                    }
                    "failed" => end(&t, j, Outcome::Permanent, NextStep::Failed),
                    "retried" => end(
                        &t,
                        j,
                        Outcome::Transient,
                        NextStep::Retry {
                            job: DeliveryJob::new(&j.delivery_id),
                            at: retry_at,
                        },
                    ),
                    "stale-start" => end(&t, j, Outcome::Accepted, NextStep::Sent),
                    "stale-end" => end(&t, &stale(j), Outcome::Accepted, NextStep::Sent),
                    _ => {
                        let mut e = end(&t, j, Outcome::Accepted, NextStep::Sent);
                        e.result.cost = Some((Money::parse("1.60", "KES").unwrap(), true));
                        e.result.provider_segments = Some(2);
                        e.result.error_code = Some("none".into());
                        e
                    }
                }
            })
            .collect()
    };
    let mut one_by_one = Vec::new();
    for e in ends(true) {
        one_by_one.extend(t.app.db.finish_attempts(&[e]).await.unwrap());
    }
    let batched = t.app.db.finish_attempts(&ends(false)).await.unwrap();
    assert_eq!(batched, vec![true, true, true, false, false, true]);
    assert_eq!(batched, one_by_one);

    for ((a, b), role) in twins.iter().zip(roles) {
        let alone = stored(&t.app.db, &a.delivery_id, role).await;
        assert_eq!(alone, stored(&t.app.db, &b.delivery_id, role).await);
        if role == "sent-in-parts" {
            assert_eq!(alone.matches("provider_message_parts").count(), 3);
        }
    }
    let retried = t.delivery(&twins[2].1.delivery_id).await;
    assert_eq!(retried.row.next_attempt_at, Some(retry_at));

    // Times are stored as sqlx binds them, so they compare as text.
    let at = t.clock.now();
    let sql = "SELECT COUNT(*) FROM deliveries WHERE updated_at = $1";
    let same_text: i64 = match &t.app.db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).bind(at).fetch_one(pool).await,
        Db::Postgres(pool) => sqlx::query_scalar(sql).bind(at).fetch_one(pool).await,
    }
    .unwrap();
    assert_eq!(same_text, 8, "the ends that moved their delivery");
}
on_both_backends!(a_mixed_batch_stores_what_one_at_a_time_stores);
