//! `tuma serve`: the HTTP API and the workers in one process, or the API
//! alone (`--no-workers`).

use std::sync::Arc;

use anyhow::Context;

use crate::app::App;

/// Listens on `listen` and serves, with the workers when `workers`, until
/// SIGTERM or Ctrl-C.
pub(super) async fn run(app: Arc<App>, listen: &str, workers: bool) -> anyhow::Result<()> {
    let listener = crate::api::server::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen there"))?;
    if workers {
        crate::serve::serve(app, listener).await?;
    } else {
        crate::serve::serve_api_only(app, listener).await?;
    }
    Ok(())
}
