/* tq_cli_ops.c - the operator verbs of the tq command: wait, cancel,
   status (--watch), workers, failed, retry, purge. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tq_cli.h"
#include "tq_client_internal.h"

const char *const tq_cli_usage_wait =
    "usage: tq [--broker EP] wait ID... [--timeout SEC] [--json]\n"
    "\n"
    "Waits until every task is final and prints each result on its own "
    "line,\n"
    "in the order of the ids: the value as JSON, or with --json {\"id\",\n"
    "\"state\", \"code\", \"value\" or \"error\"}. Failures go to stderr "
    "(plain)\n"
    "or into the JSON line. The exit code is that of the first id that did\n"
    "not succeed (1 failed, 3 timeout, 4 unreachable, 5 unknown id).\n"
    "\n"
    "example:\n"
    "  a=$(tq submit tq.sleep 1); b=$(tq submit tq.echo x)\n"
    "  tq wait \"$a\" \"$b\" --timeout 30\n";

const char *const tq_cli_usage_cancel =
    "usage: tq [--broker EP] cancel ID [--timeout SEC] [--json]\n"
    "\n"
    "Cancels a task: a waiting one ends CANCELLED at once, a running one's\n"
    "worker child is stopped. Exit 0 when cancelled, 5 for an unknown id, 1\n"
    "if the task was already final (its outcome is kept). --json prints\n"
    "{\"id\", \"code\", \"cancelled\"}.\n"
    "\n"
    "example:\n"
    "  id=$(tq submit tq.sleep 60); tq cancel \"$id\"\n";

const char *const tq_cli_usage_status =
    "usage: tq [--broker EP] status [--watch] [--interval SEC] [--count N]\n"
    "          [--json] [--timeout SEC]\n"
    "\n"
    "Shows per queue: tasks waiting and running, done per second, done and\n"
    "failed in total, age of the oldest waiting task; per worker host: "
    "its\n"
    "processes, how many are busy and idle, tasks done and peak RSS; the "
    "task\n"
    "names that no connected worker provides; the broker's counters.\n"
    "\n"
    "  --watch         redraw every --interval SEC (default 1) until "
    "interrupted\n"
    "                  (or --count N times); with --json one line per "
    "refresh\n"
    "  --json          print the broker's whole STATUS body as JSON\n"
    "  --timeout SEC   how long to wait for the broker (default 5)\n"
    "\n"
    "example:\n"
    "  tq status --watch --interval 2\n"
    "  tq status --json | jq '.queues[] | {name, waiting}'\n";

const char *const tq_cli_usage_workers =
    "usage: tq [--broker EP] workers [--json] [--timeout SEC]\n"
    "\n"
    "Lists every worker process the broker knows: host, supervisor pid, "
    "pid,\n"
    "credit, tasks running, busy, tasks done, RSS, queues and task names.\n"
    "--json prints the STATUS \"workers\" array.\n"
    "\n"
    "example:\n"
    "  tq workers --json | jq 'length'\n";

const char *const tq_cli_usage_failed =
    "usage: tq [--broker EP] failed [--json] [--timeout SEC]\n"
    "\n"
    "Lists the dead letters: tasks that failed for good (retries used up,\n"
    "workers lost). tq retry ID runs one again. --json prints the broker's\n"
    "reply {\"failed\": [...]}.\n"
    "\n"
    "example:\n"
    "  tq failed --json | jq -r '.failed[].id' | xargs -n1 tq retry\n";

const char *const tq_cli_usage_retry =
    "usage: tq [--broker EP] retry ID [--json] [--timeout SEC]\n"
    "\n"
    "Queues a dead letter (see tq failed) again under the same id. Exit 0 "
    "when\n"
    "requeued, 5 for an unknown id, 1 if the task is not a dead letter.\n"
    "--json prints {\"id\", \"code\"}.\n"
    "\n"
    "example:\n"
    "  tq retry 3f2a...e1 && tq get 3f2a...e1 --wait\n";

const char *const tq_cli_usage_purge =
    "usage: tq [--broker EP] purge QUEUE [--yes] [--json] [--timeout SEC]\n"
    "\n"
    "Drops every waiting task of QUEUE (running tasks finish). On a "
    "terminal\n"
    "asks for confirmation unless --yes; off a terminal it refuses (exit 2)\n"
    "unless --yes. Prints how many tasks were dropped; --json prints\n"
    "{\"queue\", \"purged\"}.\n"
    "\n"
    "example:\n"
    "  tq purge default --yes\n";

/* Options most operator verbs share. */
typedef struct {
    bool as_json;
    bool timed; /* --timeout given */
    int timeout_ms;
    char **args; /* positional arguments (borrowed from argv) */
    int nargs;
} s_opts_t;

/* A verb's own option: its getopt entry and its handler, which returns
   0 or a usage error's exit code. */
typedef struct {
    struct option opt;
    int (*handle)(const char *value, void *arg);
} s_extra_t;

/* Parses --json, --timeout SEC, the verb's extra options (may be NULL,
   count entries) and up to max positionals (-1: any number). */
static int
s_parse(int argc, char **argv, const char *usage, int max, s_opts_t *o,
        const s_extra_t *extra, int count, void *arg)
{
    enum { O_JSON = 256, O_TIMEOUT, O_EXTRA };
    struct option options[16] = {
        {"json", no_argument, NULL, O_JSON},
        {"timeout", required_argument, NULL, O_TIMEOUT},
    };
    char shorts[16] = ":";
    for (int i = 0; i < count && i < 12; i++) {
        options[2 + i] = extra[i].opt;
        int val = extra[i].opt.val;
        if ((val >= 'a' && val <= 'z') || (val >= 'A' && val <= 'Z')) {
            size_t n = strlen(shorts);
            shorts[n] = (char)extra[i].opt.val;
            shorts[n + 1] = 0;
        } else
            options[2 + i].val = O_EXTRA + i;
    }
    memset(o, 0, sizeof *o);
    o->timeout_ms = TQ_CLI_REQUEST_MS;
    char **gargv = argv - 1;
    int opt;
    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc + 1, gargv, shorts, options, NULL)) !=
           -1) {
        if (opt == O_JSON)
            o->as_json = true;
        else if (opt == O_TIMEOUT) {
            o->timed = true;
            o->timeout_ms = tq_cli_parse_seconds(optarg);
            if (o->timeout_ms < 0)
                return tq_cli_usage_error(usage, "--timeout %s: not a "
                                                 "duration",
                                          optarg);
        } else if (opt == '?' || opt == ':')
            return tq_cli_option_error(usage, opt, gargv);
        else {
            int k = opt >= O_EXTRA ? opt - O_EXTRA : -1;
            for (int i = 0; k < 0 && i < count; i++)
                if (extra[i].opt.val == opt)
                    k = i;
            int rc = k >= 0 ? extra[k].handle(optarg, arg) : 0;
            if (rc)
                return rc;
        }
    }
    o->args = gargv + optind;
    o->nargs = argc + 1 - optind;
    if (max >= 0 && o->nargs > max)
        return tq_cli_usage_error(usage, "%s: unexpected argument",
                                  o->args[max]);
    return TQ_CLI_EXIT_OK;
}

/* Prints {"id": id, "code": NAME, key: flag} (key may be NULL). */
static void
s_print_code(const char *id, int code, const char *key, bool flag)
{
    json_t *j = json_pack("{s:s,s:s}", "id", id, "code",
                          tq_cli_code_name(code));
    if (key)
        json_object_set_new(j, key, json_boolean(flag));
    tq_cli_print_json(j, false);
    json_decref(j);
}

/* ---- wait --------------------------------------------------------------- */

int
tq_cli_wait(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_wait, -1, &o, NULL, 0, NULL);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    if (!o.nargs)
        return tq_cli_usage_error(tq_cli_usage_wait, "%s", "missing ID");
    /* the default 5 s suits requests; waiting for tasks is unbounded
       unless asked */
    tq_result_t **results = calloc((size_t)o.nargs, sizeof *results);
    if (!results)
        return tq_cli_error(TQ_ENOMEM, NULL);
    for (int i = 0; i < o.nargs; i++) {
        results[i] = tq_client_fetch(client, o.args[i], true);
        if (!results[i]) {
            for (int k = 0; k < i; k++)
                tq_result_destroy(&results[k]);
            free(results);
            return tq_cli_usage_error(tq_cli_usage_wait,
                                      "%s: not a valid task id", o.args[i]);
        }
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t deadline = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000 +
                       o.timeout_ms;
    rc = TQ_CLI_EXIT_OK;
    for (int i = 0; i < o.nargs; i++) {
        int left = -1;
        if (o.timed) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t now = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
            left = now >= deadline ? 0 : (int)(deadline - now);
        }
        int code = tq_result_get(results[i], left);
        if (o.as_json) {
            json_t *j = tq_cli_result_json(results[i], code);
            tq_cli_print_json(j, false);
            json_decref(j);
        } else if (code == TQ_OK) {
            const msgpack_object *v = tq_result_value(results[i]);
            json_t *j = v ? tq_cli_to_json(v) : json_null();
            tq_cli_print_json(j, false);
            json_decref(j);
        } else if (code == TQ_EUNKNOWN)
            tq_cli_unknown_id(o.args[i]);
        else {
            const char *text = code == TQ_ETIMEDOUT
                                   ? "the wait timed out"
                                   : tq_result_error(results[i]);
            tq_cli_error(code, "%s: %s", o.args[i],
                         *text ? text : tq_strerror(code));
        }
        if (code != TQ_OK && rc == TQ_CLI_EXIT_OK)
            rc = tq_cli_exit_code(code);
        tq_result_destroy(&results[i]);
    }
    free(results);
    return rc;
}

/* ---- cancel, retry ------------------------------------------------------ */

int
tq_cli_cancel(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_cancel, 1, &o, NULL, 0, NULL);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    if (o.nargs != 1)
        return tq_cli_usage_error(tq_cli_usage_cancel, "%s", "missing ID");
    const char *id = o.args[0];
    int code = tq_client_cancel(client, id, o.timeout_ms);
    if (code == TQ_EINVAL)
        return tq_cli_usage_error(tq_cli_usage_cancel,
                                  "%s: not a valid task id", id);
    if (o.as_json)
        s_print_code(id, code, "cancelled", code == TQ_OK);
    if (code == TQ_OK) {
        if (!o.as_json)
            printf("%s cancelled\n", id);
        return TQ_CLI_EXIT_OK;
    }
    if (code == TQ_EUNKNOWN && !o.as_json)
        return tq_cli_unknown_id(id);
    if (code == TQ_EUNKNOWN || code == TQ_ETIMEDOUT ||
        code == TQ_EUNREACHABLE)
        return o.as_json ? tq_cli_exit_code(code)
                         : tq_cli_error(code, "%s: %s", id,
                                        tq_strerror(code));
    /* the task had ended before the request: its outcome stands */
    if (!o.as_json)
        fprintf(stderr, "error: %s: %s: already final, not cancelled\n", id,
                tq_cli_code_name(code));
    return TQ_CLI_EXIT_TASK;
}

int
tq_cli_retry(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_retry, 1, &o, NULL, 0, NULL);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    if (o.nargs != 1)
        return tq_cli_usage_error(tq_cli_usage_retry, "%s", "missing ID");
    const char *id = o.args[0];
    int code = tq_client_retry(client, id, o.timeout_ms);
    if (code == TQ_EINVAL)
        return tq_cli_usage_error(tq_cli_usage_retry,
                                  "%s: not a valid task id", id);
    if (o.as_json) {
        s_print_code(id, code, NULL, false);
        return tq_cli_exit_code(code);
    }
    if (code == TQ_OK) {
        printf("%s requeued\n", id);
        return TQ_CLI_EXIT_OK;
    }
    if (code == TQ_ESTATE)
        return tq_cli_error(code, "%s: not in the dead-letter list (see tq "
                                  "failed)", id);
    if (code == TQ_EUNKNOWN)
        return tq_cli_unknown_id(id);
    return tq_cli_error(code, "%s: %s", id, tq_strerror(code));
}

/* ---- status, workers ---------------------------------------------------- */

static long long
s_int(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_integer(v))
        return (long long)json_integer_value(v);
    if (json_is_real(v))
        return (long long)json_real_value(v);
    if (json_is_boolean(v))
        return json_is_true(v);
    return 0;
}

static bool
s_has(const json_t *obj, const char *key)
{
    return json_object_get(obj, key) != NULL;
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

/* "12ms", "3.4s", "5m02s", "2h10m": a short age for a table cell. */
static const char *
s_age(long long ms, char *buf, size_t size)
{
    if (ms < 1000)
        snprintf(buf, size, "%lldms", ms);
    else if (ms < 60000)
        snprintf(buf, size, "%.1fs", ms / 1000.0);
    else if (ms < 3600000)
        snprintf(buf, size, "%lldm%02llds", ms / 60000, ms / 1000 % 60);
    else
        snprintf(buf, size, "%lldh%02lldm", ms / 3600000, ms / 60000 % 60);
    return buf;
}

/* "812K", "35.2M", "1.3G" from kilobytes. */
static const char *
s_size(long long kb, char *buf, size_t size)
{
    if (kb < 1024)
        snprintf(buf, size, "%lldK", kb);
    else if (kb < 1024 * 1024)
        snprintf(buf, size, "%.1fM", kb / 1024.0);
    else
        snprintf(buf, size, "%.1fG", kb / (1024.0 * 1024.0));
    return buf;
}

/* The "done" of queue name in a previous STATUS, -1 if unknown. */
static long long
s_prev_done(const json_t *prev, const char *name)
{
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(prev, "queues"), i, q)
        if (streq(s_text(q, "name"), name))
            return s_has(q, "done") ? s_int(q, "done") : -1;
    return -1;
}

/* Per worker host (host name and supervisor pid) aggregates. */
typedef struct {
    const char *host;
    long long ppid, procs, busy, done, rss_kb;
    bool has_rss, has_busy;
    const json_t *tasks;
} s_host_t;

static void
s_print_status(const json_t *st, const json_t *prev, double interval_s)
{
    char a[64], b[64];
    printf("broker %s, pid %lld, up %s\n", s_text(st, "version"),
           s_int(st, "pid"), s_age(s_int(st, "uptime_ms"), a, sizeof a));
    if (s_has(st, "role")) {
        /* on a PostgreSQL store shared by several brokers */
        const json_t *lease = json_object_get(st, "lease");
        printf("role %s, lease epoch %lld, owner %s\n", s_text(st, "role"),
               s_int(lease, "epoch"), s_text(lease, "owner"));
    }
    size_t i;
    json_t *item;

    json_t *arr = json_object_get(st, "queues");
    printf("\nQUEUE                    WAITING  RUNNING   DONE/S       DONE  "
           "  FAILED  OLDEST\n");
    if (!json_array_size(arr))
        printf("(no queues)\n");
    json_array_foreach(arr, i, item)
    {
        const char *name = s_text(item, "name");
        long long prev_done = prev ? s_prev_done(prev, name) : -1;
        char rate[32] = "-", done[32] = "-", failed[32] = "-",
             oldest[32] = "-";
        if (s_has(item, "done")) {
            snprintf(done, sizeof done, "%lld", s_int(item, "done"));
            if (prev_done >= 0 && interval_s > 0)
                snprintf(rate, sizeof rate, "%.1f",
                         (double)(s_int(item, "done") - prev_done) /
                             interval_s);
        }
        if (s_has(item, "failed"))
            snprintf(failed, sizeof failed, "%lld", s_int(item, "failed"));
        if (s_has(item, "oldest_ms") && s_int(item, "waiting") > 0)
            s_age(s_int(item, "oldest_ms"), oldest, sizeof oldest);
        printf("%-24s %8lld %8lld %8s %10s %8s  %s\n", name,
               s_int(item, "waiting"), s_int(item, "running"), rate, done,
               failed, oldest);
    }

    /* one row per worker host: the broker lists each child */
    arr = json_object_get(st, "workers");
    size_t nworkers = json_array_size(arr);
    s_host_t *hosts = calloc(nworkers ? nworkers : 1, sizeof *hosts);
    size_t nhosts = 0;
    json_array_foreach(arr, i, item)
    {
        const char *host = s_text(item, "host");
        long long ppid = s_int(item, "ppid");
        s_host_t *h = NULL;
        for (size_t k = 0; k < nhosts && !h; k++)
            if (hosts[k].ppid == ppid && streq(hosts[k].host, host))
                h = &hosts[k];
        if (!h && hosts) {
            h = &hosts[nhosts++];
            h->host = host;
            h->ppid = ppid;
            h->tasks = json_object_get(item, "tasks");
        }
        if (!h)
            continue;
        h->procs++;
        bool busy = s_has(item, "busy") ? s_int(item, "busy") > 0
                                        : s_int(item, "running") > 0;
        h->busy += busy;
        h->done += s_int(item, "done");
        if (s_has(item, "rss_kb")) {
            h->has_rss = true;
            if (s_int(item, "rss_kb") > h->rss_kb)
                h->rss_kb = s_int(item, "rss_kb");
        }
    }
    printf("\nHOST                         PID  PROCS   BUSY   IDLE       "
           "DONE  PEAK RSS  TASKS\n");
    if (!nhosts)
        printf("(no worker hosts)\n");
    char tasks[1024];
    for (size_t k = 0; k < nhosts; k++) {
        s_host_t *h = &hosts[k];
        printf("%-24s %8lld %6lld %6lld %6lld %10lld %9s  %s\n", h->host,
               h->ppid, h->procs, h->busy, h->procs - h->busy, h->done,
               h->has_rss ? s_size(h->rss_kb, b, sizeof b) : "-",
               s_join(h->tasks, tasks, sizeof tasks));
    }
    free(hosts);

    arr = json_object_get(st, "unserved");
    if (json_array_size(arr)) {
        printf("\nUNSERVED: no connected worker provides these tasks\n");
        printf("TASK                     QUEUE             WAITING\n");
        json_array_foreach(arr, i, item)
            printf("%-24s %-16s %8lld\n", s_text(item, "task"),
                   s_text(item, "queue"), s_int(item, "waiting"));
    }

    json_t *counters = json_object_get(st, "counters");
    printf("\ncounters:");
    const char *key;
    json_object_foreach(counters, key, item)
        printf(" %s=%lld", key,
               (long long)(json_is_integer(item) ? json_integer_value(item)
                                                 : 0));
    printf("\n");
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Options of status only. */
typedef struct {
    bool watch;
    int interval_ms;
    long count; /* refreshes with --watch, 0: until interrupted */
} s_status_opts_t;

static int
s_status_watch(const char *value, void *arg)
{
    (void)value;
    ((s_status_opts_t *)arg)->watch = true;
    return 0;
}

static int
s_status_interval(const char *value, void *arg)
{
    s_status_opts_t *so = arg;
    so->interval_ms = tq_cli_parse_seconds(value);
    if (so->interval_ms < 100)
        return tq_cli_usage_error(tq_cli_usage_status,
                                  "--interval %s: not a duration >= 0.1",
                                  value);
    return 0;
}

static int
s_status_count(const char *value, void *arg)
{
    s_status_opts_t *so = arg;
    if (!tq_cli_parse_long(value, 1, 1L << 30, &so->count))
        return tq_cli_usage_error(tq_cli_usage_status,
                                  "--count %s: not a positive number", value);
    return 0;
}

static const s_extra_t s_status_options[] = {
    {{"watch", no_argument, NULL, 0}, s_status_watch},
    {{"interval", required_argument, NULL, 0}, s_status_interval},
    {{"count", required_argument, NULL, 0}, s_status_count},
};

int
tq_cli_status(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    s_status_opts_t so = {false, 1000, 0};
    int rc = s_parse(argc, argv, tq_cli_usage_status, 0, &o, s_status_options,
                     3, &so);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    json_t *st = NULL, *prev = NULL;
    int64_t prev_ms = 0;
    bool tty = isatty(STDOUT_FILENO);
    /* one-shot human output samples twice so done/s means "now", not an
       average since the broker started */
    if (!so.watch && !o.as_json) {
        rc = tq_cli_fetch_status(client, o.timeout_ms, &prev);
        if (rc != TQ_CLI_EXIT_OK)
            return rc;
        prev_ms = s_now_ms();
        s_sleep_ms(250);
    }
    for (long n = 0;; n++) {
        rc = tq_cli_fetch_status(client, o.timeout_ms, &st);
        if (rc != TQ_CLI_EXIT_OK)
            break;
        int64_t now = s_now_ms();
        if (o.as_json)
            tq_cli_print_json(st, !so.watch);
        else {
            if (so.watch && tty)
                fputs("\033[H\033[2J", stdout); /* home, clear screen */
            else if (so.watch && n > 0)
                putchar('\n');
            s_print_status(st, prev, prev ? (now - prev_ms) / 1000.0 : 0);
        }
        fflush(stdout);
        json_decref(prev);
        prev = st;
        st = NULL;
        prev_ms = now;
        if (!so.watch || (so.count && n + 1 >= so.count))
            break;
        s_sleep_ms(so.interval_ms);
    }
    json_decref(prev);
    return rc;
}

int
tq_cli_workers(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_workers, 0, &o, NULL, 0, NULL);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    json_t *st;
    rc = tq_cli_fetch_status(client, o.timeout_ms, &st);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    json_t *arr = json_object_get(st, "workers");
    if (o.as_json) {
        json_t *out = json_is_array(arr) ? json_incref(arr) : json_array();
        tq_cli_print_json(out, false);
        json_decref(out);
        json_decref(st);
        return TQ_CLI_EXIT_OK;
    }
    printf("HOST                      PPID      PID CREDIT RUNNING BUSY       "
           "DONE      RSS  QUEUES           TASKS\n");
    size_t i;
    json_t *item;
    char queues[512], tasks[1024], rss[32];
    json_array_foreach(arr, i, item)
    {
        bool busy = s_has(item, "busy") ? s_int(item, "busy") > 0
                                        : s_int(item, "running") > 0;
        printf("%-20s %9lld %8lld %6lld %7lld %4s %10lld %8s  %-16s %s\n",
               s_text(item, "host"), s_int(item, "ppid"), s_int(item, "pid"),
               s_int(item, "credit"), s_int(item, "running"),
               busy ? "yes" : "no", s_int(item, "done"),
               s_has(item, "rss_kb")
                   ? s_size(s_int(item, "rss_kb"), rss, sizeof rss)
                   : "-",
               s_join(json_object_get(item, "queues"), queues, sizeof queues),
               s_join(json_object_get(item, "tasks"), tasks, sizeof tasks));
    }
    if (!json_array_size(arr))
        printf("(no workers)\n");
    json_decref(st);
    return TQ_CLI_EXIT_OK;
}

/* ---- failed, purge ------------------------------------------------------ */

int
tq_cli_failed(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    int rc = s_parse(argc, argv, tq_cli_usage_failed, 0, &o, NULL, 0, NULL);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    tq_buf_t body;
    int code = tq_client_failed(client, &body, o.timeout_ms);
    if (code != TQ_OK)
        return tq_cli_error(code, "no dead-letter list from the broker at "
                                  "%s: %s",
                            tq_client_endpoint(client), tq_strerror(code));
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    json_t *reply = NULL;
    if (msgpack_unpack_next(&up, body.data, body.size, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP)
        reply = tq_cli_to_json(&up.data);
    msgpack_unpacked_destroy(&up);
    tq_buf_free(&body);
    if (!reply)
        return tq_cli_error(TQ_EPROTO, "the reply is not a msgpack map");
    json_t *arr = json_object_get(reply, "failed");
    if (o.as_json)
        tq_cli_print_json(reply, false);
    else {
        printf("ID                                TASK                 QUEUE   "
               "        CODE            ERROR\n");
        size_t i;
        json_t *item;
        json_array_foreach(arr, i, item)
        {
            const char *codename = s_text(item, "code");
            if (json_is_integer(json_object_get(item, "code")))
                codename = tq_cli_code_name((int)s_int(item, "code"));
            printf("%-33s %-20s %-14s %-15s %s\n", s_text(item, "id"),
                   s_text(item, "task"), s_text(item, "queue"), codename,
                   s_text(item, "error"));
        }
        if (!json_array_size(arr))
            printf("(no dead letters)\n");
    }
    json_decref(reply);
    return TQ_CLI_EXIT_OK;
}

static int
s_purge_yes(const char *value, void *arg)
{
    (void)value;
    *(bool *)arg = true;
    return 0;
}

static const s_extra_t s_purge_options[] = {
    {{"yes", no_argument, NULL, 'y'}, s_purge_yes},
};

int
tq_cli_purge(tq_client_t *client, int argc, char **argv)
{
    s_opts_t o;
    bool yes = false;
    int rc = s_parse(argc, argv, tq_cli_usage_purge, 1, &o, s_purge_options,
                     1, &yes);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    if (o.nargs != 1)
        return tq_cli_usage_error(tq_cli_usage_purge, "%s", "missing QUEUE");
    const char *queue = o.args[0];
    if (!yes) {
        if (!isatty(STDIN_FILENO))
            return tq_cli_usage_error(tq_cli_usage_purge,
                                      "refusing to purge %s without --yes "
                                      "when not on a terminal",
                                      queue);
        json_t *st = NULL;
        long long waiting = -1;
        if (tq_cli_fetch_status(client, o.timeout_ms, &st) == 0) {
            size_t i;
            json_t *q;
            json_array_foreach(json_object_get(st, "queues"), i, q)
                if (streq(s_text(q, "name"), queue))
                    waiting = s_int(q, "waiting");
        }
        json_decref(st);
        if (waiting >= 0)
            fprintf(stderr, "Drop the %lld waiting task(s) of queue %s? "
                            "[y/N] ", waiting, queue);
        else
            fprintf(stderr, "Drop every waiting task of queue %s? [y/N] ",
                    queue);
        fflush(stderr);
        char answer[16] = "";
        if (!fgets(answer, sizeof answer, stdin) ||
            (answer[0] != 'y' && answer[0] != 'Y')) {
            fprintf(stderr, "tq: not purged\n");
            return TQ_CLI_EXIT_TASK;
        }
    }
    uint64_t purged = 0;
    int code = tq_client_purge(client, queue, &purged, o.timeout_ms);
    if (code == TQ_EINVAL)
        return tq_cli_usage_error(tq_cli_usage_purge,
                                  "%s: not a valid queue name", queue);
    if (code != TQ_OK)
        return tq_cli_error(code, "purge %s: %s", queue, tq_strerror(code));
    if (o.as_json) {
        json_t *j = json_pack("{s:s,s:I}", "queue", queue, "purged",
                              (json_int_t)purged);
        tq_cli_print_json(j, false);
        json_decref(j);
    } else
        printf("purged %llu task(s) from %s\n", (unsigned long long)purged,
               queue);
    return TQ_CLI_EXIT_OK;
}
