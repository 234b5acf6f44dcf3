/* tq_queue.c - data queues on the broker (multiprocessing.Queue): put,
   get, their nowait forms and qsize, over the client's I/O thread. */
#include "tq/tq_queue.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tq_client_internal.h"
#include "tq_proto.h"

/* The longest wait one QGET asks the broker for; longer waits (and -1)
   are a loop of them. */
#define S_MAX_WAIT_MS 60000
/* A put on a full queue tries again after this, doubling up to the max. */
#define S_FULL_RETRY_MIN_MS 2
#define S_FULL_RETRY_MAX_MS 100

struct tq_queue_t {
    tq_client_t *client; /* borrowed */
    char name[TQ_PROTO_MAX_NAME + 1];
    uint32_t maxsize;
};

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for a request's answer: the broker answers every request, and the
   client fails it with TQ_EUNREACHABLE when the broker is gone, so the wait
   is bounded by the client's liveness. */
static int
s_wait(tq_result_t *r)
{
    return tq_result_get(r, -1);
}

tq_queue_t *
tq_queue_new(tq_client_t *client, const char *name, uint32_t maxsize)
{
    assert(client);
    if (!name || !tq_proto_valid_name(name, strlen(name)))
        return NULL;
    tq_queue_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->client = client;
    snprintf(self->name, sizeof self->name, "%s", name);
    self->maxsize = maxsize;
    return self;
}

void
tq_queue_destroy(tq_queue_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

int
tq_queue_put(tq_queue_t *self, const void *item, size_t size, int timeout_ms)
{
    assert(self);
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : s_now_ms() + timeout_ms;
    int delay = S_FULL_RETRY_MIN_MS;
    for (;;) {
        tq_result_t *r =
            tq_client_queue_request(self->client, TQ_QUEUE_PUT, self->name,
                                    self->maxsize, 0, item, size);
        if (!r)
            return TQ_EPROTO;
        int rc = s_wait(r);
        tq_result_destroy(&r);
        if (rc != TQ_EFULL)
            return rc;
        int64_t now = s_now_ms();
        if (now >= deadline)
            return TQ_EFULL;
        /* full: a getter will make room; try again soon */
        int64_t left = deadline - now;
        struct timespec ts = {0,
                              (long)(left < delay ? left : delay) * 1000000L};
        nanosleep(&ts, NULL);
        delay =
            delay * 2 > S_FULL_RETRY_MAX_MS ? S_FULL_RETRY_MAX_MS : delay * 2;
    }
}

int
tq_queue_put_nowait(tq_queue_t *self, const void *item, size_t size)
{
    return tq_queue_put(self, item, size, 0);
}

int
tq_queue_get(tq_queue_t *self, tq_buf_t *item, int timeout_ms)
{
    assert(self && item);
    item->data = NULL;
    item->size = 0;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : s_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - s_now_ms();
        if (left < 0)
            left = 0;
        uint32_t wait = left > S_MAX_WAIT_MS ? S_MAX_WAIT_MS : (uint32_t)left;
        tq_result_t *r = tq_client_queue_request(self->client, TQ_QUEUE_GET,
                                                 self->name, 0, wait, NULL, 0);
        if (!r)
            return TQ_EINVAL;
        int rc = s_wait(r);
        if (rc == TQ_OK) {
            size_t size = 0;
            const void *data = tq_result_data(r, &size);
            item->data = malloc(size ? size : 1);
            if (!item->data) {
                tq_result_destroy(&r);
                return TQ_ENOMEM;
            }
            memcpy(item->data, data, size);
            item->size = size;
        }
        tq_result_destroy(&r);
        if (rc != TQ_EEMPTY || s_now_ms() >= deadline)
            return rc;
    }
}

int
tq_queue_get_nowait(tq_queue_t *self, tq_buf_t *item)
{
    return tq_queue_get(self, item, 0);
}

/* Reads the broker's {size, maxsize} answer. */
static int
s_sizes(tq_queue_t *self, uint64_t *size, uint64_t *maxsize)
{
    tq_result_t *r = tq_client_queue_request(self->client, TQ_QUEUE_SIZE,
                                             self->name, 0, 0, NULL, 0);
    if (!r)
        return TQ_EINVAL;
    int rc = s_wait(r);
    if (rc == TQ_OK) {
        const msgpack_object *map = tq_result_value(r);
        rc = TQ_EPROTO;
        if (map && map->type == MSGPACK_OBJECT_MAP)
            for (uint32_t i = 0; i < map->via.map.size; i++) {
                const msgpack_object_kv *kv = &map->via.map.ptr[i];
                if (kv->key.type != MSGPACK_OBJECT_STR ||
                    kv->val.type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                    continue;
                const char *k = kv->key.via.str.ptr;
                uint32_t n = kv->key.via.str.size;
                if (n == 4 && memcmp(k, "size", 4) == 0) {
                    *size = kv->val.via.u64;
                    rc = TQ_OK;
                } else if (n == 7 && memcmp(k, "maxsize", 7) == 0)
                    *maxsize = kv->val.via.u64;
            }
    }
    tq_result_destroy(&r);
    return rc;
}

int
tq_queue_qsize(tq_queue_t *self, uint64_t *size)
{
    assert(self && size);
    uint64_t maxsize = 0;
    *size = 0;
    return s_sizes(self, size, &maxsize);
}

bool
tq_queue_empty(tq_queue_t *self)
{
    uint64_t size = 0, maxsize = 0;
    return s_sizes(self, &size, &maxsize) == TQ_OK && size == 0;
}

bool
tq_queue_full(tq_queue_t *self)
{
    uint64_t size = 0, maxsize = 0;
    return s_sizes(self, &size, &maxsize) == TQ_OK && maxsize &&
        size >= maxsize;
}

/* ---- items as values ---------------------------------------------------- */

struct tq_item_t {
    tq_buf_t buf; /* the bytes taken */
    msgpack_unpacked unpacked; /* their value; strings point into buf */
    char *str; /* tq_item_str's copy, made on first use */
};

int
tq_queue_putf(tq_queue_t *self, int timeout_ms, const char *picture, ...)
{
    assert(self);
    if (!picture || !*picture)
        return TQ_EINVAL;
    tq_buf_t buf = {0};
    va_list ap;
    va_start(ap, picture);
    int rc = tq_vpack(&buf, picture, ap);
    va_end(ap);
    if (rc != TQ_OK)
        return rc;
    /* tq_vpack makes an argument array: a tuple is that array, one object
       is its only element, after the array's 1-byte header */
    bool tuple = strlen(picture) > 1;
    rc = tuple ? tq_queue_put(self, buf.data, buf.size, timeout_ms)
               : tq_queue_put(self, (const char *)buf.data + 1, buf.size - 1,
                              timeout_ms);
    tq_buf_free(&buf);
    return rc;
}

int
tq_queue_get_item(tq_queue_t *self, tq_item_t **item_p, int timeout_ms)
{
    assert(self && item_p);
    *item_p = NULL;
    tq_item_t *item = calloc(1, sizeof *item);
    if (!item)
        return TQ_ENOMEM;
    int rc = tq_queue_get(self, &item->buf, timeout_ms);
    msgpack_unpacked_init(&item->unpacked);
    if (rc == TQ_OK &&
        msgpack_unpack_next(&item->unpacked, item->buf.data, item->buf.size,
                            NULL) != MSGPACK_UNPACK_SUCCESS)
        rc = TQ_EPROTO;
    if (rc != TQ_OK)
        tq_item_destroy(&item);
    *item_p = item;
    return rc;
}

const msgpack_object *
tq_item_value(const tq_item_t *self)
{
    assert(self);
    return &self->unpacked.data;
}

int
tq_item_int(const tq_item_t *self, int64_t *value)
{
    assert(self && value);
    const msgpack_object *o = &self->unpacked.data;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *value = o->via.i64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
             o->via.u64 <= INT64_MAX)
        *value = (int64_t)o->via.u64;
    else
        return TQ_EINVAL;
    return TQ_OK;
}

int
tq_item_double(const tq_item_t *self, double *value)
{
    assert(self && value);
    const msgpack_object *o = &self->unpacked.data;
    if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32)
        *value = o->via.f64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        *value = (double)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *value = (double)o->via.i64;
    else
        return TQ_EINVAL;
    return TQ_OK;
}

int
tq_item_bool(const tq_item_t *self, bool *value)
{
    assert(self && value);
    if (self->unpacked.data.type != MSGPACK_OBJECT_BOOLEAN)
        return TQ_EINVAL;
    *value = self->unpacked.data.via.boolean;
    return TQ_OK;
}

const char *
tq_item_str(tq_item_t *self)
{
    assert(self);
    const msgpack_object *o = &self->unpacked.data;
    if (o->type != MSGPACK_OBJECT_STR)
        return NULL;
    if (!self->str)
        self->str = strndup(o->via.str.ptr, o->via.str.size);
    return self->str;
}

bool
tq_item_is_nil(const tq_item_t *self)
{
    assert(self);
    return self->unpacked.data.type == MSGPACK_OBJECT_NIL;
}

void
tq_item_destroy(tq_item_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_item_t *self = *self_p;
    msgpack_unpacked_destroy(&self->unpacked);
    tq_buf_free(&self->buf);
    free(self->str);
    free(self);
    *self_p = NULL;
}
