/* tq_proto.c - the TQP/1 header codec and the payload checker.

   A header is one msgpack array: [version, command, field...], the fields in
   the order that s_layouts gives for the command. Decoding is a bounded
   cursor over the bytes: every length is checked against what is left
   before it is used, nothing is allocated, and strings point into the
   input (but an id that came as bin, whose text is written into the
   message). Encoding writes the same layout's msgpack bytes into the
   buffer itself (tq_writer.h), as msgpack-c's packer would. */
#include "tq_proto.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "tq_writer.h"

/* Field codes of a layout. */
enum {
    F_ID = 'I',       /* id, required */
    F_OPT_ID = 'i',   /* id or nil */
    F_TASK = 'T',     /* task name */
    F_QUEUE = 'Q',    /* queue name */
    F_HOST = 'H',     /* host name */
    F_ERROR = 'E',    /* error text or nil */
    F_PRIORITY = 'P', /* 0..9 */
    F_LIMIT = 'L',    /* time limit, ms */
    F_ATTEMPT = 'A',  /* 1.. */
    F_STATE = 'S',    /* tq_state_t */
    F_CODE = 'C',     /* tq_err_t */
    F_CREDIT = 'c',   /* 1..65535 */
    F_PID = 'p',      /* process id */
    F_PPID = 'q',     /* parent process id */
    F_WAIT = 'W',     /* bool */
    F_QUEUES = 'N',   /* array of queue names */
    F_TASKS = 'M',    /* array of task names */
    F_RETRIES = 'r',  /* retries on task failure, 0..TQ_PROTO_MAX_RETRIES */
    F_BACKOFF = 'b',  /* first retry delay, ms */
    F_DELAY = 'd',    /* countdown before the first run, ms */
    F_ATTEMPTS = 'a', /* attempts made so far, 0.. */
    F_RSS = 'K',      /* peak resident set, KiB */
    F_MAXSIZE = 'n',  /* a data queue's bound, 0: none */
    F_FEATURES = 'f', /* TQ_FEATURE_* bits */
    F_SESSION = 's',  /* a host's session number */
    F_DROPPED = 'x',  /* replies dropped for this client */
    F_OPT_QUEUE = 'u', /* queue name or nil */
    F_STATES = 'v',   /* TQ_STATE_BIT() set, within TQ_STATES_ALL */
    F_COUNT = 'y',    /* TASKS limit, 1..TQ_PROTO_MAX_LIMIT */
    F_BATCH = 'k',    /* BATCH: sub-messages, 1..TQ_BATCH_MAX */
    F_OPTIONAL = '|', /* the fields after it may be absent (older peers) */
};

#define C_ TQ_FROM_CLIENT
#define B_ TQ_FROM_BROKER
#define W_ TQ_FROM_CHILD
#define S_ TQ_FROM_SUPERVISOR
#define EC TQ_ENDPOINT_CLIENTS
#define EW TQ_ENDPOINT_WORKERS

/* The protocol model (PROTOCOL.md section 4, which test_proto checks
   against this table). */
static const tq_proto_command_t s_layouts[] = {
    {TQ_CMD_SUBMIT, "SUBMIT", "ITQPL|rbdf", true, C_, EC},
    {TQ_CMD_SUBMITTED, "SUBMITTED", "I", false, B_, EC},
    {TQ_CMD_GET, "GET", "IW", false, C_, EC},
    {TQ_CMD_RESULT, "RESULT", "ISCE|a", true, B_, EC},
    {TQ_CMD_STATE, "STATE", "IS", false, B_, EC},
    {TQ_CMD_UNKNOWN, "UNKNOWN", "I", false, B_, EC},
    {TQ_CMD_STATUS, "STATUS", "|i", false, C_, EC},
    {TQ_CMD_STATUS_REPLY, "STATUS_REPLY", "|i", true, B_, EC},
    {TQ_CMD_PING, "PING", "", false, TQ_FROM_ANY, EC | EW},
    {TQ_CMD_PONG, "PONG", "|xf", false, TQ_FROM_ANY, EC | EW},
    {TQ_CMD_ERROR, "ERROR", "CEi", false, B_, EC | EW},
    {TQ_CMD_CANCEL, "CANCEL", "I", false, C_, EC},
    {TQ_CMD_RETRY, "RETRY", "I", false, C_, EC},
    {TQ_CMD_PURGE, "PURGE", "Q|i", false, C_, EC},
    {TQ_CMD_FAILED, "FAILED", "|i", false, C_, EC},
    {TQ_CMD_REPLY, "REPLY", "|i", true, B_, EC},
    {TQ_CMD_QPUT, "QPUT", "IQn", true, C_, EC},
    {TQ_CMD_QGET, "QGET", "IQL", false, C_, EC},
    {TQ_CMD_QITEM, "QITEM", "I", true, B_, EC},
    {TQ_CMD_QSIZE, "QSIZE", "IQ", false, C_, EC},
    {TQ_CMD_READY, "READY", "HpqcNM|fi", false, W_, EW},
    {TQ_CMD_TASK, "TASK", "ITAL", true, B_, EW},
    {TQ_CMD_DONE, "DONE", "IASCE|K", true, W_, EW},
    {TQ_CMD_DISCONNECT, "DISCONNECT", "", false, W_ | S_, EW},
    {TQ_CMD_HEARTBEAT, "HEARTBEAT", "Hp|s", false, S_ | B_, EW},
    {TQ_CMD_LOST, "LOST", "pCE|ia", false, S_, EW},
    {TQ_CMD_KILL, "KILL", "pI", false, B_, EW},
    {TQ_CMD_REVOKE, "REVOKE", "IA", false, B_, EW},
    {TQ_CMD_RETURNED, "RETURNED", "IA", false, W_, EW},
    {TQ_CMD_TASKS, "TASKS", "Iuvy", false, C_, EC},
    {TQ_CMD_INSPECT, "INSPECT", "I", false, C_, EC},
    {TQ_CMD_BATCH, "BATCH", "k", true, C_ | B_ | W_, EC | EW},
};

/* An integer field: where it lives in tq_msg_t and the values it may
   take, one rule both ways (the encoder refuses what the decoder would).
   One path reads and writes them all, indexed by field code. */
typedef struct {
    uint16_t offset; /* offsetof(tq_msg_t, the field) */
    uint8_t size; /* 4: uint32_t, 8: uint64_t; 0: not an integer */
    uint64_t min;
    uint64_t max;
    const char *what; /* why a value out of range is refused */
} s_number_t;

/* where a uint32_t or uint64_t field lives: an s_number_t's first two */
#define S_U32(field) offsetof(tq_msg_t, field), 4
#define S_U64(field) offsetof(tq_msg_t, field), 8

static const s_number_t s_numbers[256] = {
    [F_PRIORITY] = {S_U32(priority), 0, 9, "priority out of range"},
    [F_LIMIT] = {S_U32(time_limit_ms), 0, UINT32_MAX,
                 "time limit out of range"},
    [F_ATTEMPT] = {S_U32(attempt), 1, UINT32_MAX, "attempt must be 1 or more"},
    /* up to 15: a state a newer revision added reads as not final */
    [F_STATE] = {S_U32(state), 0, TQ_PROTO_MAX_STATE, "unknown state"},
    [F_CODE] = {S_U32(code), 0, TQ_ERROR_COUNT_ - 1, "unknown error code"},
    [F_CREDIT] = {S_U32(credit), 1, 65535, "credit out of range (1..65535)"},
    [F_PID] = {S_U64(pid), 1, INT32_MAX, "process id out of range"},
    [F_PPID] = {S_U64(ppid), 1, INT32_MAX, "process id out of range"},
    [F_RETRIES] = {S_U32(retries), 0, TQ_PROTO_MAX_RETRIES,
                   "retries out of range"},
    [F_BACKOFF] = {S_U32(backoff_ms), 0, UINT32_MAX, "backoff out of range"},
    [F_DELAY] = {S_U32(delay_ms), 0, UINT32_MAX, "delay out of range"},
    [F_ATTEMPTS] = {S_U32(attempt), 0, UINT32_MAX, "attempts out of range"},
    [F_RSS] = {S_U64(rss_kb), 0, UINT64_MAX, "rss out of range"},
    [F_MAXSIZE] = {S_U32(maxsize), 0, UINT32_MAX, "maxsize out of range"},
    [F_FEATURES] = {S_U32(features), 0, UINT32_MAX, "features out of range"},
    [F_SESSION] = {S_U64(session), 0, UINT64_MAX, "session out of range"},
    [F_DROPPED] = {S_U64(dropped), 0, UINT64_MAX, "dropped out of range"},
    [F_STATES] = {S_U32(states), 0, TQ_STATES_ALL,
                  "unknown state in the state set"},
    [F_COUNT] = {S_U32(limit), 1, TQ_PROTO_MAX_LIMIT, "limit out of range"},
    [F_BATCH] = {S_U32(count), 1, TQ_BATCH_MAX, "batch count out of range"},
};

#define S_LAYOUT_COUNT (sizeof s_layouts / sizeof s_layouts[0])
typedef tq_proto_command_t s_layout_t;

/* Field codes of the longest layout, without its '|'. */
#define S_MAX_FIELDS 12

/* A command's layout as the codec walks it, found by index, not by a
   search of s_layouts (every message is decoded, encoded and asked
   whether it has a payload, some several times). */
typedef struct {
    const s_layout_t *layout; /* NULL: no such command */
    bool payload; /* a payload frame follows the header */
    uint8_t required; /* fields before the '|' */
    uint8_t count; /* fields in all */
    char codes[S_MAX_FIELDS]; /* the field codes, '|' left out */
    /* each integer field's rule, NULL for the other fields */
    const s_number_t *numbers[S_MAX_FIELDS];
} s_plan_t;

/* s_plans[0]: the plan of an unknown command (layout NULL); s_plan_of
   gives each command byte its plan. */
static s_plan_t s_plans[1 + S_LAYOUT_COUNT];
static uint8_t s_plan_of[256];

/* Bits of s_charset: which bytes an id and a name may hold. A table,
   not a test per byte: every TASK, DONE and SUBMIT checks an id and a
   name (the hot path). */
#define S_ID 0x1
#define S_NAME 0x2

static uint8_t s_charset[256];

/* Each byte's two lowercase hex digits: every bin id decoded gets its
   text, a table lookup per byte. */
static char s_hex_pairs[256][2];

static bool
s_alnum(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
        (c >= 'A' && c <= 'Z');
}

static void
s_tables_init(void)
{
    for (size_t i = 0; i < S_LAYOUT_COUNT; i++) {
        const s_layout_t *layout = &s_layouts[i];
        s_plan_t *plan = &s_plans[1 + i];
        s_plan_of[layout->command] = (uint8_t)(1 + i);
        plan->layout = layout;
        plan->payload = layout->payload;
        plan->required = UINT8_MAX;
        for (const char *f = layout->fields; *f; f++) {
            if (*f == F_OPTIONAL) {
                plan->required = plan->count;
                continue;
            }
            /* a layout longer than a plan holds is a programmer's error */
            if (plan->count >= S_MAX_FIELDS)
                abort();
            const s_number_t *number = &s_numbers[(unsigned char)*f];
            plan->numbers[plan->count] = number->size ? number : NULL;
            plan->codes[plan->count++] = *f;
        }
        if (plan->required == UINT8_MAX)
            plan->required = plan->count;
    }
    for (int c = 0; c < 256; c++) {
        uint8_t bits = 0;
        if (s_alnum(c) || (c && strchr("_.-", c)))
            bits |= S_ID;
        if (s_alnum(c) || (c && strchr("_.:@/-", c)))
            bits |= S_NAME;
        s_charset[c] = bits;
        s_hex_pairs[c][0] = "0123456789abcdef"[c >> 4];
        s_hex_pairs[c][1] = "0123456789abcdef"[c & 0xf];
    }
}

/* The tables above are built: set last by s_tables_build. */
static atomic_bool s_tables_built;

static void
s_tables_build(void)
{
    s_tables_init();
    atomic_store_explicit(&s_tables_built, true, memory_order_release);
}

/* Builds the tables above on first use, by whichever thread comes first
   (the codec has no init call); after that one load, not a call to
   pthread_once per use (the codec's entry points run per message). */
static void
s_tables(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (!atomic_load_explicit(&s_tables_built, memory_order_acquire))
        pthread_once(&once, s_tables_build);
}

static const s_plan_t *
s_plan(uint8_t command)
{
    s_tables();
    return &s_plans[s_plan_of[command]];
}

static const s_layout_t *
s_layout(uint8_t command)
{
    return s_plan(command)->layout;
}

const tq_proto_command_t *
tq_proto_command(uint8_t command)
{
    return s_layout(command);
}

const tq_proto_command_t *
tq_proto_commands(size_t *count)
{
    *count = S_LAYOUT_COUNT;
    return s_layouts;
}

const char *
tq_proto_field_name(char code)
{
    switch (code) {
    case F_ID:
        return "id";
    case F_OPT_ID:
        return "id?";
    case F_TASK:
        return "task";
    case F_QUEUE:
        return "queue";
    case F_HOST:
        return "host";
    case F_ERROR:
        return "error";
    case F_PRIORITY:
        return "priority";
    case F_LIMIT:
        return "time_limit_ms";
    case F_ATTEMPT:
        return "attempt";
    case F_STATE:
        return "state";
    case F_CODE:
        return "code";
    case F_CREDIT:
        return "credit";
    case F_PID:
        return "pid";
    case F_PPID:
        return "ppid";
    case F_WAIT:
        return "wait";
    case F_QUEUES:
        return "queues";
    case F_TASKS:
        return "tasks";
    case F_RETRIES:
        return "retries";
    case F_BACKOFF:
        return "backoff_ms";
    case F_DELAY:
        return "delay_ms";
    case F_ATTEMPTS:
        return "attempts";
    case F_RSS:
        return "rss_kb";
    case F_MAXSIZE:
        return "maxsize";
    case F_FEATURES:
        return "features";
    case F_SESSION:
        return "session";
    case F_DROPPED:
        return "dropped";
    case F_OPT_QUEUE:
        return "queue?";
    case F_STATES:
        return "states";
    case F_COUNT:
        return "limit";
    case F_BATCH:
        return "count";
    default:
        return NULL;
    }
}

bool
tq_proto_has_payload(uint8_t command)
{
    return s_plan(command)->payload;
}

const char *
tq_proto_command_name(uint8_t command)
{
    const s_layout_t *layout = s_layout(command);
    return layout ? layout->name : "?";
}

/* ---- names ------------------------------------------------------------ */

/* The tables must be built (s_tables). */
static inline bool
s_charset_ok(const char *ptr, size_t len, size_t max, uint8_t bit)
{
    if (!ptr || len == 0 || len > max)
        return false;
    const unsigned char *p = (const unsigned char *)ptr;
    uint8_t all = bit;
    size_t i = 0;
    /* four bytes a step: every message checks an id or a name or two */
    for (; i + 4 <= len; i += 4)
        all &= s_charset[p[i]] & s_charset[p[i + 1]] & s_charset[p[i + 2]] &
            s_charset[p[i + 3]];
    for (; i < len; i++)
        all &= s_charset[p[i]];
    return all != 0;
}

static inline bool s_hex32_ok(const char *p);

/* tq_proto_valid_id once the tables are built. */
static inline bool
s_id_ok(const char *ptr, size_t len)
{
    /* a client-made id (32 lowercase hex digits), eight bytes at once */
    if (ptr && len == 32 && s_hex32_ok(ptr))
        return true;
    return s_charset_ok(ptr, len, TQ_PROTO_MAX_ID, S_ID);
}

static inline bool
s_name_ok(const char *ptr, size_t len)
{
    return s_charset_ok(ptr, len, TQ_PROTO_MAX_NAME, S_NAME);
}

bool
tq_proto_valid_id(const char *ptr, size_t len)
{
    s_tables();
    return s_id_ok(ptr, len);
}

bool
tq_proto_valid_name(const char *ptr, size_t len)
{
    s_tables();
    return s_name_ok(ptr, len);
}

/* Eight characters (x: their bytes, the first one lowest), eight at once
   (SWAR: the broker checks or parses every id it is given): the high bit
   of each byte that is not a lowercase hex digit, 0 when all are. */
static uint64_t
s_hex8_bad(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, high = ones << 7;
    /* a byte's high bit after adding 0x80 - c says it is >= c; a byte
       above 0x7f is bad by itself (its sums may carry into the next
       byte's, which no longer matters) */
    uint64_t ge_0 = x + (0x80 - '0') * ones, gt_9 = x + (0x80 - '9' - 1) * ones;
    uint64_t ge_a = x + (0x80 - 'a') * ones, gt_f = x + (0x80 - 'f' - 1) * ones;
    return (x | ~((ge_0 & ~gt_9) | (ge_a & ~gt_f))) & high;
}

/* The eight bytes at p, the first one lowest whatever the host. */
static uint64_t
s_load8(const char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

/* The 32 characters at p are lowercase hex digits: one test, not four. */
static inline bool
s_hex32_ok(const char *p)
{
    return (s_hex8_bad(s_load8(p)) | s_hex8_bad(s_load8(p + 8)) |
            s_hex8_bad(s_load8(p + 16)) | s_hex8_bad(s_load8(p + 24))) == 0;
}

/* Eight lowercase hex digits (x: their bytes, the first one lowest) as
   four bytes in out, eight at once; the result is undefined for other
   bytes (s_hex8_bad tells them). */
static void
s_hex8_parse(uint64_t x, uint8_t out[4])
{
    const uint64_t ones = 0x0101010101010101ull;
    /* '0'..'9' are 0x30..0x39, 'a'..'f' 0x61..0x66 (bit 0x40 set) */
    uint64_t v = (x & 0x0f * ones) + ((x >> 6) & ones) * 9;
    /* each pair of digits (first in the low byte) into one byte */
    v = ((v & 0x00ff00ff00ff00ffull) << 4) | ((v >> 8) & 0x00ff00ff00ff00ffull);
    v = (v | v >> 8) & 0x0000ffff0000ffffull;
    v = (v | v >> 16) & 0xffffffffull;
    uint32_t word = (uint32_t)v;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap32(word);
#endif
    memcpy(out, &word, 4);
}

bool
tq_proto_id_parse(const char *ptr, size_t len, uint8_t bin[TQ_PROTO_ID_BIN])
{
    if (!ptr || len != 2 * TQ_PROTO_ID_BIN)
        return false;
    uint64_t bad = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t x = s_load8(ptr + 8 * i);
        bad |= s_hex8_bad(x);
        s_hex8_parse(x, bin + 4 * i);
    }
    return bad == 0;
}

tq_str_t
tq_str(const char *s)
{
    tq_str_t str = {s, s ? (uint32_t)strlen(s) : 0};
    return str;
}

void
tq_str_copy(char *dst, size_t size, tq_str_t s)
{
    if (size == 0)
        return;
    size_t n = s.ptr ? s.len : 0;
    if (n >= size)
        n = size - 1;
    if (n)
        memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

bool
tq_str_eq(tq_str_t s, const char *c)
{
    size_t n = strlen(c);
    return s.ptr && s.len == n && memcmp(s.ptr, c, n) == 0;
}

/* ---- the bounded reader ----------------------------------------------- */

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    const char *error; /* first failure, static text */
} s_reader_t;

static bool
s_fail(s_reader_t *r, const char *why)
{
    if (!r->error)
        r->error = why;
    return false;
}

static inline bool
s_need(s_reader_t *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return s_fail(r, "truncated");
    return true;
}

static uint64_t
s_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a big-endian integer of n bytes after a one-byte tag. */
static bool
s_take_be(s_reader_t *r, int n, uint64_t *v)
{
    if (!s_need(r, 1 + (size_t)n))
        return false;
    *v = s_be(r->p + 1, n);
    r->p += 1 + n;
    return true;
}

static inline bool
s_read_uint(s_reader_t *r, uint64_t *v)
{
    if (!s_need(r, 1))
        return false;
    uint8_t tag = *r->p;
    if (tag <= 0x7f) {
        *v = tag;
        r->p++;
        return true;
    }
    switch (tag) {
    case 0xcc:
        return s_take_be(r, 1, v);
    case 0xcd:
        return s_take_be(r, 2, v);
    case 0xce:
        return s_take_be(r, 4, v);
    case 0xcf:
        return s_take_be(r, 8, v);
    default:
        return s_fail(r, "expected an unsigned integer");
    }
}

static bool
s_read_bool(s_reader_t *r, bool *v)
{
    if (!s_need(r, 1))
        return false;
    if (*r->p != 0xc2 && *r->p != 0xc3)
        return s_fail(r, "expected a boolean");
    *v = *r->p == 0xc3;
    r->p++;
    return true;
}

static bool
s_is_nil(s_reader_t *r)
{
    if (r->p < r->end && *r->p == 0xc0) {
        r->p++;
        return true;
    }
    return false;
}

static inline bool
s_read_str(s_reader_t *r, tq_str_t *s)
{
    if (!s_need(r, 1))
        return false;
    uint8_t tag = *r->p;
    uint64_t len;
    if ((tag & 0xe0) == 0xa0) {
        len = tag & 0x1f;
        r->p++;
    } else if (tag == 0xd9) {
        if (!s_take_be(r, 1, &len))
            return false;
    } else if (tag == 0xda) {
        if (!s_take_be(r, 2, &len))
            return false;
    } else if (tag == 0xdb) {
        if (!s_take_be(r, 4, &len))
            return false;
    } else
        return s_fail(r, "expected a string");
    if (!s_need(r, len))
        return false;
    s->ptr = (const char *)r->p;
    s->len = (uint32_t)len;
    r->p += len;
    return true;
}

static bool
s_read_array(s_reader_t *r, uint32_t *count)
{
    if (!s_need(r, 1))
        return false;
    uint8_t tag = *r->p;
    uint64_t n;
    if ((tag & 0xf0) == 0x90) {
        n = tag & 0x0f;
        r->p++;
    } else if (tag == 0xdc) {
        if (!s_take_be(r, 2, &n))
            return false;
    } else if (tag == 0xdd) {
        if (!s_take_be(r, 4, &n))
            return false;
    } else
        return s_fail(r, "expected an array");
    /* every element takes at least one byte: a count beyond the bytes left
       is a lie, refused before anyone sizes anything by it */
    if (n > (uint64_t)(r->end - r->p))
        return s_fail(r, "array longer than its frame");
    *count = (uint32_t)n;
    return true;
}

/* Skips one object of any type, nested at most `depth` deep. */
static bool
s_skip(s_reader_t *r, int depth)
{
    if (depth <= 0)
        return s_fail(r, "nested too deep");
    if (!s_need(r, 1))
        return false;
    uint8_t tag = *r->p;
    uint64_t n = 0;     /* bytes (raw types) or elements (containers) */
    int elements = 0;   /* 1: array, 2: map */
    int header = 0;     /* length bytes after the tag */
    if (tag <= 0x7f || tag >= 0xe0 || tag == 0xc0 || tag == 0xc2 ||
        tag == 0xc3) {
        r->p++;
        return true;
    }
    if ((tag & 0xe0) == 0xa0) {
        r->p++;
        n = tag & 0x1f;
    } else if ((tag & 0xf0) == 0x90 || (tag & 0xf0) == 0x80) {
        r->p++;
        n = tag & 0x0f;
        elements = (tag & 0xf0) == 0x90 ? 1 : 2;
    } else {
        switch (tag) {
        case 0xcc: case 0xd0: n = 1; break;
        case 0xcd: case 0xd1: n = 2; break;
        case 0xca: case 0xce: case 0xd2: n = 4; break;
        case 0xcb: case 0xcf: case 0xd3: n = 8; break;
        case 0xd4: n = 2; break; /* fixext: type byte + data */
        case 0xd5: n = 3; break;
        case 0xd6: n = 5; break;
        case 0xd7: n = 9; break;
        case 0xd8: n = 17; break;
        case 0xc4: case 0xd9: header = 1; break;
        case 0xc5: case 0xda: header = 2; break;
        case 0xc6: case 0xdb: header = 4; break;
        case 0xc7: header = 1; n = 1; break; /* ext: + type byte */
        case 0xc8: header = 2; n = 1; break;
        case 0xc9: header = 4; n = 1; break;
        case 0xdc: header = 2; elements = 1; break;
        case 0xdd: header = 4; elements = 1; break;
        case 0xde: header = 2; elements = 2; break;
        case 0xdf: header = 4; elements = 2; break;
        default:
            return s_fail(r, "invalid msgpack type byte");
        }
        r->p++;
        if (header) {
            if (!s_need(r, (size_t)header))
                return false;
            n += s_be(r->p, header);
            r->p += header;
        }
    }
    if (!elements) {
        if (!s_need(r, n))
            return false;
        r->p += n;
        return true;
    }
    uint64_t items = n * (uint64_t)elements;
    if (items > (uint64_t)(r->end - r->p))
        return s_fail(r, "container longer than its frame");
    for (uint64_t i = 0; i < items; i++)
        if (!s_skip(r, depth - 1))
            return false;
    return true;
}

static bool
s_read_names(s_reader_t *r, tq_str_t *names, uint32_t *count)
{
    uint32_t n;
    if (!s_read_array(r, &n))
        return false;
    if (n > TQ_PROTO_MAX_NAMES)
        return s_fail(r, "too many names");
    for (uint32_t i = 0; i < n; i++) {
        if (!s_read_str(r, &names[i]))
            return false;
        if (!s_name_ok(names[i].ptr, names[i].len))
            return s_fail(r, "invalid name in list");
    }
    *count = n;
    return true;
}

static bool
s_read_name(s_reader_t *r, tq_str_t *s, const char *what)
{
    if (!s_read_str(r, s))
        return false;
    if (!s_name_ok(s->ptr, s->len))
        return s_fail(r, what);
    return true;
}

/* A bin id: exactly TQ_PROTO_ID_BIN bytes, read as the text of their 32
   lowercase hex digits, written into msg->id_hex (so every receiver sees
   the same id as text, whatever form it came in). */
static bool
s_read_bin_id(s_reader_t *r, tq_msg_t *msg)
{
    uint8_t tag = *r->p;
    uint64_t len;
    if (!s_take_be(r, tag == 0xc4 ? 1 : tag == 0xc5 ? 2 : 4, &len))
        return false;
    if (len != TQ_PROTO_ID_BIN)
        return s_fail(r, "a binary task id must be 16 bytes");
    if (!s_need(r, TQ_PROTO_ID_BIN))
        return false;
    /* the 16 steps unrolled (gcc and clang read this pragma): every bin
       id decoded is rendered so */
#pragma GCC unroll 16
    for (int i = 0; i < TQ_PROTO_ID_BIN; i++)
        memcpy(msg->id_hex + 2 * i, s_hex_pairs[r->p[i]], 2);
    msg->id_hex[2 * TQ_PROTO_ID_BIN] = '\0';
    msg->id_bytes = r->p;
    r->p += TQ_PROTO_ID_BIN;
    msg->id.ptr = msg->id_hex;
    msg->id.len = 2 * TQ_PROTO_ID_BIN;
    msg->id_binary = true;
    return true;
}

/* An id: a str of the id rules, or a 16-byte bin (PROTOCOL.md 3). */
static bool
s_read_id(s_reader_t *r, tq_msg_t *msg)
{
    if (!s_need(r, 1))
        return false;
    if (*r->p == 0xc4 || *r->p == 0xc5 || *r->p == 0xc6)
        return s_read_bin_id(r, msg);
    if (!s_read_str(r, &msg->id))
        return false;
    /* a client-made id: checked and parsed at once (id_text_bytes) */
    if (msg->id.len == 2 * TQ_PROTO_ID_BIN &&
        tq_proto_id_parse(msg->id.ptr, msg->id.len, msg->id_text_bytes)) {
        msg->id_text_bin = true;
        return true;
    }
    if (!s_id_ok(msg->id.ptr, msg->id.len))
        return s_fail(r, "invalid task id");
    return true;
}

static uint64_t
s_number_get(const tq_msg_t *msg, const s_number_t *n)
{
    const uint8_t *at = (const uint8_t *)msg + n->offset;
    if (n->size == 4) {
        uint32_t v;
        memcpy(&v, at, sizeof v);
        return v;
    }
    uint64_t v;
    memcpy(&v, at, sizeof v);
    return v;
}

static void
s_number_set(tq_msg_t *msg, const s_number_t *n, uint64_t v)
{
    uint8_t *at = (uint8_t *)msg + n->offset;
    if (n->size == 4) {
        uint32_t v32 = (uint32_t)v; /* within n's range */
        memcpy(at, &v32, sizeof v32);
    } else
        memcpy(at, &v, sizeof v);
}

static bool
s_read_number(s_reader_t *r, const s_number_t *n, tq_msg_t *msg)
{
    uint64_t v;
    if (!s_read_uint(r, &v))
        return false;
    if (v < n->min || v > n->max)
        return s_fail(r, n->what);
    s_number_set(msg, n, v);
    return true;
}

/* Reads a field other than an integer (s_read_number). */
static bool
s_read_field(s_reader_t *r, char code, tq_msg_t *msg)
{
    switch (code) {
    case F_ID:
        return s_read_id(r, msg);
    case F_OPT_ID:
        return s_is_nil(r) || s_read_id(r, msg);
    case F_TASK:
        return s_read_name(r, &msg->task, "invalid task name");
    case F_QUEUE:
        return s_read_name(r, &msg->queue, "invalid queue name");
    case F_OPT_QUEUE:
        return s_is_nil(r) || s_read_name(r, &msg->queue, "invalid queue name");
    case F_HOST:
        return s_read_name(r, &msg->host, "invalid host name");
    case F_ERROR:
        if (s_is_nil(r))
            return true;
        if (!s_read_str(r, &msg->error))
            return false;
        if (msg->error.len > TQ_PROTO_MAX_ERROR)
            return s_fail(r, "error text too long");
        return true;
    case F_WAIT:
        return s_read_bool(r, &msg->wait);
    case F_QUEUES:
        return s_read_names(r, msg->queues, &msg->queue_count);
    case F_TASKS:
        return s_read_names(r, msg->tasks, &msg->task_count);
    default:
        return s_fail(r, "internal: unknown field code");
    }
}

static void
s_clear(tq_msg_t *msg)
{
    /* the name arrays are large and only READY fills them: clear the
       scalar part, and the counts say how much of the arrays is valid */
    memset(msg, 0, offsetof(tq_msg_t, queues));
    msg->id_text_bin = false;
}

int
tq_proto_decode(tq_msg_t *msg, const void *data, size_t size,
                const char **reason)
{
    s_reader_t r = {data, (const uint8_t *)data + size, NULL};
    const char *dummy;
    if (!reason)
        reason = &dummy;
    s_clear(msg);
    if (!data || size == 0) {
        *reason = "empty header";
        return TQ_EPROTO;
    }
    if (size > TQ_PROTO_MAX_HEADER) {
        *reason = "header too large";
        return TQ_EPROTO;
    }
    uint32_t count;
    uint64_t version, command;
    const uint8_t *p = r.p;
    if (size >= 3 && (p[0] & 0xf0) == 0x90 && (p[0] & 0x0f) >= 2 &&
        (size_t)(p[0] & 0x0f) < size && p[1] <= 0x7f && p[2] <= 0x7f) {
        /* the common form, read at once: a fixarray of at least the two
           (within the frame) and two fixints (every header but a READY
           of many names) */
        count = p[0] & 0x0f;
        version = p[1];
        command = p[2];
        r.p += 3;
        if (version != TQ_PROTO_VERSION) {
            *reason = "unsupported protocol version";
            return TQ_EVERSION;
        }
    } else {
        if (!s_read_array(&r, &count) || count < 2 ||
            !s_read_uint(&r, &version)) {
            *reason =
                r.error ? r.error : "header is not [version, command, ...]";
            return TQ_EPROTO;
        }
        if (version != TQ_PROTO_VERSION) {
            *reason = "unsupported protocol version";
            return TQ_EVERSION;
        }
        if (!s_read_uint(&r, &command)) {
            *reason = r.error;
            return TQ_EPROTO;
        }
    }
    const s_plan_t *plan = command <= 0xff ? s_plan((uint8_t)command) : NULL;
    if (!plan || !plan->layout) {
        *reason = "unknown command";
        return TQ_EPROTO;
    }
    msg->command = (uint8_t)command;
    if (count - 2 < plan->required) {
        *reason = "missing fields";
        return TQ_EPROTO;
    }
    uint32_t fields = count - 2 < plan->count ? count - 2 : plan->count;
    for (uint32_t i = 0; i < fields; i++)
        if (plan->numbers[i] ? !s_read_number(&r, plan->numbers[i], msg)
                             : !s_read_field(&r, plan->codes[i], msg)) {
            *reason = r.error;
            return TQ_EPROTO;
        }
    /* trailing fields come from a newer minor revision: skip them, but they
       must still be well-formed */
    for (uint32_t i = 2 + fields; i < count; i++)
        if (!s_skip(&r, TQ_PROTO_MAX_DEPTH)) {
            *reason = r.error;
            return TQ_EPROTO;
        }
    if (r.p != r.end) {
        *reason = "trailing bytes after the header";
        return TQ_EPROTO;
    }
    return TQ_OK;
}

/* s_read_uint, a positive fixint (a state, a code, most attempts) read
   in place. */
static inline bool
s_read_small(s_reader_t *r, uint64_t *v)
{
    if (r->p < r->end && *r->p <= 0x7f) {
        *v = *r->p++;
        return true;
    }
    return s_read_uint(r, v);
}

/* A RESULT as brokers send it, read with the decoder's own readers and
   limits but without the plan walk, the clear of a whole tq_msg_t or the
   parse of the id into bytes (a client reads one a task). What it does
   not take goes to tq_proto_decode, which alone says why a header is
   refused: so a RESULT is taken or dropped exactly as the generic
   decoder would. */
bool
tq_proto_read_result(tq_proto_result_t *out, const void *data, size_t size)
{
    const uint8_t *p = data;
    /* [1, RESULT, id, state, code, error | attempts, newer fields...] as
       a fixarray, the version and command as fixints */
    if (!data || size < 3 || size > TQ_PROTO_MAX_HEADER ||
        (p[0] & 0xf0) != 0x90 || (p[0] & 0x0f) < 6 ||
        p[1] != TQ_PROTO_VERSION || p[2] != TQ_CMD_RESULT)
        return false;
    s_tables();
    s_reader_t r = {p + 3, p + size, NULL};
    uint32_t count = p[0] & 0x0f;
    uint64_t state, code, attempts = 0;
    /* a str id of the id rules, whether or not it is 32 hex digits (a bin
       id goes to the generic decoder, which renders its text) */
    if (!s_read_str(&r, &out->id) || !s_id_ok(out->id.ptr, out->id.len))
        return false;
    if (!s_read_small(&r, &state) || state > TQ_PROTO_MAX_STATE ||
        !s_read_small(&r, &code) || code > TQ_ERROR_COUNT_ - 1)
        return false;
    out->error = (tq_str_t){0};
    if (!s_is_nil(&r) &&
        (!s_read_str(&r, &out->error) || out->error.len > TQ_PROTO_MAX_ERROR))
        return false;
    if (count > 6 && (!s_read_small(&r, &attempts) || attempts > UINT32_MAX))
        return false;
    /* trailing fields of a newer revision: skipped, but well-formed */
    for (uint32_t i = 7; i < count; i++)
        if (!s_skip(&r, TQ_PROTO_MAX_DEPTH))
            return false;
    if (r.p != r.end)
        return false;
    out->state = (uint32_t)state;
    out->code = (uint32_t)code;
    out->attempts = (uint32_t)attempts;
    return true;
}

int
tq_proto_check_payload(const void *data, size_t size, bool array_only,
                       const char **reason)
{
    s_reader_t r = {data, (const uint8_t *)data + size, NULL};
    const char *dummy;
    if (!reason)
        reason = &dummy;
    if (!data || size == 0) {
        *reason = "empty payload";
        return TQ_EPROTO;
    }
    if (array_only && (*r.p & 0xf0) != 0x90 && *r.p != 0xdc && *r.p != 0xdd) {
        *reason = "arguments must be a msgpack array";
        return TQ_EPROTO;
    }
    /* one byte: no arguments, a None result, a small number... (most
       payloads, checked once per message by each process): nothing to
       walk */
    if (size == 1) {
        uint8_t tag = *r.p;
        if (tag == 0x90 ||
            (!array_only &&
             (tag <= 0x80 || tag >= 0xe0 || tag == 0xa0 || tag == 0xc0 ||
              tag == 0xc2 || tag == 0xc3)))
            return TQ_OK;
    }
    if (!s_skip(&r, TQ_PROTO_MAX_DEPTH)) {
        *reason = r.error;
        return TQ_EPROTO;
    }
    if (r.p != r.end) {
        *reason = "trailing bytes after the payload object";
        return TQ_EPROTO;
    }
    return TQ_OK;
}

/* ---- encoding --------------------------------------------------------- */

/* Encoding writes straight into the buffer (tq_writer.h): room for a
   field is reserved once, then its bytes are stored, the same bytes
   msgpack-c's packer makes. */

static void
s_put_uint(tq_writer_t *w, uint64_t v)
{
    if (tq_writer_room(w, 9))
        tq_writer_uint(w, v);
}

static void
s_put_byte(tq_writer_t *w, uint8_t b)
{
    if (tq_writer_room(w, 1))
        tq_writer_byte(w, b);
}

static inline void
s_put_str(tq_writer_t *w, tq_str_t s)
{
    if (tq_writer_room(w, 5 + (size_t)s.len)) {
        tq_writer_str_head(w, s.len);
        tq_writer_bytes(w, s.ptr, s.len);
    }
}

static void
s_put_bin_id(tq_writer_t *w, const uint8_t *bytes)
{
    if (tq_writer_room(w, 2 + TQ_PROTO_ID_BIN)) {
        tq_writer_bin_head(w, TQ_PROTO_ID_BIN);
        tq_writer_bytes(w, bytes, TQ_PROTO_ID_BIN);
    }
}

/* The str of the 32 lowercase hex digits of an id's 16 bytes, rendered
   straight into the buffer (the broker names the task of every RESULT
   so). */
static void
s_put_hex_id(tq_writer_t *w, const uint8_t *bytes)
{
    if (!tq_writer_room(w, 2 + 2 * TQ_PROTO_ID_BIN))
        return;
    tq_writer_str_head(w, 2 * TQ_PROTO_ID_BIN);
#pragma GCC unroll 16
    for (int i = 0; i < TQ_PROTO_ID_BIN; i++)
        tq_writer_bytes(w, s_hex_pairs[bytes[i]], 2);
}

static bool
s_put_names(tq_writer_t *w, const tq_str_t *names, uint32_t count)
{
    if (count > TQ_PROTO_MAX_NAMES)
        return false;
    for (uint32_t i = 0; i < count; i++)
        if (!s_name_ok(names[i].ptr, names[i].len))
            return false;
    if (tq_writer_room(w, 5))
        tq_writer_array_head(w, count);
    for (uint32_t i = 0; i < count; i++)
        s_put_str(w, names[i]);
    return true;
}

/* Writes one field; returns a reason when the value breaks the rules. */
static const char *
s_put_number(tq_writer_t *w, const s_number_t *number, const tq_msg_t *msg)
{
    uint64_t v = s_number_get(msg, number);
    if (v < number->min || v > number->max)
        return number->what;
    s_put_uint(w, v);
    return NULL;
}

/* Writes a field other than an integer (s_put_number). */
static const char *
s_put_field(tq_writer_t *w, char code, const tq_msg_t *msg)
{
    switch (code) {
    case F_ID:
    case F_OPT_ID: {
        if (code == F_OPT_ID && !msg->id.ptr && !msg->id_bytes) {
            s_put_byte(w, 0xc0);
            return NULL;
        }
        if (msg->id_binary && msg->id_bytes) {
            /* the caller's bytes: no render to text and parse back */
            s_put_bin_id(w, msg->id_bytes);
            return NULL;
        }
        if (msg->id_bytes && !msg->id.ptr) {
            /* the text of the caller's bytes, rendered here once: 32
               lowercase hex digits, a valid id without a check */
            s_put_hex_id(w, msg->id_bytes);
            return NULL;
        }
        /* sent as bin if it is 32 lowercase hex digits, else as str */
        uint8_t bin[TQ_PROTO_ID_BIN];
        if (msg->id_binary &&
            tq_proto_id_parse(msg->id.ptr, msg->id.len, bin)) {
            s_put_bin_id(w, bin);
            return NULL;
        }
        if (!s_id_ok(msg->id.ptr, msg->id.len))
            return "invalid task id";
        s_put_str(w, msg->id);
        return NULL;
    }
    case F_OPT_QUEUE:
        if (!msg->queue.ptr) {
            s_put_byte(w, 0xc0);
            return NULL;
        }
        /* fall through */
    case F_TASK:
    case F_QUEUE:
    case F_HOST: {
        tq_str_t s = code == F_TASK   ? msg->task
                     : code == F_HOST ? msg->host
                                      : msg->queue;
        if (!s_name_ok(s.ptr, s.len))
            return code == F_TASK   ? "invalid task name"
                   : code == F_HOST ? "invalid host name"
                                    : "invalid queue name";
        s_put_str(w, s);
        return NULL;
    }
    case F_ERROR:
        if (!msg->error.ptr) {
            s_put_byte(w, 0xc0);
            return NULL;
        }
        if (msg->error.len > TQ_PROTO_MAX_ERROR)
            return "error text too long";
        s_put_str(w, msg->error);
        return NULL;
    case F_WAIT:
        s_put_byte(w, msg->wait ? 0xc3 : 0xc2);
        return NULL;
    case F_QUEUES:
        return s_put_names(w, msg->queues, msg->queue_count)
            ? NULL
            : "invalid queue list";
    case F_TASKS:
        return s_put_names(w, msg->tasks, msg->task_count)
            ? NULL
            : "invalid task list";
    default:
        return "internal: unknown field code";
    }
}

int
tq_proto_encode(const tq_msg_t *msg, msgpack_sbuffer *buf,
                const char **reason)
{
    const char *dummy;
    if (!reason)
        reason = &dummy;
    const s_plan_t *plan = s_plan(msg->command);
    if (!plan->layout) {
        *reason = "unknown command";
        return TQ_EINVAL;
    }
    msgpack_sbuffer_clear(buf);
    tq_writer_t w;
    tq_writer_start(&w, buf);
    if (tq_writer_room(&w, 16)) {
        tq_writer_array_head(&w, 2 + (uint32_t)plan->count);
        tq_writer_uint(&w, TQ_PROTO_VERSION);
        tq_writer_uint(&w, msg->command);
    }
    uint32_t count = plan->count; /* (the writes may alias plan) */
    for (uint32_t i = 0; i < count; i++) {
        const char *why = plan->numbers[i]
            ? s_put_number(&w, plan->numbers[i], msg)
            : s_put_field(&w, plan->codes[i], msg);
        if (why) {
            msgpack_sbuffer_clear(buf);
            *reason = why;
            return TQ_EINVAL;
        }
    }
    if (!tq_writer_finish(&w)) {
        msgpack_sbuffer_clear(buf);
        *reason = "out of memory";
        return TQ_ENOMEM;
    }
    return TQ_OK;
}
