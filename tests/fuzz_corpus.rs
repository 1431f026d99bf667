//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz target bodies
//! (`postern::fuzz_targets`, compiled in through the `fuzzing` feature that the dev-dependency
//! on this package turns on), so every input the fuzzer kept, the crashes it found among them,
//! is checked by the ordinary `cargo test`. The libFuzzer run itself is `fuzz/run-short.sh`
//! (see the README's Fuzzing section).

use std::fs;
use std::path::Path;

use postern::fuzz_targets::TARGETS;

/// Runs every file of `target`'s corpus through its body; returns how many there were.
fn replay(target: &str) -> usize {
    let (_, body) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let input = fs::read(file).unwrap();
        // A failing input is named, so it can be run alone with `cargo fuzz run TARGET FILE`.
        eprintln!("{}", file.display());
        body(&input);
    }
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files.len()
}

#[test]
fn every_target_has_a_corpus_and_a_test() {
    let tests = include_str!("fuzz_corpus.rs");
    for (name, _) in TARGETS {
        assert!(
            tests.contains(&format!("replay(\"{name}\")")),
            "tests/fuzz_corpus.rs does not replay {name}"
        );
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("fuzz/fuzz_targets/{name}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{name}.rs"
        );
    }
}

#[test]
fn session() {
    replay("session");
}

#[test]
fn headers() {
    replay("headers");
}

#[test]
fn mailbox() {
    replay("mailbox");
}

#[test]
fn journal_record() {
    replay("journal_record");
}

#[test]
fn smtp_reply() {
    replay("smtp_reply");
}

#[test]
fn dsn() {
    replay("dsn");
}

#[test]
fn tlsa() {
    replay("tlsa");
}

#[test]
fn trust_anchor() {
    replay("trust_anchor");
}

#[test]
fn mta_sts() {
    replay("mta_sts");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn proxy_header() {
    replay("proxy_header");
}

#[test]
fn handoff() {
    replay("handoff");
}
