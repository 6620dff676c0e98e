//! The dispatcher's log lines: each job runs inside one span naming its
//! delivery and lane, so its lines carry the id once, from the span.

use serde_json::Map;
use tuma::intake::NotificationRequest;

use crate::on_both_backends;
use crate::support::*;

async fn a_jobs_log_lines_carry_its_delivery_id_from_one_span(backend: Backend) {
    let logs = captured_logs();
    let t = TestApp::new(backend, 6).await;
    let mut vars = Map::new();
    vars.insert("name".into(), "Amina".into());
    let d = t
        .app
        .enqueue_notification(NotificationRequest {
            to: "+254711000091".into(),
            template: "welcome".into(),
            locale: None,
            vars,
            send_at: None,
            expires: None,
        })
        .await
        .unwrap();
    t.drain().await;

    let id = &d.row.id;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let sent: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(id.as_str()) && l.contains("tuma::dispatch") && l.contains(" sent "))
        .collect();
    assert_eq!(sent.len(), 1, "one `sent` line for {id} in:\n{text}");
    let line = sent[0];
    assert!(
        line.contains(&format!("job{{delivery={id} lane=\"tuma-notifications\"}}")),
        "{line}"
    );
    assert_eq!(line.matches(id.as_str()).count(), 1, "the id once: {line}");
}
on_both_backends!(a_jobs_log_lines_carry_its_delivery_id_from_one_span);
