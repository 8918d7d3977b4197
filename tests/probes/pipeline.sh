# Run by `bash -c "$(cat pipeline.sh)" pipeline GATE_AT`: a four-stage pipeline with data
# in flight at gate 1.
#
# The producer (a bash subshell) writes 300 records, passes gate 1 (the `gate_at` probe,
# whose "gate 1" line flows down the pipeline too), then 300 more. `sed` rewrites every
# record, `tr` upper-cases it, and the consumer (another subshell) numbers the lines and
# keeps a running checksum. When gated, the consumer reads one line and then waits for
# the harness to release gate 1 before reading on, so at the checkpoint the records sit
# in the pipes between the stages. Exit status 23 when the consumer saw every record.
set -u
gate_at=$1

producer() {
    local i
    for ((i = 1; i <= 300; i++)); do printf 'record %04d of the first half\n' "$i"; done
    "$gate_at" 1
    for ((i = 301; i <= 600; i++)); do printf 'record %04d of the second half\n' "$i"; done
    "$gate_at" 2
}

consumer() {
    local n=0 sum=0 line held=0
    while IFS= read -r line; do
        if ((held == 0)) && [[ -n ${CR_TEST_GATE:-} ]]; then
            held=1
            until [[ -e $CR_TEST_GATE/go-1 ]]; do :; done
        fi
        ((n += 1))
        for ((k = 0; k < ${#line}; k++)); do
            printf -v c '%d' "'${line:k:1}"
            ((sum = (sum * 31 + c) % 1000000007))
        done
        case $line in
            GATE*) echo "${line,,}" ;;
            *) ((n % 50 == 0)) && echo "line $n: $line (checksum $sum)" ;;
        esac
    done
    echo "consumer: $n lines, checksum $sum"
    ((n == 602))
}

producer | sed -e 's/record/rec/' -e 's/ of the / /' | tr 'a-z' 'A-Z' | consumer
status=$?
"$gate_at" 3
[[ $status == 0 ]] && exit 23
exit 1
