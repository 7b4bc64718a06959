//! The inference queue: requests wait here in arrival order and a few batch threads run them,
//! off the async runtime. With batching on (TensorFlow Serving's `--enable_batching`), the
//! requests that queued up for the same model version while the threads were busy are merged
//! into one inference call, so a loaded server runs fewer, larger batches; a request that finds a
//! thread idle runs at once (no batch timeout by default, as TF Serving's `batch_timeout_micros`
//! of 0).
//!
//! Written here rather than taken from a crate: the merge rule (same loaded model, image input,
//! row budget) and the split of each batch's outputs back to its requests are the whole of it, on
//! a `Mutex<VecDeque>` and a `Condvar`. A wide & deep model's `wide` vectors travel with their
//! images ([`ModelInput::PixelsWide`]), so its requests merge like any image model's.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts};
use quickdraw_data::signature::InputKind;

use crate::predictor::{Predictor, Probabilities};
use crate::request::{ModelInput, RequestError};

/// How the queue runs requests (TF Serving's `BatchingParameters`, by the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Merge waiting requests into one inference call.
    pub enabled: bool,
    /// Most rows (instances) in one merged call. A request with more rows than this is never
    /// split: it runs as a batch of its own.
    pub max_batch_size: usize,
    /// How long a batch's first request may wait for more to fill it; zero: a batch is whatever
    /// has queued when a thread is free.
    pub batch_timeout: Duration,
    /// Threads running inference, one call each at a time.
    pub num_batch_threads: usize,
    /// Most requests waiting; more are refused with 503 (TF Serving's answer when its batch
    /// queue is full) so an overloaded server sheds load instead of growing without bound.
    pub max_enqueued: usize,
    /// How much lower than the HTTP threads the batch threads run (Linux nice steps; 0: same).
    /// Reading a request and writing an answer take microseconds and then never wait behind
    /// an inference, which keeps the queue in arrival order and cuts the latency tail (README,
    /// "Serving").
    pub nice: i32,
}

impl BatchConfig {
    /// No merging: each request is one inference call, one thread per core (more threads than
    /// cores gave 3% more requests/s but a p99 20% higher under load: README, "Serving").
    pub fn unbatched() -> BatchConfig {
        BatchConfig {
            enabled: false,
            max_batch_size: 1,
            batch_timeout: Duration::ZERO,
            num_batch_threads: cores(),
            max_enqueued: DEFAULT_MAX_ENQUEUED,
            nice: DEFAULT_NICE,
        }
    }

    /// Merging, with the defaults of `quickdraw serve --enable-batching`: up to
    /// [`DEFAULT_MAX_BATCH_SIZE`] rows per call, otherwise as [`BatchConfig::unbatched`].
    pub fn batched() -> BatchConfig {
        BatchConfig {
            enabled: true,
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            ..BatchConfig::unbatched()
        }
    }
}

/// Default of [`BatchConfig::max_batch_size`] with batching on.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 32;
/// Default of [`BatchConfig::max_enqueued`].
pub const DEFAULT_MAX_ENQUEUED: usize = 4096;
/// Default of [`BatchConfig::nice`].
pub const DEFAULT_NICE: i32 = 10;

/// Lowers the calling thread's priority by `nice` steps, best effort: on Linux the nice value is
/// per thread (`setpriority(2)`, "BUGS"), so only this batch thread gives way. Elsewhere, or if
/// refused, the thread keeps its priority.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: getpriority/setpriority take plain integers; who = 0 is the calling thread.
        unsafe {
            let now = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, (now + nice).min(19));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Why a task got no outputs.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    /// Its own preprocessing failed (a bad instance); the other tasks of the batch still ran.
    Request(RequestError),
    /// The batch's inference failed.
    Predict(String),
}

/// One request in the queue. The batch thread calls [`Task::prepare`], runs the inputs of all the
/// tasks it merged in one call, then gives each task its own rows in [`Task::finish`].
pub trait Task: Send + 'static {
    /// The loaded model version this task must run on.
    fn predictor(&self) -> &Arc<Predictor>;
    /// Rows this task adds to a batch (known before preprocessing).
    fn rows(&self) -> usize;
    /// Preprocessing, on the batch thread: exactly [`Task::rows`] model inputs.
    fn prepare(&mut self) -> Result<Vec<ModelInput>, RequestError>;
    /// This task's rows of the batch's outputs, in its order, or why there are none.
    fn finish(self: Box<Self>, outputs: Result<Probabilities, TaskError>);
}

/// Refusals at [`Batcher::submit`]; the task comes back unrun.
pub enum SubmitError {
    /// `max_enqueued` requests are already waiting.
    QueueFull(Box<dyn Task>),
    /// The server is stopping.
    Closed(Box<dyn Task>),
}

impl std::fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubmitError::QueueFull(_) => "QueueFull",
            SubmitError::Closed(_) => "Closed",
        })
    }
}

/// Counters since the start (for `/healthz` and the load benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BatchStats {
    /// Inference calls made.
    pub batches: u64,
    /// Requests run.
    pub requests: u64,
    /// Rows (instances) run.
    pub rows: u64,
    /// The largest batch, in rows.
    pub max_rows: u64,
    /// Requests refused because the queue was full.
    pub refused: u64,
}

struct Queued {
    task: Box<dyn Task>,
    at: Instant,
}

struct State {
    tasks: VecDeque<Queued>,
    closed: bool,
}

struct Shared {
    cfg: BatchConfig,
    state: Mutex<State>,
    wake: Condvar,
    requests: AtomicU64,
    max_rows: AtomicU64,
    refused: AtomicU64,
    /// Seconds per inference call, and rows per call (Prometheus histograms, registered by
    /// `crate::metrics`); the second's count and sum are the calls and rows run.
    inference_seconds: Histogram,
    batch_rows: Histogram,
}

/// The queue and its threads. Dropping it lets the threads finish what is queued, then joins them.
pub struct Batcher {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("cfg", &self.shared.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Two tasks may share an inference call: the same loaded version (not only the same number: a
/// reload makes a new predictor) of a model that reads fixed-size images. Stroke sequences run
/// alone, as padding them to a common length would change the work of every row.
fn mergeable(a: &dyn Task, b: &dyn Task) -> bool {
    Arc::ptr_eq(a.predictor(), b.predictor())
        && matches!(a.predictor().input(), InputKind::Image { .. })
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("a valid histogram name and buckets")
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic is caught around each batch, never while the lock is held; stay usable anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batcher {
    /// Starts `cfg.num_batch_threads` (at least one) batch threads.
    pub fn new(mut cfg: BatchConfig) -> Batcher {
        cfg.max_batch_size = cfg.max_batch_size.max(1);
        cfg.num_batch_threads = cfg.num_batch_threads.max(1);
        cfg.max_enqueued = cfg.max_enqueued.max(1);
        if !cfg.enabled {
            cfg.max_batch_size = 1;
        }
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                tasks: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            requests: AtomicU64::new(0),
            max_rows: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            inference_seconds: histogram(
                "quickdraw_inference_duration_seconds",
                "Seconds per inference call (one batch through the model, preprocessing excluded)",
                crate::metrics::LATENCY_BUCKETS,
            ),
            batch_rows: histogram(
                "quickdraw_batch_size",
                "Rows (instances) per inference call",
                &[
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
        });
        let threads = (0..cfg.num_batch_threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("quickdraw-batch-{i}"))
                    .spawn(move || {
                        lower_priority(s.cfg.nice);
                        s.work()
                    })
                    .expect("cannot start a batch thread")
            })
            .collect();
        Batcher { shared, threads }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.shared.cfg
    }

    /// Queues a task; it is finished on a batch thread.
    pub fn submit(&self, task: Box<dyn Task>) -> Result<(), SubmitError> {
        let mut st = lock(&self.shared.state);
        if st.closed {
            return Err(SubmitError::Closed(task));
        }
        if st.tasks.len() >= self.shared.cfg.max_enqueued {
            drop(st);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull(task));
        }
        st.tasks.push_back(Queued {
            task,
            at: Instant::now(),
        });
        drop(st);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Requests waiting (not yet taken by a batch thread).
    pub fn queue_len(&self) -> usize {
        lock(&self.shared.state).tasks.len()
    }

    /// The inference-latency and batch-size histograms, for a metrics registry.
    pub fn histograms(&self) -> (Histogram, Histogram) {
        (
            self.shared.inference_seconds.clone(),
            self.shared.batch_rows.clone(),
        )
    }

    pub fn stats(&self) -> BatchStats {
        let s = &self.shared;
        BatchStats {
            batches: s.batch_rows.get_sample_count(),
            requests: s.requests.load(Ordering::Relaxed),
            // Row counts are integers: their f64 sum is exact below 2^53.
            rows: s.batch_rows.get_sample_sum() as u64,
            max_rows: s.max_rows.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last owner may be a task finishing on a batch thread: that thread stops by
            // itself once the queue is drained, and cannot join itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl Shared {
    fn work(&self) {
        while let Some(batch) = self.next_batch() {
            // A panic in a model run must not take the thread down: the batch's tasks are dropped
            // (their callers see the answer channel close) and the thread goes on.
            let _ = catch_unwind(AssertUnwindSafe(|| self.run(batch)));
        }
    }

    /// Waits for the next batch: the tasks at the head of the queue that merge with the first,
    /// up to `max_batch_size` rows (at least the first task). `None` once closed and drained.
    fn next_batch(&self) -> Option<Vec<Box<dyn Task>>> {
        let max = self.cfg.max_batch_size;
        let mut st = lock(&self.state);
        loop {
            let Some(first) = st.tasks.front() else {
                if st.closed {
                    return None;
                }
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let mut take = 1;
            let mut rows = first.task.rows();
            // Whether the batch can grow no more: the row budget is spent or the next task does
            // not fit or merge.
            let mut full = rows >= max;
            while !full && take < st.tasks.len() {
                let next = &st.tasks[take].task;
                if !mergeable(first.task.as_ref(), next.as_ref()) || rows + next.rows() > max {
                    full = true;
                } else {
                    rows += next.rows();
                    take += 1;
                    full = rows >= max;
                }
            }
            let deadline = first.at + self.cfg.batch_timeout;
            let now = Instant::now();
            if full || st.closed || now >= deadline {
                let batch: Vec<_> = st.tasks.drain(..take).map(|q| q.task).collect();
                // Others may be waiting for what is left.
                if !st.tasks.is_empty() {
                    self.wake.notify_one();
                }
                return Some(batch);
            }
            st = self
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Preprocesses every task, runs the good ones' inputs as one call, and hands out the rows.
    fn run(&self, batch: Vec<Box<dyn Task>>) {
        let mut inputs = Vec::new();
        let mut ready: Vec<(Box<dyn Task>, usize)> = Vec::with_capacity(batch.len());
        for mut task in batch {
            match task.prepare() {
                Ok(v) => {
                    ready.push((task, v.len()));
                    inputs.extend(v);
                }
                Err(e) => task.finish(Err(TaskError::Request(e))),
            }
        }
        let Some((first, _)) = ready.first() else {
            return;
        };
        let predictor = first.predictor().clone();
        let n = inputs.len() as u64;
        let t0 = Instant::now();
        let out = predictor.predict_inputs(inputs);
        self.inference_seconds.observe(t0.elapsed().as_secs_f64());
        self.batch_rows.observe(n as f64);
        self.requests
            .fetch_add(ready.len() as u64, Ordering::Relaxed);
        self.max_rows.fetch_max(n, Ordering::Relaxed);
        match out {
            Ok(probs) => {
                let mut start = 0;
                for (task, rows) in ready {
                    task.finish(Ok(probs.slice(start..start + rows)));
                    start += rows;
                }
            }
            Err(e) => {
                let e = e.to_string();
                for (task, _) in ready {
                    task.finish(Err(TaskError::Predict(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use std::sync::mpsc;

    /// A task of pixel rows that reports its outputs on a channel.
    struct Rows {
        p: Arc<Predictor>,
        rows: Vec<Vec<f32>>,
        /// Fails preprocessing when set.
        bad: bool,
        tx: mpsc::Sender<(usize, Result<Probabilities, TaskError>)>,
        id: usize,
    }

    impl Task for Rows {
        fn predictor(&self) -> &Arc<Predictor> {
            &self.p
        }
        fn rows(&self) -> usize {
            self.rows.len()
        }
        fn prepare(&mut self) -> Result<Vec<ModelInput>, RequestError> {
            if self.bad {
                return Err(RequestError::bad("instance 0: bad on purpose"));
            }
            Ok(self.rows.iter().cloned().map(ModelInput::Pixels).collect())
        }
        fn finish(self: Box<Self>, outputs: Result<Probabilities, TaskError>) {
            self.tx.send((self.id, outputs)).unwrap();
        }
    }

    fn demo(version: u64) -> (tempfile::TempDir, Arc<Predictor>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_demo_export(tmp.path(), version, 8).unwrap();
        (tmp, Arc::new(Predictor::load(&dir).unwrap()))
    }

    /// Row `i` lights `i` pixels of the left half, so every row has its own logits.
    fn row(i: usize) -> Vec<f32> {
        let mut v = vec![0.0; 64];
        for k in 0..i.min(32) {
            v[(k / 4) * 8 + k % 4] = 1.0;
        }
        v
    }

    fn cfg(max_batch_size: usize, timeout_ms: u64, threads: usize) -> BatchConfig {
        BatchConfig {
            enabled: true,
            max_batch_size,
            batch_timeout: Duration::from_millis(timeout_ms),
            num_batch_threads: threads,
            max_enqueued: 100,
            nice: 0,
        }
    }

    #[test]
    fn merged_requests_get_their_own_rows() {
        let (_t, p) = demo(1);
        // A long timeout and a budget of 6 rows: the batch closes as soon as it is full.
        let b = Batcher::new(cfg(6, 10_000, 1));
        let (tx, rx) = mpsc::channel();
        let sizes = [1, 2, 3];
        let mut next = 0;
        for (id, &n) in sizes.iter().enumerate() {
            let rows: Vec<Vec<f32>> = (next..next + n).map(row).collect();
            next += n;
            let task = Rows {
                p: p.clone(),
                rows,
                bad: false,
                tx: tx.clone(),
                id,
            };
            b.submit(Box::new(task)).unwrap();
        }
        let direct = p
            .predict_pixels(&(0..6).map(row).collect::<Vec<_>>())
            .unwrap();
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|g| g.0);
        let mut start = 0;
        for (id, out) in got {
            let out = out.unwrap();
            assert_eq!(out.len(), sizes[id]);
            for r in 0..sizes[id] {
                assert_eq!(
                    out.logits_row(r),
                    direct.logits_row(start + r),
                    "task {id} row {r}"
                );
                assert_eq!(out.classes[r], direct.classes[start + r]);
            }
            start += sizes[id];
        }
        let s = b.stats();
        assert_eq!((s.batches, s.requests, s.rows, s.max_rows), (1, 3, 6, 6));
    }

    #[test]
    fn versions_and_budget_split_batches_and_bad_tasks_fail_alone() {
        let (_t1, p1) = demo(1);
        let (_t2, p2) = demo(2);
        // Zero timeout, one thread: batches are whatever has queued when the thread is free, cut
        // by the merge rule; the outputs must be right however the tasks were grouped.
        let b = Batcher::new(cfg(4, 0, 1));
        let (tx, rx) = mpsc::channel();
        let plan: [(&Arc<Predictor>, usize, bool); 6] = [
            (&p1, 1, false),
            (&p1, 2, true),
            (&p2, 1, false),
            (&p2, 3, false),
            (&p2, 1, false),
            (&p1, 5, false),
        ];
        for (id, &(p, n, bad)) in plan.iter().enumerate() {
            let task = Rows {
                p: p.clone(),
                rows: (0..n).map(|i| row(i + id)).collect(),
                bad,
                tx: tx.clone(),
                id,
            };
            b.submit(Box::new(task)).unwrap();
        }
        let mut got: Vec<_> = (0..plan.len()).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|g| g.0);
        for (id, out) in got {
            let (p, n, bad) = plan[id];
            if bad {
                assert_eq!(
                    out.unwrap_err(),
                    TaskError::Request(RequestError::bad("instance 0: bad on purpose"))
                );
                continue;
            }
            let out = out.unwrap();
            let direct = p
                .predict_pixels(&(0..n).map(|i| row(i + id)).collect::<Vec<_>>())
                .unwrap();
            assert_eq!(out, direct, "task {id}");
        }
        let s = b.stats();
        // 5 good tasks, 11 good rows; the 5-row task is larger than the budget and ran alone, and
        // no other batch went over 4 rows.
        assert_eq!((s.requests, s.rows, s.max_rows), (5, 11, 5));
        assert!(s.batches >= 3, "{s:?}");
    }

    #[test]
    fn a_full_queue_refuses_and_a_dropped_batcher_drains() {
        let (_t, p) = demo(1);
        let mut c = cfg(1, 0, 1);
        c.max_enqueued = 2;
        // A task that blocks its (only) thread in preprocessing until told to go on, so the
        // queue behind it fills up.
        struct Slow(Arc<Predictor>, mpsc::Receiver<()>);
        impl Task for Slow {
            fn predictor(&self) -> &Arc<Predictor> {
                &self.0
            }
            fn rows(&self) -> usize {
                1
            }
            fn prepare(&mut self) -> Result<Vec<ModelInput>, RequestError> {
                self.1.recv().unwrap();
                Ok(vec![ModelInput::Pixels(row(1))])
            }
            fn finish(self: Box<Self>, _: Result<Probabilities, TaskError>) {}
        }
        let b = Batcher::new(c);
        let (go, wait) = mpsc::channel();
        b.submit(Box::new(Slow(p.clone(), wait))).unwrap();
        // Until the thread has taken the slow task, it still counts against the queue.
        while lock(&b.shared.state).tasks.len() == 1 {
            std::thread::yield_now();
        }
        let (tx, rx) = mpsc::channel();
        let task = |id| {
            Box::new(Rows {
                p: p.clone(),
                rows: vec![row(id)],
                bad: false,
                tx: tx.clone(),
                id,
            })
        };
        b.submit(task(1)).unwrap();
        b.submit(task(2)).unwrap();
        assert!(matches!(b.submit(task(3)), Err(SubmitError::QueueFull(_))));
        assert_eq!(b.stats().refused, 1);
        go.send(()).unwrap();
        drop(b);
        // Both queued tasks were run before the threads stopped.
        let mut ids: Vec<usize> = rx
            .try_iter()
            .map(|(id, out)| {
                assert!(out.is_ok());
                id
            })
            .collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn a_timeout_holds_the_batch_open() {
        let (_t, p) = demo(1);
        let b = Batcher::new(cfg(8, 300, 1));
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        for id in 0..2 {
            let task = Rows {
                p: p.clone(),
                rows: vec![row(id)],
                bad: false,
                tx: tx.clone(),
                id,
            };
            b.submit(Box::new(task)).unwrap();
        }
        rx.recv().unwrap().1.unwrap();
        rx.recv().unwrap().1.unwrap();
        // Not full (2 of 8 rows): the batch waited out the timeout, then ran both as one.
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(b.stats().batches, 1);
    }

    #[test]
    fn wide_rows_travel_with_their_images() {
        // A task of ready-made model inputs (images with and without wide vectors).
        struct Inputs(
            Arc<Predictor>,
            Vec<ModelInput>,
            usize,
            mpsc::Sender<(usize, Result<Probabilities, TaskError>)>,
        );
        impl Task for Inputs {
            fn predictor(&self) -> &Arc<Predictor> {
                &self.0
            }
            fn rows(&self) -> usize {
                self.1.len()
            }
            fn prepare(&mut self) -> Result<Vec<ModelInput>, RequestError> {
                Ok(self.1.clone())
            }
            fn finish(self: Box<Self>, outputs: Result<Probabilities, TaskError>) {
                self.3.send((self.2, outputs)).unwrap();
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = testing::write_wide_demo_export(tmp.path(), 1, 8).unwrap();
        let p = Arc::new(Predictor::load(&dir).unwrap());
        let dim = testing::demo_wide_spec().dim();
        // Row i sets wide slot i (a different linear term per row); task 1 sends no metadata.
        let wide = |i: usize| {
            let mut v = vec![0.0; dim];
            v[i] = 1.0;
            v
        };
        let tasks: Vec<Vec<ModelInput>> = vec![
            (0..2)
                .map(|i| ModelInput::PixelsWide {
                    pixels: row(i),
                    wide: wide(i + 4),
                })
                .collect(),
            vec![ModelInput::Pixels(row(3))],
            (0..3)
                .map(|i| ModelInput::PixelsWide {
                    pixels: row(i + 5),
                    wide: wide(i + 6),
                })
                .collect(),
        ];
        let b = Batcher::new(cfg(6, 10_000, 1));
        let (tx, rx) = mpsc::channel();
        for (id, inputs) in tasks.iter().enumerate() {
            b.submit(Box::new(Inputs(p.clone(), inputs.clone(), id, tx.clone())))
                .unwrap();
        }
        let mut got: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|g| g.0);
        for (id, out) in got {
            let direct = p.predict_inputs(tasks[id].clone()).unwrap();
            assert_eq!(out.unwrap(), direct, "task {id}");
        }
        // One merged call of all 6 rows.
        assert_eq!(b.stats().batches, 1);
        // The metadata changed the rows that had it: the recognized=false slot (4) adds 1 to
        // `blank`, recognized=true (5) 2 to `right`.
        let with = p.predict_inputs(tasks[0].clone()).unwrap();
        let without = p.predict_pixels(&[row(0), row(1)]).unwrap();
        assert_eq!(with.logits_row(0)[0], without.logits_row(0)[0] + 1.0);
        assert_eq!(with.logits_row(1)[2], without.logits_row(1)[2] + 2.0);
    }

    #[test]
    fn unbatched_runs_one_request_per_call() {
        let (_t, p) = demo(1);
        let mut c = BatchConfig::unbatched();
        c.num_batch_threads = 1;
        let b = Batcher::new(c);
        let (tx, rx) = mpsc::channel();
        for id in 0..4 {
            let task = Rows {
                p: p.clone(),
                rows: vec![row(id), row(id + 1)],
                bad: false,
                tx: tx.clone(),
                id,
            };
            b.submit(Box::new(task)).unwrap();
        }
        for _ in 0..4 {
            rx.recv().unwrap().1.unwrap();
        }
        let s = b.stats();
        assert_eq!((s.batches, s.requests, s.rows, s.max_rows), (4, 4, 8, 2));
    }
}
