/* tq_cli_map.c - tq map and tq exec: one task per stdin line with at most
   -j in flight, results in input order (or completion order), a progress
   bar on a terminal's stderr. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tq_cli.h"
#include "tq_client_internal.h"
#include "tq_proto.h"

const char *const tq_cli_usage_map =
    "usage: tq [--broker EP] map TASK [-j N] [--unordered] [--json] "
    "[--queue Q]\n"
    "          [--priority P] [--time-limit SEC] [--retries N] "
    "[--progress|--no-progress]\n"
    "          [--no-check]\n"
    "\n"
    "Runs TASK once per line of stdin. A line that is a JSON array is the\n"
    "argument list; any other line is one argument (its JSON value if it\n"
    "parses as JSON, else the line as a string). Results go to stdout as "
    "JSON\n"
    "lines in input order; a failed task prints \"error: line N: <code>: "
    "<text>\"\n"
    "on stderr instead, and tq exits 1 (4 if the broker became "
    "unreachable).\n"
    "\n"
    "  -j, --jobs N    tasks in flight (default: twice the credit of the "
    "workers\n"
    "                  that provide TASK, at least 64)\n"
    "  --unordered     print results as they complete\n"
    "  --json          print {\"line\", \"id\", \"state\", \"code\", "
    "\"value\" or \"error\"}\n"
    "                  per line, failures included (stdout only)\n"
    "  --progress      draw the progress bar even when stderr is not a "
    "terminal;\n"
    "                  --no-progress: never (default: on a terminal only)\n"
    "  --no-check      do not fail fast when no connected worker provides "
    "TASK\n"
    "  --queue, --priority, --time-limit, --retries  as for tq submit\n"
    "\n"
    "The progress bar shows done/total, tasks per second, ETA and failures;\n"
    "to know the total, tq reads all of stdin first when it draws one.\n"
    "A line that starts with {, [ or \" but is not valid JSON is not "
    "submitted:\n"
    "\"error: line N: TQ_EINVAL: malformed JSON ...\", exit 1.\n"
    "Ctrl-C (SIGINT, or SIGTERM) stops reading, cancels the tasks in "
    "flight and\n"
    "says how many on stderr (exit 130).\n"
    "\n"
    "example:\n"
    "  seq 1000 | tq map tq.echo > out.jsonl\n"
    "  printf '[1,2]\\n[3,4]\\n' | tq map mytasks.add --json\n";

const char *const tq_cli_usage_exec =
    "usage: tq [--broker EP] exec [-j N] [--json] [--time-limit SEC] "
    "[--queue Q]\n"
    "          [--progress|--no-progress] -- CMD [ARG...]\n"
    "\n"
    "GNU-parallel style: runs CMD ARG... on worker hosts once per stdin "
    "line,\n"
    "with every {} in the words replaced by the line (without one, the line "
    "is\n"
    "appended as the last argument). One word holding a space is a shell\n"
    "command (/bin/sh -c), the line shell-quoted in it. Each command's "
    "stdout\n"
    "and stderr are printed in input order; the exit status is 1 if any\n"
    "command exited non-zero or could not run. Only workers started with\n"
    "--allow-exec provide tq.exec; with none connected tq fails at once.\n"
    "Output is capped at 1 MiB per stream per command. Ctrl-C cancels the\n"
    "commands in flight and says how many (exit 130).\n"
    "\n"
    "  -j, --jobs N    commands in flight (default as for tq map)\n"
    "  --json          print {\"line\", \"input\", \"exit\", \"stdout\", "
    "\"stderr\"}\n"
    "                  (or \"code\" and \"error\" if the task failed) per "
    "line\n"
    "  --unordered, --progress, --no-progress, --queue, --time-limit as for "
    "tq map\n"
    "\n"
    "example:\n"
    "  ls *.log | tq exec -j 8 -- gzip -k {}\n"
    "  seq 3 | tq exec -- 'echo host $(hostname) got {}'\n";

/* The name of the exec built-in on workers. */
#define S_EXEC_TASK "tq.exec"

/* Results kept waiting for their turn, as a multiple of -j (ordered
   output buffers what completed behind a slow line). */
#define S_WINDOW_FACTOR 16
#define S_WINDOW_MIN 4096

/* A line whose submission the broker did not acknowledge within the
   client's liveness (a broker stalled or restarting) is submitted again
   under its id this many times (a liveness each) before it fails. */
#define S_RESUBMITS 4

/* After Ctrl-C: how long the cancels of the lines in flight are waited
   for, all of them together (ms). */
#define S_CANCEL_WAIT_MS 5000

/* One line in flight or waiting to be printed. */
typedef struct {
    struct s_run_t *run;
    tq_result_t *result; /* NULL when the slot is free */
    uint64_t line; /* 1-based input line number */
    char *input; /* the line (exec --json shows it) */
    bool done; /* final: its line came through run->finished (main
                  thread only) */
    int resubmits; /* times sent again after TQ_EUNREACHABLE */
} s_slot_t;

/* One tq map or tq exec run. */
typedef struct s_run_t {
    tq_client_t *client;
    const char *task;
    tq_options_t options;
    long jobs;
    bool ordered, as_json, progress, exec;
    char **words; /* exec: the command template */
    int nwords;
    bool shell; /* exec: one word with a space: /bin/sh -c */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t *finished; /* ring of completed line numbers, under lock */
    size_t fin_head, fin_count;

    s_slot_t *slots; /* ring indexed by line % cap */
    size_t cap;
    uint64_t next_line; /* next line to read, 1-based */
    uint64_t head_line; /* oldest line not yet printed */
    long in_flight;

    /* input */
    FILE *in;
    char **lines; /* all of stdin when read ahead for the progress bar */
    size_t nlines, line_pos;
    bool eof;
    char *buf;
    size_t buf_cap;
    msgpack_sbuffer args;

    /* counts and progress */
    uint64_t total, done, failed;
    uint64_t resubmitted; /* lines sent again after TQ_EUNREACHABLE */
    bool gave_up; /* a line failed every resubmission: no more */
    int worst; /* exit code so far */
    int64_t start_ms, last_draw_ms;
} s_run_t;

/* Set by SIGINT/SIGTERM during a run: stop, cancel what is in flight. */
static volatile sig_atomic_t s_interrupted;

static void
s_on_interrupt(int sig)
{
    s_interrupted = sig;
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* The run whose callbacks may touch its slots, NULL once it ended: lines
   still in flight after Ctrl-C end (TQ_ECLOSED) when the client is
   destroyed, after the run and its slots are gone. */
static pthread_mutex_t s_active_lock = PTHREAD_MUTEX_INITIALIZER;
static s_run_t *s_active;

/* Runs on the client's I/O thread when a task is final. */
static void
s_on_final(tq_result_t *result, void *arg)
{
    (void)result;
    pthread_mutex_lock(&s_active_lock);
    if (!s_active) {
        /* the run ended: arg points into freed slots */
        pthread_mutex_unlock(&s_active_lock);
        return;
    }
    s_slot_t *slot = arg;
    s_run_t *run = slot->run;
    pthread_mutex_lock(&run->lock);
    /* the ring holds at most cap entries: every line in flight has a slot */
    run->finished[(run->fin_head + run->fin_count) % run->cap] = slot->line;
    run->fin_count++;
    pthread_cond_signal(&run->cond);
    pthread_mutex_unlock(&run->lock);
    pthread_mutex_unlock(&s_active_lock);
}

/* ---- input -------------------------------------------------------------- */

/* Reads one line without its newline (and CR) into run->buf; false at
   EOF. */
static bool
s_read_line(s_run_t *run, char **line, size_t *len)
{
    ssize_t n = getline(&run->buf, &run->buf_cap, run->in);
    if (n < 0)
        return false;
    if (n > 0 && run->buf[n - 1] == '\n')
        run->buf[--n] = 0;
    if (n > 0 && run->buf[n - 1] == '\r')
        run->buf[--n] = 0;
    *line = run->buf;
    *len = (size_t)n;
    return true;
}

/* Reads all of stdin so the progress bar knows the total. */
static int
s_read_all(s_run_t *run)
{
    size_t cap = 0;
    char *line;
    size_t len;
    while (s_read_line(run, &line, &len)) {
        if (run->nlines == cap) {
            cap = cap ? cap * 2 : 1024;
            char **grown = realloc(run->lines, cap * sizeof *grown);
            if (!grown)
                return -1;
            run->lines = grown;
        }
        run->lines[run->nlines] = strndup(line, len);
        if (!run->lines[run->nlines])
            return -1;
        run->nlines++;
    }
    run->total = run->nlines;
    return 0;
}

/* The next input line (borrowed until the next call); false at the end. */
static bool
s_next_input(s_run_t *run, char **line, size_t *len)
{
    if (run->lines) {
        if (run->line_pos >= run->nlines)
            return false;
        *line = run->lines[run->line_pos++];
        *len = strlen(*line);
        return true;
    }
    if (run->eof || !s_read_line(run, line, len)) {
        run->eof = true;
        return false;
    }
    return true;
}

/* ---- building arguments ------------------------------------------------- */

/* Appends text to a malloc'd string *dst of *len bytes. */
static int
s_append(char **dst, size_t *len, size_t *cap, const char *text, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t want = (*len + n + 1) * 2;
        char *grown = realloc(*dst, want);
        if (!grown)
            return -1;
        *dst = grown;
        *cap = want;
    }
    memcpy(*dst + *len, text, n);
    *len += n;
    (*dst)[*len] = 0;
    return 0;
}

/* Appends line in single quotes, as sh reads it back verbatim. */
static int
s_append_quoted(char **dst, size_t *len, size_t *cap, const char *line,
                size_t n)
{
    int rc = s_append(dst, len, cap, "'", 1);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = line[i] == '\''
                 ? s_append(dst, len, cap, "'\\''", 4)
                 : s_append(dst, len, cap, line + i, 1);
    return rc ? rc : s_append(dst, len, cap, "'", 1);
}

/* Packs word with each {} replaced by line (quoted for the shell). */
static bool
s_pack_word(msgpack_packer *pk, const char *word, const char *line,
            size_t n, bool quote)
{
    char *out = NULL;
    size_t len = 0, cap = 0;
    bool replaced = false;
    int rc = s_append(&out, &len, &cap, "", 0);
    for (const char *p = word; *p && rc == 0;) {
        const char *hit = strstr(p, "{}");
        if (!hit) {
            rc = s_append(&out, &len, &cap, p, strlen(p));
            break;
        }
        rc = s_append(&out, &len, &cap, p, (size_t)(hit - p));
        if (rc == 0)
            rc = quote ? s_append_quoted(&out, &len, &cap, line, n)
                       : s_append(&out, &len, &cap, line, n);
        replaced = true;
        p = hit + 2;
    }
    if (rc == 0 && quote && !replaced) {
        /* as GNU parallel: no {} means the line goes at the end */
        rc = s_append(&out, &len, &cap, " ", 1);
        if (rc == 0)
            rc = s_append_quoted(&out, &len, &cap, line, n);
    }
    if (rc == 0)
        msgpack_pack_str_with_body(pk, out, len);
    free(out);
    return replaced;
}

/* Packs the argument array of one line into run->args; false (why set)
   for a line that looks like JSON but is not. */
static bool
s_pack_line(s_run_t *run, const char *line, size_t len, char *why,
            size_t size)
{
    run->args.size = 0;
    if (!run->exec && !tq_cli_check_arg(line, len, why, size))
        return false;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &run->args, msgpack_sbuffer_write);
    if (!run->exec) {
        json_t *v = json_loadb(line, len, JSON_DECODE_ANY, NULL);
        if (json_is_array(v))
            tq_cli_pack_json(&pk, v);
        else {
            msgpack_pack_array(&pk, 1);
            if (v)
                tq_cli_pack_json(&pk, v);
            else
                msgpack_pack_str_with_body(&pk, line, len);
        }
        json_decref(v);
        return true;
    }
    if (run->shell) { /* ["sh command"] */
        msgpack_pack_array(&pk, 1);
        s_pack_word(&pk, run->words[0], line, len, true);
        return true;
    }
    /* [[CMD, ARG...]]: the nested form, so a lone word never meets a
       shell */
    bool any = false;
    for (int i = 0; i < run->nwords; i++)
        any |= strstr(run->words[i], "{}") != NULL;
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, (size_t)run->nwords + (any ? 0 : 1));
    for (int i = 0; i < run->nwords; i++)
        s_pack_word(&pk, run->words[i], line, len, false);
    if (!any)
        msgpack_pack_str_with_body(&pk, line, len);
    return true;
}

/* ---- output ------------------------------------------------------------- */

static void
s_note(s_run_t *run, int code)
{
    if (code == TQ_OK)
        return;
    run->failed++;
    int rc = code == TQ_EUNREACHABLE ? TQ_CLI_EXIT_UNREACHABLE
                                     : TQ_CLI_EXIT_TASK;
    if (rc > run->worst)
        run->worst = rc;
}

static json_t *
s_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR &&
            k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return tq_cli_to_json(&map->via.map.ptr[i].val);
    }
    return NULL;
}

/* Writes a string field of an exec result raw to out. */
static void
s_write_field(const msgpack_object *map, const char *key, FILE *out)
{
    for (uint32_t i = 0; map && i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        if (k->type == MSGPACK_OBJECT_STR &&
            k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0 &&
            v->type == MSGPACK_OBJECT_STR)
            fwrite(v->via.str.ptr, 1, v->via.str.size, out);
    }
}

/* Prints the result of one finished slot and frees the slot. */
static void
s_emit(s_run_t *run, s_slot_t *slot)
{
    tq_result_t *r = slot->result;
    int code = tq_result_code(r);
    const msgpack_object *value = code == TQ_OK ? tq_result_value(r) : NULL;
    if (code == TQ_OK && !value)
        code = TQ_EPROTO;
    if (run->exec && value) {
        json_t *exit_j = s_get(value, "exit");
        int exit_code = json_is_integer(exit_j)
                            ? (int)json_integer_value(exit_j)
                            : 1;
        json_decref(exit_j);
        if (exit_code != 0) {
            run->failed++;
            if (run->worst < TQ_CLI_EXIT_TASK)
                run->worst = TQ_CLI_EXIT_TASK;
        }
        if (run->as_json) {
            json_t *j = tq_cli_to_json(value);
            json_object_set_new(j, "line", json_integer((json_int_t)slot->line));
            json_object_set_new(j, "input", json_string(slot->input));
            json_object_set_new(j, "id", json_string(tq_result_id(r)));
            tq_cli_print_json(j, false);
            json_decref(j);
        } else {
            s_write_field(value, "stdout", stdout);
            fflush(stdout);
            s_write_field(value, "stderr", stderr);
        }
    } else if (run->as_json) {
        json_t *j = tq_cli_result_json(r, code);
        json_object_set_new(j, "line", json_integer((json_int_t)slot->line));
        if (run->exec)
            json_object_set_new(j, "input", json_string(slot->input));
        tq_cli_print_json(j, false);
        json_decref(j);
        s_note(run, code);
    } else if (value) {
        json_t *j = tq_cli_to_json(value);
        tq_cli_print_json(j, false);
        json_decref(j);
    } else {
        const char *text = tq_result_error(r);
        if (run->progress)
            fputs("\r\033[K", stderr);
        fprintf(stderr, "error: line %llu: %s: %s\n",
                (unsigned long long)slot->line, tq_cli_code_name(code),
                *text ? text : tq_strerror(code));
        s_note(run, code);
    }
    run->done++;
    tq_result_destroy(&slot->result);
    free(slot->input);
    slot->input = NULL;
    slot->done = false;
}

/* Redraws the progress line on stderr (at most every 100 ms unless
   final). */
static void
s_draw(s_run_t *run, bool final)
{
    if (!run->progress)
        return;
    int64_t now = s_now_ms();
    if (!final && now - run->last_draw_ms < 100)
        return;
    run->last_draw_ms = now;
    double secs = (now - run->start_ms) / 1000.0;
    double rate = secs > 0 ? run->done / secs : 0;
    char eta[32] = "-";
    if (rate > 0 && run->total >= run->done) {
        double left = (run->total - run->done) / rate;
        if (left < 3600)
            snprintf(eta, sizeof eta, "%dm%02ds", (int)left / 60,
                     (int)left % 60);
        else
            snprintf(eta, sizeof eta, "%dh%02dm", (int)left / 3600,
                     (int)left / 60 % 60);
    }
    char bar[31];
    int width = 30;
    int fill = run->total ? (int)(run->done * (uint64_t)width / run->total)
                          : 0;
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r[%s] %llu/%llu  %.0f/s  ETA %s  failed %llu\033[K",
            bar, (unsigned long long)run->done,
            (unsigned long long)run->total, rate, eta,
            (unsigned long long)run->failed);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

/* ---- the run ------------------------------------------------------------ */

/* Submits the next line; false when the input is used up. */
static bool
s_submit_next(s_run_t *run)
{
    char *line;
    size_t len;
    if (!s_next_input(run, &line, &len))
        return false;
    char why[256];
    bool packed = s_pack_line(run, line, len, why, sizeof why);
    uint64_t n = run->next_line++;
    if (!run->lines)
        run->total = n;
    if (!packed) {
        /* never sent as a string: the user meant JSON */
        if (run->progress)
            fputs("\r\033[K", stderr);
        fprintf(stderr, "error: line %llu: TQ_EINVAL: %s\n",
                (unsigned long long)n, why);
        s_note(run, TQ_EINVAL);
        run->done++;
        return true;
    }
    s_slot_t *slot = &run->slots[n % run->cap];
    slot->run = run;
    slot->line = n;
    slot->done = false;
    slot->resubmits = 0;
    slot->input = run->exec ? strndup(line, len) : NULL;
    tq_options_t options = run->options;
    options.callback = s_on_final;
    options.error_callback = s_on_final;
    options.callback_arg = slot;
    /* the callback only touches the slot's flag and the ring, never
       slot->result: it may run before this call returns */
    slot->result = tq_apply_async_raw(run->client, run->task, &options,
                                      run->args.data, run->args.size);
    if (!slot->result) {
        /* invalid names are checked before the run starts */
        fprintf(stderr, "error: TQ_EINVAL: line %llu could not be "
                        "submitted\n",
                (unsigned long long)n);
        s_note(run, TQ_EINVAL);
        free(slot->input);
        slot->input = NULL;
        run->done++;
        return true;
    }
    run->in_flight++;
    return true;
}

/* Prints what can be printed: in order from head_line, or as finished. */
/* A line that ended TQ_EUNREACHABLE unacknowledged goes again under its
   id (PROTOCOL.md 5.1 item 3: the task never runs twice for it); true if
   it did. */
static bool
s_resubmit(s_run_t *run, s_slot_t *slot)
{
    if (run->gave_up || tq_result_code(slot->result) != TQ_EUNREACHABLE)
        return false;
    if (slot->resubmits >= S_RESUBMITS) {
        run->gave_up = true;
        return false;
    }
    tq_result_t *again = tq_result_resubmit(slot->result, s_on_final,
                                            s_on_final, slot);
    if (!again)
        return false;
    if (run->resubmitted++ == 0) {
        if (run->progress)
            fputs("\r\033[K", stderr);
        fprintf(stderr, "tq: broker unreachable, submitting unanswered "
                        "lines again\n");
    }
    tq_result_destroy(&slot->result);
    slot->result = again;
    slot->resubmits++;
    return true;
}

static void
s_collect(s_run_t *run, uint64_t *finished, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        s_slot_t *slot = &run->slots[finished[i] % run->cap];
        if (s_resubmit(run, slot))
            continue;
        slot->done = true;
        run->in_flight--;
        if (!run->ordered)
            s_emit(run, slot);
    }
    /* the window slides past printed (or never-submitted) lines */
    while (run->head_line < run->next_line) {
        s_slot_t *slot = &run->slots[run->head_line % run->cap];
        if (slot->result && !(run->ordered && slot->done))
            break;
        if (slot->result)
            s_emit(run, slot);
        run->head_line++;
    }
}

/* After Ctrl-C: cancels every task still in flight, waits (bounded) for
   the broker to confirm, prints what finished and says how many were
   cancelled. */
static void
s_cancel_in_flight(s_run_t *run, uint64_t *batch)
{
    if (run->progress)
        fputs("\r\033[K", stderr);
    long requested = 0;
    for (uint64_t line = run->head_line; line < run->next_line; line++) {
        s_slot_t *slot = &run->slots[line % run->cap];
        if (slot->result && !slot->done && !tq_result_ready(slot->result) &&
            tq_result_cancel(slot->result) == TQ_OK)
            requested++;
    }
    /* the broker answers each cancel; 5 s at most for all of them (one
       deadline, not 5 s per line: thousands may go unanswered) */
    long cancelled = 0, finished = 0;
    int64_t deadline = s_now_ms() + S_CANCEL_WAIT_MS;
    for (uint64_t line = run->head_line; line < run->next_line; line++) {
        s_slot_t *slot = &run->slots[line % run->cap];
        if (!slot->result || slot->done)
            continue;
        int64_t left = deadline - s_now_ms();
        /* tq_result_wait, not _get: a get that times out asks the broker
           for its status, once per handle */
        if (tq_result_wait(slot->result, left > 0 ? (int)left : 0) != TQ_OK)
            continue;
        if (tq_result_code(slot->result) == TQ_ECANCELLED)
            cancelled++;
        else
            finished++;
    }
    /* drain the completion ring so what did finish is printed */
    size_t count = 0;
    pthread_mutex_lock(&run->lock);
    while (run->fin_count) {
        batch[count++] = run->finished[run->fin_head];
        run->fin_head = (run->fin_head + 1) % run->cap;
        run->fin_count--;
    }
    pthread_mutex_unlock(&run->lock);
    s_collect(run, batch, count);
    fprintf(stderr,
            "tq: interrupted: cancelled %ld task(s) in flight (%ld asked, "
            "%ld finished first); no further lines submitted\n",
            cancelled, requested, finished);
    run->worst = 128 + SIGINT;
}

static int
s_run(s_run_t *run)
{
    run->cap = (size_t)run->jobs * S_WINDOW_FACTOR;
    if (run->cap < S_WINDOW_MIN)
        run->cap = S_WINDOW_MIN;
    run->slots = calloc(run->cap, sizeof *run->slots);
    run->finished = calloc(run->cap, sizeof *run->finished);
    uint64_t *batch = calloc(run->cap, sizeof *batch);
    if (!run->slots || !run->finished || !batch) {
        free(batch);
        return tq_cli_error(TQ_ENOMEM, NULL);
    }
    pthread_mutex_init(&run->lock, NULL);
    pthread_cond_init(&run->cond, NULL);
    msgpack_sbuffer_init(&run->args);
    run->next_line = run->head_line = 1;
    run->start_ms = s_now_ms();
    pthread_mutex_lock(&s_active_lock);
    s_active = run;
    pthread_mutex_unlock(&s_active_lock);
    bool more = true;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = s_on_interrupt;
    s_interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    for (;;) {
        if (s_interrupted) {
            s_cancel_in_flight(run, batch);
            break;
        }
        while (more && run->in_flight < run->jobs &&
               run->next_line - run->head_line < run->cap && !s_interrupted)
            more = s_submit_next(run);
        if (!more && run->in_flight == 0) {
            s_collect(run, batch, 0);
            break;
        }
        size_t count = 0;
        pthread_mutex_lock(&run->lock);
        if (!run->fin_count) {
            /* wake at least every 100 ms to redraw the bar */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&run->cond, &run->lock, &ts);
        }
        while (run->fin_count) {
            batch[count++] = run->finished[run->fin_head];
            run->fin_head = (run->fin_head + 1) % run->cap;
            run->fin_count--;
        }
        pthread_mutex_unlock(&run->lock);
        s_collect(run, batch, count);
        s_draw(run, false);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    /* lines cancelled but unanswered end later, without us */
    pthread_mutex_lock(&s_active_lock);
    s_active = NULL;
    pthread_mutex_unlock(&s_active_lock);
    /* handles of lines still in flight (an interrupted or abandoned
       run): let go, the library ends them when it can */
    for (uint64_t line = run->head_line; line < run->next_line; line++)
        tq_result_destroy(&run->slots[line % run->cap].result);
    s_draw(run, true);
    free(batch);
    msgpack_sbuffer_destroy(&run->args);
    pthread_cond_destroy(&run->cond);
    pthread_mutex_destroy(&run->lock);
    return run->worst;
}

/* Parses the options map and exec share with getopt_long (argv[-1] is
   the verb); fills run and returns the index in argv of the first word
   after them (TASK for map, CMD for exec), or -1 after a usage error.
   exec stops at its first non-option word (the command's own options
   follow); map takes options after TASK too. */
static int
s_parse(s_run_t *run, int argc, char **argv, const char *usage,
        bool *no_check, int *force_progress)
{
    enum { O_UNORDERED = 256, O_JSON, O_NO_CHECK, O_PROGRESS, O_NO_PROGRESS,
           O_QUEUE, O_PRIORITY, O_RETRIES, O_LIMIT };
    static const struct option options[] = {
        {"jobs", required_argument, NULL, 'j'},
        {"unordered", no_argument, NULL, O_UNORDERED},
        {"json", no_argument, NULL, O_JSON},
        {"no-check", no_argument, NULL, O_NO_CHECK},
        {"progress", no_argument, NULL, O_PROGRESS},
        {"no-progress", no_argument, NULL, O_NO_PROGRESS},
        {"queue", required_argument, NULL, O_QUEUE},
        {"priority", required_argument, NULL, O_PRIORITY},
        {"retries", required_argument, NULL, O_RETRIES},
        {"time-limit", required_argument, NULL, O_LIMIT},
        {NULL, 0, NULL, 0},
    };
    char **gargv = argv - 1;
    long n = 0;
    int opt;
    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc + 1, gargv, run->exec ? "+:j:" : ":j:",
                              options, NULL)) != -1) {
        switch (opt) {
        case 'j':
            if (!tq_cli_parse_long(optarg, 1, 1000000, &n)) {
                tq_cli_usage_error(usage, "--jobs %s: not in 1..1000000",
                                   optarg);
                return -1;
            }
            run->jobs = n;
            break;
        case O_UNORDERED:
            run->ordered = false;
            break;
        case O_JSON:
            run->as_json = true;
            break;
        case O_NO_CHECK:
            *no_check = true;
            break;
        case O_PROGRESS:
            *force_progress = 1;
            break;
        case O_NO_PROGRESS:
            *force_progress = 0;
            break;
        case O_QUEUE:
            run->options.queue = optarg;
            break;
        case O_PRIORITY:
            if (!tq_cli_parse_long(optarg, 0, TQ_PRIORITY_MAX, &n)) {
                tq_cli_usage_error(usage, "--priority %s: not in 0..9",
                                   optarg);
                return -1;
            }
            run->options.priority = (int)n;
            break;
        case O_RETRIES:
            if (!tq_cli_parse_long(optarg, 0, 1000, &n)) {
                tq_cli_usage_error(usage, "--retries %s: not in 0..1000",
                                   optarg);
                return -1;
            }
            run->options.retries = (int)n;
            break;
        case O_LIMIT:
            run->options.time_limit_ms = tq_cli_parse_seconds(optarg);
            if (run->options.time_limit_ms < 0) {
                tq_cli_usage_error(usage, "--time-limit %s: not a duration",
                                   optarg);
                return -1;
            }
            break;
        default:
            tq_cli_option_error(usage, opt, gargv);
            return -1;
        }
    }
    return optind - 1;
}

/* Shared by map and exec once run->task (and the exec words) are set. */
static int
s_start(tq_client_t *client, s_run_t *run, bool no_check, int force_progress)
{
    run->client = client;
    /* a bad task or queue name would fail every line: say it once */
    const char *queue = run->options.queue;
    if (!tq_proto_valid_name(run->task, strlen(run->task)) ||
        (queue && !tq_proto_valid_name(queue, strlen(queue)))) {
        fprintf(stderr, "tq: invalid task name or queue name: %s / %s\n",
                run->task, queue ? queue : TQ_DEFAULT_QUEUE);
        return TQ_CLI_EXIT_USAGE;
    }
    json_t *status = NULL;
    int rc = tq_cli_fetch_status(client, TQ_CLI_REQUEST_MS, &status);
    if (rc != TQ_CLI_EXIT_OK)
        return rc;
    long children = 0;
    long credit = tq_cli_task_capacity(status, run->task, &children);
    json_decref(status);
    if (children == 0 && !no_check) {
        if (run->exec)
            return tq_cli_error(TQ_ENOTASK,
                                "no connected worker provides " S_EXEC_TASK
                                ": start tq-worker with --allow-exec on "
                                "the hosts that may run commands");
        return tq_cli_error(TQ_ENOTASK,
                            "no connected worker provides %s (--no-check "
                            "submits anyway; the tasks wait for one)",
                            run->task);
    }
    if (run->jobs <= 0) {
        run->jobs = 2 * credit;
        if (run->jobs < 64)
            run->jobs = 64;
    }
    run->progress = force_progress >= 0 ? force_progress == 1
                                        : isatty(STDERR_FILENO) == 1;
    run->in = stdin;
    if (run->progress && s_read_all(run) != 0)
        return tq_cli_error(TQ_ENOMEM, "reading stdin");
    rc = s_run(run);
    for (size_t i = 0; i < run->nlines; i++)
        free(run->lines[i]);
    free(run->lines);
    free(run->buf);
    free(run->slots);
    free(run->finished);
    return rc;
}

int
tq_cli_map(tq_client_t *client, int argc, char **argv)
{
    s_run_t run;
    memset(&run, 0, sizeof run);
    run.ordered = true;
    bool no_check = false;
    int force_progress = -1;
    int first = s_parse(&run, argc, argv, tq_cli_usage_map, &no_check,
                        &force_progress);
    if (first < 0)
        return TQ_CLI_EXIT_USAGE;
    if (first >= argc)
        return tq_cli_usage_error(tq_cli_usage_map, "%s", "missing TASK");
    if (first + 1 < argc)
        return tq_cli_usage_error(tq_cli_usage_map, "%s: unexpected argument",
                                  argv[first + 1]);
    run.task = argv[first];
    return s_start(client, &run, no_check, force_progress);
}

int
tq_cli_exec(tq_client_t *client, int argc, char **argv)
{
    s_run_t run;
    memset(&run, 0, sizeof run);
    run.ordered = true;
    run.exec = true;
    run.task = S_EXEC_TASK;
    bool no_check = false;
    int force_progress = -1;
    int first = s_parse(&run, argc, argv, tq_cli_usage_exec, &no_check,
                        &force_progress);
    if (first < 0)
        return TQ_CLI_EXIT_USAGE;
    if (first >= argc)
        return tq_cli_usage_error(tq_cli_usage_exec, "%s", "missing CMD");
    run.words = argv + first;
    run.nwords = argc - first;
    run.shell = run.nwords == 1 && strpbrk(run.words[0], " \t\n;|&$<>");
    return s_start(client, &run, no_check, force_progress);
}
