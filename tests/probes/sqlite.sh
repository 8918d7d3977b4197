#!/bin/bash
# sqlite3 probe: bash feeds SQL to a sqlite3 child through a pipe (fd 3) and follows its
# output file. Six transactions of 300 rows each; gate 1 is inside the third (BEGIN and
# its inserts executed, not committed: the rollback journal exists and is open), gate 2
# after the fifth has committed. At the end sqlite3 prints the row count, a checksum of
# the content and the integrity check, and bash prints what sqlite3 wrote.
# Gating protocol: tests/probes/gate.h.
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

# Wait until sqlite3 has written the line $1 to sqlite.out.
await() {
    local lines
    while :; do
        mapfile -t lines <sqlite.out
        [[ ${#lines[@]} -gt 0 && ${lines[-1]} == "$1" ]] && return 0
    done
}

rm -f test.db test.db-journal sqlite.out
: >sqlite.out
exec 3> >(exec sqlite3 -batch test.db >>sqlite.out)
echo "CREATE TABLE t(i INTEGER PRIMARY KEY, tx INTEGER, v TEXT);" >&3
for ((tx = 1; tx <= 6; tx++)); do
    echo "BEGIN;" >&3
    for ((j = 1; j <= 300; j++)); do
        echo "INSERT INTO t(tx, v) VALUES ($tx, 'row $tx-$j ' || printf('%.40d', $tx * 1000 + $j));" >&3
    done
    echo "UPDATE t SET v = v || ' touched by $tx' WHERE i % 7 = $tx;" >&3
    echo "SELECT 'executed $tx';" >&3
    await "executed $tx"
    if ((tx == 3)); then
        [[ -e test.db-journal ]] && echo "journal exists mid-transaction"
        gate 1
    fi
    echo "COMMIT;" >&3
    echo "SELECT 'committed $tx';" >&3
    await "committed $tx"
    ((tx == 5)) && gate 2
done
echo "SELECT count(*), sum(length(v)), sum(tx * i) FROM t;" >&3
echo "PRAGMA integrity_check;" >&3
echo "SELECT 'done';" >&3
await "done"
exec 3>&-
mapfile -t lines <sqlite.out
printf '%s\n' "${lines[@]}"
gate 3
exit 23
