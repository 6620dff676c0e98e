//! `[[route]]`: channels, prefixes and the providers that carry them.

use super::*;

/// Checks `[[route]]`.
pub(super) fn check(
    raw: Vec<RawRoute>,
    providers: &[ProviderConfig],
    cx: &Cx,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    let mut routes = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let channel: Channel = r.channel.parse().map_err(|e| err(&key("channel"), e))?;
        if let Some(prefix) = &r.prefix {
            if channel == Channel::Email {
                return Err(err(
                    &key("prefix"),
                    "email routes take no phone prefix".into(),
                ));
            }
            if !is_e164_prefix(prefix) {
                return Err(err(
                    &key("prefix"),
                    format!("`{prefix}` is not an E.164 prefix such as \"+254\""),
                ));
            }
        }
        if r.providers.is_empty() {
            return Err(err(&key("providers"), "name at least one provider".into()));
        }
        for name in &r.providers {
            let Some(p) = providers.iter().find(|p| &p.name == name) else {
                return Err(err(
                    &key("providers"),
                    format!("no provider is named `{name}`"),
                ));
            };
            if !p.kind.channels().contains(&channel) {
                return Err(err(
                    &key("providers"),
                    format!(
                        "provider `{name}` ({}) cannot send {channel}",
                        p.kind.as_str()
                    ),
                ));
            }
        }
        if routes
            .iter()
            .any(|o: &RouteConfig| o.channel == channel && o.prefix == r.prefix)
        {
            return Err(err(
                &key("prefix"),
                format!(
                    "a {channel} route for {} is declared twice",
                    r.prefix.as_deref().unwrap_or("the default")
                ),
            ));
        }
        routes.push(RouteConfig {
            channel,
            prefix: r.prefix,
            providers: r.providers,
        });
    }
    Ok(routes)
}

/// Every channel has a route.
pub(super) fn check_every_channel(routes: &[RouteConfig], cx: &Cx) -> Result<(), ConfigError> {
    let err = |key: &str, reason: String| cx.err(key, reason);
    for channel in [Channel::Sms, Channel::Email] {
        if !routes.iter().any(|r| r.channel == channel) {
            return Err(err(
                "route",
                format!("no route carries {channel}: add a [[route]] with channel = \"{channel}\""),
            ));
        }
    }
    Ok(())
}
