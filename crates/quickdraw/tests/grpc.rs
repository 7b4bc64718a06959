//! `serve`'s gRPC API driven by TensorFlow Serving's own Python client (PyPI
//! `tensorflow-serving-api` and `tf.make_tensor_proto`, in the verification venv; see
//! tests/python/check_grpc.py): Predict (image tensors as tensor_content and float_val, drawings,
//! tf.Examples), Classify, GetModelMetadata and GetModelStatus answer what REST answers (1e-6),
//! and errors come back as gRPC status codes.

use base64::Engine;
use quickdraw_data::features::{encode_example, preprocess};
use quickdraw_serve::testing;
use serde_json::{Value, json};

use crate::serve::{SIZE, Server, drawing_json, gamma};
use crate::util::{repo_root, s, verification_python};

fn diff(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

#[test]
fn tf_servings_python_client_gets_what_rest_answers() {
    let Some(python) = verification_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    testing::write_demo_export(tmp.path(), 4, SIZE).unwrap();
    let server = Server::start(tmp.path(), &[]);
    let drawings = [gamma(1, false), gamma(2, true), gamma(3, false)];
    let spec = testing::image_features(SIZE);
    let examples: Vec<String> = drawings
        .iter()
        .map(|d| {
            let p = preprocess(&d.ink, &spec).unwrap();
            base64::engine::general_purpose::STANDARD.encode(encode_example(d, 0, &p, &spec))
        })
        .collect();
    let inputs = tmp.path().join("inputs.json");
    let body = json!({
        "drawings": drawings.iter().map(drawing_json).collect::<Vec<_>>(),
        "examples_b64": examples,
    });
    std::fs::write(&inputs, body.to_string()).unwrap();
    let script = repo_root().join("tests/python/check_grpc.py");
    let out = std::process::Command::new(python)
        .args([
            s(&script),
            &server.grpc,
            &server.url,
            "quickdraw",
            &SIZE.to_string(),
            s(&inputs),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_grpc.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    });

    let key = format!("img_{SIZE}");
    assert_eq!(v["metadata"]["version"], 4, "{v}");
    assert_eq!(v["metadata"]["method_name"], "tensorflow/serving/predict");
    assert_eq!(
        v["metadata"]["inputs"][&key],
        json!({"dtype": "float32", "shape": [-1, 1, SIZE, SIZE]})
    );
    // The export's signature; Predict adds class_name, as REST does.
    assert_eq!(
        v["metadata"]["outputs"],
        json!(["classes", "logits", "probabilities"])
    );
    assert_eq!(
        v["status"],
        json!([{"version": 4, "state": "AVAILABLE", "error_code": 0}])
    );

    let p = &v["predict_image"];
    assert_eq!(p["shape"], json!([3, 3]));
    assert_eq!(
        p["outputs"],
        json!(["class_name", "classes", "logits", "probabilities"])
    );
    assert!(diff(&v, "/predict_image/max_diff_vs_rest") <= 1e-6, "{p}");
    assert!(
        diff(&v, "/predict_image/logits_max_diff_vs_rest") <= 1e-6,
        "{p}"
    );
    assert_eq!(p["classes_equal"], true);
    assert_eq!(p["names_equal"], true);
    assert_eq!(p["version"], 4);
    assert_eq!(v["predict_float_val"]["outputs"], json!(["probabilities"]));
    assert!(diff(&v, "/predict_float_val/max_diff_vs_tensor_content") <= 1e-6);

    assert!(diff(&v, "/predict_drawing/max_diff_vs_rest") <= 1e-6, "{v}");
    let names = json!(["left", "right", "left"]);
    assert_eq!(v["predict_drawing"]["class_name"], names, "{v}");
    assert_eq!(v["classify"]["n"], 3);
    assert_eq!(v["classify"]["labels_equal"], true, "{v}");
    assert!(diff(&v, "/classify/max_diff_vs_rest") <= 1e-6);
    assert_eq!(v["classify"]["top"], names);
    assert_eq!(v["predict_examples_top"], names);

    let e = &v["errors"];
    let starts = |k: &str, code: &str, needle: &str| {
        let got = e[k].as_str().unwrap_or_default();
        assert!(
            got.starts_with(code) && got.contains(needle),
            "{k}: expected {code} mentioning {needle:?}, got {got:?}"
        );
    };
    starts("unknown_model", "NOT_FOUND", "Latest(nope)");
    starts("unknown_version", "NOT_FOUND", "Specific(quickdraw, 99)");
    starts("wrong_dtype", "INVALID_ARGUMENT", "DT_DOUBLE");
    starts("unknown_input", "INVALID_ARGUMENT", "pixels");
    starts("out_of_range_pixels", "INVALID_ARGUMENT", "outside 0..=1");
    starts("too_many_instances", "RESOURCE_EXHAUSTED", "65 instances");
    starts("bad_drawing", "INVALID_ARGUMENT", "instance 0");
    starts("no_metadata_field", "INVALID_ARGUMENT", "metadata_field");

    // Every call was counted, by gRPC method and code, next to the REST requests.
    let metrics = ureq::get(format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    for needle in [
        r#"quickdraw_requests_total{api="grpc_predict",status="OK",version="4",model="quickdraw"}"#,
        r#"quickdraw_requests_total{api="grpc_predict",status="NOT_FOUND",version="",model="quickdraw"}"#,
        r#"quickdraw_requests_total{api="grpc_classify",status="OK",version="4",model="quickdraw"} 1"#,
        r#"quickdraw_requests_total{api="grpc_status",status="OK",version="",model="quickdraw"} 1"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

/// `bench serve`'s load client drives both APIs of a real server: every request answered, and
/// the server counted as many as the client reports.
#[test]
fn bench_serve_loads_rest_and_grpc() {
    let tmp = tempfile::tempdir().unwrap();
    testing::write_demo_export(tmp.path(), 1, SIZE).unwrap();
    let server = Server::start(tmp.path(), &[]);
    let size = SIZE.to_string();
    let out = crate::util::ok_stdout(&[
        "bench",
        "serve",
        "--rest",
        &server.url,
        "--grpc",
        &server.grpc,
        "--connections",
        "1,2",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--input",
        "image",
        "--image-size",
        &size,
    ]);
    let runs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 4, "{out}");
    let mut total = 0;
    for r in &runs {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap(),
            "{r}"
        );
        total += r["requests"].as_u64().unwrap();
    }
    assert_eq!(runs[0]["protocol"], "rest");
    assert_eq!(runs[1]["protocol"], "grpc");
    let metrics = ureq::get(format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let served: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("quickdraw_requests_total{api=\"predict\"")
                || l.starts_with("quickdraw_requests_total{api=\"grpc_predict\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    // The server answered at least what the client counted (requests in flight at the end of a
    // run are answered but not counted by the client).
    assert!(
        served >= total as f64 && served <= (total + 6) as f64,
        "server {served}, client {total}"
    );
}
