/* test_pool.c - the embedded pool: lifecycle (close/join/terminate),
   CANCELLED on terminate, no child left after destroy or after the
   parent's SIGKILL, maxtasksperchild, initializer, map/starmap/imap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq/tq.h"
#include "tq_client_core.h"
#include "tq_harness.h"

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* The signal the crash tasks die by: a sanitizer catches SIGSEGV itself
   (and exits 1 after its report), so sanitized builds crash by SIGABRT. */
#ifdef TQ_SANITIZED
#define S_CRASH SIGABRT
#define S_CRASH_NAME "SIGABRT"
#else
#define S_CRASH SIGSEGV
#define S_CRASH_NAME "SIGSEGV"
#endif

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

/* record(path, i): appends "i\n" to path at its start, then sleeps 20 ms
   (start order, in the order the children began the tasks) */
static int
s_record(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    char path[512], line[32];
    int64_t i;
    int rc;
    if ((rc = tq_arg_str(args, 0, path, sizeof path)) ||
        (rc = tq_arg_int(args, 1, &i)))
        return rc;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    int len = snprintf(line, sizeof line, "%lld\n", (long long)i);
    if (fd < 0 || write(fd, line, (size_t)len) != len)
        return tq_task_fail(task, "cannot write %s", path);
    close(fd);
    s_sleep_ms(20);
    return tq_pack_nil(out);
}

/* checked(x) -> x * x, with a typed argument; x == 13 crashes the child */
static int
s_checked(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    int64_t x;
    int rc = tq_arg_int(args, 0, &x);
    if (rc)
        return rc;
    if (x == 13) {
        /* after a pause: the DONE of this child's previous task must reach
           the broker before the LOST (they travel on different sockets,
           and the broker charges a death to the first task it thinks the
           child holds) */
        s_sleep_ms(100);
        raise(S_CRASH);
    }
    return tq_pack_int(out, x * x);
}

/* crash(): the child dies by SIGSEGV */
static int
s_crash(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    (void)args;
    (void)out;
    raise(S_CRASH);
    return 0;
}

/* helpers(n, s): [task name, worker name, endpoint, n, s]; and puts s on
   the pool's data queue "helpers.q" through the child's client */
static int
s_helpers(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    int64_t n;
    char str[64];
    int rc;
    if ((rc = tq_arg_int(args, 0, &n)) ||
        (rc = tq_arg_str(args, 1, str, sizeof str)))
        return rc;
    tq_client_t *client = tq_pool_task_client();
    tq_queue_t *q = client ? tq_queue_new(client, "helpers.q", 0) : NULL;
    if (!q || tq_queue_putf(q, 10000, "s", str) != TQ_OK)
        return tq_task_fail(task, "cannot put on helpers.q");
    tq_queue_destroy(&q);
    const char *ep = tq_pool_endpoint(NULL);
    return tq_pack_value(out, "sssis", tq_task_name(), tq_worker_name(),
                         ep ? ep : "", n, str);
}

/* block(path): creates path, then sleeps 30 s (a task surely under way
   once path exists) */
static int
s_block(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    char path[512];
    int rc = tq_arg_str(args, 0, path, sizeof path);
    if (rc)
        return rc;
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    if (fd < 0)
        return tq_task_fail(task, "cannot create %s", path);
    close(fd);
    for (int i = 0; i < 300; i++)
        s_sleep_ms(100);
    return tq_pack_nil(out);
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
        char ep[512] = {0};
        snprintf(ep, sizeof ep, "%s", tq_pool_endpoint(pool));
        if (write(fds[1], pids, sizeof pids) != sizeof pids ||
            write(fds[1], ep, sizeof ep) != sizeof ep)
            _exit(1);
        tq_result_t *r = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
        (void)r;
        for (;;)
            pause();
    }
    close(fds[1]);
    pid_t pids[3];
    assert_int_equal(read(fds[0], pids, sizeof pids), (ssize_t)sizeof pids);
    char ep[512];
    assert_int_equal(read(fds[0], ep, sizeof ep), (ssize_t)sizeof ep);
    close(fds[0]);
    /* ipc:///tmp/tq-pool-XXXXXX/clients -> the directory */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", ep + strlen("ipc://"));
    *strrchr(dir, '/') = '\0';
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    kill(parent, SIGKILL);
    assert_int_equal(waitpid(parent, NULL, 0), parent);
    assert_true(s_all_gone(pids, 3, 5000));
    /* the server removed the directory before it went */
    assert_int_not_equal(stat(dir, &st), 0);
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
    FILE *p =
        popen("ASAN_OPTIONS=detect_leaks=0 timeout -s KILL 20 " TQ_EXIT_CHILD
              " 2>/dev/null",
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
    tq_result_t *r =
        tq_pool_apply_timeout(pool, "square", NULL, 10000, "p", big, size);
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
        tq_result_t *w =
            tq_pool_apply_timeout(pool, "square", NULL, 10000, "i", (int64_t)i);
        assert_int_equal(tq_result_code(w), TQ_OK);
        tq_result_destroy(&w);
    }
    enum { SHORT = 6 };
    int64_t t0 = s_now_ms();
    tq_result_t *slow = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 5.0);
    tq_result_t *quick[SHORT];
    for (int i = 0; i < SHORT; i++)
        quick[i] = tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 0.05);
    for (int i = 0; i < SHORT; i++) {
        assert_int_equal(tq_result_get(quick[i], 20000), TQ_OK);
        tq_result_destroy(&quick[i]);
    }
    int64_t shorts = s_now_ms() - t0;
    /* 6 x 50 ms on one child is 300 ms; behind the long task, 5 s: they
       all ended while it still runs (an order, not a time) */
    bool slow_done = tq_result_ready(slow);
    assert_int_equal(tq_result_get(slow, 20000), TQ_OK);
    tq_result_destroy(&slow);
    printf("# prefetch %d: %d tasks of 50 ms beside one of 5 s done in "
           "%lld ms\n",
           TQ_POOL_PREFETCH, SHORT, (long long)shorts);
    assert_false(slow_done);
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

/* ---- issue 16 ------------------------------------------------------------ */

static atomic_bool s_stop_noise;

/* Holds libc's locks as often as it can: rand, malloc, stdio. */
static void *
s_noise(void *arg)
{
    FILE *devnull = arg;
    while (!atomic_load(&s_stop_noise)) {
        void *p = malloc((size_t)(rand() % 4096) + 1);
        fprintf(devnull, "%d %p\n", rand(), p);
        printf("%s", "");
        free(p);
    }
    return NULL;
}

/* 100 pools made beside threads that hold rand's, malloc's and stdio's
   locks: the fork server is a fresh exec, so none inherits a held lock.
   Every pool runs a task; a hang would be a TQ_ETIMEDOUT here. Before,
   10-20 % of such pools hung. */
static void
test_pools_beside_threads(void **state)
{
    (void)state;
    FILE *devnull = fopen("/dev/null", "w");
    assert_non_null(devnull);
    atomic_store(&s_stop_noise, false);
    pthread_t noise[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&noise[i], NULL, s_noise, devnull), 0);
    int ok = 0;
    for (int i = 0; i < 100; i++) {
        tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
        po.registry = s_reg;
        tq_pool_t *pool = tq_pool_new(1, &po);
        assert_non_null(pool);
        tq_result_t *r =
            tq_pool_apply_timeout(pool, "square", NULL, 20000, "i", (int64_t)i);
        ok += tq_result_code(r) == TQ_OK &&
            tq_result_value(r)->via.i64 == (int64_t)i * i;
        tq_result_destroy(&r);
        tq_pool_destroy(&pool);
    }
    atomic_store(&s_stop_noise, true);
    for (int i = 0; i < 3; i++)
        pthread_join(noise[i], NULL);
    fclose(devnull);
    printf("# 100 pools beside 3 threads in rand/malloc/printf: %d ran\n", ok);
    assert_int_equal(ok, 100);
}

static void *
s_make_pool(void *arg)
{
    tq_pool_t **pool_p = arg;
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = s_reg;
    *pool_p = tq_pool_new(2, &po);
    return NULL;
}

/* A pool made by a thread that exits keeps working (before, its server
   died with the thread, PR_SET_PDEATHSIG, and tasks waited forever). */
static void
test_pool_from_exited_thread(void **state)
{
    (void)state;
    tq_pool_t *pool = NULL;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, s_make_pool, &pool), 0);
    pthread_join(t, NULL);
    assert_non_null(pool);
    s_sleep_ms(200); /* time for a server that died with the thread */
    pid_t server = tq_pool_server_pid(pool);
    tq_result_t *r =
        tq_pool_apply_timeout(pool, "square", NULL, 20000, "i", (int64_t)7);
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_int_equal(tq_result_value(r)->via.i64, 49);
    assert_int_equal(tq_pool_server_pid(pool), server); /* the same one */
    tq_result_destroy(&r);
    tq_pool_destroy(&pool);
}

/* A fork server killed under the pool is replaced: tasks run. */
static void
test_server_killed(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(2, 0);
    /* the pool is ready only once every child is bound to its supervisor's
       session: a child the broker binds to none (its READY came before the
       supervisor's first HEARTBEAT, and the supervisor died) has no host
       liveness, and a task sent to it as it died was held forever */
    tq_harness_status_t st = {0};
    assert_int_equal(tq_harness_status(tq_pool_client(pool), &st, 5000), TQ_OK);
    uint32_t count = 0;
    const msgpack_object *workers = tq_harness_workers(&st, &count);
    assert_non_null(workers);
    assert_int_equal(count, 2);
    for (uint32_t i = 0; i < count; i++)
        assert_true(
            tq_harness_map_uint(&workers->via.array.ptr[i], "session", 0) > 0);
    tq_harness_status_free(&st);
    pid_t server = tq_pool_server_pid(pool);
    assert_int_equal(kill(server, SIGKILL), 0);
    /* the monitor notices and starts another; a task the broker had given
       to a child of the dead one would end TQ_ELOST after its heartbeats
       stop (3 s), never wait forever */
    for (int64_t until = s_now_ms() + 10000;
         tq_pool_server_pid(pool) == server && s_now_ms() < until;)
        s_sleep_ms(5);
    assert_int_not_equal(tq_pool_server_pid(pool), server);
    tq_result_t *r =
        tq_pool_apply_timeout(pool, "square", NULL, 20000, "i", (int64_t)9);
    int first = tq_result_code(r);
    printf("# server killed: the next task %s (%s)\n", tq_strerror(first),
           tq_result_error(r));
    /* it may have gone to a dead child the broker did not know dead */
    assert_true(first == TQ_OK ||
                (first == TQ_ELOST && strstr(tq_result_error(r), "lost")));
    tq_result_destroy(&r);
    r = tq_pool_apply_timeout(pool, "square", NULL, 20000, "i", (int64_t)9);
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_int_equal(tq_result_value(r)->via.i64, 81);
    tq_result_destroy(&r);
    pid_t fresh = tq_pool_server_pid(pool);
    assert_true(fresh != 0 && fresh != server);
    tq_pool_close(pool);
    assert_int_equal(tq_pool_join(pool, 20000), TQ_OK);
    tq_pool_destroy(&pool);
}

/* A fork server that keeps dying: after TQ_POOL_MAX_RESPAWNS restarts the
   pool gives up, and a submission fails at once with the reason instead
   of waiting forever. */
static void
test_server_dies_too_often(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    for (int i = 0; i <= TQ_POOL_MAX_RESPAWNS; i++) {
        pid_t server = tq_pool_server_pid(pool);
        assert_true(server > 0);
        assert_int_equal(kill(server, SIGKILL), 0);
        for (int64_t until = s_now_ms() + 10000;
             tq_pool_server_pid(pool) == server && s_now_ms() < until;)
            s_sleep_ms(5);
        assert_int_not_equal(tq_pool_server_pid(pool), server);
    }
    assert_int_equal(tq_pool_server_pid(pool), 0);
    tq_result_t *r = tq_pool_apply_async(pool, "square", NULL, "i", 2);
    assert_non_null(r);
    assert_true(tq_result_ready(r));
    assert_int_equal(tq_result_code(r), TQ_ELOST);
    assert_non_null(strstr(tq_result_error(r), "fork server died"));
    tq_result_destroy(&r);
    tq_pool_destroy(&pool);
}

/* A name nobody registered fails at once, naming it (before it waited
   forever). */
static void
test_unknown_task(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    tq_result_t *r = tq_pool_apply_async(pool, "no.such", NULL, "i", 1);
    assert_non_null(r);
    assert_true(tq_result_ready(r));
    assert_int_equal(tq_result_get(r, 0), TQ_ENOTASK);
    assert_non_null(strstr(tq_result_error(r), "no.such"));
    tq_result_destroy(&r);
    tq_buf_t item;
    tq_pack(&item, "i", (int64_t)1);
    tq_result_t *out[1];
    assert_int_equal(tq_pool_map(pool, "no.such", NULL, &item, 1, out, 1000),
                     TQ_ENOTASK);
    assert_int_equal(tq_result_code(out[0]), TQ_ENOTASK);
    tq_result_destroy(&out[0]);
    tq_buf_free(&item);
    tq_pool_close(pool);
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
}

/* 50 tasks submitted at once to a fresh pool of 3 start in submission
   order, give or take the tasks running beside each other and a child
   that falls behind the others on a loaded machine (ASan: it started 6
   away): task i starts at a position within one prefetch (8) plus the
   pool (3) of i. Before, the first child to connect took 8 tasks (its
   prefetch) and the next children began far down the list (task 16 third:
   14 away). */
static void
test_fifo_fresh_pool(void **state)
{
    (void)state;
    char path[] = "/tmp/tq-fifo-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = s_reg;
    tq_pool_t *pool = tq_pool_new(3, &po);
    assert_non_null(pool);
    enum { N = 50 };
    tq_result_t *r[N];
    for (int i = 0; i < N; i++)
        r[i] =
            tq_pool_apply_async(pool, "record", NULL, "si", path, (int64_t)i);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_get(r[i], 30000), TQ_OK);
        tq_result_destroy(&r[i]);
    }
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int pos = 0, worst = 0;
    long v;
    while (fscanf(f, "%ld", &v) == 1) {
        int d = abs((int)v - pos);
        worst = d > worst ? d : worst;
        pos++;
    }
    fclose(f);
    unlink(path);
    printf("# 50 tasks on a fresh pool of 3: worst start displacement %d\n",
           worst);
    assert_int_equal(pos, N);
    assert_true(worst < 8 + 3);
    tq_pool_destroy(&pool);
}

/* A crash is reported at once (max_lost 1: one attempt, the signal in the
   error), and nothing reaches stderr (quiet by default). */
static void
test_crash_quiet_once(void **state)
{
    (void)state;
    char path[] = "/tmp/tq-stderr-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    tq_pool_t *pool = s_pool(1, 0);
    tq_result_t *r = tq_pool_apply_timeout(pool, "crash", NULL, 20000, "");
    int code = tq_result_code(r);
    char error[512];
    snprintf(error, sizeof error, "%s", tq_result_error(r));
    uint32_t attempts = tq_result_attempts(r);
    tq_result_destroy(&r);
    r = tq_pool_apply_timeout(pool, "square", NULL, 20000, "i", (int64_t)3);
    int after = tq_result_code(r);
    tq_result_destroy(&r);
    tq_pool_close(pool);
    int joined = tq_pool_join(pool, 20000);
    tq_pool_destroy(&pool);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    struct stat st;
    fstat(fd, &st);
    close(fd);
    unlink(path);
    printf("# crash: %s, attempts %u, %lld bytes on stderr\n", error, attempts,
           (long long)st.st_size);
    assert_int_equal(code, TQ_ELOST);
    assert_non_null(strstr(error, S_CRASH_NAME));
    assert_int_equal(attempts, 1);
    assert_int_equal(after, TQ_OK);
    assert_int_equal(joined, TQ_OK);
    assert_int_equal(st.st_size, 0);
}

/* The broker's STATUS as a map value: key (an uint at top level or in
   "counters"), -1 if absent. */
static int64_t
s_status_value(tq_pool_t *pool, const char *key)
{
    tq_buf_t body = {0};
    if (tq_client_status(tq_pool_client(pool), &body, 5000) != TQ_OK)
        return -1;
    int64_t v = -1;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, body.data, body.size, NULL) ==
        MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *maps[2] = {&u.data, NULL};
        for (int m = 0; m < 2 && maps[m]; m++)
            for (uint32_t i = 0; i < maps[m]->via.map.size; i++) {
                const msgpack_object_kv *kv = &maps[m]->via.map.ptr[i];
                const msgpack_object_str *k = &kv->key.via.str;
                if (k->size == 8 && !memcmp(k->ptr, "counters", 8))
                    maps[1] = &kv->val;
                else if (k->size == strlen(key) &&
                         !memcmp(k->ptr, key, k->size))
                    v = (int64_t)kv->val.via.u64;
            }
    }
    msgpack_unpacked_destroy(&u);
    tq_buf_free(&body);
    return v;
}

/* Results leave the broker once collected (before: kept 60 s, ~400 bytes
   each), and map sends Python's chunks: 1,000 items on 2 children are
   4 x 2 = 8 tasks, not 1,000. */
static void
test_results_released_and_chunks(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(2, 0);
    enum { N = 1000 };
    tq_buf_t *items = calloc(N, sizeof *items);
    tq_result_t **out = calloc(N, sizeof *out);
    for (int i = 0; i < N; i++)
        tq_pack(&items[i], "i", (int64_t)i);
    assert_int_equal(tq_pool_map(pool, "square", NULL, items, N, out, 30000),
                     TQ_OK);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_value(out[i])->via.i64, (int64_t)i * i);
        tq_result_destroy(&out[i]);
    }
    /* map_values: the same values, without a handle per item */
    tq_values_t *values = NULL;
    assert_int_equal(
        tq_pool_map_values(pool, "square", NULL, items, N, &values, 30000),
        TQ_OK);
    assert_int_equal(tq_values_size(values), N);
    for (int i = 0; i < N; i++)
        assert_int_equal(tq_values_at(values, (size_t)i)->via.i64,
                         (int64_t)i * i);
    assert_string_equal(tq_values_error(values), "");
    tq_values_destroy(&values);
    /* map_items: the items built in one buffer; "ii" is starmap's */
    tq_items_t *list = tq_items_new();
    tq_items_t *pairs = tq_items_new();
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_items_add(list, "i", (int64_t)i), TQ_OK);
        assert_int_equal(tq_items_add(pairs, "ii", (int64_t)i, (int64_t)7),
                         TQ_OK);
    }
    assert_int_equal(tq_items_add(list, "x", 1), TQ_EINVAL); /* not added */
    assert_int_equal(tq_items_size(list), N);
    assert_int_equal(
        tq_pool_map_items(pool, "square", NULL, list, &values, 30000), TQ_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(tq_values_at(values, (size_t)i)->via.i64,
                         (int64_t)i * i);
    tq_values_destroy(&values);
    assert_int_equal(
        tq_pool_map_items(pool, "add", NULL, pairs, &values, 30000), TQ_OK);
    assert_int_equal(tq_values_at(values, 10)->via.i64, 17);
    tq_values_destroy(&values);
    tq_items_destroy(&list);
    tq_items_destroy(&pairs);
    /* the first failure in order, with its text, as Python raises it */
    tq_buf_t msgs[3];
    tq_pack(&msgs[0], "s", "fine?");
    tq_pack(&msgs[1], "s", "broke");
    tq_pack(&msgs[2], "s", "too");
    assert_int_equal(
        tq_pool_map_values(pool, "tq.fail", NULL, msgs, 3, &values, 30000),
        TQ_ETASK);
    assert_string_equal(tq_values_error(values), "item 0: fine?");
    assert_null(tq_values_at(values, 1));
    assert_int_equal(tq_values_code(values, 2), TQ_ETASK);
    tq_values_destroy(&values);
    for (int i = 0; i < 3; i++)
        tq_buf_free(&msgs[i]);
    for (int i = 0; i < N; i++)
        tq_buf_free(&items[i]);
    int64_t submitted = s_status_value(pool, "submitted");
    int64_t memory = -1;
    for (int64_t until = s_now_ms() + 10000; s_now_ms() < until; s_sleep_ms(20))
        if ((memory = s_status_value(pool, "memory")) == 0)
            break;
    printf("# map of %d: %lld tasks; broker memory after: %lld bytes\n", N,
           (long long)submitted, (long long)memory);
    /* map, map_values, map_items twice: 8 chunks each; 3 items: chunks
       of 1 */
    assert_int_equal(submitted, 8 + 8 + 8 + 8 + 3);
    assert_int_equal(memory, 0);
    free(items);
    free(out);
    tq_pool_destroy(&pool);
}

/* The helpers for task authors, and a crash inside a chunk. */
static void
test_task_helpers(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    tq_result_t *r =
        tq_pool_apply_timeout(pool, "helpers", NULL, 20000, "is", 5, "hi");
    assert_int_equal(tq_result_code(r), TQ_OK);
    const msgpack_object *v = tq_result_value(r);
    assert_int_equal(v->via.array.size, 5);
    const msgpack_object *e = v->via.array.ptr;
    assert_memory_equal(e[0].via.str.ptr, "helpers", 7);
    assert_true(e[1].via.str.size > 20 &&
                !memcmp(e[1].via.str.ptr, "ForkServerPoolWorker-", 21));
    assert_int_equal(e[2].via.str.size, strlen(tq_pool_endpoint(pool)));
    assert_memory_equal(e[2].via.str.ptr, tq_pool_endpoint(pool),
                        e[2].via.str.size);
    assert_int_equal(e[3].via.i64, 5);
    tq_result_destroy(&r);
    tq_queue_t *q = tq_queue_new(tq_pool_client(pool), "helpers.q", 0);
    tq_item_t *item = NULL;
    assert_int_equal(tq_queue_get_item(q, &item, 10000), TQ_OK);
    assert_string_equal(tq_item_str(item), "hi");
    tq_item_destroy(&item);
    tq_queue_destroy(&q);
    /* a bad argument: an error naming the task and the argument */
    r = tq_pool_apply_timeout(pool, "helpers", NULL, 20000, "ss", "x", "y");
    assert_int_equal(tq_result_code(r), TQ_ETASK);
    assert_string_equal(tq_result_error(r),
                        "task helpers: argument 0 must be an int, not a "
                        "string");
    tq_result_destroy(&r);
    assert_string_equal(tq_worker_name(), "MainProcess");
    /* tq_pack keeps no 8 KiB buffer for a 2-byte item */
    tq_buf_t small;
    tq_pack(&small, "i", (int64_t)1);
    assert_true(malloc_usable_size(small.data) < 256);
    tq_buf_free(&small);
    tq_pool_destroy(&pool);
}

/* Chunks of 3: a failing item fails alone, with its own error; a crash
   fails every item of its chunk (TQ_ELOST) and no other. */
static void
test_chunk_failures(void **state)
{
    (void)state;
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = s_reg;
    po.chunksize = 3;
    tq_pool_t *pool = tq_pool_new(2, &po);
    assert_non_null(pool);
    enum { N = 7 };
    tq_buf_t items[N];
    tq_pack(&items[0], "i", (int64_t)1);
    tq_pack(&items[1], "s", "x");
    tq_pack(&items[2], "i", (int64_t)3);
    tq_pack(&items[3], "i", (int64_t)4);
    tq_pack(&items[4], "i", (int64_t)13); /* chunk 3..5 crashes */
    tq_pack(&items[5], "i", (int64_t)6);
    tq_pack(&items[6], "i", (int64_t)7);
    tq_result_t *out[N];
    assert_int_equal(tq_pool_map(pool, "checked", NULL, items, N, out, 30000),
                     TQ_ETASK);
    assert_int_equal(tq_result_value(out[0])->via.i64, 1);
    assert_int_equal(tq_result_code(out[1]), TQ_ETASK);
    assert_string_equal(tq_result_error(out[1]),
                        "task checked: argument 0 must be an int, not a "
                        "string");
    assert_int_equal(tq_result_value(out[2])->via.i64, 9);
    for (int i = 3; i < 6; i++) {
        assert_int_equal(tq_result_code(out[i]), TQ_ELOST);
        assert_non_null(strstr(tq_result_error(out[i]), S_CRASH_NAME));
    }
    assert_int_equal(tq_result_value(out[6])->via.i64, 49);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&out[i]);
    tq_values_t *values = NULL;
    assert_int_equal(
        tq_pool_map_values(pool, "checked", NULL, items, N, &values, 30000),
        TQ_ETASK);
    assert_string_equal(tq_values_error(values),
                        "item 1: task checked: argument 0 must be an int, "
                        "not a string");
    assert_int_equal(tq_values_at(values, 2)->via.i64, 9);
    assert_int_equal(tq_values_code(values, 4), TQ_ELOST);
    assert_int_equal(tq_values_at(values, 6)->via.i64, 49);
    tq_values_destroy(&values);
    for (int i = 0; i < N; i++)
        tq_buf_free(&items[i]);
    tq_pool_destroy(&pool);
}

/* A sequential apply from the only caller is handed to the broker by a
   call, the caller running the broker's loop while it waits: the pool's
   client makes no request for it. Every task still ends with its value. */
static void
test_apply_by_call(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    tq_client_t *client = tq_pool_client(pool);
    uint64_t before = tq_client_moves(client, TQ_REQ_NEW, TQ_REQ_QUEUED);
    /* the broker's thread may be in a pass when a caller comes (a
       heartbeat, or any pass on a loaded machine): that apply goes through
       the client. At least one of a bounded run must go by call; every
       one ends with its value either way. */
    enum { N = 20, MOST = 2000 };
    int applied = 0;
    while (applied < MOST &&
           (applied < N ||
            tq_client_moves(client, TQ_REQ_NEW, TQ_REQ_QUEUED) - before >=
                (uint64_t)applied)) {
        int64_t i = applied % 1000;
        tq_result_t *r =
            tq_pool_apply_timeout(pool, "square", NULL, 10000, "i", i);
        assert_non_null(r);
        assert_int_equal(tq_result_code(r), TQ_OK);
        assert_int_equal(tq_result_value(r)->via.i64, i * i);
        assert_int_equal(tq_result_attempts(r), 1);
        tq_result_destroy(&r);
        applied++;
    }
    assert_true(tq_client_moves(client, TQ_REQ_NEW, TQ_REQ_QUEUED) - before <
                (uint64_t)applied);
    /* a failure keeps its reason on that path too, and the options go
       with the task: retries, a time limit */
    tq_options_t o = TQ_OPTIONS_INIT;
    o.retries = 1;
    o.retry_backoff_ms = 1;
    o.priority = 5;
    o.queue = "default";
    tq_result_t *r = tq_pool_apply(pool, "square", &o, "ii", 1, 2);
    assert_int_equal(tq_result_code(r), TQ_ETASK);
    assert_string_equal(tq_result_error(r), "one argument");
    assert_int_equal(tq_result_attempts(r), 2);
    tq_result_destroy(&r);
    char path[] = "/tmp/tq-pool-block-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    o = (tq_options_t)TQ_OPTIONS_INIT;
    o.time_limit_ms = 100;
    r = tq_pool_apply(pool, "block", &o, "s", path);
    assert_int_equal(tq_result_code(r), TQ_ETIMELIMIT);
    tq_result_destroy(&r);
    unlink(path);
    assert_int_equal(tq_pool_close(pool), TQ_OK);
    assert_int_equal(tq_pool_join(pool, 10000), TQ_OK);
    tq_pool_destroy(&pool);
}

/* An apply whose timeout ends first returns the pending handle, which
   still takes a cancel and ends CANCELLED with its reason. */
static void
test_apply_timeout_then_cancel(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    char path[] = "/tmp/tq-pool-block-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    tq_result_t *r = tq_pool_apply_timeout(pool, "block", NULL, 100, "s", path);
    assert_non_null(r);
    assert_false(tq_result_ready(r));
    assert_int_equal(tq_result_get(r, 0), TQ_ETIMEDOUT);
    assert_int_equal(tq_result_cancel(r), TQ_OK);
    assert_int_equal(tq_result_get(r, 10000), TQ_ECANCELLED);
    assert_int_equal(tq_result_state(r), TQ_STATE_CANCELLED);
    tq_result_destroy(&r);
    /* the pool goes on */
    r = tq_pool_apply_timeout(pool, "square", NULL, 10000, "i", (int64_t)4);
    assert_int_equal(tq_result_code(r), TQ_OK);
    assert_int_equal(tq_result_value(r)->via.i64, 16);
    tq_result_destroy(&r);
    unlink(path);
    tq_pool_destroy(&pool);
}

typedef struct {
    tq_pool_t *pool;
    const char *path;
    int code;
} s_blocked_t;

static void *
s_apply_blocked(void *arg)
{
    s_blocked_t *b = arg;
    tq_result_t *r = tq_pool_apply(b->pool, "block", NULL, "s", b->path);
    b->code = r ? tq_result_code(r) : -1;
    tq_result_destroy(&r);
    return NULL;
}

/* terminate while another thread waits in apply on a running task: that
   apply returns, its task CANCELLED. */
static void
test_terminate_ends_apply(void **state)
{
    (void)state;
    tq_pool_t *pool = s_pool(1, 0);
    char path[] = "/tmp/tq-pool-block-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    s_blocked_t b = {pool, path, 0};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_apply_blocked, &b), 0);
    for (int64_t until = s_now_ms() + 10000;
         access(path, F_OK) != 0 && s_now_ms() < until;)
        s_sleep_ms(5);
    assert_int_equal(access(path, F_OK), 0); /* the task runs */
    assert_int_equal(tq_pool_terminate(pool), TQ_OK);
    pthread_join(thread, NULL);
    assert_int_equal(b.code, TQ_ECANCELLED);
    unlink(path);
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
    tq_registry_add(s_reg, "record", s_record, NULL);
    tq_registry_add(s_reg, "crash", s_crash, NULL);
    tq_registry_add(s_reg, "checked", s_checked, NULL);
    tq_registry_add(s_reg, "helpers", s_helpers, NULL);
    tq_registry_add(s_reg, "block", s_block, NULL);
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
        cmocka_unit_test(test_pools_beside_threads),
        cmocka_unit_test(test_pool_from_exited_thread),
        cmocka_unit_test(test_server_killed),
        cmocka_unit_test(test_server_dies_too_often),
        cmocka_unit_test(test_unknown_task),
        cmocka_unit_test(test_fifo_fresh_pool),
        cmocka_unit_test(test_crash_quiet_once),
        cmocka_unit_test(test_results_released_and_chunks),
        cmocka_unit_test(test_task_helpers),
        cmocka_unit_test(test_chunk_failures),
        cmocka_unit_test(test_apply_by_call),
        cmocka_unit_test(test_apply_timeout_then_cancel),
        cmocka_unit_test(test_terminate_ends_apply),
    };
    /* e.g. TQ_TEST_FILTER='*killed*' runs one test */
    if (getenv("TQ_TEST_FILTER"))
        cmocka_set_test_filter(getenv("TQ_TEST_FILTER"));
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tq_registry_destroy(&s_reg);
    return rc;
}
