/* tq_netns.h - test hosts in network namespaces: N namespaces joined by
   veth pairs to a bridge in a switch namespace, private addresses that
   live only inside them, links that can be cut, healed and given delay
   and loss (tc netem), processes started inside a host, and a teardown
   that kills what it started and deletes every namespace it made, also at
   exit and from a crashed earlier run. Needs CAP_NET_ADMIN (root). */
#ifndef TQ_NETNS_H
#define TQ_NETNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tq_harness.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most hosts one set holds. */
#define TQ_NETNS_MAX_HOSTS 8

/* What tests print when they cannot run here. */
#define TQ_NETNS_SKIP_TEXT "skipped: needs root for network namespaces"

/* A set of hosts. */
typedef struct tq_netns_t tq_netns_t;

/* True if this process can make network namespaces (CAP_NET_ADMIN and
   iproute2's ip and tc found); else false with the reason in why. */
bool tq_netns_available(char *why, size_t size);

/* Makes hosts namespaces named tqt<pid>h0.., joined by a bridge in
   tqt<pid>sw, host i at 10.211.<pid % 250>.<i + 1>/24 on its eth0, lo up
   in each. First deletes namespaces named tqt<N>... whose process N is
   gone (a crashed earlier run). Returns NULL on failure (what was made is
   deleted again). */
tq_netns_t *tq_netns_new(int hosts);

/* Kills every process started in the set (SIGTERM, then SIGKILL after a
   bounded wait, reaped), returns this thread to the namespace it came
   from, deletes every namespace of the set, frees it. NULL-safe,
   idempotent. */
void tq_netns_destroy(tq_netns_t **self_p);

/* Namespace name and address of host i (borrowed). */
const char *tq_netns_name(tq_netns_t *self, int host);
const char *tq_netns_addr(tq_netns_t *self, int host);

/* A directory of host i's own (under a temp dir of the set): the working
   directory of the processes started there. Borrowed. */
const char *tq_netns_dir(tq_netns_t *self, int host);

/* Moves the calling thread (and every thread and libzmq context it makes
   afterwards) into host i's network namespace. Call before the process
   makes its first ZeroMQ socket. Returns 0 or -1. */
int tq_netns_enter(tq_netns_t *self, int host);

/* Cuts (up = false) or heals host i's link: its port on the bridge goes
   down or up; packets in both directions vanish, no connection is reset.
   Returns 0 or -1. */
int tq_netns_link(tq_netns_t *self, int host, bool up);

/* Gives host i's link delay_ms of delay and loss_pct % loss in each
   direction (tc netem on both ends); 0 and 0 remove it. Returns 0 or
   -1. */
int tq_netns_netem(tq_netns_t *self, int host, int delay_ms, double loss_pct);

/* Packets host i's netem stand-in (NFQUEUE, used where the kernel has no
   sch_netem) has delayed and dropped so far. Returns 0, or -1 when tc
   netem does the work (or nothing does). */
int tq_netns_netem_counts(tq_netns_t *self, int host, uint64_t *delayed,
                          uint64_t *dropped);

/* Starts a tq-broker in host i listening on its address, ports chosen by
   the broker, with extra arguments (may be NULL). Returns 0 or -1. */
int tq_netns_broker_start(tq_netns_t *self, int host,
                          tq_harness_broker_t *broker,
                          const char *const extra[]);

/* Starts a tq-worker host in host i (reported host name: the namespace
   name, working directory tq_netns_dir) on endpoint with children and
   extra arguments (may be NULL). Returns the supervisor's pid or -1. */
pid_t tq_netns_worker_start(tq_netns_t *self, int host, const char *endpoint,
                            int children, const char *const extra[]);

/* Stops one process started by tq_netns_worker_start; returns its wait
   status or -1. */
int tq_netns_stop(tq_netns_t *self, pid_t pid);

#ifdef __cplusplus
}
#endif
#endif
