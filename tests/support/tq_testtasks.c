/* tq_testtasks.c - a task module for the durability tests: test.record
   appends the task's index to a file on each execution, so a test can
   count executions beyond one per task across broker kills; test.gate
   runs until the test lets it end; test.crash kills its child when told
   to, else returns at once. Loaded with
   `tq-worker --module libtesttasks.so`. */
#include <tq/tq.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Signature the worker looks up with dlsym. */
int tq_module_init(tq_registry_t *registry);

/* test.record INDEX PATH [MS] -> INDEX, after appending "INDEX\n" to PATH
   and sleeping MS milliseconds. One write(2) with O_APPEND, so lines of
   concurrent children never mix. */
static int
s_record(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    uint32_t n = args->via.array.size;
    if (n < 2 || n > 3 ||
        args->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        args->via.array.ptr[1].type != MSGPACK_OBJECT_STR ||
        args->via.array.ptr[1].via.str.size >= 4096 ||
        (n == 3 &&
         (args->via.array.ptr[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
          args->via.array.ptr[2].via.u64 > 60000)))
        return tq_task_fail(task, "test.record wants INDEX PATH [MS]");
    uint64_t index = args->via.array.ptr[0].via.u64;
    char path[4096];
    memcpy(path, args->via.array.ptr[1].via.str.ptr,
           args->via.array.ptr[1].via.str.size);
    path[args->via.array.ptr[1].via.str.size] = '\0';
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return tq_task_fail(task, "test.record: cannot open %s", path);
    char line[32];
    int len = snprintf(line, sizeof line, "%llu\n", (unsigned long long)index);
    ssize_t written = write(fd, line, (size_t)len);
    close(fd);
    if (written != len)
        return tq_task_fail(task, "test.record: cannot write %s", path);
    if (n == 3) {
        uint64_t ms = args->via.array.ptr[2].via.u64;
        struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
    }
    return msgpack_pack_uint64(out, index);
}

/* test.gate STARTED GATE -> true: creates the file STARTED, then runs
   until the file GATE exists (60 s at most, then it fails), so a test
   acts while the task runs and decides when it ends. */
static int
s_gate(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    char path[2][4096];
    if (args->via.array.size != 2)
        return tq_task_fail(task, "test.gate wants STARTED GATE");
    for (int i = 0; i < 2; i++) {
        const msgpack_object *a = &args->via.array.ptr[i];
        if (a->type != MSGPACK_OBJECT_STR || a->via.str.size >= 4096)
            return tq_task_fail(task, "test.gate wants STARTED GATE");
        memcpy(path[i], a->via.str.ptr, a->via.str.size);
        path[i][a->via.str.size] = '\0';
    }
    int fd = open(path[0], O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return tq_task_fail(task, "test.gate: cannot create %s", path[0]);
    close(fd);
    for (int i = 0; access(path[1], F_OK) != 0; i++) {
        if (i == 6000)
            return tq_task_fail(task, "test.gate: %s never came", path[1]);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return msgpack_pack_true(out);
}

/* test.crash DIE -> nil: when DIE is true the child running it dies at
   once (SIGKILL: no DONE, nothing flushed), else it returns at once. */
static int
s_crash(tq_task_t *task, const msgpack_object *args, msgpack_packer *out)
{
    if (args->via.array.size != 1 ||
        args->via.array.ptr[0].type != MSGPACK_OBJECT_BOOLEAN)
        return tq_task_fail(task, "test.crash wants DIE (a bool)");
    if (args->via.array.ptr[0].via.boolean)
        kill(getpid(), SIGKILL);
    return msgpack_pack_nil(out);
}

int
tq_module_init(tq_registry_t *registry)
{
    int rc = tq_registry_add(registry, "test.record", s_record, NULL);
    if (!rc)
        rc = tq_registry_add(registry, "test.gate", s_gate, NULL);
    return rc ? rc : tq_registry_add(registry, "test.crash", s_crash, NULL);
}
