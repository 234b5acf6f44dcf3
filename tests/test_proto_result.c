/* test_proto_result.c - the codec's fast paths for the RESULT a client
   reads a task: tq_proto_read_result takes exactly what tq_proto_decode
   takes as a RESULT with a str id, with the same fields, and nothing it
   refuses (every truncation, wrong types, values out of range, trailing
   fields well-formed or not, on a corpus of headers and their one-byte
   changes); a BATCH read as raw sub-messages then decoded gives what
   tq_batch_next gives; and an id the encoder renders from its bytes is
   the text it would have checked. */
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

#define S_HEX_ID "0123456789abcdef0123456789abcdef"
/* the longest id: 64 bytes */
#define S_ID_64 S_HEX_ID "-123456789abcdef0123456789abcdef"

static bool
s_same(tq_str_t a, tq_str_t b)
{
    if (!a.ptr || !b.ptr)
        return !a.ptr && !b.ptr;
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* Tally of s_check over a corpus. */
typedef struct {
    int fast; /* taken by the fast reader */
    int generic; /* RESULTs with a str id taken by the generic decoder */
    int refused; /* refused by the generic decoder */
} s_tally_t;

/* The rule, on one header: whatever the fast reader takes, the generic
   decoder takes as a RESULT with the same fields; whatever the generic
   decoder refuses, the fast reader refuses. Returns whether the fast
   reader took it. */
static bool
s_check(const void *data, size_t size, s_tally_t *tally)
{
    static tq_msg_t msg; /* large: off the stack */
    tq_proto_result_t fast;
    memset(&fast, 0xa5, sizeof fast);
    bool took = tq_proto_read_result(&fast, data, size);
    int rc = tq_proto_decode(&msg, data, size, NULL);
    if (rc != TQ_OK) {
        assert_false(took);
        tally->refused++;
        return false;
    }
    if (msg.command == TQ_CMD_RESULT && !msg.id_binary)
        tally->generic++;
    if (!took)
        return false;
    tally->fast++;
    assert_int_equal(msg.command, TQ_CMD_RESULT);
    assert_false(msg.id_binary);
    assert_true(s_same(fast.id, msg.id));
    assert_true(s_same(fast.error, msg.error));
    assert_int_equal(fast.state, msg.state);
    assert_int_equal(fast.code, msg.code);
    assert_int_equal(fast.attempts, msg.attempt);
    /* its strings point into the header, as the decoder's */
    assert_ptr_equal(fast.id.ptr, msg.id.ptr);
    return true;
}

/* Every prefix, every one-byte change to a few telling values, and a
   byte more at the end, of a header: all through s_check. */
static void
s_mutate(const uint8_t *data, size_t size, s_tally_t *tally)
{
    static const uint8_t values[] = {
        0x00, 0x01, 0x04, 0x0f, 0x10, 0x7f, 0x80, 0x90, 0x96, 0x9f,
        0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc4, 0xcc, 0xcd, 0xce, 0xcf,
        0xd9, 0xda, 0xdc, 0xe0, 0xff, '!',  'A',  'g',  '_'};
    uint8_t *copy = malloc(size + 1);
    assert_non_null(copy);
    for (size_t n = 0; n < size; n++)
        assert_false(s_check(data, n, tally)); /* truncated: refused */
    for (size_t i = 0; i < size; i++)
        for (size_t v = 0; v < sizeof values + 2; v++) {
            memcpy(copy, data, size);
            copy[i] = v < sizeof values ? values[v]
                : v == sizeof values    ? (uint8_t)(data[i] + 1)
                                        : (uint8_t)(data[i] ^ 0x20);
            s_check(copy, size, tally);
        }
    memcpy(copy, data, size);
    for (size_t v = 0; v < sizeof values; v++) {
        copy[size] = values[v];
        assert_false(s_check(copy, size + 1, tally)); /* trailing bytes */
    }
    free(copy);
}

/* A RESULT header as tq_proto_encode writes it. */
static size_t
s_encode(uint8_t *out, size_t cap, const char *id, uint32_t state,
         uint32_t code, const char *error, size_t error_len, uint32_t attempts)
{
    static tq_msg_t msg;
    memset(&msg, 0, sizeof msg);
    msg.command = TQ_CMD_RESULT;
    msg.id = tq_str(id);
    msg.state = state;
    msg.code = code;
    msg.error = (tq_str_t){error, (uint32_t)error_len};
    msg.attempt = attempts;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    assert_int_equal(tq_proto_encode(&msg, &buf, NULL), TQ_OK);
    assert_true(buf.size <= cap);
    memcpy(out, buf.data, buf.size);
    size_t size = buf.size;
    msgpack_sbuffer_destroy(&buf);
    return size;
}

/* What the broker sends, over the range of every field: the fast reader
   takes each one, with the decoder's fields. */
static void
test_read_result_broker_forms(void **state)
{
    (void)state;
    static char error[TQ_PROTO_MAX_ERROR];
    memset(error, 'e', sizeof error);
    static uint8_t header[TQ_PROTO_MAX_ERROR + 256];
    const char *ids[] = {S_HEX_ID,
                         "0123456789ABCDEF0123456789abcdef",
                         "0123456789abcdef0123456789abcdeg",
                         "a",
                         "my-task.1_x",
                         S_ID_64};
    const size_t errors[] = {0, 1, 31, 32, 255, 256, TQ_PROTO_MAX_ERROR};
    const uint32_t numbers[] = {0,   1,     127,   128,       255,
                                256, 65535, 65536, UINT32_MAX};
    s_tally_t tally = {0};
    int made = 0;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        for (uint32_t st = 0; st <= TQ_PROTO_MAX_STATE; st++)
            for (uint32_t code = 0; code < TQ_ERROR_COUNT_; code += 3) {
                size_t e = errors[(st + code) % 7];
                uint32_t a = numbers[(st * 3 + code) % 9];
                size_t size = s_encode(header, sizeof header, ids[i], st, code,
                                       e ? error : NULL, e, a);
                assert_true(s_check(header, size, &tally));
                made++;
            }
    /* an empty error text, not nil */
    size_t size = s_encode(header, sizeof header, S_HEX_ID, TQ_STATE_FAILURE,
                           TQ_ETASK, "", 0, 1);
    assert_true(s_check(header, size, &tally));
    assert_int_equal(tally.fast, made + 1);
    assert_int_equal(tally.refused, 0);
}

/* Every truncation, one-byte change and byte more of RESULT headers in
   the broker's form: the fast reader never takes what the decoder
   refuses, and agrees on what it takes. */
static void
test_read_result_mutations(void **state)
{
    (void)state;
    static uint8_t header[512];
    s_tally_t tally = {0};
    struct {
        const char *id;
        uint32_t state, code;
        const char *error;
        uint32_t attempts;
    } cases[] = {
        {S_HEX_ID, TQ_STATE_SUCCESS, TQ_OK, NULL, 1},
        {S_HEX_ID, TQ_STATE_FAILURE, TQ_ETASK, "boom", 300},
        {"short-id", TQ_STATE_CANCELLED, TQ_ECANCELLED, NULL, 70000},
        {S_HEX_ID, TQ_STATE_SUCCESS, TQ_OK,
         "an error text of more than thirty-one bytes", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t size = s_encode(header, sizeof header, cases[i].id,
                               cases[i].state, cases[i].code, cases[i].error,
                               cases[i].error ? strlen(cases[i].error) : 0,
                               cases[i].attempts);
        assert_true(s_check(header, size, &tally));
        s_mutate(header, size, &tally);
    }
    /* the corpus has both: changes both sides take, and ones refused */
    assert_true(tally.fast > 100);
    assert_true(tally.refused > 1000);
}

/* Forms the broker does not send, built byte by byte: the fast reader
   takes what it can read at once and leaves the rest to the decoder,
   which takes or refuses it as always. */
static void
test_read_result_other_forms(void **state)
{
    (void)state;
    s_tally_t tally = {0};
    /* [1, 4, "ab", 3, 0, nil]: attempts left out (an older broker): 0 */
    static const uint8_t no_attempts[] = {0x96, 0x01, 0x04, 0xa2, 'a',
                                          'b',  0x03, 0x00, 0xc0};
    assert_true(s_check(no_attempts, sizeof no_attempts, &tally));
    tq_proto_result_t r;
    assert_true(tq_proto_read_result(&r, no_attempts, sizeof no_attempts));
    assert_int_equal(r.attempts, 0);
    assert_null(r.error.ptr);
    s_mutate(no_attempts, sizeof no_attempts, &tally);
    /* trailing fields of a newer revision, well-formed: skipped */
    static const uint8_t trailing[] = {
        0x9c, 0x01, 0x04, 0xa2, 'a', 'b',  0x03, 0x00, 0xc0,
        0x05, 0x2a, /* fixint */
        0xa3, 'x',  'y',  'z', /* fixstr */
        0x92, 0x01, 0x81, 0xa1, 'k', 0xc3, /* [1, {"k": true}] */
        0xcb, 0,    0,    0,    0,   0,    0,    0,    0, /* float 64 */
        0xc4, 0x02, 0xff, 0x00, /* bin 8 */
    };
    assert_true(s_check(trailing, sizeof trailing, &tally));
    assert_true(tq_proto_read_result(&r, trailing, sizeof trailing));
    assert_int_equal(r.attempts, 5);
    s_mutate(trailing, sizeof trailing, &tally);
    /* a trailing field nested as deep as the limit allows, and one
       level deeper */
    for (int levels = TQ_PROTO_MAX_DEPTH - 1; levels <= TQ_PROTO_MAX_DEPTH;
         levels++) {
        uint8_t deep[64];
        memcpy(deep, trailing, 10);
        deep[0] = 0x98; /* the required fields, attempts and one more */
        size_t n = 10;
        for (int i = 0; i < levels; i++)
            deep[n++] = 0x91;
        deep[n++] = 0x00;
        assert_int_equal(s_check(deep, n, &tally), levels < TQ_PROTO_MAX_DEPTH);
    }
    /* a bin id: the decoder's (it renders its text) */
    static const uint8_t bin_id[] = {
        0x97, 0x01, 0x04, 0xc4, 0x10, 0,  1,  2,  3,    4,    5,    6,   7,
        8,    9,    10,   11,   12,   13, 14, 15, 0x03, 0x00, 0xc0, 0x01};
    assert_false(s_check(bin_id, sizeof bin_id, &tally));
    s_mutate(bin_id, sizeof bin_id, &tally);
    /* other encodings of the same: an array16 header, the version as a
       uint8, the command as a uint8, state as a uint16, an error as
       str16: the decoder takes them, the fast reader as it can */
    static const uint8_t array16[] = {0xdc, 0x00, 0x07, 0x01, 0x04, 0xa2,
                                      'a',  'b',  0x03, 0x00, 0xc0, 0x01};
    assert_false(s_check(array16, sizeof array16, &tally));
    static const uint8_t version8[] = {0x97, 0xcc, 0x01, 0x04, 0xa2, 'a',
                                       'b',  0x03, 0x00, 0xc0, 0x01};
    assert_false(s_check(version8, sizeof version8, &tally));
    static const uint8_t command8[] = {0x97, 0x01, 0xcc, 0x04, 0xa2, 'a',
                                       'b',  0x03, 0x00, 0xc0, 0x01};
    assert_false(s_check(command8, sizeof command8, &tally));
    static const uint8_t state16[] = {0x97, 0x01, 0x04, 0xa2, 'a',  'b',
                                      0xcd, 0x00, 0x03, 0x00, 0xc0, 0x01};
    assert_true(s_check(state16, sizeof state16, &tally));
    static const uint8_t error16[] = {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x04,
                                      0x05, 0xda, 0x00, 0x02, 'n', 'o', 0x01};
    assert_true(s_check(error16, sizeof error16, &tally));
    s_mutate(error16, sizeof error16, &tally);
    /* wrong types and values out of range: refused by both */
    static const uint8_t bad[][12] = {
        {0x97, 0x01, 0x04, 0xc0, 0x03, 0x00, 0xc0, 0x01}, /* nil id */
        {0x97, 0x01, 0x04, 0x01, 0x03, 0x00, 0xc0, 0x01}, /* int id */
        {0x97, 0x01, 0x04, 0xa0, 0x03, 0x00, 0xc0, 0x01}, /* empty id */
        {0x97, 0x01, 0x04, 0xa2, 'a', '!', 0x03, 0x00, 0xc0, 0x01},
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x10, 0x00, 0xc0, 0x01}, /* 16 */
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0xa1, 'x', 0x00, 0xc0, 0x01},
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0xff, 0x00, 0xc0, 0x01}, /* -1 */
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x03, 0x7f, 0xc0, 0x01}, /* code */
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x03, 0x00, 0xc3, 0x01}, /* bool */
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x03, 0x00, 0xc0, 0xc0}, /* nil */
        {0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x03, 0x00, 0xc0, 0xd0, 0x01},
        {0x95, 0x01, 0x04, 0xa2, 'a', 'b', 0x03, 0x00}, /* too few */
        {0x97, 0x02, 0x04, 0xa2, 'a', 'b', 0x03, 0x00, 0xc0, 0x01}, /* v2 */
        {0x97, 0x01, 0x05, 0xa2, 'a', 'b', 0x03, 0x00, 0xc0, 0x01}, /* STATE */
    };
    const size_t bad_size[] = {8,  8,  8,  10, 10, 11, 10,
                               10, 10, 10, 11, 8,  10, 10};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tally.fast = 0;
        s_check(bad[i], bad_size[i], &tally);
        assert_int_equal(tally.fast, 0);
    }
    /* attempts beyond 32 bits, and an error text one byte too long */
    static const uint8_t attempts33[] = {0x97, 0x01, 0x04, 0xa2, 'a', 'b',
                                         0x03, 0x00, 0xc0, 0xcf, 0,   0,
                                         0,    1,    0,    0,    0,   0};
    assert_false(s_check(attempts33, sizeof attempts33, &tally));
    static uint8_t long_error[TQ_PROTO_MAX_ERROR + 16];
    size_t at = 0;
    memcpy(long_error,
           (const uint8_t[]){0x97, 0x01, 0x04, 0xa2, 'a', 'b', 0x03, 0x00, 0xda,
                             (TQ_PROTO_MAX_ERROR + 1) >> 8,
                             (TQ_PROTO_MAX_ERROR + 1) & 0xff},
           11);
    at = 11;
    memset(long_error + at, 'e', TQ_PROTO_MAX_ERROR + 1);
    at += TQ_PROTO_MAX_ERROR + 1;
    long_error[at++] = 0x01;
    assert_false(s_check(long_error, at, &tally));
    /* NULL and empty input */
    assert_false(tq_proto_read_result(&r, NULL, 0));
    assert_false(s_check(no_attempts, 0, &tally));
}

/* Every other command the broker sends a client is left to the decoder. */
static void
test_read_result_other_commands(void **state)
{
    (void)state;
    static tq_msg_t msg;
    size_t count;
    const tq_proto_command_t *cmds = tq_proto_commands(&count);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    for (size_t i = 0; i < count; i++) {
        if (cmds[i].command == TQ_CMD_RESULT)
            continue;
        memset(&msg, 0, sizeof msg);
        msg.command = cmds[i].command;
        msg.id = tq_str(S_HEX_ID);
        msg.task = msg.queue = msg.host = tq_str("t");
        msg.attempt = msg.credit = msg.pid = msg.ppid = msg.limit = 1;
        msg.count = 2;
        if (tq_proto_encode(&msg, &buf, NULL) != TQ_OK)
            continue;
        tq_proto_result_t r;
        assert_false(tq_proto_read_result(&r, buf.data, buf.size));
    }
    msgpack_sbuffer_destroy(&buf);
}

/* ---- the BATCH reader in two steps ------------------------------------ */

static void
s_add_raw(tq_batch_t *b, const void *header, size_t size, const void *payload,
          size_t payload_size, bool has)
{
    assert_int_equal(
        tq_batch_add_encoded(b, header, size, payload, payload_size, has),
        TQ_OK);
}

/* tq_batch_next_raw then tq_batch_decode gives, sub-message by
   sub-message, what tq_batch_next gives: good ones, malformed ones, a
   payload against the rule, a BATCH inside; and a broken framing once. */
static void
test_batch_raw_decode(void **state)
{
    (void)state;
    static uint8_t header[256];
    tq_batch_t b;
    tq_batch_init(&b);
    uint8_t value = 0x07;
    size_t size = s_encode(header, sizeof header, S_HEX_ID, TQ_STATE_SUCCESS,
                           TQ_OK, NULL, 0, 1);
    s_add_raw(&b, header, size, &value, 1, true);
    s_add_raw(&b, header, size, NULL, 0, false); /* its payload missing */
    static const uint8_t garbage[] = {0xc1, 0x01, 0x02};
    s_add_raw(&b, garbage, sizeof garbage, NULL, 0, false);
    static const uint8_t batch[] = {0x93, 0x01, 0x17, 0x02};
    s_add_raw(&b, batch, sizeof batch, &value, 1, true);
    static const uint8_t pong[] = {0x92, 0x01, 0x0a};
    s_add_raw(&b, pong, sizeof pong, &value, 1, true); /* one too many */
    s_add_raw(&b, pong, sizeof pong, NULL, 0, false);
    tq_msg_t head = {.command = TQ_CMD_BATCH, .count = b.count};
    static tq_msg_t one, two;
    for (int broken = 0; broken < 2; broken++) {
        size_t body = b.body.size - (size_t)broken; /* cut: framing broken */
        tq_batch_reader_t r1, r2;
        tq_batch_reader_init(&r1, &head, b.body.data, body);
        tq_batch_reader_init(&r2, &head, b.body.data, body);
        int steps = 0, ok = 0;
        for (;;) {
            const void *p1, *p2, *h;
            size_t s1, s2, hs;
            bool has1, has2;
            const char *why1 = NULL, *why2 = NULL;
            int rc1 = tq_batch_next(&r1, &one, &p1, &s1, &has1, &why1);
            int rc2 = tq_batch_next_raw(&r2, &h, &hs, &p2, &s2, &has2, &why2);
            if (rc2 == TQ_OK)
                rc2 = tq_batch_decode(&two, h, hs, has2, &why2);
            assert_int_equal(rc1, rc2);
            if (rc1 == TQ_BATCH_END)
                break;
            assert_true(++steps <= 7);
            if (rc1 != TQ_OK) {
                assert_string_equal(why1, why2);
                continue;
            }
            ok++;
            assert_int_equal(one.command, two.command);
            assert_true(s_same(one.id, two.id));
            assert_ptr_equal(p1, p2);
            assert_int_equal(s1, s2);
            assert_int_equal(has1, has2);
        }
        assert_int_equal(ok, broken ? 0 : 2);
        assert_int_equal(steps, broken ? 1 : 6);
    }
    tq_batch_destroy(&b);
}

/* ---- an id the encoder renders from its bytes -------------------------- */

/* id_bytes without id_binary and without id: sent as the str of their 32
   lowercase hex digits, the very bytes of the same id given as text, for
   every command with an id; with neither, an optional id is nil. */
static void
test_encode_id_from_bytes(void **state)
{
    (void)state;
    static tq_msg_t in, out;
    const uint8_t raw[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                             0x00, 0xff, 0x10, 0xe0, 0xa5, 0xc3, 0xde, 0xaf};
    const char *text = "0123456789abcdef00ff10e0a5c3deaf";
    msgpack_sbuffer a, b;
    msgpack_sbuffer_init(&a);
    msgpack_sbuffer_init(&b);
    size_t count;
    const tq_proto_command_t *cmds = tq_proto_commands(&count);
    int with_id = 0;
    for (size_t i = 0; i < count; i++) {
        const char *f = cmds[i].fields;
        if (!strchr(f, 'I') && !strchr(f, 'i'))
            continue;
        memset(&in, 0, sizeof in);
        in.command = cmds[i].command;
        in.task = in.queue = in.host = tq_str("t");
        in.attempt = in.credit = in.pid = in.ppid = in.limit = 1;
        in.id = tq_str(text);
        assert_int_equal(tq_proto_encode(&in, &a, NULL), TQ_OK);
        in.id = tq_str(NULL);
        in.id_bytes = raw;
        assert_int_equal(tq_proto_encode(&in, &b, NULL), TQ_OK);
        assert_int_equal(a.size, b.size);
        assert_memory_equal(a.data, b.data, a.size);
        assert_int_equal(tq_proto_decode(&out, b.data, b.size, NULL), TQ_OK);
        assert_true(tq_str_eq(out.id, text));
        assert_false(out.id_binary);
        if (in.command == TQ_CMD_RESULT) {
            tq_proto_result_t r;
            assert_true(tq_proto_read_result(&r, b.data, b.size));
            assert_true(tq_str_eq(r.id, text));
        }
        /* with id_binary the bytes go as a bin, as before */
        in.id_binary = true;
        assert_int_equal(tq_proto_encode(&in, &b, NULL), TQ_OK);
        assert_int_equal(tq_proto_decode(&out, b.data, b.size, NULL), TQ_OK);
        assert_true(out.id_binary);
        assert_true(tq_str_eq(out.id, text));
        /* an id given as text is still checked */
        in.id_binary = false;
        in.id_bytes = NULL;
        in.id = tq_str("not an id!");
        assert_int_equal(tq_proto_encode(&in, &b, NULL), TQ_EINVAL);
        /* neither: an optional id is nil, a required one refused */
        in.id = tq_str(NULL);
        int rc = tq_proto_encode(&in, &b, NULL);
        if (strchr(f, 'I'))
            assert_int_equal(rc, TQ_EINVAL);
        else {
            assert_int_equal(rc, TQ_OK);
            assert_int_equal(tq_proto_decode(&out, b.data, b.size, NULL),
                             TQ_OK);
            assert_null(out.id.ptr);
        }
        with_id++;
    }
    assert_true(with_id >= 15);
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
}

/* Every byte value rendered from an id's bytes (16 ids of 16 bytes, 0
   to 255) is its two lowercase hex digits, the first one first. */
static void
test_encode_id_every_byte(void **state)
{
    (void)state;
    static tq_msg_t in, out;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    for (int k = 0; k < 16; k++) {
        uint8_t raw[16];
        char text[33];
        for (int i = 0; i < 16; i++) {
            raw[i] = (uint8_t)(16 * k + i);
            snprintf(text + 2 * i, 3, "%02x", raw[i]);
        }
        memset(&in, 0, sizeof in);
        in.command = TQ_CMD_RESULT;
        in.id_bytes = raw;
        assert_int_equal(tq_proto_encode(&in, &buf, NULL), TQ_OK);
        assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                         TQ_OK);
        assert_true(tq_str_eq(out.id, text));
        assert_true(out.id_text_bin);
        assert_memory_equal(out.id_text_bytes, raw, 16);
    }
    msgpack_sbuffer_destroy(&buf);
}

/* The fast reader reads the RESULT of this layout: a change to it must
   change tq_proto_read_result. */
static void
test_result_layout(void **state)
{
    (void)state;
    assert_string_equal(tq_proto_command(TQ_CMD_RESULT)->fields, "ISCE|a");
    assert_true(tq_proto_command(TQ_CMD_RESULT)->payload);
}

/* The encoder refuses a RESULT by the first field in wire order that
   breaks its rule, an id it renders from bytes never; whatever it takes
   reads back the same. */
static void
test_encode_result_refusals(void **state)
{
    (void)state;
    static tq_msg_t in, out;
    static char long_error[TQ_PROTO_MAX_ERROR + 1];
    memset(long_error, 'e', sizeof long_error);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    struct {
        const char *id;
        uint32_t state, code;
        size_t error_len;
        const char *why; /* NULL: taken */
    } cases[] = {
        {S_HEX_ID, TQ_PROTO_MAX_STATE, TQ_ERROR_COUNT_ - 1, 0, NULL},
        {"bad id", 0, 0, 0, "invalid task id"},
        {NULL, 0, 0, 0, "invalid task id"},
        {"bad id", TQ_PROTO_MAX_STATE + 1, TQ_ERROR_COUNT_, 1,
         "invalid task id"},
        {S_HEX_ID, TQ_PROTO_MAX_STATE + 1, TQ_ERROR_COUNT_,
         TQ_PROTO_MAX_ERROR + 1, "unknown state"},
        {S_HEX_ID, 0, TQ_ERROR_COUNT_, TQ_PROTO_MAX_ERROR + 1,
         "unknown error code"},
        {S_HEX_ID, 0, 0, TQ_PROTO_MAX_ERROR + 1, "error text too long"},
        {S_ID_64, 3, 5, TQ_PROTO_MAX_ERROR, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&in, 0, sizeof in);
        in.command = TQ_CMD_RESULT;
        in.id = tq_str(cases[i].id);
        in.state = cases[i].state;
        in.code = cases[i].code;
        in.attempt = UINT32_MAX;
        if (cases[i].error_len)
            in.error = (tq_str_t){long_error, (uint32_t)cases[i].error_len};
        const char *why = NULL;
        int rc = tq_proto_encode(&in, &buf, &why);
        if (cases[i].why) {
            assert_int_equal(rc, TQ_EINVAL);
            assert_string_equal(why, cases[i].why);
            assert_int_equal(buf.size, 0);
            continue;
        }
        assert_int_equal(rc, TQ_OK);
        assert_int_equal(tq_proto_decode(&out, buf.data, buf.size, NULL),
                         TQ_OK);
        assert_int_equal(out.command, TQ_CMD_RESULT);
        assert_true(s_same(out.id, in.id));
        assert_int_equal(out.state, in.state);
        assert_int_equal(out.code, in.code);
        assert_int_equal(out.attempt, UINT32_MAX);
        assert_true(s_same(out.error, in.error));
    }
    msgpack_sbuffer_destroy(&buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_result_broker_forms),
        cmocka_unit_test(test_read_result_mutations),
        cmocka_unit_test(test_read_result_other_forms),
        cmocka_unit_test(test_read_result_other_commands),
        cmocka_unit_test(test_batch_raw_decode),
        cmocka_unit_test(test_encode_id_from_bytes),
        cmocka_unit_test(test_encode_id_every_byte),
        cmocka_unit_test(test_result_layout),
        cmocka_unit_test(test_encode_result_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
