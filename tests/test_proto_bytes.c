/* test_proto_bytes.c - the codec's own byte writer and its fast paths:
   every command encodes to the very bytes msgpack-c's packer makes for
   the same fields (a reference encoder below, built on msgpack_pack_*),
   at the boundaries of every msgpack form; BATCH entries likewise; and
   the decoder's fast paths hold at their edges (fixint/uint8/16/32,
   fixstr/str8, bin8 ids, truncated input, wrong types), as do the tables
   behind them (command plans, character classes, hex ids). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq_batch.h"
#include "tq_proto.h"
#include "tq_writer.h"

/* ---- the reference: msgpack-c's packer ------------------------------- */

static void
s_ref_str(msgpack_packer *pk, tq_str_t s)
{
    msgpack_pack_str(pk, s.len);
    msgpack_pack_str_body(pk, s.ptr, s.len);
}

/* The bytes PROTOCOL.md gives msg, made with msgpack-c (msg valid). */
static void
s_ref_encode(const tq_msg_t *m, msgpack_sbuffer *buf)
{
    const tq_proto_command_t *cmd = tq_proto_command(m->command);
    assert_non_null(cmd);
    msgpack_sbuffer_clear(buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    size_t n = strlen(cmd->fields) - (strchr(cmd->fields, '|') ? 1 : 0);
    msgpack_pack_array(&pk, 2 + n);
    msgpack_pack_uint8(&pk, TQ_PROTO_VERSION);
    msgpack_pack_uint8(&pk, m->command);
    for (const char *f = cmd->fields; *f; f++) {
        uint8_t bin[TQ_PROTO_ID_BIN];
        switch (*f) {
        case '|':
            break;
        case 'i':
        case 'I':
            if (*f == 'i' && !m->id.ptr && !(m->id_binary && m->id_bytes))
                msgpack_pack_nil(&pk);
            else if (m->id_binary && m->id_bytes) {
                msgpack_pack_bin(&pk, TQ_PROTO_ID_BIN);
                msgpack_pack_bin_body(&pk, m->id_bytes, TQ_PROTO_ID_BIN);
            } else if (m->id_binary &&
                       tq_proto_id_parse(m->id.ptr, m->id.len, bin)) {
                msgpack_pack_bin(&pk, TQ_PROTO_ID_BIN);
                msgpack_pack_bin_body(&pk, bin, TQ_PROTO_ID_BIN);
            } else
                s_ref_str(&pk, m->id);
            break;
        case 'T':
            s_ref_str(&pk, m->task);
            break;
        case 'u':
            if (!m->queue.ptr) {
                msgpack_pack_nil(&pk);
                break;
            }
            /* fall through */
        case 'Q':
            s_ref_str(&pk, m->queue);
            break;
        case 'H':
            s_ref_str(&pk, m->host);
            break;
        case 'E':
            if (m->error.ptr)
                s_ref_str(&pk, m->error);
            else
                msgpack_pack_nil(&pk);
            break;
        case 'W':
            if (m->wait)
                msgpack_pack_true(&pk);
            else
                msgpack_pack_false(&pk);
            break;
        case 'N':
        case 'M': {
            const tq_str_t *names = *f == 'N' ? m->queues : m->tasks;
            uint32_t count = *f == 'N' ? m->queue_count : m->task_count;
            msgpack_pack_array(&pk, count);
            for (uint32_t i = 0; i < count; i++)
                s_ref_str(&pk, names[i]);
            break;
        }
        case 'P':
            msgpack_pack_uint32(&pk, m->priority);
            break;
        case 'L':
            msgpack_pack_uint32(&pk, m->time_limit_ms);
            break;
        case 'A':
            msgpack_pack_uint32(&pk, m->attempt);
            break;
        case 'a':
            msgpack_pack_uint32(&pk, m->attempt);
            break;
        case 'S':
            msgpack_pack_uint32(&pk, m->state);
            break;
        case 'C':
            msgpack_pack_uint32(&pk, m->code);
            break;
        case 'c':
            msgpack_pack_uint32(&pk, m->credit);
            break;
        case 'p':
            msgpack_pack_uint64(&pk, m->pid);
            break;
        case 'q':
            msgpack_pack_uint64(&pk, m->ppid);
            break;
        case 'r':
            msgpack_pack_uint32(&pk, m->retries);
            break;
        case 'b':
            msgpack_pack_uint32(&pk, m->backoff_ms);
            break;
        case 'd':
            msgpack_pack_uint32(&pk, m->delay_ms);
            break;
        case 'K':
            msgpack_pack_uint64(&pk, m->rss_kb);
            break;
        case 'n':
            msgpack_pack_uint32(&pk, m->maxsize);
            break;
        case 'f':
            msgpack_pack_uint32(&pk, m->features);
            break;
        case 's':
            msgpack_pack_uint64(&pk, m->session);
            break;
        case 'x':
            msgpack_pack_uint64(&pk, m->dropped);
            break;
        case 'v':
            msgpack_pack_uint32(&pk, m->states);
            break;
        case 'y':
            msgpack_pack_uint32(&pk, m->limit);
            break;
        case 'k':
            msgpack_pack_uint32(&pk, m->count);
            break;
        default:
            fail_msg("field code %c has no reference", *f);
        }
    }
}

/* ---- messages at the boundaries -------------------------------------- */

/* Values at every edge of msgpack's unsigned forms. */
static const uint64_t s_edges[] = {
    0,          1,          9,          15,         16,         31,    127,
    128,        255,        256,        1000,       65535,      65536, 100000,
    2147483647, 2147483648, 4294967295, 4294967296, UINT64_MAX,
};
#define S_NEDGES (sizeof s_edges / sizeof s_edges[0])

static uint64_t
s_clamp(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* A string of len bytes of c, NUL-terminated, in a static slot. */
static tq_str_t
s_run(int slot, char c, size_t len)
{
    static char slots[8][TQ_PROTO_MAX_ERROR + 1];
    memset(slots[slot], c, len);
    slots[slot][len] = '\0';
    tq_str_t s = {slots[slot], (uint32_t)len};
    return s;
}

/* Every field of m set from edge e (clamped into its range), strings of
   length len (clamped into theirs). */
static void
s_edge_fill(tq_msg_t *m, uint8_t command, size_t e, size_t len)
{
    static const char hex[] = "0123456789abcdef0123456789abcdef";
    memset(m, 0, sizeof *m);
    m->command = command;
    uint64_t v = s_edges[e % S_NEDGES];
    m->priority = (uint32_t)s_clamp(v, 0, 9);
    m->time_limit_ms = (uint32_t)s_clamp(v, 0, UINT32_MAX);
    m->attempt = (uint32_t)s_clamp(v, 1, UINT32_MAX);
    m->state = (uint32_t)s_clamp(v, 0, TQ_PROTO_MAX_STATE);
    m->code = (uint32_t)s_clamp(v, 0, TQ_ERROR_COUNT_ - 1);
    m->credit = (uint32_t)s_clamp(v, 1, 65535);
    m->pid = s_clamp(v, 1, INT32_MAX);
    m->ppid = s_clamp(v + 1, 1, INT32_MAX);
    m->wait = e % 2;
    m->retries = (uint32_t)s_clamp(v, 0, TQ_PROTO_MAX_RETRIES);
    m->backoff_ms = (uint32_t)s_clamp(v, 0, UINT32_MAX);
    m->delay_ms = (uint32_t)s_clamp(v / 2, 0, UINT32_MAX);
    m->rss_kb = v;
    m->maxsize = (uint32_t)s_clamp(v, 0, UINT32_MAX);
    m->features = (uint32_t)s_clamp(v, 0, UINT32_MAX);
    m->session = v;
    m->dropped = v / 3;
    m->states = (uint32_t)s_clamp(v, 0, TQ_STATES_ALL);
    m->limit = (uint32_t)s_clamp(v, 1, TQ_PROTO_MAX_LIMIT);
    m->count = (uint32_t)s_clamp(v, 1, TQ_BATCH_MAX);
    size_t name = s_clamp(len, 1, TQ_PROTO_MAX_NAME);
    m->task = s_run(0, 't', name);
    m->queue = s_run(1, 'q', name);
    m->host = s_run(2, 'h', name);
    m->error = e % 3 == 0 ? tq_str(NULL)
                          : s_run(3, 'e', s_clamp(len, 0, TQ_PROTO_MAX_ERROR));
    /* ids: text of len chars, 32 hex digits (sent as bin when asked),
       or the caller's bytes */
    switch (e % 4) {
    case 0:
        m->id = s_run(4, 'x', s_clamp(len, 1, TQ_PROTO_MAX_ID));
        break;
    case 1:
        m->id = tq_str(hex);
        m->id_binary = true;
        break;
    case 2:
        m->id = tq_str(hex);
        break;
    default:
        m->id_binary = true;
        m->id_bytes = (const uint8_t *)"0123456789abcdef";
    }
    m->queue_count = (uint32_t)(len % 4);
    for (uint32_t i = 0; i < m->queue_count; i++)
        m->queues[i] = s_run(5, 'Q', name);
    m->task_count = (uint32_t)((len + 1) % 3);
    for (uint32_t i = 0; i < m->task_count; i++)
        m->tasks[i] = s_run(6, 'T', name);
}

static void
s_assert_same_bytes(const msgpack_sbuffer *a, const msgpack_sbuffer *b,
                    const char *what, size_t e, size_t len)
{
    if (a->size != b->size || memcmp(a->data, b->data, a->size) != 0)
        fail_msg("%s: bytes differ from msgpack-c's (edge %zu, len %zu, "
                 "%zu vs %zu bytes)",
                 what, e, len, a->size, b->size);
}

static const size_t s_lengths[] = {1,  7,  15, 16,  31,  32,  33,
                                   63, 64, 65, 255, 256, 4096};
#define S_NLENGTHS (sizeof s_lengths / sizeof s_lengths[0])

/* Every command, every edge of every field, every length form of every
   string: tq_proto_encode's bytes are msgpack-c's. */
static void
test_encode_bytes_are_msgpack_c(void **state)
{
    (void)state;
    msgpack_sbuffer ours, ref;
    msgpack_sbuffer_init(&ours);
    msgpack_sbuffer_init(&ref);
    static tq_msg_t m;
    size_t ncommands, compared = 0;
    const tq_proto_command_t *cmds = tq_proto_commands(&ncommands);
    for (size_t c = 0; c < ncommands; c++)
        for (size_t e = 0; e < S_NEDGES; e++)
            for (size_t l = 0; l < S_NLENGTHS; l++) {
                s_edge_fill(&m, cmds[c].command, e, s_lengths[l]);
                const char *why = NULL;
                assert_int_equal(tq_proto_encode(&m, &ours, &why), TQ_OK);
                s_ref_encode(&m, &ref);
                s_assert_same_bytes(&ours, &ref, cmds[c].name, e, s_lengths[l]);
                /* and it reads back */
                static tq_msg_t back;
                assert_int_equal(
                    tq_proto_decode(&back, ours.data, ours.size, &why), TQ_OK);
                assert_int_equal(back.command, m.command);
                compared++;
            }
    assert_true(ncommands >= 32);
    assert_int_equal(compared, ncommands * S_NEDGES * S_NLENGTHS);
    msgpack_sbuffer_destroy(&ours);
    msgpack_sbuffer_destroy(&ref);
}

/* A READY larger than the buffer's first allocation (8 KiB): the writer
   grows it as msgpack-c's does, bytes unchanged; and a buffer that held
   a larger message is reused. */
static void
test_encode_grows_buffer(void **state)
{
    (void)state;
    msgpack_sbuffer ours, ref;
    msgpack_sbuffer_init(&ours);
    msgpack_sbuffer_init(&ref);
    static tq_msg_t m;
    s_edge_fill(&m, TQ_CMD_READY, 5, 255);
    static char names[TQ_PROTO_MAX_NAMES][TQ_PROTO_MAX_NAME + 1];
    m.queue_count = m.task_count = TQ_PROTO_MAX_NAMES;
    for (int i = 0; i < TQ_PROTO_MAX_NAMES; i++) {
        memset(names[i], 'a' + i % 26, TQ_PROTO_MAX_NAME);
        m.queues[i] = m.tasks[i] = tq_str(names[i]);
    }
    assert_int_equal(tq_proto_encode(&m, &ours, NULL), TQ_OK);
    assert_true(ours.size > 2 * TQ_PROTO_MAX_NAMES * TQ_PROTO_MAX_NAME);
    s_ref_encode(&m, &ref);
    s_assert_same_bytes(&ours, &ref, "READY", 5, 255);
    /* a small message into the grown buffer: cleared first */
    s_edge_fill(&m, TQ_CMD_TASK, 1, 7);
    assert_int_equal(tq_proto_encode(&m, &ours, NULL), TQ_OK);
    s_ref_encode(&m, &ref);
    s_assert_same_bytes(&ours, &ref, "TASK", 1, 7);
    msgpack_sbuffer_destroy(&ours);
    msgpack_sbuffer_destroy(&ref);
}

/* The writer's forms one by one, at their boundaries, against msgpack-c
   (appending: several values into one buffer, its growth included). */
static void
test_writer_forms(void **state)
{
    (void)state;
    static const uint64_t lens[] = {0,   1,   15,    16,    31,      32,
                                    255, 256, 65535, 65536, 1u << 20};
    msgpack_sbuffer ours, ref;
    msgpack_sbuffer_init(&ours);
    msgpack_sbuffer_init(&ref);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ref, msgpack_sbuffer_write);
    tq_writer_t w;
    for (size_t i = 0; i < S_NEDGES; i++) {
        tq_writer_start(&w, &ours);
        assert_true(tq_writer_room(&w, 9));
        tq_writer_uint(&w, s_edges[i]);
        assert_true(tq_writer_finish(&w));
        msgpack_pack_uint64(&pk, s_edges[i]);
        if (s_edges[i] <= UINT32_MAX) {
            tq_writer_start(&w, &ours);
            assert_true(tq_writer_room(&w, 9));
            tq_writer_uint(&w, s_edges[i]);
            assert_true(tq_writer_finish(&w));
            msgpack_pack_uint32(&pk, (uint32_t)s_edges[i]);
        }
    }
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint32_t n = (uint32_t)lens[i];
        tq_writer_start(&w, &ours);
        assert_true(tq_writer_room(&w, 15));
        tq_writer_str_head(&w, n);
        tq_writer_bin_head(&w, n);
        tq_writer_array_head(&w, n);
        assert_true(tq_writer_finish(&w));
        msgpack_pack_str(&pk, n);
        msgpack_pack_bin(&pk, n);
        msgpack_pack_array(&pk, n);
    }
    assert_int_equal(ours.size, ref.size);
    assert_memory_equal(ours.data, ref.data, ref.size);
    msgpack_sbuffer_destroy(&ours);
    msgpack_sbuffer_destroy(&ref);
    /* a buffer with nothing allocated yet: no room until reserved, and
       nothing written leaves it so */
    msgpack_sbuffer fresh;
    msgpack_sbuffer_init(&fresh);
    tq_writer_start(&w, &fresh);
    assert_true(tq_writer_finish(&w));
    assert_null(fresh.data);
    assert_int_equal(fresh.size, 0);
    tq_writer_start(&w, &fresh);
    assert_true(tq_writer_room(&w, 1));
    tq_writer_byte(&w, 0xc0);
    assert_true(tq_writer_finish(&w));
    assert_int_equal(fresh.size, 1);
    assert_int_equal(fresh.alloc, MSGPACK_SBUFFER_INIT_SIZE);
    msgpack_sbuffer_destroy(&fresh);
}

/* A BATCH entry's bytes: the header as a bin, the payload as a bin (at
   each bin length form) or nil, as msgpack-c packs them. */
static void
test_batch_bytes_are_msgpack_c(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 255, 256, 4096, 65535, 65536};
    static uint8_t payload[65536];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7);
    tq_batch_t b;
    tq_batch_init(&b);
    msgpack_sbuffer ref, header;
    msgpack_sbuffer_init(&ref);
    msgpack_sbuffer_init(&header);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ref, msgpack_sbuffer_write);
    static tq_msg_t m;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        /* a DONE (payload) then a STATE (none) */
        s_edge_fill(&m, TQ_CMD_DONE, i, 16 * i + 1);
        assert_int_equal(tq_batch_add(&b, &m, payload, sizes[i], true), TQ_OK);
        assert_int_equal(tq_proto_encode(&m, &header, NULL), TQ_OK);
        msgpack_pack_bin(&pk, header.size);
        msgpack_pack_bin_body(&pk, header.data, header.size);
        msgpack_pack_bin(&pk, sizes[i]);
        msgpack_pack_bin_body(&pk, payload, sizes[i]);
        s_edge_fill(&m, TQ_CMD_STATE, i, 3);
        assert_int_equal(tq_batch_add(&b, &m, NULL, 0, false), TQ_OK);
        assert_int_equal(tq_proto_encode(&m, &header, NULL), TQ_OK);
        msgpack_pack_bin(&pk, header.size);
        msgpack_pack_bin_body(&pk, header.data, header.size);
        msgpack_pack_nil(&pk);
    }
    assert_int_equal(tq_batch_bytes(&b), ref.size);
    assert_memory_equal(b.body.data, ref.data, ref.size);
    /* a refused entry leaves the batch as it was */
    m.state = TQ_PROTO_MAX_STATE + 1;
    assert_int_equal(tq_batch_add(&b, &m, NULL, 0, false), TQ_EINVAL);
    assert_int_equal(tq_batch_bytes(&b), ref.size);
    assert_memory_equal(b.body.data, ref.data, ref.size);
    tq_batch_destroy(&b);
    msgpack_sbuffer_destroy(&ref);
    msgpack_sbuffer_destroy(&header);
}

/* ---- decoding at the edges -------------------------------------------- */

/* A header made of raw bytes. */
typedef struct {
    uint8_t bytes[1024];
    size_t size;
} s_raw_t;

static void
s_put(s_raw_t *r, const void *data, size_t n)
{
    assert_true(r->size + n <= sizeof r->bytes);
    memcpy(r->bytes + r->size, data, n);
    r->size += n;
}

static void
s_byte(s_raw_t *r, uint8_t b)
{
    s_put(r, &b, 1);
}

/* The copy the last s_decode_exact decoded (its strings point into it). */
static void *s_copy;

static void
s_release(void)
{
    free(s_copy);
    s_copy = NULL;
}

/* Decodes a copy of data in memory of exactly its size: a read past the
   end is one ASan and valgrind report. The copy lives until the next call
   or s_release. */
static int
s_decode_exact(tq_msg_t *m, const void *data, size_t n, const char **why)
{
    s_release();
    s_copy = malloc(n ? n : 1);
    assert_non_null(s_copy);
    memcpy(s_copy, data, n);
    return tq_proto_decode(m, s_copy, n, why);
}

/* [1, TASK, id, task, attempt, limit] with the attempt's bytes given. */
static void
s_task_with_attempt(s_raw_t *r, const uint8_t *attempt, size_t n)
{
    r->size = 0;
    s_byte(r, 0x96);
    s_byte(r, 0x01);
    s_byte(r, TQ_CMD_TASK);
    s_byte(r, 0xa2);
    s_put(r, "t1", 2);
    s_byte(r, 0xa7);
    s_put(r, "tq.echo", 7);
    s_put(r, attempt, n);
    s_byte(r, 0x00);
}

/* Every unsigned form at its edges, minimal or not, reads its value;
   other types where an integer belongs are refused. */
static void
test_decode_uint_forms(void **state)
{
    (void)state;
    static const struct {
        uint8_t bytes[9];
        size_t n;
        uint64_t value;
    } forms[] = {
        {{0x01}, 1, 1},
        {{0x7f}, 1, 127},
        {{0xcc, 0x80}, 2, 128},
        {{0xcc, 0xff}, 2, 255},
        {{0xcc, 0x05}, 2, 5}, /* not the shortest: still 5 */
        {{0xcd, 0x01, 0x00}, 3, 256},
        {{0xcd, 0xff, 0xff}, 3, 65535},
        {{0xcd, 0x00, 0x07}, 3, 7},
        {{0xce, 0x00, 0x01, 0x00, 0x00}, 5, 65536},
        {{0xce, 0xff, 0xff, 0xff, 0xff}, 5, 4294967295u},
        {{0xcf, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, 9, 4294967295u},
        {{0xcf, 0, 0, 0, 0, 0, 0, 0, 0x02}, 9, 2},
    };
    s_raw_t r;
    static tq_msg_t m;
    const char *why;
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        s_task_with_attempt(&r, forms[i].bytes, forms[i].n);
        why = NULL;
        assert_int_equal(s_decode_exact(&m, r.bytes, r.size, &why), TQ_OK);
        assert_int_equal(m.attempt, forms[i].value);
        assert_int_equal(m.command, TQ_CMD_TASK);
        assert_true(tq_str_eq(m.task, "tq.echo"));
    }
    /* beyond uint32 for a 32-bit field, 0 for attempt (min 1) */
    static const struct {
        uint8_t bytes[9];
        size_t n;
        const char *reason;
    } bad[] = {
        {{0xcf, 0, 0, 0, 0x01, 0, 0, 0, 0}, 9, "attempt must be 1 or more"},
        {{0x00}, 1, "attempt must be 1 or more"},
        {{0xff}, 1, "expected an unsigned integer"}, /* -1 */
        {{0xd0, 0x05}, 2, "expected an unsigned integer"}, /* int8 */
        {{0xa1, '1'}, 2, "expected an unsigned integer"}, /* str */
        {{0xc0}, 1, "expected an unsigned integer"}, /* nil */
        {{0xc3}, 1, "expected an unsigned integer"}, /* true */
        {{0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0},
         9,
         "expected an unsigned integer"}, /* float 1.0 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_task_with_attempt(&r, bad[i].bytes, bad[i].n);
        why = NULL;
        assert_int_equal(s_decode_exact(&m, r.bytes, r.size, &why), TQ_EPROTO);
        assert_string_equal(why, bad[i].reason);
    }
    /* a range at its edges: priority 9 is read, 10 refused */
    static tq_msg_t s;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    s_edge_fill(&s, TQ_CMD_SUBMIT, 2, 7);
    s.priority = 9;
    assert_int_equal(tq_proto_encode(&s, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&m, buf.data, buf.size, NULL), TQ_OK);
    assert_int_equal(m.priority, 9);
    s.priority = 10;
    why = NULL;
    assert_int_equal(tq_proto_encode(&s, &buf, &why), TQ_EINVAL);
    assert_string_equal(why, "priority out of range");
    msgpack_sbuffer_destroy(&buf);
    s_release();
}

/* The head [version, command, ...] in its common form (a fixarray and
   two fixints, read at once) and in every other: the same outcomes. */
static void
test_decode_head_forms(void **state)
{
    (void)state;
    static const struct {
        uint8_t bytes[8];
        size_t n;
        int rc;
        const char *reason; /* NULL: TQ_OK */
    } heads[] = {
        {{0x92, 0x01, TQ_CMD_PING}, 3, TQ_OK, NULL},
        {{0x92, 0xcc, 0x01, TQ_CMD_PING}, 4, TQ_OK, NULL},
        {{0x92, 0x01, 0xcc, TQ_CMD_PING}, 4, TQ_OK, NULL},
        {{0xdc, 0x00, 0x02, 0x01, TQ_CMD_PING}, 5, TQ_OK, NULL},
        {{0x93, 0x01, TQ_CMD_PONG, 0x05}, 4, TQ_OK, NULL},
        {{0x92, 0x02, TQ_CMD_PING},
         3,
         TQ_EVERSION,
         "unsupported protocol version"},
        {{0x92, 0xcc, 0x02, TQ_CMD_PING},
         4,
         TQ_EVERSION,
         "unsupported protocol version"},
        {{0x91, 0x01, TQ_CMD_PING},
         3,
         TQ_EPROTO,
         "header is not [version, command, ...]"},
        {{0x90, 0x01, TQ_CMD_PING},
         3,
         TQ_EPROTO,
         "header is not [version, command, ...]"},
        {{0x93, 0x01, TQ_CMD_PING},
         3,
         TQ_EPROTO,
         "array longer than its frame"},
        {{0x92, 0xff, TQ_CMD_PING},
         3,
         TQ_EPROTO,
         "expected an unsigned integer"},
        {{0x92, 0x01, 0xff}, 3, TQ_EPROTO, "expected an unsigned integer"},
        {{0x92, 0x01, 0x7f}, 3, TQ_EPROTO, "unknown command"},
        {{0x92, 0x01, 0xcc, 0x80}, 4, TQ_EPROTO, "unknown command"},
        {{0x92, 0x01}, 2, TQ_EPROTO, "array longer than its frame"},
        {{0x92, 0x01, 0xcd, 0x00}, 4, TQ_EPROTO, "truncated"},
        {{0x93, 0x01, TQ_CMD_PING, 0xc1},
         4,
         TQ_EPROTO,
         "invalid msgpack type byte"},
        {{0x92, 0x01, TQ_CMD_PING, 0x00},
         4,
         TQ_EPROTO,
         "trailing bytes after the header"},
    };
    static tq_msg_t m;
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        const char *why = NULL;
        int rc = s_decode_exact(&m, heads[i].bytes, heads[i].n, &why);
        if (rc != heads[i].rc)
            fail_msg("head %zu: %d, not %d (%s)", i, rc, heads[i].rc,
                     why ? why : "");
        if (heads[i].reason)
            assert_string_equal(why, heads[i].reason);
        else
            assert_true(m.command == TQ_CMD_PING || m.command == TQ_CMD_PONG);
    }
    s_release();
}

/* [1, SUBMITTED, <id bytes>]. */
static int
s_decode_id(tq_msg_t *m, const uint8_t *id, size_t n, const char **why)
{
    s_raw_t r = {{0x93, 0x01, TQ_CMD_SUBMITTED}, 3};
    s_put(&r, id, n);
    return s_decode_exact(m, r.bytes, r.size, why);
}

/* Names and ids at the fixstr/str8 edge (31/32), at their limits, in a
   longer form than needed, and refused past them. */
static void
test_decode_str_forms(void **state)
{
    (void)state;
    static tq_msg_t m;
    const char *why;
    uint8_t id[80];
    for (size_t len = 1; len <= TQ_PROTO_MAX_ID + 1; len++) {
        /* fixstr up to 31, str8 from 32 */
        size_t h = 0;
        if (len < 32)
            id[h++] = (uint8_t)(0xa0 | len);
        else {
            id[h++] = 0xd9;
            id[h++] = (uint8_t)len;
        }
        memset(id + h, 'Z', len);
        why = NULL;
        int rc = s_decode_id(&m, id, h + len, &why);
        if (len <= TQ_PROTO_MAX_ID) {
            assert_int_equal(rc, TQ_OK);
            assert_int_equal(m.id.len, len);
            assert_false(m.id_binary);
        } else {
            assert_int_equal(rc, TQ_EPROTO);
            assert_string_equal(why, "invalid task id");
        }
    }
    /* 32 hex digits in str16: a str id like any */
    uint8_t s16[35] = {0xda, 0x00, 0x20};
    memcpy(s16 + 3, "0123456789abcdef0123456789abcdef", 32);
    assert_int_equal(s_decode_id(&m, s16, sizeof s16, NULL), TQ_OK);
    assert_true(tq_str_eq(m.id, "0123456789abcdef0123456789abcdef"));
    assert_false(m.id_binary);
    assert_null(m.id_bytes);
    /* the string runs past the frame: truncated */
    uint8_t cut[] = {0xa5, 'a', 'b'};
    why = NULL;
    assert_int_equal(s_decode_id(&m, cut, sizeof cut, &why), TQ_EPROTO);
    assert_string_equal(why, "truncated");
    /* not a string, not a bin */
    uint8_t num[] = {0x05};
    why = NULL;
    assert_int_equal(s_decode_id(&m, num, sizeof num, &why), TQ_EPROTO);
    assert_string_equal(why, "expected a string");
    /* task names: 255 in str8 taken, 256 in str16 refused */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t t;
    s_edge_fill(&t, TQ_CMD_TASK, 2, 255);
    assert_int_equal(tq_proto_encode(&t, &buf, NULL), TQ_OK);
    assert_int_equal(tq_proto_decode(&m, buf.data, buf.size, NULL), TQ_OK);
    assert_int_equal(m.task.len, 255);
    msgpack_sbuffer_clear(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 6);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, TQ_CMD_TASK);
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "t1", 2);
    tq_str_t long_name = s_run(0, 'n', 256);
    msgpack_pack_str(&pk, long_name.len);
    msgpack_pack_str_body(&pk, long_name.ptr, long_name.len);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_uint8(&pk, 0);
    why = NULL;
    assert_int_equal(tq_proto_decode(&m, buf.data, buf.size, &why), TQ_EPROTO);
    assert_string_equal(why, "invalid task name");
    msgpack_sbuffer_destroy(&buf);
    s_release();
}

/* A bin id: exactly 16 bytes in any bin form; 15 or 17 refused; cut
   short: truncated. Its text is the bytes' hex digits, every byte value
   at every position. */
static void
test_decode_bin_ids(void **state)
{
    (void)state;
    static tq_msg_t m;
    const char *why;
    uint8_t id[32];
    for (int len = 14; len <= 18; len++) {
        id[0] = 0xc4;
        id[1] = (uint8_t)len;
        memset(id + 2, 0xab, (size_t)len);
        why = NULL;
        int rc = s_decode_id(&m, id, 2 + (size_t)len, &why);
        if (len == TQ_PROTO_ID_BIN) {
            assert_int_equal(rc, TQ_OK);
            assert_true(m.id_binary);
            assert_true(tq_str_eq(m.id, "abababababababababababababababab"));
        } else {
            assert_int_equal(rc, TQ_EPROTO);
            assert_string_equal(why, "a binary task id must be 16 bytes");
        }
    }
    /* bin16 and bin32 holding 16 bytes */
    uint8_t b16[19] = {0xc5, 0x00, 0x10};
    uint8_t b32[21] = {0xc6, 0x00, 0x00, 0x00, 0x10};
    memset(b16 + 3, 0x01, 16);
    memset(b32 + 5, 0xfe, 16);
    assert_int_equal(s_decode_id(&m, b16, sizeof b16, NULL), TQ_OK);
    assert_true(tq_str_eq(m.id, "01010101010101010101010101010101"));
    assert_int_equal(s_decode_id(&m, b32, sizeof b32, NULL), TQ_OK);
    assert_true(tq_str_eq(m.id, "fefefefefefefefefefefefefefefefe"));
    /* cut anywhere inside: truncated, never read past the frame */
    uint8_t whole[18] = {0xc4, 0x10};
    for (size_t n = 0; n < sizeof whole; n++) {
        why = NULL;
        assert_int_equal(s_decode_id(&m, whole, n, &why), TQ_EPROTO);
        assert_non_null(why);
    }
    /* every byte value at every position renders as two hex digits */
    for (int v = 0; v < 256; v++)
        for (int pos = 0; pos < TQ_PROTO_ID_BIN; pos++) {
            id[0] = 0xc4;
            id[1] = TQ_PROTO_ID_BIN;
            for (int i = 0; i < TQ_PROTO_ID_BIN; i++)
                id[2 + i] = (uint8_t)(i == pos ? v : 0x5a + i);
            assert_int_equal(s_decode_id(&m, id, 18, NULL), TQ_OK);
            char expect[33];
            for (int i = 0; i < TQ_PROTO_ID_BIN; i++)
                snprintf(expect + 2 * i, 3, "%02x", id[2 + i]);
            assert_int_equal(m.id.len, 32);
            assert_memory_equal(m.id.ptr, expect, 32);
            assert_int_equal(m.id.ptr[32], '\0');
            assert_memory_equal(m.id_bytes, id + 2, TQ_PROTO_ID_BIN);
        }
    s_release();
}

/* Every prefix of the per-task messages is refused, none read past its
   end (each cut copied to a buffer of its exact size, for ASan and
   valgrind to see). */
static void
test_decode_every_cut(void **state)
{
    (void)state;
    static const uint8_t commands[] = {TQ_CMD_SUBMIT, TQ_CMD_TASK, TQ_CMD_DONE,
                                       TQ_CMD_RESULT, TQ_CMD_READY};
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    static tq_msg_t in, out;
    for (size_t c = 0; c < sizeof commands; c++)
        for (size_t e = 0; e < 4; e++) {
            s_edge_fill(&in, commands[c], e + 7, 40);
            assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
            for (size_t n = 1; n < buf.size; n++) {
                const char *why = NULL;
                assert_int_not_equal(s_decode_exact(&out, buf.data, n, &why),
                                     TQ_OK);
                assert_non_null(why);
            }
            assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                             TQ_OK);
        }
    msgpack_sbuffer_destroy(&buf);
    s_release();
}

/* ---- the tables -------------------------------------------------------- */

/* Every command byte: the model's entry or none, has_payload and the
   name from it; a byte that is no command decodes as unknown. */
static void
test_command_table(void **state)
{
    (void)state;
    size_t count;
    const tq_proto_command_t *all = tq_proto_commands(&count);
    for (int c = 0; c < 256; c++) {
        const tq_proto_command_t *want = NULL;
        for (size_t i = 0; i < count; i++)
            if (all[i].command == c)
                want = &all[i];
        assert_ptr_equal(tq_proto_command((uint8_t)c), want);
        assert_int_equal(tq_proto_has_payload((uint8_t)c),
                         want && want->payload);
        assert_string_equal(tq_proto_command_name((uint8_t)c),
                            want ? want->name : "?");
        if (!want) {
            uint8_t raw[] = {0x92, 0x01, 0xcc, (uint8_t)c};
            static tq_msg_t m;
            const char *why = NULL;
            assert_int_equal(tq_proto_decode(&m, raw, sizeof raw, &why),
                             TQ_EPROTO);
            assert_string_equal(why, "unknown command");
            tq_msg_t e;
            memset(&e, 0, offsetof(tq_msg_t, queues));
            e.command = (uint8_t)c;
            why = NULL;
            msgpack_sbuffer buf;
            msgpack_sbuffer_init(&buf);
            assert_int_equal(tq_proto_encode(&e, &buf, &why), TQ_EINVAL);
            assert_string_equal(why, "unknown command");
            msgpack_sbuffer_destroy(&buf);
        }
    }
}

static bool
s_alnum(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
        (c >= 'A' && c <= 'Z');
}

/* Every byte value, alone and inside a longer string, at every place:
   the id and name rules of PROTOCOL.md, nothing more or less. */
static void
test_character_classes(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        bool id_ok = s_alnum(c) || (c && strchr("_.-", c));
        bool name_ok = s_alnum(c) || (c && strchr("_.:@/-", c));
        char one = (char)c;
        assert_int_equal(tq_proto_valid_id(&one, 1), id_ok);
        assert_int_equal(tq_proto_valid_name(&one, 1), name_ok);
        char s[TQ_PROTO_MAX_NAME];
        for (size_t len = 1; len <= 40; len += 13)
            for (size_t pos = 0; pos < len; pos++) {
                memset(s, 'k', len);
                s[pos] = (char)c;
                assert_int_equal(tq_proto_valid_id(s, len), id_ok);
                assert_int_equal(tq_proto_valid_name(s, len), name_ok);
            }
    }
    assert_false(tq_proto_valid_id(NULL, 1));
    assert_false(tq_proto_valid_id("a", 0));
    assert_false(tq_proto_valid_name("a", 0));
}

/* A 32-digit id with one byte changed, every value at every place:
   parsed (bin form) only when that byte is a lowercase hex digit, valid
   as a str id when it is in the id rule (upper case too). */
static void
test_hex_id_every_byte(void **state)
{
    (void)state;
    char id[33];
    for (int pos = 0; pos < 32; pos++)
        for (int c = 0; c < 256; c++) {
            memcpy(id, "0123456789abcdeffedcba9876543210", 33);
            id[pos] = (char)c;
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
            bool idc = s_alnum(c) || (c && strchr("_.-", c));
            uint8_t bin[TQ_PROTO_ID_BIN];
            assert_int_equal(tq_proto_id_parse(id, 32, bin), hex);
            assert_int_equal(tq_proto_valid_id(id, 32), idc);
            if (hex) {
                char back[33];
                for (int i = 0; i < TQ_PROTO_ID_BIN; i++)
                    snprintf(back + 2 * i, 3, "%02x", bin[i]);
                assert_memory_equal(back, id, 32);
            }
        }
}

/* A one-byte payload (no arguments, a None result) is taken without a
   walk: exactly the one-byte msgpack objects, every byte value tried;
   as arguments only the empty array. */
static void
test_payload_one_byte(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        uint8_t tag = (uint8_t)c;
        bool object = tag <= 0x7f || tag >= 0xe0 || tag == 0x80 ||
            tag == 0x90 || tag == 0xa0 || tag == 0xc0 || tag == 0xc2 ||
            tag == 0xc3;
        uint8_t *one = malloc(1); /* exact size: no read past it */
        assert_non_null(one);
        *one = tag;
        const char *why = NULL;
        assert_int_equal(tq_proto_check_payload(one, 1, false, &why),
                         object ? TQ_OK : TQ_EPROTO);
        assert_true(object || why);
        assert_int_equal(tq_proto_check_payload(one, 1, true, NULL),
                         tag == 0x90 ? TQ_OK : TQ_EPROTO);
        free(one);
    }
    /* and two bytes still walk: [1] taken, [[]] too, a fixarray of two
       with one element refused */
    static const uint8_t one_int[] = {0x91, 0x01}, nested[] = {0x91, 0x90},
                         short_array[] = {0x92, 0x01};
    assert_int_equal(tq_proto_check_payload(one_int, 2, true, NULL), TQ_OK);
    assert_int_equal(tq_proto_check_payload(nested, 2, true, NULL), TQ_OK);
    assert_int_equal(tq_proto_check_payload(short_array, 2, true, NULL),
                     TQ_EPROTO);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_bytes_are_msgpack_c),
        cmocka_unit_test(test_encode_grows_buffer),
        cmocka_unit_test(test_writer_forms),
        cmocka_unit_test(test_batch_bytes_are_msgpack_c),
        cmocka_unit_test(test_decode_uint_forms),
        cmocka_unit_test(test_decode_head_forms),
        cmocka_unit_test(test_decode_str_forms),
        cmocka_unit_test(test_decode_bin_ids),
        cmocka_unit_test(test_decode_every_cut),
        cmocka_unit_test(test_command_table),
        cmocka_unit_test(test_character_classes),
        cmocka_unit_test(test_hex_id_every_byte),
        cmocka_unit_test(test_payload_one_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
