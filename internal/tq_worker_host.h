/* tq_worker_host.h - private to tq-worker: configuration, the running task,
   the supervisor and child entry points. */
#ifndef TQ_WORKER_HOST_H
#define TQ_WORKER_HOST_H

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "tq/tq_worker.h"
#include "tq_log.h"
#include "tq_proto.h"

/* A child's board, and the host's board that the supervisor writes for
   every child (worker/tq_board.h: private to the worker host). */
typedef struct tq_board_s tq_board_t;
typedef struct tq_board_host_s tq_board_host_t;

/* Most broker endpoints one host is given (--broker A,B,...). */
#define TQ_WORKER_MAX_BROKERS 16

/* Everything tq-worker's command line decides. Strings are borrowed from
   argv or the environment, which outlive the process's work. */
typedef struct {
    const char *endpoint; /* broker's worker endpoint, the first of them */
    /* --broker A,B,...: the workers endpoints of brokers sharing one
       store, in the order the host tries them (PROTOCOL.md 12); 0 of
       them: endpoint alone */
    const char *endpoints[TQ_WORKER_MAX_BROKERS];
    uint32_t endpoint_count;
    int concurrency; /* children to fork, >= 1 */
    const char *queues[TQ_PROTO_MAX_NAMES]; /* queues served */
    uint32_t queue_count; /* >= 1 */
    uint32_t prefetch; /* credit per child, 1..65535 */
    uint32_t time_limit_ms; /* default hard limit, 0: none */
    uint32_t shutdown_timeout_ms; /* drain time on SIGTERM */
    uint32_t max_tasks_per_child; /* recycle a child after N tasks, 0: never */
    uint32_t
        max_memory_per_child_mb; /* recycle when peak RSS >= MB, 0: never */
    uint32_t soft_time_limit_ms; /* SIGUSR1 to the child after, 0: none */
    char host[TQ_PROTO_MAX_NAME + 1]; /* valid TQP host name */
    bool verbose; /* -v: log protocol chatter */
    bool allow_exec; /* --allow-exec: register the tq.exec task */
    /* --batch-short-us: a child holds DONEs for a BATCH only before a
       task whose last run took less, us; 0: it sends each alone */
    uint32_t batch_short_us;
} tq_worker_config_t;

/* batch_short_us by default: a no-op task takes a few us, and a DONE held
   behind a task this short waits little (PROTOCOL.md 5.9). */
#define TQ_WORKER_BATCH_SHORT_US 100

/* The task being run, handed to task functions as tq_task_t. */
struct tq_task_t {
    char id[TQ_PROTO_MAX_ID + 1]; /* task id */
    uint32_t attempt; /* 1.. */
    void *arg; /* user pointer of the registry */
    bool failed; /* tq_task_fail was called */
    volatile sig_atomic_t soft_limit; /* set by SIGUSR1: soft limit reached */
    char error[TQ_PROTO_MAX_ERROR + 1]; /* its message, NUL-terminated */
};

/* The task this process runs now (NULL between tasks) and its name, set
   by the child loop (and by the pool's chunk runner for each item): the
   tq_arg_* accessors record their errors in it, tq_task_name reads it. */
extern tq_task_t *tq_task_running;
extern const char *tq_task_running_name;
/* This process's name for tq_worker_name; "" until a pool names it. */
extern char tq_worker_running_name[64];

/* Signals from the supervisor to a child: the soft time limit of the
   running task passed (the task may check tq_task_soft_limit), and "the
   broker restarted: reconnect and send READY again". */
#define TQ_SIGNAL_SOFT_LIMIT SIGUSR1
#define TQ_SIGNAL_REANNOUNCE SIGUSR2

/* The parent-death signal of a child: its handler SIGKILLs the child's
   whole process group (the child and what its tasks started), so a
   supervisor killed with SIGKILL leaves nothing behind. */
#define TQ_SIGNAL_ORPHANED SIGRTMIN

/* The i-th broker endpoint of config (i below tq_worker_endpoints). */
static inline const char *
tq_worker_endpoint(const tq_worker_config_t *config, uint32_t i)
{
    return config->endpoint_count ? config->endpoints[i] : config->endpoint;
}

/* How many broker endpoints config lists, at least 1. */
static inline uint32_t
tq_worker_endpoints(const tq_worker_config_t *config)
{
    return config->endpoint_count ? config->endpoint_count : 1;
}

/* Runs the supervisor: forks config->concurrency children that serve the
   tasks of registry (borrowed), supervises them until SIGTERM/SIGINT.
   Returns the process exit status (0 after a clean drain). */
int tq_supervisor_run(const tq_worker_config_t *config,
                      tq_registry_t *registry);

/* Called first thing in a new child, forked by the supervisor parent:
   makes the child the leader of its own process group and has it kill
   that group (itself included) when parent dies. Returns false if parent
   is already gone (the child must then exit). */
bool tq_child_bind(pid_t parent);

/* The task loop of one child, called right after fork with the write end
   of its pipe to the supervisor (a byte wakes it when a task with a time
   limit starts), its board (shared memory, where it publishes where it
   is) and the host's board (shared memory, borrowed: the broker the
   supervisor chose, read at each connect). Never returns: exits the
   process (0 after a clean stop on SIGTERM, 1 on a fatal error). */
void tq_child_run(const tq_worker_config_t *config,
                  const tq_registry_t *registry, int report_fd,
                  tq_board_t *board, const tq_board_host_t *host)
    __attribute__((noreturn));

/* The last task a child looked up by name, so that a run of tasks of
   one name costs a string compare, not a hash and a search. Zeroed
   before its first use; good for one registry that no longer changes
   (a child's, after the fork). */
typedef struct {
    char name[TQ_PROTO_MAX_NAME + 1]; /* "" until a lookup found one */
    tq_task_fn *fn; /* what name found */
    void *arg; /* its user pointer */
    size_t index; /* its entry's index (tq_registry_name) */
} tq_registry_memo_t;

/* tq_registry_lookup, through memo: the same answer, name compared with
   the last one found first; memo->index is then the entry's index. A
   name not found is not remembered. */
tq_task_fn *tq_registry_lookup_memo(const tq_registry_t *self,
                                    tq_registry_memo_t *memo, const char *name,
                                    void **arg_p);

/* Logs one line on stderr through tq_log (ISO-8601 time, program, pid,
   level; --log-level, --log-json, --log-file apply). */
static inline void tq_worker_log(const char *format, ...)
    __attribute__((format(printf, 1, 2)));

static inline void
tq_worker_log(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tq_log_v(TQ_LOG_INFO, format, ap);
    va_end(ap);
}

#endif
