/* tq_footprint.h - private to tq-worker: what a worker process (a child,
   and the supervisor whose memory later children inherit) spends on its
   ZeroMQ context and on malloc, kept small (issue 12;
   bench/child_footprint.sh measures it). */
#ifndef TQ_FOOTPRINT_H
#define TQ_FOOTPRINT_H

/* The stack of a context's threads (I/O and reaper), instead of glibc's
   default, RLIMIT_STACK (8 MiB of address space each, committed): they
   poll, frame, run CURVE and resolve host names, in tens of KiB. */
#define TQ_FOOTPRINT_ZMQ_STACK (512 * 1024)

/* One malloc arena for the process: its threads (ZeroMQ's, the keeper)
   allocate in the main arena instead of each mapping one of its own (64
   MiB of address space, its first pages written). Call before any thread
   exists. MALLOC_ARENA_MAX or a glibc.malloc.arena_max tunable set by the
   user wins: then nothing changes. */
void tq_footprint_one_arena(void);

/* A ZeroMQ context whose threads are started now, on
   TQ_FOOTPRINT_ZMQ_STACK stacks; threads started later (a task's) get
   glibc's default stack as before. max_sockets: the context's socket
   limit (libzmq's default, 1,023, writes 12 KiB of slot tables), 0 keeps
   the default. Returns NULL if the context could not be made (errno). */
void *tq_footprint_context_new(int max_sockets);

#endif
