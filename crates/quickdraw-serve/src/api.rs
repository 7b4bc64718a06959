//! The REST API, TensorFlow Serving's (`/v1/models/{name}[/versions/{v}][/metadata|:predict|
//! :classify]`) over one or several models ([`Model`]: a name and its store), plus `/healthz`
//! and the drawing page at `/` (for the first model). [`app`] builds the router (tested with
//! `tower::ServiceExt::oneshot`); `crate::serve` binds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use quickdraw_data::Drawing;
use quickdraw_data::signature::{DType, TensorSpec};
use serde::Serialize;
use serde_json::{Value, json};

use crate::batching::{BatchConfig, BatchStats, Batcher, SubmitError, Task, TaskError};
use crate::drift::{Drift, DriftConfig, Observation};
use crate::metrics::{Metrics, api_of};
use crate::predictor::{Predictor, Probabilities};
use crate::reqlog::{RequestLog, Served};
use crate::request::{
    Instance, Limits, ModelInput, RequestError, parse_classify, parse_predict, to_model_input,
};
use crate::store::ModelStore;

/// Response header naming the model version that answered.
pub const VERSION_HEADER: &str = "x-quickdraw-model-version";
/// Response header with the server's request counter (also in the request log).
pub const REQUEST_ID_HEADER: &str = "x-quickdraw-request-id";

/// The `tracing` target of the access log: one line per request, at debug level (shown by
/// `serve`'s default filter; `RUST_LOG=info` hides them).
pub const ACCESS_LOG: &str = "quickdraw_serve::access";

/// Prometheus metrics, at TensorFlow Serving's path.
pub const METRICS_PATH: &str = "/monitoring/prometheus/metrics";
/// Prometheus metrics, at the path Prometheus scrapes by default.
pub const METRICS_PATH_SHORT: &str = "/metrics";

/// The drawing page, embedded in the binary.
pub const PAGE_HTML: &str = include_str!("page.html");

/// An error answer: `{"error": "..."}` with TensorFlow Serving's status codes.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The methods the path takes, sent as `Allow` (405 answers).
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn with_status(status: StatusCode, m: impl Into<String>) -> Self {
        ApiError {
            status,
            message: m.into(),
            allow: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, m)
    }
    /// 405 for `method` on `uri`, with the methods that path takes (`POST` for `:predict` and
    /// `:classify`, `GET, HEAD` for the rest).
    pub fn method_not_allowed(method: &Method, uri: &Uri) -> Self {
        let verb = uri
            .path()
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'));
        let (allow, hint) = match verb {
            Some((_, v)) => ("POST", format!(" (:{v} takes POST)")),
            None => ("GET, HEAD", String::new()),
        };
        ApiError {
            allow: Some(allow),
            ..Self::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("Malformed request: {method} {uri}: method not allowed{hint}"),
            )
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::with_status(StatusCode::NOT_FOUND, m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::with_status(StatusCode::PAYLOAD_TOO_LARGE, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::with_status(StatusCode::SERVICE_UNAVAILABLE, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::with_status(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        if e.too_large {
            ApiError::too_large(e.message)
        } else {
            ApiError::bad_request(e.message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": self.message}).to_string(),
        )
            .into_response();
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

type ApiResult = Result<Response, ApiError>;

/// How a server's state is set up beyond its model and limits.
#[derive(Debug, Clone)]
pub struct StateOptions {
    pub batch: BatchConfig,
    pub drift: DriftConfig,
    /// The Prometheus metrics' paths (default: TF Serving's and `/metrics`); empty: metrics off
    /// (`--monitoring_config_file` with `enable: false`).
    pub metrics_paths: Vec<String>,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            batch: BatchConfig::unbatched(),
            drift: DriftConfig::default(),
            metrics_paths: vec![METRICS_PATH.into(), METRICS_PATH_SHORT.into()],
        }
    }
}

/// One served model: its name in URLs and gRPC model specs, its versions, its drift window.
#[derive(Debug)]
pub struct Model {
    name: String,
    store: Arc<ModelStore>,
    /// The drift window of the newest served version (fed on the batch threads).
    drift: Drift,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn store(&self) -> &Arc<ModelStore> {
        &self.store
    }
    /// The predictor for a request (the newest served version, or the one asked for), or 404
    /// naming the versions served.
    pub(crate) fn predictor(&self, version: Option<u64>) -> Result<Arc<Predictor>, ApiError> {
        self.store.get(version).ok_or_else(|| {
            let mut e = servable_not_found(&self.name, version);
            let served = self.store.served_versions();
            if !served.is_empty() {
                let list: Vec<String> = served.iter().map(u64::to_string).collect();
                e.message
                    .push_str(&format!(" (serving versions {})", list.join(", ")));
            }
            e
        })
    }
}

/// Shared server state.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// In the server's order (the model config file's); never empty.
    models: Vec<Arc<Model>>,
    limits: Limits,
    log: Option<RequestLog>,
    requests: AtomicU64,
    /// Where requests wait, in arrival order, for a batch thread to preprocess and run them
    /// (merged with others when batching is on); inference never runs on the async runtime.
    batcher: Batcher,
    metrics: Metrics,
    /// Where the Prometheus metrics are served; empty: no metrics (nothing is observed).
    metrics_paths: Vec<String>,
    quiet: bool,
}

impl AppState {
    /// State without batching: one inference call per request ([`BatchConfig::unbatched`]).
    pub fn new(
        model_name: &str,
        store: Arc<ModelStore>,
        limits: Limits,
        log: Option<RequestLog>,
        quiet: bool,
    ) -> Self {
        Self::with_batching(
            model_name,
            store,
            limits,
            log,
            quiet,
            BatchConfig::unbatched(),
        )
    }

    /// State whose requests are run as `batch` says (starts its batch threads).
    pub fn with_batching(
        model_name: &str,
        store: Arc<ModelStore>,
        limits: Limits,
        log: Option<RequestLog>,
        quiet: bool,
        batch: BatchConfig,
    ) -> Self {
        Self::with_config(
            model_name,
            store,
            limits,
            log,
            quiet,
            StateOptions {
                batch,
                ..StateOptions::default()
            },
        )
    }

    /// State whose requests are run as `opts` says.
    pub fn with_config(
        model_name: &str,
        store: Arc<ModelStore>,
        limits: Limits,
        log: Option<RequestLog>,
        quiet: bool,
        opts: StateOptions,
    ) -> Self {
        Self::with_models(vec![(model_name.into(), store)], limits, log, quiet, opts)
    }

    /// State serving several models (name, store), each under its own name; the first one is
    /// the drawing page's. Panics on no model or a name given twice (the config file's reader
    /// refuses both).
    pub fn with_models(
        models: Vec<(String, Arc<ModelStore>)>,
        limits: Limits,
        log: Option<RequestLog>,
        quiet: bool,
        opts: StateOptions,
    ) -> Self {
        let StateOptions {
            batch,
            drift,
            metrics_paths,
        } = opts;
        assert!(!models.is_empty(), "a server serves at least one model");
        let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "model {n:?} given twice");
        }
        let batcher = Batcher::new(batch);
        // Fails only on an invalid metric definition (a bug, caught by the tests).
        let metrics = Metrics::new(&names, &batcher).expect("the server's metrics register");
        let models = models
            .into_iter()
            .map(|(name, store)| {
                Arc::new(Model {
                    name,
                    store,
                    drift: Drift::new(drift, quiet),
                })
            })
            .collect();
        AppState {
            inner: Arc::new(Inner {
                models,
                limits,
                log,
                requests: AtomicU64::new(0),
                batcher,
                metrics,
                metrics_paths,
                quiet,
            }),
        }
    }
    /// The first model's store.
    pub fn store(&self) -> &Arc<ModelStore> {
        &self.inner.models[0].store
    }
    /// The first model's name in URLs and gRPC model specs.
    pub fn model_name(&self) -> &str {
        &self.inner.models[0].name
    }
    /// Every model served, in the server's order.
    pub fn models(&self) -> &[Arc<Model>] {
        &self.inner.models
    }
    /// The model called `name`, or 404 naming the models served (TF Serving's message first).
    pub fn model(&self, name: &str, version: Option<u64>) -> Result<&Arc<Model>, ApiError> {
        self.inner
            .models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                let mut e = servable_not_found(name, version);
                let names: Vec<String> = self
                    .inner
                    .models
                    .iter()
                    .map(|m| format!("{:?}", m.name))
                    .collect();
                let s = if names.len() == 1 { "" } else { "s" };
                e.message.push_str(&format!(
                    " (no such model; this server serves model{s} {})",
                    names.join(", ")
                ));
                e
            })
    }
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
    /// Whether requests are counted and metrics served.
    pub fn metrics_enabled(&self) -> bool {
        !self.inner.metrics_paths.is_empty()
    }
    /// No access log lines.
    pub fn quiet(&self) -> bool {
        self.inner.quiet
    }
    /// Predict and classify requests answered so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }
    /// How requests are run.
    pub fn batching(&self) -> &BatchConfig {
        self.inner.batcher.config()
    }
    /// Inference calls, requests and rows run so far.
    pub fn batch_stats(&self) -> BatchStats {
        self.inner.batcher.stats()
    }
}

/// The router: every route of the API, CORS left to the caller (`crate::serve` adds it).
pub fn app(state: AppState) -> Router {
    let mut r = Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz));
    for p in &state.inner.metrics_paths {
        r = r.route(p, get(prometheus_metrics));
    }
    r.route("/v1/models/{spec}", get(model_get).post(model_post))
        .route("/v1/models/{name}/metadata", get(metadata_latest))
        .route(
            "/v1/models/{name}/versions/{vspec}",
            get(version_get).post(version_post),
        )
        .route(
            "/v1/models/{name}/versions/{version}/metadata",
            get(metadata_version),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .with_state(state)
}

async fn access_log(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let version = resp
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let secs = t0.elapsed().as_secs_f64();
    if st.metrics_enabled() {
        st.inner.metrics.observe_request(
            &model_of(uri.path()),
            api_of(uri.path()),
            version,
            resp.status().as_str(),
            secs,
        );
    }
    if !st.inner.quiet {
        let v = if version.is_empty() {
            String::new()
        } else {
            format!(" version {version}")
        };
        let (status, ms) = (resp.status().as_u16(), secs * 1e3);
        tracing::debug!(
            target: ACCESS_LOG,
            protocol = "http",
            %method,
            path = %uri,
            status,
            version,
            ms,
            "{method} {uri} -> {status}{v} ({ms:.1} ms)"
        );
    }
    resp
}

/// The model name of a `/v1/models/{name}...` path ("" for other paths), percent-decoded as
/// the router decodes it (`my%20model` is the model `my model`).
fn model_of(path: &str) -> String {
    let raw = path
        .strip_prefix("/v1/models/")
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or("");
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "Malformed request: {method} {uri} (see /v1/models/<name>[/versions/<v>][/metadata|:predict|:classify])"
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(&method, &uri)
}

async fn page(State(st): State<AppState>) -> Html<String> {
    let name = serde_json::to_string(st.model_name()).unwrap_or_else(|_| "\"quickdraw\"".into());
    Html(PAGE_HTML.replace("\"__MODEL_NAME__\"", &name))
}

/// The Prometheus text exposition of [`Metrics`].
async fn prometheus_metrics(State(st): State<AppState>) -> ApiResult {
    let models: Vec<(&ModelStore, &Drift)> = st
        .inner
        .models
        .iter()
        .map(|m| (m.store.as_ref(), &m.drift))
        .collect();
    let text = st
        .inner
        .metrics
        .render(&st.inner.batcher, &models)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

/// `ok` (200) when every model serves a version, 503 otherwise; `model` and `version` are the
/// first model's, `models` lists each one's served versions (newest first).
async fn healthz(State(st): State<AppState>) -> Response {
    let cur = st.store().current();
    let missing: Vec<&str> = st
        .inner
        .models
        .iter()
        .filter(|m| m.store.current().is_none())
        .map(|m| m.name.as_str())
        .collect();
    let status = match missing.as_slice() {
        [] => "ok".to_string(),
        _ if st.inner.models.len() == 1 => "no model version loaded".to_string(),
        m => format!("no version loaded of {}", m.join(", ")),
    };
    let models: Vec<Value> = st
        .inner
        .models
        .iter()
        .map(|m| json!({"name": m.name, "versions": m.store.served_versions()}))
        .collect();
    let cfg = st.batching();
    let stats = st.batch_stats();
    let body = json!({
        "status": status,
        "model": st.model_name(),
        "version": cur.as_ref().and_then(|c| c.version()),
        "models": models,
        "requests": st.requests(),
        "batching": {
            "enabled": cfg.enabled,
            "max_batch_size": cfg.max_batch_size,
            "batch_timeout_micros": cfg.batch_timeout.as_micros() as u64,
            "num_batch_threads": cfg.num_batch_threads,
            "max_enqueued": cfg.max_enqueued,
            "inference_nice": cfg.nice,
            "inference_calls": stats.batches,
            "requests_run": stats.requests,
            "rows_run": stats.rows,
            "mean_rows_per_call": if stats.batches == 0 { 0.0 } else { stats.rows as f64 / stats.batches as f64 },
            "max_rows_per_call": stats.max_rows,
            "refused_queue_full": stats.refused,
        },
    });
    let code = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `name` or `name:verb`.
fn split_verb(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((a, v)) => (a, Some(v)),
        None => (spec, None),
    }
}

pub(crate) fn servable_not_found(name: &str, version: Option<u64>) -> ApiError {
    match version {
        Some(v) => ApiError::not_found(format!(
            "Servable not found for request: Specific({name}, {v})"
        )),
        None => ApiError::not_found(format!("Servable not found for request: Latest({name})")),
    }
}

fn parse_version(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("version {s:?} is not a non-negative integer")))
}

/// `GET` (and `HEAD`) on the model path: the status, or 405 on a `:verb` path (POST only).
async fn model_get(
    State(st): State<AppState>,
    Path(spec): Path<String>,
    method: Method,
    uri: Uri,
) -> ApiResult {
    match split_verb(&spec) {
        (name, None) => status(&st, name, None),
        (_, Some(_)) => Err(ApiError::method_not_allowed(&method, &uri)),
    }
}

async fn version_get(
    State(st): State<AppState>,
    Path((name, vspec)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> ApiResult {
    match split_verb(&vspec) {
        (v, None) => status(&st, &name, Some(parse_version(v)?)),
        (_, Some(_)) => Err(ApiError::method_not_allowed(&method, &uri)),
    }
}

async fn model_post(
    State(st): State<AppState>,
    Path(spec): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (name, verb) = split_verb(&spec);
    infer(
        st,
        name.to_string(),
        None,
        verb.map(str::to_string),
        headers,
        body,
    )
    .await
}

async fn version_post(
    State(st): State<AppState>,
    Path((name, vspec)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (v, verb) = split_verb(&vspec);
    let v = parse_version(v)?;
    infer(st, name, Some(v), verb.map(str::to_string), headers, body).await
}

fn status(st: &AppState, name: &str, version: Option<u64>) -> ApiResult {
    let all = st.model(name, version)?.store.status();
    let chosen: Vec<_> = match version {
        Some(v) => all.into_iter().filter(|s| s.version == v).collect(),
        None => all,
    };
    if chosen.is_empty() {
        return Err(servable_not_found(name, version));
    }
    let list: Vec<Value> = chosen
        .iter()
        .map(|s| {
            json!({
                "version": s.version.to_string(),
                "state": s.state,
                "status": {"error_code": s.error_code, "error_message": s.error_message},
            })
        })
        .collect();
    Ok(axum::Json(json!({"model_version_status": list})).into_response())
}

fn tensor_info(t: &TensorSpec) -> Value {
    let dims: Vec<Value> = t
        .shape
        .iter()
        .map(|d| json!({"size": d.to_string(), "name": ""}))
        .collect();
    json!({
        "dtype": match t.dtype { DType::Float => "DT_FLOAT", DType::Int64 => "DT_INT64" },
        "tensor_shape": {"dim": dims, "unknown_rank": false},
        "name": t.name,
    })
}

/// `GetModelMetadataResponse` as TensorFlow Serving writes it, plus `metadata.labels`: the class
/// names (index = class id), which the drawing page lists.
pub fn metadata_json(model_name: &str, p: &Predictor) -> Value {
    let sig = &p.info().signature;
    let map = |m: &std::collections::BTreeMap<String, TensorSpec>| -> Value {
        Value::Object(m.iter().map(|(k, t)| (k.clone(), tensor_info(t))).collect())
    };
    json!({
        "model_spec": {"name": model_name, "signature_name": "", "version": p.version().unwrap_or(0).to_string()},
        "metadata": {"signature_def": {
            "signature_def": {
                sig.signature_name.clone(): {
                    "inputs": map(&sig.inputs),
                    "outputs": map(&sig.outputs),
                    "method_name": sig.method_name,
                    "defaults": {},
                }
            },
            "function_aliases": {},
        }, "labels": p.labels()},
    })
}

fn metadata(st: &AppState, name: &str, version: Option<u64>) -> ApiResult {
    let model = st.model(name, version)?;
    let p = model.predictor(version)?;
    Ok(axum::Json(metadata_json(&model.name, &p)).into_response())
}

async fn metadata_latest(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult {
    metadata(&st, &name, None)
}

async fn metadata_version(
    State(st): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> ApiResult {
    metadata(&st, &name, Some(parse_version(&v)?))
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("request body larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_large()
        } else {
            ApiError::bad_request(format!("reading the request body: {inner}"))
        }
    })
}

/// What a request asks of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verb {
    Predict,
    Classify,
}

/// How a request's rows of the outputs come back from the inference queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Encode {
    /// The REST answer body, serialised on the batch thread.
    Json { columnar: bool },
    /// The outputs themselves (the gRPC API encodes them as TensorProtos).
    Outputs,
}

/// What the inference queue answers.
pub(crate) enum Answer {
    Json(Vec<u8>),
    Outputs(Probabilities),
}

async fn infer(
    st: AppState,
    name: String,
    version: Option<u64>,
    verb: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let verb = match verb.as_deref() {
        Some("predict") => Verb::Predict,
        Some("classify") => Verb::Classify,
        Some("regress") => {
            return Err(ApiError::bad_request(
                "this model has no regression signature (use :predict or :classify)",
            ));
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Malformed request: unknown verb :{v} (expected :predict or :classify)"
            )));
        }
        None => {
            return Err(ApiError::bad_request(
                "Malformed request: POST needs a verb, e.g. /v1/models/<name>:predict",
            ));
        }
    };
    let model = st.model(&name, version)?.clone();
    let predictor = model.predictor(version)?;
    let bytes = read_body(&headers, body, st.inner.limits.max_body_bytes).await?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("JSON Parse error: {e}")))?;
    let input = predictor.inputs().clone();
    let (instances, columnar) = match verb {
        Verb::Predict => {
            let p = parse_predict(&json, &input, &st.inner.limits)?;
            (p.instances, p.columnar)
        }
        Verb::Classify => (parse_classify(&json, &input, &st.inner.limits)?, false),
    };
    let (answer, request_id) = run(
        &st,
        &model,
        &predictor,
        instances,
        verb,
        Encode::Json { columnar },
    )
    .await?;
    let Answer::Json(answer) = answer else {
        return Err(ApiError::internal("inference answered outputs, not JSON"));
    };
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], answer).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&predictor.version().unwrap_or(0).to_string()) {
        h.insert(HeaderName::from_static(VERSION_HEADER), v);
    }
    h.insert(
        HeaderName::from_static(REQUEST_ID_HEADER),
        HeaderValue::from(request_id),
    );
    Ok(resp)
}

/// Runs parsed instances through the inference queue (preprocessing and inference on a batch
/// thread, never on the async runtime): the answer and the request's id. REST and gRPC share it.
pub(crate) async fn run(
    st: &AppState,
    model: &Arc<Model>,
    predictor: &Arc<Predictor>,
    instances: Vec<Instance>,
    verb: Verb,
    encode: Encode,
) -> Result<(Answer, u64), ApiError> {
    let request_id = st.inner.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let task = ServeTask {
        st: st.clone(),
        model: model.clone(),
        predictor: predictor.clone(),
        instances,
        verb,
        encode,
        request_id,
        reply,
        shapes: Vec::new(),
    };
    st.inner
        .batcher
        .submit(Box::new(task))
        .map_err(|e| match e {
            SubmitError::QueueFull(_) => ApiError::unavailable(format!(
                "the inference queue is full ({} requests waiting); retry later",
                st.batching().max_enqueued
            )),
            SubmitError::Closed(_) => ApiError::unavailable("the server is shutting down"),
        })?;
    let answer = answer
        .await
        .map_err(|_| ApiError::internal("inference failed: the batch thread stopped"))??;
    Ok((answer, request_id))
}

/// One `:predict` or `:classify` request in the inference queue. On a batch thread: the
/// preprocessing (the training path), then, with the request's rows of the batch's outputs,
/// the request log and the answer body.
struct ServeTask {
    st: AppState,
    model: Arc<Model>,
    predictor: Arc<Predictor>,
    instances: Vec<Instance>,
    verb: Verb,
    encode: Encode,
    request_id: u64,
    reply: tokio::sync::oneshot::Sender<Result<Answer, ApiError>>,
    /// Per instance, the drift features ([`crate::skew::NUMERIC`]), filled by `prepare`.
    shapes: Vec<[Option<f64>; 4]>,
}

impl Task for ServeTask {
    fn predictor(&self) -> &Arc<Predictor> {
        &self.predictor
    }
    fn rows(&self) -> usize {
        self.instances.len()
    }
    fn prepare(&mut self) -> Result<Vec<ModelInput>, RequestError> {
        let p = &self.predictor;
        let (input, spec) = (p.inputs(), &p.info().features);
        let inputs: Vec<ModelInput> = self
            .instances
            .iter()
            .enumerate()
            .map(|(i, inst)| to_model_input(inst, i, input, spec))
            .collect::<Result<_, _>>()?;
        // The drift features, the ink share from the model input just made (no second render).
        self.shapes = self
            .instances
            .iter()
            .zip(&inputs)
            .map(|(inst, m)| {
                let [strokes, points, aspect] = match inst {
                    Instance::Drawing(d, _) => crate::skew::shape_stats(d, spec),
                    _ => [None, None, None],
                };
                let ink = match m.pixels() {
                    Some(px) if !px.is_empty() => {
                        Some(px.iter().filter(|&&v| v > 0.0).count() as f64 / px.len() as f64)
                    }
                    _ => None,
                };
                [strokes, points, ink, aspect]
            })
            .collect();
        Ok(inputs)
    }
    fn finish(self: Box<Self>, outputs: Result<Probabilities, TaskError>) {
        let answer = match outputs.map(finite_outputs) {
            Ok(Err(e)) => Err(e),
            Ok(Ok(probs)) => {
                let p = &self.predictor;
                let obs = self
                    .shapes
                    .iter()
                    .zip(&probs.classes)
                    .map(|(numeric, &c)| Observation {
                        numeric: *numeric,
                        predicted: label(p, c).to_string(),
                    })
                    .collect();
                // The window follows the newest served version (what requests without a
                // version get); requests pinned to older versions are not observed.
                let newest = self.model.store.current();
                if newest.is_some_and(|n| n.version() == p.version()) {
                    self.model.drift.observe(p, obs);
                }
                if let Some(log) = &self.st.inner.log {
                    log_drawings(
                        &self.model.name,
                        log,
                        p,
                        &self.instances,
                        &probs,
                        self.verb,
                        self.request_id,
                    );
                }
                match self.encode {
                    Encode::Json { columnar } => answer_json(p, &probs, self.verb, columnar)
                        .map(Answer::Json)
                        .map_err(|e| ApiError::internal(format!("serialising the answer: {e}"))),
                    Encode::Outputs => Ok(Answer::Outputs(probs)),
                }
            }
            Err(TaskError::Request(e)) => Err(e.into()),
            Err(TaskError::Predict(e)) => Err(ApiError::internal(e)),
        };
        // The caller may have gone (client disconnected): nothing to answer then.
        let _ = self.reply.send(answer);
    }
}

/// The outputs, or a 500 naming the first instance whose probabilities or logits are not finite
/// (JSON has no NaN: serde would write `null`).
pub(crate) fn finite_outputs(probs: Probabilities) -> Result<Probabilities, ApiError> {
    let bad = (0..probs.len()).find(|&i| {
        probs
            .row(i)
            .iter()
            .chain(probs.logits_row(i))
            .any(|v| !v.is_finite())
    });
    match bad {
        Some(i) => Err(ApiError::internal(format!(
            "the model produced a non-finite output (NaN or infinity) for instance {i}; \
             nothing is answered for this request"
        ))),
        None => Ok(probs),
    }
}

fn log_drawings(
    model: &str,
    log: &RequestLog,
    p: &Predictor,
    instances: &[Instance],
    probs: &Probabilities,
    verb: Verb,
    request_id: u64,
) {
    for (i, inst) in instances.iter().enumerate() {
        let Instance::Drawing(d, _) = inst else {
            continue;
        };
        let top = probs.top_k(i, 3);
        let served = Served {
            model,
            version: p.version().unwrap_or(0),
            request_id,
            verb: if verb == Verb::Predict {
                "predict"
            } else {
                "classify"
            },
            labels: p.labels(),
            top: &top,
        };
        if let Err(e) = log.log(d as &Drawing, &served, i) {
            tracing::warn!(
                "cannot write the request log in {}: {e}",
                log.dir().display()
            );
        }
    }
}

#[derive(Serialize)]
struct Prediction<'a> {
    classes: i64,
    probabilities: &'a [f32],
    logits: &'a [f32],
    class_name: &'a str,
}

#[derive(Serialize)]
struct Predictions<'a> {
    predictions: Vec<Prediction<'a>>,
}

#[derive(Serialize)]
struct Outputs<'a> {
    classes: &'a [i64],
    probabilities: Vec<&'a [f32]>,
    logits: Vec<&'a [f32]>,
    class_name: Vec<&'a str>,
}

#[derive(Serialize)]
struct Columnar<'a> {
    outputs: Outputs<'a>,
}

#[derive(Serialize)]
struct Classified<'a> {
    result: &'a [Vec<(&'a str, f32)>],
    results: &'a [Vec<(&'a str, f32)>],
}

pub(crate) fn label(p: &Predictor, c: i64) -> &str {
    p.labels().get(c as usize).map_or("", String::as_str)
}

/// The answer body, serialised straight from the `f32`s (shortest round-trip decimals).
fn answer_json(
    p: &Predictor,
    probs: &Probabilities,
    verb: Verb,
    columnar: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let n = probs.len();
    match verb {
        Verb::Predict if columnar => serde_json::to_vec(&Columnar {
            outputs: Outputs {
                classes: &probs.classes,
                probabilities: (0..n).map(|i| probs.row(i)).collect(),
                logits: (0..n).map(|i| probs.logits_row(i)).collect(),
                class_name: probs.classes.iter().map(|&c| label(p, c)).collect(),
            },
        }),
        Verb::Predict => serde_json::to_vec(&Predictions {
            predictions: (0..n)
                .map(|i| Prediction {
                    classes: probs.classes[i],
                    probabilities: probs.row(i),
                    logits: probs.logits_row(i),
                    class_name: label(p, probs.classes[i]),
                })
                .collect(),
        }),
        // TF Serving's classify answer: per example, [label, score] for every class, best
        // first; under `result` (TF Serving's key) and `results` (an alias).
        Verb::Classify => {
            let res: Vec<Vec<(&str, f32)>> = (0..n)
                .map(|i| {
                    probs
                        .top_k(i, probs.n_classes)
                        .into_iter()
                        .map(|(c, s)| (p.labels()[c].as_str(), s))
                        .collect()
                })
                .collect();
            serde_json::to_vec(&Classified {
                result: &res,
                results: &res,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_of_decodes_the_name_as_the_router_does() {
        assert_eq!(
            model_of("/v1/models/my%20model/versions/2:predict"),
            "my model"
        );
        assert_eq!(model_of("/v1/models/quickdraw:predict"), "quickdraw");
        assert_eq!(model_of("/healthz"), "");
    }

    #[test]
    fn non_finite_outputs_are_a_500_naming_the_instance() {
        let ok = Probabilities {
            n_classes: 2,
            probabilities: vec![0.25, 0.75, 0.5, 0.5],
            logits: vec![0.0, 1.0, 0.0, 0.0],
            classes: vec![1, 0],
        };
        assert_eq!(finite_outputs(ok.clone()), Ok(ok.clone()));
        for (probs, logit) in [(f32::NAN, 0.0), (0.5, f32::INFINITY)] {
            let mut bad = ok.clone();
            bad.probabilities[3] = probs;
            bad.logits[2] = logit;
            let e = finite_outputs(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(e.message.contains("instance 1"), "{}", e.message);
        }
    }
}
