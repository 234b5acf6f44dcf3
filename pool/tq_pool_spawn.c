/* tq_pool_spawn.c - starting the pool's fork server from the program:
   posix_spawn of /proc/self/exe, never a fork of a process that may run
   threads, and its configuration sent down a pipe, with every registered
   function and user pointer written as (loaded object, offset) so the
   fresh image finds the same ones. */
#include "tq_pool_server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define S_ENV "TQ_POOL_SERVER_FD="

typedef struct {
    uintptr_t addr; /* what we look for */
    const char *name; /* the object holding it: "" is the program */
    uintptr_t base; /* its load bias */
    bool found;
} s_find_t;

static int
s_find_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    s_find_t *f = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (f->addr >= start && f->addr < start + ph->p_memsz) {
            f->name = info->dlpi_name ? info->dlpi_name : "";
            f->base = info->dlpi_addr;
            f->found = true;
            return 1;
        }
    }
    return 0;
}

/* Packs p as [object name, offset]; nil for NULL. False if p is in no
   loaded object (heap, stack, mmap). */
static bool
s_pack_loc(msgpack_packer *pk, const void *p)
{
    if (!p)
        return msgpack_pack_nil(pk) == 0;
    s_find_t f = {.addr = (uintptr_t)p};
    dl_iterate_phdr(s_find_cb, &f);
    if (!f.found)
        return false;
    size_t len = strlen(f.name);
    msgpack_pack_array(pk, 2);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, f.name, len);
    msgpack_pack_uint64(pk, (uint64_t)(f.addr - f.base));
    return true;
}

static void
s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

/* The configuration as the server reads it (tq_pool_server.c). */
static int
s_encode(const tq_pool_server_config_t *c, msgpack_sbuffer *sbuf, char *error,
         size_t errlen)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sbuf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 12);
    msgpack_pack_uint32(&pk, 1); /* layout version, same binary both ends */
    s_pack_str(&pk, c->worker_endpoint);
    s_pack_str(&pk, c->dir);
    msgpack_pack_int(&pk, c->processes);
    msgpack_pack_int(&pk, c->prefetch);
    msgpack_pack_int(&pk, c->maxtasksperchild);
    msgpack_pack_int(&pk, c->verbose);
    /* the children inherit the program's stdout buffering, as forks do */
    msgpack_pack_int(&pk, __flbf(stdout) ? 1 : 0);
    void *fn;
    *(tq_pool_init_fn **)&fn = c->initializer;
    if (!s_pack_loc(&pk, fn)) {
        snprintf(error, errlen, "the initializer is in no loaded object");
        return -1;
    }
    if (c->initargs && c->initargs_size) {
        msgpack_pack_bin(&pk, c->initargs_size);
        msgpack_pack_bin_body(&pk, c->initargs, c->initargs_size);
    } else if (!s_pack_loc(&pk, c->initargs)) {
        snprintf(error, errlen,
                 "initargs %p is not in static storage (heap or stack): the "
                 "fork server is a fresh exec of the program and cannot see "
                 "it; set initargs_size to have its bytes copied",
                 c->initargs);
        return -1;
    }
    size_t n = c->registry ? tq_registry_size(c->registry) : 0;
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) {
        const char *name = tq_registry_name(c->registry, i);
        void *arg = NULL;
        tq_task_fn *task = tq_registry_lookup(c->registry, name, &arg);
        *(tq_task_fn **)&fn = task;
        msgpack_pack_array(&pk, 3);
        s_pack_str(&pk, name);
        if (!s_pack_loc(&pk, fn)) {
            snprintf(error, errlen,
                     "task %s: its function is in no loaded "
                     "object",
                     name);
            return -1;
        }
        if (!s_pack_loc(&pk, arg)) {
            snprintf(error, errlen,
                     "task %s: its user pointer %p is not in static storage "
                     "(heap or stack): the fork server is a fresh exec of "
                     "the program and cannot see it; pass NULL, a global or "
                     "a string literal",
                     name, arg);
            return -1;
        }
    }
    s_pack_str(&pk, c->client_endpoint);
    return 0;
}

/* ---- is libtq loaded before main in a fresh exec of the program? ------- */

#define S_MAX_OBJECTS 256

typedef struct {
    const char *name[S_MAX_OBJECTS]; /* dlpi_name, "" for the program */
    const char *soname[S_MAX_OBJECTS]; /* DT_SONAME or NULL */
    const ElfW(Dyn) * dyn[S_MAX_OBJECTS]; /* its dynamic section */
    uintptr_t base[S_MAX_OBJECTS];
    size_t count;
    int ours; /* index of the object holding this code, -1: none */
} s_objects_t;

/* The string table of an object's dynamic section: glibc stores it
   relocated, except in a few objects (the vdso), so both are handled. */
static const char *
s_strtab(const ElfW(Dyn) * dyn, uintptr_t base)
{
    for (; dyn && dyn->d_tag != DT_NULL; dyn++)
        if (dyn->d_tag == DT_STRTAB)
            return (const char *)(dyn->d_un.d_ptr < base
                                      ? base + dyn->d_un.d_ptr
                                      : dyn->d_un.d_ptr);
    return NULL;
}

static int
s_objects_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    s_objects_t *o = data;
    if (o->count == S_MAX_OBJECTS)
        return 1;
    size_t i = o->count++;
    o->name[i] = info->dlpi_name ? info->dlpi_name : "";
    o->base[i] = info->dlpi_addr;
    o->dyn[i] = NULL;
    o->soname[i] = NULL;
    uintptr_t self = (uintptr_t)&tq_pool_server_spawn;
    for (int k = 0; k < info->dlpi_phnum; k++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[k];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_DYNAMIC)
            o->dyn[i] = (const ElfW(Dyn) *)start;
        if (ph->p_type == PT_LOAD && self >= start &&
            self < start + ph->p_memsz)
            o->ours = (int)i;
    }
    const char *strtab = s_strtab(o->dyn[i], o->base[i]);
    for (const ElfW(Dyn) *d = o->dyn[i]; strtab && d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_SONAME)
            o->soname[i] = strtab + d->d_un.d_val;
    return 0;
}

static bool
s_same_object(const s_objects_t *o, size_t i, const char *needed)
{
    if (o->soname[i] && strcmp(o->soname[i], needed) == 0)
        return true;
    const char *slash = strrchr(o->name[i], '/');
    return strcmp(slash ? slash + 1 : o->name[i], needed) == 0;
}

/* True if the object holding this code is the program or among the
   libraries it needs (DT_NEEDED, transitively): then a fresh exec runs
   libtq's constructor before main. A libtq that the program dlopened is
   not, and the exec would run the program's main instead. */
static bool
s_loaded_at_start(void)
{
    static s_objects_t o;
    memset(&o, 0, sizeof o);
    o.ours = -1;
    dl_iterate_phdr(s_objects_cb, &o);
    if (o.ours <= 0)
        return o.ours == 0;
    bool reached[S_MAX_OBJECTS] = {true}; /* the program */
    for (bool grew = true; grew;) {
        grew = false;
        for (size_t i = 0; i < o.count; i++) {
            if (!reached[i])
                continue;
            const char *strtab = s_strtab(o.dyn[i], o.base[i]);
            for (const ElfW(Dyn) *d = o.dyn[i]; strtab && d->d_tag != DT_NULL;
                 d++) {
                if (d->d_tag != DT_NEEDED)
                    continue;
                for (size_t k = 0; k < o.count; k++)
                    if (!reached[k] &&
                        s_same_object(&o, k, strtab + d->d_un.d_val)) {
                        reached[k] = grew = true;
                    }
            }
        }
    }
    return reached[o.ours];
}

/* environ plus TQ_POOL_SERVER_FD=3, in a malloc'd array (the strings are
   borrowed but the last). */
static char **
s_env(void)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], S_ENV, strlen(S_ENV)) != 0)
            env[k++] = environ[i];
    env[k] = S_ENV "3";
    return env;
}

/* The program's file: its path as /proc/self/exe names it, which a tool
   running the program (valgrind) reports as the program's, or the link
   itself when the file was removed or replaced since it started. */
static const char *
s_program(char *path, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", path, size - 1);
    if (n <= 0)
        return "/proc/self/exe";
    path[n] = '\0';
    static const char deleted[] = " (deleted)";
    size_t len = (size_t)n, dl = sizeof deleted - 1;
    if (len > dl && strcmp(path + len - dl, deleted) == 0)
        return "/proc/self/exe";
    return path;
}

static bool
s_write_all(int fd, const void *data, size_t size)
{
    const char *p = data;
    while (size) {
        ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        size -= (size_t)n;
    }
    return true;
}

int
tq_pool_server_encode(const tq_pool_server_config_t *config, tq_buf_t *buf,
                      char *error, size_t errlen)
{
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    if (s_encode(config, &sbuf, error, errlen) != 0) {
        msgpack_sbuffer_destroy(&sbuf);
        return TQ_EINVAL;
    }
    buf->data = sbuf.data;
    buf->size = sbuf.size;
    return TQ_OK;
}

pid_t
tq_pool_server_spawn(const tq_buf_t *config, int *keep_fd, char *error,
                     size_t errlen)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        snprintf(error, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    if (!s_loaded_at_start()) {
        snprintf(error, errlen,
                 "cannot start the fork server: libtq was loaded after the "
                 "program started (dlopen), so a fresh exec of the program "
                 "would not stop before main; link the program with libtq");
        return -1;
    }
    /* a copy of the program that reached main as a server (libtq not
       run before main) must not start servers of its own */
    if (getenv("TQ_POOL_SERVER_FD")) {
        snprintf(error, errlen,
                 "this process was started as a pool's fork "
                 "server but ran the program's main");
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    /* dup2 onto 3 clears close-on-exec there: the server's only extra fd */
    posix_spawn_file_actions_adddup2(&fa, fds[0], 3);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    /* the program's mask and handlers (and ignored signals) are not ours */
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    char *argv[] = {"tq-pool-server", NULL};
    char **env = s_env();
    pid_t pid = -1;
    char path[PATH_MAX];
    const char *program = s_program(path, sizeof path);
    int rc = env ? posix_spawn(&pid, program, &fa, &attr, argv, env) : ENOMEM;
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(fds[0]);
    if (rc != 0) {
        snprintf(error, errlen,
                 "cannot start the fork server: posix_spawn %s: %s", program,
                 strerror(rc));
        close(fds[1]);
        return -1;
    }
    /* a server that died at once must not SIGPIPE the program */
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    uint32_t len = (uint32_t)config->size;
    bool ok = s_write_all(fds[1], &len, sizeof len) &&
        s_write_all(fds[1], config->data, config->size);
    if (!ok && errno == EPIPE) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!ok) {
        snprintf(error, errlen,
                 "the fork server (pid %ld) exited before it "
                 "read its configuration",
                 (long)pid);
        close(fds[1]);
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    *keep_fd = fds[1];
    return pid;
}

/* Runs before main in every program linking the pool: a process started as
   a pool's fork server never reaches the program's main. */
static void __attribute__((constructor)) s_server_mode(void)
{
    const char *fd = getenv("TQ_POOL_SERVER_FD");
    if (fd && *fd)
        tq_pool_server_main();
}
