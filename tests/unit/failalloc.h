/*
 * failalloc.h — allocation failure on demand, for the unit tests.
 *
 * The unit-test binary is linked with --wrap for malloc, calloc, realloc and strdup,
 * so every allocation by core code (libbusfs.a) and by the tests goes through the
 * wrappers in failalloc.c. Armed with n, the nth allocation from then on returns NULL
 * with errno ENOMEM, once. Allocations inside libc or Criterion are not counted.
 */
#ifndef BUSFS_TESTS_FAILALLOC_H
#define BUSFS_TESTS_FAILALLOC_H

#include <stdbool.h>

void failalloc_arm(long n);
/* Stops counting; returns whether the armed failure happened. */
bool failalloc_disarm(void);

#endif
