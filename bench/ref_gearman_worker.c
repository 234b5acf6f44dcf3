/* ref_gearman_worker.c - ref-gearman-worker: a Gearman worker for tq-bench,
   one process serving the function "echo" (its workload back, so 8 bytes
   stand for a no-op task and 64 KiB for W3) on the gearmand at 127.0.0.1
   PORT. Prints "ready" once the server has its registration, then works
   until killed. */
#include <libgearman/gearman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *
s_echo(gearman_job_st *job, void *context, size_t *result_size,
       gearman_return_t *ret_ptr)
{
    (void)context;
    size_t size = gearman_job_workload_size(job);
    void *copy = malloc(size ? size : 1);
    if (!copy) {
        *ret_ptr = GEARMAN_MEMORY_ALLOCATION_FAILURE;
        return NULL;
    }
    memcpy(copy, gearman_job_workload(job), size);
    *result_size = size;
    *ret_ptr = GEARMAN_SUCCESS;
    return copy; /* libgearman frees it */
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ref-gearman-worker PORT\n");
        return 2;
    }
    gearman_worker_st *worker = gearman_worker_create(NULL);
    if (!worker ||
        gearman_worker_add_server(
            worker, "127.0.0.1", (in_port_t)atoi(argv[1])) != GEARMAN_SUCCESS ||
        gearman_worker_add_function(worker, "echo", 0, s_echo, NULL) !=
            GEARMAN_SUCCESS) {
        fprintf(stderr, "ref-gearman-worker: %s\n",
                worker ? gearman_worker_error(worker) : "create failed");
        return 1;
    }
    /* the echo travels behind CAN_DO on the same connection */
    if (gearman_worker_echo(worker, "x", 1) != GEARMAN_SUCCESS) {
        fprintf(stderr, "ref-gearman-worker: %s\n",
                gearman_worker_error(worker));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    while (1) {
        gearman_return_t rc = gearman_worker_work(worker);
        if (rc != GEARMAN_SUCCESS) {
            fprintf(stderr, "ref-gearman-worker: %s\n",
                    gearman_worker_error(worker));
            return 1;
        }
    }
}
