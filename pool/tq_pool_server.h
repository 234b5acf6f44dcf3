/* tq_pool_server.h - private to the pool: the fork server. tq_pool_new
   starts it with posix_spawn as a fresh exec of the program itself
   (/proc/self/exe), which stops in libtq's constructor before main, reads
   its configuration from a pipe and becomes the worker supervisor. */
#ifndef TQ_POOL_SERVER_H
#define TQ_POOL_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "tq/tq_pool.h"

/* The task that runs a chunk of a map in a child: arguments [task name,
   bin holding [argument array, ...]], value [bin holding [value, ...],
   [[index, code, error], ...]]: the items' values in order (nil for a
   failed one) and the failures. The items and the values travel as bins
   so that neither the client, the broker nor the child's loop walks each
   of them; the child and the program unpack them, which checks them. */
#define TQ_POOL_CHUNK_TASK "tq.pool.chunk"

/* What the server needs; every pointer borrowed for the call. */
typedef struct {
    const char *worker_endpoint; /* ipc:// of the broker's workers socket */
    const char *client_endpoint; /* its clients socket: tasks' clients */
    const char *dir; /* the pool's private directory, removed by the
                        server if the program dies first */
    int processes; /* children */
    int prefetch; /* credit per child */
    int maxtasksperchild; /* 0: never recycle */
    bool verbose; /* keep the server's log lines on stderr */
    const tq_registry_t *registry; /* the program's tasks, NULL: none */
    tq_pool_init_fn *initializer; /* NULL: none */
    void *initargs; /* static storage, or initargs_size bytes to copy */
    size_t initargs_size; /* 0: initargs is translated, not copied */
} tq_pool_server_config_t;

/* Encodes config for the server into *buf (the caller's, tq_buf_free).
   Every function and user pointer is written as (loaded object, offset):
   a pointer outside the program's files (heap, stack) is refused, with a
   message in error naming the task. TQ_OK or TQ_EINVAL. */
int tq_pool_server_encode(const tq_pool_server_config_t *config, tq_buf_t *buf,
                          char *error, size_t errlen);

/* Starts a fork server with an encoded configuration (borrowed). Returns
   its pid (the caller's child) and in *keep_fd the write end of the pipe
   whose end tells the server that the program is gone (keep it open for
   the pool's life; it is close-on-exec). -1 on failure with a message in
   error. */
pid_t tq_pool_server_spawn(const tq_buf_t *config, int *keep_fd, char *error,
                           size_t errlen);

/* The server's life, in the process started by tq_pool_server_spawn (from
   libtq's constructor). Never returns. */
void tq_pool_server_main(void) __attribute__((noreturn));

#endif
