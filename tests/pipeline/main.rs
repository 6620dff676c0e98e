//! tuma's integration tests, one binary: each module runs on SQLite and on
//! Postgres (`TUMA_TEST_POSTGRES_URL`), with a fresh database per test.

mod api;
mod batch;
mod cli;
mod delivery;
mod ops_api;
mod providers;
mod receipts;
mod recovery;
mod replay;
mod reports;
mod support;
