/* regfile.c — non-blocking opening of files that must be regular files. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busfs/regfile.h"

int open_regular_at(int dirfd, const char *name, int flags, mode_t mode)
{
	int fd = openat(dirfd, name, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0) {
		/* ELOOP: a symbolic link; ENXIO: a FIFO without a reader opened for writing. */
		return errno == ELOOP || errno == ENXIO ? -EMEDIUMTYPE : -errno;
	}
	struct stat sb;
	int rc = fstat(fd, &sb) < 0 ? -errno : S_ISREG(sb.st_mode) ? 0 : -EMEDIUMTYPE;
	if (rc == 0 && fcntl(fd, F_SETFL, flags & O_APPEND) < 0)
		rc = -errno;
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
}

const char *regfile_kind(int dirfd, const char *name)
{
	struct stat sb;
	if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		return "not a regular file";
	if (S_ISLNK(sb.st_mode))
		return "a symbolic link";
	if (S_ISFIFO(sb.st_mode))
		return "a FIFO";
	if (S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode))
		return "a device";
	if (S_ISSOCK(sb.st_mode))
		return "a socket";
	if (S_ISDIR(sb.st_mode))
		return "a directory";
	return "not a regular file";
}
