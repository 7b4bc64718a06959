//! Prometheus monitoring: the server's metrics registries and their text exposition, served at
//! TensorFlow Serving's path `/monitoring/prometheus/metrics` (and `/metrics`).
//!
//! What is measured where: requests and their latency in the router's middleware
//! ([`Metrics::observe_request`]); inference-call latency and batch sizes on the batch threads
//! (the [`crate::batching::Batcher`]'s histograms, registered here); queue depth, refusals,
//! model loads and the served version read from their owners at each scrape
//! ([`Metrics::render`]); process RSS and CPU from prometheus' process collector.
//!
//! Each model has its own registry whose series carry its constant `model` label (requests,
//! loads, served version, drift, freshness); the server-wide series (the one inference queue
//! and its calls, the process) carry the model's label when the server serves one model, and
//! none when it serves several, as do requests for no model it serves. [`Metrics::render`]
//! merges the registries into one exposition.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::batching::Batcher;
use crate::drift::Drift;
use crate::store::ModelStore;

/// Latency buckets (requests and inference calls), seconds: 100 us to 10 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The registries and the metrics the server updates itself.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The server-wide series.
    server: Registry,
    queue_depth: IntGauge,
    refused: IntCounter,
    /// Requests for no model served (with several models; with one, that model counts them).
    unrouted: Option<Requests>,
    /// Per model, in the server's order.
    models: Vec<(String, ModelMetrics)>,
}

/// Requests answered and their latency.
#[derive(Debug, Clone)]
struct Requests {
    total: IntCounterVec,
    seconds: HistogramVec,
}

impl Requests {
    fn new(registry: &Registry) -> Result<Requests, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                "quickdraw_requests_total",
                "HTTP requests answered, by API (predict, classify, metadata, status, ...), \
                 model version and HTTP status code",
            ),
            &["api", "version", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "quickdraw_request_duration_seconds",
                "Time from the request's arrival to its answer (queueing, preprocessing and \
                 inference included), by API",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api"],
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Requests { total, seconds })
    }

    fn observe(&self, api: &str, version: &str, status: &str, seconds: f64) {
        self.total.with_label_values(&[api, version, status]).inc();
        self.seconds.with_label_values(&[api]).observe(seconds);
    }
}

/// One model's series, in its own registry (constant label `model`).
#[derive(Debug, Clone)]
struct ModelMetrics {
    registry: Registry,
    requests: Requests,
    loads: IntCounterVec,
    served_version: IntGauge,
    drift_psi: GaugeVec,
    drift_window: IntGauge,
    model_age: Gauge,
    data_age: Gauge,
}

fn model_label(model: &str) -> Option<std::collections::HashMap<String, String>> {
    Some([("model".to_string(), model.to_string())].into())
}

impl ModelMetrics {
    fn new(model: &str) -> Result<ModelMetrics, prometheus::Error> {
        let registry = Registry::new_custom(None, model_label(model))?;
        let loads = IntCounterVec::new(
            Opts::new(
                "quickdraw_model_loads_total",
                "Model version loads (at start and on each poll of the base path), by result",
            ),
            &["result"],
        )?;
        let served_version = IntGauge::new(
            "quickdraw_served_model_version",
            "The newest model version being served (-1: none loaded)",
        )?;
        let drift_psi = GaugeVec::new(
            Opts::new(
                "quickdraw_drift_psi",
                "Population stability index of the recent predictions' inputs (strokes, points, \
                 ink_share, aspect) and predicted classes against the training distribution \
                 (the export's assets/drift_reference.json); > 0.25 is a major shift",
            ),
            &["feature"],
        )?;
        let drift_window = IntGauge::new(
            "quickdraw_drift_window_predictions",
            "Predictions in the drift window of the newest served version",
        )?;
        let model_age = Gauge::new(
            "quickdraw_model_age_seconds",
            "Seconds since the newest served version was exported (metrics.json exported_at)",
        )?;
        let data_age = Gauge::new(
            "quickdraw_training_data_age_seconds",
            "Seconds since the dataset the newest served version was trained on was written \
             (its manifest, as recorded at export)",
        )?;
        registry.register(Box::new(drift_psi.clone()))?;
        registry.register(Box::new(drift_window.clone()))?;
        registry.register(Box::new(model_age.clone()))?;
        registry.register(Box::new(data_age.clone()))?;
        let requests = Requests::new(&registry)?;
        registry.register(Box::new(loads.clone()))?;
        registry.register(Box::new(served_version.clone()))?;
        Ok(ModelMetrics {
            registry,
            requests,
            loads,
            served_version,
            drift_psi,
            drift_window,
            model_age,
            data_age,
        })
    }

    /// Reads the model's store and drift window into the gauges.
    fn update(&self, store: &ModelStore, drift: &Drift) {
        let (ok, failed) = store.load_counts();
        catch_up(&self.loads.with_label_values(&["success"]), ok);
        catch_up(&self.loads.with_label_values(&["failure"]), failed);
        let current = store.current();
        let version = current.as_ref().and_then(|p| p.version());
        self.served_version
            .set(version.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let age = |key: &str| {
            current
                .as_ref()
                .and_then(|p| {
                    p.info()
                        .metrics
                        .get(key)
                        .and_then(serde_json::Value::as_f64)
                })
                .map_or(f64::NAN, |t| now - t)
        };
        self.model_age.set(age("exported_at"));
        self.data_age.set(age("dataset_written_at"));
        let (psi, window) = drift.snapshot();
        self.drift_psi.reset();
        for (f, v) in psi {
            self.drift_psi.with_label_values(&[f]).set(v);
        }
        self.drift_window.set(window as i64);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("prometheus metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Registries for `models` (names, in the server's order), with the batcher's histograms
    /// and the process collector.
    pub fn new(models: &[String], batcher: &Batcher) -> Result<Metrics, MetricsError> {
        let single = match models {
            [m] => model_label(m),
            _ => None,
        };
        let server = Registry::new_custom(None, single.clone())?;
        let queue_depth = IntGauge::new(
            "quickdraw_queue_depth",
            "Requests waiting in the inference queue",
        )?;
        let refused = IntCounter::new(
            "quickdraw_queue_rejections_total",
            "Requests refused with 503 because the inference queue was full",
        )?;
        let (inference, rows) = batcher.histograms();
        server.register(Box::new(queue_depth.clone()))?;
        server.register(Box::new(refused.clone()))?;
        server.register(Box::new(inference))?;
        server.register(Box::new(rows))?;
        #[cfg(target_os = "linux")]
        server.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let unrouted = match single {
            Some(_) => None,
            None => Some(Requests::new(&server)?),
        };
        let models = models
            .iter()
            .map(|m| Ok((m.clone(), ModelMetrics::new(m)?)))
            .collect::<Result<_, prometheus::Error>>()?;
        Ok(Metrics {
            server,
            queue_depth,
            refused,
            unrouted,
            models,
        })
    }

    /// One answered request for `model` (the name asked for; "" for none): `api` from
    /// [`api_of`], `version` the version that answered ("" for none), `status` the HTTP code
    /// (REST) or the gRPC code's name.
    pub fn observe_request(
        &self,
        model: &str,
        api: &str,
        version: &str,
        status: &str,
        seconds: f64,
    ) {
        let requests = match self.models.iter().find(|(n, _)| n == model) {
            Some((_, m)) => &m.requests,
            None => match &self.unrouted {
                Some(r) => r,
                None => match self.models.first() {
                    Some((_, m)) => &m.requests,
                    None => return,
                },
            },
        };
        requests.observe(api, version, status, seconds);
    }

    /// The text exposition (format 0.0.4), after reading the queue and, per model (in the
    /// order given to [`Metrics::new`]), its store and drift window.
    pub fn render(
        &self,
        batcher: &Batcher,
        models: &[(&ModelStore, &Drift)],
    ) -> Result<String, MetricsError> {
        self.queue_depth.set(batcher.queue_len() as i64);
        catch_up(&self.refused, batcher.stats().refused);
        for ((_, m), (store, drift)) in self.models.iter().zip(models) {
            m.update(store, drift);
        }
        self.text()
    }

    /// Every registry's families, merged by name (sorted), as text.
    fn text(&self) -> Result<String, MetricsError> {
        let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
        let all = std::iter::once(&self.server).chain(self.models.iter().map(|(_, m)| &m.registry));
        for registry in all {
            for mut f in registry.gather() {
                match families.get_mut(f.name()) {
                    Some(have) => have.mut_metric().extend(f.take_metric()),
                    None => {
                        families.insert(f.name().to_string(), f);
                    }
                }
            }
        }
        let families: Vec<MetricFamily> = families.into_values().collect();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Counters whose owner counts them already (the batcher, the store) follow that count.
fn catch_up(c: &IntCounter, total: u64) {
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

/// The `api` label of a request path: a bounded set, whatever the client sends.
pub fn api_of(path: &str) -> &'static str {
    if let Some(rest) = path.strip_prefix("/v1/models/") {
        return match rest.rsplit_once(':').map(|(_, verb)| verb) {
            Some("predict") => "predict",
            Some("classify") => "classify",
            Some("regress") => "regress",
            Some(_) => "other",
            None if rest.ends_with("/metadata") => "metadata",
            None => "status",
        };
    }
    match path {
        "/" => "page",
        "/healthz" => "healthz",
        crate::api::METRICS_PATH | crate::api::METRICS_PATH_SHORT => "metrics",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_labels_are_a_bounded_set() {
        assert_eq!(api_of("/v1/models/quickdraw:predict"), "predict");
        assert_eq!(api_of("/v1/models/q/versions/3:classify"), "classify");
        assert_eq!(api_of("/v1/models/q/versions/3/metadata"), "metadata");
        assert_eq!(api_of("/v1/models/q/metadata"), "metadata");
        assert_eq!(api_of("/v1/models/q"), "status");
        assert_eq!(api_of("/v1/models/q:anything-at-all"), "other");
        assert_eq!(api_of("/monitoring/prometheus/metrics"), "metrics");
        assert_eq!(api_of("/metrics"), "metrics");
        assert_eq!(api_of("/some/random/path"), "other");
    }

    #[test]
    fn counters_follow_their_owner_and_render_as_text() {
        let b = Batcher::new(crate::BatchConfig::unbatched());
        let m = Metrics::new(&["sketch".into()], &b).unwrap();
        m.observe_request("sketch", "predict", "7", "200", 0.003);
        m.observe_request("sketch", "predict", "7", "200", 0.004);
        // A request for another name is the one model's too (as before several models).
        m.observe_request("nope", "predict", "", "404", 0.0001);
        catch_up(&m.refused, 3);
        catch_up(&m.refused, 2);
        assert_eq!(m.refused.get(), 3);
        let text = m.text().unwrap();
        assert!(
            text.contains(
                r#"quickdraw_requests_total{api="predict",status="200",version="7",model="sketch"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"quickdraw_request_duration_seconds_count{api="predict",model="sketch"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"quickdraw_queue_rejections_total{model="sketch"} 3"#));
        assert_eq!(text.matches("# TYPE quickdraw_requests_total").count(), 1);
    }

    #[test]
    fn several_models_have_their_own_series_and_one_family_each() {
        let b = Batcher::new(crate::BatchConfig::unbatched());
        let m = Metrics::new(&["a".into(), "b".into()], &b).unwrap();
        m.observe_request("a", "predict", "1", "200", 0.003);
        m.observe_request("b", "predict", "2", "200", 0.003);
        m.observe_request("b", "predict", "2", "200", 0.003);
        m.observe_request("zzz", "status", "", "404", 0.001);
        m.observe_request("", "healthz", "", "200", 0.001);
        let text = m.text().unwrap();
        for needle in [
            r#"quickdraw_requests_total{api="predict",status="200",version="1",model="a"} 1"#,
            r#"quickdraw_requests_total{api="predict",status="200",version="2",model="b"} 2"#,
            r#"quickdraw_requests_total{api="status",status="404",version=""} 1"#,
            r#"quickdraw_requests_total{api="healthz",status="200",version=""} 1"#,
            "quickdraw_queue_rejections_total 0",
        ] {
            assert!(text.contains(needle), "no {needle} in\n{text}");
        }
        for family in [
            "quickdraw_requests_total",
            "quickdraw_drift_window_predictions",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{text}"
            );
        }
        assert!(text.contains(r#"quickdraw_drift_window_predictions{model="a"} 0"#));
        assert!(text.contains(r#"quickdraw_drift_window_predictions{model="b"} 0"#));
    }
}
