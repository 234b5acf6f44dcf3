/* seed_common.h - helpers shared by the seed ports: the time scale
   (TQ_SEED_SCALE, default 1: the original's seconds) and a clock. */
#ifndef SEED_COMMON_H
#define SEED_COMMON_H

#include <stdlib.h>
#include <time.h>

/* Seconds of the original scaled by $TQ_SEED_SCALE (tests run faster). */
static inline double
seed_secs(double original)
{
    const char *s = getenv("TQ_SEED_SCALE");
    double k = s && *s ? atof(s) : 1.0;
    return original * (k > 0 ? k : 1.0);
}

/* Sleeps secs seconds. */
static inline void
seed_sleep(double secs)
{
    struct timespec ts = {(time_t)secs, (long)((secs - (time_t)secs) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Monotonic seconds. */
static inline double
seed_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif
