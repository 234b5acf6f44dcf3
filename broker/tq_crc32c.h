/* tq_crc32c.h - CRC-32C (Castagnoli), the checksum of every payload the
   store writes. */
#ifndef TQ_CRC32C_H
#define TQ_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Returns the CRC-32C of size bytes at data, continuing from crc (0 to
   start): tq_crc32c(tq_crc32c(0, a, n), b, m) is the CRC of a then b.
   data may be NULL when size is 0. */
uint32_t tq_crc32c(uint32_t crc, const void *data, size_t size);

#endif
