//! `quickdraw serve`: TensorFlow Serving's REST and gRPC APIs over a folder of exported versions
//! (`<base>/<version>/model.onnx`), or several models and versions from a TF Serving model
//! config file, new versions loaded without a restart, the drawing page at `/`, optional request
//! logging. The server itself lives in `quickdraw_serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use quickdraw_data::validate;
use quickdraw_serve::batching::{self, BatchConfig};
use quickdraw_serve::config::{ModelEntry, VersionPolicy, read_model_config};
use quickdraw_serve::conn::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Timeouts};
use quickdraw_serve::{Limits, ServeConfig};

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Folder of integer version folders, each an export (`export/` holding `export/3/`).
    #[arg(
        long,
        alias = "model_base_path",
        required_unless_present = "model_config_file",
        conflicts_with = "model_config_file"
    )]
    pub model_base_path: Option<PathBuf>,
    /// The model's name in URLs: /v1/models/<name>.
    #[arg(
        long,
        alias = "model_name",
        default_value = "quickdraw",
        conflicts_with = "model_config_file"
    )]
    pub model_name: String,
    /// TF Serving's model config file (protobuf text format: `model_config_list { config {
    /// name: .. base_path: .. model_version_policy { .. } } config { .. } }`) instead of
    /// --model-base-path: every model under its own name, each serving the versions its policy
    /// selects (`latest { num_versions: N }`, default 1; `all {}`; `specific { versions: .. }`).
    #[arg(long, alias = "model_config_file", value_name = "FILE")]
    pub model_config_file: Option<PathBuf>,
    /// TF Serving's monitoring config file (`prometheus_config { enable: true path: ".." }`):
    /// where the Prometheus metrics are served, or `enable: false` for none. Default: on, at
    /// /monitoring/prometheus/metrics and /metrics.
    #[arg(long, alias = "monitoring_config_file", value_name = "FILE")]
    pub monitoring_config_file: Option<PathBuf>,
    /// TCP port of the gRPC API (TF Serving's PredictionService and ModelService), as TF
    /// Serving's --port; 0 picks a free one (the address is printed).
    #[arg(long, default_value_t = 8500)]
    pub port: u16,
    /// TCP port of the REST API and the drawing page; 0 serves no REST API (as TF Serving);
    /// `free` picks a free port (the address is printed).
    #[arg(
        long,
        alias = "rest_api_port",
        default_value = "8501",
        value_name = "PORT|free",
        value_parser = rest_port
    )]
    pub rest_api_port: RestPort,
    /// Address to listen on; 0.0.0.0 exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Seconds between looks at the base path for new versions.
    #[arg(
        long,
        alias = "file-system-poll-wait-seconds",
        alias = "file_system_poll_wait_seconds",
        default_value_t = 2.0
    )]
    pub poll_seconds: f64,
    /// Log every served drawing as QuickDraw raw NDJSON (plus model version and prediction) into
    /// DIR/<class>.ndjson: readable by `convert` and `skew`.
    #[arg(long, value_name = "DIR")]
    pub log_requests: Option<PathBuf>,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Most instances per request (413 above).
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most strokes per drawing (413 above; at most the converter's limit).
    #[arg(long, default_value_t = validate::MAX_STROKES)]
    pub max_strokes: usize,
    /// Most points per drawing (413 above; at most the converter's limit).
    #[arg(long, default_value_t = validate::MAX_POINTS)]
    pub max_points: usize,
    /// Origin allowed to call the API from a browser (CORS); repeatable; default: any origin.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    #[command(flatten)]
    pub runtime: super::RuntimeArgs,
    /// Merge the requests that wait at the same time (for the same version) into one inference
    /// call, as TF Serving's --enable_batching: more throughput under load, no wait when idle.
    #[arg(long, alias = "enable_batching")]
    pub enable_batching: bool,
    /// With batching: most rows (instances) per inference call (a larger request runs alone).
    #[arg(
        long,
        alias = "max_batch_size",
        requires = "enable_batching",
        default_value_t = batching::DEFAULT_MAX_BATCH_SIZE
    )]
    pub max_batch_size: usize,
    /// With batching: how long a batch's first request may wait for more (0: never waits).
    #[arg(
        long,
        alias = "batch_timeout_micros",
        requires = "enable_batching",
        default_value_t = 0
    )]
    pub batch_timeout_micros: u64,
    /// Threads running inference; default: one per core.
    #[arg(long, alias = "num_batch_threads")]
    pub num_batch_threads: Option<usize>,
    /// How many nice steps below the HTTP threads the inference threads run (Linux; 0: the
    /// same priority). Lets requests be read and answered without waiting behind inference.
    #[arg(long, default_value_t = batching::DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub inference_nice: i32,
    /// Most requests waiting for inference; more are answered 503.
    #[arg(long, default_value_t = batching::DEFAULT_MAX_ENQUEUED)]
    pub max_enqueued: usize,
    /// Seconds a client has to send a whole request header (from connecting, or from the first
    /// byte of its next request); slower connections are closed.
    #[arg(long, default_value_t = DEFAULT_HEADER_READ_TIMEOUT.as_secs_f64())]
    pub header_read_timeout_secs: f64,
    /// Predictions in the drift window (the quickdraw_drift_psi gauges compare the most recent
    /// ones with the training distribution in the export's assets/drift_reference.json).
    #[arg(long, default_value_t = quickdraw_serve::drift::DEFAULT_WINDOW)]
    pub drift_window: usize,
    /// Drift PSI above which a warning is logged (0.25: a major shift).
    #[arg(long, default_value_t = quickdraw_serve::drift::DEFAULT_THRESHOLD)]
    pub drift_threshold: f64,
    /// Log lines as text or as JSON objects (one per line, for log collectors). Filter with
    /// RUST_LOG (e.g. `info` hides the per-request lines, `quickdraw_serve=debug`); default:
    /// `info,quickdraw_serve::access=debug` (`warn` with --quiet).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds a kept-alive connection may wait for its next request before it is closed.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    pub idle_timeout_secs: f64,
}

/// How `serve` writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber of `serve`: stderr, RUST_LOG's filter or the default one.
fn init_logs(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "warn".to_string()
    } else {
        format!("info,{}=debug", quickdraw_serve::api::ACCESS_LOG)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Fails only when a subscriber is already installed (then that one logs).
    let _ = match format {
        LogFormat::Text => fmt.with_ansi(false).try_init(),
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
    };
}

/// `--rest-api-port`: off (0), a free port (`free`), or a port.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestPort(pub Option<u16>);

fn rest_port(s: &str) -> Result<RestPort, String> {
    match s {
        "free" => Ok(RestPort(Some(0))),
        _ => match s.parse::<u16>() {
            Ok(0) => Ok(RestPort(None)),
            Ok(p) => Ok(RestPort(Some(p))),
            Err(_) => Err(format!("{s:?} is not a port (0-65535) or `free`")),
        },
    }
}

/// A timeout flag's value, which must be a positive number of seconds.
fn seconds(flag: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(v.is_finite() && v > 0.0, "--{flag} must be > 0 seconds");
    Ok(Duration::from_secs_f64(v))
}

/// The models to serve: `--model-base-path`/`--model-name` (its newest version), or every model
/// of `--model_config_file` with its version policy.
fn models_of(a: &ServeArgs) -> anyhow::Result<Vec<ModelEntry>> {
    let Some(file) = &a.model_config_file else {
        let base = a
            .model_base_path
            .clone()
            .expect("clap requires one of the two");
        return Ok(vec![ModelEntry {
            name: a.model_name.clone(),
            base_path: base,
            policy: VersionPolicy::Latest(1),
        }]);
    };
    Ok(read_model_config(file)?)
}

/// The metrics paths `--monitoring_config_file` asks for (the default ones without it).
fn metrics_paths_of(a: &ServeArgs) -> anyhow::Result<Vec<String>> {
    use quickdraw_serve::api::{METRICS_PATH, METRICS_PATH_SHORT};
    let Some(file) = &a.monitoring_config_file else {
        return Ok(vec![METRICS_PATH.into(), METRICS_PATH_SHORT.into()]);
    };
    let m = quickdraw_serve::config::read_monitoring_config(file)?;
    Ok(match (m.enable, m.path) {
        (false, _) => Vec::new(),
        (true, Some(p)) => vec![p],
        (true, None) => vec![METRICS_PATH.into()],
    })
}

pub fn run(a: ServeArgs, ctx: Ctx) -> anyhow::Result<()> {
    init_logs(a.log_format, ctx.quiet);
    let models = models_of(&a)?;
    // What the error context names: the config file, or the one base path.
    let what = match &a.model_config_file {
        Some(f) => f.display().to_string(),
        None => models[0].base_path.display().to_string(),
    };
    let metrics_paths = metrics_paths_of(&a)?;
    anyhow::ensure!(
        a.poll_seconds.is_finite() && a.poll_seconds > 0.0,
        "--poll-seconds must be > 0"
    );
    let limits = Limits {
        max_body_bytes: a.max_body_bytes,
        max_batch: a.max_batch.max(1),
        max_strokes: a.max_strokes.min(validate::MAX_STROKES),
        max_points: a.max_points.min(validate::MAX_POINTS),
    };
    anyhow::ensure!(a.max_batch_size >= 1, "--max-batch-size must be at least 1");
    anyhow::ensure!(a.max_enqueued >= 1, "--max-enqueued must be at least 1");
    anyhow::ensure!(
        a.num_batch_threads != Some(0),
        "--num-batch-threads must be at least 1"
    );
    let mut batching = if a.enable_batching {
        BatchConfig {
            max_batch_size: a.max_batch_size,
            batch_timeout: Duration::from_micros(a.batch_timeout_micros),
            ..BatchConfig::batched()
        }
    } else {
        BatchConfig::unbatched()
    };
    batching.max_enqueued = a.max_enqueued;
    batching.nice = a.inference_nice;
    if let Some(n) = a.num_batch_threads {
        batching.num_batch_threads = n;
    }
    anyhow::ensure!(
        a.drift_window >= quickdraw_serve::drift::MIN_WINDOW,
        "--drift-window must be at least {}",
        quickdraw_serve::drift::MIN_WINDOW
    );
    anyhow::ensure!(
        a.drift_threshold.is_finite() && a.drift_threshold > 0.0,
        "--drift-threshold must be > 0"
    );
    let timeouts = Timeouts {
        header_read: seconds("header-read-timeout-secs", a.header_read_timeout_secs)?,
        idle: seconds("idle-timeout-secs", a.idle_timeout_secs)?,
    };
    let cfg = ServeConfig {
        models,
        metrics_paths,
        host: a.host,
        rest_port: a.rest_api_port.0,
        grpc_port: a.port,
        poll_interval: Duration::from_secs_f64(a.poll_seconds),
        limits,
        log_dir: a.log_requests,
        cors_origins: a.cors_origins,
        quiet: ctx.quiet,
        runtime: a.runtime.resolve()?,
        batching,
        timeouts,
        drift: quickdraw_serve::drift::DriftConfig {
            window: a.drift_window,
            threshold: a.drift_threshold,
        },
    };
    quickdraw_serve::serve_blocking(cfg).with_context(|| format!("serving {what}"))
}
