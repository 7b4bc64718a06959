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
    /// The models: each a name, a base path of `<base>/<version>/` export folders and the
    /// versions to serve (`--model_base_path`: one model, the newest version). The first one
    /// is the drawing page's.
    pub models: Vec<config::ModelEntry>,
    pub host: String,
    /// TCP port of the REST API and the page: `None` serves none (TF Serving's
    /// `--rest_api_port=0`); 0 picks a free port (printed on start).
    pub rest_port: Option<u16>,
    /// TCP port of the gRPC API ([`grpc`]); 0 picks a free port (printed on start).
    pub grpc_port: u16,
    /// How often the base paths are looked at for new versions.
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
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server: {0}")]
    Grpc(String),
    #[error("model {model:?}: {source}")]
    Store {
        model: String,
        source: store::StoreError,
    },
    #[error("no model to serve")]
    NoModel,
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

/// Runs the server until ctrl-c (or SIGTERM): loads each model's versions (as its version
/// policy says), polls the base paths for new ones, serves the APIs and the drawing page, then
/// shuts down gracefully.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    if cfg.models.is_empty() {
        return Err(ServeError::NoModel);
    }
    let mut models = Vec::new();
    for m in &cfg.models {
        let store = ModelStore::open_policy(
            &m.base_path,
            cfg.quiet,
            cfg.runtime.clone(),
            m.policy.clone(),
        )
        .map_err(|source| ServeError::Store {
            model: m.name.clone(),
            source,
        })?;
        if store.current().is_none() {
            tracing::warn!(
                "model {:?}: no loadable version under {} yet ({}); waiting for <base>/<version>/ folders (polling every {:?})",
                m.name,
                m.base_path.display(),
                m.policy,
                cfg.poll_interval
            );
        }
        models.push((m.name.clone(), Arc::new(store)));
    }
    let stores: Vec<Arc<ModelStore>> = models.iter().map(|(_, s)| s.clone()).collect();
    let log = match &cfg.log_dir {
        Some(d) => Some(
            reqlog::RequestLog::open(d).map_err(|source| ServeError::Log {
                path: d.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let state = AppState::with_models(
        models,
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

    let poll_stores = stores.clone();
    let interval = cfg.poll_interval.max(Duration::from_millis(10));
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let stores = poll_stores.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for s in &stores {
                    s.refresh();
                }
            })
            .await;
        }
    });

    let rest = match cfg.rest_port {
        Some(port) => Some(bind(&cfg.host, port).await?),
        None => None,
    };
    let grpc = bind(&cfg.host, cfg.grpc_port).await?;
    let grpc_addr: SocketAddr = grpc.local_addr()?;
    // Per model: `model "a" version 3 from /a` (several versions: `versions 3, 2`).
    let served = cfg
        .models
        .iter()
        .zip(&stores)
        .map(|(m, s)| {
            let v: Vec<String> = s.served_versions().iter().map(u64::to_string).collect();
            let v = match v.len() {
                0 => "version none yet".to_string(),
                1 => format!("version {}", v[0]),
                _ => format!("versions {}", v.join(", ")),
            };
            format!("model {:?} {v} from {}", m.name, m.base_path.display())
        })
        .collect::<Vec<_>>()
        .join(", ");
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
                cfg.models[0].name
            )
        }
        None => "no REST API (--rest-api-port 0)".to_string(),
    };
    eprintln!(
        "quickdraw serve: {served} (run by {}; {batching}); {listening}; gRPC on {grpc_addr} (tensorflow.serving.PredictionService, ModelService)",
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
            // TCP_NODELAY: a response is several HTTP/2 frames (headers, data, trailers); with
            // Nagle's algorithm the last waits for the client's delayed ACK (~40 ms p99 at one
            // connection, measured by `bench serve`).
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
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
