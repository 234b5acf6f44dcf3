/* tq_http_metrics.c - STATUS (PROTOCOL.md section 8) as Prometheus text.
   Every family is written whole (HELP, TYPE, then its samples), as the
   exposition format requires; labels are escaped. */
#include "tq_http_metrics.h"

#include <string.h>

bool
tq_http_sample_read(const msgpack_object *status, int64_t t_ms,
                    tq_http_sample_t *sample)
{
    const msgpack_object *c = tq_http_map_get(status, "counters");
    if (!c || c->type != MSGPACK_OBJECT_MAP)
        return false;
    sample->t_ms = t_ms;
    sample->completed = tq_http_map_uint(c, "completed", 0);
    sample->failed = tq_http_map_uint(c, "failed", 0);
    return true;
}

double
tq_http_sample_rate(const tq_http_sample_t *older,
                    const tq_http_sample_t *newer)
{
    if (newer->t_ms <= older->t_ms || newer->completed < older->completed ||
        newer->failed < older->failed)
        return 0;
    uint64_t done =
        newer->completed - older->completed + newer->failed - older->failed;
    return (double)done * 1000.0 / (double)(newer->t_ms - older->t_ms);
}

/* A label value: backslash, double quote and newline escaped. */
static void
s_label(tq_http_text_t *out, const msgpack_object *o)
{
    if (!o || o->type != MSGPACK_OBJECT_STR) {
        tq_http_text_append(out, "?", 1);
        return;
    }
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        char c = o->via.str.ptr[i];
        if (c == '\\' || c == '"')
            tq_http_text_printf(out, "\\%c", c);
        else if (c == '\n')
            tq_http_text_append(out, "\\n", 2);
        else
            tq_http_text_append(out, &c, 1);
    }
}

static void
s_family(tq_http_text_t *out, const char *name, const char *type,
         const char *help)
{
    tq_http_text_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                        type);
}

static const msgpack_object *
s_array(const msgpack_object *status, const char *key)
{
    const msgpack_object *a = tq_http_map_get(status, key);
    return a && a->type == MSGPACK_OBJECT_ARRAY ? a : NULL;
}

/* One family per queue field: tq_queue_<name>{queue="..."}. */
static void
s_queues(const msgpack_object *status, tq_http_text_t *out)
{
    static const struct {
        const char *key, *name, *type, *help;
        double scale;
    } fields[] = {
        {"waiting", "tq_queue_waiting", "gauge", "Tasks waiting for a worker.",
         1},
        {"running", "tq_queue_running", "gauge",
         "Tasks running on a worker child.", 1},
        {"delayed", "tq_queue_delayed", "gauge",
         "Tasks waiting for a countdown or a retry backoff.", 1},
        {"done", "tq_queue_done", "counter", "Tasks that succeeded.", 1},
        {"failed", "tq_queue_failed", "counter", "Tasks that failed for good.",
         1},
        {"oldest_ms", "tq_queue_oldest_waiting_seconds", "gauge",
         "Age of the oldest waiting task.", 0.001},
    };
    const msgpack_object *queues = s_array(status, "queues");
    if (!queues)
        return;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        s_family(out, fields[f].name, fields[f].type, fields[f].help);
        for (uint32_t i = 0; i < queues->via.array.size; i++) {
            const msgpack_object *q = &queues->via.array.ptr[i];
            tq_http_text_printf(out, "%s{queue=\"", fields[f].name);
            s_label(out, tq_http_map_get(q, "name"));
            uint64_t v = tq_http_map_uint(q, fields[f].key, 0);
            if (fields[f].scale == 1)
                tq_http_text_printf(out, "\"} %llu\n", (unsigned long long)v);
            else
                tq_http_text_printf(out, "\"} %.3f\n",
                                    (double)v * fields[f].scale);
        }
    }
}

/* The workers array holds one entry per child: sum them per host. */
static void
s_hosts(const msgpack_object *status, tq_http_text_t *out)
{
    static const struct {
        const char *name, *type, *help;
    } fields[] = {
        {"tq_host_children", "gauge", "Worker children connected."},
        {"tq_host_busy", "gauge", "Worker children holding a task."},
        {"tq_host_tasks_done", "counter",
         "Tasks the host's current children finished."},
        {"tq_host_rss_bytes", "gauge",
         "Sum of the children's peak resident set sizes."},
    };
    const msgpack_object *workers = s_array(status, "workers");
    if (!workers)
        return;
    uint32_t n = workers->via.array.size;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        s_family(out, fields[f].name, fields[f].type, fields[f].help);
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *w = &workers->via.array.ptr[i];
            const msgpack_object *host = tq_http_map_get(w, "host");
            if (!host || host->type != MSGPACK_OBJECT_STR)
                continue;
            /* first child of its host? (hosts are few: quadratic is fine) */
            bool first = true;
            for (uint32_t j = 0; j < i && first; j++) {
                const msgpack_object *h =
                    tq_http_map_get(&workers->via.array.ptr[j], "host");
                first = !(h && h->type == MSGPACK_OBJECT_STR &&
                          h->via.str.size == host->via.str.size &&
                          memcmp(h->via.str.ptr, host->via.str.ptr,
                                 host->via.str.size) == 0);
            }
            if (!first)
                continue;
            uint64_t sum = 0;
            for (uint32_t j = i; j < n; j++) {
                const msgpack_object *c = &workers->via.array.ptr[j];
                const msgpack_object *h = tq_http_map_get(c, "host");
                if (!h || h->type != MSGPACK_OBJECT_STR ||
                    h->via.str.size != host->via.str.size ||
                    memcmp(h->via.str.ptr, host->via.str.ptr,
                           host->via.str.size) != 0)
                    continue;
                const msgpack_object *busy = tq_http_map_get(c, "busy");
                switch (f) {
                case 0:
                    sum++;
                    break;
                case 1:
                    sum += busy && busy->type == MSGPACK_OBJECT_BOOLEAN &&
                        busy->via.boolean;
                    break;
                case 2:
                    sum += tq_http_map_uint(c, "done", 0);
                    break;
                default:
                    sum += tq_http_map_uint(c, "rss_kb", 0) * 1024;
                    break;
                }
            }
            tq_http_text_printf(out, "%s{host=\"", fields[f].name);
            s_label(out, host);
            tq_http_text_printf(out, "\"} %llu\n", (unsigned long long)sum);
        }
    }
}

/* counters.<name> as tq_broker_<name>_total, whatever names the broker
   sends (only well-formed metric names). */
static void
s_counters(const msgpack_object *status, tq_http_text_t *out)
{
    const msgpack_object *c = tq_http_map_get(status, "counters");
    if (!c || c->type != MSGPACK_OBJECT_MAP)
        return;
    for (uint32_t i = 0; i < c->via.map.size; i++) {
        const msgpack_object *k = &c->via.map.ptr[i].key;
        const msgpack_object *v = &c->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0 ||
            k->via.str.size > 64 || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            continue;
        bool ok = true;
        for (uint32_t j = 0; j < k->via.str.size && ok; j++) {
            char ch = k->via.str.ptr[j];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                ch == '_';
        }
        if (!ok)
            continue;
        char name[96];
        snprintf(name, sizeof name, "tq_broker_%.*s_total",
                 (int)k->via.str.size, k->via.str.ptr);
        s_family(out, name, "counter", "Broker counter (PROTOCOL.md 8).");
        tq_http_text_printf(out, "%s %llu\n", name,
                            (unsigned long long)v->via.u64);
    }
}

/* status.store: {"commits", "commit_us_sum", "commit_us_buckets":
   [[le_us, count], ...]} with per-bucket (not cumulative) counts, bounds
   ascending; commits above the last bound count in "commits" only. */
static void
s_store(const msgpack_object *status, tq_http_text_t *out)
{
    const msgpack_object *store = tq_http_map_get(status, "store");
    const msgpack_object *buckets = tq_http_map_get(store, "commit_us_buckets");
    if (!store || !buckets || buckets->type != MSGPACK_OBJECT_ARRAY)
        return;
    const char *name = "tq_store_commit_seconds";
    s_family(out, name, "histogram",
             "Time one store commit (a loop pass's batch) took.");
    uint64_t cumulative = 0;
    for (uint32_t i = 0; i < buckets->via.array.size; i++) {
        const msgpack_object *b = &buckets->via.array.ptr[i];
        if (b->type != MSGPACK_OBJECT_ARRAY || b->via.array.size != 2 ||
            b->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
            b->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            continue;
        cumulative += b->via.array.ptr[1].via.u64;
        tq_http_text_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name,
                            (double)b->via.array.ptr[0].via.u64 / 1e6,
                            (unsigned long long)cumulative);
    }
    uint64_t commits = tq_http_map_uint(store, "commits", cumulative);
    tq_http_text_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name,
                        (unsigned long long)commits);
    tq_http_text_printf(out, "%s_sum %.6f\n", name,
                        (double)tq_http_map_uint(store, "commit_us_sum", 0) /
                            1e6);
    tq_http_text_printf(out, "%s_count %llu\n", name,
                        (unsigned long long)commits);
}

int
tq_http_metrics_render(const msgpack_object *status, double tasks_per_s,
                       tq_http_text_t *out)
{
    if (!status || status->type != MSGPACK_OBJECT_MAP)
        return -1;
    s_family(out, "tq_broker_up", "gauge", "1 while the broker answers.");
    tq_http_text_printf(out, "tq_broker_up 1\n");
    s_family(out, "tq_broker_uptime_seconds", "gauge",
             "Time since the broker started.");
    tq_http_text_printf(out, "tq_broker_uptime_seconds %.3f\n",
                        (double)tq_http_map_uint(status, "uptime_ms", 0) /
                            1000.0);
    s_family(out, "tq_broker_memory_bytes", "gauge",
             "Bytes of arguments and results the broker holds.");
    tq_http_text_printf(
        out, "tq_broker_memory_bytes %llu\n",
        (unsigned long long)tq_http_map_uint(status, "memory", 0));
    if (tasks_per_s >= 0) {
        s_family(out, "tq_broker_tasks_per_second", "gauge",
                 "Tasks that became final per second, between the last two "
                 "samples.");
        tq_http_text_printf(out, "tq_broker_tasks_per_second %.3f\n",
                            tasks_per_s);
    }
    s_queues(status, out);
    s_hosts(status, out);
    s_counters(status, out);
    s_store(status, out);
    return 0;
}
