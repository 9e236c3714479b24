/* dying.c — is the process that closes a file being killed by a signal?
 *
 * When a process dies, the kernel closes its files, and each close of a busfs file
 * is a FLUSH whose context names the closing thread. While it waits for our reply
 * that task still exists: /proc/PID/stat field 9 (flags) has PF_EXITING, and field
 * 52 (exit_code) is already final, its low 7 bits the killing signal (0 for a
 * normal exit, _exit(3) gives 768). The command name (field 2) may hold spaces and
 * parentheses, so fields are counted from the last ')'. Read only at a FLUSH that
 * has bytes pending, so the common path costs nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "fs.h"

#define PF_EXITING 0x4

/* Fields 9 (flags) and 52 (exit_code) of /proc/PID/stat; false when unreadable. */
static bool proc_stat(pid_t pid, unsigned long *flags, long *exit_code)
{
	char path[64], text[2048];
	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, text, sizeof text - 1);
	close(fd);
	if (n <= 0)
		return false;
	text[n] = '\0';
	char *p = strrchr(text, ')');
	if (!p)
		return false;
	/* After ")": field 3 (state) onwards, separated by single spaces. */
	int field = 2;
	bool have_flags = false;
	while ((p = strchr(p, ' ')) != NULL) {
		p++;
		field++;
		if (field == 9) {
			*flags = strtoul(p, NULL, 10);
			have_flags = true;
		} else if (field == 52) {
			*exit_code = strtol(p, NULL, 10);
			return have_flags;
		}
	}
	return false;
}

int dying_signal(pid_t pid)
{
	unsigned long flags;
	long code;
	if (pid <= 0 || !proc_stat(pid, &flags, &code) || !(flags & PF_EXITING))
		return 0;
	return (int)(code & 0x7f);
}

bool dying_or_gone(pid_t pid)
{
	unsigned long flags;
	long code;
	return pid <= 0 || !proc_stat(pid, &flags, &code) || (flags & PF_EXITING);
}
