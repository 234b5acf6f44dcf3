/* test_client_io.c - pieces of the client's I/O thread (tq_client_io.h)
   that a broker cannot show: the hash of its table of requests by id
   reads every byte of an id and its length, and spreads the ids a client
   makes (a 64-bit prefix and a counter, 32 hex digits) over the slots
   that its low bits pick; the table hashes a client's own ids by their
   counter (in a row) and finds every id of every shape through growth
   and deletion; the memo of SUBMIT headers gives the codec's header of
   the SUBMIT asked for, never a stale one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
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

/* ---- the id table ------------------------------------------------------ */

#define S_OWN "3f2a9c0d11e4b567"

/* The ids a client makes (its prefix, then a counter) hash to twice their
   counter: made one after the other, they take every other slot in a
   row, whatever the table's size, across a wrap of the counter's low 32
   bits too. Another client's prefix, or a table without a prefix of its
   own, hashes them as any other id (tq_io_hash). */
static void
test_table_own_ids_in_a_row(void **state)
{
    (void)state;
    tq_io_table_t t = {0}, none = {0};
    tq_io_table_own(&t, S_OWN);
    const unsigned long long starts[] = {0, 1000, 0xfffffff0ULL,
                                         0xfffffffffffffff0ULL};
    char id[33], other[33];
    for (int s = 0; s < 4; s++) {
        for (unsigned long long n = starts[s]; n != starts[s] + 32; n++) {
            snprintf(id, sizeof id, S_OWN "%016llx", n);
            uint64_t h = tq_io_table_hash(&t, id, 32);
            assert_int_equal(h, 2 * (n & 0xffffffffULL));
            snprintf(id, sizeof id, S_OWN "%016llx", n + 1);
            for (uint64_t cap = 1024; cap <= (1ULL << 31); cap <<= 1)
                assert_int_equal((tq_io_table_hash(&t, id, 32) - h) & (cap - 1),
                                 2);
            assert_int_equal(tq_io_table_hash(&none, id, 32),
                             tq_io_hash(id, 32));
            snprintf(other, sizeof other, "3f2a9c0d11e4b568%016llx", n);
            assert_int_equal(tq_io_table_hash(&t, other, 32),
                             tq_io_hash(other, 32));
        }
    }
    /* uppercase digits count the same; an id one byte longer or shorter
       is another client's shape */
    assert_int_equal(tq_io_table_hash(&t, S_OWN "00000000DEADBEEF", 32),
                     2 * 0xdeadbeefULL);
    assert_int_equal(tq_io_table_hash(&t, S_OWN "00000000deadbeef0", 33),
                     tq_io_hash(S_OWN "00000000deadbeef0", 33));
    assert_int_equal(tq_io_table_hash(&t, S_OWN "00000000deadbee", 31),
                     tq_io_hash(S_OWN "00000000deadbee", 31));
}

/* ids of every shape for the model test: n picks one */
static void
s_id_of(char *id, unsigned n)
{
    switch (n % 8) {
    case 0:
    case 1:
    case 2: /* the client's own, in a row (above those near the wrap) */
        snprintf(id, 65, S_OWN "%016llx", 1000000ULL + n);
        break;
    case 3: /* its own, 2^32 apart: a few on each of 32 slots */
        snprintf(id, 65, S_OWN "%016llx",
                 (unsigned long long)(n / 8 + 1) << 32 | (n / 8 % 32));
        break;
    case 4: /* another client's */
        snprintf(id, 65, "0123456789abcdef%016x", n / 8);
        break;
    case 5: /* the client's prefix, not hex after it */
        snprintf(id, 65, S_OWN "zz-%013u", n / 8);
        break;
    case 6: /* a user's, of any length up to the most */
        snprintf(id, 65, "job-%u-%.*s", n / 8, (int)(n / 8 % 50),
                 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        break;
    default: /* near the counter's wrap */
        snprintf(id, 65, S_OWN "%016llx",
                 0xffffffffffffff00ULL + (unsigned long long)n / 8);
        break;
    }
}

enum { S_IDS = 6000, S_STEPS = 60000 };

/* Each id's chain in t is exactly the model's (in[i]: how many requests
   on id i are in, they are reqs[i][0..in[i]-1] in order). */
static void
s_table_check(tq_io_table_t *t, tq_request_t *(*reqs)[2],
              const unsigned char *in, unsigned upto)
{
    char id[65];
    size_t count = 0;
    for (unsigned i = 0; i < upto; i++) {
        s_id_of(id, i);
        tq_request_t *r = tq_io_table_find(t, id, strlen(id));
        for (unsigned k = 0; k < in[i]; k++) {
            assert_ptr_equal(r, reqs[i][k]);
            r = r->next_same;
        }
        assert_null(r);
        count += in[i] > 0;
    }
    assert_int_equal(t->count, count);
}

/* The table against a model, through growth and deletion without
   tombstones: ids of every shape added (one or two requests on an id),
   removed in any order (the first of a chain or the last), found or not
   found, with and without a prefix of its own. */
static void
test_table_model(void **state)
{
    (void)state;
    static tq_request_t *reqs[S_IDS][2];
    static unsigned char in[S_IDS];
    for (int own = 0; own < 2; own++) {
        tq_io_table_t t = {0};
        if (own)
            tq_io_table_own(&t, S_OWN);
        memset(in, 0, sizeof in);
        for (unsigned i = 0; i < S_IDS; i++)
            for (int k = 0; k < 2; k++) {
                reqs[i][k] = calloc(1, sizeof *reqs[i][k]);
                assert_non_null(reqs[i][k]);
                s_id_of(reqs[i][k]->id, i);
            }
        /* a window of ids in flight that moves up, as a client's does,
           with strays left behind */
        unsigned seed = 12345, low = 0, high = 0;
        for (unsigned step = 0; step < S_STEPS; step++) {
            seed = seed * 1103515245u + 12345u;
            unsigned pick = seed >> 8;
            if (high < S_IDS && (pick % 3 != 0 || low == high)) {
                unsigned i = high++;
                tq_io_table_add(&t, reqs[i][0]);
                in[i] = 1;
                if (pick % 7 == 0) {
                    tq_io_table_add(&t, reqs[i][1]);
                    in[i] = 2;
                }
            } else if (low < high) {
                /* the oldest mostly, now and then any */
                unsigned i = pick % 5 ? low : low + pick % (high - low);
                if (in[i] == 2 && pick % 2) {
                    tq_io_table_remove(&t, reqs[i][1]);
                    in[i] = 1;
                } else if (in[i] == 2) {
                    tq_io_table_remove(&t, reqs[i][0]);
                    free(reqs[i][0]);
                    reqs[i][0] = reqs[i][1];
                    reqs[i][1] = calloc(1, sizeof *reqs[i][1]);
                    assert_non_null(reqs[i][1]);
                    s_id_of(reqs[i][1]->id, i);
                    in[i] = 1;
                } else if (in[i] == 1) {
                    tq_io_table_remove(&t, reqs[i][0]);
                    in[i] = 0;
                }
                while (low < high && !in[low])
                    low++;
            } else {
                break;
            }
            if (step % 997 == 0)
                s_table_check(&t, reqs, in, high);
        }
        s_table_check(&t, reqs, in, S_IDS);
        /* everything out: the table is empty, nothing is found */
        for (unsigned i = 0; i < S_IDS; i++) {
            while (in[i])
                tq_io_table_remove(&t, reqs[i][--in[i]]);
        }
        s_table_check(&t, reqs, in, S_IDS);
        assert_true(t.cap >= 1024);
        for (unsigned i = 0; i < S_IDS; i++)
            for (int k = 0; k < 2; k++)
                free(reqs[i][k]);
        free(t.slots);
    }
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
        cmocka_unit_test(test_table_own_ids_in_a_row),
        cmocka_unit_test(test_table_model),
        cmocka_unit_test(test_memo_never_stale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
