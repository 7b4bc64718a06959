//! Scale-out: the conversion split over workers (`convert --worker I/N`, `--workers N` with
//! `JOB_COMPLETION_INDEX`, `convert --finalize`), the Kubernetes manifests and the Ray driver of
//! `deploy/`, and every stage on an object store (real S3 and Azure Blob APIs: moto's server and
//! Microsoft's Azurite, on 127.0.0.1).

use std::path::{Path, PathBuf};
use std::process::Command;

use quickdraw_data::features::decode_example;
use quickdraw_data::manifest::DatasetManifest;
use quickdraw_data::tfrecord::TfRecordReader;

use crate::util::*;

/// Words of different lengths (util::ndjson's key_ids differ across them).
const WORDS: [(&str, usize); 4] = [("cat", 60), ("frog", 90), ("horse", 40), ("rabbit", 75)];

fn inputs(dir: &Path) -> PathBuf {
    let d = dir.join("raw");
    std::fs::create_dir_all(&d).unwrap();
    for (w, n) in WORDS {
        std::fs::write(d.join(format!("{w}.ndjson")), ndjson(w, n)).unwrap();
    }
    d
}

const CONVERT: [&str; 6] = [
    "--split",
    "train=0.7,eval=0.2,test=0.1",
    "--shards",
    "2",
    "--size",
    "28",
];

/// Every example of a dataset directory as (split, key_id, label, pixels), sorted.
fn examples(dir: &Path) -> Vec<(String, u64, i64, Vec<u8>)> {
    let m = DatasetManifest::load(dir).unwrap();
    let mut out = Vec::new();
    for (split, files) in &m.shards {
        for f in files {
            let r = TfRecordReader::open(&dir.join(&f.file)).unwrap();
            for rec in r {
                let e = decode_example(&rec.unwrap(), &m.features).unwrap();
                out.push((split.clone(), e.key_id, e.label, e.image));
            }
        }
    }
    out.sort();
    out
}

/// Every shard the manifest of `single` lists is byte-identical in `copy`; returns the manifest.
fn assert_same_shards(copy: &Path, single: &Path) -> DatasetManifest {
    let m = DatasetManifest::load(single).unwrap();
    for f in m.shards.values().flatten() {
        assert_eq!(
            std::fs::read(copy.join(&f.file)).unwrap(),
            std::fs::read(single.join(&f.file)).unwrap(),
            "{}",
            f.file
        );
    }
    m
}

fn single_process(tmp: &Path, raw: &Path) -> PathBuf {
    let out = tmp.join("single");
    let mut args = vec!["convert", "--input", s(raw), "--output", s(&out)];
    args.extend(CONVERT);
    ok(&args);
    out
}

#[test]
fn workers_convert_the_same_examples_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    let single = single_process(tmp.path(), &raw);
    let out = tmp.path().join("split");
    let worker = |i: usize| {
        let mut c = bin();
        c.env("JOB_COMPLETION_INDEX", i.to_string());
        c.args([
            "convert",
            "--input",
            s(&raw),
            "--output",
            s(&out),
            "--workers",
            "5",
        ]);
        c.args(CONVERT);
        let o = c.output().unwrap();
        assert!(o.status.success(), "worker {i}: {}", text(&o));
    };
    // 5 workers for 4 classes: one is dealt no class and publishes an empty part.
    for i in [0, 2, 3, 4] {
        worker(i);
    }
    // Finalizing before every worker finished names the missing one and publishes nothing.
    let err = fails(&["convert", "--finalize", "--output", s(&out)]);
    assert!(err.contains("worker 1"), "{err}");
    assert!(!out.join("manifest.json").exists());
    worker(1);
    // Re-running a worker is safe: the same bytes again.
    let before = std::fs::read(out.join("_workers/00001-of-00005/manifest.json")).unwrap();
    worker(1);
    let after = std::fs::read(out.join("_workers/00001-of-00005/manifest.json")).unwrap();
    assert_eq!(before, after);
    ok(&["convert", "--finalize", "--output", s(&out)]);

    assert_eq!(examples(&out), examples(&single));
    let (a, b) = (
        DatasetManifest::load(&out).unwrap(),
        DatasetManifest::load(&single).unwrap(),
    );
    assert_eq!(a.classes, b.classes);
    assert_eq!(a.per_class, b.per_class);
    assert_eq!(a.totals, b.totals);
    assert_eq!(a.inputs.len(), b.inputs.len());
    // 4 busy workers x 2 shards per split, numbered of 5 x 2 as one sharded writer would.
    let names: Vec<&str> = a.shards["train"].iter().map(|f| f.file.as_str()).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with("-of-00010")), "{names:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("labels.txt")).unwrap(),
        "cat\nfrog\nhorse\nrabbit\n"
    );
    // The merged dataset is a dataset: its integrity check passes and it trains.
    ok(&["stats", s(&out)]);
}

#[test]
fn worker_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    let out = tmp.path().join("o");
    let err = fails(&[
        "convert",
        "--input",
        s(&raw),
        "--output",
        s(&out),
        "--worker",
        "3/3",
    ]);
    assert!(err.contains("--worker") && err.contains("below"), "{err}");
    let o = bin()
        .env_remove("JOB_COMPLETION_INDEX")
        .args([
            "convert",
            "--input",
            s(&raw),
            "--output",
            s(&out),
            "--workers",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("JOB_COMPLETION_INDEX"), "{}", text(&o));
    let err = fails(&["convert", "--finalize", "--output", s(&out)]);
    assert!(err.contains("no worker has finished"), "{err}");
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let Some(python) = verification_python() else {
        return;
    };
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let o = Command::new(python)
        .arg(root.join("tests/python/check_k8s.py"))
        .arg("--self-test")
        .args(&files)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// The Indexed-Job contract as deploy/k8s/convert-job.yaml runs it, through the Ray driver.
#[test]
fn the_ray_driver_runs_the_workers_and_finalizes() {
    let Some(python) = verification_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    let single = single_process(tmp.path(), &raw);
    let out = tmp.path().join("ray");
    let mut c = Command::new(python);
    c.arg(repo_root().join("deploy/ray/convert.py"))
        .args(["--workers", "2", "--num-cpus", "2", "--binary", BIN, "--"])
        .args(["--input", s(&raw), "--output", s(&out)])
        .args(CONVERT)
        .env("RAY_USAGE_STATS_ENABLED", "0");
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(examples(&out), examples(&single));
}

/// convert -> train -> export -> serve with every path on the S3 server: the shards and the
/// exported graph are byte-identical to the local run's.
#[test]
fn the_pipeline_runs_on_an_object_store() {
    let Some(s3) = S3Server::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    s3.py(&["mkbucket", "qdraw"]);
    s3.py(&["put", "qdraw", s(&raw), "raw"]);
    let single = single_process(tmp.path(), &raw);

    // Convert from and to the bucket, split over two workers.
    for i in 0..2 {
        let w = format!("{i}/2");
        let mut args = vec![
            "convert",
            "--input",
            "s3://qdraw/raw",
            "--output",
            "s3://qdraw/zoo",
            "--worker",
            &w,
        ];
        args.extend(CONVERT);
        s3.ok(&args);
    }
    s3.ok(&["convert", "--finalize", "--output", "s3://qdraw/zoo"]);
    let zoo = tmp.path().join("zoo-copy");
    s3.py(&["get", "qdraw", "zoo", s(&zoo)]);
    assert_eq!(examples(&zoo), examples(&single));

    // One-process conversion into the bucket: byte-identical shards.
    let mut args = vec![
        "convert",
        "--input",
        "s3://qdraw/raw/*.ndjson",
        "--output",
        "s3://qdraw/one",
    ];
    args.extend(CONVERT);
    s3.ok(&args);
    let one = tmp.path().join("one-copy");
    s3.py(&["get", "qdraw", "one", s(&one)]);
    let m = assert_same_shards(&one, &single);

    // `stats` checks the dataset in place (every shard streamed, CRCs, counts), and `skew`
    // reads the manifest's inputs and a log folder from the bucket (the same drawings: no drift).
    let o = s3.ok(&["stats", "s3://qdraw/one", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["datasets"][0]["examples_checked"], m.totals.kept, "{v}");
    assert_eq!(v["datasets"][0]["path"], "s3://qdraw/one", "{v}");
    s3.py(&["put", "qdraw", s(&raw), "logs"]);
    let o = s3.ok(&[
        "skew",
        "--log",
        "s3://qdraw/logs",
        "--manifest",
        "s3://qdraw/one/manifest.json",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["train"]["files"], WORDS.len(), "{v}");
    assert_eq!(v["serve"]["files"], WORDS.len(), "{v}");
    // (The training side is the manifest's kept drawings, a subset of the same files.)
    for f in v["numeric"].as_array().unwrap() {
        assert_eq!(f["drift"], "none", "{f}");
    }
    // A prefix with shards but no manifest is named as an unfinished conversion.
    s3.py(&["put", "qdraw", s(&single), "unfinished"]);
    s3.py(&["rm", "qdraw", "unfinished/manifest.json"]);
    let o = s3.qd(&["stats", "s3://qdraw/unfinished"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no manifest.json"), "{}", text(&o));

    // Train, export locally and on the bucket: the same graph.
    let train = |model_dir: &str, data: &str| {
        let args = [
            "train",
            "--model",
            "linear",
            "--model-dir",
            model_dir,
            "--train-files",
            data,
            "--eval-files",
            data,
            "--train-steps",
            "30",
            "--batch-size",
            "16",
            "--checkpoint-every",
            "10",
            "--eval-every",
            "30",
            "--seed",
            "3",
        ];
        s3.ok(&args);
    };
    let local_model = tmp.path().join("model");
    train(s(&local_model), s(&single));
    train("s3://qdraw/models/linear", "s3://qdraw/one");
    let listed = s3.py(&["ls", "qdraw", "models/linear"]);
    assert!(
        listed.contains("checkpoints/step-00000030/state.json"),
        "{listed}"
    );
    assert!(listed.contains("events.out.tfevents."), "{listed}");
    // TensorBoard reads the event files in place, with its own S3 reader.
    let python = verification_python().expect("the venv started the server");
    let o = s3
        .env(&mut Command::new(python))
        .env("S3_ENDPOINT", &s3.endpoint)
        .arg(repo_root().join("tests/python/check_events.py"))
        .args([
            "s3://qdraw/models/linear",
            "--scalar",
            "loss",
            "--scalar",
            "accuracy",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Re-running resumes from the uploaded checkpoint.
    let o = s3.qd(&[
        "train",
        "--model",
        "linear",
        "--model-dir",
        "s3://qdraw/models/linear",
        "--train-files",
        "s3://qdraw/one",
        "--train-steps",
        "30",
        "--batch-size",
        "16",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("already trained to step 30"),
        "{}",
        text(&o)
    );

    // --force: the tiny fixture need not beat the majority baseline (the gate is tested in
    // export::).
    s3.ok(&[
        "export",
        "--model-dir",
        s(&local_model),
        "--eval-files",
        s(&single),
        "--force",
    ]);
    let o = s3.ok(&[
        "export",
        "--model-dir",
        "s3://qdraw/models/linear",
        "--eval-files",
        "s3://qdraw/one",
        "--force",
    ]);
    assert_eq!(stdout(&o).trim(), "s3://qdraw/models/linear/export/1");
    let exported = tmp.path().join("export-copy");
    s3.py(&["get", "qdraw", "models/linear/export", s(&exported)]);
    assert_eq!(
        std::fs::read(exported.join("1/model.onnx")).unwrap(),
        std::fs::read(local_model.join("export/1/model.onnx")).unwrap()
    );
    s3.ok(&["model", "show", "--dir", "s3://qdraw/models/linear/export"]);
    s3.ok(&[
        "evaluate",
        "--model-dir",
        "s3://qdraw/models/linear",
        "--eval-files",
        "s3://qdraw/one",
    ]);

    serve_from_the_bucket(&s3);
}

/// `serve --model-base-path s3://...` serves the uploaded version and picks up a new one.
fn serve_from_the_bucket(s3: &S3Server) {
    use std::io::{BufRead, BufReader};
    let mut child = s3
        .env(&mut bin())
        .args([
            "serve",
            "--model-base-path",
            "s3://qdraw/models/linear/export",
            "--rest-api-port",
            "free",
            "--port",
            "0",
        ])
        .args(["--poll-seconds", "0.3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let status = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let body = ureq::get(&format!("{url}/v1/models/quickdraw"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .unwrap_or_default();
            if body.contains(want) {
                return body;
            }
            assert!(std::time::Instant::now() < deadline, "no {want} in {body}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    status("\"version\":\"1\"");
    s3.ok(&[
        "export",
        "--model-dir",
        "s3://qdraw/models/linear",
        "--eval-files",
        "s3://qdraw/one",
        "--force",
    ]);
    status("\"version\":\"2\"");
    let _ = child.kill();
    let _ = child.wait();
}

/// Errors name the URL; nothing that looks complete is left.
#[test]
fn object_store_failures_name_the_url() {
    let Some(s3) = S3Server::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    let o = s3.qd(&[
        "convert",
        "--input",
        s(&raw),
        "--output",
        "s3://no-such-bucket/zoo",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("s3://no-such-bucket/zoo"), "{}", text(&o));
    let o = s3.qd(&[
        "train",
        "--model-dir",
        s(&tmp.path().join("m")),
        "--train-files",
        "s3://no-such-bucket/zoo/train-*",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("s3://no-such-bucket/zoo/train-*"),
        "{}",
        text(&o)
    );
    // The server gone: a clear error, not a hang.
    s3.py(&["mkbucket", "qdraw"]);
    let endpoint = s3.endpoint.clone();
    drop(s3);
    let o = s3_env(&mut bin(), &endpoint)
        .env("QUICKDRAW_STORE_RETRIES", "1")
        .env("QUICKDRAW_STORE_RETRY_TIMEOUT", "5")
        .args([
            "convert",
            "--input",
            s(&raw),
            "--output",
            "s3://qdraw/zoo",
            "--shards",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("s3://qdraw/zoo"), "{}", text(&o));
}

/// `evaluate --worker I/N` + `--merge` gives the one-process evaluation: the same counts and
/// confusion matrix (a worker with no shard file included).
#[test]
fn evaluation_split_over_workers_merges_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    let data = single_process(tmp.path(), &raw);
    let model = tmp.path().join("model");
    ok(&[
        "train",
        "--model",
        "linear",
        "--model-dir",
        s(&model),
        "--train-files",
        s(&data),
        "--train-steps",
        "20",
        "--batch-size",
        "16",
    ]);
    let json = |o: &std::process::Output| -> serde_json::Value {
        serde_json::from_str(stdout(o).trim()).unwrap()
    };
    let one = json(&ok(&[
        "evaluate",
        "--model-dir",
        s(&model),
        "--eval-files",
        s(&data),
        "--json",
    ]));
    for i in 0..3 {
        let w = format!("{i}/3");
        if i == 1 {
            let err = fails(&["evaluate", "--model-dir", s(&model), "--merge"]);
            assert!(err.contains("worker 1, 2"), "{err}");
        }
        ok(&[
            "evaluate",
            "--model-dir",
            s(&model),
            "--eval-files",
            s(&data),
            "--worker",
            &w,
        ]);
    }
    let merged = json(&ok(&[
        "evaluate",
        "--model-dir",
        s(&model),
        "--merge",
        "--json",
    ]));
    for k in [
        "examples",
        "confusion",
        "per_class",
        "accuracy",
        "top3_accuracy",
        "invalid_predictions",
    ] {
        assert_eq!(merged[k], one[k], "{k}");
    }
    for k in ["loss", "map3"] {
        let (a, b) = (merged[k].as_f64().unwrap(), one[k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{k}: {a} vs {b}");
    }
    assert!(merged["examples"].as_u64().unwrap() > 0);
}

/// The pipeline on Azure Blob Storage's API (Microsoft's Azurite emulator): conversion into a
/// container (shards byte-identical to the local run, read back with Microsoft's own client),
/// `stats` checking the dataset in place, training with its data and model directory there,
/// and an export there that equals the local one.
#[test]
fn the_pipeline_runs_on_azure_blob_storage() {
    let Some(az) = AzureServer::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let raw = inputs(tmp.path());
    let single = single_process(tmp.path(), &raw);
    az.py(&["mkcontainer", "qdraw"]);
    az.py(&["put", "qdraw", s(&raw), "raw"]);

    let mut args = vec![
        "convert",
        "--input",
        "az://qdraw/raw/*.ndjson",
        "--output",
        "az://qdraw/one",
    ];
    args.extend(CONVERT);
    az.ok(&args);
    let one = tmp.path().join("one-copy");
    az.py(&["get", "qdraw", "one", s(&one)]);
    let m = assert_same_shards(&one, &single);
    let o = az.ok(&["stats", "az://qdraw/one", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["datasets"][0]["examples_checked"], m.totals.kept, "{v}");

    let train = |model_dir: &str, data: &str| {
        az.ok(&[
            "train",
            "--model",
            "linear",
            "--model-dir",
            model_dir,
            "--train-files",
            data,
            "--eval-files",
            data,
            "--train-steps",
            "20",
            "--batch-size",
            "16",
            "--checkpoint-every",
            "10",
            "--eval-every",
            "20",
            "--seed",
            "3",
        ]);
    };
    let local_model = tmp.path().join("model");
    train(s(&local_model), s(&single));
    train("az://qdraw/models/linear", "az://qdraw/one");
    let listed = az.py(&["ls", "qdraw", "models/linear"]);
    assert!(
        listed.contains("checkpoints/step-00000020/state.json"),
        "{listed}"
    );
    assert!(listed.contains("events.out.tfevents."), "{listed}");
    for (dir, data) in [
        (s(&local_model), s(&single)),
        ("az://qdraw/models/linear", "az://qdraw/one"),
    ] {
        az.ok(&[
            "export",
            "--model-dir",
            dir,
            "--eval-files",
            data,
            "--force",
        ]);
    }
    let exported = tmp.path().join("export-copy");
    az.py(&["get", "qdraw", "models/linear/export", s(&exported)]);
    assert_eq!(
        std::fs::read(exported.join("1/model.onnx")).unwrap(),
        std::fs::read(local_model.join("export/1/model.onnx")).unwrap()
    );
    az.ok(&["model", "show", "--dir", "az://qdraw/models/linear/export"]);
}

/// One writer per model dir URL: a second `train` is refused naming the first (its pid); a run
/// killed without releasing its lock leaves it held until it goes stale, then the next run takes
/// it over and says so, and releases it when done.
#[test]
fn one_writer_per_object_store_directory() {
    let Some(s3) = S3Server::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = single_process(tmp.path(), &inputs(tmp.path()));
    s3.py(&["mkbucket", "qlock"]);
    let args = |steps: &str| -> Vec<String> {
        [
            "train",
            "--model",
            "linear",
            "--model-dir",
            "s3://qlock/m",
            "--train-files",
            s(&data),
            "--train-steps",
            steps,
            "--batch-size",
            "8",
            "--checkpoint-every",
            "1000000",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut first = s3
        .env(&mut bin())
        .args(args("100000000"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !s3.py(&["ls", "qlock", "m"]).contains(".quickdraw.lock") {
        assert!(std::time::Instant::now() < deadline, "no lock object");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let second: Vec<String> = args("5");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let o = s3.qd(&second);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("already in use"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("pid {}", first.id())),
        "{}",
        text(&o)
    );
    // Killed: nothing releases the lock; it is still fresh.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = s3.qd(&second);
    assert!(text(&o).contains("already in use"), "{}", text(&o));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let o = s3
        .env(&mut bin())
        .env("QUICKDRAW_LOCK_STALE_SECS", "1")
        .args(&second)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("took over a stale lock"), "{}", text(&o));
    assert!(!s3.py(&["ls", "qlock", "m"]).contains(".quickdraw.lock"));
}
