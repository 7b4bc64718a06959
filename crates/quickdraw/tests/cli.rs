//! The command line itself: the order of the commands in `--help`, help text on every flag,
//! flag spellings shared by all commands, shell completions, and errors that name each cause
//! once.

use crate::util::{fails, ok, ok_stdout, qd, s, stderr};

/// The subcommands a help text lists under `Commands:`, in its order.
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// The commands `quickdraw --help` lists, in its order.
fn listed_commands() -> Vec<String> {
    commands_in(&ok_stdout(&["--help"]))
}

#[test]
fn help_lists_the_commands_in_pipeline_order() {
    let listed = listed_commands();
    let mut order = vec!["download", "synth", "convert", "inspect", "stats"];
    if cfg!(feature = "train") {
        order.extend(["train", "evaluate", "compare", "export"]);
    }
    order.push("model");
    if cfg!(feature = "train") {
        order.push("predict");
    }
    order.extend(["serve", "skew", "bench", "completions"]);
    let at: Vec<usize> = order
        .iter()
        .map(|c| {
            listed
                .iter()
                .position(|l| l == c)
                .unwrap_or_else(|| panic!("{c} is not listed: {listed:?}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "--help lists {listed:?}, not in the order {order:?}"
    );
}

/// The arguments and options in the short help (`-h`) of `quickdraw <cmd...>` and of its
/// subcommands that come without a description.
fn without_help(cmd: &[String], bare: &mut Vec<String>) {
    let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    args.push("-h");
    let help = ok_stdout(&args);
    // `  -n, --limit <LIMIT>  Stop after ...  [default: 10]`: the description after the
    // first run of two spaces; when some line would be too wide, clap puts every description
    // on the line below its argument, further indented.
    let lines: Vec<&str> = help.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if !(2..=6).contains(&indent(l))
            || !(t.starts_with('-') || t.starts_with('<') || t.starts_with('['))
        {
            continue;
        }
        let text = |s: &str| !s.trim().is_empty() && !s.trim().starts_with('[');
        let described = match t.split_once("  ") {
            Some((_, rest)) => text(rest),
            None => lines
                .get(i + 1)
                .is_some_and(|n| indent(n) > indent(l) + 2 && text(n)),
        };
        if !described {
            bare.push(format!("quickdraw {}: {t}", cmd.join(" ")));
        }
    }
    for sub in commands_in(&help) {
        let mut c = cmd.to_vec();
        c.push(sub);
        without_help(&c, bare);
    }
}

#[test]
fn every_flag_has_help_text() {
    let mut bare = Vec::new();
    for cmd in listed_commands() {
        without_help(&[cmd], &mut bare);
    }
    assert!(
        bare.is_empty(),
        "flags without help text:\n{}",
        bare.join("\n")
    );
}

#[test]
fn output_directories_are_output_everywhere_and_limits_are_n() {
    let tmp = tempfile::tempdir().unwrap();
    for cmd in ["convert", "synth", "simplify"] {
        let help = ok_stdout(&[cmd, "--help"]);
        assert!(help.contains("-o, --output"), "{cmd} --help:\n{help}");
    }
    // The old spelling still works.
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let small = ["--classes", "2", "--per-class", "3"];
    ok(&[&["synth", "--output", s(&a)][..], &small[..]].concat());
    ok(&[&["synth", "--out", s(&b)][..], &small[..]].concat());
    assert_eq!(
        std::fs::read(a.join("circle.ndjson")).unwrap(),
        std::fs::read(b.join("circle.ndjson")).unwrap()
    );
    let inspect = ok_stdout(&["inspect", "--help"]);
    assert!(inspect.contains("-n, --limit"), "{inspect}");
    let model_run = ok_stdout(&["model", "run", "--help"]);
    assert!(model_run.contains("-n, --limit"), "{model_run}");
    if cfg!(feature = "train") {
        let predict = ok_stdout(&["predict", "--help"]);
        assert!(predict.contains("-n, --limit"), "{predict}");
        let demo = ok_stdout(&["demo", "--help"]);
        assert!(demo.contains("-o, --output"), "{demo}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef quickdraw"),
        ("fish", "complete -c quickdraw"),
    ] {
        let script = ok_stdout(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in ["convert", "serve", "--model-base-path"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let err = fails(&["completions", "tcsh"]);
    assert!(err.contains("bash"), "{err}");
}

/// Each cause of an error is printed once, though library errors carry their source in their
/// own message too.
#[test]
fn errors_name_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.ndjson");
    let input = tmp.path().join("cat.ndjson");
    std::fs::write(&input, crate::util::ndjson("cat", 5)).unwrap();
    let out = tmp.path().join("shards");
    let cases: Vec<Vec<&str>> = vec![
        vec!["convert", "--input", s(&missing), "--output", s(&out)],
        vec![
            "convert",
            "--input",
            s(&input),
            "--output",
            s(&out),
            "--size",
            "0",
        ],
        vec!["stats", s(&missing)],
        vec!["inspect", s(&missing)],
        vec!["model", "show", "--dir", s(&missing)],
    ];
    for args in cases {
        let o = qd(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
        let parts: Vec<&str> = line["error: ".len()..].split(": ").collect();
        for (i, p) in parts.iter().enumerate() {
            assert!(
                !parts[i + 1..].contains(p),
                "{args:?}: {p:?} is printed twice in {line:?}"
            );
        }
    }
}

/// A dataset for the file-argument tests: shards written by `convert`.
#[cfg(feature = "train")]
fn dataset(dir: &std::path::Path) -> std::path::PathBuf {
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for w in ["cat", "dog"] {
        std::fs::write(raw.join(format!("{w}.ndjson")), crate::util::ndjson(w, 40)).unwrap();
    }
    let data = dir.join("data");
    ok(&[
        "-q",
        "convert",
        "--input",
        s(&raw),
        "--output",
        s(&data),
        "--size",
        "8",
        "--split",
        "train=0.75,eval=0.25",
        "--shards",
        "3",
    ]);
    data
}

/// `--train-files`/`--eval-files` take several files (a glob the shell expanded), the flag
/// repeated, or the dataset directory, and all of them mean the same shards.
#[cfg(feature = "train")]
#[test]
fn file_flags_take_several_files_repeats_and_a_dataset_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(tmp.path());
    let mut train: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.contains("/train-"))
        .collect();
    train.sort();
    assert_eq!(train.len(), 3);
    let eval_glob = format!("{}/eval-*", data.display());
    let examples = |args: &[&str]| -> u64 {
        let model = tmp.path().join(format!("m{}", args.len()));
        let mut a = vec![
            "-q",
            "train",
            "--model",
            "baseline",
            "--model-dir",
            s(&model),
        ];
        a.extend_from_slice(args);
        a.extend(["--train-steps", "2", "--batch-size", "4", "--overwrite"]);
        ok(&a);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap())
                .unwrap();
        let ev = ok_stdout(&[
            "-q",
            "evaluate",
            "--model-dir",
            s(&model),
            "--eval-files",
            s(&data),
            "--json",
        ]);
        let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
        assert!(ev["examples"].as_u64().unwrap() > 0, "{ev}");
        config["data"]["train_examples"]
            .as_u64()
            .unwrap_or_else(|| panic!("no data.train_examples in {config}"))
    };
    let shell_expanded: Vec<&str> = std::iter::once("--train-files")
        .chain(train.iter().map(String::as_str))
        .chain(["--eval-files", eval_glob.as_str()])
        .collect();
    let n = examples(&shell_expanded);
    assert!(n > 0);
    let repeated = [
        "--train-files",
        train[0].as_str(),
        "--train-files",
        train[1].as_str(),
        train[2].as_str(),
        "--eval-files",
        s(&data),
    ];
    assert_eq!(examples(&repeated), n);
    assert_eq!(examples(&["--train-files", s(&data)]), n);
    // A directory that is no dataset says so.
    let err = fails(&[
        "train",
        "--model-dir",
        s(&tmp.path().join("x")),
        "--train-files",
        s(tmp.path()),
    ]);
    assert!(err.contains("manifest"), "{err}");
}

/// `demo` prints the commands it runs so that they can be pasted: globs are quoted.
#[cfg(feature = "train")]
#[test]
fn demo_prints_globs_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    // Small enough to stop early (the export gate may refuse so short a training): only the
    // printed command lines matter here.
    let o = qd(&[
        "demo",
        "--output",
        s(&out),
        "--classes",
        "2",
        "--per-class",
        "20",
        "--size",
        "8",
        "--train-steps",
        "2",
        "--no-serve",
    ]);
    let err = stderr(&o);
    let glob = format!("--train-files '{}/shards/train-*'", out.display());
    assert!(err.contains(&glob), "no {glob:?} in:\n{err}");
    assert!(
        err.contains(&format!("--eval-files '{}/shards/eval-*'", out.display())),
        "{err}"
    );
}
