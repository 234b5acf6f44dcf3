/* tq_bench_common.c - what both benchmarks share: the machine they state
   and the median they quote. */
#include "tq_bench_common.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zmq.h>

#include "tq/tq.h"

void
tq_bench_print_machine(void)
{
    char model[256] = "unknown";
    FILE *file = fopen("/proc/cpuinfo", "re");
    if (file) {
        char line[512];
        while (fgets(line, sizeof line, file)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *colon = strchr(line, ':');
                if (colon) {
                    snprintf(model, sizeof model, "%s", colon + 2);
                    model[strcspn(model, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(file);
    }
    struct utsname uts;
    memset(&uts, 0, sizeof uts);
    uname(&uts);
    int major = 0, minor = 0, patch = 0;
    zmq_version(&major, &minor, &patch);
    printf("machine: %s\n", model);
    printf("cpus:    %ld online\n", sysconf(_SC_NPROCESSORS_ONLN));
    printf("kernel:  %s %s %s\n", uts.sysname, uts.release, uts.machine);
    printf("libzmq:  %d.%d.%d, libtq %d.%d.%d\n", major, minor, patch,
           TQ_VERSION_MAJOR, TQ_VERSION_MINOR, TQ_VERSION_PATCH);
}

void
tq_bench_print_load(const char *when)
{
    double load[3] = {-1, -1, -1};
    FILE *file = fopen("/proc/loadavg", "re");
    if (file) {
        if (fscanf(file, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = load[1] = load[2] = -1;
        fclose(file);
    }
    printf("load:    %.2f %.2f %.2f (1, 5, 15 min; %s)\n", load[0], load[1],
           load[2], when);
    fflush(stdout);
}

const char *
tq_bench_python(void)
{
    return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3"
                                                 : "python3";
}

int
tq_bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double
tq_bench_median(const double *values, int n)
{
    assert(n >= 1 && n <= TQ_BENCH_MAX_RUNS);
    double sorted[TQ_BENCH_MAX_RUNS];
    memcpy(sorted, values, (size_t)n * sizeof *values);
    qsort(sorted, (size_t)n, sizeof *sorted, tq_bench_cmp_double);
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}
