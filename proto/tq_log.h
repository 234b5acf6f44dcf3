/* tq_log.h - one log format for every tq binary and libtq: lines on stderr
   with an ISO-8601 UTC timestamp, the program, its pid and a level, or one
   JSON object per line for log shippers; czmq's own log lines are taken
   into the same stream. */
#ifndef TQ_LOG_H
#define TQ_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* Levels, most severe first; a line is written when its level is at most
   the current one. */
typedef enum {
    TQ_LOG_ERROR = 0,
    TQ_LOG_WARNING = 1,
    TQ_LOG_INFO = 2,
    TQ_LOG_DEBUG = 3,
} tq_log_level_t;

/* Names the program in every line ("tq-broker"; borrowed, must outlive
   the process's logging) and applies $TQ_LOG_LEVEL and $TQ_LOG_JSON when
   they are set and valid. The default level is TQ_LOG_INFO. */
void tq_log_init(const char *ident);

/* "error", "warning", "info" or "debug" (also "warn"), any case: the
   level; -1 for anything else. */
int tq_log_parse_level(const char *text);

/* The name of level ("error" ...), "?" if out of range. */
const char *tq_log_level_name(int level);

/* Sets the level (clamped to the valid range). */
void tq_log_set_level(int level);

/* The current level. */
int tq_log_level(void);

/* true: each line a JSON object {"ts","level","ident","pid","msg"}. */
void tq_log_set_json(bool json);

/* True if a line of level would be written. */
bool tq_log_enabled(int level);

/* Writes one line of level (format as printf) on stderr, atomically. */
void tq_log(int level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
void tq_log_v(int level, const char *format, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* Shorthands for the common levels. */
#define tq_log_error(...) tq_log(TQ_LOG_ERROR, __VA_ARGS__)
#define tq_log_warning(...) tq_log(TQ_LOG_WARNING, __VA_ARGS__)
#define tq_log_info(...) tq_log(TQ_LOG_INFO, __VA_ARGS__)
#define tq_log_debug(...) tq_log(TQ_LOG_DEBUG, __VA_ARGS__)

/* Sends stderr (the log, and what children inherit) to path, appended,
   created 0640. 0, or -1 with the reason in why. */
int tq_log_set_file(const char *path, char *why, size_t size);

/* Opens the --log-file path again onto stderr (after logrotate moved it).
   Async-signal-safe: call it from a SIGHUP handler. 0, or -1 (no file
   set, or it cannot be opened: stderr stays as it was). */
int tq_log_reopen(void);

/* Routes czmq's log (zsys_info ...) through tq_log instead of czmq's
   default, stdout: stdout carries results alone. libtq and the binaries
   do this when they load; idempotent. */
void tq_log_take_czmq(void);

/* Formats the current UTC time as 2026-12-01T14:50:47.123Z into buf
   (at least 32 bytes); returns buf. */
char *tq_log_timestamp(char *buf, size_t size);

#endif
