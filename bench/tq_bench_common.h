/* tq_bench_common.h - what both benchmarks share: the machine they state
   and the median they quote. */
#ifndef TQ_BENCH_COMMON_H
#define TQ_BENCH_COMMON_H

/* Runs a benchmark may ask for: medians sort a copy on the stack. */
#define TQ_BENCH_MAX_RUNS 15

/* Prints the machine: CPU model (/proc/cpuinfo), online CPUs, kernel, and
   the libzmq and libtq versions, one "name: value" line each. */
void tq_bench_print_machine(void);

/* Prints "load:    A B C (when)", the 1, 5 and 15 minute load averages
   from /proc/loadavg. */
void tq_bench_print_load(const char *when);

/* The python3 the benchmarks run: Debian's /usr/bin/python3 when it is
   there, else "python3" from PATH. */
const char *tq_bench_python(void);

/* qsort comparison of two doubles, ascending. */
int tq_bench_cmp_double(const void *a, const void *b);

/* Median of values[0..n), 1 <= n <= TQ_BENCH_MAX_RUNS; values (borrowed)
   are left in their order. */
double tq_bench_median(const double *values, int n);

#endif
