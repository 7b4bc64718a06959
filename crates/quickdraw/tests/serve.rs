//! End-to-end tests of the serving commands through the real binary: `model show`, `model run`
//! (tensors, drawings, tf.Examples), `serve` (REST API, hot reload of new versions, broken
//! versions skipped, request log, graceful shutdown), `skew`, and the drawing page in a real
//! headless Chromium (tests/browser/draw.mjs; skipped without node/chromium unless
//! QUICKDRAW_REQUIRE_BROWSER=1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quickdraw_data::features::{FeatureSpec, encode_example, preprocess};
use quickdraw_data::tfrecord::TfRecordWriter;
use quickdraw_data::{Drawing, Ink, Stroke};
use quickdraw_serve::testing;
use serde_json::{Value, json};

use crate::util::{BIN, fails, ok_stdout, qd, repo_root, s};

pub const SIZE: u32 = 8;

/// "Γ" (most ink left once centred) or its mirror image.
pub fn gamma(key_id: u64, mirrored: bool) -> Drawing {
    let x = |v: f32| if mirrored { 255.0 - v } else { v };
    Drawing {
        key_id,
        word: if mirrored { "right" } else { "left" }.into(),
        countrycode: "CH".into(),
        timestamp: 1_500_000_000,
        recognized: true,
        ink: Ink::Strokes(vec![
            Stroke::new(vec![x(0.0), x(0.0)], vec![0.0, 255.0]),
            Stroke::new(vec![x(0.0), x(60.0)], vec![0.0, 0.0]),
        ]),
    }
}

#[test]
fn model_show_prints_the_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = testing::write_demo_export(tmp.path(), 3, SIZE).unwrap();
    let out = ok_stdout(&["model", "show", "--dir", s(&dir)]);
    for needle in [
        "(version 3)",
        "model: linear",
        "signature_def['serving_default']",
        "inputs['img_8'] tensor_info:",
        "dtype: DT_FLOAT",
        "shape: (-1, 1, 8, 8)",
        "outputs['classes'] tensor_info:",
        "dtype: DT_INT64",
        "Method name is: tensorflow/serving/predict",
        "classes: 3 (blank, left, right)",
        "raster default 8x8",
        "accuracy=0.9000 baseline.accuracy=0.3300",
        "model_card.md:",
        "# Model card: QuickDraw linear classifier",
        "| accuracy | 90.00% | 33.00% |",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // A base folder shows its newest version; --all loads the ONNX graph with tract.
    let all = ok_stdout(&["model", "show", "--dir", s(tmp.path()), "--all"]);
    assert!(
        all.contains("onnx:") && all.contains("symbolic batch") && all.contains("   2 right"),
        "{all}"
    );
    let v: Value = serde_json::from_str(&ok_stdout(&[
        "model",
        "show",
        "--dir",
        s(&dir),
        "--all",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(
        v["signature"]["inputs"]["img_8"]["shape"],
        json!([-1, 1, 8, 8])
    );
    assert_eq!(v["labels"], json!(["blank", "left", "right"]));
    assert_eq!(v["onnx"]["batch"], "symbolic");
    // A folder that is not an export.
    let o = qd(&["model", "show", "--dir", s(&tmp.path().join("3/assets"))]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("signature.json"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn wide_deep_exports_show_their_wide_input_and_run_with_metadata() {
    use quickdraw_data::wide::Metadata;
    let tmp = tempfile::tempdir().unwrap();
    let dir = testing::write_wide_demo_export(tmp.path(), 1, SIZE).unwrap();
    let out = ok_stdout(&["model", "show", "--dir", s(&dir)]);
    for needle in [
        "model: wide_deep",
        "inputs['wide'] tensor_info:",
        "shape: (-1, 27)",
        "wide = multi-hot metadata vector of 27 values",
        "countrycode_bucket_0 .. countrycode_bucket_3",
        "recognized=false .. recognized=true",
        "strokes_1 .. strokes_30+",
        "duration_0s .. duration_16+s",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let all = ok_stdout(&["model", "show", "--dir", s(&dir), "--all"]);
    assert!(all.contains("      26 duration_16+s"), "{all}");
    let v: Value =
        serde_json::from_str(&ok_stdout(&["model", "show", "--dir", s(&dir), "--json"])).unwrap();
    assert_eq!(v["wide"]["dim"], 27);
    assert_eq!(v["wide"]["slots"][5], "recognized=true");

    let spec = testing::demo_wide_spec();
    let p = quickdraw_serve::Predictor::load(&dir).unwrap();
    let close = |a: &Value, b: &[f32]| {
        a.as_array()
            .unwrap()
            .iter()
            .zip(b)
            .all(|(x, y)| (x.as_f64().unwrap() as f32 - y).abs() < 1e-5)
    };
    // Tensors, with and without the wide vector (recognized=true: +2 to `right`).
    let left: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
    let mut wide = vec![0.0f32; 27];
    wide[5] = 1.0;
    let img = format!("img_8={}", serde_json::to_string(&left).unwrap());
    let run = |expr: &str| {
        json_lines(&ok_stdout(&[
            "model",
            "run",
            "--dir",
            s(&dir),
            "--input-exprs",
            expr,
            "--json",
        ]))
    };
    let plain = run(&img);
    let with = run(&format!(
        "{img};wide={}",
        serde_json::to_string(&wide).unwrap()
    ));
    let direct = p
        .predict_pixels_wide(std::slice::from_ref(&left), std::slice::from_ref(&wide))
        .unwrap();
    assert!(close(&with[0]["probabilities"], direct.row(0)), "{with:?}");
    let zero = p.predict_pixels(std::slice::from_ref(&left)).unwrap();
    assert!(close(&plain[0]["probabilities"], zero.row(0)), "{plain:?}");
    assert_ne!(with[0]["probabilities"], plain[0]["probabilities"]);
    let o = qd(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-exprs",
        &format!("{img};wide=[1, 0]"),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected [1, 27]"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Drawings and tf.Examples: their metadata (CH, recognized, 2 strokes), as training read it.
    let d = gamma(11, false);
    let nd = tmp.path().join("drawings.ndjson");
    std::fs::write(&nd, quickdraw_data::ingest::ndjson::to_line(&d) + "\n").unwrap();
    let features = testing::image_features(SIZE);
    let pre = preprocess(&d.ink, &features).unwrap();
    let rec = tmp.path().join("drawings.tfrecord");
    let mut w = TfRecordWriter::create(&rec).unwrap();
    w.write_record(&encode_example(&d, 1, &pre, &features))
        .unwrap();
    w.flush().unwrap();
    drop(w);
    let px: Vec<f32> = quickdraw_data::features::model_pixels(&pre.image).collect();
    let expected = p
        .predict_pixels_wide(&[px], &[spec.vector(&Metadata::of_drawing(&d))])
        .unwrap();
    for (flag, file) in [("--input-ndjson", &nd), ("--input-examples", &rec)] {
        let got = json_lines(&ok_stdout(&[
            "model",
            "run",
            "--dir",
            s(&dir),
            flag,
            s(file),
            "--json",
        ]));
        assert!(
            close(&got[0]["probabilities"], expected.row(0)),
            "{flag}: {got:?} vs {:?}",
            expected.row(0)
        );
    }
    // ONNX Runtime is fed the wide input too (by name).
    if let Some(lib) = onnxruntime_lib() {
        let got = json_lines(&ok_stdout(&[
            "model",
            "run",
            "--dir",
            s(&dir),
            "--input-ndjson",
            s(&nd),
            "--runtime",
            "onnxruntime",
            "--onnxruntime-lib",
            s(&lib),
            "--json",
        ]));
        assert!(
            close(&got[0]["probabilities"], expected.row(0)),
            "onnxruntime: {got:?} vs {:?}",
            expected.row(0)
        );
    }
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn model_run_json_on_drawings_examples_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = testing::write_demo_export(tmp.path(), 1, SIZE).unwrap();
    let nd = tmp.path().join("drawings.ndjson");
    let mut f = std::fs::File::create(&nd).unwrap();
    writeln!(
        f,
        "{}",
        quickdraw_data::ingest::ndjson::to_line(&gamma(11, false))
    )
    .unwrap();
    writeln!(
        f,
        "{}",
        quickdraw_data::ingest::ndjson::to_line(&gamma(12, true))
    )
    .unwrap();
    writeln!(f, "{{\"broken\": true}}").unwrap();
    drop(f);
    let out = ok_stdout(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-ndjson",
        s(&nd),
        "--json",
        "-k",
        "2",
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "the invalid record is skipped: {out}");
    assert_eq!(lines[0]["key_id"], 11);
    assert_eq!(lines[0]["label"], "left");
    assert_eq!(lines[0]["class"], "left");
    assert_eq!(lines[0]["top_k"].as_array().unwrap().len(), 2);
    assert_eq!(lines[0]["top_k"][0]["class"], "left");
    assert_eq!(lines[0]["top_k"][0]["label"], 1);
    assert_eq!(lines[1]["class"], "right");
    let p0 = lines[0]["top_k"][0]["probability"].as_f64().unwrap();
    assert!(p0 > 0.5 && p0 <= 1.0);

    // The same drawings as tf.Examples in a TFRecord file (as `convert` writes them).
    let spec: FeatureSpec = testing::image_features(SIZE);
    let rec = tmp.path().join("drawings.tfrecord");
    let mut w = TfRecordWriter::create(&rec).unwrap();
    for (i, d) in [gamma(11, false), gamma(12, true)].iter().enumerate() {
        let p = preprocess(&d.ink, &spec).unwrap();
        w.write_record(&encode_example(d, i as i64 + 1, &p, &spec))
            .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let ex = json_lines(&ok_stdout(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-examples",
        s(&rec),
        "--json",
    ]));
    assert_eq!(ex.len(), 2);
    for (a, b) in ex.iter().zip(&lines) {
        assert_eq!(a["key_id"], b["key_id"]);
        assert_eq!(a["class"], b["class"]);
        let (pa, pb) = (
            a["top_k"][0]["probability"].as_f64().unwrap(),
            b["top_k"][0]["probability"].as_f64().unwrap(),
        );
        assert!((pa - pb).abs() < 1e-6, "same preprocessing, same answer");
    }

    // Tensors: np-style shorthand and nested JSON lists.
    let t = json_lines(&ok_stdout(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-exprs",
        "img_8=np.zeros((2,1,8,8))",
        "--json",
    ]));
    assert_eq!(t.len(), 2);
    assert_eq!(t[0]["class"], "blank");
    let left: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..8).map(|x| if x < 4 { 1.0 } else { 0.0 }).collect())
        .collect();
    let expr = format!("img_8={}", serde_json::to_string(&left).unwrap());
    let t = json_lines(&ok_stdout(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-exprs",
        &expr,
        "--json",
    ]));
    assert_eq!(t[0]["class"], "left");
    // Text output and errors naming the expected input.
    let text = ok_stdout(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-ndjson",
        s(&nd),
        "--limit",
        "1",
        "-q",
    ]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("left 0."), "{text}");
    let o = qd(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-exprs",
        "img_9=np.zeros((1,1,9,9))",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("img_8"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A running `quickdraw serve`, killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    /// host:port of the gRPC API.
    pub grpc: String,
    stderr: mpsc::Receiver<String>,
    /// What it printed up to its address line (included).
    startup: Vec<String>,
}

impl Server {
    pub fn start(base: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--model-base-path", s(base)];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    /// A server on free ports, told `args` (which say what to serve).
    pub fn start_with(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--rest-api-port",
                "free",
                "--port",
                "0",
                "--poll-seconds",
                "0.2",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start quickdraw serve");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut startup = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    startup.push(line.clone());
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let url = rest
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .trim_end_matches('/')
                            .to_string();
                        let grpc = line
                            .split("gRPC on ")
                            .nth(1)
                            .and_then(|r| r.split_whitespace().next())
                            .expect("the address line names the gRPC address")
                            .to_string();
                        return Server {
                            child,
                            url,
                            grpc,
                            stderr: rx,
                            startup,
                        };
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server did not print its address: {e}");
                }
            }
        }
    }

    pub fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = Self::agent()
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        (
            r.status().as_u16(),
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, String, Value) {
        let mut r = Self::agent()
            .post(&format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap();
        let version = r
            .headers()
            .get("x-quickdraw-model-version")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.body_mut().read_to_string().unwrap();
        (
            r.status().as_u16(),
            version,
            serde_json::from_str(&text).unwrap(),
        )
    }

    /// Sends SIGTERM and waits: the server shuts down gracefully.
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
        self.stderr.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 10 s) for the server to close `c`; returns how long that took.
fn closed_after(c: &mut TcpStream) -> Duration {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t0.elapsed(),
            Err(e) => panic!(
                "the server kept the connection open for {:?}: {e}",
                t0.elapsed()
            ),
        }
    }
}

/// Reads one `Content-Length` answer from a kept-alive connection.
fn read_answer(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed mid-answer: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The server closes a connection whose request header stalls half-way (slowloris) after
/// `--header-read-timeout-secs`, and a kept-alive one that sends nothing after an answer after
/// `--idle-timeout-secs` (both used to stay open forever); a client that comes back within the
/// idle timeout is still answered, and graceful shutdown still works.
#[test]
fn stalled_headers_and_idle_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    testing::write_demo_export(&base, 1, SIZE).unwrap();
    let args = [
        "--header-read-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "2",
    ];
    let server = Server::start(&base, &args);
    let addr = server.url.trim_start_matches("http://").to_string();
    let request = b"GET /healthz HTTP/1.1\r\nHost: quickdraw\r\n\r\n";

    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(&request[..20]).unwrap();
    let took = closed_after(&mut half);
    assert!(took < Duration::from_secs(4), "half a header kept {took:?}");

    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(request).unwrap();
    assert!(read_answer(&mut idle).starts_with("HTTP/1.1 200"));
    // Back after 1.2 s: past the header timeout, within the idle one, so still answered.
    std::thread::sleep(Duration::from_millis(1200));
    idle.write_all(request).unwrap();
    assert!(read_answer(&mut idle).starts_with("HTTP/1.1 200"));
    let took = closed_after(&mut idle);
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_secs(5),
        "idle connection closed after {took:?} (idle timeout 2 s)"
    );
    server.stop();
}

pub fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn drawing_json(d: &Drawing) -> Value {
    let strokes: Vec<Value> = d
        .strokes()
        .unwrap()
        .iter()
        .map(|s| json!([s.x, s.y]))
        .collect();
    json!({"drawing": strokes, "key_id": d.key_id.to_string(), "countrycode": d.countrycode})
}

#[test]
fn the_page_and_the_metadata_name_the_classes_the_model_knows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = testing::write_demo_export(tmp.path(), 1, SIZE).unwrap();
    let server = Server::start(tmp.path(), &[]);
    let (code, v) = server.get("/v1/models/quickdraw/metadata");
    assert_eq!(code, 200, "{v}");
    let labels: Vec<String> = std::fs::read_to_string(dir.join("assets/labels.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(v["metadata"]["labels"], json!(labels), "{v}");
    let mut page = Server::agent()
        .get(&format!("{}/", server.url))
        .call()
        .unwrap();
    let html = page.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("id=\"classes\"") && html.contains("metadata.labels"),
        "the page lists the classes from the metadata"
    );
    server.stop();
}

/// A training model dir (state.json, checkpoints/) where an export is expected is named as such,
/// with the export folder to use instead.
#[test]
fn a_model_dir_given_as_an_export_points_to_its_export_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("models/cnn");
    std::fs::create_dir_all(model.join("checkpoints/ckpt-10")).unwrap();
    std::fs::write(model.join("state.json"), "{}").unwrap();
    let export = model.join("export");
    let check = |err: &str, what: &str| {
        assert!(
            err.contains("model directory") && err.contains("not an export"),
            "{what}: {err}"
        );
        assert!(
            err.contains(s(&export)),
            "{what} names {}: {err}",
            export.display()
        );
    };
    // No export yet: say how to make one.
    let err = fails(&["model", "show", "--dir", s(&model)]);
    check(&err, "model show");
    assert!(err.contains("quickdraw export --model-dir"), "{err}");
    // With exported versions: point to them, in `model show`, `model run` and `serve`.
    testing::write_demo_export(&export, 1, SIZE).unwrap();
    check(&fails(&["model", "show", "--dir", s(&model)]), "model show");
    check(
        &fails(&[
            "model",
            "run",
            "--dir",
            s(&model),
            "--input-exprs",
            "img_8=np.zeros((1,1,8,8))",
        ]),
        "model run",
    );
    // serve must refuse at once (it would otherwise wait for versions to appear).
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--model-base-path",
            s(&model),
            "--rest-api-port",
            "free",
            "--port",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started on a model dir instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    check(&String::from_utf8_lossy(&o.stderr), "serve");
    // The export folder itself is served.
    let o = qd(&["model", "show", "--dir", s(&export)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn serve_reloads_new_versions_skips_broken_ones_and_logs_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    testing::write_demo_export(&base, 1, SIZE).unwrap();
    let logs = tmp.path().join("logs");
    let server = Server::start(&base, &["--log-requests", s(&logs), "--max-batch", "8"]);

    let (code, v) = server.get("/v1/models/quickdraw");
    assert_eq!(
        (code, &v["model_version_status"][0]["version"]),
        (200, &json!("1"))
    );
    let body =
        json!({"instances": [drawing_json(&gamma(5, false)), drawing_json(&gamma(6, true))]});
    let (code, version, v) = server.post("/v1/models/quickdraw:predict", &body);
    assert_eq!((code, version.as_str()), (200, "1"), "{v}");
    assert_eq!(v["predictions"][0]["class_name"], "left");
    assert_eq!(v["predictions"][1]["class_name"], "right");

    // A new version appears (written elsewhere, renamed in, as an exporter does): served
    // without a restart.
    testing::write_demo_export(&tmp.path().join("staging"), 2, SIZE).unwrap();
    std::fs::rename(tmp.path().join("staging/2"), base.join("2")).unwrap();
    wait_for("version 2", || {
        server.get("/v1/models/quickdraw").1["model_version_status"][0]["version"] == "2"
    });
    let (_, version, _) = server.post("/v1/models/quickdraw:predict", &body);
    assert_eq!(version, "2");

    // A broken version 3 is logged and skipped; 2 keeps serving.
    let d3 = testing::write_demo_export(&tmp.path().join("staging"), 3, SIZE).unwrap();
    std::fs::write(d3.join("model.onnx"), b"not onnx").unwrap();
    std::fs::rename(&d3, base.join("3")).unwrap();
    wait_for("version 3 marked broken", || {
        server.get("/v1/models/quickdraw").1["model_version_status"][0]["state"] == "END"
    });
    let (code, version, _) = server.post(
        "/v1/models/quickdraw:classify",
        &json!({"examples": [drawing_json(&gamma(7, false))]}),
    );
    assert_eq!((code, version.as_str()), (200, "2"));

    // Errors over the wire.
    let (code, _, v) = server.post(
        "/v1/models/quickdraw:predict",
        &json!({"instances": vec![json!([0]); 9]}),
    );
    assert_eq!(code, 413, "{v}");
    let (code, _, v) = server.post(
        "/v1/models/quickdraw:predict",
        &json!({"instances": [[1, 2]]}),
    );
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("img_8"), "{v}");
    let (code, page) = server.get("/");
    assert_eq!(code, 200);
    assert!(page.as_str().unwrap().contains("<canvas"));

    let stderr = server.stop();
    let all = stderr.join("\n");
    assert!(
        all.contains("version 3") && all.contains("failed to load"),
        "the broken version is logged:\n{all}"
    );
    assert!(all.contains("serving version 2"), "{all}");

    // The request log is QuickDraw NDJSON: 5 drawings (2 + 2 predicted, 1 classified), one
    // file per predicted class, readable by convert.
    let left = std::fs::read_to_string(logs.join("left.ndjson")).unwrap();
    assert_eq!(left.lines().count(), 3, "{left}");
    let right = std::fs::read_to_string(logs.join("right.ndjson")).unwrap();
    assert_eq!(right.lines().count(), 2, "{right}");
    let d = quickdraw_data::ingest::ndjson::parse_line(right.lines().next().unwrap().as_bytes())
        .unwrap();
    assert_eq!((d.key_id, d.countrycode.as_str()), (6, "CH"));
    let versions: Vec<u64> = left
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["serving"]["version"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(versions, vec![1, 2, 2]);
    let data = tmp.path().join("from-logs");
    ok_stdout(&[
        "convert",
        "-q",
        "--input",
        s(&logs.join("left.ndjson")),
        s(&logs.join("right.ndjson")),
        "--output",
        s(&data),
        "--split",
        "train=1.0",
        "--shards",
        "1",
        "--size",
        "8",
    ]);
    let m = quickdraw_data::manifest::DatasetManifest::load(&data).unwrap();
    assert_eq!(m.totals.kept, 5, "every logged drawing converts back");

    // Skew of the log against a training set made by synth + convert.
    let raw = tmp.path().join("raw");
    ok_stdout(&[
        "synth",
        "-q",
        "--classes",
        "3",
        "--per-class",
        "60",
        "--output",
        s(&raw),
    ]);
    let train = tmp.path().join("train");
    let raws: Vec<PathBuf> = std::fs::read_dir(&raw)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut args = vec![
        "convert",
        "-q",
        "--output",
        s(&train),
        "--split",
        "train=1.0",
        "--shards",
        "1",
        "--size",
        "8",
        "--input",
    ];
    args.extend(raws.iter().map(|p| s(p)));
    ok_stdout(&args);
    let report: Value = serde_json::from_str(&ok_stdout(&[
        "skew",
        "-q",
        "--log",
        s(&logs),
        "--manifest",
        s(&train.join("manifest.json")),
        "--json",
        "--sample",
        "30",
    ]))
    .unwrap();
    let feats: Vec<&str> = report["numeric"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert_eq!(feats, ["strokes", "points", "ink_share", "aspect"]);
    assert_eq!(report["serve"]["read"], 5);
    assert_eq!(
        report["serve"]["duplicates"], 2,
        "key_ids 5 and 6 were predicted twice"
    );
    assert_eq!(report["numeric"][0]["serve_n"], 3);
    assert!(report["train"]["read"].as_u64().unwrap() >= 60);
    assert_eq!(
        report["numeric"][0]["serve_mean"], 2.0,
        "every logged drawing has 2 strokes"
    );
    let cats: Vec<&str> = report["categorical"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["feature"].as_str().unwrap())
        .collect();
    assert_eq!(cats, ["country", "predicted_class"]);
    let text = ok_stdout(&[
        "skew",
        "-q",
        "--log",
        s(&logs),
        "--manifest",
        s(&train),
        "--sample",
        "30",
    ]);
    assert!(text.contains("ink_share") && text.contains("PSI"), "{text}");
    let o = qd(&[
        "skew",
        "-q",
        "--log",
        s(&logs),
        "--manifest",
        s(&train),
        "--sample",
        "30",
        "--fail-above",
        "0.0001",
    ]);
    assert!(!o.status.success(), "drift above the threshold fails");
}

#[test]
fn browser_draws_and_gets_live_predictions() {
    let root = repo_root();
    let script = root.join("tests/browser/draw.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<String> = [
        (!node_ok).then(|| "node is not on PATH".to_string()),
        (!root
            .join("tests/browser/node_modules/playwright-core")
            .is_dir())
        .then(|| "tests/browser/node_modules (run `npm ci` in tests/browser)".to_string()),
        (!Path::new(&chromium).exists())
            .then(|| format!("{chromium} (apt-get install -y chromium, or set CHROMIUM)")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        let msg = format!("browser test needs: {}", missing.join("; "));
        if std::env::var("QUICKDRAW_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("{msg} (QUICKDRAW_REQUIRE_BROWSER=1)");
        }
        eprintln!("SKIPPED browser_draws_and_gets_live_predictions: {msg}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    let version_dir = testing::write_demo_export(&base, 4, 28).unwrap();
    let labels: Vec<String> = std::fs::read_to_string(version_dir.join("assets/labels.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let logs = tmp.path().join("logs");
    let server = Server::start(&base, &["--log-requests", s(&logs)]);
    let artifacts = root.join("target/test-artifacts");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("{}/", server.url))
        .arg(&artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "draw.mjs failed:\n{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("draw.mjs: {summary}");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["version_shown"], "4");
    assert_eq!(
        summary["classes_shown"],
        json!(labels),
        "the page lists the model's classes"
    );
    assert_eq!(summary["n_classes_shown"], labels.len().to_string());
    assert!(artifacts.join("draw.png").is_file());
    let server_log = server.stop().join("\n");
    assert!(
        server_log.contains(":classify -> 200 version 4"),
        "the server saw the page's requests:\n{server_log}"
    );
    // The page's drawings were logged with their timing (raw format).
    let logged: Vec<Drawing> = std::fs::read_dir(&logs)
        .unwrap()
        .flat_map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|l| quickdraw_data::ingest::ndjson::parse_line(l.as_bytes()).unwrap())
        .collect();
    assert!(!logged.is_empty());
    assert!(
        logged
            .iter()
            .all(|d| d.strokes().unwrap().iter().all(|s| s.t.is_some())),
        "strokes are sent with t"
    );
    let keys: std::collections::BTreeSet<u64> = logged.iter().map(|d| d.key_id).collect();
    assert_eq!(
        keys.len(),
        1,
        "one key_id for the drawing's live guesses and undo: {keys:?}"
    );
    assert!(
        logged.len() >= 3,
        "live guess, finished drawing, after undo: {} lines",
        logged.len()
    );
}

/// ONNX Runtime's shared library from the verification venv's `onnxruntime` wheel (or
/// $ORT_DYLIB_PATH); `None` after a skip message, a failure when QUICKDRAW_REQUIRE_PYTHON is set.
fn onnxruntime_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|pythons| {
        pythons.flatten().find_map(|py| {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()?.flatten().find_map(|f| {
                let name = f.file_name().to_string_lossy().to_string();
                name.starts_with("libonnxruntime.so.").then(|| f.path())
            })
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("QUICKDRAW_REQUIRE_PYTHON").is_none(),
            "QUICKDRAW_REQUIRE_PYTHON is set but no libonnxruntime.so.* under {}/*/site-packages/onnxruntime/capi",
            lib.display()
        );
        eprintln!("SKIP: no onnxruntime wheel in .venv; run scripts/test-all");
    }
    found
}

#[test]
fn onnxruntime_runs_the_same_model_as_tract_in_model_run_and_serve() {
    let Some(lib) = onnxruntime_lib() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The lecture CNN (64x64, random weights): the model the load figures are measured on.
    let dir = testing::write_lecture_cnn_export(tmp.path(), 1, 64, 10).unwrap();
    let nd = tmp.path().join("drawings.ndjson");
    let mut f = std::fs::File::create(&nd).unwrap();
    for k in 0..4 {
        let line = quickdraw_data::ingest::ndjson::to_line(&gamma(20 + k, k % 2 == 1));
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let run = |extra: &[&str]| -> Vec<Vec<f64>> {
        let mut args = vec!["model", "run", "--dir", s(&dir), "--input-ndjson", s(&nd)];
        args.extend_from_slice(extra);
        args.push("--json");
        json_lines(&ok_stdout(&args))
            .iter()
            .map(|v| {
                v["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let tract = run(&["--runtime", "tract"]);
    let ort = run(&["--runtime", "onnxruntime", "--onnxruntime-lib", s(&lib)]);
    assert_eq!(tract.len(), 4);
    assert_eq!(ort.len(), 4);
    for (a, b) in tract.iter().zip(&ort) {
        assert_eq!(a.len(), 10);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "tract {x} vs onnxruntime {y}");
        }
    }

    // The server with ONNX Runtime answers the same, and says which engine it runs.
    let server = Server::start(
        tmp.path(),
        &["--runtime", "onnxruntime", "--onnxruntime-lib", s(&lib)],
    );
    let body = json!({"instances": [drawing_json(&gamma(20, false))]});
    let (code, version, v) = server.post("/v1/models/quickdraw:predict", &body);
    assert_eq!((code, version.as_str()), (200, "1"), "{v}");
    let served: Vec<f64> = v["predictions"][0]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    for (x, y) in tract[0].iter().zip(&served) {
        assert!((x - y).abs() < 1e-4, "tract {x} vs served {y}");
    }
    assert!(
        server
            .startup
            .iter()
            .any(|l| l.contains("(run by onnxruntime;")),
        "{:?}",
        server.startup
    );
    server.stop();

    // Asking for ONNX Runtime without a library, or with a wrong one, is a clear error.
    let o = Command::new(BIN)
        .args(["model", "run", "--dir", s(&dir), "--input-ndjson", s(&nd)])
        .args(["--runtime", "onnxruntime"])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    let missing = tmp.path().join("nowhere/libonnxruntime.so");
    let o = qd(&[
        "model",
        "run",
        "--dir",
        s(&dir),
        "--input-ndjson",
        s(&nd),
        "--onnxruntime-lib",
        s(&missing),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not found"), "{err}");
}

/// A version's warm-up requests (TF Serving's assets.extra/tf_serving_warmup_requests) run
/// before it serves; a version whose warm-up fails is not served, and its status says why.
#[test]
fn versions_warm_up_before_serving_and_a_failing_warm_up_keeps_the_old_one() {
    use quickdraw_serve::warmup;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    let d1 = testing::write_demo_export(&base, 1, SIZE).unwrap();
    let px = vec![0.5; (SIZE * SIZE) as usize];
    let key = format!("img_{SIZE}");
    warmup::write(&d1, &[warmup::image_request(&key, SIZE as usize, &px)]).unwrap();
    let server = Server::start(&base, &[]);
    assert!(
        server
            .startup
            .iter()
            .any(|l| l.contains("warmed up version 1 with 1 request(s)")),
        "{:?}",
        server.startup
    );
    // Version 2's warm-up asks for an input the model does not have: it is not served.
    let staging = tmp.path().join("staging");
    let d2 = testing::write_demo_export(&staging, 2, SIZE).unwrap();
    warmup::write(&d2, &[warmup::image_request("img_99", 99, &[0.5; 99 * 99])]).unwrap();
    std::fs::rename(&d2, base.join("2")).unwrap();
    let mut status = Value::Null;
    wait_for("version 2 to fail its warm-up", || {
        status = server.get("/v1/models/quickdraw").1;
        status["model_version_status"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    });
    let v2 = &status["model_version_status"][0];
    assert_eq!(v2["version"], "2");
    assert_eq!(v2["state"], "END");
    let msg = v2["status"]["error_message"].as_str().unwrap();
    assert!(
        msg.contains("warm-up record 0") && msg.contains("img_99"),
        "{msg}"
    );
    assert_eq!(status["model_version_status"][1]["state"], "AVAILABLE");
}

fn metrics_text(server: &Server) -> String {
    ureq::get(format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap()
}

fn gauge(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Drift gauges (rules #10, #37): predictions far from the training class mix raise the
/// predicted-class PSI and log a warning; inputs like the training ones keep the input PSIs low.
/// Freshness (rule #8): the served version's age and its training data's age.
#[test]
fn drift_and_freshness_gauges_follow_what_is_served() {
    use quickdraw_serve::drift::Reference;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    let dir = testing::write_demo_export(&base, 1, SIZE).unwrap();
    // The training distribution: two strokes per drawing, 6 points, classes in equal shares.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let info = quickdraw_data::signature::load_export_dir(&dir).unwrap();
    let mut m = info.metrics.clone();
    m["exported_at"] = json!(now - 100.0);
    m["dataset_written_at"] = json!(now - 5000.0);
    quickdraw_data::signature::write_metrics(&dir, &m).unwrap();
    let stats = |d: &Drawing| quickdraw_serve::skew::drawing_stats(d, &info.features);
    let sample = quickdraw_serve::skew::Sample {
        stats: (0..300).map(|i| stats(&gamma(i, i % 2 == 0))).collect(),
        ..Default::default()
    };
    let classes = [("blank", 100), ("left", 100), ("right", 100)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    Reference::new(&sample, &classes, "test sample")
        .write(&dir)
        .unwrap();
    let server = Server::start(&base, &["--drift-window", "100"]);
    // Only "left" drawings: the inputs look like training, the predictions do not.
    for i in 0..8 {
        let instances: Vec<Value> = (0..10)
            .map(|k| drawing_json(&gamma(i * 10 + k, false)))
            .collect();
        let (code, _, _) = server.post(
            "/v1/models/quickdraw:predict",
            &json!({ "instances": instances }),
        );
        assert_eq!(code, 200);
    }
    let text = metrics_text(&server);
    let psi = |f: &str| {
        gauge(
            &text,
            &format!("quickdraw_drift_psi{{feature=\"{f}\",model=\"quickdraw\"}}"),
        )
    };
    assert!(psi("predicted_class") > 0.25, "{text}");
    assert!(psi("strokes") < 0.1 && psi("points") < 0.1, "{text}");
    assert_eq!(
        gauge(
            &text,
            "quickdraw_drift_window_predictions{model=\"quickdraw\"}"
        ),
        80.0
    );
    let age = gauge(&text, "quickdraw_model_age_seconds{model=\"quickdraw\"}");
    assert!((100.0..200.0).contains(&age), "{age}");
    let data_age = gauge(
        &text,
        "quickdraw_training_data_age_seconds{model=\"quickdraw\"}",
    );
    assert!((5000.0..5100.0).contains(&data_age), "{data_age}");
    let log = server.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("drift: predicted_class PSI")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("drift: strokes")), "{log:?}");
}

/// `--log-format json`: one JSON object per log line (the address line stays plain text for
/// scripts), one per request at debug level with its fields.
#[test]
fn json_logs_have_one_object_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("export");
    testing::write_demo_export(&base, 1, SIZE).unwrap();
    let server = Server::start(&base, &["--log-format", "json"]);
    let body = json!({"instances": [drawing_json(&gamma(1, false))]});
    assert_eq!(server.post("/v1/models/quickdraw:predict", &body).0, 200);
    let mut lines = server.startup.clone();
    lines.extend(server.stop());
    let objects: Vec<Value> = lines
        .iter()
        .filter(|l| !l.contains("listening on "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let req = objects
        .iter()
        .find(|o| o["path"] == "/v1/models/quickdraw:predict")
        .unwrap_or_else(|| panic!("no request line in {objects:?}"));
    assert_eq!(req["level"], "DEBUG", "{req}");
    assert_eq!(req["method"], "POST");
    assert_eq!(req["status"], 200);
    assert_eq!(req["version"], "1");
    assert!(
        req["ms"].as_f64().is_some() && req["timestamp"].is_string(),
        "{req}"
    );
    assert!(
        objects.iter().any(|o| o["level"] == "INFO"
            && o["message"]
                .as_str()
                .is_some_and(|m| m.contains("serving version 1"))),
        "{objects:?}"
    );
}

/// TF Serving's config files: --model_config_file (a model, its base path and a specific version;
/// a bad base path) and --monitoring_config_file (the metrics path, or no metrics).
#[test]
fn tf_serving_config_files_choose_the_model_version_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("sketches");
    testing::write_demo_export(&base, 1, SIZE).unwrap();
    testing::write_demo_export(&base, 2, SIZE).unwrap();
    let models = tmp.path().join("models.config");
    std::fs::write(
        &models,
        format!(
            "model_config_list {{\n  config {{\n    name: 'doodles'\n    base_path: '{}'\n    model_platform: 'tensorflow'\n    model_version_policy {{ specific {{ versions: 1 }} }}\n  }}\n}}\n",
            s(&base)
        ),
    )
    .unwrap();
    let monitoring = tmp.path().join("monitoring.config");
    std::fs::write(
        &monitoring,
        "prometheus_config { enable: true, path: \"/prom\" }\n",
    )
    .unwrap();
    let server = Server::start_with(&[
        "--model_config_file",
        s(&models),
        "--monitoring_config_file",
        s(&monitoring),
    ]);
    let (code, v) = server.get("/v1/models/doodles");
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["model_version_status"][0]["version"], "1",
        "the pinned version, not 2: {v}"
    );
    assert_eq!(server.get("/v1/models/quickdraw").0, 404);
    assert_eq!(server.get("/prom").0, 200);
    assert_eq!(server.get("/metrics").0, 404, "only the configured path");
    drop(server);

    std::fs::write(&monitoring, "prometheus_config { enable: false }\n").unwrap();
    let server = Server::start_with(&[
        "--model_config_file",
        s(&models),
        "--monitoring_config_file",
        s(&monitoring),
    ]);
    assert_eq!(server.get("/monitoring/prometheus/metrics").0, 404);
    drop(server);

    // A model whose base path is missing is refused at start, naming the file and the model.
    std::fs::write(
        &models,
        format!(
            "model_config_list {{ config {{ name: 'a' base_path: '{}' }} config {{ name: 'b' base_path: '/nonexistent/y' }} }}",
            s(&base)
        ),
    )
    .unwrap();
    let err = fails(&[
        "serve",
        "--model_config_file",
        s(&models),
        "--port",
        "0",
        "--rest-api-port",
        "free",
    ]);
    assert!(
        err.contains("models.config")
            && err.contains("model \"b\"")
            && err.contains("/nonexistent/y"),
        "{err}"
    );
    std::fs::write(
        &models,
        "model_config_list { config { name: 'a' base_pth: '/x' } }",
    )
    .unwrap();
    let err = fails(&["serve", "--model_config_file", s(&models)]);
    assert!(err.contains("base_pth"), "{err}");
}

/// Several models from one --model_config_file, as `tensorflow_model_server` serves them: "a"
/// with `all {}` over versions 1 and 2, "b" with `specific { versions: 7 }` (9 is there too),
/// each on REST and gRPC under its own name and per version; the status lists every served
/// version; an unknown model is a 404 / NOT_FOUND naming the models served; polling picks up
/// and unloads versions per model; metrics carry each model's label.
#[test]
fn a_model_config_file_serves_several_models_and_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (base, v) in [(&a, 1), (&a, 2), (&b, 7), (&b, 9)] {
        testing::write_demo_export(base, v, SIZE).unwrap();
    }
    let models = tmp.path().join("models.config");
    std::fs::write(
        &models,
        format!(
            "model_config_list {{\n  config {{ name: 'a' base_path: '{}' model_platform: 'tensorflow' model_version_policy {{ all {{}} }} }}\n  config {{ name: 'b' base_path: '{}' model_version_policy {{ specific {{ versions: 7 }} }} }}\n}}\n",
            s(&a),
            s(&b)
        ),
    )
    .unwrap();
    let server = Server::start_with(&["--model_config_file", s(&models)]);
    let startup = server.startup.join("\n");
    assert!(
        startup.contains("model \"a\" versions 2, 1") && startup.contains("model \"b\" version 7"),
        "{startup}"
    );

    let versions = |name: &str| -> Vec<(String, String)> {
        let (code, v) = server.get(&format!("/v1/models/{name}"));
        assert_eq!(code, 200, "{v}");
        v["model_version_status"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["version"].as_str().unwrap().to_string(),
                    s["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let avail = |v: &[&str]| -> Vec<(String, String)> {
        v.iter()
            .map(|v| (v.to_string(), "AVAILABLE".to_string()))
            .collect()
    };
    assert_eq!(versions("a"), avail(&["2", "1"]));
    assert_eq!(versions("b"), avail(&["7"]));
    assert_eq!(server.get("/v1/models/a/versions/1").0, 200);
    assert_eq!(
        server.get("/v1/models/b/versions/9").0,
        404,
        "not in the policy"
    );

    // Each model, each version, answers under its name; the header names the version.
    let body = json!({"instances": [drawing_json(&gamma(1, false))]});
    for (path, version) in [
        ("/v1/models/a:predict", "2"),
        ("/v1/models/a/versions/1:predict", "1"),
        ("/v1/models/a/versions/2:classify", "2"),
        ("/v1/models/b:predict", "7"),
        ("/v1/models/b/versions/7:predict", "7"),
    ] {
        let body = if path.ends_with(":classify") {
            json!({"examples": body["instances"]})
        } else {
            body.clone()
        };
        let (code, v, answer) = server.post(path, &body);
        assert_eq!((code, v.as_str()), (200, version), "{path}: {answer}");
    }
    let (code, _, answer) = server.post("/v1/models/b/versions/9:predict", &body);
    assert_eq!(code, 404, "{answer}");
    let msg = answer["error"].as_str().unwrap();
    assert!(
        msg.contains("Specific(b, 9)") && msg.contains("serving versions 7"),
        "{msg}"
    );
    let (code, meta) = server.get("/v1/models/a/versions/1/metadata");
    assert_eq!(code, 200);
    assert_eq!(
        meta["model_spec"],
        json!({"name": "a", "signature_name": "", "version": "1"})
    );
    assert_eq!(
        server.get("/v1/models/b/metadata").1["model_spec"]["name"],
        "b"
    );

    // An unknown model: 404 naming the models served, on every route.
    for path in [
        "/v1/models/c",
        "/v1/models/c/metadata",
        "/v1/models/c/versions/1",
    ] {
        let (code, v) = server.get(path);
        assert_eq!(code, 404, "{path}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("Latest(c)") || msg.contains("Specific(c, 1)"),
            "{msg}"
        );
        assert!(msg.contains("\"a\", \"b\""), "{msg}");
    }
    assert_eq!(server.post("/v1/models/c:predict", &body).0, 404);

    // gRPC: model_spec.name and model_spec.version route the same way.
    let g = &server.grpc;
    let blank = "blank".to_string();
    assert_eq!(
        testing::grpc_predict(g, "a", None, SIZE),
        Ok(("a".to_string(), 2, blank.clone()))
    );
    assert_eq!(
        testing::grpc_predict(g, "a", Some(1), SIZE),
        Ok(("a".to_string(), 1, blank.clone()))
    );
    assert_eq!(
        testing::grpc_predict(g, "b", None, SIZE),
        Ok(("b".to_string(), 7, blank.clone()))
    );
    let e = testing::grpc_predict(g, "b", Some(9), SIZE).unwrap_err();
    assert!(
        e.starts_with("NOT_FOUND") && e.contains("Specific(b, 9)"),
        "{e}"
    );
    let e = testing::grpc_predict(g, "c", None, SIZE).unwrap_err();
    assert!(
        e.starts_with("NOT_FOUND") && e.contains("\"a\", \"b\""),
        "{e}"
    );
    let st = testing::grpc_model_status(g, "a").unwrap();
    assert_eq!(
        st,
        vec![(2, "AVAILABLE".to_string()), (1, "AVAILABLE".to_string())]
    );
    assert!(
        testing::grpc_model_status(g, "c")
            .unwrap_err()
            .starts_with("NOT_FOUND")
    );

    // Polling, per model: a new version of "a" joins, a removed one leaves; "b" keeps 7.
    testing::write_demo_export(&a, 3, SIZE).unwrap();
    std::fs::remove_dir_all(a.join("1")).unwrap();
    wait_for("version 3 of a, without 1", || {
        versions("a") == avail(&["3", "2"])
    });
    assert_eq!(server.post("/v1/models/a:predict", &body).1, "3");
    assert_eq!(server.post("/v1/models/a/versions/1:predict", &body).0, 404);
    assert_eq!(versions("b"), avail(&["7"]));

    let (code, h) = server.get("/healthz");
    assert_eq!(code, 200, "{h}");
    assert_eq!(
        h["models"],
        json!([{"name": "a", "versions": [3, 2]}, {"name": "b", "versions": [7]}])
    );
    let page = server.get("/").1;
    assert!(
        page.as_str().unwrap().contains("const MODEL_NAME = \"a\";"),
        "the page draws for the first model"
    );

    // Every model's series carry its own label; requests for no model carry none.
    let text = metrics_text(&server);
    for needle in [
        r#"quickdraw_requests_total{api="predict",status="200",version="1",model="a"} 1"#,
        r#"quickdraw_requests_total{api="predict",status="200",version="7",model="b"} 2"#,
        r#"quickdraw_requests_total{api="grpc_predict",status="OK",version="7",model="b"} 1"#,
        r#"quickdraw_requests_total{api="predict",status="404",version=""} 1"#,
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
    assert_eq!(
        gauge(&text, "quickdraw_served_model_version{model=\"a\"}"),
        3.0
    );
    assert_eq!(
        gauge(&text, "quickdraw_served_model_version{model=\"b\"}"),
        7.0
    );
    assert_eq!(
        gauge(
            &text,
            "quickdraw_model_loads_total{result=\"success\",model=\"a\"}"
        ),
        3.0
    );
    server.stop();
}
