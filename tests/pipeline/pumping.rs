//! SMS pumping defence over the API: a burst of OTPs to one number range is
//! stopped while other ranges and countries are served; a country's hourly
//! limit; nothing refused is written.

use std::time::Duration;

use futures::future::join_all;

use crate::on_both_backends;
use crate::support::*;

async fn otp(s: &TestServer, key: &str, to: &str) -> reqwest::Response {
    s.post(
        "/v1/otp",
        key,
        &serde_json::json!({"to": to, "code": "482913"}),
    )
    .await
}

async fn a_burst_to_one_range_is_stopped_while_others_are_served(backend: Backend) {
    let s = spawn_app(backend).await;
    let key = s.key("auth", &["send"]).await;
    // 100 codes at once to +23480312xxxxx, a range with no history.
    let burst = join_all((0..100).map(|i| {
        let (s, key) = (&s, &key);
        async move { otp(s, key, &format!("+23480312{i:05}")).await }
    }))
    .await;
    let mut accepted = 0;
    let mut refused = 0;
    for r in burst {
        match r.status().as_u16() {
            202 => accepted += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["rule"], "range-burst");
                let detail = body["detail"].as_str().unwrap();
                assert!(detail.contains("+23480312"), "{detail}");
                assert!(
                    !detail.contains("+2348031200"),
                    "never a full number: {detail}"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((accepted, refused), (20, 80), "the default min_burst is 20");
    assert_eq!(s.delivery_count().await, 20, "nothing refused is written");
    // Another range of the same country, and another country, are served.
    for i in 0..5 {
        assert_eq!(
            otp(&s, &key, &format!("+23480555{i:05}")).await.status(),
            202
        );
    }
    assert_eq!(otp(&s, &key, "+254711000001").await.status(), 202);
    assert_eq!(otp(&s, &key, "+2348031299999").await.status(), 429);
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tuma_refusals_total{rule=\"range-burst\"} 81"),
        "{metrics}"
    );
    // Ops see the range, and only it, refused.
    let ops = s.key("ops", &["ops"]).await;
    let body: serde_json::Value = s.get("/v1/budget", &ops).await.json().await.unwrap();
    let ranges = body["refused_ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{body}");
    assert_eq!(ranges[0]["range"], "+23480312");
    assert_eq!(ranges[0]["threshold"], 20);
    // After the cool-off (1 h from the burst) the range is served again.
    s.t.clock.advance(Duration::from_secs(3601));
    assert_eq!(otp(&s, &key, "+2348031299999").await.status(), 202);
    s.stop().await;
}
on_both_backends!(a_burst_to_one_range_is_stopped_while_others_are_served);

async fn a_countrys_hourly_otp_limit_is_answered_429_with_its_rule(backend: Backend) {
    let s = spawn_app_with(
        backend,
        "[[country_limit]]\nprefix = \"+234\"\notp_per_hour = 3\n",
    )
    .await;
    let key = s.key("auth", &["send"]).await;
    let numbers =
        ["803", "805", "806", "807", "813", "816"].map(|operator| format!("+234{operator}1234567"));
    let sends = join_all(numbers.iter().map(|to| {
        let (s, key) = (&s, &key);
        async move { otp(s, key, to).await.status().as_u16() }
    }))
    .await;
    assert_eq!(sends.iter().filter(|s| **s == 202).count(), 3, "{sends:?}");
    let r = otp(&s, &key, "+2348055500001").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["rule"], "country-limit");
    assert_eq!(s.delivery_count().await, 3);
    assert_eq!(otp(&s, &key, "+254711000001").await.status(), 202);
    s.t.clock.advance(Duration::from_secs(3601));
    assert_eq!(otp(&s, &key, "+2348055500001").await.status(), 202);
    s.stop().await;
}
on_both_backends!(a_countrys_hourly_otp_limit_is_answered_429_with_its_rule);
