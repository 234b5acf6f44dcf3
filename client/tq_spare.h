/* tq_spare.h - large payload buffers the client library kept a moment for
   reuse. An argument's buffer, let go once the broker acknowledged the
   submission and libzmq sent it, takes the value of a result that arrives
   soon after (copied into it), so the received message goes back to
   libzmq's receive path at once. Without this, a client holding its
   results takes fresh memory for each one while the arguments' memory,
   already faulted in, is returned: every 4 KiB page of fresh memory is a
   page fault, the bulk of a 64 KiB echo's cost in the client (measured).
   Process-wide; every function is thread-safe. */
#ifndef TQ_SPARE_H
#define TQ_SPARE_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

/* Buffers below this size are not kept: malloc serves them well. */
#define TQ_SPARE_MIN 16384
/* A buffer is kept this long at most, then freed... */
#define TQ_SPARE_AGE_MS 1000
/* ... and the spares are this many bytes at most. */
#define TQ_SPARE_MAX_BYTES (128u << 20)

/* Counts the clients alive (delta +1 or -1): spares are kept only while
   one is, and all are freed when the last one goes. */
void tq_spare_users(int delta);

/* Gives data (from malloc) back: kept as a spare, or freed. */
void tq_spare_put(void *data);

/* A zmq_free_fn for messages made with zmq_msg_init_data on a buffer from
   malloc: the buffer becomes a spare (hint unused). */
void tq_spare_free(void *data, void *hint);

/* A spare of at least size bytes (malloc_usable_size), the caller's; NULL
   when none fits. */
void *tq_spare_take(size_t size);

/* If msg (a received payload) is large and a spare fits it: copies its
   bytes into the spare and makes msg that spare, freeing the received
   buffer. Else msg is left as it was. */
void tq_spare_adopt(zmq_msg_t *msg);

/* Frees the spares kept longer than TQ_SPARE_AGE_MS (now_ms on
   CLOCK_MONOTONIC), or all of them with now_ms INT64_MAX. Cheap when there
   are none. */
void tq_spare_trim(int64_t now_ms);

/* Bytes kept as spares now. */
size_t tq_spare_bytes(void);

#endif
