/* tq_env.c - flags from environment variables, and --version. */
#include "tq_env.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#ifndef TQ_VERSION
#define TQ_VERSION "unknown"
#endif

/* Flags every binary reads under the same name. */
static const char *const s_shared[] = {"log-level", "log-json", "log-file",
                                       "curve-cert", "curve-server-key"};

char *
tq_env_name(const char *prefix, const char *name, char *buf, size_t size)
{
    for (size_t i = 0; i < sizeof s_shared / sizeof s_shared[0]; i++)
        if (strcmp(name, s_shared[i]) == 0)
            prefix = "TQ_";
    snprintf(buf, size, "%s%s", prefix, name);
    for (char *p = buf + strlen(prefix); *p; p++)
        *p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    return buf;
}

/* True if argv (up to a lone "--") gives option o. */
static bool
s_given(const struct option *o, int argc, char **argv)
{
    size_t len = strlen(o->name);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, o->name, len) == 0 &&
            (a[2 + len] == 0 || a[2 + len] == '='))
            return true;
        if (o->flag == NULL && o->val > 0 && o->val < 128 && isalnum(o->val) &&
            a[0] == '-' && a[1] == o->val)
            return true;
    }
    return false;
}

static bool
s_truthy(const char *text)
{
    return strcmp(text, "1") == 0 || strcasecmp(text, "yes") == 0 ||
        strcasecmp(text, "true") == 0 || strcasecmp(text, "on") == 0;
}

char **
tq_env_argv(const char *prefix, const struct option *options, int argc,
            char **argv, int *argc_out)
{
    size_t count = 0;
    for (const struct option *o = options; o->name; o++)
        count++;
    char **out = calloc((size_t)argc + count + 1, sizeof *out);
    if (!out)
        return NULL;
    int n = 0;
    out[n++] = strdup(argc > 0 ? argv[0] : "tq");
    for (const struct option *o = options; o->name; o++) {
        if (strcmp(o->name, "help") == 0 || strcmp(o->name, "version") == 0)
            continue;
        char var[128];
        const char *value =
            getenv(tq_env_name(prefix, o->name, var, sizeof var));
        if (!value || !*value || s_given(o, argc, argv))
            continue;
        char *arg;
        if (o->has_arg == no_argument) {
            if (!s_truthy(value))
                continue;
            arg = malloc(strlen(o->name) + 3);
            if (arg)
                sprintf(arg, "--%s", o->name);
        } else {
            arg = malloc(strlen(o->name) + strlen(value) + 4);
            if (arg)
                sprintf(arg, "--%s=%s", o->name, value);
        }
        out[n++] = arg;
    }
    for (int i = 1; i < argc; i++)
        out[n++] = strdup(argv[i]);
    out[n] = NULL;
    for (int i = 0; i < n; i++)
        if (!out[i]) {
            tq_env_free(out);
            return NULL;
        }
    *argc_out = n;
    return out;
}

void
tq_env_free(char **argv)
{
    if (!argv)
        return;
    for (char **p = argv; *p; p++)
        free(*p);
    free(argv);
}

void
tq_env_print_version(const char *program)
{
    printf("%s %s\n", program, TQ_VERSION);
}
