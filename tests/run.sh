#!/usr/bin/env bash
# The whole test suite: installs missing tools (tests/install-deps.sh), builds Postern, runs the
# Rust tests, then the black-box suite in tests/py.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k delivery -x` or `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-deps.sh
cargo build --release
cargo test --release
python3 -m pytest -q tests/py "$@"
