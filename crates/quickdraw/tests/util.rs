//! Shared by every integration-test module: running the `quickdraw` binary, reading what it
//! printed, paths as arguments, small NDJSON fixtures, and where the verification tools live.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_quickdraw");

/// A `Command` for the binary under test.
pub fn bin() -> Command {
    Command::new(BIN)
}

/// Runs `quickdraw args...` to completion, whatever its exit status.
pub fn qd(args: &[&str]) -> Output {
    bin().args(args).output().expect("run quickdraw")
}

/// [`qd`] with owned arguments.
pub fn qd_owned(args: &[String]) -> Output {
    bin().args(args).output().expect("run quickdraw")
}

/// Runs `quickdraw args...` and fails the test (showing status, stdout and stderr) unless it
/// succeeds.
pub fn ok(args: &[&str]) -> Output {
    let o = qd(args);
    assert!(
        o.status.success(),
        "quickdraw {args:?} failed: {}",
        text(&o)
    );
    o
}

/// [`ok`] with owned arguments.
pub fn ok_owned(args: &[String]) -> Output {
    let o = qd_owned(args);
    assert!(
        o.status.success(),
        "quickdraw {args:?} failed: {}",
        text(&o)
    );
    o
}

/// [`ok`], returning its stdout.
pub fn ok_stdout(args: &[&str]) -> String {
    stdout(&ok(args))
}

/// Runs `quickdraw args...`, fails the test if it succeeds, and returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let o = qd(args);
    assert!(
        !o.status.success(),
        "quickdraw {args:?} should fail: {}",
        text(&o)
    );
    stderr(&o)
}

/// Status, stdout and stderr of a run, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `n` valid simplified records of `word` in Google's NDJSON format: strokes of 8 + 3 points,
/// countries cycling VE, US, GB, DE, FR, every fourth not recognised, timestamps
/// 2017-03-02 23:25:00 + i seconds, key_ids distinct across words of different lengths.
pub fn ndjson(word: &str, n: usize) -> String {
    let countries = ["VE", "US", "GB", "DE", "FR"];
    let mut out = String::new();
    for i in 0..n {
        let x: Vec<String> = (0..8)
            .map(|j| ((i * 7 + j * 31) % 256).to_string())
            .collect();
        let y: Vec<String> = (0..8)
            .map(|j| ((i * 13 + j * 17) % 256).to_string())
            .collect();
        out.push_str(&format!(
            "{{\"word\":\"{word}\",\"countrycode\":\"{}\",\"timestamp\":\"2017-03-02 23:25:{:02}.07453 UTC\",\"recognized\":{},\"key_id\":\"{}\",\"drawing\":[[[{}],[{}]],[[130,113,99],[72,40,27]]]}}\n",
            countries[i % countries.len()],
            i % 60,
            i % 4 != 0,
            5201136883597312u64 + (word.len() * 1000 + i) as u64,
            x.join(","),
            y.join(",")
        ));
    }
    out
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The verification venv's Python (made by `scripts/test-all`), or `None` after printing a skip
/// message; fails instead when `QUICKDRAW_REQUIRE_PYTHON` is set (as in CI).
pub fn verification_python() -> Option<PathBuf> {
    let python = repo_root().join(".venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("QUICKDRAW_REQUIRE_PYTHON").is_none(),
        "QUICKDRAW_REQUIRE_PYTHON is set but {} is missing",
        python.display()
    );
    eprintln!(
        "SKIP: {} not found; run scripts/test-all to create the verification venv",
        python.display()
    );
    None
}
