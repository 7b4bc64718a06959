//! The accept loop: HTTP/1.1 connections served by hyper with a header-read timeout and an idle
//! keep-alive timeout (which `axum::serve` does not offer), and graceful shutdown.
//!
//! Each connection is in one of three phases: waiting for a request's header (from the accept,
//! or from the first byte of the next request on a kept-alive connection), busy with a request
//! (the handler runs; no timeout here), or idle after an answer. A watchdog closes the
//! connection when the header phase outlasts [`Timeouts::header_read`] (slow or stalled
//! headers, "slowloris") or the idle phase outlasts [`Timeouts::idle`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Default `--header-read-timeout-secs`: a whole request header must arrive within this (nginx's
/// `client_header_timeout` is 60 s; our headers are a few hundred bytes from scripts and the
/// drawing page, so 10 s is generous and frees a stalled connection six times sooner).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--idle-timeout-secs`: how long a kept-alive connection may wait for its next request
/// (nginx's `keepalive_timeout`, 75 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Connection timeouts (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_read: DEFAULT_HEADER_READ_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request header since then.
    Header(Instant),
    Busy,
    /// Answered; waiting for the next request since then.
    Idle(Instant),
}

/// A connection's phase, shared by its reader, its service and its watchdog.
#[derive(Debug)]
struct Tracker {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Tracker {
    fn set(&self, to: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = to;
        self.changed.notify_one();
    }
    fn get(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// When the current phase times out (`None` while busy).
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        match self.get() {
            Phase::Header(since) => Some(since + t.header_read),
            Phase::Idle(since) => Some(since + t.idle),
            Phase::Busy => None,
        }
    }
    /// Bytes arrived: an idle connection starts reading its next header.
    fn read_some(&self) {
        if let Phase::Idle(_) = self.get() {
            self.set(Phase::Header(Instant::now()));
        }
    }
}

/// The socket, telling its tracker when bytes arrive.
struct Tracked {
    io: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracker.read_some();
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` until `signal` completes, then stops accepting, lets every
/// connection finish its request in flight (idle ones close at once) and returns.
pub async fn serve_with_timeouts(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    signal: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, router.clone(), timeouts, stop_rx.clone()));
                }
                // Out of file descriptors and the like: wait instead of spinning (as axum does).
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut signal => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// One connection: hyper's HTTP/1.1 state machine, raced against the phase's deadline and the
/// shutdown signal. A timed-out connection is dropped, which closes the socket.
async fn connection(
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let tracker = Arc::new(Tracker {
        phase: Mutex::new(Phase::Header(Instant::now())),
        changed: Notify::new(),
    });
    let io = TokioIo::new(Tracked {
        io: stream,
        tracker: tracker.clone(),
    });
    let svc_tracker = tracker.clone();
    let inner = TowerToHyperService::new(router);
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        svc_tracker.set(Phase::Busy);
        let (tracker, answer) = (svc_tracker.clone(), inner.call(req));
        async move {
            let res = answer.await;
            tracker.set(Phase::Idle(Instant::now()));
            res
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = tracker.deadline(&timeouts);
        tokio::select! {
            _ = conn.as_mut() => break,
            () = tracker.changed.notified() => {}
            () = sleep_until(deadline) => {
                if tracker.deadline(&timeouts).is_some_and(|d| d <= Instant::now()) {
                    break;
                }
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
