//! Request bodies of the REST API (TensorFlow Serving's JSON formats) parsed into [`Instance`]s,
//! and instances turned into model inputs with the export's preprocessing.
//!
//! An instance is one of:
//! - a drawing in QuickDraw stroke format: `{"drawing": [[[x..],[y..]],..]}` (simplified) or
//!   `[[x..],[y..],[t..]]` strokes (raw), optionally with `key_id`, `word`, `countrycode`,
//!   `recognized`, `timestamp` (kept in the request log);
//! - a serialized `tf.Example` as `{"b64": "..."}` with the features `convert` writes;
//! - a model-input tensor: for image models the image itself (`[1,S,S]`, `[S,S]` or `S*S`
//!   floats, `pixel / 255` as the `img_S` input) bare or as `{"img_S": ..}`; for stroke models
//!   `[[dx,dy,pen],..]` bare or as `{"strokes": .., "lengths": n}`.
//!
//! Wide & deep models (`wide_deep`) also read a `wide` input: the multi-hot metadata vector of
//! [`quickdraw_data::wide`] (`W` floats, the length the export's `preprocessing.json` gives).
//! Each kind of instance yields it:
//! - a drawing: from its `countrycode` (absent or empty: missing), `recognized` (only when the
//!   request sends it: missing otherwise, although the request log writes `false`), the number
//!   of strokes as sent, and the duration from the strokes' `t` arrays (missing unless every
//!   stroke has one); columnar requests send the fields as lists beside `"drawing"`, one value
//!   per drawing (`{"inputs": {"drawing": [..], "countrycode": [..], "recognized": [..]}}`);
//! - a `tf.Example`: from its `countrycode`, `recognized`, `stroke_count` and `duration_ms`
//!   features, each missing when absent (`quickdraw_data::features::metadata`);
//! - a tensor: an optional `"wide": [W floats]` next to `"img_S"` (columnar: `"wide": [[W
//!   floats], ..]` next to `"img_S"`); absent, the vector is all zeros; a wrong length is a 400
//!   naming `W`. A bare image (no object) has no metadata.
//!
//! A missing value sets no slot of its column, so a request without any metadata is the all-zero
//! vector: the linear part adds nothing and the image alone decides (TensorFlow's default for
//! missing categorical values). Models without a `wide` input refuse a `"wide"` tensor.

use base64::Engine;
use quickdraw_data::example::{Example, Kind};
use quickdraw_data::features::{self, FeatureSpec, decode_image};
use quickdraw_data::ingest::ndjson::parse_timestamp;
use quickdraw_data::signature::{InputKind, LENGTHS, STROKES, WIDE};
use quickdraw_data::strokes::StrokeFeatures;
use quickdraw_data::validate::{self, RejectReason, check_drawing};
use quickdraw_data::wide::{Metadata, WideSpec};
use quickdraw_data::{Drawing, Ink, Stroke};
use serde_json::Value;

/// Request limits. Drawings are also checked with `quickdraw_data::validate` (the same
/// geometry checks as `convert`); these limits can only be tighter than its constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most instances in one request.
    pub max_batch: usize,
    /// Most strokes in one drawing.
    pub max_strokes: usize,
    /// Most points in one drawing (all strokes).
    pub max_points: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_batch: 64,
            max_strokes: validate::MAX_STROKES,
            max_points: validate::MAX_POINTS,
        }
    }
}

/// A request the server refuses: 400 (malformed or invalid) or 413 (over a limit).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub too_large: bool,
    pub message: String,
}

impl RequestError {
    pub fn bad(message: impl Into<String>) -> Self {
        RequestError {
            too_large: false,
            message: message.into(),
        }
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        RequestError {
            too_large: true,
            message: message.into(),
        }
    }
}

/// What a request must fit: the model's input kind and, for wide & deep models, the layout of
/// its `wide` input.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub kind: InputKind,
    /// The `wide` vector's layout (wide & deep models only).
    pub wide: Option<WideSpec>,
}

impl Inputs {
    /// Length of the `wide` input, `None` for models without one.
    pub fn wide_dim(&self) -> Option<usize> {
        self.wide.map(|w| w.dim())
    }
}

impl From<InputKind> for Inputs {
    /// A model without a `wide` input.
    fn from(kind: InputKind) -> Inputs {
        Inputs { kind, wide: None }
    }
}

/// One thing to classify.
#[derive(Debug, Clone, PartialEq)]
pub enum Instance {
    /// Strokes (validated); metadata as sent, defaults otherwise. The [`Metadata`] is what the
    /// request says (missing values `None`): the `wide` input of wide & deep models.
    Drawing(Drawing, Metadata),
    /// Serialized `tf.Example`.
    Example(Vec<u8>),
    /// A model-input image: `size*size` floats (pixel / 255); for a wide & deep model, with an
    /// all-zero `wide` vector (no metadata).
    Pixels(Vec<f32>),
    /// A model-input image and its `wide` vector (wide & deep models; `W` floats).
    PixelsWide { pixels: Vec<f32>, wide: Vec<f32> },
    /// A model-input stroke sequence.
    Sequence(StrokeFeatures),
}

/// A parsed predict request.
#[derive(Debug, Clone, PartialEq)]
pub struct Predict {
    pub instances: Vec<Instance>,
    /// `inputs` (columnar) rather than `instances` (row) format: answered with `outputs`.
    pub columnar: bool,
}

/// What this model accepts, for error messages.
pub fn expected_inputs(input: &Inputs) -> String {
    let drawing = r#"{"drawing": [[[x, ...], [y, ...](, [t, ...])], ...]}"#;
    let example = r#"{"b64": "<base64 serialized tf.Example>"}"#;
    match (&input.kind, input.wide_dim()) {
        (InputKind::Image { key, size }, Some(w)) => format!(
            "instances must be drawings {drawing} (optionally with \"countrycode\" and \"recognized\"), tf.Examples {example}, \
             or images for input {key} (DT_FLOAT [-1, 1, {size}, {size}], pixel / 255): [1, {size}, {size}] or [{size}, {size}] nested lists \
             or {} flat values, bare or as {{\"{key}\": ..., \"{WIDE}\": [{w} floats]}} (input {WIDE}: DT_FLOAT [-1, {w}], the metadata \
             vector; absent: all zeros, no metadata)",
            size * size
        ),
        (InputKind::Image { key, size }, None) => format!(
            "instances must be drawings {drawing}, tf.Examples {example}, or images for input {key} (DT_FLOAT [-1, 1, {size}, {size}], \
             pixel / 255): [1, {size}, {size}] or [{size}, {size}] nested lists or {} flat values, bare or as {{\"{key}\": ...}}",
            size * size
        ),
        (InputKind::Strokes, _) => format!(
            "instances must be drawings {drawing}, tf.Examples {example}, or stroke sequences for inputs strokes \
             (DT_FLOAT [-1, -1, 3]: [[dx, dy, pen], ...]) and lengths (DT_INT64 [-1]), bare or as {{\"strokes\": ..., \"lengths\": n}}"
        ),
    }
}

fn check_signature_name(body: &serde_json::Map<String, Value>) -> Result<(), RequestError> {
    match body.get("signature_name") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s))
            if s.is_empty() || s == quickdraw_data::signature::DEFAULT_SIGNATURE =>
        {
            Ok(())
        }
        Some(Value::String(s)) => Err(RequestError::bad(format!(
            "Serving signature name: \"{s}\" not found in signature def (this model has \"serving_default\")"
        ))),
        Some(v) => Err(RequestError::bad(format!(
            "signature_name must be a string, got {}",
            short(v)
        ))),
    }
}

fn check_batch(n: usize, limits: &Limits) -> Result<(), RequestError> {
    if n == 0 {
        return Err(RequestError::bad("the request has no instances"));
    }
    if n > limits.max_batch {
        return Err(RequestError::too_large(format!(
            "{n} instances in one request (limit {})",
            limits.max_batch
        )));
    }
    Ok(())
}

fn as_object(body: &Value) -> Result<&serde_json::Map<String, Value>, RequestError> {
    body.as_object().ok_or_else(|| {
        RequestError::bad(format!(
            "the request body must be a JSON object, got {}",
            short(body)
        ))
    })
}

/// Parses a `:predict` body: `{"instances": [...]}` or `{"inputs": ...}`.
pub fn parse_predict(
    body: &Value,
    input: &Inputs,
    limits: &Limits,
) -> Result<Predict, RequestError> {
    let obj = as_object(body)?;
    check_signature_name(obj)?;
    match (obj.get("instances"), obj.get("inputs")) {
        (Some(_), Some(_)) => Err(RequestError::bad(
            "a request can have either \"instances\" or \"inputs\", not both",
        )),
        (None, None) => Err(RequestError::bad(format!(
            "missing \"instances\" or \"inputs\"; {}",
            expected_inputs(input)
        ))),
        (Some(inst), None) => {
            let list = inst.as_array().ok_or_else(|| {
                RequestError::bad(format!(
                    "\"instances\" must be a list; {}",
                    expected_inputs(input)
                ))
            })?;
            check_batch(list.len(), limits)?;
            let instances = list
                .iter()
                .enumerate()
                .map(|(i, v)| parse_instance(v, i, input, limits))
                .collect::<Result<_, _>>()?;
            Ok(Predict {
                instances,
                columnar: false,
            })
        }
        (None, Some(inputs)) => Ok(Predict {
            instances: parse_columnar(inputs, input, limits)?,
            columnar: true,
        }),
    }
}

/// Fields of a drawing instance besides `drawing` (columnar requests may send them as lists).
const DRAWING_FIELDS: [&str; 5] = ["key_id", "word", "countrycode", "recognized", "timestamp"];

fn parse_columnar(
    inputs: &Value,
    input: &Inputs,
    limits: &Limits,
) -> Result<Vec<Instance>, RequestError> {
    let batch = |v: &Value, name: &str| -> Result<Vec<Value>, RequestError> {
        let list = v.as_array().ok_or_else(|| {
            RequestError::bad(format!(
                "inputs[\"{name}\"] must be a list (one entry per instance)"
            ))
        })?;
        check_batch(list.len(), limits)?;
        Ok(list.clone())
    };
    match inputs {
        Value::Array(list) => {
            check_batch(list.len(), limits)?;
            list.iter()
                .enumerate()
                .map(|(i, v)| parse_instance(v, i, input, limits))
                .collect()
        }
        Value::Object(map) => {
            if let Some(d) = map.get("drawing") {
                let drawings = batch(d, "drawing")?;
                // The metadata columns, one value per drawing.
                let mut columns = Vec::new();
                for k in DRAWING_FIELDS {
                    if let Some(c) = map.get(k) {
                        let c = batch(c, k)?;
                        if c.len() != drawings.len() {
                            return Err(RequestError::bad(format!(
                                "inputs[\"{k}\"] has {} values for {} drawings",
                                c.len(),
                                drawings.len()
                            )));
                        }
                        columns.push((k, c));
                    }
                }
                return drawings
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let mut obj = serde_json::Map::new();
                        obj.insert("drawing".into(), v);
                        for (k, c) in &columns {
                            obj.insert(k.to_string(), c[i].clone());
                        }
                        parse_drawing_instance(&Value::Object(obj), i, limits)
                    })
                    .collect();
            }
            match &input.kind {
                InputKind::Image { key, .. } => {
                    let Some(v) = map.get(key) else {
                        return Err(RequestError::bad(format!(
                            "inputs has keys {:?}; this model's input is {key}{} (or \"drawing\")",
                            map.keys().collect::<Vec<_>>(),
                            if input.wide.is_some() {
                                format!(" with an optional {WIDE}")
                            } else {
                                String::new()
                            }
                        )));
                    };
                    let images = batch(v, key)?;
                    let wide = match map.get(WIDE) {
                        None | Some(Value::Null) => None,
                        Some(w) => {
                            let w = batch(w, WIDE)?;
                            if w.len() != images.len() {
                                return Err(RequestError::bad(format!(
                                    "inputs[\"{WIDE}\"] has {} rows for {} images",
                                    w.len(),
                                    images.len()
                                )));
                            }
                            Some(w)
                        }
                    };
                    images
                        .iter()
                        .enumerate()
                        .map(|(i, v)| parse_image(v, wide.as_ref().map(|w| &w[i]), i, input))
                        .collect()
                }
                InputKind::Strokes => {
                    let (Some(s), Some(l)) = (map.get(STROKES), map.get(LENGTHS)) else {
                        return Err(RequestError::bad(format!(
                            "inputs has keys {:?}; this model's inputs are strokes and lengths (or \"drawing\")",
                            map.keys().collect::<Vec<_>>()
                        )));
                    };
                    let (s, l) = (batch(s, STROKES)?, batch(l, LENGTHS)?);
                    if s.len() != l.len() {
                        return Err(RequestError::bad(format!(
                            "{} strokes sequences but {} lengths",
                            s.len(),
                            l.len()
                        )));
                    }
                    s.iter()
                        .zip(&l)
                        .enumerate()
                        .map(|(i, (s, l))| parse_sequence(s, Some(l), i))
                        .collect()
                }
            }
        }
        other => Err(RequestError::bad(format!(
            "\"inputs\" must be a list or an object, got {}; {}",
            short(other),
            expected_inputs(input)
        ))),
    }
}

/// Parses a `:classify` body: `{"examples": [...], "context": {...}}` (TF Serving's format;
/// each example is an instance object, context keys are added to every example).
pub fn parse_classify(
    body: &Value,
    input: &Inputs,
    limits: &Limits,
) -> Result<Vec<Instance>, RequestError> {
    let obj = as_object(body)?;
    check_signature_name(obj)?;
    let list = obj
        .get("examples")
        .or_else(|| obj.get("instances"))
        .ok_or_else(|| {
            RequestError::bad(format!("missing \"examples\"; {}", expected_inputs(input)))
        })?
        .as_array()
        .ok_or_else(|| RequestError::bad("\"examples\" must be a list"))?;
    check_batch(list.len(), limits)?;
    let context = match obj.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c),
        Some(v) => {
            return Err(RequestError::bad(format!(
                "\"context\" must be an object, got {}",
                short(v)
            )));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, ex)| {
            let merged;
            let ex = match (context, ex) {
                (Some(ctx), Value::Object(m)) => {
                    let mut m = m.clone();
                    for (k, v) in ctx {
                        if m.contains_key(k) {
                            return Err(RequestError::bad(format!("example {i}: feature {k:?} is both in the example and in the context")));
                        }
                        m.insert(k.clone(), v.clone());
                    }
                    merged = Value::Object(m);
                    &merged
                }
                _ => ex,
            };
            parse_instance(ex, i, input, limits)
        })
        .collect()
}

/// Parses one row-format instance.
pub fn parse_instance(
    v: &Value,
    index: usize,
    input: &Inputs,
    limits: &Limits,
) -> Result<Instance, RequestError> {
    match v {
        Value::Object(m) => {
            if m.contains_key("drawing") {
                return parse_drawing_instance(v, index, limits);
            }
            if let Some(b) = m.get("b64") {
                let s = b.as_str().ok_or_else(|| {
                    RequestError::bad(format!("instance {index}: \"b64\" must be a string"))
                })?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|e| {
                        RequestError::bad(format!("instance {index}: \"b64\" is not base64: {e}"))
                    })?;
                return Ok(Instance::Example(bytes));
            }
            match &input.kind {
                InputKind::Image { key, .. } if m.contains_key(key) => {
                    // Metadata fields next to a tensor would be ignored: the tensor form takes
                    // them as the `wide` vector (drawings and tf.Examples take the fields).
                    let meta = ["countrycode", "recognized", "stroke_count", "duration_ms"];
                    if let Some(k) = meta
                        .iter()
                        .find(|k| input.wide.is_some() && m.contains_key(**k))
                    {
                        return Err(RequestError::bad(format!(
                            "instance {index}: {k:?} next to the {key} tensor is not read: a tensor instance takes its metadata as \"wide\" ({} values), a drawing or tf.Example instance takes the fields",
                            input.wide.map_or(0, |w| w.dim())
                        )));
                    }
                    parse_image(&m[key], m.get(WIDE), index, input)
                }
                InputKind::Strokes if m.contains_key(STROKES) => {
                    parse_sequence(&m[STROKES], m.get(LENGTHS), index)
                }
                _ => Err(RequestError::bad(format!(
                    "instance {index}: object with keys {:?}; {}",
                    m.keys().collect::<Vec<_>>(),
                    expected_inputs(input)
                ))),
            }
        }
        Value::Array(_) => match &input.kind {
            InputKind::Image { .. } => parse_image(v, None, index, input),
            InputKind::Strokes => parse_sequence(v, None, index),
        },
        other => Err(RequestError::bad(format!(
            "instance {index} is {}; {}",
            short(other),
            expected_inputs(input)
        ))),
    }
}

/// Shape and row-major values of a rectangular nested list of numbers.
pub fn tensor(v: &Value) -> Result<(Vec<usize>, Vec<f32>), String> {
    fn shape_of(v: &Value) -> Result<Vec<usize>, String> {
        match v {
            Value::Number(_) => Ok(vec![]),
            Value::Array(a) => {
                let inner = match a.first() {
                    Some(f) => shape_of(f)?,
                    None => vec![],
                };
                let mut s = vec![a.len()];
                s.extend(inner);
                Ok(s)
            }
            other => Err(format!("{} is not a number", short(other))),
        }
    }
    fn fill(v: &Value, shape: &[usize], out: &mut Vec<f32>) -> Result<(), String> {
        match (v, shape) {
            (Value::Number(n), []) => {
                let f = n.as_f64().ok_or("number out of range")? as f32;
                if !f.is_finite() {
                    return Err(format!("{n} is not a finite float32"));
                }
                out.push(f);
                Ok(())
            }
            (Value::Array(a), [n, rest @ ..]) if a.len() == *n => {
                a.iter().try_for_each(|x| fill(x, rest, out))
            }
            _ => Err("the nested lists are not rectangular".into()),
        }
    }
    let shape = shape_of(v)?;
    let mut out = Vec::with_capacity(shape.iter().product());
    fill(v, &shape, &mut out)?;
    Ok((shape, out))
}

/// An image tensor and, when sent (`wide`), its `wide` vector.
fn parse_image(
    v: &Value,
    wide: Option<&Value>,
    index: usize,
    input: &Inputs,
) -> Result<Instance, RequestError> {
    let InputKind::Image { key, size } = &input.kind else {
        return Err(RequestError::bad(format!(
            "instance {index}: an image, but {}",
            expected_inputs(input)
        )));
    };
    let s = *size as usize;
    let (shape, values) = tensor(v).map_err(|e| {
        RequestError::bad(format!("instance {index}: {e}; {}", expected_inputs(input)))
    })?;
    let ok = shape == [1, s, s] || shape == [s, s] || shape == [s * s];
    if !ok {
        return Err(RequestError::bad(format!(
            "instance {index}: image tensor of shape {shape:?}; input {key} takes [1, {s}, {s}], [{s}, {s}] or {} values (pixel / 255)",
            s * s
        )));
    }
    check_pixels(&values, &shape, index, key)?;
    match wide.filter(|w| !w.is_null()) {
        None => Ok(Instance::Pixels(values)),
        Some(w) => Ok(Instance::PixelsWide {
            pixels: values,
            wide: parse_wide(w, index, input)?,
        }),
    }
}

/// The `wide` tensor of one instance: `W` floats, flat or as `[1, W]`.
fn parse_wide(v: &Value, index: usize, input: &Inputs) -> Result<Vec<f32>, RequestError> {
    let Some(w) = input.wide_dim() else {
        return Err(RequestError::bad(format!(
            "instance {index}: this model has no input \"{WIDE}\" (only wide_deep models read metadata); {}",
            expected_inputs(input)
        )));
    };
    let (shape, values) =
        tensor(v).map_err(|e| RequestError::bad(format!("instance {index}: {WIDE}: {e}")))?;
    if shape != [w] && shape != [1, w] {
        return Err(RequestError::bad(format!(
            "instance {index}: {WIDE} tensor of shape {shape:?}; input {WIDE} takes {w} floats \
             (DT_FLOAT [-1, {w}], the metadata vector of this model's preprocessing)"
        )));
    }
    Ok(values)
}

/// Checks a `wide` vector against the model's: `W` finite floats.
pub(crate) fn check_wide(values: &[f32], index: usize, input: &Inputs) -> Result<(), RequestError> {
    let Some(w) = input.wide_dim() else {
        return Err(RequestError::bad(format!(
            "instance {index}: this model has no input \"{WIDE}\" (only wide_deep models read metadata)"
        )));
    };
    if values.len() != w {
        return Err(RequestError::bad(format!(
            "instance {index}: {WIDE} has {} values; input {WIDE} takes {w} floats (DT_FLOAT [-1, {w}])",
            values.len()
        )));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(RequestError::bad(format!(
            "instance {index}: {WIDE} value {v} is not a finite float"
        )));
    }
    Ok(())
}

/// Model-input pixels are `pixel / 255`: each must lie in `0.0..=1.0` (the model was trained
/// on nothing else, and values like -3.4e38 make its outputs NaN). The error names the instance,
/// the value and its position in the tensor as sent.
pub(crate) fn check_pixels(
    values: &[f32],
    shape: &[usize],
    index: usize,
    key: &str,
) -> Result<(), RequestError> {
    let Some(flat) = values.iter().position(|v| !(0.0..=1.0).contains(v)) else {
        return Ok(());
    };
    let mut pos = vec![0; shape.len()];
    let mut rest = flat;
    for (p, &d) in pos.iter_mut().zip(shape).rev() {
        (*p, rest) = (rest % d, rest / d);
    }
    Err(RequestError::bad(format!(
        "instance {index}: {key} value {} at position {pos:?} is outside 0..=1 (model inputs are pixel / 255)",
        values[flat]
    )))
}

fn parse_sequence(
    v: &Value,
    lengths: Option<&Value>,
    index: usize,
) -> Result<Instance, RequestError> {
    let (shape, values) =
        tensor(v).map_err(|e| RequestError::bad(format!("instance {index}: strokes: {e}")))?;
    if shape.len() != 2 || shape[1] != 3 {
        return Err(RequestError::bad(format!(
            "instance {index}: strokes tensor of shape {shape:?}; expected [T, 3] rows of (dx, dy, pen)"
        )));
    }
    let t = shape[0];
    let len = match lengths {
        None | Some(Value::Null) => t,
        Some(l) => {
            let n = match l {
                Value::Array(a) if a.len() == 1 => a[0].as_u64(),
                other => other.as_u64(),
            };
            match n {
                Some(n) if n as usize <= t => n as usize,
                _ => {
                    return Err(RequestError::bad(format!(
                        "instance {index}: lengths must be an integer in 0..={t}, got {}",
                        short(l)
                    )));
                }
            }
        }
    };
    let col = |c: usize| (0..len).map(|k| values[k * 3 + c]).collect::<Vec<f32>>();
    Ok(Instance::Sequence(StrokeFeatures {
        dx: col(0),
        dy: col(1),
        pen: col(2),
        len,
        truncated: false,
    }))
}

/// Parses and validates a drawing instance ([`parse_drawing`]) with the metadata the request
/// sends ([`sent_metadata`]).
pub fn parse_drawing_instance(
    v: &Value,
    index: usize,
    limits: &Limits,
) -> Result<Instance, RequestError> {
    let d = parse_drawing(v, index, limits)?;
    let recognized_sent = v.get("recognized").is_some_and(|r| !r.is_null());
    let meta = sent_metadata(&d, recognized_sent);
    Ok(Instance::Drawing(d, meta))
}

/// The metadata of a drawing as a request sends it: [`Metadata::of_drawing`], except that an
/// absent `recognized` is missing (not `false`); an empty `countrycode` is missing too. The
/// stroke count is that of the strokes as sent, the duration from their `t` arrays.
pub fn sent_metadata(d: &Drawing, recognized_sent: bool) -> Metadata {
    Metadata {
        recognized: recognized_sent.then_some(d.recognized),
        ..Metadata::of_drawing(d)
    }
}

/// Parses and validates a drawing instance (`check_drawing`, then the server's limits).
pub fn parse_drawing(v: &Value, index: usize, limits: &Limits) -> Result<Drawing, RequestError> {
    let bad = |what: String| RequestError::bad(format!("instance {index}: {what}"));
    let m = v
        .as_object()
        .ok_or_else(|| bad("a drawing must be an object".into()))?;
    let strokes_v = m.get("drawing").and_then(Value::as_array).ok_or_else(|| {
        bad("\"drawing\" must be a list of strokes [[x, ...], [y, ...]] or [[x, ...], [y, ...], [t, ...]]".into())
    })?;
    if strokes_v.len() > limits.max_strokes {
        return Err(RequestError::too_large(format!(
            "instance {index}: {} strokes (limit {})",
            strokes_v.len(),
            limits.max_strokes
        )));
    }
    let mut strokes = Vec::with_capacity(strokes_v.len());
    let mut points = 0usize;
    for (i, s) in strokes_v.iter().enumerate() {
        let arrays = s.as_array().ok_or_else(|| {
            bad(format!(
                "stroke {i} must be a list of 2 or 3 lists of numbers"
            ))
        })?;
        if arrays.len() != 2 && arrays.len() != 3 {
            return Err(bad(format!(
                "stroke {i} has {} arrays, expected [x, y] or [x, y, t]",
                arrays.len()
            )));
        }
        let mut vals = Vec::with_capacity(3);
        for (j, a) in arrays.iter().enumerate() {
            let nums = a
                .as_array()
                .ok_or_else(|| bad(format!("stroke {i} array {j} must be a list of numbers")))?;
            let v: Option<Vec<f32>> = nums.iter().map(|x| x.as_f64().map(|f| f as f32)).collect();
            vals.push(v.ok_or_else(|| {
                bad(format!(
                    "stroke {i} array {j} holds a value that is not a number"
                ))
            })?);
        }
        points += vals[0].len();
        if points > limits.max_points {
            return Err(RequestError::too_large(format!(
                "instance {index}: more than {} points",
                limits.max_points
            )));
        }
        let t = if vals.len() == 3 { vals.pop() } else { None };
        let y = vals.pop().unwrap_or_default();
        let x = vals.pop().unwrap_or_default();
        strokes.push(Stroke { x, y, t });
    }
    let text = |k: &str| -> Result<String, RequestError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) if s.len() <= 256 => Ok(s.clone()),
            Some(v) => Err(bad(format!(
                "{k:?} must be a string of at most 256 bytes, got {}",
                short(v)
            ))),
        }
    };
    let key_id = match m.get("key_id") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| bad(format!("key_id {n} is not an unsigned integer")))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| bad(format!("key_id {s:?} is not an unsigned integer")))?,
        Some(v) => {
            return Err(bad(format!(
                "key_id must be a number or a string of digits, got {}",
                short(v)
            )));
        }
    };
    let timestamp = match m.get("timestamp") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad(format!("timestamp {n} is not an integer (seconds)")))?,
        Some(Value::String(s)) => {
            parse_timestamp(s).ok_or_else(|| bad(format!("timestamp {s:?} is not a date")))?
        }
        Some(v) => {
            return Err(bad(format!(
                "timestamp must be seconds or a date string, got {}",
                short(v)
            )));
        }
    };
    let recognized = match m.get("recognized") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(bad(format!(
                "recognized must be a boolean, got {}",
                short(v)
            )));
        }
    };
    let d = Drawing {
        key_id,
        word: text("word")?,
        countrycode: text("countrycode")?,
        timestamp,
        recognized,
        ink: Ink::Strokes(strokes),
    };
    check_drawing(&d, None).map_err(|r| {
        let msg = format!("instance {index}: {}: {}", r.reason, r.detail);
        if r.reason == RejectReason::TooLarge {
            RequestError::too_large(msg)
        } else {
            RequestError::bad(msg)
        }
    })?;
    Ok(d)
}

/// A model input ready for the predictor.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// An image (for a wide & deep model: with the all-zero `wide` vector, no metadata).
    Pixels(Vec<f32>),
    /// An image and its `wide` vector (wide & deep models).
    PixelsWide {
        pixels: Vec<f32>,
        wide: Vec<f32>,
    },
    Sequence(StrokeFeatures),
}

impl ModelInput {
    /// The image of an image input.
    pub fn pixels(&self) -> Option<&[f32]> {
        match self {
            ModelInput::Pixels(p) | ModelInput::PixelsWide { pixels: p, .. } => Some(p),
            ModelInput::Sequence(_) => None,
        }
    }
}

fn floats<'a>(ex: &'a Example, key: &str) -> Result<&'a [f32], String> {
    match ex.get(key).and_then(|f| f.kind.as_ref()) {
        Some(Kind::FloatList(l)) => Ok(&l.value),
        Some(_) => Err(format!("feature {key:?} is not a float_list")),
        None => Err(format!("feature {key:?} is missing")),
    }
}

/// Turns an instance into the model's input with the export's preprocessing (drawings) or
/// feature decoding (`tf.Example`s: only the features the model reads are required). For wide &
/// deep models every image input comes with its `wide` vector, built from the instance's
/// metadata (all zeros for a tensor sent without one).
pub fn to_model_input(
    inst: &Instance,
    index: usize,
    input: &Inputs,
    spec: &FeatureSpec,
) -> Result<ModelInput, RequestError> {
    let bad = |what: String| RequestError::bad(format!("instance {index}: {what}"));
    // An image, with the wide vector of `meta` for wide & deep models.
    let image = |pixels: Vec<f32>, meta: Option<&Metadata>| match &input.wide {
        None => ModelInput::Pixels(pixels),
        Some(w) => ModelInput::PixelsWide {
            pixels,
            wide: w.vector(meta.unwrap_or(&Metadata::default())),
        },
    };
    match (inst, &input.kind) {
        (Instance::Drawing(d, meta), kind) => {
            let p = features::preprocess(&d.ink, spec).map_err(|e| bad(e.to_string()))?;
            match kind {
                InputKind::Image { .. } => Ok(image(
                    features::model_pixels(&p.image).collect(),
                    Some(meta),
                )),
                InputKind::Strokes => p
                    .strokes
                    .map(ModelInput::Sequence)
                    .ok_or_else(|| bad("no stroke features".into())),
            }
        }
        (Instance::Example(bytes), InputKind::Image { key, size }) => {
            let ex =
                Example::from_bytes(bytes).map_err(|e| bad(format!("not a tf.Example: {e}")))?;
            let img = decode_image(&ex, spec).map_err(|e| {
                bad(format!(
                    "{e} (this model reads {key}: {} values 0..=255, encoded {:?})",
                    size * size,
                    spec.image_encoding
                ))
            })?;
            let meta = match input.wide {
                None => None,
                Some(_) => Some(features::metadata(&ex).map_err(|e| {
                    bad(format!(
                        "{e} (this model's {WIDE} input reads the optional features countrycode (bytes), \
                         recognized, {} and {} (int64))",
                        features::STROKE_COUNT,
                        features::DURATION_MS
                    ))
                })?),
            };
            Ok(image(features::model_pixels(&img).collect(), meta.as_ref()))
        }
        (Instance::Example(bytes), InputKind::Strokes) => {
            let ex =
                Example::from_bytes(bytes).map_err(|e| bad(format!("not a tf.Example: {e}")))?;
            let hint = "this model reads stroke_x, stroke_y, stroke_z (float_list) and stroke_len";
            let (dx, dy, pen) = (
                floats(&ex, features::STROKE_X).map_err(|e| bad(format!("{e} ({hint})")))?,
                floats(&ex, features::STROKE_Y).map_err(|e| bad(format!("{e} ({hint})")))?,
                floats(&ex, features::STROKE_Z).map_err(|e| bad(format!("{e} ({hint})")))?,
            );
            if dx.len() != dy.len() || dx.len() != pen.len() {
                return Err(bad(format!(
                    "stroke_x, stroke_y, stroke_z have {}, {}, {} values",
                    dx.len(),
                    dy.len(),
                    pen.len()
                )));
            }
            let len = dx.len();
            Ok(ModelInput::Sequence(StrokeFeatures {
                dx: dx.to_vec(),
                dy: dy.to_vec(),
                pen: pen.to_vec(),
                len,
                truncated: false,
            }))
        }
        (Instance::Pixels(p), InputKind::Image { .. }) => Ok(image(p.clone(), None)),
        (Instance::PixelsWide { pixels, wide }, InputKind::Image { .. }) => {
            check_wide(wide, index, input)?;
            Ok(ModelInput::PixelsWide {
                pixels: pixels.clone(),
                wide: wide.clone(),
            })
        }
        (Instance::Sequence(s), InputKind::Strokes) => Ok(ModelInput::Sequence(s.clone())),
        (_, _) => Err(bad(format!(
            "this instance does not fit the model; {}",
            expected_inputs(input)
        ))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(57).map_or(s.len(), |c| c.0)]
        )
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn img(size: u32) -> Inputs {
        InputKind::Image {
            key: format!("img_{size}"),
            size,
        }
        .into()
    }

    fn strokes() -> Inputs {
        InputKind::Strokes.into()
    }

    #[test]
    fn row_and_columnar_images() {
        let l = Limits::default();
        let p = parse_predict(
            &json!({"instances": [[[0.5, 0], [0, 1]], [0, 0, 0, 0.25], [[[1, 1], [1, 1]]]]}),
            &img(2),
            &l,
        )
        .unwrap();
        assert!(!p.columnar);
        assert_eq!(p.instances[0], Instance::Pixels(vec![0.5, 0.0, 0.0, 1.0]));
        assert_eq!(p.instances[1], Instance::Pixels(vec![0.0, 0.0, 0.0, 0.25]));
        assert_eq!(p.instances[2], Instance::Pixels(vec![1.0; 4]));
        let p = parse_predict(
            &json!({"inputs": {"img_2": [[[[0, 0], [0, 1]]]]}}),
            &img(2),
            &l,
        )
        .unwrap();
        assert!(p.columnar);
        assert_eq!(
            p.instances,
            vec![Instance::Pixels(vec![0.0, 0.0, 0.0, 1.0])]
        );
        let p = parse_predict(
            &json!({"instances": [{"img_2": [1, 0.5, 0, 0.25]}]}),
            &img(2),
            &l,
        )
        .unwrap();
        assert_eq!(
            p.instances,
            vec![Instance::Pixels(vec![1.0, 0.5, 0.0, 0.25])]
        );
    }

    #[test]
    fn errors_name_the_expected_inputs() {
        let l = Limits::default();
        let e = parse_predict(&json!({"instances": [[1, 2, 3]]}), &img(2), &l).unwrap_err();
        assert!(!e.too_large);
        assert!(
            e.message.contains("shape [3]") && e.message.contains("img_2"),
            "{}",
            e.message
        );
        let e = parse_predict(&json!({"instances": [[[1, 2], [3]]]}), &img(2), &l).unwrap_err();
        assert!(e.message.contains("rectangular"), "{}", e.message);
        let e = parse_predict(&json!({"instances": [{"pixels": 1}]}), &img(2), &l).unwrap_err();
        assert!(
            e.message.contains("\"pixels\"") && e.message.contains("{\"drawing\""),
            "{}",
            e.message
        );
        let e = parse_predict(&json!({"nothing": 1}), &img(2), &l).unwrap_err();
        assert!(e.message.contains("missing \"instances\""), "{}", e.message);
        let e = parse_predict(&json!({"instances": [], "inputs": []}), &img(2), &l).unwrap_err();
        assert!(e.message.contains("not both"), "{}", e.message);
        let e = parse_predict(
            &json!({"signature_name": "other", "instances": [[0, 0, 0, 0]]}),
            &img(2),
            &l,
        )
        .unwrap_err();
        assert!(e.message.contains("\"other\" not found"), "{}", e.message);
        let e = parse_predict(&json!([1]), &img(2), &l).unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
        let e = parse_predict(&json!({"inputs": {"img_3": []}}), &img(2), &l).unwrap_err();
        assert!(e.message.contains("img_2"), "{}", e.message);
    }

    #[test]
    fn drawings_are_validated_with_limits() {
        let l = Limits {
            max_batch: 2,
            max_strokes: 3,
            max_points: 10,
            ..Limits::default()
        };
        let d = json!({"drawing": [[[0, 10, 20], [0, 5, 0]], [[1.5, 2], [3, 4], [0, 16]]], "key_id": "12", "word": "cat"});
        let p = parse_predict(&json!({"instances": [d]}), &img(8), &l).unwrap();
        let Instance::Drawing(dr, _) = &p.instances[0] else {
            panic!()
        };
        assert_eq!((dr.key_id, dr.word.as_str(), dr.n_points()), (12, "cat", 5));
        assert_eq!(dr.strokes().unwrap()[1].t, Some(vec![0.0, 16.0]));
        let e = parse_predict(&json!({"instances": [[0, 0], [0, 0], [0, 0]]}), &img(8), &l)
            .unwrap_err();
        assert!(e.too_large && e.message.contains("limit 2"), "{e:?}");
        let many = json!({"drawing": vec![json!([[1], [1]]); 4]});
        let e = parse_instance(&many, 0, &img(8), &l).unwrap_err();
        assert!(e.too_large && e.message.contains("4 strokes"), "{e:?}");
        let long = json!({"drawing": [[vec![1; 11], vec![1; 11]]]});
        assert!(parse_instance(&long, 0, &img(8), &l).unwrap_err().too_large);
        let mismatch = json!({"drawing": [[[1, 2], [1]]]});
        let e = parse_instance(&mismatch, 4, &img(8), &l).unwrap_err();
        assert!(
            !e.too_large && e.message.contains("instance 4: length_mismatch"),
            "{e:?}"
        );
        let empty = json!({"drawing": []});
        assert!(
            parse_instance(&empty, 0, &img(8), &l)
                .unwrap_err()
                .message
                .contains("empty_drawing")
        );
        let e = parse_instance(&json!({"drawing": [[[1], ["a"]]]}), 0, &img(8), &l).unwrap_err();
        assert!(e.message.contains("stroke 0 array 1"), "{e:?}");
    }

    #[test]
    fn classify_context_and_sequences() {
        let l = Limits::default();
        let got = parse_classify(
            &json!({"context": {"word": "cat"}, "examples": [{"drawing": [[[0, 9], [0, 9]]]}]}),
            &img(8),
            &l,
        )
        .unwrap();
        let Instance::Drawing(d, _) = &got[0] else {
            panic!()
        };
        assert_eq!(d.word, "cat");
        let seq = parse_instance(
            &json!({"strokes": [[1, 2, 0], [3, 4, 1], [0, 0, 0]], "lengths": 2}),
            0,
            &strokes(),
            &l,
        )
        .unwrap();
        assert_eq!(
            seq,
            Instance::Sequence(StrokeFeatures {
                dx: vec![1.0, 3.0],
                dy: vec![2.0, 4.0],
                pen: vec![0.0, 1.0],
                len: 2,
                truncated: false
            })
        );
        let e = parse_instance(&json!([[1, 2]]), 0, &strokes(), &l).unwrap_err();
        assert!(e.message.contains("[T, 3]"), "{e:?}");
        let p = parse_predict(
            &json!({"inputs": {"strokes": [[[1, 1, 1]]], "lengths": [1]}}),
            &strokes(),
            &l,
        )
        .unwrap();
        assert_eq!(p.instances.len(), 1);
    }

    fn wide_img(size: u32) -> Inputs {
        Inputs {
            wide: Some(WideSpec { country_buckets: 4 }),
            ..img(size)
        }
    }

    #[test]
    fn wide_tensors_are_optional_and_checked() {
        let l = Limits::default();
        let w = wide_img(2);
        let mut v = vec![0.0; 27];
        v[5] = 1.0;
        // Row format: with "wide", without it (no metadata), bare.
        let p = parse_predict(
            &json!({"instances": [{"img_2": [0, 0, 0, 1], "wide": v}, {"img_2": [0, 0, 0, 1]}, [1, 1, 1, 1]]}),
            &w,
            &l,
        )
        .unwrap();
        assert_eq!(
            p.instances[0],
            Instance::PixelsWide {
                pixels: vec![0.0, 0.0, 0.0, 1.0],
                wide: v.clone()
            }
        );
        assert_eq!(p.instances[1], Instance::Pixels(vec![0.0, 0.0, 0.0, 1.0]));
        let spec = FeatureSpec::default();
        let to = |i: &Instance| to_model_input(i, 0, &w, &spec).unwrap();
        assert_eq!(
            to(&p.instances[1]),
            ModelInput::PixelsWide {
                pixels: vec![0.0, 0.0, 0.0, 1.0],
                wide: vec![0.0; 27]
            },
            "no metadata: the all-zero vector"
        );
        // Metadata fields next to the tensor would be ignored: refused, naming the field.
        let e = parse_predict(
            &json!({"instances": [{"img_2": [0, 0, 0, 1], "countrycode": "US"}]}),
            &w,
            &l,
        )
        .unwrap_err();
        assert!(
            e.message.contains("\"countrycode\"") && e.message.contains("27 values"),
            "{}",
            e.message
        );
        // [1, W] is taken too.
        let p = parse_predict(
            &json!({"instances": [{"img_2": [0, 0, 0, 0], "wide": [v]}]}),
            &w,
            &l,
        )
        .unwrap();
        assert!(matches!(&p.instances[0], Instance::PixelsWide { wide, .. } if *wide == v));
        // Columnar.
        let p = parse_predict(
            &json!({"inputs": {"img_2": [[0, 0, 0, 1], [0, 0, 0, 0]], "wide": [v, vec![0.0; 27]]}}),
            &w,
            &l,
        )
        .unwrap();
        assert!(
            p.columnar
                && matches!(&p.instances[1], Instance::PixelsWide { wide, .. } if wide.iter().all(|&x| x == 0.0))
        );
        let e = parse_predict(
            &json!({"inputs": {"img_2": [[0, 0, 0, 1], [0, 0, 0, 0]], "wide": [v]}}),
            &w,
            &l,
        )
        .unwrap_err();
        assert!(e.message.contains("1 rows for 2 images"), "{e:?}");
        // The wrong length names W.
        let e = parse_predict(
            &json!({"instances": [{"img_2": [0, 0, 0, 1], "wide": [1, 0, 1]}]}),
            &w,
            &l,
        )
        .unwrap_err();
        assert!(
            !e.too_large
                && e.message.contains("instance 0: wide tensor of shape [3]")
                && e.message.contains("takes 27 floats"),
            "{e:?}"
        );
        let bad = Instance::PixelsWide {
            pixels: vec![0.0; 4],
            wide: vec![0.0; 3],
        };
        let e = to_model_input(&bad, 2, &w, &spec).unwrap_err();
        assert!(
            e.message
                .contains("instance 2: wide has 3 values; input wide takes 27"),
            "{e:?}"
        );
        // A model without a wide input refuses one.
        let e = parse_predict(
            &json!({"instances": [{"img_2": [0, 0, 0, 1], "wide": v}]}),
            &img(2),
            &l,
        )
        .unwrap_err();
        assert!(e.message.contains("no input \"wide\""), "{e:?}");
        assert!(to_model_input(&bad, 0, &img(2), &spec).is_err());
        // The messages of a wide model name the input.
        let e = parse_predict(&json!({"instances": [{"pixels": 1}]}), &w, &l).unwrap_err();
        assert!(
            e.message.contains("\"wide\": [27 floats]") && e.message.contains("absent: all zeros"),
            "{}",
            e.message
        );
    }

    #[test]
    fn drawings_carry_the_metadata_they_send() {
        let l = Limits::default();
        let w = wide_img(8);
        let strokes = json!([[[0, 10], [0, 10], [0, 400]], [[5, 9], [1, 2], [1500, 2600]]]);
        let p = parse_predict(
            &json!({"instances": [
                {"drawing": strokes, "countrycode": "us", "recognized": false},
                {"drawing": strokes, "countrycode": ""},
                {"drawing": [[[0, 10], [0, 10]]], "recognized": null},
            ]}),
            &w,
            &l,
        )
        .unwrap();
        let meta = |i: usize| match &p.instances[i] {
            Instance::Drawing(_, m) => m.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            meta(0),
            Metadata {
                countrycode: Some("us".into()),
                recognized: Some(false),
                stroke_count: Some(2),
                duration_ms: Some(2600),
            }
        );
        // Not sent (or empty, or null): missing, although the drawing itself says false.
        assert_eq!((meta(1).countrycode, meta(1).recognized), (None, None));
        assert_eq!(
            meta(2),
            Metadata {
                stroke_count: Some(1),
                ..Metadata::default()
            },
            "no t arrays: no duration"
        );
        // The wide vector is the spec's vector of that metadata.
        let spec = FeatureSpec {
            raster: quickdraw_data::raster::RasterSpec::new(
                quickdraw_data::raster::RasterMode::Default,
                8,
                None,
            ),
            ..FeatureSpec::default()
        };
        let ModelInput::PixelsWide { wide, .. } =
            to_model_input(&p.instances[0], 0, &w, &spec).unwrap()
        else {
            panic!()
        };
        assert_eq!(wide, w.wide.unwrap().vector(&meta(0)));
        // A model without a wide input gets the image alone.
        assert!(matches!(
            to_model_input(&p.instances[0], 0, &img(8), &spec).unwrap(),
            ModelInput::Pixels(_)
        ));
        // Columnar drawings take the metadata as columns of the same length.
        let p = parse_predict(
            &json!({"inputs": {"drawing": [strokes, strokes], "countrycode": ["DE", "FR"], "recognized": [true, false]}}),
            &w,
            &l,
        )
        .unwrap();
        let Instance::Drawing(d, m) = &p.instances[1] else {
            panic!()
        };
        assert_eq!((d.countrycode.as_str(), m.recognized), ("FR", Some(false)));
        let e = parse_predict(
            &json!({"inputs": {"drawing": [strokes, strokes], "countrycode": ["DE"]}}),
            &w,
            &l,
        )
        .unwrap_err();
        assert!(e.message.contains("1 values for 2 drawings"), "{e:?}");
    }

    #[test]
    fn example_metadata_feeds_the_wide_input() {
        use quickdraw_data::example::Feature;
        let spec = FeatureSpec {
            raster: quickdraw_data::raster::RasterSpec::new(
                quickdraw_data::raster::RasterMode::Default,
                2,
                None,
            ),
            ..FeatureSpec::default()
        };
        let w = wide_img(2);
        let mut f = std::collections::BTreeMap::new();
        f.insert("img_2".to_string(), Feature::int64s(vec![0, 255, 0, 51]));
        let plain = Example::from_features(f.clone()).to_bytes();
        f.insert("countrycode".to_string(), Feature::bytes(b"BR".to_vec()));
        f.insert("recognized".to_string(), Feature::int64(1));
        f.insert(features::STROKE_COUNT.to_string(), Feature::int64(3));
        let with = Example::from_features(f.clone()).to_bytes();
        let wide_of = |bytes: Vec<u8>| match to_model_input(&Instance::Example(bytes), 0, &w, &spec)
        {
            Ok(ModelInput::PixelsWide { wide, .. }) => wide,
            other => panic!("{other:?}"),
        };
        assert_eq!(wide_of(plain), vec![0.0; 27], "no metadata features: zeros");
        let m = Metadata {
            countrycode: Some("BR".into()),
            recognized: Some(true),
            stroke_count: Some(3),
            duration_ms: None,
        };
        assert_eq!(wide_of(with), w.wide.unwrap().vector(&m));
        // A metadata feature of the wrong type is a 400 naming it.
        f.insert(
            features::DURATION_MS.to_string(),
            Feature::floats(vec![1.0]),
        );
        let e = to_model_input(
            &Instance::Example(Example::from_features(f).to_bytes()),
            3,
            &w,
            &spec,
        )
        .unwrap_err();
        assert!(
            e.message.contains("instance 3") && e.message.contains("duration_ms"),
            "{e:?}"
        );
    }

    #[test]
    fn examples_decode_only_what_the_model_reads() {
        use quickdraw_data::example::Feature;
        let spec = FeatureSpec {
            raster: quickdraw_data::raster::RasterSpec::new(
                quickdraw_data::raster::RasterMode::Default,
                2,
                None,
            ),
            ..FeatureSpec::default()
        };
        let mut f = std::collections::BTreeMap::new();
        f.insert("img_2".to_string(), Feature::int64s(vec![0, 255, 0, 51]));
        let bytes = Example::from_features(f).to_bytes();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let inst = parse_instance(&json!({"b64": b64}), 0, &img(2), &Limits::default()).unwrap();
        let expected = [0.0, 255.0, 0.0, 51.0]
            .iter()
            .map(|p| p * features::PIXEL_SCALE)
            .collect();
        assert_eq!(
            to_model_input(&inst, 0, &img(2), &spec).unwrap(),
            ModelInput::Pixels(expected)
        );
        let e =
            to_model_input(&Instance::Example(vec![0xff, 0xff]), 1, &img(2), &spec).unwrap_err();
        assert!(e.message.contains("instance 1: not a tf.Example"), "{e:?}");
        let empty = Example::from_features(Default::default()).to_bytes();
        let e = to_model_input(&Instance::Example(empty), 0, &img(2), &spec).unwrap_err();
        assert!(e.message.contains("\"img_2\" is missing"), "{e:?}");
        let e = parse_instance(&json!({"b64": "%%%"}), 0, &img(2), &Limits::default()).unwrap_err();
        assert!(e.message.contains("not base64"), "{e:?}");
    }
}
