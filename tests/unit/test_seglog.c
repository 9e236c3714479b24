/*
 * test_seglog.c — core/seglog.c: logs of lines in segment files with offsets that
 * only grow: appends, reads across segments, rotation, expiry by age and size,
 * reopening, and the torn line a crash can leave.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/seglog.h"
#include "unit.h"

#define SEC INT64_C(1000000)

static char dir[PATH_MAX];
static struct seglog *log_;

static void setup(void)
{
    unit_setup();
    unit_path(dir, "points");
}

static void teardown(void)
{
    seglog_close(log_);
    log_ = NULL;
    unit_teardown();
}

#define SEGLOG_TEST(name) Test(seglog, name, .init = setup, .fini = teardown, .timeout = 30)

static void open_log(struct seglog_config cfg, int64_t now)
{
    cfg.dir = dir;
    cfg.prefix = "points";
    struct bus_error err = {0};
    seglog_close(log_);
    log_ = NULL;
    cr_assert_eq(seglog_open(&cfg, now, &log_, &err), 0, "open: %s", err.reason);
}

static uint64_t append(const char *text, int64_t now)
{
    uint64_t off = UINT64_MAX;
    cr_assert_eq(seglog_append(log_, text, strlen(text), now, &off), 0);
    return off;
}

/* Everything readable from off on, as a reader that follows the offsets would see it. */
static char *read_from(uint64_t off, uint64_t *first)
{
    static char out[1 << 16];
    size_t have = 0;
    bool moved = false;
    for (;;) {
        uint64_t at = off;
        ssize_t n = seglog_read(log_, &at, out + have, 7); /* small reads cross segments */
        cr_assert_geq(n, 0);
        if (n == 0)
            break;
        if (!moved && first)
            *first = at;
        cr_assert(moved == false || at == off, "reads must continue where they ended");
        moved = true;
        have += (size_t)n;
        off = at + (uint64_t)n;
    }
    out[have] = '\0';
    return out;
}

static int count_files(void)
{
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c '^points-[0-9]\\{20\\}\\.jsonl$'", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    cr_assert(p && fscanf(p, "%d", &n) == 1);
    pclose(p);
    return n;
}

SEGLOG_TEST(appends_get_growing_offsets_and_read_back_across_segments)
{
    open_log((struct seglog_config){.rotate_bytes = 10}, 0);
    cr_assert_eq(append("a1\nb22\n", 1), 0);
    cr_assert_eq(append("c333\n", 2), 7, "7 + 5 > 10: this append starts a segment");
    cr_assert_eq(append("d4444\ne5\n", 3), 12, "and so does this one");
    cr_assert_eq(seglog_end(log_), 21);
    cr_assert_eq(seglog_start(log_), 0);
    cr_assert_eq(seglog_segments(log_), 3);
    cr_assert_eq(count_files(), 3);
    cr_assert_str_eq(read_from(0, NULL), "a1\nb22\nc333\nd4444\ne5\n");
    cr_assert_str_eq(read_from(13, NULL), "4444\ne5\n");
    cr_assert_str_eq(read_from(21, NULL), "");
}

static int collect(void *ctx, uint64_t off, const char *line, size_t len)
{
    char *out = ctx;
    sprintf(out + strlen(out), "%llu:%.*s;", (unsigned long long)off, (int)len, line);
    return 0;
}

SEGLOG_TEST(reopening_keeps_offsets_and_a_torn_line_is_cut)
{
    open_log((struct seglog_config){.rotate_bytes = 8}, 0);
    append("one\ntwo\n", 1);
    append("three\n", 2);
    seglog_close(log_);
    log_ = NULL;
    /* A crash in the middle of an append leaves part of a line behind. */
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/points-%020d.jsonl", dir, 8);
    cr_assert_eq(unit_append_file(path, "fo", 2), 0);
    open_log((struct seglog_config){.rotate_bytes = 8}, 10);
    cr_assert_eq(seglog_end(log_), 14, "the torn 'fo' is gone");
    cr_assert_eq(unit_file_size(path), 6);
    char lines[256] = "";
    cr_assert_eq(seglog_scan(log_, collect, lines), 0);
    cr_assert_str_eq(lines, "0:one;4:two;8:three;");
    cr_assert_eq(append("four\n", 11), 14);
    cr_assert_str_eq(read_from(0, NULL), "one\ntwo\nthree\nfour\n");
}

static void note_start(void *ctx, uint64_t start)
{
    *(uint64_t *)ctx = start;
}

SEGLOG_TEST(old_segments_expire_by_age_and_readers_skip_to_the_start)
{
    uint64_t noted = 0;
    open_log((struct seglog_config){.rotate_us = 10 * SEC, .keep_us = 30 * SEC}, 0);
    append("t0\n", 0);
    append("t5\n", 5 * SEC);
    append("t12\n", 12 * SEC);   /* second segment */
    append("t25\n", 25 * SEC);   /* third */
    cr_assert_eq(seglog_segments(log_), 3);
    cr_assert_eq(seglog_expire(log_, 35 * SEC), 0, "the first segment's last line is 30 s old");
    cr_assert_eq(seglog_expire(log_, 36 * SEC), 1);
    cr_assert_eq(seglog_start(log_), 6);
    cr_assert_eq(seglog_end(log_), 14, "the end never moves back");
    cr_assert_eq(seglog_bytes(log_), 8);
    uint64_t first = 0;
    cr_assert_str_eq(read_from(0, &first), "t12\nt25\n");
    cr_assert_eq(first, 6, "a read before the start is served from the start");
    cr_assert_eq(count_files(), 2);
    /* Reopening keeps the offsets; expiring long after drops what expired meanwhile,
     * and says first where the log will start. */
    seglog_close(log_);
    log_ = NULL;
    open_log((struct seglog_config){.rotate_us = 10 * SEC, .keep_us = 30 * SEC,
                                    .before_drop = note_start, .ctx = &noted}, 0);
    cr_assert_eq(seglog_end(log_), 14);
    cr_assert_eq(seglog_start(log_), 6);
    cr_assert_eq(seglog_expire(log_, INT64_C(1) << 62), 2, "files keep their mtime as the time of their last line");
    cr_assert_eq(noted, 14, "everything went: the log starts at its end");
    cr_assert_eq(seglog_start(log_), 14);
}

SEGLOG_TEST(keep_bytes_drops_the_oldest_segments_but_never_the_last)
{
    open_log((struct seglog_config){.rotate_bytes = 10, .keep_bytes = 25}, 0);
    for (int i = 0; i < 10; i++)
        append("12345678\n", i);  /* 9 bytes: one segment each */
    cr_assert_leq(seglog_bytes(log_), 25);
    cr_assert_eq(seglog_end(log_), 90);
    cr_assert_eq(seglog_start(log_), 90 - seglog_bytes(log_));
    cr_assert_eq(count_files(), (int)seglog_segments(log_));
    open_log((struct seglog_config){.rotate_bytes = 10, .keep_bytes = 5}, 0);
    cr_assert_gt(seglog_segments(log_), 1, "opening drops nothing");
    seglog_expire(log_, 0);
    cr_assert_eq(seglog_segments(log_), 1, "the last segment stays even when too big");
}

static int stop_at_second(void *ctx, uint64_t off, const char *line, size_t len)
{
    int *n = ctx;
    return ++*n == 2 ? 42 : 0;
}

SEGLOG_TEST(scan_stops_when_asked_and_handles_long_lines)
{
    open_log((struct seglog_config){0}, 0);
    size_t big = 200000;
    char *line = malloc(big + 1);
    memset(line, 'x', big);
    line[big - 1] = '\n';
    line[big] = '\0';
    append(line, 1);
    append("short\n", 2);
    free(line);
    int n = 0;
    cr_assert_eq(seglog_scan(log_, stop_at_second, &n), 42);
    cr_assert_eq(n, 2);
}

SEGLOG_TEST(a_symlinked_directory_is_refused)
{
    char target[PATH_MAX];
    unit_path(target, "elsewhere");
    cr_assert_eq(mkdir(target, 0700), 0);
    cr_assert_eq(symlink(target, dir), 0);
    struct seglog_config cfg = {.dir = dir, .prefix = "points"};
    struct bus_error err = {0};
    cr_assert_lt(seglog_open(&cfg, 0, &log_, &err), 0);
    cr_assert_null(log_);
}
