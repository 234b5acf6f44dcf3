/* pipe.c - seed "管道pipe": conn1, conn2 = Pipe(); a child process runs
   foo(conn1), which sends 'hello father' and prints what it receives; the
   main process prints conn2.recv() and sends 'hi son'.
   tq has no Pipe: a duplex connection is two data queues on the pool's
   broker, one per direction, and each end sends on one and receives on
   the other. The child is a task in a pool of 1; the main process waits
   for it at the end, as Python joins non-daemon children at exit. */
#include <stdio.h>
#include <unistd.h>

#include "seed_tq.h"

/* One end of the pipe. */
typedef struct {
    tq_queue_t *send, *recv;
} s_conn_t;

/* Opens the end `side` (1 or 2) of the pipe through client. */
static bool
s_conn_open(s_conn_t *conn, tq_client_t *client, int side)
{
    const char *one_two = "seed.pipe.1to2", *two_one = "seed.pipe.2to1";
    conn->send = tq_queue_new(client, side == 1 ? one_two : two_one, 0);
    conn->recv = tq_queue_new(client, side == 1 ? two_one : one_two, 0);
    return conn->send && conn->recv;
}

static void
s_conn_close(s_conn_t *conn)
{
    tq_queue_destroy(&conn->send);
    tq_queue_destroy(&conn->recv);
}

/* conn.send(text) */
static int
s_conn_send(s_conn_t *conn, const char *text)
{
    return tq_queue_putf(conn->send, SEED_WAIT_MS, "s", text);
}

/* print(conn.recv()), bounded */
static int
s_conn_print_recv(s_conn_t *conn)
{
    tq_item_t *item = NULL;
    int rc = tq_queue_get_item(conn->recv, &item, SEED_WAIT_MS);
    if (rc == TQ_OK) {
        const char *text = tq_item_str(item);
        printf("%s\n", text ? text : "?");
    }
    tq_item_destroy(&item);
    return rc;
}

/* foo(sk): sk.send('hello father'); print(sk.recv()) */
static int
s_foo(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    (void)args;
    tq_client_t *client = tq_pool_task_client();
    s_conn_t sk = {0};
    int rc = client && s_conn_open(&sk, client, 1) ? TQ_OK : TQ_EINVAL;
    if (rc == TQ_OK)
        rc = s_conn_send(&sk, "hello father");
    if (rc == TQ_OK)
        rc = s_conn_print_recv(&sk);
    s_conn_close(&sk);
    if (rc != TQ_OK)
        return tq_task_fail(task, "foo: %s", tq_strerror(rc));
    return tq_pack_nil(out);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    tq_registry_t *reg = tq_registry_new();
    tq_registry_add(reg, "foo", s_foo, NULL);
    tq_pool_t *pool = seed_pool_new(1, reg);
    if (!pool)
        return 1;
    s_conn_t conn2 = {0};
    int rc = s_conn_open(&conn2, tq_pool_client(pool), 2) ? TQ_OK : TQ_EINVAL;
    tq_result_t *p = tq_pool_apply_async(pool, "foo", NULL, "");
    if (rc == TQ_OK)
        rc = s_conn_print_recv(&conn2);
    if (rc == TQ_OK)
        rc = s_conn_send(&conn2, "hi son");
    tq_pool_close(pool); /* the interpreter's exit joins the child */
    if (rc == TQ_OK)
        rc = tq_pool_join(pool, 60000);
    if (rc == TQ_OK)
        rc = p ? tq_result_get(p, 0) : TQ_EINVAL;
    if (rc != TQ_OK)
        fprintf(stderr, "pipe: %s\n", tq_strerror(rc));
    tq_result_destroy(&p);
    s_conn_close(&conn2);
    tq_pool_destroy(&pool);
    tq_registry_destroy(&reg);
    return rc == TQ_OK ? 0 : 1;
}
