/* tq_keygen.c - `tq keygen NAME [DIR]`: a CURVE certificate pair for the
   broker, a client or a worker, in czmq's zcert format. */
#include "tq_keygen.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq_curve.h"
#include "tq_proto.h"

static const char *s_usage =
    "usage: tq keygen NAME [DIR] [--json]\n"
    "\n"
    "Writes DIR/NAME.cert (the public key: give it to the broker's\n"
    "--client-keys or --worker-keys directory, or the broker's to clients\n"
    "and workers) and DIR/NAME.cert_secret (both keys, mode 0600: stays on\n"
    "the machine that uses it, passed as --curve-secret, --curve-cert or\n"
    "TQ_CURVE_CERT). DIR defaults to the current directory; existing files\n"
    "are never overwritten. Prints the public key (Z85); --json prints\n"
    "{\"public\", \"secret\", \"key\"}. Options may come anywhere.\n";

int
tq_keygen_main(int argc, char **argv)
{
    enum { O_JSON = 256, O_HELP };
    static const struct option options[] = {
        {"json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    bool as_json = false;
    char **gargv = argv - 1; /* argv[-1] is the word "keygen" */
    int opt;
    optind = 0;
    opterr = 0;
    while ((opt = getopt_long(argc + 1, gargv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case O_JSON:
            as_json = true;
            break;
        case O_HELP:
        case 'h':
            fputs(s_usage, stdout);
            return 0;
        default:
            fprintf(stderr, "tq keygen: %s: unknown option\n%s",
                    gargv[optind - 1], s_usage);
            return 2;
        }
    }
    int nargs = argc + 1 - optind;
    if (nargs < 1 || nargs > 2) {
        fprintf(stderr, "tq keygen: %s\n%s",
                nargs < 1 ? "missing NAME" : "too many arguments", s_usage);
        return 2;
    }
    const char *name = gargv[optind];
    /* the name becomes a file name: no paths, no dot files */
    if (!tq_proto_valid_name(name, strlen(name)) || strchr(name, '/') ||
        name[0] == '.') {
        fprintf(stderr,
                "tq keygen: NAME wants 1-255 of [A-Za-z0-9_.:@-], "
                "not starting with a dot: %s\n",
                name);
        return 2;
    }
    const char *dir = nargs == 2 ? gargv[optind + 1] : ".";
    char path[4096], secret[4200], key[TQ_CURVE_KEY_TEXT], error[512];
    snprintf(path, sizeof path, "%s/%s.cert", dir, name);
    if (tq_curve_keygen(path, name, key, error, sizeof error) != 0) {
        fprintf(stderr, "tq keygen: %s\n", error);
        return 1;
    }
    snprintf(secret, sizeof secret, "%s_secret", path);
    if (as_json) {
        json_t *j = json_pack("{s:s,s:s,s:s}", "public", path, "secret", secret,
                              "key", key);
        char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (text)
            puts(text);
        free(text);
        json_decref(j);
    } else
        printf("public  %s\nsecret  %s\nkey     %s\n", path, secret, key);
    return 0;
}
