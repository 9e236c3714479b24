/*
 * unit.h — shared helpers of the core unit tests: a temp dir per test, whole-file
 * read/write, and a fake clock.
 *
 * The one thing a reader must know: Criterion runs every test in its own process,
 * so the per-test globals below (the temp dir, the fake time) are private to a test.
 * .fini removes the temp dir; a timed-out test skips .fini and leaves it in /tmp.
 */
#ifndef BUSFS_TESTS_UNIT_H
#define BUSFS_TESTS_UNIT_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "busfs/buf.h"

#define UNIT_TIMEOUT 30 /* seconds, every test */

/* 2026-11-23T05:05:12.123456Z, the time of the SPEC's example envelope. */
#define UNIT_T0_US INT64_C(1795410312123456)

/* The temp dir of the current test (/tmp/busfs-unit-XXXXXX), "" when none. */
extern char unit_dir[PATH_MAX];

/* .init / .fini: make and remove unit_dir; unit_setup also installs the fake clock
 * at UNIT_T0_US, unit_teardown restores the real one. */
void unit_setup(void);
void unit_teardown(void);

/* unit_dir/name into out (PATH_MAX bytes); returns out. */
char *unit_path(char *out, const char *name);

/* Removes a tree (does not follow symlinks). */
void unit_rmtree(const char *path);

/* Reads a whole file into b (reset first); -errno on failure. */
int unit_read_file(const char *path, struct buf *b);
/* Creates or replaces a file with exactly these bytes; -errno on failure. */
int unit_write_file(const char *path, const void *data, size_t len);
/* Appends bytes to a file; -errno on failure. */
int unit_append_file(const char *path, const void *data, size_t len);
/* The size of a file, or -1. */
long long unit_file_size(const char *path);

/* The fake clock: every call to bus_clock_now_us() returns the set time, and then
 * advances it by one microsecond so consecutive events stay distinct. */
void unit_clock_set(int64_t us);
int64_t unit_clock_get(void);

#endif
