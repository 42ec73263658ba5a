#!/usr/bin/env bash
# The long fuzzing run (docs/fuzzing.md): each harness in turn, one at a time, for RUNS inputs
# (default 1,000,000), from the committed corpus; then each corpus is minimised into a fresh
# folder with -set_cover_merge=1.  Logs, new inputs and crash files go to WORK (default fuzz/work/,
# ignored by git).  Usage: fuzz/long_run.sh [target ...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
# A merge re-runs the harness as a program (its "#!/usr/bin/env python3"): that python3 must be
# the one with atheris.
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"
RUNS="${RUNS:-1000000}"
WORK="${WORK:-fuzz/work}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(connection commands proxy dotstuff maildirnames sasl)

for target in "${targets[@]}"; do
    mkdir -p "$WORK/$target/new" "$WORK/$target/crashes"
    # Command lines are capped at 255 octets and a v1 PROXY header at 107 (v2's cap is tested
    # with caps of 16-79 octets): longer inputs only make those two slower, not deeper.
    case "$target" in
        commands | proxy) max_len=512 ;;
        *) max_len=2048 ;;
    esac
    echo "==> $target: $RUNS inputs of at most $max_len octets" >&2
    start=$(date +%s)
    "$PYTHON" "fuzz/fuzz_$target.py" "$WORK/$target/new" "fuzz/corpus/$target" \
        -runs="$RUNS" -max_len="$max_len" -timeout=10 -seed=1 -print_final_stats=1 \
        -artifact_prefix="$WORK/$target/crashes/" >"$WORK/$target/fuzz.log" 2>&1 || true
    echo "$target: $(( $(date +%s) - start )) s; $(grep -E '^#[0-9]+[[:space:]]+DONE' "$WORK/$target/fuzz.log" || grep -E 'Uncaught|ERROR' "$WORK/$target/fuzz.log" | head -1)" >&2
done

for target in "${targets[@]}"; do
    # Minimise: a smallest set of the inputs (committed and new) with all their features.
    rm -rf "$WORK/$target/merged" && mkdir -p "$WORK/$target/merged"
    "$PYTHON" "fuzz/fuzz_$target.py" -set_cover_merge=1 "$WORK/$target/merged" \
        "fuzz/corpus/$target" "$WORK/$target/new" >"$WORK/$target/merge.log" 2>&1
    echo "$target: merged to $(ls "$WORK/$target/merged" | wc -l) inputs" >&2
done
