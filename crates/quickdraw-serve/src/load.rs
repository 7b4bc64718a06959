//! A closed-loop load client for benchmarks (`quickdraw bench serve`): `connections` workers,
//! each on its own connection, send one Predict request after another for a fixed time, over
//! REST (`:predict` JSON on HTTP/1.1 keep-alive) or gRPC (`PredictionService.Predict` on HTTP/2),
//! and report requests/s and latency percentiles. The same client and the same input for both
//! protocols, so their figures compare the servers, not the clients.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::proto::serving::PredictRequest;
use crate::proto::serving::prediction_service_client::PredictionServiceClient;
use crate::proto::tensorflow::{DataType, TensorProto};
use crate::warmup;

/// Which API is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rest,
    Grpc,
}

/// What each request carries.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadInput {
    /// One model-input image `[1, 1, size, size]` (pixel / 255) under the input `key`.
    Image { key: String, size: usize },
    /// One drawing as JSON (`{"drawing": [[[x..],[y..]],..]}`), preprocessed by the server.
    Drawing(serde_json::Value),
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub protocol: Protocol,
    /// REST: `http://host:port`; gRPC: `host:port`.
    pub target: String,
    pub model: String,
    pub connections: usize,
    /// Timed part of the run.
    pub duration: Duration,
    /// Untimed requests first (connections opened, server warmed).
    pub warmup: Duration,
    pub input: LoadInput,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub protocol: Protocol,
    pub connections: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// The image every request sends: a fixed pattern of valid pixels.
fn pixels(size: usize) -> Vec<f32> {
    (0..size * size)
        .map(|i| ((i * 37) % 256) as f32 / 255.0)
        .collect()
}

fn rest_body(input: &LoadInput) -> Bytes {
    let instance = match input {
        LoadInput::Image { size, .. } => {
            let px = pixels(*size);
            let rows: Vec<&[f32]> = px.chunks(*size).collect();
            serde_json::json!([rows])
        }
        LoadInput::Drawing(d) => d.clone(),
    };
    Bytes::from(serde_json::json!({ "instances": [instance] }).to_string())
}

fn grpc_request(model: &str, input: &LoadInput) -> PredictRequest {
    let mut r = match input {
        LoadInput::Image { key, size } => warmup::image_request(key, *size, &pixels(*size)),
        LoadInput::Drawing(d) => {
            let t = TensorProto {
                dtype: DataType::DtString as i32,
                tensor_shape: Some(crate::proto::tensorflow::TensorShapeProto {
                    dim: vec![crate::proto::tensorflow::tensor_shape_proto::Dim {
                        size: 1,
                        name: String::new(),
                    }],
                    unknown_rank: false,
                }),
                string_val: vec![d.to_string().into_bytes()],
                ..Default::default()
            };
            PredictRequest {
                inputs: [(crate::grpc::DRAWING_INPUT.to_string(), t)].into(),
                ..Default::default()
            }
        }
    };
    r.model_spec = Some(crate::proto::serving::ModelSpec {
        name: model.into(),
        ..Default::default()
    });
    r
}

/// One worker's latencies (seconds, timed part only) and errors.
type Worker = (Vec<f64>, u64);

async fn rest_worker(cfg: LoadConfig, start: Instant) -> Result<Worker, String> {
    // One connection per worker: a pool of at most one idle connection, used serially.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http();
    let uri: hyper::Uri = format!("{}/v1/models/{}:predict", cfg.target, cfg.model)
        .parse()
        .map_err(|e| format!("{}: {e}", cfg.target))?;
    let body = rest_body(&cfg.input);
    let (mut lat, mut errors) = (Vec::new(), 0);
    let end = start + cfg.warmup + cfg.duration;
    while Instant::now() < end {
        let t0 = Instant::now();
        let req = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let ok = match client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status.is_success()
            }
            Err(_) => false,
        };
        record(t0, start + cfg.warmup, ok, &mut lat, &mut errors);
    }
    Ok((lat, errors))
}

async fn grpc_worker(cfg: LoadConfig, start: Instant) -> Result<Worker, String> {
    let mut client = PredictionServiceClient::connect(format!("http://{}", cfg.target))
        .await
        .map_err(|e| format!("connecting to {}: {e}", cfg.target))?
        .max_decoding_message_size(64 << 20);
    let req = grpc_request(&cfg.model, &cfg.input);
    let (mut lat, mut errors) = (Vec::new(), 0);
    let end = start + cfg.warmup + cfg.duration;
    while Instant::now() < end {
        let t0 = Instant::now();
        let ok = client.predict(req.clone()).await.is_ok();
        record(t0, start + cfg.warmup, ok, &mut lat, &mut errors);
    }
    Ok((lat, errors))
}

fn record(t0: Instant, timed_from: Instant, ok: bool, lat: &mut Vec<f64>, errors: &mut u64) {
    if t0 < timed_from {
        return;
    }
    if ok {
        lat.push(t0.elapsed().as_secs_f64());
    } else {
        *errors += 1;
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i] * 1e3
}

/// Runs the load on the current tokio runtime.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, String> {
    let start = Instant::now();
    let workers: Vec<_> = (0..cfg.connections.max(1))
        .map(|_| {
            let c = cfg.clone();
            tokio::spawn(async move {
                match c.protocol {
                    Protocol::Rest => rest_worker(c, start).await,
                    Protocol::Grpc => grpc_worker(c, start).await,
                }
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await.map_err(|e| e.to_string())??;
        lat.extend(l);
        errors += e;
    }
    let seconds = cfg.duration.as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(LoadReport {
        protocol: cfg.protocol,
        connections: cfg.connections,
        requests: lat.len() as u64,
        errors,
        seconds,
        requests_per_second: lat.len() as f64 / seconds,
        p50_ms: percentile(&lat, 0.50),
        p90_ms: percentile(&lat, 0.90),
        p99_ms: percentile(&lat, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_latencies() {
        let v: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        assert!((percentile(&v, 0.5) - 51.0).abs() < 1e-9);
        assert!((percentile(&v, 0.99) - 99.0).abs() < 1e-9);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn both_protocols_carry_the_same_image() {
        let input = LoadInput::Image {
            key: "img_2".into(),
            size: 2,
        };
        let body: serde_json::Value = serde_json::from_slice(&rest_body(&input)).unwrap();
        let rest: Vec<f32> = body["instances"][0][0]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let g = grpc_request("m", &input);
        let t = &g.inputs["img_2"];
        let grpc: Vec<f32> = t
            .tensor_content
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(rest, grpc);
        assert_eq!(g.model_spec.unwrap().name, "m");
    }
}
