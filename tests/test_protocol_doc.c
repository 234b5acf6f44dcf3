/* test_protocol_doc.c - PROTOCOL.md and the code cannot drift: the
   document's command tables (section 4), its task states (section 6) and
   its status codes (section 7) are read and compared with the protocol
   model the codec and the broker use (tq_proto_commands), with the state
   names and with the error codes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tq/tq_error.h"
#include "tq_proto.h"

#define DOC TQ_SOURCE_DIR "/proto/PROTOCOL.md"

static char *
s_read_doc(void)
{
    FILE *f = fopen(DOC, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)size, f), (size_t)size);
    text[size] = 0;
    fclose(f);
    return text;
}

static char *
s_trim(char *s)
{
    while (*s == ' ')
        s++;
    char *end = s + strlen(s);
    while (end > s && end[-1] == ' ')
        *--end = 0;
    return s;
}

/* Splits a table row into at most max cells (an escaped \| stays in its
   cell). Returns the count. */
static int
s_cells(char *line, char **cells, int max)
{
    int count = 0;
    char *p = line;
    if (*p == '|')
        p++;
    char *start = p;
    for (; *p && count < max; p++) {
        if (*p == '\\' && p[1] == '|') {
            p++;
            continue;
        }
        if (*p == '|') {
            *p = 0;
            cells[count++] = s_trim(start);
            start = p + 1;
        }
    }
    return count;
}

/* The model's field codes written as PROTOCOL.md writes them: "id, task
   \| retries" -> "IT|r" through tq_proto_field_name. */
static void
s_doc_fields(const char *text, char *codes, size_t size)
{
    size_t n = 0;
    codes[0] = 0;
    if (strcmp(text, "—") == 0)
        return;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    /* drop comments in parentheses */
    char *w = buf;
    int depth = 0;
    for (char *r = buf; *r; r++) {
        if (*r == '(')
            depth++;
        else if (*r == ')')
            depth--;
        else if (!depth)
            *w++ = *r;
    }
    *w = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *t = s_trim(tok);
        char *bar = strstr(t, "\\|");
        char *names[2] = {t, NULL};
        if (bar) {
            *bar = 0;
            names[0] = s_trim(t);
            names[1] = s_trim(bar + 2);
        }
        for (int k = 0; k < 2; k++) {
            if (k == 1 && !bar)
                break;
            if (k == 1)
                codes[n++] = '|';
            if (!*names[k])
                continue;
            char code = 0;
            for (int c = 1; c < 128 && !code; c++) {
                const char *name = tq_proto_field_name((char)c);
                if (name && strcmp(name, names[k]) == 0)
                    code = (char)c;
            }
            if (!code)
                fail_msg("PROTOCOL.md names an unknown field \"%s\"", names[k]);
            assert_true(n + 2 < size);
            codes[n++] = code;
        }
    }
    codes[n] = 0;
}

/* The senders a direction column names. */
static unsigned
s_doc_from(const char *direction)
{
    static const struct {
        const char *text;
        unsigned from;
    } map[] = {
        {"C → B", TQ_FROM_CLIENT},
        {"B → C", TQ_FROM_BROKER},
        {"C ↔ B", TQ_FROM_CLIENT | TQ_FROM_BROKER},
        {"C, child ↔ B", TQ_FROM_CLIENT | TQ_FROM_BROKER | TQ_FROM_CHILD},
        {"either", TQ_FROM_ANY},
        {"B → any", TQ_FROM_BROKER},
        {"child → B", TQ_FROM_CHILD},
        {"B → child", TQ_FROM_BROKER},
        {"W → B", TQ_FROM_CHILD | TQ_FROM_SUPERVISOR},
        {"sup → B", TQ_FROM_SUPERVISOR},
        {"B → sup", TQ_FROM_BROKER},
        {"sup ↔ B", TQ_FROM_SUPERVISOR | TQ_FROM_BROKER},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(map[i].text, direction) == 0)
            return map[i].from;
    fail_msg("PROTOCOL.md: unknown direction \"%s\"", direction);
    return 0;
}

static void
test_commands(void **state)
{
    (void)state;
    char *doc = s_read_doc();
    size_t count;
    const tq_proto_command_t *model = tq_proto_commands(&count);
    int seen[256] = {0};
    int rows = 0;
    unsigned endpoint = 0;
    char *save = NULL;
    for (char *line = strtok_r(doc, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "### 4.1", 7) == 0)
            endpoint = TQ_ENDPOINT_CLIENTS;
        else if (strncmp(line, "### 4.2", 7) == 0)
            endpoint = TQ_ENDPOINT_WORKERS;
        else if (strncmp(line, "## 5", 4) == 0)
            endpoint = 0;
        if (!endpoint || strncmp(line, "| 0x", 4) != 0)
            continue;
        char *cells[8];
        int n = s_cells(line, cells, 8);
        assert_int_equal(n, 5);
        unsigned code = (unsigned)strtoul(cells[0], NULL, 16);
        const tq_proto_command_t *cmd = tq_proto_command((uint8_t)code);
        if (!cmd)
            fail_msg("PROTOCOL.md lists 0x%02X %s, the model does not", code,
                     cells[1]);
        printf("  0x%02X %-12s %-10s %s\n", code, cells[1], cells[2],
               cmd->fields);
        assert_string_equal(cells[1], cmd->name);
        char codes[64];
        s_doc_fields(cells[3], codes, sizeof codes);
        if (strcmp(codes, cmd->fields) != 0)
            fail_msg("%s: PROTOCOL.md's fields \"%s\" read as \"%s\", the "
                     "model has \"%s\"",
                     cmd->name, cells[3], codes, cmd->fields);
        bool payload = strcmp(cells[4], "—") != 0;
        if (payload != cmd->payload)
            fail_msg("%s: payload in PROTOCOL.md %s, in the model %s",
                     cmd->name, payload ? "yes" : "no",
                     cmd->payload ? "yes" : "no");
        if (s_doc_from(cells[2]) != cmd->from)
            fail_msg("%s: direction \"%s\" does not match the model", cmd->name,
                     cells[2]);
        if (!(cmd->endpoint & endpoint))
            fail_msg("%s is listed under an endpoint it does not use",
                     cmd->name);
        seen[code]++;
        rows++;
    }
    for (size_t i = 0; i < count; i++)
        if (seen[model[i].command] != 1)
            fail_msg("%s is in PROTOCOL.md %d times", model[i].name,
                     seen[model[i].command]);
    assert_int_equal(rows, (int)count);
    free(doc);
}

/* Rows "| N | NAME | ..." of the section starting at `heading`. */
static void
s_check_numbered(const char *heading, const char *(*name_of)(int), int count)
{
    char *doc = s_read_doc();
    char *section = strstr(doc, heading);
    assert_non_null(section);
    char *end = strstr(section + 1, "\n## ");
    if (end)
        *end = 0;
    int seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(section, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] != '|' || line[1] != ' ' || line[2] < '0' || line[2] > '9')
            continue;
        char *cells[4];
        assert_true(s_cells(line, cells, 4) >= 2);
        int value = atoi(cells[0]);
        if (value != seen)
            fail_msg("%s: row %d where %d was expected", heading, value, seen);
        assert_string_equal(cells[1], name_of(value));
        seen++;
    }
    assert_int_equal(seen, count);
    free(doc);
}

static void
test_states(void **state)
{
    (void)state;
    s_check_numbered("## 6. Task states", tq_state_name, TQ_STATE_COUNT_);
}

static void
test_codes(void **state)
{
    (void)state;
    s_check_numbered("## 7. Status codes", tq_error_name, TQ_ERROR_COUNT_);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_states),
        cmocka_unit_test(test_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
