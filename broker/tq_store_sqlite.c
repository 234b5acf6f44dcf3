/* tq_store_sqlite.c - the broker's store on SQLite in WAL mode, in a
   directory: DIR/tq.db (with -wal and -shm) and the marker DIR/tq.store.

   The broker opens a batch (a transaction) with its first write in a loop
   pass and commits it once at the end of the pass, before it sends the
   acknowledgements of that pass: many submissions share one sync. Every
   payload is stored with its CRC-32C and checked when it is read back. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tq/tq_error.h"
#include "tq_crc32c.h"
#include "tq_store_backend.h"

/* Schema version, kept in PRAGMA user_version and written into the marker
   file DIR/tq.store. To change the schema: bump it, and add a step
   s_schema_vN that brings version N-1 to N (ALTER TABLE ... ADD COLUMN with
   a default, or a new table filled from the old one), run by s_migrate
   inside the one migration transaction; never edit an existing step. Add a
   migration test from version N-1 to tests/test_store.c. A database newer
   than this build is refused.
   v1 tasks; v2 data-queue items; v3 retry budgets; v4 due_ms and a CRC-32C
   per payload; v5 the owner key of a task (tenants under CURVE). */
#define S_SCHEMA_VERSION 5

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
static const char *const s_schema_v2 = "CREATE TABLE IF NOT EXISTS items ("
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

/* v3 -> v4: a task's due time survives a restart; every payload carries
   its CRC-32C (computed here for the rows already stored; NULL only for a
   NULL payload). */
static const char *const s_schema_v4 =
    "ALTER TABLE tasks ADD COLUMN due_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN args_crc INTEGER;"
    "ALTER TABLE tasks ADD COLUMN result_crc INTEGER;"
    "ALTER TABLE items ADD COLUMN crc INTEGER;"
    "UPDATE tasks SET args_crc = tq_crc32c(args),"
    " result_crc = tq_crc32c(result);"
    "UPDATE items SET crc = tq_crc32c(data);";

/* v4 -> v5: the client key that submitted a task (its text, as the broker
   holds it), so that under CURVE a task stays its owner's across a
   restart. Rows stored before have none (NULL): they stay visible to every
   key, as they were (PROTOCOL.md 5.8). */
static const char *const s_schema_v5 =
    "ALTER TABLE tasks ADD COLUMN owner TEXT;";

enum {
    S_ADD,
    S_SET_DUE,
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
              " backoff_ms, failures, due_ms, args_crc, owner)"
              " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,"
              " ?13, ?14, ?15)",
    [S_SET_RETRIES] = "UPDATE tasks SET retries = ?2, failures = ?3"
                      " WHERE id = ?1",
    [S_SET_DUE] = "UPDATE tasks SET state = ?2, attempt = ?3, due_ms = ?4"
                  " WHERE id = ?1",
    [S_FINISH] = "UPDATE tasks SET state = ?2, attempt = ?3, code = ?4,"
                 " error = ?5, result = ?6, expires_ms = ?7, result_crc = ?8,"
                 " due_ms = ?9 WHERE id = ?1",
    [S_REMOVE] = "DELETE FROM tasks WHERE id = ?1",
    [S_PURGE] = "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks"
                " WHERE expires_ms > 0 AND expires_ms < ?1 LIMIT ?2)",
    [S_ITEM_ADD] = "INSERT OR REPLACE INTO items (queue, seq, maxsize, data,"
                   " crc) VALUES (?1, ?2, ?3, ?4, ?5)",
    [S_ITEM_REMOVE] = "DELETE FROM items WHERE queue = ?1 AND seq = ?2",
    [S_BEGIN] = "BEGIN",
    [S_COMMIT] = "COMMIT",
};

/* New tasks go in by S_ADD_ROWS a statement (one INSERT of that many
   rows costs much less than as many INSERTs): s_add keeps a small task's
   row aside (its strings and arguments copied, S_ADD_KEEP bytes at most)
   until S_ADD_ROWS are there, or another write or the commit comes,
   which inserts what is kept first: the writes keep their order. */
#define S_ADD_ROWS 16
#define S_ADD_KEEP 4096

/* A kept row: its strings and arguments are offsets into the store's
   add_bytes (SIZE_MAX: NULL), made pointers when inserted. */
typedef struct {
    tq_store_task_t row;
    size_t id, task, queue, owner, args;
} s_kept_t;

typedef struct {
    tq_store_t base;
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
    sqlite3_stmt *add_rows; /* the INSERT of S_ADD_ROWS rows */
    s_kept_t kept[S_ADD_ROWS];
    uint32_t kept_count;
    char *add_bytes; /* the kept rows' strings and arguments */
    size_t add_used, add_cap;
    char dir[1024];
    char path[1100]; /* DIR/tq.db */
    bool in_batch; /* a transaction is open */
    sqlite3_stmt *read_args; /* s_read_args on reader, prepared at its
                                first use */
    sqlite3_stmt *read_result; /* s_read_result, the same way */
    sqlite3 *reader; /* s_read_args' read-only connection, or NULL */
} s_store_t;

static const tq_store_ops_t s_ops;

static int
s_fail(s_store_t *self, const char *what)
{
    snprintf(self->base.error, sizeof self->base.error, "%s: %s: %s",
             self->path, what,
             self->db ? sqlite3_errmsg(self->db) : "cannot open");
    self->base.failed = true;
    return TQ_ESYS;
}

static int
s_exec(s_store_t *self, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(self->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(self->base.error, sizeof self->base.error, "%s: %s",
                 self->path, msg ? msg : "error");
        sqlite3_free(msg);
        return TQ_ESYS;
    }
    return TQ_OK;
}

static int
s_user_version(s_store_t *self, int *version)
{
    sqlite3_stmt *stmt;
    if (sqlite3_prepare_v2(self->db, "PRAGMA user_version", -1, &stmt, NULL) !=
        SQLITE_OK)
        return TQ_ESYS;
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return rc == SQLITE_ROW ? TQ_OK : TQ_ESYS;
}

/* tq_crc32c(blob) in SQL, for the v4 migration: NULL stays NULL. */
static void
s_sql_crc32c(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
        sqlite3_result_null(ctx);
        return;
    }
    const void *data = sqlite3_value_blob(argv[0]);
    int size = sqlite3_value_bytes(argv[0]);
    sqlite3_result_int64(ctx, tq_crc32c(0, data, (size_t)size));
}

/* Brings an older schema up to S_SCHEMA_VERSION. */
static int
s_migrate(s_store_t *self, int version)
{
    if (version > S_SCHEMA_VERSION) {
        snprintf(self->base.error, sizeof self->base.error,
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
        (version < 3 && s_exec(self, s_schema_v3) != TQ_OK) ||
        (version < 4 && s_exec(self, s_schema_v4) != TQ_OK) ||
        (version < 5 && s_exec(self, s_schema_v5) != TQ_OK)) {
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

static void
s_file(const s_store_t *self, const char *name, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", self->dir, name);
}

/* Writes DIR/tq.store, saying a store of this version lives here (whole or
   not at all: written aside, then renamed). */
static int
s_write_marker(s_store_t *self)
{
    char path[1100], tmp[1200];
    s_file(self, "tq.store", path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        goto failed;
    char text[128];
    int n = snprintf(text, sizeof text, "tq store\nschema %d\nsqlite tq.db\n",
                     S_SCHEMA_VERSION);
    bool ok = write(fd, text, (size_t)n) == n && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) != 0)
        goto failed;
    return TQ_OK;
failed:
    snprintf(self->base.error, sizeof self->base.error,
             "%s: cannot write the store marker: %s", path, strerror(errno));
    unlink(tmp);
    return TQ_ESYS;
}

static bool
s_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Refuses to start empty where the directory shows a store was: tq.db
   missing or empty next to the marker or a WAL. With allow_new, the old
   files are kept aside (tq.db.replaced-TIME...) and an empty store is
   made. */
static int
s_check_missing(s_store_t *self, bool allow_new)
{
    struct stat st;
    bool missing = stat(self->path, &st) != 0;
    if (!missing && st.st_size > 0)
        return TQ_OK;
    char marker[1100], wal[1200];
    s_file(self, "tq.store", marker, sizeof marker);
    snprintf(wal, sizeof wal, "%s-wal", self->path);
    const char *evidence = s_exists(marker) ? marker
        : s_exists(wal)                     ? wal
                                            : NULL;
    if (!evidence)
        return TQ_OK; /* a new store */
    if (!allow_new) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s is %s, but %s shows a store was here: refusing to "
                 "start with an empty store; restore %s from a backup, or "
                 "start with --new-store to begin an empty one (the old "
                 "files are kept aside)",
                 self->path, missing ? "missing" : "empty (0 bytes)", evidence,
                 self->path);
        return TQ_ESYS;
    }
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    long stamp = (long)time(NULL);
    for (size_t i = 0; i < 3; i++) {
        char from[1200], to[1300];
        snprintf(from, sizeof from, "%s%s", self->path, suffixes[i]);
        snprintf(to, sizeof to, "%s%s.replaced-%ld", self->path, suffixes[i],
                 stamp);
        if (s_exists(from) && rename(from, to) != 0) {
            snprintf(self->base.error, sizeof self->base.error,
                     "%s: cannot move aside: %s", from, strerror(errno));
            return TQ_ESYS;
        }
    }
    return TQ_OK;
}

/* Store files are the owner's only: tq.db is made 0600 before SQLite
   opens it (its -wal and -shm take the main file's mode), and an older
   store's files are narrowed. */
static void
s_narrow_modes(s_store_t *self)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s%s", self->path, suffixes[i]);
        chmod(path, 0600);
    }
}

static int
s_quick_check(s_store_t *self)
{
    sqlite3_stmt *check;
    if (sqlite3_prepare_v2(self->db, "PRAGMA quick_check", -1, &check, NULL) !=
        SQLITE_OK)
        return s_fail(self, "damaged database");
    int rc = sqlite3_step(check);
    const char *first =
        rc == SQLITE_ROW ? (const char *)sqlite3_column_text(check, 0) : NULL;
    if (first && strcmp(first, "ok") == 0) {
        sqlite3_finalize(check);
        return TQ_OK;
    }
    /* quick_check's first line says what is wrong; sqlite3_errmsg would
       only say "not an error" */
    snprintf(self->base.error, sizeof self->base.error,
             "%s: damaged database (quick_check: %s); move it away to "
             "start empty, or repair it with the sqlite3 shell",
             self->path, first ? first : sqlite3_errmsg(self->db));
    self->base.failed = true;
    sqlite3_finalize(check);
    return TQ_ESYS;
}

/* SQLite's process-wide settings, made before its first use in the
   process: no memory statistics (tq reads none), which otherwise take a
   global mutex at every allocation SQLite makes, several per statement.
   If the program used SQLite before, the call is refused (SQLITE_MISUSE)
   and its settings stay: nothing else changes. */
static pthread_once_t s_config_once = PTHREAD_ONCE_INIT;

static void
s_config(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

/* S_ADD's INSERT with S_ADD_ROWS rows of its 15 parameters. */
static int
s_prepare_add_rows(s_store_t *self)
{
    const char *values = strstr(s_sql[S_ADD], " VALUES");
    size_t head = (size_t)(values - s_sql[S_ADD]);
    char sql[8192];
    int n = snprintf(sql, sizeof sql, "%.*s VALUES", (int)head, s_sql[S_ADD]);
    /* at most ~1,700 bytes: sql has room for every snprintf */
    for (int r = 0; r < S_ADD_ROWS; r++) {
        n += snprintf(sql + n, sizeof sql - (size_t)n, "%s(", r ? ", " : " ");
        for (int p = 1; p <= 15; p++)
            n += snprintf(sql + n, sizeof sql - (size_t)n, "%s?%d",
                          p > 1 ? ", " : "", r * 15 + p);
        n += snprintf(sql + n, sizeof sql - (size_t)n, ")");
    }
    return sqlite3_prepare_v3(self->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                              &self->add_rows, NULL) == SQLITE_OK
        ? TQ_OK
        : TQ_ESYS;
}

tq_store_t *
tq_store_sqlite_new(const char *dir, const tq_store_options_t *options,
                    char *error, size_t errlen)
{
    s_store_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(error, errlen, "out of memory");
        return NULL;
    }
    self->base.ops = &s_ops;
    if (strlen(dir) + sizeof "/tq.store.tmp" > sizeof self->dir) {
        snprintf(error, errlen, "%.200s...: directory name too long", dir);
        free(self);
        return NULL;
    }
    snprintf(self->dir, sizeof self->dir, "%s", dir);
    snprintf(self->path, sizeof self->path, "%s/tq.db", dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(error, errlen, "%s: cannot create directory: %s", dir,
                 strerror(errno));
        free(self);
        return NULL;
    }
    tq_store_t *base = &self->base;
    if (s_check_missing(self, options->allow_new) != TQ_OK)
        goto failed;
    int fd = open(self->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: cannot open: %s", self->path, strerror(errno));
        goto failed;
    }
    close(fd);
    int version = 0;
    pthread_once(&s_config_once, s_config);
    if (sqlite3_open_v2(self->path, &self->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        s_fail(self, "cannot open");
        goto failed;
    }
    sqlite3_create_function(self->db, "tq_crc32c", 1,
                            SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
                            s_sql_crc32c, NULL, NULL);
    /* a damaged file shows here, before anything is trusted */
    if (s_exec(self, "PRAGMA journal_mode = WAL") != TQ_OK ||
        s_exec(self,
               options->sync == TQ_SYNC_BATCH
                   ? "PRAGMA synchronous = FULL"
                   : "PRAGMA synchronous = OFF") != TQ_OK ||
        s_exec(self, "PRAGMA wal_autocheckpoint = 4096") != TQ_OK)
        goto failed;
    s_narrow_modes(self);
    if (s_quick_check(self) != TQ_OK)
        goto failed;
    if (s_user_version(self, &version) != TQ_OK ||
        s_migrate(self, version) != TQ_OK)
        goto failed;
    if (version != S_SCHEMA_VERSION && s_write_marker(self) != TQ_OK)
        goto failed;
    char marker[1100];
    s_file(self, "tq.store", marker, sizeof marker);
    if (!s_exists(marker) && s_write_marker(self) != TQ_OK)
        goto failed;
    for (int i = 0; i < S_COUNT; i++)
        if (sqlite3_prepare_v3(self->db, s_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &self->stmt[i],
                               NULL) != SQLITE_OK) {
            s_fail(self, "cannot prepare statements");
            goto failed;
        }
    if (s_prepare_add_rows(self) != TQ_OK) {
        s_fail(self, "cannot prepare statements");
        goto failed;
    }
    return base;
failed:
    snprintf(error, errlen, "%s",
             self->base.error[0] ? self->base.error : self->path);
    self->base.failed = true;
    tq_store_destroy(&base);
    return NULL;
}

static int s_commit(tq_store_t *base);

static void
s_destroy(tq_store_t *base)
{
    s_store_t *self = (s_store_t *)base;
    if (self->in_batch && !self->base.failed)
        s_commit(base);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(self->stmt[i]);
    sqlite3_finalize(self->add_rows);
    free(self->add_bytes);
    sqlite3_finalize(self->read_args);
    sqlite3_finalize(self->read_result);
    if (self->reader)
        sqlite3_close(self->reader);
    if (self->db)
        sqlite3_close(self->db);
    free(self);
}

/* Runs a prepared statement to completion and resets it. Its bindings
   stay: every write binds each of its statement's parameters, NULL
   included. */
static int
s_run(s_store_t *self, int which, const char *what)
{
    sqlite3_stmt *stmt = self->stmt[which];
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE)
        return s_fail(self, what);
    return TQ_OK;
}

static int
s_batch(s_store_t *self)
{
    if (self->base.failed)
        return TQ_ESYS;
    if (self->in_batch)
        return TQ_OK;
    if (s_run(self, S_BEGIN, "cannot begin a transaction") != TQ_OK)
        return TQ_ESYS;
    self->in_batch = true;
    return TQ_OK;
}

/* Binds a task's row to S_ADD's 15 parameters, from first + 1 on. */
static void
s_bind_add(sqlite3_stmt *s, int first, const tq_store_task_t *t)
{
    sqlite3_bind_text(s, first + 1, t->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, first + 2, t->task, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, first + 3, t->queue, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, first + 4, (int)t->priority);
    sqlite3_bind_int64(s, first + 5, t->time_limit_ms);
    sqlite3_bind_int64(s, first + 6, t->attempt);
    sqlite3_bind_int(s, first + 7, (int)t->state);
    sqlite3_bind_int64(s, first + 8, (sqlite3_int64)t->seq);
    sqlite3_bind_blob(s, first + 9, t->args ? t->args : "", (int)t->args_size,
                      SQLITE_STATIC);
    sqlite3_bind_int64(s, first + 10, t->retries);
    sqlite3_bind_int64(s, first + 11, t->backoff_ms);
    sqlite3_bind_int64(s, first + 12, t->failures);
    sqlite3_bind_int64(s, first + 13, t->due_ms);
    sqlite3_bind_int64(s, first + 14, tq_crc32c(0, t->args, t->args_size));
    if (t->owner)
        sqlite3_bind_text(s, first + 15, t->owner, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, first + 15);
}

/* Copies size bytes (and a NUL) into add_bytes: their offset, or SIZE_MAX
   for NULL. */
static size_t
s_keep_bytes(s_store_t *self, const void *data, size_t size)
{
    if (!data)
        return SIZE_MAX;
    if (self->add_used + size + 1 > self->add_cap) {
        size_t cap = self->add_cap ? self->add_cap : 8192;
        while (cap < self->add_used + size + 1)
            cap *= 2;
        char *bytes = realloc(self->add_bytes, cap);
        if (!bytes)
            abort();
        self->add_bytes = bytes;
        self->add_cap = cap;
    }
    size_t at = self->add_used;
    memcpy(self->add_bytes + at, data, size);
    self->add_bytes[at + size] = '\0';
    self->add_used += size + 1;
    return at;
}

static const char *
s_kept_at(const s_store_t *self, size_t at)
{
    return at == SIZE_MAX ? NULL : self->add_bytes + at;
}

/* Inserts the kept rows: S_ADD_ROWS in one statement, fewer one by one. */
static int
s_add_flush(s_store_t *self)
{
    uint32_t count = self->kept_count;
    if (count == 0)
        return TQ_OK;
    self->kept_count = 0;
    for (uint32_t i = 0; i < count; i++) {
        s_kept_t *k = &self->kept[i];
        k->row.id = s_kept_at(self, k->id);
        k->row.task = s_kept_at(self, k->task);
        k->row.queue = s_kept_at(self, k->queue);
        k->row.owner = s_kept_at(self, k->owner);
        k->row.args = s_kept_at(self, k->args);
    }
    int rc = TQ_OK;
    if (count == S_ADD_ROWS) {
        for (uint32_t i = 0; i < count; i++)
            s_bind_add(self->add_rows, (int)i * 15, &self->kept[i].row);
        int step = sqlite3_step(self->add_rows);
        sqlite3_reset(self->add_rows);
        if (step != SQLITE_DONE)
            rc = s_fail(self, "cannot store a task");
    } else {
        for (uint32_t i = 0; i < count && rc == TQ_OK; i++) {
            s_bind_add(self->stmt[S_ADD], 0, &self->kept[i].row);
            rc = s_run(self, S_ADD, "cannot store a task");
        }
    }
    self->add_used = 0;
    /* a burst's large arguments do not keep their peak */
    if (self->add_cap > 16 * S_ADD_ROWS * S_ADD_KEEP) {
        free(self->add_bytes);
        self->add_bytes = NULL;
        self->add_cap = 0;
    }
    return rc;
}

/* Opens the batch for a write other than an add: the kept adds go in
   first. */
static int
s_write(s_store_t *self)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    return s_add_flush(self);
}

/* The same for a write to one task (id): the kept adds go in first only
   if one of them is that task's (the others do not see it). */
static int
s_write_task(s_store_t *self, const char *id)
{
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    for (uint32_t i = 0; i < self->kept_count; i++)
        if (strcmp(self->add_bytes + self->kept[i].id, id) == 0)
            return s_add_flush(self);
    return TQ_OK;
}

static int
s_add(tq_store_t *base, const tq_store_task_t *t)
{
    s_store_t *self = (s_store_t *)base;
    if (s_batch(self) != TQ_OK)
        return TQ_ESYS;
    if (t->args_size > S_ADD_KEEP || !t->id || !t->task || !t->queue) {
        /* a large one goes in now, with what was kept before it */
        if (s_add_flush(self) != TQ_OK)
            return TQ_ESYS;
        s_bind_add(self->stmt[S_ADD], 0, t);
        return s_run(self, S_ADD, "cannot store a task");
    }
    s_kept_t *k = &self->kept[self->kept_count++];
    k->row = *t;
    k->id = s_keep_bytes(self, t->id, strlen(t->id));
    k->task = s_keep_bytes(self, t->task, strlen(t->task));
    k->queue = s_keep_bytes(self, t->queue, strlen(t->queue));
    k->owner = s_keep_bytes(self, t->owner, t->owner ? strlen(t->owner) : 0);
    k->args = s_keep_bytes(self, t->args ? t->args : "", t->args_size);
    if (self->kept_count == S_ADD_ROWS)
        return s_add_flush(self);
    return TQ_OK;
}

static int
s_set_retries(tq_store_t *base, const char *id, uint32_t retries,
              uint32_t failures)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write_task(self, id) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_SET_RETRIES];
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, retries);
    sqlite3_bind_int64(s, 3, failures);
    return s_run(self, S_SET_RETRIES, "cannot update a task");
}

static int
s_set_due(tq_store_t *base, const char *id, uint32_t state, uint32_t attempt,
          int64_t due_ms)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write_task(self, id) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_SET_DUE];
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, (int)state);
    sqlite3_bind_int64(s, 3, attempt);
    sqlite3_bind_int64(s, 4, due_ms);
    return s_run(self, S_SET_DUE, "cannot update a task");
}

static int
s_finish(tq_store_t *base, const tq_store_task_t *t)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write_task(self, t->id) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_FINISH];
    sqlite3_bind_text(s, 1, t->id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, (int)t->state);
    sqlite3_bind_int64(s, 3, t->attempt);
    sqlite3_bind_int(s, 4, (int)t->code);
    if (t->error)
        sqlite3_bind_text(s, 5, t->error, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 5);
    if (t->result) {
        sqlite3_bind_blob(s, 6, t->result, (int)t->result_size, SQLITE_STATIC);
        sqlite3_bind_int64(s, 8, tq_crc32c(0, t->result, t->result_size));
    } else {
        sqlite3_bind_null(s, 6);
        sqlite3_bind_null(s, 8);
    }
    sqlite3_bind_int64(s, 7, t->expires_ms);
    sqlite3_bind_int64(s, 9, t->due_ms);
    return s_run(self, S_FINISH, "cannot store a result");
}

static int
s_remove(tq_store_t *base, const char *id)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write_task(self, id) != TQ_OK)
        return TQ_ESYS;
    sqlite3_bind_text(self->stmt[S_REMOVE], 1, id, -1, SQLITE_STATIC);
    return s_run(self, S_REMOVE, "cannot remove a task");
}

static int
s_purge(tq_store_t *base, int64_t now_ms, int limit)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write(self) != TQ_OK)
        return -1;
    sqlite3_bind_int64(self->stmt[S_PURGE], 1, now_ms);
    sqlite3_bind_int(self->stmt[S_PURGE], 2, limit);
    if (s_run(self, S_PURGE, "cannot purge results") != TQ_OK)
        return -1;
    return sqlite3_changes(self->db);
}

static int
s_commit(tq_store_t *base)
{
    s_store_t *self = (s_store_t *)base;
    if (!self->in_batch)
        return TQ_OK;
    if (s_add_flush(self) != TQ_OK) {
        self->in_batch = false;
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return TQ_ESYS;
    }
    self->in_batch = false;
    if (s_run(self, S_COMMIT, "cannot commit") != TQ_OK) {
        /* the batch is not on disk: nothing of it may be acknowledged */
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return TQ_ESYS;
    }
    return TQ_OK;
}

static bool
s_dirty(const tq_store_t *base)
{
    return ((const s_store_t *)base)->in_batch;
}

static int
s_load(tq_store_t *base, tq_store_task_fn *fn, void *arg)
{
    s_store_t *self = (s_store_t *)base;
    sqlite3_stmt *s;
    /* the kept adds of an open batch are read as written */
    if (self->in_batch && s_add_flush(self) != TQ_OK)
        return TQ_ESYS;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT id, task, queue, priority, time_limit_ms,"
                           " attempt, state, seq, args, code, error, result,"
                           " expires_ms, retries, backoff_ms, failures,"
                           " due_ms, args_crc, result_crc, owner"
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
            .due_ms = sqlite3_column_int64(s, 16),
            .owner = (const char *)sqlite3_column_text(s, 19),
        };
        if (!t.id || !t.task || !t.queue)
            continue;
        t.corrupt_reason =
            tq_store_check_payload(TQ_STORE_ARGS, t.args, t.args_size,
                                   sqlite3_column_type(s, 17) != SQLITE_NULL,
                                   (uint32_t)sqlite3_column_int64(s, 17));
        if (!t.corrupt_reason)
            t.corrupt_reason = tq_store_check_payload(
                TQ_STORE_RESULT, t.result, t.result_size,
                sqlite3_column_type(s, 18) != SQLITE_NULL,
                (uint32_t)sqlite3_column_int64(s, 18));
        t.corrupt = t.corrupt_reason != NULL;
        fn(&t, arg);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return s_fail(self, "cannot read tasks");
    return TQ_OK;
}

static int
s_item_add(tq_store_t *base, const char *queue, uint64_t seq, uint32_t maxsize,
           const void *data, size_t size)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_ITEM_ADD];
    sqlite3_bind_text(s, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
    sqlite3_bind_int64(s, 3, maxsize);
    sqlite3_bind_blob(s, 4, data ? data : "", (int)size, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, tq_crc32c(0, data, size));
    return s_run(self, S_ITEM_ADD, "cannot store a queue item");
}

static int
s_item_remove(tq_store_t *base, const char *queue, uint64_t seq)
{
    s_store_t *self = (s_store_t *)base;
    if (s_write(self) != TQ_OK)
        return TQ_ESYS;
    sqlite3_stmt *s = self->stmt[S_ITEM_REMOVE];
    sqlite3_bind_text(s, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
    return s_run(self, S_ITEM_REMOVE, "cannot remove a queue item");
}

static int
s_load_items(tq_store_t *base, tq_store_item_fn *fn, void *arg)
{
    s_store_t *self = (s_store_t *)base;
    sqlite3_stmt *s;
    /* the kept adds of an open batch are read as written */
    if (self->in_batch && s_add_flush(self) != TQ_OK)
        return TQ_ESYS;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT queue, seq, maxsize, data, crc FROM items"
                           " ORDER BY queue, seq",
                           -1, &s, NULL) != SQLITE_OK)
        return s_fail(self, "cannot read queue items");
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        tq_store_item_t item = {
            .queue = (const char *)sqlite3_column_text(s, 0),
            .seq = (uint64_t)sqlite3_column_int64(s, 1),
            .maxsize = (uint32_t)sqlite3_column_int64(s, 2),
            .data = sqlite3_column_blob(s, 3),
            .size = (size_t)sqlite3_column_bytes(s, 3),
        };
        if (!item.queue || !item.data)
            continue;
        item.corrupt_reason =
            tq_store_check_payload(TQ_STORE_ITEM, item.data, item.size,
                                   sqlite3_column_type(s, 4) != SQLITE_NULL,
                                   (uint32_t)sqlite3_column_int64(s, 4));
        item.corrupt = item.corrupt_reason != NULL;
        fn(&item, arg);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return s_fail(self, "cannot read queue items");
    return TQ_OK;
}

static uint64_t
s_disk_size(const tq_store_t *base)
{
    const s_store_t *self = (const s_store_t *)base;
    uint64_t total = 0;
    char path[1200];
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s%s", self->path, suffixes[i]);
        if (stat(path, &st) == 0)
            total += (uint64_t)st.st_blocks * 512;
    }
    return total;
}

static int
s_lease_acquire(tq_store_t *base, const char *owner, uint32_t ttl_ms,
                uint64_t *epoch)
{
    (void)owner;
    (void)ttl_ms;
    (void)epoch;
    snprintf(base->error, sizeof base->error,
             "%s: a SQLite store has no lease (one broker per directory; "
             "several brokers share a PostgreSQL store)",
             ((s_store_t *)base)->path);
    return TQ_ESTATE;
}

static int
s_lease_renew(tq_store_t *base, uint32_t ttl_ms)
{
    return s_lease_acquire(base, NULL, ttl_ms, NULL);
}

/* Reads a task's arguments, or its result (result), checksum checked. */
static int
s_read(tq_store_t *base, const char *id, bool result_,
       void (*fn)(const void *data, size_t size, void *arg), void *arg)
{
    s_store_t *self = (s_store_t *)base;
    sqlite3_stmt **stmt = result_ ? &self->read_result : &self->read_args;
    /* a read-only connection of its own: in WAL mode it reads the
       committed state while the broker's commit thread writes on db */
    if (!self->reader &&
        sqlite3_open_v2(self->path, &self->reader,
                        SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: cannot open for reading: %s", self->path,
                 self->reader ? sqlite3_errmsg(self->reader) : "no memory");
        sqlite3_close(self->reader);
        self->reader = NULL;
        return TQ_ESYS;
    }
    if (!*stmt &&
        sqlite3_prepare_v3(
            self->reader,
            result_ ? "SELECT result, result_crc FROM tasks WHERE id = ?1"
                    : "SELECT args, args_crc FROM tasks WHERE id = ?1",
            -1, SQLITE_PREPARE_PERSISTENT, stmt, NULL) != SQLITE_OK) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: cannot read a task's %s: %s", self->path,
                 result_ ? "result" : "arguments",
                 sqlite3_errmsg(self->reader));
        return TQ_ESYS;
    }
    sqlite3_stmt *s = *stmt;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    int result = TQ_OK;
    if (rc == SQLITE_ROW) {
        const void *data = sqlite3_column_blob(s, 0);
        size_t size = (size_t)sqlite3_column_bytes(s, 0);
        if (tq_store_check_payload(result_ ? TQ_STORE_RESULT : TQ_STORE_ARGS,
                                   data, size,
                                   sqlite3_column_type(s, 1) != SQLITE_NULL,
                                   (uint32_t)sqlite3_column_int64(s, 1)))
            result = TQ_ECORRUPT;
        else
            fn(data, size, arg);
    } else if (rc == SQLITE_DONE) {
        result = TQ_EUNKNOWN;
    } else {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: cannot read a task's arguments: %s", self->path,
                 sqlite3_errmsg(self->reader));
        result = TQ_ESYS;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return result;
}

static int
s_read_args(tq_store_t *base, const char *id,
            void (*fn)(const void *data, size_t size, void *arg), void *arg)
{
    return s_read(base, id, false, fn, arg);
}

static int
s_read_result(tq_store_t *base, const char *id,
              void (*fn)(const void *data, size_t size, void *arg), void *arg)
{
    return s_read(base, id, true, fn, arg);
}

static const tq_store_ops_t s_ops = {
    .name = "sqlite",
    .destroy = s_destroy,
    .add = s_add,
    .set_due = s_set_due,
    .set_retries = s_set_retries,
    .finish = s_finish,
    .remove = s_remove,
    .purge = s_purge,
    .commit = s_commit,
    .dirty = s_dirty,
    .load = s_load,
    .item_add = s_item_add,
    .item_remove = s_item_remove,
    .load_items = s_load_items,
    .disk_size = s_disk_size,
    .lease_acquire = s_lease_acquire,
    .lease_renew = s_lease_renew,
    .read_args = s_read_args,
    .read_result = s_read_result,
};
