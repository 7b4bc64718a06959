//! TensorFlow Serving's config files, read as `tensorflow_model_server` reads them: protobuf text
//! format, parsed against the descriptors `build.rs` compiled (`prost-reflect`), then turned into
//! the generated messages. `--model_config_file` is a `ModelServerConfig` (its
//! `model_config_list`), `--monitoring_config_file` a `MonitoringConfig`.

use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::proto::serving::{
    self as pb, model_server_config, servable_version_policy::PolicyChoice,
};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid text format for the message (the parser's message names line and column).
    #[error("{path}: not a valid {message} in protobuf text format: {detail}")]
    Syntax {
        path: PathBuf,
        message: &'static str,
        detail: String,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// Which versions of a model are served (TF Serving's `ServableVersionPolicy`).
#[derive(Debug, Clone, PartialEq)]
pub enum VersionPolicy {
    /// The newest `n` loadable versions (TF Serving's default: 1).
    Latest(u32),
    /// Every version in the base path.
    All,
    /// These versions (sorted, no duplicates), when they are in the base path.
    Specific(Vec<u64>),
}

impl std::fmt::Display for VersionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionPolicy::Latest(n) => write!(f, "latest {{ num_versions: {n} }}"),
            VersionPolicy::All => write!(f, "all {{}}"),
            VersionPolicy::Specific(v) => {
                write!(f, "specific {{")?;
                for v in v {
                    write!(f, " versions: {v}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

/// One `config { ... }` of a `model_config_list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    pub base_path: PathBuf,
    pub policy: VersionPolicy,
}

/// `prometheus_config` of a monitoring config.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitoring {
    pub enable: bool,
    /// The metrics path; `None`: TF Serving's default (`/monitoring/prometheus/metrics`).
    pub path: Option<String>,
}

fn parse<T: prost::Message + Default>(
    path: &Path,
    message: &'static str,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |detail: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        message,
        detail,
    };
    let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| syntax(e.to_string()))?;
    let desc = pool
        .get_message_by_name(message)
        .ok_or_else(|| syntax(format!("{message} is not compiled in")))?;
    let dynamic =
        DynamicMessage::parse_text_format(desc, &text).map_err(|e| syntax(e.to_string()))?;
    dynamic.transcode_to().map_err(|e| syntax(e.to_string()))
}

/// Reads a `--model_config_file`: the models of its `model_config_list`.
pub fn read_model_config(path: &Path) -> Result<Vec<ModelEntry>, ConfigError> {
    let cfg: pb::ModelServerConfig = parse(path, "tensorflow.serving.ModelServerConfig")?;
    let invalid = |what: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    let Some(model_server_config::Config::ModelConfigList(list)) = cfg.config else {
        return Err(invalid("no model_config_list { config { ... } }".into()));
    };
    let mut out = Vec::new();
    for (i, c) in list.config.into_iter().enumerate() {
        if c.name.is_empty() || c.base_path.is_empty() {
            return Err(invalid(format!("config {i} needs a name and a base_path")));
        }
        if !c.model_platform.is_empty() && c.model_platform != "onnx" {
            // TF Serving's configs say "tensorflow"; the versions here are ONNX exports either way.
            if c.model_platform != "tensorflow" {
                return Err(invalid(format!(
                    "config {:?}: model_platform {:?} (this server runs ONNX exports: \"tensorflow\", \"onnx\" or none)",
                    c.name, c.model_platform
                )));
            }
        }
        if !c.version_labels.is_empty() {
            return Err(invalid(format!(
                "config {:?}: version_labels are not supported; ask for version numbers",
                c.name
            )));
        }
        let policy = match c.model_version_policy.and_then(|p| p.policy_choice) {
            None => VersionPolicy::Latest(1),
            Some(PolicyChoice::Latest(l)) => VersionPolicy::Latest(l.num_versions.max(1)),
            Some(PolicyChoice::All(_)) => VersionPolicy::All,
            Some(PolicyChoice::Specific(s)) => {
                let mut v: Vec<u64> = s
                    .versions
                    .iter()
                    .map(|&v| {
                        u64::try_from(v)
                            .map_err(|_| invalid(format!("config {:?}: version {v}", c.name)))
                    })
                    .collect::<Result<_, _>>()?;
                if v.is_empty() {
                    return Err(invalid(format!(
                        "config {:?}: specific {{ }} lists no versions",
                        c.name
                    )));
                }
                v.sort_unstable();
                v.dedup();
                VersionPolicy::Specific(v)
            }
        };
        if out.iter().any(|m: &ModelEntry| m.name == c.name) {
            return Err(invalid(format!("model {:?} is configured twice", c.name)));
        }
        out.push(ModelEntry {
            name: c.name,
            base_path: PathBuf::from(c.base_path),
            policy,
        });
    }
    if out.is_empty() {
        return Err(invalid("model_config_list has no config".into()));
    }
    Ok(out)
}

/// Reads a `--monitoring_config_file`.
pub fn read_monitoring_config(path: &Path) -> Result<Monitoring, ConfigError> {
    let cfg: pb::MonitoringConfig = parse(path, "tensorflow.serving.MonitoringConfig")?;
    let p = cfg.prometheus_config.unwrap_or_default();
    let metrics_path = (!p.path.is_empty()).then_some(p.path);
    if let Some(m) = &metrics_path
        && !m.starts_with('/')
    {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            what: format!("prometheus_config.path {m:?} must start with /"),
        });
    }
    Ok(Monitoring {
        enable: p.enable,
        path: metrics_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("models.config");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn tf_servings_model_config_files_parse() {
        let (_d, p) = file(
            r#"
            # as in TF Serving's docs
            model_config_list {
              config {
                name: 'quickdraw'
                base_path: '/models/quickdraw'
                model_platform: 'tensorflow'
                model_version_policy { specific { versions: 3 versions: 4 } }
              }
              config: { name: "other", base_path: "/models/other" }
              config { name: "all" base_path: "/m/all" model_version_policy { all {} } }
              config { name: "two" base_path: "/m/two" model_version_policy { latest { num_versions: 2 } } }
            }
            "#,
        );
        let m = read_model_config(&p).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].name, "quickdraw");
        assert_eq!(m[0].base_path, PathBuf::from("/models/quickdraw"));
        assert_eq!(m[0].policy, VersionPolicy::Specific(vec![3, 4]));
        assert_eq!(m[1].policy, VersionPolicy::Latest(1));
        assert_eq!(m[2].policy, VersionPolicy::All);
        assert_eq!(m[3].policy, VersionPolicy::Latest(2));
    }

    #[test]
    fn each_version_policy_and_its_defaults() {
        let (_d, p) = file(
            r#"
            model_config_list {
              config { name: "a" base_path: "/a" model_version_policy { latest {} } }
              config { name: "b" base_path: "/b" model_version_policy { latest { num_versions: 3 } } }
              config { name: "c" base_path: "/c" model_version_policy: { all: {} } }
              config { name: "d" base_path: "/d" model_version_policy { specific { versions: [7, 2, 7] } } }
              config { name: "e" base_path: "/e" model_platform: "onnx" }
            }
            "#,
        );
        let m = read_model_config(&p).unwrap();
        let got: Vec<(&str, &VersionPolicy)> =
            m.iter().map(|m| (m.name.as_str(), &m.policy)).collect();
        assert_eq!(
            got,
            vec![
                ("a", &VersionPolicy::Latest(1)),
                ("b", &VersionPolicy::Latest(3)),
                ("c", &VersionPolicy::All),
                ("d", &VersionPolicy::Specific(vec![2, 7])),
                ("e", &VersionPolicy::Latest(1)),
            ]
        );
        assert_eq!(m[3].base_path, PathBuf::from("/d"));
        assert_eq!(
            m[3].policy.to_string(),
            "specific { versions: 2 versions: 7 }"
        );
        assert_eq!(m[2].policy.to_string(), "all {}");
    }

    #[test]
    fn bad_config_files_name_the_problem() {
        let (_d, p) = file("model_config_list { config { name: 'a' base_pth: '/x' } }");
        let e = read_model_config(&p).unwrap_err().to_string();
        assert!(e.contains("models.config") && e.contains("base_pth"), "{e}");
        let (_d, p) = file("model_config_list { config { name: 'a' } }");
        let e = read_model_config(&p).unwrap_err().to_string();
        assert!(e.contains("needs a name and a base_path"), "{e}");
        let (_d, p) = file(
            "model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }",
        );
        assert!(
            read_model_config(&p)
                .unwrap_err()
                .to_string()
                .contains("pytorch")
        );
        for (text, needle) in [
            (
                "model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
                "configured twice",
            ),
            (
                "model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific {} } } }",
                "lists no versions",
            ),
            (
                "model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific { versions: -1 } } } }",
                "version -1",
            ),
            ("model_config_list { }", "has no config"),
        ] {
            let (_d, p) = file(text);
            let e = read_model_config(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn monitoring_config_files_parse() {
        let (_d, p) = file("prometheus_config { enable: true, path: \"/metrics/x\" }");
        assert_eq!(
            read_monitoring_config(&p).unwrap(),
            Monitoring {
                enable: true,
                path: Some("/metrics/x".into())
            }
        );
        let (_d, p) = file("prometheus_config { enable: false }");
        assert!(!read_monitoring_config(&p).unwrap().enable);
    }
}
