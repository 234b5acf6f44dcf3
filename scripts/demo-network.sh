#!/usr/bin/env bash
# demo-network.sh - `make demo-network`: the networked tq with no setup: a
# broker and a worker host on free loopback ports, tasks submitted through
# the CLI and the example C client, results printed, every process stopped
# by pid. (`make demo` runs the embedded pool: scripts/demo.sh.)
set -euo pipefail
build=${1:-build}
bin() { echo "$build/$1"; }
broker_bin=$(bin broker/tq-broker)
worker_bin=$(bin worker/tq-worker)
cli=$(bin client/tq)
client_demo=$(bin examples/client_demo)
module=$(bin examples/libmytasks.so)

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# the store lives in the demo's temporary directory, removed at the end
"$broker_bin" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
  --data "$tmp/data" >"$tmp/broker.out" 2>"$tmp/broker.err" &
pids+=($!)
line=
for _ in $(seq 100); do
  line=$(head -n1 "$tmp/broker.out" 2>/dev/null || true)
  [ -n "$line" ] && break
  sleep 0.05
done
[ -n "$line" ] || { echo "demo: broker did not start" >&2; cat "$tmp/broker.err" >&2; exit 1; }
clients=$(echo "$line" | awk '{print $3}')
workers=$(echo "$line" | awk '{print $5}')
echo "== broker pid ${pids[0]}: clients $clients, workers $workers"

"$worker_bin" --broker "$workers" -c 2 --module "$module" \
  >"$tmp/worker.out" 2>"$tmp/worker.err" &
pids+=($!)
echo "== worker host pid ${pids[1]}: 2 children, built-ins + $(basename "$module")"
export TQ_BROKER=$clients

run() { echo "\$ $*"; "$@"; }
echo
echo "== the tq CLI"
run "$cli" submit tq.echo 42 '"hello"' '{"a":[1,2]}' --wait --timeout 10
run "$cli" submit math.add 1 2 3.5 --wait --timeout 10
run "$cli" submit math.primes 100000 --wait --timeout 10
run "$cli" submit text.wordcount "$PWD/README.md" --wait --timeout 10
echo "\$ $cli submit tq.fail 'something broke' --wait"
"$cli" submit tq.fail 'something broke' --wait --timeout 10 || echo "(exit code $?)"
id=$("$cli" submit tq.sleep 0.2)
echo "\$ $cli submit tq.sleep 0.2   -> $id"
run "$cli" get "$id" --wait --timeout 10
echo
echo "== the example C client (apply_async with callbacks, map)"
run "$client_demo" "$clients"
echo
echo "== broker status"
run "$cli" status
