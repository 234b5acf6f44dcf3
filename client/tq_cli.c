/* tq_cli.c - the tq command: main() with its verb table, the shared JSON
   helpers (jansson), and the submit and get verbs. */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq/tq_client.h"
#include "tq_cli.h"
#include "tq_client_internal.h"
#include "tq_client_unserved.h"
#include "tq_endpoint.h"
#include "tq_env.h"
#include "tq_inspect.h"
#include "tq_keygen.h"
#include "tq_log.h"

static const char *s_usage_main =
    "usage: tq [--broker EP] COMMAND [OPTIONS]\n"
    "\n"
    "tasks:\n"
    "  submit TASK [ARG...]   submit a task; prints its id, or its result "
    "with --wait\n"
    "  get ID                 fetch a task's result by id\n"
    "  wait ID...             wait for tasks and print their results\n"
    "  cancel ID              cancel a waiting or running task\n"
    "  map TASK               one task per stdin line of JSON arguments,\n"
    "                         results as JSON lines in input order\n"
    "  exec -- CMD ARG... {}  run a command on worker hosts per stdin line\n"
    "                         (workers started with --allow-exec)\n"
    "operators:\n"
    "  status                 queues, worker hosts, unserved tasks "
    "(--watch)\n"
    "  workers                every worker process\n"
    "  tasks                  waiting and running tasks with their "
    "arguments\n"
    "  inspect ID             one task in full: attempts, worker, timings\n"
    "  failed                 dead letters: tasks that failed for good\n"
    "  retry ID               run a dead letter again\n"
    "  purge QUEUE            drop a queue's waiting tasks\n"
    "  keygen NAME [DIR]      make a CURVE certificate pair\n"
    "\n"
    "  --broker EP      the broker's client endpoint (default: $TQ_BROKER, "
    "else\n"
    "                   " TQ_DEFAULT_CLIENT_ENDPOINT "); several brokers as "
    "EP,EP,...:\n"
    "                   tq talks to one and moves to the next when it is a "
    "standby\n"
    "                   or silent\n"
    "  --log-level L    error (default), warning, info or debug: the "
    "library's\n"
    "                   log lines on stderr ($TQ_LOG_LEVEL)\n"
    "  --log-json       log lines as JSON objects ($TQ_LOG_JSON)\n"
    "  --version        print the version\n"
    "  --help           this text; tq COMMAND --help for a command's "
    "options and\n"
    "                   an example; every command takes --json for "
    "scripts\n"
    "Options take their value as --opt VALUE or --opt=VALUE. stdout "
    "carries\n"
    "results only; errors and logs go to stderr.\n"
    "\n"
    "examples:\n"
    "  tq submit tq.echo 1 '\"two\"' --wait\n"
    "  seq 100 | tq map tq.echo\n"
    "  ls *.log | tq exec -j 8 -- gzip -k {}\n"
    "  tq status --watch\n"
    "\n"
    "exit codes: 0 ok, 1 a task failed (error on stderr), 2 usage,\n"
    "            3 timeout or not ready, 4 broker unreachable, 5 unknown "
    "task id\n";

const char *const tq_cli_usage_submit =
    "usage: tq [--broker EP] submit TASK [ARG...] [--queue Q] [--priority "
    "P]\n"
    "          [--time-limit SEC] [--retries N] [--countdown SEC | --eta "
    "TIME]\n"
    "          [--wait] [--timeout SEC] [--json]\n"
    "\n"
    "Each ARG that parses as JSON (numbers, \"quoted strings\", objects, "
    "arrays,\n"
    "true, false, null) is that JSON value, anything else is a plain "
    "string;\n"
    "put ARGs starting with -- after a lone --. JSON integers become int64,\n"
    "reals double, objects msgpack maps. An ARG that starts with {, [ or \"\n"
    "but is not valid JSON is an error (exit 2), never sent as a string.\n"
    "\n"
    "  --queue Q         queue (default \"" TQ_DEFAULT_QUEUE "\")\n"
    "  --priority P      0..9, higher runs first (default 0)\n"
    "  --time-limit SEC  hard time limit (default: the worker's)\n"
    "  --retries N       reruns after a failure (default 0)\n"
    "  --countdown SEC   run no sooner than SEC from now\n"
    "  --eta TIME        run no sooner than TIME: 2026-12-01T15:30:00 "
    "(local;\n"
    "                    Z or +HH:MM for a zone), 15:30[:00] (the next), "
    "@EPOCH\n"
    "  --wait            wait for the result and print it as JSON; msgpack\n"
    "                    binary prints as {\"$bin\": \"<hex>\"}, extension "
    "types as\n"
    "                    {\"$ext\": TYPE, \"data\": \"<hex>\"}, map keys "
    "that are not\n"
    "                    strings as their JSON text\n"
    "  --timeout SEC     give up waiting after SEC (exit 3); default: wait\n"
    "                    as long as the broker is alive\n"
    "  --json            print {\"id\": ...} (with --wait: {\"id\", "
    "\"state\", \"code\",\n"
    "                    \"value\" or \"error\"}) instead\n"
    "\n"
    "Without --wait prints the task id once the broker has accepted it.\n"
    "With --wait, a task that no connected worker provides is said once on\n"
    "stderr (it waits for one; --timeout bounds the wait).\n"
    "A failed task prints \"error: <code>: <text>\" on stderr, exit 1.\n"
    "\n"
    "example:\n"
    "  tq submit tq.echo 1 '\"two\"' '[3]' --wait      # [1,\"two\",[3]]\n"
    "  id=$(tq submit tq.sleep 5 --priority 9)\n";

const char *const tq_cli_usage_get =
    "usage: tq [--broker EP] get ID [--wait] [--timeout SEC] [--json]\n"
    "\n"
    "Prints the task's result as JSON (as tq submit --wait) if it is final.\n"
    "Without --wait, a task not final yet prints its state (PENDING, "
    "RUNNING,\n"
    "RETRY) and exits 3. With --wait, waits for the result (up to "
    "--timeout).\n"
    "An id the broker does not know (or whose result expired) exits 5.\n"
    "--json prints {\"id\", \"state\", \"code\", \"value\" or \"error\"}.\n"
    "\n"
    "example:\n"
    "  tq get 3f2a...e1 --wait --timeout 10\n";


const char *
tq_cli_code_name(int code)
{
    return tq_error_name(code); /* one table: proto/tq_error.c */
}

/* True for the final codes of a task that the broker accepted and ran. */
static bool
s_ran(int code)
{
    return code == TQ_OK || code == TQ_ETASK || code == TQ_ELOST ||
           code == TQ_ETIMELIMIT || code == TQ_ECANCELLED ||
           code == TQ_ENOTASK;
}

int
tq_cli_exit_code(int code)
{
    switch (code) {
    case TQ_OK:
        return TQ_CLI_EXIT_OK;
    case TQ_ETIMEDOUT:
        return TQ_CLI_EXIT_TIMEOUT;
    case TQ_EUNREACHABLE:
        return TQ_CLI_EXIT_UNREACHABLE;
    case TQ_EUNKNOWN:
        return TQ_CLI_EXIT_UNKNOWN;
    default:
        return TQ_CLI_EXIT_TASK;
    }
}

int
tq_cli_usage_error(const char *usage, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    fprintf(stderr, "tq: ");
    vfprintf(stderr, format, ap);
    va_end(ap);
    /* the synopsis, not 30 lines: the whole text is one --help away */
    const char *end = strstr(usage, "\n\n");
    int len = end ? (int)(end - usage) : (int)strlen(usage);
    fprintf(stderr, "\n%.*s\n", len, usage);
    const char *verb = strstr(usage, "] ");
    if (verb && verb < usage + len && strncmp(usage, "usage: tq ", 10) == 0)
        fprintf(stderr, "(tq %.*s --help for every option and an example)\n",
                (int)strcspn(verb + 2, " \n"), verb + 2);
    else
        fprintf(stderr, "(tq --help for more)\n");
    return TQ_CLI_EXIT_USAGE;
}

int
tq_cli_option_error(const char *usage, int opt, char **gargv)
{
    const char *word = optind > 0 ? gargv[optind - 1] : "?";
    if (opt == ':')
        return tq_cli_usage_error(usage, "%s: missing its value", word);
    if (optopt > 0 && optopt < 128 && strncmp(word, "--", 2) != 0)
        return tq_cli_usage_error(usage, "-%c: unknown option", optopt);
    return tq_cli_usage_error(usage, "%s: unknown option", word);
}

int
tq_cli_unknown_id(const char *id)
{
    return tq_cli_error(TQ_EUNKNOWN, "%s: unknown task id (never submitted, "
                                     "or its result expired)",
                        id);
}

int
tq_cli_error(int code, const char *format, ...)
{
    fprintf(stderr, "error: %s: ", tq_cli_code_name(code));
    if (format) {
        va_list ap;
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
    } else
        fputs(tq_strerror(code), stderr);
    fputc('\n', stderr);
    return tq_cli_exit_code(code);
}

int
tq_cli_parse_seconds(const char *text)
{
    char *end;
    errno = 0;
    double sec = strtod(text, &end);
    if (errno || end == text || *end || !(sec >= 0) || sec > INT32_MAX / 1000)
        return -1;
    return (int)llround(sec * 1000.0);
}

bool
tq_cli_parse_long(const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* ---- JSON -> msgpack ---------------------------------------------------- */

void
tq_cli_pack_json(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        msgpack_pack_map(pk, json_object_size(v));
        const char *key;
        json_t *item;
        json_object_foreach((json_t *)v, key, item)
        {
            size_t len = strlen(key);
            msgpack_pack_str_with_body(pk, key, len);
            tq_cli_pack_json(pk, item);
        }
        break;
    }
    case JSON_ARRAY: {
        msgpack_pack_array(pk, json_array_size(v));
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) tq_cli_pack_json(pk, item);
        break;
    }
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(v),
                                   json_string_length(v));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(v));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(v));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        break;
    }
}

void
tq_cli_pack_arg(msgpack_packer *pk, const char *text, size_t len)
{
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    if (v) {
        tq_cli_pack_json(pk, v);
        json_decref(v);
    } else
        msgpack_pack_str_with_body(pk, text, len);
}

bool
tq_cli_check_arg(const char *text, size_t len, char *why, size_t size)
{
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' ||
                       text[i] == '\n' || text[i] == '\r'))
        i++;
    if (i == len || (text[i] != '{' && text[i] != '[' && text[i] != '"'))
        return true;
    json_error_t error;
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, &error);
    if (v) {
        json_decref(v);
        return true;
    }
    snprintf(why, size, "malformed JSON at column %d: %s", error.column,
             error.text);
    return false;
}

long long
tq_cli_parse_eta(const char *text)
{
    time_t now = time(NULL);
    time_t when;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end;
    if (text[0] == '@') {
        char *stop;
        errno = 0;
        double epoch = strtod(text + 1, &stop);
        if (errno || stop == text + 1 || *stop || !(epoch >= 0))
            return -1;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double left = epoch - (ts.tv_sec + ts.tv_nsec / 1e9);
        return left <= 0 ? 0 : (long long)(left * 1000.0);
    }
    if ((end = strptime(text, "%Y-%m-%dT%H:%M", &tm)) ||
        (end = strptime(text, "%Y-%m-%d %H:%M", &tm))) {
        if (*end == ':') {
            const char *sec = strptime(end, ":%S", &tm);
            if (!sec)
                return -1;
            end = sec;
        }
        long offset = 0; /* seconds east of UTC, when given */
        bool zoned = false;
        if (*end == 'Z') {
            zoned = true;
            end++;
        } else if (*end == '+' || *end == '-') {
            int hh, mm;
            if (sscanf(end + 1, "%2d:%2d", &hh, &mm) != 2 || hh > 23 ||
                mm > 59)
                return -1;
            offset = (hh * 3600L + mm * 60L) * (*end == '-' ? -1 : 1);
            zoned = true;
            end += 6;
        }
        if (*end)
            return -1;
        if (zoned)
            when = timegm(&tm) - offset;
        else {
            tm.tm_isdst = -1;
            when = mktime(&tm);
        }
    } else if ((end = strptime(text, "%H:%M", &tm))) {
        int hour = tm.tm_hour, min = tm.tm_min, sec = 0;
        if (*end == ':') {
            const char *rest = strptime(end, ":%S", &tm);
            if (!rest)
                return -1;
            end = rest;
            sec = tm.tm_sec;
        }
        if (*end)
            return -1;
        localtime_r(&now, &tm);
        tm.tm_hour = hour, tm.tm_min = min, tm.tm_sec = sec;
        tm.tm_isdst = -1;
        when = mktime(&tm);
        if (when < now) { /* the next such time: tomorrow */
            tm.tm_mday++;
            tm.tm_isdst = -1;
            when = mktime(&tm);
        }
    } else
        return -1;
    if (when == (time_t)-1)
        return -1;
    return when <= now ? 0 : (long long)(when - now) * 1000;
}

bool
tq_cli_provided(const json_t *status, const char *task, const char *queue)
{
    size_t i, k;
    json_t *worker, *name;
    json_array_foreach(json_object_get(status, "workers"), i, worker)
    {
        bool has_task = false, has_queue = false;
        json_array_foreach(json_object_get(worker, "tasks"), k, name)
            has_task |= json_is_string(name) &&
                        streq(json_string_value(name), task);
        json_t *queues = json_object_get(worker, "queues");
        has_queue = !json_array_size(queues);
        json_array_foreach(queues, k, name)
            has_queue |= json_is_string(name) &&
                         streq(json_string_value(name), queue);
        if (has_task && has_queue)
            return true;
    }
    return false;
}

/* ---- msgpack -> JSON ---------------------------------------------------- */

static json_t *
s_hex(const char *data, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    char *text = malloc(size * 2 + 1);
    if (!text)
        return json_null();
    for (size_t i = 0; i < size; i++) {
        text[2 * i] = digits[(unsigned char)data[i] >> 4];
        text[2 * i + 1] = digits[(unsigned char)data[i] & 15];
    }
    text[size * 2] = 0;
    json_t *s = json_stringn(text, size * 2);
    free(text);
    return s;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if none. */
static size_t
s_utf8_seq(const unsigned char *p, size_t n)
{
    if (p[0] < 0x80)
        return 1; /* NUL included: jansson writes it as \u0000 */
    size_t len;
    uint32_t cp;
    if ((p[0] & 0xE0) == 0xC0)
        len = 2, cp = p[0] & 0x1F;
    else if ((p[0] & 0xF0) == 0xE0)
        len = 3, cp = p[0] & 0x0F;
    else if ((p[0] & 0xF8) == 0xF0)
        len = 4, cp = p[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* A JSON string of msgpack str bytes: the common valid case as is; a
   command's binary output gets U+FFFD for each bad byte, since jansson
   refuses to encode invalid UTF-8 and the whole line would be lost. */
static json_t *
s_string(const char *ptr, size_t size)
{
    const unsigned char *p = (const unsigned char *)ptr;
    size_t i = 0;
    while (i < size) {
        size_t n = s_utf8_seq(p + i, size - i);
        if (!n)
            break;
        i += n;
    }
    if (i == size)
        return json_stringn_nocheck(ptr, size);
    char *fixed = malloc(size * 3 + 1);
    if (!fixed)
        return json_null();
    size_t used = 0;
    for (i = 0; i < size;) {
        size_t n = s_utf8_seq(p + i, size - i);
        if (n) {
            memcpy(fixed + used, p + i, n);
            used += n;
            i += n;
        } else {
            memcpy(fixed + used, "\xEF\xBF\xBD", 3);
            used += 3;
            i++;
        }
    }
    json_t *s = json_stringn_nocheck(fixed, used);
    free(fixed);
    return s;
}

/* Longest text of a non-string map key, bytes. */
#define S_MAX_KEY_TEXT 256

static char *
s_key_text(const msgpack_object *key)
{
    if (key->type == MSGPACK_OBJECT_STR) {
        json_t *j = s_string(key->via.str.ptr, key->via.str.size);
        char *text = json_is_string(j) ? strdup(json_string_value(j)) : NULL;
        json_decref(j);
        return text;
    }
    /* A key that is not a string is shown as its JSON text, capped: keys
       nested in keys are escaped again at every level, and without a cap a
       hostile value of a few dozen bytes would print as gigabytes (found
       by fuzz/fuzz_json.c). */
    json_t *j = tq_cli_to_json(key);
    char *text = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(j);
    if (text && strlen(text) > S_MAX_KEY_TEXT)
        memcpy(text + S_MAX_KEY_TEXT - 3, "...", 4);
    return text;
}

json_t *
tq_cli_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)LLONG_MAX)
            return json_real((double)o->via.u64);
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        /* JSON has no NaN or infinity */
        return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR:
        return s_string(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        json_t *obj = json_object();
        json_object_set_new(obj, "$bin",
                            s_hex(o->via.bin.ptr, o->via.bin.size));
        return obj;
    }
    case MSGPACK_OBJECT_EXT: {
        json_t *obj = json_object();
        json_object_set_new(obj, "$ext", json_integer(o->via.ext.type));
        json_object_set_new(obj, "data",
                            s_hex(o->via.ext.ptr, o->via.ext.size));
        return obj;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *arr = json_array();
        for (uint32_t i = 0; i < o->via.array.size; i++)
            json_array_append_new(arr, tq_cli_to_json(&o->via.array.ptr[i]));
        return arr;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *obj = json_object();
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            char *key = s_key_text(&o->via.map.ptr[i].key);
            if (key)
                json_object_set_new(obj, key,
                                    tq_cli_to_json(&o->via.map.ptr[i].val));
            free(key);
        }
        return obj;
    }
    }
    return json_null();
}

/* Digits needed so every real in v prints back to the same double: the
   shortest of 15..17, so 0.1 prints as 0.1 and nothing is rounded off. */
static int
s_real_precision(const json_t *v)
{
    int best = 1;
    if (json_is_real(v)) {
        double d = json_real_value(v);
        char text[64];
        for (best = 15; best < 17; best++) {
            snprintf(text, sizeof text, "%.*g", best, d);
            if (strtod(text, NULL) == d)
                break;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            int p = s_real_precision(item);
            best = p > best ? p : best;
        }
    } else if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach((json_t *)v, key, item)
        {
            int p = s_real_precision(item);
            best = p > best ? p : best;
        }
    }
    return best;
}

char *
tq_cli_dump_json(const json_t *v, bool indent)
{
    size_t flags = JSON_ENCODE_ANY | JSON_PRESERVE_ORDER |
                   JSON_REAL_PRECISION(s_real_precision(v));
    flags |= indent ? JSON_INDENT(2) : JSON_COMPACT;
    return json_dumps(v, flags);
}

void
tq_cli_print_json(const json_t *v, bool indent)
{
    char *text = tq_cli_dump_json(v, indent);
    if (text)
        puts(text);
    free(text);
}

json_t *
tq_cli_result_json(tq_result_t *r, int code)
{
    json_t *obj = json_object();
    json_object_set_new(obj, "id", json_string(tq_result_id(r)));
    /* an id the broker does not know has no state: not a FAILURE */
    json_object_set_new(obj, "state",
                        json_string(code == TQ_EUNKNOWN
                                        ? "UNKNOWN"
                                        : tq_state_name(tq_result_state(r))));
    json_object_set_new(obj, "code", json_string(tq_cli_code_name(code)));
    const msgpack_object *value = code == TQ_OK ? tq_result_value(r) : NULL;
    if (value)
        json_object_set_new(obj, "value", tq_cli_to_json(value));
    else {
        const char *text =
            code == TQ_ETIMEDOUT   ? "the wait timed out"
            : code == TQ_EUNKNOWN  ? "unknown task id (never submitted, or "
                                     "its result expired)"
            : code == TQ_OK        ? "the result value is not valid msgpack"
                                   : tq_result_error(r);
        json_object_set_new(obj, "error",
                            json_string(*text ? text : tq_strerror(code)));
    }
    return obj;
}

/* After a STATUS no broker answered: true if the broker (every one of a
   list) is a standby, which the client library passes by (PROTOCOL.md
   section 12); its ERROR text goes to detail. A one-off INSPECT asks. */
static bool
s_standby(tq_client_t *client, char *detail, size_t size)
{
    tq_buf_t body = {0};
    int rc = tq_inspect_task(tq_client_endpoint(client), "tq-status-probe",
                             &body, 2000, detail, size);
    tq_buf_free(&body);
    return rc == TQ_ESTANDBY;
}

int
tq_cli_fetch_status(tq_client_t *client, int timeout_ms, json_t **status)
{
    *status = NULL;
    tq_buf_t body;
    int code = tq_client_status(client, &body, timeout_ms);
    if (code != TQ_OK) {
        char detail[512] = "";
        if (code == TQ_EUNREACHABLE && s_standby(client, detail, sizeof detail))
            code = TQ_ESTANDBY;
        if (code == TQ_EUNREACHABLE || code == TQ_ETIMEDOUT)
            return tq_cli_error(code,
                                "no status from the broker at %s (is it "
                                "running there? a broker with CURVE stays "
                                "silent to a client without "
                                "TQ_CURVE_SERVER_KEY and TQ_CURVE_CERT)",
                                tq_client_endpoint(client));
        if (code == TQ_ESTATE)
            /* the workers endpoint refuses client requests */
            return tq_cli_error(code,
                                "%s refused a client request: is it the "
                                "broker's workers endpoint? tq wants the "
                                "clients endpoint (tq-broker prints both; "
                                "default port 5555)",
                                tq_client_endpoint(client));
        if (code == TQ_ESTANDBY)
            return tq_cli_error(code,
                                "the broker at %s is a standby (role: "
                                "standby): %s",
                                tq_client_endpoint(client),
                                detail[0] ? detail
                                          : "another broker on its "
                                            "PostgreSQL store holds the "
                                            "lease and is active");
        return tq_cli_error(code, NULL);
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int rc = TQ_CLI_EXIT_OK;
    if (msgpack_unpack_next(&up, body.data, body.size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP)
        rc = tq_cli_error(TQ_EPROTO, "the status body is not a msgpack map");
    else
        *status = tq_cli_to_json(&up.data);
    msgpack_unpacked_destroy(&up);
    tq_buf_free(&body);
    return rc;
}

long
tq_cli_task_capacity(const json_t *status, const char *task, long *children)
{
    long credit = 0, count = 0;
    size_t i, k;
    json_t *worker, *name;
    json_array_foreach(json_object_get(status, "workers"), i, worker)
    {
        bool provides = !task;
        json_array_foreach(json_object_get(worker, "tasks"), k, name)
            if (task && json_is_string(name) &&
                streq(json_string_value(name), task))
                provides = true;
        if (!provides)
            continue;
        json_t *c = json_object_get(worker, "credit");
        credit += json_is_integer(c) ? (long)json_integer_value(c) : 1;
        count++;
    }
    if (children)
        *children = count;
    return credit;
}

/* Prints a final result: its value on stdout (or its JSON envelope), or
   its error on stderr. Returns the exit code. */
static int
s_print_result(tq_result_t *r, int code, bool as_json)
{
    if (as_json) {
        json_t *j = tq_cli_result_json(r, code);
        tq_cli_print_json(j, false);
        json_decref(j);
        if (code != TQ_OK)
            return tq_cli_exit_code(code);
    }
    if (code == TQ_OK) {
        const msgpack_object *value = tq_result_value(r);
        if (!value)
            return tq_cli_error(TQ_EPROTO,
                                "the result value is not valid msgpack");
        if (!as_json) {
            json_t *j = tq_cli_to_json(value);
            tq_cli_print_json(j, false);
            json_decref(j);
        }
        return TQ_CLI_EXIT_OK;
    }
    if (as_json)
        return tq_cli_exit_code(code);
    if (code == TQ_EUNKNOWN)
        return tq_cli_unknown_id(tq_result_id(r));
    const char *text = code == TQ_ETIMEDOUT ? "the wait timed out"
                                            : tq_result_error(r);
    return tq_cli_error(code, "%s", *text ? text : tq_strerror(code));
}

/* ---- submit, get -------------------------------------------------------- */

/* The argv for getopt_long: argv[-1] (the verb) then argv, except that
   each value getopt would read as a short option (-5, -0.5, -[1]) is
   replaced by its placeholder masked[i], "\x01" and its index, which is
   not an option; the caller maps placeholders back. malloc'd. */
static char **
s_mask_values(int argc, char **argv, char **masked)
{
    char **copy = calloc((size_t)argc + 2, sizeof *copy);
    if (!copy)
        return NULL;
    copy[0] = argv[-1];
    bool rest = false; /* after a lone --: nothing is an option */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool value = !rest && a[0] == '-' && a[1] && a[1] != '-' &&
                     !((a[1] >= 'a' && a[1] <= 'z') ||
                       (a[1] >= 'A' && a[1] <= 'Z'));
        rest |= strcmp(a, "--") == 0;
        copy[i + 1] = value ? masked[i] : argv[i];
    }
    return copy;
}

int
tq_cli_submit(tq_client_t *client, int argc, char **argv)
{
    enum { O_QUEUE = 256, O_PRIORITY, O_LIMIT, O_RETRIES, O_WAIT, O_TIMEOUT,
           O_JSON, O_COUNTDOWN, O_ETA };
    static const struct option options[] = {
        {"queue", required_argument, NULL, O_QUEUE},
        {"priority", required_argument, NULL, O_PRIORITY},
        {"time-limit", required_argument, NULL, O_LIMIT},
        {"retries", required_argument, NULL, O_RETRIES},
        {"countdown", required_argument, NULL, O_COUNTDOWN},
        {"eta", required_argument, NULL, O_ETA},
        {"wait", no_argument, NULL, O_WAIT},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    tq_options_t opts = TQ_OPTIONS_INIT;
    bool wait = false, as_json = false, timed = false;
    int timeout_ms = -1;
    long long eta_ms = -1;
    const char *usage = tq_cli_usage_submit;
    /* placeholders for negative numbers: "\x01" + index */
    char **masked = calloc((size_t)argc + 1, sizeof *masked);
    char **gargv = NULL;
    for (int i = 0; masked && i < argc; i++) {
        masked[i] = malloc(16);
        if (masked[i])
            snprintf(masked[i], 16, "\x01%d", i);
        else
            break;
    }
    if (masked && (argc == 0 || masked[argc - 1]))
        gargv = s_mask_values(argc, argv, masked);
    int rc = gargv ? TQ_CLI_EXIT_OK : tq_cli_error(TQ_ENOMEM, NULL);
    long n = 0;
    int opt;
    optind = 0;
    opterr = 0;
    while (rc == TQ_CLI_EXIT_OK &&
           (opt = getopt_long(argc + 1, gargv, ":", options, NULL)) != -1) {
        switch (opt) {
        case O_QUEUE:
            opts.queue = optarg;
            break;
        case O_PRIORITY:
            if (!tq_cli_parse_long(optarg, 0, TQ_PRIORITY_MAX, &n))
                rc = tq_cli_usage_error(usage, "--priority %s: not in 0..9",
                                        optarg);
            opts.priority = (int)n;
            break;
        case O_RETRIES:
            if (!tq_cli_parse_long(optarg, 0, 1000, &n))
                rc = tq_cli_usage_error(usage,
                                        "--retries %s: not in 0..1000",
                                        optarg);
            opts.retries = (int)n;
            break;
        case O_LIMIT:
            opts.time_limit_ms = tq_cli_parse_seconds(optarg);
            if (opts.time_limit_ms < 0)
                rc = tq_cli_usage_error(usage,
                                        "--time-limit %s: not a duration",
                                        optarg);
            break;
        case O_COUNTDOWN:
            opts.countdown_ms = tq_cli_parse_seconds(optarg);
            if (opts.countdown_ms < 0)
                rc = tq_cli_usage_error(usage,
                                        "--countdown %s: not a duration",
                                        optarg);
            break;
        case O_ETA:
            eta_ms = tq_cli_parse_eta(optarg);
            if (eta_ms < 0 || eta_ms > INT32_MAX)
                rc = tq_cli_usage_error(usage,
                                        "--eta %s: not a time (2026-12-01T"
                                        "15:30:00[Z], 15:30 or @EPOCH, "
                                        "within 24 days)",
                                        optarg);
            break;
        case O_WAIT:
            wait = true;
            break;
        case O_TIMEOUT:
            timed = true;
            timeout_ms = tq_cli_parse_seconds(optarg);
            if (timeout_ms < 0)
                rc = tq_cli_usage_error(usage, "--timeout %s: not a duration",
                                        optarg);
            break;
        case O_JSON:
            as_json = true;
            break;
        default:
            rc = tq_cli_option_error(usage, opt, gargv);
        }
    }
    if (rc == TQ_CLI_EXIT_OK && eta_ms >= 0 && opts.countdown_ms)
        rc = tq_cli_usage_error(usage, "%s",
                                "--countdown and --eta: one or the other");
    if (eta_ms >= 0)
        opts.countdown_ms = (int)eta_ms;
    /* the positionals, masked values restored */
    const char *task = NULL;
    int first = optind;
    size_t nargs = 0;
    const char **args = calloc((size_t)argc + 1, sizeof *args);
    if (rc == TQ_CLI_EXIT_OK && !args)
        rc = tq_cli_error(TQ_ENOMEM, NULL);
    for (int i = first; rc == TQ_CLI_EXIT_OK && i < argc + 1; i++) {
        const char *a = gargv[i];
        if (a[0] == '\x01')
            a = argv[atoi(a + 1)];
        if (!task)
            task = a;
        else
            args[nargs++] = a;
    }
    if (rc == TQ_CLI_EXIT_OK && !task)
        rc = tq_cli_usage_error(usage, "%s", "missing TASK");
    char why[256];
    for (size_t i = 0; rc == TQ_CLI_EXIT_OK && i < nargs; i++)
        if (!tq_cli_check_arg(args[i], strlen(args[i]), why, sizeof why))
            rc = tq_cli_usage_error(usage,
                                    "argument %zu, %s: %s (quote it as "
                                    "JSON, '\"...\"', to send a string)",
                                    i + 1, args[i], why);
    if (rc != TQ_CLI_EXIT_OK) {
        free(args);
        for (int i = 0; masked && i < argc; i++)
            free(masked[i]);
        free(masked);
        free(gargv);
        return rc;
    }
    msgpack_sbuffer args_buf;
    msgpack_sbuffer_init(&args_buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &args_buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, nargs);
    for (size_t i = 0; i < nargs; i++)
        tq_cli_pack_arg(&pk, args[i], strlen(args[i]));
    free(args);

    tq_result_t *r = tq_apply_async_raw(client, task, &opts, args_buf.data,
                                        args_buf.size);
    msgpack_sbuffer_destroy(&args_buf);
    const char *queue = opts.queue ? opts.queue : TQ_DEFAULT_QUEUE;
    if (!r) {
        fprintf(stderr, "tq: invalid task name or queue name: %s / %s\n",
                task, queue);
        rc = TQ_CLI_EXIT_USAGE;
    } else if (wait) {
        int code = tq_result_wait_answer(r, timeout_ms);
        bool unserved = false;
        if (code == TQ_OK && !tq_result_ready(r) &&
            tq_client_provided(client, task, queue, 1000) == 0) {
            /* the task waits, as designed; the user is told once */
            unserved = true;
            fprintf(stderr,
                    "tq: no connected worker provides %s on queue %s: the "
                    "task waits for one%s\n",
                    task, queue,
                    timed ? "" : " (Ctrl-C stops waiting; the task stays)");
        }
        code = tq_result_get(r, timeout_ms);
        if (code == TQ_ETIMEDOUT && unserved && !as_json)
            rc = tq_cli_error(code,
                              "the wait timed out: no connected worker "
                              "provides %s (task %s waits on queue %s)",
                              task, tq_result_id(r), queue);
        else
            rc = s_print_result(r, code, as_json);
    } else {
        /* the id is only worth printing once the broker holds the task;
           an unreachable broker ends this wait within the liveness */
        int code = tq_result_wait_answer(r, timeout_ms);
        if (code == TQ_OK && tq_result_ready(r) && !s_ran(tq_result_code(r)))
            /* refused (queue full, malformed) or failed before the broker
               said SUBMITTED; a task that already ran still prints its id */
            code = tq_result_code(r);
        if (code == TQ_OK) {
            if (as_json) {
                json_t *j = json_pack("{s:s}", "id", tq_result_id(r));
                tq_cli_print_json(j, false);
                json_decref(j);
            } else
                puts(tq_result_id(r));
            rc = TQ_CLI_EXIT_OK;
        } else
            rc = s_print_result(r, code, as_json);
    }
    tq_result_destroy(&r);
    for (int i = 0; i < argc; i++)
        free(masked[i]);
    free(masked);
    free(gargv);
    return rc;
}

int
tq_cli_get(tq_client_t *client, int argc, char **argv)
{
    enum { O_WAIT = 256, O_TIMEOUT, O_JSON };
    static const struct option options[] = {
        {"wait", no_argument, NULL, O_WAIT},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    bool wait = false, as_json = false;
    int timeout_ms = -1;
    const char *usage = tq_cli_usage_get;
    char **gargv = argv - 1;
    int opt;
    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc + 1, gargv, ":", options, NULL)) != -1) {
        switch (opt) {
        case O_WAIT:
            wait = true;
            break;
        case O_JSON:
            as_json = true;
            break;
        case O_TIMEOUT:
            timeout_ms = tq_cli_parse_seconds(optarg);
            if (timeout_ms < 0)
                return tq_cli_usage_error(usage, "--timeout %s: not a "
                                                 "duration",
                                          optarg);
            break;
        default:
            return tq_cli_option_error(usage, opt, gargv);
        }
    }
    if (optind >= argc + 1)
        return tq_cli_usage_error(usage, "%s", "missing ID");
    if (optind + 1 < argc + 1)
        return tq_cli_usage_error(usage, "%s: unexpected argument",
                                  gargv[optind + 1]);
    const char *id = gargv[optind];
    tq_result_t *r = tq_client_fetch(client, id, wait);
    if (!r)
        return tq_cli_usage_error(usage, "%s: not a valid task id", id);
    int rc;
    if (wait)
        rc = s_print_result(r, tq_result_get(r, timeout_ms), as_json);
    else if (tq_result_wait_answer(r, timeout_ms) != TQ_OK)
        rc = s_print_result(r, TQ_ETIMEDOUT, as_json);
    else if (tq_result_ready(r))
        rc = s_print_result(r, tq_result_code(r), as_json);
    else {
        if (as_json) {
            json_t *j = json_pack("{s:s,s:s}", "id", id, "state",
                                  tq_state_name(tq_result_state(r)));
            tq_cli_print_json(j, false);
            json_decref(j);
        } else
            puts(tq_state_name(tq_result_state(r)));
        rc = TQ_CLI_EXIT_TIMEOUT;
    }
    tq_result_destroy(&r);
    return rc;
}

/* ---- main --------------------------------------------------------------- */

/* One verb of the command line. */
typedef struct {
    const char *name;
    tq_cli_verb_fn *fn;
    const char *const *usage; /* its --help text */
} s_verb_t;

static const s_verb_t s_verbs[] = {
    {"submit", tq_cli_submit, &tq_cli_usage_submit},
    {"get", tq_cli_get, &tq_cli_usage_get},
    {"wait", tq_cli_wait, &tq_cli_usage_wait},
    {"cancel", tq_cli_cancel, &tq_cli_usage_cancel},
    {"status", tq_cli_status, &tq_cli_usage_status},
    {"workers", tq_cli_workers, &tq_cli_usage_workers},
    {"failed", tq_cli_failed, &tq_cli_usage_failed},
    {"retry", tq_cli_retry, &tq_cli_usage_retry},
    {"purge", tq_cli_purge, &tq_cli_usage_purge},
    {"map", tq_cli_map, &tq_cli_usage_map},
    {"exec", tq_cli_exec, &tq_cli_usage_exec},
    {"tasks", tq_cli_tasks, &tq_cli_usage_tasks},
    {"inspect", tq_cli_inspect, &tq_cli_usage_inspect},
};

static bool
s_wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (streq(argv[i], "--"))
            return false;
        if (streq(argv[i], "--help") || streq(argv[i], "-h"))
            return true;
    }
    return false;
}

/* Removes "--broker EP" or "--broker=EP" from a verb's arguments (up to a
   lone --) into *endpoint. */
static void
s_take_broker(int *argc, char **argv, const char **endpoint)
{
    for (int j = 0; j < *argc; j++) {
        if (streq(argv[j], "--"))
            break;
        int words = 0;
        if (streq(argv[j], "--broker") && j + 1 < *argc) {
            *endpoint = argv[j + 1];
            words = 2;
        } else if (strncmp(argv[j], "--broker=", 9) == 0) {
            *endpoint = argv[j] + 9;
            words = 1;
        }
        if (words) {
            memmove(argv + j, argv + j + words,
                    (size_t)(*argc - j - words + 1) * sizeof *argv);
            *argc -= words;
            j--;
        }
    }
}

/* Checks every endpoint of a comma-separated list of brokers; false
   with the reason on stderr. */
static bool
s_check_brokers(const char *list, const char *source)
{
    const char *p = list;
    for (;;) {
        p += strspn(p, " \t");
        size_t len = strcspn(p, ",");
        char one[1024], why[512];
        snprintf(one, sizeof one, "%.*s", (int)len, p);
        for (size_t n = strlen(one);
             n && (one[n - 1] == ' ' || one[n - 1] == '\t');)
            one[--n] = '\0';
        if (!*one) {
            fprintf(stderr, "tq: %s \"%s\": an empty endpoint in the list\n",
                    source, list);
            return false;
        }
        if (!tq_endpoint_check(one, false, why, sizeof why)) {
            fprintf(stderr, "tq: %s %s\n", source, why);
            return false;
        }
        if (!p[len])
            return true;
        p += len + 1;
    }
}

int
main(int argc, char **argv)
{
    /* czmq would otherwise catch SIGINT/SIGTERM and a shell user could not
       interrupt a waiting `tq get --wait` */
    setenv("ZSYS_SIGHANDLER", "false", 0);
    /* the CLI says what went wrong itself; the library's warnings and
       notes only when asked (--log-level) */
    tq_log_set_level(TQ_LOG_ERROR);
    tq_log_init("tq");
    enum { O_BROKER = 256, O_LOG_LEVEL, O_LOG_JSON, O_VERSION, O_HELP };
    static const struct option options[] = {
        {"broker", required_argument, NULL, O_BROKER},
        {"log-level", required_argument, NULL, O_LOG_LEVEL},
        {"log-json", no_argument, NULL, O_LOG_JSON},
        {"version", no_argument, NULL, O_VERSION},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL;
    int opt, level;
    opterr = 0;
    /* "+": options of tq itself stop at the command word */
    while ((opt = getopt_long(argc, argv, "+:h", options, NULL)) != -1) {
        switch (opt) {
        case O_BROKER:
            endpoint = optarg;
            break;
        case O_LOG_LEVEL:
            if ((level = tq_log_parse_level(optarg)) < 0)
                return tq_cli_usage_error(s_usage_main,
                                          "--log-level %s: error, warning, "
                                          "info or debug",
                                          optarg);
            tq_log_set_level(level);
            break;
        case O_LOG_JSON:
            tq_log_set_json(true);
            break;
        case O_VERSION:
            tq_env_print_version("tq");
            return TQ_CLI_EXIT_OK;
        case O_HELP:
        case 'h':
            fputs(s_usage_main, stdout);
            return TQ_CLI_EXIT_OK;
        default:
            return tq_cli_option_error(s_usage_main, opt, argv);
        }
    }
    int i = optind;
    if (i >= argc)
        return tq_cli_usage_error(s_usage_main, "%s", "missing COMMAND");
    const char *command = argv[i];
    int cargc = argc - i - 1;
    char **cargv = argv + i + 1;
    const s_verb_t *verb = NULL;
    for (size_t k = 0; k < sizeof s_verbs / sizeof s_verbs[0]; k++)
        if (streq(command, s_verbs[k].name))
            verb = &s_verbs[k];
    if (streq(command, "keygen")) /* local: needs no broker */
        return tq_keygen_main(cargc, cargv);
    if (streq(command, "help")) {
        for (size_t k = 0; cargc > 0 && k < sizeof s_verbs / sizeof s_verbs[0];
             k++)
            if (streq(cargv[0], s_verbs[k].name)) {
                fputs(*s_verbs[k].usage, stdout);
                return TQ_CLI_EXIT_OK;
            }
        fputs(s_usage_main, stdout);
        return TQ_CLI_EXIT_OK;
    }
    if (!verb)
        return tq_cli_usage_error(s_usage_main, "%s: unknown command",
                                  command);
    if (s_wants_help(cargc, cargv)) {
        fputs(*verb->usage, stdout);
        return TQ_CLI_EXIT_OK;
    }
    /* --broker is also accepted after the command */
    s_take_broker(&cargc, cargv, &endpoint);
    const char *source = "--broker";
    if (!endpoint && getenv("TQ_BROKER") && *getenv("TQ_BROKER")) {
        endpoint = getenv("TQ_BROKER");
        source = "TQ_BROKER";
    }
    if (endpoint && !s_check_brokers(endpoint, source))
        return TQ_CLI_EXIT_USAGE;

    tq_client_t *client = tq_client_new(endpoint);
    if (!client) {
        fprintf(stderr, "error: TQ_EINVAL: cannot use broker endpoint %s\n",
                endpoint ? endpoint : "(default)");
        return TQ_CLI_EXIT_USAGE;
    }
    /* the CLI tells what the broker acknowledged (tq submit prints the id
       once it is; tq map sends again what was not when interrupted): no
       folding (PROTOCOL.md 5.1) that would hold acknowledgements back
       while long tasks run */
    tq_client_set_fold(client, false);
    int rc = verb->fn(client, cargc, cargv);
    /* stdout may be a closed pipe (tq map ... | head): the exit code must
       still tell what happened to the tasks, so only report it */
    if (fflush(stdout) != 0 && rc == TQ_CLI_EXIT_OK)
        rc = TQ_CLI_EXIT_TASK;
    tq_client_destroy(&client);
    return rc;
}
