/* tq_bench_common.h - what both benchmarks share: the machine they state
   and the median they quote. */
#ifndef TQ_BENCH_COMMON_H
#define TQ_BENCH_COMMON_H

/* Runs a benchmark may ask for: medians sort a copy on the stack. */
#define TQ_BENCH_MAX_RUNS 15

/* Prints the machine: CPU model (/proc/cpuinfo), online CPUs, kernel, and
   the libzmq and libtq versions, one "name: value" line each. */
void tq_bench_print_machine(void);

/* qsort comparison of two doubles, ascending. */
int tq_bench_cmp_double(const void *a, const void *b);

/* Median of values[0..n), 1 <= n <= TQ_BENCH_MAX_RUNS; values (borrowed)
   are left in their order. */
double tq_bench_median(const double *values, int n);

#endif
