/* tq_netns.c - test hosts in network namespaces, built with iproute2 (ip,
   tc): a bridge in a switch namespace, one veth pair per host, private
   addresses used only inside the namespaces made here. */
#include "tq_netns.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>

#define S_CMD_MS 10000 /* bound on one ip or tc command */
#define S_MAX_PIDS 32 /* processes one set starts */
#define S_PREFIX "tqt" /* every namespace made here: tqt<pid>... */

/* Delay and loss without tc netem (a kernel without sch_netem): every
   packet in or out of a host's eth0 goes to an NFQUEUE (iptables-legacy,
   --queue-bypass), and a thread of this process, in that namespace, gives
   it back (NF_ACCEPT) delay_ms later, or drops it with the loss
   probability. Packets keep their order. */
#define S_DELAY_RING 65536 /* packets held at once */

typedef struct {
    pthread_t thread;
    int wake_fd; /* eventfd: stop */
    int ns_fd; /* the host's namespace */
    int delay_ms;
    double loss; /* 0..1 */
    unsigned seed;
    struct nfq_handle *h;
    struct nfq_q_handle *qh;
    uint32_t ids[S_DELAY_RING];
    int64_t due[S_DELAY_RING]; /* monotonic ms */
    size_t head, count;
    _Atomic uint64_t held, dropped; /* packets delayed, dropped */
    int ready; /* 1 bound, -1 failed (under lock) */
    pthread_mutex_t lock;
    pthread_cond_t cond;
} s_delay_t;

struct tq_netns_t {
    int hosts;
    char prefix[32]; /* tqt<pid> */
    char sw[48]; /* the switch namespace */
    char names[TQ_NETNS_MAX_HOSTS][48]; /* host namespaces */
    char addrs[TQ_NETNS_MAX_HOSTS][32]; /* host addresses */
    char dirs[TQ_NETNS_MAX_HOSTS][300]; /* host working directories */
    char chdir_args[TQ_NETNS_MAX_HOSTS][320]; /* --chdir=DIR for env */
    char root[256]; /* temp dir of the set */
    bool made[TQ_NETNS_MAX_HOSTS + 1]; /* namespaces added */
    pid_t pids[S_MAX_PIDS]; /* started, not yet stopped */
    int home_fd; /* the namespace the entering thread came from, or -1 */
    s_delay_t *delays[TQ_NETNS_MAX_HOSTS]; /* netem stand-ins, by host */
    bool no_netem; /* tc netem failed once: the stand-in from then on */
    tq_netns_t *next; /* s_live */
};

/* Sets not destroyed yet: the exit handler deletes their namespaces. */
static pthread_mutex_t s_live_lock = PTHREAD_MUTEX_INITIALIZER;
static tq_netns_t *s_live;
static bool s_atexit_done;

static const char *
s_find_tool(const char *name)
{
    static char found[2][64];
    const char *dirs[] = {"/usr/sbin", "/sbin", "/usr/bin", "/bin"};
    int slot = strcmp(name, "ip") == 0 ? 0 : 1;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(found[slot], sizeof found[slot], "%s/%s", dirs[i], name);
        if (access(found[slot], X_OK) == 0)
            return found[slot];
    }
    return NULL;
}

/* Runs a command given as words (NULL-terminated after the first), waits
   for it (bounded). quiet: its stderr is not shown when it fails. Returns
   its exit code, or -1. */
static int
s_run(bool quiet, const char *tool, ...)
{
    const char *path = s_find_tool(tool);
    if (!path)
        return -1;
    const char *argv[32];
    size_t argc = 0;
    argv[argc++] = path;
    va_list ap;
    va_start(ap, tool);
    const char *word;
    while ((word = va_arg(ap, const char *)) && argc < 31)
        argv[argc++] = word;
    va_end(ap);
    argv[argc] = NULL;
    tq_harness_run_t run;
    if (tq_harness_run((char *const *)argv, NULL, S_CMD_MS, &run) != 0)
        return -1;
    int rc = run.exit_code;
    if (rc != 0 && !quiet) {
        fprintf(stderr, "netns:");
        for (size_t i = 0; i < argc; i++)
            fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, ": exit %d: %s", rc, run.err);
    }
    tq_harness_run_free(&run);
    return rc;
}

bool
tq_netns_available(char *why, size_t size)
{
    if (!s_find_tool("ip") || !s_find_tool("tc")) {
        snprintf(why, size, "iproute2's ip and tc not found");
        return false;
    }
    /* can we make a network namespace at all? (CAP_NET_ADMIN, and
       CAP_SYS_ADMIN for ip netns's mounts) */
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        snprintf(why, size, "unshare(CLONE_NEWNET) refused (uid %d)",
                 (int)geteuid());
        return false;
    }
    if (geteuid() != 0) {
        snprintf(why, size, "ip netns needs root (uid %d)", (int)geteuid());
        return false;
    }
    return true;
}

/* Deletes the namespaces named tqt<N>... whose process N is gone: left
   by an earlier run of a test that crashed. Only names with our prefix. */
static void
s_remove_stale(void)
{
    DIR *dir = opendir("/run/netns");
    if (!dir)
        return;
    char names[64][256];
    size_t count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && count < 64) {
        if (strncmp(e->d_name, S_PREFIX, strlen(S_PREFIX)) != 0)
            continue;
        const char *p = e->d_name + strlen(S_PREFIX);
        char *end = NULL;
        long pid = strtol(p, &end, 10);
        if (end == p || pid <= 0 || (*end != 'h' && *end != 's'))
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* its run is still going */
        snprintf(names[count++], sizeof names[0], "%s", e->d_name);
    }
    closedir(dir);
    for (size_t i = 0; i < count; i++) {
        fprintf(stderr, "netns: removing %s, left by a run that died\n",
                names[i]);
        s_run(true, "ip", "netns", "del", names[i], NULL);
    }
}

static void
s_delete_namespaces(tq_netns_t *self)
{
    for (int i = 0; i < self->hosts; i++)
        if (self->made[i]) {
            s_run(false, "ip", "netns", "del", self->names[i], NULL);
            self->made[i] = false;
        }
    if (self->made[TQ_NETNS_MAX_HOSTS]) {
        s_run(false, "ip", "netns", "del", self->sw, NULL);
        self->made[TQ_NETNS_MAX_HOSTS] = false;
    }
}

static void
s_at_exit(void)
{
    /* the harness's own handler kills what is still running; here the
       namespaces go */
    pthread_mutex_lock(&s_live_lock);
    tq_netns_t *set = s_live;
    s_live = NULL;
    pthread_mutex_unlock(&s_live_lock);
    for (; set; set = set->next) {
        for (int i = 0; i < S_MAX_PIDS; i++)
            if (set->pids[i] > 0)
                tq_harness_stop(set->pids[i]);
        s_delete_namespaces(set);
    }
}

static int
s_build(tq_netns_t *self)
{
    const char *sw = self->sw;
    if (s_run(false, "ip", "netns", "add", sw, NULL) != 0)
        return -1;
    self->made[TQ_NETNS_MAX_HOSTS] = true;
    if (s_run(false, "ip", "-n", sw, "link", "set", "lo", "up", NULL) ||
        s_run(false, "ip", "-n", sw, "link", "add", "br0", "type", "bridge",
              NULL) ||
        s_run(false, "ip", "-n", sw, "link", "set", "br0", "up", NULL))
        return -1;
    unsigned net = (unsigned)getpid() % 250;
    for (int i = 0; i < self->hosts; i++) {
        const char *h = self->names[i];
        if (s_run(false, "ip", "netns", "add", h, NULL) != 0)
            return -1;
        self->made[i] = true;
        char port[16], cidr[40];
        snprintf(port, sizeof port, "p%d", i);
        snprintf(self->addrs[i], sizeof self->addrs[i], "10.211.%u.%d", net,
                 i + 1);
        snprintf(cidr, sizeof cidr, "%s/24", self->addrs[i]);
        if (s_run(false, "ip", "-n", sw, "link", "add", port, "type", "veth",
                  "peer", "name", "eth0", "netns", h, NULL) ||
            s_run(false, "ip", "-n", sw, "link", "set", port, "master", "br0",
                  NULL) ||
            s_run(false, "ip", "-n", sw, "link", "set", port, "up", NULL) ||
            s_run(false, "ip", "-n", h, "link", "set", "lo", "up", NULL) ||
            s_run(false, "ip", "-n", h, "addr", "add", cidr, "dev", "eth0",
                  NULL) ||
            s_run(false, "ip", "-n", h, "link", "set", "eth0", "up", NULL))
            return -1;
        snprintf(self->dirs[i], sizeof self->dirs[i], "%s/h%d", self->root, i);
        snprintf(self->chdir_args[i], sizeof self->chdir_args[i], "--chdir=%s",
                 self->dirs[i]);
        if (mkdir(self->dirs[i], 0700) != 0)
            return -1;
    }
    return 0;
}

tq_netns_t *
tq_netns_new(int hosts)
{
    if (hosts < 1 || hosts > TQ_NETNS_MAX_HOSTS)
        return NULL;
    tq_harness_init();
    pthread_mutex_lock(&s_live_lock);
    if (!s_atexit_done) {
        s_atexit_done = true;
        atexit(s_at_exit);
    }
    pthread_mutex_unlock(&s_live_lock);
    s_remove_stale();
    tq_netns_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->hosts = hosts;
    self->home_fd = -1;
    static int s_sets;
    snprintf(self->prefix, sizeof self->prefix, S_PREFIX "%d", (int)getpid());
    snprintf(self->sw, sizeof self->sw, "%ss%d", self->prefix, s_sets);
    for (int i = 0; i < hosts; i++)
        snprintf(self->names[i], sizeof self->names[i], "%sh%d%s", self->prefix,
                 i, s_sets ? "b" : "");
    s_sets++;
    if (tq_harness_tempdir(self->root, sizeof self->root, "netns") != 0) {
        free(self);
        return NULL;
    }
    pthread_mutex_lock(&s_live_lock);
    self->next = s_live;
    s_live = self;
    pthread_mutex_unlock(&s_live_lock);
    if (s_build(self) != 0) {
        tq_netns_destroy(&self);
        return NULL;
    }
    return self;
}

static void s_delay_stop(tq_netns_t *self, int host);

void
tq_netns_destroy(tq_netns_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_netns_t *self = *self_p;
    *self_p = NULL;
    pthread_mutex_lock(&s_live_lock);
    tq_netns_t **pp = &s_live;
    while (*pp && *pp != self)
        pp = &(*pp)->next;
    if (*pp)
        *pp = self->next;
    pthread_mutex_unlock(&s_live_lock);
    for (int i = 0; i < S_MAX_PIDS; i++)
        if (self->pids[i] > 0) {
            tq_harness_stop(self->pids[i]);
            self->pids[i] = 0;
        }
    for (int i = 0; i < self->hosts; i++)
        s_delay_stop(self, i);
    if (self->home_fd >= 0) {
        if (setns(self->home_fd, CLONE_NEWNET) != 0)
            fprintf(stderr, "netns: cannot return home: %s\n", strerror(errno));
        close(self->home_fd);
    }
    s_delete_namespaces(self);
    if (self->root[0])
        tq_harness_rmtree(self->root);
    free(self);
}

const char *
tq_netns_name(tq_netns_t *self, int host)
{
    return host >= 0 && host < self->hosts ? self->names[host] : NULL;
}

const char *
tq_netns_addr(tq_netns_t *self, int host)
{
    return host >= 0 && host < self->hosts ? self->addrs[host] : NULL;
}

const char *
tq_netns_dir(tq_netns_t *self, int host)
{
    return host >= 0 && host < self->hosts ? self->dirs[host] : NULL;
}

int
tq_netns_enter(tq_netns_t *self, int host)
{
    if (host < 0 || host >= self->hosts)
        return -1;
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", self->names[host]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (self->home_fd < 0)
        self->home_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    return rc == 0 ? 0 : -1;
}

int
tq_netns_link(tq_netns_t *self, int host, bool up)
{
    if (host < 0 || host >= self->hosts)
        return -1;
    char port[16];
    snprintf(port, sizeof port, "p%d", host);
    return s_run(false, "ip", "-n", self->sw, "link", "set", port,
                 up ? "up" : "down", NULL) == 0
        ? 0
        : -1;
}

static int64_t
s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
s_on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
            void *arg)
{
    (void)msg;
    s_delay_t *d = arg;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    if (d->loss > 0 && rand_r(&d->seed) < d->loss * ((double)RAND_MAX + 1)) {
        d->dropped++;
        return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
    }
    if (d->count == S_DELAY_RING) /* full: no delay rather than a stall */
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    size_t at = (d->head + d->count++) % S_DELAY_RING;
    d->ids[at] = id;
    d->due[at] = s_mono_ms() + d->delay_ms;
    d->held++;
    return 0;
}

static void
s_delay_ready(s_delay_t *d, int ready)
{
    pthread_mutex_lock(&d->lock);
    d->ready = ready;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

static void *
s_delay_thread(void *arg)
{
    s_delay_t *d = arg;
    /* this thread's netlink socket must live in the host's namespace */
    if (setns(d->ns_fd, CLONE_NEWNET) != 0 || !(d->h = nfq_open()) ||
        nfq_bind_pf(d->h, AF_INET) < 0 ||
        !(d->qh = nfq_create_queue(d->h, 0, s_on_packet, d)) ||
        nfq_set_mode(d->qh, NFQNL_COPY_META, 0) < 0) {
        fprintf(stderr, "netns: NFQUEUE delay: %s\n", strerror(errno));
        if (d->qh)
            nfq_destroy_queue(d->qh);
        if (d->h)
            nfq_close(d->h);
        d->qh = NULL;
        d->h = NULL;
        s_delay_ready(d, -1);
        return NULL;
    }
    nfq_set_queue_maxlen(d->qh, S_DELAY_RING);
    nfnl_rcvbufsiz(nfq_nfnlh(d->h), 8 << 20);
    s_delay_ready(d, 1);
    int fd = nfq_fd(d->h);
    char *buf = malloc(65536);
    for (bool running = buf != NULL; running;) {
        int64_t now = s_mono_ms();
        while (d->count && d->due[d->head] <= now) {
            nfq_set_verdict(d->qh, d->ids[d->head], NF_ACCEPT, 0, NULL);
            d->head = (d->head + 1) % S_DELAY_RING;
            d->count--;
        }
        int timeout = d->count ? (int)(d->due[d->head] - now) : -1;
        struct pollfd pfd[2] = {{fd, POLLIN, 0}, {d->wake_fd, POLLIN, 0}};
        if (poll(pfd, 2, timeout) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents)
            running = false;
        else if (pfd[0].revents) {
            ssize_t n = recv(fd, buf, 65536, MSG_DONTWAIT);
            if (n > 0)
                nfq_handle_packet(d->h, buf, (int)n);
        }
    }
    free(buf);
    /* what is still held goes out now */
    while (d->count) {
        nfq_set_verdict(d->qh, d->ids[d->head], NF_ACCEPT, 0, NULL);
        d->head = (d->head + 1) % S_DELAY_RING;
        d->count--;
    }
    nfq_destroy_queue(d->qh);
    nfq_close(d->h);
    return NULL;
}

static const char *
s_iptables(void)
{
    const char *paths[] = {"/usr/sbin/iptables-legacy",
                           "/sbin/iptables-legacy"};
    for (size_t i = 0; i < 2; i++)
        if (access(paths[i], X_OK) == 0)
            return paths[i];
    return NULL;
}

/* Removes host's NFQUEUE rules and stops its delay thread. */
static void
s_delay_stop(tq_netns_t *self, int host)
{
    s_delay_t *d = self->delays[host];
    if (!d)
        return;
    const char *h = self->names[host];
    const char *ipt = s_iptables();
    if (ipt) {
        s_run(true, "ip", "netns", "exec", h, ipt, "-F", "INPUT", NULL);
        s_run(true, "ip", "netns", "exec", h, ipt, "-F", "OUTPUT", NULL);
    }
    uint64_t one = 1;
    if (write(d->wake_fd, &one, sizeof one) < 0)
        fprintf(stderr, "netns: eventfd: %s\n", strerror(errno));
    pthread_join(d->thread, NULL);
    printf("netns: %s: %llu packets delayed, %llu dropped\n", h,
           (unsigned long long)d->held, (unsigned long long)d->dropped);
    close(d->wake_fd);
    close(d->ns_fd);
    pthread_mutex_destroy(&d->lock);
    pthread_cond_destroy(&d->cond);
    free(d);
    self->delays[host] = NULL;
}

/* netem's stand-in on host's side (both directions of its eth0). */
static int
s_delay_start(tq_netns_t *self, int host, int delay_ms, double loss_pct)
{
    const char *ipt = s_iptables();
    if (!ipt) {
        fprintf(stderr, "netns: no tc netem and no iptables-legacy\n");
        return -1;
    }
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", self->names[host]);
    s_delay_t *d = calloc(1, sizeof *d);
    if (!d)
        return -1;
    d->delay_ms = delay_ms;
    d->loss = loss_pct / 100.0;
    d->seed = (unsigned)getpid() * 31u + (unsigned)host;
    d->wake_fd = eventfd(0, EFD_CLOEXEC);
    d->ns_fd = open(path, O_RDONLY | O_CLOEXEC);
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    if (d->wake_fd < 0 || d->ns_fd < 0 ||
        pthread_create(&d->thread, NULL, s_delay_thread, d) != 0) {
        if (d->wake_fd >= 0)
            close(d->wake_fd);
        if (d->ns_fd >= 0)
            close(d->ns_fd);
        free(d);
        return -1;
    }
    self->delays[host] = d;
    pthread_mutex_lock(&d->lock);
    while (d->ready == 0)
        pthread_cond_wait(&d->cond, &d->lock);
    int ready = d->ready;
    pthread_mutex_unlock(&d->lock);
    const char *h = self->names[host];
    if (ready < 0 ||
        s_run(false, "ip", "netns", "exec", h, ipt, "-A", "INPUT", "-i", "eth0",
              "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass", NULL) ||
        s_run(false, "ip", "netns", "exec", h, ipt, "-A", "OUTPUT", "-o",
              "eth0", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass",
              NULL)) {
        s_delay_stop(self, host);
        return -1;
    }
    return 0;
}

int
tq_netns_netem(tq_netns_t *self, int host, int delay_ms, double loss_pct)
{
    if (host < 0 || host >= self->hosts)
        return -1;
    char port[16], delay[32], loss[32];
    snprintf(port, sizeof port, "p%d", host);
    snprintf(delay, sizeof delay, "%dms", delay_ms);
    snprintf(loss, sizeof loss, "%.3f%%", loss_pct);
    s_delay_stop(self, host);
    if (self->no_netem)
        return delay_ms == 0 && loss_pct == 0
            ? 0
            : s_delay_start(self, host, delay_ms, loss_pct);
    const char *ends[2][2] = {{self->names[host], "eth0"}, {self->sw, port}};
    for (int e = 0; e < 2; e++) {
        if (delay_ms == 0 && loss_pct == 0) {
            s_run(true, "ip", "netns", "exec", ends[e][0], "tc", "qdisc", "del",
                  "dev", ends[e][1], "root", NULL);
            continue;
        }
        const char *tc = s_find_tool("tc");
        if (!tc)
            return -1;
        if (s_run(e == 0, "ip", "netns", "exec", ends[e][0], tc, "qdisc",
                  "replace", "dev", ends[e][1], "root", "netem", "delay", delay,
                  "loss", loss, NULL) != 0) {
            if (e == 1)
                return -1;
            /* this kernel has no sch_netem: the NFQUEUE stand-in */
            fprintf(stderr,
                    "netns: no tc netem here: delaying and dropping "
                    "packets through NFQUEUE instead\n");
            self->no_netem = true;
            return s_delay_start(self, host, delay_ms, loss_pct);
        }
    }
    return 0;
}

int
tq_netns_netem_counts(tq_netns_t *self, int host, uint64_t *delayed,
                      uint64_t *dropped)
{
    if (host < 0 || host >= self->hosts || !self->delays[host])
        return -1;
    *delayed = self->delays[host]->held;
    *dropped = self->delays[host]->dropped;
    return 0;
}

static void
s_keep_pid(tq_netns_t *self, pid_t pid)
{
    for (int i = 0; i < S_MAX_PIDS; i++)
        if (self->pids[i] <= 0) {
            self->pids[i] = pid;
            return;
        }
}

int
tq_netns_broker_start(tq_netns_t *self, int host, tq_harness_broker_t *broker,
                      const char *const extra[])
{
    if (host < 0 || host >= self->hosts)
        return -1;
    const char *prefix[] = {s_find_tool("ip"), "netns", "exec",
                            self->names[host], NULL};
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://%s:*", self->addrs[host]);
    tq_harness_set_prefix(prefix);
    int rc = tq_harness_broker_start_on(broker, ep, ep, extra, NULL);
    tq_harness_set_prefix(NULL);
    return rc;
}

pid_t
tq_netns_worker_start(tq_netns_t *self, int host, const char *endpoint,
                      int children, const char *const extra[])
{
    if (host < 0 || host >= self->hosts)
        return -1;
    const char *prefix[] = {s_find_tool("ip"),
                            "netns",
                            "exec",
                            self->names[host],
                            "/usr/bin/env",
                            self->chdir_args[host],
                            NULL};
    const char *args[40];
    size_t n = 0;
    args[n++] = "--host";
    args[n++] = self->names[host];
    for (size_t i = 0; extra && extra[i] && n < 39; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    tq_harness_set_prefix(prefix);
    pid_t pid = tq_harness_worker_start(endpoint, children, args);
    tq_harness_set_prefix(NULL);
    if (pid > 0)
        s_keep_pid(self, pid);
    return pid;
}

int
tq_netns_stop(tq_netns_t *self, pid_t pid)
{
    for (int i = 0; i < S_MAX_PIDS; i++)
        if (self->pids[i] == pid)
            self->pids[i] = 0;
    return tq_harness_stop(pid);
}
