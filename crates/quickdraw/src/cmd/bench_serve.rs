//! `quickdraw bench serve`: load on a running server's REST and gRPC APIs (the closed-loop client
//! of `quickdraw_serve::load`), at several connection counts; one JSON line per run.

use std::time::Duration;

use anyhow::Context;
use quickdraw_serve::load::{self, LoadConfig, LoadInput, Protocol};

#[derive(Debug, clap::Args)]
pub struct BenchServeArgs {
    /// The REST API's base URL (`serve` prints it), e.g. http://127.0.0.1:8501.
    #[arg(long)]
    pub rest: Option<String>,
    /// The gRPC API's address (`serve` prints it), e.g. 127.0.0.1:8500.
    #[arg(long)]
    pub grpc: Option<String>,
    /// The model's name on the server.
    #[arg(long, default_value = "quickdraw")]
    pub model: String,
    /// Connection counts, each a run per protocol.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 32])]
    pub connections: Vec<usize>,
    /// Timed seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Untimed seconds before each run.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// What each request carries: a drawing (preprocessed by the server, as the page sends) or a
    /// model-input image of --image-size pixels.
    #[arg(long, value_enum, default_value_t = Input::Drawing)]
    pub input: Input,
    /// Side of the model-input image (`img_S`) with --input image.
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// A label copied into every JSON line (e.g. "metrics off").
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Input {
    Drawing,
    Image,
}

/// The drawing every request sends: bench/wrk_predict.lua's, a real "cat" (key_id
/// 5201136883597312) from Google's Quick, Draw! dataset (simplified), CC BY 4.0.
fn drawing() -> serde_json::Value {
    serde_json::json!({"drawing": [
        [[130,113,99,109,76,64,55,48,48,51,59,86,133,154,170,203,214,217,215,208,186,176,162,157,132],
         [72,40,27,79,82,88,100,120,134,152,165,184,189,186,179,152,131,114,100,89,76,0,31,65,70]],
        [[76,28,7],[136,128,128]], [[76,23,0],[160,164,175]], [[87,52,37],[175,191,204]],
        [[174,220,246,251],[134,132,136,139]], [[175,255],[147,168]], [[171,208,215],[164,198,210]],
        [[130,110,108,111,130,139,139,119],[129,134,137,144,148,144,136,130]], [[107,106],[96,113]]
    ]})
}

pub fn run(a: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rest.is_some() || a.grpc.is_some(),
        "give --rest URL, --grpc ADDR or both"
    );
    anyhow::ensure!(
        a.duration > 0.0 && a.warmup >= 0.0,
        "--duration must be > 0"
    );
    let input = match a.input {
        Input::Drawing => LoadInput::Drawing(drawing()),
        Input::Image => LoadInput::Image {
            key: quickdraw_data::features::image_key(a.image_size as u32),
            size: a.image_size,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let targets = [(Protocol::Rest, &a.rest), (Protocol::Grpc, &a.grpc)];
    for &c in &a.connections {
        for (protocol, target) in targets {
            let Some(target) = target else { continue };
            let cfg = LoadConfig {
                protocol,
                target: target.trim_end_matches('/').to_string(),
                model: a.model.clone(),
                connections: c,
                duration: Duration::from_secs_f64(a.duration),
                warmup: Duration::from_secs_f64(a.warmup),
                input: input.clone(),
            };
            let r = rt
                .block_on(load::run(cfg))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("load on {target}"))?;
            let mut v = serde_json::to_value(&r)?;
            v["input"] = format!("{:?}", a.input).to_lowercase().into();
            if !a.label.is_empty() {
                v["label"] = a.label.clone().into();
            }
            println!("{v}");
        }
    }
    Ok(())
}
