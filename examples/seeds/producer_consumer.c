/* producer_consumer.c - seed "多进程实现生产者消费者": 5 producers x 1,000
   items, 5 consumers, every item consumed exactly once. The distributed
   Queue is not there yet, so the queue is the pool's own: each producer
   (a thread of this program) submits its items as tasks, the 5 children
   consume them, and the results come back to be counted. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "seed_common.h"
#include "tq/tq.h"

#define PRODUCERS 5
#define CONSUMERS 5
#define ITEMS 1000

static tq_pool_t *s_pool;
static tq_result_t *s_results[PRODUCERS][ITEMS];

/* consume((i, num)): returns [i, num, pid of the consumer] */
static int
s_consume(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)task;
    msgpack_pack_array(out, 3);
    msgpack_pack_object(out, args->via.array.ptr[0]);
    msgpack_pack_object(out, args->via.array.ptr[1]);
    msgpack_pack_int64(out, (int64_t)getpid());
    return 0;
}

static void *
s_producer(void *arg)
{
    int num = (int)(intptr_t)arg;
    double t1 = seed_now();
    printf("producer start %d\n", num);
    for (int i = 0; i < ITEMS; i++)
        s_results[num][i] = tq_pool_apply_async(s_pool, "consume", NULL, "ii",
                                                (int64_t)i, (int64_t)num);
    double t2 = seed_now();
    printf("producer exit %d\n", num);
    printf("producer %d, use_time: %f\n", num, t2 - t1);
    return NULL;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "consume", s_consume, NULL);
    tq_pool_options_t po = TQ_POOL_OPTIONS_INIT;
    po.registry = reg;
    po.quiet = true;
    s_pool = tq_pool_new(CONSUMERS, &po); /* before the producer threads */
    if (!s_pool)
        return 1;
    double t0 = seed_now();
    pthread_t producers[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&producers[i], NULL, s_producer, (void *)(intptr_t)i);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(producers[i], NULL);
    /* the None sentinels of the original: no more items */
    tq_pool_close(s_pool);
    tq_pool_join(s_pool, 60000);

    static int seen[PRODUCERS][ITEMS];
    pid_t consumers[64];
    int per_consumer[64] = {0}, nconsumers = 0;
    long consumed = 0, errors = 0;
    for (int p = 0; p < PRODUCERS; p++)
        for (int i = 0; i < ITEMS; i++) {
            tq_result_t *r = s_results[p][i];
            if (!r || tq_result_get(r, 0) != TQ_OK) {
                errors++;
                tq_result_destroy(&r);
                continue;
            }
            const msgpack_object *v = tq_result_value(r);
            int64_t item = v->via.array.ptr[0].via.i64;
            int64_t num = v->via.array.ptr[1].via.i64;
            pid_t pid = (pid_t)v->via.array.ptr[2].via.i64;
            if (num >= 0 && num < PRODUCERS && item >= 0 && item < ITEMS)
                seen[num][item]++;
            int k = 0;
            while (k < nconsumers && consumers[k] != pid)
                k++;
            if (k == nconsumers && nconsumers < 64)
                consumers[nconsumers++] = pid;
            if (k < 64)
                per_consumer[k]++;
            consumed++;
            tq_result_destroy(&r);
        }
    long once = 0, twice = 0, never = 0;
    for (int p = 0; p < PRODUCERS; p++)
        for (int i = 0; i < ITEMS; i++) {
            once += seen[p][i] == 1;
            twice += seen[p][i] > 1;
            never += seen[p][i] == 0;
        }
    for (int k = 0; k < nconsumers; k++)
        printf("consumer %d (pid %ld) consumed %d\n", k, (long)consumers[k],
               per_consumer[k]);
    printf("all done finish\n");
    printf("produced %d consumed %ld exactly-once %ld duplicated %ld "
           "missing %ld errors %ld in %.2f s\n",
           PRODUCERS * ITEMS, consumed, once, twice, never, errors,
           seed_now() - t0);
    tq_pool_destroy(&s_pool);
    tq_registry_destroy(&reg);
    return once == PRODUCERS * ITEMS && !twice && !errors ? 0 : 1;
}
