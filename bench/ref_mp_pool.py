#!/usr/bin/env python3
"""ref_mp_pool.py - Python's multiprocessing.Pool(2), the reference for
tq's embedded pool in tq-bench and tq-bench-pool.

usage: ref_mp_pool.py TASKS SEQ
One apply to start the pool, then W1 (TASKS no-op apply_async, all
awaited: tasks/s) and W2 (SEQ sequential apply: p50 and p99 in us).
Prints "w1 p50 p99" on one line."""
import multiprocessing as mp
import sys
import time


def noop():
    return None


def main():
    tasks, seq = int(sys.argv[1]), int(sys.argv[2])
    with mp.Pool(2) as pool:
        pool.apply(noop)
        t = time.monotonic()
        results = [pool.apply_async(noop) for _ in range(tasks)]
        for r in results:
            r.get()
        w1 = tasks / (time.monotonic() - t)
        lat = []
        for _ in range(seq):
            t = time.monotonic()
            pool.apply(noop)
            lat.append((time.monotonic() - t) * 1e6)
        lat.sort()
        print(f"{w1:.0f} {lat[len(lat) // 2]:.1f} {lat[len(lat) * 99 // 100]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main()
