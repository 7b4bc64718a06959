//! `tf.train.Example` protocol buffers (tensorflow/core/example/{example,feature}.proto), as
//! prost messages declared by hand so no `protoc` is needed at build time.
//!
//! Features are kept in a `BTreeMap`, so the same example always encodes to the same bytes.

use std::collections::BTreeMap;

use prost::Message;

/// `message Example { Features features = 1; }`
#[derive(Clone, PartialEq, Message)]
pub struct Example {
    #[prost(message, optional, tag = "1")]
    pub features: Option<Features>,
}

/// `message Features { map<string, Feature> feature = 1; }`
#[derive(Clone, PartialEq, Message)]
pub struct Features {
    #[prost(btree_map = "string, message", tag = "1")]
    pub feature: BTreeMap<String, Feature>,
}

/// `message Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }`
#[derive(Clone, PartialEq, Message)]
pub struct Feature {
    #[prost(oneof = "Kind", tags = "1, 2, 3")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    BytesList(BytesList),
    #[prost(message, tag = "2")]
    FloatList(FloatList),
    #[prost(message, tag = "3")]
    Int64List(Int64List),
}

#[derive(Clone, PartialEq, Message)]
pub struct BytesList {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub value: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FloatList {
    #[prost(float, repeated, packed = "true", tag = "1")]
    pub value: Vec<f32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Int64List {
    #[prost(int64, repeated, packed = "true", tag = "1")]
    pub value: Vec<i64>,
}

impl Feature {
    pub fn int64s(v: Vec<i64>) -> Self {
        Feature {
            kind: Some(Kind::Int64List(Int64List { value: v })),
        }
    }
    pub fn int64(v: i64) -> Self {
        Self::int64s(vec![v])
    }
    pub fn floats(v: Vec<f32>) -> Self {
        Feature {
            kind: Some(Kind::FloatList(FloatList { value: v })),
        }
    }
    pub fn bytes(v: Vec<u8>) -> Self {
        Feature {
            kind: Some(Kind::BytesList(BytesList { value: vec![v] })),
        }
    }
    /// The feature's type name, as TensorFlow calls it, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Some(Kind::BytesList(_)) => "bytes_list",
            Some(Kind::FloatList(_)) => "float_list",
            Some(Kind::Int64List(_)) => "int64_list",
            None => "empty",
        }
    }
}

impl Example {
    pub fn from_features(feature: BTreeMap<String, Feature>) -> Self {
        Example {
            features: Some(Features { feature }),
        }
    }
    pub fn get(&self, key: &str) -> Option<&Feature> {
        self.features.as_ref()?.feature.get(key)
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, prost::DecodeError> {
        Example::decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_matches_protobuf_by_hand() {
        // Example{features{feature{"a": int64_list{value:[1, 300]}}}} encoded by hand from the
        // protobuf wire-format spec: field 1 (LEN) > field 1 map entry (LEN) > key "a" (tag 0x0a),
        // value Feature (tag 0x12) > int64_list field 3 (0x1a) > packed field 1 (0x0a) [01 ac 02].
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), Feature::int64s(vec![1, 300]));
        let bytes = Example::from_features(m).to_bytes();
        let want = [
            0x0a, 0x0e, 0x0a, 0x0c, 0x0a, 0x01, b'a', 0x12, 0x07, 0x1a, 0x05, 0x0a, 0x03, 0x01,
            0xac, 0x02,
        ];
        assert_eq!(bytes, want);
        let back = Example::from_bytes(&bytes).unwrap();
        assert_eq!(back.get("a"), Some(&Feature::int64s(vec![1, 300])));
    }
}
