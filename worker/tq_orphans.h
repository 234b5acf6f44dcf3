/* tq_orphans.h - private to tq-worker: finding and killing the processes
   that a subreaper (PR_SET_CHILD_SUBREAPER) inherited from its children's
   tasks. */
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

#endif
