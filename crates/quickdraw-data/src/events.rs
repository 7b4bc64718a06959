//! TensorBoard event files: the `Event`/`Summary`/`HistogramProto` protobufs (hand-written prost
//! structs), a writer for scalars, PNG images and histograms, and a CRC-checking reader used by
//! tests and the `metrics --csv` export.
//!
//! An event file is a TFRecord file (framing in [`crate::tfrecord`]) of serialised
//! `tensorflow.Event` messages; the first record is an `Event` with `file_version =
//! "brain.Event:2"`. Files are named `events.out.tfevents.<unix_secs>.<hostname>` so TensorBoard
//! (and TensorFlow's `summary_iterator`) pick them up from the log directory.
//!
//! Field numbers follow tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto
//! and tsl/protobuf/histogram.proto; they were checked against the descriptors compiled into
//! TensorBoard 2.21 (`tensorboard.compat.proto.*_pb2`). Unknown fields (graphs, session logs,
//! tensors, metadata) are skipped when reading.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;

use crate::tfrecord::{TfRecordError, TfRecordReader, TfRecordWriter};

/// The `file_version` of the first event of every file, as written by TensorFlow 2.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Prefix of event file names; TensorBoard loads every file whose name contains `tfevents`.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// The protobuf messages, hand-written for prost (no `protoc` at build time).
pub mod proto {
    /// `tensorflow.Event` (event.proto); only the members this project writes.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Event {
        /// Seconds since the Unix epoch.
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(oneof = "event::What", tags = "3, 4, 5")]
        pub what: Option<event::What>,
    }

    pub mod event {
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum What {
            /// Always `"brain.Event:2"`, in the first record of a file.
            #[prost(string, tag = "3")]
            FileVersion(String),
            /// A serialised `tensorflow.GraphDef` (TensorBoard's Graphs tab).
            #[prost(bytes = "vec", tag = "4")]
            GraphDef(Vec<u8>),
            #[prost(message, tag = "5")]
            Summary(super::Summary),
        }
    }

    /// `tensorflow.Summary` (summary.proto).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<summary::Value>,
    }

    pub mod summary {
        /// `tensorflow.Summary.Image`.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Image {
            #[prost(int32, tag = "1")]
            pub height: i32,
            #[prost(int32, tag = "2")]
            pub width: i32,
            /// 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA, 5 digital YUV, 6 BGRA.
            #[prost(int32, tag = "3")]
            pub colorspace: i32,
            /// A PNG (or JPEG) file's bytes.
            #[prost(bytes = "vec", tag = "4")]
            pub encoded_image_string: Vec<u8>,
        }

        /// `tensorflow.Summary.Value`.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Value {
            #[prost(string, tag = "1")]
            pub tag: String,
            #[prost(oneof = "value::Kind", tags = "2, 4, 5, 8")]
            pub value: Option<value::Kind>,
            /// Which plugin reads the value (tensor summaries: text, hparams).
            #[prost(message, optional, tag = "9")]
            pub metadata: Option<super::SummaryMetadata>,
        }

        pub mod value {
            /// The `oneof value` of `Summary.Value`.
            #[derive(Clone, PartialEq, ::prost::Oneof)]
            pub enum Kind {
                #[prost(float, tag = "2")]
                SimpleValue(f32),
                #[prost(message, tag = "4")]
                Image(super::Image),
                #[prost(message, tag = "5")]
                Histo(super::super::HistogramProto),
                #[prost(message, tag = "8")]
                Tensor(super::super::TensorProto),
            }
        }
    }

    /// `tensorflow.SummaryMetadata` (summary.proto): the plugin a tensor summary is for.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SummaryMetadata {
        #[prost(message, optional, tag = "1")]
        pub plugin_data: Option<PluginData>,
    }

    /// `tensorflow.SummaryMetadata.PluginData`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PluginData {
        #[prost(string, tag = "1")]
        pub plugin_name: String,
        /// The plugin's own serialised message (hparams) or empty (text).
        #[prost(bytes = "vec", tag = "2")]
        pub content: Vec<u8>,
    }

    /// The part of `tensorflow.TensorProto` (tensor.proto) that text and hparams summaries use.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct TensorProto {
        /// `tensorflow.DataType`: 1 DT_FLOAT, 7 DT_STRING.
        #[prost(int32, tag = "1")]
        pub dtype: i32,
        #[prost(message, optional, tag = "2")]
        pub tensor_shape: Option<TensorShapeProto>,
        #[prost(float, repeated, packed = "true", tag = "5")]
        pub float_val: Vec<f32>,
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub string_val: Vec<Vec<u8>>,
    }

    /// `tensorflow.TensorShapeProto`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "2")]
        pub dim: Vec<Dim>,
    }

    /// `tensorflow.TensorShapeProto.Dim`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Dim {
        #[prost(int64, tag = "1")]
        pub size: i64,
    }

    /// `tensorflow.GraphDef` (graph.proto): the nodes only.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct GraphDef {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeDef>,
    }

    /// `tensorflow.NodeDef` (node_def.proto).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct NodeDef {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub op: String,
        #[prost(string, repeated, tag = "3")]
        pub input: Vec<String>,
        #[prost(btree_map = "string, message", tag = "5")]
        pub attr: std::collections::BTreeMap<String, AttrValue>,
    }

    /// `tensorflow.AttrValue` (attr_value.proto): a string, an integer or a list of shapes.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct AttrValue {
        #[prost(oneof = "attr_value::Value", tags = "1, 2, 3")]
        pub value: Option<attr_value::Value>,
    }

    pub mod attr_value {
        #[derive(Clone, PartialEq, ::prost::Oneof)]
        pub enum Value {
            #[prost(message, tag = "1")]
            List(super::AttrList),
            #[prost(bytes = "vec", tag = "2")]
            S(Vec<u8>),
            #[prost(int64, tag = "3")]
            I(i64),
        }
    }

    /// `tensorflow.AttrValue.ListValue`: shapes only.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct AttrList {
        #[prost(message, repeated, tag = "7")]
        pub shape: Vec<TensorShapeProto>,
    }

    /// `tensorflow.HistogramProto` (histogram.proto). Bucket `i` counts values in
    /// `[bucket_limit[i - 1], bucket_limit[i])`; the first bucket starts at `min`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HistogramProto {
        #[prost(double, tag = "1")]
        pub min: f64,
        #[prost(double, tag = "2")]
        pub max: f64,
        #[prost(double, tag = "3")]
        pub num: f64,
        #[prost(double, tag = "4")]
        pub sum: f64,
        #[prost(double, tag = "5")]
        pub sum_squares: f64,
        #[prost(double, repeated, packed = "true", tag = "6")]
        pub bucket_limit: Vec<f64>,
        #[prost(double, repeated, packed = "true", tag = "7")]
        pub bucket: Vec<f64>,
    }
}

pub use proto::event::What;
pub use proto::summary::value::Kind;
pub use proto::summary::{Image, Value};
pub use proto::{
    AttrList, AttrValue, Dim, Event, GraphDef, HistogramProto, NodeDef, PluginData, Summary,
    SummaryMetadata, TensorProto, TensorShapeProto,
};

/// A node of [`EventWriter::add_graph`].
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub shape: Vec<i64>,
    pub attrs: Vec<(String, i64)>,
}

/// `tensorflow.DataType` values used here.
pub const DT_FLOAT: i32 = 1;
pub const DT_STRING: i32 = 7;

/// A tensor summary value for `plugin` (its `content` is the plugin's own message).
pub fn plugin_value(tag: &str, plugin: &str, content: Vec<u8>, tensor: TensorProto) -> Value {
    Value {
        tag: tag.to_string(),
        value: Some(Kind::Tensor(tensor)),
        metadata: Some(SummaryMetadata {
            plugin_data: Some(PluginData {
                plugin_name: plugin.to_string(),
                content,
            }),
        }),
    }
}

/// Errors of the event writer and reader; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Record(#[from] TfRecordError),
    #[error("{}: record {index} is not a tensorflow.Event: {source}", path.display())]
    Decode {
        path: PathBuf,
        index: usize,
        source: prost::DecodeError,
    },
    #[error("{}: cannot encode PNG for tag {tag:?}: {source}", path.display())]
    Png {
        path: PathBuf,
        tag: String,
        source: png::EncodingError,
    },
    #[error("{}: tag {tag:?}: {what}", path.display())]
    InvalidInput {
        path: PathBuf,
        tag: String,
        what: String,
    },
}

/// Appends summaries to one event file, flushing after every event so that a killed process
/// loses at most the event being written (TensorBoard ignores a truncated last record).
pub struct EventWriter {
    path: PathBuf,
    writer: TfRecordWriter<BufWriter<File>>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new file `events.out.tfevents.<unix_secs>.<hostname>` in it
    /// (with `.<pid>[.<n>]` appended if that name is taken), starting with the `file_version`
    /// event.
    pub fn create(dir: &Path) -> Result<Self, EventsError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| EventsError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let base = format!("{FILE_PREFIX}{secs}.{}", hostname());
        let pid = std::process::id();
        let mut attempt = 0u32;
        let (path, file) = loop {
            let name = match attempt {
                0 => base.clone(),
                1 => format!("{base}.{pid}"),
                n => format!("{base}.{pid}.{}", n - 1),
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        };
        let mut w = EventWriter {
            path,
            writer: TfRecordWriter::new(BufWriter::new(file)),
        };
        w.write_event(&Event {
            wall_time: wall_time_now(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.to_string())),
        })?;
        Ok(w)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes any event (stamped by the caller) and flushes.
    pub fn write_event(&mut self, event: &Event) -> Result<(), EventsError> {
        let bytes = event.encode_to_vec();
        let path = &self.path;
        let io_err = |source| EventsError::Io {
            path: path.clone(),
            source,
        };
        self.writer.write_record(&bytes).map_err(io_err)?;
        self.writer.flush().map_err(io_err)
    }

    /// Writes one summary value as an event at `step`, stamped with the current time.
    pub fn add_value(&mut self, step: i64, value: Value) -> Result<(), EventsError> {
        self.add_values(step, vec![value])
    }

    /// Writes several summary values in one event at `step`.
    pub fn add_values(&mut self, step: i64, values: Vec<Value>) -> Result<(), EventsError> {
        self.write_event(&Event {
            wall_time: wall_time_now(),
            step,
            what: Some(What::Summary(Summary { value: values })),
        })
    }

    /// A scalar (`simple_value`), shown in TensorBoard's Scalars tab.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> Result<(), EventsError> {
        self.add_value(
            step,
            Value {
                tag: tag.to_string(),
                value: Some(Kind::SimpleValue(value)),
                metadata: None,
            },
        )
    }

    /// Several scalars sharing a step, in one event.
    pub fn add_scalars(&mut self, scalars: &[(&str, f32)], step: i64) -> Result<(), EventsError> {
        let values = scalars
            .iter()
            .map(|&(tag, v)| Value {
                tag: tag.to_string(),
                value: Some(Kind::SimpleValue(v)),
                metadata: None,
            })
            .collect();
        self.add_values(step, values)
    }

    /// An already encoded image (PNG or JPEG bytes); `channels` is 1 (grey), 2 (grey + alpha),
    /// 3 (RGB) or 4 (RGBA) and becomes the `colorspace`.
    pub fn add_image(
        &mut self,
        tag: &str,
        png: &[u8],
        height: u32,
        width: u32,
        channels: u32,
        step: i64,
    ) -> Result<(), EventsError> {
        if !(1..=4).contains(&channels) {
            return Err(self.invalid(tag, format!("{channels} channels (expected 1..=4)")));
        }
        let image = Image {
            height: height as i32,
            width: width as i32,
            colorspace: channels as i32,
            encoded_image_string: png.to_vec(),
        };
        self.add_value(
            step,
            Value {
                tag: tag.to_string(),
                value: Some(Kind::Image(image)),
                metadata: None,
            },
        )
    }

    /// A grey-scale image, `w * h` bytes row-major (0 black), encoded as PNG.
    pub fn add_png_gray(
        &mut self,
        tag: &str,
        pixels: &[u8],
        w: u32,
        h: u32,
        step: i64,
    ) -> Result<(), EventsError> {
        if pixels.len() != w as usize * h as usize {
            return Err(self.invalid(tag, format!("{} bytes for a {w}x{h} image", pixels.len())));
        }
        let png = crate::image::encode(pixels, w, h, 1).map_err(|source| EventsError::Png {
            path: self.path.clone(),
            tag: tag.to_string(),
            source,
        })?;
        self.add_image(tag, &png, h, w, 1, step)
    }

    /// A histogram of `values` with TensorFlow's default bucket limits (see [`histogram`]).
    pub fn add_histogram(
        &mut self,
        tag: &str,
        values: &[f32],
        step: i64,
    ) -> Result<(), EventsError> {
        let histo = histogram(values.iter().map(|&v| v as f64));
        self.add_value(
            step,
            Value {
                tag: tag.to_string(),
                value: Some(Kind::Histo(histo)),
                metadata: None,
            },
        )
    }

    /// A graph for TensorBoard's Graphs tab: one node per `(name, op, inputs, output shape,
    /// integer attributes)`; `-1` in a shape is the batch dimension.
    pub fn add_graph(&mut self, nodes: &[GraphNode]) -> Result<(), EventsError> {
        let node = nodes
            .iter()
            .map(|n| {
                let mut attr = std::collections::BTreeMap::new();
                let shape = TensorShapeProto {
                    dim: n.shape.iter().map(|&size| Dim { size }).collect(),
                };
                attr.insert(
                    "_output_shapes".to_string(),
                    AttrValue {
                        value: Some(proto::attr_value::Value::List(AttrList {
                            shape: vec![shape],
                        })),
                    },
                );
                for (k, v) in &n.attrs {
                    attr.insert(
                        k.clone(),
                        AttrValue {
                            value: Some(proto::attr_value::Value::I(*v)),
                        },
                    );
                }
                NodeDef {
                    name: n.name.clone(),
                    op: n.op.clone(),
                    input: n.inputs.clone(),
                    attr,
                }
            })
            .collect();
        let bytes = GraphDef { node }.encode_to_vec();
        self.write_event(&Event {
            wall_time: wall_time_now(),
            step: 0,
            what: Some(What::GraphDef(bytes)),
        })
    }

    /// A text summary (TensorBoard's Text tab renders it as Markdown).
    pub fn add_text(&mut self, tag: &str, markdown: &str, step: i64) -> Result<(), EventsError> {
        let tensor = TensorProto {
            dtype: DT_STRING,
            tensor_shape: Some(TensorShapeProto::default()),
            float_val: Vec::new(),
            string_val: vec![markdown.as_bytes().to_vec()],
        };
        self.add_value(step, plugin_value(tag, "text", Vec::new(), tensor))
    }

    /// Flushes buffered bytes to the operating system (every `add_*` already does).
    pub fn flush(&mut self) -> Result<(), EventsError> {
        let path = &self.path;
        self.writer.flush().map_err(|source| EventsError::Io {
            path: path.clone(),
            source,
        })
    }

    fn invalid(&self, tag: &str, what: String) -> EventsError {
        EventsError::InvalidInput {
            path: self.path.clone(),
            tag: tag.to_string(),
            what,
        }
    }
}

/// TensorFlow's default histogram bucket limits (tensorflow/core/lib/histogram/histogram.cc):
/// `±1e-12 * 1.1^k` up to `1e20`, plus `0` and `±f64::MAX`, ascending. Bucket `i` holds values
/// `v` with `limits[i - 1] <= v < limits[i]`.
pub fn default_bucket_limits() -> &'static [f64] {
    static LIMITS: OnceLock<Vec<f64>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let mut pos = Vec::new();
        let mut v = 1.0e-12;
        while v < 1.0e20 {
            pos.push(v);
            v *= 1.1;
        }
        pos.push(f64::MAX);
        let mut limits: Vec<f64> = pos.iter().rev().map(|v| -v).collect();
        limits.push(0.0);
        limits.extend_from_slice(&pos);
        limits
    })
}

/// A `HistogramProto` the way TensorFlow's `tf.summary.histogram` (v1) builds it: bucket limits
/// from [`default_bucket_limits`] (right edges, exclusive), runs of empty buckets merged into one
/// as `Histogram::EncodeToProto` does, and, unlike TensorFlow, the empty runs before the first
/// and after the last value dropped (so TensorBoard's `[min, limit0), ...` intervals stay
/// ordered). Non-finite values are skipped (TensorFlow rejects them). No values gives
/// `num = 0` and one empty bucket `[0, 0)`.
pub fn histogram(values: impl IntoIterator<Item = f64>) -> HistogramProto {
    let limits = default_bucket_limits();
    let mut counts = vec![0.0f64; limits.len()];
    let (mut min, mut max, mut num, mut sum, mut sum_squares) = (f64::MAX, f64::MIN, 0.0, 0.0, 0.0);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        // First limit strictly greater than v (std::upper_bound in TensorFlow).
        let i = limits.partition_point(|&l| l <= v).min(limits.len() - 1);
        counts[i] += 1.0;
        min = min.min(v);
        max = max.max(v);
        num += 1.0;
        sum += v;
        sum_squares += v * v;
    }
    if num == 0.0 {
        return HistogramProto {
            bucket_limit: vec![0.0],
            bucket: vec![0.0],
            ..Default::default()
        };
    }
    let first = counts.iter().position(|&c| c > 0.0).expect("num > 0");
    let last = counts.iter().rposition(|&c| c > 0.0).expect("num > 0");
    let (mut bucket_limit, mut bucket) = (Vec::new(), Vec::new());
    let mut i = first;
    while i <= last {
        let mut j = i;
        if counts[i] == 0.0 {
            while j < last && counts[j + 1] == 0.0 {
                j += 1;
            }
        }
        bucket_limit.push(limits[j]);
        bucket.push(counts[i]);
        i = j + 1;
    }
    HistogramProto {
        min,
        max,
        num,
        sum,
        sum_squares,
        bucket_limit,
        bucket,
    }
}

/// One scalar point, as exported by `metrics --csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarPoint {
    pub tag: String,
    pub step: i64,
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub value: f32,
}

/// Reads every event of one event file, verifying both CRCs of each record. A truncated last
/// record (a writer killed mid-write) ends the file quietly, as in TensorBoard; a CRC mismatch
/// or an undecodable record is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>, EventsError> {
    let mut events = Vec::new();
    for (index, record) in TfRecordReader::open(path)?.enumerate() {
        let bytes = match record {
            Ok(b) => b,
            Err(TfRecordError::Truncated { .. }) => break,
            Err(e) => return Err(e.into()),
        };
        let event = Event::decode(bytes.as_slice()).map_err(|source| EventsError::Decode {
            path: path.to_path_buf(),
            index,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// The event files of a log directory (names containing `tfevents`), sorted by name, which is
/// creation order for files this module wrote.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, EventsError> {
    let io_err = |source| EventsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.file_name().to_string_lossy().contains("tfevents") && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The scalar (`simple_value`) points of some events, in file order.
pub fn scalars(events: &[Event]) -> Vec<ScalarPoint> {
    let mut out = Vec::new();
    for e in events {
        if let Some(What::Summary(s)) = &e.what {
            for v in &s.value {
                if let Some(Kind::SimpleValue(x)) = v.value {
                    out.push(ScalarPoint {
                        tag: v.tag.clone(),
                        step: e.step,
                        wall_time: e.wall_time,
                        value: x,
                    });
                }
            }
        }
    }
    out
}

/// The scalar points of an event file, or of every event file of a directory (in name order).
pub fn read_scalars(path: &Path) -> Result<Vec<ScalarPoint>, EventsError> {
    let files = if path.is_dir() {
        event_files(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        out.extend(scalars(&read_events(&f)?));
    }
    Ok(out)
}

/// Writes `tag,step,wall_time,value` CSV with a header line; tags are quoted when needed.
pub fn write_scalars_csv<W: Write>(points: &[ScalarPoint], mut w: W) -> io::Result<()> {
    writeln!(w, "tag,step,wall_time,value")?;
    for p in points {
        let tag = if p.tag.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", p.tag.replace('"', "\"\""))
        } else {
            p.tag.clone()
        };
        writeln!(w, "{tag},{},{},{}", p.step, p.wall_time, p.value)?;
    }
    Ok(())
}

fn wall_time_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host name for file names: `/proc/sys/kernel/hostname`, `$HOSTNAME`, `$COMPUTERNAME`, or
/// `localhost`, restricted to `[A-Za-z0-9._-]`.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfrecord::masked_crc32c;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn events_masked_crc_known_vectors() {
        // Golden values from an independent bit-by-bit CRC-32C (reflected polynomial 0x82F63B78)
        // in Python plus TensorFlow's masking, and from tensorboard.summary.writer.record_writer:
        //   crc32c(b"123456789") = 0xe3069283 (the published check value)
        //   masked(b"") = 0xa282ead8, masked(8 zero bytes) = 0x07980329
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(masked_crc32c(&[0u8; 8]), 0x0798_0329);
    }

    #[test]
    fn events_bytes_match_tensorboard() {
        // Two records written by TensorBoard 2.21's own protobufs and RecordWriter:
        //   ev = event_pb2.Event(wall_time=1500000000.5, file_version="brain.Event:2")
        //   ev2 = event_pb2.Event(wall_time=1500000001.25, step=7, summary=summary_pb2.Summary(
        //       value=[summary_pb2.Summary.Value(tag="loss/train", simple_value=0.5)]))
        //   RecordWriter(buf).write(ev.SerializeToString()); ...write(ev2.SerializeToString())
        let golden = hex(concat!(
            "1800000000000000a37f4b2209000020c00b5ad6411a0d627261696e2e4576656e743a320be205f7",
            "200000000000000029eda95009000050c00b5ad64110072a130a110a0a6c6f73732f747261696e15",
            "0000003fb65a8029"
        ));
        let ev = Event {
            wall_time: 1500000000.5,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        };
        let ev2 = Event {
            wall_time: 1500000001.25,
            step: 7,
            what: Some(What::Summary(Summary {
                value: vec![Value {
                    tag: "loss/train".into(),
                    value: Some(Kind::SimpleValue(0.5)),
                    metadata: None,
                }],
            })),
        };
        let mut w = TfRecordWriter::new(Vec::new());
        w.write_record(&ev.encode_to_vec()).unwrap();
        w.write_record(&ev2.encode_to_vec()).unwrap();
        assert_eq!(w.into_inner(), golden);
    }

    #[test]
    fn events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(FILE_PREFIX), "{name}");
        for step in 0..5 {
            w.add_scalar("loss/train", 1.0 / (step + 1) as f32, step)
                .unwrap();
        }
        w.add_scalars(&[("acc/train", 0.5), ("acc/val", 0.25)], 5)
            .unwrap();
        let pixels: Vec<u8> = (0..12 * 8).map(|i| (i * 3) as u8).collect();
        w.add_png_gray("samples/0", &pixels, 12, 8, 3).unwrap();
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 300.0) / 100.0).collect();
        w.add_histogram("weights/conv1", &values, 4).unwrap();
        // A second writer in the same second gets another file.
        let w2 = EventWriter::create(dir.path()).unwrap();
        assert_ne!(w2.path(), w.path());
        let path = w.path().to_path_buf();
        drop(w);

        let events = read_events(&path).unwrap();
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        assert!(events[0].wall_time > 1.5e9);
        let sc = scalars(&events);
        assert_eq!(sc.len(), 7);
        assert_eq!(
            sc[3],
            ScalarPoint {
                tag: "loss/train".into(),
                step: 3,
                wall_time: sc[3].wall_time,
                value: 0.25
            }
        );
        assert_eq!(
            (sc[6].tag.as_str(), sc[6].step, sc[6].value),
            ("acc/val", 5, 0.25)
        );

        let value = |tag: &str| {
            events
                .iter()
                .filter_map(|e| match &e.what {
                    Some(What::Summary(s)) => s
                        .value
                        .iter()
                        .find(|v| v.tag == tag)
                        .map(|v| (e.step, v.clone())),
                    _ => None,
                })
                .next()
                .unwrap()
        };
        let (step, img) = value("samples/0");
        assert_eq!(step, 3);
        let Some(Kind::Image(img)) = img.value else {
            panic!("not an image")
        };
        assert_eq!((img.width, img.height, img.colorspace), (12, 8, 1));
        let dec = png::Decoder::new(std::io::Cursor::new(img.encoded_image_string));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height, info.color_type),
            (12, 8, png::ColorType::Grayscale)
        );
        assert_eq!(&buf[..info.buffer_size()], &pixels[..]);

        let (step, h) = value("weights/conv1");
        assert_eq!(step, 4);
        let Some(Kind::Histo(h)) = h.value else {
            panic!("not a histogram")
        };
        assert_eq!((h.min, h.max, h.num), (-3.0, values[999] as f64, 1000.0));
        assert_eq!(h.bucket.iter().sum::<f64>(), 1000.0);
        let exact: f64 = values.iter().map(|&v| v as f64).sum();
        assert!((h.sum - exact).abs() < 1e-9);

        // The directory form reads both files (the second holds only its file_version event).
        assert_eq!(read_scalars(dir.path()).unwrap().len(), 7);
        assert_eq!(event_files(dir.path()).unwrap().len(), 2);

        let mut csv = Vec::new();
        write_scalars_csv(&sc[..1], &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.starts_with("tag,step,wall_time,value\nloss/train,0,"),
            "{csv}"
        );
        assert!(csv.ends_with(",1\n"), "{csv}");
    }

    #[test]
    fn events_histogram_buckets() {
        let limits = default_bucket_limits();
        assert_eq!(limits.len() % 2, 1);
        assert_eq!(limits[limits.len() / 2], 0.0);
        assert!(limits.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((limits[0], *limits.last().unwrap()), (-f64::MAX, f64::MAX));

        let h = histogram([0.0, 1.0, 1.0, 50.0, -2.0, f64::NAN]);
        assert_eq!(
            (h.num, h.min, h.max, h.sum, h.sum_squares),
            (5.0, -2.0, 50.0, 50.0, 2506.0)
        );
        // Non-empty buckets keep their limits; interior empty runs collapse into one bucket.
        assert_eq!(h.bucket.iter().sum::<f64>(), 5.0);
        assert_eq!(h.bucket[0], 1.0);
        assert_eq!(*h.bucket.last().unwrap(), 1.0);
        assert!(
            h.bucket.windows(2).all(|w| w[0] > 0.0 || w[1] > 0.0),
            "{:?}",
            h.bucket
        );
        assert!(h.bucket_limit.windows(2).all(|w| w[0] < w[1]));
        assert!(*h.bucket_limit.last().unwrap() > 50.0 && *h.bucket_limit.last().unwrap() < 55.1);
        // The bucket of 1.0 is [1.1^k * 1e-12, 1.1^(k+1) * 1e-12) around 1.
        let i = h.bucket.iter().position(|&c| c == 2.0).unwrap();
        assert!(
            h.bucket_limit[i] > 1.0 && h.bucket_limit[i] <= 1.1,
            "{}",
            h.bucket_limit[i]
        );

        let empty = histogram(std::iter::empty());
        assert_eq!((empty.num, empty.bucket.len()), (0.0, 1));
    }

    #[test]
    fn events_reader_checks_crc_and_tolerates_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.add_scalar("a", 1.0, 1).unwrap();
        w.add_scalar("a", 2.0, 2).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let bytes = fs::read(&path).unwrap();

        // Killed mid-write: the partial last record is ignored.
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let sc = read_scalars(&path).unwrap();
        assert_eq!(sc.iter().map(|p| p.value).collect::<Vec<_>>(), vec![1.0]);

        // Flipped bit: an error naming the file.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 8] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        let err = read_events(&path).unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert!(err.to_string().contains("CRC"), "{err}");

        // Invalid input is reported with the path and tag.
        let mut w = EventWriter::create(dir.path()).unwrap();
        let err = w.add_png_gray("img", &[0; 5], 2, 2, 0).unwrap_err();
        assert!(
            err.to_string().contains("img") && err.to_string().contains("events.out"),
            "{err}"
        );
        let err = EventWriter::create(&path.join("sub")).err().unwrap();
        assert!(err.to_string().contains("sub"), "{err}");
    }
}
