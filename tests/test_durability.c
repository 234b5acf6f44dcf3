/* test_durability.c - end-to-end durability of the broker's store: a kill -9
   loop under load (0 lost, executions beyond one counted), a restart with
   100,000 waiting tasks, handles waiting across a restart, the disk limit, a
   failed write and a damaged database. Real tq-broker and tq-worker
   processes on 127.0.0.1:* ports; every wait has a deadline. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tq_client_internal.h"
#include "tq_harness.h"
#include "tq_proto.h"
#include "tq_raw_client.h"
#include "tq_wire.h"

#ifndef TQ_TESTTASKS_SO
#error "TQ_TESTTASKS_SO must name the test task module"
#endif

#define S_ACK_TIMEOUT_MS 1500 /* resubmit a SUBMIT unacknowledged this long */
#define S_WINDOW 4000 /* SUBMITs sent and not yet acknowledged */

/* ---- small helpers ---- */

/* An integer from the environment (scaling knobs for slow machines). */
static int
s_env_int(const char *name, int def)
{
    const char *value = getenv(name);
    if (!value || !*value)
        return def;
    char *end = NULL;
    long n = strtol(value, &end, 10);
    return (*end || n < 1 || n > 10000000) ? def : (int)n;
}

/* Makes a fresh temporary directory for a test (PATH_MAX bytes). */
static void
s_tempdir(char *dir, size_t size, const char *tag)
{
    char full[64];
    snprintf(full, sizeof full, "dur-%s", tag);
    assert_int_equal(tq_harness_tempdir(dir, size, full), 0);
}

/* The whole content of a file (malloc'd, NUL-terminated) or NULL. */
static char *
s_slurp(const char *path, size_t *size)
{
    FILE *file = fopen(path, "re");
    if (!file)
        return NULL;
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, file)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown)
                free(buf);
            buf = grown;
        }
    }
    fclose(file);
    if (buf)
        buf[len] = '\0';
    if (size)
        *size = len;
    return buf;
}

/* Kills the broker with SIGKILL and reaps it. */
static void
s_kill9(tq_harness_broker_t *broker)
{
    assert_true(broker->pid > 0);
    kill(broker->pid, SIGKILL);
    int status = tq_harness_broker_stop(broker);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* Restarts the broker on its old endpoints (a few tries: the kernel may
   hold the port for a moment). Returns the ms from spawn to endpoints. */
static int64_t
s_restart(tq_harness_broker_t *broker, const char *clients, const char *workers,
          const char *const extra[], const char *err_log)
{
    char c[TQ_HARNESS_EP_MAX], w[TQ_HARNESS_EP_MAX];
    snprintf(c, sizeof c, "%s", clients);
    snprintf(w, sizeof w, "%s", workers);
    for (int attempt = 0; attempt < 5; attempt++) {
        int64_t t0 = tq_harness_now_ms();
        if (tq_harness_broker_start_on(broker, c, w, extra, err_log) == 0)
            return tq_harness_now_ms() - t0;
        tq_harness_sleep_ms(200);
    }
    fail_msg("the broker did not restart on %s / %s", c, w);
    return -1;
}

/* ---- a raw TQP/1 client: exact control over (re)submissions ---- */

typedef tq_raw_client_t s_raw_t; /* tests/support/tq_raw_client.h */

static s_raw_t *
s_raw_new(const char *endpoint)
{
    return tq_raw_client_new(endpoint, 50);
}

static void
s_raw_destroy(s_raw_t **self_p)
{
    tq_raw_client_destroy(self_p);
}

/* Sends SUBMIT id task (queue default) with args. 0 or -1. */
static int
s_raw_submit(s_raw_t *self, const char *id, const char *task, const void *args,
             size_t size)
{
    memset(self->out, 0, sizeof *self->out);
    self->out->command = TQ_CMD_SUBMIT;
    self->out->id = tq_str(id);
    self->out->task = tq_str(task);
    self->out->queue = tq_str(TQ_DEFAULT_QUEUE);
    zmq_msg_t payload;
    zmq_msg_init_size(&payload, size);
    memcpy(zmq_msg_data(&payload), args, size);
    int rc = tq_wire_send_msg(self->sock, NULL, self->out, &self->sbuf,
                              &payload, ZMQ_DONTWAIT);
    zmq_msg_close(&payload);
    return rc == TQ_OK ? 0 : -1;
}

/* Sends GET id wait. 0 or -1. */
static int
s_raw_get(s_raw_t *self, const char *id, bool wait)
{
    memset(self->out, 0, sizeof *self->out);
    self->out->command = TQ_CMD_GET;
    self->out->id = tq_str(id);
    self->out->wait = wait;
    return tq_wire_send_msg(self->sock, NULL, self->out, &self->sbuf, NULL,
                            ZMQ_DONTWAIT) == TQ_OK
        ? 0
        : -1;
}

/* Receives one message into self->in, waiting up to timeout_ms. Returns 1,
   or 0 if nothing came (a malformed message is skipped with a line). */
static int
s_raw_recv(s_raw_t *self, int timeout_ms)
{
    return tq_raw_client_recv(self, timeout_ms);
}

/* ---- submissions with resubmission by id ---- */

/* Packs the arguments of task i into sbuf (cleared first). */
typedef void(s_args_fn)(int i, msgpack_sbuffer *sbuf, void *arg);

typedef struct {
    int n; /* tasks */
    const char *prefix; /* ids are PREFIX-INDEX */
    const char *task; /* task name */
    s_args_fn *args; /* their arguments */
    void *args_arg;
    uint8_t *state; /* per task: 0 unsent, 1 sent, 2 acknowledged */
    int64_t *sent_at; /* per task: ms of the last SUBMIT */
    int *ring; /* sent tasks in send order (each at most once) */
    int head, count; /* of ring */
    int next; /* first task never sent */
    int outstanding; /* sent, not acknowledged */
    int acked;
    int64_t resend_before; /* resend whatever was sent before this (ms) */
    int rate; /* new tasks per second, 0: as fast as acked */
    int64_t started_ms; /* of the pacing */
    uint64_t sends, resubmits, errors, pushed_results;
    char last_error[256];
    msgpack_sbuffer sbuf;
} s_subs_t;

static void
s_subs_init(s_subs_t *self, int n, const char *prefix, const char *task,
            s_args_fn *args, void *args_arg)
{
    memset(self, 0, sizeof *self);
    self->n = n;
    self->prefix = prefix;
    self->task = task;
    self->args = args;
    self->args_arg = args_arg;
    self->state = calloc((size_t)n, 1);
    self->sent_at = calloc((size_t)n, sizeof *self->sent_at);
    self->ring = calloc((size_t)n, sizeof *self->ring);
    assert_true(self->state && self->sent_at && self->ring);
    msgpack_sbuffer_init(&self->sbuf);
}

static void
s_subs_free(s_subs_t *self)
{
    free(self->state);
    free(self->sent_at);
    free(self->ring);
    msgpack_sbuffer_destroy(&self->sbuf);
}

static void
s_id(char *id, size_t size, const char *prefix, int i)
{
    snprintf(id, size, "%s-%d", prefix, i);
}

/* The index of an id PREFIX-INDEX, or -1. */
static int
s_index(const s_subs_t *self, tq_str_t id)
{
    size_t plen = strlen(self->prefix);
    if (!id.ptr || id.len <= plen + 1 || id.len > 40 ||
        memcmp(id.ptr, self->prefix, plen) != 0 || id.ptr[plen] != '-')
        return -1;
    int index = 0;
    for (uint32_t k = (uint32_t)plen + 1; k < id.len; k++) {
        if (id.ptr[k] < '0' || id.ptr[k] > '9')
            return -1;
        index = index * 10 + (id.ptr[k] - '0');
        if (index > 100000000)
            return -1;
    }
    return index < self->n ? index : -1;
}

static void
s_subs_send(s_subs_t *self, s_raw_t *raw, int i, int64_t now)
{
    char id[64];
    s_id(id, sizeof id, self->prefix, i);
    self->args(i, &self->sbuf, self->args_arg);
    /* a failed send (it should not: the queue is unbounded) is retried
       like a lost acknowledgement */
    s_raw_submit(raw, id, self->task, self->sbuf.data, self->sbuf.size);
    self->sends++;
    self->sent_at[i] = now;
    self->ring[(self->head + self->count) % self->n] = i;
    self->count++;
}

/* Resubmits what waited too long for its acknowledgement, then sends new
   tasks while the window allows. */
static void
s_subs_pump(s_subs_t *self, s_raw_t *raw)
{
    int64_t now = tq_harness_now_ms();
    int64_t before = now - S_ACK_TIMEOUT_MS;
    if (self->resend_before > before)
        before = self->resend_before;
    /* the ring is in send order: stop at the first recent one */
    int budget = 20000;
    while (self->count > 0 && budget-- > 0) {
        int i = self->ring[self->head];
        if (self->state[i] == 1 && self->sent_at[i] >= before)
            break;
        self->head = (self->head + 1) % self->n;
        self->count--;
        if (self->state[i] == 1) {
            self->resubmits++;
            s_subs_send(self, raw, i, now);
        }
    }
    if (self->rate && !self->started_ms)
        self->started_ms = now;
    int allowed = self->n;
    if (self->rate && (now - self->started_ms) * self->rate / 1000 < allowed)
        allowed = (int)((now - self->started_ms) * self->rate / 1000) + 1;
    while (self->next < allowed && self->outstanding < S_WINDOW) {
        int i = self->next++;
        self->state[i] = 1;
        self->outstanding++;
        s_subs_send(self, raw, i, now);
    }
}

/* Handles what the broker sent, waiting up to timeout_ms for the first
   message. */
static void
s_subs_recv(s_subs_t *self, s_raw_t *raw, int timeout_ms)
{
    int wait = timeout_ms;
    for (int k = 0; k < 50000 && s_raw_recv(raw, wait); k++) {
        wait = 0;
        const tq_msg_t *in = raw->in;
        int i = s_index(self, in->id);
        if (in->command == TQ_CMD_SUBMITTED && i >= 0) {
            if (self->state[i] == 1) {
                self->state[i] = 2;
                self->acked++;
                self->outstanding--;
            }
        } else if (in->command == TQ_CMD_ERROR) {
            if (self->errors++ == 0 || self->errors % 1000 == 0)
                fprintf(stderr, "broker ERROR %u: %.*s\n", in->code,
                        (int)in->error.len, in->error.ptr ? in->error.ptr : "");
            tq_str_copy(self->last_error, sizeof self->last_error, in->error);
        } else if (in->command == TQ_CMD_RESULT) {
            self->pushed_results++;
        }
    }
}

/* ---- task arguments ---- */

typedef struct {
    const char *record; /* test.record's file */
    size_t pad; /* tq.echo: bytes of padding */
} s_argspec_t;

/* test.record [i, path] */
static void
s_args_record(int i, msgpack_sbuffer *sbuf, void *arg)
{
    const s_argspec_t *spec = arg;
    msgpack_sbuffer_clear(sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, (uint64_t)i);
    size_t len = strlen(spec->record);
    msgpack_pack_str(&pk, len);
    msgpack_pack_str_body(&pk, spec->record, len);
}

/* tq.echo [i] or [i, pad bytes] */
static void
s_args_echo(int i, msgpack_sbuffer *sbuf, void *arg)
{
    const s_argspec_t *spec = arg;
    static char zeros[1 << 20];
    msgpack_sbuffer_clear(sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, spec && spec->pad ? 2 : 1);
    msgpack_pack_uint64(&pk, (uint64_t)i);
    if (spec && spec->pad) {
        size_t pad = spec->pad < sizeof zeros ? spec->pad : sizeof zeros;
        msgpack_pack_bin(&pk, pad);
        msgpack_pack_bin_body(&pk, zeros, pad);
    }
}

/* The first element of a RESULT value that is an array, as a uint, or -1
   (tq.echo returns its argument array; test.record returns the index). */
static int64_t
s_value_index(const void *data, size_t size)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    int64_t value = -1;
    size_t off = 0;
    if (msgpack_unpack_next(&up, data, size, &off) == MSGPACK_UNPACK_SUCCESS) {
        const msgpack_object *o = &up.data;
        if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size > 0)
            o = &o->via.array.ptr[0];
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            value = (int64_t)o->via.u64;
    }
    msgpack_unpacked_destroy(&up);
    return value;
}

/* ---- outcome checks ---- */

typedef struct {
    int success; /* RESULT SUCCESS with the right value */
    int wrong; /* SUCCESS with another value, or FAILURE/CANCELLED */
    int unknown; /* UNKNOWN: the broker forgot an acknowledged task */
    int missing; /* no answer before the deadline */
    int conflicts; /* two RESULTs of one id that disagree */
    char first_error[256];
} s_outcome_t;

/* GET wait=true for every task of subs and checks each final result. */
static void
s_fetch_all(s_subs_t *subs, s_raw_t *raw, int timeout_ms, s_outcome_t *out)
{
    memset(out, 0, sizeof *out);
    int n = subs->n;
    /* per task: 0 not asked, 1 asked, 2 success, 3 wrong, 4 unknown */
    uint8_t *got = calloc((size_t)n, 1);
    assert_non_null(got);
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    int asked = 0, answered = 0, window = 5000;
    while (answered < n && tq_harness_now_ms() < deadline) {
        while (asked < n && asked - answered < window) {
            char id[64];
            s_id(id, sizeof id, subs->prefix, asked);
            s_raw_get(raw, id, true);
            got[asked++] = 1;
        }
        if (!s_raw_recv(raw, 100))
            continue;
        const tq_msg_t *in = raw->in;
        int i = s_index(subs, in->id);
        if (i < 0 ||
            (in->command != TQ_CMD_RESULT && in->command != TQ_CMD_UNKNOWN))
            continue;
        uint8_t verdict = 4;
        if (in->command == TQ_CMD_RESULT) {
            const void *data = zmq_msg_data(&raw->frames.payload);
            size_t size = zmq_msg_size(&raw->frames.payload);
            verdict =
                in->state == TQ_STATE_SUCCESS && s_value_index(data, size) == i
                ? 2
                : 3;
            if (verdict == 3 && !out->first_error[0])
                snprintf(out->first_error, sizeof out->first_error,
                         "%.*s: state %s code %u: %.*s", (int)in->id.len,
                         in->id.ptr, tq_state_name((int)in->state), in->code,
                         (int)in->error.len,
                         in->error.ptr ? in->error.ptr : "");
        }
        if (got[i] >= 2) {
            /* a RESULT pushed to us as the submitter, and the GET's */
            if (got[i] != verdict)
                out->conflicts++;
            continue;
        }
        if (got[i] == 0)
            continue; /* pushed before we asked: the GET's answer follows */
        got[i] = verdict;
        answered++;
    }
    for (int i = 0; i < n; i++) {
        if (got[i] == 2)
            out->success++;
        else if (got[i] == 3)
            out->wrong++;
        else if (got[i] == 4)
            out->unknown++;
        else
            out->missing++;
    }
    free(got);
}

/* ---- STATUS through a library client ---- */

/* status.queues[default].waiting, or -1. */
static int64_t
s_waiting(tq_client_t *client)
{
    return tq_harness_queue_waiting(client, TQ_DEFAULT_QUEUE);
}

static int64_t
s_completed(tq_client_t *client)
{
    tq_harness_status_t st;
    if (tq_harness_status(client, &st, 3000) != TQ_OK)
        return -1;
    uint64_t completed = tq_harness_counter(&st, "completed");
    tq_harness_status_free(&st);
    return completed == UINT64_MAX ? -1 : (int64_t)completed;
}

/* ---- the record file of test.record ---- */

typedef struct {
    int n;
    uint32_t *runs; /* executions per task */
    off_t offset; /* read so far */
    int distinct;
    uint64_t lines;
    char partial[32];
    size_t partial_len;
} s_record_t;

/* Reads the lines appended since the last call. */
static void
s_record_scan(s_record_t *self, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[65536];
    ssize_t got;
    while ((got = pread(fd, buf, sizeof buf, self->offset)) > 0) {
        self->offset += got;
        for (ssize_t k = 0; k < got; k++) {
            if (buf[k] != '\n') {
                if (self->partial_len < sizeof self->partial - 1)
                    self->partial[self->partial_len++] = buf[k];
                continue;
            }
            self->partial[self->partial_len] = '\0';
            long i = strtol(self->partial, NULL, 10);
            self->partial_len = 0;
            self->lines++;
            if (i >= 0 && i < self->n && self->runs[i]++ == 0)
                self->distinct++;
        }
    }
    close(fd);
}

/* ---- tests ---- */

/* kill -9 about every second while a client submits N tasks (resubmitting
   unacknowledged ids) and 2 worker children run them. Every acknowledged
   task has exactly one final result, and executions beyond one are
   counted. */
static void
test_kill_loop(void **state)
{
    (void)state;
    int n = s_env_int("TQ_DUR_TASKS", 20000);
    int max_kills = s_env_int("TQ_DUR_KILLS", 40);
    int chaos_ms = s_env_int("TQ_DUR_CHAOS_MS", 90000);
    unsigned seed = (unsigned)(getpid() ^ tq_harness_now_ms());
    srand(seed);
    char dir[512], data[600], record[600], log[600];
    s_tempdir(dir, sizeof dir, "kill");
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(record, sizeof record, "%s/record", dir);
    snprintf(log, sizeof log, "%s/broker.log", dir);
    const char *extra[] = {"--data", data, NULL};

    tq_harness_broker_t broker;
    assert_int_equal(tq_harness_broker_start(&broker, extra), 0);
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", broker.clients);
    snprintf(workers, sizeof workers, "%s", broker.workers);
    const char *wextra[] = {"--module", TQ_TESTTASKS_SO, NULL};
    pid_t worker = tq_harness_worker_start(workers, 2, wextra);
    assert_true(worker > 0);

    s_raw_t *raw = s_raw_new(clients);
    s_argspec_t spec = {record, 0};
    s_subs_t subs;
    s_subs_init(&subs, n, "kl", "test.record", s_args_record, &spec);
    /* paced, so that kills fall in the middle of submissions */
    subs.rate = s_env_int("TQ_DUR_RATE", 1000);
    s_record_t rec = {.n = n};
    rec.runs = calloc((size_t)n, sizeof *rec.runs);
    assert_non_null(rec.runs);

    int kills = 0;
    int64_t t0 = tq_harness_now_ms();
    int64_t chaos_end = t0 + chaos_ms;
    int64_t next_kill = t0 + 700 + rand() % 600;
    int64_t next_scan = t0;
    int64_t restart_ms_max = 0, restart_ms_sum = 0;
    /* chaos: kills while submissions and executions go on */
    for (;;) {
        int64_t now = tq_harness_now_ms();
        if (now >= next_scan) {
            s_record_scan(&rec, record);
            next_scan = now + 250;
        }
        bool done = subs.acked == n && rec.distinct == n;
        if (done || kills >= max_kills || now >= chaos_end)
            break;
        if (now >= next_kill) {
            s_kill9(&broker);
            int64_t took = s_restart(&broker, clients, workers, extra, log);
            restart_ms_sum += took;
            if (took > restart_ms_max)
                restart_ms_max = took;
            kills++;
            /* what was unacknowledged went to the dead broker, or its
               acknowledgement did */
            subs.resend_before = tq_harness_now_ms();
            next_kill = tq_harness_now_ms() + 700 + rand() % 600;
        }
        s_subs_pump(&subs, raw);
        s_subs_recv(&subs, raw, 5);
    }
    int64_t chaos_took = tq_harness_now_ms() - t0;
    printf("kill loop: seed %u, %d kills in %lld ms (restart to endpoints "
           "max %lld ms, mean %lld ms); during chaos %d/%d acknowledged, "
           "%d/%d executed\n",
           seed, kills, (long long)chaos_took, (long long)restart_ms_max,
           (long long)(kills ? restart_ms_sum / kills : 0), subs.acked, n,
           rec.distinct, n);

    /* calm: the last broker stays up; every task gets acknowledged */
    int64_t deadline = tq_harness_now_ms() + 60000;
    while (subs.acked < n && tq_harness_now_ms() < deadline) {
        s_subs_pump(&subs, raw);
        s_subs_recv(&subs, raw, 10);
    }
    printf("kill loop: %d/%d acknowledged; %llu SUBMITs sent, %llu "
           "resubmissions, %llu ERRORs\n",
           subs.acked, n, (unsigned long long)subs.sends,
           (unsigned long long)subs.resubmits, (unsigned long long)subs.errors);
    assert_int_equal(subs.acked, n);

    s_outcome_t out;
    int64_t f0 = tq_harness_now_ms();
    s_fetch_all(&subs, raw, 180000, &out);
    s_record_scan(&rec, record);
    int never_ran = 0, max_runs = 0, ran_twice = 0;
    for (int i = 0; i < n; i++) {
        if (rec.runs[i] == 0)
            never_ran++;
        if (rec.runs[i] > 1)
            ran_twice++;
        if ((int)rec.runs[i] > max_runs)
            max_runs = (int)rec.runs[i];
    }
    printf("kill loop: final results fetched by id in %lld ms: %d success, "
           "%d wrong/failed, %d unknown (lost), %d unanswered, %d "
           "conflicting\n",
           (long long)(tq_harness_now_ms() - f0), out.success, out.wrong,
           out.unknown, out.missing, out.conflicts);
    printf("kill loop: executions %llu for %d tasks: %llu beyond one per task "
           "(%d tasks ran more than once, at most %d times), %d never ran\n",
           (unsigned long long)rec.lines, n,
           (unsigned long long)(rec.lines - (uint64_t)rec.distinct), ran_twice,
           max_runs, never_ran);
    if (out.first_error[0])
        printf("kill loop: first wrong result: %s\n", out.first_error);
    fflush(stdout);

    assert_int_equal(out.unknown, 0);
    assert_int_equal(out.missing, 0);
    assert_int_equal(out.wrong, 0);
    assert_int_equal(out.conflicts, 0);
    assert_int_equal(out.success, n);
    assert_int_equal(never_ran, 0);

    s_raw_destroy(&raw);
    tq_harness_stop(worker);
    tq_harness_broker_stop(&broker);
    tq_harness_kill_all();
    s_subs_free(&subs);
    free(rec.runs);
    tq_harness_rmtree(dir);
}

/* Reads "recovered N tasks and K queue items from DIR in M ms" from a
   broker log. */
static bool
s_recovered_line(const char *log, unsigned long long *tasks, long long *ms)
{
    char *text = s_slurp(log, NULL);
    bool found = false;
    const char *at = text ? strstr(text, "recovered ") : NULL;
    char dirbuf[600];
    unsigned long long items;
    if (at &&
        sscanf(at,
               "recovered %llu tasks and %llu queue items from %599s in "
               "%lld ms",
               tasks, &items, dirbuf, ms) == 4)
        found = true;
    free(text);
    return found;
}

/* 100,000 waiting tasks (no worker), kill -9, restart: start-up time
   printed, then a worker with -c 2 --prefetch 16 runs them all. */
static void
test_restart_100k(void **state)
{
    (void)state;
    int n = s_env_int("TQ_DUR_WAITING", 100000);
    char dir[512], data[600], log[600];
    s_tempdir(dir, sizeof dir, "100k");
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/broker.log", dir);
    const char *extra[] = {"--data", data, NULL};
    tq_harness_broker_t broker;
    assert_int_equal(tq_harness_broker_start(&broker, extra), 0);
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", broker.clients);
    snprintf(workers, sizeof workers, "%s", broker.workers);

    s_raw_t *raw = s_raw_new(clients);
    s_subs_t subs;
    s_subs_init(&subs, n, "wt", "tq.echo", s_args_echo, NULL);
    int64_t t0 = tq_harness_now_ms();
    int64_t deadline = t0 + 120000;
    while (subs.acked < n && tq_harness_now_ms() < deadline) {
        s_subs_pump(&subs, raw);
        s_subs_recv(&subs, raw, 10);
    }
    int64_t took = tq_harness_now_ms() - t0;
    printf("restart: %d tasks submitted and acknowledged in %lld ms "
           "(%.0f/s), %llu resubmissions\n",
           subs.acked, (long long)took,
           took > 0 ? subs.acked * 1000.0 / (double)took : 0.0,
           (unsigned long long)subs.resubmits);
    assert_int_equal(subs.acked, n);
    s_raw_destroy(&raw);

    s_kill9(&broker);
    int64_t startup = s_restart(&broker, clients, workers, extra, log);
    unsigned long long recovered = 0;
    long long recover_ms = -1;
    /* the line is written before the endpoints; the copy to the log file
       runs on a thread, so allow it a moment */
    for (int k = 0; k < 100 && !s_recovered_line(log, &recovered, &recover_ms);
         k++)
        tq_harness_sleep_ms(20);
    printf("restart: kill -9 with %d waiting; start-up to endpoints %lld ms; "
           "broker says: recovered %llu tasks in %lld ms\n",
           n, (long long)startup, recovered, recover_ms);
    assert_int_equal(recovered, (unsigned long long)n);

    tq_client_t *client = tq_client_new(clients);
    assert_non_null(client);
    assert_int_equal(s_waiting(client), n);
    const char *wextra[] = {"--prefetch", "16", NULL};
    pid_t worker = tq_harness_worker_start(workers, 2, wextra);
    assert_true(worker > 0);
    int64_t r0 = tq_harness_now_ms();
    int64_t completed = 0;
    deadline = r0 + 200000;
    while ((completed = s_completed(client)) < n &&
           tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(200);
    int64_t ran = tq_harness_now_ms() - r0;
    printf("restart: the worker (-c 2 --prefetch 16) completed %lld of %d in "
           "%lld ms (%.0f/s, counting its connection)\n",
           (long long)completed, n, (long long)ran,
           ran > 0 ? completed * 1000.0 / (double)ran : 0.0);
    fflush(stdout);
    assert_int_equal(completed, n);
    assert_int_equal(s_waiting(client), 0);

    tq_client_destroy(&client);
    tq_harness_stop(worker);
    tq_harness_broker_stop(&broker);
    tq_harness_kill_all();
    s_subs_free(&subs);
    tq_harness_rmtree(dir);
}

/* A broker with a store in a fresh temporary directory; its endpoints
   are kept to restart it on the same ports (s_restart). */
typedef struct {
    char dir[512], data[600];
    const char *extra[3]; /* --data DATA */
    tq_harness_broker_t broker;
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
} s_stored_t;

static void
s_stored_start(s_stored_t *self, const char *tag)
{
    s_tempdir(self->dir, sizeof self->dir, tag);
    snprintf(self->data, sizeof self->data, "%s/data", self->dir);
    self->extra[0] = "--data";
    self->extra[1] = self->data;
    self->extra[2] = NULL;
    assert_int_equal(tq_harness_broker_start(&self->broker, self->extra), 0);
    snprintf(self->clients, sizeof self->clients, "%s", self->broker.clients);
    snprintf(self->workers, sizeof self->workers, "%s", self->broker.workers);
}

/* Stops the broker and whatever else still runs, removes the directory. */
static void
s_stored_stop(s_stored_t *self)
{
    tq_harness_broker_stop(&self->broker);
    tq_harness_kill_all();
    tq_harness_rmtree(self->dir);
}

/* A client waiting on handles across kill -9 and a restart of the broker
   gets its results: the handles re-attach with GET wait=true. */
static void
test_handles_across_restart(void **state)
{
    (void)state;
    enum { N = 50 };
    s_stored_t st;
    s_stored_start(&st, "handles");

    tq_client_t *client = tq_client_new(st.clients);
    assert_non_null(client);
    tq_result_t *results[N];
    for (int i = 0; i < N; i++) {
        results[i] = tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)i);
        assert_non_null(results[i]);
    }
    /* STATUS listing all N means their SUBMITs were handled; a second
       STATUS is handled in a later pass, after the commit of theirs */
    int64_t deadline = tq_harness_now_ms() + 10000;
    while (s_waiting(client) != N && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(10);
    assert_int_equal(s_waiting(client), N);

    s_kill9(&st.broker);
    s_restart(&st.broker, st.clients, st.workers, st.extra, NULL);
    pid_t worker = tq_harness_worker_start(st.workers, 2, NULL);
    assert_true(worker > 0);
    int ok = 0;
    int64_t get_deadline = tq_harness_now_ms() + 60000;
    for (int i = 0; i < N; i++) {
        int64_t left = get_deadline - tq_harness_now_ms();
        int rc = tq_result_get(results[i], left > 0 ? (int)left : 0);
        if (rc == TQ_OK) {
            const msgpack_object *v = tq_result_value(results[i]);
            if (v && v->type == MSGPACK_OBJECT_ARRAY &&
                v->via.array.size == 1 &&
                v->via.array.ptr[0].via.u64 == (uint64_t)i)
                ok++;
        } else if (ok == i) { /* the first failure only */
            fprintf(stderr, "handle %d: %s (%s)\n", i, tq_strerror(rc),
                    tq_result_error(results[i]));
        }
    }
    printf("handles across a restart: %d of %d got their results\n", ok, N);
    fflush(stdout);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&results[i]);
    tq_client_destroy(&client);
    tq_harness_stop(worker);
    s_stored_stop(&st);
    assert_int_equal(ok, N);
}

/* Fills size bytes with the pattern of seed. */
static void
s_pattern(uint8_t *bytes, size_t size, unsigned seed)
{
    for (size_t i = 0; i < size; i++)
        bytes[i] = (uint8_t)(i * 13 + seed * 5 + (i >> 10));
}

/* True if value is [bin] with the pattern of seed over size bytes. */
static bool
s_is_echo(const msgpack_object *value, size_t size, unsigned seed)
{
    if (!value || value->type != MSGPACK_OBJECT_ARRAY ||
        value->via.array.size != 1 ||
        value->via.array.ptr[0].type != MSGPACK_OBJECT_BIN ||
        value->via.array.ptr[0].via.bin.size != size)
        return false;
    uint8_t *want = malloc(size);
    assert_non_null(want);
    s_pattern(want, size, seed);
    bool same = memcmp(value->via.array.ptr[0].via.bin.ptr, want, size) == 0;
    free(want);
    return same;
}

/* With a store, values that share their argument frame in the child
   (worker/tq_value.h) stay byte for byte right: a 64 KiB + 1 argument
   acknowledged, then kill -9 of the broker and a restart, runs on the
   stored argument; another one's child dies mid-task (test.die_once)
   and the rerun echoes the argument the broker kept. */
static void
test_large_values_stored(void **state)
{
    (void)state;
    enum { SIZE = 65537 };
    s_stored_t st;
    s_stored_start(&st, "large");
    tq_client_t *client = tq_client_new(st.clients);
    assert_non_null(client);
    uint8_t *bytes = malloc(SIZE);
    assert_non_null(bytes);
    s_pattern(bytes, SIZE, 1);
    tq_result_t *stored =
        tq_apply_async(client, "tq.echo", NULL, "p", bytes, (size_t)SIZE);
    assert_non_null(stored);
    /* acknowledged = committed: waiting in STATUS after its SUBMITTED */
    assert_int_equal(tq_result_wait_answer(stored, 20000), TQ_OK);
    assert_int_equal(s_waiting(client), 1);
    s_kill9(&st.broker);
    s_restart(&st.broker, st.clients, st.workers, st.extra, NULL);
    const char *extra[] = {"--module", TQ_MYTASKS_SO, NULL};
    pid_t worker = tq_harness_worker_start(st.workers, 1, extra);
    assert_true(worker > 0);
    int rc = tq_result_get(stored, 60000);
    bool stored_ok = rc == TQ_OK && s_is_echo(tq_result_value(stored), SIZE, 1);
    if (!stored_ok)
        fprintf(stderr, "stored echo: %s (%s)\n", tq_strerror(rc),
                tq_result_error(stored));
    s_pattern(bytes, SIZE, 2);
    tq_result_t *rerun = tq_apply(client, "test.die_once", NULL, 60000, "p",
                                  bytes, (size_t)SIZE);
    assert_non_null(rerun);
    bool rerun_ok = tq_result_code(rerun) == TQ_OK &&
        tq_result_attempts(rerun) >= 2 &&
        s_is_echo(tq_result_value(rerun), SIZE, 2);
    if (!rerun_ok)
        fprintf(stderr, "rerun echo: %s (%s), attempts %u\n",
                tq_strerror(tq_result_code(rerun)), tq_result_error(rerun),
                tq_result_attempts(rerun));
    tq_result_destroy(&rerun);
    tq_result_destroy(&stored);
    free(bytes);
    tq_client_destroy(&client);
    tq_harness_stop(worker);
    s_stored_stop(&st);
    assert_true(stored_ok);
    assert_true(rerun_ok);
}

/* status.memory (argument and result bytes the broker holds), or -1. */
static int64_t
s_memory(tq_client_t *client)
{
    tq_harness_status_t st;
    if (tq_harness_status(client, &st, 3000) != TQ_OK)
        return -1;
    int64_t memory = (int64_t)tq_harness_map_uint(st.root, "memory", 0);
    tq_harness_status_free(&st);
    return memory;
}

/* status.memory and status.store.<key> from one STATUS; false if none. */
static bool
s_paging(tq_client_t *client, int64_t *memory, const char *key, int64_t *value)
{
    tq_harness_status_t st;
    if (tq_harness_status(client, &st, 3000) != TQ_OK)
        return false;
    const msgpack_object *store = tq_harness_map_get(st.root, "store");
    bool ok = store && tq_harness_map_get(store, key);
    *memory = (int64_t)tq_harness_map_uint(st.root, "memory", 0);
    *value = ok ? (int64_t)tq_harness_map_uint(store, key, 0) : -1;
    tq_harness_status_free(&st);
    return ok;
}

/* With a store, waiting tasks' arguments beyond what the broker keeps in
   memory (1 MiB) leave memory once committed, and are read back from the
   store when the tasks run: every task still runs on its own arguments.
   STATUS counts them: store.paged_out the tasks whose arguments are only
   on disk (each waiting task's are either that or in status.memory),
   store.paged_in those read back. */
static void
test_paged_args_run(void **state)
{
    (void)state;
    enum { N = 48, SIZE = 256 * 1024 };
    s_stored_t st;
    s_stored_start(&st, "paged");
    tq_client_t *client = tq_client_new(st.clients);
    assert_non_null(client);
    uint8_t *args = malloc(SIZE);
    assert_non_null(args);
    tq_result_t *results[N];
    for (int i = 0; i < N; i++) {
        memset(args, 'a' + i % 26, SIZE);
        memcpy(args, &i, sizeof i);
        results[i] =
            tq_apply_async(client, "tq.echo", NULL, "p", args, (size_t)SIZE);
        assert_non_null(results[i]);
    }
    int64_t deadline = tq_harness_now_ms() + 20000;
    while (s_waiting(client) != N && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(10);
    assert_int_equal(s_waiting(client), N);
    /* all of them held would be 12 MiB; the commit took the arguments
       beyond 1 MiB out */
    int64_t memory = s_memory(client);
    while (memory > (1 << 20) + SIZE && tq_harness_now_ms() < deadline) {
        tq_harness_sleep_ms(10);
        memory = s_memory(client);
    }
    assert_true(memory > 0 && memory <= (1 << 20) + SIZE);
    int64_t paged_out = -1;
    assert_true(s_paging(client, &memory, "paged_out", &paged_out));
    assert_true(paged_out > 0);
    /* each task's arguments: [bin SIZE], 6 bytes of msgpack around */
    assert_int_equal((N - paged_out) * (SIZE + 6), memory);

    pid_t worker = tq_harness_worker_start(st.workers, 2, NULL);
    assert_true(worker > 0);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        int rc = tq_result_get(results[i], 60000);
        const msgpack_object *v =
            rc == TQ_OK ? tq_result_value(results[i]) : NULL;
        memset(args, 'a' + i % 26, SIZE);
        memcpy(args, &i, sizeof i);
        if (v && v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size == 1 &&
            v->via.array.ptr[0].type == MSGPACK_OBJECT_BIN &&
            v->via.array.ptr[0].via.bin.size == SIZE &&
            memcmp(v->via.array.ptr[0].via.bin.ptr, args, SIZE) == 0)
            ok++;
        else
            fprintf(stderr, "task %d: %s (%s)\n", i, tq_strerror(rc),
                    tq_result_error(results[i]));
    }
    /* every result came: no arguments left on disk only, and each paged
       out one was read back to run */
    int64_t left = -1, paged_in = -1;
    assert_true(s_paging(client, &memory, "paged_out", &left));
    assert_true(s_paging(client, &memory, "paged_in", &paged_in));
    assert_int_equal(left, 0);
    assert_true(paged_in >= paged_out);
    free(args);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&results[i]);
    tq_client_destroy(&client);
    tq_harness_stop(worker);
    s_stored_stop(&st);
    assert_int_equal(ok, N);
}

/* The state of a task as the broker reports it (GET wait=false), or -1. */
static int
s_state_of(tq_client_t *client, const char *id)
{
    tq_result_t *f = tq_client_fetch(client, id, false);
    int state = -1;
    if (tq_result_wait_answer(f, 20000) == TQ_OK)
        state = tq_result_state(f);
    tq_result_destroy(&f);
    return state;
}

/* A countdown survives kill -9: a task submitted with countdown_ms is
   acknowledged (so stored), the broker is killed and restarted, and the
   task still waits out its countdown (state SCHEDULED, run no sooner than
   its due time), instead of running at once. */
static void
test_countdown_survives_restart(void **state)
{
    (void)state;
    s_stored_t st;
    s_stored_start(&st, "countdown");
    tq_client_t *client = tq_client_new(st.clients);
    tq_options_t opts = TQ_OPTIONS_INIT;
    opts.countdown_ms = 4000;
    opts.id = "countdown-1";
    int64_t submitted = tq_harness_now_ms();
    tq_result_t *r = tq_apply_async(client, "tq.echo", &opts, "i", (int64_t)7);
    assert_int_equal(tq_result_wait_answer(r, 20000), TQ_OK); /* stored */
    assert_int_equal(s_state_of(client, "countdown-1"), TQ_STATE_SCHEDULED);

    s_kill9(&st.broker);
    s_restart(&st.broker, st.clients, st.workers, st.extra, NULL);
    pid_t worker = tq_harness_worker_start(st.workers, 1, NULL);
    assert_true(worker > 0);
    /* still counting down after the restart, with a worker ready */
    assert_int_equal(tq_harness_wait_workers(client, 1, worker, 20000), 0);
    int after = s_state_of(client, "countdown-1");
    int64_t seen = tq_harness_now_ms();
    assert_int_equal(tq_result_get(r, 60000), TQ_OK);
    int64_t ran = tq_harness_now_ms();
    printf("countdown across kill -9: state %s after the restart (%lld ms "
           "in), result %lld ms after the submit\n",
           tq_state_name(after), (long long)(seen - submitted),
           (long long)(ran - submitted));
    if (seen - submitted < 4000)
        assert_int_equal(after, TQ_STATE_SCHEDULED);
    /* it never ran before its due time */
    assert_true(ran - submitted >= 4000);
    tq_result_destroy(&r);
    tq_client_destroy(&client);
    tq_harness_stop(worker);
    s_stored_stop(&st);
}

/* Flips one byte of every copy of marker in the store's files (the
   database and its WAL). Returns how many copies. */
static int
s_damage(const char *data, const char *marker)
{
    int found = 0;
    const char *files[] = {"tq.db", "tq.db-wal"};
    for (size_t f = 0; f < 2; f++) {
        char path[700];
        snprintf(path, sizeof path, "%s/%s", data, files[f]);
        FILE *fp = fopen(path, "r+b");
        if (!fp)
            continue;
        fseek(fp, 0, SEEK_END);
        long size = ftell(fp);
        char *bytes = malloc((size_t)size);
        fseek(fp, 0, SEEK_SET);
        if (fread(bytes, 1, (size_t)size, fp) == (size_t)size)
            for (long at = 0; at + (long)strlen(marker) <= size; at++)
                if (memcmp(bytes + at, marker, strlen(marker)) == 0) {
                    fseek(fp, at + 2, SEEK_SET);
                    fputc(bytes[at + 2] ^ 0x20, fp);
                    found++;
                }
        free(bytes);
        fclose(fp);
    }
    return found;
}

/* A task whose stored arguments were damaged on disk is not run on them:
   after the restart it ends FAILURE TQ_ECORRUPT, naming the damage, and
   an undamaged neighbour runs as usual. */
static void
test_damaged_task_not_run(void **state)
{
    (void)state;
    s_stored_t st;
    s_stored_start(&st, "crc");
    tq_client_t *client = tq_client_new(st.clients);
    tq_options_t bad = TQ_OPTIONS_INIT, good = TQ_OPTIONS_INIT;
    bad.id = "damaged-1";
    good.id = "intact-1";
    tq_result_t *rb =
        tq_apply_async(client, "tq.echo", &bad, "s", "MARKER-damage-me-MARKER");
    tq_result_t *rg =
        tq_apply_async(client, "tq.echo", &good, "s", "left-alone");
    assert_int_equal(tq_result_wait_answer(rb, 20000), TQ_OK);
    assert_int_equal(tq_result_wait_answer(rg, 20000), TQ_OK);
    /* stopped cleanly: the WAL is folded into tq.db */
    tq_harness_broker_stop(&st.broker);
    assert_true(s_damage(st.data, "MARKER-damage-me-MARKER") >= 1);
    s_restart(&st.broker, st.clients, st.workers, st.extra, NULL);
    pid_t worker = tq_harness_worker_start(st.workers, 1, NULL);
    assert_true(worker > 0);
    assert_int_equal(tq_result_get(rb, 60000), TQ_ECORRUPT);
    printf("damaged task: %s: %s\n", tq_strerror(TQ_ECORRUPT),
           tq_result_error(rb));
    assert_non_null(strstr(tq_result_error(rb), "damaged"));
    assert_int_equal(tq_result_get(rg, 60000), TQ_OK);
    tq_result_destroy(&rb);
    tq_result_destroy(&rg);
    tq_client_destroy(&client);
    tq_harness_stop(worker);
    s_stored_stop(&st);
}

/* Data-queue items are stored like tasks: every put that was answered
   survives kill -9 of the broker, in order, and a get takes it out. */
static void
test_queue_items_survive(void **state)
{
    (void)state;
    enum { N = 200 };
    s_stored_t st;
    s_stored_start(&st, "items");

    tq_client_t *client = tq_client_new(st.clients);
    assert_non_null(client);
    tq_queue_t *q = tq_queue_new(client, "durable.q", 1000);
    for (int i = 0; i < N; i++) {
        unsigned char item[9] = {0xcf}; /* uint64 i, big-endian */
        for (int b = 0; b < 8; b++)
            item[1 + b] = (unsigned char)((uint64_t)i >> (56 - 8 * b));
        assert_int_equal(tq_queue_put(q, item, sizeof item, 5000), TQ_OK);
    }
    /* taken before the crash: gone after it. The take is committed in
       the pass that answers it; a crash before that commit would deliver
       the item again (at least once, PROTOCOL 5.5). A put answered after
       it proves the commit (its answer waits for the commit that holds
       the take too); a qsize does not: it is answered at once, and a slow
       broker (valgrind) read it in the drain that sent the item, before
       the commit, and the item came back after the kill */
    tq_buf_t first;
    assert_int_equal(tq_queue_get(q, &first, 5000), TQ_OK);
    tq_buf_free(&first);
    tq_queue_t *sync = tq_queue_new(client, "durable.sync", 0);
    const unsigned char nil = 0xc0;
    assert_int_equal(tq_queue_put(sync, &nil, 1, 5000), TQ_OK);
    tq_queue_destroy(&sync);
    uint64_t before = 0;
    assert_int_equal(tq_queue_qsize(q, &before), TQ_OK);
    assert_int_equal(before, N - 1);
    tq_queue_destroy(&q);
    tq_client_destroy(&client);

    s_kill9(&st.broker);
    int64_t took =
        s_restart(&st.broker, st.clients, st.workers, st.extra, NULL);
    client = tq_client_new(st.clients);
    q = tq_queue_new(client, "durable.q", 0);
    uint64_t size = 0;
    assert_int_equal(tq_queue_qsize(q, &size), TQ_OK);
    int in_order = 0;
    for (int i = 1; i < N; i++) {
        tq_buf_t item;
        if (tq_queue_get(q, &item, 5000) != TQ_OK)
            break;
        uint64_t v = 0;
        for (int b = 0; b < 8 && item.size == 9; b++)
            v = v << 8 | ((unsigned char *)item.data)[1 + b];
        in_order += v == (uint64_t)i;
        tq_buf_free(&item);
    }
    printf("queue items across kill -9: %llu kept of %d put (1 taken "
           "before), %d in order; restart %lld ms\n",
           (unsigned long long)size, N, in_order, (long long)took);
    tq_queue_destroy(&q);
    tq_client_destroy(&client);
    s_stored_stop(&st);
    assert_int_equal(size, N - 1);
    assert_int_equal(in_order, N - 1);
}

/* --max-disk 1: submissions are refused with TQ_EFULL and a message that
   names the limit once the store reaches it. */
static void
test_max_disk(void **state)
{
    (void)state;
    char dir[512], data[600];
    s_tempdir(dir, sizeof dir, "disk");
    snprintf(data, sizeof data, "%s/data", dir);
    const char *extra[] = {"--data", data, "--max-disk", "1", NULL};
    tq_harness_env_t env;
    assert_int_equal(tq_harness_env_start(&env, extra), 0);
    enum { MAX = 400 };
    tq_result_t *results[MAX] = {0};
    static char pad[32768];
    int full = -1, count = 0;
    int64_t deadline = tq_harness_now_ms() + 20000;
    for (int i = 0; full < 0 && tq_harness_now_ms() < deadline; i++) {
        if (count < MAX)
            results[count++] = tq_apply_async(env.client, "tq.echo", NULL, "ip",
                                              (int64_t)i, pad, sizeof pad);
        for (int k = 0; k < count; k++)
            if (results[k] && tq_result_ready(results[k]) &&
                tq_result_code(results[k]) == TQ_EFULL) {
                full = k;
                break;
            }
        tq_harness_sleep_ms(count < MAX ? 5 : 50);
    }
    assert_true(full >= 0);
    const char *text = tq_result_error(results[full]);
    printf("max-disk: submission %d of %d refused: %s: %s\n", full + 1, count,
           tq_strerror(TQ_EFULL), text);
    assert_non_null(strstr(text, "max-disk 1 MB"));
    /* what was accepted before stays accepted */
    assert_true(full > 0);
    for (int k = 0; k < count; k++)
        tq_result_destroy(&results[k]);
    tq_harness_env_stop(&env);
    tq_harness_rmtree(dir);
}

/* Bytes of the store's files in data (the database and its WAL). */
static long long
s_store_bytes(const char *data)
{
    long long total = 0;
    const char *files[] = {"tq.db", "tq.db-wal", "tq.db-shm"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[700];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", data, files[i]);
        if (stat(path, &st) == 0)
            total += (long long)st.st_size;
    }
    return total;
}

/* --max-disk at any rate: a burst of 400 submissions of 32 KiB (12.5 MiB)
   sent at once, faster than any once-a-second check, against a 2 MB
   limit. The broker must refuse before the store passes the limit, not
   after: what it accepted fits in the limit, and the files on disk stay
   near it. */
static void
test_max_disk_burst(void **state)
{
    (void)state;
    char dir[512], data[600];
    s_tempdir(dir, sizeof dir, "burst");
    snprintf(data, sizeof data, "%s/data", dir);
    const char *extra[] = {"--data", data, "--max-disk", "2", NULL};
    tq_harness_env_t env;
    assert_int_equal(tq_harness_env_start(&env, extra), 0);
    enum { N = 400, SIZE = 32768 };
    static char pad[SIZE];
    tq_result_t *results[N];
    for (int i = 0; i < N; i++)
        results[i] = tq_apply_async(env.client, "tq.echo", NULL, "ip",
                                    (int64_t)i, pad, sizeof pad);
    int accepted = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(tq_result_wait_answer(results[i], 60000), TQ_OK);
        if (tq_result_ready(results[i])) {
            assert_int_equal(tq_result_code(results[i]), TQ_EFULL);
            refused++;
        } else
            accepted++;
    }
    long long bytes = s_store_bytes(data);
    printf("max-disk 2 MB, burst of %d x 32 KiB: %d accepted, %d refused; "
           "store files %lld bytes\n",
           N, accepted, refused, bytes);
    assert_true(refused > 0);
    assert_true((long long)accepted * SIZE <= 2LL << 20);
    /* the files: the limit plus SQLite's own pages and WAL framing */
    assert_true(bytes <= 4LL << 20);
    /* the broker is alive and serving */
    tq_result_t *r =
        tq_apply_async(env.client, "tq.echo", NULL, "i", (int64_t)1);
    assert_int_equal(tq_result_wait_answer(r, 60000), TQ_OK);
    tq_result_destroy(&r);
    for (int i = 0; i < N; i++)
        tq_result_destroy(&results[i]);
    tq_harness_env_stop(&env);
    tq_harness_rmtree(dir);
}

/* A write that fails (the file-size limit of the broker's process makes
   the store's files unable to grow: EFBIG, as on a full disk, for root
   too) stops the broker with a FATAL line and exit 1, and everything it
   acknowledged is there after a restart without the limit. */
static void
test_write_failure(void **state)
{
    (void)state;
    char dir[512], data[600], log[600];
    s_tempdir(dir, sizeof dir, "wfail");
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/broker.log", dir);
    const char *extra[] = {"--data", data, NULL};

    /* The limit and the ignored SIGXFSZ are inherited by the broker at
       fork and kept across exec; ours are restored at once. */
    struct rlimit old, limit;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    limit = old;
    limit.rlim_cur = 2u << 20;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &limit), 0);
    tq_harness_broker_t broker;
    int started = tq_harness_broker_start_on(&broker, "tcp://127.0.0.1:*",
                                             "tcp://127.0.0.1:*", extra, log);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(started, 0);
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", broker.clients);
    snprintf(workers, sizeof workers, "%s", broker.workers);

    enum { N = 400 }; /* 400 x 32 KiB: well past 2 MiB */
    s_raw_t *raw = s_raw_new(clients);
    s_argspec_t spec = {NULL, 32768};
    s_subs_t subs;
    s_subs_init(&subs, N, "wf", "tq.echo", s_args_echo, &spec);
    /* paced: many small batches, so some commit before the limit is hit */
    subs.rate = 200;
    int status = 0;
    bool exited = false;
    int64_t deadline = tq_harness_now_ms() + 30000;
    while (!exited && tq_harness_now_ms() < deadline) {
        s_subs_pump(&subs, raw);
        s_subs_recv(&subs, raw, 10);
        exited = tq_harness_wait_exit(broker.pid, 0, &status) == 0;
    }
    /* acknowledgements already sent may still be on their way */
    s_subs_recv(&subs, raw, 200);
    assert_true(exited);
    broker.pid = 0;
    tq_harness_broker_stop(&broker); /* joins the log threads */
    char *text = s_slurp(log, NULL);
    assert_non_null(text);
    const char *fatal = strstr(text, "FATAL");
    printf("write failure: broker exit status %d after %d acknowledged; "
           "log: %.*s\n",
           WIFEXITED(status) ? WEXITSTATUS(status) : -1, subs.acked,
           fatal ? (int)strcspn(fatal, "\n") : 0, fatal ? fatal : "");
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    assert_non_null(strstr(text, "FATAL: cannot write the store in"));
    assert_non_null(strstr(text, data));
    free(text);
    assert_true(subs.acked > 0);
    assert_true(subs.acked < N);
    s_raw_destroy(&raw);

    /* without the limit: every acknowledged task is there */
    s_restart(&broker, clients, workers, extra, NULL);
    raw = s_raw_new(clients);
    int checked = 0, unknown = 0;
    for (int i = 0; i < N; i++) {
        if (subs.state[i] != 2)
            continue;
        char id[64];
        s_id(id, sizeof id, "wf", i);
        s_raw_get(raw, id, false);
        checked++;
    }
    int answered = 0;
    deadline = tq_harness_now_ms() + 10000;
    while (answered < checked && tq_harness_now_ms() < deadline) {
        if (!s_raw_recv(raw, 100))
            continue;
        if (raw->in->command == TQ_CMD_UNKNOWN)
            unknown++;
        if (raw->in->command == TQ_CMD_STATE ||
            raw->in->command == TQ_CMD_UNKNOWN ||
            raw->in->command == TQ_CMD_RESULT)
            answered++;
    }
    printf("write failure: after a restart %d of %d acknowledged tasks are "
           "known, %d unknown\n",
           answered - unknown, checked, unknown);
    assert_int_equal(answered, checked);
    assert_int_equal(unknown, 0);
    s_raw_destroy(&raw);
    tq_harness_broker_stop(&broker);
    s_subs_free(&subs);
    tq_harness_rmtree(dir);
}

/* A damaged tq.db (garbage over its middle) makes the broker refuse to
   start, exit non-zero and name the file. */
static void
test_damaged_database(void **state)
{
    (void)state;
    char dir[512], data[600], db[700];
    s_tempdir(dir, sizeof dir, "damaged");
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(db, sizeof db, "%s/tq.db", data);
    const char *extra[] = {"--data", data, NULL};
    tq_harness_broker_t broker;
    assert_int_equal(tq_harness_broker_start(&broker, extra), 0);
    enum { N = 3000 };
    s_raw_t *raw = s_raw_new(broker.clients);
    s_argspec_t spec = {NULL, 200};
    s_subs_t subs;
    s_subs_init(&subs, N, "dm", "tq.echo", s_args_echo, &spec);
    int64_t deadline = tq_harness_now_ms() + 30000;
    while (subs.acked < N && tq_harness_now_ms() < deadline) {
        s_subs_pump(&subs, raw);
        s_subs_recv(&subs, raw, 10);
    }
    assert_int_equal(subs.acked, N);
    s_raw_destroy(&raw);
    s_subs_free(&subs);
    /* a clean stop checkpoints the WAL into tq.db */
    int status = tq_harness_broker_stop(&broker);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    struct stat st;
    assert_int_equal(stat(db, &st), 0);
    assert_true(st.st_size > 65536);
    int fd = open(db, O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    char garbage[16384];
    for (size_t k = 0; k < sizeof garbage; k++)
        garbage[k] = (char)(0xA5 ^ (k * 131));
    assert_int_equal(pwrite(fd, garbage, sizeof garbage, st.st_size / 2),
                     (ssize_t)sizeof garbage);
    close(fd);

    const char *argv[] = {TQ_BROKER_BIN,
                          "--clients",
                          "tcp://127.0.0.1:*",
                          "--workers",
                          "tcp://127.0.0.1:*",
                          "--data",
                          data,
                          NULL};
    tq_harness_run_t run;
    assert_int_equal(tq_harness_run((char *const *)argv, NULL, 20000, &run), 0);
    printf("damaged database: exit code %d, stderr: %s", run.exit_code,
           run.err);
    assert_true(run.exit_code > 0 && run.exit_code < 128);
    assert_non_null(strstr(run.err, db));
    assert_null(strstr(run.out, "tq-broker: clients"));
    tq_harness_run_free(&run);
    tq_harness_rmtree(dir);
}

int
main(void)
{
    tq_harness_init();
    /* the broker's output and ours interleave in the log: line-buffer */
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* TQ_DUR_ONLY=test_kill_loop runs one test (a cmocka pattern) */
    const char *only = getenv("TQ_DUR_ONLY");
    if (only && *only)
        cmocka_set_test_filter(only);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_damaged_database),
        cmocka_unit_test(test_max_disk),
        cmocka_unit_test(test_max_disk_burst),
        cmocka_unit_test(test_countdown_survives_restart),
        cmocka_unit_test(test_damaged_task_not_run),
        cmocka_unit_test(test_write_failure),
        cmocka_unit_test(test_handles_across_restart),
        cmocka_unit_test(test_paged_args_run),
        cmocka_unit_test(test_large_values_stored),
        cmocka_unit_test(test_queue_items_survive),
        cmocka_unit_test(test_restart_100k),
        cmocka_unit_test(test_kill_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
