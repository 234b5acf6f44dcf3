/* tq_worker.h - writing tasks: the task signature, the registry, modules. */
#ifndef TQ_WORKER_H
#define TQ_WORKER_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tq_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Default worker endpoint of the broker; TQ_WORKER_ENDPOINT overrides it. */
#define TQ_DEFAULT_WORKER_ENDPOINT "tcp://127.0.0.1:5556"

typedef struct tq_task_t tq_task_t;
typedef struct tq_registry_t tq_registry_t;

/* A task function. args is a msgpack array (borrowed, valid during the
   call); pack exactly one result object with out. Return 0 on success; on
   failure return tq_task_fail(task, ...). */
typedef int(tq_task_fn)(tq_task_t *task, const msgpack_object *args,
                        msgpack_packer *out);

/* Records a failure message (printf format) for the running task and
   returns TQ_ETASK, so a task can `return tq_task_fail(t, "bad %d", x);`. */
int tq_task_fail(tq_task_t *task, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The running task's id (borrowed). */
const char *tq_task_id(const tq_task_t *task);

/* The attempt number of this run, starting at 1. */
uint32_t tq_task_attempt(const tq_task_t *task);

/* True once the running task has passed its soft time limit (the worker's
   --soft-time-limit): it should wrap up and return before the hard limit
   kills its process. */
bool tq_task_soft_limit(const tq_task_t *task);

/* The user pointer given to tq_registry_add. */
void *tq_task_arg(const tq_task_t *task);

/* Typed arguments. Each stores the index-th argument of args (a task's
   argument array) in *value and returns TQ_OK; if it is missing or of
   another type it records, in the running task, an error that names the
   task and the argument ("task f: argument 1 must be an int, not a
   string") and returns TQ_ETASK, so a task may write
   `if ((rc = tq_arg_int(args, 0, &n))) return rc;`. tq_arg_double takes
   ints too; tq_arg_str copies the string with its NUL into buf (size
   bytes; a longer string is an error). */
int tq_arg_int(const msgpack_object *args, uint32_t index, int64_t *value);
int tq_arg_double(const msgpack_object *args, uint32_t index, double *value);
int tq_arg_bool(const msgpack_object *args, uint32_t index, bool *value);
int tq_arg_str(const msgpack_object *args, uint32_t index, char *buf,
               size_t size);

/* One-call result packers: pack exactly one object with out (a task's
   result packer) and return 0, so a task may `return tq_pack_str(out, s);`.
   tq_pack_str packs NULL as nil. tq_pack_value packs one object from a
   tq_pack picture: one character is that object, several an array of
   them (tq_pack_value(out, "si", "a", 1) is ["a", 1]). */
int tq_pack_str(msgpack_packer *out, const char *s);
int tq_pack_int(msgpack_packer *out, int64_t v);
int tq_pack_double(msgpack_packer *out, double v);
int tq_pack_bool(msgpack_packer *out, bool v);
int tq_pack_nil(msgpack_packer *out);
int tq_pack_value(msgpack_packer *out, const char *picture, ...);

/* Python's current_process().name and the running task's name, for
   printing (borrowed, valid until the next task). tq_task_name: "" outside
   a task. tq_worker_name: in a pool child "ForkServerPoolWorker-N" (N from
   1, in the order the children first ran a task), in a tq-worker child
   "Worker-PID", elsewhere "MainProcess". */
const char *tq_task_name(void);
const char *tq_worker_name(void);

/* Signature of the function a module exports as "tq_module_init": registers
   its tasks and returns 0, or non-zero to refuse loading. */
typedef int(tq_module_init_fn)(tq_registry_t *registry);

/* Creates an empty registry; NULL on failure. */
tq_registry_t *tq_registry_new(void);

/* Frees the registry and closes the modules it loaded; NULL-safe. */
void tq_registry_destroy(tq_registry_t **self_p);

/* Registers fn under name (copied); arg is passed to the task through
   tq_task_arg. Returns TQ_OK, TQ_EINVAL for an invalid name, TQ_EBUSY if
   the name is taken. Names: 1-255 of [A-Za-z0-9_.:-]. */
int tq_registry_add(tq_registry_t *self, const char *name, tq_task_fn *fn,
                    void *arg);

/* Adds the built-in tasks tq.echo, tq.sleep and tq.fail. */
int tq_registry_add_builtins(tq_registry_t *self);

/* dlopens path and calls its tq_module_init(self). Returns TQ_OK or an
   error with a message in tq_registry_error(self). */
int tq_registry_load(tq_registry_t *self, const char *path);

/* Detail of the last failure of tq_registry_load (borrowed). */
const char *tq_registry_error(const tq_registry_t *self);

/* Number of registered tasks. */
size_t tq_registry_size(const tq_registry_t *self);

/* Name of the index-th task (borrowed), NULL past the end. */
const char *tq_registry_name(const tq_registry_t *self, size_t index);

/* Looks a task up; NULL if absent. *arg_p receives its user pointer. */
tq_task_fn *tq_registry_lookup(const tq_registry_t *self, const char *name,
                               void **arg_p);

#ifdef __cplusplus
}
#endif
#endif
