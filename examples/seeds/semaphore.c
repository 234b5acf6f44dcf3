/* semaphore.c - seed "Semaphone": a Producer and a Consumer process on
   buffer = Queue(10), with empty = Semaphore(2), full = Semaphore(0) and
   a Lock; each step prints "Producer append an element" or "Consumer pop
   an element" and sleeps 1 s under the lock. The producer is never more
   than 2 elements ahead of the consumer.
   tq has no Semaphore or Lock: each is a data queue holding tokens on the
   pool's broker (acquire = get, release = put; Lock = 1 token). The
   original loops forever (its join never returns and "Ended!" is never
   printed); here each side stops after ROUNDS elements, then "Ended!". */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

#define ROUNDS 5

typedef struct {
    tq_queue_t *buffer, *empty, *full, *lock;
} s_globals_t;

/* Opens the globals of the original in this process, through the child's
   client on the pool; false on failure. */
static bool
s_open(s_globals_t *g)
{
    tq_client_t *client = tq_pool_task_client();
    if (!client)
        return false;
    g->buffer = tq_queue_new(client, "seed.buffer", 0);
    g->empty = tq_queue_new(client, "seed.empty", 0);
    g->full = tq_queue_new(client, "seed.full", 0);
    g->lock = tq_queue_new(client, "seed.lock", 0);
    return g->buffer && g->empty && g->full && g->lock;
}

static void
s_close(s_globals_t *g)
{
    tq_queue_destroy(&g->buffer);
    tq_queue_destroy(&g->empty);
    tq_queue_destroy(&g->full);
    tq_queue_destroy(&g->lock);
}

/* Producer.run() and Consumer.run(): the task argument tells which (the
   registry argument, a string literal for the producer). */
static int
s_run(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)args;
    bool producer = tq_task_arg(task) != NULL;
    s_globals_t g = {0};
    if (!s_open(&g)) {
        s_close(&g);
        return tq_task_fail(task, "cannot open the queues");
    }
    int rc = TQ_OK;
    for (int i = 0; i < ROUNDS && rc == TQ_OK; i++) {
        if ((rc = seed_acquire(producer ? g.empty : g.full)) != TQ_OK)
            break;
        if ((rc = seed_acquire(g.lock)) != TQ_OK)
            break;
        if (producer) {
            rc = tq_queue_putf(g.buffer, SEED_WAIT_MS, "i", (int64_t)1);
            printf("Producer append an element\n");
        } else {
            tq_buf_t item;
            rc = tq_queue_get(g.buffer, &item, SEED_WAIT_MS);
            tq_buf_free(&item);
            printf("Consumer pop an element\n");
        }
        seed_sleep(seed_secs(1));
        if (rc == TQ_OK)
            rc = seed_release(g.lock);
        if (rc == TQ_OK)
            rc = seed_release(producer ? g.full : g.empty);
    }
    s_close(&g);
    if (rc != TQ_OK)
        return tq_task_fail(task, "%s: %s", producer ? "producer" : "consumer",
                            tq_strerror(rc));
    return tq_pack_nil(out);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "Producer.run", s_run, (void *)"producer");
    tq_registry_add(reg, "Consumer.run", s_run, NULL);
    tq_pool_t *pool = seed_pool_new(2, reg);
    if (!pool)
        return 1;
    /* the globals: buffer = Queue(10) and the semaphores, made before the
       processes start */
    tq_client_t *client = tq_pool_client(pool);
    tq_queue_t *buffer = tq_queue_new(client, "seed.buffer", 10);
    if (!buffer || seed_semaphore_init(client, "seed.empty", 2) != TQ_OK ||
        seed_semaphore_init(client, "seed.full", 0) != TQ_OK ||
        seed_semaphore_init(client, "seed.lock", 1) != TQ_OK) {
        tq_queue_destroy(&buffer);
        tq_pool_destroy(&pool);
        return 1;
    }
    tq_result_t *p = tq_pool_apply_async(pool, "Producer.run", NULL, "");
    tq_result_t *c = tq_pool_apply_async(pool, "Consumer.run", NULL, "");
    int failed = 0;
    tq_result_t *both[2] = {p, c};
    for (int i = 0; i < 2; i++) /* p.join(); c.join() */
        if (!both[i] || tq_result_get(both[i], 60000) != TQ_OK) {
            failed++;
            fprintf(stderr, "%s: %s\n", i ? "consumer" : "producer",
                    both[i] ? tq_result_error(both[i]) : "refused");
        }
    printf("Ended!\n");
    tq_result_destroy(&p);
    tq_result_destroy(&c);
    tq_queue_destroy(&buffer);
    tq_pool_close(pool);
    int rc = tq_pool_join(pool, 10000);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && !failed ? 0 : 1;
}
