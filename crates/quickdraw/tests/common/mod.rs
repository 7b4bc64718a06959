//! Shared by the integration tests: where the verification tools live.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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
