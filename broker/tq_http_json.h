/* tq_http_json.h - the HTTP server's text: a growing buffer, and msgpack
   written out as JSON for the dashboard's endpoints. */
#ifndef TQ_HTTP_JSON_H
#define TQ_HTTP_JSON_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

/* A NUL-terminated text that grows as it is written (out of memory
   aborts, as everywhere in the broker). Zero-initialise it. */
typedef struct {
    char *data; /* malloc'd, NUL-terminated; NULL until written */
    size_t len; /* bytes, NUL excluded */
    size_t cap; /* bytes allocated */
} tq_http_text_t;

/* Appends printf-formatted text. */
void tq_http_text_printf(tq_http_text_t *self, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends len bytes. */
void tq_http_text_append(tq_http_text_t *self, const char *data, size_t len);

/* Frees the text and zeroes it; NULL-safe. */
void tq_http_text_free(tq_http_text_t *self);

/* Appends s (len bytes) as a JSON string: quoted, escaped, invalid UTF-8
   replaced by U+FFFD. */
void tq_http_json_string(tq_http_text_t *out, const char *s, size_t len);

/* Appends o as JSON: binary as a hex string, extensions as null, map keys
   that are not strings as their JSON text in a string. */
void tq_http_json_write(tq_http_text_t *out, const msgpack_object *o);

/* The value of key in map (borrowed), NULL if absent or map is no map. */
const msgpack_object *tq_http_map_get(const msgpack_object *map,
                                      const char *key);

/* The unsigned integer at key, or def when absent or not one. */
uint64_t tq_http_map_uint(const msgpack_object *map, const char *key,
                          uint64_t def);

#endif
