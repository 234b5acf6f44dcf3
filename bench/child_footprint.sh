#!/bin/sh
# child_footprint.sh - what one worker child costs in memory (issue 12):
# for `tq-worker -c N` against a running broker, each child's RSS, PSS and
# USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup), its page
# tables (VmPTE), threads and private address space (VmData), and the
# supervisor's: with every child idle and new ("idle"), idle after 300
# tq.echo tasks each on average ("work"), running a task (tq.sleep,
# "busy"), then the same with respawned children ("resp": the first ones
# killed, their tasks run again on the new ones).
#
# RSS counts the shared libraries' pages once per process (libzmq, libc,
# libstdc++...: ~5 MB that 1,000 children share): summing it over the
# children counts them 1,000 times. USS is what one more child adds in
# user memory; PSS shares the rest among the processes that map it (other
# programs on the machine included, so it moves with them); VmPTE and the
# kernel stacks (16 KiB a thread on x86-64) are the kernel's part.
#
# Usage: bench/child_footprint.sh [BUILD_DIR] [N...]  (default: build 10 100
# 1000). TQ_FOOTPRINT_ARGS adds tq-worker flags (e.g. "--prefetch 16");
# TQ_FOOTPRINT_TASKS: tq.echo tasks per child before the "work" row
# (default 300).
# Starts its own broker on 127.0.0.1:* and stops what it started by pid.
# A benchmark, not a test: the figures depend on the machine.
set -eu
BUILD=${1:-build}
[ $# -gt 0 ] && shift
COUNTS=${*:-10 100 1000}
EXTRA=${TQ_FOOTPRINT_ARGS:-}
TASKS=${TQ_FOOTPRINT_TASKS:-300}
NAME=child_footprint
. "$(dirname "$0")/tq_bench_lib.sh"
tq_bench_broker

# count PATTERN: how many of the broker's workers match PATTERN
count()
{
    "$TQ" workers --json --timeout 5 2>/dev/null | tr '{' '\n' | grep -c "$1" || true
}

# wait_for PATTERN N WHAT: until N workers match, bounded (1 s per 10)
wait_for()
{
    i=0
    limit=$(( $2 * 2 + 300 ))
    while [ "$(count "$1")" -lt "$2" ]; do
        i=$((i + 1))
        [ $i -lt $limit ] || { echo "child_footprint: $3 did not happen" >&2; exit 1; }
        sleep 0.2
    done
}

# sample PID: "rss pss uss pte threads vmdata" in KiB (threads a count)
sample()
{
    awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 }
         /^Private_(Clean|Dirty):/ { u += $2 }
         END { printf "%d %d %d", r, p, u }' "/proc/$1/smaps_rollup"
    awk '/^VmPTE:/ { p = $2 } /^Threads:/ { t = $2 } /^VmData:/ { d = $2 }
         END { printf " %d %d %d\n", p, t, d }' "/proc/$1/status"
}

# report N PHASE SUPERVISOR: one line for the children, one for the
# supervisor
report()
{
    : > "$DIR/kids"
    for kid in $(pgrep -P "$3"); do
        # a task's own processes (none with tq.sleep) would be its children
        sample "$kid" >> "$DIR/kids" 2>/dev/null || true
    done
    sup=$(sample "$3")
    # the median of each column (mawk has no asort)
    meds=
    for c in 1 2 3 4 5 6; do
        meds="$meds $(cut -d' ' -f$c "$DIR/kids" | sort -n |
            awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
    done
    awk -v n="$1" -v phase="$2" -v sup="$sup" -v meds="$meds" '
        { s1 += $1; s2 += $2; s6 += $6
          if (NR == 1 || $5 < tmin) tmin = $5
          if (NR == 1 || $5 > tmax) tmax = $5 }
        END {
            split(sup, S, " ")
            split(meds, m, " ")
            printf "%5d %-4s %5d %6.0f %5.0f %5.0f %4.0f %3s %5.0f %6.0f  %7.0f %6.0f %7.2f  %6d %5d %5d %3d\n",
                n, phase, NR, m[1], m[2], m[3], m[4],
                tmin == tmax ? tmin : tmin "-" tmax,
                m[3] + m[4] + 16 * m[5], m[6], s1 / 1024, s2 / 1024,
                s6 / 1048576, S[1], S[2], S[3], S[5]
        }' "$DIR/kids"
}

echo "tq-worker -c N $EXTRA: per child (medians, KiB): RSS, PSS, USS, page"
echo "tables, threads, +kern = USS + PTE + 16 KiB of kernel stack a thread,"
echo "VmData (private writable address space, what strict overcommit"
echo "charges); over all children: RSS and PSS (MiB), VmData (GiB); the"
echo "supervisor (KiB). $(uname -r), $(nproc) CPU, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "    N phase kids    RSS   PSS   USS  PTE thr +kern VmData  sumRSS sumPSS sumData  supRSS supPSS supUSS thr"
for n in $COUNTS; do
    # shellcheck disable=SC2086
    "$WORKER" --broker "$WEP" -c "$n" --shutdown-timeout 1 $EXTRA \
        2> "$DIR/worker.err" &
    W=$!
    PIDS="$PIDS $W"
    wait_for '"busy":false' "$n" "$n children announcing themselves"
    report "$n" idle "$W"
    # ZeroMQ fills its pipes' chunks (256 messages each) as messages pass:
    # a child that worked a while holds more than a fresh one
    if ! seq $((n * TASKS)) | timeout $((60 + n * TASKS / 500)) \
        "$TQ" map tq.echo --no-progress > /dev/null 2> "$DIR/map.err"; then
        echo "child_footprint: tq map of $((n * TASKS)) tq.echo did not" \
            "finish: the work row may hold fewer tasks per child" >&2
    fi
    report "$n" work "$W"
    # one task each, long enough to be measured running
    seq "$n" | sed 's/.*/[120]/' > "$DIR/lines"
    "$TQ" map tq.sleep -j "$n" --no-progress < "$DIR/lines" > /dev/null \
        2> "$DIR/map.err" &
    M=$!
    PIDS="$PIDS $M"
    wait_for '"busy":true' "$n" "$n children busy"
    report "$n" busy "$W"
    # respawned children, forked after the supervisor made its context
    # (as --max-tasks-per-child makes them): the first ones killed, their
    # tasks run again on the new ones
    old=$(pgrep -P "$W" | tr '\n' ' ')
    # shellcheck disable=SC2086
    kill -9 $old
    for pid in $old; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
    wait_for '"busy":true' "$n" "$n respawned children busy"
    report "$n" resp "$W"
    kill "$M" 2>/dev/null || true
    kill "$W"
    while kill -0 "$W" 2>/dev/null; do sleep 0.1; done
    wait "$W" 2>/dev/null || true
    wait "$M" 2>/dev/null || true
    # the broker forgets the host's children, then its tasks, before the
    # next N
    while [ "$(count '"pid"')" -gt 0 ]; do sleep 0.2; done
    "$TQ" purge default > /dev/null 2>&1 || true
done
