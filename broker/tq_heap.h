/* tq_heap.h - a binary min-heap of intrusive nodes keyed by a deadline:
   the broker's one timer for every delayed task (countdown, retry
   backoff, loss pause) instead of a timer per task. Equal keys come out
   in the order they went in. */
#ifndef TQ_HEAP_H
#define TQ_HEAP_H

#include <stdbool.h>
#include <stdint.h>

/* Embed one in each object that may wait in a heap. */
typedef struct {
    int64_t key; /* the deadline, ms */
    uint64_t order; /* push order, breaks ties */
    uint32_t index; /* 1-based position; 0: in no heap */
} tq_heap_node_t;

typedef struct {
    tq_heap_node_t **items; /* 1-based */
    uint32_t size, cap;
    uint64_t pushes;
} tq_heap_t;

/* An empty heap; tq_heap_destroy frees its array (not the nodes). */
void tq_heap_init(tq_heap_t *heap);
void tq_heap_destroy(tq_heap_t *heap);

/* Adds node (not in a heap) with key. Out of memory aborts. */
void tq_heap_push(tq_heap_t *heap, tq_heap_node_t *node, int64_t key);

/* Takes node (in this heap) out. */
void tq_heap_remove(tq_heap_t *heap, tq_heap_node_t *node);

/* The node with the smallest key, borrowed; NULL when empty. */
tq_heap_node_t *tq_heap_peek(const tq_heap_t *heap);

/* True if node sits in a heap. */
static inline bool
tq_heap_contains(const tq_heap_node_t *node)
{
    return node->index != 0;
}

#endif
