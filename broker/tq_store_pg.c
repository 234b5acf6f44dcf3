/* tq_store_pg.c - the broker's store on PostgreSQL (libpq), for several
   brokers sharing one database.

   The writes of a loop pass are kept client-side (copied) and sent at
   commit in one transaction: consecutive writes of one kind become one
   execution of that kind's prepared statement, whose parameters are one
   array per column (INSERT ... SELECT FROM unnest(...) ON CONFLICT, UPDATE
   ... FROM unnest(...), DELETE ... = ANY(...)), and all statements of the
   transaction go in one libpq pipeline, so a commit costs one round trip
   however many rows it carries. The commit reports success only once the
   server said COMMIT; any failure (lost connection, the lease taken by
   another broker) leaves the store refusing every later write. */
#include <arpa/inet.h>
#include <assert.h>
#include <czmq.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq/tq_error.h"
#include "tq_crc32c.h"
#include "tq_store_backend.h"

/* Schema version of the PostgreSQL store, kept in tq_meta ('schema').
   To change the schema: bump it, and add a step s_pg_schema_vN that brings
   version N-1 to N (ALTER TABLE ... ADD COLUMN with a default, a new
   table), run by s_migrate in the migration transaction (which holds an
   advisory lock, so two brokers starting together migrate once); never
   edit an existing step, and test the step in tests/test_store_pg.c. A
   database newer than this build is refused.
   v1: tasks (as SQLite's v4: due_ms, a CRC-32C per payload), items, the
   active broker's lease and its fencing check tq_fence(epoch); v2: the
   owner key of a task (as SQLite's v5). */
#define S_SCHEMA_VERSION 2

static const char *const s_pg_schema_v1 =
    "CREATE TABLE tq_tasks ("
    " id text PRIMARY KEY,"
    " task text NOT NULL,"
    " queue text NOT NULL,"
    " priority bigint NOT NULL,"
    " time_limit_ms bigint NOT NULL,"
    " attempt bigint NOT NULL,"
    " state bigint NOT NULL,"
    " seq bigint NOT NULL,"
    " args bytea NOT NULL,"
    " args_crc bigint,"
    " code bigint NOT NULL DEFAULT 0,"
    " error text,"
    " result bytea,"
    " result_crc bigint,"
    " expires_ms bigint NOT NULL DEFAULT 0,"
    " retries bigint NOT NULL DEFAULT 0,"
    " backoff_ms bigint NOT NULL DEFAULT 0,"
    " failures bigint NOT NULL DEFAULT 0,"
    " due_ms bigint NOT NULL DEFAULT 0)"
    /* room in each page: a state change is a HOT update, no index write */
    " WITH (fillfactor = 70);"
    "CREATE INDEX tq_tasks_expiry ON tq_tasks (expires_ms)"
    " WHERE expires_ms > 0;"
    "CREATE TABLE tq_items ("
    " queue text NOT NULL,"
    " seq bigint NOT NULL,"
    " maxsize bigint NOT NULL DEFAULT 0,"
    " data bytea NOT NULL,"
    " crc bigint,"
    " PRIMARY KEY (queue, seq));"
    /* one row: who is the active broker, until when, and the epoch every
       commit of the active one checks (a fencing token) */
    "CREATE TABLE tq_lease ("
    " name text PRIMARY KEY,"
    " owner text NOT NULL,"
    " epoch bigint NOT NULL,"
    " expires_at timestamptz NOT NULL);"
    /* FOR SHARE: a takeover (an UPDATE of the row) waits for a commit that
       passed the check, and a commit after the takeover fails */
    "CREATE FUNCTION tq_fence(want bigint) RETURNS bigint"
    " LANGUAGE plpgsql AS $f$"
    " DECLARE have bigint; holder text;"
    " BEGIN"
    "  SELECT epoch, owner INTO have, holder FROM tq_lease"
    "   WHERE name = 'active' FOR SHARE;"
    "  IF have IS DISTINCT FROM want THEN"
    "   RAISE EXCEPTION 'lease lost: epoch % is no longer current (now %"
    " held by %)', want, have, holder USING ERRCODE = 'TQ001';"
    "  END IF;"
    "  RETURN have;"
    " END $f$;";

/* v1 -> v2: the client key that submitted a task (its text, as the
   broker holds it), so that under CURVE a task stays its owner's across a
   restart. Rows stored before have none (NULL): they stay visible to every
   key, as they were (PROTOCOL.md 5.8). A column without a default: no
   table rewrite. */
static const char *const s_pg_schema_v2 =
    "ALTER TABLE tq_tasks ADD COLUMN owner text;";

/* The kinds of write a batch holds, in the order they were made. */
enum {
    S_ADD,
    S_SET_DUE,
    S_SET_RETRIES,
    S_FINISH,
    S_REMOVE,
    S_PURGE,
    S_ITEM_ADD,
    S_ITEM_REMOVE
};

/* rows per statement (bounds the arrays of one execution) */
#define S_ROWS_MAX 1000
/* statements sent before the pipeline is synced and its results read, so
   neither side's socket buffer fills while the other waits */
#define S_PIPELINE_MAX 256

#define S_OID_INT8 20
#define S_OID_TEXT 25
#define S_OID_BYTEA 17

/* bytes copied into the batch's arena: offset and length */
typedef struct {
    size_t off;
    size_t len;
    bool set;
} s_ref_t;

typedef struct {
    int kind;
    s_ref_t id; /* task id; an item's queue */
    s_ref_t task, queue, error;
    s_ref_t owner; /* S_ADD: the submitter's key, unset: NULL */
    s_ref_t blob; /* args, result or item data */
    int64_t n[10]; /* the kind's numbers, in its statement's order */
    int nn;
} s_op_t;

/* the most columns of a statement (S_ADD's) */
#define S_COLUMNS_MAX 15

/* one column of a run: an array in PostgreSQL's binary format */
typedef struct {
    char *buf;
    size_t len, cap;
    uint32_t count; /* elements */
    bool has_null;
} s_col_t;

typedef struct {
    tq_store_t base;
    PGconn *conn;
    char where[1024]; /* the URL without its password, for messages */
    bool synchronous; /* TQ_SYNC_BATCH */
    s_op_t *ops; /* the open batch */
    size_t op_count, op_cap;
    char *arena; /* the batch's copied strings and payloads */
    size_t arena_used, arena_cap;
    s_col_t cols[S_COLUMNS_MAX]; /* the run being sent */
    const char *values[S_COLUMNS_MAX];
    int lengths[S_COLUMNS_MAX], formats[S_COLUMNS_MAX];
    zhashx_t *run_keys; /* keys in the run being built (no duplicates) */
    char owner[256]; /* lease owner, "" none held */
    uint64_t epoch; /* lease epoch every commit checks, 0 none */
} s_pg_t;

static const tq_store_ops_t s_ops;

static void *
s_realloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (!p)
        abort(); /* out of memory in a daemon is fatal (STYLE.md) */
    return p;
}

/* Copies url without the password of user:password@ or password=. */
static void
s_redact(const char *url, char *out, size_t size)
{
    snprintf(out, size, "%s", url);
    char *scheme = strstr(out, "://");
    char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    char *slash = scheme ? strchr(scheme + 3, '/') : NULL;
    if (at && (!slash || at < slash)) {
        char *colon = memchr(scheme + 3, ':', (size_t)(at - scheme - 3));
        if (colon && strlen(out) + 4 < size) {
            memmove(colon + 4, at, strlen(at) + 1);
            memcpy(colon + 1, "***", 3);
        }
    }
    char *password = strstr(out, "password=");
    if (password && strlen(out) + 4 < size) {
        char *end = strchr(password, '&');
        if (end)
            memmove(password + 12, end, strlen(end) + 1);
        else
            password[12] = '\0';
        memcpy(password + 9, "***", 3);
    }
}

/* The message of the connection's last error, on one line. */
static const char *
s_pq_message(PGconn *conn, const PGresult *res)
{
    static char text[2048];
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = conn ? PQerrorMessage(conn) : "no connection";
    snprintf(text, sizeof text, "%s", msg && *msg ? msg : "unknown error");
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = p[1] ? ' ' : '\0';
    return text;
}

static int
s_fail(s_pg_t *self, const char *what, const PGresult *res)
{
    snprintf(self->base.error, sizeof self->base.error, "%s: %s: %s",
             self->where, what, s_pq_message(self->conn, res));
    self->base.failed = true;
    return TQ_ESYS;
}

/* Runs one statement outside the batch; true if it reached status. */
static PGresult *
s_exec(s_pg_t *self, const char *sql, int nparams, const char *const *values,
       ExecStatusType want)
{
    /* without parameters, the simple protocol: several statements */
    PGresult *res = nparams
        ? PQexecParams(self->conn, sql, nparams, NULL, values, NULL, NULL, 0)
        : PQexec(self->conn, sql);
    if (PQresultStatus(res) != want) {
        snprintf(self->base.error, sizeof self->base.error, "%s: %s",
                 self->where, s_pq_message(self->conn, res));
        PQclear(res);
        return NULL;
    }
    return res;
}

static bool
s_exec_ok(s_pg_t *self, const char *sql)
{
    PGresult *res = s_exec(self, sql, 0, NULL, PGRES_COMMAND_OK);
    PQclear(res);
    return res != NULL;
}

/* The first column of the first row of a query, as text; "" if none. */
static bool
s_query_text(s_pg_t *self, const char *sql, char *out, size_t size)
{
    PGresult *res = s_exec(self, sql, 0, NULL, PGRES_TUPLES_OK);
    if (!res)
        return false;
    snprintf(out, size, "%s",
             PQntuples(res) && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0)
                                                       : "");
    PQclear(res);
    return true;
}

/* Creates or upgrades the schema, or refuses a database that is not a tq
   store of a version this build knows. One transaction, under an advisory
   lock held until it ends. */
static int
s_migrate(s_pg_t *self)
{
    char meta[64], tasks[64], text[64];
    if (!s_exec_ok(self, "BEGIN"))
        return TQ_ESYS;
    PGresult *res = s_exec(self, "SELECT pg_advisory_xact_lock(7290001)", 0,
                           NULL, PGRES_TUPLES_OK);
    PQclear(res);
    if (!res ||
        !s_query_text(self, "SELECT to_regclass('tq_meta')::text", meta,
                      sizeof meta) ||
        !s_query_text(self, "SELECT to_regclass('tq_tasks')::text", tasks,
                      sizeof tasks))
        goto failed;
    int version = 0;
    if (!*meta && *tasks) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: damaged store: table tq_tasks exists but tq_meta "
                 "(the schema version) does not; repair or drop the tq_* "
                 "tables",
                 self->where);
        goto failed;
    }
    if (*meta) {
        if (!s_query_text(self,
                          "SELECT value FROM tq_meta WHERE key = 'schema'",
                          text, sizeof text))
            goto failed;
        version = atoi(text);
        if (version < 1) {
            snprintf(self->base.error, sizeof self->base.error,
                     "%s: damaged store: tq_meta holds no schema version",
                     self->where);
            goto failed;
        }
    } else if (!s_exec_ok(self,
                          "CREATE TABLE tq_meta (key text PRIMARY KEY,"
                          " value bigint NOT NULL)"))
        goto failed;
    if (version > S_SCHEMA_VERSION) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: schema version %d is newer than this broker's (%d)",
                 self->where, version, S_SCHEMA_VERSION);
        goto failed;
    }
    /* one step per version, each from the one before; never edit a step */
    if ((version < 1 && !s_exec_ok(self, s_pg_schema_v1)) ||
        (version < 2 && !s_exec_ok(self, s_pg_schema_v2)))
        goto failed;
    if (version < S_SCHEMA_VERSION) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "INSERT INTO tq_meta VALUES ('schema', %d) ON CONFLICT (key)"
                 " DO UPDATE SET value = excluded.value",
                 S_SCHEMA_VERSION);
        if (!s_exec_ok(self, sql))
            goto failed;
    }
    /* every table of the current version is there */
    static const char *const tables[] = {"tq_tasks", "tq_items", "tq_lease"};
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
        char sql[96];
        snprintf(sql, sizeof sql, "SELECT to_regclass('%s')::text", tables[i]);
        if (!s_query_text(self, sql, text, sizeof text))
            goto failed;
        if (!*text) {
            snprintf(self->base.error, sizeof self->base.error,
                     "%s: damaged store: schema version %d but table %s is "
                     "missing",
                     self->where, version, tables[i]);
            goto failed;
        }
    }
    if (!s_exec_ok(self, "COMMIT"))
        goto failed;
    return TQ_OK;
failed:
    PQclear(PQexec(self->conn, "ROLLBACK"));
    return TQ_ESYS;
}

static int s_prepare(s_pg_t *self);

tq_store_t *
tq_store_pg_new(const char *url, const tq_store_options_t *options, char *error,
                size_t errlen)
{
    s_pg_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(error, errlen, "out of memory");
        return NULL;
    }
    self->base.ops = &s_ops;
    self->synchronous = options->sync == TQ_SYNC_BATCH;
    s_redact(url, self->where, sizeof self->where);
    self->run_keys = zhashx_new();
    if (!self->run_keys)
        abort();
    tq_store_t *base = &self->base;
    /* defaults first: the URL's own settings, expanded from dbname after
       them, win. A cut link is noticed within seconds: keepalives probe an
       idle connection, tcp_user_timeout bounds unacknowledged writes. */
    const char *const keys[] = {
        "connect_timeout",     "keepalives",       "keepalives_idle",
        "keepalives_interval", "keepalives_count", "tcp_user_timeout",
        "application_name",    "dbname",           NULL};
    char user_timeout[16];
    snprintf(user_timeout, sizeof user_timeout, "%u",
             options->link_timeout_ms ? options->link_timeout_ms : 10000);
    const char *const values[] = {"5",          "1",         "5", "2", "3",
                                  user_timeout, "tq-broker", url, NULL};
    self->conn = PQconnectdbParams(keys, values, 1);
    if (!self->conn || PQstatus(self->conn) != CONNECTION_OK) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: cannot connect to the PostgreSQL store: %s", self->where,
                 s_pq_message(self->conn, NULL));
        goto failed;
    }
    if (PQserverVersion(self->conn) < 100000) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: PostgreSQL %d is too old (10 or later)", self->where,
                 PQserverVersion(self->conn));
        goto failed;
    }
    /* os: the server acknowledges a commit before its WAL reaches the disk,
       as SQLite's synchronous = OFF */
    if (!s_exec_ok(self, "SET client_min_messages = warning") ||
        !s_exec_ok(self,
                   self->synchronous ? "SET synchronous_commit = on"
                                     : "SET synchronous_commit = off"))
        goto failed;
    /* a broker frozen (SIGSTOP) in the middle of a transaction keeps its
       connection, and the lease row that its fence holds FOR SHARE: the
       server ends such a session once it sat idle in its transaction for
       the lease's length, and no statement of ours waits for a row lock
       longer than that (a standby's takeover would otherwise wait for a
       frozen broker forever) */
    char limits[160];
    unsigned link = options->link_timeout_ms ? options->link_timeout_ms : 10000;
    snprintf(limits, sizeof limits,
             "SET idle_in_transaction_session_timeout = %u;"
             "SET lock_timeout = %u",
             link, link);
    if (!s_exec_ok(self, limits))
        goto failed;
    if (s_migrate(self) != TQ_OK || s_prepare(self) != TQ_OK)
        goto failed;
    return base;
failed:
    snprintf(error, errlen, "%s",
             self->base.error[0] ? self->base.error : self->where);
    self->base.failed = true;
    tq_store_destroy(&base);
    return NULL;
}

static int s_commit(tq_store_t *base);

static void
s_destroy(tq_store_t *base)
{
    s_pg_t *self = (s_pg_t *)base;
    if (self->op_count && !self->base.failed)
        s_commit(base);
    if (self->conn)
        PQfinish(self->conn);
    free(self->ops);
    free(self->arena);
    for (int c = 0; c < S_COLUMNS_MAX; c++)
        free(self->cols[c].buf);
    zhashx_destroy(&self->run_keys);
    free(self);
}

/* ---- the batch, client-side ---- */

static s_ref_t
s_copy(s_pg_t *self, const void *data, size_t len)
{
    if (!data)
        return (s_ref_t){0};
    if (self->arena_used + len > self->arena_cap) {
        size_t cap = self->arena_cap ? self->arena_cap : 65536;
        while (cap < self->arena_used + len)
            cap *= 2;
        self->arena = s_realloc(self->arena, cap);
        self->arena_cap = cap;
    }
    memcpy(self->arena + self->arena_used, data, len);
    s_ref_t ref = {self->arena_used, len, true};
    self->arena_used += len;
    return ref;
}

static s_ref_t
s_copy_text(s_pg_t *self, const char *text)
{
    return text ? s_copy(self, text, strlen(text)) : (s_ref_t){0};
}

static s_op_t *
s_op(s_pg_t *self, int kind)
{
    if (self->op_count == self->op_cap) {
        self->op_cap = self->op_cap ? 2 * self->op_cap : 1024;
        self->ops = s_realloc(self->ops, self->op_cap * sizeof *self->ops);
    }
    s_op_t *op = &self->ops[self->op_count++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    return op;
}

static int
s_add(tq_store_t *base, const tq_store_task_t *t)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_ADD);
    op->id = s_copy_text(self, t->id);
    op->task = s_copy_text(self, t->task);
    op->queue = s_copy_text(self, t->queue);
    op->owner = s_copy_text(self, t->owner);
    op->blob = s_copy(self, t->args ? t->args : "", t->args_size);
    int64_t n[] = {t->priority,     t->time_limit_ms,
                   t->attempt,      t->state,
                   (int64_t)t->seq, t->retries,
                   t->backoff_ms,   t->failures,
                   t->due_ms,       tq_crc32c(0, t->args, t->args_size)};
    memcpy(op->n, n, sizeof n);
    op->nn = 10;
    return TQ_OK;
}

static int
s_set_due(tq_store_t *base, const char *id, uint32_t state, uint32_t attempt,
          int64_t due_ms)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_SET_DUE);
    op->id = s_copy_text(self, id);
    op->n[0] = state;
    op->n[1] = attempt;
    op->n[2] = due_ms;
    op->nn = 3;
    return TQ_OK;
}

static int
s_set_retries(tq_store_t *base, const char *id, uint32_t retries,
              uint32_t failures)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_SET_RETRIES);
    op->id = s_copy_text(self, id);
    op->n[0] = retries;
    op->n[1] = failures;
    op->nn = 2;
    return TQ_OK;
}

static int
s_finish(tq_store_t *base, const tq_store_task_t *t)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_FINISH);
    op->id = s_copy_text(self, t->id);
    op->error = s_copy_text(self, t->error);
    op->blob = s_copy(self, t->result, t->result_size);
    op->n[0] = t->state;
    op->n[1] = t->attempt;
    op->n[2] = t->code;
    op->n[3] = t->expires_ms;
    op->n[4] = tq_crc32c(0, t->result, t->result_size);
    op->n[5] = t->due_ms;
    op->nn = 6;
    return TQ_OK;
}

static int
s_remove(tq_store_t *base, const char *id)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_REMOVE);
    op->id = s_copy_text(self, id);
    return TQ_OK;
}

/* Part of the batch: how many went is known at commit only, so 0. */
static int
s_purge(tq_store_t *base, int64_t now_ms, int limit)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_PURGE);
    op->n[0] = now_ms;
    op->n[1] = limit;
    op->nn = 2;
    return 0;
}

static int
s_item_add(tq_store_t *base, const char *queue, uint64_t seq, uint32_t maxsize,
           const void *data, size_t size)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_ITEM_ADD);
    op->id = s_copy_text(self, queue);
    op->blob = s_copy(self, data ? data : "", size);
    op->n[0] = (int64_t)seq;
    op->n[1] = maxsize;
    op->n[2] = tq_crc32c(0, data, size);
    op->nn = 3;
    return TQ_OK;
}

static int
s_item_remove(tq_store_t *base, const char *queue, uint64_t seq)
{
    s_pg_t *self = (s_pg_t *)base;
    s_op_t *op = s_op(self, S_ITEM_REMOVE);
    op->id = s_copy_text(self, queue);
    op->n[0] = (int64_t)seq;
    op->nn = 1;
    return TQ_OK;
}

static bool
s_dirty(const tq_store_t *base)
{
    return ((const s_pg_t *)base)->op_count > 0;
}

/* ---- building statements ---- */

/* One prepared statement per kind of write, each taking one array per
   column (unnest), so a run of any length is one execution of a statement
   planned once. */
static const char *const s_prepared[] = {
    [S_ADD] = "INSERT INTO tq_tasks (id, task, queue, owner, priority,"
              " time_limit_ms, attempt, state, seq, retries, backoff_ms,"
              " failures, due_ms, args_crc, args) SELECT * FROM"
              " unnest($1::text[], $2::text[], $3::text[], $4::text[],"
              " $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::int8[],"
              " $10::int8[], $11::int8[], $12::int8[], $13::int8[],"
              " $14::int8[], $15::bytea[]) ON CONFLICT (id) DO NOTHING",
    [S_SET_DUE] = "UPDATE tq_tasks t SET state = v.state, attempt ="
                  " v.attempt, due_ms = v.due_ms FROM unnest($1::text[],"
                  " $2::int8[], $3::int8[], $4::int8[]) AS v(id, state,"
                  " attempt, due_ms) WHERE t.id = v.id",
    [S_SET_RETRIES] = "UPDATE tq_tasks t SET retries = v.retries, failures"
                      " = v.failures FROM unnest($1::text[], $2::int8[],"
                      " $3::int8[]) AS v(id, retries, failures)"
                      " WHERE t.id = v.id",
    [S_FINISH] = "UPDATE tq_tasks t SET state = v.state, attempt ="
                 " v.attempt, code = v.code, expires_ms = v.expires_ms,"
                 " result_crc = v.result_crc, due_ms = v.due_ms, error ="
                 " v.error, result = v.result FROM unnest($1::text[],"
                 " $2::int8[], $3::int8[], $4::int8[], $5::int8[],"
                 " $6::int8[], $7::int8[], $8::text[], $9::bytea[]) AS v(id,"
                 " state, attempt, code, expires_ms, result_crc, due_ms,"
                 " error, result) WHERE t.id = v.id",
    [S_REMOVE] = "DELETE FROM tq_tasks WHERE id = ANY($1::text[])",
    [S_PURGE] = "DELETE FROM tq_tasks WHERE id IN (SELECT id FROM tq_tasks"
                " WHERE expires_ms > 0 AND expires_ms < ($1::int8[])[1]"
                " LIMIT ($2::int8[])[1])",
    [S_ITEM_ADD] = "INSERT INTO tq_items (queue, seq, maxsize, crc, data)"
                   " SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[],"
                   " $4::int8[], $5::bytea[]) ON CONFLICT (queue, seq) DO"
                   " UPDATE SET maxsize = excluded.maxsize, data ="
                   " excluded.data, crc = excluded.crc",
    [S_ITEM_REMOVE] = "DELETE FROM tq_items i USING unnest($1::text[],"
                      " $2::int8[]) AS v(queue, seq)"
                      " WHERE i.queue = v.queue AND i.seq = v.seq",
};
#define S_KINDS (S_ITEM_REMOVE + 1)

/* The element type of each column of each kind's statement. */
static const Oid s_columns[S_KINDS][S_COLUMNS_MAX + 1] = {
    [S_ADD] = {S_OID_TEXT, S_OID_TEXT, S_OID_TEXT, S_OID_TEXT, S_OID_INT8,
               S_OID_INT8, S_OID_INT8, S_OID_INT8, S_OID_INT8, S_OID_INT8,
               S_OID_INT8, S_OID_INT8, S_OID_INT8, S_OID_INT8, S_OID_BYTEA},
    [S_SET_DUE] = {S_OID_TEXT, S_OID_INT8, S_OID_INT8, S_OID_INT8},
    [S_SET_RETRIES] = {S_OID_TEXT, S_OID_INT8, S_OID_INT8},
    [S_FINISH] = {S_OID_TEXT, S_OID_INT8, S_OID_INT8, S_OID_INT8, S_OID_INT8,
                  S_OID_INT8, S_OID_INT8, S_OID_TEXT, S_OID_BYTEA},
    [S_REMOVE] = {S_OID_TEXT},
    [S_PURGE] = {S_OID_INT8, S_OID_INT8},
    [S_ITEM_ADD] = {S_OID_TEXT, S_OID_INT8, S_OID_INT8, S_OID_INT8,
                    S_OID_BYTEA},
    [S_ITEM_REMOVE] = {S_OID_TEXT, S_OID_INT8},
};

static int
s_column_count(int kind)
{
    int n = 0;
    while (n < S_COLUMNS_MAX && s_columns[kind][n])
        n++;
    return n;
}

static void
s_col_put(s_col_t *col, const void *data, size_t len)
{
    if (col->len + len > col->cap) {
        size_t cap = col->cap ? col->cap : 4096;
        while (cap < col->len + len)
            cap *= 2;
        col->buf = s_realloc(col->buf, cap);
        col->cap = cap;
    }
    memcpy(col->buf + col->len, data, len);
    col->len += len;
}

static void
s_col_u32(s_col_t *col, uint32_t value)
{
    uint32_t be = htonl(value);
    s_col_put(col, &be, 4);
}

/* Starts a one-dimensional array in PostgreSQL's binary format (the
   header is completed by s_col_end). */
static void
s_col_begin(s_col_t *col, Oid type)
{
    col->len = 0;
    col->count = 0;
    col->has_null = false;
    s_col_u32(col, 1); /* dimensions */
    s_col_u32(col, 0); /* has nulls: set at the end */
    s_col_u32(col, type); /* element type */
    s_col_u32(col, 0); /* length: set at the end */
    s_col_u32(col, 1); /* lower bound */
}

static void
s_col_end(s_col_t *col)
{
    uint32_t flag = htonl(col->has_null ? 1 : 0), count = htonl(col->count);
    memcpy(col->buf + 4, &flag, 4);
    memcpy(col->buf + 12, &count, 4);
}

static void
s_col_bytes(s_col_t *col, const void *data, size_t len, bool set)
{
    col->count++;
    if (!set) {
        col->has_null = true;
        s_col_u32(col, UINT32_MAX); /* -1: NULL */
        return;
    }
    s_col_u32(col, (uint32_t)len);
    s_col_put(col, data, len);
}

static void
s_col_int(s_col_t *col, int64_t value)
{
    uint64_t v = (uint64_t)value;
    s_col_u32(col, 8);
    s_col_u32(col, (uint32_t)(v >> 32));
    s_col_u32(col, (uint32_t)v);
    col->count++;
}

static void
s_col_ref(s_pg_t *self, s_col_t *col, s_ref_t ref)
{
    s_col_bytes(col, ref.set ? self->arena + ref.off : NULL, ref.len, ref.set);
}

/* Fills the columns with ops[first..last) (all of one kind). */
static void
s_build(s_pg_t *self, size_t first, size_t last)
{
    int kind = self->ops[first].kind;
    int columns = s_column_count(kind);
    for (int c = 0; c < columns; c++)
        s_col_begin(&self->cols[c], s_columns[kind][c]);
    for (size_t i = first; i < last; i++) {
        s_op_t *op = &self->ops[i];
        int c = 0;
        if (kind != S_PURGE)
            s_col_ref(self, &self->cols[c++], op->id);
        if (kind == S_ADD) {
            s_col_ref(self, &self->cols[c++], op->task);
            s_col_ref(self, &self->cols[c++], op->queue);
            s_col_ref(self, &self->cols[c++], op->owner);
        }
        for (int k = 0; k < op->nn; k++)
            s_col_int(&self->cols[c++], op->n[k]);
        if (kind == S_FINISH)
            s_col_ref(self, &self->cols[c++], op->error);
        if (kind == S_ADD || kind == S_FINISH || kind == S_ITEM_ADD)
            s_col_ref(self, &self->cols[c++], op->blob);
        assert(c == columns);
    }
    for (int c = 0; c < columns; c++) {
        s_col_end(&self->cols[c]);
        self->values[c] = self->cols[c].buf;
        self->lengths[c] = (int)self->cols[c].len;
        self->formats[c] = 1;
    }
}

/* Prepares every kind's statement on the connection. */
static int
s_prepare(s_pg_t *self)
{
    for (int kind = 0; kind < S_KINDS; kind++) {
        char name[16];
        snprintf(name, sizeof name, "tq_%d", kind);
        PGresult *res = PQprepare(self->conn, name, s_prepared[kind], 0, NULL);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            snprintf(self->base.error, sizeof self->base.error,
                     "%s: cannot prepare statements: %s", self->where,
                     s_pq_message(self->conn, res));
        PQclear(res);
        if (!ok)
            return TQ_ESYS;
    }
    PGresult *res =
        PQprepare(self->conn, "tq_fence", "SELECT tq_fence($1::int8)", 0, NULL);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? TQ_OK : TQ_ESYS;
}

/* The end of the run of ops that starts at first: same kind, at most
   S_ROWS_MAX rows, and no key twice (an UPDATE ... FROM with a key twice
   would apply one of them at random; order within a key must hold). */
static size_t
s_run_end(s_pg_t *self, size_t first)
{
    int kind = self->ops[first].kind;
    if (kind == S_PURGE)
        return first + 1;
    zhashx_purge(self->run_keys);
    size_t last = first;
    char key[600];
    while (last < self->op_count && last - first < S_ROWS_MAX &&
           self->ops[last].kind == kind) {
        s_op_t *op = &self->ops[last];
        int len = snprintf(key, sizeof key, "%.*s\x1f%lld",
                           (int)(op->id.len < 512 ? op->id.len : 512),
                           self->arena + op->id.off,
                           (long long)(kind >= S_ITEM_ADD ? op->n[0] : 0));
        (void)len;
        if (zhashx_insert(self->run_keys, key, (void *)1) != 0)
            break;
        last++;
    }
    return last;
}

/* Sends a run's prepared statement, or a plain one (name NULL), into the
   pipeline. */
static bool
s_send(s_pg_t *self, const char *name, const char *sql, int nparams)
{
    if (!name)
        return PQsendQueryParams(self->conn, sql, 0, NULL, NULL, NULL, NULL,
                                 0) == 1;
    return PQsendQueryPrepared(self->conn, name, nparams, self->values,
                               self->lengths, self->formats, 0) == 1;
}

/* Syncs the pipeline and reads the results of its `sent` statements. The
   first failure is kept in *bad (a copy the caller clears). The last
   statement's command tag goes to tag when asked. */
static bool
s_drain(s_pg_t *self, int sent, PGresult **bad, char *tag, size_t tagsize)
{
    if (PQpipelineSync(self->conn) != 1)
        return false;
    for (int i = 0; i < sent; i++) {
        PGresult *res = PQgetResult(self->conn);
        if (!res)
            return false; /* the connection is gone */
        ExecStatusType status = PQresultStatus(res);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK && !*bad) {
            *bad = res;
        } else {
            if (tag && i == sent - 1)
                snprintf(tag, tagsize, "%s", PQcmdStatus(res));
            PQclear(res);
        }
        PQclear(PQgetResult(self->conn)); /* the NULL after each result */
    }
    PGresult *sync = PQgetResult(self->conn);
    bool ok = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    return ok;
}

static void
s_batch_clear(s_pg_t *self)
{
    self->op_count = 0;
    self->arena_used = 0;
}

static int
s_commit(tq_store_t *base)
{
    s_pg_t *self = (s_pg_t *)base;
    if (!self->op_count)
        return TQ_OK;
    PGresult *bad = NULL;
    char tag[64] = "";
    bool sent =
        PQenterPipelineMode(self->conn) == 1 && s_send(self, NULL, "BEGIN", 0);
    int pending = sent ? 1 : 0;
    if (sent && self->epoch) {
        char epoch[8];
        uint64_t v = self->epoch;
        for (int i = 0; i < 8; i++)
            epoch[i] = (char)(v >> (56 - 8 * i));
        self->values[0] = epoch;
        self->lengths[0] = 8;
        self->formats[0] = 1;
        sent = s_send(self, "tq_fence", NULL, 1);
        pending++;
    }
    for (size_t first = 0; sent && first < self->op_count;) {
        size_t last = s_run_end(self, first);
        s_build(self, first, last);
        char name[16];
        snprintf(name, sizeof name, "tq_%d", self->ops[first].kind);
        sent = s_send(self, name, NULL, s_column_count(self->ops[first].kind));
        pending++;
        first = last;
        if (sent && pending >= S_PIPELINE_MAX) {
            sent = s_drain(self, pending, &bad, NULL, 0) && !bad;
            pending = 0;
        }
    }
    sent = sent && s_send(self, NULL, "COMMIT", 0);
    pending++;
    sent = sent && s_drain(self, pending, &bad, tag, sizeof tag);
    s_batch_clear(self);
    /* a COMMIT in a failed transaction answers ROLLBACK */
    if (!sent || bad || strcmp(tag, "COMMIT") != 0) {
        const char *state =
            bad ? PQresultErrorField(bad, PG_DIAG_SQLSTATE) : NULL;
        bool fenced = state && strcmp(state, "TQ001") == 0;
        s_fail(self,
               fenced ? "commit refused, another broker holds the lease"
                      : "cannot commit (nothing of this batch may be "
                        "acknowledged)",
               bad);
        PQclear(bad);
        /* the store is done: the connection is only closed after this */
        return fenced ? TQ_EBUSY : TQ_ESYS;
    }
    PQexitPipelineMode(self->conn);
    return TQ_OK;
}

/* ---- reading ---- */

static int64_t
s_int(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    uint32_t hi, lo;
    memcpy(&hi, PQgetvalue(res, row, col), 4);
    memcpy(&lo, PQgetvalue(res, row, col) + 4, 4);
    return (int64_t)(((uint64_t)ntohl(hi) << 32) | ntohl(lo));
}

static const char *
s_text(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/* Streams the rows of a query (binary results), one callback per row. */
static int
s_each_row(s_pg_t *self, const char *sql,
           void (*row_fn)(const PGresult *res, void *arg), void *arg,
           const char *what)
{
    if (PQsendQueryParams(self->conn, sql, 0, NULL, NULL, NULL, NULL, 1) != 1 ||
        PQsetSingleRowMode(self->conn) != 1)
        return s_fail(self, what, NULL);
    PGresult *res;
    int rc = TQ_OK;
    while ((res = PQgetResult(self->conn))) {
        ExecStatusType status = PQresultStatus(res);
        if (status == PGRES_SINGLE_TUPLE)
            row_fn(res, arg);
        else if (status != PGRES_TUPLES_OK && rc == TQ_OK)
            rc = s_fail(self, what, res);
        PQclear(res);
    }
    return rc;
}

typedef struct {
    tq_store_task_fn *fn;
    void *arg;
} s_load_t;

static void
s_task_row(const PGresult *r, void *arg)
{
    s_load_t *load = arg;
    tq_store_task_t t = {
        .id = s_text(r, 0, 0),
        .task = s_text(r, 0, 1),
        .queue = s_text(r, 0, 2),
        .priority = (uint32_t)s_int(r, 0, 3),
        .time_limit_ms = (uint32_t)s_int(r, 0, 4),
        .attempt = (uint32_t)s_int(r, 0, 5),
        .state = (uint32_t)s_int(r, 0, 6),
        .seq = (uint64_t)s_int(r, 0, 7),
        .args = s_text(r, 0, 8),
        .args_size = (size_t)PQgetlength(r, 0, 8),
        .code = (uint32_t)s_int(r, 0, 9),
        .error = s_text(r, 0, 10),
        .result = s_text(r, 0, 11),
        .result_size = (size_t)PQgetlength(r, 0, 11),
        .expires_ms = s_int(r, 0, 12),
        .retries = (uint32_t)s_int(r, 0, 13),
        .backoff_ms = (uint32_t)s_int(r, 0, 14),
        .failures = (uint32_t)s_int(r, 0, 15),
        .due_ms = s_int(r, 0, 16),
        .owner = s_text(r, 0, 19),
    };
    if (!t.id || !t.task || !t.queue)
        return;
    t.corrupt_reason = tq_store_check_payload(
        TQ_STORE_ARGS, t.args, t.args_size, !PQgetisnull(r, 0, 17),
        (uint32_t)s_int(r, 0, 17));
    if (!t.corrupt_reason)
        t.corrupt_reason = tq_store_check_payload(
            TQ_STORE_RESULT, t.result, t.result_size, !PQgetisnull(r, 0, 18),
            (uint32_t)s_int(r, 0, 18));
    t.corrupt = t.corrupt_reason != NULL;
    load->fn(&t, load->arg);
}

static int
s_load(tq_store_t *base, tq_store_task_fn *fn, void *arg)
{
    s_pg_t *self = (s_pg_t *)base;
    s_load_t load = {fn, arg};
    return s_each_row(self,
                      "SELECT id, task, queue, priority, time_limit_ms,"
                      " attempt, state, seq, args, code, error, result,"
                      " expires_ms, retries, backoff_ms, failures, due_ms,"
                      " args_crc, result_crc, owner FROM tq_tasks"
                      " ORDER BY seq",
                      s_task_row, &load, "cannot read tasks");
}

typedef struct {
    tq_store_item_fn *fn;
    void *arg;
} s_load_items_t;

static void
s_item_row(const PGresult *r, void *arg)
{
    s_load_items_t *load = arg;
    tq_store_item_t item = {
        .queue = s_text(r, 0, 0),
        .seq = (uint64_t)s_int(r, 0, 1),
        .maxsize = (uint32_t)s_int(r, 0, 2),
        .data = s_text(r, 0, 3),
        .size = (size_t)PQgetlength(r, 0, 3),
    };
    if (!item.queue || !item.data)
        return;
    item.corrupt_reason =
        tq_store_check_payload(TQ_STORE_ITEM, item.data, item.size,
                               !PQgetisnull(r, 0, 4), (uint32_t)s_int(r, 0, 4));
    item.corrupt = item.corrupt_reason != NULL;
    load->fn(&item, load->arg);
}

static int
s_load_items(tq_store_t *base, tq_store_item_fn *fn, void *arg)
{
    s_pg_t *self = (s_pg_t *)base;
    s_load_items_t load = {fn, arg};
    return s_each_row(self,
                      "SELECT queue, seq, maxsize, data, crc FROM tq_items"
                      " ORDER BY queue, seq",
                      s_item_row, &load, "cannot read queue items");
}

static uint64_t
s_disk_size(const tq_store_t *base)
{
    const s_pg_t *self = (const s_pg_t *)base;
    PGresult *res =
        PQexec(self->conn, "SELECT pg_database_size(current_database())");
    uint64_t size = 0;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        size = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return size;
}

/* ---- the lease ---- */

static int
s_lease_acquire(tq_store_t *base, const char *owner, uint32_t ttl_ms,
                uint64_t *epoch)
{
    s_pg_t *self = (s_pg_t *)base;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%u", ttl_ms);
    const char *values[] = {owner, ttl};
    /* first without a lock: while another broker holds a live lease, a
       standby's attempt must not queue for the row that every commit of
       the active one locks FOR SHARE */
    PGresult *res = s_exec(self,
                           "SELECT 1 FROM tq_lease WHERE name = 'active'"
                           " AND expires_at > clock_timestamp()"
                           " AND owner <> $1",
                           1, values, PGRES_TUPLES_OK);
    if (!res)
        return TQ_ESYS;
    bool live = PQntuples(res) > 0;
    PQclear(res);
    res = NULL;
    /* the database's clock decides expiry: brokers' clocks may differ */
    if (!live)
        res = s_exec(self,
               "INSERT INTO tq_lease (name, owner, epoch, expires_at)"
               " VALUES ('active', $1, 1, clock_timestamp() + $2::bigint *"
               " interval '1 millisecond')"
               " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
               " epoch = tq_lease.epoch + 1, expires_at = excluded.expires_at"
               " WHERE tq_lease.expires_at <= clock_timestamp()"
               " OR tq_lease.owner = excluded.owner RETURNING epoch",
               2, values, PGRES_TUPLES_OK);
    if (!live && !res)
        return TQ_ESYS;
    if (live || PQntuples(res) != 1) {
        PQclear(res);
        res = s_exec(self,
                     "SELECT owner, ceil(extract(epoch FROM expires_at -"
                     " clock_timestamp()) * 1000)::bigint FROM tq_lease"
                     " WHERE name = 'active'",
                     0, NULL, PGRES_TUPLES_OK);
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: the lease is held by %s for another %s ms", self->where,
                 res && PQntuples(res) ? PQgetvalue(res, 0, 0) : "?",
                 res && PQntuples(res) ? PQgetvalue(res, 0, 1) : "?");
        PQclear(res);
        return TQ_EBUSY;
    }
    self->epoch = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    snprintf(self->owner, sizeof self->owner, "%s", owner);
    PQclear(res);
    if (epoch)
        *epoch = self->epoch;
    return TQ_OK;
}

static int
s_lease_renew(tq_store_t *base, uint32_t ttl_ms)
{
    s_pg_t *self = (s_pg_t *)base;
    if (!self->epoch) {
        snprintf(self->base.error, sizeof self->base.error, "%s: no lease held",
                 self->where);
        return TQ_ESTATE;
    }
    char ttl[32], epoch[32];
    snprintf(ttl, sizeof ttl, "%u", ttl_ms);
    snprintf(epoch, sizeof epoch, "%llu", (unsigned long long)self->epoch);
    const char *values[] = {epoch, ttl};
    PGresult *res =
        s_exec(self,
               "UPDATE tq_lease SET expires_at = clock_timestamp() +"
               " $2::bigint * interval '1 millisecond'"
               " WHERE name = 'active' AND epoch = $1::bigint RETURNING epoch",
               2, values, PGRES_TUPLES_OK);
    if (!res) {
        self->base.failed = true;
        return TQ_ESYS;
    }
    int rows = PQntuples(res);
    PQclear(res);
    if (rows != 1) {
        snprintf(self->base.error, sizeof self->base.error,
                 "%s: lease lost: epoch %llu was taken over by another "
                 "broker",
                 self->where, (unsigned long long)self->epoch);
        self->base.failed = true;
        return TQ_EBUSY;
    }
    return TQ_OK;
}

static const tq_store_ops_t s_ops = {
    .name = "postgresql",
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
};
