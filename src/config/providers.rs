//! `[[provider]]`: the common keys here, each kind's own keys in its folder (through the registry).

use super::*;

/// Checks `[[provider]]`.
pub(super) fn check(raw: Vec<RawProvider>, cx: &Cx) -> Result<Vec<ProviderConfig>, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let mut providers = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("provider[{i}].{k}");
        if p.name.trim().is_empty() {
            return Err(err(&key("name"), "must not be empty".into()));
        }
        if !names.insert(p.name.clone()) {
            return Err(err(
                &key("name"),
                format!("provider `{}` is declared twice", p.name),
            ));
        }
        // From here on errors name the provider, not its position.
        let key = |k: &str| format!("provider[{}].{k}", p.name);
        let timeout = match &p.timeout {
            Some(t) => {
                parse_duration_in(t, millis(100), secs(600)).map_err(|r| err(&key("timeout"), r))?
            }
            None => Duration::from_secs(15),
        };
        let late_answer_grace = match &p.late_answer_grace {
            Some(t) => parse_duration_in(t, secs(0), crate::providers::MAX_LATE_ANSWER_GRACE)
                .map_err(|r| err(&key("late_answer_grace"), r))?,
            None => crate::providers::DEFAULT_LATE_ANSWER_GRACE,
        };
        let Some(kind) = crate::providers::registry::kind(&p.kind) else {
            return Err(err(
                &key("kind"),
                format!(
                    "unknown provider kind `{}` (expected one of: {})",
                    p.kind,
                    crate::providers::registry::kind_names()
                ),
            ));
        };
        let read_secret = |var: &str| cx.read_secret(var);
        let kind = ProviderKind::new(
            (kind.parse)(p.rest, &cx.base, &read_secret).map_err(|(k, r)| err(&key(&k), r))?,
        );
        let rate_limit = p.rate_limit.unwrap_or_default();
        count_in(rate_limit.per_second.get(), 1, MAX_RATE)
            .map_err(|r| err(&key("rate_limit.per_second"), r))?;
        count_in(rate_limit.burst.get(), 1, MAX_RATE)
            .map_err(|r| err(&key("rate_limit.burst"), r))?;
        providers.push(ProviderConfig {
            name: p.name,
            rate_limit,
            timeout,
            late_answer_grace,
            kind,
        });
    }
    Ok(providers)
}
