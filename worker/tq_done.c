/* tq_done.c - a child's DONE header in one pass (tq_done.h). msgpack's
   smallest forms, as msgpack-c writes them: the same bytes as
   tq_proto_encode. And the rule for DONEs held behind a task. */
#include "tq_done.h"

#include <string.h>

/* Stores v's low `bytes` bytes at p, big-endian; returns the end. */
static uint8_t *
s_be(uint8_t *p, uint64_t v, int bytes)
{
    switch (bytes) {
    case 8:
        *p++ = (uint8_t)(v >> 56);
        *p++ = (uint8_t)(v >> 48);
        *p++ = (uint8_t)(v >> 40);
        *p++ = (uint8_t)(v >> 32);
        /* fall through */
    case 4:
        *p++ = (uint8_t)(v >> 24);
        *p++ = (uint8_t)(v >> 16);
        /* fall through */
    case 2:
        *p++ = (uint8_t)(v >> 8);
        /* fall through */
    default:
        *p++ = (uint8_t)v;
    }
    return p;
}

/* An unsigned integer in its smallest msgpack form (no loop over its
   bytes: rss_kb takes four in every DONE). */
static inline uint8_t *
s_uint(uint8_t *p, uint64_t v)
{
    if (v < 0x80) {
        *p++ = (uint8_t)v;
        return p;
    }
    if (v <= UINT8_MAX) {
        *p++ = 0xcc;
        return s_be(p, v, 1);
    }
    if (v <= UINT16_MAX) {
        *p++ = 0xcd;
        return s_be(p, v, 2);
    }
    if (v <= UINT32_MAX) {
        *p++ = 0xce;
        return s_be(p, v, 4);
    }
    *p++ = 0xcf;
    return s_be(p, v, 8);
}

/* A str of len bytes (len <= UINT16_MAX) in its smallest form. */
static uint8_t *
s_str(uint8_t *p, const char *s, size_t len)
{
    if (len < 32) {
        *p++ = (uint8_t)(0xa0 | len);
    } else if (len <= UINT8_MAX) {
        *p++ = 0xd9;
        *p++ = (uint8_t)len;
    } else {
        *p++ = 0xda;
        *p++ = (uint8_t)(len >> 8);
        *p++ = (uint8_t)len;
    }
    memcpy(p, s, len);
    return p + len;
}

size_t
tq_done_encode(const tq_msg_t *msg, uint8_t buf[TQ_DONE_MAX])
{
    if (msg->command != TQ_CMD_DONE || msg->attempt < 1 ||
        msg->state > TQ_PROTO_MAX_STATE || msg->code >= TQ_ERROR_COUNT_ ||
        msg->error.len > TQ_PROTO_MAX_ERROR)
        return 0;
    bool binary = msg->id_binary && msg->id_bytes;
    if (msg->id_binary && !binary)
        return 0; /* a text id to send as bin: tq_proto_encode parses it */
    if (!binary && !tq_proto_valid_id(msg->id.ptr, msg->id.len))
        return 0;
    uint8_t *p = buf;
    *p++ = 0x98; /* [version, command, id, attempt, state, code, error,
                    rss_kb] */
    *p++ = TQ_PROTO_VERSION;
    *p++ = TQ_CMD_DONE;
    if (binary) {
        *p++ = 0xc4;
        *p++ = TQ_PROTO_ID_BIN;
        memcpy(p, msg->id_bytes, TQ_PROTO_ID_BIN);
        p += TQ_PROTO_ID_BIN;
    } else {
        p = s_str(p, msg->id.ptr, msg->id.len);
    }
    p = s_uint(p, msg->attempt);
    p = s_uint(p, msg->state);
    p = s_uint(p, msg->code);
    if (msg->error.ptr)
        p = s_str(p, msg->error.ptr, msg->error.len);
    else
        *p++ = 0xc0;
    p = s_uint(p, msg->rss_kb);
    return (size_t)(p - buf);
}

bool
tq_done_may_hold(int64_t span_us, uint32_t short_us, uint32_t limit_ms,
                 bool keeper)
{
    if (span_us < 0 || span_us >= (int64_t)short_us)
        return false;
    return !limit_ms || (limit_ms >= TQ_DONE_HOLD_LIMIT_MS && keeper);
}
