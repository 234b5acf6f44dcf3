/* tq_exec.h - the tq.exec built-in task: runs a command on the worker host
   and returns its exit status, stdout and stderr. Only registered when
   tq-worker runs with --allow-exec. */
#ifndef TQ_EXEC_H
#define TQ_EXEC_H

#include "tq/tq_worker.h"

/* Bytes of stdout and of stderr kept per command; the rest is read and
   dropped, and the result says "truncated". */
#define TQ_EXEC_OUTPUT_MAX (1024 * 1024)

/* Registers tq.exec in registry. Arguments: [CMD, ARG...] (run with
   execvp, no shell), [[CMD, ARG...]] (the same, unambiguous for one word),
   or ["shell command"] (run by /bin/sh -c). The value is a map
   {"exit": int, "stdout": str, "stderr": str, "truncated": bool} plus
   "signal": int when the command was killed (exit is then 128 + signal).
   A command that cannot start exits 127, as in a shell. Returns TQ_OK or
   tq_registry_add's error. */
int tq_exec_register(tq_registry_t *registry);

#endif
