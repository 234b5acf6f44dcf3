/* tq_pool.c - the embedded pool: a fork server (the worker supervisor)
   forked first, then a broker thread on private ipc:// endpoints and a
   client; tracked submissions for join, terminate and the AsyncResult. */
#include "tq/tq_pool.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq_broker.h"
#include "tq_client_internal.h"
#include "tq_pool_server.h"
#include "tq_proto.h"

#define S_KILL_WAIT_MS 3000 /* server to kill its children and exit */
#define S_DRAIN_MS 10000 /* server's drain time at join */
#define S_CANCEL_WAIT_MS 3000 /* client to take the CANCELLED results */
#define S_EP_MAX (PATH_MAX + 16)

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
    pid_t server; /* fork server, 0 once reaped */
    tq_broker_t *broker; /* NULL once stopped */
    pthread_t broker_thread;
    bool broker_running;
    tq_client_t *client;
    pthread_mutex_t lock; /* guards tracked, pending, state */
    pthread_cond_t cond; /* pending went down */
    s_track_t *tracked; /* pending tracked submissions */
    size_t pending;
    pid_t pid; /* the process that made it */
    tq_pool_t *live_next; /* s_live_pools */
};

/* Pools not yet destroyed: exit() terminates them, as Python's finalizers
   do, before the client library and czmq tear down the context their
   broker threads and clients use. */
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

struct tq_result_set_t {
    size_t count;
    tq_result_t **results; /* count handles, the set's */
};

struct tq_pool_imap_t {
    tq_result_set_t *set;
    size_t next; /* index of the next handle to hand out */
};

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

/* Waits up to timeout_ms for the fork server to end and reaps it. True once
   it is gone. */
static bool
s_reap_server(tq_pool_t *self, int timeout_ms)
{
    int64_t until = s_now() + timeout_ms;
    while (self->server) {
        int status;
        pid_t pid = waitpid(self->server, &status, WNOHANG);
        if (pid == self->server || (pid < 0 && errno == ECHILD))
            self->server = 0; /* ECHILD: SIGCHLD ignored, reaped for us */
        else if (pid < 0 && errno != EINTR)
            return false;
        else if (s_now() >= until)
            return false;
        else
            s_sleep_ms(2);
    }
    return true;
}

/* Kills the fork server and its children now, bounded, and reaps it. */
static void
s_kill_server(tq_pool_t *self)
{
    if (!self->server)
        return;
    /* two stop signals: the supervisor SIGKILLs every child, reaps them,
       tells the broker and exits; two different signals so they cannot
       merge into one pending signal */
    kill(self->server, SIGINT);
    kill(self->server, SIGTERM);
    if (!s_reap_server(self, S_KILL_WAIT_MS)) {
        /* its children follow it through PR_SET_PDEATHSIG */
        kill(self->server, SIGKILL);
        s_reap_server(self, S_KILL_WAIT_MS);
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
    if (self->broker_running) {
        tq_broker_stop(self->broker);
        pthread_join(self->broker_thread, NULL);
        self->broker_running = false;
    }
    tq_broker_destroy(&self->broker);
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
static tq_result_t *
s_submit(tq_pool_t *self, const char *task, const tq_options_t *options,
         const void *args, size_t size)
{
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
    t->next = self->tracked;
    if (self->tracked)
        self->tracked->prev = t;
    self->tracked = t;
    t->linked = true;
    self->pending++;
    pthread_mutex_unlock(&self->lock);

    tq_result_t *r = tq_apply_async_raw(self->client, task, &opts, args, size);

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
    tq_result_t *r = s_submit(self, task, options, buf.data, buf.size);
    tq_buf_free(&buf);
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

tq_pool_t *
tq_pool_new(int processes, const tq_pool_options_t *options)
{
    tq_pool_options_t opts = TQ_POOL_OPTIONS_INIT;
    if (options)
        opts = *options;
    if (opts.maxtasksperchild < 0 || opts.prefetch < 0 || opts.prefetch > 65535)
        return NULL;
    if (processes <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        processes = cpus > 0 ? (int)cpus : 1;
    }
    tq_pool_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->processes = processes;
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);

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

    /* the fork server first, before this call starts any thread */
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tq pool: fork: %s\n", strerror(errno));
        goto fail;
    }
    if (pid == 0)
        tq_pool_server_run(parent, self->worker_ep, processes, &opts);
    self->server = pid;

    tq_broker_config_t config;
    memset(&config, 0, sizeof config);
    config.client_endpoint = self->client_ep;
    config.worker_endpoint = self->worker_ep;
    config.result_ttl_s = 60; /* nobody fetches by id in a pool */
    config.quiet = opts.quiet;
    /* the pool's client reaches the broker over inproc: one context for
       both, and no I/O thread on the way (tasks in the children, which
       open their own clients, come over ipc) */
    config.context = tq_client_context();
    if (!config.context) {
        fprintf(stderr, "tq pool: no ZeroMQ context: %s\n",
                strerror(errno));
        goto fail;
    }
    /* never reused: a closed socket's inproc name may linger a moment */
    static atomic_uint pools;
    snprintf(self->inproc_ep, sizeof self->inproc_ep, "inproc://tq-pool-%ld-%u",
             (long)getpid(), atomic_fetch_add(&pools, 1));
    config.client_inproc = self->inproc_ep;
    char error[512];
    self->broker = tq_broker_new(&config, error, sizeof error);
    if (!self->broker) {
        fprintf(stderr, "tq pool: %s\n", error);
        goto fail;
    }
    /* the broker thread takes no signals: they stay the program's */
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
    self->pid = getpid();
    pthread_once(&s_exit_once, s_register_at_exit);
    pthread_mutex_lock(&s_live_lock);
    self->live_next = s_live_pools;
    s_live_pools = self;
    pthread_mutex_unlock(&s_live_lock);
    return self;
fail:
    s_kill_server(self);
    s_stop_broker(self);
    s_remove_dir(self);
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
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    free(self);
}

const char *
tq_pool_endpoint(const tq_pool_t *self)
{
    return self->client_ep;
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
    return self->server;
}

size_t
tq_pool_pids(const tq_pool_t *self, pid_t *pids, size_t max)
{
    assert(self);
    if (!self->server)
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
        if (ppid == self->server && state != 'Z') {
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
              int timeout_ms, const char *picture, ...)
{
    assert(self);
    va_list ap;
    va_start(ap, picture);
    tq_result_t *r = s_vsubmit(self, task, options, picture, ap);
    va_end(ap);
    if (r)
        tq_result_wait(r, timeout_ms);
    return r;
}

/* Submits count tasks into a new set; star: any argument arrays, else each
   must be an array of one argument (Python's map calls f(item)). */
static tq_result_set_t *
s_submit_set(tq_pool_t *self, const char *task, const tq_options_t *options,
             const tq_buf_t *items, size_t count, bool star)
{
    if (!task || (count && !items))
        return NULL;
    tq_result_set_t *set = calloc(1, sizeof *set);
    if (!set)
        return NULL;
    set->results = calloc(count ? count : 1, sizeof *set->results);
    if (!set->results) {
        free(set);
        return NULL;
    }
    for (size_t i = 0; i < count; i++) {
        /* map: exactly one argument per item, a one-element array */
        if (!star &&
            (items[i].size < 2 ||
             ((const unsigned char *)items[i].data)[0] != 0x91))
            break;
        tq_result_t *r =
            s_submit(self, task, options, items[i].data, items[i].size);
        if (!r)
            break;
        set->results[set->count++] = r;
    }
    if (set->count < count) {
        tq_result_set_destroy(&set);
        return NULL;
    }
    return set;
}

/* Moves the set's handles into results[] and frees the set. */
static int
s_set_finish(tq_result_set_t *set, tq_result_t **results, int timeout_ms)
{
    if (!set)
        return TQ_ECLOSED;
    int rc = tq_result_set_get(set, timeout_ms);
    for (size_t i = 0; i < set->count; i++)
        results[i] = set->results[i];
    set->count = 0;
    tq_result_set_destroy(&set);
    return rc;
}

int
tq_pool_map(tq_pool_t *self, const char *task, const tq_options_t *options,
            const tq_buf_t *items, size_t count, tq_result_t **results,
            int timeout_ms)
{
    assert(self && results);
    for (size_t i = 0; i < count; i++)
        if (!items || items[i].size < 2 ||
            ((const unsigned char *)items[i].data)[0] != 0x91)
            return TQ_EINVAL;
    return s_set_finish(s_submit_set(self, task, options, items, count, false),
                        results, timeout_ms);
}

int
tq_pool_starmap(tq_pool_t *self, const char *task, const tq_options_t *options,
                const tq_buf_t *args, size_t count, tq_result_t **results,
                int timeout_ms)
{
    assert(self && results);
    return s_set_finish(s_submit_set(self, task, options, args, count, true),
                        results, timeout_ms);
}

tq_result_set_t *
tq_pool_map_async(tq_pool_t *self, const char *task,
                  const tq_options_t *options, const tq_buf_t *items,
                  size_t count)
{
    assert(self);
    return s_submit_set(self, task, options, items, count, false);
}

size_t
tq_result_set_size(const tq_result_set_t *self)
{
    assert(self);
    return self->count;
}

tq_result_t *
tq_result_set_at(const tq_result_set_t *self, size_t index)
{
    assert(self);
    return index < self->count ? self->results[index] : NULL;
}

bool
tq_result_set_ready(const tq_result_set_t *self)
{
    assert(self);
    for (size_t i = 0; i < self->count; i++)
        if (!tq_result_ready(self->results[i]))
            return false;
    return true;
}

int
tq_result_set_get(tq_result_set_t *self, int timeout_ms)
{
    assert(self);
    int64_t until = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    int first = TQ_OK;
    for (size_t i = 0; i < self->count; i++) {
        int left = -1;
        if (until >= 0) {
            int64_t d = until - s_now();
            left = d > 0 ? (int)d : 0;
        }
        if (tq_result_wait(self->results[i], left) != TQ_OK)
            return TQ_ETIMEDOUT;
        int rc = tq_result_code(self->results[i]);
        if (rc != TQ_OK && first == TQ_OK)
            first = rc;
    }
    return first;
}

void
tq_result_set_destroy(tq_result_set_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_result_set_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++)
        tq_result_destroy(&self->results[i]);
    free(self->results);
    free(self);
    *self_p = NULL;
}

tq_pool_imap_t *
tq_pool_imap(tq_pool_t *self, const char *task, const tq_options_t *options,
             const tq_buf_t *items, size_t count)
{
    assert(self);
    tq_pool_imap_t *it = calloc(1, sizeof *it);
    if (!it)
        return NULL;
    it->set = s_submit_set(self, task, options, items, count, false);
    if (!it->set) {
        free(it);
        return NULL;
    }
    return it;
}

int
tq_pool_imap_next(tq_pool_imap_t *self, int timeout_ms, tq_result_t **result_p)
{
    assert(self && result_p);
    if (self->next >= self->set->count)
        return TQ_EEMPTY;
    tq_result_t *r = self->set->results[self->next];
    if (tq_result_wait(r, timeout_ms) != TQ_OK)
        return TQ_ETIMEDOUT;
    self->set->results[self->next++] = NULL;
    *result_p = r;
    return tq_result_code(r);
}

void
tq_pool_imap_destroy(tq_pool_imap_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_result_set_destroy(&(*self_p)->set); /* destroy is NULL-safe per slot */
    free(*self_p);
    *self_p = NULL;
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
    if (self->server) {
        /* every task is done: the children leave on SIGTERM at once */
        kill(self->server, SIGTERM);
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
