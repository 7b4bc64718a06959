//! QuickDraw serving: exported ONNX models run with tract ([`Predictor`]), a REST API compatible
//! with TensorFlow Serving's ([`api::app`], [`serve`]) and its gRPC API ([`grpc`]), the drawing page, request logs
//! ([`reqlog`]) and training/serving skew statistics ([`skew`]).
//!
//! Nothing here depends on the training stack: the server reads only export folders
//! (`quickdraw_data::signature`).

pub mod api;
pub mod batching;
pub mod config;
pub mod conn;
pub mod drift;
pub mod grpc;
pub mod load;
pub mod metrics;
pub mod onnxruntime;
pub mod predictor;
pub mod proto;
pub mod reqlog;
pub mod request;
pub mod skew;
pub mod store;
/// Tiny ONNX models and exports for tests and benchmarks; not in release builds.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod warmup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use api::{ApiError, AppState, app};
pub use batching::BatchConfig;
pub use onnxruntime::Runtime;
pub use predictor::{PredictError, Predictor, Probabilities};
pub use request::Limits;
pub use store::ModelStore;

/// Everything `quickdraw serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `<base>/<version>/` export folders.
    pub base: PathBuf,
    pub model_name: String,
    pub host: String,
    /// TCP port of the REST API and the page: `None` serves none (TF Serving's
    /// `--rest_api_port=0`); 0 picks a free port (printed on start).
    pub rest_port: Option<u16>,
    /// TCP port of the gRPC API ([`grpc`]); 0 picks a free port (printed on start).
    pub grpc_port: u16,
    /// How often the base path is looked at for new versions.
    pub poll_interval: Duration,
    pub limits: Limits,
    pub log_dir: Option<PathBuf>,
    /// Origins allowed by CORS; empty = any origin.
    pub cors_origins: Vec<String>,
    pub quiet: bool,
    /// The engine that runs the models.
    pub runtime: Runtime,
    /// How requests are run: one inference call each, or merged (`--enable-batching`).
    pub batching: BatchConfig,
    /// Header-read and idle-connection timeouts.
    pub timeouts: conn::Timeouts,
    /// The prediction-drift window and its warning threshold.
    pub drift: drift::DriftConfig,
    /// Where Prometheus metrics are served; empty: metrics off.
    pub metrics_paths: Vec<String>,
    /// The one version to serve (a `specific` version policy); `None`: the newest.
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server: {0}")]
    Grpc(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("request log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CORS origin {0:?} is not a valid header value")]
    Cors(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The CORS layer: browsers on other origins may GET and POST JSON and read our headers.
pub fn cors(origins: &[String]) -> Result<CorsLayer, ServeError> {
    let allow = if origins.is_empty() || origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| ServeError::Cors(o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE])
        .expose_headers([
            HeaderName::from_static(api::VERSION_HEADER),
            HeaderName::from_static(api::REQUEST_ID_HEADER),
        ]))
}

/// Runs the server until ctrl-c (or SIGTERM): loads the newest version, polls the base path for
/// new ones, serves the API and the drawing page, then shuts down gracefully.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let store = Arc::new(ModelStore::open_pinned(
        &cfg.base,
        cfg.quiet,
        cfg.runtime.clone(),
        cfg.version,
    )?);
    if store.current().is_none() {
        tracing::warn!(
            "no loadable version under {} yet; waiting for <base>/<version>/ folders (polling every {:?})",
            cfg.base.display(),
            cfg.poll_interval
        );
    }
    let log = match &cfg.log_dir {
        Some(d) => Some(
            reqlog::RequestLog::open(d).map_err(|source| ServeError::Log {
                path: d.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let state = AppState::with_config(
        &cfg.model_name,
        store.clone(),
        cfg.limits,
        log,
        cfg.quiet,
        api::StateOptions {
            batch: cfg.batching,
            drift: cfg.drift,
            metrics_paths: cfg.metrics_paths.clone(),
        },
    );
    let router = app(state.clone()).layer(cors(&cfg.cors_origins)?);

    let poll_store = store.clone();
    let interval = cfg.poll_interval.max(Duration::from_millis(10));
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = poll_store.clone();
            let _ = tokio::task::spawn_blocking(move || s.refresh()).await;
        }
    });

    let rest = match cfg.rest_port {
        Some(port) => Some(bind(&cfg.host, port).await?),
        None => None,
    };
    let grpc = bind(&cfg.host, cfg.grpc_port).await?;
    let grpc_addr: SocketAddr = grpc.local_addr()?;
    let version = store
        .current()
        .and_then(|p| p.version())
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none yet".into());
    // Always printed (also with --quiet): scripts read the address from it.
    let b = &cfg.batching;
    let batching = if b.enabled {
        format!(
            "batching up to {} rows per call, timeout {} us, {} threads",
            b.max_batch_size,
            b.batch_timeout.as_micros(),
            b.num_batch_threads
        )
    } else {
        format!("no batching, {} inference threads", b.num_batch_threads)
    };
    let batching = format!("{batching} at nice +{}", b.nice);
    let listening = match &rest {
        Some(l) => {
            let local = l.local_addr()?;
            format!(
                "listening on http://{local}/ (REST API http://{local}/v1/models/{})",
                cfg.model_name
            )
        }
        None => "no REST API (--rest-api-port 0)".to_string(),
    };
    eprintln!(
        "quickdraw serve: model {:?} version {version} from {} (run by {}; {batching}); {listening}; gRPC on {grpc_addr} (tensorflow.serving.PredictionService, ModelService)",
        cfg.model_name,
        cfg.base.display(),
        cfg.runtime.name(),
    );
    // One signal stops both servers; each finishes the requests it has.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let grpc_server = tonic::transport::Server::builder()
        .add_routes(grpc::Grpc::new(state).routes())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc),
            stopped(stop_rx.clone()),
        );
    let rest_server = async {
        if let Some(l) = rest {
            conn::serve_with_timeouts(l, router, cfg.timeouts, stopped(stop_rx.clone())).await;
        }
    };
    let (g, ()) = tokio::join!(grpc_server, rest_server);
    poller.abort();
    g.map_err(|e| ServeError::Grpc(e.to_string()))?;
    if !cfg.quiet {
        tracing::info!("quickdraw serve: stopped");
    }
    Ok(())
}

async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener, ServeError> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// [`serve`] on a new multi-threaded tokio runtime (for the synchronous CLI).
pub fn serve_blocking(cfg: ServeConfig) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
