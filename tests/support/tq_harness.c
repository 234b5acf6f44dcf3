/* tq_harness.c - end-to-end test helpers: real tq processes on loopback
   ports, bounded waits, STATUS decoding, CLI runs, cleanup by pid. */
#include "tq_harness.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

extern char **environ;

#ifndef TQ_BROKER_BIN
#error "TQ_BROKER_BIN must name the tq-broker binary"
#endif
#ifndef TQ_WORKER_BIN
#error "TQ_WORKER_BIN must name the tq-worker binary"
#endif

#define S_MAX_TRACKED 128
#define S_STOP_GRACE_MS 5000
#define S_START_WAIT_MS 5000
#define S_WRAPPED_WAIT_MS 60000 /* start and stop under a wrapper */

/* Every process we spawned and have not reaped: the atexit handler kills
   these so no process outlives a test, even one that failed half-way. */
static pid_t s_tracked[S_MAX_TRACKED];
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static bool s_initialised;

static void
s_track(pid_t pid)
{
    pthread_mutex_lock(&s_lock);
    for (size_t i = 0; i < S_MAX_TRACKED; i++)
        if (s_tracked[i] == 0) {
            s_tracked[i] = pid;
            break;
        }
    pthread_mutex_unlock(&s_lock);
}

static bool
s_untrack(pid_t pid)
{
    bool found = false;
    pthread_mutex_lock(&s_lock);
    for (size_t i = 0; i < S_MAX_TRACKED; i++)
        if (s_tracked[i] == pid) {
            s_tracked[i] = 0;
            found = true;
        }
    pthread_mutex_unlock(&s_lock);
    return found;
}

static bool
s_is_tracked(pid_t pid)
{
    bool found = false;
    pthread_mutex_lock(&s_lock);
    for (size_t i = 0; i < S_MAX_TRACKED; i++)
        if (s_tracked[i] == pid)
            found = true;
    pthread_mutex_unlock(&s_lock);
    return found;
}

static void
s_atexit(void)
{
    tq_harness_kill_all();
}

void
tq_harness_init(void)
{
    if (s_initialised)
        return;
    s_initialised = true;
    signal(SIGPIPE, SIG_IGN);
    /* Orphans of a worker host are re-parented to us rather than to init,
       so a test can see them and the teardown can reap them. */
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        fprintf(stderr, "harness: PR_SET_CHILD_SUBREAPER: %s\n",
                strerror(errno));
    atexit(s_atexit);
}

int64_t
tq_harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
tq_harness_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

pid_t
tq_harness_spawn(char *const argv[], char *const env[], int *out_fd,
                 int *err_fd)
{
    tq_harness_init();
    int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, exec_pipe[2];
    if (out_fd && pipe2(out_pipe, O_CLOEXEC) != 0)
        return -1;
    if (err_fd && pipe2(err_pipe, O_CLOEXEC) != 0) {
        if (out_fd) {
            close(out_pipe[0]);
            close(out_pipe[1]);
        }
        return -1;
    }
    /* Reports a failed exec to us: closed by a successful one. */
    if (pipe2(exec_pipe, O_CLOEXEC) != 0)
        exec_pipe[0] = exec_pipe[1] = -1;
    char *const *envp = env ? env : environ;
    pid_t parent = getpid();
    /* fork+exec rather than posix_spawn: the child asks for SIGKILL when we
       die (PR_SET_PDEATHSIG), so even a test killed by ctest's timeout
       leaves no broker or worker behind. Only system calls run between fork
       and exec, as the caller may have threads. */
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != parent)
            _exit(127);
        if (out_fd)
            dup2(out_pipe[1], 1);
        if (err_fd)
            dup2(err_pipe[1], 2);
        execve(argv[0], argv, envp);
        int err = errno;
        if (exec_pipe[1] >= 0 && write(exec_pipe[1], &err, sizeof err) < 0)
            _exit(126);
        _exit(127);
    }
    int fork_errno = errno;
    if (out_fd)
        close(out_pipe[1]);
    if (err_fd)
        close(err_pipe[1]);
    if (exec_pipe[1] >= 0)
        close(exec_pipe[1]);
    int exec_errno = 0;
    if (pid > 0 && exec_pipe[0] >= 0) {
        ssize_t n;
        do
            n = read(exec_pipe[0], &exec_errno, sizeof exec_errno);
        while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof exec_errno)
            exec_errno = 0;
    }
    if (exec_pipe[0] >= 0)
        close(exec_pipe[0]);
    if (pid < 0 || exec_errno) {
        fprintf(stderr, "harness: cannot start %s: %s\n", argv[0],
                strerror(pid < 0 ? fork_errno : exec_errno));
        if (pid > 0)
            waitpid(pid, NULL, 0);
        if (out_fd)
            close(out_pipe[0]);
        if (err_fd)
            close(err_pipe[0]);
        return -1;
    }
    s_track(pid);
    if (out_fd)
        *out_fd = out_pipe[0];
    if (err_fd)
        *err_fd = err_pipe[0];
    return pid;
}

/* Copies the broker's later stdout to our stderr until EOF, so a chatty
   broker never blocks on a full pipe and its lines show in test logs. */
static void *
s_drain(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(2, buf + off, (size_t)(n - off));
            if (w <= 0)
                break;
            off += w;
        }
    }
    return NULL;
}

/* The broker's stderr, copied to ours and appended to a log file. */
typedef struct {
    pthread_t thread;
    int fd; /* read end of the broker's stderr pipe */
    int file; /* the log file, appended */
} s_tee_t;

/* Copies the broker's stderr to ours and to the log file until EOF, so a
   test can read the broker's log lines (recovery, FATAL) from the file. */
static void *
s_tee(void *arg)
{
    s_tee_t *tee = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(tee->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        /* each copy is best effort: a failed one must not stop the other */
        ssize_t to_file = write(tee->file, buf, (size_t)n);
        ssize_t to_err = write(2, buf, (size_t)n);
        (void)to_file;
        (void)to_err;
    }
    return NULL;
}

/* The words of the environment variable var (the first one a path):
   $TQ_TEST_BROKER_WRAPPER, which every broker is started under, or
   $TQ_TEST_WORKER_WRAPPER for worker hosts, e.g. "/usr/bin/valgrind
   --error-exitcode=9 --leak-check=full": stored into argv (at most max),
   pointing into copy (size bytes, the caller's). Returns how many. */
static size_t
s_wrapper(const char *var, const char **argv, size_t max, char *copy,
          size_t size)
{
    const char *env = getenv(var);
    if (!env || !*env)
        return 0;
    snprintf(copy, size, "%s", env);
    size_t count = 0;
    char *save = NULL;
    for (char *word = strtok_r(copy, " \t", &save); word && count < max;
         word = strtok_r(NULL, " \t", &save))
        argv[count++] = word;
    return count;
}

/* Words put before every broker and worker host (tq_harness_set_prefix). */
static const char *const *s_prefix;

void
tq_harness_set_prefix(const char *const prefix[])
{
    s_prefix = prefix;
}

/* Stores the prefix words into argv (at most max); returns how many. */
static size_t
s_add_prefix(const char **argv, size_t max)
{
    size_t count = 0;
    for (size_t i = 0; s_prefix && s_prefix[i] && count < max; i++)
        argv[count++] = s_prefix[i];
    return count;
}

/* Starts the broker on the given endpoints; see tq_harness_broker_start_on. */
static int
s_broker_start(tq_harness_broker_t *self, const char *clients_ep,
               const char *workers_ep, const char *const extra[],
               const char *err_log)
{
    memset(self, 0, sizeof *self);
    self->out_fd = -1;
    const char *argv[80];
    static char words[1024];
    size_t argc = s_add_prefix(argv, 16);
    size_t wrapped = s_wrapper("TQ_TEST_BROKER_WRAPPER", argv + argc, 16, words,
                               sizeof words);
    argc += wrapped;
    /* a wrapped broker (valgrind) is slow to start and to exit */
    int wait_ms = wrapped ? S_WRAPPED_WAIT_MS : S_START_WAIT_MS;
    argv[argc++] = TQ_BROKER_BIN;
    argv[argc++] = "--clients";
    argv[argc++] = clients_ep;
    argv[argc++] = "--workers";
    argv[argc++] = workers_ep;
    bool store_chosen = false;
    for (size_t i = 0; extra && extra[i] && argc < 77; i++) {
        argv[argc++] = extra[i];
        if (strcmp(extra[i], "--data") == 0 ||
            strcmp(extra[i], "--store") == 0 ||
            strcmp(extra[i], "--no-persist") == 0)
            store_chosen = true;
    }
    /* a test that does not choose a store runs in memory, so that no test
       sees another's tasks in a shared ./tq-data */
    if (!store_chosen)
        argv[argc++] = "--no-persist";
    argv[argc] = NULL;
    int err_fd = -1;
    pid_t pid = tq_harness_spawn((char *const *)argv, NULL, &self->out_fd,
                                 err_log ? &err_fd : NULL);
    if (pid < 0)
        return -1;
    self->pid = pid;
    if (err_log) {
        /* started before the first line is read: a broker that refuses to
           start says why on stderr, and the test reads it from the file */
        s_tee_t *tee = calloc(1, sizeof *tee);
        if (tee) {
            tee->fd = err_fd;
            tee->file =
                open(err_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        }
        if (tee && tee->file >= 0 &&
            pthread_create(&tee->thread, NULL, s_tee, tee) == 0) {
            self->err_drain = tee;
        } else {
            if (tee && tee->file >= 0)
                close(tee->file);
            free(tee);
            close(err_fd);
        }
    }

    /* The first line names the bound endpoints; read it byte-wise-bounded
       so nothing after it is lost. */
    char line[2 * TQ_HARNESS_EP_MAX + 64];
    size_t len = 0;
    int64_t deadline = tq_harness_now_ms() + wait_ms;
    bool got_line = false;
    while (!got_line && len < sizeof line - 1) {
        int64_t left = deadline - tq_harness_now_ms();
        if (left <= 0)
            break;
        struct pollfd pfd = {self->out_fd, POLLIN, 0};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        ssize_t n = read(self->out_fd, line + len, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (line[len] == '\n')
            got_line = true;
        else
            len++;
    }
    line[len] = '\0';
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    if (!got_line ||
        sscanf(line, "tq-broker: clients %255s workers %255s", clients,
               workers) != 2 ||
        strchr(clients, '*') || strchr(workers, '*')) {
        fprintf(stderr,
                "harness: broker pid %d did not announce its "
                "endpoints in %d ms (first line: \"%s\")\n",
                (int)pid, wait_ms, line);
        tq_harness_broker_stop(self);
        return -1;
    }
    snprintf(self->clients, sizeof self->clients, "%s", clients);
    snprintf(self->workers, sizeof self->workers, "%s", workers);
    pthread_t *thread = malloc(sizeof *thread);
    if (thread &&
        pthread_create(thread, NULL, s_drain, (void *)(intptr_t)self->out_fd) ==
            0)
        self->drain = thread;
    else
        free(thread);
    return 0;
}

int
tq_harness_broker_start(tq_harness_broker_t *self, const char *const extra[])
{
    return s_broker_start(self, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", extra,
                          NULL);
}

int
tq_harness_broker_start_on(tq_harness_broker_t *self, const char *clients,
                           const char *workers, const char *const extra[],
                           const char *err_log)
{
    return s_broker_start(self, clients, workers, extra, err_log);
}

int
tq_harness_broker_stop(tq_harness_broker_t *self)
{
    int status = -1;
    /* under a wrapper (valgrind's leak check) exiting takes a while */
    if (self->pid > 0 && getenv("TQ_TEST_BROKER_WRAPPER") &&
        kill(self->pid, SIGTERM) == 0 &&
        tq_harness_wait_exit(self->pid, S_WRAPPED_WAIT_MS, &status) == 0)
        self->pid = 0;
    if (self->pid > 0)
        status = tq_harness_stop(self->pid);
    self->pid = 0;
    if (self->drain) {
        /* The broker is gone, so its stdout reaches EOF and the thread
           ends; a grandchild holding the pipe would keep it open, so the
           join only follows a confirmed exit. */
        pthread_join(*(pthread_t *)self->drain, NULL);
        free(self->drain);
        self->drain = NULL;
    }
    if (self->err_drain) {
        s_tee_t *tee = self->err_drain;
        pthread_join(tee->thread, NULL);
        close(tee->fd);
        close(tee->file);
        free(tee);
        self->err_drain = NULL;
    }
    /* > 0: a zeroed struct has 0 here, and stdin is never our pipe. */
    if (self->out_fd > 0)
        close(self->out_fd);
    self->out_fd = -1;
    return status;
}

pid_t
tq_harness_worker_start(const char *endpoint, int children,
                        const char *const extra[])
{
    char count[16];
    snprintf(count, sizeof count, "%d", children);
    const char *argv[80];
    static char words[1024];
    size_t argc = s_add_prefix(argv, 16);
    argc += s_wrapper("TQ_TEST_WORKER_WRAPPER", argv + argc, 16, words,
                      sizeof words);
    argv[argc++] = TQ_WORKER_BIN;
    argv[argc++] = "--broker";
    argv[argc++] = endpoint;
    argv[argc++] = "-c";
    argv[argc++] = count;
    for (size_t i = 0; extra && extra[i] && argc < 78; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    return tq_harness_spawn((char *const *)argv, NULL, NULL, NULL);
}

int
tq_harness_wait_exit(pid_t pid, int timeout_ms, int *status)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t rc = waitpid(pid, &st, WNOHANG);
        if (rc == pid) {
            s_untrack(pid);
            if (status)
                *status = st;
            return 0;
        }
        if (rc < 0 && errno != EINTR) {
            s_untrack(pid);
            return -1;
        }
        if (tq_harness_now_ms() >= deadline)
            return -1;
        tq_harness_sleep_ms(5);
    }
}

int
tq_harness_stop(pid_t pid)
{
    if (pid <= 0 || !s_is_tracked(pid))
        return -1;
    int status = 0;
    kill(pid, SIGTERM);
    if (tq_harness_wait_exit(pid, S_STOP_GRACE_MS, &status) == 0)
        return status;
    fprintf(stderr, "harness: pid %d ignored SIGTERM for %d ms; SIGKILL\n",
            (int)pid, S_STOP_GRACE_MS);
    kill(pid, SIGKILL);
    if (tq_harness_wait_exit(pid, S_STOP_GRACE_MS, &status) == 0)
        return status;
    return -1;
}

/* Reads state and ppid from /proc/pid/stat; the command name may hold
   spaces and parentheses, so parsing starts after the last ')'. */
static int
s_stat(pid_t pid, char *state, pid_t *ppid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *file = fopen(path, "re");
    if (!file)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, file);
    fclose(file);
    buf[n] = '\0';
    char *close_paren = strrchr(buf, ')');
    int parent = 0;
    if (!close_paren || sscanf(close_paren + 1, " %c %d", state, &parent) != 2)
        return -1;
    *ppid = parent;
    return 0;
}

static size_t
s_children(pid_t ppid, pid_t *pids, size_t max, bool zombies)
{
    DIR *dir = opendir("/proc");
    if (!dir)
        return 0;
    size_t count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (!isdigit((unsigned char)entry->d_name[0]))
            continue;
        pid_t pid = (pid_t)atoi(entry->d_name);
        char state = 0;
        pid_t parent = 0;
        if (s_stat(pid, &state, &parent) != 0 || parent != ppid)
            continue;
        if (state == 'Z' && !zombies)
            continue;
        if (count < max)
            pids[count] = pid;
        count++;
    }
    closedir(dir);
    return count;
}

size_t
tq_harness_children(pid_t ppid, pid_t *pids, size_t max)
{
    return s_children(ppid, pids, max, false);
}

bool
tq_harness_alive(pid_t pid)
{
    char state = 0;
    pid_t parent = 0;
    return s_stat(pid, &state, &parent) == 0 && state != 'Z';
}

pid_t
tq_harness_ppid(pid_t pid)
{
    char state = 0;
    pid_t parent = 0;
    if (s_stat(pid, &state, &parent) != 0)
        return -1;
    return parent;
}

void
tq_harness_kill_all(void)
{
    pid_t pids[S_MAX_TRACKED];
    size_t count = 0;
    pthread_mutex_lock(&s_lock);
    for (size_t i = 0; i < S_MAX_TRACKED; i++)
        if (s_tracked[i] > 0)
            pids[count++] = s_tracked[i];
    pthread_mutex_unlock(&s_lock);
    for (size_t i = 0; i < count; i++) {
        kill(pids[i], SIGKILL);
        tq_harness_wait_exit(pids[i], S_STOP_GRACE_MS, NULL);
    }
    /* Orphans re-parented to us (we are a subreaper): a dead supervisor's
       children, reaped here so none outlives the test. A few rounds, since
       killing one may orphan another. */
    for (int round = 0; round < 5; round++) {
        pid_t orphans[256];
        size_t n = s_children(getpid(), orphans, 256, true);
        if (n > 256)
            n = 256;
        size_t reaped = 0;
        for (size_t i = 0; i < n; i++) {
            if (s_is_tracked(orphans[i]))
                continue;
            kill(orphans[i], SIGKILL);
            int64_t deadline = tq_harness_now_ms() + S_STOP_GRACE_MS;
            while (waitpid(orphans[i], NULL, WNOHANG) == 0 &&
                   tq_harness_now_ms() < deadline)
                tq_harness_sleep_ms(5);
            reaped++;
        }
        if (reaped == 0)
            break;
    }
}

int
tq_harness_status(tq_client_t *client, tq_harness_status_t *self,
                  int timeout_ms)
{
    memset(self, 0, sizeof *self);
    int rc = tq_client_status(client, &self->buf, timeout_ms);
    if (rc != TQ_OK)
        return rc;
    msgpack_unpacked_init(&self->unpacked);
    size_t off = 0;
    if (msgpack_unpack_next(&self->unpacked, self->buf.data, self->buf.size,
                            &off) != MSGPACK_UNPACK_SUCCESS ||
        off != self->buf.size ||
        self->unpacked.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&self->unpacked);
        tq_buf_free(&self->buf);
        memset(self, 0, sizeof *self);
        return TQ_EPROTO;
    }
    self->root = &self->unpacked.data;
    return TQ_OK;
}

void
tq_harness_status_free(tq_harness_status_t *self)
{
    if (self->root)
        msgpack_unpacked_destroy(&self->unpacked);
    tq_buf_free(&self->buf);
    memset(self, 0, sizeof *self);
}

bool
tq_harness_str_eq(const msgpack_object *obj, const char *s)
{
    size_t len = strlen(s);
    return obj && obj->type == MSGPACK_OBJECT_STR && obj->via.str.size == len &&
        memcmp(obj->via.str.ptr, s, len) == 0;
}

const msgpack_object *
tq_harness_map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++)
        if (tq_harness_str_eq(&map->via.map.ptr[i].key, key))
            return &map->via.map.ptr[i].val;
    return NULL;
}

uint64_t
tq_harness_map_uint(const msgpack_object *map, const char *key, uint64_t def)
{
    const msgpack_object *val = tq_harness_map_get(map, key);
    if (!val || val->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return def;
    return val->via.u64;
}

uint64_t
tq_harness_counter(const tq_harness_status_t *self, const char *name)
{
    const msgpack_object *counters = tq_harness_map_get(self->root, "counters");
    return tq_harness_map_uint(counters, name, UINT64_MAX);
}

const msgpack_object *
tq_harness_workers(const tq_harness_status_t *self, uint32_t *count)
{
    const msgpack_object *workers = tq_harness_map_get(self->root, "workers");
    if (!workers || workers->type != MSGPACK_OBJECT_ARRAY) {
        *count = 0;
        return NULL;
    }
    *count = workers->via.array.size;
    return workers;
}

/* The element of array `list` of maps whose `key` equals value. */
static const msgpack_object *
s_find(const msgpack_object *list, const char *key, const char *value)
{
    if (!list || list->type != MSGPACK_OBJECT_ARRAY)
        return NULL;
    for (uint32_t i = 0; i < list->via.array.size; i++) {
        const msgpack_object *item = &list->via.array.ptr[i];
        if (tq_harness_str_eq(tq_harness_map_get(item, key), value))
            return item;
    }
    return NULL;
}

const msgpack_object *
tq_harness_queue(const tq_harness_status_t *self, const char *name)
{
    return s_find(tq_harness_map_get(self->root, "queues"), "name", name);
}

const msgpack_object *
tq_harness_unserved(const tq_harness_status_t *self, const char *task)
{
    return s_find(tq_harness_map_get(self->root, "unserved"), "task", task);
}

int64_t
tq_harness_queue_waiting(tq_client_t *client, const char *queue)
{
    tq_harness_status_t st;
    if (tq_harness_status(client, &st, 3000) != TQ_OK)
        return -1;
    const msgpack_object *q = tq_harness_queue(&st, queue);
    int64_t waiting = q ? (int64_t)tq_harness_map_uint(q, "waiting", 0) : 0;
    tq_harness_status_free(&st);
    return waiting;
}

int
tq_harness_wait_workers(tq_client_t *client, uint32_t children, pid_t ppid,
                        int timeout_ms)
{
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    uint32_t last = UINT32_MAX;
    while (tq_harness_now_ms() < deadline) {
        tq_harness_status_t status;
        int64_t left = deadline - tq_harness_now_ms();
        if (tq_harness_status(client, &status,
                              (int)(left < 1000 ? left : 1000)) == TQ_OK) {
            uint32_t count = 0, matching = 0;
            const msgpack_object *workers = tq_harness_workers(&status, &count);
            for (uint32_t i = 0; i < count; i++) {
                const msgpack_object *w = &workers->via.array.ptr[i];
                if ((ppid <= 0 ||
                     tq_harness_map_uint(w, "ppid", 0) == (uint64_t)ppid) &&
                    tq_harness_map_uint(w, "pid", 0) > 0)
                    matching++;
            }
            tq_harness_status_free(&status);
            last = matching;
            if (matching == children)
                return 0;
        }
        tq_harness_sleep_ms(20);
    }
    fprintf(stderr, "harness: %u worker children expected, status listed %d\n",
            children, last == UINT32_MAX ? -1 : (int)last);
    return -1;
}

/* Appends what fd has to *buf; returns false at EOF or error. */
static bool
s_read_into(int fd, char **buf, size_t *len, size_t *cap)
{
    if (*cap - *len < 4097) {
        size_t ncap = *cap * 2 + 8192;
        char *grown = realloc(*buf, ncap);
        if (!grown)
            return false;
        *buf = grown;
        *cap = ncap;
    }
    ssize_t n = read(fd, *buf + *len, 4096);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    if (n <= 0)
        return false;
    *len += (size_t)n;
    (*buf)[*len] = '\0';
    return true;
}

int
tq_harness_run(char *const argv[], const char *broker, int timeout_ms,
               tq_harness_run_t *run)
{
    memset(run, 0, sizeof *run);
    run->exit_code = -1;
    /* The environment is built here, not in the child: the caller may have
       threads (a client's I/O thread), so the child only execs. */
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    char *broker_var = NULL;
    if (!env)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "TQ_BROKER=", 10) != 0)
            env[k++] = environ[i];
    if (broker) {
        size_t size = strlen(broker) + 11;
        broker_var = malloc(size);
        if (broker_var) {
            snprintf(broker_var, size, "TQ_BROKER=%s", broker);
            env[k++] = broker_var;
        }
    }
    env[k] = NULL;
    int out_fd = -1, err_fd = -1;
    pid_t pid = tq_harness_spawn(argv, env, &out_fd, &err_fd);
    free(env);
    free(broker_var);
    if (pid < 0)
        return -1;

    size_t out_len = 0, out_cap = 0, err_len = 0, err_cap = 0;
    run->out = calloc(1, 1);
    run->err = calloc(1, 1);
    bool out_open = true, err_open = true;
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while ((out_open || err_open) && tq_harness_now_ms() < deadline) {
        struct pollfd pfd[2] = {{out_open ? out_fd : -1, POLLIN, 0},
                                {err_open ? err_fd : -1, POLLIN, 0}};
        int64_t left = deadline - tq_harness_now_ms();
        int rc = poll(pfd, 2, (int)(left > 0 ? left : 0));
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        if (out_open && pfd[0].revents)
            out_open = s_read_into(out_fd, &run->out, &out_len, &out_cap);
        if (err_open && pfd[1].revents)
            err_open = s_read_into(err_fd, &run->err, &err_len, &err_cap);
    }
    close(out_fd);
    close(err_fd);
    int64_t left = deadline - tq_harness_now_ms();
    int status = 0;
    if (tq_harness_wait_exit(pid, (int)(left > 0 ? left : 0), &status) != 0) {
        fprintf(stderr, "harness: %s ran past %d ms; SIGKILL\n", argv[0],
                timeout_ms);
        kill(pid, SIGKILL);
        tq_harness_wait_exit(pid, S_STOP_GRACE_MS, NULL);
        run->exit_code = -1;
        return 0;
    }
    if (WIFEXITED(status))
        run->exit_code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        run->exit_code = 128 + WTERMSIG(status);
    return 0;
}

void
tq_harness_run_free(tq_harness_run_t *run)
{
    free(run->out);
    free(run->err);
    run->out = run->err = NULL;
}

void *
tq_harness_router(void *ctx, char *endpoint, size_t size, int timeout_ms)
{
    void *socket = zmq_socket(ctx, ZMQ_ROUTER);
    if (!socket)
        return NULL;
    int linger = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    const char *ep = endpoint[0] ? endpoint : "tcp://127.0.0.1:*";
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    while (zmq_bind(socket, ep) != 0) {
        if (tq_harness_now_ms() > deadline) {
            zmq_close(socket);
            return NULL;
        }
        tq_harness_sleep_ms(20);
    }
    size_t len = size;
    if (zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, endpoint, &len) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

int
tq_harness_free_endpoint(char *endpoint, size_t size)
{
    void *ctx = zmq_ctx_new();
    if (!ctx)
        return -1;
    endpoint[0] = '\0';
    void *socket = tq_harness_router(ctx, endpoint, size, 0);
    if (socket)
        zmq_close(socket);
    zmq_ctx_term(ctx);
    return socket ? 0 : -1;
}

int
tq_harness_env_start(tq_harness_env_t *self, const char *const extra[])
{
    memset(self, 0, sizeof *self);
    if (tq_harness_broker_start(&self->broker, extra) != 0)
        return -1;
    self->client = tq_client_new(self->broker.clients);
    if (!self->client) {
        tq_harness_broker_stop(&self->broker);
        return -1;
    }
    return 0;
}

pid_t
tq_harness_env_add_worker(tq_harness_env_t *self, int children,
                          const char *const extra[], bool wait)
{
    if (self->worker_count >= TQ_HARNESS_MAX_WORKERS)
        return -1;
    pid_t pid = tq_harness_worker_start(self->broker.workers, children, extra);
    if (pid < 0)
        return -1;
    self->workers[self->worker_count++] = pid;
    if (wait &&
        tq_harness_wait_workers(self->client, (uint32_t)children, pid, 10000) !=
            0)
        return -1;
    return pid;
}

int
tq_harness_env_stop_worker(tq_harness_env_t *self, pid_t pid)
{
    for (size_t i = 0; i < self->worker_count; i++)
        if (self->workers[i] == pid) {
            self->workers[i] = self->workers[--self->worker_count];
            return tq_harness_stop(pid);
        }
    return -1;
}

void
tq_harness_env_stop(tq_harness_env_t *self)
{
    /* Workers first, so they leave a broker that still answers; the client
       last-but-one so its pending results end with TQ_ECLOSED. */
    while (self->worker_count > 0)
        tq_harness_stop(self->workers[--self->worker_count]);
    tq_client_destroy(&self->client);
    tq_harness_broker_stop(&self->broker);
    tq_harness_kill_all();
}

int
tq_harness_env_setup(void **state)
{
    tq_harness_init();
    tq_harness_env_t *env = calloc(1, sizeof *env);
    if (!env)
        return -1;
    *state = env;
    return 0;
}

int
tq_harness_env_teardown(void **state)
{
    tq_harness_env_t *env = *state;
    tq_harness_env_stop(env);
    free(env);
    *state = NULL;
    return 0;
}

int
tq_harness_tempdir(char *dir, size_t size, const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, size, "%s/tq-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    return mkdtemp(dir) ? 0 : -1;
}

static int
s_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void
tq_harness_rmtree(const char *dir)
{
    nftw(dir, s_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *
tq_harness_read_fd(int fd, int timeout_ms)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (!buf)
        abort();
    buf[0] = '\0';
    int64_t deadline = tq_harness_now_ms() + timeout_ms;
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int64_t left = deadline - tq_harness_now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            break;
        if (!s_read_into(fd, &buf, &len, &cap))
            break;
    }
    return buf;
}

tq_broker_t *
tq_harness_broker_new(tq_broker_config_t config)
{
    if (!config.client_endpoint)
        config.client_endpoint = "tcp://127.0.0.1:*";
    if (!config.worker_endpoint)
        config.worker_endpoint = "tcp://127.0.0.1:*";
    if (!config.result_ttl_s)
        config.result_ttl_s = 60;
    config.quiet = true;
    char error[256];
    tq_broker_t *broker = tq_broker_new(&config, error, sizeof error);
    if (!broker)
        fprintf(stderr, "harness: tq_broker_new: %s\n", error);
    return broker;
}
