/* test_cli.c - the tq command end to end: output, exit codes (0 ok, 1 task
   failed, 2 usage, 3 not ready, 4 unreachable, 5 unknown id), status as
   JSON, and the example client program against a real broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq_harness.h"

#define S_RUN_MS 20000 /* bound on one CLI run */


/* Broker, client, and a worker host of two children (extra: its args). */
static void
s_start(tq_harness_env_t *env, const char *const extra[])
{
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 2, extra, true) > 0);
}

/* Runs `tq args...` against broker and prints what it said. */
static void
s_tq(tq_harness_run_t *run, const char *broker, const char *const args[])
{
    const char *argv[32] = {TQ_CLI_BIN};
    size_t argc = 1;
    printf("$ tq");
    for (size_t i = 0; args[i] && argc < 31; i++) {
        argv[argc++] = args[i];
        printf(" %s", args[i]);
    }
    argv[argc] = NULL;
    printf("\n");
    assert_int_equal(tq_harness_run((char *const *)argv, broker, S_RUN_MS, run),
                     0);
    printf("  exit %d, stdout \"%s\", stderr \"%s\"\n", run->exit_code,
           run->out, run->err);
}

/* Strips trailing whitespace in place. */
static char *
s_trim(char *s)
{
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        s[--len] = '\0';
    return s;
}

static void
test_submit_wait(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *args[] = {"submit", "tq.echo", "1", "\"a\"", "--wait", NULL};
    s_tq(&run, env->broker.clients, args);
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(s_trim(run.out), "[1,\"a\"]");
    tq_harness_run_free(&run);
}

static void
test_submit_fail(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *args[] = {"submit", "tq.fail", "cli boom here", "--wait", NULL};
    s_tq(&run, env->broker.clients, args);
    assert_int_equal(run.exit_code, 1);
    assert_non_null(strstr(run.err, "cli boom here"));
    tq_harness_run_free(&run);
}

static void
test_get(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *unknown[] = {"get", "UNKNOWNID", NULL};
    s_tq(&run, env->broker.clients, unknown);
    assert_int_equal(run.exit_code, 5);
    tq_harness_run_free(&run);

    /* without --wait, submit prints the id and returns at once */
    const char *submit[] = {"submit", "tq.sleep", "2", NULL};
    s_tq(&run, env->broker.clients, submit);
    assert_int_equal(run.exit_code, 0);
    char id[80];
    snprintf(id, sizeof id, "%s", s_trim(run.out));
    tq_harness_run_free(&run);
    assert_int_equal(strlen(id), 32);

    const char *get[] = {"get", id, NULL};
    s_tq(&run, env->broker.clients, get);
    assert_int_equal(run.exit_code, 3);
    assert_true(strstr(run.out, "RUNNING") || strstr(run.out, "PENDING"));
    tq_harness_run_free(&run);

    const char *get_wait[] = {"get", id, "--wait", "--timeout", "10", NULL};
    s_tq(&run, env->broker.clients, get_wait);
    assert_int_equal(run.exit_code, 0);
    tq_harness_run_free(&run);
}

static void
test_status_json(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *args[] = {"status", "--json", NULL};
    s_tq(&run, env->broker.clients, args);
    assert_int_equal(run.exit_code, 0);
    json_error_t error;
    json_t *root = json_loads(run.out, 0, &error);
    if (!root)
        fail_msg("status --json is not JSON: %s (line %d)", error.text,
                 error.line);
    assert_true(json_is_object(root));
    assert_true(json_is_array(json_object_get(root, "queues")));
    json_t *workers = json_object_get(root, "workers");
    assert_true(json_is_array(workers));
    assert_int_equal(json_array_size(workers), 2);
    json_t *counters = json_object_get(root, "counters");
    assert_true(json_is_object(counters));
    assert_true(json_is_integer(json_object_get(counters, "submitted")));
    json_decref(root);
    tq_harness_run_free(&run);

    const char *plain[] = {"status", NULL};
    s_tq(&run, env->broker.clients, plain);
    assert_int_equal(run.exit_code, 0);
    assert_true(strlen(run.out) > 0);
    tq_harness_run_free(&run);
}

static void
test_usage(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    static const char *const cases[][4] = {
        {"frobnicate", NULL},
        {NULL},
        {"submit", NULL},
        {"get", NULL},
        {"submit", "tq.echo", "--priority", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_harness_run_t run;
        s_tq(&run, env->broker.clients, cases[i]);
        assert_int_equal(run.exit_code, 2);
        tq_harness_run_free(&run);
    }
}

static void
test_unreachable(void **state)
{
    (void)state;
    char endpoint[TQ_HARNESS_EP_MAX];
    assert_int_equal(tq_harness_free_endpoint(endpoint, sizeof endpoint), 0);
    tq_harness_run_t run;
    const char *submit[] = {"submit", "tq.echo", "1", "--wait", NULL};
    int64_t t0 = tq_harness_now_ms();
    s_tq(&run, endpoint, submit);
    assert_int_equal(run.exit_code, 4);
    assert_true(tq_harness_now_ms() - t0 < 10000);
    tq_harness_run_free(&run);
    const char *status[] = {"status", NULL};
    s_tq(&run, endpoint, status);
    assert_int_equal(run.exit_code, 4);
    tq_harness_run_free(&run);
}

static void
test_client_demo(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--module", TQ_MYTASKS_SO, NULL};
    s_start(env, extra);
    const char *argv[] = {TQ_CLIENT_DEMO_BIN, env->broker.clients, NULL};
    tq_harness_run_t run;
    assert_int_equal(
        tq_harness_run((char *const *)argv, env->broker.clients, 60000, &run),
        0);
    printf("client_demo: exit %d\n%s%s", run.exit_code, run.out, run.err);
    assert_int_equal(run.exit_code, 0);
    tq_harness_run_free(&run);
}

/* ---- issue 15: the edges a new user hit ------------------------------- */

/* Reads fd into buf (size bytes, NUL-terminated) until it holds needle or
   timeout_ms passes. Returns true if found. */
static bool
s_read_until(int fd, char *buf, size_t size, const char *needle,
             int timeout_ms)
{
    size_t used = strlen(buf);
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (!strstr(buf, needle)) {
        int left = (int)(deadline - tq_harness_now_ms());
        if (left <= 0 || used + 1 >= size)
            return false;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t n = read(fd, buf + used, size - used - 1);
        if (n <= 0)
            return strstr(buf, needle) != NULL;
        used += (size_t)n;
        buf[used] = 0;
    }
    return true;
}

/* Runs a binary (path) with args, TQ_BROKER unset. */
static void
s_bin(tq_harness_run_t *run, const char *bin, const char *const args[])
{
    const char *argv[32] = {bin};
    size_t argc = 1;
    for (size_t i = 0; args[i] && argc < 31; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    assert_int_equal(tq_harness_run((char *const *)argv, NULL, S_RUN_MS, run),
                     0);
    printf("$ %s ...: exit %d, stdout \"%s\", stderr \"%s\"\n", bin,
           run->exit_code, run->out, run->err);
}

/* A task no connected worker provides: --wait says so at once on stderr;
   with --timeout the timeout's error says it too; without, tq keeps
   waiting after saying it once. */
static void
test_unserved(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *timed[] = {"submit", "no.such.task", "1", "--wait",
                           "--timeout", "1", NULL};
    s_tq(&run, env->broker.clients, timed);
    assert_int_equal(run.exit_code, 3);
    assert_non_null(strstr(run.err, "no connected worker provides "
                                    "no.such.task"));
    assert_non_null(strstr(run.err, "TQ_ETIMEDOUT"));
    assert_string_equal(run.out, "");
    tq_harness_run_free(&run);

    /* without --timeout: the note comes, tq goes on waiting */
    const char *argv[] = {TQ_CLI_BIN, "--broker", env->broker.clients,
                          "submit", "no.such.task", "--wait", NULL};
    int err_fd = -1;
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, NULL, &err_fd);
    assert_true(pid > 0);
    char err[4096] = "";
    assert_true(s_read_until(err_fd, err, sizeof err,
                             "no connected worker provides no.such.task",
                             S_RUN_MS));
    assert_true(tq_harness_alive(pid));
    /* a served task next to it still runs: the broker is not stuck */
    const char *served[] = {"submit", "tq.echo", "ok", "--wait", NULL};
    s_tq(&run, env->broker.clients, served);
    assert_int_equal(run.exit_code, 0);
    tq_harness_run_free(&run);
    assert_true(tq_harness_alive(pid));
    /* said once */
    const char *second = strstr(strstr(err, "no connected worker") + 1,
                                "no connected worker");
    assert_null(second);
    tq_harness_stop(pid);
    close(err_fd);
}

/* Malformed JSON that looks like JSON is an error, nothing is submitted;
   options take --opt=value; values like -5 stay arguments. */
static void
test_json_and_options(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *bad[] = {"submit", "tq.echo", "{\"a\":", NULL};
    s_tq(&run, env->broker.clients, bad);
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "malformed JSON"));
    tq_harness_run_free(&run);
    const char *bad_list[] = {"submit", "tq.echo", "[1,2", "--wait", NULL};
    s_tq(&run, env->broker.clients, bad_list);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);
    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(env->client, &st, 5000), TQ_OK);
    assert_int_equal(tq_harness_counter(&st, "submitted"), 0);
    tq_harness_status_free(&st);

    char broker_opt[TQ_HARNESS_EP_MAX + 16];
    snprintf(broker_opt, sizeof broker_opt, "--broker=%s",
             env->broker.clients);
    const char *eq[] = {broker_opt,     "submit",      "tq.echo",
                        "--queue=default", "--priority=3", "-5",
                        "plain",        "--wait",      "--timeout=20",
                        "--json",       NULL};
    s_tq(&run, NULL, eq);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "\"value\":[-5,\"plain\"]"));
    tq_harness_run_free(&run);

    /* an unknown option: one line and the synopsis, not the whole text */
    const char *unknown[] = {"submit", "tq.echo", "--bogus", NULL};
    s_tq(&run, env->broker.clients, unknown);
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "--bogus: unknown option"));
    assert_null(strstr(run.err, "Each ARG"));
    tq_harness_run_free(&run);
}

/* --version on all three binaries, from the CMake project version. */
static void
test_version(void **state)
{
    (void)state;
    const char *args[] = {"--version", NULL};
    const char *bins[] = {TQ_CLI_BIN, TQ_BROKER_BIN, TQ_WORKER_BIN};
    const char *names[] = {"tq ", "tq-broker ", "tq-worker "};
    for (int i = 0; i < 3; i++) {
        tq_harness_run_t run;
        s_bin(&run, bins[i], args);
        assert_int_equal(run.exit_code, 0);
        char want[64];
        snprintf(want, sizeof want, "%s%s\n", names[i], TQ_VERSION);
        assert_string_equal(run.out, want);
        tq_harness_run_free(&run);
    }
}

/* Endpoints are checked with a hint; a typo is refused, never
   half-bound; a worker without a transport exits 2 at once instead of a
   crash loop. */
static void
test_endpoints(void **state)
{
    (void)state;
    tq_harness_run_t run;
    const char *cli[] = {"--broker", "127.0.0.1:5555", "status", NULL};
    s_bin(&run, TQ_CLI_BIN, cli);
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "did you mean tcp://127.0.0.1:5555"));
    tq_harness_run_free(&run);

    char free_ep[TQ_HARNESS_EP_MAX], bad_ep[TQ_HARNESS_EP_MAX + 8];
    assert_int_equal(tq_harness_free_endpoint(free_ep, sizeof free_ep), 0);
    snprintf(bad_ep, sizeof bad_ep, "%sx", free_ep);
    const char *broker[] = {"--clients", bad_ep, "--workers",
                            "tcp://127.0.0.1:*", "--no-persist", NULL};
    s_bin(&run, TQ_BROKER_BIN, broker);
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "is not a number"));
    tq_harness_run_free(&run);
    /* nothing was bound: the port is still free */
    tq_client_t *probe = tq_client_new(free_ep);
    tq_buf_t body;
    tq_client_set_liveness(probe, 500);
    assert_int_not_equal(tq_client_status(probe, &body, 1000), TQ_OK);
    tq_client_destroy(&probe);

    const char *worker[] = {"--broker", "127.0.0.1:5556", "-c", "1", NULL};
    s_bin(&run, TQ_WORKER_BIN, worker);
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "did you mean tcp://127.0.0.1:5556"));
    assert_null(strstr(run.err, "child"));
    tq_harness_run_free(&run);

    setenv("TQ_WORKER_BROKER", "tcp://127.0.0.1:99999", 1);
    const char *none[] = {"-c", "1", NULL};
    s_bin(&run, TQ_WORKER_BIN, none);
    unsetenv("TQ_WORKER_BROKER");
    assert_int_equal(run.exit_code, 2);
    assert_non_null(strstr(run.err, "99999"));
    tq_harness_run_free(&run);
}

/* Any number of ids; unknown ids in one format everywhere; --json says
   UNKNOWN, not FAILURE. */
static void
test_ids(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *submit[] = {"submit", "tq.echo", "7", NULL};
    s_tq(&run, env->broker.clients, submit);
    assert_int_equal(run.exit_code, 0);
    char id[80];
    snprintf(id, sizeof id, "%s", s_trim(run.out));
    tq_harness_run_free(&run);

    const char *unknown = "0123456789abcdef0123456789abcdef";
    const char *argv[104] = {TQ_CLI_BIN, "wait"};
    int argc = 2;
    for (int i = 0; i < 100; i++)
        argv[argc++] = id;
    argv[argc++] = unknown;
    argv[argc] = NULL;
    assert_int_equal(tq_harness_run((char *const *)argv, env->broker.clients,
                                    S_RUN_MS, &run),
                     0);
    assert_int_equal(run.exit_code, 5);
    int lines = 0;
    for (const char *p = run.out; (p = strstr(p, "[7]\n")); p++)
        lines++;
    assert_int_equal(lines, 100);
    char want[160];
    snprintf(want, sizeof want,
             "error: TQ_EUNKNOWN: %s: unknown task id (never submitted, or "
             "its result expired)\n",
             unknown);
    assert_string_equal(run.err, want);
    tq_harness_run_free(&run);

    const char *verbs[][3] = {{"get", unknown, NULL},
                              {"cancel", unknown, NULL},
                              {"retry", unknown, NULL}};
    for (int i = 0; i < 3; i++) {
        s_tq(&run, env->broker.clients, verbs[i]);
        assert_int_equal(run.exit_code, 5);
        assert_string_equal(run.err, want);
        tq_harness_run_free(&run);
    }
    const char *json[] = {"get", unknown, "--json", NULL};
    s_tq(&run, env->broker.clients, json);
    assert_int_equal(run.exit_code, 5);
    assert_non_null(strstr(run.out, "\"state\":\"UNKNOWN\""));
    assert_null(strstr(run.out, "FAILURE"));
    tq_harness_run_free(&run);
}

/* tq keygen --json NAME DIR: --json is an option, not a directory. */
static void
test_keygen_json(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "keygen"), 0);
    const char *args[] = {"keygen", "--json", "alice", dir, NULL};
    tq_harness_run_t run;
    s_bin(&run, TQ_CLI_BIN, args);
    assert_int_equal(run.exit_code, 0);
    json_t *j = json_loads(run.out, 0, NULL);
    assert_non_null(j);
    assert_true(json_is_string(json_object_get(j, "key")));
    json_decref(j);
    char path[512];
    snprintf(path, sizeof path, "%s/alice.cert", dir);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/--json.cert", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    tq_harness_run_free(&run);
    tq_harness_rmtree(dir);
}

/* The library's log lines (czmq's zsys_*) go to stderr with an ISO-8601
   timestamp and a level; stdout carries results alone. */
static void
test_logs_on_stderr(void **state)
{
    (void)state;
    char endpoint[TQ_HARNESS_EP_MAX];
    assert_int_equal(tq_harness_free_endpoint(endpoint, sizeof endpoint), 0);
    const char *args[] = {"--log-level=info", "submit", "tq.echo", "1",
                          "--wait", NULL};
    tq_harness_run_t run;
    s_tq(&run, endpoint, args);
    assert_int_equal(run.exit_code, 4);
    assert_string_equal(run.out, "");
    /* "silent for" comes from the library, through czmq's log */
    const char *line = strstr(run.err, "WARNING tq client: broker at");
    assert_non_null(line);
    /* 2026-12-01T14:50:47.123Z tq[PID] WARNING ... */
    const char *stamp = strstr(run.err, "Z tq[");
    assert_non_null(stamp);
    assert_true(stamp - run.err >= 23 && stamp[-13] == 'T');
    tq_harness_run_free(&run);

    /* by default only tq's own error line: no library log mixed in */
    const char *plain[] = {"submit", "tq.echo", "1", "--wait", NULL};
    s_tq(&run, endpoint, plain);
    assert_int_equal(run.exit_code, 4);
    assert_string_equal(run.out, "");
    assert_null(strstr(run.err, "WARNING"));
    assert_int_equal(strncmp(run.err, "error: TQ_EUNREACHABLE: ", 24), 0);
    assert_int_equal(strchr(run.err, '\n') - run.err + 1,
                     (long)strlen(run.err));
    tq_harness_run_free(&run);

    const char *json_args[] = {"--log-json", "--log-level", "info", "submit",
                               "tq.echo", "1", "--wait", NULL};
    s_tq(&run, endpoint, json_args);
    assert_string_equal(run.out, "");
    assert_non_null(strstr(run.err, "{\"ts\":\""));
    assert_non_null(strstr(run.err, "\"level\":\"warning\""));
    tq_harness_run_free(&run);
}

/* --countdown and --eta hold a task back: it is not run before then. */
static void
test_countdown_eta(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    char eta[32];
    snprintf(eta, sizeof eta, "--eta=@%lld", (long long)time(NULL) + 3600);
    const char *later[][5] = {{"submit", "tq.echo", "x", "--countdown=3600",
                               NULL},
                              {"submit", "tq.echo", "y", eta, NULL}};
    char ids[2][80];
    for (int i = 0; i < 2; i++) {
        s_tq(&run, env->broker.clients, later[i]);
        assert_int_equal(run.exit_code, 0);
        snprintf(ids[i], sizeof ids[i], "%s", s_trim(run.out));
        tq_harness_run_free(&run);
    }
    /* a task submitted after them runs first: they are held back */
    const char *now[] = {"submit", "tq.echo", "z", "--wait", NULL};
    s_tq(&run, env->broker.clients, now);
    assert_int_equal(run.exit_code, 0);
    tq_harness_run_free(&run);
    for (int i = 0; i < 2; i++) {
        const char *get[] = {"get", ids[i], NULL};
        s_tq(&run, env->broker.clients, get);
        assert_int_equal(run.exit_code, 3);
        assert_non_null(strstr(run.out, "SCHEDULED")); /* its own state */
        tq_harness_run_free(&run);
    }
    const char *both[] = {"submit", "tq.echo", "--countdown", "1", eta,
                          NULL};
    s_tq(&run, env->broker.clients, both);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);
    const char *bad[] = {"submit", "tq.echo", "--eta", "tomorrowish", NULL};
    s_tq(&run, env->broker.clients, bad);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);
    /* ISO-8601 with a zone: a time past runs at once, one too far (past
       what a countdown holds, 24 days) is refused */
    const char *past[] = {"submit", "tq.echo", "p", "--eta",
                          "2000-01-01T00:00:00Z", "--wait", NULL};
    s_tq(&run, env->broker.clients, past);
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(s_trim(run.out), "[\"p\"]");
    tq_harness_run_free(&run);
    const char *far[] = {"submit", "tq.echo", "f",
                         "--eta=2999-01-01T00:00:00+02:00", NULL};
    s_tq(&run, env->broker.clients, far);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);
    /* a short countdown still ends in the result */
    const char *soon[] = {"submit", "tq.echo", "s", "--countdown", "0.2",
                          "--wait", NULL};
    s_tq(&run, env->broker.clients, soon);
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(s_trim(run.out), "[\"s\"]");
    tq_harness_run_free(&run);
}

/* Ctrl-C during tq map cancels the tasks in flight and says how many. */
static void
test_map_interrupt(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    char dir[256], input[300], cmd[1024];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "mapint"), 0);
    snprintf(input, sizeof input, "%s/in", dir);
    FILE *f = fopen(input, "w");
    assert_non_null(f);
    for (int i = 0; i < 10; i++)
        fputs("60\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "exec %s --broker %s map tq.sleep -j 2 --no-progress < %s",
             TQ_CLI_BIN, env->broker.clients, input);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int err_fd = -1;
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, NULL, &err_fd);
    assert_true(pid > 0);
    /* both children busy: two tasks in flight */
    int64_t deadline = tq_harness_now_ms() + S_RUN_MS;
    uint64_t running = 0;
    while (running < 2 && tq_harness_now_ms() < deadline) {
        tq_harness_status_t st = {0};
        if (tq_harness_status(env->client, &st, 2000) == TQ_OK)
            running = tq_harness_map_uint(tq_harness_queue(&st, "default"),
                                          "running", 0);
        tq_harness_status_free(&st);
        if (running < 2)
            tq_harness_sleep_ms(50);
    }
    assert_int_equal(running, 2);
    kill(pid, SIGINT);
    int status = 0;
    assert_int_equal(tq_harness_wait_exit(pid, S_RUN_MS, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 130);
    char err[8192] = "";
    s_read_until(err_fd, err, sizeof err, "interrupted", 2000);
    close(err_fd);
    printf("stderr: %s\n", err);
    assert_non_null(strstr(err, "cancelled 2 task(s) in flight"));
    /* the broker agrees: nothing left running or waiting */
    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(env->client, &st, 5000), TQ_OK);
    assert_int_equal(tq_harness_counter(&st, "cancelled"), 2);
    assert_int_equal(tq_harness_counter(&st, "submitted"), 2);
    tq_harness_status_free(&st);
    tq_harness_rmtree(dir);
}

/* Ctrl-C during tq map while the broker is stopped (SIGSTOP): none of the
   100 cancels is answered, and tq map gives them 5 s together, then
   exits 130 and says so. Before, it waited 5 s per line in flight (500 s
   here, hours for -j 32000). */
static void
test_map_interrupt_broker_stopped(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    enum { LINES = 100 };
    char dir[256], input[300], cmd[1024];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "mapstop"), 0);
    snprintf(input, sizeof input, "%s/in", dir);
    FILE *f = fopen(input, "w");
    assert_non_null(f);
    for (int i = 0; i < LINES; i++)
        fputs("60\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "exec %s --broker %s map tq.sleep -j %d --no-progress < %s",
             TQ_CLI_BIN, env->broker.clients, LINES, input);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    int err_fd = -1;
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, NULL, &err_fd);
    assert_true(pid > 0);
    /* every line submitted: two running, the rest waiting */
    int64_t deadline = tq_harness_now_ms() + S_RUN_MS;
    uint64_t submitted = 0;
    while (submitted < LINES && tq_harness_now_ms() < deadline) {
        tq_harness_status_t st = {0};
        if (tq_harness_status(env->client, &st, 2000) == TQ_OK)
            submitted = tq_harness_counter(&st, "submitted");
        tq_harness_status_free(&st);
        if (submitted < LINES)
            tq_harness_sleep_ms(50);
    }
    assert_int_equal(submitted, LINES);
    assert_int_equal(kill(env->broker.pid, SIGSTOP), 0);
    kill(pid, SIGINT);
    int status = 0;
    int rc = tq_harness_wait_exit(pid, S_RUN_MS, &status);
    kill(env->broker.pid, SIGCONT);
    if (rc != 0) {
        kill(pid, SIGKILL);
        tq_harness_wait_exit(pid, S_RUN_MS, NULL);
    }
    char err[8192] = "";
    s_read_until(err_fd, err, sizeof err, "interrupted", 2000);
    close(err_fd);
    printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 130);
    assert_non_null(strstr(err, "cancelled 0 task(s) in flight (100 asked"));
    tq_harness_rmtree(dir);
}

/* The broker's data directory follows $STATE_DIRECTORY and is logged. */
static void
test_state_directory(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "state"), 0);
    setenv("STATE_DIRECTORY", dir, 1);
    const char *argv[] = {TQ_BROKER_BIN, "--clients", "tcp://127.0.0.1:*",
                          "--workers", "tcp://127.0.0.1:*", NULL};
    int out_fd = -1, err_fd = -1;
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, &out_fd, &err_fd);
    unsetenv("STATE_DIRECTORY");
    assert_true(pid > 0);
    /* bound once it prints its endpoints: the store is open by then */
    char out[1024] = "", err[4096] = "";
    assert_true(s_read_until(out_fd, out, sizeof out, "workers", S_RUN_MS));
    char want[300];
    snprintf(want, sizeof want, "INFO data in %s", dir);
    bool logged = s_read_until(err_fd, err, sizeof err, want, S_RUN_MS);
    printf("stderr: %s\n", err);
    assert_true(logged);
    assert_int_equal(tq_harness_stop(pid), 0);
    close(out_fd);
    close(err_fd);
    /* the store is there, not in ./tq-data */
    struct stat sb;
    char path[400];
    snprintf(path, sizeof path, "%s/tq.db", dir);
    assert_int_equal(stat(path, &sb), 0);
    tq_harness_rmtree(dir);
}

/* tq-broker with no endpoint flags listens on loopback only (opening it to
   the network is a decision). Its defaults are fixed ports, so it runs in a
   network namespace of its own (unshare -n), where they are free. */
static void
test_loopback_default(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        print_message("skipped: needs root for a network namespace\n");
        skip();
    }
    const char *argv[] = {"/usr/bin/unshare", "-n",  "/bin/sh", "-c",
                          "ip link set lo up && exec \"$0\" --no-persist",
                          TQ_BROKER_BIN,      NULL};
    int out_fd = -1, err_fd = -1;
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, &out_fd, &err_fd);
    assert_true(pid > 0);
    char out[1024] = "";
    bool printed = s_read_until(out_fd, out, sizeof out, "workers", S_RUN_MS);
    printf("tq-broker with no flags: %s\n", out);
    assert_true(printed);
    assert_non_null(strstr(out, "tcp://127.0.0.1:5555"));
    assert_non_null(strstr(out, "tcp://127.0.0.1:5556"));
    assert_null(strstr(out, "0.0.0.0"));
    assert_int_equal(tq_harness_stop(pid), 0);
    close(out_fd);
    close(err_fd);
}

/* SIGHUP on tq-worker reopens --log-file and does not kill it. */
static void
test_worker_sighup(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    char dir[256], log[300], moved[310];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "hup"), 0);
    snprintf(log, sizeof log, "%s/worker.log", dir);
    snprintf(moved, sizeof moved, "%s.1", log);
    char opt[320];
    snprintf(opt, sizeof opt, "--log-file=%s", log);
    const char *extra[] = {opt, NULL};
    pid_t pid = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(pid > 0);
    /* logrotate: move the file, SIGHUP */
    assert_int_equal(rename(log, moved), 0);
    kill(pid, SIGHUP);
    int64_t deadline = tq_harness_now_ms() + S_RUN_MS;
    while (access(log, F_OK) != 0 && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(20);
    assert_int_equal(access(log, F_OK), 0);
    assert_true(tq_harness_alive(pid));
    /* the next log line lands in the new file: a child's death */
    pid_t children[4];
    assert_true(tq_harness_children(pid, children, 4) >= 1);
    kill(children[0], SIGKILL);
    char text[4096] = "";
    const char *died = "killed by SIGKILL";
    while (!strstr(text, died) && tq_harness_now_ms() < deadline) {
        FILE *f = fopen(log, "r");
        if (f) {
            size_t n = fread(text, 1, sizeof text - 1, f);
            text[n] = 0;
            fclose(f);
        }
        if (!strstr(text, died))
            tq_harness_sleep_ms(20);
    }
    printf("new log: %s\n", text);
    assert_non_null(strstr(text, died));
    assert_true(tq_harness_alive(pid));
    tq_harness_rmtree(dir);
}

/* The systemd units pass `systemd-analyze verify` (with this build's
   binaries in ExecStart). */
static void
test_systemd_units(void **state)
{
    (void)state;
    if (access("/usr/bin/systemd-analyze", X_OK) != 0 &&
        access("/bin/systemd-analyze", X_OK) != 0) {
        printf("systemd-analyze not installed (scripts/deps.sh installs "
               "it)\n");
        skip();
    }
    const char *argv[] = {"/usr/bin/systemd-analyze", "verify", "--man=no",
                          TQ_BINARY_DIR "/dist/verify/tq-broker.service",
                          TQ_BINARY_DIR "/dist/verify/tq-worker@.service",
                          NULL};
    tq_harness_run_t run;
    assert_int_equal(tq_harness_run((char *const *)argv, NULL, 60000, &run),
                     0);
    printf("systemd-analyze: exit %d\n%s%s", run.exit_code, run.out,
           run.err);
    assert_int_equal(run.exit_code, 0);
    /* unknown settings are only warnings: there must be none */
    assert_string_equal(run.err, "");
    tq_harness_run_free(&run);
}

#ifdef TQ_HAVE_SYSTEMD
/* tq-broker tells systemd READY=1 once bound (Type=notify). */
static void
test_sd_notify(void **state)
{
    (void)state;
    char dir[256];
    assert_int_equal(tq_harness_tempdir(dir, sizeof dir, "notify"), 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    assert_true(strlen(dir) + 8 < sizeof addr.sun_path);
    memcpy(addr.sun_path, dir, strlen(dir));
    memcpy(addr.sun_path + strlen(dir), "/notify", 8);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    setenv("NOTIFY_SOCKET", addr.sun_path, 1);
    tq_harness_broker_t broker;
    memset(&broker, 0, sizeof broker);
    const char *extra[] = {"--no-persist", NULL};
    int rc = tq_harness_broker_start(&broker, extra);
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(rc, 0);
    char msg[512] = "";
    struct pollfd p = {fd, POLLIN, 0};
    assert_int_equal(poll(&p, 1, S_RUN_MS), 1);
    ssize_t n = recv(fd, msg, sizeof msg - 1, 0);
    assert_true(n > 0);
    msg[n] = 0;
    assert_non_null(strstr(msg, "READY=1"));
    tq_harness_broker_stop(&broker);
    close(fd);
    tq_harness_rmtree(dir);
}
#endif

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_submit_wait, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_submit_fail, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_get, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_status_json, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_usage, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_unreachable, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_client_demo, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_unserved, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_json_and_options, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test_setup_teardown(test_ids, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test(test_keygen_json),
        cmocka_unit_test(test_logs_on_stderr),
        cmocka_unit_test_setup_teardown(test_countdown_eta, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_interrupt, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_interrupt_broker_stopped,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test(test_state_directory),
        cmocka_unit_test(test_loopback_default),
        cmocka_unit_test_setup_teardown(test_worker_sighup, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test(test_systemd_units),
#ifdef TQ_HAVE_SYSTEMD
        cmocka_unit_test(test_sd_notify),
#endif
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
