/* test_registry.c - the worker's task registry: names checked, one task
   per name, lookup with its user pointer, the built-ins, modules loaded
   or refused with a reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "tq/tq_worker.h"
#include "tq_harness.h"
#include "tq_worker_host.h"

static int
s_task(tq_task_t *task, const msgpack_object *args,
       msgpack_packer *result)
{
    (void) task;
    (void) args;
    msgpack_pack_nil(result);
    return TQ_OK;
}

static int
s_other(tq_task_t *task, const msgpack_object *args,
        msgpack_packer *result)
{
    return s_task(task, args, result);
}

static void
test_names(void **state)
{
    (void) state;
    tq_registry_t *reg = tq_registry_new();
    assert_non_null(reg);
    int marker = 7;
    assert_int_equal(tq_registry_add(reg, "app.resize", s_task, &marker),
                     TQ_OK);
    assert_int_equal(tq_registry_add(reg, "app.other:v2", s_other, NULL),
                     TQ_OK);
    /* one task per name */
    assert_int_equal(tq_registry_add(reg, "app.resize", s_other, NULL),
                     TQ_EBUSY);
    /* invalid names and functions */
    assert_int_equal(tq_registry_add(reg, "", s_task, NULL), TQ_EINVAL);
    assert_int_equal(tq_registry_add(reg, "has space", s_task, NULL),
                     TQ_EINVAL);
    assert_int_equal(tq_registry_add(reg, "x", NULL, NULL), TQ_EINVAL);
    char long_name[300];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    assert_int_equal(tq_registry_add(reg, long_name, s_task, NULL),
                     TQ_EINVAL);
    assert_int_equal(tq_registry_size(reg), 2);
    assert_string_equal(tq_registry_name(reg, 0), "app.resize");
    assert_string_equal(tq_registry_name(reg, 1), "app.other:v2");
    assert_null(tq_registry_name(reg, 2));
    void *arg = NULL;
    assert_ptr_equal(tq_registry_lookup(reg, "app.resize", &arg), s_task);
    assert_ptr_equal(arg, &marker);
    assert_null(tq_registry_lookup(reg, "app.none", NULL));
    tq_registry_destroy(&reg);
    assert_null(reg);
    tq_registry_destroy(&reg); /* NULL-safe */
}

/* The memo gives tq_registry_lookup's answer: a new name is looked up,
   never the last one's task returned for it; a name not found stays not
   found right after a hit. */
static void
test_lookup_memo(void **state)
{
    (void) state;
    tq_registry_t *reg = tq_registry_new();
    int a = 1, b = 2;
    assert_int_equal(tq_registry_add(reg, "app.a", s_task, &a), TQ_OK);
    assert_int_equal(tq_registry_add(reg, "app.b", s_other, &b), TQ_OK);
    tq_registry_memo_t memo;
    memset(&memo, 0, sizeof memo);
    void *arg = NULL;
    assert_ptr_equal(tq_registry_lookup_memo(reg, &memo, "app.a", &arg),
                     s_task);
    assert_ptr_equal(arg, &a);
    assert_string_equal(tq_registry_name(reg, memo.index), "app.a");
    assert_ptr_equal(tq_registry_lookup_memo(reg, &memo, "app.a", &arg),
                     s_task);
    assert_ptr_equal(arg, &a);
    /* the name changed: not the last one's task, nor its index */
    assert_ptr_equal(tq_registry_lookup_memo(reg, &memo, "app.b", &arg),
                     s_other);
    assert_ptr_equal(arg, &b);
    assert_string_equal(tq_registry_name(reg, memo.index), "app.b");
    /* a prefix or an extension of the last name is another name */
    assert_null(tq_registry_lookup_memo(reg, &memo, "app.", NULL));
    assert_null(tq_registry_lookup_memo(reg, &memo, "app.bb", NULL));
    arg = &a;
    assert_null(tq_registry_lookup_memo(reg, &memo, "app.none", &arg));
    assert_null(arg);
    assert_null(tq_registry_lookup_memo(reg, &memo, NULL, NULL));
    assert_ptr_equal(tq_registry_lookup_memo(reg, &memo, "app.b", NULL),
                     s_other);
    assert_ptr_equal(tq_registry_lookup_memo(reg, &memo, "app.a", &arg),
                     s_task);
    assert_ptr_equal(arg, &a);
    assert_string_equal(tq_registry_name(reg, memo.index), "app.a");
    tq_registry_destroy(&reg);
}

static void
test_builtins(void **state)
{
    (void) state;
    tq_registry_t *reg = tq_registry_new();
    assert_int_equal(tq_registry_add_builtins(reg), TQ_OK);
    assert_non_null(tq_registry_lookup(reg, "tq.echo", NULL));
    assert_non_null(tq_registry_lookup(reg, "tq.sleep", NULL));
    assert_non_null(tq_registry_lookup(reg, "tq.fail", NULL));
    /* tq.exec only with --allow-exec, not among the built-ins */
    assert_null(tq_registry_lookup(reg, "tq.exec", NULL));
    tq_registry_destroy(&reg);
}

static void
test_modules(void **state)
{
    (void) state;
    tq_registry_t *reg = tq_registry_new();
    assert_int_equal(tq_registry_load(reg, TQ_MYTASKS_SO), TQ_OK);
    assert_true(tq_registry_size(reg) > 0);
    assert_non_null(tq_registry_lookup(reg, "test.soft", NULL));
    /* a missing module: an error that names it */
    assert_int_not_equal(tq_registry_load(reg, "/nonexistent/libx.so"),
                         TQ_OK);
    printf("  missing module: %s\n", tq_registry_error(reg));
    assert_non_null(strstr(tq_registry_error(reg), "/nonexistent/libx.so"));
    /* a library without tq_module_init */
    assert_int_not_equal(tq_registry_load(reg, "libm.so.6"), TQ_OK);
    printf("  not a module: %s\n", tq_registry_error(reg));
    assert_true(strlen(tq_registry_error(reg)) > 0);
    tq_registry_destroy(&reg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_lookup_memo),
        cmocka_unit_test(test_builtins),
        cmocka_unit_test(test_modules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
