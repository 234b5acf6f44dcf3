/* tq_lease.c - a broker on a PostgreSQL store is active or standby
   (PROTOCOL.md section 12). The active one holds the store's lease: it
   renews it every lease_renew_ms for lease_ttl_ms, and every commit checks
   the lease's epoch inside its transaction (the fencing token, in
   tq_store_pg.c). A standby answers every request ERROR TQ_ESTANDBY and
   tries to take the lease every lease_retry_ms; when it does, the broker
   recovers from the store as a restart would.

   Timing. The active renews before it handles or dispatches anything once
   lease_renew_ms passed since the last renewal it sent, so a broker that
   was stopped (SIGSTOP, a stall) longer than that asks the database first,
   and a broker that cannot renew stops at once: after a stall it never
   acts on a lease that may have lapsed. The lease lapses lease_ttl_ms
   after the database ran the last renewal; the time that counts is the
   database's, so brokers' clocks may differ. */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "tq_broker_core.h"
#include "tq_store.h"

#define WARN_EVERY_MS 30000 /* a standby says why it waits this often */

/* This process's name as lease owner: host:pid:random, made once. A
   broker made again in the same process (after a demotion) is the same
   owner, so it may take back a lease that nobody else took. */
static const char *
s_owner(const tq_broker_t *self)
{
    static char owner[TQ_PROTO_MAX_NAME + 32];
    if (!owner[0]) {
        uint32_t nonce = 0;
        if (getrandom(&nonce, sizeof nonce, GRND_NONBLOCK) != sizeof nonce)
            nonce = (uint32_t)tqb_wall_ms() ^ (uint32_t)getpid() << 16;
        snprintf(owner, sizeof owner, "%s:%ld:%08x", self->hostname,
                 (long)getpid(), nonce);
    }
    return owner;
}

static uint32_t
s_ttl(const tq_broker_t *self)
{
    return self->config.lease_ttl_ms ? self->config.lease_ttl_ms
                                     : TQ_BROKER_LEASE_TTL_MS;
}

static uint32_t
s_renew(const tq_broker_t *self)
{
    return self->config.lease_renew_ms ? self->config.lease_renew_ms
                                       : TQ_BROKER_LEASE_RENEW_MS;
}

static uint32_t
s_retry(const tq_broker_t *self)
{
    return self->config.lease_retry_ms ? self->config.lease_retry_ms
                                       : TQ_BROKER_LEASE_RETRY_MS;
}

/* A standby logs why it waits when the reason changes, and every
   WARN_EVERY_MS while it stays. */
static void
s_standby_says(tq_broker_t *self, const char *why)
{
    lease_t *lease = &self->lease;
    int64_t now = tqb_now();
    bool same = strcmp(lease->holder, why) == 0;
    snprintf(lease->holder, sizeof lease->holder, "%s", why);
    if (same && now - lease->warned_ms < WARN_EVERY_MS)
        return;
    lease->warned_ms = now;
    tq_log_info("standby: %s; trying every %u ms", why, s_retry(self));
}

/* Tries to take the lease: TQB_LEASE_WON or TQB_LEASE_STANDBY. A store
   that failed is closed, to be opened again at the next attempt. */
static tqb_lease_t
s_acquire(tq_broker_t *self)
{
    lease_t *lease = &self->lease;
    int64_t sent = tqb_now();
    uint64_t epoch = 0;
    int rc =
        tq_store_lease_acquire(self->store, s_owner(self), s_ttl(self), &epoch);
    if (rc == TQ_OK) {
        lease->active = true;
        lease->epoch = epoch;
        lease->renewed_ms = sent;
        lease->next_ms = sent + s_renew(self);
        lease->holder[0] = '\0';
        /* session numbers never given before by this process, even by a
           broker object it had before a demotion (PROTOCOL.md 10) */
        self->session_serial = epoch << 32;
        tq_log_info("active: holding the lease of %s (epoch %llu, owner "
                    "%s, renewed every %u ms for %u ms)",
                    self->store_name, (unsigned long long)epoch, s_owner(self),
                    s_renew(self), s_ttl(self));
        return TQB_LEASE_WON;
    }
    lease->next_ms = tqb_now() + s_retry(self);
    const char *text = tq_store_error(self->store);
    if (rc == TQ_EBUSY) {
        /* "the lease is held by OWNER", without the time left: logged
           again only when the holder changes */
        const char *held = strstr(text, "the lease is held by");
        char who[sizeof lease->holder];
        snprintf(who, sizeof who, "%s", held ? held : text);
        char *left = strstr(who, " for another");
        if (left)
            *left = '\0';
        s_standby_says(self, who);
        return TQB_LEASE_STANDBY;
    }
    char why[sizeof lease->holder];
    snprintf(why, sizeof why, "cannot take the lease: %.170s", text);
    s_standby_says(self, why);
    tq_store_destroy(&self->store);
    return TQB_LEASE_STANDBY;
}

int
tqb_lease_start(tq_broker_t *self, char *error, size_t errlen)
{
    lease_t *lease = &self->lease;
    lease->enabled = true;
    lease->active = false;
    lease->next_ms = tqb_now();
    if (!self->store)
        return TQB_LEASE_STANDBY; /* standby_start: opened at an attempt */
    tqb_lease_t got = s_acquire(self);
    if (got == TQB_LEASE_STANDBY && !self->store &&
        !self->config.standby_start) {
        /* at the first start, a store that fails is refused loudly */
        snprintf(error, errlen, "%s", lease->holder);
        return -1;
    }
    return got;
}

tqb_lease_t
tqb_lease_tick(tq_broker_t *self)
{
    lease_t *lease = &self->lease;
    if (!lease->enabled)
        return TQB_LEASE_HELD;
    int64_t now = tqb_now();
    if (lease->active) {
        if (now - lease->renewed_ms < s_renew(self))
            return TQB_LEASE_HELD;
        /* the renewal runs on the store's connection, which the commit
           thread uses too: the store's lock makes it wait for a commit
           in flight (tq_store_lock) */
        int rc = tq_store_lease_renew(self->store, s_ttl(self));
        if (rc == TQ_OK) {
            if (now - lease->renewed_ms >= s_ttl(self))
                tq_log_warning("the loop stalled %lld ms, past the lease's "
                               "%u ms; renewed it first (nobody had taken "
                               "it)",
                               (long long)(now - lease->renewed_ms),
                               s_ttl(self));
            lease->renewed_ms = now;
            lease->next_ms = now + s_renew(self);
            return TQB_LEASE_HELD;
        }
        tq_log_error("lost the lease (epoch %llu) after %lld ms: %s; "
                     "acknowledging and dispatching nothing more, dropping "
                     "the in-memory state: standby",
                     (unsigned long long)lease->epoch,
                     (long long)(now - lease->renewed_ms),
                     tq_store_error(self->store));
        lease->active = false;
        /* nothing more is committed or acknowledged, not even by the
           flush of tq_broker_destroy */
        self->commit_rc = TQ_EBUSY;
        return TQB_LEASE_LOST;
    }
    if (now < lease->next_ms)
        return TQB_LEASE_STANDBY;
    if (!self->store) {
        char error[512];
        if (tqb_store_open(self, error, sizeof error) != 0) {
            char why[sizeof lease->holder];
            snprintf(why, sizeof why, "cannot open the store: %.170s", error);
            s_standby_says(self, why);
            lease->next_ms = now + s_retry(self);
            return TQB_LEASE_STANDBY;
        }
    }
    return s_acquire(self);
}

void
tqb_lease_release(tq_broker_t *self)
{
    lease_t *lease = &self->lease;
    if (!lease->active || !self->store)
        return;
    lease->active = false;
    /* renewed for 0 ms: lapsed now, with its epoch, so a commit of ours
       that could still come is fenced once a standby takes it */
    if (tq_store_lease_renew(self->store, 0) == TQ_OK)
        tq_log_info("released the lease (epoch %llu): a standby may take "
                    "it now",
                    (unsigned long long)lease->epoch);
}

int64_t
tqb_lease_deadline(const tq_broker_t *self)
{
    return self->lease.enabled ? self->lease.next_ms : INT64_MAX;
}

void
tqb_lease_refuse(tq_broker_t *self, void *socket)
{
    /* answers, not requests: nothing to refuse */
    if (self->in.command == TQ_CMD_PONG || self->in.command == TQ_CMD_ERROR)
        return;
    char text[sizeof self->lease.holder + 64];
    snprintf(text, sizeof text, "this broker is a standby (%s)",
             self->lease.holder[0] ? self->lease.holder
                                   : "another broker holds the lease");
    tqb_reply_error(self, socket, TQ_ESTANDBY, text, self->in.id);
}

int
tqb_lease_status_entries(const tq_broker_t *self)
{
    return self->lease.enabled ? 2 : 0;
}

void
tqb_lease_pack_status(const tq_broker_t *self, msgpack_packer *pk)
{
    if (!self->lease.enabled)
        return;
    tqb_pack_str(pk, "role");
    tqb_pack_str(pk, self->lease.active ? "active" : "standby");
    tqb_pack_str(pk, "lease");
    msgpack_pack_map(pk, 4);
    tqb_pack_uint_kv(pk, "epoch", self->lease.epoch);
    tqb_pack_str(pk, "owner");
    tqb_pack_str(pk, s_owner(self));
    tqb_pack_uint_kv(pk, "ttl_ms", s_ttl(self));
    tqb_pack_uint_kv(pk, "renew_ms", s_renew(self));
}
