/* tq_pool.c - the embedded pool: a broker thread on private ipc://
   endpoints, the fork server (spawned, tq_pool_spawn.c) watched by a
   monitor thread that restarts it if it dies, and a client; tracked
   submissions for join, terminate and the AsyncResult. */
#include "tq/tq_pool.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq_broker.h"
#include "tq_client_internal.h"
#include "tq_pool_internal.h"
#include "tq_pool_server.h"
#include "tq_proto.h"

#define S_KILL_WAIT_MS 3000 /* server to kill its children and exit */
#define S_DRAIN_MS 10000 /* server's drain time at join */
#define S_CANCEL_WAIT_MS 3000 /* client to take the CANCELLED results */
#define S_EP_MAX (PATH_MAX + 16)
#define S_READY_WAIT_MS 30000 /* children to announce themselves */
/* SUBMITTED held back this long at most: a third of a client's default
   liveness, so a burst of 20,000 folds nearly whole */
#define S_ACK_FOLD_MS 1000
/* a caller of tq_pool_apply runs the broker's loop itself this long at
   most while it waits (s_lead); then the broker's thread takes over */
#define S_LEAD_MS 50

typedef enum {
    S_RUNNING, /* accepting work */
    S_CLOSED, /* close: no new work, children still run */
    S_JOINED, /* join returned TQ_OK: children gone */
    S_TERMINATED, /* terminate: children killed, pending cancelled */
} s_state_t;

/* One submission made through tq_pool_*, linked while it is pending. Freed
   by whichever of the submitter and the completion callback comes last. */
typedef struct s_track_t {
    struct s_track_t *prev, *next;
    tq_pool_t *pool;
    tq_callback_fn *callback; /* the caller's, may be NULL */
    tq_callback_fn *error_callback;
    void *callback_arg;
    char id[TQ_PROTO_MAX_ID + 1]; /* "" until the submitter stored it */
    tq_result_t *local; /* a task handed to the broker by a call
                           (s_local_submit): its handle, held until its
                           end; NULL for one the client submitted */
    struct s_track_t *local_next; /* pool->locals */
    bool linked; /* in pool->tracked */
    bool submitted; /* the submitter is done with it */
    bool finished; /* the callback ran */
} s_track_t;

struct tq_pool_t {
    int processes;
    s_state_t state;
    char dir[PATH_MAX]; /* private temporary directory */
    char client_ep[S_EP_MAX]; /* ipc://dir/clients */
    char worker_ep[S_EP_MAX]; /* ipc://dir/workers */
    char inproc_ep[S_EP_MAX]; /* the pool's own client: inproc:// */
    pid_t server; /* fork server, 0 once reaped (by the monitor) */
    int server_fd; /* its liveness pipe's write end, -1: none */
    tq_buf_t server_config; /* encoded, for a restart */
    pthread_t monitor; /* reaps the server, restarts it */
    bool monitor_running;
    bool server_stopping; /* we stop it: no restart */
    int respawns; /* restarts so far */
    bool broken; /* the server died too often */
    char broken_text[1024]; /* why */
    tq_registry_t *names; /* task names the children provide */
    size_t chunksize; /* option */
    tq_broker_t *broker; /* NULL once stopped */
    pthread_t broker_thread;
    bool broker_running;
    int leaders; /* callers running the broker's loop (s_lead) */
    bool no_lead; /* the broker stops: no new lead */
    tq_client_t *client;
    pthread_mutex_t lock; /* guards tracked, pending, state, server */
    pthread_cond_t cond; /* pending went down, or the server ended */
    s_track_t *tracked; /* pending tracked submissions */
    s_track_t *locals; /* those of them submitted by a call (s_local) */
    uint64_t local_prefix; /* their ids: prefix and counter */
    uint64_t local_count;
    size_t pending;
    pid_t pid; /* the process that made it */
    tq_pool_t *live_next; /* s_live_pools */
};

/* Pools not yet destroyed: exit() terminates them, as Python's finalizers
   do, before the client library and czmq tear down the context their
   broker threads and clients use. */
static void s_local_cancel(tq_pool_t *self);
static void s_local_close(tq_pool_t *self);

static pthread_mutex_t s_live_lock = PTHREAD_MUTEX_INITIALIZER;
static tq_pool_t *s_live_pools;
static pthread_once_t s_exit_once = PTHREAD_ONCE_INIT;

static void
s_at_exit(void)
{
    for (;;) {
        pthread_mutex_lock(&s_live_lock);
        tq_pool_t *pool = s_live_pools;
        while (pool && pool->pid != getpid())
            pool = pool->live_next; /* a parent's, in a forked child */
        pthread_mutex_unlock(&s_live_lock);
        if (!pool)
            return;
        tq_pool_destroy(&pool);
    }
}

static void
s_register_at_exit(void)
{
    /* registered after the client library's handler: runs before it */
    atexit(s_at_exit);
}

static int64_t
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits up to timeout_ms for the fork server to end (the monitor reaps
   it). True once it is gone. */
static bool
s_reap_server(tq_pool_t *self, int timeout_ms)
{
    int64_t until = s_now() + timeout_ms;
    pthread_mutex_lock(&self->lock);
    while (self->server) {
        int64_t left = until - s_now();
        if (left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&self->cond, &self->lock, &ts);
    }
    bool gone = self->server == 0;
    pthread_mutex_unlock(&self->lock);
    return gone;
}

/* Sends sig to the server if it runs; marks it as stopped on purpose. */
static void
s_signal_server(tq_pool_t *self, int sig)
{
    pthread_mutex_lock(&self->lock);
    self->server_stopping = true;
    if (self->server)
        kill(self->server, sig);
    pthread_mutex_unlock(&self->lock);
}

/* Kills the fork server and its children now, bounded, and reaps it. */
static void
s_kill_server(tq_pool_t *self)
{
    /* two stop signals: the supervisor SIGKILLs every child, reaps them,
       tells the broker and exits; two different signals so they cannot
       merge into one pending signal */
    s_signal_server(self, SIGINT);
    s_signal_server(self, SIGTERM);
    if (!s_reap_server(self, S_KILL_WAIT_MS)) {
        /* its children follow it through PR_SET_PDEATHSIG */
        s_signal_server(self, SIGKILL);
        s_reap_server(self, S_KILL_WAIT_MS);
    }
    if (self->monitor_running) {
        pthread_join(self->monitor, NULL);
        self->monitor_running = false;
    }
    if (self->server_fd >= 0) {
        close(self->server_fd);
        self->server_fd = -1;
    }
}

static void
s_describe_status(int status, char *buf, size_t size)
{
    if (status < 0)
        snprintf(buf, size, "reaped by someone else");
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
}

/* The monitor thread: waits for the server's end. One the pool did not
   ask for is answered with a new server (its children take the waiting
   tasks), up to TQ_POOL_MAX_RESPAWNS times; then the pool is broken and
   its pending tasks are cancelled, so nobody waits forever. */
static void *
s_monitor(void *arg)
{
    tq_pool_t *self = arg;
    for (;;) {
        pthread_mutex_lock(&self->lock);
        pid_t pid = self->server;
        pthread_mutex_unlock(&self->lock);
        int status = 0;
        pid_t got;
        while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
            ;
        if (got < 0)
            status = -1; /* ECHILD: SIGCHLD ignored, or the program reaped
                            it */
        pthread_mutex_lock(&self->lock);
        bool restart = !self->server_stopping && self->state != S_JOINED &&
            self->state != S_TERMINATED;
        char why[128];
        s_describe_status(status, why, sizeof why);
        if (restart && self->respawns < TQ_POOL_MAX_RESPAWNS) {
            self->respawns++;
            if (self->server_fd >= 0)
                close(self->server_fd);
            self->server_fd = -1;
            char error[512];
            pid_t fresh = tq_pool_server_spawn(
                &self->server_config, &self->server_fd, error, sizeof error);
            if (fresh > 0) {
                self->server = fresh;
                pthread_mutex_unlock(&self->lock);
                continue;
            }
            snprintf(self->broken_text, sizeof self->broken_text,
                     "the pool's fork server died (%s) and did not restart: "
                     "%s",
                     why, error);
        } else if (restart)
            snprintf(self->broken_text, sizeof self->broken_text,
                     "the pool's fork server died (%s), %d restarts already",
                     why, self->respawns);
        self->server = 0;
        self->broken = restart;
        pthread_cond_broadcast(&self->cond);
        pthread_mutex_unlock(&self->lock);
        if (restart && self->client) {
            tq_client_terminate(self->client); /* nobody waits forever */
            s_local_cancel(self);
        }
        return NULL;
    }
}

static void *
s_broker_thread(void *arg)
{
    tq_broker_t *broker = arg;
    if (tq_broker_run(broker) != TQ_OK)
        fprintf(stderr, "tq pool: broker loop failed\n");
    return NULL;
}

static void
s_stop_broker(tq_pool_t *self)
{
    /* a caller leading the broker lets go within S_LEAD_MS */
    pthread_mutex_lock(&self->lock);
    self->no_lead = true;
    while (self->leaders)
        pthread_cond_wait(&self->cond, &self->lock);
    pthread_mutex_unlock(&self->lock);
    if (self->broker_running) {
        tq_broker_stop(self->broker);
        pthread_join(self->broker_thread, NULL);
        self->broker_running = false;
    }
    tq_broker_destroy(&self->broker);
    s_local_close(self); /* nobody answers them any more */
}

/* Removes the private directory and whatever sockets are left in it. */
static void
s_remove_dir(tq_pool_t *self)
{
    if (!self->dir[0])
        return;
    DIR *d = opendir(self->dir);
    if (d) {
        struct dirent *e;
        char path[PATH_MAX + 300];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", self->dir, e->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(self->dir);
    self->dir[0] = '\0';
}

/* ---- tracked submissions ------------------------------------------------ */

/* Puts t on the list of tracked submissions (self->lock held). */
static void
s_track_link(tq_pool_t *self, s_track_t *t)
{
    t->next = self->tracked;
    if (self->tracked)
        self->tracked->prev = t;
    self->tracked = t;
    t->linked = true;
    self->pending++;
}

static void
s_track_unlink(tq_pool_t *self, s_track_t *t)
{
    if (!t->linked)
        return;
    if (t->prev)
        t->prev->next = t->next;
    else
        self->tracked = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
    t->linked = false;
    self->pending--;
    pthread_cond_broadcast(&self->cond);
}

/* The completion of a tracked task, on the client's I/O thread: the
   caller's callback first, so that once join returns every callback has
   run (Python's result handler does the same). */
static void
s_on_final(tq_result_t *result, s_track_t *t, bool success)
{
    tq_callback_fn *fn = success ? t->callback : t->error_callback;
    if (fn)
        fn(result, t->callback_arg);
    tq_pool_t *self = t->pool;
    pthread_mutex_lock(&self->lock);
    s_track_unlink(self, t);
    t->finished = true;
    bool free_it = t->submitted;
    pthread_mutex_unlock(&self->lock);
    if (free_it)
        free(t);
}

static void
s_on_success(tq_result_t *result, void *arg)
{
    s_on_final(result, arg, true);
}

static void
s_on_error(tq_result_t *result, void *arg)
{
    s_on_final(result, arg, false);
}

/* Submits one task with packed args (borrowed) and tracks it. NULL when the
   pool no longer accepts work or the client refused the call. */
int
tq_pool_check_task(const tq_pool_t *self, const char *task, char *error,
                   size_t errlen)
{
    if (task && tq_registry_lookup(self->names, task, NULL))
        return TQ_OK;
    snprintf(error, errlen,
             "no task named '%s' in this pool (register it with "
             "tq_registry_add before tq_pool_new)",
             task ? task : "(null)");
    return TQ_ENOTASK;
}

size_t
tq_pool_chunksize(const tq_pool_t *self)
{
    return self->chunksize;
}

tq_result_t *
tq_pool_submit_raw(tq_pool_t *self, const char *task,
                   const tq_options_t *options, const void *args, size_t size)
{
    char error[TQ_PROTO_MAX_NAME + 128];
    if (!task)
        return NULL;
    if (tq_pool_check_task(self, task, error, sizeof error) != TQ_OK)
        return tq_result_new_final(TQ_ENOTASK, error, NULL, 0);
    pthread_mutex_lock(&self->lock);
    bool broken = self->broken;
    pthread_mutex_unlock(&self->lock);
    if (broken)
        return tq_result_new_final(TQ_ELOST, self->broken_text, NULL, 0);
    s_track_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->pool = self;
    tq_options_t opts = TQ_OPTIONS_INIT;
    if (options)
        opts = *options;
    t->callback = opts.callback;
    t->error_callback = opts.error_callback;
    t->callback_arg = opts.callback_arg;
    opts.callback = s_on_success;
    opts.error_callback = s_on_error;
    opts.callback_arg = t;

    pthread_mutex_lock(&self->lock);
    if (self->state != S_RUNNING) {
        pthread_mutex_unlock(&self->lock);
        free(t);
        return NULL;
    }
    s_track_link(self, t);
    pthread_mutex_unlock(&self->lock);

    tq_result_t *r = tq_apply_async_raw(self->client, task, &opts, args, size);
    if (r && !t->callback && !t->error_callback)
        /* only our bookkeeping: a caller that waits runs it, without a
           hop through the client's I/O thread */
        tq_result_callbacks_anywhere(r);

    pthread_mutex_lock(&self->lock);
    if (!r)
        s_track_unlink(self, t);
    else if (t->linked)
        snprintf(t->id, sizeof t->id, "%s", tq_result_id(r));
    t->submitted = true;
    bool free_it = !r || t->finished;
    pthread_mutex_unlock(&self->lock);
    if (free_it)
        free(t);
    return r;
}

static tq_result_t *
s_vsubmit(tq_pool_t *self, const char *task, const tq_options_t *options,
          const char *picture, va_list ap)
{
    tq_buf_t buf = {0};
    if (!picture || tq_vpack(&buf, picture, ap) != TQ_OK) {
        tq_buf_free(&buf);
        return NULL;
    }
    tq_result_t *r =
        tq_pool_submit_raw(self, task, options, buf.data, buf.size);
    tq_buf_free(&buf);
    return r;
}

/* ---- the local client: apply without a socket --------------------------- */

/* Unlinks t from pool->locals (lock held). */
static void
s_local_unlink(tq_pool_t *self, s_track_t *t)
{
    for (s_track_t **pp = &self->locals; *pp; pp = &(*pp)->local_next)
        if (*pp == t) {
            *pp = t->local_next;
            t->local_next = NULL;
            return;
        }
}

/* The broker's answer to a task the pool handed it by a call (on the thread
   running the broker: a leading caller's or the broker's). */
static void
s_local_answer(void *arg, const tq_msg_t *msg, zmq_msg_t *payload)
{
    tq_pool_t *self = arg;
    bool last = msg->command != TQ_CMD_SUBMITTED;
    tq_result_t *h = NULL;
    pthread_mutex_lock(&self->lock);
    for (s_track_t *t = self->locals; t; t = t->local_next)
        if (strlen(t->id) == msg->id.len &&
            !memcmp(t->id, msg->id.ptr, msg->id.len)) {
            h = t->local;
            if (last) {
                s_local_unlink(self, t);
                t->local = NULL; /* its reference is ours now */
            } else
                tq_result_hold(h);
            break;
        }
    pthread_mutex_unlock(&self->lock);
    if (!h)
        return; /* an answer to nobody waiting: a cancel's */
    /* a final answer runs the tracking callback, which may free t */
    tq_result_local_answer(h, msg, payload);
    tq_result_release(h);
}

/* Ends every task handed to the broker by a call that the broker will not
   answer any more (it stopped): TQ_ECLOSED. */
static void
s_local_close(tq_pool_t *self)
{
    for (;;) {
        pthread_mutex_lock(&self->lock);
        s_track_t *t = self->locals;
        char id[TQ_PROTO_MAX_ID + 1] = "";
        if (t)
            snprintf(id, sizeof id, "%s", t->id);
        pthread_mutex_unlock(&self->lock);
        if (!t)
            return;
        tq_msg_t msg;
        memset(&msg, 0, offsetof(tq_msg_t, queues));
        msg.command = TQ_CMD_ERROR;
        msg.id = tq_str(id);
        msg.code = TQ_ECLOSED;
        msg.error = tq_str("the pool was terminated");
        s_local_answer(self, &msg, NULL);
    }
}

/* Asks the broker, through the client, to cancel every task handed to it
   by a call: their CANCELLED results come to s_local_answer. */
static void
s_local_cancel(tq_pool_t *self)
{
    pthread_mutex_lock(&self->lock);
    size_t n = 0;
    for (s_track_t *t = self->locals; t; t = t->local_next)
        n++;
    tq_result_t **handles = n ? calloc(n, sizeof *handles) : NULL;
    n = 0;
    for (s_track_t *t = handles ? self->locals : NULL; t; t = t->local_next) {
        tq_result_hold(t->local);
        handles[n++] = t->local;
    }
    pthread_mutex_unlock(&self->lock);
    for (size_t i = 0; i < n; i++) {
        tq_result_cancel(handles[i]);
        tq_result_release(handles[i]);
    }
    free(handles);
}

/* True if apply may hand the task to the broker by a call: options the
   local path carries, valid (the client says why for the others), and
   arguments the client would take. Not a task id of the caller's (a
   resubmission the client asks again for), nor callbacks (a program's
   run on the client's I/O thread, never on the broker's). */
static bool
s_local_fits(const tq_options_t *o, const void *args, size_t size)
{
    if (o &&
        (o->id || o->block_when_full || o->callback || o->error_callback ||
         (o->queue && !tq_proto_valid_name(o->queue, strlen(o->queue))) ||
         o->priority < 0 || o->priority > TQ_PRIORITY_MAX ||
         o->time_limit_ms < 0 || o->retries < 0 ||
         o->retries > TQ_PROTO_MAX_RETRIES || o->retry_backoff_ms < 0 ||
         o->countdown_ms < 0))
        return false;
    return tq_proto_check_payload(args, size, true, NULL) == TQ_OK;
}

/* Submits task with packed args (borrowed) to the broker by a call, the
   caller leading it (tq_broker_lead_begin): no socket, no other thread.
   Tracked for join and terminate as any. Returns its handle, or NULL if
   the pool no longer accepts work (nothing was submitted). */
static tq_result_t *
s_local_submit(tq_pool_t *self, const char *task, const tq_options_t *options,
               const void *args, size_t size)
{
    tq_options_t none = TQ_OPTIONS_INIT;
    const tq_options_t *o = options ? options : &none;
    s_track_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->pool = self;
    pthread_mutex_lock(&self->lock);
    if (self->state != S_RUNNING || self->broken) {
        pthread_mutex_unlock(&self->lock);
        free(t);
        return NULL;
    }
    snprintf(t->id, sizeof t->id, "p%015" PRIx64 "%016" PRIx64,
             (uint64_t)(self->local_prefix & 0xfffffffffffffffULL),
             ++self->local_count);
    pthread_mutex_unlock(&self->lock);
    tq_result_t *h =
        tq_result_new_local(self->client, t->id, s_on_success, s_on_error, t);
    zmq_msg_t payload;
    if (!h || zmq_msg_init_size(&payload, size) != 0) {
        tq_result_destroy(&h);
        free(t);
        return NULL;
    }
    memcpy(zmq_msg_data(&payload), args, size);
    tq_result_hold(h); /* t->local's, until the end */
    t->local = h;
    t->submitted = true; /* the one who frees t is s_on_final */
    pthread_mutex_lock(&self->lock);
    s_track_link(self, t);
    t->local_next = self->locals;
    self->locals = t;
    pthread_mutex_unlock(&self->lock);
    tq_msg_t msg;
    memset(&msg, 0, offsetof(tq_msg_t, queues));
    msg.command = TQ_CMD_SUBMIT;
    msg.id = tq_str(t->id);
    msg.task = tq_str(task);
    msg.queue = tq_str(o->queue ? o->queue : TQ_DEFAULT_QUEUE);
    msg.priority = (uint32_t)o->priority;
    msg.time_limit_ms = (uint32_t)o->time_limit_ms;
    msg.retries = (uint32_t)o->retries;
    /* the client's default; the broker doubles it and adds jitter */
    msg.backoff_ms = o->retry_backoff_ms ? (uint32_t)o->retry_backoff_ms : 1000;
    msg.delay_ms = (uint32_t)o->countdown_ms;
    tq_broker_local_send(self->broker, &msg, &payload);
    zmq_msg_close(&payload);
    return h;
}

/* Takes the broker's loop for a caller about to wait on its task, if the
   broker's thread sleeps (tq_broker_lead_begin). */
static bool
s_lead_begin(tq_pool_t *self)
{
    pthread_mutex_lock(&self->lock);
    bool lead =
        !self->no_lead && self->broker_running && self->state == S_RUNNING;
    if (lead)
        self->leaders++;
    pthread_mutex_unlock(&self->lock);
    if (lead && tq_broker_lead_begin(self->broker))
        return true;
    if (lead) {
        pthread_mutex_lock(&self->lock);
        self->leaders--;
        pthread_cond_broadcast(&self->cond);
        pthread_mutex_unlock(&self->lock);
    }
    return false;
}

static void
s_lead_end(tq_pool_t *self)
{
    tq_broker_lead_end(self->broker);
    pthread_mutex_lock(&self->lock);
    self->leaders--;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
}

/* While the caller waits for its task, runs the broker's loop on its
   thread (the broker's code, its facts: tq_broker_lead), until r is ready,
   until deadline (ms of s_now, -1: none) or for S_LEAD_MS at most. With
   the task handed over by a call (s_local_submit), a no-op task's round
   trip crosses no thread of this process but the caller's and libzmq's
   I/O thread: the TASK goes out, the DONE is read and the handle finished
   here. */
static void
s_lead(tq_pool_t *self, tq_result_t *r, int64_t deadline)
{
    int64_t until = s_now() + S_LEAD_MS;
    if (deadline >= 0 && deadline < until)
        until = deadline;
    while (!tq_result_ready(r)) {
        int64_t left = until - s_now();
        if (left <= 0 || tq_broker_lead(self->broker, (int)left) != 0)
            return;
    }
}

/* apply: submits, and waits up to timeout_ms (-1: forever) for the end,
   running the broker's loop meanwhile if its thread sleeps. */
static tq_result_t *
s_vapply(tq_pool_t *self, const char *task, const tq_options_t *options,
         int timeout_ms, const char *picture, va_list ap)
{
    int64_t deadline = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    /* the loop is ours before the SUBMIT goes: the broker's thread, woken
       by it, waits for the loop instead of taking the task */
    bool lead = s_lead_begin(self);
    tq_result_t *r = NULL;
    tq_buf_t buf = {0};
    if (!picture || tq_vpack(&buf, picture, ap) != TQ_OK) {
        tq_buf_free(&buf);
        if (lead)
            s_lead_end(self);
        return NULL;
    }
    char error[TQ_PROTO_MAX_NAME + 128];
    if (lead && task &&
        tq_pool_check_task(self, task, error, sizeof error) == TQ_OK &&
        s_local_fits(options, buf.data, buf.size))
        r = s_local_submit(self, task, options, buf.data, buf.size);
    if (!r && lead) {
        /* through the client: the broker's thread takes it (its answer
           would not wake a caller leading the loop) */
        s_lead_end(self);
        lead = false;
    }
    if (!r)
        r = tq_pool_submit_raw(self, task, options, buf.data, buf.size);
    tq_buf_free(&buf);
    if (lead) {
        if (!tq_result_ready(r))
            s_lead(self, r, deadline);
        s_lead_end(self);
    }
    if (r) {
        int64_t left = deadline < 0 ? -1 : deadline - s_now();
        tq_result_wait(r, deadline < 0 ? -1 : left > 0 ? (int)left : 0);
    }
    return r;
}

/* Ends every pending task CANCELLED: the client asks the broker to cancel
   each (queued ones end at once, running ones too while their children are
   killed), and we wait, bounded, for the answers. */
static void
s_cancel_pending(tq_pool_t *self)
{
    if (!self->client)
        return;
    tq_client_terminate(self->client);
    s_local_cancel(self);
    int64_t until = s_now() + S_CANCEL_WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&self->lock);
        size_t pending = self->pending;
        pthread_mutex_unlock(&self->lock);
        if (!pending)
            return;
        if (s_now() >= until) {
            fprintf(stderr,
                    "tq pool: %zu task(s) still pending after terminate\n",
                    pending);
            return;
        }
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- the pool ------------------------------------------------------------ */

/* Whether a STATUS "workers" entry has a non-zero "session". */
static int
s_bound(const msgpack_object *w)
{
    if (w->type != MSGPACK_OBJECT_MAP)
        return 0;
    for (uint32_t i = 0; i < w->via.map.size; i++) {
        const msgpack_object_kv *kv = &w->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 7 &&
            !memcmp(kv->key.via.str.ptr, "session", 7))
            return kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                kv->val.via.u64 != 0;
    }
    return 0;
}

/* Counts the children the broker knows (its STATUS "workers") that are
   bound to their supervisor's session, -1 when it did not answer. The
   supervisor forks its children before it connects, so their READYs may
   come before its first HEARTBEAT; a child bound to no session is covered
   by no host liveness: a server killed in that window (SIGKILL, no LOST)
   would leave a task sent to one of its dying children held forever. */
static int
s_ready_children(tq_pool_t *self)
{
    tq_buf_t body = {0};
    if (tq_client_status(self->client, &body, 2000) != TQ_OK)
        return -1;
    int n = -1;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, body.data, body.size, NULL) ==
            MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < u.data.via.map.size; i++) {
            const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR &&
                kv->key.via.str.size == 7 &&
                !memcmp(kv->key.via.str.ptr, "workers", 7) &&
                kv->val.type == MSGPACK_OBJECT_ARRAY) {
                n = 0;
                for (uint32_t j = 0; j < kv->val.via.array.size; j++)
                    n += s_bound(&kv->val.via.array.ptr[j]);
            }
        }
    msgpack_unpacked_destroy(&u);
    tq_buf_free(&body);
    return n;
}

/* Waits, bounded, until every child announced itself and is bound to its
   supervisor's session (s_ready_children): a task submitted next then
   starts in order on the first idle child, instead of piling up on
   whichever child connected first, and a server killed from now on has
   its children's tasks ended by the host liveness. TQ_OK, or an error on
   stderr. */
static int
s_wait_ready(tq_pool_t *self)
{
    int64_t until = s_now() + S_READY_WAIT_MS;
    int delay = 1;
    for (;;) {
        int n = s_ready_children(self);
        if (n >= self->processes)
            return TQ_OK;
        pthread_mutex_lock(&self->lock);
        bool gone = self->server == 0 || self->respawns > 0;
        pthread_mutex_unlock(&self->lock);
        if (gone) {
            fprintf(stderr,
                    "tq pool: the fork server ended before its "
                    "children were ready (run with "
                    "tq_pool_options_t.verbose for its log)\n");
            return TQ_ELOST;
        }
        if (s_now() >= until) {
            fprintf(stderr, "tq pool: %d of %d children ready after %d ms\n",
                    n < 0 ? 0 : n, self->processes, S_READY_WAIT_MS);
            return TQ_ETIMEDOUT;
        }
        s_sleep_ms(delay);
        delay = delay < 8 ? delay * 2 : 8;
    }
}

/* The names the children provide: the program's, the built-ins, the chunk
   task. Only names matter here. */
static int
s_names(tq_pool_t *self, const tq_registry_t *registry)
{
    self->names = tq_registry_new();
    tq_registry_t *builtins = tq_registry_new();
    int rc = self->names && builtins ? tq_registry_add_builtins(builtins)
                                     : TQ_ENOMEM;
    const tq_registry_t *from[] = {registry, builtins};
    for (size_t k = 0; k < 2 && rc == TQ_OK; k++)
        for (size_t i = 0; from[k] && i < tq_registry_size(from[k]); i++) {
            const char *name = tq_registry_name(from[k], i);
            void *arg;
            tq_task_fn *fn = tq_registry_lookup(from[k], name, &arg);
            if (!tq_registry_lookup(self->names, name, NULL))
                rc = tq_registry_add(self->names, name, fn, NULL);
        }
    tq_registry_destroy(&builtins);
    if (rc == TQ_OK) /* any function: only the name is looked up */
        rc = tq_registry_add(self->names, TQ_POOL_CHUNK_TASK,
                             tq_registry_lookup(self->names, "tq.echo", NULL),
                             NULL);
    return rc;
}

tq_pool_t *
tq_pool_new(int processes, const tq_pool_options_t *options)
{
    tq_pool_options_t opts = TQ_POOL_OPTIONS_INIT;
    if (options)
        opts = *options;
    const char *verbose = getenv("TQ_POOL_VERBOSE");
    if (verbose && *verbose && strcmp(verbose, "0") != 0)
        opts.verbose = true; /* the server's log, to see why */
    if (opts.maxtasksperchild < 0 || opts.prefetch < 0 ||
        opts.prefetch > 65535 || opts.max_lost < 0) {
        fprintf(stderr, "tq pool: invalid options\n");
        return NULL;
    }
    if (processes <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        processes = cpus > 0 ? (int)cpus : 1;
    }
    tq_pool_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->processes = processes;
    self->server_fd = -1;
    self->chunksize = opts.chunksize;
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);
    if (s_names(self, opts.registry) != TQ_OK) {
        fprintf(stderr, "tq pool: cannot copy the task names\n");
        goto fail;
    }

    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp || strlen(tmp) > 64)
        tmp = "/tmp"; /* ipc paths are limited to about 100 bytes */
    snprintf(self->dir, sizeof self->dir, "%s/tq-pool-XXXXXX", tmp);
    if (!mkdtemp(self->dir)) {
        fprintf(stderr, "tq pool: mkdtemp %s: %s\n", self->dir,
                strerror(errno));
        self->dir[0] = '\0';
        goto fail;
    }
    snprintf(self->client_ep, sizeof self->client_ep, "ipc://%s/clients",
             self->dir);
    snprintf(self->worker_ep, sizeof self->worker_ep, "ipc://%s/workers",
             self->dir);

    char error[1024];
    tq_pool_server_config_t sc = {
        .worker_endpoint = self->worker_ep,
        .client_endpoint = self->client_ep,
        .dir = self->dir,
        .processes = processes,
        .prefetch = opts.prefetch,
        .maxtasksperchild = opts.maxtasksperchild,
        .verbose = opts.verbose,
        .registry = opts.registry,
        .initializer = opts.initializer,
        .initargs = opts.initargs,
        .initargs_size = opts.initargs_size,
    };
    if (tq_pool_server_encode(&sc, &self->server_config, error, sizeof error) !=
        TQ_OK) {
        fprintf(stderr, "tq pool: %s\n", error);
        goto fail;
    }

    tq_broker_config_t config;
    memset(&config, 0, sizeof config);
    config.client_endpoint = self->client_ep;
    config.worker_endpoint = self->worker_ep;
    /* nobody fetches by id in a pool: a result leaves the broker once it
       reached its handle, and the handle's destroy frees it */
    config.result_ttl_s = 0;
    /* its clients are tq's library only (ours, the children's): a task
       that ends within the window is acknowledged by its RESULT, saving
       a SUBMITTED and a wakeup of the client per short task (PROTOCOL.md
       5.1, item 2) */
    config.ack_fold_ms = S_ACK_FOLD_MS;
    config.max_lost = opts.max_lost > 0 ? opts.max_lost : 1;
    config.quiet = !opts.verbose;
    /* a caller of tq_pool_apply runs the loop while it waits (s_lead) */
    config.leadable = true;
    /* the pool's client reaches the broker over inproc: one context for
       both, and no I/O thread on the way (tasks in the children, which
       open their own clients, come over ipc) */
    config.context = tq_client_context();
    if (!config.context) {
        fprintf(stderr, "tq pool: no ZeroMQ context: %s\n", strerror(errno));
        goto fail;
    }
    /* never reused: a closed socket's inproc name may linger a moment */
    static atomic_uint pools;
    snprintf(self->inproc_ep, sizeof self->inproc_ep, "inproc://tq-pool-%ld-%u",
             (long)getpid(), atomic_fetch_add(&pools, 1));
    config.client_inproc = self->inproc_ep;
    self->broker = tq_broker_new(&config, error, sizeof error);
    if (!self->broker) {
        fprintf(stderr, "tq pool: %s\n", error);
        goto fail;
    }
    tq_broker_set_local(self->broker, s_local_answer, self);
    if (getrandom(&self->local_prefix, sizeof self->local_prefix, 0) !=
        sizeof self->local_prefix)
        self->local_prefix = (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL);
    /* the pool's threads take no signals: they stay the program's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&self->broker_thread, NULL, s_broker_thread,
                            self->broker);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        fprintf(stderr, "tq pool: pthread_create: %s\n", strerror(rc));
        goto fail;
    }
    self->broker_running = true;
    self->client = tq_client_new(self->inproc_ep);
    if (!self->client)
        goto fail;

    /* the server: a fresh exec, so threads of the program (ours above
       included) leave it nothing locked */
    self->server = tq_pool_server_spawn(&self->server_config, &self->server_fd,
                                        error, sizeof error);
    if (self->server < 0) {
        self->server = 0;
        fprintf(stderr, "tq pool: %s\n", error);
        goto fail;
    }
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&self->monitor, NULL, s_monitor, self);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        fprintf(stderr, "tq pool: pthread_create: %s\n", strerror(rc));
        kill(self->server, SIGKILL);
        waitpid(self->server, NULL, 0);
        self->server = 0;
        goto fail;
    }
    self->monitor_running = true;
    if (s_wait_ready(self) != TQ_OK)
        goto fail;
    self->pid = getpid();
    pthread_once(&s_exit_once, s_register_at_exit);
    pthread_mutex_lock(&s_live_lock);
    self->live_next = s_live_pools;
    s_live_pools = self;
    pthread_mutex_unlock(&s_live_lock);
    return self;
fail:
    s_kill_server(self);
    tq_client_destroy(&self->client);
    s_stop_broker(self);
    s_remove_dir(self);
    tq_buf_free(&self->server_config);
    tq_registry_destroy(&self->names);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    free(self);
    return NULL;
}

void
tq_pool_destroy(tq_pool_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_pool_t *self = *self_p;
    *self_p = NULL;
    /* taking it off the list claims it: a second destroy (the exit
       handler's, racing the program's) finds nothing and returns without
       touching it */
    pthread_mutex_lock(&s_live_lock);
    tq_pool_t **link = &s_live_pools;
    while (*link && *link != self)
        link = &(*link)->live_next;
    bool mine = *link != NULL;
    if (mine)
        *link = self->live_next;
    pthread_mutex_unlock(&s_live_lock);
    if (!mine)
        return;
    if (self->state != S_JOINED)
        tq_pool_terminate(self);
    s_kill_server(self); /* after a join: already reaped */
    s_stop_broker(self);
    /* pending untracked handles end TQ_ECLOSED here */
    tq_client_destroy(&self->client);
    s_remove_dir(self);
    /* no callback can run any more: the client's I/O thread is gone */
    while (self->tracked) {
        s_track_t *t = self->tracked;
        self->tracked = t->next;
        free(t);
    }
    tq_buf_free(&self->server_config);
    tq_registry_destroy(&self->names);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    free(self);
}

const char *
tq_pool_endpoint(const tq_pool_t *self)
{
    /* in a child, the server's environment names its pool */
    return self ? self->client_ep : getenv("TQ_POOL_ENDPOINT");
}

tq_client_t *
tq_pool_task_client(void)
{
    static tq_client_t *client; /* the child's, for its life */
    static pid_t owner;
    const char *endpoint = tq_pool_endpoint(NULL);
    if (!endpoint)
        return NULL;
    if (client && owner == getpid())
        return client;
    /* the first client of a process initialises czmq, which may install
       SIGINT/SIGTERM handlers: the child's own stay (the pool's join stops
       children with SIGTERM) */
    struct sigaction intr, term;
    sigaction(SIGINT, NULL, &intr);
    sigaction(SIGTERM, NULL, &term);
    client = tq_client_new(endpoint);
    sigaction(SIGINT, &intr, NULL);
    sigaction(SIGTERM, &term, NULL);
    owner = getpid();
    return client;
}

tq_client_t *
tq_pool_client(tq_pool_t *self)
{
    assert(self);
    return self->client;
}

int
tq_pool_processes(const tq_pool_t *self)
{
    assert(self);
    return self->processes;
}

pid_t
tq_pool_server_pid(const tq_pool_t *self)
{
    assert(self);
    pthread_mutex_lock((pthread_mutex_t *)&self->lock);
    pid_t pid = self->server;
    pthread_mutex_unlock((pthread_mutex_t *)&self->lock);
    return pid;
}

size_t
tq_pool_pids(const tq_pool_t *self, pid_t *pids, size_t max)
{
    assert(self);
    pid_t server = tq_pool_server_pid(self);
    if (!server)
        return 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0)
            continue;
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[len] = '\0';
        /* pid (comm) state ppid ...: comm may hold spaces and parens */
        char *p = strrchr(line, ')');
        char state;
        long ppid;
        if (!p || sscanf(p + 1, " %c %ld", &state, &ppid) != 2)
            continue;
        if (ppid == server && state != 'Z') {
            if (n < max)
                pids[n] = (pid_t)pid;
            n++;
        }
    }
    closedir(d);
    return n;
}

tq_result_t *
tq_pool_apply_async(tq_pool_t *self, const char *task,
                    const tq_options_t *options, const char *picture, ...)
{
    assert(self);
    va_list ap;
    va_start(ap, picture);
    tq_result_t *r = s_vsubmit(self, task, options, picture, ap);
    va_end(ap);
    return r;
}

tq_result_t *
tq_pool_apply(tq_pool_t *self, const char *task, const tq_options_t *options,
              const char *picture, ...)
{
    assert(self);
    va_list ap;
    va_start(ap, picture);
    tq_result_t *r = s_vapply(self, task, options, -1, picture, ap);
    va_end(ap);
    return r;
}

tq_result_t *
tq_pool_apply_timeout(tq_pool_t *self, const char *task,
                      const tq_options_t *options, int timeout_ms,
                      const char *picture, ...)
{
    assert(self);
    va_list ap;
    va_start(ap, picture);
    tq_result_t *r = s_vapply(self, task, options, timeout_ms, picture, ap);
    va_end(ap);
    return r;
}

int
tq_pool_close(tq_pool_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    int rc = TQ_OK;
    if (self->state == S_RUNNING)
        self->state = S_CLOSED;
    else if (self->state == S_TERMINATED)
        rc = TQ_ESTATE;
    pthread_mutex_unlock(&self->lock);
    return rc;
}

int
tq_pool_join(tq_pool_t *self, int timeout_ms)
{
    assert(self);
    int64_t until = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    pthread_mutex_lock(&self->lock);
    if (self->state == S_RUNNING) {
        pthread_mutex_unlock(&self->lock);
        return TQ_ESTATE;
    }
    while (self->state == S_CLOSED && self->pending) {
        if (until < 0)
            pthread_cond_wait(&self->cond, &self->lock);
        else {
            int64_t left = until - s_now();
            if (left <= 0)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += left / 1000;
            ts.tv_nsec += (left % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&self->cond, &self->lock, &ts);
        }
    }
    bool done = self->pending == 0 || self->state != S_CLOSED;
    pthread_mutex_unlock(&self->lock);
    if (!done)
        return TQ_ETIMEDOUT;
    if (tq_pool_server_pid(self)) {
        /* every task is done: the children leave on SIGTERM at once */
        s_signal_server(self, SIGTERM);
        int left = S_DRAIN_MS + S_KILL_WAIT_MS;
        if (until >= 0) {
            int64_t d = until - s_now();
            left = d > 0 ? (int)d : 0;
        }
        if (!s_reap_server(self, left))
            return TQ_ETIMEDOUT;
    }
    pthread_mutex_lock(&self->lock);
    if (self->state == S_CLOSED)
        self->state = S_JOINED;
    pthread_mutex_unlock(&self->lock);
    return TQ_OK;
}

int
tq_pool_terminate(tq_pool_t *self)
{
    assert(self);
    pthread_mutex_lock(&self->lock);
    s_state_t was = self->state;
    self->state = S_TERMINATED;
    pthread_mutex_unlock(&self->lock);
    if (was == S_TERMINATED)
        return TQ_OK;
    s_cancel_pending(self);
    s_kill_server(self);
    s_stop_broker(self);
    return TQ_OK;
}
