#!/usr/bin/env bash
# crust benchmarks: builds release binaries, runs every benchmark, prints a table.
#
#   bench/run.sh [--full] [--sizes "MIB ..."] [--reps N] [--dir DIR]
#
# Default sizes are small (256 MiB images) so the whole run takes a few minutes on a
# laptop; --full uses 1 GiB and 4 GiB (--sizes picks others). Every number is compared with a baseline measured in
# the same run on the same machine (dd on the same filesystem, the program without crust).
# Checkpoints go to DIR (default: bench/work, on the filesystem being measured).
# Results are printed as a table and kept in DIR/results.txt. See BENCHMARKS.md.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
full=0
reps=3
sizes_opt=""
work="$here/work"
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1 ;;
        --reps) reps="$2"; shift ;;
        --sizes) sizes_opt="$2"; shift ;;
        --dir) work="$2"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$full" = 1 ]; then sizes="1024 4096"; else sizes="256"; fi
[ -n "${sizes_opt:-}" ] && sizes="$sizes_opt"

echo "== building (release)" >&2
(cd "$root" && cargo build --release --workspace --quiet && cargo build --release -p crust-format --example codec_bench --quiet)
bin="$root/target/release"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
out="$work/results.txt"
: > "$out"
cc=${CC:-gcc}
for p in memhog syscalls compute idle readfresh; do
    "$cc" -O2 -o "$work/$p" "$here/$p.c"
done
export CR_LOG=warn

port=$((20000 + RANDOM % 20000))
coord="127.0.0.1:$port"
export CR_COORD="$coord"
coord_pid=""
start_coord() {
    # A random port can be taken: try a few.
    for _ in 1 2 3 4 5; do
        "$bin/crcoord" --port "$port" --ckpt-dir "$work/ckpt" "$@" >"$work/crcoord.log" 2>&1 &
        coord_pid=$!
        for _ in $(seq 200); do
            "$bin/crctl" status >/dev/null 2>&1 && return 0
            kill -0 "$coord_pid" 2>/dev/null || break
            sleep 0.05
        done
        wait "$coord_pid" 2>/dev/null || true
        port=$((20000 + RANDOM % 20000)); coord="127.0.0.1:$port"; export CR_COORD="$coord"
    done
    echo "crcoord did not start: $(cat "$work/crcoord.log")" >&2; exit 1
}
stop_coord() {
    [ -n "$coord_pid" ] || return 0
    "$bin/crctl" quit >/dev/null 2>&1 || true
    wait "$coord_pid" 2>/dev/null || true
    coord_pid=""
}
cleanup() {
    stop_coord
    [ -n "${prog_pid:-}" ] && kill -9 "$prog_pid" 2>/dev/null || true
}
trap cleanup EXIT

now_ns() { date +%s%N; }
row() { printf '%-58s %16s %16s %10s\n' "$1" "$2" "$3" "$4" | tee -a "$out"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
spread() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%s..%s", lo, hi}'; }
wait_file() { for _ in $(seq 6000); do [ -e "$1" ] && return 0; sleep 0.01; done; echo "timeout waiting for $1" >&2; return 1; }
mbps() { awk -v b="$1" -v ns="$2" 'BEGIN { printf "%.0f", b / (ns / 1e9) / 1e6 }'; }

# Stop-the-world writing (the program stays stopped while its image is written): what the
# throughput benchmark measures. Forked writing is measured by bench/downtime.sh.
stw_flag=""
if "$bin/crcoord" --help 2>&1 | grep -q -- "--no-forked"; then stw_flag="--no-forked"; fi

echo "== machine" | tee -a "$out"
{ uname -srm; lscpu | grep -E "Model name|^CPU\(s\)|Thread|MHz" | sed 's/  */ /g'; free -g | head -2; df -hT "$work" | tail -1; date -u; } | tee -a "$out"
echo | tee -a "$out"
printf '%-58s %16s %16s %10s\n' "benchmark" "crust" "baseline" "ratio" | tee -a "$out"

# ---------------------------------------------------------------- checkpoint and restart
start_coord $stw_flag
for mib in $sizes; do
    bytes=$((mib << 20))
    for kind in random; do
        w_ns=(); w_pc=(); d_ns=(); mapped=(); mapped_touch=(); eager=(); eager_cold=(); eager_cold_pc=(); ddr=(); ddr_cold=(); fresh=(); loads=()
        for rep in $(seq "$reps"); do
            loads+=("$(cut -d' ' -f1 /proc/loadavg)")
            # The same checkpoint through the page cache (CR_DIRECT_IO=0: how images were
            # written before O_DIRECT), for comparison in the same run.
            d="$work/hog"; rm -rf "$d" "$work/ckpt"; mkdir -p "$d"
            CR_DIRECT_IO=0 "$bin/crlaunch" --ckpt-dir "$work/ckpt" $stw_flag -- "$work/memhog" "$mib" "$kind" "$d" >/dev/null 2>"$work/memhog.err" &
            prog_pid=$!
            wait_file "$d/ready"
            for _ in $(seq 500); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge 1 ] && break; sleep 0.02; done
            t0=$(now_ns); "$bin/crctl" checkpoint --wait >/dev/null 2>&1; t1=$(now_ns)
            w_pc+=($((t1 - t0)))
            kill -9 "$prog_pid"; wait "$prog_pid" 2>/dev/null || true; prog_pid=""
            # dd writing the same number of bytes to the same filesystem, fsync included:
            # once before and once after each checkpoint (a shared disk's speed drifts).
            t0=$(now_ns); dd if=/dev/zero of="$work/dd.out" bs=4M count=$((mib / 4)) conv=fsync status=none; t1=$(now_ns)
            d_ns+=($((t1 - t0))); rm -f "$work/dd.out"
            d="$work/hog"; rm -rf "$d" "$work/ckpt"; mkdir -p "$d"
            "$bin/crlaunch" --ckpt-dir "$work/ckpt" $stw_flag -- "$work/memhog" "$mib" "$kind" "$d" >/dev/null 2>"$work/memhog.err" &
            prog_pid=$!
            wait_file "$d/ready"
            for _ in $(seq 500); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge 1 ] && break; sleep 0.02; done
            t0=$(now_ns)
            gen=$("$bin/crctl" checkpoint --wait 2>/dev/null | tail -1)
            t1=$(now_ns)
            w_ns+=($((t1 - t0)))
            img=$(ls "$gen"/proc-*.crimg | head -1)
            kill -9 "$prog_pid"; wait "$prog_pid" 2>/dev/null || true; prog_pid=""
            # dd writing the same number of bytes to the same filesystem, fsync included.
            t0=$(now_ns); dd if=/dev/zero of="$work/dd.out" bs=4M count=$((mib / 4)) conv=fsync status=none; t1=$(now_ns)
            d_ns+=($((t1 - t0))); rm -f "$work/dd.out"
            # Restart: mapped (default); eager with the image in the page cache (read in
            # first: written with O_DIRECT, it is not cached); eager with the image's pages
            # dropped from the cache (O_DIRECT reads, the default for a cold image), and
            # the same through the page cache (--direct-reads never).
            # The cold read baseline once before the restarts and once after (the shared
            # virtual disk's read rate drifts as much as its write rate).
            dd if="$img" iflag=nocache count=0 status=none
            t0=$(now_ns); dd if="$img" of=/dev/null bs=4M status=none; t1=$(now_ns); ddr_cold+=($((t1 - t0)))
            for mode in mapped eager eagercold eagercoldpc; do
                rm -f "$d/resumed" "$d/touched"; touch "$d/go"
                flag=""
                case $mode in eager | eagercold) flag="--eager" ;; eagercoldpc) flag="--eager --direct-reads never" ;; esac
                [ "$mode" = eager ] && cat "$img" >/dev/null
                case $mode in eagercold*) dd if="$img" iflag=nocache count=0 status=none ;; esac
                t0=$(now_ns)
                "$bin/crrestart" $flag "$gen" >/dev/null 2>"$work/restart.err" &
                rp=$!
                wait_file "$d/touched"; wait "$rp" 2>/dev/null || true
                r=$(cat "$d/resumed"); tt=$(cut -d' ' -f1 "$d/touched")
                case $mode in
                    mapped) mapped+=($(( (r - t0) / 1000 ))); mapped_touch+=($(( (tt - t0) / 1000 ))) ;;
                    eager) eager+=($(( (r - t0) / 1000 ))) ;;
                    eagercold) eager_cold+=($(( (r - t0) / 1000 ))) ;;
                    eagercoldpc) eager_cold_pc+=($(( (r - t0) / 1000 ))) ;;
                esac
                rm -f "$d/go"
            done
            # The filesystem's read bandwidth for the image: warm cache, and cold (the file's
            # pages dropped from the cache with dd iflag=nocache first).
            t0=$(now_ns); dd if="$img" of=/dev/null bs=4M status=none; t1=$(now_ns); ddr+=($((t1 - t0)))
            fresh+=($("$work/readfresh" "$img"))
            dd if="$img" iflag=nocache count=0 status=none
            t0=$(now_ns); dd if="$img" of=/dev/null bs=4M status=none; t1=$(now_ns); ddr_cold+=($((t1 - t0)))
        done
        w=$(printf '%s\n' "${w_ns[@]}" | median); dd_w=$(printf '%s\n' "${d_ns[@]}" | median)
        wpc=$(printf '%s\n' "${w_pc[@]}" | median)
        row "load average (1 min) at each rep" "${loads[*]}" "" ""
        row "checkpoint ${mib} MiB ($kind), stop-the-world, MB/s" "$(mbps $bytes "$w")" "$(mbps $bytes "$dd_w") dd" \
            "$(awk -v a="$dd_w" -v b="$w" 'BEGIN{printf "%.2f", a/b}')"
        row "  through the page cache (CR_DIRECT_IO=0), MB/s" "$(mbps $bytes "$wpc")" "$(mbps $bytes "$dd_w") dd" \
            "$(awk -v a="$dd_w" -v b="$wpc" 'BEGIN{printf "%.2f", a/b}')"
        row "  spread (ms): crctl checkpoint --wait / dd conv=fsync" "$(printf '%s\n' "${w_ns[@]}" | awk '{print int($1/1e6)}' | spread)" \
            "$(printf '%s\n' "${d_ns[@]}" | awk '{print int($1/1e6)}' | spread)" ""
        row "  spread (ms): page cache (CR_DIRECT_IO=0)" "$(printf '%s\n' "${w_pc[@]}" | awk '{print int($1/1e6)}' | spread)" "" ""
        m=$(printf '%s\n' "${mapped[@]}" | median); mt=$(printf '%s\n' "${mapped_touch[@]}" | median)
        e=$(printf '%s\n' "${eager[@]}" | median); ec=$(printf '%s\n' "${eager_cold[@]}" | median)
        ecp=$(printf '%s\n' "${eager_cold_pc[@]}" | median)
        rw=$(printf '%s\n' "${ddr[@]}" | median); rc=$(printf '%s\n' "${ddr_cold[@]}" | median)
        row "restart ${mib} MiB mapped: crrestart → program runs, ms" "$((m / 1000))" "50 target" \
            "$(printf '%s\n' "${mapped[@]}" | awk '{print int($1/1000)}' | spread)"
        row "  mapped, until the program read all its memory, ms" "$((mt / 1000))" "" ""
        row "restart ${mib} MiB eager, warm cache: → program runs, MB/s" "$(mbps $bytes $((e * 1000)))" "$(mbps $bytes "$rw") dd warm" \
            "$(awk -v a="$rw" -v b="$((e * 1000))" 'BEGIN{printf "%.2f", a/b}')"
        fr=$(printf '%s\n' "${fresh[@]}" | median)
        row "  eager warm vs reading the image into fresh memory" "" "$(mbps $bytes "$fr") readfresh" \
            "$(awk -v a="$fr" -v b="$((e * 1000))" 'BEGIN{printf "%.2f", a/b}')"
        row "restart ${mib} MiB eager, cold cache: → program runs, MB/s" "$(mbps $bytes $((ec * 1000)))" "$(mbps $bytes "$rc") dd cold" \
            "$(awk -v a="$rc" -v b="$((ec * 1000))" 'BEGIN{printf "%.2f", a/b}')"
 row "  eager cold through the page cache (--direct-reads never)" "$(mbps $bytes $((ecp * 1000)))" "$(mbps $bytes "$rc") dd cold" \
            "$(awk -v a="$rc" -v b="$((ecp * 1000))" 'BEGIN{printf "%.2f", a/b}')"
        row "  spread (ms): eager warm / eager cold" "$(printf '%s\n' "${eager[@]}" | awk '{print int($1/1000)}' | spread)" \
            "$(printf '%s\n' "${eager_cold[@]}" | awk '{print int($1/1000)}' | spread)" ""
        row "  spread (ms): dd warm / dd cold" "$(printf '%s\n' "${ddr[@]}" | awk '{print int($1/1e6)}' | spread)" \
            "$(printf '%s\n' "${ddr_cold[@]}" | awk '{print int($1/1e6)}' | spread)" ""
    done
done

# Compressed checkpoints of mixed memory, end to end.
mib=$(echo "$sizes" | awk '{print $1}')
for c in zstd lz4; do
    ts=(); sz=0
    for rep in $(seq "$reps"); do
        d="$work/hog"; rm -rf "$d" "$work/ckpt"; mkdir -p "$d"
        "$bin/crlaunch" --ckpt-dir "$work/ckpt" $stw_flag --compress "$c" -- "$work/memhog" "$mib" mixed "$d" >/dev/null 2>>"$work/memhog.err" &
        prog_pid=$!
        wait_file "$d/ready"
        for _ in $(seq 500); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge 1 ] && break; sleep 0.02; done
        t0=$(now_ns); gen=$("$bin/crctl" checkpoint --wait 2>/dev/null | tail -1); t1=$(now_ns)
        ts+=($((t1 - t0))); sz=$(stat -c %s "$gen"/proc-*.crimg | head -1)
        kill -9 "$prog_pid"; wait "$prog_pid" 2>/dev/null || true; prog_pid=""
    done
    t=$(printf '%s\n' "${ts[@]}" | median)
    row "checkpoint ${mib} MiB (mixed) --compress $c, MB/s of memory" "$(mbps $((mib << 20)) "$t")" "$((mib << 20)) B" \
        "$(awk -v a=$((mib << 20)) -v b="$sz" 'BEGIN{printf "%.2fx", a/b}')"
done
stop_coord

# ---------------------------------------------------------------- codecs
echo | tee -a "$out"
echo "== compression on one core (1 MiB chunks as in images; best of 3)" | tee -a "$out"
"$root/target/release/examples/codec_bench" 64 | tee -a "$out"
echo | tee -a "$out"

# ---------------------------------------------------------------- preload overhead
start_coord
bench_prog() { # name args... -> median of reps, plain and under crlaunch (prints "plain crust")
    local a=() b=()
    for rep in $(seq "$reps"); do
        a+=($("$@" 2>/dev/null))
        b+=($("$bin/crlaunch" --ckpt-dir "$work/ckpt" -- "$@" 2>/dev/null))
    done
    echo "$(printf '%s\n' "${a[@]}" | median) $(printf '%s\n' "${b[@]}" | median) $(printf '%s\n' "${a[@]}" | spread) $(printf '%s\n' "${b[@]}" | spread)"
}
for t in "getpid 2000000" "openclose 200000" "forkwait 300"; do
    read -r plain crust sp sc <<<"$(bench_prog "$work/syscalls" $t)"
    row "syscalls ${t%% *}, ns/op (crust vs plain; CPU time but forkwait)" "$crust" "$plain" "$(awk -v a="$crust" -v b="$plain" 'BEGIN{printf "%.2f", a/b}')"
    row "  spread" "$sc" "$sp" ""
done
read -r plain crust sp sc <<<"$(bench_prog "$work/compute" 300000000)"
row "compute-bound loop, CPU ms (crust vs plain)" "$crust" "$plain" "$(awk -v a="$crust" -v b="$plain" 'BEGIN{printf "%.3f", a/b}')"
row "  spread" "$sc" "$sp" ""

# ---------------------------------------------------------------- resident memory
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
"$work/idle" & p1=$!
"$bin/crlaunch" --ckpt-dir "$work/ckpt" -- "$work/idle" & p2=$!
for _ in $(seq 500); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge 1 ] && break; sleep 0.02; done
sleep 0.3
row "resident memory of a process, KiB (RSS; crust vs plain)" "$(rss_kb $p2)" "$(rss_kb $p1)" "+$(( $(rss_kb $p2) - $(rss_kb $p1) ))"
row "  proportional (PSS), KiB" "$(pss_kb $p2)" "$(pss_kb $p1)" "+$(( $(pss_kb $p2) - $(pss_kb $p1) ))"
kill -9 $p1 $p2 2>/dev/null; wait $p1 $p2 2>/dev/null || true
stop_coord
start_coord
c0=$(rss_kb "$coord_pid"); pids=()
n=50
for i in $(seq $n); do "$bin/crlaunch" --ckpt-dir "$work/ckpt" -- "$work/idle" & pids+=($!); done
for _ in $(seq 1000); do [ "$("$bin/crctl" status --json 2>/dev/null | grep -c '"vpid"')" -ge $n ] && break; sleep 0.05; done
sleep 0.3
c1=$(rss_kb "$coord_pid")
row "crcoord resident memory: idle / with $n processes, KiB" "$c1" "$c0" "$(( (c1 - c0) / n )) per proc"
kill -9 "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
stop_coord

# ---------------------------------------------------------------- downtime (forked mode)
if [ -x "$here/downtime.sh" ]; then
    echo | tee -a "$out"
    echo "== bench/downtime.sh" | tee -a "$out"
    if [ "$full" = 1 ]; then "$here/downtime.sh" --full | tee -a "$out"; else "$here/downtime.sh" | tee -a "$out"; fi
fi
echo | tee -a "$out"
echo "results: $out" >&2
