/* test_client_io.c - pieces of the client's I/O thread (tq_client_io.h)
   that a broker cannot show: the hash of its table of requests by id
   reads every byte of an id and its length, and spreads the ids a client
   makes (a 64-bit prefix and a counter, 32 hex digits) over the slots
   that its low bits pick; the memo of SUBMIT headers gives the codec's
   header of the SUBMIT asked for, never a stale one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "tq_client_io.h"
#include "tq_proto.h"

/* Every byte counts: ids that differ in one byte, anywhere, or only in
   their length hash apart. */
static void
test_hash_reads_every_byte(void **state)
{
    (void)state;
    char id[TQ_PROTO_MAX_ID + 1];
    memset(id, 'a', sizeof id);
    for (size_t len = 1; len <= TQ_PROTO_MAX_ID; len++) {
        uint64_t h = tq_io_hash(id, len);
        /* a prefix is another id */
        assert_int_not_equal(h, tq_io_hash(id, len - 1));
        for (size_t i = 0; i < len; i++) {
            id[i] = 'b';
            assert_int_not_equal(h, tq_io_hash(id, len));
            id[i] = 'a';
        }
        /* the same bytes, the same hash */
        assert_int_equal(h, tq_io_hash(id, len));
    }
}

/* The ids a client makes, counted up from one prefix, land evenly in the
   slots of a table (its low bits): no slot takes many more than its
   share. */
static void
test_hash_spreads_client_ids(void **state)
{
    (void)state;
    enum { SLOTS = 1024, IDS = 8 * SLOTS };
    static unsigned count[SLOTS];
    memset(count, 0, sizeof count);
    char id[33];
    for (unsigned n = 0; n < IDS; n++) {
        snprintf(id, sizeof id, "%016llx%016llx", 0x3f2a9c0d11e4b567ULL,
                 (unsigned long long)n);
        count[tq_io_hash(id, 32) & (SLOTS - 1)]++;
    }
    unsigned most = 0, empty = 0;
    for (unsigned i = 0; i < SLOTS; i++) {
        most = count[i] > most ? count[i] : most;
        empty += count[i] == 0;
    }
    /* 8 a slot on average: a fair spread keeps the fullest under 24 and
       leaves almost none empty (a hash of the prefix alone would fill
       one) */
    assert_true(most < 24);
    assert_true(empty < 8);
}

/* ---- the SUBMIT header memo ------------------------------------------- */

/* A SUBMIT of task on queue under the id made of n, in m (cleared). */
static void
s_submit(tq_msg_t *m, char *id, unsigned long long n, const char *task,
         const char *queue, uint32_t priority)
{
    memset(m, 0, sizeof *m);
    snprintf(id, 33, "%016llx%016llx", 0x3f2a9c0d11e4b567ULL, n);
    m->command = TQ_CMD_SUBMIT;
    m->id = tq_str(id);
    m->task = tq_str(task);
    m->queue = tq_str(queue);
    m->priority = priority;
    m->features = TQ_FEATURE_FOLD | TQ_FEATURE_BATCH;
}

/* What the memo gives is the codec's header of the SUBMIT asked for,
   byte for byte, m untouched: never the header of the one before (a
   stale id, task, queue or option). */
static bool
s_memo_check(tq_io_memo_t *memo, tq_msg_t *m, msgpack_sbuffer *want)
{
    const char *id = m->id.ptr;
    const void *data;
    size_t size;
    bool hit = tq_io_memo_header(memo, m, &data, &size);
    assert_ptr_equal(m->id.ptr, id);
    if (hit) {
        assert_int_equal(tq_proto_encode(m, want, NULL), TQ_OK);
        assert_int_equal(size, want->size);
        assert_memory_equal(data, want->data, size);
    }
    return hit;
}

static void
test_memo_never_stale(void **state)
{
    (void)state;
    static tq_msg_t m;
    char id[33];
    tq_io_memo_t memo;
    tq_io_memo_init(&memo);
    msgpack_sbuffer want;
    msgpack_sbuffer_init(&want);
    /* the first of a shape is the caller's to encode; the next are the
       memo's, each with its own id */
    s_submit(&m, id, 1, "tq.echo", "default", 0);
    assert_false(s_memo_check(&memo, &m, &want));
    for (unsigned long long n = 2; n < 50; n++) {
        s_submit(&m, id, n, "tq.echo", "default", 0);
        assert_true(s_memo_check(&memo, &m, &want));
    }
    /* another task, queue or option: the caller's again, then the memo's
       of that shape */
    const char *tasks[] = {"tq.noop", "tq.echo", "tq.echo", "tq.echo"};
    const char *queues[] = {"default", "other", "default", "default"};
    uint32_t priorities[] = {0, 0, 7, 0};
    for (int i = 0; i < 4; i++) {
        s_submit(&m, id, 100 + i, tasks[i], queues[i], priorities[i]);
        if (i == 3)
            m.retries = 2;
        assert_false(s_memo_check(&memo, &m, &want));
        s_submit(&m, id, 200 + i, tasks[i], queues[i], priorities[i]);
        if (i == 3)
            m.retries = 2;
        assert_true(s_memo_check(&memo, &m, &want));
    }
    /* an id of another length is another shape */
    s_submit(&m, id, 300, "tq.echo", "default", 0);
    m.id = tq_str("short-id");
    assert_false(s_memo_check(&memo, &m, &want));
    m.id = tq_str("other-id");
    assert_true(s_memo_check(&memo, &m, &want));
    /* a shape the codec refuses is never the memo's */
    for (unsigned long long n = 0; n < 3; n++) {
        s_submit(&m, id, 400 + n, "bad name", "default", 0);
        assert_false(s_memo_check(&memo, &m, &want));
    }
    msgpack_sbuffer_destroy(&want);
    tq_io_memo_destroy(&memo);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_reads_every_byte),
        cmocka_unit_test(test_hash_spreads_client_ids),
        cmocka_unit_test(test_memo_never_stale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
