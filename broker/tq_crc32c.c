/* tq_crc32c.c - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78),
   slice-by-8: eight lookup tables let the loop fold eight bytes per step.
   The tables are built once, on first use. */
#include "tq_crc32c.h"

#include <pthread.h>
#include <string.h>

#define S_POLY 0x82F63B78u

static uint32_t s_table[8][256];
static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void
s_build(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ S_POLY : crc >> 1;
        s_table[0][n] = crc;
    }
    /* table k: the CRC of byte n followed by k zero bytes */
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            s_table[k][n] =
                (s_table[k - 1][n] >> 8) ^ s_table[0][s_table[k - 1][n] & 0xff];
}

uint32_t
tq_crc32c(uint32_t crc, const void *data, size_t size)
{
    pthread_once(&s_once, s_build);
    const uint8_t *p = data;
    crc = ~crc;
    while (size && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ s_table[0][(crc ^ *p++) & 0xff];
        size--;
    }
    while (size >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= crc;
        crc = s_table[7][lo & 0xff] ^ s_table[6][(lo >> 8) & 0xff] ^
            s_table[5][(lo >> 16) & 0xff] ^ s_table[4][lo >> 24] ^
            s_table[3][hi & 0xff] ^ s_table[2][(hi >> 8) & 0xff] ^
            s_table[1][(hi >> 16) & 0xff] ^ s_table[0][hi >> 24];
        p += 8;
        size -= 8;
    }
    while (size--)
        crc = (crc >> 8) ^ s_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}
