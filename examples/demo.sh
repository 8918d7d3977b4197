#!/usr/bin/env bash
# The crust demo: build, run a program under crlaunch, checkpoint it, kill it with
# SIGKILL, restart it from the image, and compare with an uninterrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --quiet
bin=target/debug
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O1 -pthread -o "$work/counter" examples/counter.c
coord=127.0.0.1:$((20000 + RANDOM % 10000))

echo "== reference run (no crust)"
"$work/counter" > "$work/reference.txt"

echo "== crlaunch ./counter"
# The program's stdout and stderr go to files of its own: a restart puts a file the
# program was writing back to its checkpoint-time size, which must not cut this script's log.
"$bin/crlaunch" --coord "$coord" --ckpt-dir "$work" -- "$work/counter" > "$work/out.txt" 2> "$work/err.txt" &
pid=$!
until grep -q "step  3" "$work/out.txt" 2>/dev/null; do sleep 0.05; done
until "$bin/crctl" --coord "$coord" status | grep -q counter; do sleep 0.05; done

echo "== crctl checkpoint --wait"
gen=$("$bin/crctl" --coord "$coord" checkpoint --wait | tail -1)
echo "   generation: $gen"
until grep -q "step  8" "$work/out.txt"; do sleep 0.05; done

echo "== kill -9 $pid"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true

echo "== crrestart $gen"
"$bin/crrestart" --coord "$coord" "$gen"
echo "== restarted program exited with status $?"
if cmp -s "$work/reference.txt" "$work/out.txt"; then
    echo "OK: output after checkpoint, kill -9 and restart is identical to the uninterrupted run"
else
    diff "$work/reference.txt" "$work/out.txt" || true
    echo "FAIL: outputs differ"; exit 1
fi
"$bin/crctl" --coord "$coord" quit >/dev/null 2>&1 || true
