/* test_crc32c.c - CRC-32C against published vectors (RFC 3720 B.4 and the
   "123456789" check value), at every alignment and split. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tq_crc32c.h"

static void
test_vectors(void **state)
{
    (void)state;
    uint8_t buf[32];
    assert_int_equal(tq_crc32c(0, "123456789", 9), 0xE3069283);
    assert_int_equal(tq_crc32c(0, NULL, 0), 0);
    memset(buf, 0, sizeof buf);
    assert_int_equal(tq_crc32c(0, buf, 32), 0x8A9136AA);
    memset(buf, 0xff, sizeof buf);
    assert_int_equal(tq_crc32c(0, buf, 32), 0x62A8AB43);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(tq_crc32c(0, buf, 32), 0x46DD794E);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    assert_int_equal(tq_crc32c(0, buf, 32), 0x113FDB5C);
}

/* The eight-byte loop and the byte loop agree: any start address, any
   split into two calls. */
static void
test_alignment_and_split(void **state)
{
    (void)state;
    uint8_t buf[64 + 9];
    const char *text = "123456789";
    for (int offset = 0; offset < 64; offset++) {
        memset(buf, 0xa5, sizeof buf);
        memcpy(buf + offset, text, 9);
        assert_int_equal(tq_crc32c(0, buf + offset, 9), 0xE3069283);
    }
    uint8_t big[1000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    uint32_t whole = tq_crc32c(0, big, sizeof big);
    for (size_t cut = 0; cut <= sizeof big; cut += 37)
        assert_int_equal(
            tq_crc32c(tq_crc32c(0, big, cut), big + cut, sizeof big - cut),
            whole);
    big[500] ^= 0x01; /* one flipped bit changes it */
    assert_int_not_equal(tq_crc32c(0, big, sizeof big), whole);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_alignment_and_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
