//! TensorFlow Serving's gRPC API: `tensorflow.serving.PredictionService` (`Predict`, `Classify`,
//! `GetModelMetadata`) and `ModelService.GetModelStatus`, over the same models (the one that
//! `model_spec.name` names, the version `model_spec.version` asks for or the newest), limits,
//! preprocessing and inference queue as the REST API ([`crate::api`]); errors are the REST
//! API's, mapped to gRPC status codes.
//!
//! Predict inputs (TensorProtos, by the alias in `PredictRequest.inputs`):
//! - the model's own input: `img_S` (`DT_FLOAT` `[N, 1, S, S]`, `[N, S, S]` or `[N, S*S]`,
//!   pixel / 255) for image models, plus for wide & deep models an optional `wide`
//!   (`DT_FLOAT [N, W]`, the metadata vector; absent: all zeros, no metadata); `strokes`
//!   (`DT_FLOAT [N, T, 3]`) and `lengths` (`DT_INT64 [N]`) for stroke models; values in
//!   `float_val`/`int64_val` or `tensor_content`;
//! - `drawing`: a `DT_STRING [N]` tensor, each value one drawing as JSON, e.g. a line of
//!   QuickDraw's NDJSON (`{"word": .., "drawing": [[[x..],[y..]],..], ..}`): the server
//!   preprocesses it exactly as training did (and builds a wide & deep model's `wide` vector
//!   from its `countrycode`, `recognized`, strokes and `t` arrays, as REST does);
//! - `examples`: a `DT_STRING [N]` tensor of serialized `tf.Example`s (the features `convert`
//!   writes; a wide & deep model also reads their metadata features).
//!
//! `Classify` takes `tf.Example`s (a wide & deep model reads their metadata features too).
//!
//! Outputs: `probabilities` and `logits` (`DT_FLOAT [N, C]`), `classes` (`DT_INT64 [N]`) and
//! `class_name` (`DT_STRING [N]`), filtered by `output_filter`.

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use prost::Message;
use quickdraw_data::example::Example;
use quickdraw_data::signature::{
    DEFAULT_SIGNATURE, DType, InputKind, LENGTHS, STROKES, TensorSpec, WIDE,
};
use quickdraw_data::strokes::StrokeFeatures;
use tonic::{Code, Request, Response, Status};

use crate::api::{self, Answer, ApiError, AppState, Encode, Model, Verb};
use crate::predictor::{Predictor, Probabilities};
use crate::proto::serving::model_service_server::{ModelService, ModelServiceServer};
use crate::proto::serving::prediction_service_server::{
    PredictionService, PredictionServiceServer,
};
use crate::proto::serving::{self as pb, model_spec::VersionChoice};
use crate::proto::tensorflow::{
    DataType, SignatureDef, TensorInfo, TensorProto, TensorShapeProto, error, tensor_info,
    tensor_shape_proto,
};
use crate::request::{
    Inputs, Instance, Limits, RequestError, check_pixels, check_wide, parse_drawing_instance,
};

/// Predict input alias for drawings as JSON strings.
pub const DRAWING_INPUT: &str = "drawing";
/// Predict input alias for serialized `tf.Example`s.
pub const EXAMPLES_INPUT: &str = "examples";
/// The `GetModelMetadataRequest.metadata_field` this server answers.
pub const SIGNATURE_DEF_FIELD: &str = "signature_def";
const SIGNATURE_DEF_MAP_URL: &str = "type.googleapis.com/tensorflow.serving.SignatureDefMap";

/// Both services over one [`AppState`]; [`Grpc::routes`] gives them to tonic's server.
#[derive(Debug, Clone)]
pub struct Grpc {
    st: AppState,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match e.status {
            StatusCode::BAD_REQUEST => Code::InvalidArgument,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
            _ => Code::Internal,
        };
        Status::new(code, e.message)
    }
}

fn bad(m: impl Into<String>) -> Status {
    Status::invalid_argument(m)
}

fn req_err(e: RequestError) -> Status {
    ApiError::from(e).into()
}

impl Grpc {
    pub fn new(st: AppState) -> Grpc {
        Grpc { st }
    }

    /// The two services, with gRPC messages limited to the REST API's body limit.
    pub fn routes(self) -> tonic::service::Routes {
        let limit = self.st.limits().max_body_bytes;
        let predict = PredictionServiceServer::new(self.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX);
        let models = ModelServiceServer::new(self).max_decoding_message_size(limit);
        tonic::service::Routes::new(predict).add_service(models)
    }

    /// The model a spec names and its predictor (the newest served version, or the version
    /// asked for when it is served).
    fn predictor(
        &self,
        spec: Option<&pb::ModelSpec>,
    ) -> Result<(Arc<Model>, Arc<Predictor>), Status> {
        let spec = spec.ok_or_else(|| bad("Missing ModelSpec"))?;
        if !spec.signature_name.is_empty() && spec.signature_name != DEFAULT_SIGNATURE {
            return Err(bad(format!(
                "Serving signature name: \"{}\" not found in signature def (this model has \"{DEFAULT_SIGNATURE}\")",
                spec.signature_name
            )));
        }
        let version = version_of(spec)?;
        let model = self.st.model(&spec.name, version)?;
        let p = model.predictor(version)?;
        Ok((model.clone(), p))
    }

    /// Counts and logs one call for `model` (the name asked for) like the REST access log.
    fn observe<T>(
        &self,
        model: &str,
        api: &str,
        t0: Instant,
        r: &Result<Response<T>, Status>,
        version: &str,
    ) {
        let code = match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        let secs = t0.elapsed().as_secs_f64();
        let code = code_name(code);
        if self.st.metrics_enabled() {
            self.st
                .metrics()
                .observe_request(model, api, version, code, secs);
        }
        if !self.st.quiet() {
            let v = if version.is_empty() {
                String::new()
            } else {
                format!(" version {version}")
            };
            let ms = secs * 1e3;
            tracing::debug!(
                target: api::ACCESS_LOG,
                protocol = "grpc",
                model,
                api,
                status = code,
                version,
                ms,
                "gRPC {api} -> {code}{v} ({ms:.1} ms)"
            );
        }
    }

    async fn predict_inner(
        &self,
        r: pb::PredictRequest,
    ) -> Result<(Response<pb::PredictResponse>, String), Status> {
        let (m, p) = self.predictor(r.model_spec.as_ref())?;
        let version = p.version().unwrap_or(0).to_string();
        let instances = predict_instances(&r.inputs, &p, self.st.limits())?;
        let filter = output_filter(&r.output_filter)?;
        let (answer, _) =
            api::run(&self.st, &m, &p, instances, Verb::Predict, Encode::Outputs).await?;
        let probs = outputs(answer)?;
        let mut outputs = std::collections::HashMap::new();
        for name in filter {
            outputs.insert(name.to_string(), output_tensor(name, &p, &probs));
        }
        let resp = pb::PredictResponse {
            model_spec: Some(spec_of(&m, &p)),
            outputs,
        };
        Ok((Response::new(resp), version))
    }

    async fn classify_inner(
        &self,
        r: pb::ClassificationRequest,
    ) -> Result<(Response<pb::ClassificationResponse>, String), Status> {
        let (m, p) = self.predictor(r.model_spec.as_ref())?;
        let version = p.version().unwrap_or(0).to_string();
        let examples = classify_examples(r.input)?;
        check_batch(examples.len(), self.st.limits())?;
        let instances = examples
            .into_iter()
            .map(|e| Instance::Example(e.encode_to_vec()))
            .collect();
        let (answer, _) =
            api::run(&self.st, &m, &p, instances, Verb::Classify, Encode::Outputs).await?;
        let probs = outputs(answer)?;
        let classifications = (0..probs.len())
            .map(|i| pb::Classifications {
                classes: probs
                    .top_k(i, probs.n_classes)
                    .into_iter()
                    .map(|(c, score)| pb::Class {
                        label: api::label(&p, c as i64).to_string(),
                        score,
                    })
                    .collect(),
            })
            .collect();
        let resp = pb::ClassificationResponse {
            model_spec: Some(spec_of(&m, &p)),
            result: Some(pb::ClassificationResult { classifications }),
        };
        Ok((Response::new(resp), version))
    }

    fn metadata_inner(
        &self,
        r: pb::GetModelMetadataRequest,
    ) -> Result<(Response<pb::GetModelMetadataResponse>, String), Status> {
        if r.metadata_field.is_empty() {
            return Err(bad(
                "GetModelMetadataRequest must specify at least one metadata_field",
            ));
        }
        if let Some(f) = r.metadata_field.iter().find(|f| *f != SIGNATURE_DEF_FIELD) {
            return Err(bad(format!(
                "Metadata field {f} is not supported (this server answers {SIGNATURE_DEF_FIELD:?})"
            )));
        }
        let (m, p) = self.predictor(r.model_spec.as_ref())?;
        let map = pb::SignatureDefMap {
            signature_def: [(p.info().signature.signature_name.clone(), signature_def(&p))].into(),
        };
        let any = prost_types::Any {
            type_url: SIGNATURE_DEF_MAP_URL.into(),
            value: map.encode_to_vec(),
        };
        let resp = pb::GetModelMetadataResponse {
            model_spec: Some(spec_of(&m, &p)),
            metadata: [(SIGNATURE_DEF_FIELD.to_string(), any)].into(),
        };
        Ok((Response::new(resp), p.version().unwrap_or(0).to_string()))
    }

    fn status_inner(
        &self,
        r: pb::GetModelStatusRequest,
    ) -> Result<Response<pb::GetModelStatusResponse>, Status> {
        let spec = r.model_spec.ok_or_else(|| bad("Missing ModelSpec"))?;
        let version = version_of(&spec)?;
        let list: Vec<_> = self
            .st
            .model(&spec.name, version)?
            .store()
            .status()
            .into_iter()
            .filter(|s| version.is_none_or(|v| v == s.version))
            .map(|s| pb::ModelVersionStatus {
                version: i64::try_from(s.version).unwrap_or(i64::MAX),
                state: match s.state {
                    "AVAILABLE" => pb::model_version_status::State::Available,
                    "END" => pb::model_version_status::State::End,
                    "LOADING" => pb::model_version_status::State::Loading,
                    _ => pb::model_version_status::State::Unknown,
                } as i32,
                status: Some(pb::StatusProto {
                    error_code: if s.error_code == "OK" {
                        error::Code::Ok
                    } else {
                        error::Code::Unknown
                    } as i32,
                    error_message: s.error_message,
                }),
            })
            .collect();
        if list.is_empty() {
            return Err(api::servable_not_found(&spec.name, version).into());
        }
        Ok(Response::new(pb::GetModelStatusResponse {
            model_version_status: list,
        }))
    }
}

#[tonic::async_trait]
impl PredictionService for Grpc {
    async fn predict(
        &self,
        r: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let t0 = Instant::now();
        let r = r.into_inner();
        let model = name_of(r.model_spec.as_ref());
        let (r, v) = split(self.predict_inner(r).await);
        self.observe(&model, "grpc_predict", t0, &r, &v);
        r
    }

    async fn classify(
        &self,
        r: Request<pb::ClassificationRequest>,
    ) -> Result<Response<pb::ClassificationResponse>, Status> {
        let t0 = Instant::now();
        let r = r.into_inner();
        let model = name_of(r.model_spec.as_ref());
        let (r, v) = split(self.classify_inner(r).await);
        self.observe(&model, "grpc_classify", t0, &r, &v);
        r
    }

    async fn get_model_metadata(
        &self,
        r: Request<pb::GetModelMetadataRequest>,
    ) -> Result<Response<pb::GetModelMetadataResponse>, Status> {
        let t0 = Instant::now();
        let r = r.into_inner();
        let model = name_of(r.model_spec.as_ref());
        let (r, v) = split(self.metadata_inner(r));
        self.observe(&model, "grpc_metadata", t0, &r, &v);
        r
    }
}

#[tonic::async_trait]
impl ModelService for Grpc {
    async fn get_model_status(
        &self,
        r: Request<pb::GetModelStatusRequest>,
    ) -> Result<Response<pb::GetModelStatusResponse>, Status> {
        let t0 = Instant::now();
        let r = r.into_inner();
        let model = name_of(r.model_spec.as_ref());
        let r = self.status_inner(r);
        self.observe(&model, "grpc_status", t0, &r, "");
        r
    }
}

/// The model name a request asks for ("" without a model spec).
fn name_of(spec: Option<&pb::ModelSpec>) -> String {
    spec.map(|s| s.name.clone()).unwrap_or_default()
}

/// A result and the version that answered ("" on an error).
fn split<T>(r: Result<(Response<T>, String), Status>) -> (Result<Response<T>, Status>, String) {
    match r {
        Ok((resp, v)) => (Ok(resp), v),
        Err(e) => (Err(e), String::new()),
    }
}

/// The `status` label of a gRPC call: the code's name as in the gRPC spec (`OK`, `NOT_FOUND`).
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn version_of(spec: &pb::ModelSpec) -> Result<Option<u64>, Status> {
    match &spec.version_choice {
        None => Ok(None),
        Some(VersionChoice::Version(v)) => u64::try_from(*v)
            .map(Some)
            .map_err(|_| bad(format!("version {v} is negative"))),
        Some(VersionChoice::VersionLabel(l)) => Err(bad(format!(
            "version label {l:?}: this server has no version labels; ask for a version number"
        ))),
    }
}

fn spec_of(m: &Model, p: &Predictor) -> pb::ModelSpec {
    pb::ModelSpec {
        name: m.name().to_string(),
        version_choice: p
            .version()
            .map(|v| VersionChoice::Version(i64::try_from(v).unwrap_or(i64::MAX))),
        signature_name: p.info().signature.signature_name.clone(),
    }
}

fn outputs(a: Answer) -> Result<Probabilities, Status> {
    match a {
        Answer::Outputs(p) => Ok(p),
        Answer::Json(_) => Err(Status::internal("inference answered JSON, not outputs")),
    }
}

pub(crate) fn check_batch(n: usize, limits: &Limits) -> Result<(), Status> {
    let max = limits.max_batch;
    if n == 0 {
        return Err(bad("the request has no instances"));
    }
    if n > max {
        return Err(Status::resource_exhausted(format!(
            "{n} instances in one request (limit {max})"
        )));
    }
    Ok(())
}

/// The output aliases, in the order answered: all four when the filter is empty.
const OUTPUTS: [&str; 4] = ["probabilities", "logits", "classes", "class_name"];

fn output_filter(filter: &[String]) -> Result<Vec<&'static str>, Status> {
    if filter.is_empty() {
        return Ok(OUTPUTS.to_vec());
    }
    filter
        .iter()
        .map(|f| {
            OUTPUTS.iter().copied().find(|o| o == f).ok_or_else(|| {
                bad(format!("output tensor alias not found in signature: {f}. Outputs expected to be in the set {{{}}}.", OUTPUTS.join(",")))
            })
        })
        .collect()
}

fn shape(dims: &[usize]) -> Option<TensorShapeProto> {
    Some(TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| tensor_shape_proto::Dim {
                size: d as i64,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    })
}

/// One output as a TensorProto (floats as `tensor_content`, as TF Serving writes them).
fn output_tensor(name: &str, p: &Predictor, probs: &Probabilities) -> TensorProto {
    let (n, c) = (probs.len(), probs.n_classes);
    let floats = |v: &[f32]| TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: shape(&[n, c]),
        tensor_content: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    };
    match name {
        "probabilities" => floats(&probs.probabilities),
        "logits" => floats(&probs.logits),
        "classes" => TensorProto {
            dtype: DataType::DtInt64 as i32,
            tensor_shape: shape(&[n]),
            int64_val: probs.classes.clone(),
            ..Default::default()
        },
        _ => TensorProto {
            dtype: DataType::DtString as i32,
            tensor_shape: shape(&[n]),
            string_val: probs
                .classes
                .iter()
                .map(|&k| api::label(p, k).as_bytes().to_vec())
                .collect(),
            ..Default::default()
        },
    }
}

fn tensor_info(t: &TensorSpec) -> TensorInfo {
    TensorInfo {
        encoding: Some(tensor_info::Encoding::Name(t.name.clone())),
        dtype: match t.dtype {
            DType::Float => DataType::DtFloat,
            DType::Int64 => DataType::DtInt64,
        } as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: t
                .shape
                .iter()
                .map(|&d| tensor_shape_proto::Dim {
                    size: d,
                    name: String::new(),
                })
                .collect(),
            unknown_rank: false,
        }),
    }
}

fn signature_def(p: &Predictor) -> SignatureDef {
    let sig = &p.info().signature;
    let map = |m: &std::collections::BTreeMap<String, TensorSpec>| {
        m.iter().map(|(k, t)| (k.clone(), tensor_info(t))).collect()
    };
    SignatureDef {
        inputs: map(&sig.inputs),
        outputs: map(&sig.outputs),
        method_name: sig.method_name.clone(),
        defaults: Default::default(),
    }
}

/// The number of values a shape holds, and the shape as sizes (an unknown size is an error).
fn dims(t: &TensorProto, alias: &str) -> Result<Vec<usize>, Status> {
    let Some(s) = &t.tensor_shape else {
        return Err(bad(format!(
            "input {alias}: the tensor has no tensor_shape"
        )));
    };
    s.dim
        .iter()
        .map(|d| {
            usize::try_from(d.size).map_err(|_| {
                bad(format!(
                    "input {alias}: dimension of size {} in its shape",
                    d.size
                ))
            })
        })
        .collect()
}

fn dtype_name(d: i32) -> String {
    DataType::try_from(d).map_or_else(|_| format!("dtype {d}"), |t| t.as_str_name().to_string())
}

fn want_dtype(t: &TensorProto, alias: &str, want: &[DataType]) -> Result<(), Status> {
    if want.iter().any(|w| *w as i32 == t.dtype) {
        return Ok(());
    }
    let names: Vec<_> = want.iter().map(|w| w.as_str_name()).collect();
    Err(bad(format!(
        "input {alias}: {} tensor; expected {}",
        dtype_name(t.dtype),
        names.join(" or ")
    )))
}

/// Row-major values of a numeric tensor, from `tensor_content` (little-endian) or the typed field.
fn values<T: Copy>(
    t: &TensorProto,
    alias: &str,
    n: usize,
    width: usize,
    typed: &[T],
    from_le: fn(&[u8]) -> T,
) -> Result<Vec<T>, Status> {
    let v: Vec<T> = if !t.tensor_content.is_empty() {
        if t.tensor_content.len() != n * width {
            return Err(bad(format!(
                "input {alias}: tensor_content has {} bytes; its shape needs {n} values of {width} bytes",
                t.tensor_content.len()
            )));
        }
        t.tensor_content.chunks_exact(width).map(from_le).collect()
    } else {
        typed.to_vec()
    };
    if v.len() != n {
        return Err(bad(format!(
            "input {alias}: {} values for a shape of {n}",
            v.len()
        )));
    }
    Ok(v)
}

fn floats(t: &TensorProto, alias: &str) -> Result<(Vec<usize>, Vec<f32>), Status> {
    want_dtype(t, alias, &[DataType::DtFloat])?;
    let d = dims(t, alias)?;
    let n = d.iter().product();
    let v = values(t, alias, n, 4, &t.float_val, |b| {
        f32::from_le_bytes(b.try_into().expect("4 bytes"))
    })?;
    Ok((d, v))
}

fn ints(t: &TensorProto, alias: &str) -> Result<(Vec<usize>, Vec<i64>), Status> {
    want_dtype(t, alias, &[DataType::DtInt64, DataType::DtInt32])?;
    let d = dims(t, alias)?;
    let n = d.iter().product();
    let v = if t.dtype == DataType::DtInt64 as i32 {
        values(t, alias, n, 8, &t.int64_val, |b| {
            i64::from_le_bytes(b.try_into().expect("8 bytes"))
        })?
    } else {
        let v = values(t, alias, n, 4, &t.int_val, |b| {
            i32::from_le_bytes(b.try_into().expect("4 bytes"))
        })?;
        v.into_iter().map(i64::from).collect()
    };
    Ok((d, v))
}

fn strings<'a>(t: &'a TensorProto, alias: &str) -> Result<&'a [Vec<u8>], Status> {
    want_dtype(t, alias, &[DataType::DtString])?;
    let n: usize = dims(t, alias)?.iter().product();
    if n != t.string_val.len() {
        return Err(bad(format!(
            "input {alias}: {} strings for a shape of {n}",
            t.string_val.len()
        )));
    }
    Ok(&t.string_val)
}

fn expected(input: &Inputs) -> String {
    let own = match &input.kind {
        InputKind::Image { key, size } => match input.wide_dim() {
            None => format!("{key} (DT_FLOAT [N, 1, {size}, {size}], pixel / 255)"),
            Some(w) => format!(
                "{key} (DT_FLOAT [N, 1, {size}, {size}], pixel / 255) with an optional {WIDE} \
                 (DT_FLOAT [N, {w}], the metadata vector; absent: all zeros)"
            ),
        },
        InputKind::Strokes => {
            format!("{STROKES} (DT_FLOAT [N, T, 3]) and {LENGTHS} (DT_INT64 [N])")
        }
    };
    format!(
        "{own}, {DRAWING_INPUT} (DT_STRING [N] of QuickDraw NDJSON drawings) or {EXAMPLES_INPUT} (DT_STRING [N] of serialized tf.Examples)"
    )
}

/// The instances of a Predict request: one kind of input, `N` rows.
pub(crate) fn predict_instances(
    inputs: &std::collections::HashMap<String, TensorProto>,
    p: &Predictor,
    limits: &Limits,
) -> Result<Vec<Instance>, Status> {
    let input = p.inputs();
    let mut keys: Vec<&str> = inputs.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let own: Vec<&str> = match &input.kind {
        InputKind::Image { key, .. } if input.wide.is_some() => vec![key.as_str(), WIDE],
        InputKind::Image { key, .. } => vec![key.as_str()],
        InputKind::Strokes => vec![LENGTHS, STROKES],
    };
    if let Some(k) = keys
        .iter()
        .find(|k| ![DRAWING_INPUT, EXAMPLES_INPUT].contains(k) && !own.contains(k))
    {
        return Err(bad(format!(
            "input tensor alias not found in signature: {k}. Inputs expected to be {}",
            expected(input)
        )));
    }
    let instances = match keys.as_slice() {
        [k] if *k == DRAWING_INPUT => {
            let list = strings(&inputs[*k], k)?;
            check_batch(list.len(), limits)?;
            list.iter()
                .enumerate()
                .map(|(i, line)| {
                    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                        bad(format!("input {DRAWING_INPUT}: value {i} is not JSON: {e}"))
                    })?;
                    parse_drawing_instance(&v, i, limits).map_err(req_err)
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        [k] if *k == EXAMPLES_INPUT => {
            let list = strings(&inputs[*k], k)?;
            check_batch(list.len(), limits)?;
            list.iter().map(|b| Instance::Example(b.clone())).collect()
        }
        _ => match &input.kind {
            InputKind::Image { key, size } if keys == [key.as_str()] => {
                image_rows(&inputs[key.as_str()], key, *size as usize, limits)?
                    .into_iter()
                    .map(Instance::Pixels)
                    .collect()
            }
            // `img_S` sorts before `wide`.
            InputKind::Image { key, size }
                if input.wide.is_some() && keys == [key.as_str(), WIDE] =>
            {
                let images = image_rows(&inputs[key.as_str()], key, *size as usize, limits)?;
                wide_instances(images, &inputs[WIDE], input)?
            }
            InputKind::Strokes if keys == [LENGTHS, STROKES] || keys == [STROKES] => {
                stroke_instances(&inputs[STROKES], inputs.get(LENGTHS), limits)?
            }
            _ => {
                return Err(bad(format!(
                    "inputs {keys:?}: send one of {}",
                    expected(input)
                )));
            }
        },
    };
    Ok(instances)
}

/// The images of an `img_S` tensor, one row of `S*S` values each.
fn image_rows(
    t: &TensorProto,
    key: &str,
    s: usize,
    limits: &Limits,
) -> Result<Vec<Vec<f32>>, Status> {
    let (d, v) = floats(t, key)?;
    let ok = matches!(d.as_slice(), [_, 1, a, b] | [_, a, b] if *a == s && *b == s)
        || matches!(d.as_slice(), [_, a] if *a == s * s);
    if !ok {
        return Err(bad(format!(
            "input {key}: shape {d:?}; it takes [N, 1, {s}, {s}], [N, {s}, {s}] or [N, {}] (pixel / 255)",
            s * s
        )));
    }
    check_batch(d[0], limits)?;
    v.chunks_exact(s * s)
        .enumerate()
        .map(|(i, px)| {
            check_pixels(px, &[s, s], i, key).map_err(req_err)?;
            Ok(px.to_vec())
        })
        .collect()
}

/// Images with the rows of the `wide` tensor (`[N, W]`, `N` as the images').
fn wide_instances(
    images: Vec<Vec<f32>>,
    t: &TensorProto,
    input: &Inputs,
) -> Result<Vec<Instance>, Status> {
    let w = input.wide_dim().unwrap_or(0);
    let (d, v) = floats(t, WIDE)?;
    if d != [images.len(), w] {
        return Err(bad(format!(
            "input {WIDE}: shape {d:?}; it takes [{}, {w}] (one metadata vector of {w} floats per image)",
            images.len()
        )));
    }
    images
        .into_iter()
        .zip(v.chunks_exact(w.max(1)))
        .enumerate()
        .map(|(i, (pixels, row))| {
            check_wide(row, i, input).map_err(req_err)?;
            Ok(Instance::PixelsWide {
                pixels,
                wide: row.to_vec(),
            })
        })
        .collect()
}

fn stroke_instances(
    t: &TensorProto,
    lengths: Option<&TensorProto>,
    limits: &Limits,
) -> Result<Vec<Instance>, Status> {
    let (d, v) = floats(t, STROKES)?;
    let [n, steps, 3] = d.as_slice() else {
        return Err(bad(format!(
            "input {STROKES}: shape {d:?}; it takes [N, T, 3] rows of (dx, dy, pen)"
        )));
    };
    let (n, steps) = (*n, *steps);
    check_batch(n, limits)?;
    let lens = match lengths {
        None => vec![steps as i64; n],
        Some(l) => {
            let (ld, lv) = ints(l, LENGTHS)?;
            if ld != [n] {
                return Err(bad(format!(
                    "input {LENGTHS}: shape {ld:?}; it takes [{n}] (one per drawing)"
                )));
            }
            lv
        }
    };
    (0..n)
        .map(|i| {
            let len = usize::try_from(lens[i])
                .ok()
                .filter(|&l| l <= steps)
                .ok_or_else(|| {
                    bad(format!(
                        "input {LENGTHS}: value {i} is {}; it must be in 0..={steps}",
                        lens[i]
                    ))
                })?;
            let row = &v[i * steps * 3..(i + 1) * steps * 3];
            let col = |c: usize| (0..len).map(|k| row[k * 3 + c]).collect::<Vec<f32>>();
            Ok(Instance::Sequence(StrokeFeatures {
                dx: col(0),
                dy: col(1),
                pen: col(2),
                len,
                truncated: false,
            }))
        })
        .collect()
}

/// The examples of a Classify request, the context's features merged into each.
pub(crate) fn classify_examples(input: Option<pb::Input>) -> Result<Vec<Example>, Status> {
    use pb::input::Kind;
    match input.and_then(|i| i.kind) {
        None => Err(bad(
            "Classify needs input.example_list or input.example_list_with_context",
        )),
        Some(Kind::ExampleList(l)) => Ok(l.examples),
        Some(Kind::ExampleListWithContext(l)) => {
            let ctx = l
                .context
                .and_then(|c| c.features)
                .map(|f| f.feature)
                .unwrap_or_default();
            l.examples
                .into_iter()
                .enumerate()
                .map(|(i, mut ex)| {
                    let f = &mut ex.features.get_or_insert_with(Default::default).feature;
                    for (k, v) in &ctx {
                        if f.insert(k.clone(), v.clone()).is_some() {
                            return Err(bad(format!("example {i}: feature {k:?} is both in the example and in the context")));
                        }
                    }
                    Ok(ex)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: DataType, dims: &[usize]) -> TensorProto {
        TensorProto {
            dtype: dtype as i32,
            tensor_shape: shape(dims),
            ..Default::default()
        }
    }

    #[test]
    fn float_tensors_read_from_either_field_and_check_their_size() {
        let mut a = t(DataType::DtFloat, &[2, 2]);
        a.float_val = vec![0.0, 0.25, 0.5, 1.0];
        assert_eq!(
            floats(&a, "x").unwrap(),
            (vec![2, 2], vec![0.0, 0.25, 0.5, 1.0])
        );
        let mut b = t(DataType::DtFloat, &[2, 2]);
        b.tensor_content = [0.0f32, 0.25, 0.5, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(floats(&b, "x").unwrap(), floats(&a, "x").unwrap());
        b.tensor_content.pop();
        assert!(floats(&b, "x").unwrap_err().message().contains("15 bytes"));
        a.float_val.pop();
        assert!(
            floats(&a, "x")
                .unwrap_err()
                .message()
                .contains("3 values for a shape of 4")
        );
        let c = t(DataType::DtDouble, &[1]);
        let e = floats(&c, "x").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("DT_DOUBLE tensor; expected DT_FLOAT"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn int_tensors_take_int64_and_int32() {
        let mut a = t(DataType::DtInt64, &[2]);
        a.tensor_content = [3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(ints(&a, "n").unwrap().1, vec![3, 7]);
        let mut b = t(DataType::DtInt32, &[2]);
        b.int_val = vec![3, 7];
        assert_eq!(ints(&b, "n").unwrap().1, vec![3, 7]);
    }

    #[test]
    fn wide_models_take_an_optional_wide_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::testing::write_wide_demo_export(tmp.path(), 1, 2).unwrap();
        let p = Predictor::load(&dir).unwrap();
        let limits = Limits::default();
        let mut img = t(DataType::DtFloat, &[2, 1, 2, 2]);
        img.float_val = vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let mut wide = t(DataType::DtFloat, &[2, 27]);
        wide.float_val = (0..54)
            .map(|i| (i == 5 || i == 27 + 4) as i32 as f32)
            .collect();
        let only = [("img_2".to_string(), img.clone())].into();
        let got = predict_instances(&only, &p, &limits).unwrap();
        assert_eq!(got[0], Instance::Pixels(vec![0.0, 0.0, 0.0, 1.0]));
        let both = [
            ("img_2".to_string(), img.clone()),
            ("wide".to_string(), wide.clone()),
        ]
        .into();
        let got = predict_instances(&both, &p, &limits).unwrap();
        let Instance::PixelsWide { pixels, wide: w } = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!((pixels.as_slice(), w[4], w[5]), (&[1.0; 4][..], 1.0, 0.0));
        // The wrong W (or N) names the shape the input takes.
        let mut short = t(DataType::DtFloat, &[2, 26]);
        short.float_val = vec![0.0; 52];
        let bad = [
            ("img_2".to_string(), img.clone()),
            ("wide".to_string(), short),
        ]
        .into();
        let e = predict_instances(&bad, &p, &limits).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains("input wide: shape [2, 26]; it takes [2, 27]"),
            "{}",
            e.message()
        );
        // Alone, or beside drawings, it is not an input the request can be made of.
        let alone = [("wide".to_string(), wide.clone())].into();
        let e = predict_instances(&alone, &p, &limits).unwrap_err();
        assert!(
            e.message().contains("with an optional wide"),
            "{}",
            e.message()
        );
        // A model without a wide input does not know the alias.
        let demo_dir = crate::testing::write_demo_export(tmp.path(), 2, 2).unwrap();
        let demo = Predictor::load(&demo_dir).unwrap();
        let e = predict_instances(&both, &demo, &limits).unwrap_err();
        assert!(
            e.message().contains("alias not found in signature: wide"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn api_errors_map_to_grpc_codes() {
        let code = |e: ApiError| Status::from(e).code();
        assert_eq!(code(ApiError::bad_request("x")), Code::InvalidArgument);
        assert_eq!(code(ApiError::not_found("x")), Code::NotFound);
        assert_eq!(code(ApiError::too_large("x")), Code::ResourceExhausted);
        assert_eq!(code(ApiError::unavailable("x")), Code::Unavailable);
        assert_eq!(code(ApiError::internal("x")), Code::Internal);
    }

    #[test]
    fn output_filter_names_unknown_aliases() {
        assert_eq!(output_filter(&[]).unwrap(), OUTPUTS.to_vec());
        assert_eq!(output_filter(&["classes".into()]).unwrap(), vec!["classes"]);
        let e = output_filter(&["scores".into()]).unwrap_err();
        assert!(
            e.message()
                .contains("output tensor alias not found in signature: scores")
        );
    }

    #[test]
    fn context_features_merge_into_each_example_and_clash_is_an_error() {
        use quickdraw_data::example::Feature;
        let ex = |k: &str| {
            let mut e = Example::default();
            e.features
                .get_or_insert_with(Default::default)
                .feature
                .insert(k.into(), Feature::int64s(vec![1]));
            e
        };
        let input = |examples: Vec<Example>, ctx: Example| pb::Input {
            kind: Some(pb::input::Kind::ExampleListWithContext(
                pb::ExampleListWithContext {
                    examples,
                    context: Some(ctx),
                },
            )),
        };
        let got = classify_examples(Some(input(vec![ex("a"), ex("b")], ex("c")))).unwrap();
        for (e, k) in got.iter().zip(["a", "b"]) {
            let f = &e.features.as_ref().unwrap().feature;
            assert!(f.contains_key(k) && f.contains_key("c"));
        }
        let e = classify_examples(Some(input(vec![ex("c")], ex("c")))).unwrap_err();
        assert!(
            e.message()
                .contains("both in the example and in the context")
        );
    }
}
