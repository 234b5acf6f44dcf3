/* mytasks.c - an example task module: math.add, math.primes and
   text.wordcount, and test.* tasks that misbehave on purpose for the
   reliability tests (and test.first, a task returning one argument). Build it
   as a shared object and load it with `tq-worker --module ./libmytasks.so`. */
#include <tq/tq.h>

#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest N accepted by math.primes (the sieve takes N/2 bytes). */
#define PRIMES_MAX 100000000ULL

/* math.add NUMBER... -> the sum: an int if every argument is an int, else
   a float. Integer sums that overflow int64 also fall back to a float. */
static int
s_add(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    int64_t isum = 0;
    double dsum = 0;
    bool all_int = true;
    for (uint32_t i = 0; i < args->via.array.size; i++) {
        const msgpack_object *a = &args->via.array.ptr[i];
        switch (a->type) {
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            if (a->via.u64 > INT64_MAX ||
                __builtin_add_overflow(isum, (int64_t)a->via.u64, &isum))
                all_int = false;
            dsum += (double)a->via.u64;
            break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            if (__builtin_add_overflow(isum, a->via.i64, &isum))
                all_int = false;
            dsum += (double)a->via.i64;
            break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            all_int = false;
            dsum += a->via.f64;
            break;
        default:
            return tq_task_fail(task, "math.add: argument %u is not a number",
                                i + 1);
        }
    }
    return all_int ? msgpack_pack_int64(out, isum)
                   : msgpack_pack_double(out, dsum);
}

/* math.primes N -> how many primes are below N (N <= 10^8): a sieve over
   the odd numbers. */
static int
s_primes(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size != 1)
        return tq_task_fail(task, "math.primes takes 1 argument (N), %u given",
                            args->via.array.size);
    const msgpack_object *a = &args->via.array.ptr[0];
    uint64_t n;
    if (a->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        n = a->via.u64;
    else if (a->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        n = 0; /* no primes below a negative number */
    else
        return tq_task_fail(task, "math.primes: N must be an integer");
    if (n > PRIMES_MAX)
        return tq_task_fail(task, "math.primes: N must be at most %llu",
                            (unsigned long long)PRIMES_MAX);
    if (n <= 2)
        return msgpack_pack_uint64(out, 0);
    /* composite[i] stands for the odd number 2i+1, i < n/2 */
    size_t half = (size_t)(n / 2);
    unsigned char *composite = calloc(half, 1);
    if (!composite)
        return tq_task_fail(task, "math.primes: out of memory");
    uint64_t count = 1; /* 2 */
    for (size_t i = 1; i < half; i++) {
        if (composite[i])
            continue;
        uint64_t p = 2 * (uint64_t)i + 1;
        if (p >= n)
            break;
        count++;
        for (uint64_t m = p * p; m < n; m += 2 * p)
            composite[m / 2] = 1;
    }
    free(composite);
    return msgpack_pack_uint64(out, count);
}

/* Counts lines, words (runs of non-space) and bytes of a buffer, carrying
   "inside a word" across calls. */
typedef struct {
    uint64_t lines, words, bytes;
    bool in_word;
} s_counts_t;

static void
s_count(s_counts_t *c, const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\n')
            c->lines++;
        if (isspace(ch))
            c->in_word = false;
        else if (!c->in_word) {
            c->in_word = true;
            c->words++;
        }
    }
    c->bytes += len;
}

/* Counts the regular file at path; false if it cannot be opened as one. */
static bool
s_count_file(const char *path, s_counts_t *c, int *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return false;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0) {
            *err = 1;
            break;
        }
        s_count(c, buf, (size_t)n);
    }
    close(fd);
    return true;
}

static void
s_pack_key(msgpack_packer *out, const char *key, uint64_t value)
{
    msgpack_pack_str(out, strlen(key));
    msgpack_pack_str_body(out, key, strlen(key));
    msgpack_pack_uint64(out, value);
}

/* text.wordcount PATH_OR_TEXT -> {"lines", "words", "bytes"} of the file
   if the string names a readable regular file, else of the string. */
static int
s_wordcount(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size != 1)
        return tq_task_fail(task, "text.wordcount takes 1 argument, %u given",
                            args->via.array.size);
    const msgpack_object *a = &args->via.array.ptr[0];
    if (a->type != MSGPACK_OBJECT_STR)
        return tq_task_fail(task, "text.wordcount: argument must be a string");
    const char *s = a->via.str.ptr;
    uint32_t len = a->via.str.size;
    s_counts_t c = {0, 0, 0, false};
    bool counted = false;
    if (len > 0 && len < PATH_MAX && !memchr(s, '\0', len)) {
        char path[PATH_MAX];
        memcpy(path, s, len);
        path[len] = '\0';
        int err = 0;
        counted = s_count_file(path, &c, &err);
        if (counted && err)
            return tq_task_fail(task, "text.wordcount: read error on %s", path);
    }
    if (!counted)
        s_count(&c, s, len);
    msgpack_pack_map(out, 3);
    s_pack_key(out, "lines", c.lines);
    s_pack_key(out, "words", c.words);
    s_pack_key(out, "bytes", c.bytes);
    return 0;
}

/* ---- test tasks: misbehaviour on purpose, for tests/test_reliability ---- */

/* Reads args[0] as an unsigned integer, def when absent. */
static bool
s_arg_uint(const msgpack_object *args, uint64_t def, uint64_t *out)
{
    if (args->via.array.size == 0) {
        *out = def;
        return true;
    }
    const msgpack_object *a = &args->via.array.ptr[0];
    if (a->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = a->via.u64;
    return true;
}

/* test.alloc MB -> MB: allocates MB MiB and touches every page, so the
   child's peak RSS grows by that much (for --max-memory-per-child). */
static int
s_test_alloc(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    uint64_t mb;
    if (!s_arg_uint(args, 1, &mb) || mb > 4096)
        return tq_task_fail(task, "test.alloc wants MB, 0..4096");
    size_t size = (size_t)mb << 20;
    char *p = malloc(size ? size : 1);
    if (!p)
        return tq_task_fail(task, "test.alloc: out of memory");
    for (size_t i = 0; i < size; i += 4096)
        p[i] = (char)i;
    free(p);
    return msgpack_pack_uint64(out, mb);
}

/* test.soft [SECONDS] -> "warned": waits (at most SECONDS, default 30)
   until the worker's soft time limit is signalled; fails if it never is. */
static int
s_test_soft(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    uint64_t secs;
    if (!s_arg_uint(args, 30, &secs) || secs > 3600)
        return tq_task_fail(task, "test.soft wants seconds, 0..3600");
    for (uint64_t ms = 0; ms < secs * 1000; ms += 10) {
        if (tq_task_soft_limit(task))
            return msgpack_pack_str_with_body(out, "warned", 6);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return tq_task_fail(task, "test.soft: no soft limit in %llu s",
                        (unsigned long long)secs);
}

/* test.flaky N -> the attempt number: fails while the attempt is <= N. */
static int
s_test_flaky(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    uint64_t n;
    if (!s_arg_uint(args, 1, &n))
        return tq_task_fail(task, "test.flaky wants N");
    uint32_t attempt = tq_task_attempt(task);
    if (attempt <= n)
        return tq_task_fail(task, "test.flaky: attempt %u fails", attempt);
    return msgpack_pack_uint32(out, attempt);
}

/* test.crash: kills its own process with SIGSEGV, every time. */
static int
s_test_crash(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    (void)args;
    (void)out;
    raise(SIGSEGV);
    return tq_task_fail(task, "test.crash survived SIGSEGV");
}

/* test.first ARG... -> ARG: its first argument alone (a large one goes
   back sharing the argument frame's buffer, worker/tq_value.h). */
static int
s_test_first(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size == 0)
        return tq_task_fail(task, "test.first wants an argument");
    return msgpack_pack_object(out, args->via.array.ptr[0]);
}

/* test.die_once ARG... -> [ARG...]: on its first attempt kills its own
   process (SIGKILL: the child dies mid-task), then echoes its arguments
   as tq.echo does. */
static int
s_test_die_once(tq_task_t *task, const msgpack_object *args,
                msgpack_packer *out)
{
    if (tq_task_attempt(task) <= 1)
        raise(SIGKILL);
    return msgpack_pack_object(out, *args);
}

/* The module's entry point, found by tq-worker with dlsym. */
int tq_module_init(tq_registry_t *registry);

int
tq_module_init(tq_registry_t *registry)
{
    int rc = tq_registry_add(registry, "math.add", s_add, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "math.primes", s_primes, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "text.wordcount", s_wordcount, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "test.alloc", s_test_alloc, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "test.soft", s_test_soft, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "test.flaky", s_test_flaky, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "test.crash", s_test_crash, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "test.first", s_test_first, NULL);
    if (rc == TQ_OK)
        rc = tq_registry_add(registry, "test.die_once", s_test_die_once, NULL);
    return rc;
}
