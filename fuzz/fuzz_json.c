/* fuzz_json.c - libFuzzer target for the tq CLI's argument and result
   conversions: bytes as a command-line argument (JSON -> msgpack) must
   give exactly one well-formed msgpack object; bytes as a worker's result
   (untrusted msgpack -> JSON, what `tq get` prints) must convert without
   a fault. The first byte chooses. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tq_cli.h"
#include "tq_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
s_argument(const uint8_t *data, size_t size)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    tq_cli_pack_arg(&pk, (const char *)data, size);
    const char *reason = NULL;
    if (tq_proto_check_payload(buf.data, buf.size, true, &reason) != TQ_OK &&
        !strstr(reason, "deep"))
        abort(); /* the CLI packed something that is not one object */
    msgpack_sbuffer_destroy(&buf);
}

static void
s_result(const uint8_t *data, size_t size)
{
    /* the client checks a value like this before unpacking it */
    if (tq_proto_check_payload(data, size, false, NULL) != TQ_OK)
        return;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    if (msgpack_unpack_next(&up, (const char *)data, size, &off) ==
        MSGPACK_UNPACK_SUCCESS) {
        json_t *j = tq_cli_to_json(&up.data);
        char *text = j ? tq_cli_dump_json(j, false) : NULL;
        free(text);
        json_decref(j);
    }
    msgpack_unpacked_destroy(&up);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0 && data[0] == 0x01)
        s_result(data + 1, size - 1);
    else
        s_argument(data, size);
    return 0;
}
