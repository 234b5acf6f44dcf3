/* test_pool.c - the embedded pool: lifecycle (close/join/terminate),
   CANCELLED on terminate, no child left after destroy or after the
   parent's SIGKILL, maxtasksperchild, initializer, map/starmap/imap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq/tq.h"

static int s_init_value; /* set by the initializer, in the child */

static void
s_init(void *arg)
{
    s_init_value = *(int *)arg;
}

/* pid() -> [pid, the initializer's value] */
static int
s_pid(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    (void)args;
    msgpack_pack_array(out, 2);
    msgpack_pack_int64(out, getpid());
    msgpack_pack_int64(out, s_init_value);
    return 0;
}

/* square(x) -> x * x */
static int
s_square(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size != 1)
        return tq_task_fail(task, "one argument");
    msgpack_pack_int64(
        out, args->via.array.ptr[0].via.i64 * args->via.array.ptr[0].via.i64);
    return 0;
}

/* add(a, b) -> a + b */
static int
s_add(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size != 2)
        return tq_task_fail(task, "two arguments");
    msgpack_pack_int64(
        out, args->via.array.ptr[0].via.i64 + args->via.array.ptr[1].via.i64);
    return 0;
}

static tq_registry_t *s_reg;

static tq_pool_t *
s_pool(int n, int maxtasks)
{
    static int initarg = 42;
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = s_reg;
    po.initializer = s_init;
    po.initargs = &initarg;
    po.maxtasksperchild = maxtasks;
    po.quiet = true;
    tq_pool_t *pool = tq_pool_new(n, &po);
    assert_non_null(pool);
    return pool;
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* True if pid is in /proc at all (a zombie counts). */
static bool
s_exists(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld", (long)pid);
    return access(path, F_OK) == 0;
}

/* Waits up to ms for all pids to leave /proc, reaping orphans that this
   subreaper inherited. True if none remains. */
static bool
s_all_gone(const pid_t *pids, size_t n, int ms)
{
    int64_t until = s_now_ms() + ms;
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        size_t left = 0;
        for (size_t i = 0; i < n; i++)
            left += s_exists(pids[i]);
        if (!left)
            return true;
        if (s_now_ms() >= until)
            return false;
        s_sleep_ms(10);
    }
}

static size_t
s_wait_children(tq_pool_t *pool, pid_t *pids, size_t want)
{
    size_t n = 0;
    for (int64_t until = s_now_ms() + 5000; s_now_ms() < until; s_sleep_ms(10))
        if ((n = tq_pool_pids(pool, pids, want)) >= want)
            break;
    return n;
}

static void
test_join_before_close(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    assert_int_equal(tq_pool_join(pool, 1000), TQ_ESTATE);
    tq_result_t *r = tq_pool_apply_timeout(pool, "pid", NULL, 10000, "");
    assert_int_equal(tq_result_code(r), TQ_OK);
    /* the initializer ran in the child before its first task */
    assert_int_equal(tq_result_value(r)->via.array.ptr[1].via.i64, 42);
    tq_result_destroy(&r);
    assert_int_equal(tq_pool_close(pool), TQ_OK);
    assert_null(tq_pool_apply_async(pool, "pid", NULL, ""));
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
    assert_null(pool);
}

static void
test_terminate_cancels(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    tq_result_t *running =
        tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
    tq_result_t *queued =
        tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
    assert_non_null(running);
    pid_t kid;
    assert_int_equal(s_wait_children(pool, &kid, 1), 1);
    for (int64_t until = s_now_ms() + 5000;
         s_now_ms() < until && tq_result_state(running) != TQ_STATE_RUNNING;)
        s_sleep_ms(10);
    s_sleep_ms(100); /* the sleep is under way in the child */
    int64_t t0 = s_now_ms();
    assert_int_equal(tq_pool_terminate(pool), TQ_OK);
    assert_int_equal(tq_result_get(running, 5000), TQ_ECANCELLED);
    assert_int_equal(tq_result_state(running), TQ_STATE_CANCELLED);
    assert_int_equal(tq_result_get(queued, 5000), TQ_ECANCELLED);
    assert_true(s_now_ms() - t0 < 5000);
    assert_false(s_exists(kid) && !s_all_gone(&kid, 1, 1000));
    assert_int_equal(tq_pool_join(pool, 1000), TQ_OK);
    tq_result_destroy(&running);
    tq_result_destroy(&queued);
    tq_pool_destroy(&pool);
}

static void
test_no_child_after_destroy(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(2, 0);
    pid_t pids[3];
    assert_int_equal(s_wait_children(pool, pids, 2), 2);
    pids[2] = tq_pool_server_pid(pool);
    tq_result_t *r = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
    tq_pool_destroy(&pool); /* without close: terminate */
    assert_true(s_all_gone(pids, 3, 1000));
    assert_int_equal(tq_result_code(r), TQ_ECANCELLED);
    tq_result_destroy(&r);
}

static void
test_no_child_after_parent_sigkill(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t parent = fork();
    assert_true(parent >= 0);
    if (parent == 0) {
        close(fds[0]);
        tq_pool_t *pool = s_pool(2, 0);
        pid_t pids[3];
        if (s_wait_children(pool, pids, 2) != 2)
            _exit(1);
        pids[2] = tq_pool_server_pid(pool);
        if (write(fds[1], pids, sizeof pids) != sizeof pids)
            _exit(1);
        tq_result_t *r = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
        (void)r;
        for (;;)
            pause();
    }
    close(fds[1]);
    pid_t pids[3];
    assert_int_equal(read(fds[0], pids, sizeof pids), (ssize_t)sizeof pids);
    close(fds[0]);
    kill(parent, SIGKILL);
    assert_int_equal(waitpid(parent, NULL, 0), parent);
    assert_true(s_all_gone(pids, 3, 1000));
}

static void
test_maxtasksperchild(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 2);
    pid_t seen[6];
    for (int i = 0; i < 6; i++) {
        tq_result_t *r = tq_pool_apply_timeout(pool, "pid", NULL, 10000, "");
        assert_int_equal(tq_result_code(r), TQ_OK);
        seen[i] = (pid_t)tq_result_value(r)->via.array.ptr[0].via.i64;
        /* a fresh child runs the initializer too */
        assert_int_equal(tq_result_value(r)->via.array.ptr[1].via.i64, 42);
        tq_result_destroy(&r);
    }
    assert_int_equal(seen[0], seen[1]);
    assert_int_not_equal(seen[1], seen[2]);
    assert_int_equal(seen[2], seen[3]);
    assert_int_not_equal(seen[3], seen[4]);
    tq_pool_close(pool);
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
}

/* A program that returns from main leaving its pool, a client and their
   handles: exit terminates the pool (as Python's finalizers do) and
   destroys the client before czmq closes the context under them. Before,
   czmq's exit handler aborted the program (status 134). */
static void
test_exit_without_destroy(void **state)
{
    (void)state;
    int64_t t0 = s_now_ms();
    /* it leaks its handles on purpose: no leak report under ASan */
    FILE *p = popen("ASAN_OPTIONS=detect_leaks=0 timeout -s KILL 20 "
                    TQ_EXIT_CHILD " 2>/dev/null",
                    "r");
    assert_non_null(p);
    pid_t pids[2];
    size_t n = 0;
    long pid;
    while (n < 2 && fscanf(p, "%ld", &pid) == 1)
        pids[n++] = (pid_t)pid;
    int status = pclose(p);
    int64_t took = s_now_ms() - t0;
    printf("# exit without destroy: status %d in %lld ms\n",
           WIFEXITED(status) ? WEXITSTATUS(status) : -1, (long long)took);
    assert_int_equal(n, 2);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(took < 10000);
    assert_true(s_all_gone(pids, n, 1000));
}

/* An argument over the broker's max-message is refused with a clear error
   (the pool's client reaches its broker over inproc, where libzmq does
   not apply the limit: accepted, it would wedge the child it went to),
   and the pool goes on serving. */
static void
test_oversized_argument(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(2, 0);
    size_t size = (64u << 20) + 1;
    char *big = calloc(1, size);
    assert_non_null(big);
    int64_t t0 = s_now_ms();
    tq_result_t *r = tq_pool_apply_timeout(pool, "square", NULL, 10000, "p", big, size);
    free(big);
    assert_int_equal(tq_result_code(r), TQ_EINVAL);
    printf("# oversized argument: %s in %lld ms\n", tq_result_error(r),
           (long long)(s_now_ms() - t0));
    assert_non_null(strstr(tq_result_error(r), "max-message"));
    tq_result_destroy(&r);
    for (int i = 0; i < 10; i++) {
        r = tq_pool_apply_timeout(pool, "square", NULL, 10000, "i", (int64_t)i);
        assert_int_equal(tq_result_code(r), TQ_OK);
        assert_int_equal(tq_result_value(r)->via.i64, i * i);
        tq_result_destroy(&r);
    }
    tq_pool_close(pool);
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
}

/* At the default prefetch (several tasks per child) a long task hides no
   short one: the short tasks dispatched behind it on its child are given
   back to the other child (work stealing), so they all finish long before
   the long task does. */
static void
test_default_prefetch_hides_no_work(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(2, 0);
    /* both children connected */
    for (int i = 0; i < 4; i++) {
        tq_result_t *w = tq_pool_apply_timeout(pool, "square", NULL, 10000, "i",
                                       (int64_t)i);
        assert_int_equal(tq_result_code(w), TQ_OK);
        tq_result_destroy(&w);
    }
    enum { SHORT = 6 };
    int64_t t0 = s_now_ms();
    tq_result_t *slow = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 2.0);
    tq_result_t *quick[SHORT];
    for (int i = 0; i < SHORT; i++)
        quick[i] = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 0.05);
    for (int i = 0; i < SHORT; i++) {
        assert_int_equal(tq_result_get(quick[i], 10000), TQ_OK);
        tq_result_destroy(&quick[i]);
    }
    int64_t shorts = s_now_ms() - t0;
    assert_int_equal(tq_result_get(slow, 10000), TQ_OK);
    tq_result_destroy(&slow);
    printf("# prefetch %d: %d tasks of 50 ms beside one of 2 s done in "
           "%lld ms\n",
           TQ_POOL_PREFETCH, SHORT, (long long)shorts);
    /* 6 x 50 ms on one child is 300 ms; behind the long task, 2 s */
    assert_true(shorts < 1500);
    tq_pool_close(pool);
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
}

static void
test_map_family(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(2, 0);
    enum { N = 50 };
    tq_buf_t items[N], pairs[N];
    tq_result_t *out[N];
    for (int i = 0; i < N; i++) {
        tq_pack(&items[i], "i", (int64_t)i);
        tq_pack(&pairs[i], "ii", (int64_t)i, (int64_t)1000);
    }
    assert_int_equal(tq_pool_map(pool, "square", NULL, items, N, out, 10000),
                     TQ_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_value(out[i])->via.i64, i * i);
        tq_result_destroy(&out[i]);
    }
    assert_int_equal(tq_pool_map(pool, "square", NULL, pairs, N, out, 1000),
                     TQ_EINVAL);
    assert_int_equal(tq_pool_starmap(pool, "add", NULL, pairs, N, out, 10000),
                     TQ_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_value(out[i])->via.i64, i + 1000);
        tq_result_destroy(&out[i]);
    }
    tq_result_set_t *set = tq_pool_map_async(pool, "square", NULL, items, N);
    assert_non_null(set);
    assert_int_equal(tq_result_set_get(set, 10000), TQ_OK);
    assert_true(tq_result_set_ready(set));
    assert_int_equal(tq_result_value(tq_result_set_at(set, 7))->via.i64, 49);
    tq_result_set_destroy(&set);

    tq_pool_imap_t *it = tq_pool_imap(pool, "square", NULL, items, N);
    tq_result_t *r;
    int i = 0, rc;
    while ((rc = tq_pool_imap_next(it, 10000, &r)) != TQ_EEMPTY) {
        assert_int_equal(rc, TQ_OK);
        assert_int_equal(tq_result_value(r)->via.i64, i * i);
        tq_result_destroy(&r);
        i++;
    }
    assert_int_equal(i, N);
    tq_pool_imap_destroy(&it);
    /* next with a timeout: a slow task is not ready after 50 ms */
    tq_buf_t slow;
    tq_pack(&slow, "d", 0.5);
    it = tq_pool_imap(pool, "tq.sleep", NULL, &slow, 1);
    assert_int_equal(tq_pool_imap_next(it, 50, &r), TQ_ETIMEDOUT);
    assert_int_equal(tq_pool_imap_next(it, 5000, &r), TQ_OK);
    tq_result_destroy(&r);
    assert_int_equal(tq_pool_imap_next(it, 0, &r), TQ_EEMPTY);
    tq_pool_imap_destroy(&it);
    tq_buf_free(&slow);
    for (int k = 0; k < N; k++) {
        tq_buf_free(&items[k]);
        tq_buf_free(&pairs[k]);
    }
    tq_pool_close(pool);
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
}

int
main(void)
{
    /* orphans of the SIGKILL test come to us, to be reaped and counted */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);
    s_reg = tq_registry_new();
    tq_registry_add(s_reg, "pid", s_pid, NULL);
    tq_registry_add(s_reg, "square", s_square, NULL);
    tq_registry_add(s_reg, "add", s_add, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_join_before_close),
        cmocka_unit_test(test_terminate_cancels),
        cmocka_unit_test(test_no_child_after_destroy),
        cmocka_unit_test(test_no_child_after_parent_sigkill),
        cmocka_unit_test(test_maxtasksperchild),
        cmocka_unit_test(test_map_family),
        cmocka_unit_test(test_exit_without_destroy),
        cmocka_unit_test(test_oversized_argument),
        cmocka_unit_test(test_default_prefetch_hides_no_work),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tq_registry_destroy(&s_reg);
    return rc;
}
