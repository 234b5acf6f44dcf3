/* tq_spare.c - large payload buffers kept a moment for reuse (see
   tq_spare.h): a stack, newest on top, oldest trimmed first. */
#include "tq_spare.h"

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Spares kept at most, whatever their size. */
#define S_MAX_COUNT 4096
/* How deep under the top a fitting spare is looked for. */
#define S_LOOK 8

typedef struct {
    void *data;
    size_t cap; /* malloc_usable_size */
    int64_t at; /* when it was put, monotonic ms */
} s_spare_t;

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static s_spare_t s_spares[S_MAX_COUNT];
static size_t s_count; /* under s_lock */
static atomic_int s_users; /* clients alive */
static atomic_size_t s_bytes; /* written under s_lock */

/* fork() while another thread holds the lock would leave it held in the
   child: held across fork, then released on both sides */
static void
s_prepare(void)
{
    pthread_mutex_lock(&s_lock);
}

static void
s_release(void)
{
    pthread_mutex_unlock(&s_lock);
}

static pthread_once_t s_once = PTHREAD_ONCE_INIT;

static void
s_init(void)
{
    pthread_atfork(s_prepare, s_release, s_release);
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Frees the spares put before cutoff (under s_lock); they are the oldest,
   at the bottom. */
static void
s_trim_locked(int64_t cutoff)
{
    size_t old = 0;
    while (old < s_count && s_spares[old].at < cutoff)
        old++;
    if (old == 0)
        return;
    size_t bytes = 0;
    for (size_t i = 0; i < old; i++) {
        bytes += s_spares[i].cap;
        free(s_spares[i].data);
    }
    memmove(s_spares, s_spares + old, (s_count - old) * sizeof *s_spares);
    s_count -= old;
    atomic_fetch_sub(&s_bytes, bytes);
}

void
tq_spare_put(void *data)
{
    if (!data)
        return;
    size_t cap = malloc_usable_size(data);
    if (cap < TQ_SPARE_MIN || cap > TQ_SPARE_MAX_BYTES) {
        free(data);
        return;
    }
    pthread_once(&s_once, s_init);
    int64_t now = s_now_ms();
    pthread_mutex_lock(&s_lock);
    s_trim_locked(now - TQ_SPARE_AGE_MS);
    bool kept = atomic_load(&s_users) > 0 && s_count < S_MAX_COUNT &&
        atomic_load(&s_bytes) + cap <= TQ_SPARE_MAX_BYTES;
    if (kept) {
        s_spares[s_count++] = (s_spare_t){data, cap, now};
        atomic_fetch_add(&s_bytes, cap);
    }
    pthread_mutex_unlock(&s_lock);
    if (!kept)
        free(data);
}

void
tq_spare_users(int delta)
{
    if (atomic_fetch_add(&s_users, delta) + delta <= 0)
        tq_spare_trim(INT64_MAX);
}

void
tq_spare_free(void *data, void *hint)
{
    (void)hint;
    tq_spare_put(data);
}

void *
tq_spare_take(size_t size)
{
    if (size < TQ_SPARE_MIN || atomic_load(&s_bytes) == 0)
        return NULL;
    void *data = NULL;
    pthread_mutex_lock(&s_lock);
    for (size_t n = 0; n < S_LOOK && n < s_count; n++) {
        size_t i = s_count - 1 - n;
        /* large enough, and not so large that much of it would be idle */
        if (s_spares[i].cap >= size && s_spares[i].cap - size <= size / 2) {
            data = s_spares[i].data;
            atomic_fetch_sub(&s_bytes, s_spares[i].cap);
            memmove(s_spares + i, s_spares + i + 1,
                    (s_count - 1 - i) * sizeof *s_spares);
            s_count--;
            break;
        }
    }
    pthread_mutex_unlock(&s_lock);
    return data;
}

void
tq_spare_adopt(zmq_msg_t *msg)
{
    size_t size = zmq_msg_size(msg);
    void *data = tq_spare_take(size);
    if (!data)
        return;
    zmq_msg_t copy;
    if (zmq_msg_init_data(&copy, data, size, tq_spare_free, NULL) != 0) {
        free(data);
        return;
    }
    memcpy(data, zmq_msg_data(msg), size);
    zmq_msg_close(msg);
    zmq_msg_init(msg);
    zmq_msg_move(msg, &copy);
}

void
tq_spare_trim(int64_t now_ms)
{
    if (atomic_load(&s_bytes) == 0)
        return;
    pthread_mutex_lock(&s_lock);
    s_trim_locked(now_ms == INT64_MAX ? INT64_MAX : now_ms - TQ_SPARE_AGE_MS);
    pthread_mutex_unlock(&s_lock);
}

size_t
tq_spare_bytes(void)
{
    return atomic_load(&s_bytes);
}
