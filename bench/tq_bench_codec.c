/* tq_bench_codec.c - the TQP/1 codec alone, on the messages of one W1 task:
   SUBMIT, TASK, DONE and RESULT (ids as text and as bin), each encoded,
   decoded, asked tq_proto_has_payload, and the lot sent once through a
   BATCH. Deterministic: count instructions with callgrind, e.g.

     valgrind --tool=callgrind --callgrind-out-file=/tmp/codec.out \
       build/bench/tq-bench-codec 20000

   and divide the total by the messages it prints. Not part of `make
   bench`'s table. `tq-bench-codec [ROUNDS]` (default 100000). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_batch.h"
#include "tq_proto.h"

#define S_KINDS 8

static const uint8_t s_id_bytes[TQ_PROTO_ID_BIN] = {
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
    0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
};

/* The messages of one task, as the client, broker and child make them. */
static void
s_messages(tq_msg_t *m)
{
    const char *hex = "0123456789abcdeffedcba9876543210";
    for (int i = 0; i < S_KINDS; i++)
        memset(&m[i], 0, offsetof(tq_msg_t, queues));
    /* client -> broker: a client-made id, as text */
    m[0].command = TQ_CMD_SUBMIT;
    m[0].id = tq_str(hex);
    m[0].task = tq_str("tq.echo");
    m[0].queue = tq_str("default");
    m[0].features = TQ_FEATURE_FOLD | TQ_FEATURE_BATCH;
    /* ... and with the id as bin */
    m[1] = m[0];
    m[1].id_binary = true;
    /* broker -> child: the id's bytes */
    m[2].command = TQ_CMD_TASK;
    m[2].id_binary = true;
    m[2].id_bytes = s_id_bytes;
    m[2].task = tq_str("tq.echo");
    m[2].attempt = 1;
    /* ... to a child without binary ids */
    m[3] = m[2];
    m[3].id_binary = false;
    m[3].id_bytes = NULL;
    m[3].id = tq_str(hex);
    /* child -> broker: the id as it came (text of a bin id) */
    m[4].command = TQ_CMD_DONE;
    m[4].id = tq_str(hex);
    m[4].id_binary = true;
    m[4].attempt = 1;
    m[4].state = TQ_STATE_SUCCESS;
    m[4].rss_kb = 9876;
    m[5] = m[4];
    m[5].id_binary = false;
    /* broker -> client */
    m[6].command = TQ_CMD_RESULT;
    m[6].id_binary = true;
    m[6].id_bytes = s_id_bytes;
    m[6].state = TQ_STATE_SUCCESS;
    m[6].attempt = 1;
    m[7] = m[6];
    m[7].id_binary = false;
    m[7].id_bytes = NULL;
    m[7].id = tq_str(hex);
}

int
main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 100000;
    static tq_msg_t msgs[S_KINDS], in;
    s_messages(msgs);
    static const uint8_t args[] = {0x91, 0xa5, 'h', 'e', 'l', 'l', 'o'};
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    tq_batch_t batch;
    tq_batch_init(&batch);
    unsigned long sum = 0;
    long messages = 0;
    for (long r = 0; r < rounds; r++) {
        for (int k = 0; k < S_KINDS; k++) {
            if (tq_proto_encode(&msgs[k], &buf, NULL) != TQ_OK ||
                tq_proto_decode(&in, buf.data, buf.size, NULL) != TQ_OK) {
                fprintf(stderr, "message %d does not round trip\n", k);
                return 1;
            }
            sum += buf.size + in.attempt + tq_proto_has_payload(in.command);
            bool has = tq_proto_has_payload(msgs[k].command);
            if (tq_batch_add(&batch, &msgs[k], args, has ? sizeof args : 0,
                             has) != TQ_OK) {
                fprintf(stderr, "message %d does not batch\n", k);
                return 1;
            }
        }
        tq_msg_t header;
        memset(&header, 0, offsetof(tq_msg_t, queues));
        header.command = TQ_CMD_BATCH;
        header.count = tq_batch_count(&batch);
        tq_batch_reader_t reader;
        tq_batch_reader_init(&reader, &header, batch.body.data,
                             batch.body.size);
        const void *data;
        size_t size;
        bool has;
        int rc;
        while ((rc = tq_batch_next(&reader, &in, &data, &size, &has, NULL)) !=
               TQ_BATCH_END) {
            if (rc != TQ_OK) {
                fprintf(stderr, "batch does not read back\n");
                return 1;
            }
            sum += size;
        }
        tq_batch_reset(&batch);
        messages += 2 * S_KINDS; /* each kind alone and in the batch */
    }
    tq_batch_destroy(&batch);
    msgpack_sbuffer_destroy(&buf);
    printf("%ld messages (checksum %lu)\n", messages, sum);
    return 0;
}
