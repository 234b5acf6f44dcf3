/* test_seeds.c - runs every seed port (examples/seeds) as a real process
   with a reduced time scale and checks its output and its wall time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#define S_SCALE 0.2 /* every sleep of the originals times this */

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs seed binary name (stdout into out, bounded by `timeout`); returns
   its exit status and the wall time in *secs. */
static int
s_run(const char *name, char *out, size_t size, double *secs)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "TQ_SEED_SCALE=%g timeout -s KILL 60 %s/seed_%s 2>/dev/null",
             S_SCALE, TQ_SEEDS_DIR, name);
    double t0 = s_now();
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    *secs = s_now() - t0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Index of the line starting with prefix, or -1. */
static int
s_line(const char *out, const char *prefix)
{
    int i = 0;
    for (const char *l = out; l && *l; i++) {
        if (strncmp(l, prefix, strlen(prefix)) == 0)
            return i;
        l = strchr(l, '\n');
        l = l ? l + 1 : NULL;
    }
    return -1;
}

static int
s_count(const char *out, const char *needle)
{
    int n = 0;
    for (const char *p = out; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void
test_pool_apply_async(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("pool_apply_async", out, sizeof out, &secs), 0);
    /* the Mark line comes before every result, done comes last */
    assert_int_equal(s_line(out, "Mark~ Mark~ Mark~"), 0);
    assert_int_equal(s_count(out, "msg: hello "), 4);
    assert_int_equal(s_count(out, "end\n"), 4);
    assert_true(s_line(out, "msg: hello 3") > s_line(out, "end"));
    assert_int_equal(s_line(out, "Sub-process(es) done."), 9);
    /* Pool(3) x 4 tasks of 3 s: two rounds, not one and not four */
    double round = 3 * S_SCALE;
    printf("# apply_async: %.2f s (round %.2f s)\n", secs, round);
    assert_true(secs > 2 * round - 0.05 && secs < 3 * round + 0.3);
}

static void
test_pool_apply(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("pool_apply", out, sizeof out, &secs), 0);
    /* sequential: msg, end, msg, end ... then Mark */
    assert_int_equal(s_line(out, "msg: hello 0"), 0);
    assert_int_equal(s_line(out, "end"), 1);
    assert_int_equal(s_line(out, "msg: hello 3"), 6);
    assert_int_equal(s_line(out, "Mark~ Mark~ Mark~"), 8);
    assert_int_equal(s_line(out, "Sub-process(es) done."), 9);
    double round = 3 * S_SCALE;
    printf("# apply: %.2f s (round %.2f s)\n", secs, round);
    assert_true(secs > 4 * round - 0.05 && secs < 5 * round + 0.3);
}

static void
test_pool_results(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("pool_results", out, sizeof out, &secs), 0);
    assert_int_equal(s_line(out, "Sub-process(es) done."), 0);
    /* get() in submission order: process 0 .. 9 */
    for (int i = 0; i < 10; i++) {
        char want[32];
        snprintf(want, sizeof want, "-process %d\n", i);
        const char *at = strstr(out, want);
        assert_non_null(at);
        if (i) {
            char prev[32];
            snprintf(prev, sizeof prev, "-process %d\n", i - 1);
            assert_true(strstr(out, prev) < at);
        }
    }
    /* Pool(4) x 10 tasks of 2 s: three rounds */
    double round = 2 * S_SCALE;
    assert_true(secs > 3 * round - 0.05 && secs < 4 * round + 0.3);
}

static void
test_producer_consumer(void **state)
{
    (void)state;
    static char out[65536];
    double secs;
    assert_int_equal(s_run("producer_consumer", out, sizeof out, &secs), 0);
    assert_int_equal(s_count(out, "producer start "), 5);
    assert_int_equal(s_count(out, "producer exit "), 5);
    assert_non_null(strstr(out, "all done finish"));
    assert_non_null(strstr(out,
                           "produced 5000 consumed 5000 exactly-once "
                           "5000 duplicated 0 missing 0 errors 0"));
    printf("# producer/consumer: %.2f s\n", secs);
}

static void
test_fork_wait(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("fork_wait", out, sizeof out, &secs), 0);
    assert_int_equal(s_count(out, "fork创建完后"), 2);
    assert_non_null(strstr(out, "children left 0 (no zombie)"));
    assert_non_null(strstr(out, "with 3 children"));
    assert_non_null(strstr(out, "0 process(es) left"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_apply_async),
        cmocka_unit_test(test_pool_apply),
        cmocka_unit_test(test_pool_results),
        cmocka_unit_test(test_producer_consumer),
        cmocka_unit_test(test_fork_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
