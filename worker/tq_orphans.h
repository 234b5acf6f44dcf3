/* tq_orphans.h - private to tq-worker: finding and killing the processes
   that a subreaper (PR_SET_CHILD_SUBREAPER) inherited from its children's
   tasks, and those a dying child leaves. */
#ifndef TQ_ORPHANS_H
#define TQ_ORPHANS_H

#include <stddef.h>
#include <sys/types.h>

/* SIGKILLs every live (not zombie) child of parent that is not in keep
   (n pids), and the process group each one leads. Reads the children
   lists of parent's threads where the kernel has them (an orphan goes to
   any thread of its subreaper), else all of /proc. The killed processes
   stay parent's to reap. Returns how many it killed. */
int tq_orphans_kill(pid_t parent, const pid_t *keep, size_t n);

/* SIGKILLs every live descendant of the calling process, found in one
   snapshot of /proc, and the process groups they lead: what a child's
   tasks started, also what left the child's process group (setsid).
   Async-signal-safe (system calls only, static buffers): for the
   parent-death signal handler of a child. Returns how many it killed. */
int tq_orphans_kill_descendants(void);

#endif
