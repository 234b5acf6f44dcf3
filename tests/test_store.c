/* test_store.c - unit tests of the broker's SQLite store: what is committed
   is reloaded in order, purge forgets expired results, a damaged file is
   refused with a message naming it, a payload whose bytes changed on disk
   comes back marked corrupt, an emptied store is refused, files are 0600,
   older schemas migrate, and a task's owner key is kept (v5). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "tq/tq_error.h"
#include "tq_crc32c.h"
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

/* What test_adds_in_groups reads back, by row. */
typedef struct {
    int count;
    char ids[64][16];
    char tasks[64][16];
    uint32_t states[64];
    size_t args_sizes[64];
    uint8_t args1[64]; /* the second byte of the arguments */
} s_group_rows_t;

static void
s_collect_group_rows(const tq_store_task_t *t, void *arg)
{
    s_group_rows_t *rows = arg;
    assert_true(rows->count < 64);
    int i = rows->count++;
    snprintf(rows->ids[i], sizeof rows->ids[i], "%s", t->id);
    snprintf(rows->tasks[i], sizeof rows->tasks[i], "%s", t->task);
    rows->states[i] = t->state;
    rows->args_sizes[i] = t->args_size;
    rows->args1[i] = t->args_size > 1 ? ((const uint8_t *)t->args)[1] : 0;
    assert_false(t->corrupt);
}

/* New tasks go in by groups of rows (tq_store_sqlite.c S_ADD_ROWS): each
   keeps what the caller passed at the call (its buffers may change
   right after), the first of one id wins inside a group as across
   them, a write to a task not yet inserted finds it, a large task goes
   in its place in the order, and a partial group is committed. */
static void
test_adds_in_groups(void **state)
{
    (void)state;
    char error[256];
    tq_store_t *store = tq_store_open(s_dir, TQ_SYNC_OS, error, sizeof error);
    assert_non_null(store);
    char id[16], task[16];
    uint8_t args[2] = {0x91, 0};
    static uint8_t big[5000];
    memset(big, 0xc0, sizeof big);
    big[0] = 0x91;
    uint64_t seq = 0;
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "t%02d", i);
        snprintf(task, sizeof task, "tq.echo");
        args[1] = (uint8_t)i;
        tq_store_task_t t = s_task(id, ++seq);
        t.task = task;
        t.args = args;
        t.args_size = sizeof args;
        assert_int_equal(tq_store_add(store, &t), TQ_OK);
        if (i == 5) {
            /* the same id again, in the same group: left as it is */
            snprintf(task, sizeof task, "other");
            t.seq = ++seq;
            assert_int_equal(tq_store_add(store, &t), TQ_OK);
        }
        if (i == 20) {
            tq_store_task_t b = s_task("big", ++seq);
            b.args = big;
            b.args_size = sizeof big;
            assert_int_equal(tq_store_add(store, &b), TQ_OK);
        }
        /* the caller's buffers change at once */
        memset(id, 'x', sizeof id - 1);
        memset(task, 'y', sizeof task - 1);
        args[1] = 0xff;
    }
    tq_store_task_t done = s_task("t33", 0);
    done.state = 3;
    done.attempt = 1;
    done.expires_ms = 1000;
    assert_int_equal(tq_store_finish(store, &done), TQ_OK);
    assert_int_equal(tq_store_set_state(store, "t38", 1, 1), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    store = tq_store_open(s_dir, TQ_SYNC_OS, error, sizeof error);
    assert_non_null(store);
    static s_group_rows_t rows;
    memset(&rows, 0, sizeof rows);
    assert_int_equal(tq_store_load(store, s_collect_group_rows, &rows), TQ_OK);
    tq_store_destroy(&store);
    assert_int_equal(rows.count, 41);
    for (int i = 0, r = 0; i < 40; i++, r++) {
        char want[16];
        snprintf(want, sizeof want, "t%02d", i);
        assert_string_equal(rows.ids[r], want);
        assert_string_equal(rows.tasks[r], "tq.echo");
        assert_int_equal(rows.args_sizes[r], 2);
        assert_int_equal(rows.args1[r], i);
        assert_int_equal(rows.states[r], i == 33 ? 3 : i == 38 ? 1 : 0);
        if (i == 20) {
            r++;
            assert_string_equal(rows.ids[r], "big");
            assert_int_equal(rows.args_sizes[r], sizeof big);
        }
    }
}

static void
test_commit_and_reload(void **state)
{
    (void)state;
    char error[256];
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
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
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
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
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
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

    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    s_seen_t seen = {0};
    assert_int_equal(tq_store_load(store, s_collect, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "old");
    static const uint8_t item[] = {0xa2, 'h', 'i'};
    assert_int_equal(tq_store_item_add(store, "q", 7, 10, item, sizeof item),
                     TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 5);
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

/* Every row and item as loaded, for the v4 tests. */
typedef struct {
    int count;
    char ids[8][64];
    int64_t due[8];
    bool corrupt[8];
    char reasons[8][64];
    uint32_t states[8];
    int items;
    bool item_corrupt[8];
    char item_reasons[8][64];
} s_rows_t;

static void
s_rows(const tq_store_task_t *t, void *arg)
{
    s_rows_t *rows = arg;
    if (rows->count >= 8)
        return;
    int i = rows->count++;
    snprintf(rows->ids[i], sizeof rows->ids[i], "%s", t->id);
    rows->due[i] = t->due_ms;
    rows->corrupt[i] = t->corrupt;
    rows->states[i] = t->state;
    snprintf(rows->reasons[i], sizeof rows->reasons[i], "%s",
             t->corrupt_reason ? t->corrupt_reason : "");
}

static void
s_item_rows(const tq_store_item_t *item, void *arg)
{
    s_rows_t *rows = arg;
    if (rows->items >= 8)
        return;
    int i = rows->items++;
    rows->item_corrupt[i] = item->corrupt;
    snprintf(rows->item_reasons[i], sizeof rows->item_reasons[i], "%s",
             item->corrupt_reason ? item->corrupt_reason : "");
}

/* A task's due time is stored on add and on a state change, and comes
   back on load; set_state makes it runnable now. */
static void
test_due_round_trip(void **state)
{
    (void)state;
    char error[512];
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2), c = s_task("c", 3);
    a.due_ms = 1700000000123; /* a countdown */
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_add(store, &b), TQ_OK);
    assert_int_equal(tq_store_add(store, &c), TQ_OK);
    /* b failed and waits out its backoff; c's backoff ended */
    assert_int_equal(tq_store_set_due(store, "b", 5, 1, 1700000009999), TQ_OK);
    assert_int_equal(tq_store_set_due(store, "c", 5, 1, 1700000000001), TQ_OK);
    assert_int_equal(tq_store_set_state(store, "c", 0, 1), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    s_rows_t rows = {0};
    assert_int_equal(tq_store_load(store, s_rows, &rows), TQ_OK);
    assert_int_equal(rows.count, 3);
    assert_int_equal(rows.due[0], 1700000000123);
    assert_int_equal(rows.due[1], 1700000009999);
    assert_int_equal(rows.states[1], 5);
    assert_int_equal(rows.due[2], 0);
    for (int i = 0; i < 3; i++)
        assert_false(rows.corrupt[i]);
    tq_store_destroy(&store);
}

/* Flips one byte of the file where a unique pattern sits; returns how
   many copies of it there were. */
static int
s_flip_in_file(const char *path, const uint8_t *pattern, size_t size)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    uint8_t *bytes = malloc((size_t)length);
    fseek(f, 0, SEEK_SET);
    assert_int_equal(fread(bytes, 1, (size_t)length, f), (size_t)length);
    int found = 0;
    for (long i = 0; i + (long)size <= length; i++)
        if (memcmp(bytes + i, pattern, size) == 0) {
            found++;
            uint8_t flipped = bytes[i + size / 2] ^ 0x20;
            fseek(f, i + (long)size / 2, SEEK_SET);
            fputc(flipped, f);
        }
    fclose(f);
    free(bytes);
    return found;
}

/* A byte flipped on disk inside a stored payload (arguments, a result, a
   queue item) is caught by its checksum: the row comes back marked
   corrupt with the reason, the others are untouched, and the broker's
   item callback gets no data for the damaged item. */
static void
test_flipped_byte_is_corrupt(void **state)
{
    (void)state;
    char error[512], path[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    uint8_t args[40] = {0x91, 0xd9, 37}, result[40] = {0xd9, 38},
            item[40] = {0xd9, 38};
    memcpy(args + 3, "ARGS-unique-pattern-0123456789-abcdef", 37);
    memcpy(result + 2, "RESULT-unique-pattern-0123456789-abcd", 38);
    memcpy(item + 2, "ITEM-unique-pattern-0123456789-abcdef", 38);
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    tq_store_task_t a = s_task("a", 1), b = s_task("b", 2), c = s_task("c", 3);
    a.args = args;
    a.args_size = sizeof args;
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_add(store, &b), TQ_OK);
    assert_int_equal(tq_store_add(store, &c), TQ_OK);
    c.state = 2;
    c.attempt = 1;
    c.result = result;
    c.result_size = sizeof result;
    assert_int_equal(tq_store_finish(store, &c), TQ_OK);
    assert_int_equal(tq_store_item_add(store, "q", 1, 0, item, sizeof item),
                     TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store); /* the last close checkpoints into tq.db */

    assert_int_equal(s_flip_in_file(path, args + 3, 37), 1);
    assert_int_equal(s_flip_in_file(path, result + 2, 38), 1);
    assert_int_equal(s_flip_in_file(path, item + 2, 38), 1);

    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    s_rows_t rows = {0};
    assert_int_equal(tq_store_load(store, s_rows, &rows), TQ_OK);
    assert_int_equal(tq_store_load_item_rows(store, s_item_rows, &rows), TQ_OK);
    assert_int_equal(rows.count, 3);
    assert_true(rows.corrupt[0]);
    assert_string_equal(rows.reasons[0], "args checksum mismatch");
    assert_false(rows.corrupt[1]);
    assert_true(rows.corrupt[2]);
    assert_string_equal(rows.reasons[2], "result checksum mismatch");
    assert_int_equal(rows.items, 1);
    assert_true(rows.item_corrupt[0]);
    assert_string_equal(rows.item_reasons[0], "queue item checksum mismatch");
    tq_store_destroy(&store);
}

static void
s_expect_refused(const char *why)
{
    char error[1024], path[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_null(store);
    print_message("%s: %s\n", why, error);
    assert_non_null(strstr(error, path));
    assert_non_null(strstr(error, "--new-store"));
}

/* A store whose tq.db was emptied or lost is refused, never silently
   started empty: the marker (or the WAL) shows a store was there. Only
   allow_new (--new-store) starts afresh, keeping the old files aside. */
static void
test_emptied_store_refused(void **state)
{
    (void)state;
    char error[1024], path[512], marker[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    snprintf(marker, sizeof marker, "%s/tq.store", s_dir);
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    tq_store_task_t a = s_task("a", 1);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);
    FILE *f = fopen(marker, "r");
    assert_non_null(f);
    char text[64] = "";
    assert_non_null(fgets(text, sizeof text, f));
    assert_non_null(fgets(text, sizeof text, f));
    fclose(f);
    assert_string_equal(text, "schema 5\n");

    assert_int_equal(truncate(path, 0), 0);
    s_expect_refused("0-byte tq.db");
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0); /* refused, and left as it was */
    assert_int_equal(unlink(path), 0);
    s_expect_refused("missing tq.db");

    tq_store_options_t options = {.sync = TQ_SYNC_BATCH, .allow_new = true};
    store = tq_store_new(s_dir, &options, error, sizeof error);
    assert_non_null(store);
    s_rows_t rows = {0};
    assert_int_equal(tq_store_load(store, s_rows, &rows), TQ_OK);
    assert_int_equal(rows.count, 0);
    tq_store_destroy(&store);
    /* and the new store is a store like any other */
    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    tq_store_destroy(&store);
}

/* tq.db, its -wal and -shm and the marker are the owner's only, whatever
   the umask; an older store's wider modes are narrowed when opened. */
static void
test_files_0600(void **state)
{
    (void)state;
    char error[512], path[600];
    mode_t old = umask(022);
    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    tq_store_task_t a = s_task("a", 1);
    assert_int_equal(tq_store_add(store, &a), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    const char *names[] = {"tq.db", "tq.db-wal", "tq.db-shm", "tq.store"};
    for (size_t i = 0; i < 4; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", s_dir, names[i]);
        assert_int_equal(stat(path, &st), 0);
        print_message("%s %o\n", names[i], st.st_mode & 0777);
        assert_int_equal(st.st_mode & 0777, 0600);
    }
    tq_store_destroy(&store);
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    assert_int_equal(chmod(path, 0644), 0);
    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    tq_store_destroy(&store);
    umask(old);
}

/* A version-3 database gains due times (0) and checksums of the payloads
   it already holds; its rows load intact and uncorrupted. */
static void
test_migration_v3(void **state)
{
    (void)state;
    char path[512], error[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(
            db,
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, task TEXT NOT NULL,"
            " queue TEXT NOT NULL, priority INTEGER NOT NULL, time_limit_ms"
            " INTEGER NOT NULL, attempt INTEGER NOT NULL, state INTEGER NOT"
            " NULL, seq INTEGER NOT NULL, args BLOB NOT NULL, code INTEGER"
            " NOT NULL DEFAULT 0, error TEXT, result BLOB, expires_ms"
            " INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT"
            " 0, backoff_ms INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT"
            " NULL DEFAULT 0) WITHOUT ROWID;"
            "CREATE TABLE items (queue TEXT NOT NULL, seq INTEGER NOT NULL,"
            " maxsize INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL,"
            " PRIMARY KEY (queue, seq)) WITHOUT ROWID;"
            "INSERT INTO tasks (id, task, queue, priority, time_limit_ms,"
            " attempt, state, seq, args, retries) VALUES"
            " ('w', 'tq.echo', 'default', 0, 0, 0, 0, 1, x'90', 2),"
            " ('d', 'tq.echo', 'default', 0, 0, 1, 2, 2, x'90', 0);"
            "UPDATE tasks SET result = x'a26f6b', expires_ms = 99 WHERE"
            " id = 'd';"
            "INSERT INTO items VALUES ('q', 1, 5, x'a26869');"
            "PRAGMA user_version = 3;",
            NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);

    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    s_rows_t rows = {0};
    assert_int_equal(tq_store_load(store, s_rows, &rows), TQ_OK);
    assert_int_equal(tq_store_load_item_rows(store, s_item_rows, &rows), TQ_OK);
    assert_int_equal(rows.count, 2);
    assert_string_equal(rows.ids[0], "w");
    assert_string_equal(rows.ids[1], "d");
    assert_int_equal(rows.states[1], 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(rows.due[i], 0);
        assert_false(rows.corrupt[i]);
    }
    assert_int_equal(rows.items, 1);
    assert_false(rows.item_corrupt[0]);
    tq_store_destroy(&store);

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db,
                           "SELECT args_crc, result_crc, (SELECT crc FROM"
                           " items), (SELECT user_version FROM"
                           " pragma_user_version) FROM tasks WHERE id = 'd'",
                           -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), tq_crc32c(0, "\x90", 1));
    assert_int_equal(sqlite3_column_int64(st, 1), tq_crc32c(0, "\xa2ok", 3));
    assert_int_equal(sqlite3_column_int64(st, 2), tq_crc32c(0, "\xa2hi", 3));
    assert_int_equal(sqlite3_column_int(st, 3), 5);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* Owners as loaded, for the v5 test. */
typedef struct {
    int count;
    char ids[8][64];
    char owners[8][64]; /* "(null)" for none */
} s_owners_t;

static void
s_owner_rows(const tq_store_task_t *t, void *arg)
{
    s_owners_t *seen = arg;
    if (seen->count >= 8)
        return;
    int i = seen->count++;
    snprintf(seen->ids[i], sizeof seen->ids[i], "%s", t->id);
    snprintf(seen->owners[i], sizeof seen->owners[i], "%s",
             t->owner ? t->owner : "(null)");
}

/* A version-4 database gains the owner column: its rows load with no
   owner (NULL: every key may see them) and intact; a task added after
   keeps its owner's key across a reopen, and one added without an owner
   (no CURVE) comes back with none. */
static void
test_migration_v4(void **state)
{
    (void)state;
    char path[512], error[512];
    snprintf(path, sizeof path, "%s/tq.db", s_dir);
    char sql[2048];
    snprintf(sql, sizeof sql,
             "CREATE TABLE tasks (id TEXT PRIMARY KEY, task TEXT NOT NULL,"
             " queue TEXT NOT NULL, priority INTEGER NOT NULL, time_limit_ms"
             " INTEGER NOT NULL, attempt INTEGER NOT NULL, state INTEGER NOT"
             " NULL, seq INTEGER NOT NULL, args BLOB NOT NULL, code INTEGER"
             " NOT NULL DEFAULT 0, error TEXT, result BLOB, expires_ms"
             " INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT"
             " 0, backoff_ms INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT"
             " NULL DEFAULT 0, due_ms INTEGER NOT NULL DEFAULT 0, args_crc"
             " INTEGER, result_crc INTEGER) WITHOUT ROWID;"
             "CREATE INDEX tasks_expiry ON tasks(expires_ms)"
             " WHERE expires_ms > 0;"
             "CREATE TABLE items (queue TEXT NOT NULL, seq INTEGER NOT NULL,"
             " maxsize INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL, crc"
             " INTEGER, PRIMARY KEY (queue, seq)) WITHOUT ROWID;"
             "INSERT INTO tasks (id, task, queue, priority, time_limit_ms,"
             " attempt, state, seq, args, args_crc) VALUES"
             " ('old', 'tq.echo', 'default', 0, 0, 0, 0, 1, x'90', %u);"
             "PRAGMA user_version = 4;",
             (unsigned)tq_crc32c(0, "\x90", 1));
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    tq_store_t *store =
        tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    s_owners_t seen = {0};
    assert_int_equal(tq_store_load(store, s_owner_rows, &seen), TQ_OK);
    assert_int_equal(seen.count, 1);
    assert_string_equal(seen.ids[0], "old");
    assert_string_equal(seen.owners[0], "(null)");
    tq_store_task_t mine = s_task("mine", 2), anyone = s_task("anyone", 3);
    mine.owner = "rq:rC%x5KVYbgG?F-P.4Q8i8Sf[d{Ch(7]5+iX/u";
    assert_int_equal(tq_store_add(store, &mine), TQ_OK);
    assert_int_equal(tq_store_add(store, &anyone), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    /* later writes of the row leave its owner alone */
    mine.state = 2;
    assert_int_equal(tq_store_finish(store, &mine), TQ_OK);
    assert_int_equal(tq_store_set_due(store, "anyone", 5, 1, 99), TQ_OK);
    assert_int_equal(tq_store_commit(store), TQ_OK);
    tq_store_destroy(&store);

    store = tq_store_open(s_dir, TQ_SYNC_BATCH, error, sizeof error);
    assert_non_null(store);
    memset(&seen, 0, sizeof seen);
    assert_int_equal(tq_store_load(store, s_owner_rows, &seen), TQ_OK);
    assert_int_equal(seen.count, 3);
    assert_string_equal(seen.ids[0], "old");
    assert_string_equal(seen.owners[0], "(null)");
    assert_string_equal(seen.ids[1], "mine");
    assert_string_equal(seen.owners[1],
                        "rq:rC%x5KVYbgG?F-P.4Q8i8Sf[d{Ch(7]5+iX/u");
    assert_string_equal(seen.ids[2], "anyone");
    assert_string_equal(seen.owners[2], "(null)");
    tq_store_destroy(&store);

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 5);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_adds_in_groups, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_commit_and_reload, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_uncommitted_is_lost, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_damaged_file_refused, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_migration, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_dir_refused, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_due_round_trip, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte_is_corrupt, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_emptied_store_refused, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_files_0600, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_migration_v3, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_migration_v4, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
