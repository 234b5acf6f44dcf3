/* test_store_pg.c - the PostgreSQL store, each test on a private cluster
   (tests/support/tq_pg.c): the behaviours of the SQLite store (what is
   committed is reloaded in order, due times, checksums, migrations
   refused when newer, a task's owner key and the v1 -> v2 migration that
   brought it), batches of many rows and repeated keys in one
   transaction, a lost server stops commits for good, an unreachable
   server is refused at open, and the lease fences a deposed broker; end to
   end, tq-broker --store URL keeps an acknowledged task across kill -9. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "tq/tq_error.h"
#include "tq_harness.h"
#include "tq_pg.h"
#include "tq_store.h"

static tq_pg_t *s_pg;

static int
s_setup(void **state)
{
    (void)state;
    s_pg = tq_pg_new();
    assert_non_null(s_pg);
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    tq_pg_destroy(&s_pg);
    return 0;
}

static tq_store_t *
s_open(void)
{
    char error[1024];
    tq_store_t *store =
        tq_store_open(tq_pg_url(s_pg), TQ_SYNC_BATCH, error, sizeof error);
    if (!store)
        print_message("open: %s\n", error);
    assert_non_null(store);
    return store;
}

/* Runs SQL on the cluster directly (to damage or inspect the store). */
static void
s_sql(const char *sql)
{
    PGconn *conn = PQconnectdb(tq_pg_url(s_pg));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        print_message("sql: %s\n", PQresultErrorMessage(res));
    assert_true(PQresultStatus(res) == PGRES_COMMAND_OK ||
                PQresultStatus(res) == PGRES_TUPLES_OK);
    PQclear(res);
    PQfinish(conn);
}

typedef struct {
    int count;
    char ids[16][64];
    uint32_t states[16];
    uint32_t attempts[16];
    uint32_t retries[16];
    uint32_t failures[16];
    int64_t due[16];
    int64_t expires[16];
    char errors[16][64];
    size_t args_sizes[16];
    size_t result_sizes[16];
    bool corrupt[16];
    char reasons[16][64];
    int items;
    char item_queues[16][32];
    uint64_t item_seqs[16];
    uint32_t item_maxsizes[16];
    size_t item_sizes[16];
    bool item_corrupt[16];
    char owners[16][64]; /* "(null)" for none */
} s_seen_t;

static void
s_collect(const tq_store_task_t *t, void *arg)
{
    s_seen_t *seen = arg;
    if (seen->count >= 16) {
        seen->count++;
        return;
    }
    int i = seen->count++;
    snprintf(seen->ids[i], sizeof seen->ids[i], "%s", t->id);
    seen->states[i] = t->state;
    seen->attempts[i] = t->attempt;
    seen->retries[i] = t->retries;
    seen->failures[i] = t->failures;
    seen->due[i] = t->due_ms;
    seen->expires[i] = t->expires_ms;
    snprintf(seen->errors[i], sizeof seen->errors[i], "%s",
             t->error ? t->error : "");
    seen->args_sizes[i] = t->args_size;
    seen->result_sizes[i] = t->result_size;
    seen->corrupt[i] = t->corrupt;
    snprintf(seen->reasons[i], sizeof seen->reasons[i], "%s",
             t->corrupt_reason ? t->corrupt_reason : "");
    snprintf(seen->owners[i], sizeof seen->owners[i], "%s",
             t->owner ? t->owner : "(null)");
    assert_string_equal(t->task, "tq.echo");
    assert_string_equal(t->queue, "default");
}

static void
s_collect_item(const tq_store_item_t *item, void *arg)
{
    s_seen_t *seen = arg;
    if (seen->items >= 16)
        return;
    int i = seen->items++;
    snprintf(seen->item_queues[i], sizeof seen->item_queues[i], "%s",
             item->queue);
    seen->item_seqs[i] = item->seq;
    seen->item_maxsizes[i] = item->maxsize;
    seen->item_sizes[i] = item->size;
    seen->item_corrupt[i] = item->corrupt;
}

static tq_store_task_t
s_task(const char *id, uint64_t seq)
{
    static const uint8_t args[] = {0x91, 0xa3, 'a', 'r', 'g'};
    tq_store_task_t t = {.id = id,
                         .task = "tq.echo",
                         .queue = "default",
                         .priority = 3,
                         .seq = seq,
                         .args = args,
                         .args_size = sizeof args};
    return t;
}

/* Add, state, due time, retries, finish, remove, purge and queue items
   are committed and reloaded, in submission order, by a new store. */
static void
test_commit_and_reload(void **state)
{
    (void)state;
    tq_store_t *store = s_open();
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2), c = s_task("c", 3);
    b.retries = 3;
    b.backoff_ms = 250;
    a.due_ms = 1700000000123;
    assert_false(tq_store_dirty(store));
    assert_int_equal(tq_store_add(store, &b), TQ_OK);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_add(store, &c), TQ_OK);
    assert_int_equal(tq_store_add(store, &a), TQ_OK); /* idempotent */
    static const uint8_t item[] = {0xa2, 'h', 'i'};
    assert_int_equal(tq_store_item_add(store, "q", 7, 10, item, sizeof item),
                     TQ_OK);
    assert_int_equal(tq_store_item_add(store, "q", 8, 10, item, sizeof item),
                     TQ_OK);
    assert_true(tq_store_dirty(store));
    assert_int_equal(tq_store_commit(store), TQ_OK);
    assert_false(tq_store_dirty(store));

    assert_int_equal(tq_store_set_due(store, "b", 5, 2, 1700000009999), TQ_OK);
    assert_int_equal(tq_store_set_retries(store, "b", 2, 1), TQ_OK);
    tq_store_task_t done = s_task("c", 3);
    static const uint8_t value[] = {0xa2, 'o', 'k'};
    done.state = 2;
    done.attempt = 1;
    done.code = TQ_OK;
    done.result = value;
    done.result_size = sizeof value;
    done.expires_ms = 1000;
    assert_int_equal(tq_store_finish(store, &done), TQ_OK);
    assert_int_equal(tq_store_item_remove(store, "q", 7), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    assert_null(store);

    store = s_open();
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(tq_store_load_item_rows(store, s_collect_item, &seen),
                     TQ_OK);
    assert_int_equal(seen.count, 3);
    assert_string_equal(seen.ids[0], "a");
    assert_string_equal(seen.ids[1], "b");
    assert_string_equal(seen.ids[2], "c");
    assert_int_equal(seen.due[0], 1700000000123);
    assert_int_equal(seen.args_sizes[0], 5);
    assert_int_equal(seen.states[1], 5);
    assert_int_equal(seen.attempts[1], 2);
    assert_int_equal(seen.due[1], 1700000009999);
    assert_int_equal(seen.retries[1], 2);
    assert_int_equal(seen.failures[1], 1);
    assert_int_equal(seen.states[2], 2);
    assert_int_equal(seen.result_sizes[2], 3);
    assert_int_equal(seen.expires[2], 1000);
    for (int i = 0; i < 3; i++)
        assert_false(seen.corrupt[i]);
    assert_int_equal(seen.items, 1);
    assert_string_equal(seen.item_queues[0], "q");
    assert_int_equal(seen.item_seqs[0], 8);
    assert_int_equal(seen.item_maxsizes[0], 10);
    assert_int_equal(seen.item_sizes[0], 3);
    assert_true(tq_store_disk_size(store) > 0);

    /* purge: only the expired final task goes; remove forgets a task */
    tq_store_purge(store, 999, 10);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    memset(&seen, 0, sizeof seen);
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 3);
    tq_store_purge(store, 5000, 10);
    assert_int_equal(tq_store_remove(store, "a"), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    memset(&seen, 0, sizeof seen);
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "b");
    tq_store_destroy(&store);
}

/* One pass may touch a task several times and carry thousands of rows:
   the batch keeps the order of every key's writes across its multi-row
   statements. */
static void
test_large_batch_keeps_order(void **state)
{
    (void)state;
    tq_store_t *store = s_open();
    char id[32];
    for (int i = 0; i < 2500; i++) {
        snprintf(id, sizeof id, "t%05d", i);
        tq_store_task_t t = s_task(id, (uint64_t)i + 1);
        assert_int_equal(tq_store_add(store, &t), TQ_OK);
    }
    for (int i = 0; i < 2500; i++) {
        snprintf(id, sizeof id, "t%05d", i);
        assert_int_equal(tq_store_set_state(store, id, 1, 1), TQ_OK);
        /* the same key twice in a row: the later write wins */
        assert_int_equal(tq_store_set_due(store, id, 1, 2, i), TQ_OK);
    }
    /* added, finished and removed within the pass: gone */
    tq_store_task_t x = s_task("x", 9999);
    assert_int_equal(tq_store_add(store, &x), TQ_OK);
    x.state = 2;
    assert_int_equal(tq_store_finish(store, &x), TQ_OK);
    assert_int_equal(tq_store_remove(store, "x"), TQ_OK);
    /* removed and added again: there */
    assert_int_equal(tq_store_remove(store, "t00000"), TQ_OK);
    tq_store_task_t again = s_task("t00000", 1);
    assert_int_equal(tq_store_add(store, &again), TQ_OK);
    static const uint8_t item[] = {0xc0};
    for (uint64_t seq = 1; seq <= 1500; seq++)
        assert_int_equal(tq_store_item_add(store, "q", seq, 0, item, 1), TQ_OK);
    for (uint64_t seq = 1; seq <= 1499; seq++)
        assert_int_equal(tq_store_item_remove(store, "q", seq), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    store = s_open();
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(tq_store_load_item_rows(store, s_collect_item, &seen),
                     TQ_OK);
    assert_int_equal(seen.count, 2500);
    assert_string_equal(seen.ids[0], "t00000");
    assert_int_equal(seen.states[0], 0); /* added again after its removal */
    assert_string_equal(seen.ids[1], "t00001");
    assert_int_equal(seen.attempts[1], 2);
    assert_int_equal(seen.due[1], 1);
    assert_int_equal(seen.items, 1);
    assert_int_equal(seen.item_seqs[0], 1500);
    tq_store_destroy(&store);
}

/* A changed byte in a stored payload is caught by its checksum on load. */
static void
test_flipped_byte_is_corrupt(void **state)
{
    (void)state;
    tq_store_t *store = s_open();
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_add(store, &b), TQ_OK);
    static const uint8_t item[] = {0xa2, 'h', 'i'};
    assert_int_equal(tq_store_item_add(store, "q", 1, 0, item, sizeof item),
                     TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    /* # is XOR: one bit of one byte */
    s_sql("UPDATE tq_tasks SET args = set_byte(args, 2, get_byte(args, 2) #"
          " 32) WHERE id = 'b';"
          "UPDATE tq_items SET data = set_byte(data, 1, get_byte(data, 1) #"
          " 1)");
    store = s_open();
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(tq_store_load_item_rows(store, s_collect_item, &seen),
                     TQ_OK);
    assert_int_equal(seen.count, 2);
    assert_false(seen.corrupt[0]);
    assert_true(seen.corrupt[1]);
    assert_string_equal(seen.reasons[1], "args checksum mismatch");
    assert_int_equal(seen.items, 1);
    assert_true(seen.item_corrupt[0]);
    tq_store_destroy(&store);
}

/* A broker that dies with its batch open leaves nothing of it. */
static void
test_uncommitted_is_lost(void **state)
{
    (void)state;
    tq_store_t *store = s_open();
    tq_store_task_t a = s_task("a", 1);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char error[1024];
        tq_store_t *child =
            tq_store_open(tq_pg_url(s_pg), TQ_SYNC_BATCH, error, sizeof error);
        tq_store_task_t b = s_task("b", 2);
        if (child)
            tq_store_add(child, &b);
        _exit(child ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    store = s_open();
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "a");
    tq_store_destroy(&store);
}

/* The server goes away: the next commit fails (nothing of it may be
   acknowledged) and the store refuses every write after, even once the
   server is back. */
static void
test_lost_server_stops_commits(void **state)
{
    (void)state;
    tq_store_t *store = s_open();
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2), c = s_task("c", 3);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    assert_int_equal(tq_pg_stop(s_pg), 0);
    assert_int_equal(tq_store_add(store, &b), TQ_OK); /* kept client-side */
    assert_int_equal(tq_store_commit(store), TQ_ESYS);
    print_message("lost: %s\n", tq_store_error(store));
    assert_non_null(strstr(tq_store_error(store), "cannot commit"));
    assert_non_null(strstr(tq_store_error(store), "127.0.0.1"));
    assert_int_equal(tq_pg_start(s_pg), 0);
    assert_int_equal(tq_store_add(store, &c), TQ_ESYS);
    assert_int_equal(tq_store_commit(store), TQ_ESYS);
    tq_store_destroy(&store);
    store = s_open();
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "a");
    tq_store_destroy(&store);
}

/* Nothing listens: refused at open with a message naming the server, and
   a password in the URL is not repeated. */
static void
test_unreachable_refused(void **state)
{
    (void)state;
    char url[256], with_password[300], error[1024];
    tq_pg_unreachable_url(url, sizeof url);
    tq_store_t *store = tq_store_open(url, TQ_SYNC_BATCH, error, sizeof error);
    assert_null(store);
    print_message("unreachable: %s\n", error);
    assert_non_null(strstr(error, url));
    assert_non_null(strstr(error, "cannot connect"));
    snprintf(with_password, sizeof with_password, "postgresql://tq:s3cret@%s",
             url + strlen("postgresql://tq@"));
    store = tq_store_open(with_password, TQ_SYNC_BATCH, error, sizeof error);
    assert_null(store);
    assert_null(strstr(error, "s3cret"));
    assert_non_null(strstr(error, "tq:***@127.0.0.1"));
}

/* A database of a newer schema, or one missing a table, is refused. */
static void
test_newer_or_damaged_refused(void **state)
{
    (void)state;
    char error[1024];
    tq_store_t *store = s_open();
    tq_store_destroy(&store);
    s_sql("UPDATE tq_meta SET value = 99 WHERE key = 'schema'");
    store = tq_store_open(tq_pg_url(s_pg), TQ_SYNC_BATCH, error, sizeof error);
    assert_null(store);
    print_message("newer: %s\n", error);
    assert_non_null(strstr(error, "newer"));
    s_sql("UPDATE tq_meta SET value = 2 WHERE key = 'schema';"
          "DROP TABLE tq_items");
    store = tq_store_open(tq_pg_url(s_pg), TQ_SYNC_BATCH, error, sizeof error);
    assert_null(store);
    print_message("damaged: %s\n", error);
    assert_non_null(strstr(error, "tq_items is missing"));
}

/* The value of one SQL query on the cluster, as text ("" for NULL). */
static void
s_sql_value(const char *sql, char *out, size_t size)
{
    PGconn *conn = PQconnectdb(tq_pg_url(s_pg));
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    PGresult *res = PQexec(conn, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    snprintf(out, size, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(conn);
}

/* Schema v2 keeps the key that submitted a task (tenants): a version-1
   store (made here by dropping the column a v2 store has, and setting the
   version back) migrates, its rows load with no owner (every key may see
   them); rows added after keep their owner, NULL or not, mixed in one
   batch, and later writes of a row leave it alone. */
static void
test_owner_and_migration_v1(void **state)
{
    (void)state;
    static const char key[] = "rq:rC%x5KVYbgG?F-P.4Q8i8Sf[d{Ch(7]5+iX/u";
    tq_store_t *store = s_open();
    tq_store_task_t old = s_task("old", 1);
    old.owner = key;
    assert_int_equal(tq_store_add(store, &old), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    s_sql("ALTER TABLE tq_tasks DROP COLUMN owner;"
          "UPDATE tq_meta SET value = 1 WHERE key = 'schema'");

    store = s_open();
    char text[64];
    s_sql_value("SELECT value FROM tq_meta WHERE key = 'schema'", text,
                sizeof text);
    assert_string_equal(text, "2");
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "old");
    assert_string_equal(seen.owners[0], "(null)");
    tq_store_task_t mine = s_task("mine", 2), anyone = s_task("anyone", 3),
                    also = s_task("also", 4);
    mine.owner = key;
    also.owner = "another key";
    assert_int_equal(tq_store_add(store, &mine), TQ_OK);
    assert_int_equal(tq_store_add(store, &anyone), TQ_OK);
    assert_int_equal(tq_store_add(store, &also), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    mine.state = 2;
    assert_int_equal(tq_store_finish(store, &mine), TQ_OK);
    assert_int_equal(tq_store_set_due(store, "also", 5, 1, 99), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    store = s_open();
    memset(&seen, 0, sizeof seen);
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 4);
    assert_string_equal(seen.ids[1], "mine");
    assert_string_equal(seen.owners[1], key);
    assert_int_equal(seen.states[1], 2);
    assert_string_equal(seen.ids[2], "anyone");
    assert_string_equal(seen.owners[2], "(null)");
    assert_string_equal(seen.ids[3], "also");
    assert_string_equal(seen.owners[3], "another key");
    assert_int_equal(seen.states[3], 5);
    tq_store_destroy(&store);
}

/* The lease: a second owner cannot take it while the first's is live;
   once it lapses the second takes it with a higher epoch, and the first
   owner's next commit is refused (fencing) and its store stops. */
static void
test_lease_fences_the_old_owner(void **state)
{
    (void)state;
    tq_store_t *one = s_open(), *two = s_open();
    uint64_t epoch1 = 0, epoch2 = 0;
    assert_int_equal(tq_store_lease_acquire(one, "broker-1", 60000, &epoch1),
                     TQ_OK);
    assert_true(epoch1 >= 1);
    assert_int_equal(tq_store_lease_acquire(two, "broker-2", 60000, &epoch2),
                     TQ_EBUSY);
    print_message("busy: %s\n", tq_store_error(two));
    assert_non_null(strstr(tq_store_error(two), "broker-1"));
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2);
    assert_int_equal(tq_store_add(one, &a), TQ_OK);
    assert_int_equal(tq_store_commit(one), TQ_OK);
    assert_int_equal(tq_store_lease_renew(one, 60000), TQ_OK);

    /* the first owner's lease lapses (renewed for 0 ms: expired now) */
    assert_int_equal(tq_store_lease_renew(one, 0), TQ_OK);
    assert_int_equal(tq_store_lease_acquire(two, "broker-2", 60000, &epoch2),
                     TQ_OK);
    assert_true(epoch2 > epoch1);
    assert_int_equal(tq_store_add(one, &b), TQ_OK);
    assert_int_equal(tq_store_commit(one), TQ_EBUSY);
    print_message("fenced: %s\n", tq_store_error(one));
    assert_non_null(strstr(tq_store_error(one), "lease"));
    assert_int_equal(tq_store_add(one, &b), TQ_ESYS);
    tq_store_destroy(&one);

    /* the new owner commits; the deposed one's write is not there */
    tq_store_task_t c = s_task("c", 3);
    assert_int_equal(tq_store_add(two, &c), TQ_OK);
    assert_int_equal(tq_store_commit(two), TQ_OK);
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(two, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 2);
    assert_string_equal(seen.ids[0], "a");
    assert_string_equal(seen.ids[1], "c");
    tq_store_destroy(&two);
}

/* A lease given a short time lapses by itself: a second owner polling
   gets it (bounded wait), and the first owner's renewal then fails. */
static void
test_lease_expires(void **state)
{
    (void)state;
    tq_store_t *one = s_open(), *two = s_open();
    uint64_t epoch1 = 0, epoch2 = 0;
    assert_int_equal(tq_store_lease_acquire(one, "broker-1", 200, &epoch1),
                     TQ_OK);
    int rc = TQ_EBUSY;
    for (int i = 0; i < 1000 && rc == TQ_EBUSY; i++) {
        rc = tq_store_lease_acquire(two, "broker-2", 60000, &epoch2);
        if (rc == TQ_EBUSY)
            usleep(20000);
    }
    assert_int_equal(rc, TQ_OK);
    assert_int_equal(epoch2, epoch1 + 1);
    assert_int_equal(tq_store_lease_renew(one, 60000), TQ_EBUSY);
    print_message("renew: %s\n", tq_store_error(one));
    tq_store_destroy(&one);
    tq_store_destroy(&two);
}

/* SQLite has no lease. */
static void
test_sqlite_has_no_lease(void **state)
{
    (void)state;
    char dir[] = "/tmp/tq-store-pg-XXXXXX", error[512];
    assert_non_null(mkdtemp(dir));
    tq_store_t *store = tq_store_open(dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    uint64_t epoch;
    assert_int_equal(tq_store_lease_acquire(store, "x", 1000, &epoch),
                     TQ_ESTATE);
    assert_false(tq_store_is_url(dir));
    assert_true(tq_store_is_url("postgres://h/db"));
    tq_store_destroy(&store);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* status.queues[default].waiting, or -1. */
static int64_t
s_waiting(tq_client_t *client)
{
    return tq_harness_queue_waiting(client, TQ_DEFAULT_QUEUE);
}

/* tq-broker --store postgresql://...: a task acknowledged with no worker
   connected survives kill -9 of the broker, and runs once a worker comes
   after the restart on the same database. */
static void
test_broker_restart_on_postgresql(void **state)
{
    (void)state;
    tq_harness_init();
    const char *extra[] = {"--store", tq_pg_url(s_pg), NULL};
    tq_harness_broker_t broker;
    char log[] = "/tmp/tq-store-pg-log-XXXXXX";
    int fd = mkstemp(log);
    assert_true(fd >= 0);
    close(fd);
    if (tq_harness_broker_start_on(&broker, "tcp://127.0.0.1:*",
                                   "tcp://127.0.0.1:*", extra, log) != 0) {
        FILE *f = fopen(log, "r");
        char line[1024] = "";
        if (f) {
            if (!fgets(line, sizeof line, f))
                line[0] = '\0';
            fclose(f);
        }
        unlink(log);
        fail_msg("tq-broker --store did not start: %s", line);
    }
    unlink(log);
    char clients[TQ_HARNESS_EP_MAX], workers[TQ_HARNESS_EP_MAX];
    snprintf(clients, sizeof clients, "%s", broker.clients);
    snprintf(workers, sizeof workers, "%s", broker.workers);
    tq_client_t *client = tq_client_new(clients);
    assert_non_null(client);
    /* the handle outlives the restart below, which waits out the killed
       broker's lease (3 s) */
    tq_client_set_liveness(client, 60000);
    tq_result_t *result =
        tq_apply_async(client, "tq.echo", NULL, "i", (int64_t)42);
    assert_non_null(result);
    /* STATUS listing it means its SUBMIT was handled; the next STATUS is
       handled in a later pass, after the commit that stored it */
    int64_t deadline = tq_harness_now_ms() + 10000;
    while (s_waiting(client) != 1 && tq_harness_now_ms() < deadline)
        tq_harness_sleep_ms(10);
    assert_int_equal(s_waiting(client), 1);

    kill(broker.pid, SIGKILL);
    int status = tq_harness_broker_stop(&broker);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* the killed broker's lease lapses first (its --lease-ttl): a broker
       started before then is a standby that answers TQ_ESTANDBY */
    assert_int_equal(tq_pg_wait_lease_lapsed(s_pg, 60000), 0);
    int started = -1;
    for (int attempt = 0; attempt < 5 && started != 0; attempt++) {
        started =
            tq_harness_broker_start_on(&broker, clients, workers, extra, NULL);
        if (started != 0)
            tq_harness_sleep_ms(200);
    }
    assert_int_equal(started, 0);
    pid_t worker = tq_harness_worker_start(workers, 1, NULL);
    assert_true(worker > 0);
    int rc = tq_result_get(result, 60000);
    if (rc != TQ_OK)
        print_message("get: %s (%s)\n", tq_strerror(rc),
                      tq_result_error(result));
    assert_int_equal(rc, TQ_OK);
    const msgpack_object *v = tq_result_value(result);
    assert_non_null(v);
    assert_int_equal(v->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(v->via.array.size, 1);
    assert_int_equal(v->via.array.ptr[0].via.u64, 42);
    tq_result_destroy(&result);
    tq_client_destroy(&client);
    tq_harness_stop(worker);
    tq_harness_broker_stop(&broker);
    tq_harness_kill_all();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_and_reload, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_large_batch_keeps_order, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte_is_corrupt, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_uncommitted_is_lost, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_lost_server_stops_commits, s_setup,
                                        s_teardown),
        cmocka_unit_test(test_unreachable_refused),
        cmocka_unit_test_setup_teardown(test_newer_or_damaged_refused, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_owner_and_migration_v1, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_lease_fences_the_old_owner,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_lease_expires, s_setup,
                                        s_teardown),
        cmocka_unit_test(test_sqlite_has_no_lease),
        cmocka_unit_test_setup_teardown(test_broker_restart_on_postgresql,
                                        s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
