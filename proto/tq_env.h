/* tq_env.h - environment variables named after the flags they stand for:
   tq-broker's --data is TQ_BROKER_DATA, tq-worker's --concurrency is
   TQ_WORKER_CONCURRENCY, tq's --broker is TQ_BROKER; flags that mean the
   same in every binary (--log-level, --log-json, --log-file, --curve-cert,
   --curve-server-key) are TQ_<FLAG> everywhere. A flag on the command
   line wins over its variable. */
#ifndef TQ_ENV_H
#define TQ_ENV_H

#include <getopt.h>
#include <stddef.h>

/* The variable of flag name for a binary whose prefix is prefix ("TQ_",
   "TQ_BROKER_", "TQ_WORKER_"), written into buf; returns buf. */
char *tq_env_name(const char *prefix, const char *name, char *buf, size_t size);

/* A new argv (malloc'd array, strings malloc'd; free with tq_env_free)
   holding argv[0], then "--NAME=VALUE" (or "--NAME" for a flag without a
   value whose variable is 1/yes/true/on) for every long option that has
   its variable set and that argv does not give, then the rest of argv.
   help and version are never taken from the environment. *argc_out gets
   the new count. NULL when out of memory. */
char **tq_env_argv(const char *prefix, const struct option *options, int argc,
                   char **argv, int *argc_out);

/* Frees what tq_env_argv returned; NULL-safe. */
void tq_env_free(char **argv);

/* Prints "PROGRAM VERSION" on stdout (the --version of every binary). */
void tq_env_print_version(const char *program);

#endif
