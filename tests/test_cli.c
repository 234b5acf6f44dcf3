/* test_cli.c - the tq command end to end: output, exit codes (0 ok, 1 task
   failed, 2 usage, 3 not ready, 4 unreachable, 5 unknown id), status as
   JSON, and the example client program against a real broker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
