//! The optional ONNX Runtime engine of [`crate::Predictor`]: the same `model.onnx`, run by
//! Microsoft's ONNX Runtime (through the `ort` crate) loaded at run time from a shared library the
//! user names, instead of tract.
//!
//! Why a second engine: on the lecture CNN it runs one drawing in about half of tract's time
//! (README, "Serving"), which is what the server's throughput under load is made of. Why
//! optional: it is a C++ library, so the binary never links or downloads it; a user who wants it
//! points `--onnxruntime-lib` (or `ORT_DYLIB_PATH`) at `libonnxruntime.so` from an ONNX Runtime
//! release or the `onnxruntime` wheel, and everything else keeps working without it.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor};
use tract_onnx::prelude::TValue;

use crate::predictor::PlainTensor;

/// Which engine runs `model.onnx`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Runtime {
    /// tract: pure Rust, built in.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from this shared library (`libonnxruntime.so`).
    OnnxRuntime(PathBuf),
}

impl Runtime {
    /// The environment's choice: ONNX Runtime when `ORT_DYLIB_PATH` names a library (the variable
    /// ONNX Runtime's own Rust bindings read), else tract.
    pub fn from_env() -> Runtime {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => Runtime::OnnxRuntime(PathBuf::from(p)),
            _ => Runtime::Tract,
        }
    }

    /// `tract` or `onnxruntime`.
    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Tract => "tract",
            Runtime::OnnxRuntime(_) => "onnxruntime",
        }
    }
}

/// The library can be loaded once per process; later loads must name the same file.
static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn load_library(lib: &Path) -> Result<(), String> {
    let loaded = LOADED.get_or_init(|| {
        ort::init_from(lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("quickdraw")
            .commit();
        Ok(lib.to_path_buf())
    });
    match loaded {
        Ok(p) if p == lib => Ok(()),
        Ok(p) => Err(format!(
            "ONNX Runtime is already loaded from {} in this process, not {}",
            p.display(),
            lib.display()
        )),
        Err(e) => Err(e.clone()),
    }
}

/// Sessions of one model, two per core: `Session::run` needs exclusive access, so concurrent
/// calls take different sessions (each single-threaded; the server runs one call per inference
/// thread, one thread per core by default, and `model run` one at a time). A call takes whichever
/// session is free, or waits for the first one to come back.
pub struct OrtEngine {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
    sessions: usize,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A session out of the pool; it goes back (and wakes one waiter) when dropped, error or not.
struct Taken<'a> {
    engine: &'a OrtEngine,
    session: Option<Session>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let mut free = self
                .engine
                .free
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            free.push(s);
            self.engine.returned.notify_one();
        }
    }
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("sessions", &self.sessions)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl OrtEngine {
    /// Loads the library (once) and `model` into one session per available core.
    pub fn load(
        lib: &Path,
        model: &Path,
        inputs: Vec<String>,
        outputs: Vec<String>,
    ) -> Result<OrtEngine, String> {
        load_library(lib)?;
        let n = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Session::builder()
                .map_err(|e| e.to_string())?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| e.to_string())?
                .with_intra_threads(1)
                .map_err(|e| e.to_string())?
                .with_inter_threads(1)
                .map_err(|e| e.to_string())?
                .commit_from_file(model)
                .map_err(|e| format!("ONNX Runtime cannot load {}: {e}", model.display()))?;
            sessions.push(s);
        }
        Ok(OrtEngine {
            sessions: sessions.len(),
            free: Mutex::new(sessions),
            returned: Condvar::new(),
            inputs,
            outputs,
        })
    }

    fn take(&self) -> Taken<'_> {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(s) = free.pop() {
                return Taken {
                    engine: self,
                    session: Some(s),
                };
            }
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Runs the model on tract-made input tensors (f32 or i64); returns the outputs in the order
    /// of the names given to [`OrtEngine::load`].
    pub fn run(&self, inputs: &[TValue]) -> Result<Vec<PlainTensor>, String> {
        let mut feeds: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, t) in self.inputs.iter().zip(inputs) {
            let dims = |shape: Vec<usize>| shape.into_iter().map(|d| d as i64).collect::<Vec<_>>();
            let v: DynValue = match PlainTensor::from_tract(t)? {
                PlainTensor::F32(shape, data) => Tensor::from_array((dims(shape), data))
                    .map_err(|e| format!("input {name}: {e}"))?
                    .into_dyn(),
                PlainTensor::I64(shape, data) => Tensor::from_array((dims(shape), data))
                    .map_err(|e| format!("input {name}: {e}"))?
                    .into_dyn(),
            };
            feeds.push((name.clone(), v));
        }
        let mut taken = self.take();
        let session = taken.session.as_mut().expect("taken sessions are present");
        let outs = session.run(feeds).map_err(|e| e.to_string())?;
        let mut res = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let v = outs
                .get(name)
                .ok_or_else(|| format!("output {name} is missing"))?;
            if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
                let shape = shape.iter().map(|&d| d as usize).collect();
                res.push(PlainTensor::F32(shape, data.to_vec()));
            } else {
                let (shape, data) = v
                    .try_extract_tensor::<i64>()
                    .map_err(|e| format!("output {name}: {e}"))?;
                let shape = shape.iter().map(|&d| d as usize).collect();
                res.push(PlainTensor::I64(shape, data.to_vec()));
            }
        }
        Ok(res)
    }
}
