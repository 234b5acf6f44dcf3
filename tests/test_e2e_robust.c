/* test_e2e_robust.c - end to end, the hard cases: garbage on both broker
   endpoints, a worker host drained by SIGTERM, a child killed mid-task and
   rerun, a poison task that ends "worker lost", a hard time limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_wire.h"

#define S_GET_MS 20000 /* bound on any get() expected to end */


/* A raw DEALER on endpoint; receives time out after 3 s. */
static void *
s_dealer(void *ctx, const char *endpoint)
{
    void *socket = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(socket);
    int timeout = 3000, linger = 0;
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(socket, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(socket, endpoint), 0);
    return socket;
}

/* Sends frames (count of them) as one multipart message. */
static void
s_send_frames(void *socket, const void *const data[], const size_t sizes[],
              int count)
{
    for (int i = 0; i < count; i++) {
        int flags = i + 1 < count ? ZMQ_SNDMORE : 0;
        assert_int_equal(zmq_send(socket, data[i], sizes[i], flags),
                         (int)sizes[i]);
    }
}

/* Receives the broker's answer; it must be ERROR. Returns its code and
   copies its id (if any) into id. */
static int
s_expect_error(void *socket, const char *what, char *id, size_t id_size)
{
    tq_frames_t frames;
    tq_frames_init(&frames);
    int rc = tq_wire_recv(socket, &frames, false, 0);
    if (rc != TQ_OK)
        fail_msg("%s: no answer from the broker in 3 s (rc %d, %s)", what, rc,
                 zmq_strerror(zmq_errno()));
    tq_msg_t msg;
    const char *reason = NULL;
    rc = tq_wire_decode(&frames, &msg, &reason);
    if (rc != TQ_OK)
        fail_msg("%s: broker's answer does not decode: %s", what, reason);
    if (msg.command != TQ_CMD_ERROR)
        fail_msg("%s: broker answered %s, not ERROR", what,
                 tq_proto_command_name(msg.command));
    char text[256];
    tq_str_copy(text, sizeof text, msg.error);
    printf("%s -> ERROR %u (%s) \"%s\"\n", what, msg.code,
           tq_strerror((int)msg.code), text);
    if (id)
        tq_str_copy(id, id_size, msg.id);
    int code = (int)msg.code;
    tq_frames_close(&frames);
    return code;
}

/* Encodes msg's header into a malloc'd buffer. */
static void *
s_encode(const tq_msg_t *msg, size_t *size)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    const char *reason = NULL;
    assert_int_equal(tq_proto_encode(msg, &buf, &reason), TQ_OK);
    void *data = malloc(buf.size);
    assert_non_null(data);
    memcpy(data, buf.data, buf.size);
    *size = buf.size;
    msgpack_sbuffer_destroy(&buf);
    return data;
}

/* Sends the garbage every endpoint must refuse with ERROR; returns how many
   of them were undecodable (counted as malformed). */
static int
s_send_garbage(void *socket, const char *endpoint_name)
{
    char what[128];
    /* 0xc1 is never valid msgpack */
    static const char random_bytes[] = "\xc1\xc1\x07garbage\xff\x00\x93";
    const void *d1[] = {random_bytes};
    size_t s1[] = {sizeof random_bytes - 1};
    s_send_frames(socket, d1, s1, 1);
    snprintf(what, sizeof what, "%s: random bytes", endpoint_name);
    assert_int_equal(s_expect_error(socket, what, NULL, 0), TQ_EPROTO);

    const void *d2[] = {""};
    size_t s2[] = {0};
    s_send_frames(socket, d2, s2, 1);
    snprintf(what, sizeof what, "%s: empty frame", endpoint_name);
    assert_int_equal(s_expect_error(socket, what, NULL, 0), TQ_EPROTO);

    tq_msg_t ping = {.command = TQ_CMD_PING};
    size_t ping_size = 0;
    void *ping_data = s_encode(&ping, &ping_size);
    const void *d3[] = {ping_data, "x", "y"};
    size_t s3[] = {ping_size, 1, 1};
    s_send_frames(socket, d3, s3, 3);
    snprintf(what, sizeof what, "%s: 3 frames", endpoint_name);
    assert_int_equal(s_expect_error(socket, what, NULL, 0), TQ_EPROTO);

    /* a well-formed PING header claiming version 2 */
    unsigned char *bytes = ping_data;
    assert_int_equal(bytes[1], TQ_PROTO_VERSION);
    bytes[1] = 2;
    const void *d4[] = {ping_data};
    size_t s4[] = {ping_size};
    s_send_frames(socket, d4, s4, 1);
    snprintf(what, sizeof what, "%s: version 2", endpoint_name);
    assert_int_equal(s_expect_error(socket, what, NULL, 0), TQ_EVERSION);
    free(ping_data);
    return 3;
}

/* Garbage on both endpoints: ERROR answers, counters up, broker alive and
   still serving. */
static void
test_garbage(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    assert_true(tq_harness_env_add_worker(env, 1, NULL, true) > 0);
    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, 5000), TQ_OK);
    uint64_t malformed0 = tq_harness_counter(&status, "malformed");
    uint64_t errors0 = tq_harness_counter(&status, "errors");
    tq_harness_status_free(&status);
    assert_true(malformed0 != UINT64_MAX);
    assert_true(errors0 != UINT64_MAX);

    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    void *client = s_dealer(ctx, env->broker.clients);
    void *worker = s_dealer(ctx, env->broker.workers);
    int undecodable = s_send_garbage(client, "clients");
    undecodable += s_send_garbage(worker, "workers");

    /* SUBMIT whose arguments are a truncated array: ERROR with the id */
    static const char id[] = "badargs0123456789abcdef012345678";
    tq_msg_t submit = {.command = TQ_CMD_SUBMIT};
    submit.id = tq_str(id);
    submit.task = tq_str("tq.echo");
    submit.queue = tq_str(TQ_DEFAULT_QUEUE);
    size_t size = 0;
    void *header = s_encode(&submit, &size);
    const void *d[] = {header, "\x93\x01"};
    size_t s[] = {size, 2};
    s_send_frames(client, d, s, 2);
    char got_id[80] = "";
    assert_int_equal(s_expect_error(client, "clients: SUBMIT bad args", got_id,
                                    sizeof got_id),
                     TQ_EPROTO);
    assert_string_equal(got_id, id);
    free(header);
    /* ... and arguments that are not an array */
    header = s_encode(&submit, &size);
    const void *d5[] = {header, "\x01"};
    size_t s5[] = {size, 1};
    s_send_frames(client, d5, s5, 2);
    assert_int_equal(
        s_expect_error(client, "clients: SUBMIT args not array", NULL, 0),
        TQ_EPROTO);
    free(header);

    /* DONE from a peer that never sent READY */
    tq_msg_t done = {.command = TQ_CMD_DONE};
    done.id = tq_str(id);
    done.attempt = 1;
    done.state = TQ_STATE_SUCCESS;
    done.code = TQ_OK;
    header = s_encode(&done, &size);
    const void *d6[] = {header, "\xc0"};
    size_t s6[] = {size, 1};
    s_send_frames(worker, d6, s6, 2);
    int code = s_expect_error(worker, "workers: DONE before READY", NULL, 0);
    assert_true(code == TQ_EPROTO || code == TQ_ESTATE);
    free(header);

    zmq_close(client);
    zmq_close(worker);
    zmq_ctx_term(ctx);

    /* alive, and serving */
    assert_int_equal(tq_harness_wait_exit(env->broker.pid, 0, NULL), -1);
    assert_int_equal(kill(env->broker.pid, 0), 0);
    tq_result_t *r =
        tq_apply_async(env->client, "tq.echo", NULL, "s", "still here");
    assert_non_null(r);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    tq_result_destroy(&r);

    assert_int_equal(tq_harness_status(env->client, &status, 5000), TQ_OK);
    uint64_t malformed1 = tq_harness_counter(&status, "malformed");
    uint64_t errors1 = tq_harness_counter(&status, "errors");
    tq_harness_status_free(&status);
    printf("malformed %llu -> %llu, errors %llu -> %llu\n",
           (unsigned long long)malformed0, (unsigned long long)malformed1,
           (unsigned long long)errors0, (unsigned long long)errors1);
    assert_true(malformed1 >= malformed0 + (uint64_t)undecodable);
    assert_true(errors1 > errors0);
}

/* Status of the single child of `ppid` running a task, pid != skip pids;
   returns its pid or 0 when none within timeout_ms. */
static pid_t
s_wait_running_child(tq_client_t *client, pid_t ppid, const pid_t *skip,
                     size_t skip_count, int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (tq_harness_now_ms() < deadline) {
        tq_harness_status_t status;
        pid_t found = 0;
        if (tq_harness_status(client, &status, 2000) == TQ_OK) {
            uint32_t count = 0;
            const msgpack_object *workers = tq_harness_workers(&status, &count);
            for (uint32_t i = 0; i < count && !found; i++) {
                const msgpack_object *w = &workers->via.array.ptr[i];
                pid_t pid = (pid_t)tq_harness_map_uint(w, "pid", 0);
                bool skipped = false;
                for (size_t k = 0; k < skip_count; k++)
                    skipped = skipped || skip[k] == pid;
                if (!skipped && pid > 0 &&
                    tq_harness_map_uint(w, "ppid", 0) == (uint64_t)ppid &&
                    tq_harness_map_uint(w, "running", 0) == 1)
                    found = pid;
            }
            tq_harness_status_free(&status);
        }
        if (found)
            return found;
        tq_harness_sleep_ms(20);
    }
    return 0;
}

/* Waits until pid's main thread is inside a sleep system call (the
   task's nanosleep, not the poll of an idle child): the broker counts a
   task as running once it sent it, the child may not have read it yet.
   True when seen; true at once where /proc/PID/syscall cannot be read. */
static bool
s_wait_in_sleep(pid_t pid, int timeout_ms)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    for (int64_t until = tq_harness_now_ms() + timeout_ms;
         tq_harness_now_ms() < until; tq_harness_sleep_ms(10)) {
        FILE *f = fopen(path, "r");
        if (!f)
            return true;
        long number = -1;
        int got = fscanf(f, "%ld", &number);
        fclose(f);
        if (got != 1)
            return true;
        if (number == SYS_nanosleep || number == SYS_clock_nanosleep)
            return true;
    }
    return false;
}

/* SIGTERM drains: the running task still succeeds, the host exits 0 and
   none of its children is left. */
static void
test_worker_sigterm(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 1, NULL, true);
    assert_true(worker > 0);
    pid_t children[8];
    size_t n = tq_harness_children(worker, children, 8);
    assert_int_equal(n, 1);

    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)1);
    assert_non_null(r);
    pid_t running = s_wait_running_child(env->client, worker, NULL, 0, 5000);
    assert_int_equal(running, children[0]);
    /* started, not only sent: a drain finishes what the children have
       begun */
    assert_true(s_wait_in_sleep(running, 20000));
    assert_int_equal(kill(worker, SIGTERM), 0);

    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    assert_true(tq_result_successful(r));
    tq_result_destroy(&r);
    int status = 0;
    assert_int_equal(tq_harness_wait_exit(worker, 10000, &status), 0);
    tq_harness_env_stop_worker(env, worker); /* reaped: only forget it */
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* gone for good: not alive, not a zombie re-parented to us (we are a
       subreaper, so an orphan would show up here) */
    pid_t ppid = tq_harness_ppid(children[0]);
    assert_true(ppid == -1 || (ppid != worker && ppid != getpid()));
    pid_t ours[16];
    size_t count = tq_harness_children(getpid(), ours, 16);
    for (size_t i = 0; i < count && i < 16; i++)
        assert_int_equal(ours[i], env->broker.pid);
}

/* A child killed by SIGSEGV mid-task is respawned; the task runs again
   from the start and succeeds. */
static void
test_child_segv_rerun(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 1, NULL, true);
    assert_true(worker > 0);
    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)2);
    assert_non_null(r);
    pid_t child = s_wait_running_child(env->client, worker, NULL, 0, 5000);
    assert_true(child > 0);
    assert_int_equal(tq_harness_ppid(child), worker);
    int64_t killed_at = tq_harness_now_ms();
    assert_int_equal(kill(child, SIGSEGV), 0);

    /* a new child, of the same host, runs the task again */
    pid_t again = s_wait_running_child(env->client, worker, &child, 1, 10000);
    assert_true(again > 0);
    assert_true(again != child);
    assert_int_equal(tq_harness_ppid(again), worker);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_OK);
    int64_t rerun_ms = tq_harness_now_ms() - killed_at;
    printf("rerun finished %lld ms after the kill\n", (long long)rerun_ms);
    assert_true(rerun_ms >= 1900); /* a full second run of 2 s */
    assert_int_equal(tq_result_state(r), TQ_STATE_SUCCESS);
    tq_result_destroy(&r);

    tq_harness_status_t status;
    assert_int_equal(tq_harness_status(env->client, &status, 5000), TQ_OK);
    uint64_t requeued = tq_harness_counter(&status, "requeued");
    uint64_t lost = tq_harness_counter(&status, "lost");
    tq_harness_status_free(&status);
    printf("requeued %llu lost %llu\n", (unsigned long long)requeued,
           (unsigned long long)lost);
    assert_true(requeued >= 1 && requeued != UINT64_MAX);
    assert_false(tq_harness_alive(child));
}

/* A task whose child dies on every attempt ends TQ_ELOST "worker lost"
   after the third. */
static void
test_poison_task(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    pid_t worker = tq_harness_env_add_worker(env, 1, NULL, true);
    assert_true(worker > 0);
    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)5);
    assert_non_null(r);
    pid_t killed[3];
    for (int i = 0; i < 3; i++) {
        pid_t child =
            s_wait_running_child(env->client, worker, killed, (size_t)i, 10000);
        if (child <= 0)
            fail_msg("attempt %d: no child is running the task", i + 1);
        assert_int_equal(tq_harness_ppid(child), worker);
        assert_int_equal(kill(child, SIGKILL), 0);
        killed[i] = child;
    }
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_ELOST);
    printf("poison task: %s\n", tq_result_error(r));
    assert_int_equal(tq_result_state(r), TQ_STATE_FAILURE);
    assert_non_null(strstr(tq_result_error(r), "worker lost"));
    tq_result_destroy(&r);
    /* the host survived and has a fresh child */
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, 10000), 0);
    tq_result_t *ok =
        tq_apply_async(env->client, "tq.echo", NULL, "i", (int64_t)1);
    assert_int_equal(tq_result_get(ok, S_GET_MS), TQ_OK);
    tq_result_destroy(&ok);
}

/* --time-limit 1 kills tq.sleep 5: TQ_ETIMELIMIT, well before 5 s; the
   per-task limit does the same. */
static void
test_time_limit(void **state)
{
    tq_harness_env_t *env = *state;
    assert_int_equal(tq_harness_env_start(env, NULL), 0);
    const char *extra[] = {"--time-limit", "1", NULL};
    pid_t worker = tq_harness_env_add_worker(env, 1, extra, true);
    assert_true(worker > 0);
    int64_t t0 = tq_harness_now_ms();
    tq_result_t *r =
        tq_apply_async(env->client, "tq.sleep", NULL, "i", (int64_t)5);
    assert_non_null(r);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_ETIMELIMIT);
    int64_t took = tq_harness_now_ms() - t0;
    printf("time limit hit after %lld ms: %s\n", (long long)took,
           tq_result_error(r));
    assert_true(took >= 900); /* TQ_ETIMELIMIT: killed, not finished */
    assert_int_equal(tq_result_state(r), TQ_STATE_FAILURE);
    tq_result_destroy(&r);

    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.time_limit_ms = 500;
    t0 = tq_harness_now_ms();
    r = tq_apply_async(env->client, "tq.sleep", &opts, "i", (int64_t)5);
    assert_non_null(r);
    assert_int_equal(tq_result_get(r, S_GET_MS), TQ_ETIMELIMIT);
    took = tq_harness_now_ms() - t0;
    assert_true(took >= 400);
    tq_result_destroy(&r);
    assert_int_equal(tq_harness_wait_workers(env->client, 1, worker, 10000), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_garbage, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_worker_sigterm, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_child_segv_rerun, tq_harness_env_setup,
                                        tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_poison_task, tq_harness_env_setup, tq_harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_time_limit, tq_harness_env_setup, tq_harness_env_teardown),
    };
    tq_harness_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
