/* tq_orphans.c - killing a subreaper's inherited orphans, found through
   /proc. */
#include "tq_orphans.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
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
