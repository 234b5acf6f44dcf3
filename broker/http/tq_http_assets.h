/* tq_http_assets.h - the dashboard's files, compiled into tq-broker from
   broker/http/ by embed.cmake at build time (no CDN, nothing fetched). */
#ifndef TQ_HTTP_ASSETS_H
#define TQ_HTTP_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *path; /* URL path, e.g. "/app.js" */
    const char *type; /* Content-Type */
    const unsigned char *data; /* the file's bytes */
    size_t size; /* bytes */
} tq_http_asset_t;

extern const tq_http_asset_t tq_http_assets[];
extern const size_t tq_http_asset_count;

#endif
