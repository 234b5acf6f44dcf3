/* tq_auth.h - the broker's ZAP handler: one CURVE allow-list (a directory
   of zcert public certificates) per endpoint, so a client's key cannot
   register as a worker; lists reload without a restart. */
#ifndef TQ_AUTH_H
#define TQ_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How often a list is read again even when its directory looks unchanged
   (a certificate edited in place does not touch the directory's mtime). */
#define TQ_AUTH_RESCAN_MS 5000

typedef struct tq_auth_t tq_auth_t;

/* Counters, process-wide (every handler of this process adds to them). */
typedef struct {
    uint64_t allowed; /* handshakes let in */
    uint64_t denied_clients; /* keys refused on the clients endpoint */
    uint64_t denied_workers; /* keys refused on the workers endpoint */
    uint64_t denied_other; /* unknown domain or mechanism */
    uint64_t reloads; /* allow-list (re)loads */
} tq_auth_stats_t;

/* Starts a ZAP handler thread on ctx (a raw libzmq context; the handler
   binds inproc://zeromq.zap.01 in it, once per context) that lets a CURVE
   key in on domain TQ_CURVE_DOMAIN_CLIENTS only if client_keys holds its
   certificate, and on TQ_CURVE_DOMAIN_WORKERS only if worker_keys does;
   everything else is refused. admin_keys (NULL: none) holds operator
   keys, let in on the clients endpoint too. Every connection let in gets
   the user id "client:KEY", "admin:KEY" or "worker:KEY" (KEY: the Z85
   public key), which the broker reads from each message (tenants). Call
   before binding the CURVE sockets. Returns NULL with a message in error
   on failure. */
tq_auth_t *tq_auth_new(void *ctx, const char *client_keys,
                       const char *worker_keys, const char *admin_keys,
                       char *error, size_t errlen);

/* Makes every handler of the process read its lists again at the next
   handshake. Async-signal-safe: tq-broker calls it on SIGHUP. */
void tq_auth_reload(void);

/* Copies the process-wide counters into stats. Thread-safe. */
void tq_auth_stats(tq_auth_stats_t *stats);

/* Stops the handler thread and closes its socket; NULL-safe, nulls
   *self_p. Close the CURVE sockets first: with the handler gone they let
   nobody in (the domain is enforced), but a context cannot terminate while
   the handler's socket is open. */
void tq_auth_destroy(tq_auth_t **self_p);

#endif
