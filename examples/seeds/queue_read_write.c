/* queue_read_write.c - seed "消息队列Queue": write(q) puts 'A'..'E' (printing
   "Put X to queue", 0.5 s apart), read(q) loops on q.get(True) printing
   "get X from queue"; the main process prints both Process objects,
   starts them, joins the writer, and terminates the reader.
   tq: q is a data queue on the pool's broker (tq_queue.h), the two
   processes are tasks in a pool of 2. The original's pr.join() never
   returns (read loops forever, so its terminate() lines are never
   reached); here the main process waits, bounded, until the reader has
   taken every item, then terminates it (tq_pool_terminate), which is what
   those lines meant. The reader's get is bounded too (1 s per try, giving
   up after a minute of silence). A Process repr has no tq equivalent: a
   task handle is printed as <task NAME, state>. */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

#define QUEUE "seed.q"

/* write(q): q is the pool's data queue QUEUE, through the child's client */
static int
s_write(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)args;
    tq_client_t *client = tq_pool_task_client();
    tq_queue_t *q = client ? tq_queue_new(client, QUEUE, 0) : NULL;
    int rc = q ? TQ_OK : TQ_EINVAL;
    static const char *items[] = {"A", "B", "C", "D", "E"};
    for (int i = 0; i < 5 && rc == TQ_OK; i++) {
        printf("Put %s to queue\n", items[i]);
        rc = tq_queue_putf(q, SEED_WAIT_MS, "s", items[i]);
        seed_sleep(seed_secs(0.5));
    }
    tq_queue_destroy(&q);
    if (rc != TQ_OK)
        return tq_task_fail(task, "write: %s", tq_strerror(rc));
    return tq_pack_nil(out);
}

/* read(q): runs until terminated (or a minute without items) */
static int
s_read(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)args;
    tq_client_t *client = tq_pool_task_client();
    tq_queue_t *q = client ? tq_queue_new(client, QUEUE, 0) : NULL;
    int rc = q ? TQ_OK : TQ_EINVAL;
    for (int idle = 0; rc == TQ_OK && idle < 60;) {
        tq_item_t *item = NULL;
        int got = tq_queue_get_item(q, &item, 1000);
        if (got == TQ_OK) {
            const char *value = tq_item_str(item);
            printf("get %s from queue\n", value ? value : "?");
            idle = 0;
        } else if (got == TQ_EEMPTY)
            idle++;
        else
            rc = got;
        tq_item_destroy(&item);
    }
    tq_queue_destroy(&q);
    if (rc != TQ_OK)
        return tq_task_fail(task, "read: %s", tq_strerror(rc));
    return tq_pack_nil(out);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "write", s_write, NULL);
    tq_registry_add(reg, "read", s_read, NULL);
    tq_pool_t *pool = seed_pool_new(2, reg);
    if (!pool)
        return 1;
    tq_queue_t *q = tq_queue_new(tq_pool_client(pool), QUEUE, 0);
    printf("write process =  <task write, initial>\n");
    printf("read process =  <task read, initial>\n");
    tq_result_t *pw = tq_pool_apply_async(pool, "write", NULL, "");
    tq_result_t *pr = tq_pool_apply_async(pool, "read", NULL, "");
    int rc = pw ? tq_result_get(pw, 60000) : TQ_EINVAL; /* pw.join() */
    if (rc != TQ_OK)
        fprintf(stderr, "write: %s\n", pw ? tq_result_error(pw) : "refused");
    /* pr.join() would wait forever: wait until every item was taken */
    for (double until = seed_now() + 10;
         q && !tq_queue_empty(q) && seed_now() < until;)
        seed_sleep(0.01);
    tq_pool_terminate(pool); /* pr.terminate(); pw.terminate() */
    int reader = pr ? tq_result_get(pr, 5000) : TQ_EINVAL;
    fprintf(stderr, "reader ended: %s\n", tq_strerror(reader));
    tq_result_destroy(&pw);
    tq_result_destroy(&pr);
    tq_queue_destroy(&q);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK && reader == TQ_ECANCELLED ? 0 : 1;
}
