/*
 * test_errlog.c — core/errlog.c: the capped JSONL logs behind the `errors` files.
 *
 * The file a reader sees is exactly the lines kept, so its size is honest and an
 * offset read returns the bytes at that offset.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/errlog.h"
#include "unit.h"

#define ERRLOG_TEST(name) Test(errlog, name, .timeout = UNIT_TIMEOUT)

static void add(struct errlog *l, int i)
{
    char line[64];
    int n = snprintf(line, sizeof line, "{\"n\":%d}\n", i);
    errlog_add(l, line, (size_t)n);
}

static char *read_all(const struct errlog *l)
{
    struct buf b;
    buf_init(&b);
    size_t n = errlog_read(l, 0, SIZE_MAX, &b);
    cr_assert_eq(n, l->text.len);
    buf_putc(&b, '\0'); /* b.data is non-NULL even for an empty log */
    return b.data;
}

ERRLOG_TEST(an_empty_log_reads_nothing)
{
    struct errlog l;
    errlog_init(&l, 3);
    struct buf b;
    buf_init(&b);
    cr_assert_eq(errlog_read(&l, 0, 100, &b), 0);
    cr_assert_eq(b.len, 0);
    buf_free(&b);
    errlog_free(&l);
}

ERRLOG_TEST(the_log_keeps_exactly_the_newest_cap_lines)
{
    struct errlog l;
    errlog_init(&l, 3);
    add(&l, 1);
    add(&l, 2);
    char *s = read_all(&l);
    cr_assert_str_eq(s, "{\"n\":1}\n{\"n\":2}\n");
    free(s);
    add(&l, 3);
    add(&l, 4);
    add(&l, 5);
    cr_assert_eq(l.lines, 3);
    s = read_all(&l);
    cr_assert_str_eq(s, "{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n");
    free(s);
    for (int i = 6; i <= 1000; i++)
        add(&l, i);
    cr_assert_eq(l.lines, 3);
    s = read_all(&l);
    cr_assert_str_eq(s, "{\"n\":998}\n{\"n\":999}\n{\"n\":1000}\n");
    cr_assert_eq(l.text.len, strlen(s), "the size is exactly the lines kept");
    free(s);
    errlog_free(&l);
}

ERRLOG_TEST(lines_of_different_lengths_are_dropped_whole)
{
    struct errlog l;
    errlog_init(&l, 2);
    errlog_add(&l, "short\n", 6);
    errlog_add(&l, "a much longer line than the first\n", 34);
    errlog_add(&l, "x\n", 2);
    char *s = read_all(&l);
    cr_assert_str_eq(s, "a much longer line than the first\nx\n");
    free(s);
    errlog_free(&l);
}

ERRLOG_TEST(read_honours_offset_and_size)
{
    struct errlog l;
    errlog_init(&l, 10);
    errlog_add(&l, "0123456789\n", 11);
    errlog_add(&l, "abcdef\n", 7);
    struct buf b;
    buf_init(&b);
    cr_assert_eq(errlog_read(&l, 0, 4, &b), 4);
    cr_assert_str_eq(b.data, "0123");
    buf_reset(&b);
    cr_assert_eq(errlog_read(&l, 8, 5, &b), 5);
    cr_assert_str_eq(b.data, "89\nab");
    buf_reset(&b);
    cr_assert_eq(errlog_read(&l, 15, 100, &b), 3, "a read past the end is short");
    cr_assert_str_eq(b.data, "ef\n");
    buf_reset(&b);
    cr_assert_eq(errlog_read(&l, 18, 100, &b), 0, "at the end: nothing");
    cr_assert_eq(errlog_read(&l, 1000, 100, &b), 0, "beyond the end: nothing");
    cr_assert_eq(b.len, 0);
    cr_assert_eq(errlog_read(&l, 3, 0, &b), 0, "a zero-size read");
    /* Reads append to what the buffer holds. */
    buf_puts(&b, ">");
    cr_assert_eq(errlog_read(&l, 11, 3, &b), 3);
    cr_assert_str_eq(b.data, ">abc");
    buf_free(&b);
    errlog_free(&l);
}

ERRLOG_TEST(offsets_refer_to_the_lines_kept_now)
{
    /* After the oldest line goes, offset 0 is the start of the new oldest line. */
    struct errlog l;
    errlog_init(&l, 2);
    add(&l, 1);
    add(&l, 2);
    add(&l, 3);
    struct buf b;
    buf_init(&b);
    cr_assert_eq(errlog_read(&l, 0, 8, &b), 8);
    cr_assert_str_eq(b.data, "{\"n\":2}\n");
    buf_free(&b);
    errlog_free(&l);
}

ERRLOG_TEST(a_cap_of_one_keeps_the_last_line)
{
    struct errlog l;
    errlog_init(&l, 1);
    for (int i = 0; i < 50; i++)
        add(&l, i);
    char *s = read_all(&l);
    cr_assert_str_eq(s, "{\"n\":49}\n");
    free(s);
    errlog_free(&l);
}

/* ---------- limits by uid (the top-level log) ---------- */

static size_t lines_of(const struct errlog *l, const char *needle)
{
    char *s = read_all(l);
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p++)
        n++;
    free(s);
    return n;
}

static void add_by(struct errlog *l, uid_t uid, int64_t us, int i)
{
    char line[64];
    int n = snprintf(line, sizeof line, "{\"uid\":%u,\"n\":%d}\n", (unsigned)uid, i);
    errlog_add_by(l, uid, us, line, (size_t)n);
}

ERRLOG_TEST(a_uid_keeps_its_newest_lines_and_the_others_keep_theirs)
{
    struct errlog l;
    errlog_init(&l, 10);
    errlog_limit(&l, 3, 0, 99);
    add_by(&l, 7, 0, 1);
    for (int i = 0; i < 20; i++)
        add_by(&l, 5, 0, i);
    add_by(&l, 7, 0, 2);
    char *s = read_all(&l);
    cr_assert_str_eq(s, "{\"uid\":7,\"n\":1}\n{\"uid\":5,\"n\":17}\n{\"uid\":5,\"n\":18}\n"
                        "{\"uid\":5,\"n\":19}\n{\"uid\":7,\"n\":2}\n");
    cr_assert_eq(l.lines, 5);
    free(s);
    errlog_free(&l);
}

ERRLOG_TEST(past_the_rate_a_second_is_one_suppressed_record)
{
    struct errlog l;
    errlog_init(&l, 100);
    errlog_limit(&l, 50, 2, 99);
    int64_t t = INT64_C(1000000) * 1795410312;
    for (int i = 0; i < 7; i++)
        cr_assert_eq(errlog_add_by(&l, 5, t + i, "{\"uid\":5}\n", 10), i < 2);
    cr_assert(errlog_add_by(&l, 6, t + 10, "{\"uid\":6}\n", 10), "another uid is not limited");
    errlog_flush(&l, t + 999999);
    cr_assert_eq(lines_of(&l, "suppressed"), 0, "the second is not over");
    errlog_flush(&l, t + 1000000);
    cr_assert_eq(lines_of(&l, "\"suppressed\":5,"), 1);
    cr_assert_eq(l.lines, 4);
    errlog_flush(&l, t + 3000000);
    cr_assert_eq(l.lines, 4, "reported once");
    char *s = read_all(&l);
    const char *rec = strstr(s, "{\"timestamp\":\"2026-11-23T05:05:12.000006Z\",\"uid\":5,"
                                "\"suppressed\":5,");
    cr_assert_not_null(rec, "%s", s);
    free(s);
    errlog_free(&l);
}

ERRLOG_TEST(the_spared_uid_has_no_share_and_no_rate)
{
    struct errlog l;
    errlog_init(&l, 1000);
    errlog_limit(&l, 3, 2, 99);
    for (int i = 0; i < 50; i++)
        cr_assert(errlog_add_by(&l, 99, 5, "{\"uid\":99}\n", 11));
    cr_assert_eq(l.lines, 50);
    errlog_free(&l);
}
