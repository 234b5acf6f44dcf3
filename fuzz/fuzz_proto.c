/* fuzz_proto.c - libFuzzer target for the TQP/1 codec: any bytes are
   decoded as a header and checked as a payload; whatever decodes must
   encode again and decode to the same command. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tq_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
    (void)tq_proto_check_payload(data, size, false, NULL);
    (void)tq_proto_check_payload(data, size, true, NULL);
    if (tq_proto_decode(&msg, data, size, NULL) != TQ_OK)
        return 0;
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
