/* tq_auth.c - ZAP (RFC 27) handler thread of the broker: checks CURVE keys
   against the allow-list of the endpoint's ZAP domain. zauth is not used
   because it serves czmq's global context (the broker has its own) and
   cannot tell the two endpoints apart. */
#include "tq_auth.h"
#include "tq_log.h"

#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_curve.h"

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_ZAP_FRAMES 7 /* a request: version ... credentials */
#define S_LOG_BURST 20 /* log lines per second about refusals */

/* One allow-list: the certificates of a directory, in a memory zcertstore
   swapped whole on reload. */
typedef struct {
    const char *domain;
    char *dir;
    zcertstore_t *store;
    size_t count;
    struct timespec mtime; /* the directory's, at the last load */
    int64_t loaded_ms;
    unsigned generation; /* s_generation at the last load */
} s_list_t;

struct tq_auth_t {
    void *zap; /* REP on inproc://zeromq.zap.01 */
    int stop_fd; /* eventfd: tq_auth_destroy wakes the thread */
    pthread_t thread;
    bool started;
    s_list_t clients, workers;
    s_list_t admins; /* optional: operator keys, also let in as clients */
    bool has_admins;
    int64_t log_window_ms;
    int log_count;
    uint64_t log_suppressed;
};

static atomic_uint s_generation;
static _Atomic uint64_t s_allowed, s_denied_clients, s_denied_workers,
    s_denied_other, s_reloads;

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Logs about refusals at most S_LOG_BURST lines a second, so a flood of
   bad keys cannot fill the disk; the suppressed count is told later. */
static void s_log(tq_auth_t *self, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static void
s_log(tq_auth_t *self, const char *format, ...)
{
    int64_t now = s_now_ms();
    if (now - self->log_window_ms >= 1000) {
        if (self->log_suppressed)
            tq_log_warning("auth: %llu refusal(s) not logged",
                           (unsigned long long)self->log_suppressed);
        self->log_window_ms = now;
        self->log_count = 0;
        self->log_suppressed = 0;
    }
    if (self->log_count++ >= S_LOG_BURST) {
        self->log_suppressed++;
        return;
    }
    char line[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    tq_log_warning("auth: %s", line);
}

static void
s_list_load(s_list_t *list)
{
    zcertstore_t *store = zcertstore_new(NULL);
    if (!store)
        abort(); /* out of memory: fatal in a daemon (STYLE.md) */
    size_t count = 0;
    struct stat st;
    memset(&list->mtime, 0, sizeof list->mtime);
    DIR *dir = opendir(list->dir);
    if (!dir || fstat(dirfd(dir), &st) != 0) {
        /* an unreadable list is an empty list: fail closed */
        tq_log_error("auth: cannot read %s keys in %s: %s; "
                     "refusing every key there",
                list->domain, list->dir, strerror(errno));
    } else {
        list->mtime = st.st_mtim;
        struct dirent *entry;
        while ((entry = readdir(dir))) {
            const char *name = entry->d_name;
            size_t len = strlen(name);
            if (name[0] == '.' ||
                (len >= 7 && streq(name + len - 7, "_secret")))
                continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", list->dir, name);
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                continue;
            char key[TQ_CURVE_KEY_TEXT], why[256];
            if (tq_curve_public_key(path, key, why, sizeof why) != 0) {
                tq_log_info("auth: skipping %s: %s", path,
                        why);
                continue;
            }
            /* zcertstore asserts on a duplicate key: two copies of one
               certificate must not take the broker down */
            if (zcertstore_lookup(store, key))
                continue;
            zcert_t *cert = zcert_load(path);
            if (cert) {
                zcertstore_insert(store, &cert);
                count++;
            }
        }
    }
    if (dir)
        closedir(dir);
    zcertstore_destroy(&list->store);
    list->store = store;
    if (count != list->count || !list->loaded_ms)
        tq_log_info("auth: %zu %s key(s) from %s", count,
                list->domain, list->dir);
    list->count = count;
    list->loaded_ms = s_now_ms();
    list->generation = atomic_load(&s_generation);
    atomic_fetch_add(&s_reloads, 1);
}

/* Reloads the list if its directory changed, SIGHUP asked for it, or the
   last load is older than TQ_AUTH_RESCAN_MS. */
static void
s_list_refresh(s_list_t *list)
{
    struct stat st;
    bool changed = stat(list->dir, &st) != 0 ||
        st.st_mtim.tv_sec != list->mtime.tv_sec ||
        st.st_mtim.tv_nsec != list->mtime.tv_nsec;
    if (changed || list->generation != atomic_load(&s_generation) ||
        s_now_ms() - list->loaded_ms >= TQ_AUTH_RESCAN_MS)
        s_list_load(list);
}

static bool
s_frame_is(zmq_msg_t *frame, const char *text)
{
    size_t len = strlen(text);
    return zmq_msg_size(frame) == len &&
        memcmp(zmq_msg_data(frame), text, len) == 0;
}

static void
s_send_text(void *socket, const void *data, size_t size, bool more)
{
    zmq_send(socket, data, size, more ? ZMQ_SNDMORE : 0);
}

/* Reads one ZAP request and answers it; anything but a well-formed CURVE
   request on a tq domain is refused, and every request gets a reply (the
   REP socket would jam otherwise). */
static void
s_on_request(tq_auth_t *self)
{
    zmq_msg_t frames[S_ZAP_FRAMES + 1];
    int count = 0;
    int more = 1;
    while (more) {
        zmq_msg_t *frame = &frames[count < S_ZAP_FRAMES ? count : S_ZAP_FRAMES];
        zmq_msg_init(frame);
        if (zmq_msg_recv(frame, self->zap, 0) < 0) {
            zmq_msg_close(frame);
            break;
        }
        more = zmq_msg_more(frame);
        if (count >= S_ZAP_FRAMES)
            zmq_msg_close(frame); /* extra frames: counted, not kept */
        count++;
    }
    int kept = count < S_ZAP_FRAMES ? count : S_ZAP_FRAMES;
    const char *status = "400", *text = "not allowed";
    char key[TQ_CURVE_KEY_TEXT] = "?";
    const char *user = "";
    s_list_t *list = NULL;
    if (count == S_ZAP_FRAMES && s_frame_is(&frames[0], "1.0") &&
        s_frame_is(&frames[5], "CURVE") && zmq_msg_size(&frames[6]) == 32) {
        zmq_z85_encode(key, zmq_msg_data(&frames[6]), 32);
        if (s_frame_is(&frames[2], TQ_CURVE_DOMAIN_CLIENTS))
            list = &self->clients;
        else if (s_frame_is(&frames[2], TQ_CURVE_DOMAIN_WORKERS))
            list = &self->workers;
    }
    /* the user id the broker reads from every message of the connection:
       the key's role and the key itself, so that tasks belong to a key */
    char user_id[16 + TQ_CURVE_KEY_TEXT];
    if (list) {
        s_list_refresh(list);
        zcert_t *cert = zcertstore_lookup(list->store, key);
        const char *role = list == &self->clients ? "client" : "worker";
        if (!cert && list == &self->clients && self->has_admins) {
            s_list_refresh(&self->admins);
            cert = zcertstore_lookup(self->admins.store, key);
            role = "admin";
        }
        if (cert) {
            status = "200";
            text = "OK";
            snprintf(user_id, sizeof user_id, "%s:%s", role, key);
            user = user_id;
            atomic_fetch_add(&s_allowed, 1);
        } else {
            atomic_fetch_add(list == &self->clients ? &s_denied_clients
                                                    : &s_denied_workers,
                             1);
            s_log(self, "refused key %s on %s: not in %s", key, list->domain,
                  list->dir);
        }
    } else {
        atomic_fetch_add(&s_denied_other, 1);
        s_log(self, "refused a handshake: not CURVE on a tq domain");
    }
    /* reply: version, request id, status code, status text, user id,
       metadata */
    s_send_text(self->zap, "1.0", 3, true);
    if (kept >= 2)
        s_send_text(self->zap, zmq_msg_data(&frames[1]),
                    zmq_msg_size(&frames[1]), true);
    else
        s_send_text(self->zap, "", 0, true);
    s_send_text(self->zap, status, 3, true);
    s_send_text(self->zap, text, strlen(text), true);
    s_send_text(self->zap, user, strlen(user), true);
    s_send_text(self->zap, "", 0, false);
    for (int i = 0; i < kept; i++)
        zmq_msg_close(&frames[i]);
}

static void *
s_run(void *arg)
{
    tq_auth_t *self = arg;
    zmq_pollitem_t items[] = {
        {self->zap, 0, ZMQ_POLLIN, 0},
        {NULL, self->stop_fd, ZMQ_POLLIN, 0},
    };
    for (;;) {
        /* bounded so a lost wakeup can never hang tq_auth_destroy */
        int rc = zmq_poll(items, 2, 1000);
        if (rc < 0 && errno != EINTR)
            break;
        if (items[1].revents & ZMQ_POLLIN)
            break;
        if (items[0].revents & ZMQ_POLLIN)
            s_on_request(self);
    }
    return NULL;
}

static int
s_list_init(s_list_t *list, const char *domain, const char *dir, char *error,
            size_t errlen)
{
    list->domain = domain;
    struct stat st;
    if (!dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(error, errlen, "%s keys: %s is not a directory", domain,
                 dir ? dir : "(none)");
        return -1;
    }
    list->dir = strdup(dir);
    if (!list->dir)
        abort();
    s_list_load(list);
    return 0;
}

tq_auth_t *
tq_auth_new(void *ctx, const char *client_keys, const char *worker_keys,
            const char *admin_keys, char *error, size_t errlen)
{
    tq_auth_t *self = calloc(1, sizeof *self);
    if (!self)
        abort();
    self->stop_fd = -1;
    if (s_list_init(&self->clients, TQ_CURVE_DOMAIN_CLIENTS, client_keys, error,
                    errlen) ||
        s_list_init(&self->workers, TQ_CURVE_DOMAIN_WORKERS, worker_keys, error,
                    errlen) ||
        (admin_keys && s_list_init(&self->admins, TQ_CURVE_DOMAIN_CLIENTS,
                                   admin_keys, error, errlen))) {
        tq_auth_destroy(&self);
        return NULL;
    }
    self->has_admins = admin_keys != NULL;
    self->log_window_ms = s_now_ms();
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->zap = zmq_socket(ctx, ZMQ_REP);
    int linger = 0;
    if (self->stop_fd < 0 || !self->zap ||
        zmq_setsockopt(self->zap, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(self->zap, S_ZAP_ENDPOINT) != 0) {
        snprintf(error, errlen, "cannot start the ZAP handler: %s",
                 zmq_strerror(errno));
        tq_auth_destroy(&self);
        return NULL;
    }
    if (pthread_create(&self->thread, NULL, s_run, self) != 0) {
        snprintf(error, errlen, "cannot start the ZAP handler thread");
        tq_auth_destroy(&self);
        return NULL;
    }
    self->started = true;
    return self;
}

void
tq_auth_reload(void)
{
    atomic_fetch_add(&s_generation, 1);
}

void
tq_auth_stats(tq_auth_stats_t *stats)
{
    stats->allowed = atomic_load(&s_allowed);
    stats->denied_clients = atomic_load(&s_denied_clients);
    stats->denied_workers = atomic_load(&s_denied_workers);
    stats->denied_other = atomic_load(&s_denied_other);
    stats->reloads = atomic_load(&s_reloads);
}

void
tq_auth_destroy(tq_auth_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_auth_t *self = *self_p;
    if (self->started) {
        uint64_t one = 1;
        ssize_t rc = write(self->stop_fd, &one, sizeof one);
        (void)rc;
        pthread_join(self->thread, NULL);
    }
    if (self->zap)
        zmq_close(self->zap);
    if (self->stop_fd >= 0)
        close(self->stop_fd);
    zcertstore_destroy(&self->clients.store);
    zcertstore_destroy(&self->workers.store);
    zcertstore_destroy(&self->admins.store);
    free(self->clients.dir);
    free(self->workers.dir);
    free(self->admins.dir);
    free(self);
    *self_p = NULL;
}
