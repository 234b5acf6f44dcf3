/* tq_pool_server.c - the pool's fork server: the program re-executed
   (tq_pool_spawn.c), stopped in libtq's constructor before main. It reads
   its configuration, finds the program's task functions at the same place
   in the same files, and runs the worker supervisor, which forks the
   children from this single-threaded image. A SIGIO on its pipe ends it all
   (and removes the pool's directory) when the program is gone. */
#include "tq_pool_server.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "tq_worker_host.h"

#define S_CONFIG_FD 3
#define S_MAX_CONFIG (64u << 20)

/* A registered task as the program gave it. */
typedef struct {
    tq_task_fn *fn;
    void *arg;
} s_entry_t;

/* Process-wide in the server; each child inherits a fresh copy at fork, so
   the flags below are per child. */
static tq_pool_init_fn *s_initializer;
static void *s_initargs;
static bool s_initialized; /* this child ran the initializer */
static int s_stderr_fd = -1; /* the program's stderr, for the children */
static atomic_int *s_worker_count; /* shared: children named so far */
static tq_registry_t *s_registry; /* the wrapped tasks */
static char s_dir[4096]; /* the pool's directory */

/* A child's first task: its name, its stderr back, the initializer. */
static void
s_child_start(void)
{
    s_initialized = true;
    if (s_stderr_fd >= 0) {
        dup2(s_stderr_fd, STDERR_FILENO);
        close(s_stderr_fd);
        s_stderr_fd = -1;
    }
    int n = s_worker_count ? atomic_fetch_add(s_worker_count, 1) + 1 : 0;
    snprintf(tq_worker_running_name, sizeof tq_worker_running_name,
             "ForkServerPoolWorker-%d", n);
    if (s_initializer)
        s_initializer(s_initargs);
}

/* Every pool task goes through here: the supervisor has no per-child start
   hook, so the child's start runs before its first task. */
static int
s_trampoline(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    const s_entry_t *e = task->arg;
    if (!s_initialized)
        s_child_start();
    task->arg = e->arg;
    return e->fn(task, args, out);
}

/* tq.pool.chunk [name, [args...]]: runs the task on each argument array,
   each value packed on its own, so one item's failure is that item's. */
static int
s_chunk(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size != 2 ||
        args->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
        args->via.array.ptr[1].type != MSGPACK_OBJECT_BIN)
        return tq_task_fail(task, "tq.pool.chunk: bad arguments");
    char name[TQ_PROTO_MAX_NAME + 1];
    const msgpack_object_str *s = &args->via.array.ptr[0].via.str;
    snprintf(name, sizeof name, "%.*s", (int)s->size, s->ptr);
    void *arg = NULL;
    tq_task_fn *fn = tq_registry_lookup(s_registry, name, &arg);
    if (!fn)
        return tq_task_fail(task, "no task named %s in this pool", name);
    /* reused by every chunk of the child: the items' zone, one item's
       value, the values, the failures */
    static msgpack_zone zone;
    static msgpack_sbuffer value, values, fails;
    static bool ready;
    if (!ready) {
        msgpack_zone_init(&zone, 64 * 1024);
        msgpack_sbuffer_init(&value);
        msgpack_sbuffer_init(&values);
        msgpack_sbuffer_init(&fails);
        ready = true;
    }
    /* the items travel as one bin (an array inside): nobody on the way
       walks them; unpacking them here checks them (depth included) */
    msgpack_zone_clear(&zone);
    msgpack_object list;
    size_t off = 0;
    const msgpack_object_bin *bin = &args->via.array.ptr[1].via.bin;
    if (msgpack_unpack(bin->ptr, bin->size, &off, &zone, &list) !=
            MSGPACK_UNPACK_SUCCESS ||
        off != bin->size || list.type != MSGPACK_OBJECT_ARRAY)
        return tq_task_fail(task, "tq.pool.chunk: bad items");
    const msgpack_object_array *items = &list.via.array;
    msgpack_sbuffer_clear(&values);
    msgpack_sbuffer_clear(&fails);
    uint32_t failed = 0;
    msgpack_packer pk, vk, fk;
    msgpack_packer_init(&pk, &value, msgpack_sbuffer_write);
    msgpack_packer_init(&vk, &values, msgpack_sbuffer_write);
    msgpack_packer_init(&fk, &fails, msgpack_sbuffer_write);
    /* [bin of [value or nil, ...], [[index, code, error], ...]] */
    msgpack_pack_array(&vk, items->size);
    for (uint32_t i = 0; i < items->size; i++) {
        msgpack_sbuffer_clear(&value);
        task->arg = arg;
        task->failed = false;
        task->error[0] = '\0';
        tq_task_running_name = name;
        int rc = items->ptr[i].type == MSGPACK_OBJECT_ARRAY
            ? fn(task, &items->ptr[i], &pk)
            : tq_task_fail(task, "arguments are not an array");
        if (rc == 0 && value.size == 0)
            msgpack_pack_nil(&pk);
        const char *reason = NULL;
        if (rc == 0 &&
            tq_proto_check_payload(value.data, value.size, false, &reason) !=
                TQ_OK) {
            snprintf(task->error, sizeof task->error,
                     "task %s returned an invalid value: %s (pack exactly "
                     "one object)",
                     name, reason);
            task->failed = true;
            rc = TQ_ETASK;
        }
        if (rc == 0) {
            msgpack_sbuffer_write(&values, value.data, value.size);
            continue;
        }
        msgpack_pack_nil(&vk);
        const char *text =
            task->failed && task->error[0] ? task->error : "task failed";
        size_t len = strlen(text);
        msgpack_pack_array(&fk, 3);
        msgpack_pack_uint32(&fk, i);
        msgpack_pack_int(&fk, TQ_ETASK);
        msgpack_pack_str(&fk, len);
        msgpack_pack_str_body(&fk, text, len);
        failed++;
    }
    msgpack_pack_array(out, 2);
    msgpack_pack_bin(out, values.size);
    msgpack_pack_bin_body(out, values.data, values.size);
    msgpack_pack_array(out, failed);
    if (fails.size)
        out->callback(out->data, fails.data, fails.size);
    return 0;
}

/* Adds every task of from (NULL: none) to to through the trampoline,
   skipping names to already has. */
static int
s_wrap(tq_registry_t *to, const tq_registry_t *from)
{
    if (!from)
        return TQ_OK;
    for (size_t i = 0; i < tq_registry_size(from); i++) {
        const char *name = tq_registry_name(from, i);
        void *arg = NULL;
        tq_task_fn *fn = tq_registry_lookup(from, name, &arg);
        if (!fn || tq_registry_lookup(to, name, NULL))
            continue;
        s_entry_t *e = malloc(sizeof *e); /* lives as long as the process */
        if (!e)
            return TQ_ENOMEM;
        e->fn = fn;
        e->arg = arg;
        int rc = tq_registry_add(to, name, s_trampoline, e);
        if (rc != TQ_OK)
            return rc;
    }
    return TQ_OK;
}

/* ---- the configuration --------------------------------------------------- */

typedef struct {
    const char *name; /* wanted object, "" for the program */
    uintptr_t base;
    bool found;
} s_obj_t;

static int
s_obj_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    s_obj_t *o = data;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    if (strcmp(name, o->name) != 0)
        return 0;
    o->base = info->dlpi_addr;
    o->found = true;
    return 1;
}

/* The address a [name, offset] location stands for here; NULL for nil.
   An object the program had dlopened is opened here too. */
static bool
s_resolve(const msgpack_object *loc, void **p)
{
    *p = NULL;
    if (loc->type == MSGPACK_OBJECT_NIL)
        return true;
    if (loc->type != MSGPACK_OBJECT_ARRAY || loc->via.array.size != 2 ||
        loc->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
        loc->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    char name[4096];
    const msgpack_object_str *s = &loc->via.array.ptr[0].via.str;
    snprintf(name, sizeof name, "%.*s", (int)s->size, s->ptr);
    s_obj_t o = {.name = name};
    dl_iterate_phdr(s_obj_cb, &o);
    if (!o.found && name[0] && dlopen(name, RTLD_NOW | RTLD_GLOBAL))
        dl_iterate_phdr(s_obj_cb, &o);
    if (!o.found) {
        fprintf(stderr, "tq pool server: cannot find %s\n", name);
        return false;
    }
    *p = (void *)(o.base + (uintptr_t)loc->via.array.ptr[1].via.u64);
    return true;
}

static bool
s_read_all(int fd, void *data, size_t size)
{
    char *p = data;
    while (size) {
        ssize_t n = read(fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        p += n;
        size -= (size_t)n;
    }
    return true;
}

static void
s_copy_str(const msgpack_object *o, char *out, size_t size)
{
    snprintf(out, size, "%.*s", (int)o->via.str.size, o->via.str.ptr);
}

/* The pool's sockets, made once: a signal handler removes them. */
static char s_sockets[2][sizeof s_dir + 16];

/* Removes the pool's directory and the sockets in it (async-signal-safe:
   unlink and rmdir only). */
static void
s_remove_dir(void)
{
    unlink(s_sockets[0]);
    unlink(s_sockets[1]);
    rmdir(s_dir);
}

/* The end of the program: the pipe's write end closes only when every
   process holding it is gone, and the kernel then sends SIGIO (O_ASYNC).
   The directory goes, and two stop signals make the supervisor kill its
   children and exit. Async-signal-safe. No thread waits for it: the
   server forks its children, and a thread starting up at a fork could
   leave a lock held in them. */
static void
s_on_program_end(int sig)
{
    (void)sig;
    struct pollfd p = {.fd = S_CONFIG_FD, .events = POLLIN};
    char byte;
    /* SIGIO also comes for a byte, which the program never sends: only an
       EOF ends us */
    if (poll(&p, 1, 0) != 1 || read(S_CONFIG_FD, &byte, 1) != 0)
        return;
    static volatile sig_atomic_t done;
    if (done)
        return;
    done = 1;
    s_remove_dir();
    kill(getpid(), SIGINT);
    kill(getpid(), SIGTERM);
}

/* Arms s_on_program_end, and runs it now if the program ended already. */
static void
s_watch_program(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_program_end;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGIO, &sa, NULL);
    fcntl(S_CONFIG_FD, F_SETOWN, getpid());
    fcntl(S_CONFIG_FD, F_SETFL, fcntl(S_CONFIG_FD, F_GETFL) | O_ASYNC);
    s_on_program_end(SIGIO);
}

static void __attribute__((noreturn)) s_fail(const char *what)
{
    fprintf(stderr, "tq pool server: %s\n", what);
    _exit(1);
}

void
tq_pool_server_main(void)
{
    unsetenv("TQ_POOL_SERVER_FD"); /* not for the tasks' own programs */
    prctl(PR_SET_NAME, "tq-pool-server");
    uint32_t len = 0;
    if (!s_read_all(S_CONFIG_FD, &len, sizeof len) || len > S_MAX_CONFIG)
        s_fail("no configuration");
    char *data = malloc(len ? len : 1);
    if (!data || !s_read_all(S_CONFIG_FD, data, len))
        s_fail("configuration cut short");
    fcntl(S_CONFIG_FD, F_SETFD, FD_CLOEXEC);
    /* the program's other descriptors are not ours (Python's close_fds) */
    close_range(S_CONFIG_FD + 1, ~0U, 0);

    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, data, len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_ARRAY || u.data.via.array.size != 12)
        s_fail("bad configuration");
    const msgpack_object *c = u.data.via.array.ptr;
    static char endpoint[4096];
    s_copy_str(&c[1], endpoint, sizeof endpoint);
    s_copy_str(&c[2], s_dir, sizeof s_dir);
    snprintf(s_sockets[0], sizeof s_sockets[0], "%s/clients", s_dir);
    snprintf(s_sockets[1], sizeof s_sockets[1], "%s/workers", s_dir);
    static char client_ep[4096];
    s_copy_str(&c[11], client_ep, sizeof client_ep);
    setenv("TQ_POOL_ENDPOINT", client_ep, 1); /* tq_pool_endpoint(NULL) */
    int processes = (int)c[3].via.i64;
    int prefetch = (int)c[4].via.i64;
    int maxtasks = (int)c[5].via.i64;
    bool verbose = c[6].via.i64 != 0;
    if (c[7].via.i64 == 1)
        setvbuf(stdout, NULL, _IOLBF, 0);
    void *p;
    if (!s_resolve(&c[8], &p))
        s_fail("cannot find the initializer");
    *(void **)&s_initializer = p;
    if (c[9].type == MSGPACK_OBJECT_BIN) {
        s_initargs = malloc(c[9].via.bin.size ? c[9].via.bin.size : 1);
        if (!s_initargs)
            s_fail("out of memory");
        memcpy(s_initargs, c[9].via.bin.ptr, c[9].via.bin.size);
    } else if (!s_resolve(&c[9], &s_initargs))
        s_fail("cannot find initargs");

    tq_registry_t *program = tq_registry_new();
    s_registry = tq_registry_new();
    tq_registry_t *builtins = tq_registry_new();
    if (!program || !s_registry || !builtins ||
        c[10].type != MSGPACK_OBJECT_ARRAY)
        s_fail("cannot set up the task registry");
    for (uint32_t i = 0; i < c[10].via.array.size; i++) {
        const msgpack_object *t = &c[10].via.array.ptr[i];
        char name[TQ_PROTO_MAX_NAME + 1];
        void *fn, *arg;
        if (t->type != MSGPACK_OBJECT_ARRAY || t->via.array.size != 3 ||
            t->via.array.ptr[0].type != MSGPACK_OBJECT_STR)
            s_fail("bad task entry");
        s_copy_str(&t->via.array.ptr[0], name, sizeof name);
        if (!s_resolve(&t->via.array.ptr[1], &fn) || !fn ||
            !s_resolve(&t->via.array.ptr[2], &arg))
            s_fail("cannot find a task function");
        tq_task_fn *task;
        *(void **)&task = fn;
        tq_registry_add(program, name, task, arg);
    }
    if (tq_registry_add_builtins(builtins) != TQ_OK ||
        s_wrap(s_registry, program) != TQ_OK ||
        s_wrap(s_registry, builtins) != TQ_OK ||
        tq_registry_add(s_registry, TQ_POOL_CHUNK_TASK, s_chunk, NULL) !=
            TQ_OK ||
        tq_registry_size(s_registry) > TQ_PROTO_MAX_NAMES)
        s_fail("cannot set up the task registry");

    s_worker_count = mmap(NULL, sizeof *s_worker_count, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s_worker_count == MAP_FAILED)
        s_worker_count = NULL;
    else
        atomic_init(s_worker_count, 0);
    if (!verbose) {
        /* quiet: the supervisor's lines go nowhere; each child takes the
           program's stderr back before its first task */
        s_stderr_fd = dup(STDERR_FILENO);
        int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
    }
    s_watch_program();

    static tq_worker_config_t config; /* outlives the supervisor's loop */
    config.endpoint = endpoint;
    config.concurrency = processes;
    config.queues[0] = TQ_DEFAULT_QUEUE;
    config.queue_count = 1;
    config.prefetch = prefetch > 0 ? (uint32_t)prefetch : TQ_POOL_PREFETCH;
    config.shutdown_timeout_ms = 10000;
    config.batch_short_us = TQ_WORKER_BATCH_SHORT_US;
    /* the supervisor recycles the child after its DONE */
    config.max_tasks_per_child = (uint32_t)maxtasks;
    config.verbose = false;
    snprintf(config.host, sizeof config.host, "pool-%ld", (long)getppid());
    int rc = tq_supervisor_run(&config, s_registry);
    fflush(stdout);
    fflush(stderr);
    /* _exit: the atexit handlers (czmq's among them) are the program's */
    _exit(rc);
}
