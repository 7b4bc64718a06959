//! `serve`'s Prometheus metrics, scraped by a real Prometheus server (Debian's `prometheus`,
//! installed by scripts/test-all; skipped without it unless QUICKDRAW_REQUIRE_PROMETHEUS=1):
//! after some requests, Prometheus's own query API returns the request counter, a latency
//! quantile, the served version and the process's memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quickdraw_serve::testing;
use serde_json::{Value, json};

use crate::serve::{SIZE, Server, drawing_json, gamma};
use crate::util::s;

fn prometheus_bin() -> Option<PathBuf> {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("QUICKDRAW_REQUIRE_PROMETHEUS").is_none(),
            "QUICKDRAW_REQUIRE_PROMETHEUS is set but no prometheus binary is installed \
             (apt-get install prometheus)"
        );
        eprintln!(
            "skipped: no prometheus binary (apt-get install prometheus; scripts/test-all does)"
        );
    }
    found
}

/// A Prometheus server scraping `target` (host:port) every 500 ms; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, target: &str, metrics_path: &str) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n\
                 scrape_configs:\n  - job_name: quickdraw\n    metrics_path: {metrics_path}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", s(&config)))
            .arg(format!("--storage.tsdb.path={}", s(&dir.join("tsdb"))))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The instant vector `query` evaluates to (empty until scraped), or None while Prometheus
    /// is not up.
    fn query(&self, query: &str) -> Option<Vec<Value>> {
        let mut r = Server::agent()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", query)
            .call()
            .ok()?;
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        assert_eq!(v["status"], "success", "{query}: {v}");
        Some(v["data"]["result"].as_array()?.clone())
    }

    /// Waits (at most 60 s) until `query` gives one sample accepted by `ok`; returns its value.
    fn value_when(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            if let Some(result) = self.query(query) {
                let value = result
                    .first()
                    .and_then(|r| r["value"][1].as_str())
                    .and_then(|v| v.parse::<f64>().ok());
                if let Some(v) = value.filter(|v| ok(*v)) {
                    return v;
                }
                last = Some(result);
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never answered {query} as expected; last answer {last:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_request_counts_latency_and_the_served_version() {
    let Some(bin) = prometheus_bin() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    testing::write_demo_export(&base, 3, SIZE).unwrap();
    let server = Server::start(&base, &[]);

    // Five good predictions, one bad request.
    let body = json!({"instances": [drawing_json(&gamma(1, false))]});
    for _ in 0..5 {
        let (code, version, v) = server.post("/v1/models/quickdraw:predict", &body);
        assert_eq!((code, version.as_str()), (200, "3"), "{v}");
    }
    let (code, _, _) = server.post("/v1/models/quickdraw:predict", &json!({"instances": [[1]]}));
    assert_eq!(code, 400);

    // The exposition itself, at both paths.
    for path in ["/monitoring/prometheus/metrics", "/metrics"] {
        let (code, text) = server.get(path);
        let text = text.as_str().unwrap_or_default().to_string();
        assert_eq!(code, 200, "{text}");
        assert!(
            text.contains(
                r#"quickdraw_requests_total{api="predict",status="200",version="3",model="quickdraw"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"quickdraw_requests_total{api="predict",status="400",version="",model="quickdraw"} 1"#),
            "{text}"
        );
        for name in [
            "quickdraw_inference_duration_seconds_bucket",
            "quickdraw_batch_size_bucket",
            "quickdraw_queue_depth",
            "quickdraw_queue_rejections_total",
            "quickdraw_model_loads_total{result=\"success\",model=\"quickdraw\"} 1",
            "quickdraw_served_model_version{model=\"quickdraw\"} 3",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    // A real Prometheus scrapes TF Serving's path and answers queries over what it stored.
    let target = server.url.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&bin, tmp.path(), &target, "/monitoring/prometheus/metrics");
    let ok = prom.value_when(
        r#"quickdraw_requests_total{api="predict",status="200",version="3"}"#,
        |v| v == 5.0,
    );
    assert_eq!(ok, 5.0);
    let p50 = prom.value_when(
        r#"histogram_quantile(0.5, sum by (le) (quickdraw_request_duration_seconds_bucket{api="predict"}))"#,
        f64::is_finite,
    );
    assert!(p50 > 0.0 && p50 < 10.0, "median predict latency {p50} s");
    let p99 = prom.value_when(
        r#"histogram_quantile(0.99, sum by (le) (quickdraw_inference_duration_seconds_bucket))"#,
        f64::is_finite,
    );
    assert!(p99 > 0.0 && p99 < 10.0, "p99 inference latency {p99} s");
    assert_eq!(
        prom.value_when("quickdraw_served_model_version", |_| true),
        3.0
    );
    let rss = prom.value_when("process_resident_memory_bytes", |_| true);
    assert!(rss > 1e6, "resident memory {rss} bytes");
    // More traffic shows up in the next scrapes.
    server.post("/v1/models/quickdraw:predict", &body);
    prom.value_when(
        r#"quickdraw_requests_total{api="predict",status="200",version="3"}"#,
        |v| v == 6.0,
    );
    server.stop();
}
