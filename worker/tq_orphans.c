/* tq_orphans.c - killing a subreaper's inherited orphans and a dying
   child's descendants, found through /proc. */
#include "tq_orphans.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Kills pid if it is a live orphan of parent (not kept, not a zombie) and
   the process group it leads. check_parent: pid was not found through
   parent's children list. Returns 1 if it did. */
static int
s_kill_one(pid_t parent, long pid, bool check_parent, const pid_t *keep,
           size_t n)
{
    if (pid <= 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i] == (pid_t)pid)
            return 0;
    char path[64], stat[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t len = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (len <= 0)
        return 0;
    stat[len] = '\0';
    /* "pid (comm) state ppid pgrp ...": comm may hold anything */
    char *paren = strrchr(stat, ')');
    char state;
    long ppid, pgrp;
    if (!paren || sscanf(paren + 1, " %c %ld %ld", &state, &ppid, &pgrp) != 3)
        return 0;
    if ((check_parent && ppid != (long)parent) || state == 'Z')
        return 0;
    if (pgrp == pid)
        kill((pid_t)-pid, SIGKILL); /* a group it leads goes too */
    kill((pid_t)pid, SIGKILL);
    return 1;
}

int
tq_orphans_kill(pid_t parent, const pid_t *keep, size_t n)
{
    int killed = 0;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/task", (long)parent);
    DIR *tasks = opendir(dir);
    struct dirent *entry;
    bool listed = false;
    while (tasks && (entry = readdir(tasks))) {
        if (entry->d_name[0] == '.')
            continue;
        char path[352];
        snprintf(path, sizeof path, "%s/%s/children", dir, entry->d_name);
        FILE *f = fopen(path, "re");
        if (!f)
            continue;
        listed = true;
        long pid;
        while (fscanf(f, "%ld", &pid) == 1)
            killed += s_kill_one(parent, pid, false, keep, n);
        fclose(f);
    }
    if (tasks)
        closedir(tasks);
    if (listed)
        return killed;
    DIR *proc = opendir("/proc");
    while (proc && (entry = readdir(proc))) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (!*end)
            killed += s_kill_one(parent, pid, true, keep, n);
    }
    if (proc)
        closedir(proc);
    return killed;
}

/* ---- async-signal-safe: a child's descendants ----------------------- */

#define S_SNAPSHOT_MAX 32768 /* processes looked at, at most */

/* One snapshot of /proc: static, a signal handler allocates nothing. */
static pid_t s_pid[S_SNAPSHOT_MAX], s_ppid[S_SNAPSHOT_MAX];
static pid_t s_pgrp[S_SNAPSHOT_MAX];
static pid_t s_marked[S_SNAPSHOT_MAX]; /* descendants found so far */

/* Parses the decimal number at *p, moving *p past it; -1 if none. */
static long
s_number(const char **p)
{
    long v = -1;
    while (**p >= '0' && **p <= '9') {
        v = (v < 0 ? 0 : v * 10) + (**p - '0');
        (*p)++;
    }
    return v;
}

/* Reads ppid and pgrp of /proc/<name>/stat; false if it is gone, a zombie
   or unreadable. */
static bool
s_stat(const char *name, pid_t *ppid, pid_t *pgrp)
{
    char path[64] = "/proc/";
    size_t len = 6;
    for (const char *c = name; *c && len < sizeof path - 6; c++)
        path[len++] = *c;
    memcpy(path + len, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *p = NULL; /* the last ')': comm may hold anything */
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == ')')
            p = buf + i;
    if (!p || p[1] != ' ' || !p[2] || p[2] == 'Z' || p[3] != ' ')
        return false;
    p += 4;
    long parent = s_number(&p);
    if (*p++ != ' ')
        return false;
    long group = s_number(&p);
    if (parent < 0 || group < 0)
        return false;
    *ppid = (pid_t)parent;
    *pgrp = (pid_t)group;
    return true;
}

int
tq_orphans_kill_descendants(void)
{
    pid_t me = getpid();
    int fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t count = 0;
    char buf[8192];
    ssize_t got;
    while ((got = getdents64(fd, buf, sizeof buf)) > 0)
        for (ssize_t off = 0; off < got;) {
            struct dirent64 *d = (struct dirent64 *)(buf + off);
            off += d->d_reclen;
            const char *p = d->d_name;
            long pid = s_number(&p);
            if (pid <= 0 || *p || pid == me || count == S_SNAPSHOT_MAX)
                continue;
            if (s_stat(d->d_name, &s_ppid[count], &s_pgrp[count]))
                s_pid[count++] = (pid_t)pid;
        }
    close(fd);
    /* descendants: children of me, then of those, until none is new */
    size_t marked = 0;
    bool more = true;
    while (more) {
        more = false;
        for (size_t i = 0; i < count; i++) {
            if (!s_pid[i])
                continue; /* marked already */
            bool ours = s_ppid[i] == me;
            for (size_t k = 0; !ours && k < marked; k++)
                ours = s_ppid[i] == s_marked[k];
            if (ours) {
                s_marked[marked++] = s_pid[i];
                if (s_pgrp[i] == s_pid[i])
                    kill(-s_pid[i], SIGKILL);
                kill(s_pid[i], SIGKILL);
                s_pid[i] = 0;
                more = true;
            }
        }
    }
    return (int)marked;
}
