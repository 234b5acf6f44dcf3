/* tq_endpoint.c - syntax check of ZeroMQ endpoints with hints. */
#include "tq_endpoint.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool
s_port_ok(const char *port, bool bind)
{
    if (bind && strcmp(port, "*") == 0)
        return true;
    if (!*port || strlen(port) > 5)
        return false;
    for (const char *p = port; *p; p++)
        if (!isdigit((unsigned char)*p))
            return false;
    long n = strtol(port, NULL, 10);
    return n <= 65535 && (n > 0 || bind);
}

bool
tq_endpoint_check(const char *endpoint, bool bind, char *why, size_t size)
{
    if (!endpoint || !*endpoint) {
        snprintf(why, size, "empty endpoint (e.g. tcp://127.0.0.1:5555)");
        return false;
    }
    if (strncmp(endpoint, "ipc://", 6) == 0 ||
        strncmp(endpoint, "inproc://", 9) == 0) {
        const char *rest = strstr(endpoint, "://") + 3;
        if (*rest)
            return true;
        snprintf(why, size, "%s: no path after the transport", endpoint);
        return false;
    }
    if (strncmp(endpoint, "tcp://", 6) != 0) {
        const char *scheme = strstr(endpoint, "://");
        if (scheme)
            snprintf(why, size,
                     "%s: unknown transport %.*s:// (tcp://, ipc:// or "
                     "inproc://)",
                     endpoint, (int)(scheme - endpoint), endpoint);
        else if (strchr(endpoint, ':'))
            snprintf(why, size, "%s: no transport (did you mean tcp://%s?)",
                     endpoint, endpoint);
        else
            snprintf(why, size,
                     "%s: not an endpoint (e.g. tcp://127.0.0.1:5555 or "
                     "ipc:///run/tq/clients)",
                     endpoint);
        return false;
    }
    const char *hostport = endpoint + 6;
    const char *colon = strrchr(hostport, ':');
    const char *bracket = strrchr(hostport, ']');
    if (!colon || (bracket && colon < bracket)) {
        snprintf(why, size, "%s: no port (e.g. %s:5555)", endpoint, endpoint);
        return false;
    }
    size_t hostlen = (size_t)(colon - hostport);
    if (hostlen == 0) {
        snprintf(why, size, "%s: no host (e.g. tcp://127.0.0.1%s)", endpoint,
                 colon);
        return false;
    }
    if (!bind && hostlen == 1 && hostport[0] == '*') {
        snprintf(why, size,
                 "%s: * only binds; connect to the broker's address (e.g. "
                 "tcp://127.0.0.1%s)",
                 endpoint, colon);
        return false;
    }
    for (size_t i = 0; i < hostlen; i++) {
        unsigned char c = (unsigned char)hostport[i];
        if (isspace(c) || c == '/' || c < 0x20) {
            snprintf(why, size, "%s: not a host name: %.*s", endpoint,
                     (int)hostlen, hostport);
            return false;
        }
    }
    if (!s_port_ok(colon + 1, bind)) {
        snprintf(why, size, "%s: port %s is not a number in 1-65535%s",
                 endpoint, colon + 1, bind ? " (or * for any free port)" : "");
        return false;
    }
    return true;
}
