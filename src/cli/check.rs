//! `tuma check`: validate the configuration and templates and describe them.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::domain::Channel;
use crate::domain::segments::count_segments;

pub(super) fn run(config: Config) -> anyhow::Result<()> {
    // The one check of the templates the sending commands make too.
    let templates = crate::templates::Templates::load_configured(&config)?;
    crate::providers::Providers::from_config(&config)?;
    let keys = crate::secrets::OtpKeys::from_env(&config.otp).map_err(|e| {
        e.in_config(&config.file)
            .map_or_else(anyhow::Error::from, anyhow::Error::from)
    })?;
    let otp_key = match keys {
        Some(keys) => keys.describe(),
        None => "a key file beside the SQLite database (made on first run); \
                 Postgres needs otp.key_env"
            .to_owned(),
    };
    println!("configuration {} is valid", config.file.display());
    println!();
    println!("providers:");
    for p in &config.providers {
        let detail = p.kind.describe();
        println!(
            "  {:<16} {:<15} {}/s (burst {}), timeout {}  {detail}",
            p.name,
            p.kind.as_str(),
            p.rate_limit.per_second,
            p.rate_limit.burst,
            humantime::format_duration(p.timeout)
        );
    }
    println!();
    println!("routes (longest prefix wins; then failover in order):");
    for r in &config.routes {
        println!(
            "  {:<6} {:<10} {}",
            r.channel,
            r.prefix.as_deref().unwrap_or("(default)"),
            r.providers.join(" -> ")
        );
    }
    if !config.prices.is_empty() {
        println!();
        println!("prices (estimates where a provider does not say its cost):");
        for p in &config.prices {
            println!(
                "  {:<16} {:<8} {} per segment",
                p.provider, p.prefix, p.per_segment
            );
        }
    }
    println!();
    println!(
        "circuit breaker: {} transient failures in a row skip a provider for {}",
        config.circuit_breaker.failures,
        humantime::format_duration(config.circuit_breaker.cooldown)
    );
    println!(
        "retry: for {} (an OTP: its TTL), at most {} attempts, {} doubling to {}{}",
        humantime::format_duration(config.retry.give_up_after),
        config.retry.max_attempts,
        humantime::format_duration(config.retry.initial_delay),
        humantime::format_duration(config.retry.max_delay),
        if config.retry.jitter {
            ", with jitter"
        } else {
            ""
        }
    );
    println!("OTP codes sealed at rest with {otp_key}");
    println!();
    println!("SMS templates (with a 6-digit code and sample values):");
    let vars = crate::templates::sample_vars();
    for (name, locale, parts) in templates.catalogue() {
        if !parts.contains("sms.txt") {
            continue;
        }
        // The set passed the check the sending commands make; a template
        // that needs values the samples lack (another variable, a number)
        // is fine, and its length depends on them.
        match templates.render(name, locale, Channel::Sms, &vars) {
            Ok(r) => {
                let info = count_segments(&r.text);
                println!(
                    "  {name:<12} {locale:<4} {} {:>3} units, {} segment{}",
                    info.encoding,
                    info.units,
                    info.segments,
                    if info.segments == 1 { "" } else { "s" }
                );
            }
            Err(crate::templates::TemplateError::MissingVariable { variable, .. }) => {
                println!("  {name:<12} {locale:<4} not counted: its length depends on `{variable}`")
            }
            Err(e) => println!("  {name:<12} {locale:<4} not counted with sample values: {e}"),
        }
    }
    let mut email = BTreeMap::new();
    for (name, locale, parts) in templates.catalogue() {
        if parts.contains("email.txt") {
            email.entry(name).or_insert_with(Vec::new).push(locale);
        }
    }
    println!();
    println!("email templates:");
    for (name, locales) in email {
        println!("  {name:<12} {}", locales.join(", "));
    }
    Ok(())
}
