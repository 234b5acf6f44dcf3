#!/usr/bin/env bash
# demo.sh - `make demo`: the embedded pool, multiprocessing.Pool for C, with
# no broker to start and nothing to configure; then the seed examples.
# The networked demo (broker, worker host, CLI) is scripts/demo-network.sh.
set -euo pipefail
build=${1:-build}
run() { echo "\$ $*"; "$@"; }
run "$build/examples/pool_demo"
echo
echo "== seed: Pool(3) x 4 sleep tasks with apply_async (about two rounds)"
TQ_SEED_SCALE=0.3 run "$build/examples/seeds/seed_pool_apply_async"
echo
echo "== seed: the same with apply (about four rounds)"
TQ_SEED_SCALE=0.3 run "$build/examples/seeds/seed_pool_apply"
echo
echo "== seed: producer/consumer, 5 x 1,000 items, 5 consumers"
run "$build/examples/seeds/seed_producer_consumer" | tail -n 2
