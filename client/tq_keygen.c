/* tq_keygen.c - `tq keygen NAME [DIR]`: a CURVE certificate pair for the
   broker, a client or a worker, in czmq's zcert format. */
#include "tq_keygen.h"

#include <stdio.h>
#include <string.h>

#include "tq_curve.h"
#include "tq_proto.h"

static const char *s_usage =
    "usage: tq keygen NAME [DIR]\n"
    "\n"
    "Writes DIR/NAME.cert (the public key: give it to the broker's\n"
    "--client-keys or --worker-keys directory, or the broker's to clients\n"
    "and workers) and DIR/NAME.cert_secret (both keys, mode 0600: stays on\n"
    "the machine that uses it, passed as --curve-secret, --curve-cert or\n"
    "TQ_CURVE_CERT). DIR defaults to the current directory; existing files\n"
    "are never overwritten. Prints the public key (Z85).\n";

int
tq_keygen_main(int argc, char **argv)
{
    if (argc >= 1 && (strcmp(argv[0], "--help") == 0 ||
                      strcmp(argv[0], "-h") == 0)) {
        fputs(s_usage, stdout);
        return 0;
    }
    if (argc < 1 || argc > 2) {
        fputs(s_usage, stderr);
        return 2;
    }
    const char *name = argv[0];
    /* the name becomes a file name: no paths, no dot files */
    if (!tq_proto_valid_name(name, strlen(name)) || strchr(name, '/') ||
        name[0] == '.') {
        fprintf(stderr, "tq keygen: NAME wants 1-255 of [A-Za-z0-9_.:@-], "
                        "not starting with a dot: %s\n", name);
        return 2;
    }
    const char *dir = argc == 2 ? argv[1] : ".";
    char path[4096], key[TQ_CURVE_KEY_TEXT], error[512];
    snprintf(path, sizeof path, "%s/%s.cert", dir, name);
    if (tq_curve_keygen(path, name, key, error, sizeof error) != 0) {
        fprintf(stderr, "tq keygen: %s\n", error);
        return 1;
    }
    printf("public  %s\nsecret  %s_secret\nkey     %s\n", path, path, key);
    return 0;
}
