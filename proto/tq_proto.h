/* tq_proto.h - the TQP/1 codec: message structs in, bytes out, and back.
   Pure: no sockets, no allocation when decoding. See PROTOCOL.md. */
#ifndef TQ_PROTO_H
#define TQ_PROTO_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq/tq_error.h"

/* Protocol version carried in every header. To change the protocol: add
   optional trailing fields (old peers ignore them) without a version bump;
   any other change bumps TQ_PROTO_VERSION, and peers refuse other versions
   with ERROR/TQ_EVERSION. */
#define TQ_PROTO_VERSION 1

/* Limits, checked before use. */
#define TQ_PROTO_MAX_ID 64          /* task id bytes */
/* bytes of an id sent as bin: its text is their 32 lowercase hex digits */
#define TQ_PROTO_ID_BIN 16
#define TQ_PROTO_MAX_NAME 255       /* task, queue and host name bytes */
#define TQ_PROTO_MAX_ERROR 4096     /* error text bytes */
#define TQ_PROTO_MAX_NAMES 256      /* tasks or queues in one READY */
#define TQ_PROTO_MAX_HEADER 131072  /* header frame bytes */
#define TQ_PROTO_MAX_DEPTH 32       /* nesting of a payload object */
#define TQ_PROTO_MAX_RETRIES 1000   /* SUBMIT retries */
#define TQ_PROTO_MAX_STATE 15       /* states a receiver accepts */
#define TQ_PROTO_MAX_LIMIT 10000    /* TASKS: entries in one reply */
/* TASKS states: one bit per tq_state_t; 0 asks for the unfinished ones. */
#define TQ_STATE_BIT(state) (1u << (state))
#define TQ_STATES_ALL ((1u << TQ_STATE_COUNT_) - 1)

/* Commands. Client <-> broker on the client endpoint: */
#define TQ_CMD_SUBMIT 0x01     /* c->b id task queue priority time_limit_ms + args */
#define TQ_CMD_SUBMITTED 0x02  /* b->c id */
#define TQ_CMD_GET 0x03        /* c->b id wait */
#define TQ_CMD_RESULT 0x04     /* b->c id state code error + value */
#define TQ_CMD_STATE 0x05      /* b->c id state */
#define TQ_CMD_UNKNOWN 0x06    /* b->c id */
#define TQ_CMD_STATUS 0x07     /* c->b */
#define TQ_CMD_STATUS_REPLY 0x08 /* b->c + body (msgpack map) */
/* Both endpoints, both directions: */
#define TQ_CMD_PING 0x09       /* liveness probe, answered by PONG */
#define TQ_CMD_PONG 0x0A
#define TQ_CMD_ERROR 0x0B      /* b->any code reason id */
/* Client -> broker, operator requests: */
#define TQ_CMD_CANCEL 0x0C     /* c->b id: answered RESULT or UNKNOWN */
#define TQ_CMD_RETRY 0x0D      /* c->b id: a dead letter runs again;
                                  answered SUBMITTED, UNKNOWN or ERROR */
#define TQ_CMD_PURGE 0x0E      /* c->b queue | id?: drop its waiting tasks;
                                  answered REPLY {queue, purged} */
#define TQ_CMD_FAILED 0x0F     /* c->b | id?: answered REPLY {failed: [...]} */
#define TQ_CMD_REPLY 0x10      /* b->c | id? (the request's) + body (map) */
/* Client <-> broker, data queues (multiprocessing.Queue on the broker): */
#define TQ_CMD_QPUT 0x11       /* c->b id queue maxsize + item: answered
                                  REPLY {size} or ERROR TQ_EFULL */
#define TQ_CMD_QGET 0x12       /* c->b id queue time_limit_ms (the wait):
                                  answered QITEM or ERROR TQ_EEMPTY */
#define TQ_CMD_QITEM 0x13      /* b->c id + item */
#define TQ_CMD_QSIZE 0x14      /* c->b id queue: REPLY {size, maxsize} */
/* Client -> broker, looking inside the queue (PROTOCOL.md 5.7): */
#define TQ_CMD_TASKS 0x15      /* c->b id queue? states limit: answered
                                  REPLY id {tasks: [...], total} */
#define TQ_CMD_INSPECT 0x16    /* c->b id (the task's): answered REPLY id
                                  {the task in full} or UNKNOWN id */
/* Client <-> broker both ways, broker <-> child both ways: several
   messages in one (PROTOCOL.md 5.9, proto/tq_batch.h), sent only to a
   peer that announced TQ_FEATURE_BATCH. */
#define TQ_CMD_BATCH 0x17      /* c,w<->b count + the sub-messages */
#define TQ_BATCH_MAX 1024      /* sub-messages in one BATCH */
/* Worker <-> broker on the worker endpoint: */
#define TQ_CMD_READY 0x20      /* w->b host pid ppid credit queues tasks */
#define TQ_CMD_TASK 0x21       /* b->w id task attempt time_limit_ms + args */
#define TQ_CMD_DONE 0x22       /* w->b id attempt state code error + value */
#define TQ_CMD_DISCONNECT 0x23 /* w->b, b->w */
#define TQ_CMD_HEARTBEAT 0x24  /* both ways: host pid | session */
#define TQ_CMD_LOST 0x25       /* w->b (supervisor): pid code error | id?
                                  attempts (the task it ran): a child
                                  died; its tasks are queued again */
#define TQ_CMD_KILL 0x26       /* b->w (supervisor): pid id: stop the child
                                  pid running task id (cancelled) */
#define TQ_CMD_REVOKE 0x27     /* b->w (child) id attempt: give the task
                                  back if it has not started */
#define TQ_CMD_RETURNED 0x28   /* w->b (child) id attempt: given back
                                  unstarted after REVOKE */

/* Who sends a command (tq_proto_command_t.from). */
#define TQ_FROM_CLIENT 0x01     /* a client (library, CLI) */
#define TQ_FROM_BROKER 0x02
#define TQ_FROM_CHILD 0x04      /* a worker child */
#define TQ_FROM_SUPERVISOR 0x08 /* a worker host's supervisor */
#define TQ_FROM_ANY 0x0F
/* Where a command travels (tq_proto_command_t.endpoint). */
#define TQ_ENDPOINT_CLIENTS 0x1
#define TQ_ENDPOINT_WORKERS 0x2

/* The protocol model: one entry per command, the table that the codec,
   the broker's admission of commands and the PROTOCOL.md test all read. */
typedef struct {
    uint8_t command;    /* TQ_CMD_* */
    const char *name;   /* "SUBMIT" */
    const char *fields; /* field codes in wire order; after '|' optional
                           (tq_proto_field_name gives each one's name) */
    bool payload;       /* a payload frame follows the header */
    uint8_t from;       /* TQ_FROM_*: who may send it */
    uint8_t endpoint;   /* TQ_ENDPOINT_*: where it travels */
} tq_proto_command_t;

/* The model of a command; NULL when unknown. */
const tq_proto_command_t *tq_proto_command(uint8_t command);

/* Every command of the model, *count of them. */
const tq_proto_command_t *tq_proto_commands(size_t *count);

/* The name PROTOCOL.md gives a field code ("id", "task", ...), NULL for
   an unknown code. */
const char *tq_proto_field_name(char code);

/* READY features: what a child does beyond TQP/1 as first written. A child
   that does not announce one is never sent the messages it needs. */
#define TQ_FEATURE_RETURNS 0x1 /* answers REVOKE with RETURNED */
/* reads an id sent as a 16-byte bin (TQ_PROTO_ID_BIN), and answers DONE and
   RETURNED with the id in the form it got it (PROTOCOL.md 3) */
#define TQ_FEATURE_BINARY_IDS 0x2
/* SUBMIT features: what a client does beyond TQP/1 as first written.
   TQ_FEATURE_FOLD: it takes the task's RESULT as the acknowledgement of
   its SUBMIT, so a broker without a store may hold SUBMITTED back
   (PROTOCOL.md 5.1). */
#define TQ_FEATURE_FOLD 0x2
/* TQ_FEATURE_BATCH, in SUBMIT's features: the client takes BATCH messages
   from the broker; in READY's features: the child does; in PONG's
   features: the broker takes BATCH messages from clients (clients
   endpoint) or from children (workers endpoint) (PROTOCOL.md 5.9). */
#define TQ_FEATURE_BATCH 0x4

/* A string inside a decoded frame: not NUL-terminated, borrowed from the
   decoded buffer. */
typedef struct {
    const char *ptr; /* NULL when absent */
    uint32_t len;    /* bytes */
} tq_str_t;

/* One decoded or to-be-encoded header. Only the fields of `command` are
   meaningful (see the table in PROTOCOL.md); decode zeroes the rest. */
typedef struct {
    uint8_t command;        /* TQ_CMD_* */
    tq_str_t id;            /* task id, as text */
    bool id_binary;         /* decode: the id came as a 16-byte bin;
                               encode: send it so if it is 32 lowercase
                               hex digits (else as str) */
    char id_hex[2 * TQ_PROTO_ID_BIN + 1]; /* decode: the text of a bin
                               id, where id points (copy the id, not the
                               struct, to keep it) */
    const uint8_t *id_bytes; /* decode: a bin id's 16 bytes, borrowed
                               from the buffer (NULL for a str id);
                               encode: with id_binary, the id's 16 bytes,
                               sent as they are (id is then not read);
                               without id_binary and with id.ptr NULL,
                               sent as the str of their 32 lowercase hex
                               digits, rendered by the encoder and not
                               checked (an id made from its bytes) */
    tq_str_t task;          /* task name */
    tq_str_t queue;         /* queue name */
    tq_str_t error;         /* error text (RESULT, DONE, ERROR) */
    tq_str_t host;          /* READY, HEARTBEAT: host name */
    uint32_t priority;      /* SUBMIT: 0..9 */
    uint32_t time_limit_ms; /* SUBMIT, TASK: 0 = worker default */
    uint32_t attempt;       /* TASK, DONE: 1..; RESULT: attempts made */
    uint32_t state;         /* RESULT, STATE, DONE: tq_state_t */
    uint32_t code;          /* RESULT, DONE, ERROR, LOST: tq_err_t */
    uint32_t credit;        /* READY: tasks the worker may hold */
    uint64_t pid;           /* READY, HEARTBEAT, LOST: process id */
    uint64_t ppid;          /* READY: its supervisor's process id */
    bool wait;              /* GET: answer only when final */
    uint32_t retries;       /* SUBMIT: reruns after a task failure */
    uint32_t backoff_ms;    /* SUBMIT: first retry delay, doubling */
    uint32_t delay_ms;      /* SUBMIT: countdown before the first run */
    uint64_t rss_kb;        /* DONE: the child's peak RSS, KiB */
    uint32_t maxsize;       /* QPUT: the data queue's bound, 0: none */
    uint32_t features;      /* READY, SUBMIT, PONG: TQ_FEATURE_* */
    uint64_t session;       /* HEARTBEAT: the broker's number for the
                               host's session (section 10) */
    uint64_t dropped;       /* PONG: replies the broker dropped for this
                               client (it did not read them in time) */
    uint32_t states;        /* TASKS: TQ_STATE_BIT()s, 0: unfinished */
    uint32_t limit;         /* TASKS: most entries, 1..TQ_PROTO_MAX_LIMIT */
    uint32_t count;         /* BATCH: sub-messages, 1..TQ_BATCH_MAX */
    uint32_t queue_count;   /* READY */
    uint32_t task_count;    /* READY */
    tq_str_t queues[TQ_PROTO_MAX_NAMES]; /* READY, queue_count used */
    tq_str_t tasks[TQ_PROTO_MAX_NAMES];  /* READY, task_count used */
    bool id_text_bin;       /* decode: the id came as a str of 32
                               lowercase hex digits, whose 16 bytes are in
                               id_text_bytes (parsed as it was checked:
                               a receiver need not parse it again) */
    uint8_t id_text_bytes[TQ_PROTO_ID_BIN];
} tq_msg_t;

/* Does the command carry a payload frame after its header? (SUBMIT, TASK:
   args; RESULT, DONE: value; STATUS_REPLY, REPLY: body; QPUT, QITEM:
   item.) */
bool tq_proto_has_payload(uint8_t command);

/* The command's name ("SUBMIT", ...), "?" when unknown. */
const char *tq_proto_command_name(uint8_t command);

/* Decodes a header frame into msg, whose strings then point into data
   (an id that came as a 16-byte bin: into msg->id_hex, as text).
   Returns TQ_OK, TQ_EVERSION (well-formed but another version) or
   TQ_EPROTO; on error *reason (if non-NULL) gets a static description. */
int tq_proto_decode(tq_msg_t *msg, const void *data, size_t size,
                    const char **reason);

/* Encodes msg's header into buf, which is cleared first (its memory is
   reused). Returns TQ_OK, or TQ_EINVAL (with *reason) if a field breaks
   the protocol's rules, or TQ_ENOMEM if buf could not grow (buf is then
   left empty). */
int tq_proto_encode(const tq_msg_t *msg, msgpack_sbuffer *buf,
                    const char **reason);

/* Checks that data holds exactly one msgpack object within the limits
   (depth TQ_PROTO_MAX_DEPTH, lengths within size) without allocating.
   array_only: the object must be an array (task arguments). TQ_OK or
   TQ_EPROTO with *reason. */
int tq_proto_check_payload(const void *data, size_t size, bool array_only,
                           const char **reason);

/* Name rules: ids 1..64 of [0-9A-Za-z_.-]; task, queue and host names
   1..255 of [0-9A-Za-z_.:@/-]. */
bool tq_proto_valid_id(const char *ptr, size_t len);
bool tq_proto_valid_name(const char *ptr, size_t len);

/* An id of exactly 32 lowercase hex digits as its TQ_PROTO_ID_BIN bytes
   (the bin form of PROTOCOL.md 3): true with bin written; false for any
   other id (bin then undefined). */
bool tq_proto_id_parse(const char *ptr, size_t len,
                       uint8_t bin[TQ_PROTO_ID_BIN]);

/* Makes a tq_str_t of a C string (NULL stays absent). */
tq_str_t tq_str(const char *s);

/* Copies s into dst (size bytes, NUL-terminated, truncated if needed). */
void tq_str_copy(char *dst, size_t size, tq_str_t s);

/* True if s equals the C string c. */
bool tq_str_eq(tq_str_t s, const char *c);

/* The fields of a RESULT header a client reads (tq_proto_read_result). */
typedef struct {
    tq_str_t id; /* as text, pointing into the header */
    tq_str_t error; /* ptr NULL when nil */
    uint32_t state; /* tq_state_t, up to TQ_PROTO_MAX_STATE */
    uint32_t code; /* tq_err_t */
    uint32_t attempts; /* attempts made; 0 when the sender left it out */
} tq_proto_result_t;

/* Reads a RESULT header in one pass, without the generic decoder (a
   client reads one a task): true when data is a RESULT with a str id
   that tq_proto_decode would take, out then holding the same id, state,
   code, error and attempt; false for anything else (another command, a
   bin id, a malformed header, a form the broker does not send), which
   the caller hands to tq_proto_decode to judge. */
bool tq_proto_read_result(tq_proto_result_t *out, const void *data,
                          size_t size);

#endif
