# tq_bench_lib.sh - what the bench scripts share; sourced, with NAME (the
# script's name, for messages and the temporary directory) and BUILD set.
# Sets BROKER, WORKER and TQ (the binaries, which must be built), DIR (a
# temporary directory, removed at exit) and PIDS (what the script started:
# stopped by pid at exit, SIGKILL after 10 s). tq_bench_broker starts a
# tq-broker on 127.0.0.1:* without a store: BPID, TQ_BROKER (exported) and
# WEP (its workers' endpoint).
BROKER="$BUILD/broker/tq-broker"
WORKER="$BUILD/worker/tq-worker"
TQ="$BUILD/client/tq"
for bin in "$BROKER" "$WORKER" "$TQ"; do
    [ -x "$bin" ] || { echo "$NAME: $bin missing (build first)" >&2; exit 2; }
done
DIR=$(mktemp -d "/tmp/$NAME.XXXXXX")
PIDS=
cleanup()
{
    for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
    for pid in $PIDS; do
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

tq_bench_broker()
{
    "$BROKER" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
        --no-persist > "$DIR/broker.out" 2> "$DIR/broker.err" &
    BPID=$!
    PIDS="$PIDS $BPID"
    i=0
    while ! grep -q 'clients' "$DIR/broker.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 200 ] || { echo "broker did not start" >&2; exit 1; }
        sleep 0.05
    done
    TQ_BROKER=$(sed -n 's/.*clients \(tcp[^ ]*\) workers.*/\1/p' "$DIR/broker.out")
    export TQ_BROKER
    WEP=$(sed -n 's/.*workers \(tcp[^ ]*\).*/\1/p' "$DIR/broker.out")
}
