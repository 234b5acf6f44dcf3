/* producer_consumer.c - seed "多进程实现生产者消费者": 5 producer and 5
   consumer processes on one multiprocessing.Queue; each producer puts
   1,000 (i, num) tuples, the main process puts one None per consumer once
   the producers are joined, every item is consumed exactly once.
   tq: the Queue is a data queue on the pool's broker (tq_queue.h); the 10
   Process objects are 10 pool tasks running at once in a pool of 10, each
   reaching the queue through its child's client on the pool
   (tq_pool_task_client). Items are put with tq_queue_putf and taken as
   values with tq_queue_get_item. Each consumer
   returns the count of every item it took, so the main process can print
   produced/consumed/missing/doubled. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "seed_tq.h"

#define PRODUCERS 5
#define CONSUMERS 5
#define ITEMS 1000
#define QUEUE "seed.pc"

/* producer(num): MultiProcessProducer.run; returns the number of items it
   put. */
static int
s_producer(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    int64_t num;
    int rc = tq_arg_int(args, 0, &num);
    if (rc)
        return rc;
    tq_client_t *client = tq_pool_task_client();
    tq_queue_t *queue = client ? tq_queue_new(client, QUEUE, 0) : NULL;
    if (!queue)
        return tq_task_fail(task, "producer %lld: no queue", (long long)num);
    double t1 = seed_now();
    printf("producer start %lld\n", (long long)num);
    int put = 0;
    for (int i = 0; i < ITEMS && rc == TQ_OK; i++) /* queue.put((i, num)) */
        if ((rc = tq_queue_putf(queue, SEED_WAIT_MS, "ii", (int64_t)i, num)) ==
            TQ_OK)
            put++;
    double t2 = seed_now();
    printf("producer exit %lld\n", (long long)num);
    printf("producer %lld, use_time: %f\n", (long long)num, t2 - t1);
    tq_queue_destroy(&queue);
    if (rc != TQ_OK)
        return tq_task_fail(task, "producer %lld: put: %s", (long long)num,
                            tq_strerror(rc));
    return tq_pack_int(out, put);
}

/* consumer(num): MultiProcessConsumer.run, takes items until a None;
   returns [consumed, bad items, bin of PRODUCERS*ITEMS counts]. */
static int
s_consumer(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    int64_t num;
    int rc = tq_arg_int(args, 0, &num);
    if (rc)
        return rc;
    tq_client_t *client = tq_pool_task_client();
    tq_queue_t *queue = client ? tq_queue_new(client, QUEUE, 0) : NULL;
    if (!queue)
        return tq_task_fail(task, "consumer %lld: no queue", (long long)num);
    static unsigned char seen[PRODUCERS * ITEMS]; /* one per child */
    memset(seen, 0, sizeof seen);
    int64_t consumed = 0, bad = 0;
    double t1 = seed_now();
    printf("consumer start %lld\n", (long long)num);
    for (;;) {
        tq_item_t *item = NULL; /* queue.get() */
        rc = tq_queue_get_item(queue, &item, SEED_WAIT_MS);
        bool stop = rc != TQ_OK || tq_item_is_nil(item);
        if (!stop) {
            /* the tuple (i, num): tq_arg_int reads an array's elements */
            int64_t i = -1, p = -1;
            if (tq_arg_int(tq_item_value(item), 0, &i) == TQ_OK &&
                tq_arg_int(tq_item_value(item), 1, &p) == TQ_OK && i >= 0 &&
                i < ITEMS && p >= 0 && p < PRODUCERS) {
                if (seen[p * ITEMS + i] < 255)
                    seen[p * ITEMS + i]++;
                consumed++;
            } else
                bad++;
        }
        tq_item_destroy(&item);
        if (stop)
            break;
    }
    double t2 = seed_now();
    printf("consumer exit %lld\n", (long long)num);
    printf("consumer %lld, use time:%f\n", (long long)num, t2 - t1);
    tq_queue_destroy(&queue);
    if (rc != TQ_OK)
        return tq_task_fail(task, "consumer %lld: get: %s", (long long)num,
                            tq_strerror(rc));
    msgpack_pack_array(out, 3);
    msgpack_pack_int64(out, consumed);
    msgpack_pack_int64(out, bad);
    msgpack_pack_bin(out, sizeof seen);
    msgpack_pack_bin_body(out, seen, sizeof seen);
    return 0;
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "producer", s_producer, NULL);
    tq_registry_add(reg, "consumer", s_consumer, NULL);
    /* every Process runs at once, as in the original: one child each */
    tq_pool_t *pool = seed_pool_new(PRODUCERS + CONSUMERS, reg);
    if (!pool)
        return 1;
    tq_queue_t *queue = tq_queue_new(tq_pool_client(pool), QUEUE, 0);
    double t0 = seed_now();
    tq_result_t *producer[PRODUCERS], *consumer[CONSUMERS];
    for (int i = 0; i < PRODUCERS; i++)
        producer[i] =
            tq_pool_apply_async(pool, "producer", NULL, "i", (int64_t)i);
    for (int i = 0; i < CONSUMERS; i++)
        consumer[i] =
            tq_pool_apply_async(pool, "consumer", NULL, "i", (int64_t)i);
    long produced = 0, errors = 0;
    for (int i = 0; i < PRODUCERS; i++) /* producer[i].join() */
        if (producer[i] && tq_result_get(producer[i], 60000) == TQ_OK)
            produced += (long)tq_result_value(producer[i])->via.i64;
        else {
            errors++;
            fprintf(stderr, "producer %d: %s\n", i,
                    producer[i] ? tq_result_error(producer[i]) : "refused");
        }
    for (int i = 0; i < CONSUMERS; i++) /* queue.put(None) */
        if (!queue || tq_queue_putf(queue, SEED_WAIT_MS, "n") != TQ_OK)
            errors++;
    static int seen[PRODUCERS * ITEMS];
    long consumed = 0, bad = 0;
    for (int i = 0; i < CONSUMERS; i++) { /* consumer[i].join() */
        const msgpack_object *v = NULL;
        if (consumer[i] && tq_result_get(consumer[i], 60000) == TQ_OK)
            v = tq_result_value(consumer[i]);
        if (!v || v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 3 ||
            v->via.array.ptr[2].type != MSGPACK_OBJECT_BIN ||
            v->via.array.ptr[2].via.bin.size != sizeof seen / sizeof *seen) {
            errors++;
            fprintf(stderr, "consumer %d: %s\n", i,
                    consumer[i] ? tq_result_error(consumer[i]) : "refused");
            continue;
        }
        consumed += (long)v->via.array.ptr[0].via.i64;
        bad += (long)v->via.array.ptr[1].via.i64;
        const unsigned char *counts =
            (const unsigned char *)v->via.array.ptr[2].via.bin.ptr;
        for (size_t k = 0; k < sizeof seen / sizeof *seen; k++)
            seen[k] += counts[k];
    }
    printf("all done finish\n");
    long missing = 0, doubled = 0;
    for (size_t k = 0; k < sizeof seen / sizeof *seen; k++) {
        missing += seen[k] == 0;
        doubled += seen[k] > 1;
    }
    printf("produced %ld consumed %ld missing %ld doubled %ld errors %ld "
           "in %.2f s\n",
           produced, consumed, missing, doubled, errors + bad, seed_now() - t0);
    for (int i = 0; i < PRODUCERS; i++)
        tq_result_destroy(&producer[i]);
    for (int i = 0; i < CONSUMERS; i++)
        tq_result_destroy(&consumer[i]);
    tq_queue_destroy(&queue);
    tq_pool_close(pool);
    tq_pool_join(pool, 10000);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return produced == PRODUCERS * ITEMS && consumed == produced && !missing &&
            !doubled && !errors && !bad
        ? 0
        : 1;
}
