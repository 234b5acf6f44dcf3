/* make_corpus.c - writes one encoded header per command into a directory:
   the seed corpus of fuzz_proto. */
#include <stdio.h>
#include <string.h>

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
    msgpack_sbuffer_destroy(&buf);
    return 0;
}
