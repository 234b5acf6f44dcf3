/* tq_heap.c - the deadline heap (see tq_heap.h). */
#include "tq_heap.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

void
tq_heap_init(tq_heap_t *heap)
{
    *heap = (tq_heap_t){0};
}

void
tq_heap_destroy(tq_heap_t *heap)
{
    free(heap->items);
    *heap = (tq_heap_t){0};
}

static bool
s_less(const tq_heap_node_t *a, const tq_heap_node_t *b)
{
    return a->key < b->key || (a->key == b->key && a->order < b->order);
}

static void
s_set(tq_heap_t *heap, uint32_t i, tq_heap_node_t *node)
{
    heap->items[i] = node;
    node->index = i;
}

static void
s_up(tq_heap_t *heap, uint32_t i)
{
    tq_heap_node_t *node = heap->items[i];
    while (i > 1 && s_less(node, heap->items[i / 2])) {
        s_set(heap, i, heap->items[i / 2]);
        i /= 2;
    }
    s_set(heap, i, node);
}

static void
s_down(tq_heap_t *heap, uint32_t i)
{
    tq_heap_node_t *node = heap->items[i];
    for (;;) {
        uint32_t child = 2 * i;
        if (child > heap->size)
            break;
        if (child < heap->size &&
            s_less(heap->items[child + 1], heap->items[child]))
            child++;
        if (!s_less(heap->items[child], node))
            break;
        s_set(heap, i, heap->items[child]);
        i = child;
    }
    s_set(heap, i, node);
}

void
tq_heap_push(tq_heap_t *heap, tq_heap_node_t *node, int64_t key)
{
    assert(node->index == 0);
    if (heap->size + 1 >= heap->cap) {
        heap->cap = heap->cap ? 2 * heap->cap : 256;
        heap->items = realloc(heap->items, heap->cap * sizeof *heap->items);
        if (!heap->items) {
            fprintf(stderr, "tq: out of memory\n");
            abort();
        }
    }
    node->key = key;
    node->order = ++heap->pushes;
    s_set(heap, ++heap->size, node);
    s_up(heap, heap->size);
}

void
tq_heap_remove(tq_heap_t *heap, tq_heap_node_t *node)
{
    uint32_t i = node->index;
    assert(i >= 1 && i <= heap->size && heap->items[i] == node);
    tq_heap_node_t *last = heap->items[heap->size--];
    if (last != node) {
        s_set(heap, i, last);
        s_up(heap, i);
        s_down(heap, last->index);
    }
    node->index = 0;
}

tq_heap_node_t *
tq_heap_peek(const tq_heap_t *heap)
{
    return heap->size ? heap->items[1] : NULL;
}
