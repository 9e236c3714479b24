/* regfile.h — opening a file that must be a regular file, without ever blocking.
 *
 * A FIFO, a device or a symbolic link planted where the store expects a file must be
 * refused at once: a plain open(2) of a FIFO waits for a writer forever. */
#ifndef BUSFS_REGFILE_H
#define BUSFS_REGFILE_H

#include <sys/types.h>

/* openat(dirfd, name, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, mode), then fstat:
 * returns the fd (blocking mode restored) or a negative errno; -EMEDIUMTYPE when the
 * name is anything but a regular file (a symbolic link included). */
int open_regular_at(int dirfd, const char *name, int flags, mode_t mode);

/* "a FIFO", "a symbolic link", ...: what lstat says name is, for a reason. */
const char *regfile_kind(int dirfd, const char *name);

#endif
