/* tq_curve.c - CurveZMQ keys and socket setup shared by client, worker and
   broker; ZMQ_MAXMSGSIZE on every socket. */
#include "tq_curve.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

/* A draft option in libzmq 4.3 (zmq.h hides it without
   ZMQ_BUILD_DRAFT_API) that the library accepts all the same: without it
   a CURVE server whose ZAP handler is gone lets every key in. */
#ifndef ZMQ_ZAP_ENFORCE_DOMAIN
#define ZMQ_ZAP_ENFORCE_DOMAIN 93
#endif

/* Z85 of 32 zero bytes: what zcert reports for a missing secret key. */
#define S_ZERO_KEY "0000000000000000000000000000000000000000"

static bool
s_is_z85_key(const char *text)
{
    uint8_t bin[32];
    return strlen(text) == 40 && zmq_z85_decode(bin, text) != NULL;
}

int
tq_curve_public_key(const char *spec, char key[TQ_CURVE_KEY_TEXT],
                    char *error, size_t errlen)
{
    if (!spec || !*spec) {
        snprintf(error, errlen, "no public key given");
        return -1;
    }
    if (s_is_z85_key(spec)) {
        memcpy(key, spec, TQ_CURVE_KEY_TEXT);
        return 0;
    }
    /* zcert_load happily makes an empty certificate of a missing file */
    struct stat st;
    if (stat(spec, &st) != 0) {
        snprintf(error, errlen, "public key %s: not 40 characters of Z85 "
                 "and not a readable file: %s", spec, strerror(errno));
        return -1;
    }
    zcert_t *cert = zcert_load(spec);
    if (!cert || streq(zcert_public_txt(cert), S_ZERO_KEY)) {
        snprintf(error, errlen, "%s: not a CURVE certificate", spec);
        zcert_destroy(&cert);
        return -1;
    }
    snprintf(key, TQ_CURVE_KEY_TEXT, "%s", zcert_public_txt(cert));
    zcert_destroy(&cert);
    return 0;
}

zcert_t *
tq_curve_load_secret(const char *path, char *error, size_t errlen)
{
    if (!path || !*path) {
        snprintf(error, errlen, "no certificate given");
        return NULL;
    }
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", path);
    struct stat st;
    if (stat(path, &st) != 0 && stat(secret, &st) != 0) {
        snprintf(error, errlen, "certificate %s: %s", path, strerror(errno));
        return NULL;
    }
    zcert_t *cert = zcert_load(path);
    if (!cert || streq(zcert_public_txt(cert), S_ZERO_KEY) ||
        streq(zcert_secret_txt(cert), S_ZERO_KEY)) {
        snprintf(error, errlen,
                 "%s: not a CURVE certificate with a secret key (tq keygen "
                 "writes NAME.cert and NAME.cert_secret; give either)",
                 path);
        zcert_destroy(&cert);
        return NULL;
    }
    return cert;
}

int64_t
tq_curve_max_message(void)
{
    const char *text = getenv(TQ_CURVE_ENV_MAX_MESSAGE);
    if (text && *text) {
        char *end = NULL;
        errno = 0;
        long long value = strtoll(text, &end, 10);
        if (!errno && end != text && !*end && value > 0)
            return (int64_t)value;
    }
    return TQ_CURVE_MAX_MESSAGE;
}

int
tq_curve_client_setup(void *socket, const char *server_key, const char *cert,
                      char *error, size_t errlen)
{
    int64_t max = tq_curve_max_message();
    zmq_setsockopt(socket, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (!server_key)
        server_key = getenv(TQ_CURVE_ENV_SERVER_KEY);
    if (!cert)
        cert = getenv(TQ_CURVE_ENV_CERT);
    bool have_key = server_key && *server_key, have_cert = cert && *cert;
    if (!have_key && !have_cert)
        return 0;
    /* half a configuration is a mistake, not a wish for plain text */
    if (!have_key || !have_cert) {
        snprintf(error, errlen,
                 "CURVE needs both the broker's public key (" 
                 TQ_CURVE_ENV_SERVER_KEY ") and our certificate ("
                 TQ_CURVE_ENV_CERT ")");
        return -1;
    }
    char server[TQ_CURVE_KEY_TEXT];
    if (tq_curve_public_key(server_key, server, error, errlen) != 0)
        return -1;
    zcert_t *own = tq_curve_load_secret(cert, error, errlen);
    if (!own)
        return -1;
    int rc = zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, server, 40);
    if (rc == 0)
        rc = zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY,
                            zcert_public_txt(own), 40);
    if (rc == 0)
        rc = zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY,
                            zcert_secret_txt(own), 40);
    zcert_destroy(&own);
    if (rc != 0) {
        snprintf(error, errlen, "cannot set CURVE keys: %s",
                 zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int
tq_curve_server_setup(void *socket, zcert_t *cert, const char *domain,
                      char *error, size_t errlen)
{
    int one = 1;
    if (zmq_setsockopt(socket, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, zcert_secret_txt(cert),
                       40) != 0 ||
        zmq_setsockopt(socket, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) !=
            0) {
        snprintf(error, errlen, "cannot make a CURVE server: %s",
                 zmq_strerror(errno));
        return -1;
    }
    if (zmq_setsockopt(socket, ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof one) !=
        0) {
        snprintf(error, errlen,
                 "this libzmq cannot enforce ZAP (ZMQ_ZAP_ENFORCE_DOMAIN: "
                 "%s): refusing to run CURVE that could fail open",
                 zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int
tq_curve_keygen(const char *path, const char *name,
                char key[TQ_CURVE_KEY_TEXT], char *error, size_t errlen)
{
    char secret[4096];
    snprintf(secret, sizeof secret, "%s_secret", path);
    struct stat st;
    if (stat(path, &st) == 0 || stat(secret, &st) == 0) {
        snprintf(error, errlen, "%s or %s exists: not overwriting a key",
                 path, secret);
        return -1;
    }
    zcert_t *cert = zcert_new();
    if (!cert) {
        snprintf(error, errlen, "cannot make a key pair");
        return -1;
    }
    zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "tq keygen");
    /* the secret file first and private from the start: never a moment
       where it exists with the default mode */
    mode_t old = umask(077);
    int rc = zcert_save_secret(cert, secret);
    umask(old);
    if (rc == 0)
        rc = zcert_save_public(cert, path);
    if (rc != 0) {
        snprintf(error, errlen, "cannot write %s: %s", path,
                 strerror(errno));
        zcert_destroy(&cert);
        return -1;
    }
    chmod(secret, 0600);
    snprintf(key, TQ_CURVE_KEY_TEXT, "%s", zcert_public_txt(cert));
    zcert_destroy(&cert);
    return 0;
}
