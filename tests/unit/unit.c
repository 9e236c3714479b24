/*
 * unit.c — shared helpers of the core unit tests (see unit.h).
 */
#include "unit.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/clock.h"

char unit_dir[PATH_MAX];

static int64_t fake_us = UNIT_T0_US;

static int64_t fake_now(void)
{
    return fake_us++;
}

void unit_clock_set(int64_t us)
{
    fake_us = us;
}

int64_t unit_clock_get(void)
{
    return fake_us;
}

void unit_setup(void)
{
    snprintf(unit_dir, sizeof unit_dir, "/tmp/busfs-unit-XXXXXX");
    cr_assert_not_null(mkdtemp(unit_dir), "mkdtemp: %s", strerror(errno));
    fake_us = UNIT_T0_US;
    bus_clock_set(fake_now);
}

void unit_teardown(void)
{
    bus_clock_set(NULL);
    if (unit_dir[0])
        unit_rmtree(unit_dir);
    unit_dir[0] = '\0';
}

char *unit_path(char *out, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", unit_dir, name);
    cr_assert(n > 0 && n < PATH_MAX, "path too long: %s/%s", unit_dir, name);
    return out;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void unit_rmtree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int unit_read_file(const char *path, struct buf *b)
{
    buf_reset(b);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        buf_append(b, chunk, (size_t)n);
    }
    close(fd);
    return buf_ok(b) ? 0 : -ENOMEM;
}

static int write_flags(const char *path, int flags, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0600);
    if (fd < 0)
        return -errno;
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        p += n;
        len -= (size_t)n;
    }
    return close(fd) < 0 ? -errno : 0;
}

int unit_write_file(const char *path, const void *data, size_t len)
{
    return write_flags(path, O_TRUNC, data, len);
}

int unit_append_file(const char *path, const void *data, size_t len)
{
    return write_flags(path, O_APPEND, data, len);
}

long long unit_file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) < 0 ? -1 : (long long)sb.st_size;
}
