//! TensorBoard's HParams plugin summaries: the experiment (which hyper-parameters and metrics a
//! run has), the session start (the run's hyper-parameter values) and end (its status), so that
//! runs can be compared in TensorBoard's HParams tab. The plugin's protobufs
//! (`tensorboard/plugins/hparams/{plugin_data,api}.proto`, and `google.protobuf.Value`) are
//! hand-written for prost as `events` does for TensorFlow's, with the plugin's tags and the
//! empty float tensor its `metadata.NULL_TENSOR` carries.

use std::collections::BTreeMap;

use prost::Message as _;

use crate::events::{
    DT_FLOAT, Dim, EventWriter, EventsError, TensorProto, TensorShapeProto, plugin_value,
};

pub const PLUGIN_NAME: &str = "hparams";
pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
pub const SESSION_START_INFO_TAG: &str = "_hparams_/session_start_info";
pub const SESSION_END_INFO_TAG: &str = "_hparams_/session_end_info";

mod proto {
    use std::collections::BTreeMap;

    /// `tensorboard.hparams.HParamsPluginData`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HParamsPluginData {
        #[prost(int32, tag = "1")]
        pub version: i32,
        #[prost(oneof = "Data", tags = "2, 3, 4")]
        pub data: Option<Data>,
    }

    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "2")]
        Experiment(Experiment),
        #[prost(message, tag = "3")]
        SessionStartInfo(SessionStartInfo),
        #[prost(message, tag = "4")]
        SessionEndInfo(SessionEndInfo),
    }

    /// `tensorboard.hparams.Experiment`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Experiment {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(double, tag = "3")]
        pub time_created_secs: f64,
        #[prost(message, repeated, tag = "4")]
        pub hparam_infos: Vec<HParamInfo>,
        #[prost(message, repeated, tag = "5")]
        pub metric_infos: Vec<MetricInfo>,
    }

    /// `tensorboard.hparams.HParamInfo` (without a domain: TensorBoard infers it).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct HParamInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        /// `DataType`: 1 string, 2 bool, 3 float64.
        #[prost(int32, tag = "4")]
        pub r#type: i32,
    }

    /// `tensorboard.hparams.MetricInfo`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct MetricInfo {
        #[prost(message, optional, tag = "1")]
        pub name: Option<MetricName>,
        #[prost(string, tag = "3")]
        pub display_name: String,
        /// `DatasetType`: 1 training, 2 validation.
        #[prost(int32, tag = "5")]
        pub dataset_type: i32,
    }

    /// `tensorboard.hparams.MetricName`: the scalar `tag` of the run's sub-directory `group`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct MetricName {
        #[prost(string, tag = "1")]
        pub group: String,
        #[prost(string, tag = "2")]
        pub tag: String,
    }

    /// `tensorboard.hparams.SessionStartInfo`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SessionStartInfo {
        #[prost(btree_map = "string, message", tag = "1")]
        pub hparams: BTreeMap<String, PbValue>,
        #[prost(string, tag = "4")]
        pub group_name: String,
        #[prost(double, tag = "5")]
        pub start_time_secs: f64,
    }

    /// `tensorboard.hparams.SessionEndInfo`.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct SessionEndInfo {
        /// `Status`: 1 success, 2 failure, 3 running.
        #[prost(int32, tag = "1")]
        pub status: i32,
        #[prost(double, tag = "2")]
        pub end_time_secs: f64,
    }

    /// `google.protobuf.Value` (number, string or bool).
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct PbValue {
        #[prost(oneof = "ValueKind", tags = "2, 3, 4")]
        pub kind: Option<ValueKind>,
    }

    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum ValueKind {
        #[prost(double, tag = "2")]
        Number(f64),
        #[prost(string, tag = "3")]
        Text(String),
        #[prost(bool, tag = "4")]
        Bool(bool),
    }
}

use proto::{
    Data, Experiment, HParamInfo, HParamsPluginData, MetricInfo, MetricName, PbValue,
    SessionEndInfo, SessionStartInfo, ValueKind,
};

/// One hyper-parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// A metric the HParams tab shows: scalar `tag` of the run's sub-directory `group` ("" for the
/// run itself, "eval" for its `eval/` events).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub group: String,
    pub tag: String,
    pub validation: bool,
}

/// How a run ended (`tensorboard.hparams.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success = 1,
    Failure = 2,
    Running = 3,
}

fn write(w: &mut EventWriter, tag: &str, data: Data) -> Result<(), EventsError> {
    let content = HParamsPluginData {
        version: 0,
        data: Some(data),
    }
    .encode_to_vec();
    let null_tensor = TensorProto {
        dtype: DT_FLOAT,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![Dim { size: 0 }],
        }),
        ..Default::default()
    };
    w.add_value(0, plugin_value(tag, PLUGIN_NAME, content, null_tensor))
}

/// Writes the experiment and the session start of a run: its hyper-parameters and the
/// metrics the HParams tab should show for it.
pub fn write_session_start(
    w: &mut EventWriter,
    hparams: &BTreeMap<String, HParam>,
    metrics: &[Metric],
    start_time_secs: f64,
) -> Result<(), EventsError> {
    let hparam_infos = hparams
        .iter()
        .map(|(name, v)| HParamInfo {
            name: name.clone(),
            r#type: match v {
                HParam::Text(_) => 1,
                HParam::Bool(_) => 2,
                HParam::Number(_) => 3,
            },
        })
        .collect();
    let metric_infos = metrics
        .iter()
        .map(|m| MetricInfo {
            name: Some(MetricName {
                group: m.group.clone(),
                tag: m.tag.clone(),
            }),
            display_name: match m.group.as_str() {
                "" => m.tag.clone(),
                g => format!("{g}/{}", m.tag),
            },
            dataset_type: if m.validation { 2 } else { 1 },
        })
        .collect();
    let experiment = Experiment {
        description: String::new(),
        time_created_secs: start_time_secs,
        hparam_infos,
        metric_infos,
    };
    write(w, EXPERIMENT_TAG, Data::Experiment(experiment))?;
    let values = hparams
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                HParam::Number(x) => ValueKind::Number(*x),
                HParam::Text(s) => ValueKind::Text(s.clone()),
                HParam::Bool(b) => ValueKind::Bool(*b),
            };
            (k.clone(), PbValue { kind: Some(kind) })
        })
        .collect();
    let start = SessionStartInfo {
        hparams: values,
        group_name: String::new(),
        start_time_secs,
    };
    write(w, SESSION_START_INFO_TAG, Data::SessionStartInfo(start))
}

/// Writes the end of the session with its status.
pub fn write_session_end(
    w: &mut EventWriter,
    status: Status,
    end_time_secs: f64,
) -> Result<(), EventsError> {
    let end = SessionEndInfo {
        status: status as i32,
        end_time_secs,
    };
    write(w, SESSION_END_INFO_TAG, Data::SessionEndInfo(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_start_bytes_by_hand() {
        // HParamsPluginData{session_start_info{hparams{"lr": 0.5}, start_time_secs: 2}}:
        // field 3 (len 26) { field 1 (len 15) { key "lr", value (len 9) { number_value 0.5 } },
        // field 5 double 2.0 }.
        let mut hp = BTreeMap::new();
        hp.insert(
            "lr".to_string(),
            PbValue {
                kind: Some(ValueKind::Number(0.5)),
            },
        );
        let bytes = HParamsPluginData {
            version: 0,
            data: Some(Data::SessionStartInfo(SessionStartInfo {
                hparams: hp,
                group_name: String::new(),
                start_time_secs: 2.0,
            })),
        }
        .encode_to_vec();
        let mut want = vec![0x1a, 26, 0x0a, 15, 0x0a, 2, b'l', b'r', 0x12, 9, 0x11];
        want.extend(0.5f64.to_le_bytes());
        want.push(0x29);
        want.extend(2.0f64.to_le_bytes());
        assert_eq!(bytes, want);
    }
}
