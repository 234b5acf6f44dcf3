/* main.c - tq-broker: parses options, binds, prints the endpoints, runs the
   loop until SIGTERM or SIGINT. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tq/tq_error.h"
#include "tq_broker.h"

static tq_broker_t *s_broker;

static void
s_on_signal(int sig)
{
    (void) sig;
    if (s_broker)
        tq_broker_stop(s_broker);
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: tq-broker [--clients EP] [--workers EP] "
            "[--result-ttl SEC] [-v]\n"
            "  --clients EP      client endpoint (default %s)\n"
            "  --workers EP      worker endpoint (default %s)\n"
            "  --result-ttl SEC  keep final results this long (default %d)\n"
            "  --max-lost N      worker deaths a task may cause before it "
            "fails (default %d)\n"
            "  -v, --verbose     log every exchange to stderr\n"
            "Prints 'tq-broker: clients EP workers EP' once bound; "
            "SIGTERM or SIGINT stops it.\n",
            TQ_BROKER_CLIENTS, TQ_BROKER_WORKERS, TQ_BROKER_RESULT_TTL_S,
            TQ_BROKER_MAX_LOST);
}

/* Parses a non-negative integer option; -1 if it is not one. */
static long
s_number(const char *text, long max)
{
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (!*text || *end || value < 0 || value > max)
        return -1;
    return value;
}

int
main(int argc, char **argv)
{
    tq_broker_config_t config = {.result_ttl_s = -1};
    static const struct option options[] = {
        {"clients", required_argument, NULL, 'c'},
        {"workers", required_argument, NULL, 'w'},
        {"result-ttl", required_argument, NULL, 't'},
        {"max-lost", required_argument, NULL, 'l'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    long value;
    while ((opt = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config.client_endpoint = optarg;
            break;
        case 'w':
            config.worker_endpoint = optarg;
            break;
        case 't':
            if ((value = s_number(optarg, 10L * 365 * 86400)) < 0) {
                fprintf(stderr, "tq-broker: --result-ttl: not a number of "
                                "seconds: %s\n", optarg);
                return 2;
            }
            config.result_ttl_s = (int) value;
            break;
        case 'l':
            if ((value = s_number(optarg, 1000)) < 1) {
                fprintf(stderr, "tq-broker: --max-lost: 1..1000: %s\n",
                        optarg);
                return 2;
            }
            config.max_lost = (int) value;
            break;
        case 'v':
            config.verbose = true;
            break;
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            s_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tq-broker: unexpected argument: %s\n", argv[optind]);
        s_usage(stderr);
        return 2;
    }

    char error[512];
    s_broker = tq_broker_new(&config, error, sizeof error);
    if (!s_broker) {
        fprintf(stderr, "tq-broker: %s\n", error);
        return 1;
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("tq-broker: clients %s workers %s\n",
           tq_broker_client_endpoint(s_broker),
           tq_broker_worker_endpoint(s_broker));
    fflush(stdout);
    int rc = tq_broker_run(s_broker);
    tq_broker_t *broker = s_broker;
    s_broker = NULL;
    tq_broker_destroy(&broker);
    return rc == TQ_OK ? 0 : 1;
}
