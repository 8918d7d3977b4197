#!/usr/bin/env bash
# Forked-checkpoint downtime against a bare fork() of a process of the same size.
#
#   bench/downtime.sh [--full | --sizes "MIB ..."] [--reps N] [--dir DIR]
#
# Sizes: 256 MiB by default, 1 GiB and 4 GiB with --full (bench/run.sh --full passes it).
# For each size it measures, in the same run on the same machine:
#   * fork: the duration of fork() in a plain process holding that much populated memory
#     (bench/forkhog.c, 4 KiB pages);
#   * downtime: how long crust stopped the threads of the same program run under crlaunch
#     (forked mode, the default) for `crctl checkpoint --wait`, as the coordinator records
#     it (manifest downtime_us);
# N samples of each, alternating (fork, checkpoint, fork, ...) so both see the same load;
# prints medians and minimums and the ratio against the target downtime <= 1.5 x fork +
# 2 ms. Results are also kept in DIR/downtime.txt (default DIR: bench/work). See
# BENCHMARKS.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
sizes="256"
reps=5
work="$here/work"
while [ $# -gt 0 ]; do
    case "$1" in
        --full) sizes="1024 4096" ;;
        --sizes) sizes="$2"; shift ;;
        --reps) reps="$2"; shift ;;
        --dir) work="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "bench/downtime.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

echo "== building (release)" >&2
(cd "$root" && cargo build --release --workspace --quiet)
bin="$root/target/release"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
out="$work/downtime.txt"
: > "$out"
"${CC:-gcc}" -O2 -o "$work/forkhog" "$here/forkhog.c"
export CR_LOG=warn
port=$((20000 + RANDOM % 20000))
export CR_COORD="127.0.0.1:$port"
coord_pid=""
prog_pid=""
cleanup() {
    [ -n "$prog_pid" ] && kill -9 "$prog_pid" 2>/dev/null || true
    if [ -n "$coord_pid" ]; then "$bin/crctl" quit >/dev/null 2>&1 || true; wait "$coord_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
spread() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%s..%s", lo, hi}'; }
wait_file() { for _ in $(seq 6000); do [ -e "$1" ] && return 0; sleep 0.01; done; echo "timeout waiting for $1" >&2; return 1; }

{
    echo "== machine"
    uname -srm
    lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
    free -g | head -2
    echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
    date -u
    echo
    printf '%-10s %14s %14s %16s %14s %10s\n' "size" "fork (ms)" "downtime (ms)" "target (ms)" "downtime/fork" "vs target"
} | tee -a "$out"

"$bin/crcoord" --port "$port" --ckpt-dir "$work/ckpt" >"$work/crcoord.log" 2>&1 &
coord_pid=$!
for _ in $(seq 200); do "$bin/crctl" status >/dev/null 2>&1 && break; sleep 0.05; done

for mib in $sizes; do
    # The baseline: a plain process of the same size that forks on request, so fork and
    # checkpoint samples alternate and see the same machine load.
    coproc FH { "$work/forkhog" "$mib" serve; }
    read -r _ <&"${FH[0]}"
    d="$work/hold"; rm -rf "$d" "$work/ckpt"; mkdir -p "$d"
    "$bin/crlaunch" --ckpt-dir "$work/ckpt" -- "$work/forkhog" "$mib" hold "$d" >/dev/null 2>"$work/forkhog.err" &
    prog_pid=$!
    wait_file "$d/ready"
    for _ in $(seq 500); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge 1 ] && break; sleep 0.02; done
    downs=(); forks=()
    for _ in $(seq "$reps"); do
        echo >&"${FH[1]}"; read -r f <&"${FH[0]}"; forks+=("$f")
        gen=$("$bin/crctl" checkpoint --wait 2>/dev/null | tail -1)
        downs+=("$(grep -o '"downtime_us": *[0-9]*' "$gen/manifest.json" | head -1 | grep -o '[0-9]*$')")
    done
    kill -9 "$prog_pid"; wait "$prog_pid" 2>/dev/null || true; prog_pid=""
    exec {FH[1]}>&-; wait "$FH_PID" 2>/dev/null || true
    fork_us=$(printf '%s\n' "${forks[@]}" | median)
    down_us=$(printf '%s\n' "${downs[@]}" | median)
    fork_min=$(printf '%s\n' "${forks[@]}" | sort -g | head -1)
    down_min=$(printf '%s\n' "${downs[@]}" | sort -g | head -1)
    awk -v m="$mib" -v f="$fork_us" -v d="$down_us" 'BEGIN {
        t = 1.5 * f + 2000
        printf "%-10s %14.1f %14.1f %16.1f %14.2f %10.2f\n", m " MiB", f / 1000, d / 1000, t / 1000, d / f, d / t
    }' | tee -a "$out"
    awk -v m="$mib" -v f="$fork_min" -v d="$down_min" 'BEGIN {
        t = 1.5 * f + 2000
        printf "%-10s %14.1f %14.1f %16.1f %14.2f %10.2f\n", "  (min)", f / 1000, d / 1000, t / 1000, d / f, d / t
    }' | tee -a "$out"
    echo "  samples (us): fork $(printf '%s\n' "${forks[@]}" | spread), downtime $(printf '%s\n' "${downs[@]}" | spread)" | tee -a "$out"
    # Each checkpoint against the fork sampled just before it (same load): median ratios.
    paired=$(for i in "${!downs[@]}"; do echo "${downs[$i]} ${forks[$i]}"; done)
    echo "  paired (each checkpoint vs the fork just before it), median: downtime/fork $(awk '{print $1 / $2}' <<<"$paired" | median | awk '{printf "%.2f", $1}'), vs target $(awk '{print $1 / (1.5 * $2 + 2000)}' <<<"$paired" | median | awk '{printf "%.2f", $1}')" | tee -a "$out"
    # For comparison: the same program with stop-the-world writing (CR_FORKED=0), stopped
    # until its image is durable.
    rm -rf "$d" "$work/ckpt"; mkdir -p "$d"
    CR_FORKED=0 "$bin/crlaunch" --ckpt-dir "$work/ckpt" -- "$work/forkhog" "$mib" hold "$d" >/dev/null 2>>"$work/forkhog.err" &
    prog_pid=$!
    wait_file "$d/ready"
    for _ in $(seq 500); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge 1 ] && break; sleep 0.02; done
    stw=()
    for _ in 1 2 3; do
        gen=$("$bin/crctl" checkpoint --wait 2>/dev/null | tail -1)
        stw+=("$(grep -o '"downtime_us": *[0-9]*' "$gen/manifest.json" | head -1 | grep -o '[0-9]*$')")
    done
    kill -9 "$prog_pid"; wait "$prog_pid" 2>/dev/null || true; prog_pid=""
    echo "  stop-the-world (CR_FORKED=0) downtime, median of 3: $(printf '%s\n' "${stw[@]}" | median | awk '{printf "%.1f ms", $1 / 1000}')" | tee -a "$out"
done
rm -rf "$work/ckpt" "$work/hold"
echo "(vs target: downtime / (1.5 x fork + 2 ms); <= 1.00 meets the target)" | tee -a "$out"
