/* tq_pg.h - a private PostgreSQL cluster for one test: initdb and postgres
   (Debian's postgresql package) run as an unprivileged user (PostgreSQL
   refuses root) in a fresh directory, on a free loopback port and a
   private socket directory, stopped by pid. */
#ifndef TQ_PG_H
#define TQ_PG_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct tq_pg_t tq_pg_t;

/* Makes and starts a cluster and waits (bounded) until it accepts
   connections. NULL on failure, with the reason printed to stderr. */
tq_pg_t *tq_pg_new(void);

/* tq_pg_new listening on addr (an IPv4 address of this thread's network
   namespace, where the server then runs) instead of 127.0.0.1. */
tq_pg_t *tq_pg_new_on(const char *addr);

/* The cluster's URL, postgresql://tq@ADDR:PORT/postgres (borrowed). */
const char *tq_pg_url(const tq_pg_t *self);

/* The server's pid, 0 while stopped. */
pid_t tq_pg_pid(const tq_pg_t *self);

/* Stops the server (fast shutdown, SIGKILL after a bounded wait) and
   keeps its files. Returns 0, or -1 if it was not running. */
int tq_pg_stop(tq_pg_t *self);

/* Starts the stopped server again on the same files and port; 0 or -1. */
int tq_pg_start(tq_pg_t *self);

/* Stops the server and removes its directory; NULL-safe, nulls *self_p. */
void tq_pg_destroy(tq_pg_t **self_p);

/* True once no broker holds a live lease on the tq store in the cluster
   (none was taken, or it lapsed: PROTOCOL.md section 12). A broker
   started on the store before then is a standby. */
bool tq_pg_lease_lapsed(const tq_pg_t *self);

/* Waits (timeout_ms at most) until tq_pg_lease_lapsed; 0 or -1. */
int tq_pg_wait_lease_lapsed(const tq_pg_t *self, int timeout_ms);

/* A loopback URL on which nothing listens (a port just closed). */
void tq_pg_unreachable_url(char *url, size_t size);

#endif
