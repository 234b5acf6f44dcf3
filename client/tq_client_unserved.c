/* tq_client_unserved.c - does a connected worker provide a task? Read
   from the STATUS body's workers[].tasks and workers[].queues
   (PROTOCOL.md section 8), so the broker needs nothing new. */
#include "tq_client_unserved.h"

#include <msgpack.h>
#include <string.h>

/* The value of key in a msgpack map, NULL if absent. */
static const msgpack_object *
s_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t len = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == len &&
            memcmp(k->via.str.ptr, key, len) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* True if the array arr holds the string name. */
static bool
s_holds(const msgpack_object *arr, const char *name)
{
    if (!arr || arr->type != MSGPACK_OBJECT_ARRAY)
        return false;
    size_t len = strlen(name);
    for (uint32_t i = 0; i < arr->via.array.size; i++) {
        const msgpack_object *o = &arr->via.array.ptr[i];
        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size == len &&
            memcmp(o->via.str.ptr, name, len) == 0)
            return true;
    }
    return false;
}

int
tq_client_provided_in(const void *status, size_t size, const char *task,
                      const char *queue)
{
    if (!queue)
        queue = TQ_DEFAULT_QUEUE;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int provided = -1;
    if (msgpack_unpack_next(&up, status, size, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP) {
        const msgpack_object *workers = s_get(&up.data, "workers");
        provided = 0;
        for (uint32_t i = 0; workers && workers->type == MSGPACK_OBJECT_ARRAY &&
             i < workers->via.array.size;
             i++) {
            const msgpack_object *w = &workers->via.array.ptr[i];
            const msgpack_object *queues = s_get(w, "queues");
            bool all = !queues || queues->type != MSGPACK_OBJECT_ARRAY ||
                queues->via.array.size == 0;
            if (s_holds(s_get(w, "tasks"), task) &&
                (all || s_holds(queues, queue))) {
                provided = 1;
                break;
            }
        }
    }
    msgpack_unpacked_destroy(&up);
    return provided;
}

int
tq_client_provided(tq_client_t *self, const char *task, const char *queue,
                   int timeout_ms)
{
    tq_buf_t body = {0};
    if (tq_client_status(self, &body, timeout_ms) != TQ_OK)
        return -1;
    int provided = tq_client_provided_in(body.data, body.size, task, queue);
    tq_buf_free(&body);
    return provided;
}
