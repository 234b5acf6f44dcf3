/* make_corpus.c - writes one encoded header per command into a directory,
   and a BATCH payload (two count bytes, then the sub-messages): the seed
   corpus of fuzz_proto. */
#include <stdio.h>
#include <string.h>

#include "tq_batch.h"
#include "tq_proto.h"

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    static tq_msg_t msg;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    for (int command = 0; command < 0x30; command++) {
        memset(&msg, 0, sizeof msg);
        msg.command = (uint8_t)command;
        msg.id = tq_str("0123456789abcdef0123456789abcdef");
        msg.task = tq_str("tq.echo");
        msg.queue = tq_str("default");
        msg.host = tq_str("host");
        msg.error = tq_str("an error");
        msg.attempt = 1;
        msg.credit = 1;
        msg.pid = 100;
        msg.ppid = 99;
        msg.queue_count = 1;
        msg.queues[0] = tq_str("default");
        msg.task_count = 1;
        msg.tasks[0] = tq_str("tq.echo");
        msg.count = 1;
        if (tq_proto_encode(&msg, &buf, NULL) != TQ_OK)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[1],
                 tq_proto_command_name(msg.command));
        FILE *f = fopen(path, "wb");
        if (!f)
            return 1;
        fwrite(buf.data, 1, buf.size, f);
        fclose(f);
        /* and with the id as a 16-byte bin (PROTOCOL.md 3), NAME_BIN */
        const char *fields = tq_proto_command(msg.command)->fields;
        if (!strchr(fields, 'I') && !strchr(fields, 'i'))
            continue;
        msg.id_binary = true;
        if (tq_proto_encode(&msg, &buf, NULL) != TQ_OK)
            continue;
        if ((size_t)snprintf(path, sizeof path, "%s/%s_BIN", argv[1],
                             tq_proto_command_name(msg.command)) >=
            sizeof path)
            return 1;
        f = fopen(path, "wb");
        if (!f)
            return 1;
        fwrite(buf.data, 1, buf.size, f);
        fclose(f);
    }
    /* a BATCH payload of a SUBMIT, a SUBMITTED and a RESULT */
    tq_batch_t batch;
    tq_batch_init(&batch);
    static const uint8_t commands[] = {TQ_CMD_SUBMIT, TQ_CMD_SUBMITTED,
                                       TQ_CMD_RESULT};
    for (size_t i = 0; i < sizeof commands; i++) {
        memset(&msg, 0, sizeof msg);
        msg.command = commands[i];
        msg.id = tq_str("0123456789abcdef0123456789abcdef");
        msg.task = tq_str("tq.echo");
        msg.queue = tq_str("default");
        msg.attempt = 1;
        msg.state = TQ_STATE_SUCCESS;
        msg.features = TQ_FEATURE_FOLD | TQ_FEATURE_BATCH;
        bool has = tq_proto_has_payload(msg.command);
        if (tq_batch_add(&batch, &msg, "\x91\x01", has ? 2 : 0, has) != TQ_OK)
            return 1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/BATCH_body", argv[1]);
    FILE *f = fopen(path, "wb");
    if (!f)
        return 1;
    uint8_t count[2] = {(uint8_t)(batch.count - 1), 0};
    fwrite(count, 1, 2, f);
    fwrite(batch.body.data, 1, batch.body.size, f);
    fclose(f);
    tq_batch_destroy(&batch);
    msgpack_sbuffer_destroy(&buf);
    return 0;
}
