/* tq_pool_server.c - the pool's fork server: the worker supervisor run in a
   process forked before any thread, with the program's registry wrapped so
   each child runs the initializer once before its first task. */
#include "tq_pool_server.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "tq_worker_host.h"

/* A registered task as the program gave it. */
typedef struct {
    tq_task_fn *fn;
    void *arg;
} s_entry_t;

/* Process-wide in the server; each child inherits a fresh copy at fork, so
   the counters below are per child. */
static tq_pool_init_fn *s_initializer;
static void *s_initargs;
static bool s_initialized; /* this child ran the initializer */

/* Every pool task goes through here: the supervisor has no per-child start
   hook, so the initializer runs before the child's first task. */
static int
s_trampoline(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    const s_entry_t *e = task->arg;
    if (!s_initialized) {
        s_initialized = true;
        if (s_initializer)
            s_initializer(s_initargs);
    }
    task->arg = e->arg;
    return e->fn(task, args, out);
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

void
tq_pool_server_run(pid_t parent, const char *worker_endpoint, int processes,
                   const tq_pool_options_t *options)
{
    /* die with the pool's process, even if it is SIGKILLed */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1); /* it died before prctl took effect */
    /* the program's handlers and mask are not ours */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_NAME, "tq-pool-server");
    if (options->quiet) {
        int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
    }
    s_initializer = options->initializer;
    s_initargs = options->initargs;

    /* static, as config below: they (and the wrapped entries) live until
       this process and its children _exit */
    static tq_registry_t *registry, *builtins;
    registry = tq_registry_new();
    builtins = tq_registry_new();
    if (!registry || !builtins || tq_registry_add_builtins(builtins) != TQ_OK ||
        s_wrap(registry, options->registry) != TQ_OK ||
        s_wrap(registry, builtins) != TQ_OK ||
        tq_registry_size(registry) > TQ_PROTO_MAX_NAMES) {
        fprintf(stderr, "tq pool: cannot set up the task registry\n");
        _exit(1);
    }
    static tq_worker_config_t config; /* outlives the supervisor's loop */
    config.endpoint = worker_endpoint;
    config.concurrency = processes;
    config.queues[0] = TQ_DEFAULT_QUEUE;
    config.queue_count = 1;
    config.prefetch = options->prefetch > 0 ? (uint32_t)options->prefetch
                                            : TQ_POOL_PREFETCH;
    config.shutdown_timeout_ms = 10000;
    /* the supervisor recycles the child after its DONE */
    config.max_tasks_per_child = (uint32_t)options->maxtasksperchild;
    snprintf(config.host, sizeof config.host, "pool-%ld", (long)parent);
    int rc = tq_supervisor_run(&config, registry);
    fflush(stdout);
    fflush(stderr);
    /* _exit: the atexit handlers (czmq's among them) are the program's */
    _exit(rc);
}
