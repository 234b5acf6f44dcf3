/* tq_http_json.c - a growing text buffer and msgpack written as JSON. */
#include "tq_http_json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
s_reserve(tq_http_text_t *self, size_t more)
{
    if (self->len + more + 1 <= self->cap)
        return;
    size_t cap = self->cap ? self->cap : 256;
    while (cap < self->len + more + 1)
        cap *= 2;
    char *data = realloc(self->data, cap);
    if (!data)
        abort();
    self->data = data;
    self->cap = cap;
}

void
tq_http_text_append(tq_http_text_t *self, const char *data, size_t len)
{
    s_reserve(self, len);
    memcpy(self->data + self->len, data, len);
    self->len += len;
    self->data[self->len] = '\0';
}

void
tq_http_text_printf(tq_http_text_t *self, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(NULL, 0, format, ap);
    va_end(ap);
    if (n < 0)
        return;
    s_reserve(self, (size_t)n);
    va_start(ap, format);
    vsnprintf(self->data + self->len, (size_t)n + 1, format, ap);
    va_end(ap);
    self->len += (size_t)n;
}

void
tq_http_text_free(tq_http_text_t *self)
{
    if (!self)
        return;
    free(self->data);
    memset(self, 0, sizeof *self);
}

/* Length of the valid UTF-8 sequence at s (at most left bytes), 0 if
   there is none. */
static size_t
s_utf8_len(const unsigned char *s, size_t left)
{
    size_t n;
    uint32_t min;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0)
        n = 2, min = 0x80;
    else if ((s[0] & 0xf0) == 0xe0)
        n = 3, min = 0x800;
    else if ((s[0] & 0xf8) == 0xf0)
        n = 4, min = 0x10000;
    else
        return 0;
    if (n > left)
        return 0;
    uint32_t cp = s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

void
tq_http_json_string(tq_http_text_t *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    tq_http_text_append(out, "\"", 1);
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            tq_http_text_append(out, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            tq_http_text_printf(out, "\\u%04x", c);
            i++;
        } else if (c < 0x80) {
            tq_http_text_append(out, (const char *)p + i, 1);
            i++;
        } else {
            size_t n = s_utf8_len(p + i, len - i);
            if (n) {
                tq_http_text_append(out, (const char *)p + i, n);
                i += n;
            } else {
                tq_http_text_append(out, "\\ufffd", 6);
                i++;
            }
        }
    }
    tq_http_text_append(out, "\"", 1);
}

void
tq_http_json_write(tq_http_text_t *out, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        tq_http_text_append(out, "null", 4);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        tq_http_text_printf(out, "%s", o->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        tq_http_text_printf(out, "%llu", (unsigned long long)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        tq_http_text_printf(out, "%lld", (long long)o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        /* JSON has no NaN or infinity */
        if (o->via.f64 != o->via.f64 || o->via.f64 > 1e308 ||
            o->via.f64 < -1e308)
            tq_http_text_append(out, "null", 4);
        else
            tq_http_text_printf(out, "%.17g", o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        tq_http_json_string(out, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        tq_http_text_append(out, "\"", 1);
        for (uint32_t i = 0; i < o->via.bin.size; i++)
            tq_http_text_printf(out, "%02x", (unsigned char)o->via.bin.ptr[i]);
        tq_http_text_append(out, "\"", 1);
        break;
    case MSGPACK_OBJECT_ARRAY:
        tq_http_text_append(out, "[", 1);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                tq_http_text_append(out, ",", 1);
            tq_http_json_write(out, &o->via.array.ptr[i]);
        }
        tq_http_text_append(out, "]", 1);
        break;
    case MSGPACK_OBJECT_MAP:
        tq_http_text_append(out, "{", 1);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (i)
                tq_http_text_append(out, ",", 1);
            if (kv->key.type == MSGPACK_OBJECT_STR)
                tq_http_json_string(out, kv->key.via.str.ptr,
                                    kv->key.via.str.size);
            else {
                tq_http_text_t key = {0};
                tq_http_json_write(&key, &kv->key);
                tq_http_json_string(out, key.data, key.len);
                tq_http_text_free(&key);
            }
            tq_http_text_append(out, ":", 1);
            tq_http_json_write(out, &kv->val);
        }
        tq_http_text_append(out, "}", 1);
        break;
    default:
        tq_http_text_append(out, "null", 4);
        break;
    }
}

const msgpack_object *
tq_http_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

uint64_t
tq_http_map_uint(const msgpack_object *map, const char *key, uint64_t def)
{
    const msgpack_object *v = tq_http_map_get(map, key);
    return v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? v->via.u64 : def;
}
