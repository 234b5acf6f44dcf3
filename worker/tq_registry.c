/* tq_registry.c - the task registry (name -> function), module loading with
   dlopen, and the accessors task functions use on their tq_task_t. */
#include "tq_worker_host.h"

#include <assert.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name; /* owned copy */
    tq_task_fn *fn; /* the task */
    void *arg; /* user pointer, borrowed */
    uint32_t hash; /* of name, to skip most strcmp calls */
} s_entry_t;

struct tq_registry_t {
    s_entry_t *entries; /* in registration order */
    size_t size; /* entries used */
    size_t capacity; /* entries allocated */
    void **modules; /* dlopen handles, closed on destroy */
    size_t module_count; /* handles held */
    char error[1024]; /* detail of the last failed load */
};

/* Out of memory is fatal in a daemon (STYLE.md): one path, no threading. */
static void *
s_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size);
    if (!p) {
        fprintf(stderr, "tq-worker: out of memory\n");
        abort();
    }
    return p;
}

static uint32_t
s_hash(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 16777619u;
    return h;
}

/* Registry names are TQP names without '@' and '/', which stay free for
   routing syntax. */
static bool
s_valid_name(const char *name)
{
    if (!name)
        return false;
    size_t len = strlen(name);
    if (!tq_proto_valid_name(name, len))
        return false;
    return !strpbrk(name, "@/");
}

tq_registry_t *
tq_registry_new(void)
{
    tq_registry_t *self = calloc(1, sizeof *self);
    return self;
}

void
tq_registry_destroy(tq_registry_t **self_p)
{
    assert(self_p);
    tq_registry_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->size; i++)
        free(self->entries[i].name);
    free(self->entries);
    /* the entries pointed into the modules, so close them last */
    for (size_t i = self->module_count; i > 0; i--)
        dlclose(self->modules[i - 1]);
    free(self->modules);
    free(self);
    *self_p = NULL;
}

int
tq_registry_add(tq_registry_t *self, const char *name, tq_task_fn *fn,
                void *arg)
{
    assert(self);
    if (!s_valid_name(name) || !fn)
        return TQ_EINVAL;
    if (tq_registry_lookup(self, name, NULL))
        return TQ_EBUSY;
    if (self->size == self->capacity) {
        self->capacity = self->capacity ? self->capacity * 2 : 16;
        self->entries =
            s_realloc(self->entries, self->capacity * sizeof *self->entries);
    }
    s_entry_t *e = &self->entries[self->size++];
    e->name = strdup(name);
    if (!e->name) {
        fprintf(stderr, "tq-worker: out of memory\n");
        abort();
    }
    e->fn = fn;
    e->arg = arg;
    e->hash = s_hash(name);
    return TQ_OK;
}

int
tq_registry_load(tq_registry_t *self, const char *path)
{
    assert(self);
    self->error[0] = '\0';
    if (!path || !*path) {
        snprintf(self->error, sizeof self->error, "empty module path");
        return TQ_EINVAL;
    }
    /* RTLD_NOW: a missing symbol shows here, not in the middle of a task */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(self->error, sizeof self->error, "cannot load %s: %s", path,
                 dlerror());
        return TQ_EINVAL;
    }
    dlerror();
    void *sym = dlsym(handle, "tq_module_init");
    if (!sym) {
        const char *why = dlerror();
        snprintf(self->error, sizeof self->error,
                 "cannot load %s: no tq_module_init: %s", path,
                 why ? why : "symbol is NULL");
        dlclose(handle);
        return TQ_EINVAL;
    }
    tq_module_init_fn *init;
    *(void **)&init = sym; /* POSIX allows this object-to-function cast */
    size_t before = self->size;
    int rc = init(self);
    if (rc != 0) {
        /* forget what the module registered before refusing: those
           functions disappear with dlclose */
        for (size_t i = before; i < self->size; i++)
            free(self->entries[i].name);
        self->size = before;
        snprintf(self->error, sizeof self->error,
                 "cannot load %s: tq_module_init returned %d (%s)", path, rc,
                 tq_strerror(rc));
        dlclose(handle);
        return rc > 0 && rc < TQ_ERROR_COUNT_ ? rc : TQ_EINVAL;
    }
    self->modules = s_realloc(self->modules,
                              (self->module_count + 1) * sizeof *self->modules);
    self->modules[self->module_count++] = handle;
    return TQ_OK;
}

const char *
tq_registry_error(const tq_registry_t *self)
{
    assert(self);
    return self->error;
}

size_t
tq_registry_size(const tq_registry_t *self)
{
    assert(self);
    return self->size;
}

const char *
tq_registry_name(const tq_registry_t *self, size_t index)
{
    assert(self);
    return index < self->size ? self->entries[index].name : NULL;
}

/* The index of name's entry, or self->size when it has none. */
static size_t
s_find(const tq_registry_t *self, const char *name)
{
    uint32_t h = s_hash(name);
    size_t i = 0;
    for (; i < self->size; i++) {
        const s_entry_t *e = &self->entries[i];
        if (e->hash == h && strcmp(e->name, name) == 0)
            break;
    }
    return i;
}

tq_task_fn *
tq_registry_lookup(const tq_registry_t *self, const char *name, void **arg_p)
{
    assert(self);
    size_t i = name ? s_find(self, name) : self->size;
    if (i == self->size)
        return NULL;
    if (arg_p)
        *arg_p = self->entries[i].arg;
    return self->entries[i].fn;
}

tq_task_fn *
tq_registry_lookup_memo(const tq_registry_t *self, tq_registry_memo_t *memo,
                        const char *name, void **arg_p)
{
    assert(memo);
    if (name && memo->fn && strcmp(memo->name, name) == 0) {
        if (arg_p)
            *arg_p = memo->arg;
        return memo->fn;
    }
    size_t i = name ? s_find(self, name) : self->size;
    if (i == self->size || strlen(name) >= sizeof memo->name) {
        void *arg = NULL;
        tq_task_fn *fn = tq_registry_lookup(self, name, &arg);
        if (arg_p)
            *arg_p = arg;
        return fn;
    }
    const s_entry_t *e = &self->entries[i];
    strcpy(memo->name, name);
    memo->fn = e->fn;
    memo->arg = e->arg;
    memo->index = i;
    if (arg_p)
        *arg_p = e->arg;
    return e->fn;
}

/* ---- the running task ------------------------------------------------- */

int
tq_task_fail(tq_task_t *task, const char *format, ...)
{
    assert(task);
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(task->error, sizeof task->error, format, ap);
    va_end(ap);
    if (n < 0)
        snprintf(task->error, sizeof task->error, "task failed");
    else if ((size_t)n >= sizeof task->error) {
        /* truncated: do not leave half a UTF-8 sequence at the end */
        const unsigned char *e = (const unsigned char *)task->error;
        size_t len = sizeof task->error - 1;
        size_t start = len;
        while (start > 0 && (e[start - 1] & 0xC0) == 0x80)
            start--;
        if (start > 0 && (e[start - 1] & 0xC0) == 0xC0) {
            unsigned char lead = e[start - 1];
            size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
            if (len - (start - 1) < need)
                len = start - 1;
        }
        task->error[len] = '\0';
    }
    task->failed = true;
    return TQ_ETASK;
}

const char *
tq_task_id(const tq_task_t *task)
{
    assert(task);
    return task->id;
}

uint32_t
tq_task_attempt(const tq_task_t *task)
{
    assert(task);
    return task->attempt;
}

bool
tq_task_soft_limit(const tq_task_t *task)
{
    assert(task);
    return task->soft_limit != 0;
}

void *
tq_task_arg(const tq_task_t *task)
{
    assert(task);
    return task->arg;
}

/* ---- helpers for task authors ---------------------------------------- */

tq_task_t *tq_task_running;
const char *tq_task_running_name;
char tq_worker_running_name[64];

const char *
tq_task_name(void)
{
    return tq_task_running_name ? tq_task_running_name : "";
}

const char *
tq_worker_name(void)
{
    static char name[64];
    if (tq_worker_running_name[0])
        return tq_worker_running_name;
    if (!tq_task_running)
        return "MainProcess";
    snprintf(name, sizeof name, "Worker-%ld", (long)getpid());
    return name;
}

static const char *
s_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "a bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "an int";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "a double";
    case MSGPACK_OBJECT_STR:
        return "a string";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_ARRAY:
        return "an array";
    case MSGPACK_OBJECT_MAP:
        return "a map";
    default:
        return "an extension";
    }
}

/* Records "task T: argument I ..." in the running task (when there is one)
   and returns TQ_ETASK, so the task can return the code as it is. */
static int
s_arg_error(uint32_t index, const char *want, const msgpack_object *got,
            const char *detail)
{
    char text[256];
    if (got)
        snprintf(text, sizeof text, "task %s: argument %u must be %s, not %s",
                 tq_task_name(), index, want, s_type_name(got));
    else
        snprintf(text, sizeof text, "task %s: argument %u (%s) %s",
                 tq_task_name(), index, want, detail);
    if (tq_task_running)
        return tq_task_fail(tq_task_running, "%s", text);
    return TQ_ETASK;
}

/* The index-th element of args, or NULL after recording the error. */
static const msgpack_object *
s_arg(const msgpack_object *args, uint32_t index, const char *want)
{
    if (!args || args->type != MSGPACK_OBJECT_ARRAY ||
        index >= args->via.array.size) {
        char detail[64];
        snprintf(detail, sizeof detail, "is missing: the task got %u",
                 args && args->type == MSGPACK_OBJECT_ARRAY
                     ? args->via.array.size
                     : 0);
        s_arg_error(index, want, NULL, detail);
        return NULL;
    }
    return &args->via.array.ptr[index];
}

int
tq_arg_int(const msgpack_object *args, uint32_t index, int64_t *value)
{
    const msgpack_object *o = s_arg(args, index, "an int");
    if (!o)
        return TQ_ETASK;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *value = o->via.i64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
             o->via.u64 <= INT64_MAX)
        *value = (int64_t)o->via.u64;
    else
        return s_arg_error(index, "an int", o, NULL);
    return TQ_OK;
}

int
tq_arg_double(const msgpack_object *args, uint32_t index, double *value)
{
    const msgpack_object *o = s_arg(args, index, "a number");
    if (!o)
        return TQ_ETASK;
    if (o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32)
        *value = o->via.f64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        *value = (double)o->via.u64;
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *value = (double)o->via.i64;
    else
        return s_arg_error(index, "a number", o, NULL);
    return TQ_OK;
}

int
tq_arg_bool(const msgpack_object *args, uint32_t index, bool *value)
{
    const msgpack_object *o = s_arg(args, index, "a bool");
    if (!o)
        return TQ_ETASK;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return s_arg_error(index, "a bool", o, NULL);
    *value = o->via.boolean;
    return TQ_OK;
}

int
tq_arg_str(const msgpack_object *args, uint32_t index, char *buf, size_t size)
{
    const msgpack_object *o = s_arg(args, index, "a string");
    if (!o)
        return TQ_ETASK;
    if (o->type != MSGPACK_OBJECT_STR)
        return s_arg_error(index, "a string", o, NULL);
    if (!buf || o->via.str.size >= size) {
        char detail[96];
        snprintf(detail, sizeof detail,
                 "is %u bytes, longer than the task's buffer of %zu",
                 o->via.str.size, size);
        return s_arg_error(index, "a string", NULL, detail);
    }
    memcpy(buf, o->via.str.ptr, o->via.str.size);
    buf[o->via.str.size] = '\0';
    return TQ_OK;
}
