/* tq_curve.h - CurveZMQ and message-size limits for tq sockets: loading
   keys and certificates (czmq zcert), client and server socket setup. The
   broker's ZAP handler, which decides who gets in, is broker/tq_auth.h. */
#ifndef TQ_CURVE_H
#define TQ_CURVE_H

#include <czmq.h>
#include <stddef.h>
#include <stdint.h>

/* Environment read by tq_curve_client_setup when an argument is NULL. */
#define TQ_CURVE_ENV_SERVER_KEY "TQ_CURVE_SERVER_KEY" /* z85 or cert file */
#define TQ_CURVE_ENV_CERT "TQ_CURVE_CERT"             /* own cert file */
#define TQ_CURVE_ENV_MAX_MESSAGE "TQ_MAX_MESSAGE"     /* bytes */

/* Default ZMQ_MAXMSGSIZE on every tq socket: a frame above it makes libzmq
   drop the connection before the frame is allocated. */
#define TQ_CURVE_MAX_MESSAGE ((int64_t)64 << 20)

/* ZAP domains of the broker's two endpoints: the ZAP handler checks a key
   against the allow-list of the domain the connection came in on. */
#define TQ_CURVE_DOMAIN_CLIENTS "tq.clients"
#define TQ_CURVE_DOMAIN_WORKERS "tq.workers"

/* Z85 text of a CURVE key: 40 characters and a NUL. */
#define TQ_CURVE_KEY_TEXT 41

/* Reads a public key from spec: 40 characters of Z85, or a certificate
   file (public or secret). Writes its Z85 text into key. Returns 0, or -1
   with a message in error (errlen bytes). */
int tq_curve_public_key(const char *spec, char key[TQ_CURVE_KEY_TEXT],
                        char *error, size_t errlen);

/* Loads a certificate that must hold a secret key: path, or path_secret
   beside it (the pair `tq keygen` writes). Returns it (the caller's), or
   NULL with a message in error. */
zcert_t *tq_curve_load_secret(const char *path, char *error, size_t errlen);

/* The ZMQ_MAXMSGSIZE for client and worker sockets: $TQ_MAX_MESSAGE if it
   is a positive number, else TQ_CURVE_MAX_MESSAGE. */
int64_t tq_curve_max_message(void);

/* Prepares socket (a raw libzmq socket, not yet connected) to talk to the
   broker: sets ZMQ_MAXMSGSIZE and, when a server key is given, makes it a
   CURVE client with the certificate's keys. server_key: z85 or a file, NULL
   for $TQ_CURVE_SERVER_KEY; cert: a certificate file, NULL for
   $TQ_CURVE_CERT. Neither set: plain TCP. Only one set, or one that does
   not load: -1 with a message in error (never falls back to plain). */
int tq_curve_client_setup(void *socket, const char *server_key,
                          const char *cert, char *error, size_t errlen);

/* Makes socket (not yet bound) a CURVE server with cert's secret key whose
   connections the ZAP handler checks in ZAP domain `domain`; the domain is
   enforced, so a connection is refused when no ZAP handler answers.
   Returns 0 or -1 with a message in error. cert is borrowed. */
int tq_curve_server_setup(void *socket, zcert_t *cert, const char *domain,
                          char *error, size_t errlen);

/* Writes a new certificate pair: path (public key only, goes into the
   broker's allow-list directories or to clients) and path_secret (both
   keys, stays private, mode 0600). name goes into its metadata. Writes
   the public key's Z85 into key. Returns 0 or -1 with error. */
int tq_curve_keygen(const char *path, const char *name,
                    char key[TQ_CURVE_KEY_TEXT], char *error, size_t errlen);

#endif
