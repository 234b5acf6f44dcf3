/* test_worker_states.c - unit tests of the worker host's two state
   machines, driven through their transition functions without any child
   process: a supervisor's slot (tq_slot.h) and a child's keeper
   (tq_keeper.h, with a real thread and a fake serve function); and a
   child's board (tq_board.h), the shared record its supervisor reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tq/tq.h"
#include "tq_board.h"
#include "tq_done.h"
#include "tq_harness.h"
#include "tq_keeper.h"
#include "tq_slot.h"
#include "tq_worker_host.h"

/* Every legal move of the slot table, and nothing else. */
static void
test_slot_table(void **state)
{
    (void)state;
    static const struct {
        tq_slot_state_t from, to;
    } legal[] = {
        {TQ_SLOT_EMPTY, TQ_SLOT_STARTING},
        {TQ_SLOT_STARTING, TQ_SLOT_IDLE},
        {TQ_SLOT_STARTING, TQ_SLOT_KILLING},
        {TQ_SLOT_STARTING, TQ_SLOT_EMPTY},
        {TQ_SLOT_IDLE, TQ_SLOT_BUSY},
        {TQ_SLOT_IDLE, TQ_SLOT_RECYCLING},
        {TQ_SLOT_IDLE, TQ_SLOT_KILLING},
        {TQ_SLOT_IDLE, TQ_SLOT_EMPTY},
        {TQ_SLOT_BUSY, TQ_SLOT_IDLE},
        {TQ_SLOT_BUSY, TQ_SLOT_BUSY},
        {TQ_SLOT_BUSY, TQ_SLOT_CANCELLING},
        {TQ_SLOT_BUSY, TQ_SLOT_KILLING},
        {TQ_SLOT_BUSY, TQ_SLOT_RECYCLING},
        {TQ_SLOT_BUSY, TQ_SLOT_EMPTY},
        {TQ_SLOT_CANCELLING, TQ_SLOT_KILLING},
        {TQ_SLOT_CANCELLING, TQ_SLOT_EMPTY},
        {TQ_SLOT_KILLING, TQ_SLOT_EMPTY},
        {TQ_SLOT_RECYCLING, TQ_SLOT_KILLING},
        {TQ_SLOT_RECYCLING, TQ_SLOT_EMPTY},
    };
    size_t n = sizeof legal / sizeof legal[0];
    int count = 0;
    for (int from = 0; from < TQ_SLOT_STATE_COUNT_; from++)
        for (int to = 0; to < TQ_SLOT_STATE_COUNT_; to++) {
            bool want = false;
            for (size_t i = 0; i < n; i++)
                want |= legal[i].from == (tq_slot_state_t)from &&
                    legal[i].to == (tq_slot_state_t)to;
            if (tq_slot_legal(from, to) != want)
                fail_msg("%s -> %s: legal is %d", tq_slot_state_name(from),
                         tq_slot_state_name(to), !want);
            count += want;
        }
    assert_int_equal(count, (int)n);
    /* a slot never leaves EMPTY but to start, nor KILLING but reaped */
    assert_false(tq_slot_legal(TQ_SLOT_EMPTY, TQ_SLOT_BUSY));
    assert_false(tq_slot_legal(TQ_SLOT_KILLING, TQ_SLOT_IDLE));
    assert_false(tq_slot_legal(TQ_SLOT_STATE_COUNT_, TQ_SLOT_EMPTY));
    assert_string_equal(tq_slot_state_name(TQ_SLOT_CANCELLING), "CANCELLING");
    assert_string_equal(tq_slot_state_name(TQ_SLOT_STATE_COUNT_), "?");
}

/* A child's life in reports: UP, START (deadlines from now), IDLE,
   START again, RECYCLE; a clean exit of a recycling child. */
static void
test_slot_reports(void **state)
{
    (void)state;
    tq_slot_t slot;
    tq_slot_init(&slot);
    assert_int_equal(slot.state, TQ_SLOT_EMPTY);
    assert_false(tq_slot_live(&slot));
    tq_slot_move(&slot, TQ_SLOT_STARTING);
    slot.pid = 100;
    assert_true(tq_slot_live(&slot));
    /* IDLE before UP changes nothing */
    assert_false(
        tq_slot_on_report(&slot, TQ_REPORT_IDLE, NULL, 0, 0, 0, 0, 1000));
    assert_int_equal(slot.state, TQ_SLOT_STARTING);
    assert_true(tq_slot_on_report(&slot, TQ_REPORT_UP, NULL, 0, 0, 0, 0, 1000));
    assert_int_equal(slot.state, TQ_SLOT_IDLE);

    /* its own limit 500 ms, soft 200 ms */
    assert_true(tq_slot_on_report(&slot, TQ_REPORT_START, "t1", 2, 500, 9000,
                                  200, 1000));
    assert_int_equal(slot.state, TQ_SLOT_BUSY);
    assert_true(tq_slot_busy(&slot));
    assert_string_equal(slot.id, "t1");
    assert_int_equal(slot.attempt, 2);
    assert_int_equal(slot.limit_ms, 500);
    assert_int_equal(slot.deadline, 1500);
    assert_int_equal(slot.soft_deadline, 1200);
    assert_int_equal(slot.tasks, 1);

    assert_true(tq_slot_on_report(&slot, TQ_REPORT_IDLE, NULL, 0, 0, 0, 0, 0));
    assert_int_equal(slot.state, TQ_SLOT_IDLE);
    assert_int_equal(slot.deadline, 0);
    assert_int_equal(slot.soft_deadline, 0);
    assert_string_equal(slot.id, "");

    /* the default limit; a soft limit past the hard one is never set */
    tq_slot_on_report(&slot, TQ_REPORT_START, "t2", 1, 0, 300, 400, 2000);
    assert_int_equal(slot.limit_ms, 300);
    assert_int_equal(slot.deadline, 2300);
    assert_int_equal(slot.soft_deadline, 0);
    /* the next task without IDLE between */
    assert_false(
        tq_slot_on_report(&slot, TQ_REPORT_START, "t3", 1, 0, 0, 0, 3000));
    assert_string_equal(slot.id, "t3");
    assert_int_equal(slot.deadline, 0);
    assert_int_equal(slot.tasks, 3);

    assert_true(
        tq_slot_on_report(&slot, TQ_REPORT_RECYCLE, NULL, 0, 0, 0, 0, 0));
    assert_int_equal(slot.state, TQ_SLOT_RECYCLING);
    /* it exits 0: clean, even when the host is not stopping */
    int exited0 = 0; /* wait status of exit(0) */
    assert_true(tq_slot_exit_clean(&slot, exited0, false));
    assert_int_equal(tq_slot_lost_code(&slot), TQ_ELOST);
    tq_slot_move(&slot, TQ_SLOT_EMPTY);
    assert_int_equal(slot.pid, 0);
    assert_false(tq_slot_live(&slot));
}

/* Cancel: BUSY -> CANCELLING (kill_at set, reports ignored but the task
   named), grace over -> KILLING keeping the reason; the LOST says
   cancelled, never clean. */
static void
test_slot_cancel(void **state)
{
    (void)state;
    tq_slot_t slot;
    tq_slot_init(&slot);
    tq_slot_move(&slot, TQ_SLOT_STARTING);
    slot.pid = 7;
    tq_slot_on_report(&slot, TQ_REPORT_UP, NULL, 0, 0, 0, 0, 0);
    tq_slot_on_report(&slot, TQ_REPORT_START, "c1", 1, 1000, 0, 0, 10);
    tq_slot_cancel(&slot, 1010);
    assert_int_equal(slot.state, TQ_SLOT_CANCELLING);
    assert_int_equal(slot.kill_at, 1010);
    assert_int_equal(slot.deadline, 0); /* BUSY's deadlines are gone */
    assert_false(tq_slot_busy(&slot));
    /* on its way out: IDLE, START, RECYCLE move nothing */
    assert_false(tq_slot_on_report(&slot, TQ_REPORT_IDLE, NULL, 0, 0, 0, 0, 0));
    assert_false(
        tq_slot_on_report(&slot, TQ_REPORT_RECYCLE, NULL, 0, 0, 0, 0, 0));
    assert_int_equal(slot.state, TQ_SLOT_CANCELLING);
    assert_int_equal(tq_slot_lost_code(&slot), TQ_ECANCELLED);
    /* it exited 0 on SIGTERM, while the host stops: still not clean */
    assert_false(tq_slot_exit_clean(&slot, 0, true));

    assert_true(tq_slot_kill(&slot, TQ_SLOT_KILL_CANCEL));
    assert_int_equal(slot.state, TQ_SLOT_KILLING);
    assert_int_equal(slot.kill_at, 0);
    /* the shutdown's kill after it keeps the first reason */
    assert_false(tq_slot_kill(&slot, TQ_SLOT_KILL_SHUTDOWN));
    assert_int_equal(tq_slot_lost_code(&slot), TQ_ECANCELLED);
    assert_string_equal(slot.id, "c1");
    tq_slot_move(&slot, TQ_SLOT_EMPTY);
    /* a new child forgets the last one's history */
    tq_slot_move(&slot, TQ_SLOT_STARTING);
    assert_int_equal(slot.why_killed, TQ_SLOT_KILL_NONE);
    assert_int_equal(slot.tasks, 0);
    assert_string_equal(slot.id, "");
}

/* Time limit and shutdown kills: their LOST codes and cleanliness. */
static void
test_slot_kills(void **state)
{
    (void)state;
    tq_slot_t slot;
    tq_slot_init(&slot);
    tq_slot_move(&slot, TQ_SLOT_STARTING);
    tq_slot_on_report(&slot, TQ_REPORT_UP, NULL, 0, 0, 0, 0, 0);
    tq_slot_on_report(&slot, TQ_REPORT_START, "t", 1, 100, 0, 0, 0);
    assert_true(tq_slot_kill(&slot, TQ_SLOT_KILL_TIME_LIMIT));
    assert_int_equal(tq_slot_lost_code(&slot), TQ_ETIMELIMIT);
    assert_false(tq_slot_exit_clean(&slot, SIGKILL, true));
    tq_slot_move(&slot, TQ_SLOT_EMPTY);

    /* an idle child killed at shutdown: a plain LOST, not clean */
    tq_slot_move(&slot, TQ_SLOT_STARTING);
    tq_slot_on_report(&slot, TQ_REPORT_UP, NULL, 0, 0, 0, 0, 0);
    assert_true(tq_slot_kill(&slot, TQ_SLOT_KILL_SHUTDOWN));
    assert_int_equal(tq_slot_lost_code(&slot), TQ_ELOST);
    assert_false(tq_slot_exit_clean(&slot, 0, true));
    tq_slot_move(&slot, TQ_SLOT_EMPTY);

    /* an idle child that exits 0 when the host stops: clean; the same
       exit when nobody asked: not clean (it is LOST) */
    tq_slot_move(&slot, TQ_SLOT_STARTING);
    tq_slot_on_report(&slot, TQ_REPORT_UP, NULL, 0, 0, 0, 0, 0);
    assert_true(tq_slot_exit_clean(&slot, 0, true));
    assert_false(tq_slot_exit_clean(&slot, 0, false));
    assert_false(tq_slot_exit_clean(&slot, 1 << 8, true)); /* exit 1 */
}

/* ---- the keeper ---- */

/* A fake serve: counts its turns and waits for wake_fd, as the child's
   does with its socket. */
typedef struct {
    int entered; /* serve calls begun */
    int left; /* serve calls returned */
} s_serve_t;

static void
s_serve(void *arg, int wake_fd)
{
    s_serve_t *self = arg;
    __atomic_add_fetch(&self->entered, 1, __ATOMIC_SEQ_CST);
    struct pollfd pfd = {wake_fd, POLLIN, 0};
    while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
        ;
    __atomic_add_fetch(&self->left, 1, __ATOMIC_SEQ_CST);
}

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits (10 s at most) for the keeper to reach state. */
static bool
s_wait_state(tq_keeper_t *keeper, tq_keeper_state_t state)
{
    for (int i = 0; i < 10000; i++) {
        if (tq_keeper_state(keeper) == state)
            return true;
        s_sleep_ms(1);
    }
    return false;
}

/* Every legal move of the keeper table, and nothing else. */
static void
test_keeper_table(void **state)
{
    (void)state;
    static const struct {
        tq_keeper_state_t from, to;
    } legal[] = {
        {TQ_KEEPER_IDLE, TQ_KEEPER_TIMING},
        {TQ_KEEPER_IDLE, TQ_KEEPER_QUIT},
        {TQ_KEEPER_TIMING, TQ_KEEPER_IDLE},
        {TQ_KEEPER_TIMING, TQ_KEEPER_LENT},
        {TQ_KEEPER_TIMING, TQ_KEEPER_QUIT},
        {TQ_KEEPER_LENT, TQ_KEEPER_RECLAIM},
        {TQ_KEEPER_RECLAIM, TQ_KEEPER_IDLE},
    };
    size_t n = sizeof legal / sizeof legal[0];
    for (int from = 0; from < TQ_KEEPER_STATE_COUNT_; from++)
        for (int to = 0; to < TQ_KEEPER_STATE_COUNT_; to++) {
            bool want = false;
            for (size_t i = 0; i < n; i++)
                want |= legal[i].from == (tq_keeper_state_t)from &&
                    legal[i].to == (tq_keeper_state_t)to;
            if (tq_keeper_legal(from, to) != want)
                fail_msg("%s -> %s: legal is %d", tq_keeper_state_name(from),
                         tq_keeper_state_name(to), !want);
        }
    /* the socket is never handed over while the main thread holds it for
       a task that has not started, nor taken back without asking */
    assert_false(tq_keeper_legal(TQ_KEEPER_IDLE, TQ_KEEPER_LENT));
    assert_false(tq_keeper_legal(TQ_KEEPER_LENT, TQ_KEEPER_IDLE));
    assert_false(tq_keeper_legal(TQ_KEEPER_LENT, TQ_KEEPER_QUIT));
    assert_string_equal(tq_keeper_state_name(TQ_KEEPER_RECLAIM), "RECLAIM");
}

/* A long task: the keeper takes the socket (LENT, serve runs), the end of
   the task gets it back (serve returned, IDLE); the next long task lends
   it again. */
static void
test_keeper_lends_long_task(void **state)
{
    (void)state;
    s_serve_t serve = {0, 0};
    tq_keeper_t *keeper = tq_keeper_new(10, s_serve, &serve);
    assert_non_null(keeper);
    assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_IDLE);
    for (int round = 1; round <= 2; round++) {
        tq_keeper_task_begin(keeper);
        assert_true(s_wait_state(keeper, TQ_KEEPER_LENT));
        /* serve runs (or is about to) */
        tq_keeper_task_end(keeper);
        assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_IDLE);
        assert_int_equal(__atomic_load_n(&serve.left, __ATOMIC_SEQ_CST), round);
        assert_int_equal(serve.entered, round);
        assert_int_equal(tq_keeper_lends(keeper), (unsigned long)round);
    }
    tq_keeper_destroy(&keeper);
    assert_null(keeper);
    tq_keeper_destroy(&keeper); /* idempotent */
}

/* Short tasks (ended long before after_ms) never lend the socket; a
   task begun while the keeper still times the last one is timed anew. */
static void
test_keeper_short_tasks(void **state)
{
    (void)state;
    s_serve_t serve = {0, 0};
    tq_keeper_t *keeper = tq_keeper_new(60 * 1000, s_serve, &serve);
    assert_non_null(keeper);
    for (int i = 0; i < 1000; i++) {
        tq_keeper_task_begin(keeper);
        assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_TIMING);
        tq_keeper_task_end(keeper);
        assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_IDLE);
    }
    assert_int_equal(tq_keeper_lends(keeper), 0);
    assert_int_equal(serve.entered, 0);
    /* destroyed while a task is being timed: it quits */
    tq_keeper_task_begin(keeper);
    tq_keeper_destroy(&keeper);
    assert_int_equal(serve.entered, 0);
}

/* Tasks a few milliseconds apart (round trips one after another) never
   wake the keeper: it stays awake, looking every after_ms, until no task
   began for a while, so task_begin signals it at most once (the first
   task, if the keeper was already asleep). Before, every task that began
   after the keeper's last look at an idle child woke it. */
static void
test_keeper_not_woken_per_task(void **state)
{
    (void)state;
    s_serve_t serve = {0, 0};
    tq_keeper_t *keeper = tq_keeper_new(10, s_serve, &serve);
    assert_non_null(keeper);
    for (int i = 0; i < 20; i++) {
        tq_keeper_task_begin(keeper);
        tq_keeper_task_end(keeper);
        assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_IDLE);
        /* longer than after_ms: the old keeper went to sleep meanwhile */
        tq_harness_sleep_ms(15);
    }
    assert_true(tq_keeper_signals(keeper) <= 1);
    tq_keeper_destroy(&keeper);
}

/* Tasks whose end races the keeper's look (after_ms 1, tasks of 0 to
   2 ms): each ends with the socket back (IDLE, every serve begun has
   returned), and a serve runs exactly when the keeper counts a lend. The
   end of a task that was not lent takes no lock, so the keeper's move to
   LENT and that end must not both win. */
static void
test_keeper_end_races_lend(void **state)
{
    (void)state;
    s_serve_t serve = {0, 0};
    tq_keeper_t *keeper = tq_keeper_new(1, s_serve, &serve);
    assert_non_null(keeper);
    for (int i = 0; i < 600; i++) {
        tq_keeper_task_begin(keeper);
        struct timespec ts = {0, (long)(i % 9) * 250000L};
        nanosleep(&ts, NULL);
        tq_keeper_task_end(keeper);
        assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_IDLE);
        int entered = __atomic_load_n(&serve.entered, __ATOMIC_SEQ_CST);
        assert_int_equal(__atomic_load_n(&serve.left, __ATOMIC_SEQ_CST),
                         entered);
        assert_int_equal(tq_keeper_lends(keeper), (unsigned long)entered);
    }
    printf("keeper: %lu of 600 tasks lent\n", tq_keeper_lends(keeper));
    assert_true(tq_keeper_lends(keeper) > 0);
    tq_keeper_destroy(&keeper);
}

/* task_end without a task (IDLE) is a no-op, and NULL keepers (a child
   without one) are accepted everywhere. */
static void
test_keeper_idle_and_null(void **state)
{
    (void)state;
    s_serve_t serve = {0, 0};
    tq_keeper_t *keeper = tq_keeper_new(10, s_serve, &serve);
    assert_non_null(keeper);
    tq_keeper_task_end(keeper);
    assert_int_equal(tq_keeper_state(keeper), TQ_KEEPER_IDLE);
    tq_keeper_destroy(&keeper);
    tq_keeper_t *none = NULL;
    tq_keeper_task_begin(none);
    tq_keeper_task_end(none);
    tq_keeper_destroy(&none);
    tq_keeper_destroy(NULL);
}

/* ---- the board ---- */

/* A board reads back what was published; phases other than BUSY keep
   the last task; a writer stuck in mid-write gives no snapshot. */
static void
test_board_publish_read(void **state)
{
    (void)state;
    tq_board_t board, snap;
    tq_board_reset(&board);
    assert_true(tq_board_read(&board, &snap));
    assert_int_equal(snap.phase, TQ_BOARD_STARTING);
    assert_int_equal(snap.tasks, 0);
    tq_board_publish(&board, TQ_BOARD_IDLE, tq_str(NULL), 0, 0, 0);
    tq_board_publish(&board, TQ_BOARD_BUSY, tq_str("task-1"), 3, 250, 12345);
    assert_true(tq_board_read(&board, &snap));
    assert_int_equal(snap.phase, TQ_BOARD_BUSY);
    assert_int_equal(snap.tasks, 1);
    assert_string_equal(snap.id, "task-1");
    assert_int_equal(snap.attempt, 3);
    assert_int_equal(snap.time_limit_ms, 250);
    assert_int_equal(snap.started_ms, 12345);
    tq_board_publish(&board, TQ_BOARD_RECYCLING, tq_str(NULL), 0, 0, 0);
    assert_true(tq_board_read(&board, &snap));
    assert_int_equal(snap.phase, TQ_BOARD_RECYCLING);
    assert_string_equal(snap.id, "task-1");
    /* an id at the limit is kept whole and terminated */
    char id[TQ_PROTO_MAX_ID + 1];
    memset(id, 'x', TQ_PROTO_MAX_ID);
    id[TQ_PROTO_MAX_ID] = '\0';
    tq_board_publish(&board, TQ_BOARD_BUSY, tq_str(id), 1, 0, 0);
    assert_true(tq_board_read(&board, &snap));
    assert_string_equal(snap.id, id);
    /* a longer one is cut at the limit */
    char longer[TQ_PROTO_MAX_ID + 8];
    memset(longer, 'y', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    tq_board_publish(&board, TQ_BOARD_BUSY, tq_str(longer), 1, 0, 0);
    assert_true(tq_board_read(&board, &snap));
    assert_int_equal(strlen(snap.id), TQ_PROTO_MAX_ID);
    assert_memory_equal(snap.id, longer, TQ_PROTO_MAX_ID);
    /* a shorter id after a longer one is not left with its tail */
    tq_board_publish(&board, TQ_BOARD_BUSY, tq_str("b"), 2, 0, 0);
    assert_true(tq_board_read(&board, &snap));
    assert_string_equal(snap.id, "b");
    /* a writer killed in mid-write: no snapshot, the last one stays */
    board.seq |= 1;
    snap.tasks = 99;
    assert_false(tq_board_read(&board, &snap));
    assert_int_equal(snap.tasks, 99);
}

/* A child process publishes 200,000 tasks on a shared board while this
   one reads it: every snapshot is whole (its id names its task count)
   and the count never goes back. */
static void
test_board_across_processes(void **state)
{
    (void)state;
    enum { N = 200000 };
    tq_board_t *board = mmap(NULL, sizeof *board, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(board != MAP_FAILED);
    tq_board_reset(board);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char id[32];
        for (int i = 1; i <= N; i++) {
            snprintf(id, sizeof id, "t%d", i);
            tq_board_publish(board, TQ_BOARD_BUSY, tq_str(id), (uint32_t)i, 0,
                             i);
            if (i % 7 == 0)
                tq_board_publish(board, TQ_BOARD_IDLE, tq_str(NULL), 0, 0, 0);
        }
        _exit(0);
    }
    uint64_t last = 0;
    long reads = 0;
    for (;;) {
        tq_board_t snap;
        if (!tq_board_read(board, &snap))
            continue; /* the writer is busy: read again */
        reads++;
        assert_true(snap.tasks >= last);
        last = snap.tasks;
        if (snap.tasks) {
            char want[32];
            snprintf(want, sizeof want, "t%llu",
                     (unsigned long long)snap.tasks);
            assert_string_equal(snap.id, want);
            assert_int_equal(snap.attempt, snap.tasks);
            assert_int_equal(snap.started_ms, (int64_t)snap.tasks);
        }
        if (snap.tasks == N)
            break;
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("board: %ld consistent snapshots\n", reads);
    munmap(board, sizeof *board);
}

/* ---- the DONE header ---- */

/* tq_done_encode writes tq_proto_encode's bytes for a DONE: text and bin
   ids, nil, short and long errors, every integer width; and refuses
   (0) what tq_proto_encode would refuse, or a bin id without its bytes. */
static void
test_done_encode(void **state)
{
    (void)state;
    static char error[TQ_PROTO_MAX_ERROR + 2];
    memset(error, 'e', sizeof error - 1);
    const uint8_t bin[TQ_PROTO_ID_BIN] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x10,
                                          0x20, 0x30, 0x40, 0x50, 0x60, 0x70,
                                          0x80, 0x90, 0xa0, 0xb0};
    const char *ids[] = {"t", "0001027f80ff10203040506070809", NULL};
    const uint64_t uints[] = {
        0,         1,     127,   128,        255,
        256,       65535, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
        UINT64_MAX};
    const size_t error_lens[] = {0, 1, 31, 32, 255, 256, TQ_PROTO_MAX_ERROR};
    uint8_t buf[TQ_DONE_MAX];
    msgpack_sbuffer want;
    msgpack_sbuffer_init(&want);
    int compared = 0;
    char long_id[TQ_PROTO_MAX_ID + 1];
    memset(long_id, 'x', TQ_PROTO_MAX_ID);
    long_id[TQ_PROTO_MAX_ID] = '\0';
    ids[2] = long_id;
    for (int form = 0; form < 4; form++)
        for (size_t u = 0; u < sizeof uints / sizeof uints[0]; u++)
            for (int e = -1;
                 e < (int)(sizeof error_lens / sizeof error_lens[0]); e++) {
                tq_msg_t msg;
                memset(&msg, 0, offsetof(tq_msg_t, queues));
                msg.command = TQ_CMD_DONE;
                if (form < 3) {
                    msg.id = tq_str(ids[form]);
                } else {
                    msg.id = tq_str("ignored");
                    msg.id_binary = true;
                    msg.id_bytes = bin;
                }
                msg.attempt =
                    uints[u] && uints[u] <= UINT32_MAX ? (uint32_t)uints[u] : 1;
                msg.state = (uint32_t)(u % (TQ_PROTO_MAX_STATE + 1));
                msg.code = (uint32_t)(u % TQ_ERROR_COUNT_);
                msg.rss_kb = uints[u];
                if (e >= 0)
                    msg.error = (tq_str_t){error, (uint32_t)error_lens[e]};
                assert_int_equal(tq_proto_encode(&msg, &want, NULL), TQ_OK);
                size_t n = tq_done_encode(&msg, buf);
                assert_int_equal(n, want.size);
                assert_memory_equal(buf, want.data, n);
                compared++;
            }
    /* what the codec refuses, refused; and a bin id without its bytes */
    tq_msg_t msg;
    memset(&msg, 0, offsetof(tq_msg_t, queues));
    msg.command = TQ_CMD_DONE;
    msg.id = tq_str("t");
    msg.attempt = 1;
    assert_true(tq_done_encode(&msg, buf) > 0);
    msg.attempt = 0;
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msg.attempt = 1;
    msg.state = TQ_PROTO_MAX_STATE + 1;
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msg.state = 0;
    msg.code = TQ_ERROR_COUNT_;
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msg.code = 0;
    msg.error = (tq_str_t){error, TQ_PROTO_MAX_ERROR + 1};
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msg.error = (tq_str_t){NULL, 0};
    msg.id = tq_str("bad id");
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msg.id = tq_str("0001027f80ff102030405060708090a0b0");
    msg.id_binary = true; /* no id_bytes: the codec parses the text */
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msg.command = TQ_CMD_RETURNED;
    msg.id_binary = false;
    assert_int_equal(tq_done_encode(&msg, buf), 0);
    msgpack_sbuffer_destroy(&want);
    printf("done: %d headers byte for byte\n", compared);
}

/* DONEs held for a BATCH wait only behind a task that ran here before,
   shorter than --batch-short-us (0: never), without a hard time limit
   under TQ_DONE_HOLD_LIMIT_MS, and with one only if a keeper will send
   them while it runs. */
static void
test_done_may_hold(void **state)
{
    (void)state;
    assert_true(tq_done_may_hold(0, 100, 0, true));
    assert_true(tq_done_may_hold(99, 100, 0, true));
    assert_true(tq_done_may_hold(99, 100, 0, false));
    /* never ran here, ran as long as the bound or longer, or no bound */
    assert_false(tq_done_may_hold(-1, 100, 0, true));
    assert_false(tq_done_may_hold(100, 100, 0, true));
    assert_false(tq_done_may_hold(5000000, 100, 0, true));
    assert_false(tq_done_may_hold(0, 0, 0, true));
    /* a hard time limit: long enough for the keeper, and a keeper */
    assert_true(tq_done_may_hold(10, 100, TQ_DONE_HOLD_LIMIT_MS, true));
    assert_true(tq_done_may_hold(10, 100, UINT32_MAX, true));
    assert_false(tq_done_may_hold(10, 100, TQ_DONE_HOLD_LIMIT_MS - 1, true));
    assert_false(tq_done_may_hold(10, 100, 1, true));
    assert_false(tq_done_may_hold(10, 100, TQ_DONE_HOLD_LIMIT_MS, false));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slot_table),
        cmocka_unit_test(test_slot_reports),
        cmocka_unit_test(test_slot_cancel),
        cmocka_unit_test(test_slot_kills),
        cmocka_unit_test(test_keeper_table),
        cmocka_unit_test(test_keeper_lends_long_task),
        cmocka_unit_test(test_keeper_short_tasks),
        cmocka_unit_test(test_keeper_not_woken_per_task),
        cmocka_unit_test(test_keeper_end_races_lend),
        cmocka_unit_test(test_keeper_idle_and_null),
        cmocka_unit_test(test_board_publish_read),
        cmocka_unit_test(test_board_across_processes),
        cmocka_unit_test(test_done_encode),
        cmocka_unit_test(test_done_may_hold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
