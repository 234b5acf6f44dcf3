/* tq_supervisor.c - the worker host's parent process: forks the children,
   reaps and respawns them, kills what their tasks leave behind, enforces
   hard time limits, heartbeats the broker, reports dead children with LOST
   and drains on SIGTERM. Given several brokers (PROTOCOL.md 12), it
   chooses the one the whole host talks to, and moves to the next on a
   standby's answer or a silence. */
#include "tq_board.h"
#include "tq_worker_host.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#include "tq_curve.h"
#include "tq_footprint.h"
#include "tq_orphans.h"
#include "tq_slot.h"
#include "tq_wire.h"

#define S_HEARTBEAT_MS 1000 /* HEARTBEAT interval (PROTOCOL.md 10) */
#define S_LIVENESS_MS 3000 /* broker silent this long: reconnect */
#define S_BACKOFF_MAX_MS 1000 /* longest wait before a respawn */
#define S_FAST_DEATH_MS 1000 /* a child dying younger than this backs off */
#define S_REAP_KILLED_MS 5000 /* wait for SIGKILLed children, at most */
#define S_CANCEL_GRACE_MS 1000 /* SIGTERM to SIGKILL for a cancelled task */
#define S_STARTUP_TRIES 5 /* children failing at start-up in a row: stop */
#define S_SWEEP_AGAIN_MS 100 /* look for orphans again after killing some */

/* A KILL for a task that the slot's child had not started when it came
   (its TASK was still on the way): the child is stopped once it starts
   that task. */
typedef struct {
    pid_t pid; /* the child it was for, 0: none */
    char id[TQ_PROTO_MAX_ID + 1]; /* the cancelled task */
} s_kill_t;

typedef struct {
    const tq_worker_config_t *config; /* borrowed */
    tq_registry_t *registry; /* borrowed */
    pid_t pid; /* the supervisor's own */
    tq_slot_t *slots; /* config->concurrency of them (tq_slot.h) */
    tq_board_t *boards; /* one per slot, shared with its child */
    tq_board_host_t *host; /* shared with every child: the broker */
    uint32_t broker; /* index of the endpoint the host talks to */
    bool reannounce_due; /* children announce themselves at the broker's
                            next HEARTBEAT answer: we moved to it, or it
                            was a standby */
    uint32_t unanswered_moves; /* moves since the last HEARTBEAT answer */
    pid_t *keep; /* one per slot: the children an orphan sweep spares */
    s_kill_t *kills; /* one per slot: a KILL that came before its task */
    int sig_pipe[2]; /* self-pipe: signal numbers */
    void *ctx; /* created after the first forks */
    void *sock; /* DEALER to the broker */
    msgpack_sbuffer header; /* encode buffer, reused */
    tq_frames_t frames; /* recv buffer, reused */
    tq_msg_t in; /* decoded header */
    tq_msg_t out; /* header being sent */
    int64_t next_heartbeat; /* ms */
    int64_t last_heard; /* ms, from the broker */
    bool broker_silent; /* logged the silence already */
    uint64_t broker_pid; /* from the broker's HEARTBEAT, 0: not yet */
    uint64_t session; /* from the broker's last HEARTBEAT, 0: none */
    int stopping; /* signals of the stop kind seen */
    int64_t stop_deadline; /* ms: SIGKILL children after */
    int startup_failures; /* children dead before UP, in a row */
    bool broken; /* they keep failing at start-up: stop, exit 1 */
    int64_t sweep_at; /* ms: look for orphans again, 0: no need */
} s_super_t;

static int s_sig_write_fd = -1;

static int64_t
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Async-signal-safe: hands the signal to the loop through the self-pipe. */
static void
s_on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(s_sig_write_fd, &b, 1) < 0) {
        /* pipe full: the loop has plenty to read already */
    }
    errno = saved;
}

static const struct {
    int sig;
    const char *name;
} s_signames[] = {
    {SIGHUP, "SIGHUP"},       {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"},
    {SIGILL, "SIGILL"},       {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"},
    {SIGBUS, "SIGBUS"},       {SIGFPE, "SIGFPE"},   {SIGKILL, "SIGKILL"},
    {SIGUSR1, "SIGUSR1"},     {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
    {SIGPIPE, "SIGPIPE"},     {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
    {SIGSTKFLT, "SIGSTKFLT"}, {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"},
    {SIGVTALRM, "SIGVTALRM"}, {SIGPROF, "SIGPROF"}, {SIGSYS, "SIGSYS"},
};

static const char *
s_signame(int sig, char *buf, size_t size)
{
    for (size_t i = 0; i < sizeof s_signames / sizeof s_signames[0]; i++)
        if (s_signames[i].sig == sig)
            return s_signames[i].name;
    snprintf(buf, size, "signal %d", sig);
    return buf;
}

/* ---- talking to the broker ------------------------------------------- */

static void s_sync(s_super_t *self, tq_slot_t *slot);

static void
s_send(s_super_t *self)
{
    if (!self->sock)
        return;
    /* never block the supervisor on a missing broker: ZeroMQ queues up to
       the high-water mark, beyond that a heartbeat may be lost */
    int rc;
    do
        rc = tq_wire_send_msg(self->sock, NULL, &self->out, &self->header, NULL,
                              ZMQ_DONTWAIT);
    while (rc == -1 && errno == EINTR);
    if (rc != TQ_OK && self->config->verbose)
        tq_worker_log("cannot send %s: %s",
                      tq_proto_command_name(self->out.command),
                      rc == -1 ? zmq_strerror(errno) : "encode failed");
}

static void
s_send_heartbeat(s_super_t *self)
{
    memset(&self->out, 0, sizeof self->out);
    self->out.command = TQ_CMD_HEARTBEAT;
    self->out.host = tq_str(self->config->host);
    self->out.pid = (uint64_t)self->pid;
    self->out.session = self->session;
    s_send(self);
}

/* LOST names the task the child ran when it died (id, attempt), from its
   board, so that the broker charges that one (PROTOCOL.md 5.3 item 2):
   the DONEs it wrote just before may have died with it. */
static void
s_send_lost(s_super_t *self, tq_slot_t *slot, pid_t pid, uint32_t code,
            const char *error)
{
    tq_board_t board;
    bool ran = tq_board_read(&self->boards[slot - self->slots], &board) &&
        board.phase == TQ_BOARD_BUSY && board.id[0];
    memset(&self->out, 0, sizeof self->out);
    self->out.command = TQ_CMD_LOST;
    self->out.pid = (uint64_t)pid;
    self->out.code = code;
    self->out.error = tq_str(error);
    if (ran) {
        self->out.id = tq_str(board.id);
        self->out.attempt = board.attempt;
    }
    s_send(self);
}

/* The endpoint the host talks to now. */
static const char *
s_endpoint(const s_super_t *self)
{
    return tq_worker_endpoint(self->config, self->broker);
}

static void
s_connect(s_super_t *self)
{
    if (self->sock)
        zmq_close(self->sock);
    self->sock = zmq_socket(self->ctx, ZMQ_DEALER);
    if (!self->sock) {
        tq_worker_log("cannot create a socket: %s", zmq_strerror(errno));
        return;
    }
    int linger = 1000;
    zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger);
    char why[512];
    if (tq_curve_client_setup(self->sock, NULL, NULL, why, sizeof why)) {
        tq_worker_log("%s", why);
        zmq_close(self->sock);
        self->sock = NULL;
        return;
    }
    if (zmq_connect(self->sock, s_endpoint(self)) != 0) {
        tq_worker_log("cannot connect to %s: %s", s_endpoint(self),
                      zmq_strerror(errno));
        zmq_close(self->sock);
        self->sock = NULL;
    }
}

/* Asks every live child to reconnect and send READY again. */
static void
s_reannounce_children(s_super_t *self)
{
    for (int i = 0; i < self->config->concurrency; i++)
        if (tq_slot_live(&self->slots[i]))
            kill(self->slots[i].pid, TQ_SIGNAL_REANNOUNCE);
}

/* Moves the host to its next broker endpoint (wrapping around): the
   supervisor connects there at once and heartbeats it; the children
   follow once it answers a HEARTBEAT (s_on_broker: reannounce_due), so
   that they do not reconnect to each standby in turn. A child (re)started
   meanwhile reads the new endpoint from the host's board. */
static void
s_move_on(s_super_t *self, const char *why)
{
    const char *from = s_endpoint(self);
    self->broker = (self->broker + 1) % tq_worker_endpoints(self->config);
    tq_worker_log("broker %s %s: moving to %s", from, why, s_endpoint(self));
    tq_board_host_set_broker(self->host, self->broker);
    /* what waits for the old broker means nothing to the next one */
    int zero = 0;
    if (self->sock)
        zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero);
    s_connect(self);
    self->reannounce_due = true;
    self->broker_pid = 0;
    self->session = 0; /* a session of the other broker means nothing */
    int64_t now = s_now();
    self->last_heard = now;
    /* ask the next one at once, but once round the list without an
       answer (every broker a standby, during a takeover), once per
       heartbeat interval */
    self->next_heartbeat =
        self->unanswered_moves++ < tq_worker_endpoints(self->config)
        ? now
        : now + S_HEARTBEAT_MS;
}

/* The slot's child runs a task the broker cancelled: SIGTERM to its
   process group now, SIGKILL after the grace. */
static void
s_stop_cancelled(tq_slot_t *slot)
{
    tq_worker_log("child %ld: task %s cancelled, stopping it", (long)slot->pid,
                  slot->id);
    tq_slot_cancel(slot, s_now() + S_CANCEL_GRACE_MS);
    kill(-slot->pid, SIGTERM);
    kill(slot->pid, SIGTERM);
}

/* KILL pid id: the broker cancelled the task id that child pid runs.
   SIGTERM to its process group now, SIGKILL after the grace; anything that
   does not match what we know is stale and ignored. */
static void
s_on_kill(s_super_t *self)
{
    tq_slot_t *slot = NULL;
    for (int i = 0; i < self->config->concurrency; i++)
        if (tq_slot_live(&self->slots[i]) &&
            (uint64_t)self->slots[i].pid == self->in.pid)
            slot = &self->slots[i];
    if (slot)
        s_sync(self, slot); /* it may run another task by now */
    if (slot && tq_str_eq(self->in.id, slot->id) &&
        (slot->state == TQ_SLOT_CANCELLING || slot->state == TQ_SLOT_KILLING))
        return; /* being stopped already */
    if (slot && !tq_str_eq(self->in.id, slot->id) &&
        self->in.id.len < sizeof self->kills[0].id) {
        /* not started yet (its TASK is on the way, or queued in the child
           behind another): stopped when it starts (s_kill_pending) */
        s_kill_t *k = &self->kills[slot - self->slots];
        k->pid = slot->pid;
        tq_str_copy(k->id, sizeof k->id, self->in.id);
        if (self->config->verbose)
            tq_worker_log("child %ld: task %s cancelled before it started",
                          (long)slot->pid, k->id);
        return;
    }
    if (!slot || !tq_slot_busy(slot) || !tq_str_eq(self->in.id, slot->id)) {
        if (self->config->verbose)
            tq_worker_log("ignored KILL for pid %llu task %.*s: not running "
                          "here",
                          (unsigned long long)self->in.pid,
                          (int)self->in.id.len,
                          self->in.id.ptr ? self->in.id.ptr : "");
        return;
    }
    s_stop_cancelled(slot);
}

/* After s_sync: a slot's child that started a task cancelled before it
   started is stopped now; one that started and ended it meanwhile, or a
   new child, has nothing to stop. */
static void
s_kill_pending(s_super_t *self, tq_slot_t *slot)
{
    s_kill_t *k = &self->kills[slot - self->slots];
    if (!k->pid)
        return;
    if (!tq_slot_live(slot) || slot->pid != k->pid) {
        k->pid = 0;
        return;
    }
    if (strcmp(slot->id, k->id) != 0)
        return; /* not started yet */
    k->pid = 0;
    if (tq_slot_busy(slot))
        s_stop_cancelled(slot);
}

/* True if s contains the C string text. */
static bool
s_str_has(tq_str_t s, const char *text)
{
    size_t n = strlen(text);
    for (uint32_t i = 0; s.ptr && i + n <= s.len; i++)
        if (memcmp(s.ptr + i, text, n) == 0)
            return true;
    return false;
}

static void
s_on_broker(s_super_t *self, int rc)
{
    const char *reason = "wrong number of frames";
    if (rc == TQ_OK)
        rc = tq_wire_decode(&self->frames, &self->in, &reason);
    if (rc != TQ_OK) {
        tq_worker_log("dropped a malformed message from the broker: %s",
                      reason);
        return;
    }
    if (self->in.command == TQ_CMD_ERROR && self->in.code == TQ_ESTANDBY &&
        !self->stopping) {
        /* another broker holds the lease: this one will not serve us */
        if (tq_worker_endpoints(self->config) > 1) {
            s_move_on(self, "is a standby");
            return;
        }
        /* our only broker: it knows none of our children now (a broker
           that lost the lease forgot them), so they announce themselves
           when it serves again, even if its pid and session number look
           the same then */
        if (!self->reannounce_due)
            tq_worker_log("broker %s is a standby: waiting for it to "
                          "serve",
                          s_endpoint(self));
        self->reannounce_due = true;
    }
    self->last_heard = s_now();
    if (self->broker_silent) {
        tq_worker_log("broker %s answers again", s_endpoint(self));
        self->broker_silent = false;
    }
    switch (self->in.command) {
    case TQ_CMD_HEARTBEAT:
        self->unanswered_moves = 0;
        if (self->reannounce_due) {
            /* the broker we moved to serves: every child moves too, with
               the task it still runs (PROTOCOL.md 10 and 12) */
            tq_worker_log("broker %s answers (pid %llu): children announce "
                          "themselves there",
                          s_endpoint(self), (unsigned long long)self->in.pid);
            self->reannounce_due = false;
            s_reannounce_children(self);
            self->broker_pid = self->in.pid;
            self->session = self->in.session;
            break;
        }
        /* another pid answers on the same endpoint: a restarted broker
           that knows none of our children; another session: the broker
           dropped this host (judged it silent) and forgot its children */
        if (self->broker_pid && self->in.pid != self->broker_pid) {
            tq_worker_log("broker restarted (pid %llu, was %llu): children "
                          "announce themselves again",
                          (unsigned long long)self->in.pid,
                          (unsigned long long)self->broker_pid);
            s_reannounce_children(self);
        } else if (self->broker_pid && self->in.session != self->session) {
            tq_worker_log("broker started session %llu for this host (was "
                          "%llu): children announce themselves again",
                          (unsigned long long)self->in.session,
                          (unsigned long long)self->session);
            s_reannounce_children(self);
        }
        self->broker_pid = self->in.pid;
        self->session = self->in.session;
        break;
    case TQ_CMD_KILL:
        s_on_kill(self);
        break;
    case TQ_CMD_PONG:
        break;
    case TQ_CMD_PING:
        memset(&self->out, 0, sizeof self->out);
        self->out.command = TQ_CMD_PONG;
        s_send(self);
        break;
    case TQ_CMD_ERROR:
        /* an endpoint that is not the broker's workers endpoint (its
           clients endpoint answers HEARTBEAT "not valid on the clients
           endpoint"), or a key the broker binds to another host: no
           child could ever work, so the host stops with the reason */
        if ((self->in.code == TQ_EPROTO &&
             s_str_has(self->in.error, "clients endpoint")) ||
            self->in.code == TQ_EDENIED) {
            tq_worker_log("%s is not usable by this host: the broker says "
                          "%.*s%s; stopping",
                          s_endpoint(self), (int)self->in.error.len,
                          self->in.error.ptr ? self->in.error.ptr : "",
                          self->in.code == TQ_EPROTO
                              ? " (workers connect to the broker's workers "
                                "endpoint, port 5556 by default)"
                              : "");
            self->broken = true;
            break;
        }
        if (self->config->verbose)
            tq_worker_log("broker says %s: %.*s",
                          tq_strerror((int)self->in.code),
                          (int)self->in.error.len,
                          self->in.error.ptr ? self->in.error.ptr : "");
        break;
    default:
        if (self->config->verbose)
            tq_worker_log("ignored %s from the broker",
                          tq_proto_command_name(self->in.command));
        break;
    }
}

static void
s_drain_broker(s_super_t *self)
{
    while (self->sock) {
        int rc = tq_wire_recv(self->sock, &self->frames, false, ZMQ_DONTWAIT);
        if (rc == -1)
            return; /* EAGAIN, EINTR: done for this pass */
        s_on_broker(self, rc);
    }
}

/* ---- children --------------------------------------------------------- */

/* Forks the child of slot. Returns false if fork failed (retried later). */
static bool
s_spawn(s_super_t *self, tq_slot_t *slot)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        tq_worker_log("pipe: %s", strerror(errno));
        return false;
    }
    tq_board_t *board = &self->boards[slot - self->slots];
    tq_board_reset(board); /* no child writes it now */
    fflush(stdout);
    fflush(stderr);
    /* hold signals across fork: the child must not run the supervisor's
       handlers; it installs its own and unblocks */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGCHLD);
    /* and the "announce again": its default action would kill a child
       that has no handler yet */
    sigaddset(&block, TQ_SIGNAL_REANNOUNCE);
    sigprocmask(SIG_BLOCK, &block, &old);
    pid_t pid = fork();
    if (pid != 0)
        sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        tq_worker_log("fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (pid == 0) {
        /* own process group: a time-limit kill takes the task's own
           subprocesses too; and the group dies with the supervisor, even
           if it is SIGKILLed */
        if (!tq_child_bind(self->pid))
            _exit(1);
        close(fds[0]);
        close(self->sig_pipe[0]);
        close(self->sig_pipe[1]);
        for (int i = 0; i < self->config->concurrency; i++)
            if (self->slots[i].fd >= 0)
                close(self->slots[i].fd);
        /* self->ctx and self->sock are the parent's: left alone */
        tq_child_run(self->config, self->registry, fds[1], board, self->host);
    }
    setpgid(pid, pid); /* both sides, so neither races the other */
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    tq_slot_move(slot, TQ_SLOT_STARTING);
    slot->pid = pid;
    slot->fd = fds[0];
    slot->born = s_now();
    if (self->config->verbose)
        tq_worker_log("started child %ld", (long)pid);
    return true;
}

/* Brings slot up to date with what its child published on its board. */
static void
s_sync(s_super_t *self, tq_slot_t *slot)
{
    tq_board_t board;
    if (!tq_slot_live(slot) ||
        !tq_board_read(&self->boards[slot - self->slots], &board))
        return;
    const tq_worker_config_t *cfg = self->config;
    if (board.phase != TQ_BOARD_STARTING && slot->state == TQ_SLOT_STARTING) {
        self->startup_failures = 0;
        tq_slot_on_report(slot, TQ_REPORT_UP, NULL, 0, 0, 0, 0, 0);
    }
    if (board.tasks > slot->tasks) {
        /* the last task started; those before it ended unseen */
        tq_slot_on_report(slot, TQ_REPORT_START, board.id, board.attempt,
                          board.time_limit_ms, cfg->time_limit_ms,
                          cfg->soft_time_limit_ms, board.started_ms);
        slot->tasks = (uint32_t)board.tasks;
    }
    if (board.phase == TQ_BOARD_IDLE)
        tq_slot_on_report(slot, TQ_REPORT_IDLE, NULL, 0, 0, 0, 0, 0);
    else if (board.phase == TQ_BOARD_RECYCLING)
        tq_slot_on_report(slot, TQ_REPORT_RECYCLE, NULL, 0, 0, 0, 0, 0);
}

/* The child nudged us (a task with a time limit started) or closed its
   pipe (EOF: it is exiting): drain the pipe, then read its board. */
static void
s_on_nudge(s_super_t *self, tq_slot_t *slot)
{
    char bytes[256];
    while (slot->fd >= 0) {
        ssize_t n = read(slot->fd, bytes, sizeof bytes);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            close(slot->fd);
            slot->fd = -1;
        }
    }
    s_sync(self, slot);
}

static tq_slot_t *
s_slot_of(s_super_t *self, pid_t pid)
{
    for (int i = 0; i < self->config->concurrency; i++)
        if (tq_slot_live(&self->slots[i]) && self->slots[i].pid == pid)
            return &self->slots[i];
    return NULL;
}

/* A child ended: tell the broker if it was not a clean stop, and plan its
   respawn unless we are stopping. */
static void
s_on_exit(s_super_t *self, tq_slot_t *slot, int status, const struct rusage *ru)
{
    s_sync(self, slot); /* its last task, or that it recycles */
    if (slot->fd >= 0) {
        close(slot->fd);
        slot->fd = -1;
    }
    pid_t pid = slot->pid;
    long rss_mb = (ru->ru_maxrss + 1023) / 1024; /* ru_maxrss is in KiB */
    char error[256], buf[32];
    bool clean = tq_slot_exit_clean(slot, status, self->stopping);
    uint32_t code = tq_slot_lost_code(slot);
    if (code == TQ_ECANCELLED)
        snprintf(error, sizeof error, "cancelled");
    else if (code == TQ_ETIMELIMIT)
        snprintf(error, sizeof error, "time limit exceeded (%.1f s)",
                 slot->limit_ms / 1000.0);
    else if (WIFSIGNALED(status))
        snprintf(error, sizeof error, "killed by %s (peak RSS %ld MB)",
                 s_signame(WTERMSIG(status), buf, sizeof buf), rss_mb);
    else
        snprintf(error, sizeof error, "exited with status %d (peak RSS %ld MB)",
                 WEXITSTATUS(status), rss_mb);
    if (!clean) {
        if (slot->id[0])
            tq_worker_log("child %ld %s while running task %s (attempt %u)",
                          (long)pid, error, slot->id, slot->attempt);
        else
            tq_worker_log("child %ld %s", (long)pid, error);
        s_send_lost(self, slot, pid, code, error);
    } else if (self->config->verbose)
        tq_worker_log("child %ld %s", (long)pid,
                      slot->state == TQ_SLOT_RECYCLING ? "recycled"
                                                       : "stopped");
    /* a child that ends by itself before its first READY has a setup that
       does not work (an endpoint it cannot use, a module that fails in
       it); a SIGKILL or SIGTERM is someone else's doing */
    bool by_itself = WIFEXITED(status) ||
        (WIFSIGNALED(status) && WTERMSIG(status) != SIGKILL &&
         WTERMSIG(status) != SIGTERM);
    if (!clean && slot->state == TQ_SLOT_STARTING && by_itself &&
        !self->stopping) {
        self->startup_failures++;
        if (self->startup_failures >= S_STARTUP_TRIES && !self->broken) {
            tq_worker_log("children fail at start-up (%d in a row, the "
                          "last %s): stopping; see the lines above for why",
                          self->startup_failures, error);
            self->broken = true;
        }
    }

    int64_t now = s_now();
    /* a child we stopped on purpose is replaced at once */
    /* backoff is for children dying before any task (a broken setup);
       one killed by its task (a poison task) is replaced at once, so the
       rest of the queue keeps its throughput */
    if (!clean && code != TQ_ECANCELLED && slot->tasks == 0 &&
        now - slot->born < S_FAST_DEATH_MS)
        slot->backoff_ms = slot->backoff_ms < 0 ? 0
            : slot->backoff_ms == 0             ? 50
                                                : slot->backoff_ms * 2;
    else
        slot->backoff_ms = -1; /* it lived long enough: no backoff */
    if (slot->backoff_ms > S_BACKOFF_MAX_MS)
        slot->backoff_ms = S_BACKOFF_MAX_MS;
    slot->respawn_at = now + (slot->backoff_ms > 0 ? slot->backoff_ms : 0);
    tq_slot_move(slot, TQ_SLOT_EMPTY);
}

/* Kills the orphans that came to us (tq_orphans.h), our children kept.
   Their own children become ours in turn, so a later sweep (sweep_at)
   takes them. Returns how many it killed. */
static int
s_sweep_orphans(s_super_t *self)
{
    size_t n = 0;
    for (int i = 0; i < self->config->concurrency; i++)
        if (tq_slot_live(&self->slots[i]))
            self->keep[n++] = self->slots[i].pid;
    return tq_orphans_kill(self->pid, self->keep, n);
}

/* Reaps every process that has ended: children, and the orphans that
   came to us. A child's process group is killed before the child is
   reaped (its zombie keeps its pid from reuse meanwhile): what its tasks
   started does not outlive it. */
static void
s_reap(s_super_t *self)
{
    for (;;) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        pid_t pid = info.si_pid;
        if (pid == 0)
            return;
        tq_slot_t *slot = s_slot_of(self, pid);
        if (slot)
            kill(-pid, SIGKILL);
        int status;
        struct rusage ru;
        pid_t got;
        while ((got = wait4(pid, &status, WNOHANG, &ru)) < 0 && errno == EINTR)
            ;
        if (got != pid)
            return;
        if (slot) {
            s_on_exit(self, slot, status, &ru);
            /* its tasks' orphans left its group, or are not reaped yet */
            if (s_sweep_orphans(self))
                self->sweep_at = s_now() + S_SWEEP_AGAIN_MS;
        }
    }
}

static int
s_live_children(const s_super_t *self)
{
    int n = 0;
    for (int i = 0; i < self->config->concurrency; i++)
        n += tq_slot_live(&self->slots[i]);
    return n;
}

/* SIGKILLs every live child's process group and reaps them, bounded. */
static void
s_kill_all(s_super_t *self)
{
    for (int i = 0; i < self->config->concurrency; i++) {
        tq_slot_t *slot = &self->slots[i];
        if (tq_slot_live(slot)) {
            tq_slot_kill(slot, TQ_SLOT_KILL_SHUTDOWN);
            kill(-slot->pid, SIGKILL);
            kill(slot->pid, SIGKILL); /* if setpgid lost a race */
        }
    }
    int64_t until = s_now() + S_REAP_KILLED_MS;
    while (s_live_children(self) && s_now() < until) {
        s_reap(self);
        if (s_live_children(self)) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

/* On the way out: kills and reaps whatever descendants came to us, until
   none is left (bounded). */
static void
s_kill_orphans(s_super_t *self)
{
    int64_t until = s_now() + S_REAP_KILLED_MS;
    while (s_sweep_orphans(self) && s_now() < until) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
        s_reap(self);
    }
    s_reap(self);
}

/* ---- the loop --------------------------------------------------------- */

static void
s_on_signals(s_super_t *self)
{
    unsigned char sigs[64];
    ssize_t n;
    while ((n = read(self->sig_pipe[0], sigs, sizeof sigs)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (sigs[i] == SIGCHLD)
                continue; /* reaped below in every case */
            if (sigs[i] == SIGHUP) {
                /* not a stop: a supervisor outlives its terminal */
                tq_worker_log("SIGHUP: ignored (SIGTERM stops tq-worker)");
                continue;
            }
            self->stopping++;
            if (self->stopping == 1) {
                tq_worker_log("stopping: letting %d child(ren) finish their "
                              "task (up to %u s)",
                              s_live_children(self),
                              self->config->shutdown_timeout_ms / 1000);
                self->stop_deadline =
                    s_now() + self->config->shutdown_timeout_ms;
                for (int k = 0; k < self->config->concurrency; k++)
                    if (tq_slot_live(&self->slots[k]))
                        kill(self->slots[k].pid, SIGTERM);
            }
        }
    }
    s_reap(self);
}

static void
s_on_timers(s_super_t *self)
{
    int64_t now = s_now();
    if (now >= self->next_heartbeat) {
        s_send_heartbeat(self);
        self->next_heartbeat = now + S_HEARTBEAT_MS;
    }
    if (now - self->last_heard >= S_LIVENESS_MS &&
        tq_worker_endpoints(self->config) > 1 && !self->stopping) {
        char why[64];
        snprintf(why, sizeof why, "silent for %d ms", S_LIVENESS_MS);
        s_move_on(self, why);
    } else if (now - self->last_heard >= S_LIVENESS_MS && self->sock &&
               !self->stopping) {
        if (!self->broker_silent)
            tq_worker_log("broker %s silent for %d ms, reconnecting",
                          s_endpoint(self), S_LIVENESS_MS);
        self->broker_silent = true;
        s_connect(self);
        self->last_heard = now;
        /* whoever answers now may be a new broker: children must
           announce themselves again (once, not again at its first
           HEARTBEAT) */
        s_reannounce_children(self);
        self->broker_pid = 0;
    }
    for (int i = 0; i < self->config->concurrency; i++) {
        tq_slot_t *slot = &self->slots[i];
        /* a memory read: the deadlines below are those of what runs now */
        s_sync(self, slot);
        s_kill_pending(self, slot);
        if (tq_slot_busy(slot) && slot->deadline && now >= slot->deadline) {
            tq_worker_log("child %ld: task %s exceeded its time limit "
                          "(%u ms), killing it",
                          (long)slot->pid, slot->id, slot->limit_ms);
            tq_slot_kill(slot, TQ_SLOT_KILL_TIME_LIMIT);
            kill(-slot->pid, SIGKILL);
            kill(slot->pid, SIGKILL);
        }
        if (tq_slot_busy(slot) && slot->soft_deadline &&
            now >= slot->soft_deadline) {
            if (self->config->verbose)
                tq_worker_log("child %ld: task %s passed its soft time limit",
                              (long)slot->pid, slot->id);
            slot->soft_deadline = 0;
            kill(slot->pid, TQ_SIGNAL_SOFT_LIMIT);
        }
        if (slot->state == TQ_SLOT_CANCELLING && now >= slot->kill_at) {
            tq_slot_kill(slot, TQ_SLOT_KILL_CANCEL);
            kill(-slot->pid, SIGKILL);
            kill(slot->pid, SIGKILL);
        }
        if (slot->state == TQ_SLOT_EMPTY && !self->stopping && !self->broken &&
            now >= slot->respawn_at)
            if (!s_spawn(self, slot))
                slot->respawn_at = now + S_BACKOFF_MAX_MS;
    }
    if (self->sweep_at && now >= self->sweep_at) {
        self->sweep_at = 0;
        if (s_sweep_orphans(self))
            self->sweep_at = now + S_SWEEP_AGAIN_MS;
    }
    if (self->stopping == 1 && now >= self->stop_deadline &&
        s_live_children(self)) {
        tq_worker_log("shutdown timeout: killing %d child(ren)",
                      s_live_children(self));
        s_kill_all(self);
    }
}

/* Milliseconds until the next thing the loop must do by itself. */
static long
s_timeout(const s_super_t *self)
{
    int64_t now = s_now();
    int64_t next = self->next_heartbeat;
    for (int i = 0; i < self->config->concurrency; i++) {
        const tq_slot_t *slot = &self->slots[i];
        if (tq_slot_busy(slot) && slot->deadline && slot->deadline < next)
            next = slot->deadline;
        if (tq_slot_busy(slot) && slot->soft_deadline &&
            slot->soft_deadline < next)
            next = slot->soft_deadline;
        if (slot->state == TQ_SLOT_CANCELLING && slot->kill_at < next)
            next = slot->kill_at;
        if (slot->state == TQ_SLOT_EMPTY && !self->stopping &&
            slot->respawn_at < next)
            next = slot->respawn_at;
    }
    if (self->stopping == 1 && self->stop_deadline < next)
        next = self->stop_deadline;
    if (self->sweep_at && self->sweep_at < next)
        next = self->sweep_at;
    return next <= now ? 0 : (long)(next - now);
}

static void
s_install_signals(s_super_t *self)
{
    if (pipe2(self->sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        tq_worker_log("pipe: %s", strerror(errno));
        exit(1);
    }
    s_sig_write_fd = self->sig_pipe[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = s_on_signal;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* SIGHUP must not kill the supervisor: a handler main() installed
       (reopening its log) is kept, else the loop logs and ignores it */
    struct sigaction hup;
    if (sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler == SIG_DFL)
        sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    sigaction(SIGPIPE, &sa, NULL);
}

int
tq_supervisor_run(const tq_worker_config_t *config, tq_registry_t *registry)
{
    assert(config && registry && config->concurrency > 0);
    s_super_t super;
    s_super_t *self = &super;
    memset(self, 0, sizeof *self);
    self->config = config;
    self->registry = registry;
    self->pid = getpid();
    self->slots = calloc((size_t)config->concurrency, sizeof *self->slots);
    self->keep = calloc((size_t)config->concurrency, sizeof *self->keep);
    self->kills = calloc((size_t)config->concurrency, sizeof *self->kills);
    if (!self->slots || !self->keep || !self->kills) {
        tq_worker_log("out of memory");
        free(self->slots);
        free(self->keep);
        free(self->kills);
        return 1;
    }
    self->boards =
        mmap(NULL, (size_t)config->concurrency * sizeof(tq_board_t),
             PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (self->boards == MAP_FAILED) {
        tq_worker_log("mmap: %s", strerror(errno));
        free(self->slots);
        free(self->keep);
        free(self->kills);
        return 1;
    }
    self->host = mmap(NULL, sizeof *self->host, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (self->host == MAP_FAILED) {
        tq_worker_log("mmap: %s", strerror(errno));
        munmap(self->boards, (size_t)config->concurrency * sizeof(tq_board_t));
        free(self->slots);
        free(self->keep);
        free(self->kills);
        return 1;
    }
    tq_board_host_set_broker(self->host, 0);
    for (int i = 0; i < config->concurrency; i++) {
        tq_slot_init(&self->slots[i]);
    }
    s_install_signals(self);
    /* what a child's tasks leave behind when the child dies comes to us,
       to be killed and reaped, instead of to init */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
        tq_worker_log("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));

    /* fork before any ZeroMQ context exists in this process */
    for (int i = 0; i < config->concurrency; i++)
        if (!s_spawn(self, &self->slots[i]))
            self->slots[i].respawn_at = s_now() + S_BACKOFF_MAX_MS;

    /* its threads on small stacks and one malloc arena: children forked
       from now on (respawns) inherit its mappings (tq_footprint.h) */
    tq_footprint_one_arena();
    self->ctx = tq_footprint_context_new(0);
    if (!self->ctx) {
        tq_worker_log("zmq_ctx_new: %s", zmq_strerror(errno));
        s_kill_all(self);
        return 1;
    }
    msgpack_sbuffer_init(&self->header);
    tq_frames_init(&self->frames);
    s_connect(self);
    if (tq_worker_endpoints(config) > 1)
        tq_worker_log("%d child(ren) on %s (first of %u brokers), host %s, "
                      "%zu task(s)",
                      config->concurrency, s_endpoint(self),
                      tq_worker_endpoints(config), config->host,
                      tq_registry_size(registry));
    else
        tq_worker_log("%d child(ren) on %s, host %s, %zu task(s)",
                      config->concurrency, s_endpoint(self), config->host,
                      tq_registry_size(registry));
    self->last_heard = s_now();
    self->next_heartbeat = 0; /* announce ourselves at once */

    int exit_code = 0;
    zmq_pollitem_t *items =
        calloc((size_t)config->concurrency + 2, sizeof *items);
    tq_slot_t **owners =
        calloc((size_t)config->concurrency + 2, sizeof *owners);
    if (!items || !owners) {
        tq_worker_log("out of memory");
        abort();
    }
    for (;;) {
        s_on_timers(self);
        if (self->stopping >= 2) {
            tq_worker_log("second signal: killing every child now");
            s_kill_all(self);
            exit_code = 1;
            break;
        }
        if (self->broken) {
            s_kill_all(self);
            exit_code = 1;
            break;
        }
        if (self->stopping && !s_live_children(self))
            break;
        int n = 0;
        items[n++] = (zmq_pollitem_t){NULL, self->sig_pipe[0], ZMQ_POLLIN, 0};
        if (self->sock)
            items[n++] = (zmq_pollitem_t){self->sock, 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < config->concurrency; i++)
            if (self->slots[i].fd >= 0) {
                owners[n] = &self->slots[i];
                items[n++] =
                    (zmq_pollitem_t){NULL, self->slots[i].fd, ZMQ_POLLIN, 0};
            }
        int rc = zmq_poll(items, n, s_timeout(self));
        if (rc < 0 && errno != EINTR) {
            tq_worker_log("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        /* children's reports before reaping, so a START is never missed */
        for (int i = 0; i < n; i++)
            if (owners[i] && (items[i].revents & (ZMQ_POLLIN | ZMQ_POLLERR)))
                s_on_nudge(self, owners[i]);
        for (int i = 0; i < n; i++)
            owners[i] = NULL;
        s_on_signals(self);
        s_drain_broker(self);
    }

    /* tell the broker now for every child we had to kill */
    s_reap(self);
    s_kill_orphans(self);
    memset(&self->out, 0, sizeof self->out);
    self->out.command = TQ_CMD_DISCONNECT;
    s_send(self);
    if (self->sock) {
        int linger = exit_code ? 200 : 1000;
        zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(self->sock);
    }
    while (zmq_ctx_term(self->ctx) < 0 && errno == EINTR)
        ;
    tq_frames_close(&self->frames);
    msgpack_sbuffer_destroy(&self->header);
    for (int i = 0; i < config->concurrency; i++)
        if (self->slots[i].fd >= 0)
            close(self->slots[i].fd);
    close(self->sig_pipe[0]);
    close(self->sig_pipe[1]);
    free(items);
    free(owners);
    free(self->slots);
    free(self->keep);
    free(self->kills);
    munmap(self->boards, (size_t)config->concurrency * sizeof(tq_board_t));
    munmap(self->host, sizeof *self->host);
    if (!exit_code)
        tq_worker_log("stopped");
    return exit_code;
}
