#!/usr/bin/env bash
# etcd is off the request path (issue 4): inference latency does not change when etcd is slowed down or cut off.
#
# Setup (all on this machine):
#   - etcd in its own network namespace, reached over a veth pair (10.201.0.1 in the root namespace, 10.201.0.2 in
#     etcd's), listening on 10.201.0.2:2379 (clients) and :2380 (peers), with a temporary data dir;
#   - scripts/delay-proxy.py in the root namespace on 127.0.0.1:<proxy> forwarding to 10.201.0.2:2379, with a
#     control port to change its one-way delay while it runs (this kernel has no netem);
#   - `strata control-plane --store etcd://127.0.0.1:<proxy>`, one edge and one cloud `strata-edge-agent`;
#   - squeezenet pushed with privacy `features`;
#   - one long-lived device client (device-sdk/examples/latency.rs, `--rounds-from-stdin`) whose endpoint is
#     the control plane, running N sequential requests per phase.
# Phases, in this order, in one run: A: 0 ms, B: DELAY_MS one way in each direction, C: 0 ms again, D: the
# etcd namespace's end of the veth link down (etcd unreachable), E: link up again, 0 ms. While each phase's
# requests run, a probe times `strata model ls` (a store read on the control plane) every PROBE_EVERY_S
# seconds, so the control path's slow-down is shown at the same time as the request latency. Before each phase's
# requests, 3 fresh `strata infer` processes (endpoint: the control plane only) time a device's cold start,
# which does need the store (the control plane reads the route table from it). Per phase it also
# reports how busy the machine was (all cores), how much of that was this benchmark's processes (client, agents,
# control plane, proxy, etcd) and the control plane's own CPU time: on a shared machine, "other" load is what
# moves latency between phases. The binaries are copied into the work dir first, so a cargo build running
# meanwhile cannot swap them mid-run. The tables go to stdout, per-phase details to stderr.
#
# Needs root (ip netns), etcd and etcdctl on the PATH, python3, and:
#   cargo build --release -p strata-cli -p strata-edge-agent -p strata-device-sdk --example latency
#   python3 corpus/fetch.py
# Usage: sudo scripts/bench-etcd-delay.sh [REQUESTS_PER_PHASE]   (default 300)
# Environment: DELAY_MS (200), SETTLE_S (3, wait after each link change), PROBE_EVERY_S (2),
#   KEEP_WORK=1 (keep the logs in the work dir), STRATA / AGENT / LATENCY (binaries).
set -euo pipefail

cd "$(dirname "$0")/.."
strata=${STRATA:-target/release/strata}
agent_bin=${AGENT:-target/release/strata-edge-agent}
latency_bin=${LATENCY:-target/release/examples/latency}
requests=${1:-300}
delay_ms=${DELAY_MS:-200}
settle_s=${SETTLE_S:-3}
probe_every_s=${PROBE_EVERY_S:-2}
model=squeezenet

ns=strata-etcd-$$
veth_root=se$$r
veth_etcd=se$$e
root_ip=10.201.0.1
etcd_ip=10.201.0.2

die() {
    echo "error: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "needs root (it creates a network namespace): sudo $0 $*"
for tool in ip etcd etcdctl python3; do
    command -v "$tool" >/dev/null || die "$tool is not on the PATH"
done
for bin in "$strata" "$agent_bin" "$latency_bin"; do
    [[ -x $bin ]] || die "$bin is missing; build it with:
  cargo build --release -p strata-cli -p strata-edge-agent -p strata-device-sdk --example latency"
done
[[ -f corpus/models/$model.onnx ]] || die "corpus/models/$model.onnx is missing; run: python3 corpus/fetch.py"
if ip -o addr show | grep -q " ${root_ip%.*}\."; then
    die "${root_ip%.*}.0/24 is already in use on this machine (a stale run? see: ip -o addr; ip netns list)"
fi

now_ms() { echo $(($(date +%s%N) / 1000000)); }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/strata-etcd-delay.XXXXXX)
pids=()         # started processes, stopped in reverse order
ns_made=""
client_pid=""
probe_pid=""

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# The probe loop and the `timeout strata model ls` or `sleep` it is running (its children, by parent id).
stop_probe() {
    pkill -TERM -P "$probe_pid" 2>/dev/null || true
    stop_pid "$probe_pid"
    probe_pid=""
}

cleanup() {
    local rc=$?
    set +e
    [[ -n $probe_pid ]] && stop_probe
    if [[ -n $client_pid ]]; then
        [[ -n ${client_in:-} ]] && exec {client_in}>&-
        stop_pid "$client_pid"
    fi
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_pid "${pids[i]}"
    done
    if [[ -n $ns_made ]]; then
        ip netns delete "$ns" 2>/dev/null
        ip link delete "$veth_root" 2>/dev/null
    fi
    if [[ ${KEEP_WORK:-0} == 1 || $rc -ne 0 ]]; then
        rm -rf "$work/bin"
        echo "logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Copies of the binaries, so that a cargo build running meanwhile cannot swap them in the middle of the run.
mkdir "$work/bin"
cp "$strata" "$work/bin/strata"
cp "$agent_bin" "$work/bin/strata-edge-agent"
cp "$latency_bin" "$work/bin/latency"
strata=$work/bin/strata
agent_bin=$work/bin/strata-edge-agent
latency_bin=$work/bin/latency

# The first stdout line of a process containing $2, within $3 seconds.
wait_line() {
    local file=$1 needle=$2 timeout=$3 pid=$4 start
    start=$(now_ms)
    until grep -q -- "$needle" "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before printing \"$needle\"; see $work"
        (($(now_ms) - start < timeout * 1000)) || die "no \"$needle\" in $file within $timeout s"
        sleep 0.05
    done
    grep -m1 -- "$needle" "$file"
}

# --- etcd in its own namespace -------------------------------------------------------------------------------
ip netns add "$ns"
ns_made=1
ip link add "$veth_root" type veth peer name "$veth_etcd"
ip link set "$veth_etcd" netns "$ns"
ip addr add "$root_ip/24" dev "$veth_root"
ip link set "$veth_root" up
ip -n "$ns" addr add "$etcd_ip/24" dev "$veth_etcd"
ip -n "$ns" link set "$veth_etcd" up
ip -n "$ns" link set lo up

ip netns exec "$ns" etcd --name strata-bench --data-dir "$work/etcd" \
    --listen-client-urls "http://$etcd_ip:2379" --advertise-client-urls "http://$etcd_ip:2379" \
    --listen-peer-urls "http://$etcd_ip:2380" --initial-advertise-peer-urls "http://$etcd_ip:2380" \
    --initial-cluster "strata-bench=http://$etcd_ip:2380" --logger zap --log-level warn \
    >"$work/etcd.out" 2>"$work/etcd.log" &
pids+=($!)
etcd_pid=$!
start=$(now_ms)
until etcdctl --endpoints "$etcd_ip:2379" --dial-timeout 1s endpoint health >/dev/null 2>&1; do
    kill -0 "${pids[-1]}" 2>/dev/null || die "etcd exited; see $work/etcd.log"
    (($(now_ms) - start < 20000)) || die "etcd not healthy within 20 s; see $work/etcd.log"
    sleep 0.2
done

# --- the delay proxy, the control plane, the agents ------------------------------------------------------
proxy_port=$(free_port)
control_port=$(free_port)
cp_port=$(free_port)
python3 scripts/delay-proxy.py --listen "127.0.0.1:$proxy_port" --target "$etcd_ip:2379" \
    --control "127.0.0.1:$control_port" >"$work/proxy.out" 2>"$work/proxy.log" &
pids+=($!)
proxy_pid=$!
wait_line "$work/proxy.out" "listening on" 10 "${pids[-1]}" >/dev/null

# One command to the proxy's control port; prints its reply.
link_set() {
    local fd reply
    exec {fd}<>"/dev/tcp/127.0.0.1/$control_port"
    echo "$*" >&"$fd"
    read -r -t 5 reply <&"$fd" || reply="no reply"
    exec {fd}>&-
    [[ $reply == ok* ]] || die "delay-proxy: $* -> $reply"
}

STRATA_LOG=${STRATA_LOG:-info} "$strata" control-plane --store "etcd://127.0.0.1:$proxy_port" \
    --listen "127.0.0.1:$cp_port" --blobs "$work/blobs" >"$work/cp.out" 2>"$work/cp.log" &
pids+=($!)
cp_pid=$!
wait_line "$work/cp.out" "control plane listening on" 60 "${pids[-1]}" >/dev/null
cp=127.0.0.1:$cp_port

agent_pids=()
for tier in edge cloud; do
    STRATA_LOG=${STRATA_LOG:-info} "$agent_bin" --tier "$tier" --control-plane "$cp" --listen 127.0.0.1:0 \
        --name "${tier}0" --data-dir "$work/$tier" >"$work/$tier.out" 2>"$work/$tier.log" &
    pids+=($!)
    agent_pids+=($!)
    wait_line "$work/$tier.out" "listening on" 60 "${pids[-1]}" >/dev/null
done

STRATA_LOG=off "$strata" --endpoint "$cp" model push "corpus/models/$model.onnx" --name "$model" \
    --privacy features >"$work/push.out" 2>&1 || die "model push failed: $(cat "$work/push.out")"

# Served: at least one plan, and every edge and cloud stage of every plan has a ready agent.
served() {
    STRATA_LOG=off timeout 10 "$strata" --endpoint "$cp" routes "$model" --json 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)
ok = t["plans"] and all(s["nodes"] for p in t["plans"] for s in p["stages"] if s["tier"] in ("edge", "cloud"))
sys.exit(0 if ok else 1)' 2>/dev/null
}
start=$(now_ms)
until served; do
    (($(now_ms) - start < 120000)) || die "$model not served within 120 s; see $work"
    sleep 0.5
done
STRATA_LOG=off "$strata" --endpoint "$cp" routes "$model" >"$work/routes.txt" 2>&1

# --- the device client ---------------------------------------------------------------------------------------
mkfifo "$work/client.in"
"$latency_bin" --endpoint "$cp" --model "$model" --privacy features --n "$requests" --warmup 20 \
    --inputs-dir "corpus/models/$model.inputs" --rounds-from-stdin \
    <"$work/client.in" >"$work/client.out" 2>"$work/client.log" &
client_pid=$!
exec {client_in}>"$work/client.in"
wait_line "$work/client.out" "READY" 120 "$client_pid" >/dev/null

# `strata model ls` every PROBE_EVERY_S s until killed; one line per call: "<ms> ok|fail".
probe_loop() {
    local out=$1 t0 t1 rc
    while :; do
        t0=$(now_ms)
        rc=0
        STRATA_LOG=off timeout 20 "$strata" --endpoint "$cp" model ls >/dev/null 2>&1 || rc=$?
        t1=$(now_ms)
        if ((rc == 0)); then echo "$((t1 - t0)) ok" >>"$out"; else echo "$((t1 - t0)) fail" >>"$out"; fi
        sleep "$probe_every_s"
    done
}

# CPU time (clock ticks) of a process, user + system, 0 once it is gone.
ticks_of() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}
# "busy total cp agents client proxy etcd" in clock ticks: the machine (all cores), then each of ours.
cpu_snapshot() {
    local busy_total agents=0 p
    busy_total=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    for p in "${agent_pids[@]}"; do agents=$((agents + $(ticks_of "$p"))); done
    echo "$busy_total $(ticks_of "$cp_pid") $agents $(ticks_of "$client_pid") $(ticks_of "$proxy_pid") $(ticks_of "$etcd_pid")"
}
hz=$(getconf CLK_TCK)

get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

phases=()
# A device that starts now: a new `strata infer` process whose only endpoint is the control plane; its first
# request fetches the route table (a store read on the control plane) and the device stage. Median of 3, ms.
declare -A cold
cold_infer() {
    local label=$1 t0 t1 times=() fails=0
    for _ in 1 2 3; do
        t0=$(now_ms)
        if STRATA_LOG=off timeout 30 "$strata" --endpoint "$cp" infer "$model" --privacy features \
            --input "data_0=corpus/models/$model.inputs/data_0.npy" --output-dir "$work/out" \
            >>"$work/cold-$label.txt" 2>&1; then
            t1=$(now_ms)
            times+=($((t1 - t0)))
        else
            fails=$((fails + 1))
        fi
    done
    if ((${#times[@]} == 0)); then
        cold[$label]="failed ×$fails"
    else
        cold[$label]="$(printf '%s\n' "${times[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
        ((fails == 0)) || cold[$label]+=" ($fails failed)"
    fi
}

declare -A result probe_median probe_count probe_fail cpu
run_phase() {
    local label=$1 desc=$2 line start before after
    local -a b a
    phases+=("$label")
    result[$label,desc]=$desc
    cold_infer "$label"
    : >"$work/probe-$label.txt"
    probe_loop "$work/probe-$label.txt" &
    probe_pid=$!
    before=$(cpu_snapshot)
    echo "$label $requests" >&"$client_in"
    start=$(now_ms)
    until line=$(grep -m1 "^RESULT label=$label " "$work/client.out"); do
        kill -0 "$client_pid" 2>/dev/null || die "the latency client exited; see $work/client.log"
        (($(now_ms) - start < 1200000)) || die "phase $label did not finish within 20 min"
        sleep 0.2
    done
    after=$(cpu_snapshot)
    read -r -a b <<<"$before"
    read -r -a a <<<"$after"
    # Machine busy % of all cores; the share of it that is ours (client, agents, control plane, proxy, etcd);
    # the control plane's CPU ms alone.
    cpu[$label]=$(awk -v hz="$hz" -v bb="${b[0]}" -v bt="${b[1]}" -v ab="${a[0]}" -v at="${a[1]}" \
        -v ours="$((a[2] + a[3] + a[4] + a[5] + a[6] - b[2] - b[3] - b[4] - b[5] - b[6]))" \
        -v cp="$((a[2] - b[2]))" \
        'BEGIN { t = at - bt; printf "%.0f %.0f %.0f %.0f", 100 * (ab - bb) / t, 100 * ours / t,
                 100 * ((ab - bb) - ours) / t, 1000 * cp / hz }')
    # Let an in-flight probe finish so every phase has at least one complete probe.
    for _ in $(seq 250); do
        [[ -s "$work/probe-$label.txt" ]] && break
        sleep 0.1
    done
    stop_probe
    result[$label]=$line
    probe_count[$label]=$(grep -c ok "$work/probe-$label.txt" || true)
    probe_fail[$label]=$(grep -c fail "$work/probe-$label.txt" || true)
    probe_median[$label]=$(awk '{ print $1 }' "$work/probe-$label.txt" | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }')
    STRATA_LOG=off timeout 10 "$strata" --endpoint "$cp" routes "$model" >"$work/routes-$label.txt" 2>&1 || true
    STRATA_LOG=off timeout 10 "$strata" --endpoint "$cp" nodes >"$work/nodes-$label.txt" 2>&1 || true
    echo "phase $label ($desc): $line" >&2
    echo "  CPU busy/ours/other % of all cores, control-plane ms: ${cpu[$label]}" >&2
    echo "  cold strata infer ms (new process, endpoint = control plane): ${cold[$label]}" >&2
    echo "  model ls: ${probe_count[$label]} ok, ${probe_fail[$label]} failed, median ${probe_median[$label]} ms" \
        "(all: $(awk '{ printf "%s%s ", $1, ($2 == "fail" ? "!" : "") }' "$work/probe-$label.txt"))" >&2
}

link_set delay 0
sleep "$settle_s"
run_phase A "0 ms"

link_set delay "$delay_ms"
sleep "$settle_s"
run_phase B "+$delay_ms ms each way"

link_set delay 0
sleep "$settle_s"
run_phase C "0 ms"

ip -n "$ns" link set "$veth_etcd" down
sleep "$settle_s"
run_phase D "link down"

ip -n "$ns" link set "$veth_etcd" up
start=$(now_ms)
until STRATA_LOG=off timeout 10 "$strata" --endpoint "$cp" model ls >/dev/null 2>&1; do
    (($(now_ms) - start < 60000)) || die "the control plane did not read the store again within 60 s of the link coming back"
    sleep 0.5
done
recovered_ms=$(($(now_ms) - start))
sleep "$settle_s"
run_phase E "0 ms, link back up"
STRATA_LOG=off "$strata" --endpoint "$cp" nodes >"$work/nodes-after.txt" 2>&1 || true
served && served_after=yes || served_after=no

# --- report ----------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "nan") printf "%.3f", a / b; else print "-" }'; }
echo
echo "$requests sequential requests per phase, $model, privacy features, one client; $(nproc) cores"
echo
echo "| phase | etcd link | ok / errors | p50 ms | p99 ms | mean ms | max ms | route | \`model ls\` median ms (ok / failed) | cold \`strata infer\` ms | CPU busy % (ours / other) | control plane CPU ms |"
echo "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
for p in "${phases[@]}"; do
    l=${result[$p]}
    echo "| $p | ${result[$p,desc]} | $(get ok "$l") / $(get errors "$l") | $(get p50_ms "$l") | $(get p99_ms "$l") |" \
        "$(get mean_ms "$l") | $(get max_ms "$l") | $(get routes "$l") | ${probe_median[$p]} (${probe_count[$p]} / ${probe_fail[$p]}) | ${cold[$p]} |" \
        "$(awk '{ printf "%s (%s / %s) | %s |", $1, $2, $3, $4 }' <<<"${cpu[$p]}")"
done
echo
echo "| ratio | p50 | p99 | mean |"
echo "|---|---:|---:|---:|"
for p in B C D E; do
    echo "| $p / A | $(ratio "$(get p50_ms "${result[$p]}")" "$(get p50_ms "${result[A]}")") |" \
        "$(ratio "$(get p99_ms "${result[$p]}")" "$(get p99_ms "${result[A]}")") |" \
        "$(ratio "$(get mean_ms "${result[$p]}")" "$(get mean_ms "${result[A]}")") |"
done
echo
echo "model ls: B / A = $(ratio "${probe_median[B]}" "${probe_median[A]}") (median); the store answered again" \
    "$recovered_ms ms after the link came back; every edge/cloud stage had a ready agent afterwards: $served_after"
for p in "${phases[@]}"; do
    e=$(sed -n 's/.* first_error=\(.*\)$/\1/p' <<<"${result[$p]}")
    [[ -n $e ]] && echo "phase $p first error: $e"
done
exit 0
