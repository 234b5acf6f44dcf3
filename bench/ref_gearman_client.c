/* ref_gearman_client.c - ref-gearman-client: the Gearman side of tq-bench's
   workloads, against the gearmand at 127.0.0.1 PORT with workers serving
   "echo" (ref-gearman-worker). W1: `tasks` 8-byte tasks added with
   gearman_client_add_task, then run together with gearman_client_run_tasks
   (submit all, collect all: tasks/s); W2: `seq` sequential
   gearman_client_do (p50 and p99 in us); W3: `echo` tasks of `size` bytes
   as W1 (MB/s of payload one way). Prints "w1 p50 p99 w3"; exit status 1
   if any task failed. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int tasks, seq, echo, size, port;
} s_config_t;

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static gearman_return_t
s_on_complete(gearman_task_st *task)
{
    int *done = gearman_task_context(task);
    (*done)++;
    return GEARMAN_SUCCESS;
}

/* Adds n tasks of size bytes, runs them all; returns the seconds taken. */
static double
s_stream(gearman_client_st *client, int n, int size)
{
    char *body = calloc(1, (size_t)size);
    int done = 0;
    double t0 = s_now();
    for (int i = 0; i < n; i++) {
        gearman_return_t rc;
        memcpy(body, &i, sizeof i);
        if (!gearman_client_add_task(client, NULL, &done, "echo", NULL, body,
                                     (size_t)size, &rc) ||
            rc != GEARMAN_SUCCESS) {
            fprintf(stderr, "ref-gearman-client: add_task: %s\n",
                    gearman_client_error(client));
            exit(1);
        }
    }
    gearman_return_t rc = gearman_client_run_tasks(client);
    double elapsed = s_now() - t0;
    if (rc != GEARMAN_SUCCESS || done != n) {
        fprintf(stderr, "ref-gearman-client: %d of %d tasks: %s\n", done, n,
                gearman_client_error(client));
        exit(1);
    }
    free(body);
    return elapsed;
}

static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
    s_config_t config = {20000, 2000, 2000, 65536, 0};
    for (int i = 1; i + 1 < argc; i += 2) {
        int *target = strcmp(argv[i], "--port") == 0 ? &config.port
            : strcmp(argv[i], "--tasks") == 0        ? &config.tasks
            : strcmp(argv[i], "--seq") == 0          ? &config.seq
            : strcmp(argv[i], "--echo") == 0         ? &config.echo
            : strcmp(argv[i], "--size") == 0         ? &config.size
                                                     : NULL;
        char *end = NULL;
        long value = strtol(argv[i + 1], &end, 10);
        if (!target || *end || value < 1 || value > 100000000) {
            config.port = 0;
            break;
        }
        *target = (int)value;
    }
    if (argc % 2 == 0 || config.port == 0 || config.size < 8) {
        fprintf(stderr,
                "usage: ref-gearman-client --port PORT [--tasks N] "
                "[--seq N] [--echo N] [--size BYTES]\n");
        return 2;
    }
    gearman_client_st *client = gearman_client_create(NULL);
    if (!client ||
        gearman_client_add_server(client, "127.0.0.1",
                                  (in_port_t)config.port) != GEARMAN_SUCCESS) {
        fprintf(stderr, "ref-gearman-client: cannot create the client\n");
        return 1;
    }
    gearman_client_set_timeout(client, 60000);
    gearman_client_add_options(client, GEARMAN_CLIENT_FREE_TASKS);
    gearman_client_set_complete_fn(client, s_on_complete);

    s_stream(client, config.tasks / 10 + 2, 8); /* warm up */
    double w1 = config.tasks / s_stream(client, config.tasks, 8);

    double *us = calloc((size_t)config.seq, sizeof *us);
    char body[8] = {0};
    for (int i = 0; i < config.seq; i++) {
        size_t size = 0;
        gearman_return_t rc;
        double t = s_now();
        void *reply = gearman_client_do(client, "echo", NULL, body, sizeof body,
                                        &size, &rc);
        us[i] = (s_now() - t) * 1e6;
        if (rc != GEARMAN_SUCCESS) {
            fprintf(stderr, "ref-gearman-client: do: %s\n",
                    gearman_client_error(client));
            return 1;
        }
        free(reply);
    }
    qsort(us, (size_t)config.seq, sizeof *us, s_cmp_double);
    double p50 = us[config.seq / 2], p99 = us[config.seq * 99 / 100];
    free(us);

    double w3 = (double)config.echo * config.size /
        s_stream(client, config.echo, config.size) / 1e6;
    printf("%.0f %.1f %.1f %.1f\n", w1, p50, p99, w3);
    gearman_client_free(client);
    return 0;
}
