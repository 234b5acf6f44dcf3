/* tq_exec.c - the tq.exec built-in: posix_spawn a command with its output
   on pipes, collect up to TQ_EXEC_OUTPUT_MAX bytes of each, reap it. */
#include "tq_exec.h"
#include "tq_worker_host.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

/* Most argv words a command may have. */
#define S_ARGV_MAX 4096

/* One captured stream: what was kept, and whether bytes were dropped. */
typedef struct {
    char *data; /* malloc'd, size bytes used */
    size_t size; /* bytes kept, <= TQ_EXEC_OUTPUT_MAX */
    size_t capacity; /* bytes allocated */
    bool truncated; /* the command wrote more than the cap */
} s_capture_t;

static void
s_capture_add(s_capture_t *self, const char *bytes, size_t len)
{
    size_t room = TQ_EXEC_OUTPUT_MAX - self->size;
    if (len > room) {
        self->truncated = true;
        len = room;
    }
    if (len == 0)
        return;
    if (self->size + len > self->capacity) {
        size_t want = self->capacity ? self->capacity * 2 : 4096;
        while (want < self->size + len)
            want *= 2;
        if (want > TQ_EXEC_OUTPUT_MAX)
            want = TQ_EXEC_OUTPUT_MAX;
        char *grown = realloc(self->data, want);
        if (!grown) { /* keep what we have; the result says truncated */
            self->truncated = true;
            return;
        }
        self->data = grown;
        self->capacity = want;
    }
    memcpy(self->data + self->size, bytes, len);
    self->size += len;
}

/* Copies a msgpack string or number into a new NUL-terminated word; NULL
   if obj is neither, or a string holds a NUL byte (execvp could not pass
   it on). */
static char *
s_word(const msgpack_object *obj)
{
    char text[64];
    switch (obj->type) {
    case MSGPACK_OBJECT_STR:
        if (memchr(obj->via.str.ptr, 0, obj->via.str.size))
            return NULL;
        return strndup(obj->via.str.ptr, obj->via.str.size);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(text, sizeof text, "%llu", (unsigned long long)obj->via.u64);
        return strdup(text);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(text, sizeof text, "%lld", (long long)obj->via.i64);
        return strdup(text);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        snprintf(text, sizeof text, "%.17g", obj->via.f64);
        return strdup(text);
    default:
        return NULL;
    }
}

static void
s_argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}

/* Builds the argv that args asks for; NULL with *why set if it is not one
   of the three accepted shapes. */
static char **
s_argv(const msgpack_object *args, const char **why)
{
    const msgpack_object *words = args;
    bool shell = false;
    *why = "tq.exec wants [CMD, ARG...], [[CMD, ARG...]] or [\"shell "
           "command\"]";
    if (args->via.array.size == 1) {
        const msgpack_object *only = &args->via.array.ptr[0];
        if (only->type == MSGPACK_OBJECT_ARRAY)
            words = only;
        else if (only->type == MSGPACK_OBJECT_STR)
            shell = true;
        else
            return NULL;
    }
    uint32_t n = shell ? 3 : words->via.array.size;
    if (n == 0 || n > S_ARGV_MAX)
        return NULL;
    char **argv = calloc((size_t)n + 1, sizeof *argv);
    if (!argv)
        return NULL;
    if (shell) {
        argv[0] = strdup("/bin/sh");
        argv[1] = strdup("-c");
        argv[2] = s_word(&words->via.array.ptr[0]);
    } else
        for (uint32_t i = 0; i < n; i++)
            argv[i] = s_word(&words->via.array.ptr[i]);
    for (uint32_t i = 0; i < n; i++)
        if (!argv[i]) {
            *why = "tq.exec: every word must be a string without NUL bytes "
                   "or a number";
            /* free the words made, past the hole too */
            for (uint32_t k = 0; k < n; k++)
                free(argv[k]);
            free(argv);
            return NULL;
        }
    return argv;
}

/* Reads both pipes to EOF into the captures. A signal (the child's SIGTERM
   on drain) interrupts poll; the command is let finish, as other tasks
   are: the hard time limit kills the whole process group anyway. */
static void
s_collect(int out_fd, int err_fd, s_capture_t *out, s_capture_t *err)
{
    struct pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
    s_capture_t *caps[2] = {out, err};
    char buf[65536];
    int open_count = 2;
    while (open_count > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents)
                continue;
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            if (n > 0)
                s_capture_add(caps[i], buf, (size_t)n);
            else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_count--;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
}

/* Starts argv with stdin on /dev/null and stdout/stderr on the write ends;
   returns 0 or an errno value. */
static int
s_spawn(char **argv, int out_w, int err_w, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out_w, 1);
    posix_spawn_file_actions_adddup2(&fa, err_w, 2);
    /* the child ignores SIGPIPE and handles SIGTERM: a command must start
       with the defaults a shell would give it */
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGHUP);
    sigaddset(&defaults, SIGCHLD);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawnp(pid, argv[0], &fa, &attr, argv, environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

static void
s_pack_str(msgpack_packer *pk, const char *key, const char *data, size_t n)
{
    msgpack_pack_str_with_body(pk, key, strlen(key));
    msgpack_pack_str_with_body(pk, data ? data : "", data ? n : 0);
}

static void
s_pack_int(msgpack_packer *pk, const char *key, int value)
{
    msgpack_pack_str_with_body(pk, key, strlen(key));
    msgpack_pack_int(pk, value);
}

/* tq.exec: see tq_exec.h. */
static int
s_exec(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    const char *why;
    char **argv = s_argv(args, &why);
    if (!argv)
        return tq_task_fail(task, "%s", why);

    s_capture_t cap_out = {0}, cap_err = {0};
    int exit_code = 127, sig = 0;
    int out_pipe[2], err_pipe[2];
    if (pipe2(out_pipe, O_CLOEXEC) != 0) {
        int e = errno;
        s_argv_free(argv);
        return tq_task_fail(task, "tq.exec: pipe: %s", strerror(e));
    }
    if (pipe2(err_pipe, O_CLOEXEC) != 0) {
        int e = errno;
        close(out_pipe[0]);
        close(out_pipe[1]);
        s_argv_free(argv);
        return tq_task_fail(task, "tq.exec: pipe: %s", strerror(e));
    }
    pid_t pid;
    int rc = s_spawn(argv, out_pipe[1], err_pipe[1], &pid);
    close(out_pipe[1]);
    close(err_pipe[1]);
    if (rc != 0) {
        /* as a shell says it: the command's failure, not the task's */
        char text[512];
        int n = snprintf(text, sizeof text, "tq.exec: %s: %s\n", argv[0],
                         strerror(rc));
        s_capture_add(&cap_err, text, n > 0 ? (size_t)n : 0);
        close(out_pipe[0]);
        close(err_pipe[0]);
    } else {
        s_collect(out_pipe[0], err_pipe[0], &cap_out, &cap_err);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (WIFEXITED(status))
            exit_code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status)) {
            sig = WTERMSIG(status);
            exit_code = 128 + sig;
        }
    }
    s_argv_free(argv);

    msgpack_pack_map(out, sig ? 5 : 4);
    s_pack_int(out, "exit", exit_code);
    s_pack_str(out, "stdout", cap_out.data, cap_out.size);
    s_pack_str(out, "stderr", cap_err.data, cap_err.size);
    msgpack_pack_str_with_body(out, "truncated", 9);
    if (cap_out.truncated || cap_err.truncated)
        msgpack_pack_true(out);
    else
        msgpack_pack_false(out);
    if (sig)
        s_pack_int(out, "signal", sig);
    free(cap_out.data);
    free(cap_err.data);
    return 0;
}

int
tq_exec_register(tq_registry_t *registry)
{
    return tq_registry_add(registry, "tq.exec", s_exec, NULL);
}
