/* tq_log.c - leveled, timestamped log lines on stderr (plain or JSON),
   --log-file with reopen on SIGHUP, and czmq's log taken into the same
   stream through a stdio cookie. */
#include "tq_log.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *s_ident = "tq";
static int s_level = TQ_LOG_INFO;
static bool s_json = false;
static char s_path[4096]; /* --log-file, empty: none */

static const char *const s_names[] = {"error", "warning", "info", "debug"};

int
tq_log_parse_level(const char *text)
{
    if (!text)
        return -1;
    for (int i = 0; i < (int)(sizeof s_names / sizeof s_names[0]); i++)
        if (strcasecmp(text, s_names[i]) == 0)
            return i;
    if (strcasecmp(text, "warn") == 0)
        return TQ_LOG_WARNING;
    return -1;
}

const char *
tq_log_level_name(int level)
{
    return level >= 0 && level <= TQ_LOG_DEBUG ? s_names[level] : "?";
}

void
tq_log_set_level(int level)
{
    s_level = level < TQ_LOG_ERROR ? TQ_LOG_ERROR
        : level > TQ_LOG_DEBUG     ? TQ_LOG_DEBUG
                                   : level;
}

int
tq_log_level(void)
{
    return s_level;
}

void
tq_log_set_json(bool json)
{
    s_json = json;
}

bool
tq_log_enabled(int level)
{
    return level <= s_level;
}

/* true for 1, yes, true, on (any case) */
static bool
s_truthy(const char *text)
{
    return text &&
        (strcmp(text, "1") == 0 || strcasecmp(text, "yes") == 0 ||
         strcasecmp(text, "true") == 0 || strcasecmp(text, "on") == 0);
}

void
tq_log_init(const char *ident)
{
    if (ident && *ident)
        s_ident = ident;
    int level = tq_log_parse_level(getenv("TQ_LOG_LEVEL"));
    if (level >= 0)
        s_level = level;
    if (getenv("TQ_LOG_JSON"))
        s_json = s_truthy(getenv("TQ_LOG_JSON"));
    tq_log_take_czmq();
}

char *
tq_log_timestamp(char *buf, size_t size)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char date[24];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, size, "%s.%03ldZ", date, ts.tv_nsec / 1000000);
    return buf;
}

/* Appends text to out as the body of a JSON string. */
static size_t
s_json_escape(char *out, size_t size, size_t used, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        char esc[8];
        const char *piece = esc;
        if (*p == '"')
            piece = "\\\"";
        else if (*p == '\\')
            piece = "\\\\";
        else if (*p == '\n')
            piece = "\\n";
        else if (*p == '\t')
            piece = "\\t";
        else if (*p < 0x20)
            snprintf(esc, sizeof esc, "\\u%04x", *p);
        else {
            esc[0] = (char)*p;
            esc[1] = 0;
        }
        size_t n = strlen(piece);
        if (used + n + 1 >= size)
            break;
        memcpy(out + used, piece, n);
        used += n;
    }
    out[used] = 0;
    return used;
}

void
tq_log_v(int level, const char *format, va_list ap)
{
    if (!tq_log_enabled(level))
        return;
    int saved = errno;
    char msg[2048], stamp[40], line[4600];
    vsnprintf(msg, sizeof msg, format, ap);
    size_t len = strlen(msg);
    while (len && msg[len - 1] == '\n')
        msg[--len] = 0;
    tq_log_timestamp(stamp, sizeof stamp);
    int n;
    if (s_json) {
        n = snprintf(line, sizeof line,
                     "{\"ts\":\"%s\",\"level\":\"%s\",\"ident\":\"", stamp,
                     tq_log_level_name(level));
        size_t used = s_json_escape(line, sizeof line, (size_t)n, s_ident);
        used += (size_t)snprintf(line + used, sizeof line - used,
                                 "\",\"pid\":%ld,\"msg\":\"", (long)getpid());
        used = s_json_escape(line, sizeof line, used, msg);
        snprintf(line + used, sizeof line - used, "\"}\n");
    } else {
        /* upper case so grep and eyes find the level at once */
        char upper[8];
        const char *name = tq_log_level_name(level);
        size_t i = 0;
        for (; name[i] && i + 1 < sizeof upper; i++)
            upper[i] = (char)(name[i] - 32 * (name[i] >= 'a'));
        upper[i] = 0;
        snprintf(line, sizeof line, "%s %s[%ld] %s %s\n", stamp, s_ident,
                 (long)getpid(), upper, msg);
    }
    /* one write: lines of several processes sharing stderr never mix */
    size_t total = strlen(line);
    const char *p = line;
    while (total > 0) {
        ssize_t w = write(STDERR_FILENO, p, total);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        total -= (size_t)w;
    }
    errno = saved;
}

void
tq_log(int level, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    tq_log_v(level, format, ap);
    va_end(ap);
}

int
tq_log_set_file(const char *path, char *why, size_t size)
{
    if (strlen(path) >= sizeof s_path) {
        snprintf(why, size, "--log-file: path too long");
        return -1;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(why, size, "--log-file %s: %s", path, strerror(errno));
        return -1;
    }
    if (dup2(fd, STDERR_FILENO) < 0) {
        snprintf(why, size, "--log-file %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    strcpy(s_path, path);
    return 0;
}

int
tq_log_reopen(void)
{
    if (!s_path[0])
        return -1;
    int saved = errno;
    int fd = open(s_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    int rc = -1;
    if (fd >= 0) {
        rc = dup2(fd, STDERR_FILENO) < 0 ? -1 : 0;
        close(fd);
    }
    errno = saved;
    return rc;
}

/* ---- czmq's log --------------------------------------------------------- */

/* czmq writes "L: [(ident) ]yy-mm-dd hh:mm:ss text\n" per line; the cookie
   gathers a line, takes the level letter and the text, and logs it. */
typedef struct {
    char line[2048];
    size_t used;
} s_cookie_t;

static void
s_czmq_line(char *line)
{
    int level = TQ_LOG_INFO;
    char *text = line;
    if (line[0] && line[1] == ':' && line[2] == ' ') {
        switch (line[0]) {
        case 'E':
        case 'F':
            level = TQ_LOG_ERROR;
            break;
        case 'W':
            level = TQ_LOG_WARNING;
            break;
        case 'D':
            level = TQ_LOG_DEBUG;
            break;
        default:
            level = TQ_LOG_INFO;
        }
        text = line + 3;
        if (*text == '(') {
            char *close = strstr(text, ") ");
            if (close)
                text = close + 2;
        }
        /* the date and time czmq put there, local and without a zone */
        if (strlen(text) >= 18 && text[2] == '-' && text[5] == '-' &&
            text[8] == ' ' && text[11] == ':' && text[17] == ' ')
            text += 18;
    }
    tq_log(level, "%s", text);
}

static ssize_t
s_cookie_write(void *arg, const char *data, size_t size)
{
    s_cookie_t *self = arg;
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '\n' || self->used + 1 >= sizeof self->line) {
            self->line[self->used] = 0;
            if (self->used)
                s_czmq_line(self->line);
            self->used = 0;
            if (data[i] == '\n')
                continue;
        }
        self->line[self->used++] = data[i];
    }
    return (ssize_t)size;
}

static pthread_once_t s_czmq_once = PTHREAD_ONCE_INIT;

static void
s_take_czmq(void)
{
    static s_cookie_t cookie;
    cookie_io_functions_t io = {.write = s_cookie_write};
    FILE *stream = fopencookie(&cookie, "w", io);
    if (!stream) {
        zsys_set_logstream(stderr);
        return;
    }
    setvbuf(stream, NULL, _IOLBF, 0);
    zsys_set_logstream(stream);
}

void
tq_log_take_czmq(void)
{
    pthread_once(&s_czmq_once, s_take_czmq);
}

/* libtq loaded: stdout is the program's, never czmq's (issue 12). This
   sets a pointer only; no ZeroMQ context is made here. */
__attribute__((constructor)) static void
s_on_load(void)
{
    tq_log_take_czmq();
}
