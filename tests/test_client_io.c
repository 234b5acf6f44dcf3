/* test_client_io.c - pieces of the client's I/O thread (tq_client_io.h)
   that a broker cannot show: the hash of its table of requests by id
   reads every byte of an id and its length, and spreads the ids a client
   makes (a 64-bit prefix and a counter, 32 hex digits) over the slots
   that its low bits pick. */
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

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_reads_every_byte),
        cmocka_unit_test(test_hash_spreads_client_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
