/* tq_endpoint.h - checks a ZeroMQ endpoint before a binary binds or
   connects it, so a typo is refused with a hint instead of half-bound. */
#ifndef TQ_ENDPOINT_H
#define TQ_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>

/* True if endpoint is tcp://HOST:PORT (PORT 1-65535, or with bind also 0
   and "*"; HOST "*" only with bind; [v6] in brackets), ipc://PATH or
   inproc://NAME. Else false with a one-line reason and hint in why, e.g.
   "127.0.0.1:5555: no transport (did you mean tcp://127.0.0.1:5555?)". */
bool tq_endpoint_check(const char *endpoint, bool bind, char *why, size_t size);

#endif
