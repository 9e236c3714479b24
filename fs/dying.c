/* dying.c — is the process that closes a file being killed by a signal?
 *
 * When a process dies, the kernel closes its files, and each close of a busfs file
 * is a FLUSH whose context names the closing thread. While it waits for our reply
 * that task still exists: /proc/PID/stat field 9 (flags) has PF_EXITING, and field
 * 52 (exit_code) is already final, its low 7 bits the killing signal (0 for a
 * normal exit, _exit(3) gives 768). The command name (field 2) may hold spaces and
 * parentheses, so fields are counted from the last ')'.
 *
 * The one thing to know: /proc/PID/stat must never be read at the FLUSH an exec
 * sends (it closes O_CLOEXEC files while holding the exec lock that reading stat
 * waits for: the single dispatch thread would wait forever). So /proc/PID/statm is
 * read first: it takes no such lock, and it reads all zeros only once the process
 * has let go of its memory, which an exiting process does before it closes its
 * files and a live or exec'ing one never does. Only then is stat read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
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

/* 1 when the process has no memory left (it is exiting, or a zombie), 0 when it
 * has, -1 when /proc cannot tell (it is gone). */
static int memory_gone(pid_t pid)
{
	char path[64], text[256];
	snprintf(path, sizeof path, "/proc/%ld/statm", (long)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, text, sizeof text - 1);
	close(fd);
	if (n <= 0)
		return -1;
	text[n] = '\0';
	/* The first field is the size in pages: 0 only without an address space. */
	return strtoul(text, NULL, 10) == 0 ? 1 : 0;
}

int dying_signal(pid_t pid)
{
	unsigned long flags;
	long code;
	if (pid <= 0 || memory_gone(pid) != 1 || !proc_stat(pid, &flags, &code) ||
	    !(flags & PF_EXITING))
		return 0;
	return (int)(code & 0x7f);
}

bool dying_or_gone(pid_t pid)
{
	return pid <= 0 || memory_gone(pid) != 0;
}

bool same_process(pid_t a, pid_t b)
{
	char path[96];
	struct stat st;
	if (a == b)
		return true;
	/* /proc/B/task/A exists only when A is a thread of B's process. */
	snprintf(path, sizeof path, "/proc/%ld/task/%ld", (long)b, (long)a);
	return stat(path, &st) == 0;
}
