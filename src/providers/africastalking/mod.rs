//! `kind = "africastalking"`: SMS through Africa's Talking's messaging API.
//!
//! One message is one `POST {base_url}/version1/messaging` with the API key
//! in the `apiKey` header and a form body (`username`, `to`, `message`,
//! optional `from` and `enqueue=1`). Africa's Talking answers 201 with one
//! entry per recipient; that entry's `statusCode` decides the outcome
//! ([`classify`] holds the table). Email is refused as a permanent error.
//!
//! ```toml
//! [[provider]]
//! name = "africastalking"
//! kind = "africastalking"
//! username = "mtaadao"          # `sandbox` talks to the sandbox unless base_url is set
//! api_key_env = "AT_API_KEY"    # the environment variable holding the API key
//! sender_id = "MTAADAO"         # optional: sent as `from` (sender ID or shortcode)
//! # base_url = "https://api.africastalking.com"
//! # enqueue = false             # true sends `enqueue=1` (for bulk sends)
//! rate_limit = { per_second = 10, burst = 10 }
//! timeout = "10s"
//! ```
//!
//! What this adapter never does: follow redirects (the API key would go with
//! them), put the API key in an error, log line or dry run, or touch the
//! database.

mod config;
mod kind;
pub mod receipt;
mod service;
#[cfg(test)]
mod tests;

pub use config::{AfricasTalkingConfig, DEFAULT_BASE_URL, SANDBOX_BASE_URL};
pub use kind::KIND;
pub use service::{AfricasTalking, classify, recipient_gone};
