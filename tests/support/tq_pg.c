/* tq_pg.c - a private PostgreSQL cluster for one test (see tq_pg.h). */
#include "tq_pg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct tq_pg_t {
    char dir[256]; /* the cluster's directory: data/, sock/, logs */
    char bindir[256]; /* initdb and postgres */
    char url[512];
    char addr[64]; /* listen_addresses */
    int port;
    pid_t pid; /* the postmaster, 0 while stopped */
};

static long long
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* $TQ_PG_BINDIR, or the newest /usr/lib/postgresql/N/bin with initdb. */
static int
s_find_bindir(char *out, size_t size)
{
    const char *env = getenv("TQ_PG_BINDIR");
    if (env && *env) {
        snprintf(out, size, "%s", env);
        return 0;
    }
    glob_t g;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0) {
        fprintf(stderr,
                "tq_pg: no /usr/lib/postgresql/*/bin/initdb: "
                "install Debian's postgresql (scripts/deps.sh)\n");
        return -1;
    }
    /* sorted: the last is the newest of one-digit-count versions */
    snprintf(out, size, "%s", g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    *strrchr(out, '/') = '\0';
    return 0;
}

static int
s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(addr.sin_port);
}

/* The unprivileged user the server runs as when we are root. */
static int
s_user(uid_t *uid, gid_t *gid)
{
    if (geteuid() != 0) {
        *uid = geteuid();
        *gid = getegid();
        return 0;
    }
    struct passwd *pw = getpwnam("nobody");
    if (!pw) {
        fprintf(stderr, "tq_pg: running as root and no user 'nobody'\n");
        return -1;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

/* Forks argv as the unprivileged user, output appended to log. The child
   dies with us (SIGQUIT: the server's immediate shutdown). */
static pid_t
s_spawn(char *const argv[], const char *log)
{
    uid_t uid;
    gid_t gid;
    if (s_user(&uid, &gid) != 0)
        return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    if (geteuid() == 0 &&
        (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0))
        _exit(126);
    /* after setuid, which clears the parent-death signal */
    prctl(PR_SET_PDEATHSIG, SIGQUIT);
    if (getppid() != parent)
        _exit(125);
    execv(argv[0], argv);
    _exit(127);
}

/* Waits for pid to exit, at most ms; its status, or -1 on timeout. */
static int
s_wait(pid_t pid, int ms)
{
    long long deadline = s_now_ms() + ms;
    int status;
    while (s_now_ms() < deadline) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid)
            return status;
        if (got < 0)
            return -1;
        usleep(10000);
    }
    return -1;
}

static int
s_chown_tree(const char *path, uid_t uid, gid_t gid)
{
    return geteuid() == 0 ? chown(path, uid, gid) : 0;
}

int
tq_pg_start(tq_pg_t *self)
{
    if (self->pid)
        return -1;
    char bin[512], data[512], sock[512], log[512], port[16], listen[96];
    snprintf(bin, sizeof bin, "%s/postgres", self->bindir);
    snprintf(data, sizeof data, "%s/data", self->dir);
    snprintf(sock, sizeof sock, "%s/sock", self->dir);
    snprintf(log, sizeof log, "%s/postgres.log", self->dir);
    snprintf(port, sizeof port, "%d", self->port);
    snprintf(listen, sizeof listen, "listen_addresses=%s", self->addr);
    /* fsync off: the tests kill brokers, never this server, so its own
       durability is not under test; small: many run side by side */
    char *argv[] = {bin,
                    "-D",
                    data,
                    "-p",
                    port,
                    "-k",
                    sock,
                    "-c",
                    listen,
                    "-c",
                    "fsync=off",
                    "-c",
                    "shared_buffers=16MB",
                    "-c",
                    "max_connections=20",
                    "-c",
                    "max_wal_senders=0",
                    NULL};
    self->pid = s_spawn(argv, log);
    if (self->pid < 0) {
        self->pid = 0;
        return -1;
    }
    long long deadline = s_now_ms() + 60000;
    while (s_now_ms() < deadline) {
        if (PQping(self->url) == PQPING_OK)
            return 0;
        int status;
        if (waitpid(self->pid, &status, WNOHANG) == self->pid) {
            fprintf(stderr, "tq_pg: postgres exited (status %d); see %s\n",
                    status, log);
            self->pid = 0;
            return -1;
        }
        usleep(20000);
    }
    fprintf(stderr, "tq_pg: postgres did not accept connections in 60 s\n");
    tq_pg_stop(self);
    return -1;
}

tq_pg_t *
tq_pg_new(void)
{
    return tq_pg_new_on("127.0.0.1");
}

tq_pg_t *
tq_pg_new_on(const char *addr)
{
    tq_pg_t *self = calloc(1, sizeof *self);
    uid_t uid;
    gid_t gid;
    if (!self || s_find_bindir(self->bindir, sizeof self->bindir) != 0 ||
        s_user(&uid, &gid) != 0) {
        free(self);
        return NULL;
    }
    snprintf(self->addr, sizeof self->addr, "%s", addr);
    const char *tmp = getenv("TMPDIR");
    snprintf(self->dir, sizeof self->dir, "%s/tq-pg-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(self->dir)) {
        fprintf(stderr, "tq_pg: mkdtemp: %s\n", strerror(errno));
        free(self);
        return NULL;
    }
    char sock[512], data[512], log[512], bin[512];
    snprintf(sock, sizeof sock, "%s/sock", self->dir);
    snprintf(data, sizeof data, "%s/data", self->dir);
    snprintf(log, sizeof log, "%s/initdb.log", self->dir);
    snprintf(bin, sizeof bin, "%s/initdb", self->bindir);
    if (mkdir(sock, 0700) != 0 || s_chown_tree(self->dir, uid, gid) != 0 ||
        s_chown_tree(sock, uid, gid) != 0) {
        fprintf(stderr, "tq_pg: %s: %s\n", self->dir, strerror(errno));
        tq_pg_destroy(&self);
        return NULL;
    }
    char *argv[] = {bin,     "-D", data,   "-U",         "tq",        "-A",
                    "trust", "-E", "UTF8", "--locale=C", "--no-sync", NULL};
    pid_t pid = s_spawn(argv, log);
    int status = pid > 0 ? s_wait(pid, 120000) : -1;
    if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (pid > 0 && status < 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        fprintf(stderr, "tq_pg: initdb failed (status %d); see %s\n", status,
                log);
        tq_pg_destroy(&self);
        return NULL;
    }
    if (strcmp(self->addr, "127.0.0.1") != 0) {
        /* initdb trusts loopback only: hosts of the server's own subnet
           too (the test's namespaces) */
        char hba[600];
        snprintf(hba, sizeof hba, "%s/pg_hba.conf", data);
        FILE *f = fopen(hba, "a");
        if (!f || fputs("host all all samenet trust\n", f) < 0) {
            fprintf(stderr, "tq_pg: cannot write %s\n", hba);
            if (f)
                fclose(f);
            tq_pg_destroy(&self);
            return NULL;
        }
        fclose(f);
    }
    self->port = s_free_port();
    snprintf(self->url, sizeof self->url, "postgresql://tq@%s:%d/postgres",
             self->addr, self->port);
    if (self->port <= 0 || tq_pg_start(self) != 0) {
        tq_pg_destroy(&self);
        return NULL;
    }
    return self;
}

const char *
tq_pg_url(const tq_pg_t *self)
{
    return self->url;
}

pid_t
tq_pg_pid(const tq_pg_t *self)
{
    return self->pid;
}

int
tq_pg_stop(tq_pg_t *self)
{
    if (!self->pid)
        return -1;
    kill(self->pid, SIGINT); /* fast shutdown: sessions are cut */
    if (s_wait(self->pid, 30000) < 0) {
        kill(self->pid, SIGKILL);
        waitpid(self->pid, NULL, 0);
    }
    self->pid = 0;
    return 0;
}

void
tq_pg_destroy(tq_pg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_pg_t *self = *self_p;
    tq_pg_stop(self);
    if (self->dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", self->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "tq_pg: could not remove %s\n", self->dir);
    }
    free(self);
    *self_p = NULL;
}

void
tq_pg_unreachable_url(char *url, size_t size)
{
    snprintf(url, size, "postgresql://tq@127.0.0.1:%d/postgres", s_free_port());
}

bool
tq_pg_lease_lapsed(const tq_pg_t *self)
{
    PGconn *conn = PQconnectdb(self->url);
    bool lapsed = false;
    if (PQstatus(conn) == CONNECTION_OK) {
        /* no tq_lease table yet: no broker ever took the lease */
        PGresult *res = PQexec(conn,
                               "SELECT count(*) FROM tq_lease WHERE"
                               " expires_at > clock_timestamp()");
        lapsed = PQresultStatus(res) != PGRES_TUPLES_OK ||
            strcmp(PQgetvalue(res, 0, 0), "0") == 0;
        PQclear(res);
    }
    PQfinish(conn);
    return lapsed;
}

int
tq_pg_wait_lease_lapsed(const tq_pg_t *self, int timeout_ms)
{
    long long deadline = s_now_ms() + timeout_ms;
    while (!tq_pg_lease_lapsed(self)) {
        if (s_now_ms() >= deadline)
            return -1;
        usleep(20000);
    }
    return 0;
}
