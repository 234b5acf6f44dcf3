/* tq_exit_child.c - a program that returns from main without destroying
   what it made, for test_pool: a pool of 2 with a 30 s task running and
   a second client on the pool's endpoint with a request pending, their
   handles left too. Prints the pool's child pids first, one per line. */
#include <tq/tq.h>

#include <stdio.h>

int
main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.quiet = true;
    tq_pool_t *pool = tq_pool_new(2, &po);
    if (!pool)
        return 2;
    tq_result_t *r =
        tq_pool_apply_timeout(pool, "tq.echo", NULL, 10000, "i", (int64_t)1);
    if (tq_result_code(r) != TQ_OK)
        return 3;
    pid_t pids[2];
    size_t n = tq_pool_pids(pool, pids, 2);
    for (size_t i = 0; i < n; i++)
        printf("%ld\n", (long)pids[i]);
    tq_pool_apply_async(pool, "tq.sleep", NULL, "d", 30.0);
    tq_client_t *client = tq_client_new(tq_pool_endpoint(pool));
    if (!client)
        return 4;
    tq_apply_async(client, "tq.sleep", NULL, "d", 30.0);
    return 0;
}
