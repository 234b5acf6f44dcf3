/* tq_child.c - the task loop of one worker child: READY, then TASK in,
   run one at a time from a local FIFO, DONE out; DISCONNECT on SIGTERM.

   With credit above 1 a second thread, the keeper (started with the
   first task), answers the broker while a long task runs: the socket
   belongs to whichever thread holds it, and the main thread lends it to
   the keeper once a task has run for KEEPER_AFTER_MS (up to twice that:
   a keeper that is awake notices a task at its next look, so that short
   tasks never wake it, tq_keeper.h), and takes it back
   before it sends the task's DONE. So a REVOKE is answered at once
   (RETURNED, or nothing if the task has started: PROTOCOL 5.3.5), and
   a short task costs two compare-and-swaps, no lock (tq_keeper.c). */
#include "tq_worker_host.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include "tq_batch.h"
#include "tq_board.h"
#include "tq_curve.h"
#include "tq_done.h"
#include "tq_footprint.h"
#include "tq_keeper.h"
#include "tq_orphans.h"
#include "tq_value.h"
#include "tq_wire.h"

/* Arguments up to this size are kept in the job itself: no message of
   their own to make, move and close per task. */
#define S_ARGS_INLINE 64

/* A task received and not yet run. */
typedef struct {
    char id[TQ_PROTO_MAX_ID + 1]; /* task id */
    uint32_t id_len; /* its bytes */
    char name[TQ_PROTO_MAX_NAME + 1]; /* task name */
    uint32_t attempt; /* 1.. */
    uint32_t time_limit_ms; /* the task's own limit, 0: default */
    bool id_binary; /* its id came as bin: DONE and RETURNED send it so */
    uint8_t id_bytes[TQ_PROTO_ID_BIN]; /* with id_binary: the bin itself */
    uint32_t args_size; /* its arguments' bytes */
    bool args_inline; /* they are in small; else in args */
    uint8_t small[S_ARGS_INLINE]; /* the arguments, when small */
    zmq_msg_t args; /* the arguments, else: held only without
                       args_inline */
} s_job_t;

/* The job's arguments (args_size bytes). */
static const void *
s_job_args(s_job_t *job)
{
    return job->args_inline ? job->small : zmq_msg_data(&job->args);
}

/* Moves the job from into to, which holds no arguments; from then holds
   none either. */
static void
s_job_move(s_job_t *to, s_job_t *from)
{
    *to = *from;
    if (from->args_inline)
        return;
    zmq_msg_init(&to->args);
    zmq_msg_move(&to->args, &from->args);
    zmq_msg_close(&from->args);
    from->args_inline = true;
    from->args_size = 0;
}

/* Lets go of the job's arguments. */
static void
s_job_clear(s_job_t *job)
{
    if (!job->args_inline)
        zmq_msg_close(&job->args);
    job->args_inline = true;
    job->args_size = 0;
}

typedef struct {
    const tq_worker_config_t *config; /* borrowed */
    const tq_registry_t *registry; /* borrowed */
    int report_fd; /* write end of the pipe to the supervisor: nudges */
    tq_board_t *board; /* what we publish for the supervisor (shared) */
    const tq_board_host_t *host; /* the broker our supervisor chose (shared) */
    uint64_t rss_kb; /* peak RSS, last sample, KiB */
    int64_t rss_at_us; /* when it was sampled, monotonic us */
    int64_t task_at_us; /* when the running task started, monotonic us */
    int64_t clock_us; /* the last look at the clock (s_rss_kb's) */
    void *ctx; /* this child's own zmq context */
    void *sock; /* DEALER to the broker */
    void *monitor; /* PAIR: sock's DISCONNECTED events, NULL without */
    int sock_fd; /* sock's ZMQ_FD, for the idle wait */
    int monitor_fd; /* monitor's ZMQ_FD, -1 without */
    unsigned monitors; /* monitors made, for their inproc names */
    tq_frames_t frames; /* reused for every recv */
    tq_msg_t in; /* decoded header, points into frames */
    tq_msg_t out; /* header being sent */
    msgpack_sbuffer header; /* encoded header, reused */
    uint8_t done[TQ_DONE_MAX]; /* a DONE's encoded header (tq_done.h) */
    msgpack_sbuffer value_own; /* a task's result's copied bytes, reused */
    msgpack_packer packer; /* writes into value */
    msgpack_zone zone; /* unpacked arguments, reused */
    s_job_t *jobs; /* FIFO ring of unstarted jobs */
    size_t head; /* index of the oldest job */
    size_t count; /* jobs queued */
    size_t capacity; /* ring slots */
    s_job_t *running; /* the job being run, NULL between tasks: its slot
                         stays where it was (no copy of the record), out
                         of the ring's count, in jobs or in retired */
    s_job_t *retired; /* the ring that holds the running job when the
                         keeper grew the ring while it ran: freed once it
                         ends, else NULL */
    bool busy; /* supervisor thinks a task runs */
    uint32_t tasks_done; /* tasks run, for --max-tasks-per-child */
    tq_task_t task; /* the running task */
    tq_registry_memo_t memo; /* the last task name looked up */
    /* the keeper (credit above 1 only, NULL without, and until the
       first task: an idle child has no thread of its own): whoever holds
       the socket (tq_keeper.h) owns sock, frames, in, out, header and the
       ring */
    tq_keeper_t *keeper;
    bool keeperless; /* tq_keeper_new failed: answer between tasks */
    uint64_t malformed; /* malformed messages from the broker, dropped */
    tq_value_t value; /* the task's result, what packer writes to: its
                         bytes are in value_own, or a run of the running
                         job's arguments (tq_value.h): read them with
                         tq_value_data and tq_value_size */
    /* DONEs held to leave together in a BATCH (PROTOCOL.md 5.9), owned
       by whoever holds the socket, as the socket is */
    tq_batch_t dones;
    bool broker_batch; /* this connection's broker takes BATCH from
                          children: its PONG said so (feature 0x4) */
    int64_t *spans; /* per registry entry: how long its last run here
                       took, us; -1 before its first */
    msgpack_sbuffer batch_header; /* the held DONEs' BATCH header
                                     (s_flush), apart from header: a
                                     flush comes before self->out's send */
    bool empty; /* the last drain ended on a receive that found nothing,
                   and nothing was sent since: s_wait need not look */
} s_child_t;

/* A task that runs this long gets the keeper to answer for the child. */
#define KEEPER_AFTER_MS 10

/* DONEs held for a BATCH (PROTOCOL.md 5.9). A child holds a DONE only
   while it has more jobs received and not yet run, and only before a
   task whose last run here took less than --batch-short-us (100 us by
   default; 0: it holds none): it sends what it holds before it waits
   for the broker, before it sends any message alone, before it starts
   a task not known to be that short, when it holds half its credit
   (the broker refills its queue while it runs the rest), S_BATCH_DONES
   or S_BATCH_BYTES, and
   when the keeper takes the socket (a task that usually runs short ran
   KEEPER_AFTER_MS); before a task with a hard time limit under
   TQ_DONE_HOLD_LIMIT_MS too (the supervisor may kill it first). So a DONE
   waits behind short tasks only, or behind one normally short task at
   most about 2 * KEEPER_AFTER_MS (a child whose keeper could not start:
   until that task ends; with credit 2 or 3 nothing is held, half of it
   being one). */
#define S_BATCH_DONES 64
#define S_BATCH_BYTES (64 << 10)

/* What a child's ZeroMQ context may hold: one DEALER at a time (a closed
   one lingers until the reaper ends it). libzmq's default, 1,023, costs
   12 KiB of slot tables written in every child. */
#define S_ZMQ_MAX_SOCKETS 16

/* Set by SIGTERM/SIGINT: finish the running task, then leave. */
static volatile sig_atomic_t s_stop;

static void
s_on_stop(int sig)
{
    (void)sig;
    s_stop = 1;
}

/* Set by TQ_SIGNAL_REANNOUNCE: the broker restarted, or the host moved to
   another broker; reconnect (to the broker on the host's board), drop the
   unstarted jobs and send READY again, naming the running task if any:
   at once when no task runs or the keeper holds the socket, else when the
   task ends. */
static volatile sig_atomic_t s_reannounce;

/* An eventfd the same signal writes to: it wakes the keeper, which polls
   the socket while a long task runs (its thread blocks every signal).
   -1 without one: the keeper then looks at s_reannounce every
   S_REANNOUNCE_POLL_MS. */
static int s_reannounce_fd = -1;
#define S_REANNOUNCE_POLL_MS 100

/* The running task's soft-limit flag, set by TQ_SIGNAL_SOFT_LIMIT. */
static volatile sig_atomic_t *s_soft_flag;

static void
s_on_reannounce(int sig)
{
    (void)sig;
    s_reannounce = 1;
    if (s_reannounce_fd >= 0) {
        int saved = errno;
        uint64_t one = 1;
        ssize_t n = write(s_reannounce_fd, &one, sizeof one);
        (void)n; /* EAGAIN: it is readable already */
        errno = saved;
    }
}

static void
s_on_soft_limit(int sig)
{
    (void)sig;
    if (s_soft_flag)
        *s_soft_flag = 1;
}

/* TQ_SIGNAL_ORPHANED: the supervisor died. Whatever this child's tasks
   started dies with it: every descendant (tq.exec's shell, its subshells,
   a `sleep` that ignores SIGTERM, a process that left our group with
   setsid), then our whole process group. System calls only: this is a
   signal handler. */
static void
s_on_orphaned(int sig)
{
    (void)sig;
    tq_orphans_kill_descendants();
    if (getpgrp() == getpid())
        kill(0, SIGKILL);
    kill(getpid(), SIGKILL);
}

bool
tq_child_bind(pid_t parent)
{
    /* the group first: the handler kills "our" group, which must never
       be the supervisor's (it may hold the shell or a test runner) */
    setpgid(0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigfillset(&sa.sa_mask);
    sa.sa_handler = s_on_orphaned;
    sigaction(TQ_SIGNAL_ORPHANED, &sa, NULL);
    prctl(PR_SET_PDEATHSIG, TQ_SIGNAL_ORPHANED);
    /* it died before prctl took effect: no signal will come */
    return getppid() == parent;
}

/* Peak resident set of this process, KiB. */
static uint64_t
s_peak_rss_kb(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return ru.ru_maxrss > 0 ? (uint64_t)ru.ru_maxrss : 0;
}

static void
s_die(const char *what)
{
    tq_worker_log("child: %s: %s", what, zmq_strerror(errno));
    fflush(stderr);
    _exit(1);
}

static int64_t
s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* With jobs queued, the socket is read this often at most. */
#define S_DRAIN_EVERY_US 1000

/* Short tasks share an RSS sample this old at most. */
#define S_RSS_EVERY_US 100000
/* A task that ran this long gets a sample of its own (getrusage is then
   small beside it). */
#define S_RSS_TASK_US 1000

/* Peak RSS in KiB, sampled: not a system call per task. */
static uint64_t
s_rss_kb(s_child_t *self)
{
    int64_t now = self->clock_us = s_now_us();
    bool long_task = self->rss_at_us < self->task_at_us &&
        now - self->task_at_us >= S_RSS_TASK_US;
    if (!self->rss_at_us || now - self->rss_at_us >= S_RSS_EVERY_US ||
        long_task) {
        self->rss_kb = s_peak_rss_kb();
        self->rss_at_us = now;
    }
    return self->rss_kb;
}

/* Tells the supervisor where this child is, on its board: no system call,
   nobody woken. Only a task with a time limit to watch wakes the
   supervisor (a byte on the pipe), so that it sets its deadline now.
   now_us: the time, monotonic us, a job starts at. */
static void
s_publish(s_child_t *self, tq_board_phase_t phase, const s_job_t *job,
          int64_t now_us)
{
    if (!job) {
        tq_board_publish(self->board, phase, tq_str(NULL), 0, 0, 0);
        return;
    }
    self->task_at_us = now_us;
    tq_board_publish(self->board, phase, (tq_str_t){job->id, job->id_len},
                     job->attempt, job->time_limit_ms, self->task_at_us / 1000);
    const tq_worker_config_t *cfg = self->config;
    if (!job->time_limit_ms && !cfg->time_limit_ms && !cfg->soft_time_limit_ms)
        return;
    char nudge = 1;
    ssize_t n;
    while ((n = write(self->report_fd, &nudge, 1)) < 0 && errno == EINTR)
        ;
    /* EAGAIN: nudges are pending, the supervisor reads the board anyway;
       EPIPE: it is gone, and so must we (PR_SET_PDEATHSIG normally got
       there first) */
    if (n < 0 && errno == EPIPE) {
        tq_worker_log("child: supervisor pipe closed, exiting");
        _exit(1);
    }
}

/* Clears self->out for command. Only the header's scalars: the name
   arrays at the end (8 KiB, READY's alone) are read up to their counts,
   which this zeroes, and a memset of all of it was 14 % of a child's CPU
   on short tasks. */
static void
s_out(s_child_t *self, uint8_t command)
{
    memset(&self->out, 0, offsetof(tq_msg_t, queues));
    self->out.command = command;
}

static void s_flush(s_child_t *self);

/* Sends self->out with payload (moved, may be NULL), after the DONEs
   held for a batch (the order of the connection). EINTR before the
   message is accepted is retried unless we are stopping anyway. */
static int
s_send(s_child_t *self, zmq_msg_t *payload)
{
    s_flush(self);
    self->empty = false; /* a send may take in what would signal */
    for (;;) {
        int rc = tq_wire_send_msg(self->sock, NULL, &self->out, &self->header,
                                  payload, 0);
        if (rc == TQ_OK)
            return TQ_OK;
        if (rc == -1 && errno == EINTR)
            continue;
        const char *why = rc == -1 ? zmq_strerror(errno) : "encode failed";
        tq_worker_log("child: cannot send %s: %s",
                      tq_proto_command_name(self->out.command), why);
        return rc;
    }
}

/* READY; running: the id of the task this child still runs and will
   answer on this connection (it announces itself again mid-task), or
   NULL. */
static void
s_send_ready(s_child_t *self, const char *running)
{
    const tq_worker_config_t *cfg = self->config;
    memset(&self->out, 0, sizeof self->out);
    self->out.command = TQ_CMD_READY;
    self->out.id = tq_str(running);
    self->out.host = tq_str(cfg->host);
    self->out.pid = (uint64_t)getpid();
    self->out.ppid = (uint64_t)getppid();
    self->out.credit = cfg->prefetch;
    self->out.features =
        TQ_FEATURE_RETURNS | TQ_FEATURE_BINARY_IDS | TQ_FEATURE_BATCH;
    self->out.queue_count = cfg->queue_count;
    for (uint32_t i = 0; i < cfg->queue_count; i++)
        self->out.queues[i] = tq_str(cfg->queues[i]);
    size_t n = tq_registry_size(self->registry);
    if (n > TQ_PROTO_MAX_NAMES)
        n = TQ_PROTO_MAX_NAMES; /* main refuses more; belt and braces */
    self->out.task_count = (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        self->out.tasks[i] = tq_str(tq_registry_name(self->registry, i));
    if (s_send(self, NULL) != TQ_OK)
        _exit(1);
    /* whether this broker takes BATCH from children: its PONG says (one
       of an earlier revision says nothing, and gets every DONE alone) */
    self->broker_batch = false;
    s_out(self, TQ_CMD_PING);
    s_send(self, NULL);
}

/* A value from this size on leaves as its own buffer, not copied. */
#define S_VALUE_HANDOFF 4096
/* The buffer that replaces a handed-off one starts this large at most:
   the next value of the same size then fits without a regrowth. */
#define S_VALUE_KEEP (1u << 20)

static void
s_value_free(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* The task's value as a message. One that is a run of the arguments
   shares their buffer (tq_value.h). Else a large one takes the value's
   buffer itself (libzmq frees it once sent) and the packer gets a new
   buffer as large, for the next task; a small one is copied, the buffer
   stays. */
static void
s_value_msg(s_child_t *self, zmq_msg_t *msg)
{
    if (tq_value_ref_msg(&self->value, msg) == 0)
        return;
    size_t size = tq_value_size(&self->value);
    if (size >= S_VALUE_HANDOFF && !tq_value_is_ref(&self->value)) {
        size_t keep = size < S_VALUE_KEEP ? size : S_VALUE_KEEP;
        char *next = malloc(keep);
        if (next &&
            zmq_msg_init_data(msg, self->value_own.data, size, s_value_free,
                              NULL) == 0) {
            self->value_own.data = next;
            self->value_own.alloc = keep;
            self->value_own.size = 0;
            return;
        }
        free(next);
    }
    zmq_msg_init_size(msg, size);
    memcpy(zmq_msg_data(msg), tq_value_data(&self->value), size);
}

/* Sends a message of two frames: header (size bytes), then msg (moved,
   when not NULL) or data (bytes, copied by zmq_send). EINTR before the
   header is accepted is retried; the second frame is then taken too
   (ZeroMQ takes a multipart message whole). what names it in the log. */
static void
s_send_frames(s_child_t *self, const char *what, const void *header,
              size_t size, zmq_msg_t *msg, const void *data, size_t bytes)
{
    int rc;
    self->empty = false; /* a send may take in what would signal */
    while ((rc = zmq_send(self->sock, header, size, ZMQ_SNDMORE)) < 0 &&
           errno == EINTR)
        ;
    if (rc >= 0) {
        if (msg)
            while ((rc = zmq_msg_send(msg, self->sock, 0)) < 0 &&
                   errno == EINTR)
                ;
        else
            while ((rc = zmq_send(self->sock, data, bytes, 0)) < 0 &&
                   errno == EINTR)
                ;
    }
    if (rc < 0)
        tq_worker_log("child: cannot send %s: %s", what, zmq_strerror(errno));
    if (msg) {
        int saved = errno;
        zmq_msg_close(msg);
        errno = saved;
    }
}

/* Sends a DONE's frames: header (size bytes), then the task's value
   (with_value) or an empty frame. A small value goes in a copy made by
   zmq_send, a large one as its own buffer (s_value_msg). */
static void
s_send_done_frames(s_child_t *self, const void *header, size_t size,
                   bool with_value)
{
    size_t value = with_value ? tq_value_size(&self->value) : 0;
    if (value >= S_VALUE_HANDOFF) {
        zmq_msg_t msg;
        s_value_msg(self, &msg);
        s_send_frames(self, "DONE", header, size, &msg, NULL, 0);
    } else
        s_send_frames(self, "DONE", header, size, NULL,
                      value ? tq_value_data(&self->value) : "", value);
}

/* Sends the DONEs held for a batch: one alone as the plain message,
   several in one BATCH (PROTOCOL.md 5.9). */
static void
s_flush(s_child_t *self)
{
    tq_batch_t *b = &self->dones;
    uint32_t count = tq_batch_count(b);
    if (count == 1) {
        const void *header, *data;
        size_t size, bytes;
        bool has;
        if (tq_batch_first(b, &header, &size, &data, &bytes, &has) == TQ_OK)
            s_send_frames(self, "DONE", header, size, NULL, data, bytes);
    } else if (count > 1) {
        /* its own message and buffer: s_send flushes before it sends
           self->out, which must come through untouched */
        tq_msg_t m;
        memset(&m, 0, offsetof(tq_msg_t, queues));
        m.command = TQ_CMD_BATCH;
        m.count = count;
        if (tq_proto_encode(&m, &self->batch_header, NULL) == TQ_OK)
            s_send_frames(self, "BATCH", self->batch_header.data,
                          self->batch_header.size, NULL, b->body.data,
                          b->body.size);
    }
    tq_batch_reset(b);
}

/* Holds a DONE (header, size bytes, and the task's value with_value) for
   a batch when the broker takes one and more jobs wait to run here (a
   large value never: it goes alone, on its own buffer); the batch goes
   when it is full. True if held; false: the caller sends it alone, after
   the DONEs held (s_flush). */
static bool
s_hold_done(s_child_t *self, const void *header, size_t size, bool with_value)
{
    size_t value = with_value ? tq_value_size(&self->value) : 0;
    if (!self->broker_batch || !self->config->batch_short_us ||
        value >= S_VALUE_HANDOFF)
        return false;
    /* half the credit at most: the broker refills the queue while the
       rest runs (credit 2 or 3: nothing held) */
    uint32_t cap = self->config->prefetch / 2;
    if (cap > S_BATCH_DONES)
        cap = S_BATCH_DONES;
    /* with nothing more to run, the broker gets it now, with those held
       before: a round trip never waits for a batch */
    bool last = self->count == 0;
    if (cap < 2 || (last && tq_batch_count(&self->dones) == 0))
        return false;
    if (tq_batch_add_encoded(&self->dones, header, size,
                             value ? tq_value_data(&self->value) : "", value,
                             true) != TQ_OK)
        return false;
    if (last || tq_batch_count(&self->dones) >= cap ||
        tq_batch_bytes(&self->dones) >= S_BATCH_BYTES)
        s_flush(self);
    return true;
}

/* Sends DONE for job; value (the result bytes) only with SUCCESS. */
static void s_reconnect(s_child_t *self, const char *running);

static void
s_send_done(s_child_t *self, const s_job_t *job, uint32_t state, uint32_t code,
            const char *error)
{
    /* the socket is this thread's again */
    tq_keeper_task_end(self->keeper);
    /* the broker restarted while the task ran: its DONE goes to the new
       one, after a READY so that it knows us */
    if (s_reannounce)
        s_reconnect(self, job->id);
    /* every field of a DONE is set: the rest of out is never read for
       one (no clearing of it all per task) */
    self->out.command = TQ_CMD_DONE;
    self->out.id = (tq_str_t){job->id, job->id_len};
    self->out.id_binary = job->id_binary;
    /* the bin id as it came: not parsed back from its text */
    self->out.id_bytes = job->id_binary ? job->id_bytes : NULL;
    self->out.attempt = job->attempt;
    self->out.state = state;
    self->out.code = code;
    self->out.error = tq_str(error); /* NULL packs nil */
    self->out.rss_kb = s_rss_kb(self);
    const void *header = self->done;
    size_t size = tq_done_encode(&self->out, self->done);
    if (!size) {
        /* a field breaks the rules: tq_proto_encode says which */
        const char *why = "?";
        if (tq_proto_encode(&self->out, &self->header, &why) != TQ_OK) {
            tq_worker_log("child: cannot send DONE: %s", why);
            return;
        }
        header = self->header.data;
        size = self->header.size;
    }
    bool with_value = state == TQ_STATE_SUCCESS;
    if (s_hold_done(self, header, size, with_value))
        return;
    s_flush(self);
    s_send_done_frames(self, header, size, with_value);
}

/* True if the arguments (size bytes at data, checked already) are the
   empty array, the arguments of a task called without any: *args is then
   that array, without msgpack_unpack and its zone (a third of a no-op
   task's own instructions). */
static bool
s_args_empty(const void *data, size_t size, msgpack_object *args)
{
    if (size != 1 || *(const uint8_t *)data != 0x90)
        return false;
    memset(args, 0, sizeof *args);
    args->type = MSGPACK_OBJECT_ARRAY;
    return true;
}

/* Runs job, whose task name found fn and arg in the registry (fn NULL:
   none), to completion and sends its DONE. */
static void
s_run(s_child_t *self, s_job_t *job, tq_task_fn *fn, void *arg)
{
    char error[TQ_PROTO_MAX_ERROR + 1];
    const char *reason = NULL;
    const void *data = s_job_args(job);
    size_t size = job->args_size;

    if (tq_proto_check_payload(data, size, true, &reason) != TQ_OK) {
        snprintf(error, sizeof error, "invalid arguments: %s", reason);
        s_send_done(self, job, TQ_STATE_FAILURE, TQ_ETASK, error);
        return;
    }
    if (!fn) {
        snprintf(error, sizeof error, "no task named %s on this worker",
                 job->name);
        s_send_done(self, job, TQ_STATE_FAILURE, TQ_ENOTASK, error);
        return;
    }
    msgpack_object args;
    if (!s_args_empty(data, size, &args)) {
        /* one zone for every task's arguments: cleared, never freed */
        msgpack_zone_clear(&self->zone);
        size_t off = 0;
        msgpack_unpack_return ur =
            msgpack_unpack(data, size, &off, &self->zone, &args);
        if (ur != MSGPACK_UNPACK_SUCCESS || args.type != MSGPACK_OBJECT_ARRAY) {
            s_send_done(self, job, TQ_STATE_FAILURE, TQ_ETASK,
                        "invalid arguments: cannot unpack");
            return;
        }
    }
    tq_task_t *task = &self->task;
    memcpy(task->id, job->id, sizeof task->id);
    task->attempt = job->attempt;
    task->arg = arg;
    task->failed = false;
    task->error[0] = '\0';
    task->soft_limit = 0;
    /* the value may reference the arguments: the job keeps them until
       its DONE is sent */
    tq_value_start(&self->value, &self->value_own,
                   job->args_inline ? NULL : &job->args);

    tq_task_running = task;
    tq_task_running_name = job->name;
    int rc = fn(task, &args, &self->packer);
    tq_task_running = NULL;
    tq_task_running_name = NULL;

    if (rc != 0) {
        s_send_done(self, job, TQ_STATE_FAILURE, TQ_ETASK,
                    task->failed && task->error[0] ? task->error
                                                   : "task failed");
        return;
    }
    if (tq_value_size(&self->value) == 0)
        msgpack_pack_nil(&self->packer);
    if (tq_proto_check_payload(tq_value_data(&self->value),
                               tq_value_size(&self->value), false,
                               &reason) != TQ_OK) {
        /* more than one object, or too deep: the task's bug, reported */
        snprintf(error, sizeof error,
                 "task %s returned an invalid value: %s (pack exactly one "
                 "object)",
                 job->name, reason);
        s_send_done(self, job, TQ_STATE_FAILURE, TQ_ETASK, error);
        return;
    }
    s_send_done(self, job, TQ_STATE_SUCCESS, TQ_OK, NULL);
}

/* Copies s into dst (size bytes, size > 0), cut to fit, NUL-ended;
   returns the bytes copied. */
static uint32_t
s_copy(char *dst, size_t size, tq_str_t s)
{
    size_t n = s.ptr ? s.len : 0;
    if (n >= size)
        n = size - 1;
    memcpy(dst, s.ptr ? s.ptr : "", n);
    dst[n] = '\0';
    return (uint32_t)n;
}

/* Queues the TASK msg, its arguments size bytes at data: in a message of
   their own, frame (moved out, its content data), or NULL to copy them
   into one (a sub-message of a BATCH) when they are too large to keep in
   the job. Returns false (nothing queued) if there is no memory for them. */
static bool
s_push(s_child_t *self, const tq_msg_t *msg, zmq_msg_t *frame, const void *data,
       size_t size)
{
    /* the running job's slot is taken until it ends */
    if (self->count + (self->running != NULL) >= self->capacity) {
        /* the broker holds us to our credit; growing only covers a broker
           that does not, instead of dropping its task */
        size_t cap = self->capacity ? self->capacity * 2 : 4;
        s_job_t *jobs = malloc(cap * sizeof *jobs);
        if (!jobs) {
            tq_worker_log("child: out of memory");
            abort();
        }
        for (size_t i = 0; i < self->count; i++)
            s_job_move(&jobs[i],
                       &self->jobs[(self->head + i) % self->capacity]);
        /* the running job's ring lives on until it ends (a second growth
           in the same task frees the ring between) */
        if (self->running && !self->retired)
            self->retired = self->jobs;
        else
            free(self->jobs);
        self->jobs = jobs;
        self->head = 0;
        self->capacity = cap;
    }
    if (self->count >= self->config->prefetch && self->config->verbose)
        tq_worker_log("child: broker sent more tasks than our credit (%u)",
                      self->config->prefetch);
    s_job_t *job = &self->jobs[(self->head + self->count) % self->capacity];
    job->args_size = (uint32_t)size;
    job->args_inline = size <= S_ARGS_INLINE;
    if (job->args_inline) {
        if (size)
            memcpy(job->small, data, size);
    } else if (frame) {
        zmq_msg_init(&job->args);
        zmq_msg_move(&job->args, frame);
    } else if (zmq_msg_init_size(&job->args, size) == 0) {
        memcpy(zmq_msg_data(&job->args), data, size);
    } else {
        job->args_inline = true;
        job->args_size = 0;
        return false;
    }
    job->id_len = s_copy(job->id, sizeof job->id, msg->id);
    job->id_binary = msg->id_binary && msg->id_bytes;
    if (job->id_binary)
        memcpy(job->id_bytes, msg->id_bytes, TQ_PROTO_ID_BIN);
    s_copy(job->name, sizeof job->name, msg->task);
    job->attempt = msg->attempt;
    job->time_limit_ms = msg->time_limit_ms;
    self->count++;
    return true;
}

/* REVOKE: the broker asks for a queued task back for an idle child. Every
   job in the ring is unstarted, so a match is dropped and RETURNED; no
   match means it runs or ran, and its DONE answers. */
static void
s_on_revoke(s_child_t *self, const tq_msg_t *msg)
{
    size_t i = 0;
    for (; i < self->count; i++) {
        s_job_t *job = &self->jobs[(self->head + i) % self->capacity];
        if (job->attempt == msg->attempt && tq_str_eq(msg->id, job->id))
            break;
    }
    if (i == self->count)
        return;
    s_job_t *gone = &self->jobs[(self->head + i) % self->capacity];
    s_out(self, TQ_CMD_RETURNED);
    self->out.id = tq_str(gone->id);
    self->out.id_binary = gone->id_binary;
    self->out.id_bytes = gone->id_binary ? gone->id_bytes : NULL;
    self->out.attempt = gone->attempt;
    if (s_send(self, NULL) != TQ_OK)
        return; /* kept: it runs here, as the broker still thinks */
    if (self->config->verbose)
        tq_worker_log("child: task %s given back for an idle child", gone->id);
    s_job_clear(gone);
    /* close the gap, keeping the order of the others */
    for (; i + 1 < self->count; i++)
        s_job_move(&self->jobs[(self->head + i) % self->capacity],
                   &self->jobs[(self->head + i + 1) % self->capacity]);
    self->count--;
}

/* Handles one decoded message, self->in, its payload size bytes at data:
   the content of frame when the message came alone, NULL when it came in
   a BATCH. Returns false if a TASK could not be queued (no memory). */
static bool
s_handle(s_child_t *self, zmq_msg_t *frame, const void *data, size_t size)
{
    const tq_msg_t *msg = &self->in;
    switch (msg->command) {
    case TQ_CMD_TASK:
        return s_push(self, msg, frame, data, size);
    case TQ_CMD_PING:
        s_out(self, TQ_CMD_PONG);
        s_send(self, NULL);
        break;
    case TQ_CMD_REVOKE:
        s_on_revoke(self, msg);
        break;
    case TQ_CMD_PONG:
        /* the answer to the PING after READY (s_send_ready) */
        self->broker_batch = (msg->features & TQ_FEATURE_BATCH) != 0;
        break;
    case TQ_CMD_HEARTBEAT:
        break;
    case TQ_CMD_ERROR:
        if (self->config->verbose)
            tq_worker_log("child: broker says %s: %.*s%s%.*s",
                          tq_strerror((int)msg->code), (int)msg->error.len,
                          msg->error.ptr ? msg->error.ptr : "",
                          msg->id.ptr ? " task " : "", (int)msg->id.len,
                          msg->id.ptr ? msg->id.ptr : "");
        break;
    default:
        if (self->config->verbose)
            tq_worker_log("child: ignored %s from the broker",
                          tq_proto_command_name(msg->command));
        break;
    }
    return true;
}

/* A malformed message (or sub-message) from the broker: logged, counted,
   dropped. */
static void
s_malformed(s_child_t *self, const char *what, const char *reason)
{
    self->malformed++;
    tq_worker_log("child: dropped a malformed %s from the broker: %s (%llu "
                  "so far)",
                  what, reason ? reason : "?",
                  (unsigned long long)self->malformed);
}

/* A BATCH (PROTOCOL.md 5.9): each sub-message handled as if it had come
   alone, in order, its payload read where it stands in the BATCH; a
   malformed one is dropped and the others are handled. */
static void
s_on_batch(s_child_t *self)
{
    zmq_msg_t frame; /* the sub-messages point into it */
    zmq_msg_init(&frame);
    zmq_msg_move(&frame, &self->frames.payload);
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &self->in, zmq_msg_data(&frame),
                         zmq_msg_size(&frame));
    for (;;) {
        const char *reason = NULL;
        const void *data;
        size_t size;
        bool has;
        int rc = tq_batch_next(&r, &self->in, &data, &size, &has, &reason);
        if (rc == TQ_BATCH_END)
            break;
        if (rc == TQ_OK && !s_handle(self, NULL, data, size)) {
            rc = TQ_ENOMEM;
            reason = "out of memory";
        }
        if (rc != TQ_OK)
            s_malformed(self, "message in a batch", reason);
    }
    zmq_msg_close(&frame);
}

/* Handles one received message. Bad wire input is logged, never fatal. */
static void
s_on_message(s_child_t *self, int rc)
{
    const char *reason = "wrong number of frames";
    if (rc == TQ_OK)
        rc = tq_wire_decode(&self->frames, &self->in, &reason);
    if (rc != TQ_OK) {
        s_malformed(self, "message", reason);
        return;
    }
    zmq_msg_t *frame = &self->frames.payload;
    if (self->in.command == TQ_CMD_BATCH)
        s_on_batch(self);
    else
        s_handle(self, frame, zmq_msg_data(frame), zmq_msg_size(frame));
}

/* Receives what waits on the socket without blocking, up to max
   messages. Returns how many were handled. */
static size_t
s_drain(s_child_t *self, size_t max)
{
    size_t got = 0;
    self->empty = false;
    while (got < max) {
        int rc = tq_wire_recv(self->sock, &self->frames, false, ZMQ_DONTWAIT);
        if (rc == -1) {
            if (errno == EINTR)
                break;
            if (errno == EAGAIN) {
                /* after whatever the messages handled here sent */
                self->empty = true;
                break;
            }
            s_die("recv");
        }
        s_on_message(self, rc);
        got++;
    }
    return got;
}

static void
s_setup_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    /* no SA_RESTART: a blocking zmq call returns EINTR and the loop looks
       at s_stop */
    sa.sa_handler = s_on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* restarting: a task's own system calls are not disturbed by them */
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = s_on_soft_limit;
    sigaction(TQ_SIGNAL_SOFT_LIMIT, &sa, NULL);
    sa.sa_handler = s_on_reannounce;
    sigaction(TQ_SIGNAL_REANNOUNCE, &sa, NULL);
    sa.sa_flags = 0;
    sa.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Opens self->sock, a DEALER connected to the broker the supervisor
   chose (the host's board). */
static void
s_open(s_child_t *self)
{
    uint32_t broker = tq_board_host_broker(self->host);
    if (broker >= tq_worker_endpoints(self->config))
        broker = 0; /* cannot be: the supervisor writes valid indexes */
    const char *endpoint = tq_worker_endpoint(self->config, broker);
    self->sock = zmq_socket(self->ctx, ZMQ_DEALER);
    if (!self->sock)
        s_die("zmq_socket");
    int linger = 1000, immediate = 0;
    zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(self->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate);
    char why[512];
    if (tq_curve_client_setup(self->sock, NULL, NULL, why, sizeof why))
        s_die(why);
    if (zmq_connect(self->sock, endpoint) != 0)
        s_die(endpoint);
    size_t size = sizeof self->sock_fd;
    if (zmq_getsockopt(self->sock, ZMQ_FD, &self->sock_fd, &size) != 0)
        s_die("zmq_getsockopt");
    /* the end of the connection, seen at once (a killed broker's kernel
       closes it): the tasks we hold will be queued again by whoever
       serves next, so we must not start them (PROTOCOL 10). Without a
       monitor the child works as before: it learns from its supervisor */
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://tq-child-monitor-%u", ++self->monitors);
    self->monitor = NULL;
    self->monitor_fd = -1;
    if (zmq_socket_monitor(self->sock, ep, ZMQ_EVENT_DISCONNECTED) != 0)
        return;
    self->monitor = zmq_socket(self->ctx, ZMQ_PAIR);
    if (self->monitor && zmq_connect(self->monitor, ep) != 0) {
        zmq_close(self->monitor);
        self->monitor = NULL;
    }
    size = sizeof self->monitor_fd;
    if (!self->monitor)
        zmq_socket_monitor(self->sock, NULL, 0);
    else if (zmq_getsockopt(self->monitor, ZMQ_FD, &self->monitor_fd, &size) !=
             0)
        self->monitor_fd = -1; /* not watched by the idle wait */
}

/* Stops and closes self->sock's monitor, if any. */
static void
s_monitor_close(s_child_t *self)
{
    if (!self->monitor)
        return;
    zmq_socket_monitor(self->sock, NULL, 0);
    int zero = 0;
    zmq_setsockopt(self->monitor, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(self->monitor);
    self->monitor = NULL;
    self->monitor_fd = -1;
}

/* True if the connection to the broker ended since the last look (a
   monitor's event is two frames: event and value, then the endpoint). If
   so, s_reannounce is set: the child reconnects and announces itself
   again, holding only the task it runs. */
static bool
s_disconnected(s_child_t *self)
{
    bool gone = false;
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    while (self->monitor &&
           zmq_msg_recv(&frame, self->monitor, ZMQ_DONTWAIT) >= 0) {
        if (zmq_msg_size(&frame) == 6) {
            uint16_t event;
            memcpy(&event, zmq_msg_data(&frame), sizeof event);
            gone |= event == ZMQ_EVENT_DISCONNECTED;
        }
        while (zmq_msg_more(&frame) &&
               zmq_msg_recv(&frame, self->monitor, ZMQ_DONTWAIT) >= 0)
            ;
    }
    zmq_msg_close(&frame);
    if (gone) {
        if (self->config->verbose)
            tq_worker_log("child: the connection to the broker ended");
        s_reannounce = 1;
    }
    return gone;
}

/* Drops the queued jobs: they came from a broker that is gone or that
   forgot us, and it (or its successor) queues them again (PROTOCOL 10: a
   child that announces itself again holds at most the task it runs).
   They were never started, so no DONE is ever sent for them, and the
   READY that follows asks for a full credit less the running task. The
   running job is not in the ring: it finishes and is answered on the new
   socket. */
static void
s_drop_queued(s_child_t *self)
{
    for (size_t i = 0; i < self->count; i++)
        s_job_clear(&self->jobs[(self->head + i) % self->capacity]);
    if (self->count && self->config->verbose)
        tq_worker_log("child: dropped %zu queued task(s) of the old broker",
                      self->count);
    self->count = 0;
}

/* Closes the DEALER, opens a new one and sends READY again: the broker
   restarted and does not know this child, or the host moved. Called by
   whichever thread holds the socket (the keeper while a long task runs,
   naming it in running). */
static void
s_reconnect(s_child_t *self, const char *running)
{
    s_reannounce = 0;
    self->empty = false;
    /* the broker gave us the running task again (a newer attempt, queued
       here): it recovered it after our last READY. Naming it would bind
       that attempt to this run, whose DONE it refuses; unnamed, it is
       queued again and runs once more (at least once) */
    for (size_t i = 0; running && i < self->count; i++)
        if (strcmp(self->jobs[(self->head + i) % self->capacity].id, running) ==
            0)
            running = NULL;
    s_drop_queued(self);
    /* the running task's DONE names it as text: a bin id goes only back
       on the connection it came on, and the new broker may not read one */
    if (self->running)
        self->running->id_binary = false;
    /* the DONEs held go where the ones sent before them went: to the old
       connection, which may not deliver them (PROTOCOL 10: those tasks
       run again, at least once) */
    s_flush(self);
    int zero = 0;
    /* what is queued for the old connection goes nowhere: drop it now */
    zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero);
    s_monitor_close(self);
    zmq_close(self->sock);
    s_open(self);
    s_send_ready(self, running);
    if (self->config->verbose)
        tq_worker_log(
            "child: reconnected to %s and sent READY again%s%s",
            tq_worker_endpoint(self->config, tq_board_host_broker(self->host)),
            running ? ", still running " : "", running ? running : "");
}

/* ---- the keeper ---- */

/* The keeper's turn with the socket (on its thread): answer the broker
   until the main thread wants the socket back (wake_fd). */
static void
s_keeper_serve(void *arg, int wake_fd)
{
    s_child_t *self = arg;
    /* a task that usually runs short ran long: the DONEs held behind it
       go now */
    s_flush(self);
    for (;;) {
        /* the host moved or the broker restarted while the task runs:
           announce it to the new broker now, not when it ends, so that
           the broker does not hand the recovered task to another child,
           and drop the unstarted jobs before they run (the eventfd is
           read before the flag: a signal after the look wakes the poll) */
        uint64_t count;
        if (s_reannounce_fd >= 0)
            while (read(s_reannounce_fd, &count, sizeof count) < 0 &&
                   errno == EINTR)
                ;
        if (s_reannounce)
            s_reconnect(self, self->running ? self->running->id : NULL);
        zmq_pollitem_t items[4] = {{self->sock, 0, ZMQ_POLLIN, 0},
                                   {NULL, wake_fd, ZMQ_POLLIN, 0}};
        int n = 2, monitor = -1;
        if (s_reannounce_fd >= 0)
            items[n++] = (zmq_pollitem_t){NULL, s_reannounce_fd, ZMQ_POLLIN, 0};
        if (self->monitor) {
            monitor = n;
            items[n++] = (zmq_pollitem_t){self->monitor, 0, ZMQ_POLLIN, 0};
        }
        if (zmq_poll(items, n,
                     s_reannounce_fd >= 0 ? -1 : S_REANNOUNCE_POLL_MS) < 0) {
            if (errno == EINTR)
                continue;
            s_die("zmq_poll");
        }
        if (items[1].revents & ZMQ_POLLIN)
            return;
        if (items[0].revents & ZMQ_POLLIN)
            s_drain(self, SIZE_MAX);
        if (monitor >= 0 && (items[monitor].revents & ZMQ_POLLIN))
            s_disconnected(self); /* sets s_reannounce: done above */
    }
}

/* True when this child should exit to be replaced by a fresh one. */
static bool
s_should_recycle(s_child_t *self)
{
    const tq_worker_config_t *cfg = self->config;
    if (cfg->max_tasks_per_child &&
        self->tasks_done >= cfg->max_tasks_per_child)
        return true;
    return cfg->max_memory_per_child_mb &&
        s_rss_kb(self) >= (uint64_t)cfg->max_memory_per_child_mb * 1024;
}

/* Waits, without a job to run, until the socket has input or a signal
   came (1 s at most: a signal landing just before the wait is seen within
   a second even if its EINTR was missed). With empty (a drain just
   found the socket empty, nothing sent since: libzmq took in the
   socket's commands then) the look at ZMQ_EVENTS is skipped, a system
   call pair on every round trip. Returns false when the wait
   shows that the monitor has no event, so that the look at it after the
   drain can be skipped (a system call on every round trip). ZMQ_EVENTS
   then a poll on ZMQ_FD, the pattern libzmq documents for its
   descriptor: ZMQ_EVENTS
   takes in the socket's pending commands (the drain and the sends since
   the last look may have left some), and once it says nothing is
   readable, anything that arrives later makes the descriptor readable.
   zmq_poll does the same with two more system calls per wait (a poll
   that finds nothing before, a second look after), on the path of every
   round trip. */
static bool
s_wait(s_child_t *self, bool empty)
{
    uint32_t events = 0;
    size_t size = sizeof events;
    if (!empty && zmq_getsockopt(self->sock, ZMQ_EVENTS, &events, &size) != 0) {
        if (errno == EINTR)
            return true;
        s_die("zmq_getsockopt");
    }
    if (events & ZMQ_POLLIN)
        return true;
    struct pollfd items[2] = {{self->sock_fd, POLLIN, 0}};
    int n = 1;
    /* the monitor's descriptor too: it only becomes readable when an
       event came after s_disconnected's last look (which ended on an
       empty receive, and nothing else reads the monitor) */
    if (self->monitor_fd >= 0)
        items[n++] = (struct pollfd){self->monitor_fd, POLLIN, 0};
    if (poll(items, (nfds_t)n, 1000) < 0) {
        if (errno != EINTR)
            s_die("poll");
        return true;
    }
    return n == 1 || (items[1].revents & POLLIN) != 0;
}

void
tq_child_run(const tq_worker_config_t *config, const tq_registry_t *registry,
             int report_fd, tq_board_t *board, const tq_board_host_t *host)
{
    /* tq_msg_t is large: off the stack. Zero as it is (static, never
       written before the fork, and this runs once per process): not
       cleared again, so that the pages a child never writes (in's READY
       arrays, 8 KiB) stay out of its memory */
    static s_child_t child;
    s_child_t *self = &child;
    self->config = config;
    self->registry = registry;
    self->report_fd = report_fd;
    self->board = board;
    self->host = host;
    fcntl(report_fd, F_SETFL, O_NONBLOCK); /* a nudge never blocks us */
    s_stop = 0;
    /* only the keeper polls it: none without one */
    if (config->prefetch > 1)
        s_reannounce_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s_setup_signals();

    /* a fresh context: the supervisor's (if any) belongs to the parent's
       threads, which do not exist here, so it is never touched. Its
       threads on small stacks, one malloc arena for all (tq_footprint.h) */
    tq_footprint_one_arena();
    self->ctx = tq_footprint_context_new(S_ZMQ_MAX_SOCKETS);
    if (!self->ctx)
        s_die("zmq_ctx_new");
    s_soft_flag = &self->task.soft_limit;
    s_open(self);

    tq_frames_init(&self->frames);
    msgpack_sbuffer_init(&self->header);
    msgpack_sbuffer_init(&self->batch_header);
    msgpack_sbuffer_init(&self->value_own);
    tq_value_start(&self->value, &self->value_own, NULL);
    msgpack_packer_init(&self->packer, &self->value, tq_value_write);
    msgpack_zone_init(&self->zone, 8192);
    tq_batch_init(&self->dones);
    size_t names = tq_registry_size(registry);
    self->spans = malloc((names ? names : 1) * sizeof *self->spans);
    if (!self->spans)
        s_die("malloc");
    for (size_t i = 0; i < names; i++)
        self->spans[i] = -1;

    s_send_ready(self, NULL);
    /* start-up done: a child that dies from now on is not a broken setup */
    s_publish(self, TQ_BOARD_IDLE, NULL, 0);
    int64_t drained_us = 0;
    int64_t now = 0; /* when the pass looked at the clock, monotonic us */
    bool woke = false; /* the idle wait just ended */
    bool quiet = false; /* ... and saw the monitor without an event */
    bool pending = false; /* more may wait: drain before the next wait */
    while (!s_stop) {
        /* only a drain of this pass tells s_wait the socket is empty (a
           job run since sent its DONE) */
        self->empty = false;
        if (s_reannounce)
            s_reconnect(self, NULL);
        /* a drain ends with a receive that finds nothing, and that costs
           libzmq a system call (it looks at its command mailbox), and so
           does the look at the monitor: with jobs queued, drain only
           every S_DRAIN_EVERY_US, so a run of short tasks does not pay
           them per task (a REVOKE still waits at most that long, or a
           task's KEEPER_AFTER_MS). When the idle wait ends, the first
           message is taken alone: a job starts at once, and the empty
           receive comes after its DONE (a REVOKE behind it finds it
           started, and its DONE answers: PROTOCOL 5.3.5). A BATCH that
           brought several jobs is run before the socket is read again
           (every S_DRAIN_EVERY_US still, or once the ring is empty): its
           sub-messages came in one message, and the next look at the
           socket would most often find nothing, at the price of an empty
           receive per BATCH. */
        if (woke) {
            size_t got = s_drain(self, 1);
            pending = got && self->count == 1;
            if (got && !self->count)
                s_drain(self, SIZE_MAX); /* not a job: read the rest */
            now = drained_us = s_now_us();
            /* before the next job starts: not one of a gone broker's */
            if (!quiet && s_disconnected(self))
                s_reconnect(self, NULL);
        } else if (pending || self->count) {
            /* now: the last task's DONE looked at the clock (s_rss_kb),
               a few microseconds ago, for the drain's period and the
               next job's start (a time limit counts from there): one look
               a task, the drain's only every S_DRAIN_EVERY_US */
            if (pending || now - drained_us >= S_DRAIN_EVERY_US) {
                s_drain(self, SIZE_MAX);
                pending = false;
                now = drained_us = s_now_us();
                /* with nothing to start, the idle wait watches the
                   monitor */
                if (self->count && s_disconnected(self))
                    s_reconnect(self, NULL);
            }
        }
        woke = false;
        if (s_stop)
            break;
        if (!self->count) {
            /* tell the supervisor at once, so a crash while idle is not
               blamed on the last task */
            if (self->busy) {
                s_publish(self, TQ_BOARD_IDLE, NULL, 0);
                self->busy = false;
            }
            /* nothing held waits for the broker's next message (a REVOKE
               may have taken the job a DONE was held for) */
            s_flush(self);
            quiet = !s_wait(self, self->empty);
            woke = true;
            continue;
        }
        /* out of the ring's count, run where it stands (s_push keeps its
           slot, and the ring it is in, while it runs) */
        s_job_t *job = &self->jobs[self->head];
        self->head = (self->head + 1) % self->capacity;
        self->count--;
        void *arg = NULL;
        tq_task_fn *fn = tq_registry_lookup_memo(self->registry, &self->memo,
                                                 job->name, &arg);
        int64_t *span = fn ? &self->spans[self->memo.index] : NULL;
        /* the DONEs held wait behind a task known to run short only */
        if (!span ||
            !tq_done_may_hold(*span, config->batch_short_us,
                              job->time_limit_ms ? job->time_limit_ms
                                                 : config->time_limit_ms,
                              !self->keeperless))
            s_flush(self);
        self->running = job;
        s_publish(self, TQ_BOARD_BUSY, job, now);
        self->busy = true;
        /* the keeper starts with the first task: until then nothing runs
           long, and an idle child costs no thread. Without one (no
           thread, no eventfd) the child still works: REVOKE is then
           answered between tasks */
        if (config->prefetch > 1 && !self->keeper && !self->keeperless &&
            !(self->keeper =
                  tq_keeper_new(KEEPER_AFTER_MS, s_keeper_serve, self))) {
            tq_worker_log("child: no keeper: %s", strerror(errno));
            self->keeperless = true;
        }
        tq_keeper_task_begin(self->keeper);
        s_run(self, job, fn, arg);
        /* the value forgets the job's arguments before they go */
        tq_value_start(&self->value, &self->value_own, NULL);
        s_job_clear(job);
        self->running = NULL;
        now = self->clock_us;
        /* its DONE looked at the clock (s_rss_kb) */
        if (span)
            *span = now - self->task_at_us;
        if (self->retired) {
            free(self->retired);
            self->retired = NULL;
        }
        self->tasks_done++;
        if (s_should_recycle(self)) {
            /* told first, so the supervisor respawns without a LOST */
            if (config->verbose)
                tq_worker_log("child: recycling after %u task(s), peak RSS "
                              "%llu KiB",
                              self->tasks_done,
                              (unsigned long long)s_peak_rss_kb());
            s_publish(self, TQ_BOARD_RECYCLING, NULL, 0);
            break;
        }
    }

    tq_keeper_destroy(&self->keeper);
    /* the broker queues again what we still hold when it sees this */
    memset(&self->out, 0, sizeof self->out);
    self->out.command = TQ_CMD_DISCONNECT;
    s_send(self, NULL);
    if (config->verbose)
        tq_worker_log("child: stopping, %zu queued task(s) handed back",
                      self->count);
    for (size_t i = 0; i < self->count; i++)
        s_job_clear(&self->jobs[(self->head + i) % self->capacity]);
    free(self->jobs);
    free(self->spans);
    tq_batch_destroy(&self->dones);
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->header);
    msgpack_sbuffer_destroy(&self->batch_header);
    msgpack_sbuffer_destroy(&self->value_own);
    msgpack_zone_destroy(&self->zone);
    s_monitor_close(self);
    zmq_close(self->sock);
    if (s_reannounce_fd >= 0) {
        int fd = s_reannounce_fd;
        s_reannounce_fd = -1; /* a late signal writes nowhere */
        close(fd);
    }
    /* bounded by the 1000 ms linger */
    while (zmq_ctx_term(self->ctx) < 0 && errno == EINTR)
        ;
    fflush(stdout);
    fflush(stderr);
    _exit(0);
}
