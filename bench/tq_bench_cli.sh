#!/bin/sh
# tq_bench_cli.sh - benchmarks of the tq command: `tq map` lines/s with
# tq.echo, and `tq exec -j 2 gzip -k {}` over 200 files against
# `xargs -P 2` on the same files (tq's overhead as a share of wall time).
# Usage: bench/tq_bench_cli.sh [BUILD_DIR] [MAP_LINES]. Starts its own broker
# and workers on 127.0.0.1:* and stops them by pid.
set -eu
BUILD=${1:-build}
LINES=${2:-100000}
FILES=200
NAME=tq_bench_cli
. "$(dirname "$0")/tq_bench_lib.sh"

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
elapsed() { calc "$2 - $1"; }

tq_bench_broker

wait_children()
{
    # $1: worker processes STATUS must list
    i=0
    while [ "$("$TQ" workers --json --timeout 2 2>/dev/null | grep -o '"pid"' | wc -l)" -lt "$1" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "workers did not connect" >&2; exit 1; }
        sleep 0.1
    done
}

# --- tq map with tq.echo: two children, prefetch 32 ----------------------
"$WORKER" --broker "$WEP" -c 2 --prefetch 32 2> "$DIR/w1.err" &
W1=$!
PIDS="$PIDS $W1"
wait_children 2
seq "$LINES" > "$DIR/lines"
"$TQ" map tq.echo < "$DIR/lines" > /dev/null # warm-up
t0=$(now)
timeout 300 "$TQ" map tq.echo < "$DIR/lines" > "$DIR/map.out"
t1=$(now)
got=$(wc -l < "$DIR/map.out")
[ "$got" -eq "$LINES" ] || { echo "tq map: $got of $LINES lines back" >&2; exit 1; }
secs=$(elapsed "$t0" "$t1")
printf 'tq map tq.echo: %d lines in %.2f s = %.0f lines/s (target >= 20000)\n' \
    "$LINES" "$secs" "$(calc "$LINES / $secs")"
kill "$W1"
while kill -0 "$W1" 2>/dev/null; do sleep 0.1; done

# --- tq exec gzip vs xargs -P 2 ---------------------------------------------
"$WORKER" --broker "$WEP" -c 2 --allow-exec 2> "$DIR/w2.err" &
PIDS="$PIDS $!"
wait_children 2
mkdir "$DIR/files"
n=0
while [ $n -lt $FILES ]; do
    # ~1 MB, half compressible: gzip takes tens of ms per file
    { head -c 393216 /dev/urandom | base64; seq $((n * 1000)) $((n * 1000 + 40000)); } \
        > "$DIR/files/f$n"
    n=$((n + 1))
done
ls -d "$DIR"/files/f* > "$DIR/list"
best_xargs=
best_tq=
for round in 1 2 3; do
    rm -f "$DIR"/files/*.gz
    t0=$(now)
    xargs -P 2 -n 1 gzip -k -f < "$DIR/list"
    t1=$(now)
    x=$(elapsed "$t0" "$t1")
    rm -f "$DIR"/files/*.gz
    t0=$(now)
    timeout 600 "$TQ" exec -j 2 -- gzip -k -f {} < "$DIR/list"
    t1=$(now)
    q=$(elapsed "$t0" "$t1")
    [ "$(ls "$DIR"/files/*.gz | wc -l)" -eq $FILES ] || { echo "tq exec: missing .gz" >&2; exit 1; }
    printf 'round %d: xargs -P 2 %.2f s, tq exec -j 2 %.2f s\n' "$round" "$x" "$q"
    if [ -z "$best_xargs" ] || [ "$(calc "$x < $best_xargs")" = 1 ]; then best_xargs=$x; fi
    if [ -z "$best_tq" ] || [ "$(calc "$q < $best_tq")" = 1 ]; then best_tq=$q; fi
done
printf 'gzip -k of %d files: xargs -P 2 %.2f s, tq exec -j 2 %.2f s (best of 3): overhead %.1f%% (target <= 10%%)\n' \
    "$FILES" "$best_xargs" "$best_tq" \
    "$(calc "($best_tq - $best_xargs) * 100 / $best_xargs")"
