/*
 * test_logs.c — SPEC §11 "Logs": a string from a user cannot forge a line,
 * neither in the server's own log (stderr in the foreground, syslog once
 * daemonised) nor in an `errors` record. Control characters reach the log
 * as \u00XX and a backslash as \\, so one refusal is exactly one line.
 *
 * The server of each test runs in the foreground, its stderr in
 * bus.log (server.log of the fixture), which the tests read line by line.
 */
#include "harness.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The server log's lines that contain needle, counted; *forged: a line
 * starting with forged_prefix exists. */
static size_t log_lines_with(const char *needle, const char *forged_prefix, bool *forged)
{
    size_t len;
    char *text = bus_read_ok(bus.log, &len);
    size_t n = 0;
    *forged = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        n += strstr(line, needle) != NULL;
        *forged = *forged || strncmp(line, forged_prefix, strlen(forged_prefix)) == 0;
    }
    free(text);
    return n;
}

BUS_TEST(logs, a_newline_in_a_refused_name_is_one_server_log_line)
{
    errno = 0;
    cr_assert(mkdir(AT("agents/evil\nFAKE line"), 0755) < 0 && errno == EINVAL,
              "mkdir of a name with a newline gave %s, want EINVAL", strerror(errno));
    bool forged;
    size_t n = log_lines_with("evil", "FAKE", &forged);
    cr_assert_eq(n, 1, "the server log has %zu lines naming the refused name, want 1", n);
    cr_assert(!forged, "a line of the server log starts with FAKE: the name forged it");
    n = log_lines_with("evil\\u000aFAKE line", "FAKE", &forged);
    cr_assert_eq(n, 1, "the newline is not logged as \\u000a");
}

BUS_TEST(logs, control_characters_and_backslashes_are_escaped_in_the_server_log)
{
    errno = 0;
    cr_assert(mkdir(AT("agents/ctl\r\x1b[31m\x7f\\x\tend"), 0755) < 0 && errno == EINVAL,
              "mkdir gave %s, want EINVAL", strerror(errno));
    bool forged;
    size_t n = log_lines_with("ctl\\u000d\\u001b[31m\\u007f\\\\x\\u0009end", "\x1b", &forged);
    cr_assert_eq(n, 1, "the server log does not show the name escaped:\n%s",
                 bus_read_ok(bus.log, NULL));
    size_t len;
    char *text = bus_read_ok(bus.log, &len);
    for (size_t i = 0; i < len; i++)
        cr_assert(text[i] == '\n' || ((unsigned char)text[i] >= 0x20 && text[i] != 0x7f),
                  "the server log holds the control character 0x%02x at offset %zu",
                  (unsigned char)text[i], i);
    free(text);
}

BUS_TEST(logs, control_characters_in_a_refused_name_give_one_json_errors_record)
{
    static const char *const names[] = {"evil\nFAKE", "evil\rFAKE", "evil\x1b[2JFAKE",
                                        "evil\177FAKE", "evil\\\"FAKE"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        size_t before = bus_jsonl_count(AT("errors")); /* each line one JSON object */
        errno = 0;
        cr_assert(mkdir(AT("agents/%s", names[i]), 0755) < 0 && errno == EINVAL,
                  "mkdir of name %zu gave %s, want EINVAL", i, strerror(errno));
        json_t *lines = bus_jsonl(AT("errors"));
        cr_assert_eq(json_array_size(lines), before + 1,
                     "name %zu: errors gained %zu lines, want 1", i,
                     json_array_size(lines) - before);
        json_t *rec = json_array_get(lines, before);
        char want[128];
        snprintf(want, sizeof want, "agents/%s", names[i]);
        cr_assert_str_eq(bus_str(rec, "path"), want, "name %zu: the path as recorded", i);
        cr_assert_str_eq(bus_str(rec, "errno"), "EINVAL");
        json_decref(lines);
    }
}
