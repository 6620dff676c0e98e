//! `tuma serve`: the HTTP API and the workers in one process, stopped
//! together; with `--no-workers`, the API alone (API-only processes beside
//! `tuma worker` ones).

use std::future::Future;
use std::sync::Arc;

use tracing::{info, warn};

use crate::app::App;
use crate::worker::{self, WorkerError, shutdown_signal};

/// Why `tuma serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP API failed.
    #[error("the HTTP API stopped: {0}")]
    Api(String),
    /// The workers failed.
    #[error(transparent)]
    Workers(#[from] WorkerError),
}

/// Runs the HTTP API on `listener` and the workers in this process until
/// SIGTERM or Ctrl-C: then the API stops accepting and finishes its
/// in-flight requests while the workers finish their in-flight deliveries.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) -> Result<(), ServeError> {
    serve_until(app, listener, shutdown_signal()).await
}

/// The HTTP API alone on `listener`, until SIGTERM or Ctrl-C: no workers and
/// no housekeeping, so what it accepts is sent by `tuma worker` processes
/// on the same database.
pub async fn serve_api_only(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
) -> Result<(), ServeError> {
    info!("serving the HTTP API without workers");
    crate::api::serve(app, listener, async {
        if let Err(e) = shutdown_signal().await {
            warn!(error = %e, "shutdown signal failed; stopping");
        }
    })
    .await
    .map_err(|e| ServeError::Api(e.to_string()))
}

/// [`serve`] until `stop` resolves. Should either half stop on its own, the
/// other is stopped too.
pub async fn serve_until<F>(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    stop: F,
) -> Result<(), ServeError>
where
    F: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    let tx = Arc::new(tx);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let signal_tx = tx.clone();
    let signal = tokio::spawn(async move {
        if let Err(e) = stop.await {
            warn!(error = %e, "shutdown signal failed; stopping");
        }
        signal_tx.send_replace(true);
    });
    let api_tx = tx.clone();
    let api = tokio::spawn(crate::api::serve(
        app.clone(),
        listener,
        stopped(rx.clone()),
    ));
    let api = async move {
        let result = api.await;
        api_tx.send_replace(true);
        result
    };
    let workers_tx = tx.clone();
    let workers = async move {
        let stop_rx = rx.clone();
        let result = worker::run_until(app, async move {
            stopped(stop_rx).await;
            Ok(())
        })
        .await;
        workers_tx.send_replace(true);
        result
    };
    let (api, workers) = tokio::join!(api, workers);
    signal.abort();
    match api {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServeError::Api(e.to_string())),
        Err(e) => return Err(ServeError::Api(e.to_string())),
    }
    Ok(workers?)
}
