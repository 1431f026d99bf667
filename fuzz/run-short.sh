#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target (default 10 s each) from the committed corpus:
# the check that the targets build and still find nothing; tests/run.sh ends with it. New
# inputs go to a scratch copy, not the committed corpus. Needs cargo-fuzz (tests/install-deps.sh
# installs it); runs on the stable toolchain through RUSTC_BOOTSTRAP=1.
#
# The build is cargo-fuzz's `--dev` one (no optimisation, debug assertions and overflow checks
# on): about a third of the CPU time of the optimised instrumented build, which matters for a
# suite on 2 cores, and stricter, since an arithmetic overflow panics there. It runs a few
# times slower, which a run of seconds does not mind; long runs to grow the corpus use the
# optimised build (README, "Fuzzing").
#   bash fuzz/run-short.sh [SECONDS] [TARGET...]
# The instrumented build goes to $FUZZ_TARGET_DIR (default $CARGO_TARGET_DIR/fuzz, else target/fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi
export RUSTC_BOOTSTRAP=1
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fuzz}
cargo fuzz build --dev -s none --target-dir "$target_dir"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "$scratch/artifacts/$t"
    cp fuzz/corpus/"$t"/* "$scratch/$t/"
    echo "== $t (${seconds}s)"
    status=0
    cargo fuzz run --dev -s none --target-dir "$target_dir" "$t" "$scratch/$t" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 \
        -artifact_prefix="$scratch/artifacts/$t/" >"$scratch/$t.log" 2>&1 || status=$?
    grep -E '^#[0-9]+ +DONE|^stat::number_of_executed_units' "$scratch/$t.log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$scratch/$t.log"
        mkdir -p fuzz/artifacts/"$t"
        cp "$scratch/artifacts/$t"/* fuzz/artifacts/"$t"/ 2>/dev/null || true
        echo "$t: libFuzzer exited $status; the input is in fuzz/artifacts/$t/" >&2
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz targets with findings: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${seconds}s each without a finding"
