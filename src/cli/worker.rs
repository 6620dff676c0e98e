//! `tuma worker`: the workers alone (of every lane, or of `--lanes`), until
//! stopped or (`--drain`) until nothing is due.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::parse_duration_in;
use crate::queue::Lane;

/// `worker --lanes`: one lane or both, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lanes(pub Vec<Lane>);

/// `worker --lanes`: `otp`, `notifications`, or both separated by a comma.
pub(super) fn parse_lanes(s: &str) -> Result<Lanes, String> {
    let mut lanes = Vec::new();
    for part in s.split(',') {
        let lane: Lane = part.parse()?;
        if lanes.contains(&lane) {
            return Err(format!("lane `{}` is named twice", part.trim()));
        }
        lanes.push(lane);
    }
    Ok(Lanes(lanes))
}

/// `worker --drain --timeout`: 1s to 30 days.
pub(super) fn parse_drain_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_in(
        s,
        Duration::from_secs(1),
        Duration::from_secs(30 * 24 * 3600),
    )
}

/// Runs the workers of `lanes`; with `drain` (every lane), until
/// everything due is delivered.
pub(super) async fn run(
    app: Arc<App>,
    drain: bool,
    timeout: Duration,
    lanes: &[Lane],
) -> anyhow::Result<()> {
    if drain {
        crate::worker::drain(app, timeout).await?;
    } else {
        crate::worker::run_lanes_until(app, lanes, crate::worker::shutdown_signal()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_one_or_both_each_once() {
        assert_eq!(parse_lanes("otp").unwrap().0, vec![Lane::Otp]);
        assert_eq!(
            parse_lanes("otp, notifications").unwrap().0,
            vec![Lane::Otp, Lane::Notifications]
        );
        assert!(
            parse_lanes("bulk")
                .unwrap_err()
                .contains("unknown lane `bulk`")
        );
        assert!(parse_lanes("otp,otp").unwrap_err().contains("named twice"));
        assert!(parse_lanes("").is_err());
    }
}
