/* tq_pool_map.c - the pool's map family (map, starmap, map_async, imap):
   items travel in chunks, one task (tq.pool.chunk) per chunk as Python's
   Pool sends them, and each chunk's answer is split into one final handle
   per item. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq_client_internal.h"
#include "tq_pool_internal.h"
#include "tq_pool_server.h"
#include "tq_proto.h"

/* One submitted task: a chunk of count items from first, or one item. */
typedef struct {
    tq_result_t *handle; /* the task's, NULL once split */
    size_t first; /* index of its first item */
    size_t count; /* items */
} s_chunk_t;

struct tq_result_set_t {
    size_t count; /* items */
    tq_result_t **results; /* per item; NULL until its chunk is split */
    s_chunk_t *chunks; /* in submission order */
    size_t chunk_count;
    bool chunked; /* chunks of items; else results[] are the tasks */
    size_t chunk_size; /* items per chunk (the last may have fewer) */
    char error[TQ_PROTO_MAX_ERROR + 32]; /* tq_values_t: first failure */
};

struct tq_pool_imap_t {
    tq_result_set_t *set;
    size_t next; /* index of the next handle to hand out */
};

/* Python's default: chunksize, extra = divmod(n, processes * 4), plus one
   if extra. */
static size_t
s_chunksize(tq_pool_t *pool, size_t count, bool imap)
{
    size_t option = tq_pool_chunksize(pool);
    if (option)
        return option;
    if (imap)
        return 1;
    size_t per = (size_t)tq_pool_processes(pool) * 4;
    size_t size = count / per + (count % per ? 1 : 0);
    return size ? size : 1;
}

/* True if item is a packed argument array; of one argument unless star
   (Python's map calls f(item)). */
static bool
s_valid_item(const tq_buf_t *item, bool star)
{
    if (!item->data || item->size < 1)
        return false;
    unsigned char head = ((const unsigned char *)item->data)[0];
    return star ? (head & 0xf0) == 0x90 || head == 0xdc || head == 0xdd
                : item->size >= 2 && head == 0x91;
}

/* Bytes of a chunk task's arguments before its items. */
static size_t
s_head_size(const char *task)
{
    return 3 + strlen(task) + 5 + 5;
}

/* Writes the head of a chunk task's arguments at p: [task, bin of [count
   items taking bytes...]]; returns where the items go. */
static unsigned char *
s_chunk_head(unsigned char *p, const char *task, size_t count, size_t bytes)
{
    size_t len = strlen(task);
    uint32_t bin = (uint32_t)(5 + bytes);
    *p++ = 0x92;
    *p++ = 0xd9; /* str 8: task names are at most 255 bytes */
    *p++ = (unsigned char)len;
    memcpy(p, task, len);
    p += len;
    *p++ = 0xc6; /* bin 32 */
    *p++ = (unsigned char)(bin >> 24);
    *p++ = (unsigned char)(bin >> 16);
    *p++ = (unsigned char)(bin >> 8);
    *p++ = (unsigned char)bin;
    *p++ = 0xdd; /* array 32 */
    *p++ = (unsigned char)(count >> 24);
    *p++ = (unsigned char)(count >> 16);
    *p++ = (unsigned char)(count >> 8);
    *p++ = (unsigned char)count;
    return p;
}

/* The arguments of a chunk task: [task, [items[first], ...]], in one
   buffer of the exact size; each item checked as it is copied (one pass
   over the items' memory). TQ_EINVAL for a bad item. */
static int
s_chunk_args(tq_buf_t *out, const char *task, const tq_buf_t *items,
             size_t count, bool star)
{
    *out = (tq_buf_t){0};
    size_t bytes = 0;
    for (size_t i = 0; i < count; i++)
        bytes += items[i].size;
    if (bytes > UINT32_MAX - 5)
        return TQ_EINVAL;
    unsigned char *p = malloc(s_head_size(task) + bytes);
    if (!p)
        return TQ_ENOMEM;
    out->data = p;
    out->size = s_head_size(task) + bytes;
    p = s_chunk_head(p, task, count, bytes);
    for (size_t i = 0; i < count; i++) {
        if (!s_valid_item(&items[i], star)) {
            tq_buf_free(out);
            return TQ_EINVAL;
        }
        memcpy(p, items[i].data, items[i].size);
        p += items[i].size;
    }
    return TQ_OK;
}

/* A chunk's answer v ([bin of [value...], [failure...]]) opened into
   zone as [[value...], [failure...]], or NULL if it is malformed. */
static const msgpack_object *
s_chunk_open(const msgpack_object *v, msgpack_zone *zone)
{
    if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2 ||
        v->via.array.ptr[0].type != MSGPACK_OBJECT_BIN)
        return NULL;
    msgpack_object *opened = msgpack_zone_malloc(zone, 3 * sizeof *opened);
    if (!opened)
        return NULL;
    size_t off = 0;
    const msgpack_object_bin *bin = &v->via.array.ptr[0].via.bin;
    if (msgpack_unpack(bin->ptr, bin->size, &off, zone, &opened[1]) !=
            MSGPACK_UNPACK_SUCCESS ||
        off != bin->size)
        return NULL;
    opened[2] = v->via.array.ptr[1];
    opened[0].type = MSGPACK_OBJECT_ARRAY;
    opened[0].via.array.size = 2;
    opened[0].via.array.ptr = &opened[1];
    return &opened[0];
}

/* Item k of a chunk's value v ([[value...], [[index, code, error]...]],
   count items): TQ_OK with its value in *value, or its failure's code
   with its text in *error (NULL if none); TQ_EPROTO if v is malformed. */
static int
s_chunk_item(const msgpack_object *v, size_t count, size_t k,
             const msgpack_object **value, const msgpack_object_str **error)
{
    *value = NULL;
    *error = NULL;
    if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2 ||
        v->via.array.ptr[0].type != MSGPACK_OBJECT_ARRAY ||
        v->via.array.ptr[0].via.array.size != count ||
        v->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY || k >= count)
        return TQ_EPROTO;
    const msgpack_object *val = &v->via.array.ptr[0].via.array.ptr[k];
    if (val->type == MSGPACK_OBJECT_NIL) {
        /* nil: a value, unless the item is among the failures */
        const msgpack_object_array *f = &v->via.array.ptr[1].via.array;
        for (uint32_t i = 0; i < f->size; i++) {
            const msgpack_object *e = f->ptr[i].via.array.ptr;
            if (f->ptr[i].type != MSGPACK_OBJECT_ARRAY ||
                f->ptr[i].via.array.size != 3 ||
                e[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                e[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return TQ_EPROTO;
            if (e[0].via.u64 != k)
                continue;
            if (e[2].type == MSGPACK_OBJECT_STR)
                *error = &e[2].via.str;
            return e[1].via.u64 ? (int)e[1].via.u64 : TQ_ETASK;
        }
    }
    *value = val;
    return TQ_OK;
}

/* Makes the item handles of a chunk whose task is final. */
static void
s_split(tq_result_set_t *set, s_chunk_t *c)
{
    if (!c->handle || !tq_result_ready(c->handle))
        return;
    if (!set->chunked) {
        set->results[c->first] = c->handle;
        c->handle = NULL;
        return;
    }
    int chunk_code = tq_result_code(c->handle);
    msgpack_zone *zone = msgpack_zone_new(64 * 1024);
    const msgpack_object *v = chunk_code == TQ_OK && zone
        ? s_chunk_open(tq_result_value(c->handle), zone)
        : NULL;
    tq_grow_t value = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &value, tq_grow_write);
    for (size_t i = 0; i < c->count; i++) {
        tq_result_t *r = NULL;
        if (chunk_code != TQ_OK) {
            r = tq_result_new_final(chunk_code, tq_result_error(c->handle),
                                    NULL, 0);
            set->results[c->first + i] = r;
            continue;
        }
        const msgpack_object *val;
        const msgpack_object_str *error;
        int code = s_chunk_item(v, c->count, i, &val, &error);
        if (code == TQ_OK) {
            value.size = 0;
            if (msgpack_pack_object(&pk, *val) == 0)
                r = tq_result_new_final(TQ_OK, NULL, value.data, value.size);
        } else {
            char text[TQ_PROTO_MAX_ERROR + 1] = "malformed chunk answer";
            if (error)
                snprintf(text, sizeof text, "%.*s", (int)error->size,
                         error->ptr);
            else if (code != TQ_EPROTO)
                snprintf(text, sizeof text, "task failed");
            r = tq_result_new_final(code, text, NULL, 0);
        }
        set->results[c->first + i] = r;
    }
    free(value.data);
    if (zone)
        msgpack_zone_free(zone);
    tq_result_destroy(&c->handle);
}

static tq_result_set_t *
s_set_new(size_t count, size_t chunks)
{
    tq_result_set_t *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    set->count = count;
    set->results = calloc(count ? count : 1, sizeof *set->results);
    set->chunks = calloc(chunks ? chunks : 1, sizeof *set->chunks);
    if (!set->results || !set->chunks) {
        free(set->results);
        free(set->chunks);
        free(set);
        return NULL;
    }
    return set;
}

static int s_submit_built(tq_pool_t *self, const char *task,
                          const tq_options_t *options, size_t count,
                          size_t size, tq_buf_t *args, const tq_buf_t *items,
                          tq_result_set_t **set_p);

/* Submits count items into a new set (*set_p, the caller's). An unknown
   task gives a set of final TQ_ENOTASK handles. Nothing is submitted
   unless every item is valid (s_valid_item): the chunks are all built
   first. TQ_OK, TQ_EINVAL, TQ_ECLOSED (the pool refused) or TQ_ENOMEM. */
static int
s_submit_set(tq_pool_t *self, const char *task, const tq_options_t *options,
             const tq_buf_t *items, size_t count, bool star, bool imap,
             tq_result_set_t **set_p)
{
    *set_p = NULL;
    if (!task || (count && !items) || count > UINT32_MAX)
        return TQ_EINVAL;
    size_t size = s_chunksize(self, count, imap);
    size_t chunks = (count + size - 1) / size;
    tq_buf_t *args = NULL;
    if (size > 1) {
        args = calloc(chunks ? chunks : 1, sizeof *args);
        if (!args)
            return TQ_ENOMEM;
        for (size_t k = 0; k < chunks; k++) {
            size_t first = k * size;
            size_t n = count - first < size ? count - first : size;
            int rc = s_chunk_args(&args[k], task, items + first, n, star);
            if (rc != TQ_OK) {
                for (size_t j = 0; j < k; j++)
                    tq_buf_free(&args[j]);
                free(args);
                return rc;
            }
        }
    } else
        for (size_t i = 0; i < count; i++)
            if (!s_valid_item(&items[i], star))
                return TQ_EINVAL;
    return s_submit_built(self, task, options, count, size, args, items, set_p);
}

/* Submits count items in chunks of size: args[k] (consumed, with args)
   when size > 1, else items[i] one by one (borrowed). As s_submit_set. */
static int
s_submit_built(tq_pool_t *self, const char *task, const tq_options_t *options,
               size_t count, size_t size, tq_buf_t *args, const tq_buf_t *items,
               tq_result_set_t **set_p)
{
    *set_p = NULL;
    size_t chunks = (count + size - 1) / size;
    int rc = TQ_OK;
    char error[TQ_PROTO_MAX_NAME + 128];
    tq_result_set_t *set = NULL;
    if (tq_pool_check_task(self, task, error, sizeof error) != TQ_OK) {
        set = s_set_new(count, 0);
        for (size_t i = 0; set && i < count; i++)
            set->results[i] = tq_result_new_final(TQ_ENOTASK, error, NULL, 0);
        rc = set ? TQ_OK : TQ_ENOMEM;
        goto done;
    }
    set = s_set_new(count, chunks);
    if (!set) {
        rc = TQ_ENOMEM;
        goto done;
    }
    set->chunked = size > 1;
    set->chunk_size = size;
    /* a callback would see a chunk, not an item: chunks take none */
    tq_options_t opts = TQ_OPTIONS_INIT;
    if (options)
        opts = *options;
    if (set->chunked)
        opts.callback = opts.error_callback = NULL;
    for (size_t k = 0; k < chunks; k++) {
        size_t first = k * size;
        s_chunk_t *c = &set->chunks[k];
        c->first = first;
        c->count = count - first < size ? count - first : size;
        c->handle = set->chunked
            ? tq_pool_submit_raw(self, TQ_POOL_CHUNK_TASK, &opts, args[k].data,
                                 args[k].size)
            : tq_pool_submit_raw(self, task, &opts, items[first].data,
                                 items[first].size);
        if (!c->handle)
            break;
        set->chunk_count++;
    }
    if (set->chunk_count < chunks) {
        tq_result_set_destroy(&set);
        rc = TQ_ECLOSED;
    }
done:
    for (size_t k = 0; args && k < chunks; k++)
        tq_buf_free(&args[k]);
    free(args);
    *set_p = set;
    return rc;
}

/* Moves the set's handles into results[] and frees the set. */
static int
s_set_finish(tq_result_set_t *set, tq_result_t **results, int timeout_ms)
{
    if (!set)
        return TQ_ECLOSED;
    int rc = tq_result_set_get(set, timeout_ms);
    /* single tasks not done yet go out as they are, still pending */
    for (size_t i = 0; !set->chunked && i < set->chunk_count; i++)
        if (set->chunks[i].handle) {
            set->results[set->chunks[i].first] = set->chunks[i].handle;
            set->chunks[i].handle = NULL;
        }
    for (size_t i = 0; i < set->count; i++) {
        results[i] = set->results[i];
        set->results[i] = NULL;
    }
    tq_result_set_destroy(&set);
    return rc;
}

int
tq_pool_map(tq_pool_t *self, const char *task, const tq_options_t *options,
            const tq_buf_t *items, size_t count, tq_result_t **results,
            int timeout_ms)
{
    assert(self && results);
    tq_result_set_t *set;
    int rc =
        s_submit_set(self, task, options, items, count, false, false, &set);
    if (rc != TQ_OK)
        return rc;
    rc = s_set_finish(set, results, timeout_ms);
    /* an unknown task: every handle says so */
    char error[TQ_PROTO_MAX_NAME + 128];
    return tq_pool_check_task(self, task, error, sizeof error) != TQ_OK
        ? TQ_ENOTASK
        : rc;
}

int
tq_pool_starmap(tq_pool_t *self, const char *task, const tq_options_t *options,
                const tq_buf_t *args, size_t count, tq_result_t **results,
                int timeout_ms)
{
    assert(self && results);
    tq_result_set_t *set;
    int rc = s_submit_set(self, task, options, args, count, true, false, &set);
    if (rc != TQ_OK)
        return rc;
    return s_set_finish(set, results, timeout_ms);
}

tq_result_set_t *
tq_pool_map_async(tq_pool_t *self, const char *task,
                  const tq_options_t *options, const tq_buf_t *items,
                  size_t count)
{
    assert(self);
    tq_result_set_t *set;
    s_submit_set(self, task, options, items, count, false, false, &set);
    return set;
}

size_t
tq_result_set_size(const tq_result_set_t *self)
{
    assert(self);
    return self->count;
}

tq_result_t *
tq_result_set_at(const tq_result_set_t *self, size_t index)
{
    assert(self);
    if (index >= self->count)
        return NULL;
    if (!self->results[index]) {
        /* its chunk may be done: split it now */
        tq_result_set_t *set = (tq_result_set_t *)self;
        for (size_t i = 0; i < set->chunk_count; i++) {
            s_chunk_t *c = &set->chunks[i];
            if (index >= c->first && index < c->first + c->count)
                s_split(set, c);
        }
        if (!self->chunked)
            for (size_t i = 0; i < set->chunk_count; i++)
                if (set->chunks[i].first == index && set->chunks[i].handle)
                    return set->chunks[i].handle;
    }
    return self->results[index];
}

bool
tq_result_set_ready(const tq_result_set_t *self)
{
    assert(self);
    for (size_t i = 0; i < self->chunk_count; i++)
        if (self->chunks[i].handle && !tq_result_ready(self->chunks[i].handle))
            return false;
    return true;
}

static int64_t
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
s_left(int64_t until)
{
    if (until < 0)
        return -1;
    int64_t d = until - s_now();
    return d > 0 ? (int)d : 0;
}

int
tq_result_set_get(tq_result_set_t *self, int timeout_ms)
{
    assert(self);
    int64_t until = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    bool timed_out = false;
    for (size_t i = 0; i < self->chunk_count; i++) {
        s_chunk_t *c = &self->chunks[i];
        if (c->handle && tq_result_wait(c->handle, s_left(until)) != TQ_OK) {
            timed_out = true;
            break;
        }
        s_split(self, c);
    }
    if (timed_out)
        return TQ_ETIMEDOUT;
    int first = TQ_OK;
    for (size_t i = 0; i < self->count && first == TQ_OK; i++)
        first =
            self->results[i] ? tq_result_code(self->results[i]) : TQ_ETIMEDOUT;
    return first;
}

void
tq_result_set_destroy(tq_result_set_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_result_set_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++)
        tq_result_destroy(&self->results[i]);
    for (size_t i = 0; i < self->chunk_count; i++)
        tq_result_destroy(&self->chunks[i].handle);
    free(self->results);
    free(self->chunks);
    free(self);
    *self_p = NULL;
}

tq_pool_imap_t *
tq_pool_imap(tq_pool_t *self, const char *task, const tq_options_t *options,
             const tq_buf_t *items, size_t count)
{
    assert(self);
    tq_pool_imap_t *it = calloc(1, sizeof *it);
    if (!it)
        return NULL;
    s_submit_set(self, task, options, items, count, false, true, &it->set);
    if (!it->set) {
        free(it);
        return NULL;
    }
    return it;
}

int
tq_pool_imap_next(tq_pool_imap_t *self, int timeout_ms, tq_result_t **result_p)
{
    assert(self && result_p);
    tq_result_set_t *set = self->set;
    if (self->next >= set->count)
        return TQ_EEMPTY;
    if (!set->results[self->next]) {
        s_chunk_t *c = NULL;
        for (size_t i = 0; i < set->chunk_count && !c; i++)
            if (self->next >= set->chunks[i].first &&
                self->next < set->chunks[i].first + set->chunks[i].count)
                c = &set->chunks[i];
        if (!c || !c->handle || tq_result_wait(c->handle, timeout_ms) != TQ_OK)
            return TQ_ETIMEDOUT;
        s_split(set, c);
    }
    tq_result_t *r = set->results[self->next];
    if (!r || tq_result_wait(r, timeout_ms) != TQ_OK)
        return TQ_ETIMEDOUT;
    set->results[self->next++] = NULL;
    *result_p = r;
    return tq_result_code(r);
}

void
tq_pool_imap_destroy(tq_pool_imap_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_result_set_destroy(&(*self_p)->set);
    free(*self_p);
    *self_p = NULL;
}

/* ---- map returning values ------------------------------------------------ */

struct tq_values_t {
    tq_result_set_t *set; /* its chunks stay: the values point into them */
    const msgpack_object **chunk_values; /* per chunk once all are done:
                                            its [[values], [failures]],
                                            NULL for a failed chunk */
    const msgpack_object **clean; /* per chunk: its values array when
                                     every item succeeded, else NULL */
    msgpack_zone *zone; /* the opened chunks' objects */
};

/* The values array of a chunk's answer v when it is well formed and
   holds no failure; NULL otherwise. */
static const msgpack_object *
s_clean_values(const msgpack_object *v, size_t count)
{
    if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2 ||
        v->via.array.ptr[0].type != MSGPACK_OBJECT_ARRAY ||
        v->via.array.ptr[0].via.array.size != count ||
        v->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY ||
        v->via.array.ptr[1].via.array.size != 0)
        return NULL;
    return v->via.array.ptr[0].via.array.ptr;
}

/* Item index: its value (NULL if it failed or is not done), its code in
 *code and its failure's text in *error (NULL if none). */
static const msgpack_object *
s_entry(const tq_values_t *self, size_t index, int *code,
        const msgpack_object_str **error)
{
    const tq_result_set_t *set = self->set;
    *code = TQ_ETIMEDOUT;
    *error = NULL;
    if (index >= set->count)
        return NULL;
    if (!set->chunk_count) { /* refused at submit: final handles */
        *code = tq_result_code(set->results[index]);
        return NULL;
    }
    size_t chunk = index / set->chunk_size;
    const s_chunk_t *c = &set->chunks[chunk];
    if (self->clean && self->clean[chunk]) {
        /* the fast path: a chunk without failures, no lock, no search */
        *code = TQ_OK;
        return &self->clean[chunk][index - c->first];
    }
    if (!self->chunk_values || !c->handle)
        return NULL; /* not waited for */
    *code = tq_result_code(c->handle);
    if (!set->chunked)
        return *code == TQ_OK ? tq_result_value(c->handle) : NULL;
    const msgpack_object *v = self->chunk_values[chunk];
    if (*code != TQ_OK)
        return NULL;
    if (!v) {
        *code = TQ_EPROTO;
        return NULL;
    }
    const msgpack_object *value;
    *code = s_chunk_item(v, c->count, index - c->first, &value, error);
    return value;
}

static int s_values_wait(tq_values_t *values, int timeout_ms);

int
tq_pool_map_values(tq_pool_t *self, const char *task,
                   const tq_options_t *options, const tq_buf_t *items,
                   size_t count, tq_values_t **values_p, int timeout_ms)
{
    assert(self && values_p);
    *values_p = NULL;
    tq_values_t *values = calloc(1, sizeof *values);
    if (!values)
        return TQ_ENOMEM;
    int rc = s_submit_set(self, task, options, items, count, false, false,
                          &values->set);
    if (rc != TQ_OK) {
        free(values);
        return rc;
    }
    *values_p = values;
    return s_values_wait(values, timeout_ms);
}

/* Waits for every chunk of values, unpacking each as it comes, and finds
   the first failure in order. As tq_pool_map_values returns. */
static int
s_values_wait(tq_values_t *values, int timeout_ms)
{
    tq_result_set_t *set = values->set;
    size_t count = set->count;
    int64_t until = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    size_t n = set->chunk_count ? set->chunk_count : 1;
    const msgpack_object **cv = calloc(n, sizeof *cv);
    const msgpack_object **clean = calloc(n, sizeof *clean);
    values->zone = msgpack_zone_new(64 * 1024);
    if (!cv || !clean || !values->zone) {
        free(cv);
        free(clean);
        return TQ_ENOMEM;
    }
    for (size_t i = 0; i < set->chunk_count; i++) {
        if (tq_result_wait(set->chunks[i].handle, s_left(until)) != TQ_OK) {
            free(cv);
            free(clean);
            return TQ_ETIMEDOUT;
        }
        /* opened now, while the later chunks still run */
        if (set->chunked && tq_result_code(set->chunks[i].handle) == TQ_OK) {
            cv[i] = s_chunk_open(tq_result_value(set->chunks[i].handle),
                                 values->zone);
            clean[i] = s_clean_values(cv[i], set->chunks[i].count);
        }
    }
    values->chunk_values = cv;
    values->clean = clean;
    /* Python's map raises the first failure, in order (clean chunks have
       none) */
    for (size_t i = 0; i < count; i++) {
        if (clean && set->chunk_count && clean[i / set->chunk_size]) {
            i = set->chunks[i / set->chunk_size].first +
                set->chunks[i / set->chunk_size].count - 1;
            continue;
        }
        int code;
        const msgpack_object_str *error;
        s_entry(values, i, &code, &error);
        if (code == TQ_OK)
            continue;
        if (error)
            snprintf(set->error, sizeof set->error, "item %zu: %.*s", i,
                     (int)error->size, error->ptr);
        else {
            const char *text = !set->chunk_count
                ? tq_result_error(set->results[i])
                : tq_result_error(set->chunks[i / set->chunk_size].handle);
            snprintf(set->error, sizeof set->error, "item %zu: %s", i,
                     text[0] ? text : tq_strerror(code));
        }
        return code;
    }
    return TQ_OK;
}

size_t
tq_values_size(const tq_values_t *self)
{
    assert(self);
    return self->set->count;
}

const msgpack_object *
tq_values_at(const tq_values_t *self, size_t index)
{
    assert(self);
    int code;
    const msgpack_object_str *error;
    return s_entry(self, index, &code, &error);
}

int
tq_values_code(const tq_values_t *self, size_t index)
{
    assert(self);
    int code;
    const msgpack_object_str *error;
    s_entry(self, index, &code, &error);
    return code;
}

const char *
tq_values_error(const tq_values_t *self)
{
    assert(self);
    return self->set->error;
}

void
tq_values_destroy(tq_values_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_result_set_destroy(&(*self_p)->set);
    free((*self_p)->chunk_values);
    free((*self_p)->clean);
    if ((*self_p)->zone)
        msgpack_zone_free((*self_p)->zone);
    free(*self_p);
    *self_p = NULL;
}

/* ---- items built in one buffer ------------------------------------------- */

struct tq_items_t {
    char *data; /* the items' argument arrays, one after another */
    size_t size; /* bytes used */
    size_t alloc; /* bytes allocated */
    size_t *ends; /* end offset of each item */
    size_t count; /* items */
    size_t ends_alloc; /* entries allocated in ends */
};

tq_items_t *
tq_items_new(void)
{
    return calloc(1, sizeof(tq_items_t));
}

static int
s_items_write(void *data, const char *bytes, size_t len)
{
    tq_items_t *self = data;
    if (self->size + len > self->alloc) {
        size_t alloc = self->alloc ? self->alloc * 2 : 4096;
        while (alloc < self->size + len)
            alloc *= 2;
        char *p = realloc(self->data, alloc);
        if (!p)
            return -1;
        self->data = p;
        self->alloc = alloc;
    }
    memcpy(self->data + self->size, bytes, len);
    self->size += len;
    return 0;
}

int
tq_items_add(tq_items_t *self, const char *picture, ...)
{
    assert(self);
    if (self->count == self->ends_alloc) {
        size_t n = self->ends_alloc ? self->ends_alloc * 2 : 1024;
        size_t *p = realloc(self->ends, n * sizeof *p);
        if (!p)
            return TQ_ENOMEM;
        self->ends = p;
        self->ends_alloc = n;
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, self, s_items_write);
    size_t before = self->size;
    va_list ap;
    va_start(ap, picture);
    int rc;
    if (picture && picture[0] == 'i' && !picture[1] &&
        self->size + 16 <= self->alloc) {
        /* map's most common item, [int]: written here, no call per byte */
        int64_t v = va_arg(ap, int64_t);
        unsigned char *p = (unsigned char *)self->data + self->size;
        p[0] = 0x91;
        if (v >= -32 && v < 128) {
            p[1] = (unsigned char)v; /* positive or negative fixint */
            self->size += 2;
        } else {
            self->size += 1;
            msgpack_pack_int64(&pk, v);
        }
        rc = TQ_OK;
    } else
        rc = tq_vpack_into(&pk, picture, ap);
    va_end(ap);
    if (rc != TQ_OK) {
        self->size = before; /* nothing of a bad item stays */
        return rc;
    }
    self->ends[self->count++] = self->size;
    return TQ_OK;
}

size_t
tq_items_size(const tq_items_t *self)
{
    assert(self);
    return self->count;
}

void
tq_items_destroy(tq_items_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->data);
    free((*self_p)->ends);
    free(*self_p);
    *self_p = NULL;
}

/* Item i's bytes. */
static tq_buf_t
s_item(const tq_items_t *items, size_t i)
{
    size_t start = i ? items->ends[i - 1] : 0;
    return (tq_buf_t){items->data + start, items->ends[i] - start};
}

int
tq_pool_map_items(tq_pool_t *self, const char *task,
                  const tq_options_t *options, const tq_items_t *items,
                  tq_values_t **values_p, int timeout_ms)
{
    assert(self && items && values_p);
    *values_p = NULL;
    size_t count = items->count;
    if (!task || count > UINT32_MAX)
        return TQ_EINVAL;
    size_t size = s_chunksize(self, count, false);
    size_t chunks = (count + size - 1) / size;
    tq_buf_t *args = calloc(chunks ? chunks : 1, sizeof *args);
    tq_buf_t *one = NULL; /* chunks of one: each item as it is */
    if (!args)
        return TQ_ENOMEM;
    if (size > 1) {
        /* a chunk's items lie one after another: one copy per chunk */
        for (size_t k = 0; k < chunks; k++) {
            size_t first = k * size;
            size_t n = count - first < size ? count - first : size;
            size_t from = first ? items->ends[first - 1] : 0;
            size_t bytes = items->ends[first + n - 1] - from;
            unsigned char *p = bytes <= UINT32_MAX - 5
                ? malloc(s_head_size(task) + bytes)
                : NULL;
            if (!p) {
                for (size_t j = 0; j < k; j++)
                    tq_buf_free(&args[j]);
                free(args);
                return TQ_ENOMEM;
            }
            args[k] = (tq_buf_t){p, s_head_size(task) + bytes};
            p = s_chunk_head(p, task, n, bytes);
            memcpy(p, items->data + from, bytes);
        }
    } else {
        free(args);
        args = NULL;
        one = calloc(count ? count : 1, sizeof *one);
        if (!one)
            return TQ_ENOMEM;
        for (size_t i = 0; i < count; i++)
            one[i] = s_item(items, i);
    }
    tq_values_t *values = calloc(1, sizeof *values);
    if (!values) {
        for (size_t k = 0; args && k < chunks; k++)
            tq_buf_free(&args[k]);
        free(args);
        free(one);
        return TQ_ENOMEM;
    }
    int rc = s_submit_built(self, task, options, count, size, args, one,
                            &values->set);
    free(one);
    if (rc != TQ_OK) {
        free(values);
        return rc;
    }
    *values_p = values;
    return s_values_wait(values, timeout_ms);
}
