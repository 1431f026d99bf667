#!/usr/bin/env bash
# The whole test suite: installs missing tools (tests/install-deps.sh), builds Postern, runs the
# Rust tests, the black-box suite in tests/py, then a libFuzzer run of a few seconds of every
# fuzz target from the committed corpus (fuzz/run-short.sh).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k delivery -x` or `-m "not slow"`;
# with them the fuzz run is left out (a selection of tests is not the whole suite).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-deps.sh
cargo build --release
cargo test --release
python3 -m pytest -q tests/py "$@"
if [ $# -eq 0 ]; then
    bash fuzz/run-short.sh "${FUZZ_SECONDS:-5}"
fi
