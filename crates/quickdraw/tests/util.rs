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

/// The verification venv's python (the server tests started it only with the venv there).
fn python_command() -> Command {
    Command::new(verification_python().expect("the venv started the server"))
}

/// Runs a store's test client `tests/python/<script>` with `cmd`'s environment; must succeed.
fn python_client(cmd: &mut Command, script: &str, args: &[&str]) -> String {
    let o = cmd
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script} {args:?} failed:\n{}",
        text(&o)
    );
    stdout(&o)
}

/// A real S3-API server (moto's, installed into the verification venv by scripts/test-all) on
/// 127.0.0.1, killed on drop; `None` (with a SKIP message) without the venv, a failure in CI.
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> Option<S3Server> {
        let python = verification_python()?;
        let server = python.with_file_name("moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/test-all",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(s)
    }

    /// The environment an S3 user sets (endpoint, plain HTTP allowed, dummy credentials).
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        s3_env(cmd, &self.endpoint)
    }

    /// `quickdraw args...` with this server's environment.
    pub fn qd(&self, args: &[&str]) -> Output {
        self.env(&mut bin()).args(args).output().unwrap()
    }

    /// [`S3Server::qd`], which must succeed.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.qd(args);
        assert!(
            o.status.success(),
            "quickdraw {args:?} failed:\n{}",
            text(&o)
        );
        o
    }

    /// Runs tests/python/s3.py (boto3, an independent S3 client).
    pub fn py(&self, args: &[&str]) -> String {
        python_client(self.env(&mut python_command()), "s3.py", args)
    }
}

/// [`S3Server::env`] for an `endpoint` (also one whose server is gone).
pub fn s3_env<'a>(cmd: &'a mut Command, endpoint: &str) -> &'a mut Command {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
}

/// A real Azure Blob API (Microsoft's Azurite emulator, installed into tests/azurite by
/// scripts/test-all) on 127.0.0.1, killed on drop; `None` (with a SKIP message) without it or
/// the venv, a failure when QUICKDRAW_REQUIRE_AZURITE=1 (CI).
pub struct AzureServer {
    child: std::process::Child,
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl AzureServer {
    pub fn start() -> Option<AzureServer> {
        let server = repo_root().join("tests/azurite/node_modules/.bin/azurite-blob");
        if !server.exists() {
            let msg = format!(
                "{} is missing: run scripts/test-all (npm ci in tests/azurite)",
                server.display()
            );
            assert!(
                std::env::var_os("QUICKDRAW_REQUIRE_AZURITE").is_none(),
                "QUICKDRAW_REQUIRE_AZURITE is set but {msg}"
            );
            eprintln!("SKIP: {msg}");
            return None;
        }
        verification_python()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(&server)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start azurite-blob");
        let s = AzureServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "azurite-blob did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(s)
    }

    /// The environment an Azure user sets for the emulator (object_store's
    /// `AZURE_STORAGE_USE_EMULATOR` and `AZURITE_BLOB_STORAGE_URL`).
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", &self.endpoint)
            .env("NO_PROXY", "127.0.0.1")
    }

    /// `quickdraw args...` against this emulator, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Output {
        let o = self.env(&mut bin()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "quickdraw {args:?} failed:\n{}",
            text(&o)
        );
        o
    }

    /// Runs tests/python/azure_blob.py (Microsoft's azure-storage-blob client).
    pub fn py(&self, args: &[&str]) -> String {
        python_client(self.env(&mut python_command()), "azure_blob.py", args)
    }
}

impl Drop for AzureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
