/* tq_cli.h - private to the tq command: exit codes, JSON <-> msgpack
   helpers, output helpers and the entry point of each verb. */
#ifndef TQ_CLI_H
#define TQ_CLI_H

#include <jansson.h>
#include <msgpack.h>
#include <stdbool.h>

#include "tq/tq_client.h"

#define streq(a, b) (strcmp((a), (b)) == 0)

/* Exit codes, as documented in the usage text, man page and README. */
enum {
    TQ_CLI_EXIT_OK = 0,
    TQ_CLI_EXIT_TASK = 1,
    TQ_CLI_EXIT_USAGE = 2,
    TQ_CLI_EXIT_TIMEOUT = 3,
    TQ_CLI_EXIT_UNREACHABLE = 4,
    TQ_CLI_EXIT_UNKNOWN = 5,
};

/* How long operator requests and STATUS wait by default, ms. */
#define TQ_CLI_REQUEST_MS 5000

/* A verb: argv holds its arguments (after the verb, --broker removed);
   argv[-1] is the verb itself, so getopt_long runs on (argc + 1, argv - 1). */
typedef int(tq_cli_verb_fn)(tq_client_t *client, int argc, char **argv);

/* "TQ_ETASK" for TQ_ETASK ...; "?" when out of range. */
const char *tq_cli_code_name(int code);

/* The exit code for a tq_err_t: 0, 3, 4, 5, else 1. */
int tq_cli_exit_code(int code);

/* Prints "tq: <message>", the synopsis of usage (its lines up to the
   first blank one) and where the whole text is on stderr; returns 2. */
int tq_cli_usage_error(const char *usage, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* After getopt_long returned '?' or ':' (opterr 0, optstring starting
   with ':'): prints which option was unknown or lacks its value, as
   tq_cli_usage_error; returns 2. gargv: the argv given to getopt_long. */
int tq_cli_option_error(const char *usage, int opt, char **gargv);

/* Prints the one format of an unknown id on stderr, "error: TQ_EUNKNOWN:
   ID: unknown task id (never submitted, or its result expired)", and
   returns 5. */
int tq_cli_unknown_id(const char *id);

/* Prints "error: <CODE>: <text>" on stderr (text: printf format, or NULL
   for tq_strerror(code)); returns tq_cli_exit_code(code). */
int tq_cli_error(int code, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses SEC (a non-negative decimal) into milliseconds; -1 if invalid. */
int tq_cli_parse_seconds(const char *text);

/* Parses a whole number in [min, max] into *out; false if invalid. */
bool tq_cli_parse_long(const char *text, long min, long max, long *out);

/* Packs a JSON value as msgpack (integers int64, reals double). */
void tq_cli_pack_json(msgpack_packer *pk, const json_t *v);

/* Packs one argument: its JSON value if text parses as JSON, else the
   plain string. */
void tq_cli_pack_arg(msgpack_packer *pk, const char *text, size_t len);

/* False if text looks like JSON (its first non-blank character is {, [
   or ") but is not valid JSON: a typo must not travel as a string. why
   gets jansson's reason. */
bool tq_cli_check_arg(const char *text, size_t len, char *why, size_t size);

/* Parses --eta TIME into milliseconds from now (0 if TIME has passed):
   an ISO-8601 date and time (2026-12-01T15:30:00, local time unless it
   ends in Z or +HH:MM), HH:MM[:SS] today (tomorrow if passed), or @EPOCH
   seconds. -1 if invalid. */
long long tq_cli_parse_eta(const char *text);

/* True if some worker in status provides task and serves queue (workers
   that list no queues serve every queue). */
bool tq_cli_provided(const json_t *status, const char *task,
                     const char *queue);

/* Converts msgpack to JSON (new reference): binary as {"$bin": hex},
   extensions as {"$ext": type, "data": hex}, invalid UTF-8 replaced by
   U+FFFD, non-string map keys as their JSON text. */
json_t *tq_cli_to_json(const msgpack_object *o);

/* Encodes v on one line (indent false) or indented; malloc'd, NULL on
   failure. Reals print with as many digits as they need to read back. */
char *tq_cli_dump_json(const json_t *v, bool indent);

/* Prints v and a newline on stdout. */
void tq_cli_print_json(const json_t *v, bool indent);

/* The final outcome of r as a JSON object (new reference): {"id", "state",
   "code", "value"} on success, {"id", "state", "code", "error"} else.
   code is r's final code (or TQ_ETIMEDOUT). */
json_t *tq_cli_result_json(tq_result_t *r, int code);

/* Fetches STATUS as JSON into *status (new reference). On failure prints
   the error and returns its exit code; 0 on success. */
int tq_cli_fetch_status(tq_client_t *client, int timeout_ms,
                        json_t **status);

/* Sum of the credit of the workers in status that provide task, or of
   all workers if task is NULL; *children gets how many children. */
long tq_cli_task_capacity(const json_t *status, const char *task,
                          long *children);

/* The verbs (tq_cli.c: submit, get; tq_cli_ops.c: the rest but map and
   exec; tq_cli_map.c: map, exec). */
int tq_cli_submit(tq_client_t *client, int argc, char **argv);
int tq_cli_get(tq_client_t *client, int argc, char **argv);
int tq_cli_wait(tq_client_t *client, int argc, char **argv);
int tq_cli_status(tq_client_t *client, int argc, char **argv);
int tq_cli_workers(tq_client_t *client, int argc, char **argv);
int tq_cli_cancel(tq_client_t *client, int argc, char **argv);
int tq_cli_failed(tq_client_t *client, int argc, char **argv);
int tq_cli_retry(tq_client_t *client, int argc, char **argv);
int tq_cli_purge(tq_client_t *client, int argc, char **argv);
int tq_cli_map(tq_client_t *client, int argc, char **argv);
int tq_cli_exec(tq_client_t *client, int argc, char **argv);
/* tq_cli_inspect.c: tasks, inspect. */
int tq_cli_tasks(tq_client_t *client, int argc, char **argv);
int tq_cli_inspect(tq_client_t *client, int argc, char **argv);

/* Usage texts, each with an example, printed by `tq VERB --help`. */
extern const char *const tq_cli_usage_submit;
extern const char *const tq_cli_usage_get;
extern const char *const tq_cli_usage_wait;
extern const char *const tq_cli_usage_status;
extern const char *const tq_cli_usage_workers;
extern const char *const tq_cli_usage_cancel;
extern const char *const tq_cli_usage_failed;
extern const char *const tq_cli_usage_retry;
extern const char *const tq_cli_usage_purge;
extern const char *const tq_cli_usage_map;
extern const char *const tq_cli_usage_exec;
extern const char *const tq_cli_usage_tasks;
extern const char *const tq_cli_usage_inspect;

#endif
