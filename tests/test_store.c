/* test_store.c - unit tests of the broker's SQLite store: what is committed
   is reloaded in order, purge forgets expired results, and a damaged file
   is refused with a message naming it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "tq/tq_error.h"
#include "tq_store.h"

typedef struct {
    int count;
    char ids[16][64];
    uint32_t states[16];
    uint32_t attempts[16];
    uint32_t retries[16];
    uint32_t failures[16];
    char errors[16][64];
    size_t result_sizes[16];
} s_seen_t;

static void
s_collect(const tq_store_task_t *t, void *arg)
{
    s_seen_t *seen = arg;
    if (seen->count >= 16)
        return;
    int i = seen->count++;
    snprintf(seen->ids[i], sizeof seen->ids[i], "%s", t->id);
    seen->states[i] = t->state;
    seen->attempts[i] = t->attempt;
    seen->retries[i] = t->retries;
    seen->failures[i] = t->failures;
    snprintf(seen->errors[i], sizeof seen->errors[i], "%s",
             t->error ? t->error : "");
    seen->result_sizes[i] = t->result_size;
    assert_int_equal(t->args_size, 1);
    assert_int_equal(((const uint8_t *)t->args)[0], 0x90);
}

static char s_dir[256];

static int
s_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/tq-store-XXXXXX");
    assert_non_null(mkdtemp(s_dir));
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static tq_store_task_t
s_task(const char *id, uint64_t seq)
{
    static const uint8_t args[] = {0x90};
    tq_store_task_t t = {.id = id,
                         .task = "tq.echo",
                         .queue = "default",
                         .priority = 3,
                         .state = 0,
                         .seq = seq,
                         .args = args,
                         .args_size = 1};
    return t;
}

static void
test_commit_and_reload(void **state)
{
    (void)state;
    char error[256];
    tq_store_t *store = tq_store_open(s_dir, TQ_SYNC_BATCH, error,
                                      sizeof error);
    assert_non_null(store);
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2), c = s_task("c", 3);
    b.retries = 3;
    b.backoff_ms = 250;
    assert_false(tq_store_dirty(store));
    assert_int_equal(tq_store_add(store, &b), TQ_OK);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_add(store, &c), TQ_OK);
    /* the same id again changes nothing (idempotent submit) */
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_true(tq_store_dirty(store));
    assert_int_equal(tq_store_commit(store), TQ_OK);
    assert_false(tq_store_dirty(store));

    assert_int_equal(tq_store_set_state(store, "b", 1, 2), TQ_OK);
    /* one failure spent one retry: the budget survives a restart */
    assert_int_equal(tq_store_set_retries(store, "b", 2, 1), TQ_OK);
    tq_store_task_t done = s_task("c", 3);
    done.state = 3;
    done.attempt = 1;
    done.code = TQ_ETASK;
    done.error = "boom";
    done.expires_ms = 1000;
    assert_int_equal(tq_store_finish(store, &done), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    assert_null(store);

    store = tq_store_open(s_dir, TQ_SYNC_OS, error, sizeof error);
    assert_non_null(store);
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 3);
    assert_string_equal(seen.ids[0], "a");
    assert_string_equal(seen.ids[1], "b");
    assert_string_equal(seen.ids[2], "c");
    assert_int_equal(seen.states[1], 1);
    assert_int_equal(seen.attempts[1], 2);
    assert_int_equal(seen.retries[1], 2);
    assert_int_equal(seen.failures[1], 1);
    assert_int_equal(seen.states[2], 3);
    assert_string_equal(seen.errors[2], "boom");
    assert_true(tq_store_disk_size(store) > 0);

    /* purge: only the expired final task goes */
    assert_int_equal(tq_store_purge(store, 999, 10), 0);
    assert_int_equal(tq_store_purge(store, 5000, 10), 1);
    assert_int_equal(tq_store_remove(store, "a"), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    memset(&seen, 0, sizeof seen);
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "b");
    tq_store_destroy(&store);
    tq_store_destroy(&store); /* idempotent */
}

static void
test_uncommitted_is_lost(void **state)
{
    (void)state;
    char error[256];
    tq_store_t *store = tq_store_open(s_dir, TQ_SYNC_BATCH, error,
                                      sizeof error);
    assert_non_null(store);
    tq_store_task_t a = s_task("a", 1);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    /* a broker dies with its batch open: a child process opens the store,
       writes, and ends without committing */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char child_error[256];
        tq_store_t *child = tq_store_open(s_dir, TQ_SYNC_BATCH, child_error,
                                          sizeof child_error);
        tq_store_task_t b = s_task("b", 2);
        if (child)
            tq_store_add(child, &b);
        _exit(child ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "a");
    tq_store_destroy(&store);
}

static void
test_damaged_file_refused(void **state)
{
    (void)state;
    char path[512], error[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 4096; i++)
        fputc("garbage!"[i % 8], f);
    fclose(f);
    tq_store_t *store = tq_store_open(s_dir, TQ_SYNC_BATCH, error,
                                      sizeof error);
    assert_null(store);
    assert_non_null(strstr(error, path));
    print_message("damaged: %s\n", error);
}

/* A version-1 database (tasks only) is brought to the current version
   (queue items, retry budgets) when opened, keeping its tasks; a database
   newer than this build is refused. */
static void
test_migration(void **state)
{
    (void)state;
    char path[512], error[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "CREATE TABLE tasks (id TEXT PRIMARY KEY, task TEXT NOT"
                     " NULL, queue TEXT NOT NULL, priority INTEGER NOT NULL,"
                     " time_limit_ms INTEGER NOT NULL, attempt INTEGER NOT"
                     " NULL, state INTEGER NOT NULL, seq INTEGER NOT NULL,"
                     " args BLOB NOT NULL, code INTEGER NOT NULL DEFAULT 0,"
                     " error TEXT, result BLOB, expires_ms INTEGER NOT NULL"
                     " DEFAULT 0) WITHOUT ROWID;"
                     "INSERT INTO tasks (id, task, queue, priority,"
                     " time_limit_ms, attempt, state, seq, args) VALUES"
                     " ('old', 'tq.echo', 'default', 0, 0, 0, 0, 1, x'90');"
                     "PRAGMA user_version = 1;",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);

    tq_store_t *store = tq_store_open(s_dir, TQ_SYNC_BATCH, error,
                                      sizeof error);
    assert_non_null(store);
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "old");
    static const uint8_t item[] = {0xa2, 'h', 'i'};
    assert_int_equal(
        tq_store_item_add(store, "q", 7, 10, item, sizeof item), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st,
                                        NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 3);
    sqlite3_finalize(st);
    assert_int_equal(
        sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_null(store);
    assert_non_null(strstr(error, "newer"));
    print_message("newer schema: %s\n", error);
}

static void
test_unwritable_dir_refused(void **state)
{
    (void)state;
    char error[512];
    tq_store_t *store = tq_store_open("/proc/tq-no-such-dir", TQ_SYNC_BATCH,
                                      error, sizeof error);
    assert_null(store);
    assert_non_null(strstr(error, "/proc/tq-no-such-dir"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_commit_and_reload, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_uncommitted_is_lost, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_damaged_file_refused, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_migration, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_dir_refused, s_setup,
                                        s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
