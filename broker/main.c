/* main.c - tq-broker: parses options (and their TQ_BROKER_* variables),
   checks the endpoints, binds (loopback by default), prints the endpoints,
   tells systemd it is ready, runs the loop until SIGTERM or SIGINT. On a
   PostgreSQL store, a broker that lost its lease is dropped and made
   again as a standby on the same endpoints (s_demote). */
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef TQ_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "tq/tq_error.h"
#include "tq_auth.h"
#include "tq_broker.h"
#include "tq_http.h"
#include "tq_endpoint.h"
#include "tq_env.h"
#include "tq_log.h"
#include "tq_store.h"

/* Loopback unless told otherwise: opening the broker to the network is a
   decision (--clients with host *, and CURVE keys). */
#define S_CLIENTS "tcp://127.0.0.1:5555"
#define S_WORKERS "tcp://127.0.0.1:5556"
/* Without a store, a new task's SUBMITTED waits this long for a client
   that opted in (PROTOCOL.md 5.1): a task that ends first is acknowledged
   by its RESULT alone. Chosen by measurement: a 20,000-task burst
   collected at 50,000 tasks/s (a loaded machine) still had a third of
   its SUBMITTEDs sent at 200 ms, none at 1 s (the embedded pool's). */
#define S_ACK_FOLD_MS 1000

static tq_broker_t *s_broker;
static volatile sig_atomic_t s_stopping; /* a broker made after it must not
                                            run */

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stopping = 1;
    if (s_broker)
        tq_broker_stop(s_broker);
}

/* SIGHUP: read the CURVE allow-lists again (they are also reread when
   their directories change). */
static void
s_on_hangup(int sig)
{
    (void)sig;
    tq_auth_reload();
    tq_log_reopen();
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: tq-broker [--clients EP] [--workers EP] "
            "[--result-ttl SEC] [-v]\n"
            "  --clients EP      client endpoint (default %s; "
            "tcp://*:5555 opens it\n"
            "                    to the network: use CURVE then)\n"
            "  --workers EP      worker endpoint (default %s)\n"
            "  --result-ttl SEC  keep final results this long (default %d)\n"
            "  --result-window SIZE  without a store: delivered results "
            "kept in memory,\n"
            "                    the oldest forgotten early beyond SIZE "
            "bytes (K, M, G:\n"
            "                    KiB, MiB, GiB; default 16M); undelivered "
            "ones keep the ttl\n"
            "  --max-lost N      worker deaths a task may cause before it "
            "fails (default %d)\n"
            "  --data DIR        the store's directory (default "
            "$STATE_DIRECTORY under\n"
            "                    systemd, else %s; printed at start)\n"
            "  --store URL       a PostgreSQL store instead of --data "
            "(postgresql://user@host/db)\n"
            "  --lease-ttl MS    --store: the active broker's lease lasts "
            "this long unless\n"
            "                    renewed (default %d); a standby takes over "
            "after it\n"
            "  --lease-renew MS  the active renews it this often (default "
            "%d, below the ttl)\n"
            "  --lease-retry MS  a standby tries to take it this often "
            "(default %d)\n"
            "  --new-store       start an empty store even though DIR held "
            "one whose tq.db\n"
            "                    is missing or empty (the old files are kept "
            "aside)\n"
            "  --no-persist      keep everything in memory only\n"
            "  --sync MODE       batch: each batch synced to disk before it "
            "is acknowledged\n"
            "                    (default); os: written to the OS, which "
            "flushes when it likes\n"
            "  --max-disk MB     store size at which submissions are refused\n"
            "  --max-queue N     waiting tasks per queue; more are refused "
            "with TQ_EFULL (default: no limit)\n"
            "  --max-memory MB   arguments and results the broker may hold; "
            "more are refused (default: no limit)\n"
            "  --max-client-tasks N  unfinished tasks one client may have "
            "(default: no limit)\n"
            "  --curve-secret FILE  the broker's certificate (tq keygen): "
            "CURVE on both\n"
            "                    endpoints; needs --client-keys and "
            "--worker-keys\n"
            "  --client-keys DIR public certificates of the clients "
            "allowed in\n"
            "  --worker-keys DIR public certificates of the workers "
            "allowed in\n"
            "                    (SIGHUP or a change in the directory "
            "reloads both)\n"
            "  --admin-keys DIR  public certificates of operators: PURGE, "
            "STATUS details\n"
            "                    and every client's tasks (CURVE only; "
            "optional)\n"
            "  --max-client-backlog N  replies queued for a client that "
            "does not read\n"
            "                    before more are dropped (default 100000; "
            "it asks again)\n"
            "  --max-message BYTES  largest message a peer may send "
            "(default 67108864)\n"
            "  --ack-fold MS     without a store: a client that allows it "
            "hears SUBMITTED\n"
            "                    only if its task is still unfinished "
            "after MS (default %d;\n"
            "                    0: at once); with a store, only if still "
            "unfinished at\n"
            "                    its commit (0: always)\n"
            "  --spin-us US      after a pass of few messages, look for the "
            "next one this long\n"
            "                    before sleeping: no wakeup for an answer "
            "that comes in it\n"
            "                    (default %d; 0: sleep at once)\n"
            "  --http ADDR:PORT  serve /metrics and the dashboard there "
            "(e.g. 127.0.0.1:8080)\n"
            "  --http-token TOKEN, --http-token-file FILE  allow retry, "
            "cancel, purge\n"
            "  -v, --verbose     log every exchange to stderr (= "
            "--log-level debug)\n"
            "  --log-level L     error, warning, info (default) or debug\n"
            "  --log-json        log lines as JSON objects, for log "
            "shippers\n"
            "  --log-file FILE   log to FILE (appended; SIGHUP reopens "
            "it)\n"
            "  --version         print the version and exit\n"
            "Every flag also comes from the environment: --data DIR is "
            "TQ_BROKER_DATA=DIR,\n"
            "--log-level is TQ_LOG_LEVEL (a flag given wins).\n"
            "Prints 'tq-broker: clients EP workers EP' once bound; "
            "SIGTERM or SIGINT stops it.\n",
            S_CLIENTS, S_WORKERS, TQ_BROKER_RESULT_TTL_S, TQ_BROKER_MAX_LOST,
            TQ_BROKER_DATA_DIR, TQ_BROKER_LEASE_TTL_MS,
            TQ_BROKER_LEASE_RENEW_MS, TQ_BROKER_LEASE_RETRY_MS, S_ACK_FOLD_MS,
            TQ_BROKER_SPIN_US);
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

/* Parses a size in bytes, with K, M or G for KiB, MiB or GiB (up to
   1 TiB); 0 keeps only the newest. 0, or -1 if it is not one. */
static int
s_size(const char *text, uint64_t *size)
{
    char *end = NULL;
    if (*text < '0' || *text > '9')
        return -1;
    unsigned long long value = strtoull(text, &end, 10);
    int shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    else if (*end == 'G' || *end == 'g')
        shift = 30;
    if (shift)
        end++;
    if (*end || value > (1ULL << 40) >> shift)
        return -1;
    *size = value << shift ? value << shift : 1;
    return 0;
}

/* The default data directory: $STATE_DIRECTORY (systemd's
   StateDirectory=, the first if several), else ./tq-data. */
static const char *
s_default_data_dir(void)
{
    static char dir[PATH_MAX];
    const char *state = getenv("STATE_DIRECTORY");
    if (state && *state) {
        snprintf(dir, sizeof dir, "%.*s", (int)strcspn(state, ":"), state);
        return dir;
    }
    return TQ_BROKER_DATA_DIR;
}

/* Tells systemd (Type=notify) how the start went; nothing without it. */
static void
s_notify(const char *state)
{
#ifdef TQ_HAVE_SYSTEMD
    sd_notify(0, state);
#else
    (void) state;
#endif
}

/* The broker lost its lease (or its store): it is dropped with all it
   held in memory, and a new one, a standby, binds the same endpoints
   (ports resolved) and runs. Binding may fail for a moment while the old
   sockets close: tried again for 10 s. Returns the new loop's code. */
static int
s_demote(tq_broker_config_t *config, tq_http_config_t *http, tq_http_t **web)
{
    static char clients[256], workers[256]; /* the config points here */
    char error[512] = "";
    snprintf(clients, sizeof clients, "%s",
             tq_broker_client_endpoint(s_broker));
    snprintf(workers, sizeof workers, "%s",
             tq_broker_worker_endpoint(s_broker));
    /* the dashboard talks to the broker over an inproc endpoint that
       goes with it: made again with the new one, on a new name */
    tq_http_destroy(web);
    tq_broker_t *old = s_broker;
    s_broker = NULL;
    tq_broker_destroy(&old);
    if (http->address && tq_http_prepare(config) != 0)
        http->address = NULL;
    config->client_endpoint = clients;
    config->worker_endpoint = workers;
    config->standby_start = true;
    s_notify("STATUS=standby");
    for (int attempt = 0; attempt < 100 && !s_stopping; attempt++) {
        tq_broker_t *broker = tq_broker_new(config, error, sizeof error);
        if (broker) {
            s_broker = broker;
            if (http->address) {
                http->broker = config->client_inproc;
                if (!(*web = tq_http_new(http, error, sizeof error)))
                    tq_log_warning("--http: %s", error);
            }
            if (s_stopping) /* a signal between the check and here */
                tq_broker_stop(broker);
            return tq_broker_run(broker);
        }
        usleep(100 * 1000);
    }
    if (!s_stopping)
        tq_log_error("cannot start again as a standby: %s", error);
    return s_stopping ? TQ_OK : TQ_ESYS;
}

int
main(int argc, char **argv)
{
    /* Payloads are allocated by libzmq's I/O thread and freed by this
       one, message by message: with glibc's default trim threshold
       (128 KiB) freed 64 KiB messages go back to the kernel and the next
       ones fault their pages in again. Keep up to 32 MiB of freed heap
       (W3, 64 KiB echoes: about +12 % in interleaved runs). */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    tq_log_init("tq-broker");
    tq_broker_config_t config = {.result_ttl_s = -1,
                                 .data_dir = s_default_data_dir(),
                                 .ack_fold_ms = S_ACK_FOLD_MS,
                                 .spin_us = TQ_BROKER_SPIN_US};
    enum {
        O_LOG_LEVEL = 256,
        O_LOG_JSON,
        O_LOG_FILE,
        O_VERSION,
        O_LEASE_TTL,
        O_LEASE_RENEW,
        O_LEASE_RETRY,
        O_RESULT_WINDOW,
        O_ACK_FOLD,
        O_SPIN_US
    };
    tq_http_config_t http = {0};
    static const struct option options[] = {
        {"clients", required_argument, NULL, 'c'},
        {"workers", required_argument, NULL, 'w'},
        {"result-ttl", required_argument, NULL, 't'},
        {"result-window", required_argument, NULL, O_RESULT_WINDOW},
        {"max-lost", required_argument, NULL, 'l'},
        {"max-queue", required_argument, NULL, 'q'},
        {"data", required_argument, NULL, 'd'},
        {"no-persist", no_argument, NULL, 'n'},
        {"store", required_argument, NULL, 'U'},
        {"new-store", no_argument, NULL, 'N'},
        {"lease-ttl", required_argument, NULL, O_LEASE_TTL},
        {"lease-renew", required_argument, NULL, O_LEASE_RENEW},
        {"lease-retry", required_argument, NULL, O_LEASE_RETRY},
        {"sync", required_argument, NULL, 's'},
        {"max-disk", required_argument, NULL, 'D'},
        {"max-memory", required_argument, NULL, 'm'},
        {"max-client-tasks", required_argument, NULL, 'T'},
        {"curve-secret", required_argument, NULL, 'S'},
        {"client-keys", required_argument, NULL, 'C'},
        {"worker-keys", required_argument, NULL, 'W'},
        {"admin-keys", required_argument, NULL, 'A'},
        {"max-client-backlog", required_argument, NULL, 'B'},
        {"max-message", required_argument, NULL, 'M'},
        {"ack-fold", required_argument, NULL, O_ACK_FOLD},
        {"spin-us", required_argument, NULL, O_SPIN_US},
        {"http", required_argument, NULL, 'H'},
        {"http-token", required_argument, NULL, 'K'},
        {"http-token-file", required_argument, NULL, 'F'},
        {"verbose", no_argument, NULL, 'v'},
        {"log-level", required_argument, NULL, O_LOG_LEVEL},
        {"log-json", no_argument, NULL, O_LOG_JSON},
        {"log-file", required_argument, NULL, O_LOG_FILE},
        {"version", no_argument, NULL, O_VERSION},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* kept in a static: the early exits (usage, --version) leave it
       reachable, not leaked */
    static char **env_argv;
    env_argv = tq_env_argv("TQ_BROKER_", options, argc, argv, &argc);
    if (!env_argv) {
        fprintf(stderr, "tq-broker: out of memory\n");
        return 1;
    }
    argv = env_argv;
    int opt;
    long value;
    char why[512];
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
                fprintf(stderr,
                        "tq-broker: --result-ttl: not a number of "
                        "seconds: %s\n",
                        optarg);
                return 2;
            }
            config.result_ttl_s = (int)value;
            break;
        case O_RESULT_WINDOW:
            if (s_size(optarg, &config.result_window) < 0) {
                fprintf(stderr,
                        "tq-broker: --result-window: bytes, with K, M or G "
                        "for KiB, MiB, GiB: %s\n",
                        optarg);
                return 2;
            }
            break;
        case 'l':
            if ((value = s_number(optarg, 1000)) < 1) {
                fprintf(stderr, "tq-broker: --max-lost: 1..1000: %s\n", optarg);
                return 2;
            }
            config.max_lost = (int)value;
            break;
        case 'd':
            config.data_dir = optarg;
            break;
        case 'A':
            config.admin_keys = optarg;
            break;
        case 'B':
            if ((value = s_number(optarg, INT32_MAX)) < 1) {
                fprintf(stderr,
                        "tq-broker: --max-client-backlog: a number of "
                        "replies (1 or more): %s\n",
                        optarg);
                return 2;
            }
            config.max_client_backlog = (uint32_t)value;
            break;
        case 'n':
            config.data_dir = NULL;
            config.store_url = NULL;
            break;
        case 'U':
            if (!tq_store_is_url(optarg)) {
                fprintf(stderr, "tq-broker: --store: a postgresql:// URL "
                                "(a directory is --data): %s\n", optarg);
                return 2;
            }
            /* data_dir too: the broker opens whichever it is handed */
            config.store_url = config.data_dir = optarg;
            break;
        case 'N':
            config.new_store = true;
            break;
        case 's':
            if (strcmp(optarg, "batch") == 0)
                config.sync = TQ_SYNC_BATCH;
            else if (strcmp(optarg, "os") == 0)
                config.sync = TQ_SYNC_OS;
            else {
                fprintf(stderr, "tq-broker: --sync: batch or os: %s\n", optarg);
                return 2;
            }
            break;
        case 'D':
            if ((value = s_number(optarg, 1L << 30)) < 1) {
                fprintf(stderr,
                        "tq-broker: --max-disk: a number of MB "
                        "(1 or more): %s\n",
                        optarg);
                return 2;
            }
            config.max_disk = (uint64_t)value << 20;
            break;
        case 'q':
            if ((value = s_number(optarg, UINT32_MAX)) < 1) {
                fprintf(stderr,
                        "tq-broker: --max-queue: a number of tasks "
                        "(1 or more): %s\n",
                        optarg);
                return 2;
            }
            config.max_queue = (uint32_t)value;
            break;
        case 'm':
            if ((value = s_number(optarg, 1L << 30)) < 1) {
                fprintf(stderr,
                        "tq-broker: --max-memory: a number of MB "
                        "(1 or more): %s\n",
                        optarg);
                return 2;
            }
            config.max_memory = (uint64_t)value << 20;
            break;
        case 'S':
            config.curve_secret = optarg;
            break;
        case 'C':
            config.client_keys = optarg;
            break;
        case 'W':
            config.worker_keys = optarg;
            break;
        case 'M':
            /* below a few KiB not even a STATUS body or a READY fits */
            if ((value = s_number(optarg, INT64_MAX)) < 4096) {
                fprintf(stderr,
                        "tq-broker: --max-message: bytes, 4096 or "
                        "more: %s\n",
                        optarg);
                return 2;
            }
            config.max_message = (int64_t)value;
            break;
        case 'T':
            if ((value = s_number(optarg, UINT32_MAX)) < 1) {
                fprintf(stderr,
                        "tq-broker: --max-client-tasks: a number of "
                        "tasks (1 or more): %s\n",
                        optarg);
                return 2;
            }
            config.max_client_tasks = (uint32_t)value;
            break;
        case 'H':
            http.address = optarg;
            break;
        case 'K':
            http.token = optarg;
            break;
        case 'F':
            http.token_file = optarg;
            break;
        case 'v':
            config.verbose = true;
            tq_log_set_level(TQ_LOG_DEBUG);
            break;
        case O_LOG_LEVEL:
            if ((value = tq_log_parse_level(optarg)) < 0) {
                fprintf(stderr, "tq-broker: --log-level: error, warning, "
                                "info or debug: %s\n", optarg);
                return 2;
            }
            tq_log_set_level((int) value);
            break;
        case O_LOG_JSON:
            tq_log_set_json(true);
            break;
        case O_LOG_FILE:
            if (tq_log_set_file(optarg, why, sizeof why) != 0) {
                fprintf(stderr, "tq-broker: %s\n", why);
                return 2;
            }
            break;
        case O_LEASE_TTL:
        case O_LEASE_RENEW:
        case O_ACK_FOLD:
            if ((value = s_number(optarg, 60000)) < 0) {
                fprintf(stderr,
                        "tq-broker: --ack-fold: milliseconds, 0 to 60000: "
                        "%s\n",
                        optarg);
                return 2;
            }
            config.ack_fold_ms = (int)value;
            break;
        case O_SPIN_US:
            if ((value = s_number(optarg, 100000)) < 0) {
                fprintf(stderr,
                        "tq-broker: --spin-us: microseconds, 0 to 100000: "
                        "%s\n",
                        optarg);
                return 2;
            }
            config.spin_us = (uint32_t)value;
            break;
        case O_LEASE_RETRY:
            if ((value = s_number(optarg, 3600000)) < 10) {
                fprintf(stderr,
                        "tq-broker: --%s: milliseconds, 10 to 3600000: %s\n",
                        opt == O_LEASE_TTL         ? "lease-ttl"
                            : opt == O_LEASE_RENEW ? "lease-renew"
                                                   : "lease-retry",
                        optarg);
                return 2;
            }
            if (opt == O_LEASE_TTL)
                config.lease_ttl_ms = (uint32_t)value;
            else if (opt == O_LEASE_RENEW)
                config.lease_renew_ms = (uint32_t)value;
            else
                config.lease_retry_ms = (uint32_t)value;
            break;
        case O_VERSION:
            tq_env_print_version("tq-broker");
            return 0;
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

    uint32_t ttl =
        config.lease_ttl_ms ? config.lease_ttl_ms : TQ_BROKER_LEASE_TTL_MS;
    uint32_t renew = config.lease_renew_ms ? config.lease_renew_ms
                                           : TQ_BROKER_LEASE_RENEW_MS;
    if (renew >= ttl) {
        /* a renewal must land before the lease lapses, with room for a
           slow pass */
        fprintf(stderr,
                "tq-broker: --lease-renew (%u ms) must be below --lease-ttl "
                "(%u ms); a third of it is usual\n",
                renew, ttl);
        return 2;
    }
    if (!config.client_endpoint)
        config.client_endpoint = S_CLIENTS;
    if (!config.worker_endpoint)
        config.worker_endpoint = S_WORKERS;
    /* libzmq reads tcp://127.0.0.1:5555x as port 5555: refuse, never
       half-bind */
    if (!tq_endpoint_check(config.client_endpoint, true, why, sizeof why) ||
        !tq_endpoint_check(config.worker_endpoint, true, why, sizeof why)) {
        fprintf(stderr, "tq-broker: %s\n", why);
        return 2;
    }
    if (config.store_url)
        tq_log_info("data in the PostgreSQL store (--store)");
    else if (config.data_dir) {
        char *abs = realpath(config.data_dir, NULL);
        char cwd[PATH_MAX];
        if (abs)
            tq_log_info("data in %s", abs);
        else if (config.data_dir[0] != '/' && getcwd(cwd, sizeof cwd))
            tq_log_info("data in %s/%s", cwd,
                        config.data_dir +
                            2 * (strncmp(config.data_dir, "./", 2) == 0));
        else
            tq_log_info("data in %s", config.data_dir);
        free(abs);
    } else
        tq_log_info("no persistence: tasks live in memory only");

    char error[512];
    if (http.address && tq_http_prepare(&config) != 0) {
        fprintf(stderr, "tq-broker: --http: no ZeroMQ context\n");
        return 1;
    }
    s_broker = tq_broker_new(&config, error, sizeof error);
    tq_http_t *web = NULL;
    if (s_broker && http.address) {
        http.broker = config.client_inproc;
        if (!(web = tq_http_new(&http, error, sizeof error)))
            tq_broker_destroy(&s_broker);
    }
    if (!s_broker) {
        tq_log_error("%s", error);
        s_notify("STATUS=failed to start");
        return 1;
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct sigaction hup = {.sa_handler = s_on_hangup, .sa_flags = SA_RESTART};
    sigemptyset(&hup.sa_mask);
    sigaction(SIGHUP, &hup, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("tq-broker: clients %s workers %s\n",
           tq_broker_client_endpoint(s_broker),
           tq_broker_worker_endpoint(s_broker));
    if (web)
        printf("tq-broker: dashboard %s\n", tq_http_url(web));
    fflush(stdout);
    s_notify("READY=1\nSTATUS=serving");
    int rc = tq_broker_run(s_broker);
    while (rc == TQ_ESTANDBY && !s_stopping)
        rc = s_demote(&config, &http, &web);
    tq_http_destroy(&web);
    s_notify("STOPPING=1");
    tq_broker_t *broker = s_broker;
    s_broker = NULL;
    tq_broker_destroy(&broker);
    tq_env_free(env_argv);
    return rc == TQ_OK ? 0 : 1;
}
