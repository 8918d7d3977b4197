#!/bin/bash
# Bash probe: only builtins, never a fork (no command substitution, no pipes, no external
# commands), so the checkpointed process is this one bash process.
#
# It builds indexed and associative arrays from a seeded $RANDOM, keeps fd 4 open on a
# file it reads a line at a time, and passes three gates with a builtin-only busy-wait
# loop. Exit status 23 when all is well. Gating protocol: tests/probes/gate.h (here
# reached-K is a regular file made with a redirection; the harness waits until no
# process holds a gate file open before it checkpoints).
set -u

gate() {
    local k=$1
    echo "gate $k"
    [[ -n ${CR_TEST_GATE:-} ]] || return 0
    local reached="$CR_TEST_GATE/reached-$k" go="$CR_TEST_GATE/go-$k"
    : >"$reached"
    until [[ -e $go ]]; do
        [[ -e $reached ]] || : >"$reached"
    done
}

RANDOM=12345
declare -a nums=()
declare -A squares=()
for ((i = 0; i < 3000; i++)); do
    nums+=($RANDOM)
    squares[k$i]=$((i * i))
done

sum() {
    local -n arr=$1
    local s=0 v
    for v in "${arr[@]}"; do ((s += v)); done
    printf -v "$2" '%d' "$s"
}

sum nums total
echo "nums: ${#nums[@]} total $total first ${nums[0]} last ${nums[-1]}"
echo "squares: ${#squares[@]} k1234=${squares[k1234]}"

for ((i = 1; i <= 20; i++)); do
    printf 'input line %02d\n' "$i"
done >bash-input.txt
exec 4<bash-input.txt
read -r line <&4
echo "read before gate 1: $line"

text="The quick brown fox jumps over the lazy dog"
words=($text)

gate 1

read -r line <&4
echo "read after gate 1: $line"
for ((i = 0; i < 1000; i++)); do nums[i]=$((nums[i] ^ i)); done
sum nums total
echo "nums after xor: total $total"
echo "upper: ${text^^} words: ${#words[@]} replaced: ${text//o/0}"

gate 2

read -r line <&4
echo "read after gate 2: $line"
fib() {
    local n=$1 a=0 b=1 t
    for ((t = 0; t < n; t++)); do ((b += a, a = b - a)); done
    echo "fib($n) = $a"
}
fib 80
next=$RANDOM
echo "next random: $next"
keys=0
for k in "${!squares[@]}"; do ((keys += ${#k})); done
echo "key characters: $keys"

gate 3
exec 4<&-
echo done
exit 23
