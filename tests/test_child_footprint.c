/* test_child_footprint.c - end to end, what a worker child is made of
   (issue 12, the per-child footprint), read from /proc: the threads it
   runs (main, ZeroMQ's I/O and reaper, the keeper only once a task ran
   with credit above 1), the stacks of those threads (small, not
   RLIMIT_STACK), one malloc arena (unless the user set MALLOC_ARENA_MAX),
   and a task's own threads still on the default stack; the same for a
   child forked after the supervisor made its context (a respawn). The sizes in
   bytes belong to bench/child_footprint.sh, not here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_harness.h"

#define S_GET_MS 20000 /* bound on any get() expected to end */
#define S_MAX_THREADS 16
/* A thread stack at least this large is glibc's default (RLIMIT_STACK,
   8 MiB here); a child's own threads have 512 KiB at most. The margin
   covers a neighbouring mapping the kernel may merge with a stack. */
#define S_BIG_STACK (2u << 20)
/* An anonymous PROT_NONE reserve this large is a malloc arena's heap (64
   MiB of address space each); guard pages are 4 KiB. */
#define S_ARENA_RESERVE (1u << 20)

/* Under AddressSanitizer (the worker is built like the test) malloc is
   ASan's, not glibc's arenas, and its shadow maps terabytes: the checks on
   mappings say nothing there. */
#if defined(__SANITIZE_ADDRESS__)
#define S_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_ASAN 1
#endif
#endif
#ifndef S_ASAN
#define S_ASAN 0
#endif

/* The one live child of supervisor; fails unless there is exactly one. */
static pid_t
s_only_child(pid_t supervisor)
{
    pid_t pids[4];
    assert_int_equal(tq_harness_children(supervisor, pids, 4), 1);
    return pids[0];
}

/* The thread ids of pid, into tids (max); returns how many. */
static size_t
s_threads(pid_t pid, pid_t *tids, size_t max)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *dir = opendir(path);
    assert_non_null(dir);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && n < max) {
        char *end;
        long tid = strtol(e->d_name, &end, 10);
        if (!*end && tid > 0)
            tids[n++] = (pid_t)tid;
    }
    closedir(dir);
    return n;
}

/* How many threads of pid are named name (/proc/PID/task/TID/comm). */
static int
s_named(pid_t pid, const char *name)
{
    pid_t tids[S_MAX_THREADS];
    size_t n = s_threads(pid, tids, S_MAX_THREADS);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        char path[96], comm[64] = "";
        snprintf(path, sizeof path, "/proc/%d/task/%d/comm", (int)pid,
                 (int)tids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof comm, f))
            comm[strcspn(comm, "\n")] = '\0';
        fclose(f);
        found += strcmp(comm, name) == 0;
    }
    return found;
}

/* The stack pointer of a blocked thread, from /proc/PID/task/TID/syscall
   (the next to last field), waiting (bounded) while it runs. Returns 0 if
   the file cannot be read (no ptrace access to it). */
static uint64_t
s_stack_pointer(pid_t pid, pid_t tid)
{
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task/%d/syscall", (int)pid, (int)tid);
    int64_t deadline = tq_harness_now_ms() + 5000;
    for (;;) {
        char line[512] = "";
        FILE *f = fopen(path, "r");
        if (!f)
            return 0;
        bool got = fgets(line, sizeof line, f) != NULL;
        fclose(f);
        if (!got)
            return 0;
        if (strncmp(line, "running", 7) != 0) {
            char *fields[16];
            int n = 0;
            for (char *tok = strtok(line, " \n"); tok && n < 16;
                 tok = strtok(NULL, " \n"))
                fields[n++] = tok;
            assert_true(n >= 3);
            return strtoull(fields[n - 2], NULL, 16);
        }
        assert_true(tq_harness_now_ms() < deadline);
        tq_harness_sleep_ms(10);
    }
}

/* One line of /proc/PID/maps. */
typedef struct {
    uint64_t start, end;
    char perms[8];
    unsigned long inode;
    char path[256];
} s_map_t;

/* Calls fn(map, arg) on every mapping of pid. */
static void
s_maps(pid_t pid, void (*fn)(const s_map_t *, void *), void *arg)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f)) {
        s_map_t m;
        memset(&m, 0, sizeof m);
        unsigned long long start, end, offset;
        char dev[32];
        int n = sscanf(line, "%llx-%llx %7s %llx %31s %lu %255s", &start, &end,
                       m.perms, &offset, dev, &m.inode, m.path);
        if (n < 6)
            continue;
        m.start = start;
        m.end = end;
        fn(&m, arg);
    }
    fclose(f);
}

typedef struct {
    uint64_t sp; /* in */
    uint64_t size; /* out: the mapping holding sp, 0: none */
} s_find_t;

static void
s_find_sp(const s_map_t *m, void *arg)
{
    s_find_t *find = arg;
    if (find->sp >= m->start && find->sp < m->end)
        find->size = m->end - m->start;
}

/* Asserts that every thread of pid but the main one runs on a small
   stack; returns how many were checked (0: /proc would not tell). */
static int
s_assert_small_stacks(pid_t pid)
{
    pid_t tids[S_MAX_THREADS];
    size_t n = s_threads(pid, tids, S_MAX_THREADS);
    int checked = 0;
    for (size_t i = 0; i < n; i++) {
        if (tids[i] == pid)
            continue; /* the process stack */
        s_find_t find = {s_stack_pointer(pid, tids[i]), 0};
        if (!find.sp)
            return 0;
        s_maps(pid, s_find_sp, &find);
        printf("child %d thread %d: stack mapping %" PRIu64 " KiB\n", (int)pid,
               (int)tids[i], find.size / 1024);
        assert_true(find.size > 0);
        assert_true(find.size < S_BIG_STACK);
        checked++;
    }
    return checked;
}

typedef struct {
    bool reserve_only; /* PROT_NONE ("---p") mappings only */
    uint64_t largest; /* bytes */
} s_largest_t;

static void
s_largest(const s_map_t *m, void *arg)
{
    s_largest_t *self = arg;
    if ((!self->reserve_only || strcmp(m->perms, "---p") == 0) &&
        m->inode == 0 && !m->path[0] && m->end - m->start > self->largest)
        self->largest = m->end - m->start;
}

/* The largest anonymous mapping of pid, bytes: any protection, or
   PROT_NONE only if reserve_only. */
static uint64_t
s_largest_of(pid_t pid, bool reserve_only)
{
    s_largest_t l = {reserve_only, 0};
    s_maps(pid, s_largest, &l);
    return l.largest;
}

/* True if the broker lists a worker with this pid. */
static bool
s_listed(tq_harness_env_t *env, pid_t pid)
{
    tq_harness_status_t status;
    if (tq_harness_status(env->client, &status, 1000) != TQ_OK)
        return false;
    uint32_t count = 0;
    const msgpack_object *workers = tq_harness_workers(&status, &count);
    bool found = false;
    for (uint32_t i = 0; i < count; i++)
        found |= tq_harness_map_uint(&workers->via.array.ptr[i], "pid", 0) ==
            (uint64_t)pid;
    tq_harness_status_free(&status);
    return found;
}

/* Waits (10 s at most) for the child that replaces old under supervisor
   to be listed by the broker; returns its pid. */
static pid_t
s_wait_replacement(tq_harness_env_t *env, pid_t supervisor, pid_t old)
{
    int64_t deadline = tq_harness_now_ms() + 10000;
    for (;;) {
        pid_t pids[4];
        if (tq_harness_children(supervisor, pids, 4) == 1 && pids[0] != old &&
            s_listed(env, pids[0]))
            return pids[0];
        assert_true(tq_harness_now_ms() < deadline);
        tq_harness_sleep_ms(20);
    }
}

/* Runs task (no arguments) and asserts it succeeded; returns the result
   (the caller destroys it). */
static tq_result_t *
s_run(tq_harness_env_t *env, const char *task)
{
    tq_result_t *r = tq_apply_async(env->client, task, NULL, "");
    assert_non_null(r);
    int rc = tq_result_get(r, S_GET_MS);
    if (rc != TQ_OK)
        fail_msg("%s: %s (%s)", task, tq_strerror(rc), tq_result_error(r));
    return r;
}

/* Starts env's broker and a host of one child with credit 4 (*host);
   returns the child's pid. */
static pid_t
s_host_of_one(tq_harness_env_t *env, pid_t *host)
{
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *const prefetch[] = {"--prefetch", "4", NULL};
    *host = tq_harness_env_add_worker(env, 1, prefetch, true);
    assert_true(*host > 0);
    return s_only_child(*host);
}

/* Threads of a child: main, ZeroMQ's I/O thread and its reaper, nothing
   else while it has run no task, even with credit above 1 (the keeper
   starts with the first task, then stays); with credit 1, never a keeper. */
static void
test_child_threads(void **state)
{
    tq_harness_env_t *env = *state;
    pid_t host = 0;
    pid_t child = s_host_of_one(env, &host);
    pid_t tids[S_MAX_THREADS];
    assert_int_equal(s_threads(child, tids, S_MAX_THREADS), 3);
    assert_int_equal(s_named(child, "ZMQbg/IO/0"), 1);
    assert_int_equal(s_named(child, "ZMQbg/Reaper"), 1);

    tq_result_t *r = s_run(env, "tq.echo");
    tq_result_destroy(&r);
    /* the keeper, started before the task ran */
    assert_int_equal(s_threads(child, tids, S_MAX_THREADS), 4);
    r = s_run(env, "tq.echo");
    tq_result_destroy(&r);
    assert_int_equal(s_threads(child, tids, S_MAX_THREADS), 4);
    assert_int_equal(tq_harness_env_stop_worker(env, host) >= 0, 1);

    /* credit 1: REVOKE never comes, no keeper (the default is 16) */
    const char *const one[] = {"--prefetch", "1", NULL};
    host = tq_harness_env_add_worker(env, 1, one, true);
    assert_true(host > 0);
    child = s_only_child(host);
    r = s_run(env, "tq.echo");
    tq_result_destroy(&r);
    assert_int_equal(s_threads(child, tids, S_MAX_THREADS), 3);
}

/* The threads a child starts (ZeroMQ's, the keeper) run on small stacks,
   not on RLIMIT_STACK-sized ones. */
static void
test_child_stacks(void **state)
{
    tq_harness_env_t *env = *state;
    pid_t host = 0;
    pid_t child = s_host_of_one(env, &host);
    tq_result_t *r = s_run(env, "tq.echo"); /* the keeper starts */
    tq_result_destroy(&r);
    int checked = s_assert_small_stacks(child);
    if (!checked)
        skip(); /* /proc/PID/task/TID/syscall not readable here */
    assert_int_equal(checked, 3); /* I/O, reaper, keeper */
}

/* A task's own threads still get the process default stack: the test's
   default, which the worker inherits (same RLIMIT_STACK). */
static void *
s_default_stack(void *arg)
{
    size_t *size = arg;
    pthread_attr_t attr;
    assert_int_equal(pthread_getattr_np(pthread_self(), &attr), 0);
    pthread_attr_getstacksize(&attr, size);
    pthread_attr_destroy(&attr);
    return NULL;
}

static void
test_task_threads_default_stack(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *const module[] = {"--module", TQ_STACK_SO, NULL};
    assert_true(tq_harness_env_add_worker(env, 1, module, true) > 0);
    size_t want = 0;
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_default_stack, &want), 0);
    pthread_join(thread, NULL);
    tq_result_t *r = s_run(env, "test.thread_stack");
    const msgpack_object *value = tq_result_value(r);
    assert_non_null(value);
    assert_int_equal(value->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    printf("a task's thread: %" PRIu64 " KiB of stack, the default %zu KiB\n",
           value->via.u64 / 1024, want / 1024);
    assert_int_equal(value->via.u64, (uint64_t)want);
    tq_result_destroy(&r);
}

/* One malloc arena in a child: its threads allocate in the main one, no
   64 MiB arena reserve of their own; MALLOC_ARENA_MAX set by the user
   wins. */
static void
test_child_one_arena(void **state)
{
    tq_harness_env_t *env = *state;
    if (S_ASAN)
        skip();
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t host = tq_harness_env_add_worker(env, 1, NULL, true);
    assert_true(host > 0);
    pid_t child = s_only_child(host);
    tq_result_t *r = s_run(env, "tq.echo");
    tq_result_destroy(&r);
    uint64_t reserve = s_largest_of(child, true);
    printf("largest PROT_NONE reserve of a child: %" PRIu64 " KiB\n",
           reserve / 1024);
    assert_true(reserve < S_ARENA_RESERVE);
    assert_int_equal(tq_harness_env_stop_worker(env, host) >= 0, 1);

    /* the user's choice: an arena per thread again (up to 4) */
    assert_int_equal(setenv("MALLOC_ARENA_MAX", "4", 1), 0);
    host = tq_harness_env_add_worker(env, 1, NULL, true);
    unsetenv("MALLOC_ARENA_MAX");
    assert_true(host > 0);
    child = s_only_child(host);
    r = s_run(env, "tq.echo");
    tq_result_destroy(&r);
    reserve = s_largest_of(child, true);
    printf("with MALLOC_ARENA_MAX=4: %" PRIu64 " KiB\n", reserve / 1024);
    assert_true(reserve >= S_ARENA_RESERVE);
}

/* A child forked after the supervisor made its own context (a respawn:
   here --max-tasks-per-child 1) inherits the supervisor's mappings: no
   RLIMIT_STACK-sized thread stacks and no arena among them, and the tasks
   it runs still start threads on the default stack. */
static void
test_respawned_child(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *const extra[] = {"--max-tasks-per-child", "1", "--module",
                                 TQ_STACK_SO, NULL};
    pid_t host = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(host > 0);
    pid_t first = s_only_child(host);
    tq_result_t *r = s_run(env, "tq.echo");
    tq_result_destroy(&r);
    pid_t child = s_wait_replacement(env, host, first);

    if (!S_ASAN) {
        uint64_t anon = s_largest_of(child, false);
        printf("respawned child %d: largest anonymous mapping %" PRIu64
               " KiB\n",
               (int)child, anon / 1024);
        assert_true(anon < S_BIG_STACK);
        assert_true(s_largest_of(child, true) < S_ARENA_RESERVE);
    }

    size_t want = 0;
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, s_default_stack, &want), 0);
    pthread_join(thread, NULL);
    r = s_run(env, "test.thread_stack");
    const msgpack_object *value = tq_result_value(r);
    assert_non_null(value);
    assert_int_equal(value->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(value->via.u64, (uint64_t)want);
    tq_result_destroy(&r);
}

int
main(void)
{
    unsetenv("MALLOC_ARENA_MAX");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_child_threads, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_child_stacks, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_task_threads_default_stack,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_respawned_child,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_child_one_arena,
                                        tq_harness_env_setup,
                                        tq_harness_env_teardown),
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
