//! tuma's integration tests, one binary: each module runs on SQLite and on
//! Postgres (`TUMA_TEST_POSTGRES_URL`), with a fresh database per test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test (and its helpers) fails"
)]

mod api;
mod api_batch;
mod api_intake;
mod batch;
mod cancel;
mod cli;
mod cli_contract;
mod console;
mod console_browser;
mod contract;
mod delivery;
mod late;
mod ops_api;
mod outage;
mod providers;
mod pumping;
mod queue;
mod receipts;
mod recovery;
mod replay;
mod reports;
mod scale;
mod sealed;
mod server;
mod spans;
mod spend;
mod structure;
mod support;
mod suppression;
mod vonage;
mod webhooks;
