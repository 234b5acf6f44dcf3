/* test_seeds.c - runs every seed port (examples/seeds) as a real process
   with a reduced time scale and checks its output and its wall time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_SCALE 0.2 /* every sleep of the originals times this */

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs seed binary name with args (may be "") at time scale `scale`,
   stdout into out (bounded by `timeout`), stderr into errfile (NULL:
   dropped); returns its exit status and the wall time in *secs. */
static int
s_run_ex(const char *name, const char *args, double scale, const char *errfile,
         char *out, size_t size, double *secs)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "TQ_SEED_SCALE=%g timeout -s KILL 60 %s/seed_%s %s 2>%s", scale,
             TQ_SEEDS_DIR, name, args, errfile ? errfile : "/dev/null");
    double t0 = s_now();
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    *secs = s_now() - t0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs seed binary name at S_SCALE, stderr dropped. */
static int
s_run(const char *name, char *out, size_t size, double *secs)
{
    return s_run_ex(name, "", S_SCALE, NULL, out, size, secs);
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

/* Copies line index of out (without its newline) into buf; false past
   the end. */
static bool
s_nth(const char *out, int index, char *buf, size_t size)
{
    const char *l = out;
    for (int i = 0; i < index && l; i++) {
        l = strchr(l, '\n');
        l = l ? l + 1 : NULL;
    }
    if (!l || !*l)
        return false;
    size_t n = strcspn(l, "\n");
    snprintf(buf, size, "%.*s", (int)(n < size ? n : size - 1), l);
    return true;
}

/* Number of lines of out. */
static int
s_lines(const char *out)
{
    int n = 0;
    for (const char *p = out; *p; p++)
        n += *p == '\n';
    return n;
}

/* Parses "Pid: <pid> LoopCount: <n>" exactly (nothing mixed into it). */
static bool
s_loop_line(const char *line, long *pid, int *count)
{
    int end = -1;
    return sscanf(line, "Pid: %ld LoopCount: %d%n", pid, count, &end) == 2 &&
        end == (int)strlen(line);
}

/* True once /proc/pid is gone, waiting up to a second. */
static bool
s_gone(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld", pid);
    for (double until = s_now() + 1; s_now() < until;) {
        if (access(path, F_OK) != 0)
            return true;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return access(path, F_OK) != 0;
}

static void
test_pool_apply_async(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("pool_apply_async", out, sizeof out, &secs), 0);
    /* the Mark line comes before every result, done comes last; the
       children are ready when the pool returns, so a task may begin (its
       "msg:" line) before the main process prints Mark, as a fast fork
       does in Python */
    int mark = s_line(out, "Mark~ Mark~ Mark~");
    assert_true(mark >= 0 && mark <= 3 && mark < s_line(out, "end"));
    assert_int_equal(s_count(out, "msg: hello "), 4);
    assert_int_equal(s_count(out, "end\n"), 4);
    assert_true(s_line(out, "msg: hello 3") > s_line(out, "end"));
    /* three at once: the third began before the first ended */
    assert_true(s_line(out, "msg: hello 2") < s_line(out, "end"));
    assert_int_equal(s_line(out, "Sub-process(es) done."), 9);
    /* Pool(3) x 4 tasks of 3 s: two rounds, not one and not four */
    double round = 3 * S_SCALE;
    printf("# apply_async: %.2f s (round %.2f s)\n", secs, round);
    assert_true(secs > 2 * round - 0.05); /* a floor only */
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
    assert_true(secs > 4 * round - 0.05); /* a floor only */
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
    assert_true(secs > 3 * round - 0.05); /* a floor only */
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
                           "produced 5000 consumed 5000 missing 0 doubled 0 "
                           "errors 0 in "));
    assert_int_equal(s_count(out, "consumer start "), 5);
    assert_int_equal(s_count(out, "consumer exit "), 5);
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

static void
test_process_start(void **state)
{
    (void)state;
    char out[8192], line[256];
    double secs;
    assert_int_equal(s_run("process_start", out, sizeof out, &secs), 0);
    /* process(0) sleeps 0 s: its line may even come first */
    int cpu = s_line(out, "CPU number:");
    assert_true(cpu == 0 || (cpu == 1 && s_line(out, "Process: 0") == 0));
    assert_int_equal(s_count(out, "Child process name:Process-"), 5);
    /* process(0) sleeps 0 s: its line may come before the main's end, as
       in Python; process(1..4) end in order, after it */
    int ended = s_line(out, "Process Ended");
    assert_true(ended == 6 || ended == 7);
    assert_int_equal(s_count(out, "Process: 0\n"), 1);
    for (int i = 1; i < 5; i++) {
        snprintf(line, sizeof line, "Process: %d", i);
        assert_int_equal(s_line(out, line), 7 + i);
    }
    assert_int_equal(s_lines(out), 12);
    /* five processes at once: about 4 s, not 0+1+2+3+4 */
    printf("# process_start: %.2f s (round %.2f s)\n", secs, S_SCALE);
    assert_true(secs > 4 * S_SCALE - 0.05); /* a floor only */
}

static void
test_process_workers(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("process_workers", out, sizeof out, &secs), 0);
    assert_true(s_line(out, "The number of CPU is:") >= 0);
    assert_int_equal(s_count(out, "child   p.name:Process-"), 3);
    assert_true(s_line(out, "END!!!") > s_line(out, "child   p.name:"));
    for (int i = 1; i <= 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "worker_%d\n", i);
        assert_int_equal(s_count(out, name), 2); /* start and end */
    }
    /* 2, 3 and 4 s at once: they end in that order, after about 4 s */
    assert_true(s_line(out, "end worker_1") < s_line(out, "end worker_2"));
    assert_true(s_line(out, "end worker_2") < s_line(out, "end worker_3"));
    printf("# process_workers: %.2f s\n", secs);
    assert_true(secs > 4 * S_SCALE - 0.05); /* a floor only */
}

static void
test_process_class(void **state)
{
    (void)state;
    char out[8192], line[256];
    double secs;
    assert_int_equal(s_run("process_class", out, sizeof out, &secs), 0);
    /* MyProcess(2), (3), (4): 9 lines from 3 processes */
    assert_int_equal(s_lines(out), 9);
    long pids[3] = {0};
    int lines[3] = {0}, npids = 0;
    for (int i = 0; s_nth(out, i, line, sizeof line); i++) {
        long pid;
        int count;
        assert_true(s_loop_line(line, &pid, &count));
        int k = 0;
        while (k < npids && pids[k] != pid)
            k++;
        if (k == npids) {
            assert_true(npids < 3);
            pids[npids++] = pid;
        }
        assert_int_equal(count, lines[k]++); /* 0, 1 ... per process */
    }
    assert_int_equal(npids, 3);
    /* at once: about 4 s, not 2+3+4 */
    printf("# process_class: %.2f s\n", secs);
    assert_true(secs > 4 * S_SCALE - 0.05); /* a floor only */
}

static void
test_process_info(void **state)
{
    (void)state;
    char out[8192], main_out[8192], line[256];
    double secs;
    assert_int_equal(s_run("process_info", out, sizeof out, &secs), 0);
    /* the child's two lines land anywhere after start, as in Python: check
       the main process's lines without them */
    main_out[0] = '\0';
    for (int i = 0; s_nth(out, i, line, sizeof line); i++)
        if (strncmp(line, "2 子进程信息", strlen("2 子进程信息")) &&
            strncmp(line, "hello ", 6)) {
            strcat(main_out, line);
            strcat(main_out, "\n");
        }
    assert_int_equal(s_lines(main_out), 10);
    assert_int_equal(s_line(main_out, "1 主进程信息: pid="), 0);
    assert_int_equal(s_line(main_out, "111 ##### ps pid: None, ident:None"), 1);
    assert_int_equal(s_line(main_out, "3 进程信息: pid="), 2);
    /* is_alive(): before start, after start, after join */
    assert_true(s_nth(main_out, 3, line, sizeof line));
    assert_string_equal(line, "False");
    /* after start: True in Python; here fun (which does not sleep) may
       already have ended on its ready child */
    assert_true(s_nth(main_out, 4, line, sizeof line));
    assert_true(!strcmp(line, "True") || !strcmp(line, "False"));
    assert_int_equal(s_line(main_out, "222 #### ps pid: "), 5);
    long pid = 0, ident = 0, child = -1;
    assert_true(s_nth(main_out, 5, line, sizeof line));
    assert_int_equal(
        sscanf(line, "222 #### ps pid: %ld, ident:%ld", &pid, &ident), 2);
    assert_int_equal(pid, ident);
    assert_int_equal(s_line(main_out, "4 进程信息"), 6);
    assert_true(s_nth(main_out, 7, line, sizeof line));
    assert_string_equal(line, "False");
    assert_int_equal(s_line(main_out, "5 进程信息"), 8);
    assert_int_equal(s_line(main_out, "6 进程信息"), 9);
    /* the child's own pid is the one the parent reported, and it ran
       before join returned */
    int c = s_line(out, "2 子进程信息: pid=");
    assert_true(c > 3);
    assert_true(s_nth(out, c, line, sizeof line));
    assert_int_equal(sscanf(line, "2 子进程信息: pid=%ld", &child), 1);
    assert_int_equal(child, pid);
    assert_true(s_line(out, "hello jingsanpang") > c);
    assert_true(s_line(out, "5 进程信息") > s_line(out, "hello jingsanpang"));
}

static void
test_daemon(void **state)
{
    (void)state;
    char out[8192], err[4096];
    double secs;
    char errfile[] = "/tmp/tq_seed_daemon_XXXXXX";
    int fd = mkstemp(errfile);
    assert_true(fd >= 0);
    close(fd);
    /* scale 1: the children's first print would come 1 s after start */
    assert_int_equal(
        s_run_ex("daemon", "", 1.0, errfile, out, sizeof out, &secs), 0);
    FILE *f = fopen(errfile, "r");
    assert_non_null(f);
    size_t n = fread(err, 1, sizeof err - 1, f);
    err[n] = '\0';
    fclose(f);
    unlink(errfile);
    /* the main process ends at once and its daemonic children with it */
    assert_string_equal(out, "Main process Ended!\n");
    printf("# daemon: %.2f s\n", secs);
    /* "at once": nothing but the main line came out (the children would
       print a second after they start) */
    assert_non_null(strstr(err, "daemon tasks cancelled: 3"));
    const char *at = strstr(err, "daemon children:");
    assert_non_null(at);
    at += strlen("daemon children:");
    long pid;
    int len, gone = 0;
    while (sscanf(at, " %ld%n", &pid, &len) == 1) {
        assert_true(s_gone(pid)); /* and no zombie left in /proc */
        gone++;
        at += len;
    }
    assert_int_equal(gone, 3);
    assert_int_equal(sscanf(at, " server %ld", &pid), 1);
    assert_true(s_gone(pid));
}

static void
test_daemon_join(void **state)
{
    (void)state;
    char out[8192], line[256];
    double secs;
    assert_int_equal(s_run("daemon_join", out, sizeof out, &secs), 0);
    /* start + join each in turn: 0 1, 0 1 2, 0 1 2 3, then the end */
    static const int want[9] = {0, 1, 0, 1, 2, 0, 1, 2, 3};
    for (int i = 0; i < 9; i++) {
        long pid;
        int count;
        assert_true(s_nth(out, i, line, sizeof line));
        assert_true(s_loop_line(line, &pid, &count));
        assert_int_equal(count, want[i]);
    }
    assert_int_equal(s_line(out, "Main process Ended!"), 9);
    assert_int_equal(s_lines(out), 10);
    /* one after the other: 2+3+4 s */
    printf("# daemon_join: %.2f s\n", secs);
    assert_true(secs > 9 * S_SCALE - 0.05); /* a floor only */
}

static void
test_lock(void **state)
{
    (void)state;
    static char out[16384];
    char line[256];
    double secs;
    assert_int_equal(s_run("lock", out, sizeof out, &secs), 0);
    /* MyProcess(10..14): 60 prints, none mixed with another (each is
       written in two halves, so only the lock keeps them whole) */
    assert_int_equal(s_lines(out), 10 + 11 + 12 + 13 + 14);
    long pids[5] = {0};
    int lines[5] = {0}, npids = 0;
    for (int i = 0; s_nth(out, i, line, sizeof line); i++) {
        long pid;
        int count;
        assert_true(s_loop_line(line, &pid, &count));
        int k = 0;
        while (k < npids && pids[k] != pid)
            k++;
        if (k == npids) {
            assert_true(npids < 5);
            pids[npids++] = pid;
        }
        assert_int_equal(count, lines[k]++);
    }
    assert_int_equal(npids, 5);
    int seen[15] = {0};
    for (int k = 0; k < 5; k++) {
        assert_true(lines[k] >= 10 && lines[k] <= 14);
        seen[lines[k]]++;
    }
    for (int loop = 10; loop < 15; loop++)
        assert_int_equal(seen[loop], 1);
    printf("# lock: %.2f s\n", secs);
}

static void
test_semaphore(void **state)
{
    (void)state;
    char out[8192], line[256];
    double secs;
    assert_int_equal(s_run("semaphore", out, sizeof out, &secs), 0);
    /* never more than Semaphore(2) elements ahead, never behind */
    int produced = 0, consumed = 0, i = 0;
    for (; s_nth(out, i, line, sizeof line); i++) {
        if (strcmp(line, "Ended!") == 0)
            break;
        if (strcmp(line, "Producer append an element") == 0)
            produced++;
        else {
            assert_string_equal(line, "Consumer pop an element");
            consumed++;
        }
        assert_true(produced - consumed >= 0 && produced - consumed <= 2);
    }
    assert_int_equal(produced, 5);
    assert_int_equal(consumed, 5);
    assert_int_equal(i, 10);
    assert_int_equal(s_lines(out), 11);
    /* every step holds the lock for 1 s: 10 s in turn */
    printf("# semaphore: %.2f s\n", secs);
    assert_true(secs > 10 * S_SCALE - 0.05); /* a floor only */
}

static void
test_queue_read_write(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("queue_read_write", out, sizeof out, &secs), 0);
    assert_int_equal(s_line(out, "write process = "), 0);
    assert_int_equal(s_line(out, "read process = "), 1);
    int last_get = -1;
    for (const char *x = "ABCDE"; *x; x++) {
        char put[32], get[32];
        snprintf(put, sizeof put, "Put %c to queue", *x);
        snprintf(get, sizeof get, "get %c from queue", *x);
        assert_true(s_line(out, put) >= 2);
        /* each item is read after it was put, in FIFO order */
        assert_true(s_line(out, get) > s_line(out, put));
        assert_true(s_line(out, get) > last_get);
        last_get = s_line(out, get);
    }
    assert_int_equal(s_lines(out), 12);
    /* 5 puts 0.5 s apart */
    printf("# queue_read_write: %.2f s\n", secs);
    assert_true(secs > 2.5 * S_SCALE - 0.05); /* a floor only */
}

static void
test_pipe(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("pipe", out, sizeof out, &secs), 0);
    assert_string_equal(out, "hello father\nhi son\n");
}

static void
test_pool_work(void **state)
{
    (void)state;
    char out[8192];
    double secs;
    assert_int_equal(s_run("pool_work", out, sizeof out, &secs), 0);
    for (int i = 0; i < 10; i++) {
        char want[32];
        snprintf(want, sizeof want, "-process %d\n", i);
        assert_int_equal(s_count(out, want), 1);
    }
    assert_int_equal(s_count(out, "process: ForkServerPoolWorker-"), 10);
    assert_int_equal(s_line(out, "Sub-process all done."), 10);
    /* Pool(5) x 10 tasks of 2 s: two rounds */
    double round = 2 * S_SCALE;
    printf("# pool_work: %.2f s (round %.2f s)\n", secs, round);
    assert_true(secs > 2 * round - 0.05); /* a floor only */
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
        cmocka_unit_test(test_process_start),
        cmocka_unit_test(test_process_workers),
        cmocka_unit_test(test_process_class),
        cmocka_unit_test(test_process_info),
        cmocka_unit_test(test_daemon),
        cmocka_unit_test(test_daemon_join),
        cmocka_unit_test(test_lock),
        cmocka_unit_test(test_semaphore),
        cmocka_unit_test(test_queue_read_write),
        cmocka_unit_test(test_pipe),
        cmocka_unit_test(test_pool_work),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
