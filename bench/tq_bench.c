/* tq_bench.c - tq-bench: tq against its references in one interleaved run.

   Contenders, each measured once per round, in turn (the first one rotates
   from round to round), so that noise from other load on the machine falls
   on all of them alike:
   - tq: tq-broker (no store) and `tq-worker -c 2` at its defaults: W1
     (apply_async of no-op tq.echo, all awaited) and W2 (sequential
     tq_apply); then a worker host at --prefetch 16: W1 and W3 (64 KiB echo);
   - tq durable: tq-broker --data DIR --sync batch, prefetch 16: W1 (and,
     for the record, the same with --sync os);
   - tq on PostgreSQL: tq-broker --store postgresql://... on a private
     local cluster the bench starts each round (initdb, as
     tests/support/tq_pg.c does), prefetch 16: W1;
   - the bare ZeroMQ load-balancing broker (ref-lbbroker) at credit 1 and
     16: W1, W2, W3;
   - Gearman: gearmand (Debian's) with two ref-gearman-worker processes and
     ref-gearman-client: W1, W2, W3;
   - tq_pool(2) at its defaults (tq-bench-pool --raw) and Python's
     multiprocessing.Pool(2) (ref_mp_pool.py): W1 and W2.
   After the rounds, once: a broker holding 1,000,000 waiting 100-byte tasks
   without and with the store (its RSS), and the rate one C client
   submitted them at. Prints the machine and its load before and after, a
   table of medians with min-max over the rounds, and the targets of issue
   13 with tq's ratio per row (median of the per-round ratios). A benchmark:
   its exit status says whether everything ran, never how fast. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_proto.h"

#include "tq_bench_common.h"
#include "tq_client_internal.h"
#include "tq_harness.h"
#include "tq_pg.h"

#define S_WAIT_MS 120000 /* bound on any one wait */
#define S_RSS_PAYLOAD 100
#define S_DASHES "------------------------------------------------------------"

typedef struct {
    int tasks; /* W1 tasks per contender and round */
    int seq; /* W2 round trips */
    int echo; /* W3 tasks */
    int size; /* W3 payload bytes */
    int runs; /* rounds */
    int rss_tasks; /* waiting tasks for the RSS rows, 0: skip them */
    int children; /* worker processes */
} s_config_t;

/* Every measured series, one sample per round. */
enum {
    TQ_W1,
    TQ_P50,
    TQ_P99,
    TQ_W1_P16,
    TQ_W3,
    TQ_DURABLE_W1,
    TQ_OS_W1,
    TQ_IDLE_W1,
    TQ_PG_W1,
    B1_W1,
    B1_P50,
    B1_P99,
    B1_W3,
    B16_W1,
    B16_P50,
    B16_P99,
    B16_W3,
    GM_W1,
    GM_P50,
    GM_P99,
    GM_W3,
    POOL_W1,
    POOL_P50,
    POOL_P99,
    PY_W1,
    PY_P50,
    PY_P99,
    S_SERIES
};

/* The contenders, in their first round's order. */
enum {
    C_TQ,
    C_TQ_DURABLE,
    C_TQ_OS,
    C_TQ_IDLE,
    C_BARE1,
    C_BARE16,
    C_GEARMAN,
    C_POOL,
    C_PYTHON,
    C_TQ_PG,
    S_CONTENDERS
};

static double s_samples[S_SERIES][TQ_BENCH_MAX_RUNS];
static const char *s_missing[S_CONTENDERS]; /* why a contender did not run */
static const char *s_only; /* --only: the contenders to run, by key */

/* Short keys for --only, in contender order. */
static const char *const s_keys[S_CONTENDERS] = {
    "tq",     "durable", "os",   "idle",   "bare1",
    "bare16", "gearman", "pool", "python", "pg"};

/* W1 (size 0: tq.echo with no arguments) or W3 (one binary argument of
   size bytes, echoed): submits `tasks`, then awaits them all. Returns the
   seconds taken, or -1 if any failed. */
static double
s_stream(tq_client_t *client, int tasks, int size)
{
    tq_result_t **results = calloc((size_t)tasks, sizeof *results);
    char *payload = calloc(1, (size_t)size + 1);
    if (!results || !payload) {
        free(results);
        free(payload);
        return -1;
    }
    int failed = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < tasks; i++) {
        results[i] = size ? tq_apply_async(client, "tq.echo", NULL, "p",
                                           payload, (size_t)size)
                          : tq_apply_async(client, "tq.echo", NULL, "");
        if (!results[i])
            failed++;
    }
    for (int i = 0; i < tasks; i++) {
        if (!results[i])
            continue;
        int rc = tq_result_get(results[i], S_WAIT_MS);
        if (rc != TQ_OK && failed++ == 0)
            fprintf(stderr, "tq-bench: task %d: %s (%s)\n", i, tq_strerror(rc),
                    tq_result_error(results[i]));
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (int i = 0; i < tasks; i++)
        tq_result_destroy(&results[i]);
    free(results);
    free(payload);
    if (failed) {
        fprintf(stderr, "tq-bench: %d of %d tasks failed\n", failed, tasks);
        return -1;
    }
    return (double)(b.tv_sec - a.tv_sec) +
        (double)(b.tv_nsec - a.tv_nsec) / 1e9;
}

/* W1: tasks/s, or -1. */
static double
s_throughput(tq_client_t *client, int tasks)
{
    double seconds = s_stream(client, tasks, 0);
    return seconds > 0 ? tasks / seconds : -1;
}

/* W2: `rounds` sequential tq_apply round trips; p50 and p99 in µs.
   Returns 0 or -1 if any failed. */
static int
s_latency(tq_client_t *client, int rounds, double *p50, double *p99)
{
    double *us = calloc((size_t)rounds, sizeof *us);
    if (!us)
        return -1;
    int rc = 0;
    for (int i = 0; i < rounds && rc == 0; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        tq_result_t *r = tq_apply(client, "tq.echo", NULL, S_WAIT_MS, "");
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (!r || tq_result_code(r) != TQ_OK) {
            fprintf(stderr, "tq-bench: round trip %d: %s\n", i,
                    r ? tq_strerror(tq_result_code(r)) : "invalid call");
            rc = -1;
        }
        tq_result_destroy(&r);
        us[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 +
            (double)(b.tv_nsec - a.tv_nsec) / 1e3;
    }
    if (rc == 0) {
        qsort(us, (size_t)rounds, sizeof *us, tq_bench_cmp_double);
        *p50 = us[rounds / 2];
        *p99 = us[rounds * 99 / 100];
    }
    free(us);
    return rc;
}

/* Starts a worker host (prefetch 0: its default) and waits for its
   children. */
static pid_t
s_worker(tq_harness_env_t *env, const s_config_t *config, int prefetch)
{
    char value[16];
    snprintf(value, sizeof value, "%d", prefetch);
    const char *extra[] = {"--prefetch", value, NULL};
    pid_t pid = tq_harness_env_add_worker(env, config->children,
                                          prefetch ? extra : NULL, true);
    if (pid < 0)
        fprintf(stderr, "tq-bench: worker host (prefetch %d) did not come up\n",
                prefetch);
    return pid;
}

/* tq, broker without store: W1 and W2 at the defaults, W1 and W3 at
   prefetch 16. */
static int
s_run_tq(const s_config_t *config, int run)
{
    tq_harness_env_t env;
    if (tq_harness_env_start(&env, NULL) != 0) {
        fprintf(stderr, "tq-bench: the broker did not start\n");
        return -1;
    }
    int rc = 0;
    pid_t worker = s_worker(&env, config, 0);
    if (worker < 0 || s_throughput(env.client, config->tasks / 10 + 1) < 0)
        rc = -1; /* the first pass warms up */
    if (rc == 0) {
        s_samples[TQ_W1][run] = s_throughput(env.client, config->tasks);
        rc = s_samples[TQ_W1][run] < 0 ? -1 : 0;
    }
    if (rc == 0)
        rc = s_latency(env.client, config->seq, &s_samples[TQ_P50][run],
                       &s_samples[TQ_P99][run]);
    if (worker > 0)
        tq_harness_env_stop_worker(&env, worker);
    /* the next host's children must be the only ones listed */
    if (rc == 0 && tq_harness_wait_workers(env.client, 0, 0, 10000) != 0) {
        fprintf(stderr, "tq-bench: the broker still lists a stopped host\n");
        rc = -1;
    }
    if (rc == 0 && s_worker(&env, config, 16) < 0)
        rc = -1;
    if (rc == 0 && s_throughput(env.client, config->tasks / 10 + 1) < 0)
        rc = -1;
    if (rc == 0) {
        s_samples[TQ_W1_P16][run] = s_throughput(env.client, config->tasks);
        rc = s_samples[TQ_W1_P16][run] < 0 ? -1 : 0;
    }
    if (rc == 0) {
        double seconds = s_stream(env.client, config->echo, config->size);
        s_samples[TQ_W3][run] =
            (double)config->echo * config->size / seconds / 1e6;
        rc = seconds > 0 ? 0 : -1;
    }
    tq_harness_env_stop(&env);
    return rc;
}

/* Children that announce themselves on queue "other" and never take
   anything: raw DEALERs of this process, so 1,000 of them cost the machine
   nothing but sockets; what they cost the broker is what is measured. */
#define S_IDLE_CHILDREN 1000

static void *
s_idle_children(const char *endpoint, void **sockets, int count)
{
    void *ctx = zmq_ctx_new();
    zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, count + 16);
    tq_msg_t ready = {.command = TQ_CMD_READY};
    ready.host = tq_str("idle-host");
    ready.ppid = 1;
    ready.credit = 1;
    ready.queue_count = 1;
    ready.queues[0] = tq_str("other");
    ready.task_count = 1;
    ready.tasks[0] = tq_str("tq.echo");
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    for (int i = 0; i < count; i++) {
        sockets[i] = zmq_socket(ctx, ZMQ_DEALER);
        int linger = 0;
        zmq_setsockopt(sockets[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_connect(sockets[i], endpoint);
        ready.pid = (uint64_t)(100000 + i);
        tq_proto_encode(&ready, &buf, NULL);
        zmq_send(sockets[i], buf.data, buf.size, 0);
    }
    msgpack_sbuffer_destroy(&buf);
    return ctx;
}

/* tq at the defaults, as s_run_tq's W1, with 1,000 idle children on
   another queue beside the two that work: dispatch must cost what it
   dispatches, not what is connected. */
static int
s_run_tq_idle(const s_config_t *config, int run)
{
    tq_harness_env_t env;
    if (tq_harness_env_start(&env, NULL) != 0)
        return -1;
    void **sockets = calloc(S_IDLE_CHILDREN, sizeof *sockets);
    void *ctx = s_idle_children(env.broker.workers, sockets, S_IDLE_CHILDREN);
    int rc = tq_harness_wait_workers(env.client, S_IDLE_CHILDREN, 0, 60000);
    pid_t worker = rc == 0 ? s_worker(&env, config, 0) : -1;
    if (worker < 0 || s_throughput(env.client, config->tasks / 10 + 1) < 0)
        rc = -1;
    if (rc == 0) {
        s_samples[TQ_IDLE_W1][run] = s_throughput(env.client, config->tasks);
        rc = s_samples[TQ_IDLE_W1][run] < 0 ? -1 : 0;
    }
    tq_harness_env_stop(&env);
    for (int i = 0; i < S_IDLE_CHILDREN; i++)
        if (sockets[i])
            zmq_close(sockets[i]);
    zmq_ctx_term(ctx);
    free(sockets);
    return rc;
}

/* tq with the store (--sync sync): W1 at prefetch 16 into series. */
static int
s_run_tq_store(const s_config_t *config, int run, const char *sync, int series)
{
    char dir[512], data[600];
    if (tq_harness_tempdir(dir, sizeof dir, "bench") != 0) {
        fprintf(stderr, "tq-bench: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    snprintf(data, sizeof data, "%s/data", dir);
    const char *extra[] = {"--data", data, "--sync", sync, NULL};
    tq_harness_env_t env;
    int rc = 0;
    if (tq_harness_env_start(&env, extra) != 0) {
        fprintf(stderr, "tq-bench: the broker with --sync %s did not start\n",
                sync);
        rc = -1;
    } else {
        if (s_worker(&env, config, 16) < 0 ||
            s_throughput(env.client, config->tasks / 10 + 1) < 0)
            rc = -1;
        if (rc == 0) {
            s_samples[series][run] = s_throughput(env.client, config->tasks);
            rc = s_samples[series][run] < 0 ? -1 : 0;
        }
        tq_harness_env_stop(&env);
    }
    tq_harness_rmtree(dir);
    return rc;
}

/* The durable broker of the targets: synced per batch. */
static int
s_run_tq_durable(const s_config_t *config, int run)
{
    return s_run_tq_store(config, run, "batch", TQ_DURABLE_W1);
}

/* For the record: the store written to the OS, which flushes when it likes. */
static int
s_run_tq_os(const s_config_t *config, int run)
{
    return s_run_tq_store(config, run, "os", TQ_OS_W1);
}

/* tq on PostgreSQL (a local server): W1 at prefetch 16, each round on a
   private cluster of its own (made before the clock starts; the other
   contenders' teardown sweeps every process left, a cluster included). */
static int
s_run_tq_pg(const s_config_t *config, int run)
{
    tq_pg_t *pg = tq_pg_new();
    if (!pg) {
        fprintf(stderr,
                "tq-bench: no PostgreSQL cluster (is Debian's "
                "postgresql installed?)\n");
        return -1;
    }
    char url[512];
    snprintf(url, sizeof url, "%s", tq_pg_url(pg));
    const char *extra[] = {"--store", url, NULL};
    tq_harness_env_t env;
    if (tq_harness_env_start(&env, extra) != 0) {
        fprintf(stderr, "tq-bench: the broker on PostgreSQL did not start\n");
        tq_pg_destroy(&pg);
        return -1;
    }
    int rc = 0;
    if (s_worker(&env, config, 16) < 0 ||
        s_throughput(env.client, config->tasks / 10 + 1) < 0)
        rc = -1;
    if (rc == 0) {
        s_samples[TQ_PG_W1][run] = s_throughput(env.client, config->tasks);
        rc = s_samples[TQ_PG_W1][run] < 0 ? -1 : 0;
    }
    /* as tq_harness_env_stop, but by pid only: its final sweep of every
       process left would take the cluster before it is stopped */
    while (env.worker_count > 0)
        tq_harness_stop(env.workers[--env.worker_count]);
    tq_client_destroy(&env.client);
    tq_harness_broker_stop(&env.broker);
    tq_pg_destroy(&pg);
    return rc;
}

/* Runs argv (a path first) for at most S_WAIT_MS and reads n numbers from
   its stdout into out. Returns 0 or -1 (its stderr shown). */
static int
s_probe(char *const argv[], int n, double *out[])
{
    tq_harness_run_t run;
    if (tq_harness_run(argv, NULL, S_WAIT_MS, &run) != 0) {
        fprintf(stderr, "tq-bench: cannot run %s\n", argv[0]);
        return -1;
    }
    int got = 0, used = 0;
    const char *p = run.out;
    double value;
    while (got < n && sscanf(p, "%lf%n", &value, &used) == 1) {
        *out[got++] = value;
        p += used;
    }
    int rc = run.exit_code == 0 && got == n ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "tq-bench: %s: exit %d, %d of %d numbers\n%s", argv[0],
                run.exit_code, got, n, run.err);
    tq_harness_run_free(&run);
    return rc;
}

static void
s_itoa(char *buf, size_t size, int value)
{
    snprintf(buf, size, "%d", value);
}

/* The bare broker at credit 1 (first = B1_W1) or 16 (B16_W1). */
static int
s_run_bare(const s_config_t *config, int run, int credit, int first)
{
    char c[16], t[16], s[16], e[16], z[16];
    s_itoa(c, sizeof c, credit);
    s_itoa(t, sizeof t, config->tasks);
    s_itoa(s, sizeof s, config->seq);
    s_itoa(e, sizeof e, config->echo);
    s_itoa(z, sizeof z, config->size);
    char *argv[] = {
        TQ_BENCH_LBBROKER, "--credit", c,        "--tasks", t,   "--seq", s,
        "--echo",          e,          "--size", z,         NULL};
    double *out[] = {&s_samples[first][run], &s_samples[first + 1][run],
                     &s_samples[first + 2][run], &s_samples[first + 3][run]};
    return s_probe(argv, 4, out);
}

static int
s_run_bare1(const s_config_t *config, int run)
{
    return s_run_bare(config, run, 1, B1_W1);
}

static int
s_run_bare16(const s_config_t *config, int run)
{
    return s_run_bare(config, run, 16, B16_W1);
}

#ifdef TQ_BENCH_GEARMAND
/* Waits until something accepts on 127.0.0.1:port. 0 or -1. */
static int
s_wait_port(int port, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (tq_harness_now_ms() < deadline) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET,
                                   .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int rc =
            fd >= 0 ? connect(fd, (struct sockaddr *)&addr, sizeof addr) : -1;
        if (fd >= 0)
            close(fd);
        if (rc == 0)
            return 0;
        tq_harness_sleep_ms(20);
    }
    return -1;
}

/* Reads the worker's "ready" line from fd. 0 or -1. */
static int
s_wait_ready(int fd, int timeout_ms)
{
    char line[64];
    size_t len = 0;
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (len < sizeof line - 1) {
        int left = (int)(deadline - tq_harness_now_ms());
        struct pollfd item = {fd, POLLIN, 0};
        if (left <= 0 || poll(&item, 1, left) <= 0)
            return -1;
        ssize_t got = read(fd, line + len, sizeof line - 1 - len);
        if (got <= 0)
            return -1;
        len += (size_t)got;
        line[len] = '\0';
        if (strstr(line, "ready\n"))
            return 0;
    }
    return -1;
}

/* Gearman: gearmand on a free loopback port, two workers, the client. */
static int
s_run_gearman(const s_config_t *config, int run)
{
    char endpoint[TQ_HARNESS_EP_MAX], dir[512], pidfile[600], port[16];
    if (tq_harness_free_endpoint(endpoint, sizeof endpoint) != 0 ||
        tq_harness_tempdir(dir, sizeof dir, "gearman") != 0) {
        fprintf(stderr, "tq-bench: no free port or directory for gearmand\n");
        return -1;
    }
    snprintf(port, sizeof port, "%s", strrchr(endpoint, ':') + 1);
    snprintf(pidfile, sizeof pidfile, "--pid-file=%s/gearmand.pid", dir);
    char listen_port[32];
    snprintf(listen_port, sizeof listen_port, "--port=%s", port);
    char *server_argv[] = {TQ_BENCH_GEARMAND,
                           "--listen=127.0.0.1",
                           listen_port,
                           "--log-file=none",
                           pidfile,
                           "--config-file=/dev/null",
                           NULL};
    pid_t server = tq_harness_spawn(server_argv, NULL, NULL, NULL);
    pid_t workers[2] = {-1, -1};
    int rc = server > 0 && s_wait_port(atoi(port), 10000) == 0 ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "tq-bench: gearmand did not start\n");
    for (int i = 0; i < 2 && rc == 0; i++) {
        char *worker_argv[] = {TQ_BENCH_GEARMAN_WORKER, port, NULL};
        int out = -1;
        workers[i] = tq_harness_spawn(worker_argv, NULL, &out, NULL);
        if (workers[i] < 0 || s_wait_ready(out, 10000) != 0) {
            fprintf(stderr, "tq-bench: a gearman worker did not start\n");
            rc = -1;
        }
        if (out >= 0)
            close(out);
    }
    if (rc == 0) {
        char t[16], s[16], e[16], z[16];
        s_itoa(t, sizeof t, config->tasks);
        s_itoa(s, sizeof s, config->seq);
        s_itoa(e, sizeof e, config->echo);
        s_itoa(z, sizeof z, config->size);
        char *argv[] = {TQ_BENCH_GEARMAN_CLIENT,
                        "--port",
                        port,
                        "--tasks",
                        t,
                        "--seq",
                        s,
                        "--echo",
                        e,
                        "--size",
                        z,
                        NULL};
        double *out[] = {&s_samples[GM_W1][run], &s_samples[GM_P50][run],
                         &s_samples[GM_P99][run], &s_samples[GM_W3][run]};
        rc = s_probe(argv, 4, out);
    }
    for (int i = 0; i < 2; i++)
        if (workers[i] > 0)
            tq_harness_stop(workers[i]);
    if (server > 0)
        tq_harness_stop(server);
    tq_harness_rmtree(dir);
    return rc;
}
#endif

/* tq_pool(2) at its default prefetch, in its own process (the pool forks
   before it starts threads). */
static int
s_run_pool(const s_config_t *config, int run)
{
    char t[16], s[16];
    s_itoa(t, sizeof t, config->tasks);
    s_itoa(s, sizeof s, config->seq);
    char *argv[] = {TQ_BENCH_POOL, "--raw", "--runs", "1", "--prefetch", "0",
                    "-n",          t,       "--seq",  s,   NULL};
    double *out[] = {&s_samples[POOL_W1][run], &s_samples[POOL_P50][run],
                     &s_samples[POOL_P99][run]};
    return s_probe(argv, 3, out);
}

static int
s_run_python(const s_config_t *config, int run)
{
    char t[16], s[16];
    s_itoa(t, sizeof t, config->tasks);
    s_itoa(s, sizeof s, config->seq);
    /* the harness runs a path: python3 from PATH goes through env */
    const char *python = tq_bench_python();
    char *argv[] = {
        "/usr/bin/env", (char *)python, TQ_BENCH_MP_POOL, t, s, NULL};
    double *out[] = {&s_samples[PY_W1][run], &s_samples[PY_P50][run],
                     &s_samples[PY_P99][run]};
    return s_probe(argv, 3, out);
}

/* ---- --prefetch LIST: the sweep that chose tq-worker's default ---- */

static void s_stats(const double *values, int runs, double *median, double *min,
                    double *max);

#define S_SWEEP_MAX 8
#define S_W4_TASKS 4 /* W4: 4 tasks of 0.5 s on a host of 3 children */
#define S_W4_CHILDREN 3
#define S_W4_SECONDS 0.5

static int s_sweep[S_SWEEP_MAX]; /* the prefetch values, in order */
static int s_nsweep;
static double s_sweep_w1[S_SWEEP_MAX][TQ_BENCH_MAX_RUNS];
static double s_sweep_w4[S_SWEEP_MAX][TQ_BENCH_MAX_RUNS];
static double s_sweep_cold[S_SWEEP_MAX][TQ_BENCH_MAX_RUNS];
/* CPU per W1 task, us: the broker's during the measured pass, the worker
   host's (supervisor and children, start-up and warm-up included) */
static double s_sweep_bcpu[S_SWEEP_MAX][TQ_BENCH_MAX_RUNS];
static double s_sweep_wcpu[S_SWEEP_MAX][TQ_BENCH_MAX_RUNS];

/* CPU time (user + system) of a live process from /proc, us, or -1. */
static double
s_proc_cpu_us(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "re");
    if (!file)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, file);
    fclose(file);
    buf[n] = '\0';
    /* the fields after the command name, which may hold spaces */
    const char *p = strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

/* CPU time of this process's waited-for descendants, us. */
static double
s_children_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
        (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* Submits S_W4_TASKS tq.sleep at once into results. 0 or -1. */
static int
s_w4_submit(tq_client_t *client, tq_result_t **results)
{
    int rc = 0;
    for (int i = 0; i < S_W4_TASKS; i++) {
        results[i] =
            tq_apply_async(client, "tq.sleep", NULL, "d", S_W4_SECONDS);
        if (!results[i])
            rc = -1;
    }
    return rc;
}

/* Awaits results (freeing them): 0 if all succeeded, else -1. */
static int
s_w4_collect(tq_result_t **results)
{
    int rc = 0;
    for (int i = 0; i < S_W4_TASKS; i++) {
        if (!results[i] || tq_result_get(results[i], S_WAIT_MS) != TQ_OK)
            rc = -1;
        tq_result_destroy(&results[i]);
    }
    return rc;
}

/* Stops a host and waits until the broker lists no child. 0 or -1. */
static int
s_sweep_stop(tq_harness_env_t *env, pid_t worker)
{
    tq_harness_env_stop_worker(env, worker);
    if (tq_harness_wait_workers(env->client, 0, 0, 10000) != 0) {
        fprintf(stderr, "tq-bench: the broker still lists a stopped host\n");
        return -1;
    }
    return 0;
}

/* One prefetch value, one round, on a fresh broker:
   - W1 on `tq-worker -c 2 --prefetch P` (tasks/s);
   - W4: S_W4_TASKS sleeps of 0.5 s submitted at once to a host of 3
     children that is up: seconds from the first submission to the last
     result (1.00 s is the best any placement can do);
   - W4 cold: the same sleeps queued before the host starts, so the first
     child to announce itself takes up to P of them and the others must
     steal: seconds from starting the host to the last result (its start-up
     included: compare across prefetch values, not with W4). */
static int
s_run_sweep_one(const s_config_t *config, int k, int run)
{
    char value[16];
    snprintf(value, sizeof value, "%d", s_sweep[k]);
    const char *extra[] = {"--prefetch", value, NULL};
    tq_harness_env_t env;
    if (tq_harness_env_start(&env, NULL) != 0) {
        fprintf(stderr, "tq-bench: the broker did not start\n");
        return -1;
    }
    int rc = 0;
    double reaped = s_children_cpu_us();
    pid_t worker =
        tq_harness_env_add_worker(&env, config->children, extra, true);
    int warm = config->tasks / 10 + 1;
    if (worker < 0 || s_throughput(env.client, warm) < 0)
        rc = -1;
    if (rc == 0) {
        double broker = s_proc_cpu_us(env.broker.pid);
        s_sweep_w1[k][run] = s_throughput(env.client, config->tasks);
        rc = s_sweep_w1[k][run] < 0 ? -1 : 0;
        s_sweep_bcpu[k][run] =
            (s_proc_cpu_us(env.broker.pid) - broker) / config->tasks;
    }
    if (worker > 0 && rc == 0)
        rc = s_sweep_stop(&env, worker);
    /* the host and its children were reaped: their time is ours now */
    s_sweep_wcpu[k][run] =
        (s_children_cpu_us() - reaped) / (config->tasks + warm);
    tq_result_t *results[S_W4_TASKS] = {NULL};
    struct timespec a, b;
    if (rc == 0) {
        worker = tq_harness_env_add_worker(&env, S_W4_CHILDREN, extra, true);
        clock_gettime(CLOCK_MONOTONIC, &a);
        rc = worker < 0 ? -1 : s_w4_submit(env.client, results);
        rc |= s_w4_collect(results);
        clock_gettime(CLOCK_MONOTONIC, &b);
        s_sweep_w4[k][run] = (double)(b.tv_sec - a.tv_sec) +
            (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    }
    if (worker > 0 && rc == 0)
        rc = s_sweep_stop(&env, worker);
    if (rc == 0) {
        rc = s_w4_submit(env.client, results);
        /* the broker has them queued before any child exists */
        if (rc == 0 && tq_harness_wait_workers(env.client, 0, 0, 10000) != 0)
            rc = -1;
        clock_gettime(CLOCK_MONOTONIC, &a);
        worker = rc == 0
            ? tq_harness_env_add_worker(&env, S_W4_CHILDREN, extra, false)
            : -1;
        rc |= worker < 0 ? -1 : 0;
        rc |= s_w4_collect(results);
        clock_gettime(CLOCK_MONOTONIC, &b);
        s_sweep_cold[k][run] = (double)(b.tv_sec - a.tv_sec) +
            (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    }
    if (rc != 0)
        fprintf(stderr, "tq-bench: prefetch %d failed in round %d\n",
                s_sweep[k], run + 1);
    tq_harness_env_stop(&env);
    return rc;
}

/* Runs the sweep interleaved (the first value rotates from round to
   round) and prints its table. Returns the exit status. */
static int
s_run_sweep(const s_config_t *config)
{
    printf("sweep:   tq-worker --prefetch P; W1 on 2 children, W4 = %d x "
           "tq.sleep %.1f on %d children\n\n",
           S_W4_TASKS, S_W4_SECONDS, S_W4_CHILDREN);
    fflush(stdout);
    for (int run = 0; run < config->runs; run++) {
        for (int i = 0; i < s_nsweep; i++)
            if (s_run_sweep_one(config, (run + i) % s_nsweep, run) != 0)
                return 1;
        fprintf(stderr, "tq-bench: round %d of %d done\n", run + 1,
                config->runs);
    }
    printf("| prefetch | W1 tasks/s (min-max)        | W4 s (min-max)     "
           "| W4 cold s (min-max)  | CPU us/task: broker | worker host |\n");
    printf("|%.10s|%.29s|%.20s|%.22s|%.21s|%.13s|\n", S_DASHES, S_DASHES,
           S_DASHES, S_DASHES, S_DASHES, S_DASHES);
    for (int k = 0; k < s_nsweep; k++) {
        double w1, w1lo, w1hi, w4, w4lo, w4hi, c, clo, chi, b, w, lo, hi;
        s_stats(s_sweep_w1[k], config->runs, &w1, &w1lo, &w1hi);
        s_stats(s_sweep_w4[k], config->runs, &w4, &w4lo, &w4hi);
        s_stats(s_sweep_cold[k], config->runs, &c, &clo, &chi);
        s_stats(s_sweep_bcpu[k], config->runs, &b, &lo, &hi);
        s_stats(s_sweep_wcpu[k], config->runs, &w, &lo, &hi);
        printf("| %8d | %7.0f (%7.0f-%7.0f)   | %4.2f (%4.2f-%4.2f)   "
               "| %4.2f (%4.2f-%4.2f)     | %19.2f | %11.2f |\n",
               s_sweep[k], w1, w1lo, w1hi, w4, w4lo, w4hi, c, clo, chi, b, w);
    }
    printf("\nCPU: medians; the broker's during the measured W1 pass, the "
           "worker host's\n(its children included) over its whole life "
           "divided by the W1 and warm-up tasks.\n");
    printf("\n");
    tq_bench_print_load("after");
    return 0;
}

/* Parses "1,2,4" into s_sweep. 0 or -1. */
static int
s_parse_sweep(const char *list)
{
    s_nsweep = 0;
    const char *p = list;
    while (*p) {
        char *end = NULL;
        long value = strtol(p, &end, 10);
        if (end == p || value < 1 || value > 65535 || s_nsweep == S_SWEEP_MAX)
            return -1;
        s_sweep[s_nsweep++] = (int)value;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    return s_nsweep ? 0 : -1;
}

typedef int(s_contender_fn)(const s_config_t *config, int run);

static s_contender_fn *const s_contenders[S_CONTENDERS] = {
    [C_TQ] = s_run_tq,           [C_TQ_DURABLE] = s_run_tq_durable,
    [C_TQ_OS] = s_run_tq_os,     [C_TQ_IDLE] = s_run_tq_idle,
    [C_BARE1] = s_run_bare1,
    [C_BARE16] = s_run_bare16,
#ifdef TQ_BENCH_GEARMAND
    [C_GEARMAN] = s_run_gearman,
#endif
    [C_POOL] = s_run_pool,       [C_PYTHON] = s_run_python,
    [C_TQ_PG] = s_run_tq_pg,
};

static const char *const s_contender_names[S_CONTENDERS] = {
    [C_TQ] = "tq",
    [C_TQ_DURABLE] = "tq durable",
    [C_TQ_OS] = "tq --sync os",
    [C_TQ_IDLE] = "tq + 1,000 idle children",
    [C_BARE1] = "bare broker credit 1",
    [C_BARE16] = "bare broker credit 16",
    [C_GEARMAN] = "Gearman",
    [C_POOL] = "tq_pool(2)",
    [C_PYTHON] = "multiprocessing.Pool(2)",
    [C_TQ_PG] = "tq on PostgreSQL",
};

/* The broker's resident set from /proc, in MiB, or -1. */
static double
s_rss_mib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *file = fopen(path, "re");
    double kib = -1;
    while (file && fgets(line, sizeof line, file))
        if (sscanf(line, "VmRSS: %lf", &kib) == 1)
            break;
    if (file)
        fclose(file);
    return kib < 0 ? -1 : kib / 1024;
}

/* Waiting tasks in the default queue, or -1. */
static int64_t
s_waiting(tq_client_t *client)
{
    tq_harness_status_t status;
    memset(&status, 0, sizeof status);
    if (tq_harness_status(client, &status, S_WAIT_MS) != TQ_OK)
        return -1;
    const msgpack_object *queue = tq_harness_queue(&status, "default");
    int64_t waiting =
        queue ? (int64_t)tq_harness_map_uint(queue, "waiting", 0) : 0;
    tq_harness_status_free(&status);
    return waiting;
}

/* A broker (store: with --data in a fresh directory) with no workers gets
   `tasks` tq.echo of one 100-byte argument from one client. *rate: tasks/s
   from the first submission until STATUS shows them all waiting; *rss and
   *idle: the broker's RSS then and before (MiB). 0 or -1. */
static int
s_hold(int tasks, bool store, double *rate, double *rss, double *idle)
{
    char dir[512], data[600];
    if (tq_harness_tempdir(dir, sizeof dir, "bench-rss") != 0)
        return -1;
    snprintf(data, sizeof data, "%s/data", dir);
    const char *with_store[] = {"--data", data, NULL};
    tq_harness_env_t env;
    if (tq_harness_env_start(&env, store ? with_store : NULL) != 0) {
        tq_harness_rmtree(dir);
        return -1;
    }
    int rc = 0;
    *idle = s_rss_mib(env.broker.pid);
    tq_result_t **results = calloc((size_t)tasks, sizeof *results);
    char payload[S_RSS_PAYLOAD];
    memset(payload, 'x', sizeof payload);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; results && i < tasks && rc == 0; i++) {
        results[i] = tq_apply_async(env.client, "tq.echo", NULL, "p", payload,
                                    sizeof payload);
        rc = results[i] ? 0 : -1;
    }
    int64_t deadline = tq_harness_now_ms() + 4 * S_WAIT_MS;
    int64_t waiting = -1;
    while (rc == 0 && results && waiting < tasks) {
        waiting = s_waiting(env.client);
        if (waiting < 0 || tq_harness_now_ms() > deadline) {
            fprintf(stderr, "tq-bench: %lld of %d tasks waiting\n",
                    (long long)waiting, tasks);
            rc = -1;
        } else if (waiting < tasks) {
            tq_harness_sleep_ms(10);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    *rate = tasks /
        ((double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    /* held = acknowledged: with a store, once every SUBMITTED came (its
       commit done, the arguments it stored paged out); then the RSS once
       it stops moving (memory of the last batches given back, and the
       requests a client sends again when replies were dropped handled) */
    for (int i = 0; store && rc == 0 && results && i < tasks; i++)
        if (tq_result_wait_answer(results[i], S_WAIT_MS) != TQ_OK)
            rc = -1;
    double last = s_rss_mib(env.broker.pid);
    for (int i = 0; rc == 0 && i < 50; i++) {
        tq_harness_sleep_ms(200);
        double now = s_rss_mib(env.broker.pid);
        bool settled = now >= last - 0.5 && now <= last + 0.5;
        last = now;
        if (settled)
            break;
    }
    *rss = last;
    tq_harness_env_stop(&env);
    for (int i = 0; results && i < tasks; i++)
        tq_result_destroy(&results[i]);
    free(results);
    tq_harness_rmtree(dir);
    return results && rc == 0 && *rss > 0 ? 0 : -1;
}

/* Median and (min-max) of a series over the rounds. */
static void
s_stats(const double *values, int runs, double *median, double *min,
        double *max)
{
    *median = tq_bench_median(values, runs);
    *min = *max = values[0];
    for (int i = 1; i < runs; i++) {
        *min = values[i] < *min ? values[i] : *min;
        *max = values[i] > *max ? values[i] : *max;
    }
}

typedef struct {
    const char *workload; /* NULL: the row continues the last workload */
    const char *contender;
    int series;
    int by; /* contender that measures it */
    const char *unit;
} s_row_t;

static const s_row_t s_rows[] = {
    {"W1", "tq, defaults (worker prefetch 16)", TQ_W1, C_TQ, "tasks/s"},
    {NULL, "tq, prefetch 16", TQ_W1_P16, C_TQ, "tasks/s"},
    {NULL, "tq durable (--sync batch), prefetch 16", TQ_DURABLE_W1,
     C_TQ_DURABLE, "tasks/s"},
    {NULL, "tq store --sync os, prefetch 16", TQ_OS_W1, C_TQ_OS, "tasks/s"},
    {NULL, "tq --store postgresql (local), prefetch 16", TQ_PG_W1, C_TQ_PG,
     "tasks/s"},
    {NULL, "tq, defaults, 1,000 idle children on another queue", TQ_IDLE_W1,
     C_TQ_IDLE, "tasks/s"},
    {NULL, "bare ZeroMQ broker, credit 1", B1_W1, C_BARE1, "tasks/s"},
    {NULL, "bare ZeroMQ broker, credit 16", B16_W1, C_BARE16, "tasks/s"},
    {NULL, "Gearman", GM_W1, C_GEARMAN, "tasks/s"},
    {"W2 p50", "tq, defaults", TQ_P50, C_TQ, "us"},
    {NULL, "bare ZeroMQ broker, credit 1", B1_P50, C_BARE1, "us"},
    {NULL, "bare ZeroMQ broker, credit 16", B16_P50, C_BARE16, "us"},
    {NULL, "Gearman", GM_P50, C_GEARMAN, "us"},
    {"W2 p99", "tq, defaults", TQ_P99, C_TQ, "us"},
    {NULL, "bare ZeroMQ broker, credit 1", B1_P99, C_BARE1, "us"},
    {NULL, "bare ZeroMQ broker, credit 16", B16_P99, C_BARE16, "us"},
    {NULL, "Gearman", GM_P99, C_GEARMAN, "us"},
    {"W3 64 KiB", "tq, prefetch 16", TQ_W3, C_TQ, "MB/s"},
    {NULL, "bare ZeroMQ broker, credit 1", B1_W3, C_BARE1, "MB/s"},
    {NULL, "bare ZeroMQ broker, credit 16", B16_W3, C_BARE16, "MB/s"},
    {NULL, "Gearman", GM_W3, C_GEARMAN, "MB/s"},
    {"pool W1", "tq_pool(2), defaults (prefetch 64)", POOL_W1, C_POOL,
     "tasks/s"},
    {NULL, "multiprocessing.Pool(2)", PY_W1, C_PYTHON, "tasks/s"},
    {"pool W2 p50", "tq_pool(2), defaults", POOL_P50, C_POOL, "us"},
    {NULL, "multiprocessing.Pool(2)", PY_P50, C_PYTHON, "us"},
    {"pool W2 p99", "tq_pool(2), defaults", POOL_P99, C_POOL, "us"},
    {NULL, "multiprocessing.Pool(2)", PY_P99, C_PYTHON, "us"},
};

/* A task count as "1M", "100k" or "1500" (buf of size bytes). */
static void
s_count(char *buf, size_t size, int count)
{
    if (count % 1000000 == 0)
        snprintf(buf, size, "%dM", count / 1000000);
    else if (count % 1000 == 0)
        snprintf(buf, size, "%dk", count / 1000);
    else
        snprintf(buf, size, "%d", count);
}

/* A value with the precision its size deserves. */
static void
s_format(char *buf, size_t size, double value)
{
    snprintf(buf, size, value >= 100 ? "%.0f" : "%.1f", value);
}

static void
s_result_row(const char *workload, const char *contender, const char *median,
             const char *range, const char *unit)
{
    printf("| %-11s | %-40s | %9s | %-17s | %-7s |\n", workload, contender,
           median, range, unit);
}

static void
s_print_results(const s_config_t *config, const double rss[2],
                const double rate[2], const double idle[2], bool rss_ok)
{
    s_result_row("workload", "contender", "median", "(min-max)", "unit");
    printf("|%.13s|%.42s|%.11s|%.19s|%.9s|\n", S_DASHES, S_DASHES, S_DASHES,
           S_DASHES, S_DASHES);
    for (size_t i = 0; i < sizeof s_rows / sizeof s_rows[0]; i++) {
        const s_row_t *row = &s_rows[i];
        char median[32] = "-", range[64];
        if (s_missing[row->by]) {
            snprintf(range, sizeof range, "not run");
        } else {
            double m, lo, hi;
            char a[24], b[24];
            s_stats(s_samples[row->series], config->runs, &m, &lo, &hi);
            s_format(median, sizeof median, m);
            s_format(a, sizeof a, lo);
            s_format(b, sizeof b, hi);
            snprintf(range, sizeof range, "(%s-%s)", a, b);
        }
        s_result_row(row->workload ? row->workload : "", row->contender, median,
                     range, row->unit);
    }
    if (!rss_ok)
        return;
    char held[32], count[16], value[32];
    s_count(count, sizeof count, config->rss_tasks);
    snprintf(held, sizeof held, "hold %s", count);
    for (int s = 0; s < 2; s++) {
        const char *mode = s ? "store" : "no store";
        char name[64];
        snprintf(name, sizeof name, "tq-broker RSS holding them, %s", mode);
        snprintf(value, sizeof value, "%.0f", rss[s]);
        s_result_row(s ? "" : held, name, value, "(1 run)", "MiB");
        snprintf(name, sizeof name, "tq-broker RSS idle before, %s", mode);
        snprintf(value, sizeof value, "%.1f", idle[s]);
        s_result_row("", name, value, "(1 run)", "MiB");
        snprintf(name, sizeof name, "one C client submitting them, %s", mode);
        snprintf(value, sizeof value, "%.0f", rate[s]);
        s_result_row("", name, value, "(1 run)", "tasks/s");
    }
}

typedef struct {
    const char *name;
    int num, den; /* series: tq's, the reference's */
    int num_by, den_by; /* their contenders */
    bool higher; /* a higher ratio is better */
    double must, goal; /* goal 0: none */
} s_target_t;

static const s_target_t s_targets[] = {
    {"W1 default / bare broker credit 1", TQ_W1, B1_W1, C_TQ, C_BARE1, true,
     1.5, 3},
    {"W1 default / Gearman", TQ_W1, GM_W1, C_TQ, C_GEARMAN, true, 1.5, 3},
    {"W1 prefetch 16 / bare broker credit 16", TQ_W1_P16, B16_W1, C_TQ,
     C_BARE16, true, 1.0, 2},
    {"W2 p50 / bare p50 (credit 1)", TQ_P50, B1_P50, C_TQ, C_BARE1, false, 1.0,
     0.8},
    {"W2 p99 / bare p99 (credit 1)", TQ_P99, B1_P99, C_TQ, C_BARE1, false, 1.2,
     0},
    {"W3 64 KiB / bare credit 16", TQ_W3, B16_W3, C_TQ, C_BARE16, true, 0.9,
     1.0},
    {"W1 with 1,000 idle children / without", TQ_IDLE_W1, TQ_W1, C_TQ_IDLE,
     C_TQ, true, 0.9, 0},
    {"durable W1 / memory W1, prefetch 16", TQ_DURABLE_W1, TQ_W1_P16,
     C_TQ_DURABLE, C_TQ, true, 0.6, 0.8},
    {"postgresql W1 / memory W1, prefetch 16", TQ_PG_W1, TQ_W1_P16, C_TQ_PG,
     C_TQ, true, 0.3, 0},
    {"pool W1 / multiprocessing.Pool(2)", POOL_W1, PY_W1, C_POOL, C_PYTHON,
     true, 3, 5},
    {"pool W2 p50 / Pool(2)", POOL_P50, PY_P50, C_POOL, C_PYTHON, false, 1.0,
     0.5},
};

/* PASS when the must is met, GOAL when the goal is met too. */
static const char *
s_mark(double value, bool higher, double must, double goal)
{
    bool pass = higher ? value >= must : value <= must;
    bool reach = goal > 0 && (higher ? value >= goal : value <= goal);
    return reach ? "GOAL" : pass ? "PASS" : "below";
}

static void
s_target_row(const char *name, const char *value, const char *range,
             const char *must, const char *goal, const char *mark)
{
    printf("| %-40s | %-9s | %-15s | %-10s | %-11s | %-5s |\n", name, value,
           range, must, goal, mark);
}

static void
s_print_targets(const s_config_t *config, const double rss[2],
                const double rate[2], bool rss_ok)
{
    s_target_row("target (tq's ratio per row)", "tq", "(min-max)", "must",
                 "goal", "mark");
    printf("|%.42s|%.11s|%.17s|%.12s|%.13s|%.7s|\n", S_DASHES, S_DASHES,
           S_DASHES, S_DASHES, S_DASHES, S_DASHES);
    for (size_t i = 0; i < sizeof s_targets / sizeof s_targets[0]; i++) {
        const s_target_t *t = &s_targets[i];
        char value[32] = "-", range[48] = "not run", must[16], goal[16] = "-";
        const char *mark = "-";
        snprintf(must, sizeof must, "%s%.1fx",
                 t->higher ? ">=" : "<=", t->must);
        if (t->goal > 0)
            snprintf(goal, sizeof goal, "%s%.1fx",
                     t->higher ? ">=" : "<=", t->goal);
        if (!s_missing[t->num_by] && !s_missing[t->den_by]) {
            double ratios[TQ_BENCH_MAX_RUNS], m, lo, hi;
            for (int r = 0; r < config->runs; r++)
                ratios[r] = s_samples[t->num][r] / s_samples[t->den][r];
            s_stats(ratios, config->runs, &m, &lo, &hi);
            snprintf(value, sizeof value, "%.2fx", m);
            snprintf(range, sizeof range, "(%.2f-%.2f)", lo, hi);
            mark = s_mark(m, t->higher, t->must, t->goal);
        }
        s_target_row(t->name, value, range, must, goal, mark);
    }
    static const double must_mib[2] = {300, 150}, goal_mib[2] = {200, 64};
    char name[64], value[32], must[16], goal[16], count[16];
    s_count(count, sizeof count, config->rss_tasks);
    /* the targets are for a million: another count is shown, not marked */
    bool million = config->rss_tasks == 1000000;
    for (int s = 0; s < 2; s++) {
        snprintf(name, sizeof name, "broker RSS, %s waiting, %s", count,
                 s ? "store" : "no store");
        snprintf(value, sizeof value, "%.0f MiB", rss[s]);
        snprintf(must, sizeof must, "<=%.0f MiB", must_mib[s]);
        snprintf(goal, sizeof goal, "<=%.0f MiB", goal_mib[s]);
        s_target_row(name, rss_ok ? value : "-", rss_ok ? "(1 run)" : "not run",
                     must, goal,
                     rss_ok && million
                         ? s_mark(rss[s], false, must_mib[s], goal_mib[s])
                         : "-");
    }
    snprintf(value, sizeof value, "%.0f/s", rate[0]);
    char range[48];
    snprintf(range, sizeof range, "(store: %.0f)", rate[1]);
    snprintf(name, sizeof name, "submit rate of %s, one C client", count);
    s_target_row(name, rss_ok ? value : "-", rss_ok ? range : "not run",
                 ">=300000/s", ">=1000000/s",
                 rss_ok && million ? s_mark(rate[0], true, 300000, 1000000)
                                   : "-");
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: tq-bench [--runs R] [--tasks N] [--seq N] [--echo N] "
            "[--rss-tasks N] [--quick]\n"
            "                [--only LIST] [--prefetch LIST]\n"
            "  --runs R       interleaved rounds, 1..%d (default 7)\n"
            "  --tasks N      W1 tasks (default 20000)\n"
            "  --seq N        W2 sequential round trips (default 2000)\n"
            "  --echo N       W3 64 KiB tasks (default 2000)\n"
            "  --rss-tasks N  waiting tasks for the RSS rows, 0: skip them "
            "(default 1000000)\n"
            "  --quick        1 round, 2000 tasks, 200 round trips, 200 "
            "echoes, 100000 held\n"
            "  --only LIST    run only these contenders, comma-separated: "
            "tq durable os idle pg\n"
            "                 bare1 bare16 gearman pool python\n"
            "  --prefetch LIST instead: tq alone at each tq-worker --prefetch "
            "of LIST (e.g.\n"
            "                 1,2,4,8,16,32): W1, W4 (4 x 0.5 s sleeps on 3 "
            "children) and W4\n"
            "                 with the sleeps queued before the host starts\n",
            TQ_BENCH_MAX_RUNS);
}

static int
s_parse(int argc, char **argv, s_config_t *config)
{
    for (int i = 1; i < argc; i++) {
        int *target = NULL;
        if (strcmp(argv[i], "--quick") == 0) {
            *config = (s_config_t){
                2000, 200, 200, config->size, 1, 100000, config->children};
            continue;
        }
        if (strcmp(argv[i], "--prefetch") == 0 && i + 1 < argc) {
            if (s_parse_sweep(argv[++i]) != 0)
                return -1;
            continue;
        }
        if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            s_only = argv[++i];
            continue;
        }
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            s_usage(stdout);
            exit(0);
        }
        target = strcmp(argv[i], "--runs") == 0   ? &config->runs
            : strcmp(argv[i], "--tasks") == 0     ? &config->tasks
            : strcmp(argv[i], "--seq") == 0       ? &config->seq
            : strcmp(argv[i], "--echo") == 0      ? &config->echo
            : strcmp(argv[i], "--rss-tasks") == 0 ? &config->rss_tasks
                                                  : NULL;
        if (!target || i + 1 >= argc)
            return -1;
        char *end = NULL;
        errno = 0;
        long value = strtol(argv[++i], &end, 10);
        if (errno || *end || value < (target == &config->rss_tasks ? 0 : 1) ||
            value > 10000000)
            return -1;
        *target = (int)value;
    }
    return config->runs <= TQ_BENCH_MAX_RUNS ? 0 : -1;
}

/* The first non-empty line a command prints, or "" (buf of size bytes). */
static void
s_first_line(const char *command, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *p = popen(command, "r");
    if (!p)
        return;
    while (!buf[0] && fgets(buf, (int)size, p))
        buf[strcspn(buf, "\n")] = '\0';
    pclose(p);
}

static void
s_print_setup(const s_config_t *config)
{
    char python[128], gearmand[128] = "not built", command[256];
    snprintf(command, sizeof command,
             "%s -c 'import platform, multiprocessing; "
             "print(platform.python_version())' 2>/dev/null",
             tq_bench_python());
    s_first_line(command, python, sizeof python);
    if (!python[0])
        s_missing[C_PYTHON] = "no python3 with multiprocessing";
#ifdef TQ_BENCH_GEARMAND
    if (access(TQ_BENCH_GEARMAND, X_OK) == 0)
        s_first_line(TQ_BENCH_GEARMAND " --version 2>&1", gearmand,
                     sizeof gearmand);
    else
        s_missing[C_GEARMAN] = "no " TQ_BENCH_GEARMAND;
#else
    s_missing[C_GEARMAN] = "built without libgearman";
#endif
    printf("nice:    %d\n", getpriority(PRIO_PROCESS, 0));
    printf("python:  %s %s\n", tq_bench_python(),
           python[0] ? python : "not found");
    printf("gearman: %s\n",
           s_missing[C_GEARMAN] ? s_missing[C_GEARMAN] : gearmand);
    printf("setup:   %d interleaved rounds, each contender once per round; "
           "%d worker processes;\n"
           "         W1 %d no-op tasks submitted then collected; W2 %d "
           "sequential round trips;\n"
           "         W3 %d echoes of %d bytes; RSS rows once, %d waiting "
           "tasks of %d bytes\n\n",
           config->runs, config->children, config->tasks, config->seq,
           config->echo, config->size, config->rss_tasks, S_RSS_PAYLOAD);
    fflush(stdout);
}

int
main(int argc, char **argv)
{
    s_config_t config = {20000, 2000, 2000, 65536, 7, 1000000, 2};
    if (s_parse(argc, argv, &config) != 0) {
        s_usage(stderr);
        return 2;
    }
    tq_harness_init();
    tq_bench_print_machine();
    tq_bench_print_load("before");
    if (s_nsweep) {
        printf("setup:   %d interleaved rounds; W1 %d no-op tasks\n",
               config.runs, config.tasks);
        return s_run_sweep(&config);
    }
    s_print_setup(&config);

    int rc = 0;
    for (int run = 0; run < config.runs && rc == 0; run++) {
        for (int k = 0; k < S_CONTENDERS && rc == 0; k++) {
            int c = (run + k) % S_CONTENDERS;
            if (s_only && !s_missing[c]) {
                /* a key matches whole, between commas */
                size_t n = strlen(s_keys[c]);
                const char *p = s_only;
                bool listed = false;
                while ((p = strstr(p, s_keys[c])) && !listed) {
                    listed = (p == s_only || p[-1] == ',') &&
                             (p[n] == 0 || p[n] == ',');
                    p += n;
                }
                if (!listed)
                    s_missing[c] = "not in --only";
            }
            if (s_missing[c] || !s_contenders[c])
                continue;
            if (s_contenders[c](&config, run) != 0) {
                fprintf(stderr, "tq-bench: %s failed in round %d\n",
                        s_contender_names[c], run + 1);
                rc = 1;
            }
        }
        fprintf(stderr, "tq-bench: round %d of %d done\n", run + 1,
                config.runs);
    }
    double rss[2] = {0, 0}, rate[2] = {0, 0}, idle[2] = {0, 0};
    bool rss_ok = false;
    if (rc == 0 && config.rss_tasks > 0) {
        rss_ok = true;
        for (int s = 0; s < 2 && rss_ok; s++)
            if (s_hold(config.rss_tasks, s == 1, &rate[s], &rss[s], &idle[s]) !=
                0) {
                fprintf(stderr, "tq-bench: the RSS run failed\n");
                rss_ok = false;
                rc = 1;
            }
    }
    if (rc != 0) {
        fprintf(stderr, "tq-bench: failed\n");
        return 1;
    }
    s_print_results(&config, rss, rate, idle, rss_ok);
    printf("\n");
    tq_bench_print_load("after");
    printf("\n");
    s_print_targets(&config, rss, rate, rss_ok);
    printf("\nratios: the median over the rounds of tq / reference measured in "
           "the same round; (min-max) over the rounds.\nmark: PASS meets "
           "must, GOAL meets goal too; a benchmark, not a test.\n");
    return 0;
}
