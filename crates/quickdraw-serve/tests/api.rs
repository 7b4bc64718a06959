//! REST API tests through the router (`tower::ServiceExt::oneshot`, as axum's testing example):
//! status, metadata, predict (row, columnar; drawings, tensors, tf.Examples), classify, errors
//! and their codes, limits (413), hot reload, broken versions, request logs, CORS, the page,
//! several models in one state.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine;
use quickdraw_data::example::{Example, Feature};
use quickdraw_data::{Ink, Stroke};
use quickdraw_serve::request::Limits;
use quickdraw_serve::{AppState, BatchConfig, ModelStore, Predictor, app, testing};
use serde_json::{Value, json};
use tower::ServiceExt;

const SIZE: u32 = 8;

fn limits() -> Limits {
    Limits {
        max_body_bytes: 64 << 10,
        max_batch: 4,
        max_strokes: 50,
        max_points: 500,
    }
}

fn state(base: &Path, log: Option<&Path>) -> AppState {
    state_with_limits(base, log, limits())
}

fn state_with_limits(base: &Path, log: Option<&Path>, limits: Limits) -> AppState {
    let store = Arc::new(ModelStore::open(base, true).unwrap());
    let log = log.map(|d| quickdraw_serve::reqlog::RequestLog::open(d).unwrap());
    AppState::new("quickdraw", store, limits, log, true)
}

/// A demo export as version 1, served with `limits`.
fn setup_with_limits(limits: Limits) -> (tempfile::TempDir, AppState) {
    let tmp = tempfile::tempdir().unwrap();
    testing::write_demo_export(tmp.path(), 1, SIZE).unwrap();
    let st = state_with_limits(tmp.path(), None, limits);
    (tmp, st)
}

fn setup() -> (tempfile::TempDir, AppState) {
    setup_with_limits(limits())
}

async fn call(
    st: &AppState,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    call_raw(st, method, uri, body).await
}

async fn call_raw(
    st: &AppState,
    method: &str,
    uri: &str,
    body: String,
) -> (StatusCode, HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, v)
}

fn left_half() -> Vec<f32> {
    let s = SIZE as usize;
    (0..s * s)
        .map(|i| if i % s < s / 2 { 1.0 } else { 0.0 })
        .collect()
}

/// A "Γ" drawing: a long vertical stroke with a short bar to its right, so once centred most
/// ink is in the left half; `mirrored` flips it.
fn gamma(mirrored: bool) -> Value {
    let x = |v: f32| if mirrored { 255.0 - v } else { v };
    json!({"drawing": [[[x(0.0), x(0.0)], [0, 255]], [[x(0.0), x(60.0)], [0, 0]]], "key_id": "42", "word": "left"})
}

fn close(a: &Value, b: &[f32]) -> bool {
    a.as_array()
        .unwrap()
        .iter()
        .zip(b)
        .all(|(x, y)| (x.as_f64().unwrap() as f32 - y).abs() < 1e-5)
}

#[tokio::test]
async fn status_and_metadata_have_tf_serving_shapes() {
    let (_tmp, st) = setup();
    let expected = json!({"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]});
    let (code, _, v) = call(&st, "GET", "/v1/models/quickdraw", None).await;
    assert_eq!((code, &v), (StatusCode::OK, &expected));
    let (code, _, v) = call(&st, "GET", "/v1/models/quickdraw/versions/1", None).await;
    assert_eq!((code, &v), (StatusCode::OK, &expected));
    let (code, _, v) = call(&st, "GET", "/v1/models/quickdraw/versions/2", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Specific(quickdraw, 2)"),
        "{v}"
    );
    let (code, _, v) = call(&st, "GET", "/v1/models/other", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        v["error"].as_str().unwrap().contains("Latest(other)"),
        "{v}"
    );

    let (code, _, v) = call(&st, "GET", "/v1/models/quickdraw/metadata", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        v["model_spec"],
        json!({"name": "quickdraw", "signature_name": "", "version": "1"})
    );
    let sig = &v["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(sig["method_name"], "tensorflow/serving/predict");
    let img = &sig["inputs"]["img_8"];
    assert_eq!(img["dtype"], "DT_FLOAT");
    let dims: Vec<&str> = img["tensor_shape"]["dim"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["size"].as_str().unwrap())
        .collect();
    assert_eq!(dims, ["-1", "1", "8", "8"]);
    assert_eq!(sig["outputs"]["classes"]["dtype"], "DT_INT64");
    assert_eq!(
        sig["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"],
        "3"
    );
    let (code, _, _) = call(&st, "GET", "/v1/models/quickdraw/versions/1/metadata", None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = call(&st, "GET", "/v1/models/quickdraw/versions/9/metadata", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn predict_rows_columns_drawings_and_examples() {
    let (tmp, st) = setup();
    // Image tensors (hand-checked logits: see testing::demo_weights).
    let (code, h, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [left_half(), vec![0.0; 64]]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(h["x-quickdraw-model-version"], "1");
    let p = &v["predictions"];
    assert_eq!(p[0]["classes"], 1);
    assert_eq!(p[0]["class_name"], "left");
    assert!(
        close(&p[0]["logits"], &[0.25, 16.0, 0.0]),
        "{}",
        p[0]["logits"]
    );
    assert_eq!(p[1]["class_name"], "blank");
    let probs: f64 = p[1]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((probs - 1.0).abs() < 1e-5);

    // The same through /versions/1, columnar.
    let (code, _, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw/versions/1:predict",
        Some(json!({"inputs": {"img_8": [left_half()]}})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["outputs"]["classes"], json!([1]));
    assert_eq!(v["outputs"]["class_name"], json!(["left"]));
    assert!(close(&v["outputs"]["logits"][0], &[0.25, 16.0, 0.0]));

    // Drawings: the server's preprocessing is the export's (compare with the Predictor path).
    let (code, _, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [gamma(false), gamma(true)]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["predictions"][0]["class_name"], "left");
    assert_eq!(v["predictions"][1]["class_name"], "right");
    let pr = Predictor::load(&tmp.path().join("1")).unwrap();
    let ink = Ink::Strokes(vec![
        Stroke::new(vec![0.0, 0.0], vec![0.0, 255.0]),
        Stroke::new(vec![0.0, 60.0], vec![0.0, 0.0]),
    ]);
    let img = pr.preprocess(&ink).unwrap().image;
    let direct = pr.predict_images(std::slice::from_ref(&img)).unwrap();
    assert!(close(&v["predictions"][0]["logits"], direct.logits_row(0)));

    // A serialized tf.Example with only the image feature.
    let mut f = std::collections::BTreeMap::new();
    f.insert(
        "img_8".to_string(),
        Feature::int64s(img.iter().map(|&p| p as i64).collect()),
    );
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(Example::from_features(f).to_bytes());
    let (code, _, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [{"b64": b64}]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(close(&v["predictions"][0]["logits"], direct.logits_row(0)));
}

#[tokio::test]
async fn classify_answers_label_score_pairs() {
    let (_tmp, st) = setup();
    let body = json!({"context": {"countrycode": "CH"}, "examples": [{"drawing": gamma(true)["drawing"]}, {"img_8": left_half()}]});
    let (code, _, v) = call(&st, "POST", "/v1/models/quickdraw:classify", Some(body)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let r = v["result"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].as_array().unwrap().len(), 3);
    assert_eq!(r[0][0][0], "right");
    assert_eq!(r[1][0][0], "left");
    let scores: Vec<f64> = r[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
    assert_eq!(v["results"], v["result"]);
}

#[tokio::test]
async fn errors_have_codes_and_name_the_inputs() {
    let (_tmp, st) = setup();
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        (
            "POST",
            "/v1/models/quickdraw:predict",
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "JSON Parse error",
        ),
        (
            "POST",
            "/v1/models/quickdraw:predict",
            json!({"instances": [[1, 2, 3]]}).to_string(),
            StatusCode::BAD_REQUEST,
            "img_8",
        ),
        (
            "POST",
            "/v1/models/quickdraw:predict",
            json!({"instances": [{"pixels": []}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "{\"drawing\"",
        ),
        (
            "POST",
            "/v1/models/quickdraw:predict",
            json!({"instances": [{"drawing": [[[1, 2], [3]]]}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "length_mismatch",
        ),
        (
            "POST",
            "/v1/models/quickdraw:predict",
            json!({"signature_name": "x", "instances": [[0]]}).to_string(),
            StatusCode::BAD_REQUEST,
            "\"x\" not found",
        ),
        (
            "POST",
            "/v1/models/quickdraw:frobnicate",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "unknown verb",
        ),
        (
            "POST",
            "/v1/models/quickdraw",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "needs a verb",
        ),
        (
            "GET",
            "/v1/models/quickdraw:predict",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST",
        ),
        (
            "POST",
            "/v1/models/other:predict",
            json!({"instances": [[0]]}).to_string(),
            StatusCode::NOT_FOUND,
            "Latest(other)",
        ),
        (
            "POST",
            "/v1/models/quickdraw/versions/7:predict",
            json!({"instances": [[0]]}).to_string(),
            StatusCode::NOT_FOUND,
            "Specific(quickdraw, 7)",
        ),
        (
            "POST",
            "/v1/models/quickdraw/versions/x:predict",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "not a non-negative integer",
        ),
        (
            "GET",
            "/v1/nothing",
            String::new(),
            StatusCode::NOT_FOUND,
            "Malformed request",
        ),
        (
            "DELETE",
            "/v1/models/quickdraw",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
    ];
    for (method, uri, body, code, needle) in cases {
        let (got, h, v) = call_raw(&st, method, uri, body.clone()).await;
        assert_eq!(got, code, "{method} {uri} {body}: {v}");
        assert_eq!(h["content-type"], "application/json", "{method} {uri}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {uri}: no error field in {v}"));
        assert!(
            msg.contains(needle),
            "{method} {uri}: {msg:?} should contain {needle:?}"
        );
    }
}

#[tokio::test]
async fn limits_answer_413() {
    let (_tmp, st) = setup();
    let big = "[".to_string() + &vec!["0"; 40_000].join(",") + "]";
    let (code, _, v) = call_raw(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        format!("{{\"instances\": [{big}]}}"),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("larger than 65536 bytes")
    );
    let (code, _, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": vec![vec![0.0; 64]; 5]})),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("5 instances"), "{v}");
    let strokes = vec![json!([[1], [1]]); 51];
    let (code, _, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:classify",
        Some(json!({"examples": [{"drawing": strokes}]})),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(v["error"].as_str().unwrap().contains("51 strokes"), "{v}");
    let long: Vec<u32> = (0..501).collect();
    let (code, _, _) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [{"drawing": [[long.clone(), long]]}]})),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn new_versions_load_and_broken_ones_are_skipped() {
    let (tmp, st) = setup();
    // Version 2: the demo model with the left/right weights swapped.
    let d2 = tmp.path().join("2");
    let (w, b) = testing::demo_weights(SIZE);
    let n = (SIZE * SIZE) as usize;
    let mut swapped = w.clone();
    swapped[n..2 * n].copy_from_slice(&w[2 * n..]);
    swapped[2 * n..].copy_from_slice(&w[n..2 * n]);
    let sig = quickdraw_data::signature::Signature::image(
        quickdraw_data::signature::ModelInfo {
            kind: quickdraw_data::signature::ModelType::Linear,
            config: Value::Null,
        },
        SIZE,
        3,
    );
    testing::write_export(
        &d2,
        &testing::linear_image_model(SIZE, &swapped, &b),
        &sig,
        &testing::demo_labels(),
        &testing::image_features(SIZE),
        &json!({"accuracy": 0.1}),
    )
    .unwrap();
    assert_eq!(st.store().refresh().loaded, Some(2));
    let (_, h, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [left_half()]})),
    )
    .await;
    assert_eq!(h["x-quickdraw-model-version"], "2");
    assert_eq!(
        v["predictions"][0]["class_name"], "right",
        "version 2 answers"
    );

    // A broken version 3 is skipped; 2 keeps serving; the status says why 3 is not.
    let d3 = testing::write_demo_export(tmp.path(), 3, SIZE).unwrap();
    std::fs::write(d3.join("model.onnx"), b"\x08\x01garbage").unwrap();
    let r = st.store().refresh();
    assert_eq!((r.loaded, r.failed.len()), (None, 1));
    let (code, _, v) = call(&st, "GET", "/v1/models/quickdraw", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["model_version_status"][0]["version"], "3");
    assert_eq!(v["model_version_status"][0]["state"], "END");
    assert!(
        v["model_version_status"][0]["status"]["error_message"]
            .as_str()
            .unwrap()
            .contains("model.onnx")
    );
    assert_eq!(v["model_version_status"][1]["state"], "AVAILABLE");
    let (code, h, _) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [left_half()]})),
    )
    .await;
    assert_eq!(
        (code, &h["x-quickdraw-model-version"]),
        (StatusCode::OK, &"2".parse().unwrap())
    );
    let (code, _, _) = call(
        &st,
        "POST",
        "/v1/models/quickdraw/versions/3:predict",
        Some(json!({"instances": [left_half()]})),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn served_drawings_are_logged_as_quickdraw_ndjson() {
    let tmp = tempfile::tempdir().unwrap();
    testing::write_demo_export(tmp.path(), 1, SIZE).unwrap();
    let logs = tmp.path().join("logs");
    let st = state(tmp.path(), Some(&logs));
    let mut raw = gamma(false);
    raw["drawing"] = json!([
        [[10.5, 10.5], [3, 500], [0, 120]],
        [[10.5, 80], [3, 3], [300, 420]]
    ]);
    let (code, h, _) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [raw, left_half()]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let text = std::fs::read_to_string(logs.join("left.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 1, "tensors are not logged");
    let d = quickdraw_data::ingest::ndjson::parse_line(text.trim_end().as_bytes()).unwrap();
    assert_eq!(
        (d.key_id, d.word.as_str(), d.recognized),
        (42, "left", true)
    );
    assert_eq!(d.strokes().unwrap()[1].t, Some(vec![300.0, 420.0]));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["serving"]["version"], 1);
    assert_eq!(
        v["serving"]["request_id"].to_string(),
        h["x-quickdraw-request-id"].to_str().unwrap()
    );
    assert_eq!(v["serving"]["class_name"], "left");
}

#[tokio::test]
async fn health_page_and_cors() {
    let (_tmp, st) = setup();
    let (code, _, v) = call(&st, "GET", "/healthz", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["version"], 1);
    let (code, _, v) = call(&st, "GET", "/", None).await;
    assert_eq!(code, StatusCode::OK);
    let html = v.as_str().unwrap();
    assert!(html.contains("const MODEL_NAME = \"quickdraw\";") && html.contains(":classify"));

    let cors = quickdraw_serve::cors(&[]).unwrap();
    let req = Request::builder()
        .method("OPTIONS")
        .uri("/v1/models/quickdraw:predict")
        .header("origin", "http://example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap();
    let resp = app(st.clone()).layer(cors).oneshot(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");

    // No version loaded: 503 health, 404 status.
    let empty = tempfile::tempdir().unwrap();
    let st = state(empty.path(), None);
    let (code, _, _) = call(&st, "GET", "/healthz", None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let (code, _, _) = call(&st, "GET", "/v1/models/quickdraw", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn stroke_models_take_sequences_and_drawings() {
    let tmp = tempfile::tempdir().unwrap();
    let w = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    testing::write_stroke_export(tmp.path(), 1, &w, &[0.0, 0.0]).unwrap();
    let st = state(tmp.path(), None);
    let body = json!({"instances": [{"strokes": [[5, 0, 0], [4, 0, 1]], "lengths": 2}, {"drawing": [[[0, 10, 20], [0, 0, 0]]]}]});
    let (code, _, v) = call(&st, "POST", "/v1/models/quickdraw:predict", Some(body)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(close(&v["predictions"][0]["logits"], &[9.0, 2.0]));
    // Drawing: points normalised to the box, deltas 0.5 + 0.5 in x, 2 steps.
    assert!(
        close(&v["predictions"][1]["logits"], &[1.0, 2.0]),
        "{}",
        v["predictions"][1]["logits"]
    );
    let (code, _, v) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:predict",
        Some(json!({"instances": [[[1, 2]]]})),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("[T, 3]"), "{v}");
}

/// The acceptance list of hostile inputs, against the server's default limits (what `serve`
/// runs with): each gets its TF Serving status and a message naming the problem, and the server
/// answers a good request afterwards.
#[tokio::test]
async fn hostile_inputs_get_clear_errors_and_the_server_keeps_serving() {
    let (_tmp, st) = setup_with_limits(Limits::default());
    let url = "/v1/models/quickdraw:predict";
    // 10^6 points in one stroke: ~4 MB of JSON, under the 4 MiB body limit, over the points one.
    let million = vec!["0"; 1_000_000].join(",");
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "{\"instances\": [".into(),
            StatusCode::BAD_REQUEST,
            "JSON Parse error",
        ),
        (
            "NaN literal",
            r#"{"instances": [{"drawing": [[[NaN, 1], [1, 2]]]}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "JSON Parse error",
        ),
        (
            "NaN as a string",
            r#"{"instances": [{"drawing": [[["NaN", 1], [1, 2]]]}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "not a number",
        ),
        (
            "drawing of the wrong type",
            r#"{"instances": [{"drawing": "a cat"}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "drawing",
        ),
        (
            "instances of the wrong type",
            r#"{"instances": "a cat"}"#.into(),
            StatusCode::BAD_REQUEST,
            "instances",
        ),
        (
            "empty drawing",
            r#"{"instances": [{"drawing": []}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            "huge numbers",
            r#"{"instances": [{"drawing": [[[1e300, 0], [0, 1e39]]]}]}"#.into(),
            StatusCode::BAD_REQUEST,
            "finite",
        ),
        (
            "10^6 points",
            format!("{{\"instances\": [{{\"drawing\": [[[{million}], [{million}]]]}}]}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "points",
        ),
        (
            "wrong signature name",
            r#"{"signature_name": "predict_images", "instances": [[0]]}"#.into(),
            StatusCode::BAD_REQUEST,
            "\"predict_images\" not found",
        ),
    ];
    for (what, body, code, needle) in cases {
        let (got, _, v) = call_raw(&st, "POST", url, body).await;
        assert_eq!(got, code, "{what}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error field in {v}"));
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should contain {needle:?}"
        );
        assert!(
            msg.len() < 2000,
            "{what}: the message should not echo the request ({} bytes)",
            msg.len()
        );
    }
    for uri in [
        "/v1/models/nope:predict",
        "/v1/models/quickdraw/versions/99:predict",
    ] {
        let (got, _, v) = call(&st, "POST", uri, Some(json!({"instances": [gamma(false)]}))).await;
        assert_eq!(got, StatusCode::NOT_FOUND, "{uri}: {v}");
    }
    let (got, _, v) = call(&st, "POST", url, Some(json!({"instances": [gamma(false)]}))).await;
    assert_eq!(
        got,
        StatusCode::OK,
        "still serving after the bad requests: {v}"
    );
    assert_eq!(v["predictions"].as_array().map(Vec::len), Some(1), "{v}");
}

/// TF Serving answers a wrong method with 405; so does every POST-only route here, with `Allow`
/// and the JSON error body (GET on a `:verb` path used to be a 400).
#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let (_tmp, st) = setup();
    for uri in [
        "/v1/models/quickdraw:predict",
        "/v1/models/quickdraw:classify",
        "/v1/models/quickdraw/versions/1:predict",
        "/v1/models/quickdraw/versions/1:classify",
    ] {
        for method in ["GET", "PUT", "DELETE", "PATCH"] {
            let (code, h, v) = call(&st, method, uri, None).await;
            assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}: {v}");
            assert_eq!(h["allow"], "POST", "{method} {uri}");
            assert_eq!(h["content-type"], "application/json", "{method} {uri}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains("not allowed") && msg.contains(method),
                "{method} {uri}: {v}"
            );
        }
        let (code, h, _) = call(&st, "HEAD", uri, None).await;
        assert_eq!(
            (code, &h["allow"]),
            (StatusCode::METHOD_NOT_ALLOWED, &"POST".parse().unwrap())
        );
    }
    let (code, h, _) = call(&st, "DELETE", "/v1/models/quickdraw/metadata", None).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h["allow"], "GET, HEAD");
}

/// Image tensors must be pixel / 255: a value outside 0..=1 (-3.4e38 made the model's outputs
/// NaN, answered 200 with `null` probabilities) is a 400 naming the instance and the position.
#[tokio::test]
async fn image_values_outside_0_1_are_400_with_their_position() {
    let (_tmp, st) = setup();
    let url = "/v1/models/quickdraw:predict";
    let mut bad = vec![vec![0.5f32; SIZE as usize]; SIZE as usize];
    bad[2][3] = -3.4e38;
    let body = json!({"instances": [left_half(), bad]});
    let (code, _, v) = call(&st, "POST", url, Some(body)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("instance 1") && msg.contains("[2, 3]") && msg.contains("0..=1"),
        "{msg}"
    );
    let mut flat = left_half();
    flat[5] = 1.5;
    let (code, _, v) = call(&st, "POST", url, Some(json!({"inputs": {"img_8": [flat]}}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("[5]"),
        "{v}"
    );
    let (code, _, v) = call(&st, "POST", url, Some(json!({"instances": [left_half()]}))).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let probs = v["predictions"][0]["probabilities"].as_array().unwrap();
    assert!(
        probs.iter().all(|p| p.as_f64().is_some_and(f64::is_finite)),
        "{v}"
    );
}

/// An export whose preprocessing.json asks for absurd raster parameters is refused at load.
#[test]
fn absurd_preprocessing_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    testing::write_demo_export(tmp.path(), 1, SIZE).unwrap();
    let pre = tmp.path().join("1/assets/preprocessing.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&pre).unwrap()).unwrap();
    v["features"]["raster"]["line_width"] = json!(1e30);
    std::fs::write(&pre, v.to_string()).unwrap();
    let e = Predictor::load(&tmp.path().join("1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("preprocessing.json") && e.contains("line_width"),
        "{e}"
    );
}

/// Concurrent requests merged into one inference call (TF Serving's `--enable_batching`) get
/// exactly the answers they get one by one, including a bad request in the same batch.
#[tokio::test]
async fn batched_requests_answer_like_single_ones() {
    let (tmp, single) = setup();
    let store = Arc::new(ModelStore::open(tmp.path(), true).unwrap());
    // Budget of 8 rows and a long timeout: the batch closes when the 8 rows are in, not on a
    // timer, so the grouping below is certain.
    let batched = AppState::with_batching(
        "quickdraw",
        store,
        limits(),
        None,
        true,
        BatchConfig {
            enabled: true,
            max_batch_size: 8,
            batch_timeout: std::time::Duration::from_secs(30),
            num_batch_threads: 1,
            max_enqueued: 100,
            nice: 0,
        },
    );
    // Six requests, 8 rows: drawings, tensors (one request with three rows), and a serialized
    // tf.Example that is not one (valid JSON, so it is queued; its preprocessing fails).
    let not_an_example = base64::engine::general_purpose::STANDARD.encode([0xffu8; 5]);
    let bodies: Vec<Value> = vec![
        json!({"instances": [gamma(false)]}),
        json!({"instances": [left_half()]}),
        json!({"instances": [gamma(true), vec![0.0; 64], left_half()]}),
        json!({"instances": [{"b64": not_an_example}]}),
        json!({"instances": [gamma(true)]}),
        json!({"signature_name": "serving_default", "instances": [vec![0.5; 64]]}),
    ];
    let mut handles = Vec::new();
    for b in bodies.clone() {
        let st = batched.clone();
        handles.push(tokio::spawn(async move {
            call(&st, "POST", "/v1/models/quickdraw:predict", Some(b)).await
        }));
    }
    for (b, h) in bodies.into_iter().zip(handles) {
        let (code, _, v) = h.await.unwrap();
        let (code1, _, v1) = call(&single, "POST", "/v1/models/quickdraw:predict", Some(b)).await;
        assert_eq!(code, code1, "{v} vs {v1}");
        if code != StatusCode::OK {
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("instance 0: not a tf.Example"),
                "{v}"
            );
            assert_eq!(v, v1);
            continue;
        }
        let (p, p1) = (
            v["predictions"].as_array().unwrap(),
            v1["predictions"].as_array().unwrap(),
        );
        assert_eq!(p.len(), p1.len());
        for (a, b) in p.iter().zip(p1) {
            assert_eq!(a["classes"], b["classes"]);
            let b: Vec<f32> = b["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert!(close(&a["probabilities"], &b), "{a} vs {b:?}");
        }
    }
    let (_, _, h) = call(&batched, "GET", "/healthz", None).await;
    let b = &h["batching"];
    assert_eq!(b["enabled"], true);
    // The bad request's row counted towards the budget but was left out of the call.
    assert_eq!(b["inference_calls"], 1, "{h}");
    assert_eq!(b["requests_run"], 5, "{h}");
    assert_eq!(b["rows_run"], 7, "{h}");
    let (_, _, h1) = call(&single, "GET", "/healthz", None).await;
    assert_eq!(h1["batching"]["enabled"], false);
    assert_eq!(h1["batching"]["max_rows_per_call"], 3, "{h1}");
}

/// Several models in one state (`AppState::with_models`): each answers under its own name and
/// per served version; an unknown name is a 404 naming the models; `/healthz` is 503 while a
/// model has no version, naming it, and 200 once each serves one.
#[tokio::test]
async fn several_models_route_by_name_and_version() {
    use quickdraw_serve::config::VersionPolicy;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    testing::write_demo_export(&a, 1, SIZE).unwrap();
    testing::write_demo_export(&a, 2, SIZE).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let open = |base: &Path, policy| {
        Arc::new(
            ModelStore::open_policy(base, true, quickdraw_serve::Runtime::Tract, policy).unwrap(),
        )
    };
    let st = AppState::with_models(
        vec![
            ("a".into(), open(&a, VersionPolicy::All)),
            ("b".into(), open(&b, VersionPolicy::Latest(1))),
        ],
        limits(),
        None,
        true,
        Default::default(),
    );
    let (code, _, h) = call(&st, "GET", "/healthz", None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["status"], "no version loaded of b");
    assert_eq!(
        h["models"],
        json!([{"name": "a", "versions": [2, 1]}, {"name": "b", "versions": []}])
    );
    let body = json!({"instances": [left_half()]});
    for (uri, version) in [
        ("/v1/models/a:predict", "2"),
        ("/v1/models/a/versions/1:predict", "1"),
    ] {
        let (code, h, v) = call(&st, "POST", uri, Some(body.clone())).await;
        assert_eq!(code, StatusCode::OK, "{uri}: {v}");
        assert_eq!(h["x-quickdraw-model-version"], version, "{uri}");
    }
    let (code, _, v) = call(&st, "POST", "/v1/models/b:predict", Some(body.clone())).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "Servable not found for request: Latest(b)");
    let (code, _, v) = call(&st, "GET", "/v1/models/quickdraw", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        v["error"],
        "Servable not found for request: Latest(quickdraw) (no such model; this server serves models \"a\", \"b\")"
    );

    testing::write_demo_export(&b, 4, SIZE).unwrap();
    assert_eq!(st.models()[1].store().refresh().loaded, Some(4));
    let (code, h, _) = call(&st, "POST", "/v1/models/b:predict", Some(body)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h["x-quickdraw-model-version"], "4");
    let (code, _, h) = call(&st, "GET", "/healthz", None).await;
    assert_eq!((code, &h["status"]), (StatusCode::OK, &json!("ok")));
    assert_eq!(h["model"], "a");
}

/// A wide & deep export (the demo image model plus `testing::demo_wide_weights` on the `wide`
/// input) as version 1.
fn wide_setup() -> (tempfile::TempDir, AppState) {
    let tmp = tempfile::tempdir().unwrap();
    testing::write_wide_demo_export(tmp.path(), 1, SIZE).unwrap();
    let st = state(tmp.path(), None);
    (tmp, st)
}

fn logits(v: &Value, i: usize) -> Vec<f32> {
    v["predictions"][i]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let e: Vec<f32> = z.iter().map(|v| v.exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The US, recognized, 2-stroke, 2.5 s drawing's metadata: +1 `left` (country), +2 `right`
/// (recognized), +1 `blank` (2 strokes: bucket 1), +0.75 `right` (2-3 s: bucket 2).
fn us_metadata() -> quickdraw_data::wide::Metadata {
    quickdraw_data::wide::Metadata {
        countrycode: Some("US".into()),
        recognized: Some(true),
        stroke_count: Some(2),
        duration_ms: Some(2500),
    }
}

#[tokio::test]
async fn wide_deep_requests_use_their_metadata() {
    let (tmp, st) = wide_setup();
    let spec = testing::demo_wide_spec();
    let w = spec.dim();
    let url = "/v1/models/quickdraw:predict";

    // The metadata input is in the signature.
    let (_, _, v) = call(&st, "GET", "/v1/models/quickdraw/metadata", None).await;
    let wide_in =
        &v["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["wide"];
    assert_eq!(wide_in["dtype"], "DT_FLOAT", "{v}");
    assert_eq!(wide_in["tensor_shape"]["dim"][1]["size"], w.to_string());

    // Tensors: with metadata, without (all zeros: the image model alone), explicit zeros.
    let body = json!({"instances": [
        {"img_8": left_half(), "wide": spec.vector(&us_metadata())},
        {"img_8": left_half()},
        {"img_8": left_half(), "wide": vec![0.0; w]},
    ]});
    let (code, _, v) = call(&st, "POST", url, Some(body)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let with = [1.25, 17.0, 2.75];
    let without = [0.25, 16.0, 0.0];
    assert!(close(&v["predictions"][0]["logits"], &with), "{v}");
    assert!(close(
        &v["predictions"][0]["probabilities"],
        &softmax(&with)
    ));
    assert!(close(&v["predictions"][1]["logits"], &without), "{v}");
    assert!(close(
        &v["predictions"][1]["probabilities"],
        &softmax(&without)
    ));
    assert_eq!(
        v["predictions"][1], v["predictions"][2],
        "absent = all zeros"
    );
    assert_ne!(
        v["predictions"][0]["probabilities"],
        v["predictions"][1]["probabilities"]
    );

    // Columnar, with the wide column.
    let body = json!({"inputs": {"img_8": [left_half()], "wide": [spec.vector(&us_metadata())]}});
    let (code, _, v) = call(&st, "POST", url, Some(body)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(close(&v["outputs"]["logits"][0], &with), "{v}");

    // A vector of the wrong length is a 400 naming W.
    let body = json!({"instances": [{"img_8": left_half(), "wide": [1.0, 0.0]}]});
    let (code, _, v) = call(&st, "POST", url, Some(body)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("takes 27 floats"),
        "{v}"
    );

    // Drawings: the metadata the request sends. Both have 2 strokes (+1 blank); country and
    // recognized add [0, 1, 2] exactly.
    let mut sent = gamma(false);
    sent["countrycode"] = "US".into();
    sent["recognized"] = true.into();
    let (code, _, v) = call(
        &st,
        "POST",
        url,
        Some(json!({"instances": [gamma(false), sent]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (plain, meta) = (logits(&v, 0), logits(&v, 1));
    let diff: Vec<f32> = meta.iter().zip(&plain).map(|(a, b)| a - b).collect();
    assert!(
        diff.iter()
            .zip([0.0, 1.0, 2.0])
            .all(|(d, e)| (d - e).abs() < 1e-5),
        "{diff:?}"
    );
    // The drawing without metadata is its image plus the stroke count only (no t: no duration).
    let pr = Predictor::load(&tmp.path().join("1")).unwrap();
    let ink = Ink::Strokes(vec![
        Stroke::new(vec![0.0, 0.0], vec![0.0, 255.0]),
        Stroke::new(vec![0.0, 60.0], vec![0.0, 0.0]),
    ]);
    let img: Vec<f32> =
        quickdraw_data::features::model_pixels(&pr.preprocess(&ink).unwrap().image).collect();
    let strokes_only = quickdraw_data::wide::Metadata {
        stroke_count: Some(2),
        ..Default::default()
    };
    let direct = pr
        .predict_pixels_wide(std::slice::from_ref(&img), &[spec.vector(&strokes_only)])
        .unwrap();
    assert!(close(&v["predictions"][0]["logits"], direct.logits_row(0)));
    let image_only = pr.predict_pixels(std::slice::from_ref(&img)).unwrap();
    assert!((direct.logits_row(0)[0] - image_only.logits_row(0)[0] - 1.0).abs() < 1e-5);

    // Raw strokes with times: 0 to 2500 ms is the 2-3 s bucket, +0.75 to `right`.
    let mut timed = gamma(false);
    timed["drawing"] = json!([
        [[0, 0], [0, 255], [0, 900]],
        [[0, 60], [0, 0], [1200, 2500]]
    ]);
    let (code, _, v) = call(&st, "POST", url, Some(json!({"instances": [timed]}))).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let d = logits(&v, 0)[2] - plain[2];
    assert!((d - 0.75).abs() < 1e-5, "{d}");

    // tf.Examples: their metadata features (convert writes them), none = zeros. Classify too.
    let px = pr.preprocess(&ink).unwrap().image;
    let mut f = std::collections::BTreeMap::new();
    f.insert(
        "img_8".to_string(),
        Feature::int64s(px.iter().map(|&p| p as i64).collect()),
    );
    let bare = base64::engine::general_purpose::STANDARD
        .encode(Example::from_features(f.clone()).to_bytes());
    f.insert("countrycode".to_string(), Feature::bytes(b"US".to_vec()));
    f.insert("recognized".to_string(), Feature::int64(1));
    f.insert("stroke_count".to_string(), Feature::int64(2));
    f.insert("duration_ms".to_string(), Feature::int64(2500));
    let full =
        base64::engine::general_purpose::STANDARD.encode(Example::from_features(f).to_bytes());
    let (code, _, v) = call(
        &st,
        "POST",
        url,
        Some(json!({"instances": [{"b64": bare}, {"b64": full.clone()}]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(close(
        &v["predictions"][0]["logits"],
        image_only.logits_row(0)
    ));
    let expected = pr
        .predict_pixels_wide(std::slice::from_ref(&img), &[spec.vector(&us_metadata())])
        .unwrap();
    assert!(
        close(&v["predictions"][1]["logits"], expected.logits_row(0)),
        "{v}"
    );
    let (code, _, c) = call(
        &st,
        "POST",
        "/v1/models/quickdraw:classify",
        Some(json!({"examples": [{"b64": full}]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{c}");
    let top = &c["result"][0][0];
    let best = expected.top_k(0, 1)[0];
    assert_eq!(top[0], pr.labels()[best.0].as_str());
    assert!((top[1].as_f64().unwrap() as f32 - best.1).abs() < 1e-6);

    // A model without a wide input refuses the tensor.
    let (_t, plain_st) = setup();
    let body = json!({"instances": [{"img_8": left_half(), "wide": vec![0.0; w]}]});
    let (code, _, v) = call(&plain_st, "POST", url, Some(body)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("no input \"wide\""),
        "{v}"
    );
}

#[tokio::test]
async fn grpc_predict_takes_an_optional_wide_tensor() {
    use quickdraw_serve::grpc::Grpc;
    use quickdraw_serve::proto::serving::prediction_service_server::PredictionService;
    use quickdraw_serve::proto::serving::{ModelSpec, PredictRequest};
    use quickdraw_serve::proto::tensorflow::{
        DataType, TensorProto, TensorShapeProto, tensor_shape_proto,
    };
    let (_tmp, st) = wide_setup();
    let spec = testing::demo_wide_spec();
    let w = spec.dim();
    let tensor = |dims: &[i64], v: Vec<f32>| TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: dims
                .iter()
                .map(|&size| tensor_shape_proto::Dim {
                    size,
                    name: String::new(),
                })
                .collect(),
            unknown_rank: false,
        }),
        float_val: v,
        ..Default::default()
    };
    let image = tensor(&[1, 1, 8, 8], left_half());
    let request = |inputs: Vec<(&str, TensorProto)>| PredictRequest {
        model_spec: Some(ModelSpec {
            name: "quickdraw".into(),
            ..Default::default()
        }),
        inputs: inputs
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect(),
        output_filter: vec!["logits".into()],
    };
    let g = Grpc::new(st.clone());
    let logits = |r: quickdraw_serve::proto::serving::PredictResponse| -> Vec<f32> {
        r.outputs["logits"]
            .tensor_content
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let close = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    };
    let without = g
        .predict(tonic::Request::new(request(vec![("img_8", image.clone())])))
        .await
        .unwrap()
        .into_inner();
    assert!(close(&logits(without), &[0.25, 16.0, 0.0]));
    let with = g
        .predict(tonic::Request::new(request(vec![
            ("img_8", image.clone()),
            ("wide", tensor(&[1, w as i64], spec.vector(&us_metadata()))),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert!(close(&logits(with), &[1.25, 17.0, 2.75]));
    // A drawing as JSON with its metadata, as REST takes it.
    let drawing = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim {
                size: 2,
                name: String::new(),
            }],
            unknown_rank: false,
        }),
        string_val: vec![gamma(false).to_string().into_bytes(), {
            let mut d = gamma(false);
            d["countrycode"] = "US".into();
            d["recognized"] = true.into();
            d.to_string().into_bytes()
        }],
        ..Default::default()
    };
    let r = g
        .predict(tonic::Request::new(request(vec![("drawing", drawing)])))
        .await
        .unwrap()
        .into_inner();
    let l = logits(r);
    let diff: Vec<f32> = (0..3).map(|i| l[3 + i] - l[i]).collect();
    assert!(close(&diff, &[0.0, 1.0, 2.0]), "{diff:?}");
    // The wrong W is INVALID_ARGUMENT naming the shape it takes.
    let e = g
        .predict(tonic::Request::new(request(vec![
            ("img_8", image),
            ("wide", tensor(&[1, 3], vec![0.0; 3])),
        ])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("it takes [1, 27]"), "{}", e.message());
}
