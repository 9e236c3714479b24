/* error.h — how the core reports a refusal: an errno and a sentence for a person.
 *
 * Core functions return 0 or a negative errno. Where a person needs to know why,
 * they also fill a caller-supplied struct bus_error; the FUSE layer turns it into
 * the reply and a line in the `errors` logs. */
#ifndef BUSFS_ERROR_H
#define BUSFS_ERROR_H

#include <stdarg.h>
#include <stddef.h>

struct bus_error {
	int code;          /* positive errno, 0 when nothing failed */
	char reason[256];  /* one sentence, no trailing newline */
};

/* Fills err (when not NULL) and returns -code, so callers can `return bus_fail(...)`. */
int bus_fail(struct bus_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A piece of input quoted in a reason: printable ASCII only (others as '?'), cut at
 * 40 bytes with "...". out must hold BUS_SHOWN_MAX bytes; returns out. */
#define BUS_SHOWN_MAX 48
const char *bus_shown(char out[BUS_SHOWN_MAX], const char *p, size_t n);

/* The symbolic name of an errno ("EAGAIN"), or "E<number>" for unknown ones. */
const char *bus_errno_name(int code);

#endif
