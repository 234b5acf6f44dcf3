/* process_info.c - seed "3.2 Process进程": the main process prints its pid
   and ppid around a Process's life (pid/ident None before start,
   is_alive() False, True, False around start and join, terminate at the
   end); the child prints its own pid/ppid and "hello jingsanpang".
   tq: the Process is a pool of 1 (created where the Process object is)
   and its task handle: start = tq_pool_apply_async, is_alive = the handle
   not ready, join = tq_result_get, terminate = tq_pool_terminate; pid and
   ident are the pool child's pid. Differences: the child's ppid is the
   pool's fork server, not the main process, and the child process is
   already forked when the pool is made (it lives on after its task). */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

/* fun(name) */
static int
s_fun(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    char name[128];
    int rc = tq_arg_str(args, 0, name, sizeof name);
    if (rc)
        return rc;
    printf("2 子进程信息: pid=%ld, ppid=%ld\n", (long)getpid(),
           (long)getppid());
    printf("hello %s\n", name);
    msgpack_pack_nil(out);
    return 0;
}

static const char *
s_bool(bool b)
{
    return b ? "True" : "False";
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("1 主进程信息: pid=%ld, ppid=%ld\n", (long)getpid(),
           (long)getppid());
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "fun", s_fun, NULL);
    /* ps = Process(target=fun, args=('jingsanpang',)) */
    tq_pool_t *ps = seed_pool_new(1, reg);
    if (!ps)
        return 1;
    tq_result_t *h = NULL; /* not started */
    printf("111 ##### ps pid: None, ident:None\n");
    printf("3 进程信息: pid=%ld, ppid=%ld\n", (long)getpid(), (long)getppid());
    printf("%s\n", s_bool(h && !tq_result_ready(h))); /* is_alive() */
    h = tq_pool_apply_async(ps, "fun", NULL, "s", "jingsanpang"); /* start */
    printf("%s\n", s_bool(h && !tq_result_ready(h)));
    pid_t pid = 0;
    seed_pool_children(ps, &pid, 1);
    fprintf(stderr, "fork server (the child's ppid): %ld\n",
            (long)tq_pool_server_pid(ps));
    printf("222 #### ps pid: %ld, ident:%ld\n", (long)pid, (long)pid);
    printf("4 进程信息: pid=%ld, ppid=%ld\n", (long)getpid(), (long)getppid());
    int rc = h ? tq_result_get(h, 60000) : TQ_EINVAL; /* join() */
    printf("%s\n", s_bool(h && !tq_result_ready(h)));
    printf("5 进程信息: pid=%ld, ppid=%ld\n", (long)getpid(), (long)getppid());
    tq_pool_terminate(ps); /* terminate() */
    printf("6 进程信息: pid=%ld, ppid=%ld\n", (long)getpid(), (long)getppid());
    tq_result_destroy(&h);
    tq_pool_destroy(&ps);
    tq_registry_destroy(&reg);
    return rc == TQ_OK ? 0 : 1;
}
