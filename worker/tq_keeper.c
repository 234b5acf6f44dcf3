/* tq_keeper.c - a child's keeper thread and its socket-lending protocol:
   one state, moved by s_move, which asserts legality. The state and the
   number of the task being timed are one atomic word, so that a short
   task's begin and end are one compare-and-swap each, without the lock:
   the lock guards the keeper's waits, its counters and every move that
   is not the main thread's IDLE <-> TIMING. */
#include "tq_keeper.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct tq_keeper_t {
    pthread_t thread;
    pthread_mutex_t lock; /* guards the fields below it but word, asleep */
    pthread_cond_t cond; /* on the monotonic clock */
    int wake_fd; /* eventfd: give the socket back */
    int after_ms; /* a task this old gets the keeper */
    tq_keeper_serve_fn *serve; /* called while LENT */
    void *arg; /* serve's */
    uint64_t word; /* atomic: S_WORD(tasks begun, state); the count tells
                      one task from the next */
    unsigned long lends; /* LENT entered */
    unsigned long signals; /* times task_begin had to wake the keeper */
    bool asleep; /* atomic: the keeper waits untimed in IDLE, and begin
                    signals it (a wakeup saved per short task, not a
                    state) */
};

/* The word: the count of tasks begun, then the state in the low byte. */
#define S_WORD(task, state) (((task) << 8) | (uint64_t)(state))
#define S_STATE(word) ((tq_keeper_state_t)((word)&0xff))
#define S_TASK(word) ((word) >> 8)

/* A keeper whose child began no task for this many after_ms ticks in a
   row sleeps untimed (begin must then wake it: a system call and a
   thread switch on the task's path); until then it looks every after_ms
   on its own, so a child that gets a task every few milliseconds (a
   stream of round trips) never wakes it per task. An idle child's keeper
   costs nothing after S_QUIET_TICKS * after_ms. */
#define S_QUIET_TICKS 100

#define S_BIT(state) (1u << (state))

/* The keeper's stack: it decodes a message, queues a task or answers, and
   logs (a 9 KiB line buffer at most), so 256 KiB is plenty where glibc's
   default is RLIMIT_STACK (8 MiB of address space, committed). */
#define S_STACK (256 * 1024)

/* s_legal[from]: the states the keeper may move to from `from`. */
static const unsigned s_legal[TQ_KEEPER_STATE_COUNT_] = {
    [TQ_KEEPER_IDLE] = S_BIT(TQ_KEEPER_TIMING) | S_BIT(TQ_KEEPER_QUIT),
    [TQ_KEEPER_TIMING] =
        S_BIT(TQ_KEEPER_IDLE) | S_BIT(TQ_KEEPER_LENT) | S_BIT(TQ_KEEPER_QUIT),
    [TQ_KEEPER_LENT] = S_BIT(TQ_KEEPER_RECLAIM),
    [TQ_KEEPER_RECLAIM] = S_BIT(TQ_KEEPER_IDLE),
    [TQ_KEEPER_QUIT] = 0,
};

static const char *const s_names[TQ_KEEPER_STATE_COUNT_] = {
    [TQ_KEEPER_IDLE] = "IDLE", [TQ_KEEPER_TIMING] = "TIMING",
    [TQ_KEEPER_LENT] = "LENT", [TQ_KEEPER_RECLAIM] = "RECLAIM",
    [TQ_KEEPER_QUIT] = "QUIT",
};

bool
tq_keeper_legal(tq_keeper_state_t from, tq_keeper_state_t to)
{
    if ((unsigned)from >= TQ_KEEPER_STATE_COUNT_ ||
        (unsigned)to >= TQ_KEEPER_STATE_COUNT_)
        return false;
    return (s_legal[from] & S_BIT(to)) != 0;
}

const char *
tq_keeper_state_name(tq_keeper_state_t state)
{
    return (unsigned)state < TQ_KEEPER_STATE_COUNT_ ? s_names[state] : "?";
}

/* tq_keeper_legal inlined: asserted on every move, two of them a task. */
static inline bool
s_legal_move(tq_keeper_state_t from, tq_keeper_state_t to)
{
    return (unsigned)from < TQ_KEEPER_STATE_COUNT_ &&
        (s_legal[from] & S_BIT(to)) != 0;
}

static uint64_t
s_word(tq_keeper_t *self)
{
    return __atomic_load_n(&self->word, __ATOMIC_SEQ_CST);
}

/* The one place the state changes: from the word `from` (its state and
   its task) to state `to`, task counted up by `begun`. False when the
   word is no longer `from` (the other thread moved first). */
static bool
s_move(tq_keeper_t *self, uint64_t from, tq_keeper_state_t to, uint64_t begun)
{
    assert(s_legal_move(S_STATE(from), to));
    return __atomic_compare_exchange_n(&self->word, &from,
                                       S_WORD(S_TASK(from) + begun, to), false,
                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

/* A move that only this thread makes from this state: it cannot fail. */
static void
s_move_own(tq_keeper_t *self, tq_keeper_state_t to, uint64_t begun)
{
    bool moved = s_move(self, s_word(self), to, begun);
    assert(moved);
    (void)moved;
}

/* Waits on the condition until `until`; false on a timeout. */
static bool
s_wait_for(tq_keeper_t *self, const struct timespec *until)
{
    return pthread_cond_timedwait(&self->cond, &self->lock, until) == 0;
}

static void
s_deadline(tq_keeper_t *self, struct timespec *until)
{
    clock_gettime(CLOCK_MONOTONIC, until);
    until->tv_nsec += (long)self->after_ms * 1000000L;
    until->tv_sec += until->tv_nsec / 1000000000L;
    until->tv_nsec %= 1000000000L;
}

static void *
s_main(void *arg)
{
    tq_keeper_t *self = arg;
    /* quiet: after_ms ticks in a row without a new task; it starts
       asleep (no task yet) */
    unsigned quiet = S_QUIET_TICKS;
    uint64_t seen = 0;
    struct timespec until;
    pthread_mutex_lock(&self->lock);
    for (uint64_t word; S_STATE(word = s_word(self)) != TQ_KEEPER_QUIT;) {
        if (S_STATE(word) != TQ_KEEPER_TIMING) {
            if (S_TASK(word) != seen) {
                seen = S_TASK(word);
                quiet = 0;
            }
            if (quiet >= S_QUIET_TICKS) {
                /* asleep first, then the look: a begin that came before
                   this store is seen by the look, one after it sees
                   asleep and signals once we wait (it takes the lock) */
                __atomic_store_n(&self->asleep, true, __ATOMIC_SEQ_CST);
                if (s_word(self) == word)
                    pthread_cond_wait(&self->cond, &self->lock);
                __atomic_store_n(&self->asleep, false, __ATOMIC_SEQ_CST);
                continue;
            }
            /* warm: look again in after_ms, unless woken (QUIT) */
            s_deadline(self, &until);
            if (!s_wait_for(self, &until) && S_TASK(s_word(self)) == seen)
                quiet++;
            continue;
        }
        /* a task runs: is it the same one after_ms later? Its end does
           not wake us (no lock on its path): we look at the deadline */
        seen = S_TASK(word);
        quiet = 0;
        s_deadline(self, &until);
        while (s_word(self) == word && s_wait_for(self, &until))
            ;
        /* the same task still timing: lent, unless its end moves first */
        if (!s_move(self, word, TQ_KEEPER_LENT, 0))
            continue;
        self->lends++;
        pthread_mutex_unlock(&self->lock);
        self->serve(self->arg, self->wake_fd);
        pthread_mutex_lock(&self->lock);
        /* serve returns only when woken, and the main thread moved to
           RECLAIM before it woke us */
        s_move_own(self, TQ_KEEPER_IDLE, 0);
        pthread_cond_broadcast(&self->cond);
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

tq_keeper_t *
tq_keeper_new(int after_ms, tq_keeper_serve_fn *serve, void *arg)
{
    tq_keeper_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->after_ms = after_ms;
    self->serve = serve;
    self->arg = arg;
    self->word = S_WORD(0, TQ_KEEPER_IDLE);
    self->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->wake_fd < 0) {
        free(self);
        return NULL;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&self->lock, NULL);
    /* every signal blocked in the keeper: they are the main thread's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t stack;
    pthread_attr_init(&stack);
    pthread_attr_setstacksize(&stack, S_STACK);
    int rc = pthread_create(&self->thread, &stack, s_main, self);
    pthread_attr_destroy(&stack);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&self->cond);
        pthread_mutex_destroy(&self->lock);
        close(self->wake_fd);
        free(self);
        errno = rc;
        return NULL;
    }
    return self;
}

void
tq_keeper_destroy(tq_keeper_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tq_keeper_t *self = *self_p;
    pthread_mutex_lock(&self->lock);
    /* IDLE or TIMING: the keeper lends only under the lock */
    s_move_own(self, TQ_KEEPER_QUIT, 0);
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
    pthread_join(self->thread, NULL);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    close(self->wake_fd);
    free(self);
    *self_p = NULL;
}

void
tq_keeper_task_begin(tq_keeper_t *self)
{
    if (!self)
        return;
    /* IDLE: only this thread moves from it */
    s_move_own(self, TQ_KEEPER_TIMING, 1);
    if (__atomic_load_n(&self->asleep, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&self->lock);
        self->signals++;
        pthread_cond_signal(&self->cond);
        pthread_mutex_unlock(&self->lock);
    }
}

void
tq_keeper_task_end(tq_keeper_t *self)
{
    if (!self)
        return;
    uint64_t word = s_word(self);
    /* not lent: the keeper notices at its timeout, unwoken */
    if (S_STATE(word) == TQ_KEEPER_IDLE ||
        (S_STATE(word) == TQ_KEEPER_TIMING &&
         s_move(self, word, TQ_KEEPER_IDLE, 0)))
        return;
    /* lent (the keeper moved first): ask for the socket back */
    pthread_mutex_lock(&self->lock);
    s_move_own(self, TQ_KEEPER_RECLAIM, 0);
    uint64_t one = 1;
    while (write(self->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
    while (S_STATE(s_word(self)) != TQ_KEEPER_IDLE)
        pthread_cond_wait(&self->cond, &self->lock);
    uint64_t count;
    while (read(self->wake_fd, &count, sizeof count) < 0 && errno == EINTR)
        ;
    pthread_mutex_unlock(&self->lock);
}

tq_keeper_state_t
tq_keeper_state(tq_keeper_t *self)
{
    return S_STATE(s_word(self));
}

unsigned long
tq_keeper_lends(tq_keeper_t *self)
{
    pthread_mutex_lock(&self->lock);
    unsigned long n = self->lends;
    pthread_mutex_unlock(&self->lock);
    return n;
}

unsigned long
tq_keeper_signals(tq_keeper_t *self)
{
    pthread_mutex_lock(&self->lock);
    unsigned long n = self->signals;
    pthread_mutex_unlock(&self->lock);
    return n;
}
