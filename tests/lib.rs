//! Helpers for the end-to-end tests: locating the workspace's binaries
//! (built by the same `cargo test --workspace` run) and the test inputs.

use std::path::PathBuf;

/// Path of a workspace binary next to the test executable's target folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target folder");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// A required environment variable, with the reason it is needed.
pub fn required_env(name: &str, why: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set: {why} (scripts/test.sh sets it)"))
}
