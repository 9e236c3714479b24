/* error.c — bus_error helpers and errno names used in logs and metrics. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "busfs/error.h"

int bus_fail(struct bus_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->reason, sizeof err->reason, fmt, ap);
		va_end(ap);
	}
	return -code;
}

const char *bus_errno_name(int code)
{
	static __thread char other[16];

	switch (code) {
	case EINVAL: return "EINVAL";
	case ENOENT: return "ENOENT";
	case EFBIG: return "EFBIG";
	case EAGAIN: return "EAGAIN";
	case ENOSPC: return "ENOSPC";
	case ESHUTDOWN: return "ESHUTDOWN";
	case EACCES: return "EACCES";
	case EEXIST: return "EEXIST";
	case ENOTEMPTY: return "ENOTEMPTY";
	case EBUSY: return "EBUSY";
	case EIO: return "EIO";
	case ENOMEM: return "ENOMEM";
	case EPERM: return "EPERM";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	case EINTR: return "EINTR";
	case EDQUOT: return "EDQUOT";
	case ESTALE: return "ESTALE";
	case ETIMEDOUT: return "ETIMEDOUT";
	}
	snprintf(other, sizeof other, "E%d", code);
	return other;
}

const char *bus_shown(char out[BUS_SHOWN_MAX], const char *p, size_t n)
{
	size_t k = n > 40 ? 40 : n;
	for (size_t i = 0; i < k; i++) {
		unsigned char c = (unsigned char)p[i];
		out[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (k < n) {
		memcpy(out + k, "...", 3);
		k += 3;
	}
	out[k] = '\0';
	return out;
}
