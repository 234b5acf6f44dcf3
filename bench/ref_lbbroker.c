/* ref_lbbroker.c - ref-lbbroker: the bare ZeroMQ load-balancing broker, the
   floor any ZeroMQ task broker stands on, with its worker and client, for
   tq-bench to compare tq against.

   The broker is a ROUTER for clients and a ROUTER for workers. A worker (a
   DEALER) says READY with its credit, the requests it may hold; the broker
   keeps one entry per unit of credit in a ring and reads the client side
   only while the ring is not empty, so each worker holds at most `credit`
   requests. A request [client id][body] goes out as [worker id][client
   id][body]; the worker sends [client id][body] back as its reply, which
   returns one credit. Nothing is decoded or stored.

   `ref-lbbroker --credit C` forks the broker and two workers (processes,
   as tq's worker host runs two children), then as the client measures
   W1 (`tasks` 8-byte requests sent as fast as the broker takes them while
   replies are read, all awaited: tasks/s), W2 (`seq` sequential round
   trips: p50 and p99 in us) and W3 (`echo` requests of `size` bytes echoed,
   as W1: MB/s of payload one way). Prints "w1 p50 p99 w3" on one line;
   exit status 1 on any failure. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_WORKERS 2
#define S_MAX_CREDIT 1024
#define S_ID_MAX 256
#define S_TIMEOUT_MS 60000

typedef struct {
    int credit; /* requests a worker holds */
    int tasks; /* W1 requests */
    int seq; /* W2 round trips */
    int echo; /* W3 requests */
    int size; /* W3 body bytes */
} s_config_t;

typedef struct {
    unsigned char id[S_ID_MAX];
    size_t size;
} s_worker_t;

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
s_die(const char *what)
{
    fprintf(stderr, "ref-lbbroker: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

/* Sets both high-water marks to 0 (no limit): nothing is dropped. */
static void
s_unlimited(void *socket)
{
    int zero = 0;
    zmq_setsockopt(socket, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &zero, sizeof zero);
}

/* Receives one frame into msg; returns whether more frames follow. */
static int
s_recv(zmq_msg_t *msg, void *socket)
{
    if (zmq_msg_recv(msg, socket, 0) < 0)
        s_die("recv");
    return zmq_msg_more(msg);
}

static void
s_send(zmq_msg_t *msg, void *socket, int more)
{
    if (zmq_msg_send(msg, socket, more ? ZMQ_SNDMORE : 0) < 0)
        s_die("send");
}

/* The broker; writes its two endpoints to fd, then serves until killed. */
static void
s_broker(int fd)
{
    void *ctx = zmq_ctx_new();
    void *front = zmq_socket(ctx, ZMQ_ROUTER);
    void *back = zmq_socket(ctx, ZMQ_ROUTER);
    s_unlimited(front);
    s_unlimited(back);
    if (zmq_bind(front, "tcp://127.0.0.1:*") != 0 ||
        zmq_bind(back, "tcp://127.0.0.1:*") != 0)
        s_die("bind");
    char eps[2][128];
    size_t len = sizeof eps[0];
    zmq_getsockopt(front, ZMQ_LAST_ENDPOINT, eps[0], &len);
    len = sizeof eps[1];
    zmq_getsockopt(back, ZMQ_LAST_ENDPOINT, eps[1], &len);
    dprintf(fd, "%s %s\n", eps[0], eps[1]);
    close(fd);

    s_worker_t workers[S_WORKERS];
    int nworkers = 0;
    static int ring[S_WORKERS * S_MAX_CREDIT]; /* worker index per credit */
    int cap = S_WORKERS * S_MAX_CREDIT, head = 0, count = 0;
    zmq_msg_t id, frame;
    zmq_msg_init(&id);
    zmq_msg_init(&frame);
    while (1) {
        zmq_pollitem_t items[2] = {{back, 0, ZMQ_POLLIN, 0},
                                   {front, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, count > 0 ? 2 : 1, -1) < 0)
            s_die("poll");
        if (items[0].revents & ZMQ_POLLIN) {
            /* from a worker: [id][READY credit] or [id][client][body] */
            s_recv(&id, back);
            int w = 0;
            while (w < nworkers &&
                   (workers[w].size != zmq_msg_size(&id) ||
                    memcmp(workers[w].id, zmq_msg_data(&id), workers[w].size)))
                w++;
            int more = s_recv(&frame, back);
            if (w == nworkers) { /* READY */
                int credit = atoi((const char *)zmq_msg_data(&frame));
                if (nworkers == S_WORKERS || zmq_msg_size(&id) > S_ID_MAX ||
                    credit < 1 || credit > S_MAX_CREDIT) {
                    fprintf(stderr, "ref-lbbroker: bad READY\n");
                    exit(1);
                }
                workers[w].size = zmq_msg_size(&id);
                memcpy(workers[w].id, zmq_msg_data(&id), workers[w].size);
                nworkers++;
                for (int i = 0; i < credit; i++)
                    ring[(head + count++) % cap] = w;
                continue;
            }
            ring[(head + count++) % cap] = w;
            s_send(&frame, front, more); /* the client's id */
            while (more) {
                more = s_recv(&frame, back);
                s_send(&frame, front, more);
            }
        }
        if (count > 0 && (items[1].revents & ZMQ_POLLIN)) {
            int w = ring[head];
            head = (head + 1) % cap;
            count--;
            zmq_send(back, workers[w].id, workers[w].size, ZMQ_SNDMORE);
            int more = 1;
            while (more) {
                more = s_recv(&frame, front);
                s_send(&frame, back, more);
            }
        }
    }
}

/* A worker: READY with its credit, then every request straight back. */
static void
s_worker(const char *endpoint, int credit)
{
    void *ctx = zmq_ctx_new();
    void *socket = zmq_socket(ctx, ZMQ_DEALER);
    s_unlimited(socket);
    if (zmq_connect(socket, endpoint) != 0)
        s_die("connect");
    char ready[16];
    int len = snprintf(ready, sizeof ready, "%d", credit);
    zmq_send(socket, ready, (size_t)len + 1, 0);
    zmq_msg_t frame;
    zmq_msg_init(&frame);
    while (1) {
        int more = 1;
        while (more) {
            more = s_recv(&frame, socket);
            s_send(&frame, socket, more);
        }
    }
}

/* Sends n requests of size bytes as fast as the socket takes them while
   reading the replies; returns the seconds until the last reply. */
static double
s_stream(void *socket, int n, int size)
{
    char *body = calloc(1, (size_t)size);
    if (!body)
        s_die("calloc");
    int sent = 0, received = 0;
    double t0 = s_now();
    zmq_msg_t reply;
    zmq_msg_init(&reply);
    while (received < n) {
        zmq_pollitem_t item = {socket, 0,
                               ZMQ_POLLIN | (sent < n ? ZMQ_POLLOUT : 0), 0};
        if (zmq_poll(&item, 1, S_TIMEOUT_MS) <= 0) {
            fprintf(stderr, "ref-lbbroker: %d of %d replies\n", received, n);
            exit(1);
        }
        while (sent < n) {
            memcpy(body, &sent, sizeof sent);
            if (zmq_send(socket, body, (size_t)size, ZMQ_DONTWAIT) < 0)
                break;
            sent++;
        }
        while (zmq_msg_recv(&reply, socket, ZMQ_DONTWAIT) >= 0)
            received++;
    }
    double elapsed = s_now() - t0;
    zmq_msg_close(&reply);
    free(body);
    return elapsed;
}

static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The client: W1, W2, W3 on one DEALER; prints the line. */
static void
s_client(const char *endpoint, const s_config_t *config)
{
    void *ctx = zmq_ctx_new();
    void *socket = zmq_socket(ctx, ZMQ_DEALER);
    s_unlimited(socket);
    int timeout = S_TIMEOUT_MS;
    zmq_setsockopt(socket, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    if (zmq_connect(socket, endpoint) != 0)
        s_die("connect");
    s_stream(socket, config->tasks / 10 + 2, 8); /* warm up */
    double w1 = config->tasks / s_stream(socket, config->tasks, 8);

    double *us = calloc((size_t)config->seq, sizeof *us);
    char body[8] = {0}, reply[8];
    for (int i = 0; i < config->seq; i++) {
        double t = s_now();
        if (zmq_send(socket, body, sizeof body, 0) < 0 ||
            zmq_recv(socket, reply, sizeof reply, 0) < 0)
            s_die("round trip");
        us[i] = (s_now() - t) * 1e6;
    }
    qsort(us, (size_t)config->seq, sizeof *us, s_cmp_double);
    double p50 = us[config->seq / 2], p99 = us[config->seq * 99 / 100];
    free(us);

    double w3 = (double)config->echo * config->size /
        s_stream(socket, config->echo, config->size) / 1e6;
    printf("%.0f %.1f %.1f %.1f\n", w1, p50, p99, w3);
    fflush(stdout);
    zmq_close(socket);
    zmq_ctx_term(ctx);
}

static pid_t
s_fork(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("ref-lbbroker: fork");
        exit(1);
    }
    if (pid == 0)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    return pid;
}

static int
s_parse(int argc, char **argv, s_config_t *config)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        int *target = strcmp(argv[i], "--credit") == 0 ? &config->credit
            : strcmp(argv[i], "--tasks") == 0          ? &config->tasks
            : strcmp(argv[i], "--seq") == 0            ? &config->seq
            : strcmp(argv[i], "--echo") == 0           ? &config->echo
            : strcmp(argv[i], "--size") == 0           ? &config->size
                                                       : NULL;
        char *end = NULL;
        long value = strtol(argv[i + 1], &end, 10);
        if (!target || *end || value < 1 || value > 100000000)
            return -1;
        *target = (int)value;
    }
    return argc % 2 == 1 && config->credit <= S_MAX_CREDIT && config->size >= 8
        ? 0
        : -1;
}

int
main(int argc, char **argv)
{
    s_config_t config = {1, 20000, 2000, 2000, 65536};
    if (s_parse(argc, argv, &config) != 0) {
        fprintf(stderr,
                "usage: ref-lbbroker [--credit C] [--tasks N] [--seq N] "
                "[--echo N] [--size BYTES]\n");
        return 2;
    }
    int fds[2];
    if (pipe(fds) != 0) {
        perror("ref-lbbroker: pipe");
        return 1;
    }
    pid_t pids[1 + S_WORKERS];
    pids[0] = s_fork();
    if (pids[0] == 0) {
        close(fds[0]);
        s_broker(fds[1]);
    }
    close(fds[1]);
    char front[128], back[128];
    FILE *in = fdopen(fds[0], "r");
    if (!in || fscanf(in, "%127s %127s", front, back) != 2) {
        fprintf(stderr, "ref-lbbroker: the broker did not start\n");
        kill(pids[0], SIGKILL);
        return 1;
    }
    fclose(in);
    for (int i = 1; i <= S_WORKERS; i++) {
        pids[i] = s_fork();
        if (pids[i] == 0)
            s_worker(back, config.credit);
    }
    s_client(front, &config);
    for (int i = 0; i <= S_WORKERS; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
    }
    return 0;
}
