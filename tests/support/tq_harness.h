/* tq_harness.h - end-to-end test helpers: start tq-broker and tq-worker as
   real processes on tcp://127.0.0.1:* ports, wait on conditions with
   deadlines, read the broker's STATUS body, run the CLI, stop by pid. */
#ifndef TQ_HARNESS_H
#define TQ_HARNESS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tq/tq.h"
#include "tq_broker.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest endpoint string the harness keeps. */
#define TQ_HARNESS_EP_MAX 256

/* A running tq-broker: its pid and the endpoints it printed. */
typedef struct {
    pid_t pid; /* 0 when not running */
    char clients[TQ_HARNESS_EP_MAX]; /* client endpoint, e.g. tcp://...:N */
    char workers[TQ_HARNESS_EP_MAX]; /* worker endpoint */
    int out_fd; /* read end of its stdout pipe, -1 */
    void *drain; /* thread copying later stdout */
    void *err_drain; /* thread copying stderr to a log file, or NULL */
} tq_harness_broker_t;

/* Makes the harness ready: ignores SIGPIPE, makes this process a child
   subreaper (so orphans of a worker host show up as our children) and
   registers the atexit handler that kills every process still running.
   Idempotent. */
void tq_harness_init(void);

/* Milliseconds on the monotonic clock. */
int64_t tq_harness_now_ms(void);

/* Sleeps ms milliseconds (for polling loops only, never to "settle"). */
void tq_harness_sleep_ms(int ms);

/* Makes a fresh temporary directory $TMPDIR/tq-TAG-XXXXXX (or under /tmp)
   in dir (size bytes). Returns 0 or -1. */
int tq_harness_tempdir(char *dir, size_t size, const char *tag);

/* A broker in the test's own process (white-box tests that drive its
   handlers): config as given, with loopback endpoints on free ports when
   none is set, results kept 60 s unless result_ttl_s says otherwise, and
   no log lines. NULL, after printing why, if it cannot be made. */
tq_broker_t *tq_harness_broker_new(tq_broker_config_t config);

/* Removes a directory and everything in it. */
void tq_harness_rmtree(const char *dir);

/* Starts argv[0] (a path) with argv, env the full environment (NULL: ours).
   out_fd/err_fd: if non-NULL, that stream goes to a pipe whose read end
   (close-on-exec) is stored there; else it is inherited. The process gets
   SIGKILL if we die; its pid is tracked until tq_harness_stop or
   tq_harness_wait_exit reaps it. Returns the pid, or -1 (also when the
   exec failed). */
pid_t tq_harness_spawn(char *const argv[], char *const env[], int *out_fd,
                       int *err_fd);

/* Words put before the program of every tq-broker and tq-worker started
   from now on (NULL-terminated; NULL: none), e.g. {"/usr/sbin/ip", "netns",
   "exec", "tqt123h0", NULL} to start it in a network namespace. The array
   is borrowed until the next call. */
void tq_harness_set_prefix(const char *const prefix[]);

/* Starts tq-broker on 127.0.0.1:* with extra arguments (NULL-terminated,
   may be NULL) and reads its first line (5 s at most) to learn the
   endpoints. Returns 0, or -1 (the process is stopped again). With
   TQ_TEST_BROKER_WRAPPER set (e.g. "/usr/bin/valgrind --error-exitcode=9
   --leak-check=full", first word a path) every broker runs under it and
   gets 60 s to start and to stop. */
int tq_harness_broker_start(tq_harness_broker_t *self,
                            const char *const extra[]);

/* Starts tq-broker on fixed endpoints (e.g. those a first start printed, to
   restart it on the same ports after a kill) with extra arguments, as
   tq_harness_broker_start. err_log: if non-NULL, the broker's stderr is
   also appended to that file, so a test can read its log lines (even when
   it refuses to start). Returns 0, or -1 (the process is stopped again). */
int tq_harness_broker_start_on(tq_harness_broker_t *self, const char *clients,
                               const char *workers, const char *const extra[],
                               const char *err_log);

/* Stops the broker (SIGTERM, 5 s, SIGKILL) and returns its wait status, or
   -1 if it was not running. */
int tq_harness_broker_stop(tq_harness_broker_t *self);

/* Starts `tq-worker --broker endpoint -c children [extra...]`. Returns the
   supervisor's pid or -1. With TQ_TEST_WORKER_WRAPPER set (as
   TQ_TEST_BROKER_WRAPPER) every worker host runs under it; valgrind
   follows its forked children, which need
   --suppressions=tests/support/valgrind-czmq-fork.supp. */
pid_t tq_harness_worker_start(const char *endpoint, int children,
                              const char *const extra[]);

/* Waits up to timeout_ms for the tracked process pid to exit, reaping it.
   Returns 0 with *status (may be NULL) set, or -1 if it is still running. */
int tq_harness_wait_exit(pid_t pid, int timeout_ms, int *status);

/* Stops a tracked process: SIGTERM, waits 5 s, then SIGKILL and waits.
   Returns its wait status, or -1 if pid is not ours. */
int tq_harness_stop(pid_t pid);

/* Kills (SIGKILL) and reaps every tracked process still running, and every
   orphan reparented to us; used by teardowns and at exit. */
void tq_harness_kill_all(void);

/* Lists the live (not zombie) processes whose parent is ppid, from
   /proc/N/stat. Stores up to max pids; returns how many exist. */
size_t tq_harness_children(pid_t ppid, pid_t *pids, size_t max);

/* True if pid exists and is not a zombie. */
bool tq_harness_alive(pid_t pid);

/* The parent pid of pid from /proc/pid/stat, or -1. */
pid_t tq_harness_ppid(pid_t pid);

/* A decoded STATUS body. */
typedef struct {
    msgpack_unpacked unpacked; /* owns the zone of root */
    const msgpack_object *root; /* the map; NULL when not fetched */
    tq_buf_t buf; /* the raw body bytes */
} tq_harness_status_t;

/* Asks the broker for STATUS and decodes it into self (cleared first).
   Returns TQ_OK, the client's error, or TQ_EPROTO if the body is not one
   msgpack map. */
int tq_harness_status(tq_client_t *client, tq_harness_status_t *self,
                      int timeout_ms);

/* Frees a status; safe on a zeroed or already-freed one. */
void tq_harness_status_free(tq_harness_status_t *self);

/* The value of key in a msgpack map (borrowed), NULL if absent or map is
   not a map. */
const msgpack_object *tq_harness_map_get(const msgpack_object *map,
                                         const char *key);

/* An unsigned integer value of key in map, or def if absent or not one. */
uint64_t tq_harness_map_uint(const msgpack_object *map, const char *key,
                             uint64_t def);

/* True if the str object equals s. */
bool tq_harness_str_eq(const msgpack_object *obj, const char *s);

/* status.counters[name], or UINT64_MAX if missing. */
uint64_t tq_harness_counter(const tq_harness_status_t *self, const char *name);

/* The status.workers array (borrowed) and its size via *count; NULL if
   missing. */
const msgpack_object *tq_harness_workers(const tq_harness_status_t *self,
                                         uint32_t *count);

/* status.queues[name] entry (a map, borrowed) or NULL. */
const msgpack_object *tq_harness_queue(const tq_harness_status_t *self,
                                       const char *name);

/* status.unserved entry for task (a map, borrowed) or NULL. */
const msgpack_object *tq_harness_unserved(const tq_harness_status_t *self,
                                          const char *task);

/* Asks client's broker for STATUS: queues[queue].waiting, 0 if the queue
   is not listed, -1 if STATUS got no answer within 3 s. */
int64_t tq_harness_queue_waiting(tq_client_t *client, const char *queue);

/* Polls STATUS until exactly `children` worker children are listed with
   ppid `ppid` (ppid <= 0: in all), or timeout_ms passes. Returns 0 or
   -1. */
int tq_harness_wait_workers(tq_client_t *client, uint32_t children, pid_t ppid,
                            int timeout_ms);

/* Most worker hosts one environment starts. */
#define TQ_HARNESS_MAX_WORKERS 8

/* A test's world: one broker, its worker hosts, one client on it. */
typedef struct {
    tq_harness_broker_t broker;
    pid_t workers[TQ_HARNESS_MAX_WORKERS]; /* supervisors, worker_count */
    size_t worker_count;
    tq_client_t *client; /* connected to broker.clients */
} tq_harness_env_t;

/* Starts a broker (extra arguments may be NULL) and a client on it.
   Returns 0 or -1 (nothing left running). */
int tq_harness_env_start(tq_harness_env_t *self, const char *const extra[]);

/* Starts a worker host with `children` children; wait: also waits (10 s)
   until STATUS lists them all. Returns its pid or -1 (a started one stays
   in self->workers, stopped by tq_harness_env_stop). */
pid_t tq_harness_env_add_worker(tq_harness_env_t *self, int children,
                                const char *const extra[], bool wait);

/* Stops one worker host of self by pid; returns its wait status or -1. */
int tq_harness_env_stop_worker(tq_harness_env_t *self, pid_t pid);

/* Stops every worker host, the client and the broker, then kills anything
   left (orphans included). Safe on a zeroed or half-started env. */
void tq_harness_env_stop(tq_harness_env_t *self);

/* cmocka setup and teardown of one env per test: *state gets a zeroed env
   (started by the test); teardown stops it and frees it. */
int tq_harness_env_setup(void **state);
int tq_harness_env_teardown(void **state);

/* Output of a finished command. */
typedef struct {
    char *out; /* its stdout, NUL-terminated, malloc'd */
    char *err; /* its stderr, NUL-terminated, malloc'd */
    int exit_code; /* exit code, 128+signal if killed, -1 if timed out */
} tq_harness_run_t;

/* Runs argv (argv[0] a path) with TQ_BROKER=broker in its environment (NULL:
   unset), capturing stdout and stderr, for at most timeout_ms (then
   SIGKILL, exit_code -1). Returns 0, or -1 if it could not start. */
int tq_harness_run(char *const argv[], const char *broker, int timeout_ms,
                   tq_harness_run_t *run);

/* Frees a run's buffers; NULL-safe fields. */
void tq_harness_run_free(tq_harness_run_t *run);

/* A ROUTER socket of ctx (linger 0) bound to endpoint, a buffer of size
   bytes: "" binds a free loopback port and writes its endpoint back. A
   port still held (a socket just closed on it) is tried again for up to
   timeout_ms. Returns the socket, or NULL. */
void *tq_harness_router(void *ctx, char *endpoint, size_t size, int timeout_ms);

/* A tcp://127.0.0.1:PORT endpoint where nothing listens: binds a ROUTER on
   port *, reads the port, closes it. Returns 0 or -1. */
int tq_harness_free_endpoint(char *endpoint, size_t size);

/* Reads fd to EOF, or for timeout_ms at most, into a malloc'd
   NUL-terminated string (aborts if out of memory). */
char *tq_harness_read_fd(int fd, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
