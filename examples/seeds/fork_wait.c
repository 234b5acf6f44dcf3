/* fork_wait.c - seeds "fork()" and "子进程如何回收": fork, both sides print
   their pid and ppid, the parent reaps with wait (no zombie); then the same
   with a Pool, whose children are all gone after destroy (/proc checked). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "seed_common.h"
#include "tq/tq.h"

/* Children of pid still in /proc (zombies included). */
static int
s_children_of(pid_t parent)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d))) {
        char path[300], line[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[len] = '\0';
        char *p = strrchr(line, ')');
        char state;
        long ppid;
        if (p && sscanf(p + 1, " %c %ld", &state, &ppid) == 2 && ppid == parent)
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("在创建子进程前: pid=%ld, ppid=%ld\n", (long)getpid(),
           (long)getppid());
    pid_t pid = fork();
    if (pid == 0) {
        printf("子进程创建完后: pid=%ld, ppid=%ld\n", (long)getpid(),
               (long)getppid());
        seed_sleep(seed_secs(5));
    } else {
        printf("父进程创建完后: pid=%ld, ppid=%ld\n", (long)getpid(),
               (long)getppid());
        seed_sleep(seed_secs(5));
    }
    printf("fork创建完后: pid=%ld, ppid=%ld\n", (long)getpid(),
           (long)getppid());
    if (pid == 0)
        _exit(0);
    int status;
    pid_t reaped = wait(&status); /* 回收子进程资源 */
    printf("wait: reaped %ld, children left %d (no zombie)\n", (long)reaped,
           s_children_of(getpid()));

    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    tq_pool_t *pool = tq_pool_new(3, &po);
    if (!pool)
        return 1;
    pid_t server = tq_pool_server_pid(pool);
    pid_t kids[8];
    size_t n = 0;
    for (int i = 0; i < 500 && n < 3; i++) {
        n = tq_pool_pids(pool, kids, 8);
        seed_sleep(0.01);
    }
    printf("pool: fork server %ld with %zu children\n", (long)server, n);
    tq_pool_close(pool);
    tq_pool_join(pool, 10000);
    tq_pool_destroy(&pool);
    int left = 0;
    for (size_t i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld", (long)kids[i]);
        left += access(path, F_OK) == 0;
    }
    left += s_children_of(getpid());
    printf("pool destroyed: %d process(es) left (no orphan, no zombie)\n",
           left);
    return left ? 1 : 0;
}
