//! End-to-end tests of `quickdraw download` through the real binary against a small HTTP server
//! started by each test on 127.0.0.1 (GET with Range, one-time connection cuts, lying
//! Content-Length, 404s). No test touches the internet.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use crate::util::{S3Server, bin, ndjson, s, text};

/// How the server answers for one path.
#[derive(Clone)]
enum Mode {
    /// Serve the bytes, honouring `Range: bytes=N-`.
    Normal,
    /// Like `Normal`, but the first response is cut after this many body bytes.
    CutOnce(usize),
    /// Always 200 (Range ignored) with a Content-Length 100 bytes larger than the body sent.
    LyingLength,
}

#[derive(Debug, Clone)]
struct Logged {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, (Vec<u8>, Mode)>,
    log: Vec<Logged>,
}

struct Server {
    base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Server { base, state }
    }

    /// Serves `data` at the URL path `path` (percent-encoded, as the client sends it).
    fn put(&self, path: &str, data: &[u8], mode: Mode) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), (data.to_vec(), mode));
    }

    fn requests(&self, path: &str) -> Vec<Logged> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.path == path)
            .cloned()
            .collect()
    }
}

/// Answers one request per connection (`Connection: close`).
fn serve(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((_, v)) = line
            .split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        {
            range = Some(v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let entry = {
        let mut st = state.lock().unwrap();
        st.log.push(Logged {
            path: path.clone(),
            range: range.clone(),
        });
        let e = st.files.get(&path).cloned();
        // A cut happens once: later requests are served normally.
        if let Some((data, Mode::CutOnce(_))) = &e {
            st.files.insert(path.clone(), (data.clone(), Mode::Normal));
        }
        e
    };
    let head = |status: &str, extra: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
    };
    if method != "GET" {
        conn.write_all(head("405 Method Not Allowed", "", 0).as_bytes())?;
        return Ok(());
    }
    let Some((data, mode)) = entry else {
        let body = b"not found";
        conn.write_all(
            head("404 Not Found", "Content-Type: text/plain\r\n", body.len()).as_bytes(),
        )?;
        conn.write_all(body)?;
        return Ok(());
    };
    match mode {
        Mode::LyingLength => {
            conn.write_all(head("200 OK", "", data.len() + 100).as_bytes())?;
            conn.write_all(&data)?;
        }
        Mode::Normal | Mode::CutOnce(_) => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            let (status, extra, body) = match start {
                None => ("200 OK", String::new(), &data[..]),
                Some(s) if s >= data.len() => {
                    conn.write_all(
                        head(
                            "416 Range Not Satisfiable",
                            &format!("Content-Range: bytes */{}\r\n", data.len()),
                            0,
                        )
                        .as_bytes(),
                    )?;
                    return Ok(());
                }
                Some(s) => (
                    "206 Partial Content",
                    format!(
                        "Content-Range: bytes {s}-{}/{}\r\n",
                        data.len() - 1,
                        data.len()
                    ),
                    &data[s..],
                ),
            };
            conn.write_all(head(status, &extra, body.len()).as_bytes())?;
            match mode {
                Mode::CutOnce(k) => {
                    conn.write_all(&body[..k.min(body.len())])?;
                    conn.flush()?;
                    conn.shutdown(Shutdown::Both)?;
                    return Ok(());
                }
                _ => conn.write_all(body)?,
            }
        }
    }
    conn.flush()?;
    // Let the client read everything before the socket closes.
    let _ = conn.shutdown(Shutdown::Write);
    let mut sink = [0u8; 256];
    let _ = conn.read(&mut sink);
    Ok(())
}

fn npy(rows: usize) -> Vec<u8> {
    let mut out = Vec::new();
    quickdraw_data::ingest::npy::write_header(rows as u64, &mut out);
    out.extend((0..rows * 784).map(|i| (i % 251) as u8));
    out
}

fn download(server: &Server, dest: &Path, extra: &[&str]) -> Output {
    download_cmd(server, dest, extra)
        .output()
        .expect("run quickdraw download")
}

fn download_cmd(server: &Server, dest: &Path, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.arg("download").arg("--dest").arg(dest).args([
        "--base-url",
        &server.base,
        "--retry-wait",
        "0",
        "--timeout",
        "20",
    ]);
    cmd.args(extra);
    // The server is local: never go through a proxy from the environment.
    for v in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1");
    cmd
}

fn no_part_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part"), "{name} left behind");
    }
}

#[test]
fn downloads_two_classes_byte_identical() {
    let server = Server::start();
    let cat = ndjson("cat", 40).into_bytes();
    let turtle = ndjson("sea turtle", 25).into_bytes();
    server.put("/full/simplified/cat.ndjson", &cat, Mode::Normal);
    server.put(
        "/full/simplified/sea%20turtle.ndjson",
        &turtle,
        Mode::Normal,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    let out = download(&server, &dest, &["--classes", "cat, sea turtle"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(dest.join("cat.ndjson")).unwrap(), cat);
    assert_eq!(
        std::fs::read(dest.join("sea turtle.ndjson")).unwrap(),
        turtle
    );
    assert_eq!(
        server
            .requests("/full/simplified/sea%20turtle.ndjson")
            .len(),
        1
    );
    no_part_files(&dest);
}

#[test]
fn resumes_after_a_cut_connection_and_a_leftover_part_file() {
    let server = Server::start();
    let cat = ndjson("cat", 60).into_bytes();
    let dog = ndjson("dog", 60).into_bytes();
    assert!(cat.len() > 5000);
    server.put("/full/simplified/cat.ndjson", &cat, Mode::CutOnce(3000));
    server.put("/full/simplified/dog.ndjson", &dog, Mode::Normal);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_path_buf();
    // dog: a previous run stopped after 1234 bytes.
    std::fs::write(dest.join("dog.ndjson.part"), &dog[..1234]).unwrap();
    let out = download(&server, &dest, &["--classes", "cat,dog"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(dest.join("cat.ndjson")).unwrap(), cat);
    assert_eq!(std::fs::read(dest.join("dog.ndjson")).unwrap(), dog);

    let cat_reqs = server.requests("/full/simplified/cat.ndjson");
    assert_eq!(cat_reqs.len(), 2, "{cat_reqs:?}");
    assert_eq!(cat_reqs[0].range, None);
    assert_eq!(
        cat_reqs[1].range.as_deref(),
        Some("bytes=3000-"),
        "{cat_reqs:?}"
    );
    let dog_reqs = server.requests("/full/simplified/dog.ndjson");
    assert_eq!(dog_reqs.len(), 1, "{dog_reqs:?}");
    assert_eq!(dog_reqs[0].range.as_deref(), Some("bytes=1234-"));
    no_part_files(&dest);
}

#[test]
fn complete_files_are_skipped_and_cut_ones_resumed() {
    let server = Server::start();
    let cat = ndjson("cat", 30).into_bytes();
    let dog = ndjson("dog", 30).into_bytes();
    server.put("/full/simplified/cat.ndjson", &cat, Mode::Normal);
    server.put("/full/simplified/dog.ndjson", &dog, Mode::Normal);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_path_buf();
    std::fs::write(dest.join("cat.ndjson"), &cat).unwrap();
    // dog.ndjson was cut mid-line (e.g. by an interrupted curl).
    std::fs::write(dest.join("dog.ndjson"), &dog[..dog.len() / 2 + 7]).unwrap();
    let out = download(&server, &dest, &["--classes", "cat,dog"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already complete"), "{}", text(&out));
    assert!(
        server.requests("/full/simplified/cat.ndjson").is_empty(),
        "a complete file was fetched again"
    );
    assert_eq!(std::fs::read(dest.join("dog.ndjson")).unwrap(), dog);
    let dog_reqs = server.requests("/full/simplified/dog.ndjson");
    assert_eq!(
        dog_reqs[0].range,
        Some(format!("bytes={}-", dog.len() / 2 + 7))
    );

    // A second run does nothing at all.
    let out = download(&server, &dest, &["--classes", "cat,dog", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.requests("/full/simplified/dog.ndjson").len(), 1);
}

#[test]
fn a_missing_class_fails_after_the_others_are_downloaded() {
    let server = Server::start();
    let cat = ndjson("cat", 20).into_bytes();
    server.put("/full/simplified/cat.ndjson", &cat, Mode::Normal);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_path_buf();
    let out = download(&server, &dest, &["--classes", "unicorn,cat", "--jobs", "1"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404"), "{}", text(&out));
    assert!(
        err.contains(&format!("{}/full/simplified/unicorn.ndjson", server.base)),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(dest.join("cat.ndjson")).unwrap(), cat);
    assert!(!dest.join("unicorn.ndjson").exists());
    // A 404 is permanent: no retries.
    assert_eq!(server.requests("/full/simplified/unicorn.ndjson").len(), 1);
}

#[test]
fn a_body_shorter_than_its_content_length_is_incomplete() {
    let server = Server::start();
    let cat = ndjson("cat", 20).into_bytes();
    server.put("/full/simplified/cat.ndjson", &cat, Mode::LyingLength);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_path_buf();
    let out = download(&server, &dest, &["--classes", "cat", "--retries", "2"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("incomplete"), "{}", text(&out));
    assert!(
        err.contains(&format!("received {} of {}", cat.len(), cat.len() + 100)),
        "{}",
        text(&out)
    );
    assert!(
        !dest.join("cat.ndjson").exists(),
        "an incomplete file got its final name"
    );
    assert_eq!(
        server.requests("/full/simplified/cat.ndjson").len(),
        3,
        "1 attempt + 2 retries"
    );
}

#[test]
fn ndjson_cut_mid_line_is_rejected_even_with_a_matching_length() {
    let server = Server::start();
    let cat = ndjson("cat", 20).into_bytes();
    server.put(
        "/full/simplified/cat.ndjson",
        &cat[..cat.len() - 10],
        Mode::Normal,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_path_buf();
    let out = download(&server, &dest, &["--classes", "cat"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("newline"),
        "{}",
        text(&out)
    );
    assert!(!dest.join("cat.ndjson").exists());
    no_part_files(&dest);
}

#[test]
fn numpy_bitmaps_and_other_formats_use_google_paths() {
    let server = Server::start();
    let good = npy(5);
    let mut short = npy(5);
    short.truncate(short.len() - 784);
    server.put("/full/numpy_bitmap/cat.npy", &good, Mode::Normal);
    server.put("/full/numpy_bitmap/dog.npy", &short, Mode::Normal);
    server.put(
        "/full/raw/cat.ndjson",
        &ndjson("cat", 3).into_bytes(),
        Mode::Normal,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_path_buf();
    let out = download(
        &server,
        &dest,
        &["--classes", "cat,dog", "--format", "numpy_bitmap"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("header announces 5 images"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(dest.join("cat.npy")).unwrap(), good);
    assert!(!dest.join("dog.npy").exists());

    let raw = tmp.path().join("raw");
    let out = download(&server, &raw, &["--classes", "cat", "--format", "raw"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(raw.join("cat.ndjson").is_file());
}

/// `--dest s3://...`: each file is downloaded into the staging folder (resuming a part file an
/// earlier run left there, and a connection cut in this one), verified, uploaded and removed
/// locally; the objects equal the served files (read back with boto3), and a rerun skips them
/// without a single request.
#[test]
fn downloads_into_an_object_store_through_a_staging_folder() {
    let Some(s3) = S3Server::start() else { return };
    s3.py(&["mkbucket", "qdl"]);
    let server = Server::start();
    let cat = ndjson("cat", 60).into_bytes();
    let dog = ndjson("dog", 60).into_bytes();
    server.put("/full/simplified/cat.ndjson", &cat, Mode::CutOnce(3000));
    server.put("/full/simplified/dog.ndjson", &dog, Mode::Normal);
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("dog.ndjson.part"), &dog[..1234]).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--classes", "cat,dog", "--staging", s(&staging)];
        args.extend(extra);
        let mut cmd = download_cmd(&server, Path::new("s3://qdl/data"), &args);
        s3.env(&mut cmd).output().unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let got = tmp.path().join("got");
    s3.py(&["get", "qdl", "data", s(&got)]);
    assert_eq!(std::fs::read(got.join("cat.ndjson")).unwrap(), cat);
    assert_eq!(std::fs::read(got.join("dog.ndjson")).unwrap(), dog);
    let dog_reqs = server.requests("/full/simplified/dog.ndjson");
    assert_eq!(dog_reqs.len(), 1, "{dog_reqs:?}");
    assert_eq!(dog_reqs[0].range.as_deref(), Some("bytes=1234-"));
    assert_eq!(server.requests("/full/simplified/cat.ndjson").len(), 2);
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "staging folder not emptied: {left:?}");

    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("s3://qdl/data/cat.ndjson is already complete"),
        "{}",
        text(&out)
    );
    assert_eq!(server.requests("/full/simplified/dog.ndjson").len(), 1);
    assert_eq!(server.requests("/full/simplified/cat.ndjson").len(), 2);
}
