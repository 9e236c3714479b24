/* log.c — the server's log: one line per refused operation or error.
 *
 * In the foreground lines go to stderr ("busfs: ..."); once daemonised they go to
 * syslog (journald collects them), whose priorities they carry. --log-level picks
 * the least important priority written: error, warning, info (the default: refusals
 * included) or debug. Process-wide state, set once in main() before any thread.
 *
 * A line carries names and reasons that came from users, so it is escaped as a
 * whole: control characters as \u00XX and a backslash as \\. A name holding a
 * newline therefore never starts a line of its own: one event, one line. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include "fs.h"

static int max_prio = LOG_INFO;
static bool to_syslog;

static const struct { const char *name; int prio; } levels[] = {
	{"error", LOG_ERR}, {"warning", LOG_WARNING}, {"info", LOG_INFO}, {"debug", LOG_DEBUG},
};

int log_parse_level(const char *name)
{
	for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
		if (strcasecmp(name, levels[i].name) == 0)
			return levels[i].prio;
	return -1;
}

void log_set_level(int prio) { max_prio = prio; }

void log_use_syslog(void)
{
	openlog("busfs", LOG_PID, LOG_DAEMON);
	to_syslog = true;
}

bool log_enabled(int prio) { return prio <= max_prio; }

/* Copies in to out (room for 6 bytes per byte of in, plus one), escaped. */
static void log_escape(const char *in, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		if (*p == '\\') {
			*out++ = '\\';
			*out++ = '\\';
		} else if (*p < 0x20 || *p == 0x7f) {
			memcpy(out, "\\u00", 4);
			out[4] = hex[*p >> 4];
			out[5] = hex[*p & 15];
			out += 6;
		} else {
			*out++ = (char)*p;
		}
	}
	*out = '\0';
}

void log_msg(int prio, const char *fmt, ...)
{
	if (!log_enabled(prio))
		return;
	char line[1024], escaped[6 * sizeof line];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	log_escape(line, escaped);
	if (to_syslog)
		syslog(prio, "%s", escaped);
	else
		fprintf(stderr, "busfs: %s\n", escaped);
}
