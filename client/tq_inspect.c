/* tq_inspect.c - TASKS and INSPECT requests (PROTOCOL.md 5.7) on a DEALER
   opened for the one request: an operator's look inside the queue is rare,
   and keeping it off the client's I/O thread leaves that path untouched. */
#include "tq_inspect.h"

#include <czmq.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "tq_client_internal.h"
#include "tq_curve.h"
#include "tq_proto.h"
#include "tq_wire.h"

bool
tq_inspect_unsupported(int code)
{
    /* an older codec refuses the command (TQ_EPROTO "unknown command"), a
       broker whose codec knows it but has no handler says TQ_ESTATE */
    return code == TQ_EPROTO || code == TQ_ESTATE || code == TQ_EVERSION;
}

static void
s_detail(char *detail, size_t errlen, const char *text)
{
    if (detail && errlen)
        snprintf(detail, errlen, "%s", text);
}

/* Sends msg to one broker and waits for the answer that carries its id
   (or an ERROR without one: an older broker cannot echo what it could not
   decode). */
static int
s_request_one(const char *endpoint, tq_msg_t *msg, tq_buf_t *body,
              int timeout_ms, char *detail, size_t errlen)
{
    memset(body, 0, sizeof *body);
    s_detail(detail, errlen, "");
    void *ctx = tq_client_context();
    void *socket = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    if (!socket) {
        s_detail(detail, errlen, zmq_strerror(errno));
        return TQ_ESYS;
    }
    int zero = 0;
    zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero);
    char why[512];
    if (tq_curve_client_setup(socket, NULL, NULL, why, sizeof why) != 0) {
        zmq_close(socket);
        s_detail(detail, errlen, why);
        return TQ_EINVAL;
    }
    if (zmq_connect(socket, endpoint) != 0) {
        s_detail(detail, errlen, zmq_strerror(errno));
        zmq_close(socket);
        return TQ_EINVAL;
    }
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    int rc = tq_wire_send_msg(socket, NULL, msg, &buf, NULL, 0);
    msgpack_sbuffer_destroy(&buf);
    if (rc != TQ_OK) {
        zmq_close(socket);
        s_detail(detail, errlen, "cannot send the request");
        return rc == TQ_EINVAL ? TQ_EINVAL : TQ_ESYS;
    }
    char id[TQ_PROTO_MAX_ID + 1];
    tq_str_copy(id, sizeof id, msg->id);
    tq_frames_t frames;
    tq_frames_init(&frames);
    tq_msg_t *m = malloc(sizeof *m); /* large (name arrays) */
    if (!m)
        abort();
    int64_t deadline = zclock_mono() + (timeout_ms < 0 ? 0 : timeout_ms);
    rc = TQ_EUNREACHABLE;
    s_detail(detail, errlen, "the broker did not answer in time");
    for (;;) {
        int64_t left = deadline - zclock_mono();
        if (left < 0)
            break;
        zmq_pollitem_t item = {socket, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, (long)left) <= 0)
            continue; /* EINTR or nothing yet: the deadline decides */
        if (tq_wire_recv(socket, &frames, false, ZMQ_DONTWAIT) != TQ_OK)
            continue;
        const char *reason = NULL;
        if (tq_wire_decode(&frames, m, &reason) != TQ_OK)
            continue; /* not ours to judge; wait for the answer */
        bool ours = m->id.ptr && tq_str_eq(m->id, id);
        if (m->command == TQ_CMD_ERROR && (ours || !m->id.ptr)) {
            rc = m->code == TQ_OK ? TQ_EPROTO : (int)m->code;
            char text[TQ_PROTO_MAX_ERROR + 1];
            tq_str_copy(text, sizeof text, m->error);
            s_detail(detail, errlen, text);
            break;
        }
        if (!ours)
            continue;
        if (m->command == TQ_CMD_UNKNOWN) {
            rc = TQ_EUNKNOWN;
            s_detail(detail, errlen, "the broker does not know this task id");
            break;
        }
        if (m->command == TQ_CMD_REPLY) {
            size_t size = zmq_msg_size(&frames.payload);
            body->data = malloc(size ? size : 1);
            if (!body->data)
                abort();
            memcpy(body->data, zmq_msg_data(&frames.payload), size);
            body->size = size;
            rc = TQ_OK;
            s_detail(detail, errlen, "");
            break;
        }
    }
    free(m);
    tq_frames_close(&frames);
    zmq_close(socket);
    return rc;
}

/* As s_request_one, with endpoint a comma-separated list of brokers
   (NULL: $TQ_BROKER, else the default): a standby (TQ_ESTANDBY) or a
   silent one passes the request to the next, each getting an equal share
   of the time left (PROTOCOL.md section 12). */
static int
s_request(const char *endpoint, tq_msg_t *msg, tq_buf_t *body, int timeout_ms,
          char *detail, size_t errlen)
{
    if (!endpoint)
        endpoint = getenv("TQ_BROKER");
    if (!endpoint || !*endpoint)
        endpoint = TQ_DEFAULT_CLIENT_ENDPOINT;
    size_t count = 1;
    for (const char *p = endpoint; *p; p++)
        count += *p == ',';
    int64_t deadline = zclock_mono() + (timeout_ms < 0 ? 0 : timeout_ms);
    const char *p = endpoint;
    int rc = TQ_EUNREACHABLE;
    for (size_t i = 0; i < count; i++) {
        p += strspn(p, " \t");
        size_t len = strcspn(p, ",");
        char one[512];
        snprintf(one, sizeof one, "%.*s", (int)len, p);
        p += len + (p[len] == ',');
        for (size_t n = strlen(one);
             n && (one[n - 1] == ' ' || one[n - 1] == '\t');)
            one[--n] = '\0';
        int64_t left = deadline - zclock_mono();
        int share = left > 0 ? (int)(left / (int64_t)(count - i)) : 0;
        rc = s_request_one(one, msg, body, share, detail, errlen);
        if (rc != TQ_ESTANDBY && rc != TQ_EUNREACHABLE)
            break;
    }
    return rc;
}

int
tq_inspect_tasks(const char *endpoint, const tq_inspect_filter_t *filter,
                 tq_buf_t *body, int timeout_ms, char *detail, size_t errlen)
{
    tq_msg_t *msg = calloc(1, sizeof *msg);
    if (!msg)
        abort();
    /* a request id of our own: unique per process and call */
    static atomic_uint s_requests;
    char id[48];
    snprintf(id, sizeof id, "tasks-%ld-%u", (long)getpid(),
             atomic_fetch_add(&s_requests, 1));
    msg->command = TQ_CMD_TASKS;
    msg->id = tq_str(id);
    msg->queue = tq_str(filter ? filter->queue : NULL);
    msg->states = filter ? filter->states : 0;
    msg->limit = filter && filter->limit ? filter->limit : TQ_INSPECT_LIMIT;
    int rc;
    if (msg->queue.ptr &&
        !tq_proto_valid_name(msg->queue.ptr, msg->queue.len)) {
        s_detail(detail, errlen, "invalid queue name");
        rc = TQ_EINVAL;
    } else if (msg->limit > TQ_PROTO_MAX_LIMIT ||
               (msg->states & ~(uint32_t)TQ_STATES_ALL)) {
        s_detail(detail, errlen, "limit or states out of range");
        rc = TQ_EINVAL;
    } else
        rc = s_request(endpoint, msg, body, timeout_ms, detail, errlen);
    free(msg);
    return rc;
}

int
tq_inspect_task(const char *endpoint, const char *id, tq_buf_t *body,
                int timeout_ms, char *detail, size_t errlen)
{
    if (!id || !tq_proto_valid_id(id, strlen(id))) {
        memset(body, 0, sizeof *body);
        s_detail(detail, errlen, "not a valid task id");
        return TQ_EINVAL;
    }
    tq_msg_t *msg = calloc(1, sizeof *msg);
    if (!msg)
        abort();
    msg->command = TQ_CMD_INSPECT;
    msg->id = tq_str(id);
    int rc = s_request(endpoint, msg, body, timeout_ms, detail, errlen);
    free(msg);
    return rc;
}
