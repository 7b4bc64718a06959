//! Warm-up requests, in TensorFlow Serving's format: `assets.extra/tf_serving_warmup_requests`
//! in a version folder, a TFRecord file of `PredictionLog`s. `quickdraw export` writes the
//! export's check sample there ([`write`]); the store runs every record through a newly loaded
//! version before it serves ([`run`]), so the first user request does not pay for the first
//! inference, and a version whose warm-up fails is not served (as TF Serving).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use quickdraw_data::signature::{LENGTHS, STROKES, WIDE};
use quickdraw_data::tfrecord::{TfRecordReader, TfRecordWriter};

use crate::grpc;
use crate::predictor::Predictor;
use crate::proto::serving::{PredictLog, PredictRequest, PredictionLog, prediction_log};
use crate::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use crate::request::{Limits, ModelInput, to_model_input};

/// The folder of extra assets in a version folder (TF Serving's name).
pub const WARMUP_DIR: &str = "assets.extra";
/// The warm-up file in [`WARMUP_DIR`] (TF Serving's name).
pub const WARMUP_FILE: &str = "tf_serving_warmup_requests";
/// Most records run (TF Serving's limit).
pub const MAX_WARMUP_RECORDS: usize = 1000;

/// The warm-up file of a version folder.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(WARMUP_DIR).join(WARMUP_FILE)
}

fn tensor(dtype: DataType, dims: &[usize]) -> TensorProto {
    TensorProto {
        dtype: dtype as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: dims
                .iter()
                .map(|&d| tensor_shape_proto::Dim {
                    size: d as i64,
                    name: String::new(),
                })
                .collect(),
            unknown_rank: false,
        }),
        ..Default::default()
    }
}

/// A Predict request for `n` images `[n, 1, size, size]` under the input `key`.
pub fn image_request(key: &str, size: usize, pixels: &[f32]) -> PredictRequest {
    let n = pixels.len() / (size * size).max(1);
    let mut t = tensor(DataType::DtFloat, &[n, 1, size, size]);
    t.tensor_content = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    PredictRequest {
        inputs: [(key.to_string(), t)].into(),
        ..Default::default()
    }
}

/// A Predict request for `n` images `[n, 1, size, size]` under the input `key` and their
/// metadata vectors `[n, W]` under `wide` (wide & deep models).
pub fn image_wide_request(key: &str, size: usize, pixels: &[f32], wide: &[f32]) -> PredictRequest {
    let mut r = image_request(key, size, pixels);
    let n = pixels.len() / (size * size).max(1);
    let mut t = tensor(DataType::DtFloat, &[n, wide.len() / n.max(1)]);
    t.tensor_content = wide.iter().flat_map(|v| v.to_le_bytes()).collect();
    r.inputs.insert(WIDE.to_string(), t);
    r
}

/// A Predict request for stroke sequences `[n, steps, 3]` and their `lengths`.
pub fn stroke_request(steps: usize, strokes: &[f32], lengths: &[i64]) -> PredictRequest {
    let mut s = tensor(DataType::DtFloat, &[lengths.len(), steps, 3]);
    s.tensor_content = strokes.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut l = tensor(DataType::DtInt64, &[lengths.len()]);
    l.int64_val = lengths.to_vec();
    PredictRequest {
        inputs: [(STROKES.to_string(), s), (LENGTHS.to_string(), l)].into(),
        ..Default::default()
    }
}

/// Writes `requests` as the warm-up file of the version folder `dir`; returns its path.
pub fn write(dir: &Path, requests: &[PredictRequest]) -> std::io::Result<PathBuf> {
    let p = path(dir);
    std::fs::create_dir_all(dir.join(WARMUP_DIR))?;
    let mut w = TfRecordWriter::create(&p)?;
    for r in requests {
        let log = PredictionLog {
            log_type: Some(prediction_log::LogType::PredictLog(PredictLog {
                request: Some(r.clone()),
                response: None,
            })),
        };
        w.write_record(&log.encode_to_vec())?;
    }
    w.flush()?;
    w.into_inner().into_inner()?.sync_all()?;
    Ok(p)
}

/// What a warm-up did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmed {
    pub records: usize,
    pub took: Duration,
}

/// Runs a version's warm-up file through `p` (the export's preprocessing and graph, as a
/// request would): `None` when the version has none; an error names the record.
pub fn run(p: &Predictor) -> Result<Option<Warmed>, String> {
    let file = path(&p.info().dir);
    if !file.exists() {
        return Ok(None);
    }
    let t0 = Instant::now();
    let mut r = TfRecordReader::open(&file).map_err(|e| e.to_string())?;
    let limits = Limits {
        max_batch: usize::MAX,
        ..Limits::default()
    };
    let (mut buf, mut records) = (Vec::new(), 0);
    while records < MAX_WARMUP_RECORDS && r.read_into(&mut buf).map_err(|e| e.to_string())? {
        let fail = |e: String| format!("warm-up record {records} of {}: {e}", file.display());
        let log = PredictionLog::decode(buf.as_slice())
            .map_err(|e| fail(format!("not a PredictionLog: {e}")))?;
        let instances = match log.log_type {
            Some(prediction_log::LogType::PredictLog(l)) => {
                let req = l.request.unwrap_or_default();
                grpc::predict_instances(&req.inputs, p, &limits)
            }
            Some(prediction_log::LogType::ClassifyLog(l)) => {
                let req = l.request.unwrap_or_default();
                grpc::classify_examples(req.input).map(|examples| {
                    examples
                        .into_iter()
                        .map(|e| crate::request::Instance::Example(e.encode_to_vec()))
                        .collect()
                })
            }
            None => Ok(Vec::new()),
        }
        .map_err(|s| fail(s.message().to_string()))?;
        let (input, spec) = (p.inputs(), &p.info().features);
        let inputs = instances
            .iter()
            .enumerate()
            .map(|(i, inst)| to_model_input(inst, i, input, spec))
            .collect::<Result<Vec<ModelInput>, _>>()
            .map_err(|e| fail(e.message))?;
        if !inputs.is_empty() {
            p.predict_inputs(inputs).map_err(|e| fail(e.to_string()))?;
        }
        records += 1;
    }
    Ok(Some(Warmed {
        records,
        took: t0.elapsed(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn a_written_warmup_file_runs_and_a_wrong_one_names_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_demo_export(tmp.path(), 1, 8).unwrap();
        let p = Predictor::load(&dir).unwrap();
        assert_eq!(run(&p).unwrap(), None, "no file: nothing to run");
        let good = image_request("img_8", 8, &[0.5; 2 * 64]);
        write(&dir, &[good.clone(), good]).unwrap();
        let w = run(&p).unwrap().expect("the file is run");
        assert_eq!(w.records, 2);

        // A wide & deep version warms up with its metadata vectors, or without them (zeros).
        let wide_dir = testing::write_wide_demo_export(tmp.path(), 2, 8).unwrap();
        let wp = Predictor::load(&wide_dir).unwrap();
        let mut wide = vec![0.0; 2 * 27];
        wide[5] = 1.0;
        write(
            &wide_dir,
            &[
                image_wide_request("img_8", 8, &[0.5; 2 * 64], &wide),
                image_request("img_8", 8, &[0.5; 64]),
            ],
        )
        .unwrap();
        assert_eq!(run(&wp).unwrap().unwrap().records, 2);
        write(
            &wide_dir,
            &[image_wide_request("img_8", 8, &[0.5; 64], &[0.0; 26])],
        )
        .unwrap();
        let e = run(&wp).unwrap_err();
        assert!(
            e.contains("warm-up record 0") && e.contains("[1, 27]"),
            "{e}"
        );

        let wrong = image_request("img_16", 16, &[0.5; 256]);
        write(&dir, &[image_request("img_8", 8, &[0.5; 64]), wrong]).unwrap();
        let e = run(&p).unwrap_err();
        assert!(
            e.contains("warm-up record 1") && e.contains("img_16"),
            "{e}"
        );
    }
}
