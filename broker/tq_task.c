/* tq_task.c - the task table and the task state machine: names, queues
   and lanes, the one transition function with its table of legal moves,
   final outcomes, expiry, dead letters and cancellation. */
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tq_broker_core.h"
#include "tq_log.h"

/* ---- task lists ---- */

/* Links task into list after `after` (NULL: at the front). */
static void
s_list_insert(task_list_t *list, task_t *after, task_t *task)
{
    task->prev = after;
    task->next = after ? after->next : list->head;
    if (task->next)
        task->next->prev = task;
    else
        list->tail = task;
    if (after)
        after->next = task;
    else
        list->head = task;
}

/* tqb_list_push within this file (as s_list_remove) */
static inline void
s_list_push(task_list_t *list, task_t *task, bool front)
{
    s_list_insert(list, front ? NULL : list->tail, task);
}

void
tqb_list_push(task_list_t *list, task_t *task, bool front)
{
    s_list_push(list, task, front);
}

/* tqb_list_remove within this file, where every move of a task asks it
   (inlined: the extern one is called even from here) */
static inline void
s_list_remove(task_list_t *list, task_t *task)
{
    if (task->prev)
        task->prev->next = task->next;
    else
        list->head = task->next;
    if (task->next)
        task->next->prev = task->prev;
    else
        list->tail = task->prev;
    task->prev = task->next = NULL;
}

void
tqb_list_remove(task_list_t *list, task_t *task)
{
    s_list_remove(list, task);
}

/* ---- names, queues, lanes ---- */

const char *
tqb_intern(tq_broker_t *self, tq_str_t s)
{
    /* interned names live as long as the broker: the few used last are
       compared before the table is hashed into */
    uint32_t len = s.ptr ? s.len : 0;
    if (len > TQ_PROTO_MAX_NAME)
        len = TQ_PROTO_MAX_NAME; /* as tq_str_copy cuts it */
    for (int i = 0; s.ptr && i < TQB_INTERN_MEMO; i++)
        if (self->intern_memo[i].name && self->intern_memo[i].len == len &&
            memcmp(self->intern_memo[i].name, s.ptr, len) == 0)
            return self->intern_memo[i].name;
    char name[TQ_PROTO_MAX_NAME + 1];
    tq_str_copy(name, sizeof name, s);
    char *found = zhashx_lookup(self->names, name);
    if (!found) {
        found = tqb_strdup(name);
        zhashx_insert(self->names, found, found);
    }
    if (strlen(found) == len) { /* not when the text held a NUL */
        uint32_t at = self->intern_next++ % TQB_INTERN_MEMO;
        self->intern_memo[at].name = found;
        self->intern_memo[at].len = len;
    }
    return found;
}

queue_t *
tqb_queue(tq_broker_t *self, tq_str_t name)
{
    const char *interned = tqb_intern(self, name);
    if (self->queue_memo && self->queue_memo->name == interned)
        return self->queue_memo;
    queue_t *queue = zhashx_lookup(self->queue_index, interned);
    if (!queue) {
        queue = tqb_alloc(sizeof *queue);
        queue->name = interned;
        queue->next = self->queues;
        self->queues = queue;
        zhashx_insert(self->queue_index, interned, queue);
    }
    self->queue_memo = queue; /* queues live as long as the broker */
    return queue;
}

lane_t *
tqb_lane(queue_t *queue, const char *task)
{
    for (lane_t *lane = queue->lanes; lane; lane = lane->next)
        if (lane->task == task)
            return lane;
    lane_t *lane = tqb_alloc(sizeof *lane);
    lane->queue = queue;
    lane->task = task;
    lane->task_len = (uint32_t)strlen(task);
    lane->next = queue->lanes;
    queue->lanes = lane;
    return lane;
}

lane_t *
tqb_lane_of(tq_broker_t *self, tq_str_t queue, tq_str_t task)
{
    lane_t *lane = self->lane_memo.lane;
    if (lane && queue.ptr && task.ptr &&
        self->lane_memo.queue_len == queue.len &&
        self->lane_memo.task_len == task.len &&
        memcmp(lane->queue->name, queue.ptr, queue.len) == 0 &&
        memcmp(lane->task, task.ptr, task.len) == 0)
        return lane;
    lane = tqb_lane(tqb_queue(self, queue), tqb_intern(self, task));
    /* remembered only when the interned names are the names given (not
       when one was cut or held a NUL) */
    if (queue.ptr && task.ptr && strlen(lane->queue->name) == queue.len &&
        strlen(lane->task) == task.len) {
        self->lane_memo.lane = lane;
        self->lane_memo.queue_len = queue.len;
        self->lane_memo.task_len = task.len;
    }
    return lane;
}

/* ---- the table ---- */

/* Payloads up to this size are copied into the task's own allocation (a
   received message of 100 bytes holds a share of an 8 KiB receive
   buffer); larger ones are kept as the message they came in. */
#define S_PAYLOAD_COPY 512
/* With a store that can read them back, arguments beyond this many bytes
   held leave memory once committed (the first tasks due stay). */
#define S_RESIDENT_MAX (1u << 20)
/* The list of tasks to page out goes back to the system once empty when
   it held more than this many (a burst's peak). */
#define S_PAGE_OUT_KEEP 4096u
/* Freed arguments are given back to the system (malloc_trim) every this
   many bytes paged out, and once nothing is left to page out (after at
   least S_RESIDENT_MAX). */
#define S_TRIM_BYTES (16u << 20)
/* The id table's buckets at start (4 bytes each, 64 KiB): 16Ki tasks
   before it first grows (each growth walks every task) */
#define S_ID_BUCKETS_MIN 16384
/* Up to this many buckets the table keeps a bucket a task at most, then
   two (memory: 4 bytes a bucket) */
#define S_ID_BUCKETS_DENSE (1u << 18)

/* ---- task allocations: slabs ----

   Task records come from slabs, one set per size in steps of 8 bytes:
   malloc would add a header of 8 bytes and round each record up to 16
   (a waiting task's record is one of a million alike). A slab is a page
   of S_SLAB_PAGE bytes aligned on its size, so a record finds its page
   from its address alone; an empty page goes back to the system unless
   it is its size's last one.

   A record is also named by a 32-bit handle, its page's number and its
   offset in 8-byte steps (the id table's chains): 2^19 pages of 64 KiB,
   32 GiB of records at most; 0 names none (a page starts with its
   header). */
/* what a waiting task costs before its id: keep it so */
_Static_assert(offsetof(task_t, rec.id) == 112, "task record grew");
/* what the record's bit fields must hold */
_Static_assert(TQ_PROTO_MAX_RETRIES < (1 << 10), "retries, failures");
_Static_assert(TQ_ERROR_COUNT_ <= (1 << 8), "code");
_Static_assert(TQB_PRIORITIES <= (1 << 4), "priority");

#define S_SLAB_PAGE (64u << 10)
#define S_SLAB_STEP 8u
#define S_TASK_MAX                                                             \
    (offsetof(task_t, rec.id) + TQ_PROTO_MAX_ID + 1 + S_PAYLOAD_COPY)
#define S_SLAB_SIZES ((S_TASK_MAX + S_SLAB_STEP - 1) / S_SLAB_STEP + 1)

typedef struct s_slab_s s_slab_t;

/* The pages of one size that have free slots. */
typedef struct {
    s_slab_t *head;
} s_slab_size_t;

struct s_slab_s {
    s_slab_t *prev, *next; /* its size's pages with free slots */
    s_slab_size_t *size_of; /* its size */
    struct tqb_slabs_s *slabs; /* the broker's */
    uint32_t no; /* its number in slabs->pages */
    void *free; /* freed slots, linked through their first word */
    uint32_t slot; /* bytes */
    uint32_t used; /* slots given out */
    uint32_t bump; /* offset of the first slot never given out */
    bool listed; /* in size_of's list */
};

#define S_SLAB_FIRST ((sizeof(s_slab_t) + 15u) & ~15u)

#define S_HANDLE_STEP_BITS 13 /* 64 KiB in 8-byte steps */
#define S_PAGES_MAX (1u << (32 - S_HANDLE_STEP_BITS))

struct tqb_slabs_s {
    s_slab_size_t sizes[S_SLAB_SIZES];
    s_slab_t **pages; /* by number; NULL: a number free again */
    uint32_t *free_nos; /* the numbers free again */
    uint32_t page_count, free_count, page_cap;
};

/* Gives the page a number. */
static void
s_slab_number(struct tqb_slabs_s *slabs, s_slab_t *slab)
{
    if (slabs->free_count) {
        slab->no = slabs->free_nos[--slabs->free_count];
    } else {
        if (slabs->page_count == S_PAGES_MAX)
            abort(); /* 32 GiB of task records: out of memory */
        if (slabs->page_count == slabs->page_cap) {
            slabs->page_cap = slabs->page_cap ? 2 * slabs->page_cap : 64;
            slabs->pages =
                realloc(slabs->pages, slabs->page_cap * sizeof *slabs->pages);
            slabs->free_nos = realloc(
                slabs->free_nos, slabs->page_cap * sizeof *slabs->free_nos);
            if (!slabs->pages || !slabs->free_nos)
                abort(); /* out of memory is fatal */
        }
        slab->no = slabs->page_count++;
    }
    slabs->pages[slab->no] = slab;
}

static void
s_slab_unnumber(s_slab_t *slab)
{
    slab->slabs->pages[slab->no] = NULL;
    slab->slabs->free_nos[slab->slabs->free_count++] = slab->no;
}

static uint32_t
s_handle(const task_t *task)
{
    if (!task)
        return 0;
    uintptr_t at = (uintptr_t)task;
    const s_slab_t *slab =
        (const s_slab_t *)(at & ~(uintptr_t)(S_SLAB_PAGE - 1));
    return slab->no << S_HANDLE_STEP_BITS |
        (uint32_t)((at & (S_SLAB_PAGE - 1)) / S_SLAB_STEP);
}

static task_t *
s_task_at(const tq_broker_t *self, uint32_t handle)
{
    if (!handle)
        return NULL;
    uint8_t *page = (uint8_t *)self->slabs->pages[handle >> S_HANDLE_STEP_BITS];
    return (task_t *)(page +
                      (handle & ((1u << S_HANDLE_STEP_BITS) - 1)) *
                          S_SLAB_STEP);
}

static void
s_slab_link(s_slab_t *slab)
{
    slab->prev = NULL;
    slab->next = slab->size_of->head;
    if (slab->next)
        slab->next->prev = slab;
    slab->size_of->head = slab;
    slab->listed = true;
}

static void
s_slab_unlink(s_slab_t *slab)
{
    if (slab->prev)
        slab->prev->next = slab->next;
    else
        slab->size_of->head = slab->next;
    if (slab->next)
        slab->next->prev = slab->prev;
    slab->prev = slab->next = NULL;
    slab->listed = false;
}

/* A new page aligned on its size. */
static s_slab_t *
s_slab_new(struct tqb_slabs_s *slabs, s_slab_size_t *size_of, uint32_t slot)
{
    uint8_t *map = mmap(NULL, 2 * S_SLAB_PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        abort(); /* out of memory is fatal */
    uintptr_t start =
        ((uintptr_t)map + S_SLAB_PAGE - 1) & ~(uintptr_t)(S_SLAB_PAGE - 1);
    size_t before = start - (uintptr_t)map;
    if (before)
        munmap(map, before);
    if (S_SLAB_PAGE - before)
        munmap((uint8_t *)start + S_SLAB_PAGE, S_SLAB_PAGE - before);
    s_slab_t *slab = (s_slab_t *)start;
    *slab = (s_slab_t){
        .size_of = size_of, .slabs = slabs, .slot = slot, .bump = S_SLAB_FIRST};
    s_slab_number(slabs, slab);
    s_slab_link(slab);
    return slab;
}

/* size bytes, zeroed. */
static void *
s_slab_alloc(tq_broker_t *self, size_t size)
{
    assert(size <= S_TASK_MAX);
    uint32_t slot = (uint32_t)((size + S_SLAB_STEP - 1) & ~(S_SLAB_STEP - 1));
    s_slab_size_t *size_of = &self->slabs->sizes[slot / S_SLAB_STEP];
    s_slab_t *slab = size_of->head;
    if (!slab)
        slab = s_slab_new(self->slabs, size_of, slot);
    void *p;
    if (slab->free) {
        p = slab->free;
        memcpy(&slab->free, p, sizeof slab->free);
    } else {
        p = (uint8_t *)slab + slab->bump;
        slab->bump += slot;
    }
    slab->used++;
    if (!slab->free && slab->bump + slot > S_SLAB_PAGE)
        s_slab_unlink(slab); /* full */
    memset(p, 0, slot);
    return p;
}

static void
s_slab_free(void *p)
{
    s_slab_t *slab = (s_slab_t *)((uintptr_t)p & ~(uintptr_t)(S_SLAB_PAGE - 1));
    memcpy(p, &slab->free, sizeof slab->free);
    slab->free = p;
    slab->used--;
    if (!slab->listed)
        s_slab_link(slab);
    if (slab->used == 0 && (slab->prev || slab->next)) {
        s_slab_unlink(slab);
        s_slab_unnumber(slab);
        munmap(slab, S_SLAB_PAGE);
    }
}

/* Returns the pages left (each empty once every task is freed). */
static void
s_slabs_destroy(tq_broker_t *self)
{
    if (!self->slabs)
        return;
    for (size_t i = 0; i < S_SLAB_SIZES; i++)
        while (self->slabs->sizes[i].head) {
            s_slab_t *slab = self->slabs->sizes[i].head;
            assert(slab->used == 0);
            s_slab_unlink(slab);
            munmap(slab, S_SLAB_PAGE);
        }
    free(self->slabs->pages);
    free(self->slabs->free_nos);
    free(self->slabs);
    self->slabs = NULL;
}

static uint32_t
s_hash(const void *id, size_t len)
{
    const uint8_t *bytes = id;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ bytes[i]) * 16777619u;
    return h;
}

_Static_assert(TQB_ID_BIN == TQ_PROTO_ID_BIN, "a binary id is the wire's");

/* Client-made ids are 32 lowercase hex digits: such an id is kept as its
   16 bytes (task->id_bin), any other as its text. An id is binary if and
   only if its text has that form, so the two kinds never meet: a lookup
   parses the id it is given and compares like with like. */
static bool
s_id_parse(const char *text, size_t len, uint8_t bin[TQB_ID_BIN])
{
    return tq_proto_id_parse(text, len, bin);
}

/* s_id_parse, remembering the last binary id parsed: a SUBMIT looks its
   id up, then makes its task with it (two parses for one id). */
static bool
s_id_parse_memo(tq_broker_t *self, const char *text, size_t len,
                uint8_t bin[TQB_ID_BIN])
{
    if (len == 2 * TQB_ID_BIN && self->id_memo.valid &&
        memcmp(self->id_memo.text, text, len) == 0) {
        memcpy(bin, self->id_memo.bin, TQB_ID_BIN);
        return true;
    }
    if (!s_id_parse(text, len, bin))
        return false;
    memcpy(self->id_memo.text, text, len);
    memcpy(self->id_memo.bin, bin, TQB_ID_BIN);
    self->id_memo.valid = true;
    return true;
}

/* The 64-bit number in 8 bytes, most significant first (as a hex id
   writes it): written out, which compilers turn into a load and a byte
   swap. */
static uint64_t
s_be64(const uint8_t *b)
{
    return (uint64_t)b[0] << 56 | (uint64_t)b[1] << 48 | (uint64_t)b[2] << 40 |
        (uint64_t)b[3] << 32 | (uint64_t)b[4] << 24 | (uint64_t)b[5] << 16 |
        (uint64_t)b[6] << 8 | b[7];
}

/* A binary id's hash. tq's clients make ids of a random 64-bit prefix
   then a counter (tq_client.c), and their tasks are made and end roughly
   in that order: the hash is the counter's low 16 bits plus a mix of the
   prefix and the counter's other bits, so each run of 65,536 ids of a
   client takes consecutive buckets at an offset of its own. Consecutive
   tasks then look at consecutive buckets (a cache line holds 16) and,
   while the ids in the table span fewer than its buckets, rarely share
   one (only runs that meet may); a new id's lookup (every SUBMIT's)
   finds its bucket empty without touching a task. Ids of another shape
   still spread: random ones by their random low bits, ones alike but for
   part of the prefix or the counter's higher bits by the mix
   (multiplies and shifts that carry every bit of both to the low bits
   the mask keeps). Ids alike but for the counter's low 16 bits share a
   bucket only in a table of fewer than 64Ki buckets: four at most (the
   smallest has 16Ki). */
static uint32_t
s_bin_hash(const void *bin)
{
    uint64_t prefix;
    memcpy(&prefix, bin, 8);
    uint64_t counter = s_be64((const uint8_t *)bin + 8);
    uint64_t h = prefix * 0x9e3779b97f4a7c15ull ^ counter >> 16;
    h ^= h >> 32;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    return (uint32_t)(counter & 0xffff) + (uint32_t)h;
}

static uint32_t
s_task_hash(const task_t *task)
{
    return task->id_bin ? s_bin_hash(task->rec.id)
                        : s_hash(task->rec.id, strlen(task->rec.id));
}

static size_t
s_ptr_hash(const void *key)
{
    return (size_t)((uintptr_t)key >> 3) * 2654435761u;
}

static int
s_ptr_cmp(const void *a, const void *b)
{
    return a < b ? -1 : a > b;
}

const char *
tqb_task_error(const tq_broker_t *self, const task_t *task)
{
    return task->has_error ? zhashx_lookup(self->errors, task) : NULL;
}

void
tqb_task_set_error(tq_broker_t *self, task_t *task, const char *text)
{
    /* copied first: text may be the one it replaces */
    char *copy = text && *text ? tqb_strdup(text) : NULL;
    if (task->has_error) {
        free(zhashx_lookup(self->errors, task));
        zhashx_delete(self->errors, task);
        task->has_error = false;
    }
    if (copy) {
        zhashx_insert(self->errors, task, copy);
        task->has_error = true;
    }
}

const char *
tqb_task_owner(const tq_broker_t *self, const task_t *task)
{
    return task->owner ? self->owners[task->owner - 1] : NULL;
}

void
tqb_task_set_owner(tq_broker_t *self, task_t *task, const char *key)
{
    if (!key) {
        task->owner = 0;
        return;
    }
    uintptr_t index = (uintptr_t)zhashx_lookup(self->owner_index, key);
    if (!index) {
        if (self->owner_count == self->owner_cap) {
            self->owner_cap = self->owner_cap ? 2 * self->owner_cap : 16;
            self->owners =
                realloc(self->owners, self->owner_cap * sizeof *self->owners);
            if (!self->owners)
                abort(); /* out of memory is fatal */
        }
        self->owners[self->owner_count++] = key;
        index = self->owner_count;
        zhashx_insert(self->owner_index, key, (void *)index);
    }
    task->owner = (uint32_t)index;
}

/* Renderings of binary ids: a few per thread, each valid until as many
   more were made (every caller uses its id before it asks for more). */
#define S_ID_RING 8

const char *
tqb_task_id(const task_t *task)
{
    static _Thread_local char ring[S_ID_RING][2 * TQB_ID_BIN + 1];
    static _Thread_local unsigned next;
    if (!task->id_bin)
        return task->rec.id;
    char *text = ring[next++ % S_ID_RING];
    tqb_id_render(text, (const uint8_t *)task->rec.id);
    return text;
}

tq_str_t
tqb_task_id_str(const task_t *task)
{
    if (!task->id_bin)
        return tq_str(task->rec.id);
    return (tq_str_t){tqb_task_id(task), 2 * TQB_ID_BIN};
}

void
tqb_out_id(tq_msg_t *out, const task_t *task, bool binary)
{
    out->id_binary = binary;
    if (binary && task->id_bin) {
        out->id = (tq_str_t){0};
        out->id_bytes = (const uint8_t *)task->rec.id;
        return;
    }
    out->id_bytes = NULL;
    out->id = tq_str(tqb_task_id(task));
}

/* The two hex digits of every byte value, byte b's at 2 * b, for
   tqb_id_render. */
#define S_DIGIT(d) ((d) < 10 ? '0' + (d) : 'a' - 10 + (d))
#define S_HEX2(b) S_DIGIT((b) / 16), S_DIGIT((b) % 16)
#define S_HEX2_4(b) S_HEX2(b), S_HEX2((b) + 1), S_HEX2((b) + 2), S_HEX2((b) + 3)
#define S_HEX2_16(b)                                                           \
    S_HEX2_4(b), S_HEX2_4((b) + 4), S_HEX2_4((b) + 8), S_HEX2_4((b) + 12)
#define S_HEX2_64(b)                                                           \
    S_HEX2_16(b), S_HEX2_16((b) + 16), S_HEX2_16((b) + 32), S_HEX2_16((b) + 48)
static const char s_hex2[512] = {S_HEX2_64(0), S_HEX2_64(64), S_HEX2_64(128),
                                 S_HEX2_64(192)};

void
tqb_id_render(char text[2 * TQB_ID_BIN + 1], const uint8_t bin[TQB_ID_BIN])
{
    /* a byte's two digits at a time, from a table, four bytes a step:
       every RESULT names its task as text */
    for (int i = 0; i < TQB_ID_BIN; i += 4) {
        memcpy(text + 2 * i, s_hex2 + 2 * bin[i], 2);
        memcpy(text + 2 * i + 2, s_hex2 + 2 * bin[i + 1], 2);
        memcpy(text + 2 * i + 4, s_hex2 + 2 * bin[i + 2], 2);
        memcpy(text + 2 * i + 6, s_hex2 + 2 * bin[i + 3], 2);
    }
    text[2 * TQB_ID_BIN] = '\0';
}

/* The clients blocked in GET wait=true on a task, in self->waiters under
   its id (rare: made on demand, so a task has no field for them). */
typedef struct {
    uint32_t count;
    ident_t items[];
} s_waiters_t;

static void s_client_clear(tq_broker_t *self, task_t *task);

static void
s_waiters_free(tq_broker_t *self, task_t *task)
{
    if (!task->waited)
        return;
    s_waiters_t *w = zhashx_lookup(self->waiters, tqb_task_id(task));
    zhashx_delete(self->waiters, tqb_task_id(task));
    for (uint32_t i = 0; w && i < w->count; i++)
        tqb_ident_clear(&w->items[i]);
    free(w);
    task->waited = false;
}

void
tqb_tasks_init(tq_broker_t *self)
{
    self->id_table = tqb_alloc(S_ID_BUCKETS_MIN * sizeof *self->id_table);
    self->id_mask = S_ID_BUCKETS_MIN - 1;
    self->task_count = 0;
    self->slabs = tqb_alloc(sizeof *self->slabs);
    self->errors = zhashx_new();
    zhashx_set_key_hasher(self->errors, s_ptr_hash);
    zhashx_set_key_comparator(self->errors, s_ptr_cmp);
    zhashx_set_key_duplicator(self->errors, NULL);
    zhashx_set_key_destructor(self->errors, NULL);
    zhashx_set_destructor(self->errors, NULL); /* tqb_task_set_error */
    self->owner_index = zhashx_new();
    zhashx_set_key_duplicator(self->owner_index, NULL); /* interned */
    zhashx_set_key_destructor(self->owner_index, NULL);
    self->waiters = zhashx_new();
    /* keys: the task ids as text, copied (a binary id has no text) */
    zhashx_set_destructor(self->waiters, NULL); /* s_waiters_free */
    self->submitters = zhashx_new();
    zhashx_set_destructor(self->submitters, NULL); /* s_client_clear */
}

void
tqb_tasks_free(tq_broker_t *self)
{
    if (!self->id_table)
        return;
    /* what the tables beside the tasks hold for them, when they hold
       anything (GET waiters, submitters ZeroMQ did not name) */
    bool beside = zhashx_size(self->waiters) || zhashx_size(self->submitters);
    for (uint32_t b = 0; beside && b <= self->id_mask; b++)
        for (task_t *t = s_task_at(self, self->id_table[b]); t;
             t = s_task_at(self, t->id_next)) {
            s_waiters_free(self, t);
            s_client_clear(self, t);
        }
    zhashx_destroy(&self->waiters);
    zhashx_destroy(&self->submitters);
    for (uint32_t b = 0; b <= self->id_mask; b++)
        for (task_t *t = s_task_at(self, self->id_table[b]), *next; t;
             t = next) {
            next = s_task_at(self, t->id_next);
            tqb_task_free(self, t);
        }
    free(self->id_table);
    self->id_table = NULL;
    zhashx_destroy(&self->errors);
    s_slabs_destroy(self);
    zhashx_destroy(&self->owner_index);
    free(self->owners);
    self->owners = NULL;
    self->owner_count = self->owner_cap = 0;
    free(self->page_out);
    self->page_out = NULL;
    self->page_out_count = self->page_out_cap = 0;
}

/* Doubles the buckets when there are more tasks than buckets. */
static void
s_table_grow(tq_broker_t *self)
{
    uint32_t buckets = 2 * (self->id_mask + 1);
    uint32_t *table = tqb_alloc(buckets * sizeof *table);
    for (uint32_t b = 0; b <= self->id_mask; b++)
        for (task_t *t = s_task_at(self, self->id_table[b]), *next; t;
             t = next) {
            next = s_task_at(self, t->id_next);
            uint32_t to = s_task_hash(t) & (buckets - 1);
            t->id_next = table[to];
            table[to] = s_handle(t);
        }
    free(self->id_table);
    self->id_table = table;
    self->id_mask = buckets - 1;
}

uint32_t
tqb_tasks_longest_chain(const tq_broker_t *self)
{
    uint32_t longest = 0;
    for (uint32_t b = 0; b <= self->id_mask; b++) {
        uint32_t n = 0;
        for (task_t *t = s_task_at(self, self->id_table[b]); t;
             t = s_task_at(self, t->id_next))
            n++;
        if (n > longest)
            longest = n;
    }
    return longest;
}

static void
s_table_remove(tq_broker_t *self, task_t *task)
{
    uint32_t handle = s_handle(task);
    uint32_t *at = &self->id_table[s_task_hash(task) & self->id_mask];
    while (*at && *at != handle)
        at = &s_task_at(self, *at)->id_next;
    assert(*at == handle);
    *at = task->id_next;
    task->id_next = 0;
    self->task_count--;
}

static uint8_t *
s_inline(const task_t *task)
{
    return (uint8_t *)task->rec.id +
        (task->id_bin ? TQB_ID_BIN : strlen(task->rec.id) + 1);
}

/* The bytes after the task's id in its slab slot: what its own
   allocation can hold inline. */
static size_t
s_inline_room(const task_t *task)
{
    const s_slab_t *slab =
        (const s_slab_t *)((uintptr_t)task & ~(uintptr_t)(S_SLAB_PAGE - 1));
    return slab->slot - (size_t)(s_inline(task) - (const uint8_t *)task);
}

/* Keeps size bytes at data as the payload: in the task's own allocation
   when they fit there (without a store: a result as large as the
   arguments it replaces, an echo's, costs no malloc), else copied when
   small, else as a message: `value` itself (moved in) when it holds
   them, else a copy. The previous payload is gone already. */
static void
s_payload_keep_bytes(tq_broker_t *self, task_t *task, const void *data,
                     size_t size, zmq_msg_t *value)
{
    task->payload_size = (uint32_t)size;
    if (size == 0) {
        task->payload_at = PAYLOAD_NONE;
    } else if (!self->store && size <= s_inline_room(task)) {
        /* with a store a payload may leave memory: it gets its own */
        memcpy(s_inline(task), data, size);
        task->payload_at = PAYLOAD_INLINE;
    } else if (size <= S_PAYLOAD_COPY) {
        task->payload = tqb_alloc(size);
        memcpy(task->payload, data, size);
        task->payload_at = PAYLOAD_HEAP;
    } else {
        zmq_msg_t *msg = tqb_alloc(sizeof *msg);
        zmq_msg_init(msg);
        if (value)
            zmq_msg_move(msg, value);
        else {
            zmq_msg_init_size(msg, size);
            memcpy(zmq_msg_data(msg), data, size);
        }
        task->payload = msg;
        task->payload_at = PAYLOAD_MSG;
    }
    self->memory += size;
}

/* s_payload_keep_bytes of a message (moved in, may be NULL or empty). */
static void
s_payload_keep(tq_broker_t *self, task_t *task, zmq_msg_t *value)
{
    size_t size = value ? zmq_msg_size(value) : 0;
    s_payload_keep_bytes(self, task, size ? zmq_msg_data(value) : NULL, size,
                         value);
}

/* Lets the payload go from memory (and from the memory count). */
static void
s_payload_drop(tq_broker_t *self, task_t *task)
{
    if (task->payload_at != PAYLOAD_STORED)
        self->memory -= task->payload_size;
    else
        self->paged_out--;
    if (task->payload_at == PAYLOAD_HEAP)
        free(task->payload);
    else if (task->payload_at == PAYLOAD_MSG) {
        zmq_msg_close(task->payload);
        free(task->payload);
    }
    task->payload = NULL;
    task->payload_at = PAYLOAD_NONE;
    task->payload_size = 0;
}

/* A store that can read arguments back takes them out of memory once the
   store has them, beyond what S_RESIDENT_MAX keeps. */
static bool
s_may_page_out(const tq_broker_t *self)
{
    return self->store && tq_store_reads_args(self->store) &&
        self->memory > S_RESIDENT_MAX;
}

/* Lists a task whose payload leaves memory once the open batch (which
   stores it) commits (tqb_task_committed). */
static void
s_page_out_list(tq_broker_t *self, task_t *task)
{
    if (self->page_out_count == self->page_out_cap) {
        self->page_out_cap = self->page_out_cap ? 2 * self->page_out_cap : 256;
        self->page_out = realloc(self->page_out,
                                 self->page_out_cap * sizeof *self->page_out);
        if (!self->page_out)
            abort();
    }
    self->page_out[self->page_out_count++] = task;
    task->page_out = true;
}

/* Takes a task off the page-out list (its payload changed: what the
   batch listed for stores is no longer it). Listed recently, nearly
   always: looked for from the end. */
static void
s_page_out_unlist(tq_broker_t *self, task_t *task)
{
    for (uint32_t i = self->page_out_count; task->page_out && i-- > 0;)
        if (self->page_out[i] == task) {
            self->page_out[i] = NULL;
            task->page_out = false;
        }
}

void
tqb_task_page_out_result(tq_broker_t *self, task_t *task)
{
    if (task->state == TASK_SUCCESS &&
        (task->payload_at == PAYLOAD_HEAP || task->payload_at == PAYLOAD_MSG) &&
        tq_store_reads_results(self->store) && s_may_page_out(self))
        s_page_out_list(self, task);
}

task_t *
tqb_task_new(tq_broker_t *self, const char *id, lane_t *lane,
             zmq_msg_t *payload)
{
    size_t size = payload ? zmq_msg_size(payload) : 0;
    tq_str_t text = {id, (uint32_t)strnlen(id, TQ_PROTO_MAX_ID)};
    return tqb_task_new_bytes(self, text, NULL, lane,
                              size ? zmq_msg_data(payload) : NULL, size,
                              payload);
}

task_t *
tqb_task_new_bytes(tq_broker_t *self, tq_str_t id, const uint8_t *id_bytes,
                   lane_t *lane, const void *data, size_t size,
                   zmq_msg_t *payload)
{
    size_t id_len = id.len < TQ_PROTO_MAX_ID ? id.len : TQ_PROTO_MAX_ID;
    uint8_t bin[TQB_ID_BIN];
    bool id_bin = id_bytes != NULL;
    if (id_bin)
        memcpy(bin, id_bytes, TQB_ID_BIN);
    else
        id_bin = s_id_parse_memo(self, id.ptr, id_len, bin);
    /* inline: without a store, a small payload shares the allocation; with
       one it may leave memory, so it gets its own */
    bool inline_ = size && size <= S_PAYLOAD_COPY && !self->store;
    task_t *task = s_slab_alloc(self,
                                offsetof(task_t, rec.id) +
                                    (id_bin ? TQB_ID_BIN : id_len + 1) +
                                    (inline_ ? size : 0));
    if (id_bin) {
        memcpy(task->rec.id, bin, TQB_ID_BIN);
        task->id_bin = true;
    } else {
        memcpy(task->rec.id, id.ptr, id_len);
        task->rec.id[id_len] = '\0';
    }
    task->state = TASK_NEW;
    task->lane = lane;
    task->submitted_ms = self->now_ms;
    if (inline_) {
        memcpy(s_inline(task), data, size);
        task->payload_at = PAYLOAD_INLINE;
        task->payload_size = (uint32_t)size;
        self->memory += size;
    } else if (size) {
        s_payload_keep_bytes(self, task, data, size, payload);
        if (s_may_page_out(self))
            s_page_out_list(self, task);
    }
    /* at most one task a bucket while the table is small: a lookup of a
       new id (every SUBMIT's) walks its whole chain, a cache miss a
       task; beyond S_ID_BUCKETS_DENSE up to two (a million waiting
       tasks: 2 MiB of buckets, not 4) */
    uint32_t buckets = self->id_mask + 1;
    if (self->task_count >
        (buckets < S_ID_BUCKETS_DENSE ? 1ull : 2ull) * buckets)
        s_table_grow(self);
    uint32_t b = s_task_hash(task) & self->id_mask;
    task->id_next = self->id_table[b];
    self->id_table[b] = s_handle(task);
    self->task_count++;
    return task;
}

task_t *
tqb_task_find_bin(tq_broker_t *self, const uint8_t bin[TQB_ID_BIN])
{
    task_t *t =
        s_task_at(self, self->id_table[s_bin_hash(bin) & self->id_mask]);
    while (t && !(t->id_bin && memcmp(t->rec.id, bin, TQB_ID_BIN) == 0))
        t = s_task_at(self, t->id_next);
    return t;
}

task_t *
tqb_task_find(tq_broker_t *self, tq_str_t id)
{
    if (id.len > TQ_PROTO_MAX_ID)
        return NULL;
    uint8_t bin[TQB_ID_BIN];
    if (s_id_parse_memo(self, id.ptr, id.len, bin))
        return tqb_task_find_bin(self, bin);
    task_t *t =
        s_task_at(self, self->id_table[s_hash(id.ptr, id.len) & self->id_mask]);
    while (t &&
           !(!t->id_bin && strncmp(t->rec.id, id.ptr, id.len) == 0 &&
             t->rec.id[id.len] == '\0'))
        t = s_task_at(self, t->id_next);
    return t;
}

bool
tqb_task_is(const task_t *task, tq_str_t id)
{
    if (!task || id.len > TQ_PROTO_MAX_ID)
        return false;
    uint8_t bin[TQB_ID_BIN];
    if (s_id_parse(id.ptr, id.len, bin))
        return task->id_bin && memcmp(task->rec.id, bin, TQB_ID_BIN) == 0;
    return !task->id_bin && strncmp(task->rec.id, id.ptr, id.len) == 0 &&
        task->rec.id[id.len] == '\0';
}

bool
tqb_task_is_msg(const task_t *task, const tq_msg_t *msg)
{
    const uint8_t *bin = tqb_msg_id_bin(msg);
    if (bin)
        return task && task->id_bin &&
            memcmp(task->rec.id, bin, TQB_ID_BIN) == 0;
    return tqb_task_is(task, msg->id);
}

void
tqb_trim(tq_broker_t *self)
{
    self->trimmed_at = self->paged_out_bytes;
    self->trimmed_ms = self->now_ms;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

void
tqb_task_committed(tq_broker_t *self, uint32_t count)
{
    if (count > self->page_out_count)
        count = self->page_out_count;
    if (count == 0)
        return; /* page_out may be NULL: memmove must not see it */
    for (uint32_t i = 0; i < count; i++) {
        task_t *task = self->page_out[i];
        if (!task)
            continue;
        task->page_out = false;
        /* its arguments, when it still has them, or a delivered result
           (tqb_task_page_out_result: listed again once final) */
        if ((task->payload_at == PAYLOAD_HEAP ||
             task->payload_at == PAYLOAD_MSG) &&
            (task->state == TASK_WAITING || task->state == TASK_SCHEDULED ||
             task->state == TASK_RETRY || task->state == TASK_SUCCESS)) {
            uint32_t size = task->payload_size;
            s_payload_drop(self, task);
            task->payload_at = PAYLOAD_STORED;
            task->payload_size = size;
            self->paged_out++;
            self->paged_out_bytes += size;
        }
    }
    /* the ones listed later wait for the commit of their own batch */
    memmove(self->page_out, self->page_out + count,
            (self->page_out_count - count) * sizeof *self->page_out);
    self->page_out_count -= count;
    if (self->page_out_count == 0 && self->page_out_cap > S_PAGE_OUT_KEEP) {
        /* a burst's list (8 bytes a task) does not keep its peak */
        free(self->page_out);
        self->page_out = NULL;
        self->page_out_cap = 0;
    }
    /* the arguments freed lie between records still in use: malloc keeps
       their pages until asked (a million 100-byte ones, 100 MiB). Asked
       every S_TRIM_BYTES paged out, and at the end of a burst; a queue
       whose few new tasks page out at each commit asks once a window */
    uint64_t freed = self->paged_out_bytes - self->trimmed_at;
    if (freed >= S_TRIM_BYTES)
        tqb_trim(self);
    else if (self->page_out_count == 0 && freed >= S_RESIDENT_MAX) {
        tqb_trim(self);
        /* what the burst's last messages held goes once they are sent */
        self->trims_owed = TQB_TRIMS_AFTER_BURST;
    }
}

/* Reads a stored payload into the message. */
typedef struct {
    zmq_msg_t *msg;
} s_read_t;

static void
s_on_args(const void *data, size_t size, void *arg)
{
    s_read_t *read = arg;
    zmq_msg_close(read->msg);
    zmq_msg_init_size(read->msg, size);
    if (size)
        memcpy(zmq_msg_data(read->msg), data, size);
}

int
tqb_task_payload(tq_broker_t *self, const task_t *task, zmq_msg_t *msg,
                 const char **why)
{
    zmq_msg_init(msg);
    switch (task->payload_at) {
    case PAYLOAD_NONE:
        return 0;
    case PAYLOAD_INLINE:
    case PAYLOAD_HEAP:
        zmq_msg_init_size(msg, task->payload_size);
        memcpy(zmq_msg_data(msg), tqb_task_payload_data(task),
               task->payload_size);
        return 0;
    case PAYLOAD_MSG:
        zmq_msg_copy(msg, task->payload); /* shared, not copied */
        return 0;
    default:
        break;
    }
    s_read_t read = {msg};
    bool result = task->state == TASK_SUCCESS; /* a delivered result */
    int rc = result
        ? tq_store_read_result(self->store, tqb_task_id(task), s_on_args, &read)
        : tq_store_read_args(self->store, tqb_task_id(task), s_on_args, &read);
    if (rc == TQ_OK && zmq_msg_size(msg) == task->payload_size) {
        self->paged_in++;
        return 0;
    }
    zmq_msg_close(msg);
    zmq_msg_init(msg);
    if (rc == TQ_OK || rc == TQ_EUNKNOWN || rc == TQ_ECORRUPT) {
        if (why)
            *why = rc == TQ_ECORRUPT
                ? (result ? "stored task damaged: result checksum mismatch"
                          : "stored task damaged: args checksum mismatch")
                : (result ? "stored task damaged: result missing"
                          : "stored task damaged: args missing");
        return TQ_ECORRUPT;
    }
    if (why)
        *why = result ? "stored task unreadable: cannot read its result"
                      : "stored task unreadable: cannot read its args";
    return rc;
}

bool
tqb_task_payload_bytes(const task_t *task, const void **data, size_t *size)
{
    switch (task->payload_at) {
    case PAYLOAD_NONE:
        *data = NULL;
        *size = 0;
        return true;
    case PAYLOAD_INLINE:
        *data = s_inline(task);
        *size = task->payload_size;
        return true;
    case PAYLOAD_HEAP:
        *data = task->payload;
        *size = task->payload_size;
        return true;
    default:
        return false;
    }
}

const void *
tqb_task_payload_data(const task_t *task)
{
    switch (task->payload_at) {
    case PAYLOAD_INLINE:
        return s_inline(task);
    case PAYLOAD_HEAP:
        return task->payload;
    case PAYLOAD_MSG:
        return zmq_msg_data(task->payload);
    default:
        return NULL;
    }
}

size_t
tqb_task_payload_size(const task_t *task)
{
    return task->payload_size;
}

/* Started: 0 never; else 1 + ms after its submission, or beyond 2^31 ms
   (24 days), the top bit and the seconds. */
#define S_STARTED_SECONDS 0x80000000u

int64_t
tqb_task_started_ms(const task_t *task)
{
    if (!task->started)
        return 0;
    if (task->started & S_STARTED_SECONDS)
        return task->submitted_ms +
            (int64_t)(task->started & ~S_STARTED_SECONDS) * 1000;
    return task->submitted_ms + (int64_t)task->started - 1;
}

void
tqb_task_set_started(task_t *task, int64_t now_ms)
{
    int64_t after =
        now_ms > task->submitted_ms ? now_ms - task->submitted_ms : 0;
    if (after < (int64_t)S_STARTED_SECONDS - 1)
        task->started = (uint32_t)after + 1;
    else if (after / 1000 < (int64_t)S_STARTED_SECONDS)
        task->started = S_STARTED_SECONDS | (uint32_t)(after / 1000);
    else
        task->started = UINT32_MAX;
}

static void
s_client_clear(tq_broker_t *self, task_t *task)
{
    if (task->client_at == CLIENT_OTHER) {
        ident_t *other = zhashx_lookup(self->submitters, tqb_task_id(task));
        zhashx_delete(self->submitters, tqb_task_id(task));
        if (other)
            tqb_ident_clear(other);
        free(other);
    }
    task->client_at = CLIENT_NONE;
}

void
tqb_task_set_client(tq_broker_t *self, task_t *task, const ident_t *from)
{
    s_client_clear(self, task);
    const uint8_t *data = tqb_ident_data(from);
    if (from->size == 5 && data[0] == 0) {
        memcpy(&task->client, data + 1, 4);
        task->client_at = CLIENT_ZMQ;
    } else if (from->size) {
        ident_t *other = tqb_alloc(sizeof *other);
        tqb_ident_set(other, data, from->size);
        zhashx_update(self->submitters, tqb_task_id(task), other);
        task->client_at = CLIENT_OTHER;
    }
}

/* The submitter as an ident_t (borrowing the task's bytes: never clear
   it); size 0: none. */
static ident_t
s_client(tq_broker_t *self, const task_t *task)
{
    ident_t ident = {0};
    if (task->client_at == CLIENT_ZMQ) {
        ident.size = 5;
        ident.bytes[0] = 0;
        memcpy(ident.bytes + 1, &task->client, 4);
    } else if (task->client_at == CLIENT_OTHER) {
        const ident_t *other =
            zhashx_lookup(self->submitters, tqb_task_id(task));
        if (other)
            ident = (ident_t){.size = other->size,
                              .heap = (uint8_t *)tqb_ident_data(other)};
    }
    return ident;
}

ident_t
tqb_task_client(tq_broker_t *self, const task_t *task)
{
    return s_client(self, task);
}

void
tqb_task_free(tq_broker_t *self, task_t *task)
{
    if (task->payload_at == PAYLOAD_STORED)
        self->paged_out--;
    if (task->payload_at == PAYLOAD_HEAP)
        free(task->payload);
    else if (task->payload_at == PAYLOAD_MSG) {
        zmq_msg_close(task->payload);
        free(task->payload);
    }
    tqb_task_set_error(self, task, NULL);
    s_slab_free(task);
}

/* ---- the state machine ---- */

#define B(state) (1u << (state))

/* s_legal[from]: the states a task may move to from `from`. Recovery
   restores a stored task into any state but the held ones (a task that
   ran when the broker died waits again). */
static const uint32_t s_legal[TASK_STATES_] = {
    [TASK_NEW] = B(TASK_WAITING) | B(TASK_SCHEDULED) | B(TASK_RETRY) |
        B(TASK_SUCCESS) | B(TASK_FAILURE) | B(TASK_CANCELLED),
    [TASK_WAITING] = B(TASK_HELD) | B(TASK_CANCELLED),
    [TASK_SCHEDULED] = B(TASK_WAITING) | B(TASK_CANCELLED),
    [TASK_RETRY] = B(TASK_WAITING) | B(TASK_CANCELLED),
    /* HELD -> HELD: the holder announced itself again on a new socket */
    [TASK_HELD] = B(TASK_HELD) | B(TASK_REVOKING) | B(TASK_WAITING) |
        B(TASK_RETRY) | B(TASK_SUCCESS) | B(TASK_FAILURE) | B(TASK_CANCELLED),
    [TASK_REVOKING] = B(TASK_HELD) | B(TASK_WAITING) | B(TASK_RETRY) |
        B(TASK_SUCCESS) | B(TASK_FAILURE) | B(TASK_CANCELLED),
    [TASK_SUCCESS] = 0,
    /* a dead letter runs again when an operator retries it */
    [TASK_FAILURE] = B(TASK_WAITING),
    [TASK_CANCELLED] = 0,
};

static const char *const s_names[TASK_STATES_] = {
    [TASK_NEW] = "NEW",
    [TASK_WAITING] = "WAITING",
    [TASK_SCHEDULED] = "SCHEDULED",
    [TASK_RETRY] = "RETRY",
    [TASK_HELD] = "HELD",
    [TASK_REVOKING] = "REVOKING",
    [TASK_SUCCESS] = "SUCCESS",
    [TASK_FAILURE] = "FAILURE",
    [TASK_CANCELLED] = "CANCELLED",
};

static const int s_wire[TASK_STATES_] = {
    [TASK_NEW] = TQ_STATE_PENDING,         [TASK_WAITING] = TQ_STATE_PENDING,
    [TASK_SCHEDULED] = TQ_STATE_SCHEDULED, [TASK_RETRY] = TQ_STATE_RETRY,
    [TASK_HELD] = TQ_STATE_RUNNING,        [TASK_REVOKING] = TQ_STATE_RUNNING,
    [TASK_SUCCESS] = TQ_STATE_SUCCESS,     [TASK_FAILURE] = TQ_STATE_FAILURE,
    [TASK_CANCELLED] = TQ_STATE_CANCELLED,
};

static inline bool
s_legal_move(task_state_t from, task_state_t to)
{
    return from < TASK_STATES_ && to < TASK_STATES_ &&
        (s_legal[from] & B(to)) != 0;
}

bool
tqb_task_legal(task_state_t from, task_state_t to)
{
    return s_legal_move(from, to);
}

const char *
tqb_task_state_name(task_state_t state)
{
    return state < TASK_STATES_ ? s_names[state] : "?";
}

int
tqb_task_wire_state(const task_t *task)
{
    return s_wire[task->state];
}

bool
tqb_task_is_final(const task_t *task)
{
    return task->state == TASK_SUCCESS || task->state == TASK_FAILURE ||
        task->state == TASK_CANCELLED;
}

static bool
s_held(task_state_t state)
{
    return state == TASK_HELD || state == TASK_REVOKING;
}

/* Final tasks wait for their expiry in expiry order (inserted from the
   back, where they nearly always belong). */
static void
s_expiry_insert(tq_broker_t *self, task_t *task)
{
    task_t *after = self->expiry.tail;
    while (after && after->expires_ms > task->expires_ms)
        after = after->prev;
    s_list_insert(&self->expiry, after, task);
    self->results_kept++;
}

/* A dead letter of TQ_ELOST is kept outside the TTL until retried. */
static bool
s_expires(const task_t *task)
{
    return !(task->state == TASK_FAILURE && task->rec.code == TQ_ELOST);
}

static void
s_dead_add(tq_broker_t *self, task_t *task)
{
    task->dead_next = NULL;
    task->dead_prev = self->dead_tail;
    if (self->dead_tail)
        self->dead_tail->dead_next = task;
    else
        self->dead_head = task;
    self->dead_tail = task;
    self->dead_count++;
}

static void
s_dead_remove(tq_broker_t *self, task_t *task)
{
    if (task->dead_prev)
        task->dead_prev->dead_next = task->dead_next;
    else
        self->dead_head = task->dead_next;
    if (task->dead_next)
        task->dead_next->dead_prev = task->dead_prev;
    else
        self->dead_tail = task->dead_prev;
    task->dead_prev = task->dead_next = NULL;
    self->dead_count--;
}

/* Takes a task out of the container of its state. */
static inline void
s_leave(tq_broker_t *self, task_t *task)
{
    queue_t *queue = task->lane->queue;
    switch (task->state) {
    case TASK_NEW:
        break;
    case TASK_WAITING:
        s_list_remove(&task->lane->fifo[task->rec.priority], task);
        if (!task->lane->fifo[task->rec.priority].head)
            task->lane->busy &= ~(1u << task->rec.priority);
        task->lane->waiting--;
        queue->waiting--;
        break;
    case TASK_SCHEDULED:
    case TASK_RETRY:
        tq_heap_remove(&self->delayed, &task->node);
        queue->delayed--;
        break;
    case TASK_HELD:
    case TASK_REVOKING: {
        peer_t *holder = task->holder;
        s_list_remove(&holder->held_tasks, task);
        holder->held--;
        tqb_peer_held_note(self, holder, holder->held + 1);
        if (task->state == TASK_REVOKING)
            holder->revoking--;
        task->holder = NULL;
        queue->running--;
        break;
    }
    case TASK_FAILURE:
        s_dead_remove(self, task);
        /* it may also wait for its expiry */
        __attribute__((fallthrough));
    case TASK_SUCCESS:
    case TASK_CANCELLED:
        /* by where it is, not by s_expires: an operator's retry clears
           the code of a TQ_ELOST dead letter before it moves */
        if (task->prev || self->expiry.head == task) {
            s_list_remove(&self->expiry, task);
            self->results_kept--;
        }
        tqb_results_leave(self, task);
        break;
    default:
        assert(!"unknown task state");
    }
}

/* Puts a task (in no container) into the container of `to`. */
static void
s_enter(tq_broker_t *self, task_t *task, task_state_t to,
        const task_move_t *how)
{
    queue_t *queue = task->lane->queue;
    task->state = (uint8_t)to;
    switch (to) {
    case TASK_WAITING:
        s_list_push(&task->lane->fifo[task->rec.priority], task, how->front);
        task->lane->busy |= 1u << task->rec.priority;
        task->lane->waiting++;
        queue->waiting++;
        self->dispatch_due = true;
        break;
    case TASK_SCHEDULED:
    case TASK_RETRY:
        task->prev = task->next = NULL;
        task->node = (tq_heap_node_t){0};
        tq_heap_push(&self->delayed, &task->node, how->due_ms);
        queue->delayed++;
        break;
    case TASK_HELD:
    case TASK_REVOKING:
        assert(how->holder);
        s_list_push(&how->holder->held_tasks, task, false);
        how->holder->held++;
        tqb_peer_held_note(self, how->holder, how->holder->held - 1);
        if (to == TASK_REVOKING)
            how->holder->revoking++;
        task->holder = how->holder;
        task->revoke_for = 0;
        queue->running++;
        break;
    case TASK_FAILURE:
    case TASK_SUCCESS:
    case TASK_CANCELLED:
        task->prev = task->next = NULL;
        task->dead_prev = task->dead_next = NULL;
        task->expires_ms = how->expires_ms
            ? how->expires_ms
            : self->now_ms + (int64_t)self->config.result_ttl_s * 1000;
        if (to == TASK_FAILURE)
            s_dead_add(self, task);
        if (s_expires(task))
            s_expiry_insert(self, task);
        break;
    default:
        assert(!"a task cannot move to NEW");
    }
}

void
tqb_task_move(tq_broker_t *self, task_t *task, task_state_t to,
              const task_move_t *how)
{
    static const task_move_t none = {0};
    if (!how)
        how = &none;
    task_state_t from = task->state;
    if (!s_legal_move(from, to)) {
        tq_log_error("BUG: task %s cannot move %s -> %s", tqb_task_id(task),
                     s_names[from], tqb_task_state_name(to));
        abort();
    }
    /* a REVOKE asked or answered changes nothing but a count */
    if (s_held(from) && s_held(to) &&
        (!how->holder || how->holder == task->holder)) {
        if (from != to) {
            task->holder->revoking += to == TASK_REVOKING ? 1 : -1;
            task->state = (uint8_t)to;
        }
        return;
    }
    if (s_held(to) && !how->holder) {
        tq_log_error("BUG: task %s held by nobody", tqb_task_id(task));
        abort();
    }
    s_leave(self, task);
    s_enter(self, task, to, how);
    /* the store keeps the wire state: moves within one (a new holder)
       write nothing */
    if (self->store && !how->restore &&
        (from == TASK_NEW || s_wire[from] != s_wire[to]))
        tqb_journal_task(self, task, from);
}

/* ---- outcomes ---- */

void
tqb_task_add_waiter(tq_broker_t *self, task_t *task, const ident_t *from)
{
    ident_t client = s_client(self, task);
    if (client.size && tqb_ident_eq(&client, from))
        return;
    s_waiters_t *w =
        task->waited ? zhashx_lookup(self->waiters, tqb_task_id(task)) : NULL;
    uint32_t count = w ? w->count : 0;
    for (uint32_t i = 0; i < count; i++)
        if (tqb_ident_eq(&w->items[i], from))
            return;
    w = realloc(w, sizeof *w + (count + 1) * sizeof(ident_t));
    if (!w)
        abort();
    w->count = count + 1;
    zhashx_update(self->waiters, tqb_task_id(task), w);
    task->waited = true;
    ident_t *waiter = &w->items[count];
    *waiter = (ident_t){0};
    tqb_ident_set(waiter, tqb_ident_data(from), from->size);
}

/* Counts a client's unfinished tasks down (with max_client_tasks). */
static void
s_client_done(tq_broker_t *self, const ident_t *client)
{
    char key[2 * 255 + 1];
    tqb_hex(key, tqb_ident_data(client), client->size);
    uintptr_t count = (uintptr_t)zhashx_lookup(self->in_flight, key);
    if (count > 1)
        zhashx_update(self->in_flight, key, (void *)(count - 1));
    else
        zhashx_delete(self->in_flight, key);
}

void
tqb_task_final(tq_broker_t *self, task_t *task, task_state_t state, int code,
               const char *error, zmq_msg_t *value)
{
    assert(state == TASK_SUCCESS || state == TASK_FAILURE ||
           state == TASK_CANCELLED);
    task->rec.code = (uint32_t)code;
    if (task->has_error || (error && *error))
        tqb_task_set_error(self, task, error);
    /* the arguments give way to the value, except for a failed task (a
       dead letter), which keeps them to run again if an operator retries
       it */
    if (state != TASK_FAILURE) {
        s_page_out_unlist(self, task); /* its arguments go */
        s_payload_drop(self, task);
        s_payload_keep(self, task, state == TASK_SUCCESS ? value : NULL);
    }
    if (state == TASK_SUCCESS) {
        self->counters.completed++;
        task->lane->queue->done++;
    } else if (state == TASK_CANCELLED) {
        self->counters.cancelled++;
    } else {
        self->counters.failed++;
        task->lane->queue->failed++;
        task->failure_counted = true;
    }
    tqb_task_move(self, task, state, NULL);
    tqb_debug(self, "task %s %s%s%s", tqb_task_id(task), s_names[state],
              tqb_task_error(self, task) ? ": " : "",
              tqb_task_error(self, task) ? tqb_task_error(self, task) : "");

    uint32_t sent = 0, failed = 0; /* RESULTs handed to libzmq or not */
    ident_t client = s_client(self, task);
    if (client.size) {
        if (tqb_send_result(self, task, &client) == 0)
            sent++;
        else
            failed++;
        if (self->config.max_client_tasks)
            s_client_done(self, &client);
        if (task->client_at == CLIENT_OTHER)
            s_client_clear(self, task);
        task->client_at = CLIENT_NONE;
    }
    if (task->waited) {
        s_waiters_t *w = zhashx_lookup(self->waiters, tqb_task_id(task));
        for (uint32_t i = 0; w && i < w->count; i++) {
            if (tqb_send_result(self, task, &w->items[i]) == 0)
                sent++;
            else
                failed++;
        }
        s_waiters_free(self, task);
    }
    tqb_results_sent(self, task, sent, failed);
}

void
tqb_task_forget(tq_broker_t *self, task_t *task)
{
    s_leave(self, task);
    s_table_remove(self, task);
    tqb_journal_forget(self, task);
    if (task->page_out)
        for (uint32_t i = 0; i < self->page_out_count; i++)
            if (self->page_out[i] == task)
                self->page_out[i] = NULL;
    s_payload_drop(self, task);
    tqb_task_free(self, task);
}

void
tqb_cancel(tq_broker_t *self, task_t *task, const char *why)
{
    if (s_held(task->state)) {
        /* its credit stays taken until the child is gone or answers; the
           supervisor stops the child */
        peer_t *holder = task->holder;
        holder->cancelled++;
        peer_t *sup = tqb_supervisor_of(self, holder);
        if (sup) {
            tq_msg_t *out = tqb_out(self, TQ_CMD_KILL);
            out->pid = holder->pid;
            out->id = tq_str(tqb_task_id(task));
            tqb_send_to(self, self->workers, &sup->ident, NULL);
        } else {
            /* its host's children may announce themselves before it does:
               the KILL goes out at its first HEARTBEAT (tqb_on_heartbeat) */
            tq_str_copy(holder->kill_id, sizeof holder->kill_id,
                        tq_str(tqb_task_id(task)));
            tqb_warn(self,
                     "task %s cancelled, but worker %s pid %llu has no "
                     "supervisor to stop it yet",
                     tqb_task_id(task), holder->host,
                     (unsigned long long)holder->pid);
        }
    }
    tqb_task_final(self, task, TASK_CANCELLED, TQ_ECANCELLED, why, NULL);
}

/* ---- time ---- */

static task_t *
s_task_of(tq_heap_node_t *node)
{
    return (task_t *)((char *)node - offsetof(task_t, node));
}

int64_t
tqb_next_due(const tq_broker_t *self)
{
    tq_heap_node_t *first = tq_heap_peek(&self->delayed);
    return first ? first->key : INT64_MAX;
}

void
tqb_release_due(tq_broker_t *self)
{
    tq_heap_node_t *first;
    while ((first = tq_heap_peek(&self->delayed)) &&
           first->key <= self->now_ms) {
        task_t *task = s_task_of(first);
        /* a retried task was submitted before those waiting behind it:
           it goes back at the front of its priority; a countdown ends at
           the back, as a new submission */
        task_move_t how = {.front = task->state == TASK_RETRY};
        tqb_task_move(self, task, TASK_WAITING, &how);
    }
}

void
tqb_expire_results(tq_broker_t *self)
{
    while (self->expiry.head && self->expiry.head->expires_ms <= self->now_ms)
        tqb_task_forget(self, self->expiry.head);
}

uint32_t
tqb_cancel_delayed(tq_broker_t *self, queue_t *queue, const char *why)
{
    /* collected first: each removal reorders the heap */
    task_t **found = tqb_alloc((self->delayed.size + 1) * sizeof *found);
    uint32_t count = 0;
    for (uint32_t i = 1; i <= self->delayed.size; i++) {
        task_t *task = s_task_of(self->delayed.items[i]);
        if (task->lane->queue == queue)
            found[count++] = task;
    }
    for (uint32_t i = 0; i < count; i++)
        tqb_cancel(self, found[i], why);
    free(found);
    return count;
}
