/* failalloc.c — the --wrap allocation wrappers of failalloc.h. One test runs per
 * process (Criterion forks), and a test arms and disarms on its own thread. */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "failalloc.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static long countdown; /* 0: not armed */
static bool fired;

void failalloc_arm(long n)
{
    fired = false;
    countdown = n > 0 ? n : 0;
}

bool failalloc_disarm(void)
{
    countdown = 0;
    return fired;
}

/* Whether this allocation is the one to fail. */
static bool fail_now(void)
{
    if (countdown == 0 || --countdown > 0)
        return false;
    fired = true;
    errno = ENOMEM;
    return true;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }

void *__wrap_calloc(size_t n, size_t size) { return fail_now() ? NULL : __real_calloc(n, size); }

void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }

char *__wrap_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = __wrap_malloc(n);
    return p ? memcpy(p, s, n) : NULL;
}
