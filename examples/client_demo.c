/* client_demo.c - the client API in one program: apply_async with a
   callback, a blocking echo, a map in submission order, a failing task, and
   a get that times out before the task ends. Usage: client_demo [EP]. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tq/tq.h>

#define S_WAIT_MS 10000 /* every wait in this demo is bounded */

static int s_failures = 0;

static void
s_check(bool ok, const char *what)
{
    printf("  %s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok)
        s_failures++;
}

/* Set from the client's I/O thread by the callback, read by main. */
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static double s_callback_sum = -1;

static void
s_on_add(tq_result_t *result, void *arg)
{
    (void)arg;
    const msgpack_object *v = tq_result_value(result);
    pthread_mutex_lock(&s_lock);
    if (v && v->type == MSGPACK_OBJECT_FLOAT64)
        s_callback_sum = v->via.f64;
    pthread_mutex_unlock(&s_lock);
    printf("  callback on the I/O thread: math.add -> ");
    if (v)
        msgpack_object_print(stdout, *v);
    printf("\n");
}

static void
s_on_error(tq_result_t *result, void *arg)
{
    (void)arg;
    printf("  error callback: %s: %s\n", tq_strerror(tq_result_code(result)),
           tq_result_error(result));
}

static int64_t
s_int(const msgpack_object *v)
{
    if (!v)
        return -1;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return (int64_t)v->via.u64;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return v->via.i64;
    return -1;
}

int
main(int argc, char **argv)
{
    /* let Ctrl-C stop the demo: czmq catches SIGINT unless told not to */
    setenv("ZSYS_SIGHANDLER", "false", 0);
    tq_client_t *client = tq_client_new(argc > 1 ? argv[1] : NULL);
    if (!client) {
        fprintf(stderr, "client_demo: cannot create a client\n");
        return 2;
    }

    printf("apply_async math.add(1, 2, 3.5) with a callback\n");
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.callback = s_on_add;
    opts.error_callback = s_on_error;
    tq_result_t *r = tq_apply_async(client, "math.add", &opts, "iid",
                                    (int64_t)1, (int64_t)2, 3.5);
    int rc = r ? tq_result_get(r, S_WAIT_MS) : TQ_EINVAL;
    const msgpack_object *v = rc == TQ_OK ? tq_result_value(r) : NULL;
    s_check(v && v->type == MSGPACK_OBJECT_FLOAT64 && v->via.f64 == 6.5,
            "get() returns 6.5");
    tq_result_destroy(&r);
    /* as in Python's Pool, the callback has returned before get() does */
    pthread_mutex_lock(&s_lock);
    s_check(s_callback_sum == 6.5, "the callback saw 6.5");
    pthread_mutex_unlock(&s_lock);

    printf("apply tq.echo(\"hello\", 42)\n");
    r = tq_apply(client, "tq.echo", NULL, S_WAIT_MS, "si", "hello",
                 (int64_t)42);
    v = r && tq_result_code(r) == TQ_OK ? tq_result_value(r) : NULL;
    if (v) {
        printf("  -> ");
        msgpack_object_print(stdout, *v);
        printf("\n");
    }
    s_check(v && v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size == 2 &&
                s_int(&v->via.array.ptr[1]) == 42,
            "echo returns its arguments");
    tq_result_destroy(&r);

    printf("map math.primes over 5 inputs (results in submission order)\n");
    static const int64_t inputs[5] = {10, 100, 1000, 10000, 100000};
    static const int64_t expected[5] = {4, 25, 168, 1229, 9592};
    tq_buf_t args[5];
    tq_result_t *results[5];
    for (int i = 0; i < 5; i++)
        tq_pack(&args[i], "i", inputs[i]);
    rc = tq_map(client, "math.primes", NULL, args, 5, results, S_WAIT_MS);
    bool all = rc == TQ_OK;
    for (int i = 0; i < 5; i++) {
        int64_t n = results[i] && tq_result_successful(results[i])
                        ? s_int(tq_result_value(results[i]))
                        : -1;
        printf("  primes below %-6lld = %lld\n", (long long)inputs[i],
               (long long)n);
        all = all && n == expected[i];
        tq_result_destroy(&results[i]);
        tq_buf_free(&args[i]);
    }
    s_check(all, "map returned every count, in order");

    printf("apply_async tq.fail(\"disk on fire\")\n");
    r = tq_apply_async(client, "tq.fail", &opts, "s", "disk on fire");
    rc = r ? tq_result_get(r, S_WAIT_MS) : TQ_EINVAL;
    printf("  get() -> %s: %s\n", tq_strerror(rc),
           r ? tq_result_error(r) : "");
    s_check(rc == TQ_ETASK && r && !strcmp(tq_result_error(r), "disk on fire"),
            "the task's failure reaches get() with its message");
    tq_result_destroy(&r);

    printf("apply_async tq.sleep(1) and get() with a 100 ms timeout\n");
    r = tq_apply_async(client, "tq.sleep", NULL, "d", 1.0);
    rc = r ? tq_result_get(r, 100) : TQ_EINVAL;
    printf("  get(100 ms) -> %s, ready() = %d\n", tq_strerror(rc),
           r ? tq_result_ready(r) : 0);
    s_check(rc == TQ_ETIMEDOUT, "the short wait times out, the task goes on");
    rc = r ? tq_result_get(r, S_WAIT_MS) : TQ_EINVAL;
    printf("  get(10 s) -> %s\n", tq_strerror(rc));
    s_check(rc == TQ_OK && tq_result_successful(r), "then get() succeeds");
    tq_result_destroy(&r);

    tq_client_destroy(&client);
    printf(s_failures ? "client_demo: %d check(s) failed\n"
                      : "client_demo: all checks passed\n",
           s_failures);
    return s_failures ? 1 : 0;
}
