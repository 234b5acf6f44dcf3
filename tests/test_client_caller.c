/* test_client_caller.c - what a caller's submission costs is kept small
   without changing what it does: the memo of the last valid names
   (tq_name_memo_check), small arguments packed on the stack
   (tq_vpack_small), and a request kept in one allocation with its handle
   and names, which must outlive the handle the caller let go of and come
   back whole in tq_result_resubmit; ids written as before. Against a fake
   broker in this process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tq_client_core.h"
#include "tq_client_internal.h"
#include "tq_fake_broker.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_request.h"

#define S_WAIT_MS 15000 /* bound on anything that must happen */

/* ---- the name memo ------------------------------------------------------ */

/* A name is known valid only while it equals the memo's: a changed name,
   even one sharing the memo's prefix or its buffer, is checked again. */
static void
test_name_memo(void **state)
{
    (void)state;
    tq_name_memo_t memo = {0};
    assert_int_equal(tq_name_memo_check(&memo, ""), 0);
    assert_int_equal(tq_name_memo_check(&memo, "tq.echo"), 7);
    assert_int_equal(tq_name_memo_check(&memo, "tq.echo"), 7);
    assert_string_equal(memo.name, "tq.echo");
    /* longer, shorter, then invalid: never the memo's answer */
    assert_int_equal(tq_name_memo_check(&memo, "tq.echo2"), 8);
    assert_int_equal(tq_name_memo_check(&memo, "tq.ech"), 6);
    assert_int_equal(tq_name_memo_check(&memo, "tq.ech o"), 0);
    assert_int_equal(tq_name_memo_check(&memo, ""), 0);
    /* an invalid name does not replace the last valid one */
    assert_string_equal(memo.name, "tq.ech");
    assert_int_equal(tq_name_memo_check(&memo, "tq.ech"), 6);
    /* the same buffer, changed in place */
    char buf[] = "tq.abc";
    assert_int_equal(tq_name_memo_check(&memo, buf), 6);
    buf[4] = ' ';
    assert_int_equal(tq_name_memo_check(&memo, buf), 0);
    buf[4] = 'x';
    assert_int_equal(tq_name_memo_check(&memo, buf), 6);
    assert_string_equal(memo.name, "tq.axc");
    /* the longest valid name, and one byte more */
    char name[TQ_PROTO_MAX_NAME + 2];
    memset(name, 'a', sizeof name - 1);
    name[sizeof name - 1] = 0;
    assert_int_equal(tq_name_memo_check(&memo, name), 0);
    name[TQ_PROTO_MAX_NAME] = 0;
    assert_int_equal(tq_name_memo_check(&memo, name), TQ_PROTO_MAX_NAME);
    assert_int_equal(tq_name_memo_check(&memo, name), TQ_PROTO_MAX_NAME);
    name[TQ_PROTO_MAX_NAME] = 'a';
    assert_int_equal(tq_name_memo_check(&memo, name), 0);
}

/* ---- small arguments ---------------------------------------------------- */

static int
s_vpack_small(tq_buf_t *buf, void *small, size_t size, const char *picture, ...)
{
    va_list ap;
    va_start(ap, picture);
    int rc = tq_vpack_small(buf, small, size, picture, ap);
    va_end(ap);
    return rc;
}

/* Arguments that fit go into the caller's buffer, others into one of
   malloc; the bytes are tq_pack's either way, and a bad picture packs
   nothing. */
static void
test_vpack_small(void **state)
{
    (void)state;
    char small[32];
    tq_buf_t buf, ref;
    assert_int_equal(s_vpack_small(&buf, small, sizeof small, ""), TQ_OK);
    assert_ptr_equal(buf.data, small);
    assert_int_equal(buf.size, 1);
    assert_int_equal((uint8_t)small[0], 0x90);

    assert_int_equal(
        s_vpack_small(&buf, small, sizeof small, "isb", (int64_t)-5, "hi", 1),
        TQ_OK);
    assert_ptr_equal(buf.data, small);
    assert_int_equal(tq_pack(&ref, "isb", (int64_t)-5, "hi", 1), TQ_OK);
    assert_int_equal(buf.size, ref.size);
    assert_memory_equal(buf.data, ref.data, ref.size);
    tq_buf_free(&ref);

    char text[100];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = 0;
    assert_int_equal(
        s_vpack_small(&buf, small, sizeof small, "is", (int64_t)1, text),
        TQ_OK);
    assert_ptr_not_equal(buf.data, small);
    assert_int_equal(tq_pack(&ref, "is", (int64_t)1, text), TQ_OK);
    assert_int_equal(buf.size, ref.size);
    assert_memory_equal(buf.data, ref.data, ref.size);
    tq_buf_free(&ref);
    tq_buf_free(&buf);

    assert_int_equal(s_vpack_small(&buf, small, sizeof small, "i?", 1, 2),
                     TQ_EINVAL);
    assert_null(buf.data);
    assert_int_equal(buf.size, 0);
}

/* ---- submissions through a fake broker ---------------------------------- */

static int
s_setup(void **state)
{
    tq_harness_init();
    *state = tq_fake_broker_new();
    return 0;
}

static int
s_teardown(void **state)
{
    tq_fake_broker_t *fake = *state;
    tq_fake_broker_destroy(&fake);
    return 0;
}

static tq_client_t *
s_client(tq_fake_broker_t *fake, int liveness_ms)
{
    tq_client_t *client = tq_client_new(fake->endpoint);
    assert_non_null(client);
    tq_client_set_liveness(client, liveness_ms);
    return client;
}

/* True if the fake broker's last message names task and queue. */
static bool
s_names_are(tq_fake_broker_t *fake, const char *task, const char *queue)
{
    return fake->msg.task.len == strlen(task) &&
        !memcmp(fake->msg.task.ptr, task, strlen(task)) &&
        fake->msg.queue.len == strlen(queue) &&
        !memcmp(fake->msg.queue.ptr, queue, strlen(queue));
}

/* Each submission carries its own names, checked each time they change:
   the memo never passes a bad name after a good one, never sends the
   names of the submission before. */
static void
test_submit_names(void **state)
{
    tq_fake_broker_t *fake = *state;
    tq_client_t *client = s_client(fake, 60000);
    const char *text = NULL;
    tq_options_t o = TQ_OPTIONS_INIT;

    /* the id: the client's prefix and its counter, each 16 hex digits */
    atomic_store(&client->id_counter, 0x0123456789abcdefULL);
    tq_result_t *a = tq_apply_async(client, "tq.echo", NULL, "");
    assert_non_null(a);
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%016" PRIx64 "%016" PRIx64, client->id_prefix,
             (uint64_t)0x0123456789abcdefULL);
    assert_string_equal(tq_result_id(a), id);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    assert_string_equal(fake->id, id);
    assert_true(s_names_are(fake, "tq.echo", TQ_DEFAULT_QUEUE));

    char task[] = "tq.echo";
    task[2] = ' ';
    assert_null(tq_apply_async(client, task, NULL, ""));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "invalid task name"));

    o.queue = "q1";
    task[2] = '_';
    tq_result_t *b = tq_apply_async(client, task, &o, "");
    assert_non_null(b);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    assert_true(s_names_are(fake, "tq_echo", "q1"));

    o.queue = "q 1";
    assert_null(tq_apply_async(client, "tq.echo", &o, ""));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "invalid queue name"));
    o.queue = "";
    assert_null(tq_apply_async(client, "tq.echo", &o, ""));
    assert_non_null(strstr(text, "invalid queue name"));

    o.queue = "q2";
    tq_result_t *c = tq_apply_async(client, "tq.echo", &o, "");
    assert_non_null(c);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    assert_true(s_names_are(fake, "tq.echo", "q2"));
    assert_int_equal(tq_client_moves(client, TQ_REQ_NEW, TQ_REQ_QUEUED) +
                         tq_client_moves(client, TQ_REQ_NEW, TQ_REQ_FAILED),
                     3);
    tq_result_destroy(&a);
    tq_result_destroy(&b);
    tq_result_destroy(&c);
    tq_client_destroy(&client);
}

/* A raw element ('m') is checked alone; nested in the arguments' array
   one level deeper, the whole must still be within TQ_PROTO_MAX_DEPTH. */
static void
test_raw_element_depth(void **state)
{
    tq_fake_broker_t *fake = *state;
    tq_client_t *client = s_client(fake, 60000);
    uint8_t deep[TQ_PROTO_MAX_DEPTH];
    memset(deep, 0x91, sizeof deep); /* arrays of one array... */
    deep[sizeof deep - 1] = 0x90; /* ... down to an empty one */
    const char *text = NULL;
    assert_null(
        tq_apply_async(client, "tq.echo", NULL, "m", deep, sizeof deep));
    assert_int_equal(tq_client_last_error(&text), TQ_EINVAL);
    assert_non_null(strstr(text, "invalid arguments"));
    tq_result_t *r =
        tq_apply_async(client, "tq.echo", NULL, "m", deep + 1, sizeof deep - 1);
    assert_non_null(r);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    assert_int_equal(zmq_msg_size(&fake->frames.payload), sizeof deep);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
}

/* The caller lets go of its handle before the request is even sent: the
   request (in the handle's allocation) still goes out whole, is answered,
   and its end frees it all (valgrind/ASan would see otherwise). */
static void
test_handle_let_go_first(void **state)
{
    tq_fake_broker_t *fake = *state;
    tq_client_t *client = s_client(fake, 60000);
    tq_options_t o = TQ_OPTIONS_INIT;
    o.queue = "q.gone";
    for (int i = 0; i < 3; i++) {
        tq_result_t *r =
            tq_apply_async(client, "tq.gone", &o, "is", (int64_t)i, "x");
        assert_non_null(r);
        char id[TQ_PROTO_MAX_ID + 1];
        snprintf(id, sizeof id, "%s", tq_result_id(r));
        tq_result_destroy(&r);
        assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
        assert_string_equal(fake->id, id);
        assert_true(s_names_are(fake, "tq.gone", "q.gone"));
        tq_buf_t args;
        assert_int_equal(tq_pack(&args, "is", (int64_t)i, "x"), TQ_OK);
        assert_int_equal(zmq_msg_size(&fake->frames.payload), args.size);
        assert_memory_equal(zmq_msg_data(&fake->frames.payload), args.data,
                            args.size);
        tq_buf_free(&args);
        if (i > 0) /* the first stays unanswered until the client ends */
            tq_fake_broker_ack(fake, id);
        if (i > 1)
            tq_fake_broker_result(fake, id, TQ_STATE_SUCCESS, TQ_OK, NULL, 1);
    }
    /* a fence: answered after all the above was handled */
    tq_result_t *f = tq_client_fetch(client, "fence", true);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_GET, S_WAIT_MS));
    tq_fake_broker_result(fake, "fence", TQ_STATE_SUCCESS, TQ_OK, NULL, 0);
    assert_int_equal(tq_result_get(f, S_WAIT_MS), TQ_OK);
    tq_result_destroy(&f);
    assert_int_equal(tq_client_moves(client, TQ_REQ_ACKED, TQ_REQ_DONE), 1);
    tq_client_destroy(&client);
}

/* A SUBMIT that ended TQ_EUNREACHABLE is made again by
   tq_result_resubmit with the same id, task, queue, options and
   arguments, after the first handle is gone, and asks for its result once
   acknowledged (the broker may have known the id). */
static void
test_resubmit_whole(void **state)
{
    tq_fake_broker_t *fake = *state;
    tq_client_t *client = s_client(fake, 1000);
    tq_options_t o = TQ_OPTIONS_INIT;
    o.queue = "q.again";
    o.priority = 3;
    o.time_limit_ms = 700;
    o.retries = 2;
    o.retry_backoff_ms = 40;
    o.countdown_ms = 5;
    tq_result_t *r = tq_apply_async(client, "tq.again", &o, "s", "payload");
    assert_non_null(r);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    char id[TQ_PROTO_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", fake->id);
    tq_fake_broker_close(fake);
    assert_int_equal(tq_result_get(r, S_WAIT_MS), TQ_EUNREACHABLE);
    assert_int_equal(tq_fake_broker_bind(fake, S_WAIT_MS), 0);

    tq_client_set_liveness(client, 60000);
    tq_result_t *again = tq_result_resubmit(r, NULL, NULL, NULL);
    assert_non_null(again);
    tq_result_destroy(&r);
    assert_string_equal(tq_result_id(again), id);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_SUBMIT, S_WAIT_MS));
    assert_string_equal(fake->id, id);
    assert_true(s_names_are(fake, "tq.again", "q.again"));
    assert_int_equal(fake->msg.priority, 3);
    assert_int_equal(fake->msg.time_limit_ms, 700);
    assert_int_equal(fake->msg.retries, 2);
    assert_int_equal(fake->msg.backoff_ms, 40);
    assert_int_equal(fake->msg.delay_ms, 5);
    tq_buf_t args;
    assert_int_equal(tq_pack(&args, "s", "payload"), TQ_OK);
    assert_int_equal(zmq_msg_size(&fake->frames.payload), args.size);
    assert_memory_equal(zmq_msg_data(&fake->frames.payload), args.data,
                        args.size);
    tq_buf_free(&args);
    tq_fake_broker_ack(fake, id);
    assert_true(tq_fake_broker_expect(fake, TQ_CMD_GET, S_WAIT_MS));
    assert_string_equal(fake->id, id);
    tq_fake_broker_result(fake, id, TQ_STATE_SUCCESS, TQ_OK, NULL, 1);
    assert_int_equal(tq_result_get(again, S_WAIT_MS), TQ_OK);
    /* acknowledged: nothing left to make again */
    assert_null(tq_result_resubmit(again, NULL, NULL, NULL));
    tq_result_destroy(&again);
    tq_client_destroy(&client);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_memo),
        cmocka_unit_test(test_vpack_small),
        cmocka_unit_test_setup_teardown(test_submit_names, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_raw_element_depth, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_handle_let_go_first, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_resubmit_whole, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
