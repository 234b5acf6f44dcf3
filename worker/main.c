/* main.c - tq-worker: parse the command line (and the TQ_WORKER_*
   variables), check the broker endpoints, load the task registry, run the
   supervisor. */
#include "tq_curve.h"
#include "tq_endpoint.h"
#include "tq_env.h"
#include "tq_exec.h"
#include "tq_log.h"
#include "tq_worker_host.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* Tasks a child may hold by default: chosen by measurement (`tq-bench
   --prefetch 1,2,4,8,16,32`, README Performance): W1 grows up to 16 and
   no further, and W4 (4 sleeps of 0.5 s on 3 children) stays at 1.00 s
   at every value, since an idle child takes what others hold unstarted
   (work stealing, PROTOCOL.md 5.3.5). */
#define S_DEFAULT_PREFETCH 16

/* SIGHUP: open the --log-file again (logrotate), and do not die of it. */
static void
s_on_hangup(int sig)
{
    (void)sig;
    tq_log_reopen();
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: tq-worker [--broker EP[,EP...]] [-c N] [--queue "
            "NAME]... [--module PATH]...\n"
            "                 [--prefetch N] [--time-limit SEC] [--host NAME]\n"
            "                 [--shutdown-timeout SEC] [--allow-exec] [-v] "
            "[--help]\n"
            "\n"
            "  --broker EP[,EP...]    broker's worker endpoint "
            "(default %s);\n"
            "                         several brokers on one PostgreSQL "
            "store: the host\n"
            "                         talks to one, and moves to the next "
            "on a standby's\n"
            "                         answer or 3 s of silence\n"
            "  -c, --concurrency N    child processes (default: online CPUs)\n"
            "  --queue NAME           queue to serve, repeatable (default: "
            "default)\n"
            "  --module PATH          task module to load, repeatable\n"
            "  --prefetch N           tasks each child may hold (default %d)\n"
            "  --time-limit SEC       hard limit for tasks that set none "
            "(default 0: none)\n"
            "  --host NAME            host name reported (default: "
            "gethostname)\n"
            "  --shutdown-timeout SEC drain time on SIGTERM (default 30)\n"
            "  --soft-time-limit SEC  SIGUSR1 to a task's child after SEC: "
            "tq_task_soft_limit\n"
            "  --max-tasks-per-child N   replace a child after N tasks\n"
            "  --max-memory-per-child MB replace a child whose peak RSS "
            "reached MB\n"
            "  --batch-short-us US    a child holds DONEs to send them "
            "together only\n"
            "                         before a task whose last run took "
            "less (default %d;\n"
            "                         0: every DONE alone)\n"
            "  --allow-exec           provide tq.exec: run shell commands "
            "sent by clients\n"
            "  --curve-server-key KEY the broker's public key, Z85 or its "
            "certificate file\n"
            "                         ($TQ_CURVE_SERVER_KEY): CURVE to the "
            "broker\n"
            "  --curve-cert FILE      this worker's certificate, from tq "
            "keygen ($TQ_CURVE_CERT)\n"
            "  -v, --verbose          log protocol chatter (= --log-level "
            "debug)\n"
            "  --log-level L          error, warning, info (default) or "
            "debug\n"
            "  --log-json             log lines as JSON objects\n"
            "  --log-file FILE        log to FILE (appended; SIGHUP reopens "
            "it)\n"
            "  --version              print the version and exit\n"
            "\n"
            "Every flag also comes from the environment: --broker EP is\n"
            "TQ_WORKER_BROKER=EP, --concurrency N TQ_WORKER_CONCURRENCY=N, "
            "--log-level\n"
            "TQ_LOG_LEVEL (a flag given wins).\n",
            TQ_DEFAULT_WORKER_ENDPOINT, S_DEFAULT_PREFETCH,
            TQ_WORKER_BATCH_SHORT_US);
}

/* Parses a whole decimal number in [min, max]. */
static bool
s_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Parses seconds (may be fractional) into milliseconds. */
static bool
s_parse_secs(const char *s, double max, uint32_t *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0 && v <= max))
        return false;
    *ms = (uint32_t)(v * 1000.0 + 0.5);
    return true;
}

/* Splits list ("EP" or "EP,EP,...") into config->endpoints, each checked.
   Returns false with why filled in. The pieces live in a copy that stays
   until the process ends. */
static bool
s_parse_brokers(const char *list, tq_worker_config_t *config, char *why,
                size_t size)
{
    static char *copy; /* static: reachable to the end (LeakSanitizer) */
    free(copy);
    copy = strdup(list);
    if (!copy) {
        snprintf(why, size, "out of memory");
        return false;
    }
    config->endpoint_count = 0;
    char *item = copy;
    for (;;) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        while (isspace((unsigned char)*item))
            item++;
        for (char *end = item + strlen(item);
             end > item && isspace((unsigned char)end[-1]);)
            *--end = '\0';
        if (!*item && (comma || config->endpoint_count)) {
            snprintf(why, size,
                     "%s: an empty endpoint in the list (endpoints are "
                     "separated by single commas)",
                     list);
            return false;
        }
        if (config->endpoint_count == TQ_WORKER_MAX_BROKERS) {
            snprintf(why, size, "%s: at most %d brokers", list,
                     TQ_WORKER_MAX_BROKERS);
            return false;
        }
        /* a typo here would make every child fail to connect and
           respawn forever: refuse it now, with a hint */
        if (!tq_endpoint_check(item, false, why, size))
            return false;
        config->endpoints[config->endpoint_count++] = item;
        if (!comma)
            break;
        item = comma + 1;
    }
    config->endpoint = config->endpoints[0];
    return true;
}

/* Makes a valid TQP host name of whatever gethostname returned. */
static void
s_default_host(char *host, size_t size)
{
    if (gethostname(host, size - 1) != 0 || !host[0])
        snprintf(host, size, "localhost");
    host[size - 1] = '\0';
    for (char *p = host; *p; p++)
        if (!tq_proto_valid_name(p, 1))
            *p = '_';
}

int
main(int argc, char **argv)
{
    static tq_worker_config_t config;
    const char *modules[256];
    int module_count = 0;
    const char *host = NULL;
    /* As tq-broker (its main): freed payloads stay in the heap rather than
       faulting in again for the next task; 4 MiB at most, per child. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 4 << 20);
    tq_log_init("tq-worker");
    /* the name before TQ_WORKER_BROKER, still read */
    config.endpoint = getenv("TQ_WORKER_ENDPOINT");
    if (!config.endpoint || !*config.endpoint)
        config.endpoint = TQ_DEFAULT_WORKER_ENDPOINT;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    config.concurrency = cpus > 0 ? (int)cpus : 1;
    config.prefetch = S_DEFAULT_PREFETCH;
    config.batch_short_us = TQ_WORKER_BATCH_SHORT_US;
    config.shutdown_timeout_ms = 30000;

    enum {
        O_BROKER = 256,
        O_QUEUE,
        O_MODULE,
        O_PREFETCH,
        O_LIMIT,
        O_HOST,
        O_SHUTDOWN,
        O_ALLOW_EXEC,
        O_SOFT_LIMIT,
        O_MAX_TASKS,
        O_MAX_MEMORY,
        O_BATCH_SHORT,
        O_LOG_LEVEL,
        O_LOG_JSON,
        O_LOG_FILE,
        O_VERSION
    };
    static const struct option options[] = {
        {"broker", required_argument, NULL, O_BROKER},
        {"concurrency", required_argument, NULL, 'c'},
        {"queue", required_argument, NULL, O_QUEUE},
        {"module", required_argument, NULL, O_MODULE},
        {"prefetch", required_argument, NULL, O_PREFETCH},
        {"time-limit", required_argument, NULL, O_LIMIT},
        {"host", required_argument, NULL, O_HOST},
        {"shutdown-timeout", required_argument, NULL, O_SHUTDOWN},
        {"allow-exec", no_argument, NULL, O_ALLOW_EXEC},
        {"soft-time-limit", required_argument, NULL, O_SOFT_LIMIT},
        {"max-tasks-per-child", required_argument, NULL, O_MAX_TASKS},
        {"max-memory-per-child", required_argument, NULL, O_MAX_MEMORY},
        {"batch-short-us", required_argument, NULL, O_BATCH_SHORT},
        {"curve-server-key", required_argument, NULL, 'K'},
        {"curve-cert", required_argument, NULL, 'C'},
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
    env_argv = tq_env_argv("TQ_WORKER_", options, argc, argv, &argc);
    if (!env_argv) {
        fprintf(stderr, "tq-worker: out of memory\n");
        return 1;
    }
    argv = env_argv;
    int opt;
    long n;
    const char *bad = NULL;
    char why[512];
    while (!bad &&
           (opt = getopt_long(argc, argv, "c:vh", options, NULL)) != -1) {
        switch (opt) {
        case O_BROKER:
            config.endpoint = optarg;
            break;
        case 'c':
            if (!s_parse_long(optarg, 1, 4096, &n))
                bad = "-c wants a number of children, 1..4096";
            config.concurrency = (int)n;
            break;
        case O_QUEUE:
            if (!tq_proto_valid_name(optarg, strlen(optarg)))
                bad = "--queue wants 1-255 of [A-Za-z0-9_.:@/-]";
            else if (config.queue_count == TQ_PROTO_MAX_NAMES)
                bad = "at most 256 queues";
            else
                config.queues[config.queue_count++] = optarg;
            break;
        case O_MODULE:
            if (module_count == (int)(sizeof modules / sizeof modules[0]))
                bad = "too many modules";
            else
                modules[module_count++] = optarg;
            break;
        case O_PREFETCH:
            if (!s_parse_long(optarg, 1, 65535, &n))
                bad = "--prefetch wants 1..65535";
            config.prefetch = (uint32_t)n;
            break;
        case O_LIMIT:
            if (!s_parse_secs(optarg, 4294967.0, &config.time_limit_ms))
                bad = "--time-limit wants seconds (0: none)";
            break;
        case O_HOST:
            if (!tq_proto_valid_name(optarg, strlen(optarg)))
                bad = "--host wants 1-255 of [A-Za-z0-9_.:@/-]";
            host = optarg;
            break;
        case O_SHUTDOWN:
            if (!s_parse_secs(optarg, 86400.0, &config.shutdown_timeout_ms))
                bad = "--shutdown-timeout wants seconds";
            break;
        case O_ALLOW_EXEC:
            config.allow_exec = true;
            break;
        case O_SOFT_LIMIT:
            if (!s_parse_secs(optarg, 4294967.0, &config.soft_time_limit_ms))
                bad = "--soft-time-limit wants seconds (0: none)";
            break;
        case O_MAX_TASKS:
            if (!s_parse_long(optarg, 0, UINT32_MAX, &n))
                bad = "--max-tasks-per-child wants a number (0: no limit)";
            config.max_tasks_per_child = (uint32_t)n;
            break;
        case O_MAX_MEMORY:
            if (!s_parse_long(optarg, 0, 4194304, &n))
                bad = "--max-memory-per-child wants MB (0: no limit)";
            config.max_memory_per_child_mb = (uint32_t)n;
            break;
        case O_BATCH_SHORT:
            if (!s_parse_long(optarg, 0, 1000000000, &n))
                bad = "--batch-short-us wants microseconds (0: no batching)";
            config.batch_short_us = (uint32_t)n;
            break;
        case 'K':
            /* children and the supervisor read it from the environment
               (tq_curve_client_setup), like a library client would */
            setenv(TQ_CURVE_ENV_SERVER_KEY, optarg, 1);
            break;
        case 'C':
            setenv(TQ_CURVE_ENV_CERT, optarg, 1);
            break;
        case 'v':
            config.verbose = true;
            tq_log_set_level(TQ_LOG_DEBUG);
            break;
        case O_LOG_LEVEL:
            if ((n = tq_log_parse_level(optarg)) < 0)
                bad = "--log-level wants error, warning, info or debug";
            else
                tq_log_set_level((int)n);
            break;
        case O_LOG_JSON:
            tq_log_set_json(true);
            break;
        case O_LOG_FILE:
            if (tq_log_set_file(optarg, why, sizeof why) != 0)
                bad = why;
            break;
        case O_VERSION:
            tq_env_print_version("tq-worker");
            return 0;
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            bad = "";
            break;
        }
    }
    if (!bad && optind < argc)
        bad = "unexpected argument";
    if (bad) {
        if (*bad)
            fprintf(stderr, "tq-worker: %s\n", bad);
        s_usage(stderr);
        return 2;
    }
    if (!s_parse_brokers(config.endpoint, &config, why, sizeof why)) {
        fprintf(stderr, "tq-worker: --broker %s\n", why);
        return 2;
    }
    if (config.queue_count == 0)
        config.queues[config.queue_count++] = "default";
    if (host)
        snprintf(config.host, sizeof config.host, "%s", host);
    else
        s_default_host(config.host, sizeof config.host);

    /* a bad key must stop us here, not make every forked child die and
       respawn; no ZeroMQ context may exist before the fork, so the keys
       are only loaded */
    const char *server_key = getenv(TQ_CURVE_ENV_SERVER_KEY);
    const char *cert_file = getenv(TQ_CURVE_ENV_CERT);
    if ((server_key && *server_key) || (cert_file && *cert_file)) {
        char key[TQ_CURVE_KEY_TEXT];
        zcert_t *cert = NULL;
        if (!server_key || !*server_key || !cert_file || !*cert_file)
            snprintf(why, sizeof why,
                     "CURVE needs both --curve-server-key "
                     "and --curve-cert");
        else if (tq_curve_public_key(server_key, key, why, sizeof why) == 0)
            cert = tq_curve_load_secret(cert_file, why, sizeof why);
        if (!cert) {
            fprintf(stderr, "tq-worker: %s\n", why);
            return 2;
        }
        zcert_destroy(&cert);
    }

    /* the registry is complete before any fork: children share it */
    tq_registry_t *registry = tq_registry_new();
    if (!registry || tq_registry_add_builtins(registry) != TQ_OK ||
        (config.allow_exec && tq_exec_register(registry) != TQ_OK)) {
        fprintf(stderr, "tq-worker: cannot set up the task registry\n");
        return 1;
    }
    for (int i = 0; i < module_count; i++)
        if (tq_registry_load(registry, modules[i]) != TQ_OK) {
            fprintf(stderr, "tq-worker: %s\n", tq_registry_error(registry));
            tq_registry_destroy(&registry);
            return 1;
        }
    if (tq_registry_size(registry) > TQ_PROTO_MAX_NAMES) {
        fprintf(stderr,
                "tq-worker: %zu tasks registered, READY carries at most %d\n",
                tq_registry_size(registry), TQ_PROTO_MAX_NAMES);
        tq_registry_destroy(&registry);
        return 1;
    }
    struct sigaction hup;
    memset(&hup, 0, sizeof hup);
    sigemptyset(&hup.sa_mask);
    hup.sa_handler = s_on_hangup;
    hup.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &hup, NULL);
    int rc = tq_supervisor_run(&config, registry);
    tq_registry_destroy(&registry);
    tq_env_free(env_argv);
    return rc;
}
