#!/usr/bin/env bash
# `strata up` to the first successful `strata infer` (issue 3): spawns
# `strata up --listen 127.0.0.1:0 --data-dir <fresh tmp dir>`, and as soon as its "is served" line appears runs
# the `strata infer` command that `up` prints (against the demo model, squeezenet). Reports, per run, the time
# from the spawn to the "is served" line and to the infer's exit, then the median over the runs. Every run
# starts from an empty data dir, so it includes planning, stage extraction, blob fetches and stage loading.
#
# Needs: cargo build --release -p strata-cli && python3 corpus/fetch.py
# Usage: scripts/bench-up.sh [RUNS]     (default 3; STRATA=path overrides target/release/strata)
set -euo pipefail

cd "$(dirname "$0")/.."
strata=${STRATA:-target/release/strata}
runs=${1:-3}

if [[ ! -x $strata ]]; then
    echo "error: $strata is missing; build it with: cargo build --release -p strata-cli" >&2
    exit 1
fi
if [[ ! -f corpus/models/squeezenet.onnx ]]; then
    echo "error: corpus/models/squeezenet.onnx is missing; build the corpus with: python3 corpus/fetch.py" >&2
    exit 1
fi

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { awk -v ms="$1" 'BEGIN { printf "%.2f", ms / 1000 }'; }

up_pid=""
work=""

# Ctrl-C, then SIGKILL if `up` has not exited 5 s later (at the time of writing it drains its agents but
# then waits on its own agents' route/assignment watch streams to the control plane, and never exits).
stop_up() {
    kill -INT "$up_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$up_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$up_pid" 2>/dev/null; then
        echo "note: strata up did not exit 5 s after Ctrl-C; killed" >&2
        kill -KILL "$up_pid" 2>/dev/null || true
    fi
    wait "$up_pid" 2>/dev/null || true
    up_pid=""
}

cleanup() {
    if [[ -n $up_pid ]]; then
        stop_up
    fi
    if [[ -n $work ]]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT

totals=()
echo "| run | spawn → \"is served\" (s) | infer alone (s) | spawn → infer exit (s) |"
echo "|---:|---:|---:|---:|"
for run in $(seq 1 "$runs"); do
    work=$(mktemp -d)
    start=$(now_ms)
    STRATA_LOG=${STRATA_LOG:-warn} "$strata" up --listen 127.0.0.1:0 --data-dir "$work/data" \
        >"$work/up.out" 2>"$work/up.err" &
    up_pid=$!

    # `up` prints "model ... is served" and, on the next line of the same write, the infer command to try.
    until grep -q 'strata infer ' "$work/up.out" 2>/dev/null; do
        if ! kill -0 "$up_pid" 2>/dev/null; then
            echo "error: strata up exited before serving; its output:" >&2
            cat "$work/up.out" "$work/up.err" >&2
            exit 1
        fi
        if (($(now_ms) - start > 300000)); then
            echo "error: strata up did not serve within 300 s" >&2
            exit 1
        fi
        sleep 0.005
    done
    served=$(now_ms)

    # The printed command (`VAR=value … strata infer …`: the administrator's TLS material first), with the
    # output dir moved into this run's scratch dir.
    read -r -a printed <<<"$(grep -m1 'strata infer ' "$work/up.out")"
    args=()
    envs=()
    seen_strata=0
    for ((i = 0; i < ${#printed[@]}; i++)); do
        if ((!seen_strata)); then
            if [[ ${printed[i]} == strata ]]; then
                seen_strata=1
            elif [[ ${printed[i]} == *=* ]]; then
                envs+=("${printed[i]}")
            fi
            continue
        fi
        if [[ ${printed[i]} == --output-dir ]]; then
            args+=(--output-dir "$work/out")
            i=$((i + 1))
        else
            args+=("${printed[i]}")
        fi
    done
    if ! env "${envs[@]}" "$strata" "${args[@]}" >"$work/infer.out" 2>&1; then
        echo "error: strata ${args[*]} failed:" >&2
        cat "$work/infer.out" >&2
        exit 1
    fi
    done_ms=$(now_ms)

    stop_up
    rm -rf "$work"
    work=""

    total=$((done_ms - start))
    totals+=("$total")
    echo "| $run | $(secs $((served - start))) | $(secs $((done_ms - served))) | $(secs "$total") |"
done

median=$(printf '%s\n' "${totals[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo
echo "median spawn → first successful infer over $runs runs: $(secs "$median") s ($(nproc) cores)"
