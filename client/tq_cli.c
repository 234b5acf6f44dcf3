/* tq_cli.c - the tq command: submit tasks, fetch results and show broker
   status from a shell; arguments and results as JSON (jansson). */
#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq/tq_client.h"
#include "tq_client_internal.h"

#define streq(a, b) (strcmp((a), (b)) == 0)

/* Exit codes, as documented in the usage text and README. */
enum {
    S_EXIT_OK = 0,
    S_EXIT_TASK = 1,
    S_EXIT_USAGE = 2,
    S_EXIT_TIMEOUT = 3,
    S_EXIT_UNREACHABLE = 4,
    S_EXIT_UNKNOWN = 5,
};

#define S_STATUS_TIMEOUT_MS 5000

static const char *s_usage_main =
    "usage: tq [--broker EP] COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  submit TASK [ARG...]   submit a task; prints its id, or its result "
    "with --wait\n"
    "  get ID                 fetch a task's result by id\n"
    "  status                 show the broker's queues, workers and "
    "counters\n"
    "\n"
    "  --broker EP   the broker's client endpoint (default: $TQ_BROKER, "
    "else\n"
    "                " TQ_DEFAULT_CLIENT_ENDPOINT ")\n"
    "  --help        this text; tq COMMAND --help for a command's options\n"
    "\n"
    "exit codes: 0 ok, 1 the task failed (error on stderr), 2 usage,\n"
    "            3 timeout or not ready, 4 broker unreachable, 5 unknown "
    "task id\n";

static const char *s_usage_submit =
    "usage: tq [--broker EP] submit TASK [ARG...] [--queue Q] [--priority "
    "P]\n"
    "          [--time-limit SEC] [--wait] [--timeout SEC]\n"
    "\n"
    "Each ARG that parses as JSON (numbers, \"quoted strings\", objects, "
    "arrays,\n"
    "true, false, null) is that JSON value, anything else is a plain "
    "string;\n"
    "put ARGs starting with -- after a lone --. JSON integers become int64,\n"
    "reals double, objects msgpack maps.\n"
    "\n"
    "  --queue Q         queue (default \"" TQ_DEFAULT_QUEUE "\")\n"
    "  --priority P      0..9, higher runs first (default 0)\n"
    "  --time-limit SEC  hard time limit (default: the worker's)\n"
    "  --wait            wait for the result and print it as JSON; msgpack\n"
    "                    binary prints as {\"$bin\": \"<hex>\"}, extension "
    "types as\n"
    "                    {\"$ext\": TYPE, \"data\": \"<hex>\"}, map keys "
    "that are not\n"
    "                    strings as their JSON text\n"
    "  --timeout SEC     give up waiting after SEC (exit 3); default: wait\n"
    "                    as long as the broker is alive\n"
    "\n"
    "Without --wait prints the task id once the broker has accepted it.\n"
    "A failed task prints \"error: <code>: <text>\" on stderr, exit 1.\n";

static const char *s_usage_get =
    "usage: tq [--broker EP] get ID [--wait] [--timeout SEC]\n"
    "\n"
    "Prints the task's result as JSON (as tq submit --wait) if it is final.\n"
    "Without --wait, a task not final yet prints its state (PENDING, "
    "RUNNING,\n"
    "RETRY) and exits 3. With --wait, waits for the result (up to "
    "--timeout).\n"
    "An id the broker does not know (or whose result expired) exits 5.\n";

static const char *s_usage_status =
    "usage: tq [--broker EP] status [--json] [--timeout SEC]\n"
    "\n"
    "Shows the broker's queues, workers, unserved tasks and counters; with\n"
    "--json prints the whole status body as JSON. Waits 5 s by default.\n";

static const char *const s_code_names[TQ_ERROR_COUNT_] = {
    "TQ_OK",          "TQ_EINVAL",     "TQ_ENOMEM",      "TQ_EPROTO",
    "TQ_EVERSION",    "TQ_ETIMEDOUT",  "TQ_ETASK",       "TQ_EUNKNOWN",
    "TQ_EUNREACHABLE", "TQ_ECANCELLED", "TQ_EFULL",      "TQ_EEMPTY",
    "TQ_ELOST",       "TQ_ETIMELIMIT", "TQ_ENOTASK",     "TQ_ECLOSED",
    "TQ_ESTATE",      "TQ_ESYS",       "TQ_EBUSY",
};

static const char *
s_code_name(int code)
{
    return code >= 0 && code < TQ_ERROR_COUNT_ ? s_code_names[code] : "?";
}

/* True for the final codes of a task that the broker accepted and ran. */
static bool
s_ran(int code)
{
    return code == TQ_OK || code == TQ_ETASK || code == TQ_ELOST ||
           code == TQ_ETIMELIMIT || code == TQ_ECANCELLED ||
           code == TQ_ENOTASK;
}

static int
s_exit_code(int code)
{
    switch (code) {
    case TQ_OK:
        return S_EXIT_OK;
    case TQ_ETIMEDOUT:
        return S_EXIT_TIMEOUT;
    case TQ_EUNREACHABLE:
        return S_EXIT_UNREACHABLE;
    case TQ_EUNKNOWN:
        return S_EXIT_UNKNOWN;
    default:
        return S_EXIT_TASK;
    }
}

/* Prints "tq: <message>" and the usage text on stderr; returns 2. */
static int s_usage_error(const char *usage, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

static int
s_usage_error(const char *usage, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    fprintf(stderr, "tq: ");
    vfprintf(stderr, format, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", usage);
    return S_EXIT_USAGE;
}

/* Parses SEC (a non-negative decimal) into milliseconds; -1 if invalid. */
static int
s_parse_seconds(const char *text)
{
    char *end;
    errno = 0;
    double sec = strtod(text, &end);
    if (errno || end == text || *end || !(sec >= 0) || sec > INT32_MAX / 1000)
        return -1;
    return (int)llround(sec * 1000.0);
}

/* ---- JSON -> msgpack ---------------------------------------------------- */

static void
s_pack_json(msgpack_packer *pk, const json_t *v)
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
            s_pack_json(pk, item);
        }
        break;
    }
    case JSON_ARRAY: {
        msgpack_pack_array(pk, json_array_size(v));
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) s_pack_json(pk, item);
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

/* Packs one command-line argument: its JSON value, else the plain string. */
static void
s_pack_arg(msgpack_packer *pk, const char *arg)
{
    json_t *v = json_loads(arg, JSON_DECODE_ANY, NULL);
    if (v) {
        s_pack_json(pk, v);
        json_decref(v);
    } else
        msgpack_pack_str_with_body(pk, arg, strlen(arg));
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

static json_t *s_to_json(const msgpack_object *o);

static char *
s_key_text(const msgpack_object *key)
{
    if (key->type == MSGPACK_OBJECT_STR)
        return strndup(key->via.str.ptr, key->via.str.size);
    json_t *j = s_to_json(key);
    char *text = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(j);
    return text;
}

static json_t *
s_to_json(const msgpack_object *o)
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
        return json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        json_t *obj = json_object();
        json_object_set_new(obj, "$bin", s_hex(o->via.bin.ptr,
                                               o->via.bin.size));
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
            json_array_append_new(arr, s_to_json(&o->via.array.ptr[i]));
        return arr;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *obj = json_object();
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            char *key = s_key_text(&o->via.map.ptr[i].key);
            if (key)
                json_object_set_new(obj, key,
                                    s_to_json(&o->via.map.ptr[i].val));
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

static void
s_print_json(const json_t *v, bool indent)
{
    size_t flags = JSON_ENCODE_ANY | JSON_PRESERVE_ORDER |
                   JSON_REAL_PRECISION(s_real_precision(v));
    flags |= indent ? JSON_INDENT(2) : JSON_COMPACT;
    char *text = json_dumps(v, flags);
    if (text)
        puts(text);
    free(text);
}

/* Prints a final result: its value on stdout, or its error on stderr.
   Returns the exit code. */
static int
s_print_result(tq_result_t *r, int code)
{
    if (code == TQ_OK) {
        const msgpack_object *value = tq_result_value(r);
        if (!value) {
            fprintf(stderr, "error: TQ_EPROTO: the result value is not "
                            "valid msgpack\n");
            return S_EXIT_TASK;
        }
        json_t *j = s_to_json(value);
        s_print_json(j, false);
        json_decref(j);
        return S_EXIT_OK;
    }
    const char *text = code == TQ_ETIMEDOUT ? "the wait timed out"
                                            : tq_result_error(r);
    fprintf(stderr, "error: %s: %s\n", s_code_name(code),
            *text ? text : tq_strerror(code));
    return s_exit_code(code);
}

/* ---- commands ----------------------------------------------------------- */

static int
s_cmd_submit(tq_client_t *client, int argc, char **argv)
{
    tq_options_t options = TQ_OPTIONS_INIT;
    const char *task = NULL;
    bool wait = false;
    int timeout_ms = -1;
    msgpack_sbuffer args_buf;
    msgpack_sbuffer_init(&args_buf);
    const char **args = calloc((size_t)argc + 1, sizeof *args);
    size_t nargs = 0;
    bool only_args = false;
    int rc = S_EXIT_OK;
    for (int i = 0; i < argc && rc == S_EXIT_OK; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (only_args || strncmp(a, "--", 2) != 0) {
            if (!task)
                task = a;
            else
                args[nargs++] = a;
        } else if (streq(a, "--"))
            only_args = true;
        else if (streq(a, "--wait"))
            wait = true;
        else if (!next)
            rc = s_usage_error(s_usage_submit, "%s: unknown option or "
                                               "missing value", a);
        else if (streq(a, "--queue"))
            options.queue = next, i++;
        else if (streq(a, "--priority")) {
            char *end;
            long p = strtol(next, &end, 10);
            if (*end || end == next || p < 0 || p > TQ_PRIORITY_MAX)
                rc = s_usage_error(s_usage_submit,
                                   "--priority %s: not in 0..9", next);
            options.priority = (int)p, i++;
        } else if (streq(a, "--time-limit")) {
            options.time_limit_ms = s_parse_seconds(next), i++;
            if (options.time_limit_ms < 0)
                rc = s_usage_error(s_usage_submit,
                                   "--time-limit %s: not a duration", next);
        } else if (streq(a, "--timeout")) {
            timeout_ms = s_parse_seconds(next), i++;
            if (timeout_ms < 0)
                rc = s_usage_error(s_usage_submit,
                                   "--timeout %s: not a duration", next);
        } else
            rc = s_usage_error(s_usage_submit, "%s: unknown option", a);
    }
    if (rc == S_EXIT_OK && !task)
        rc = s_usage_error(s_usage_submit, "%s", "missing TASK");
    if (rc != S_EXIT_OK) {
        free(args);
        msgpack_sbuffer_destroy(&args_buf);
        return rc;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &args_buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, nargs);
    for (size_t i = 0; i < nargs; i++)
        s_pack_arg(&pk, args[i]);
    free(args);

    tq_result_t *r = tq_apply_async_raw(client, task, &options, args_buf.data,
                                        args_buf.size);
    msgpack_sbuffer_destroy(&args_buf);
    if (!r) {
        fprintf(stderr, "tq: invalid task name or queue name: %s / %s\n",
                task, options.queue ? options.queue : TQ_DEFAULT_QUEUE);
        return S_EXIT_USAGE;
    }
    if (wait)
        rc = s_print_result(r, tq_result_get(r, timeout_ms));
    else {
        /* the id is only worth printing once the broker holds the task;
           an unreachable broker ends this wait within the liveness */
        int code = tq_result_wait_answer(r, timeout_ms);
        if (code == TQ_OK && tq_result_ready(r) && !s_ran(tq_result_code(r)))
            /* refused (queue full, malformed) or failed before the broker
               said SUBMITTED; a task that already ran still prints its id */
            code = tq_result_code(r);
        if (code == TQ_OK) {
            puts(tq_result_id(r));
            rc = S_EXIT_OK;
        } else
            rc = s_print_result(r, code);
    }
    tq_result_destroy(&r);
    return rc;
}

static int
s_cmd_get(tq_client_t *client, int argc, char **argv)
{
    const char *id = NULL;
    bool wait = false;
    int timeout_ms = -1;
    for (int i = 0; i < argc; i++) {
        if (streq(argv[i], "--wait"))
            wait = true;
        else if (streq(argv[i], "--timeout") && i + 1 < argc) {
            timeout_ms = s_parse_seconds(argv[++i]);
            if (timeout_ms < 0)
                return s_usage_error(s_usage_get,
                                     "--timeout %s: not a duration", argv[i]);
        } else if (strncmp(argv[i], "--", 2) == 0 || id)
            return s_usage_error(s_usage_get, "%s: unexpected argument",
                                 argv[i]);
        else
            id = argv[i];
    }
    if (!id)
        return s_usage_error(s_usage_get, "%s", "missing ID");
    tq_result_t *r = tq_client_fetch(client, id, wait);
    if (!r)
        return s_usage_error(s_usage_get, "%s: not a valid task id", id);
    int rc;
    if (wait)
        rc = s_print_result(r, tq_result_get(r, timeout_ms));
    else if (tq_result_wait_answer(r, timeout_ms) != TQ_OK)
        rc = s_print_result(r, TQ_ETIMEDOUT);
    else if (tq_result_ready(r))
        rc = s_print_result(r, tq_result_code(r));
    else {
        puts(tq_state_name(tq_result_state(r)));
        rc = S_EXIT_TIMEOUT;
    }
    tq_result_destroy(&r);
    return rc;
}

static json_int_t
s_int(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? json_integer_value(v) : 0;
}

static const char *
s_text(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : "-";
}

/* Joins an array of strings with commas into buf. */
static const char *
s_join(const json_t *arr, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = 0;
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        int n = snprintf(buf + used, size - used, "%s%s", i ? "," : "",
                         json_is_string(item) ? json_string_value(item)
                                              : "?");
        if (n < 0 || (size_t)n >= size - used)
            break;
        used += (size_t)n;
    }
    return buf[0] ? buf : "-";
}

static void
s_print_status(const json_t *st)
{
    printf("broker %s, pid %lld, up %.1f s\n", s_text(st, "version"),
           (long long)s_int(st, "pid"), s_int(st, "uptime_ms") / 1000.0);
    size_t i;
    json_t *item;
    char queues[512], tasks[1024];

    json_t *arr = json_object_get(st, "queues");
    printf("\nqueues (%zu)\n", json_array_size(arr));
    if (json_array_size(arr))
        printf("  %-24s %10s %10s\n", "QUEUE", "WAITING", "RUNNING");
    json_array_foreach(arr, i, item)
        printf("  %-24s %10lld %10lld\n", s_text(item, "name"),
               (long long)s_int(item, "waiting"),
               (long long)s_int(item, "running"));

    arr = json_object_get(st, "workers");
    printf("\nworkers (%zu)\n", json_array_size(arr));
    if (json_array_size(arr))
        printf("  %-16s %8s %8s %6s %7s %8s  %-16s %s\n", "HOST", "PPID",
               "PID", "CREDIT", "RUNNING", "DONE", "QUEUES", "TASKS");
    json_array_foreach(arr, i, item)
        printf("  %-16s %8lld %8lld %6lld %7lld %8lld  %-16s %s\n",
               s_text(item, "host"), (long long)s_int(item, "ppid"),
               (long long)s_int(item, "pid"),
               (long long)s_int(item, "credit"),
               (long long)s_int(item, "running"),
               (long long)s_int(item, "done"),
               s_join(json_object_get(item, "queues"), queues, sizeof queues),
               s_join(json_object_get(item, "tasks"), tasks, sizeof tasks));

    arr = json_object_get(st, "unserved");
    printf("\nunserved: tasks no connected worker provides (%zu)\n",
           json_array_size(arr));
    if (json_array_size(arr))
        printf("  %-24s %-16s %10s\n", "TASK", "QUEUE", "WAITING");
    json_array_foreach(arr, i, item)
        printf("  %-24s %-16s %10lld\n", s_text(item, "task"),
               s_text(item, "queue"), (long long)s_int(item, "waiting"));

    json_t *counters = json_object_get(st, "counters");
    printf("\ncounters\n");
    const char *key;
    json_object_foreach(counters, key, item)
        printf("  %-14s %lld\n", key,
               (long long)(json_is_integer(item) ? json_integer_value(item)
                                                 : 0));
}

static int
s_cmd_status(tq_client_t *client, int argc, char **argv)
{
    bool as_json = false;
    int timeout_ms = S_STATUS_TIMEOUT_MS;
    for (int i = 0; i < argc; i++) {
        if (streq(argv[i], "--json"))
            as_json = true;
        else if (streq(argv[i], "--timeout") && i + 1 < argc) {
            timeout_ms = s_parse_seconds(argv[++i]);
            if (timeout_ms < 0)
                return s_usage_error(s_usage_status,
                                     "--timeout %s: not a duration", argv[i]);
        } else
            return s_usage_error(s_usage_status, "%s: unexpected argument",
                                 argv[i]);
    }
    tq_buf_t body;
    int code = tq_client_status(client, &body, timeout_ms);
    if (code != TQ_OK) {
        if (code == TQ_EUNREACHABLE || code == TQ_ETIMEDOUT)
            fprintf(stderr, "error: %s: no status from the broker at %s\n",
                    s_code_name(code), tq_client_endpoint(client));
        else
            fprintf(stderr, "error: %s: %s\n", s_code_name(code),
                    tq_strerror(code));
        return s_exit_code(code);
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int rc = S_EXIT_OK;
    if (msgpack_unpack_next(&up, body.data, body.size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP) {
        fprintf(stderr, "error: TQ_EPROTO: the status body is not a "
                        "msgpack map\n");
        rc = S_EXIT_TASK;
    } else {
        json_t *j = s_to_json(&up.data);
        if (as_json)
            s_print_json(j, true);
        else
            s_print_status(j);
        json_decref(j);
    }
    msgpack_unpacked_destroy(&up);
    tq_buf_free(&body);
    return rc;
}

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

int
main(int argc, char **argv)
{
    /* czmq would otherwise catch SIGINT/SIGTERM and a shell user could not
       interrupt a waiting `tq get --wait` */
    setenv("ZSYS_SIGHANDLER", "false", 0);
    const char *endpoint = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (streq(argv[i], "--broker") && i + 1 < argc)
            endpoint = argv[++i];
        else if (streq(argv[i], "--help") || streq(argv[i], "-h")) {
            fputs(s_usage_main, stdout);
            return S_EXIT_OK;
        } else if (strncmp(argv[i], "--", 2) == 0)
            return s_usage_error(s_usage_main, "%s: unknown option",
                                 argv[i]);
        else
            break;
    }
    if (i >= argc)
        return s_usage_error(s_usage_main, "%s", "missing COMMAND");
    const char *command = argv[i];
    int cargc = argc - i - 1;
    char **cargv = argv + i + 1;
    const char *usage = streq(command, "submit")   ? s_usage_submit
                        : streq(command, "get")    ? s_usage_get
                        : streq(command, "status") ? s_usage_status
                                                   : NULL;
    if (!usage)
        return s_usage_error(s_usage_main, "%s: unknown command", command);
    if (s_wants_help(cargc, cargv)) {
        fputs(usage, stdout);
        return S_EXIT_OK;
    }
    /* --broker is also accepted after the command */
    for (int j = 0; j + 1 < cargc; j++)
        if (streq(cargv[j], "--broker")) {
            if (j > 0 && streq(cargv[j - 1], "--"))
                break;
            endpoint = cargv[j + 1];
            memmove(cargv + j, cargv + j + 2,
                    (size_t)(cargc - j - 2) * sizeof *cargv);
            cargc -= 2;
            break;
        }

    tq_client_t *client = tq_client_new(endpoint);
    if (!client) {
        fprintf(stderr, "error: TQ_EINVAL: cannot use broker endpoint %s\n",
                endpoint ? endpoint : "(default)");
        return S_EXIT_USAGE;
    }
    int rc;
    if (streq(command, "submit"))
        rc = s_cmd_submit(client, cargc, cargv);
    else if (streq(command, "get"))
        rc = s_cmd_get(client, cargc, cargv);
    else
        rc = s_cmd_status(client, cargc, cargv);
    tq_client_destroy(&client);
    return rc;
}
