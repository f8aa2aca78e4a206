//! `scripts/ci-cache.sh`, which readies the build cache `.ci/run` reuses: a cache is kept while
//! its key matches, emptied when the key differs or its disk is short of room, a directory that
//! is not a cargo target directory is never removed, and a run without room stops with a
//! message naming where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ci-cache.sh")
}

/// Runs the script on `target` with the thresholds given (GiB: keep a cache, build, temp).
fn run(target: &Path, keep: u64, build: u64, temp: u64) -> Output {
    Command::new("bash")
        .arg(script())
        .arg(target)
        .arg(std::env::temp_dir())
        .env("ORTELIUS_CI_KEEP_CACHE_GIB", keep.to_string())
        .env("ORTELIUS_CI_BUILD_GIB", build.to_string())
        .env("ORTELIUS_CI_TEMP_GIB", temp.to_string())
        .output()
        .expect("bash runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the script's messages contain `text`.
fn says(out: &Output, text: &str) {
    let said = stderr(out);
    assert!(said.contains(text), "expected {text:?} in: {said}");
}

/// A directory that looks like one cargo made, holding `file`.
fn cache_with(file: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55",
    )
    .unwrap();
    std::fs::write(dir.path().join(file), "built").unwrap();
    dir
}

/// More GiB than any disk here has free.
const HUGE: u64 = 1 << 40;

#[test]
fn a_cache_is_kept_while_its_key_matches_and_emptied_when_it_does_not() {
    let dir = cache_with("old-build");
    let out = run(dir.path(), 0, 0, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !dir.path().join("old-build").exists(),
        "a cache without a key is emptied"
    );
    says(&out, "built for other dependencies");
    let key = std::fs::read_to_string(dir.path().join(".ci-key")).unwrap();
    std::fs::write(dir.path().join("CACHEDIR.TAG"), "").unwrap();
    std::fs::write(dir.path().join("this-build"), "built").unwrap();
    let out = run(dir.path(), 0, 0, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dir.path().join("this-build").exists(),
        "a cache with its key is kept"
    );
    std::fs::write(dir.path().join(".ci-key"), format!("not-{key}")).unwrap();
    let out = run(dir.path(), 0, 0, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !dir.path().join("this-build").exists(),
        "a cache with another key is emptied"
    );
}

#[test]
fn a_cache_on_a_disk_short_of_room_is_emptied() {
    let dir = cache_with("build");
    assert!(run(dir.path(), 0, 0, 0).status.success());
    std::fs::write(dir.path().join("CACHEDIR.TAG"), "").unwrap();
    std::fs::write(dir.path().join("build"), "built").unwrap();
    let out = run(dir.path(), HUGE, 0, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("build").exists());
    says(&out, "GiB free on its disk");
}

#[test]
fn a_cache_without_its_tag_but_with_cargo_fingerprints_is_still_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("release/.fingerprint")).unwrap();
    std::fs::write(dir.path().join("release/old-build"), "built").unwrap();
    let out = run(dir.path(), 0, 0, 0);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("release/old-build").exists());
    says(&out, "built for other dependencies");
}

#[test]
fn a_directory_cargo_did_not_make_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious"), "data").unwrap();
    let out = run(dir.path(), 0, 0, 0);
    assert!(!out.status.success());
    assert!(dir.path().join("precious").exists());
    says(&out, "does not look like a cargo target directory");
}

#[test]
fn a_run_without_room_stops_naming_where() {
    let empty = tempfile::tempdir().unwrap();
    let out = run(empty.path(), 0, HUGE, 0);
    assert!(!out.status.success());
    says(
        &out,
        &format!("for the build in {}", empty.path().display()),
    );
    let out = run(empty.path(), 0, 0, HUGE);
    assert!(!out.status.success());
    says(&out, "for the tests' servers in");
    says(&out, "free some space there");
}
