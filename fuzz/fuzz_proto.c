/* fuzz_proto.c - libFuzzer target for the TQP/1 codec: any bytes are
   decoded as a header and checked as a payload; whatever decodes must
   encode again and decode to the same command; the fast RESULT reader
   (tq_proto_read_result) must take only what decodes, with the same
   fields. The same bytes, after two bytes that give a count, are read as
   a BATCH's payload (PROTOCOL.md 5.9): every sub-message the reader
   accepts must go into a batch again and read back as the same command,
   in the same order. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tq_batch.h"
#include "tq_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
s_fuzz_batch(const uint8_t *data, size_t size)
{
    static tq_msg_t header, msg, again;
    static tq_batch_t batch;
    static uint8_t commands[TQ_BATCH_MAX];
    static int ready;
    if (!ready) {
        tq_batch_init(&batch);
        ready = 1;
    }
    if (size < 2)
        return;
    memset(&header, 0, offsetof(tq_msg_t, queues));
    header.command = TQ_CMD_BATCH;
    header.count = 1 + (uint32_t)(data[0] | data[1] << 8) % TQ_BATCH_MAX;
    tq_batch_reader_t r;
    tq_batch_reader_init(&r, &header, data + 2, size - 2);
    tq_batch_reset(&batch);
    uint32_t steps = 0;
    for (;;) {
        const void *payload;
        size_t payload_size;
        bool has;
        const char *why = NULL;
        int rc = tq_batch_next(&r, &msg, &payload, &payload_size, &has, &why);
        if (rc == TQ_BATCH_END)
            break;
        if (++steps > header.count + 1)
            abort(); /* the reader must end */
        if (rc != TQ_OK) {
            if (!why)
                abort(); /* a refusal always says why */
            continue;
        }
        if (payload_size && !payload)
            abort();
        commands[batch.count] = msg.command;
        if (tq_batch_add(&batch, &msg, payload, payload_size, has) != TQ_OK)
            abort(); /* the reader accepted what the builder refuses */
    }
    if (batch.count == 0)
        return;
    header.count = batch.count;
    tq_batch_reader_init(&r, &header, batch.body.data, batch.body.size);
    for (uint32_t i = 0; i < batch.count; i++) {
        const void *payload;
        size_t payload_size;
        bool has;
        if (tq_batch_next(&r, &again, &payload, &payload_size, &has, NULL) !=
                TQ_OK ||
            again.command != commands[i])
            abort();
    }
    const void *payload;
    size_t payload_size;
    bool has;
    if (tq_batch_next(&r, &again, &payload, &payload_size, &has, NULL) !=
        TQ_BATCH_END)
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tq_msg_t msg, again;
    static msgpack_sbuffer buf;
    static int ready;
    if (!ready) {
        msgpack_sbuffer_init(&buf);
        ready = 1;
    }
    s_fuzz_batch(data, size);
    (void)tq_proto_check_payload(data, size, false, NULL);
    (void)tq_proto_check_payload(data, size, true, NULL);
    /* the fast RESULT reader takes nothing the decoder refuses, and reads
       what it takes as the decoder does */
    tq_proto_result_t result;
    bool fast = tq_proto_read_result(&result, data, size);
    if (tq_proto_decode(&msg, data, size, NULL) != TQ_OK) {
        if (fast)
            abort();
        return 0;
    }
    if (fast &&
        (msg.command != TQ_CMD_RESULT || msg.id_binary ||
         result.id.ptr != msg.id.ptr || result.id.len != msg.id.len ||
         result.error.ptr != msg.error.ptr ||
         result.error.len != msg.error.len || result.state != msg.state ||
         result.code != msg.code || result.attempts != msg.attempt))
        abort();
    if (tq_proto_encode(&msg, &buf, NULL) != TQ_OK)
        abort(); /* decode accepted what encode refuses */
    if (tq_proto_decode(&again, buf.data, buf.size, NULL) != TQ_OK ||
        again.command != msg.command)
        abort();
    /* an id, str or 16-byte bin, comes back in its form with its text */
    if (again.id_binary != msg.id_binary || again.id.len != msg.id.len ||
        (msg.id.len && memcmp(again.id.ptr, msg.id.ptr, msg.id.len) != 0))
        abort();
    return 0;
}
