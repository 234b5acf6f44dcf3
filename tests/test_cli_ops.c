/* test_cli_ops.c - the tq command's operator verbs end to end: each verb's
   exit code and --json shape, tq map over 10,000 lines in order, the
   progress bar on a pty and not in a pipe, tq exec over two worker hosts,
   and tq exec refused where no worker runs with --allow-exec. */
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
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tq_harness.h"

#define S_RUN_MS 60000 /* bound on one CLI run */
#define S_MAP_LINES 10000

extern char **environ;


/* Broker, client, and one worker host of two children (extra: its
   args). */
static void
s_start(tq_harness_env_t *env, const char *const extra[])
{
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 2, extra, true) > 0);
}

/* Writes text to a fresh temporary file; returns its path (malloc'd). */
static char *
s_temp_file(const char *text, size_t len)
{
    char *path = strdup("/tmp/tq_cli_ops_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        assert_true(n > 0);
        off += (size_t)n;
    }
    close(fd);
    return path;
}

/* Runs `tq args...` with stdin from input (NULL: inherited) and prints
   what it said (trimmed to a few hundred bytes). */
static void
s_tq(tq_harness_run_t *run, const char *broker, const char *input,
     const char *const args[])
{
    const char *argv[64];
    size_t argc = 0;
    char *path = NULL;
    if (input) {
        path = s_temp_file(input, strlen(input));
        argv[argc++] = "/bin/sh";
        argv[argc++] = "-c";
        argv[argc++] = "exec \"$@\" < \"$0\"";
        argv[argc++] = path;
    }
    argv[argc++] = TQ_CLI_BIN;
    printf("$ tq");
    for (size_t i = 0; args[i] && argc < 63; i++) {
        argv[argc++] = args[i];
        printf(" %s", args[i]);
    }
    argv[argc] = NULL;
    printf("%s\n", input ? " < input" : "");
    assert_int_equal(tq_harness_run((char *const *)argv, broker, S_RUN_MS, run),
                     0);
    printf("  exit %d, stdout \"%.300s\", stderr \"%.300s\"\n",
           run->exit_code, run->out, run->err);
    if (path) {
        unlink(path);
        free(path);
    }
}

/* Parses one JSON document (fails the test if it is not one). */
static json_t *
s_json(const char *text)
{
    json_error_t error;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &error);
    if (!j)
        fail_msg("not JSON: %s: %.200s", error.text, text);
    return j;
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

/* ---- map ---------------------------------------------------------------- */

static void
test_map_10000_in_order(void **state)
{
    tq_harness_env_t *env = *state;
    const char *extra[] = {"--prefetch", "16", NULL};
    s_start(env, extra);
    size_t size = S_MAP_LINES * 24;
    char *input = malloc(size), *p = input;
    assert_non_null(input);
    for (int i = 0; i < S_MAP_LINES; i++)
        p += sprintf(p, i % 3 ? "line %d\n" : "[%d, \"x\"]\n", i);
    tq_harness_run_t run;
    const char *args[] = {"map", "tq.echo", NULL};
    int64_t t0 = tq_harness_now_ms();
    s_tq(&run, env->broker.clients, input, args);
    int64_t ms = tq_harness_now_ms() - t0;
    printf("  %d lines in %lld ms (%.0f lines/s)\n", S_MAP_LINES,
           (long long)ms, S_MAP_LINES * 1000.0 / (double)(ms ? ms : 1));
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(run.err, ""); /* a pipe: no progress bar */
    char *save = NULL, *line = strtok_r(run.out, "\n", &save);
    for (int i = 0; i < S_MAP_LINES; i++) {
        char want[64];
        if (i % 3)
            snprintf(want, sizeof want, "[\"line %d\"]", i);
        else
            snprintf(want, sizeof want, "[%d,\"x\"]", i);
        if (!line || strcmp(line, want) != 0)
            fail_msg("line %d: want %s, got %s", i, want,
                     line ? line : "(end)");
        line = strtok_r(NULL, "\n", &save);
    }
    assert_null(line);
    tq_harness_run_free(&run);
    free(input);
}

static void
test_map_failures_and_json(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    /* tq.fail fails with its one argument; [] fails with the default */
    const char *args[] = {"map", "tq.fail", NULL};
    s_tq(&run, env->broker.clients, "boom one\n[]\n", args);
    assert_int_equal(run.exit_code, 1);
    assert_string_equal(run.out, "");
    assert_non_null(strstr(run.err, "line 1: TQ_ETASK: boom one"));
    assert_non_null(strstr(run.err, "line 2: TQ_ETASK"));
    tq_harness_run_free(&run);

    const char *json_args[] = {"map", "tq.echo", "--json", "-j", "3",
                               "--unordered", NULL};
    s_tq(&run, env->broker.clients, "a\n2\n{\"k\": [1]}\n", json_args);
    assert_int_equal(run.exit_code, 0);
    int seen = 0;
    char *save = NULL;
    for (char *l = strtok_r(run.out, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save)) {
        json_t *j = s_json(l);
        json_int_t n = json_integer_value(json_object_get(j, "line"));
        assert_true(n >= 1 && n <= 3);
        seen |= 1 << n;
        assert_string_equal(json_string_value(json_object_get(j, "code")),
                            "TQ_OK");
        assert_string_equal(json_string_value(json_object_get(j, "state")),
                            "SUCCESS");
        assert_int_equal(strlen(json_string_value(json_object_get(j, "id"))),
                         32);
        json_t *value = json_object_get(j, "value");
        assert_true(json_is_array(value));
        assert_int_equal(json_array_size(value), 1);
        json_decref(j);
    }
    assert_int_equal(seen, 0xE);
    tq_harness_run_free(&run);

    /* a task nobody provides fails fast instead of waiting forever */
    const char *unserved[] = {"map", "no.such.task", NULL};
    int64_t t0 = tq_harness_now_ms();
    s_tq(&run, env->broker.clients, "1\n", unserved);
    assert_int_equal(run.exit_code, 1);
    assert_non_null(strstr(run.err, "no connected worker provides"));
    assert_true(tq_harness_now_ms() - t0 < 10000);
    tq_harness_run_free(&run);
}

/* Runs `tq map tq.echo` with stderr on a pseudo-terminal and stdin from a
   file; returns what the terminal showed (malloc'd). */
static char *
s_map_on_pty(const char *broker, const char *input, int *exit_code)
{
    char *path = s_temp_file(input, strlen(input));
    int master, slave;
    assert_int_equal(openpty(&master, &slave, NULL, NULL, NULL), 0);
    /* built before fork: the child only execs (we have threads) */
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof *envp);
    assert_non_null(envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "TQ_BROKER=", 10) != 0)
            envp[k++] = environ[i];
    char broker_var[TQ_HARNESS_EP_MAX + 16];
    snprintf(broker_var, sizeof broker_var, "TQ_BROKER=%s", broker);
    envp[k++] = broker_var;
    char *const argv[] = {TQ_CLI_BIN, "map", "tq.echo", NULL};
    int in_fd = open(path, O_RDONLY | O_CLOEXEC);
    int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    assert_true(in_fd >= 0 && null_fd >= 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in_fd, 0);
        dup2(null_fd, 1);
        dup2(slave, 2);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(slave);
    close(in_fd);
    close(null_fd);
    free(envp);
    size_t len = 0, cap = 4096;
    char *text = malloc(cap);
    assert_non_null(text);
    int64_t deadline = tq_harness_now_ms() + S_RUN_MS;
    for (;;) {
        int64_t left = deadline - tq_harness_now_ms();
        if (left <= 0)
            break;
        struct pollfd pfd = {master, POLLIN, 0};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        if (len + 1024 > cap) {
            cap *= 2;
            text = realloc(text, cap);
            assert_non_null(text);
        }
        ssize_t got = read(master, text + len, cap - len - 1);
        if (got <= 0) /* EIO once the child closed the slave */
            break;
        len += (size_t)got;
    }
    text[len] = 0;
    close(master);
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < 500 && done == 0; i++) {
        done = waitpid(pid, &status, WNOHANG);
        if (done == 0)
            tq_harness_sleep_ms(20);
    }
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    unlink(path);
    free(path);
    return text;
}

static void
test_progress_bar(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    int exit_code;
    char *shown = s_map_on_pty(env->broker.clients, "1\n2\n3\n4\n5\n",
                               &exit_code);
    printf("  pty showed: \"%s\"\n", shown);
    assert_int_equal(exit_code, 0);
    assert_non_null(strstr(shown, "5/5"));
    assert_non_null(strstr(shown, "/s"));
    assert_non_null(strstr(shown, "ETA"));
    assert_non_null(strstr(shown, "failed 0"));
    free(shown);

    /* a pipe gets no bar */
    tq_harness_run_t run;
    const char *args[] = {"map", "tq.echo", NULL};
    s_tq(&run, env->broker.clients, "1\n2\n", args);
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(run.err, "");
    assert_string_equal(run.out, "[1]\n[2]\n");
    tq_harness_run_free(&run);
}

/* ---- exec --------------------------------------------------------------- */

static void
test_exec_two_hosts(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--allow-exec", NULL};
    pid_t host1 = tq_harness_env_add_worker(env, 2, extra, false);
    pid_t host2 = tq_harness_env_add_worker(env, 2, extra, false);
    assert_true(host1 > 0 && host2 > 0);
    assert_int_equal(tq_harness_wait_workers(env->client, 4, 0, 10000), 0);

    /* each command reports its worker child (its shell's parent) */
    enum { LINES = 12 };
    char input[256] = "";
    for (int i = 0; i < LINES; i++)
        snprintf(input + strlen(input), sizeof input - strlen(input),
                 "%d\n", i % 4);
    tq_harness_run_t run;
    const char *args[] = {"exec",
                          "--json",
                          "-j",
                          "4",
                          "--",
                          "sh",
                          "-c",
                          "sleep 0.2; echo out {} $PPID; echo err {} >&2; "
                          "exit {}",
                          NULL};
    s_tq(&run, env->broker.clients, input, args);
    assert_int_equal(run.exit_code, 1); /* lines with 1..3 exit non-zero */
    char *save = NULL;
    int line = 0;
    bool on_host1 = false, on_host2 = false;
    for (char *l = strtok_r(run.out, "\n", &save); l;
         l = strtok_r(NULL, "\n", &save), line++) {
        json_t *j = s_json(l);
        int want = line % 4;
        assert_int_equal(json_integer_value(json_object_get(j, "line")),
                         line + 1);
        assert_int_equal(json_integer_value(json_object_get(j, "exit")),
                         want);
        char err[32];
        snprintf(err, sizeof err, "err %d\n", want);
        assert_string_equal(json_string_value(json_object_get(j, "stderr")),
                            err);
        int got = -1;
        long child = 0;
        assert_int_equal(sscanf(json_string_value(json_object_get(j, "stdout")),
                                "out %d %ld", &got, &child),
                         2);
        assert_int_equal(got, want);
        pid_t super = tq_harness_ppid((pid_t)child);
        on_host1 |= super == host1;
        on_host2 |= super == host2;
        json_decref(j);
    }
    assert_int_equal(line, LINES);
    assert_true(on_host1 && on_host2);
    tq_harness_run_free(&run);

    /* plain output: each command's stdout in input order; all exit 0 */
    const char *plain[] = {"exec", "-j", "4", "echo", "got", NULL};
    s_tq(&run, env->broker.clients, "a\nb b\nc\n", plain);
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(run.out, "got a\ngot b b\ngot c\n");
    tq_harness_run_free(&run);

    /* a shell string with the line quoted into it */
    const char *shell[] = {"exec", "--", "printf '<%s>' {}; echo", NULL};
    s_tq(&run, env->broker.clients, "it's $HOME\n", shell);
    assert_int_equal(run.exit_code, 0);
    assert_string_equal(run.out, "<it's $HOME>\n");
    tq_harness_run_free(&run);

    /* a command that cannot start: exit 127 as in a shell, tq exits 1 */
    const char *missing[] = {"exec", "--", "/no/such/program", NULL};
    s_tq(&run, env->broker.clients, "x\n", missing);
    assert_int_equal(run.exit_code, 1);
    assert_non_null(strstr(run.err, "/no/such/program"));
    tq_harness_run_free(&run);
}

static void
test_exec_refused_without_allow_exec(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    tq_harness_run_t run;
    const char *args[] = {"exec", "--", "echo", "{}", NULL};
    int64_t t0 = tq_harness_now_ms();
    s_tq(&run, env->broker.clients, "1\n", args);
    assert_int_equal(run.exit_code, 1);
    assert_non_null(strstr(run.err, "--allow-exec"));
    assert_true(tq_harness_now_ms() - t0 < 10000);
    tq_harness_run_free(&run);

    /* the worker does not list it: asked directly, the task waits
       unserved, and STATUS says so */
    const char *submit[] = {"submit", "tq.exec", "echo hi", NULL};
    s_tq(&run, env->broker.clients, NULL, submit);
    assert_int_equal(run.exit_code, 0);
    char id[80];
    snprintf(id, sizeof id, "%s", s_trim(run.out));
    tq_harness_run_free(&run);
    const char *status[] = {"status", "--json", NULL};
    s_tq(&run, env->broker.clients, NULL, status);
    assert_int_equal(run.exit_code, 0);
    json_t *st = s_json(run.out);
    json_t *unserved = json_object_get(st, "unserved");
    assert_true(json_array_size(unserved) >= 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(unserved, 0),
                                          "task")),
        "tq.exec");
    json_decref(st);
    tq_harness_run_free(&run);
    const char *cancel[] = {"cancel", id, NULL};
    s_tq(&run, env->broker.clients, NULL, cancel);
    assert_int_equal(run.exit_code, 0);
    tq_harness_run_free(&run);
}

/* ---- the other verbs ---------------------------------------------------- */

static void
test_verbs_json_and_exit_codes(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    const char *ep = env->broker.clients;
    tq_harness_run_t run;
    json_t *j;

    const char *submit[] = {"submit", "tq.echo", "7", "--json", NULL};
    s_tq(&run, ep, NULL, submit);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    char id[80];
    snprintf(id, sizeof id, "%s",
             json_string_value(json_object_get(j, "id")));
    assert_int_equal(strlen(id), 32);
    json_decref(j);
    tq_harness_run_free(&run);

    const char *wait[] = {"wait", id, "--json", "--timeout", "10", NULL};
    s_tq(&run, ep, NULL, wait);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    assert_string_equal(json_string_value(json_object_get(j, "id")), id);
    assert_string_equal(json_string_value(json_object_get(j, "code")),
                        "TQ_OK");
    assert_int_equal(json_integer_value(
                         json_array_get(json_object_get(j, "value"), 0)),
                     7);
    json_decref(j);
    tq_harness_run_free(&run);

    const char *get[] = {"get", id, "--json", NULL};
    s_tq(&run, ep, NULL, get);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    assert_string_equal(json_string_value(json_object_get(j, "state")),
                        "SUCCESS");
    json_decref(j);
    tq_harness_run_free(&run);

    const char *wait_unknown[] = {"wait", id, "0123456789abcdef0123456789abcdef",
                                  NULL};
    s_tq(&run, ep, NULL, wait_unknown);
    assert_int_equal(run.exit_code, 5);
    assert_string_equal(s_trim(run.out), "[7]");
    tq_harness_run_free(&run);

    /* cancel a waiting task (its queue has no worker) */
    const char *park[] = {"submit", "tq.sleep", "30", "--queue", "parked",
                          NULL};
    s_tq(&run, ep, NULL, park);
    assert_int_equal(run.exit_code, 0);
    char parked[80];
    snprintf(parked, sizeof parked, "%s", s_trim(run.out));
    tq_harness_run_free(&run);
    const char *cancel[] = {"cancel", parked, "--json", NULL};
    s_tq(&run, ep, NULL, cancel);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    assert_true(json_is_true(json_object_get(j, "cancelled")));
    assert_string_equal(json_string_value(json_object_get(j, "id")), parked);
    json_decref(j);
    tq_harness_run_free(&run);
    const char *get_cancelled[] = {"get", parked, NULL};
    s_tq(&run, ep, NULL, get_cancelled);
    assert_int_equal(run.exit_code, 1);
    assert_non_null(strstr(run.err, "TQ_ECANCELLED"));
    tq_harness_run_free(&run);
    const char *cancel_unknown[] = {"cancel",
                                    "0123456789abcdef0123456789abcdef", NULL};
    s_tq(&run, ep, NULL, cancel_unknown);
    assert_int_equal(run.exit_code, 5);
    tq_harness_run_free(&run);

    /* purge: refused off a terminal without --yes, then done */
    for (int i = 0; i < 3; i++) {
        s_tq(&run, ep, NULL, park);
        assert_int_equal(run.exit_code, 0);
        tq_harness_run_free(&run);
    }
    const char *purge_no[] = {"purge", "parked", NULL};
    s_tq(&run, ep, "y\n", purge_no);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);
    const char *purge[] = {"purge", "parked", "--yes", "--json", NULL};
    s_tq(&run, ep, NULL, purge);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    assert_string_equal(json_string_value(json_object_get(j, "queue")),
                        "parked");
    assert_int_equal(json_integer_value(json_object_get(j, "purged")), 3);
    json_decref(j);
    tq_harness_run_free(&run);

    /* status, workers */
    const char *watch[] = {"status", "--watch", "--json", "--count", "2",
                           "--interval", "0.2", NULL};
    s_tq(&run, ep, NULL, watch);
    assert_int_equal(run.exit_code, 0);
    char *nl = strchr(run.out, '\n');
    assert_non_null(nl);
    *nl = 0;
    j = s_json(run.out);
    assert_true(json_is_array(json_object_get(j, "queues")));
    assert_true(json_is_array(json_object_get(j, "workers")));
    json_decref(j);
    j = s_json(nl + 1);
    json_decref(j);
    tq_harness_run_free(&run);
    const char *status[] = {"status", NULL};
    s_tq(&run, ep, NULL, status);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, "DONE/S"));
    assert_non_null(strstr(run.out, "PEAK RSS"));
    tq_harness_run_free(&run);
    const char *workers[] = {"workers", "--json", NULL};
    s_tq(&run, ep, NULL, workers);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    assert_true(json_is_array(j));
    assert_int_equal(json_array_size(j), 2);
    assert_true(json_is_array(json_object_get(json_array_get(j, 0), "tasks")));
    json_decref(j);
    tq_harness_run_free(&run);

    /* help: every verb, with an example */
    static const char *const verbs[] = {"submit", "get",   "wait",  "cancel",
                                        "status", "workers", "failed",
                                        "retry",  "purge", "map",   "exec"};
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        const char *help[] = {verbs[i], "--help", NULL};
        s_tq(&run, ep, NULL, help);
        assert_int_equal(run.exit_code, 0);
        assert_non_null(strstr(run.out, "example"));
        tq_harness_run_free(&run);
    }
    const char *bad[] = {"map", NULL};
    s_tq(&run, ep, NULL, bad);
    assert_int_equal(run.exit_code, 2);
    tq_harness_run_free(&run);
}

static void
test_failed_and_retry(void **state)
{
    tq_harness_env_t *env = *state;
    s_start(env, NULL);
    const char *ep = env->broker.clients;
    tq_harness_run_t run;
    const char *submit[] = {"submit", "tq.fail", "dead letter", "--wait",
                            NULL};
    s_tq(&run, ep, NULL, submit);
    assert_int_equal(run.exit_code, 1);
    tq_harness_run_free(&run);

    const char *failed[] = {"failed", "--json", NULL};
    s_tq(&run, ep, NULL, failed);
    assert_int_equal(run.exit_code, 0);
    json_t *j = s_json(run.out);
    json_t *list = json_object_get(j, "failed");
    assert_true(json_is_array(list));
    assert_int_equal(json_array_size(list), 1);
    char id[80];
    snprintf(id, sizeof id, "%s",
             json_string_value(json_object_get(json_array_get(list, 0), "id")));
    json_decref(j);
    tq_harness_run_free(&run);

    const char *failed_plain[] = {"failed", NULL};
    s_tq(&run, ep, NULL, failed_plain);
    assert_int_equal(run.exit_code, 0);
    assert_non_null(strstr(run.out, id));
    tq_harness_run_free(&run);

    const char *retry[] = {"retry", id, "--json", NULL};
    s_tq(&run, ep, NULL, retry);
    assert_int_equal(run.exit_code, 0);
    j = s_json(run.out);
    assert_string_equal(json_string_value(json_object_get(j, "code")),
                        "TQ_OK");
    json_decref(j);
    tq_harness_run_free(&run);
    const char *wait[] = {"wait", id, "--timeout", "10", NULL};
    s_tq(&run, ep, NULL, wait);
    assert_int_equal(run.exit_code, 1); /* it fails again */
    tq_harness_run_free(&run);

    const char *retry_unknown[] = {"retry", "0123456789abcdef0123456789abcdef",
                                   NULL};
    s_tq(&run, ep, NULL, retry_unknown);
    assert_int_equal(run.exit_code, 5);
    tq_harness_run_free(&run);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_map_10000_in_order, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_map_failures_and_json, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_progress_bar, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_exec_two_hosts, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_exec_refused_without_allow_exec,
                                        tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_verbs_json_and_exit_codes,
                                        tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_failed_and_retry, tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    tq_harness_init();
    /* TQ_TEST_FILTER=test_exec* runs some of them */
    if (getenv("TQ_TEST_FILTER"))
        cmocka_set_test_filter(getenv("TQ_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
