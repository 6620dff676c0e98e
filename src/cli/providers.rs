//! `tuma providers`: talk to one provider directly.

use anyhow::bail;
use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(super) enum ProvidersCommand {
    /// Send one test message through one provider, outside the queue (nothing
    /// is recorded), and print its answer.
    Test {
        /// The provider's name in providers.toml.
        name: String,
        /// Phone number or email address.
        #[arg(long)]
        to: String,
        /// Print the exact request, secrets masked, instead of sending it.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(super) async fn test(
    config: &Config,
    name: &str,
    to: &str,
    dry_run: bool,
) -> anyhow::Result<()> {
    let Some(provider) = config.provider(name) else {
        let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "no provider is named `{name}` (configured: {})",
            names.join(", ")
        );
    };
    let recipient = crate::domain::Recipient::parse(to, config.otp.default_region)
        .map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if !provider.kind.channels().contains(&recipient.channel()) {
        bail!(
            "provider `{name}` ({}) cannot send {}",
            provider.kind.as_str(),
            recipient.channel()
        );
    }
    let providers = crate::providers::Providers::from_config(config)?;
    let handle = providers
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("provider `{name}` was not built"))?;
    let text = format!("Test message from tuma via {name}.");
    let content = match &recipient {
        crate::domain::Recipient::Phone(p) => crate::providers::Content::Sms {
            to: p.clone(),
            text,
        },
        crate::domain::Recipient::Email(e) => crate::providers::Content::Email {
            to: e.clone(),
            subject: "tuma test message".into(),
            text,
            html: None,
        },
    };
    let message = crate::providers::OutgoingMessage {
        delivery_id: format!("test-{}", uuid::Uuid::now_v7()),
        kind: crate::domain::DeliveryKind::Notification,
        content,
        code: None,
        valid_for: None,
    };
    if dry_run {
        println!("{}", handle.provider.dry_run(&message));
        return Ok(());
    }
    let started = std::time::Instant::now();
    match tokio::time::timeout(handle.timeout, handle.provider.send(&message)).await {
        Ok(Ok(accepted)) => {
            println!("accepted by {name} in {} ms", started.elapsed().as_millis());
            println!("  message id  {}", accepted.provider_message_id);
            if let Some(s) = accepted.provider_status {
                println!("  status      {s}");
            }
            if let Some(c) = accepted.cost {
                println!("  cost        {c}");
            }
            if let Some(s) = accepted.segments {
                println!("  segments    {s}");
            }
            Ok(())
        }
        Ok(Err(e)) => bail!("{name} refused it: {e}"),
        Err(_) => bail!(
            "{name} did not answer within {}",
            humantime::format_duration(handle.timeout)
        ),
    }
}
