/* tq_cli_inspect.c - the tq command's look inside the queue: `tq tasks`
   lists waiting and running tasks, `tq inspect ID` shows one in full
   (PROTOCOL.md 5.7). Against a broker that predates TASKS and INSPECT,
   tasks shows the queue counts of STATUS and inspect falls back to GET. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq_cli.h"
#include "tq_client_internal.h"
#include "tq_inspect.h"
#include "tq_proto.h"

/* Characters of the arguments a row of `tq tasks` shows. */
#define S_ARGS_WIDTH 40

const char *const tq_cli_usage_tasks =
    "usage: tq [--broker EP] tasks [--queue Q] [--state S] [--limit N]\n"
    "          [--json] [--timeout SEC]\n"
    "\n"
    "Lists the tasks the broker holds, running ones first, then waiting "
    "ones\n"
    "in the order they will run: id, task, queue, state, age, attempt, the\n"
    "worker running it (host:pid) and its arguments (truncated).\n"
    "\n"
    "  --queue Q     only queue Q (default: every queue)\n"
    "  --state S     pending, running, retry, or a comma list of them\n"
    "                (default: all three)\n"
    "  --limit N     at most N tasks (default 100, at most 10000)\n"
    "  --json        print the broker's reply {\"tasks\": [...], "
    "\"total\"}\n"
    "\n"
    "A broker that cannot list tasks gets its queue counts shown instead.\n"
    "\n"
    "example:\n"
    "  tq tasks --queue default --state running\n";

const char *const tq_cli_usage_inspect =
    "usage: tq [--broker EP] inspect ID [--json] [--timeout SEC]\n"
    "\n"
    "Shows one task in full: task, queue, state, priority, arguments,\n"
    "attempts, the worker that runs or ran it, timings, its error. A "
    "broker\n"
    "that cannot inspect answers with the state and result only (as tq "
    "get).\n"
    "Exit 5 for an id the broker does not know.\n"
    "\n"
    "example:\n"
    "  tq inspect \"$(tq failed --json | jq -r '.failed[0].id')\"\n";

typedef struct {
    bool as_json;
    int timeout_ms;
    const char *id;
    tq_inspect_filter_t filter;
} s_opts_t;


/* Parses "running,pending" into state bits; false on an unknown name. */
static bool
s_parse_states(const char *text, uint32_t *states)
{
    *states = 0;
    char *copy = strdup(text), *save = NULL;
    if (!copy)
        abort();
    bool ok = true;
    for (char *word = strtok_r(copy, ",", &save); word && ok;
         word = strtok_r(NULL, ",", &save)) {
        bool found = false;
        for (int s = 0; s < TQ_STATE_COUNT_; s++)
            if (strcasecmp(word, tq_state_name(s)) == 0) {
                *states |= TQ_STATE_BIT(s);
                found = true;
            }
        if (!found && strcasecmp(word, "waiting") == 0) {
            *states |= TQ_STATE_BIT(TQ_STATE_PENDING);
            found = true;
        }
        ok = found;
    }
    free(copy);
    return ok && *states != 0;
}

static int
s_parse(int argc, char **argv, const char *usage, bool want_id, s_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->timeout_ms = TQ_CLI_REQUEST_MS;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        long n = 0;
        if (streq(a, "--json"))
            o->as_json = true;
        else if (streq(a, "--timeout") && has_value) {
            o->timeout_ms = tq_cli_parse_seconds(argv[++i]);
            if (o->timeout_ms < 0)
                return tq_cli_usage_error(usage,
                                          "--timeout %s: not a "
                                          "duration",
                                          argv[i]);
        } else if (!want_id && streq(a, "--queue") && has_value) {
            o->filter.queue = argv[++i];
            if (!tq_proto_valid_name(o->filter.queue, strlen(o->filter.queue)))
                return tq_cli_usage_error(usage,
                                          "--queue %s: not a valid "
                                          "queue name",
                                          argv[i]);
        } else if (!want_id && streq(a, "--state") && has_value) {
            if (!s_parse_states(argv[++i], &o->filter.states))
                return tq_cli_usage_error(usage,
                                          "--state %s: pending, "
                                          "running or retry",
                                          argv[i]);
        } else if (!want_id && streq(a, "--limit") && has_value) {
            if (!tq_cli_parse_long(argv[++i], 1, TQ_PROTO_MAX_LIMIT, &n))
                return tq_cli_usage_error(usage, "--limit %s: 1..%d", argv[i],
                                          TQ_PROTO_MAX_LIMIT);
            o->filter.limit = (uint32_t)n;
        } else if (want_id && !o->id && strncmp(a, "--", 2) != 0)
            o->id = a;
        else
            return tq_cli_usage_error(usage, "%s: unexpected argument", a);
    }
    if (want_id && !o->id)
        return tq_cli_usage_error(usage, "%s", "missing ID");
    if (want_id && !tq_proto_valid_id(o->id, strlen(o->id)))
        return tq_cli_usage_error(usage, "%s: not a valid task id", o->id);
    return TQ_CLI_EXIT_OK;
}

/* The body as JSON (new reference), NULL if it is not one msgpack map. */
static json_t *
s_body_json(tq_buf_t *body)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    json_t *j = NULL;
    if (msgpack_unpack_next(&up, body->data, body->size, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP)
        j = tq_cli_to_json(&up.data);
    msgpack_unpacked_destroy(&up);
    tq_buf_free(body);
    return j;
}

static const char *
s_text(const json_t *o, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : def;
}

static bool
s_uint(const json_t *o, const char *key, long long *v)
{
    json_t *j = json_object_get(o, key);
    if (!json_is_integer(j))
        return false;
    *v = json_integer_value(j);
    return true;
}

static const char *
s_state_text(const json_t *o)
{
    long long s;
    return s_uint(o, "state", &s) ? tq_state_name((int)s) : "?";
}

/* "850ms", "12.4s", "5m02s", "3h07m". */
static void
s_age(char *out, size_t size, long long ms)
{
    if (ms < 1000)
        snprintf(out, size, "%lldms", ms);
    else if (ms < 60000)
        snprintf(out, size, "%.1fs", (double)ms / 1000);
    else if (ms < 3600000)
        snprintf(out, size, "%lldm%02llds", ms / 60000, ms / 1000 % 60);
    else
        snprintf(out, size, "%lldh%02lldm", ms / 3600000, ms / 60000 % 60);
}

/* The arguments on one line, cut at width characters with "...". */
static void
s_args(char *out, size_t size, const json_t *task, int width)
{
    json_t *args = json_object_get(task, "args");
    long long bytes = 0;
    if (!args || json_is_null(args)) {
        if (s_uint(task, "args_bytes", &bytes))
            snprintf(out, size, "(%lld bytes)", bytes);
        else
            snprintf(out, size, "-");
        return;
    }
    char *text = tq_cli_dump_json(args, false);
    if (!text) {
        snprintf(out, size, "?");
        return;
    }
    if ((int)strlen(text) > width && width > 3)
        snprintf(out, size, "%.*s...", width - 3, text);
    else
        snprintf(out, size, "%s", text);
    free(text);
}

static void
s_worker(char *out, size_t size, const json_t *task)
{
    long long pid;
    const char *host = s_text(task, "host", NULL);
    if (host && s_uint(task, "pid", &pid))
        snprintf(out, size, "%s:%lld", host, pid);
    else
        snprintf(out, size, "-");
}

/* The broker cannot list tasks: show what STATUS says of the queues. */
static int
s_tasks_fallback(tq_client_t *client, const s_opts_t *o, const char *why)
{
    fprintf(stderr,
            "tq: the broker at %s cannot list tasks (%s); its queue counts "
            "follow\n",
            tq_client_endpoint(client), why);
    json_t *status = NULL;
    int rc = tq_cli_fetch_status(client, o->timeout_ms, &status);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    json_t *queues = json_object_get(status, "queues");
    if (o->as_json) {
        json_t *j =
            json_pack("{s:n,s:O,s:s}", "tasks", "queues",
                      queues ? queues : json_array(), "fallback", "STATUS");
        tq_cli_print_json(j, false);
        json_decref(j);
    } else {
        printf("QUEUE            WAITING  RUNNING  DELAYED\n");
        size_t i;
        json_t *q;
        json_array_foreach(queues, i, q)
        {
            const char *name = s_text(q, "name", "?");
            if (o->filter.queue && !streq(name, o->filter.queue))
                continue;
            long long w = 0, r = 0, d = 0;
            s_uint(q, "waiting", &w);
            s_uint(q, "running", &r);
            s_uint(q, "delayed", &d);
            printf("%-16s %7lld  %7lld  %7lld\n", name, w, r, d);
        }
    }
    json_decref(status);
    return TQ_CLI_EXIT_OK;
}

int
tq_cli_tasks(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_tasks, false, &o);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    tq_buf_t body;
    char detail[TQ_PROTO_MAX_ERROR + 1];
    int code = tq_inspect_tasks(tq_client_endpoint(client), &o.filter, &body,
                                o.timeout_ms, detail, sizeof detail);
    if (tq_inspect_unsupported(code))
        return s_tasks_fallback(client, &o, detail);
    if (code != TQ_OK)
        return tq_cli_error(code, "no task list from the broker at %s: %s",
                            tq_client_endpoint(client), detail);
    json_t *reply = s_body_json(&body);
    if (!reply)
        return tq_cli_error(TQ_EPROTO, "the reply is not a msgpack map");
    if (o.as_json) {
        tq_cli_print_json(reply, false);
        json_decref(reply);
        return TQ_CLI_EXIT_OK;
    }
    json_t *tasks = json_object_get(reply, "tasks");
    printf("%-32s %-16s %-10s %-9s %7s %7s %-20s %s\n", "ID", "TASK", "QUEUE",
           "STATE", "AGE", "ATTEMPT", "WORKER", "ARGS");
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        char age[32] = "-", worker[300], args[S_ARGS_WIDTH + 32];
        long long ms, attempt = 0;
        if (s_uint(t, "age_ms", &ms))
            s_age(age, sizeof age, ms);
        s_uint(t, "attempt", &attempt);
        s_worker(worker, sizeof worker, t);
        s_args(args, sizeof args, t, S_ARGS_WIDTH);
        printf("%-32s %-16s %-10s %-9s %7s %7lld %-20s %s\n",
               s_text(t, "id", "?"), s_text(t, "task", "?"),
               s_text(t, "queue", "?"), s_state_text(t), age, attempt, worker,
               args);
    }
    long long total = 0;
    if (!s_uint(reply, "total", &total))
        total = (long long)json_array_size(tasks);
    if (!json_array_size(tasks))
        printf("(no tasks)\n");
    else if ((size_t)total > json_array_size(tasks))
        printf("(%zu of %lld shown; --limit N for more)\n",
               json_array_size(tasks), total);
    json_decref(reply);
    return TQ_CLI_EXIT_OK;
}

/* A wall-clock time in ms as "2026-12-01 15:04:05.123 UTC". */
static void
s_when(char *out, size_t size, long long ms)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char day[32];
    strftime(day, sizeof day, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out, size, "%s.%03lld UTC", day, ms % 1000);
}

static void
s_line_time(const char *label, const json_t *o, const char *key)
{
    long long ms;
    if (!s_uint(o, key, &ms))
        return;
    char when[64];
    s_when(when, sizeof when, ms);
    printf("%-12s %s\n", label, when);
}

static void
s_print_task(const json_t *t)
{
    long long v = 0, w = 0;
    char text[512];
    printf("%-12s %s\n", "id", s_text(t, "id", "?"));
    printf("%-12s %s\n", "task", s_text(t, "task", "?"));
    printf("%-12s %s\n", "queue", s_text(t, "queue", "?"));
    printf("%-12s %s\n", "state", s_state_text(t));
    if (s_uint(t, "priority", &v))
        printf("%-12s %lld\n", "priority", v);
    if (s_uint(t, "attempt", &v)) {
        printf("%-12s %lld", "attempt", v);
        if (s_uint(t, "failures", &w))
            printf(" (failures %lld", w);
        else
            printf(" (");
        if (s_uint(t, "lost", &w))
            printf(", lost %lld", w);
        if (s_uint(t, "retries", &w))
            printf(", retries allowed %lld", w);
        printf(")\n");
    }
    if (s_uint(t, "time_limit_ms", &v) && v)
        printf("%-12s %lld ms\n", "time limit", v);
    s_worker(text, sizeof text, t);
    printf("%-12s %s\n", "worker", text);
    s_line_time("submitted", t, "submitted_ms");
    s_line_time("started", t, "started_ms");
    s_line_time("finished", t, "finished_ms");
    if (s_uint(t, "due_ms", &v)) {
        s_age(text, sizeof text, v);
        printf("%-12s in %s\n", "runs", text);
    }
    const char *error = s_text(t, "error", NULL);
    if (error) {
        s_uint(t, "code", &v);
        printf("%-12s %s: %s\n", "error", tq_cli_code_name((int)v), error);
    }
    s_args(text, sizeof text, t, 400);
    printf("%-12s %s\n", "args", text);
    if (s_uint(t, "result_bytes", &v) && v)
        printf("%-12s %lld bytes\n", "result", v);
    json_t *history = json_object_get(t, "history");
    if (json_array_size(history)) {
        printf("history:\n");
        size_t i;
        json_t *h;
        json_array_foreach(history, i, h)
        {
            char worker[300], start[64] = "-", end[64] = "-";
            long long a = 0, pid = 0;
            s_uint(h, "attempt", &a);
            s_uint(h, "pid", &pid);
            snprintf(worker, sizeof worker, "%s:%lld", s_text(h, "host", "?"),
                     pid);
            if (s_uint(h, "started_ms", &v))
                s_when(start, sizeof start, v);
            if (s_uint(h, "ended_ms", &v))
                s_when(end, sizeof end, v);
            printf("  #%-3lld %-24s %s -> %s  %s\n", a, worker, start, end,
                   s_text(h, "outcome", "?"));
        }
    }
}

/* The broker cannot inspect: GET gives the state and the result. */
static int
s_inspect_fallback(tq_client_t *client, const s_opts_t *o, const char *why)
{
    fprintf(stderr,
            "tq: the broker at %s cannot inspect tasks (%s); state and "
            "result only\n",
            tq_client_endpoint(client), why);
    tq_result_t *r = tq_client_fetch(client, o->id, false);
    if (!r)
        return tq_cli_error(TQ_EINVAL, "%s: not a valid task id", o->id);
    int code = TQ_ETIMEDOUT;
    if (tq_result_wait_answer(r, o->timeout_ms) == TQ_OK)
        code = tq_result_ready(r) ? tq_result_code(r) : TQ_OK;
    int rc = TQ_CLI_EXIT_OK;
    json_t *j;
    if (code == TQ_ETIMEDOUT || code == TQ_EUNREACHABLE ||
        code == TQ_EUNKNOWN) {
        tq_result_destroy(&r);
        return tq_cli_error(code, "%s: %s", o->id, tq_strerror(code));
    }
    if (tq_result_ready(r))
        j = tq_cli_result_json(r, code);
    else
        j = json_pack("{s:s,s:s}", "id", o->id, "state",
                      tq_state_name(tq_result_state(r)));
    json_object_set_new(j, "fallback", json_string("GET"));
    if (o->as_json)
        tq_cli_print_json(j, false);
    else {
        const char *keys[] = {"id", "state", "code", "error"};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
            json_t *v = json_object_get(j, keys[k]);
            if (json_is_string(v))
                printf("%-12s %s\n", keys[k], json_string_value(v));
        }
        json_t *value = json_object_get(j, "value");
        if (value) {
            char *text = tq_cli_dump_json(value, false);
            printf("%-12s %s\n", "value", text ? text : "?");
            free(text);
        }
    }
    json_decref(j);
    tq_result_destroy(&r);
    return rc;
}

int
tq_cli_inspect(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_inspect, true, &o);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    tq_buf_t body;
    char detail[TQ_PROTO_MAX_ERROR + 1];
    int code = tq_inspect_task(tq_client_endpoint(client), o.id, &body,
                               o.timeout_ms, detail, sizeof detail);
    if (tq_inspect_unsupported(code))
        return s_inspect_fallback(client, &o, detail);
    if (code != TQ_OK)
        return tq_cli_error(code, "%s: %s", o.id, detail);
    json_t *task = s_body_json(&body);
    if (!task)
        return tq_cli_error(TQ_EPROTO, "the reply is not a msgpack map");
    if (o.as_json)
        tq_cli_print_json(task, false);
    else
        s_print_task(task);
    json_decref(task);
    return TQ_CLI_EXIT_OK;
}
