/* test_heap.c - the deadline heap: smallest key first, ties in push
   order, removal from the middle keeps the order of the rest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "tq_heap.h"

typedef struct {
    int id;
    tq_heap_node_t node;
} s_item_t;

static s_item_t *
s_of(tq_heap_node_t *node)
{
    return (s_item_t *)((char *)node - offsetof(s_item_t, node));
}

static void
test_order(void **state)
{
    (void)state;
    tq_heap_t heap;
    tq_heap_init(&heap);
    assert_null(tq_heap_peek(&heap));
    enum { N = 1000 };
    s_item_t *items = calloc(N, sizeof *items);
    srandom(7);
    for (int i = 0; i < N; i++) {
        items[i].id = i;
        /* few distinct keys: many ties */
        tq_heap_push(&heap, &items[i].node, random() % 50);
        assert_true(tq_heap_contains(&items[i].node));
    }
    /* take out every third from the middle */
    for (int i = 0; i < N; i += 3)
        tq_heap_remove(&heap, &items[i].node);
    int64_t last_key = -1;
    int last_id = -1, taken = 0;
    tq_heap_node_t *first;
    while ((first = tq_heap_peek(&heap))) {
        s_item_t *item = s_of(first);
        assert_true(item->id % 3 != 0);
        assert_true(first->key >= last_key);
        if (first->key == last_key)
            assert_true(item->id > last_id); /* ties in push order */
        last_key = first->key;
        last_id = item->id;
        tq_heap_remove(&heap, first);
        assert_false(tq_heap_contains(first));
        taken++;
    }
    assert_int_equal(taken, N - (N + 2) / 3);
    free(items);
    tq_heap_destroy(&heap);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
