//! Serving the API: HTTP/1.1 over hyper with an accept loop of tuma's own.
//!
//! Every connection is bounded: its request head must arrive within
//! `api.header_read_timeout` (from the connection's start, or from the first
//! byte of a later request), its body within `api.body_read_timeout` (else
//! 408), and a keep-alive connection idle for `api.idle_timeout` is closed.
//! At most `api.max_connections` are open (fewer if the file limit is lower):
//! past that, the connection idle the longest is closed to make room, so a
//! flood of idle connections never locks out a real client; only when every
//! connection is busy with a request does accepting wait for one to finish.
//! Accept errors (out of file descriptors, say) are logged and accepting
//! goes on. On shutdown, idle connections close at once and in-flight
//! requests finish.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::ApiState;
use super::error::ApiError;
use crate::config::ApiConfig;

/// File descriptors kept free of client connections (database pools,
/// provider calls, files).
const FD_RESERVE: u64 = 256;
/// Most headers in one request (431 past it).
pub const MAX_HEADERS: usize = 100;

/// The two ends of a request's connection, in its extensions: the console
/// rate-limits failed sign-ins per peer and sets `Secure` on its cookie unless
/// it is served on loopback.
#[derive(Debug, Clone, Copy)]
pub struct ConnAddrs {
    /// The client.
    pub peer: std::net::SocketAddr,
    /// The address tuma accepted it on.
    pub local: std::net::SocketAddr,
}

/// The connection limits, from `[api]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`ApiConfig::header_read_timeout`].
    pub header_read_timeout: Duration,
    /// See [`ApiConfig::body_read_timeout`].
    pub body_read_timeout: Duration,
    /// See [`ApiConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`ApiConfig::max_connections`].
    pub max_connections: usize,
    /// See [`ApiConfig::max_header_bytes`].
    pub max_header_bytes: usize,
}

impl Limits {
    /// The limits `api` sets.
    pub fn from_config(api: &ApiConfig) -> Limits {
        Limits {
            header_read_timeout: api.header_read_timeout,
            body_read_timeout: api.body_read_timeout,
            idle_timeout: api.idle_timeout,
            max_connections: api.max_connections,
            max_header_bytes: api.max_header_bytes,
        }
    }
}

/// Raises the soft limit on open files to the hard limit (Unix), and returns
/// the soft limit now in force (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write `lim`.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let before = lim.rlim_cur;
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    lim.rlim_cur = before;
                }
            }
        }
        #[allow(
            clippy::useless_conversion,
            reason = "rlim_t is u64 on some targets and not on others"
        )]
        Some(u64::from(lim.rlim_cur))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in the service. `head_since`: when the current request
    /// head began (the connection's start, or the first byte of a later
    /// request); `None` while a keep-alive connection waits.
    Idle {
        since: Instant,
        head_since: Option<Instant>,
    },
    /// This many requests in the service (or their responses being sent).
    Busy(usize),
    /// Being closed: no new request starts on it.
    Closing,
}

/// One open connection, as the accept loop and the reaper see it.
#[derive(Debug)]
struct Slot {
    phase: Mutex<Phase>,
    close: Notify,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            phase: Mutex::new(Phase::Idle {
                since: now,
                head_since: Some(now),
            }),
            close: Notify::new(),
        }
    }

    /// A request starts; false if the connection is closing.
    fn begin(&self) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match *phase {
            Phase::Closing => false,
            Phase::Busy(n) => {
                *phase = Phase::Busy(n + 1);
                true
            }
            Phase::Idle { .. } => {
                *phase = Phase::Busy(1);
                true
            }
        }
    }

    /// A request (and its response) finished.
    fn end(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            Phase::Busy(_) => Phase::Idle {
                since: Instant::now(),
                head_since: None,
            },
            other => other,
        };
    }

    /// Bytes arrived: on a waiting keep-alive connection, a request head begins.
    fn bytes_read(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Idle {
            since,
            head_since: None,
        } = *phase
        {
            *phase = Phase::Idle {
                since,
                head_since: Some(Instant::now()),
            };
        }
    }

    /// Closes the connection if it is idle; true if it was.
    fn close_if_idle(&self) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*phase, Phase::Idle { .. }) {
            *phase = Phase::Closing;
            drop(phase);
            self.close.notify_one();
            true
        } else {
            false
        }
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct Registry {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
}

impl Registry {
    fn add(&self, slot: Arc<Slot>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, slot);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection idle the longest; false if none is idle.
    fn evict_longest_idle(&self) -> bool {
        let slots = self.lock();
        let mut idle: Vec<(Instant, &Arc<Slot>)> = slots
            .values()
            .filter_map(
                |s| match *s.phase.lock().unwrap_or_else(|e| e.into_inner()) {
                    Phase::Idle { since, .. } => Some((since, s)),
                    _ => None,
                },
            )
            .collect();
        idle.sort_by_key(|(since, _)| *since);
        idle.iter().any(|(_, s)| s.close_if_idle())
    }

    /// Closes every idle connection.
    fn close_idle(&self) {
        for slot in self.lock().values() {
            slot.close_if_idle();
        }
    }

    /// Closes idle connections past their timeout.
    fn reap(&self, limits: &Limits, now: Instant) {
        for slot in self.lock().values() {
            let expired = match *slot.phase.lock().unwrap_or_else(|e| e.into_inner()) {
                Phase::Idle {
                    head_since: Some(t),
                    ..
                } => now.duration_since(t) >= limits.header_read_timeout,
                Phase::Idle {
                    since,
                    head_since: None,
                } => now.duration_since(since) >= limits.idle_timeout,
                _ => false,
            };
            if expired {
                slot.close_if_idle();
            }
        }
    }
}

/// A TCP stream that tells its slot when bytes arrive.
struct Watched {
    stream: TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A request body that must arrive in full before its deadline.
struct DeadlineBody {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err("request body read timeout".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends its request on the slot when dropped.
struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its connection busy until it is sent.
struct HeldBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request line and headers' size, as sent (near enough).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 11;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// One request through the router, under the connection's limits.
async fn handle(
    router: Router,
    limits: Limits,
    slot: Arc<Slot>,
    addrs: Option<ConnAddrs>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if let Some(addrs) = addrs {
        req.extensions_mut().insert(addrs);
    }
    if !slot.begin() {
        return Ok(closing(
            ApiError::Unavailable("the connection is closing".into()).into_response(),
        ));
    }
    let busy = Busy(slot);
    if req.headers().len() > MAX_HEADERS {
        return Ok(closing(
            ApiError::HeadersTooLarge(format!("more than {MAX_HEADERS} headers")).into_response(),
        ));
    }
    let size = head_bytes(&req);
    if size > limits.max_header_bytes {
        return Ok(closing(
            ApiError::HeadersTooLarge(format!(
                "the request line and headers are larger than {} bytes (api.max_header_bytes)",
                limits.max_header_bytes
            ))
            .into_response(),
        ));
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    let deadline = limits.body_read_timeout;
    let req = req.map(move |inner| {
        Body::new(DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(deadline)),
            timed_out: flag,
        })
    });
    let response = match router.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = if timed_out.load(Ordering::SeqCst) {
        closing(ApiError::BodyTimeout(limits.body_read_timeout).into_response())
    } else {
        response
    };
    Ok(response.map(|inner| Body::new(HeldBody { inner, _busy: busy })))
}

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// How many finished handshakes the kernel may hold for the accept loop
/// (capped by the system's `net.core.somaxconn`). tokio's default of 1,024
/// is too few for a burst: past it, Linux drops the handshake's last packet,
/// and a client that connected but sends nothing believes itself connected
/// while tuma never sees it, so no timeout of tuma's ever closes it.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` (`host:port`) with a backlog of [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Serves `state`'s API on `listener` until `shutdown` resolves, then
/// finishes in-flight requests and returns.
pub async fn serve_state(
    state: ApiState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = Limits::from_config(&state.app.config.api);
    serve_router(super::router(state), limits, listener, shutdown).await
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves,
/// then closes idle connections, finishes in-flight requests and returns.
pub async fn serve_router(
    router: Router,
    mut limits: Limits,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(files) = raise_fd_limit() {
        let room = usize::try_from(files.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
        if room < limits.max_connections {
            warn!(
                configured = limits.max_connections,
                open_files_limit = files,
                "api.max_connections is above what the open-files limit allows; capping at {room}"
            );
            limits.max_connections = room;
        }
    }
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // tuma's reaper times request heads (hyper's timer would also
        // close keep-alive connections at the header timeout).
        .header_read_timeout(None)
        // Past `max_header_bytes` tuma answers 431 itself, with a body;
        // hyper's own (bare) 431 only past four times that.
        .max_buf_size((limits.max_header_bytes * 4).max(64 * 1024))
        .max_headers(MAX_HEADERS * 4);
    let http = Arc::new(http);
    let registry = Arc::new(Registry::default());
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tokio::pin!(shutdown);

    let reaper = {
        let registry = registry.clone();
        let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
            .clamp(Duration::from_millis(25), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                registry.reap(&limits, Instant::now());
            }
        })
    };

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if is_fd_exhaustion(&e) {
                    warn!(error = %e, "accept failed: out of file descriptors; closing an idle connection");
                    registry.evict_longest_idle();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else {
                    debug!(error = %e, "accept failed; accepting on");
                }
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the cap: make room by closing the connection idle the
                // longest; when none is idle, wait for a request to finish.
                registry.evict_longest_idle();
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let addrs = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(peer), Ok(local)) => Some(ConnAddrs { peer, local }),
            _ => None,
        };
        let slot = Arc::new(Slot::new(Instant::now()));
        let id = registry.add(slot.clone());
        let io = TokioIo::new(Watched {
            stream,
            slot: slot.clone(),
        });
        let service = {
            let router = router.clone();
            let slot = slot.clone();
            hyper::service::service_fn(move |req| {
                handle(router.clone(), limits, slot.clone(), addrs, req)
            })
        };
        let http = http.clone();
        let registry = registry.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let conn = http.serve_connection(io, service);
            tokio::pin!(conn);
            let mut stopping = *stop.borrow();
            if stopping {
                conn.as_mut().graceful_shutdown();
            }
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // Only ever asked of an idle connection: nothing is in flight.
                    () = slot.close.notified() => break,
                    changed = stop.changed(), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            registry.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    // Connections without a request in flight close now (hyper closes the
    // others once their response is sent); the reaper still times out a
    // request head that is never finished.
    registry.close_idle();
    // Every connection returns its permit when it ends.
    let total = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(total).await;
    reaper.abort();
    info!("HTTP API stopped");
    Ok(())
}
