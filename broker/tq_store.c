/* tq_store.c - the broker's store on SQLite in WAL mode.

   The broker opens a batch (a transaction) with its first write in a loop
   pass and commits it once at the end of the pass, before it sends the
   acknowledgements of that pass: many submissions share one sync. */
#include "tq_store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "tq/tq_error.h"

/* Schema version, kept in PRAGMA user_version. To change the schema: bump
   it, and add a step to s_migrate that brings version N-1 to N inside one
   transaction (ALTER TABLE ... ADD COLUMN with a default, or a new table
   filled from the old one); never edit an existing step. A database newer
   than this build is refused. */
#define S_SCHEMA_VERSION 3

static const char *const s_schema_v1 =
    "CREATE TABLE IF NOT EXISTS tasks ("
    " id TEXT PRIMARY KEY,"
    " task TEXT NOT NULL,"
    " queue TEXT NOT NULL,"
    " priority INTEGER NOT NULL,"
    " time_limit_ms INTEGER NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " state INTEGER NOT NULL,"
    " seq INTEGER NOT NULL,"
    " args BLOB NOT NULL,"
    " code INTEGER NOT NULL DEFAULT 0,"
    " error TEXT,"
    " result BLOB,"
    " expires_ms INTEGER NOT NULL DEFAULT 0"
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks(expires_ms)"
    " WHERE expires_ms > 0;";

/* v1 -> v2: data-queue items (multiprocessing.Queue on the broker). */
static const char *const s_schema_v2 =
    "CREATE TABLE IF NOT EXISTS items ("
    " queue TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " maxsize INTEGER NOT NULL DEFAULT 0,"
    " data BLOB NOT NULL,"
    " PRIMARY KEY (queue, seq)"
    ") WITHOUT ROWID;";

/* v2 -> v3: a task's retry budget survives a restart. */
static const char *const s_schema_v3 =
    "ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN backoff_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;";

enum {
    S_ADD,
    S_SET_STATE,
    S_FINISH,
    S_REMOVE,
    S_PURGE,
    S_ITEM_ADD,
    S_ITEM_REMOVE,
    S_SET_RETRIES,
    S_BEGIN,
    S_COMMIT,
    S_COUNT
};

static const char *const s_sql[S_COUNT] = {
    [S_ADD] = "INSERT OR IGNORE INTO tasks (id, task, queue, priority,"
              " time_limit_ms, attempt, state, seq, args, retries,"
              " backoff_ms, failures)"
              " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    [S_SET_RETRIES] = "UPDATE tasks SET retries = ?2, failures = ?3"
                      " WHERE id = ?1",
    [S_SET_STATE] = "UPDATE tasks SET state = ?2, attempt = ?3 WHERE id = ?1",
    [S_FINISH] = "UPDATE tasks SET state = ?2, attempt = ?3, code = ?4,"
                 " error = ?5, result = ?6, expires_ms = ?7 WHERE id = ?1",
    [S_REMOVE] = "DELETE FROM tasks WHERE id = ?1",
    [S_PURGE] = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks"
                " WHERE expires_ms > 0 AND expires_ms < ?1 LIMIT ?2)",
    [S_ITEM_ADD] = "INSERT OR REPLACE INTO items (queue, seq, maxsize, data)"
                   " VALUES (?1, ?2, ?3, ?4)",
    [S_ITEM_REMOVE] = "DELETE FROM items WHERE queue = ?1 AND seq = ?2",
    [S_BEGIN] = "BEGIN",
    [S_COMMIT] = "COMMIT",
};

struct tq_store_t {
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
    char path[4096];      /* DIR/tq.db */
    bool in_batch;        /* a transaction is open */
    bool failed;          /* a write failed: refuse everything after */
    char error[8192];     /* last failure, naming the file */
};

static int
s_fail(tq_store_t *self, const char *what)
{
    snprintf(self->error, sizeof self->error, "%s: %s: %s", self->path, what,
             self->db ? sqlite3_errmsg(self->db) : "cannot open");
    self->failed = true;
    return TQ_ESYS;
}

static int
s_exec(tq_store_t *self, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(self->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(self->error, sizeof self->error, "%s: %s", self->path,
                 msg ? msg : "error");
        sqlite3_free(msg);
        return TQ_ESYS;
    }
    return TQ_OK;
}

static int
s_user_version(tq_store_t *self, int *version)
{
    sqlite3_stmt *stmt;
    if (sqlite3_prepare_v2(self->db, "PRAGMA user_version", -1, &stmt,
                           NULL) != SQLITE_OK)
        return TQ_ESYS;
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return rc == SQLITE_ROW ? TQ_OK : TQ_ESYS;
}

/* Brings an older schema up to S_SCHEMA_VERSION. */
static int
s_migrate(tq_store_t *self, int version)
{
    if (version > S_SCHEMA_VERSION) {
        snprintf(self->error, sizeof self->error,
                 "%s: schema version %d is newer than this broker's (%d)",
                 self->path, version, S_SCHEMA_VERSION);
        return TQ_ESYS;
    }
    if (version == S_SCHEMA_VERSION)
        return TQ_OK;
    if (s_exec(self, "BEGIN") != TQ_OK)
        return TQ_ESYS;
    /* one step per version, each from the one before; never edit a step */
    if ((version < 1 && s_exec(self, s_schema_v1) != TQ_OK) ||
        (version < 2 && s_exec(self, s_schema_v2) != TQ_OK) ||
        (version < 3 && s_exec(self, s_schema_v3) != TQ_OK)) {
        s_exec(self, "ROLLBACK");
        return TQ_ESYS;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", S_SCHEMA_VERSION);
    if (s_exec(self, sql) != TQ_OK || s_exec(self, "COMMIT") != TQ_OK) {
        s_exec(self, "ROLLBACK");
        return TQ_ESYS;
    }
    return TQ_OK;
}

tq_store_t *
tq_store_open(const char *dir, tq_sync_t sync, char *error, size_t errlen)
{
    tq_store_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(error, errlen, "out of memory");
        return NULL;
    }
    snprintf(self->path, sizeof self->path, "%s/tq.db", dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(error, errlen, "%s: cannot create directory: %s", dir,
                 strerror(errno));
        free(self);
        return NULL;
    }
    int version = 0;
    if (sqlite3_open_v2(self->path, &self->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        s_fail(self, "cannot open");
        goto failed;
    }
    /* a damaged file shows here, before anything is trusted */
    if (s_exec(self, "PRAGMA journal_mode = WAL") != TQ_OK ||
        s_exec(self, sync == TQ_SYNC_BATCH ? "PRAGMA synchronous = FULL"
                                           : "PRAGMA synchronous = OFF") !=
            TQ_OK ||
        s_exec(self, "PRAGMA wal_autocheckpoint = 4096") != TQ_OK)
        goto failed;
    sqlite3_stmt *check;
    if (sqlite3_prepare_v2(self->db, "PRAGMA quick_check", -1, &check,
                           NULL) != SQLITE_OK) {
        s_fail(self, "damaged database");
        goto failed;
    }
    int rc = sqlite3_step(check);
    const char *first = rc == SQLITE_ROW
                            ? (const char *)sqlite3_column_text(check, 0)
                            : NULL;
    bool ok = first && strcmp(first, "ok") == 0;
    if (!ok) {
        /* quick_check's first line says what is wrong; sqlite3_errmsg
           would only say "not an error" */
        snprintf(self->error, sizeof self->error,
                 "%s: damaged database (quick_check: %s); move it away to "
                 "start empty, or repair it with the sqlite3 shell",
                 self->path,
                 first ? first : sqlite3_errmsg(self->db));
        self->failed = true;
        sqlite3_finalize(check);
        goto failed;
    }
    sqlite3_finalize(check);
    if (s_user_version(self, &version) != TQ_OK ||
        s_migrate(self, version) != TQ_OK)
        goto failed;
    for (int i = 0; i < S_COUNT; i++)
        if (sqlite3_prepare_v3(self->db, s_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &self->stmt[i],
                               NULL) != SQLITE_OK) {
            s_fail(self, "cannot prepare statements");
            goto failed;
        }
    return self;
failed:
    snprintf(error, errlen, "%s", self->error[0] ? self->error : self->path);
    tq_store_destroy(&self);
    return NULL;
}

void
tq_store_destroy(tq_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_store_t *self = *self_p;
    if (self->in_batch && !self->failed)
        tq_store_commit(self);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(self->stmt[i]);
    if (self->db)
        sqlite3_close(self->db);
    free(self);
    *self_p = NULL;
}

/* Runs a prepared statement to completion and resets it. */
static int
s_run(tq_store_t *self, int which, const char *what)
{
    sqlite3_stmt *stmt = self->stmt[which];
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    if (rc != SQLITE_DONE)
        return s_fail(self, what);
    return TQ_OK;
}

static int
s_batch(tq_store_t *self)
{
    if (self->failed)
        return TQ_ESYS;
    if (self->in_batch)
        return TQ_OK;
    if (s_run(self, S_BEGIN, "cannot begin a transaction") != TQ_OK)
        return TQ_ESYS;
    self->in_batch = true;
    return TQ_OK;
}

int
tq_store_add(tq_store_t *self, const tq_store_task_t *t)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_ADD];
    sqlite3_bind_text(s, 1, t->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, t->task, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, t->queue, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, (int)t->priority);
    sqlite3_bind_int64(s, 5, t->time_limit_ms);
    sqlite3_bind_int64(s, 6, t->attempt);
    sqlite3_bind_int(s, 7, (int)t->state);
    sqlite3_bind_int64(s, 8, (sqlite3_int64)t->seq);
    sqlite3_bind_blob(s, 9, t->args, (int)t->args_size, SQLITE_STATIC);
    sqlite3_bind_int64(s, 10, t->retries);
    sqlite3_bind_int64(s, 11, t->backoff_ms);
    sqlite3_bind_int64(s, 12, t->failures);
    return s_run(self, S_ADD, "cannot store a task");
}

int
tq_store_set_retries(tq_store_t *self, const char *id, uint32_t retries,
                     uint32_t failures)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_SET_RETRIES];
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, retries);
    sqlite3_bind_int64(s, 3, failures);
    return s_run(self, S_SET_RETRIES, "cannot update a task");
}

int
tq_store_set_state(tq_store_t *self, const char *id, uint32_t state,
                   uint32_t attempt)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_SET_STATE];
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, (int)state);
    sqlite3_bind_int64(s, 3, attempt);
    return s_run(self, S_SET_STATE, "cannot update a task");
}

int
tq_store_finish(tq_store_t *self, const tq_store_task_t *t)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_FINISH];
    sqlite3_bind_text(s, 1, t->id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, (int)t->state);
    sqlite3_bind_int64(s, 3, t->attempt);
    sqlite3_bind_int(s, 4, (int)t->code);
    if (t->error)
        sqlite3_bind_text(s, 5, t->error, -1, SQLITE_STATIC);
    if (t->result)
        sqlite3_bind_blob(s, 6, t->result, (int)t->result_size,
                          SQLITE_STATIC);
    sqlite3_bind_int64(s, 7, t->expires_ms);
    return s_run(self, S_FINISH, "cannot store a result");
}

int
tq_store_remove(tq_store_t *self, const char *id)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_bind_text(self->stmt[S_REMOVE], 1, id, -1, SQLITE_STATIC);
    return s_run(self, S_REMOVE, "cannot remove a task");
}

int
tq_store_purge(tq_store_t *self, int64_t now_ms, int limit)
{
    if (s_batch(self) != TQ_OK)
        return -1;
    sqlite3_bind_int64(self->stmt[S_PURGE], 1, now_ms);
    sqlite3_bind_int(self->stmt[S_PURGE], 2, limit);
    if (s_run(self, S_PURGE, "cannot purge results") != TQ_OK)
        return -1;
    return sqlite3_changes(self->db);
}

int
tq_store_commit(tq_store_t *self)
{
    if (self->failed)
        return TQ_ESYS;
    if (!self->in_batch)
        return TQ_OK;
    self->in_batch = false;
    if (s_run(self, S_COMMIT, "cannot commit") != TQ_OK) {
        /* the batch is not on disk: nothing of it may be acknowledged */
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return TQ_ESYS;
    }
    return TQ_OK;
}

bool
tq_store_dirty(const tq_store_t *self)
{
    return self->in_batch;
}

int
tq_store_load(tq_store_t *self,
              void (*fn)(const tq_store_task_t *task, void *arg), void *arg)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT id, task, queue, priority, time_limit_ms,"
                           " attempt, state, seq, args, code, error, result,"
                           " expires_ms, retries, backoff_ms, failures"
                           " FROM tasks ORDER BY seq",
                           -1, &s, NULL) != SQLITE_OK)
        return s_fail(self, "cannot read tasks");
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        tq_store_task_t t = {
            .id = (const char *)sqlite3_column_text(s, 0),
            .task = (const char *)sqlite3_column_text(s, 1),
            .queue = (const char *)sqlite3_column_text(s, 2),
            .priority = (uint32_t)sqlite3_column_int(s, 3),
            .time_limit_ms = (uint32_t)sqlite3_column_int64(s, 4),
            .attempt = (uint32_t)sqlite3_column_int64(s, 5),
            .state = (uint32_t)sqlite3_column_int(s, 6),
            .seq = (uint64_t)sqlite3_column_int64(s, 7),
            .args = sqlite3_column_blob(s, 8),
            .args_size = (size_t)sqlite3_column_bytes(s, 8),
            .code = (uint32_t)sqlite3_column_int(s, 9),
            .error = (const char *)sqlite3_column_text(s, 10),
            .result = sqlite3_column_blob(s, 11),
            .result_size = (size_t)sqlite3_column_bytes(s, 11),
            .expires_ms = sqlite3_column_int64(s, 12),
            .retries = (uint32_t)sqlite3_column_int64(s, 13),
            .backoff_ms = (uint32_t)sqlite3_column_int64(s, 14),
            .failures = (uint32_t)sqlite3_column_int64(s, 15),
        };
        if (!t.id || !t.task || !t.queue)
            continue;
        fn(&t, arg);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return s_fail(self, "cannot read tasks");
    return TQ_OK;
}

int
tq_store_item_add(tq_store_t *self, const char *queue, uint64_t seq,
                  uint32_t maxsize, const void *data, size_t size)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_ITEM_ADD];
    sqlite3_bind_text(s, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
    sqlite3_bind_int64(s, 3, maxsize);
    sqlite3_bind_blob(s, 4, data, (int)size, SQLITE_STATIC);
    return s_run(self, S_ITEM_ADD, "cannot store a queue item");
}

int
tq_store_item_remove(tq_store_t *self, const char *queue, uint64_t seq)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_ITEM_REMOVE];
    sqlite3_bind_text(s, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
    return s_run(self, S_ITEM_REMOVE, "cannot remove a queue item");
}

int
tq_store_load_items(tq_store_t *self,
                    void (*fn)(const char *queue, uint64_t seq,
                               uint32_t maxsize, const void *data,
                               size_t size, void *arg),
                    void *arg)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT queue, seq, maxsize, data FROM items"
                           " ORDER BY queue, seq",
                           -1, &s, NULL) != SQLITE_OK)
        return s_fail(self, "cannot read queue items");
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *queue = (const char *)sqlite3_column_text(s, 0);
        const void *data = sqlite3_column_blob(s, 3);
        if (!queue || !data)
            continue;
        fn(queue, (uint64_t)sqlite3_column_int64(s, 1),
           (uint32_t)sqlite3_column_int64(s, 2), data,
           (size_t)sqlite3_column_bytes(s, 3), arg);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return s_fail(self, "cannot read queue items");
    return TQ_OK;
}

uint64_t
tq_store_disk_size(const tq_store_t *self)
{
    uint64_t total = 0;
    char path[4200];
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s%s", self->path, suffixes[i]);
        if (stat(path, &st) == 0)
            total += (uint64_t)st.st_blocks * 512;
    }
    return total;
}

const char *
tq_store_error(const tq_store_t *self)
{
    return self->error;
}
