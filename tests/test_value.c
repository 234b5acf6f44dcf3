/* test_value.c - a task's value packed by reference to its arguments
   (worker/tq_value.h): an echo's value is the argument frame itself, one
   argument returned alone is a part of it, and everything else (a write
   after the run, a different prefix, small runs, bytes from elsewhere, no
   frame) is copied; every value is byte for byte what was packed, and a
   message that shares the frame outlives the frame. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "tq_value.h"

#define S_SIZE 65537 /* one byte past 64 KiB */

typedef struct {
    zmq_msg_t frame; /* the arguments as the child holds them */
    msgpack_zone zone;
    msgpack_object args; /* unpacked, pointing into frame */
    msgpack_sbuffer own; /* the value's own bytes */
    tq_value_t value;
    msgpack_packer pk; /* writes to value */
} s_fixture_t;

static void
s_fill(uint8_t *p, size_t size, unsigned seed)
{
    for (size_t i = 0; i < size; i++)
        p[i] = (uint8_t)(i * 31 + seed);
}

/* Arguments [bin of size bytes], or [bin, "tail"] with two. */
static void
s_fixture_init(s_fixture_t *f, size_t size, bool two)
{
    uint8_t *bytes = malloc(size);
    assert_non_null(bytes);
    s_fill(bytes, size, 7);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, two ? 2 : 1);
    msgpack_pack_bin_with_body(&pk, bytes, size);
    if (two)
        msgpack_pack_str_with_body(&pk, "tail", 4);
    free(bytes);
    assert_int_equal(zmq_msg_init_size(&f->frame, sb.size), 0);
    memcpy(zmq_msg_data(&f->frame), sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    msgpack_zone_init(&f->zone, 1024);
    size_t off = 0;
    assert_int_equal(msgpack_unpack(zmq_msg_data(&f->frame),
                                    zmq_msg_size(&f->frame), &off, &f->zone,
                                    &f->args),
                     MSGPACK_UNPACK_SUCCESS);
    msgpack_sbuffer_init(&f->own);
    tq_value_start(&f->value, &f->own, &f->frame);
    msgpack_packer_init(&f->pk, &f->value, tq_value_write);
}

static void
s_fixture_free(s_fixture_t *f)
{
    zmq_msg_close(&f->frame);
    msgpack_zone_destroy(&f->zone);
    msgpack_sbuffer_destroy(&f->own);
}

/* What pack_fn packs, into a plain sbuffer: the bytes the value must be. */
static void
s_expect(const s_fixture_t *f,
         void (*pack_fn)(msgpack_packer *, const msgpack_object *),
         msgpack_sbuffer *want)
{
    msgpack_sbuffer_init(want);
    msgpack_packer pk;
    msgpack_packer_init(&pk, want, msgpack_sbuffer_write);
    pack_fn(&pk, &f->args);
}

static void
s_pack_echo(msgpack_packer *pk, const msgpack_object *args)
{
    msgpack_pack_object(pk, *args);
}

static void
s_pack_first(msgpack_packer *pk, const msgpack_object *args)
{
    msgpack_pack_object(pk, args->via.array.ptr[0]);
}

static void
s_pack_first_then_int(msgpack_packer *pk, const msgpack_object *args)
{
    msgpack_pack_array(pk, 2);
    msgpack_pack_object(pk, args->via.array.ptr[0]);
    msgpack_pack_int(pk, 42);
}

static void
s_pack_first_in_map(msgpack_packer *pk, const msgpack_object *args)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "v", 1);
    msgpack_pack_object(pk, args->via.array.ptr[0]);
}

static void
s_assert_value(const s_fixture_t *f, const msgpack_sbuffer *want)
{
    assert_int_equal(tq_value_size(&f->value), want->size);
    assert_memory_equal(tq_value_data(&f->value), want->data, want->size);
}

/* tq.echo: the value is the whole frame, nothing copied but its headers,
   and the message is the frame's own buffer; it outlives the frame. */
static void
test_echo_is_the_frame(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, S_SIZE, false);
    msgpack_sbuffer want;
    s_expect(&f, s_pack_echo, &want);
    s_pack_echo(&f.pk, &f.args);
    assert_true(tq_value_is_ref(&f.value));
    assert_true(f.own.size < 16); /* the headers only */
    s_assert_value(&f, &want);
    assert_ptr_equal(tq_value_data(&f.value), zmq_msg_data(&f.frame));
    zmq_msg_t msg;
    assert_int_equal(tq_value_ref_msg(&f.value, &msg), 0);
    assert_ptr_equal(zmq_msg_data(&msg), zmq_msg_data(&f.frame));
    s_fixture_free(&f); /* the frame goes first, as after a send */
    assert_int_equal(zmq_msg_size(&msg), want.size);
    assert_memory_equal(zmq_msg_data(&msg), want.data, want.size);
    zmq_msg_close(&msg);
    msgpack_sbuffer_destroy(&want);
}

/* One argument returned alone: a part of the frame, shared; the message
   keeps the frame's buffer after the frame is closed. */
static void
test_one_argument_is_a_part(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, S_SIZE, true);
    msgpack_sbuffer want;
    s_expect(&f, s_pack_first, &want);
    s_pack_first(&f.pk, &f.args);
    assert_true(tq_value_is_ref(&f.value));
    s_assert_value(&f, &want);
    const uint8_t *frame = zmq_msg_data(&f.frame);
    assert_ptr_equal(tq_value_data(&f.value), frame + 1);
    zmq_msg_t msg;
    assert_int_equal(tq_value_ref_msg(&f.value, &msg), 0);
    assert_ptr_equal(zmq_msg_data(&msg), frame + 1);
    s_fixture_free(&f);
    assert_int_equal(zmq_msg_size(&msg), want.size);
    assert_memory_equal(zmq_msg_data(&msg), want.data, want.size);
    zmq_msg_close(&msg);
    msgpack_sbuffer_destroy(&want);
}

/* Raw bytes written with nothing packed before them (a task packing a
   ready msgpack object, tq_pack_value's "m"): the whole frame is shared. */
static void
test_raw_bytes_of_the_frame(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, S_SIZE, false);
    const char *frame = zmq_msg_data(&f.frame);
    size_t size = zmq_msg_size(&f.frame);
    assert_int_equal(f.pk.callback(f.pk.data, frame, size), 0);
    assert_true(tq_value_is_ref(&f.value));
    assert_int_equal(f.own.size, 0);
    assert_int_equal(tq_value_size(&f.value), size);
    assert_ptr_equal(tq_value_data(&f.value), frame);
    zmq_msg_t msg;
    assert_int_equal(tq_value_ref_msg(&f.value, &msg), 0);
    assert_ptr_equal(zmq_msg_data(&msg), frame);
    assert_int_equal(zmq_msg_size(&msg), size);
    zmq_msg_close(&msg);
    s_fixture_free(&f);
}

/* A write after the run: the run is copied first, every byte in order. */
static void
test_write_after_run_copies(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, S_SIZE, false);
    /* the array header 0x92 differs from the frame's 0x91: no run */
    msgpack_sbuffer want;
    s_expect(&f, s_pack_first_then_int, &want);
    s_pack_first_then_int(&f.pk, &f.args);
    assert_false(tq_value_is_ref(&f.value));
    s_assert_value(&f, &want);
    msgpack_sbuffer_destroy(&want);
    /* now one that starts as a run: bin, then an int after it */
    tq_value_start(&f.value, &f.own, &f.frame);
    s_pack_first(&f.pk, &f.args);
    assert_true(tq_value_is_ref(&f.value));
    msgpack_pack_int(&f.pk, 42);
    assert_false(tq_value_is_ref(&f.value));
    msgpack_sbuffer_init(&want);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &want, msgpack_sbuffer_write);
    s_pack_first(&pk, &f.args);
    msgpack_pack_int(&pk, 42);
    s_assert_value(&f, &want);
    assert_ptr_equal(tq_value_data(&f.value), f.own.data);
    zmq_msg_t msg;
    assert_int_equal(tq_value_ref_msg(&f.value, &msg), -1);
    msgpack_sbuffer_destroy(&want);
    s_fixture_free(&f);
}

/* Bytes of the frame after a prefix the frame does not have: copied. */
static void
test_other_prefix_copies(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, S_SIZE, false);
    msgpack_sbuffer want;
    s_expect(&f, s_pack_first_in_map, &want);
    s_pack_first_in_map(&f.pk, &f.args);
    assert_false(tq_value_is_ref(&f.value));
    s_assert_value(&f, &want);
    msgpack_sbuffer_destroy(&want);
    s_fixture_free(&f);
}

/* Runs below TQ_VALUE_REF_MIN, no frame, bytes from elsewhere: copied. */
static void
test_copies_otherwise(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, TQ_VALUE_REF_MIN - 1, false);
    msgpack_sbuffer want;
    s_expect(&f, s_pack_echo, &want);
    s_pack_echo(&f.pk, &f.args);
    assert_false(tq_value_is_ref(&f.value));
    s_assert_value(&f, &want);
    msgpack_sbuffer_destroy(&want);
    s_fixture_free(&f);

    s_fixture_init(&f, S_SIZE, false);
    s_expect(&f, s_pack_echo, &want);
    tq_value_start(&f.value, &f.own, NULL); /* no frame */
    s_pack_echo(&f.pk, &f.args);
    assert_false(tq_value_is_ref(&f.value));
    s_assert_value(&f, &want);
    /* the same bytes from another buffer, with the frame */
    tq_value_start(&f.value, &f.own, &f.frame);
    char *elsewhere = malloc(want.size);
    assert_non_null(elsewhere);
    memcpy(elsewhere, want.data, want.size);
    assert_int_equal(tq_value_write(&f.value, elsewhere, want.size), 0);
    free(elsewhere);
    assert_false(tq_value_is_ref(&f.value));
    s_assert_value(&f, &want);
    msgpack_sbuffer_destroy(&want);
    s_fixture_free(&f);
}

/* A new start forgets the run of the last value. */
static void
test_start_forgets(void **state)
{
    (void)state;
    s_fixture_t f;
    s_fixture_init(&f, S_SIZE, false);
    s_pack_echo(&f.pk, &f.args);
    assert_true(tq_value_is_ref(&f.value));
    tq_value_start(&f.value, &f.own, &f.frame);
    assert_false(tq_value_is_ref(&f.value));
    assert_int_equal(tq_value_size(&f.value), 0);
    msgpack_pack_nil(&f.pk);
    assert_int_equal(tq_value_size(&f.value), 1);
    assert_int_equal(*(const uint8_t *)tq_value_data(&f.value), 0xc0);
    s_fixture_free(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_is_the_frame),
        cmocka_unit_test(test_one_argument_is_a_part),
        cmocka_unit_test(test_raw_bytes_of_the_frame),
        cmocka_unit_test(test_write_after_run_copies),
        cmocka_unit_test(test_other_prefix_copies),
        cmocka_unit_test(test_copies_otherwise),
        cmocka_unit_test(test_start_forgets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
