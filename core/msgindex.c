/* msgindex.c — messages by number: see msgindex.h. */
#include <errno.h>
#include <stdlib.h>

#include "msgindex.h"

/* Numbers are given out in order, so runs of 16 consecutive numbers stay side by side
 * (an insert or a lookup of the next number hits the cache line of the last) and the
 * runs are scattered over the table: which numbers stay pending cannot pile them up. */
static size_t home(const struct msgindex *ix, uint64_t number)
{
	uint64_t run = ((number >> 4) * UINT64_C(0x9E3779B97F4A7C15)) >> 32;
	return (size_t)(run << 4 | (number & 15)) & (ix->cap - 1);
}

static size_t find_slot(const struct msgindex *ix, uint64_t number)
{
	size_t i = home(ix, number);
	while (ix->slots[i].m && ix->slots[i].number != number)
		i = (i + 1) & (ix->cap - 1);
	return i;
}

static int grow(struct msgindex *ix)
{
	size_t cap = ix->cap ? ix->cap * 2 : 1024;
	struct msgindex_slot *slots = calloc(cap, sizeof *slots);
	if (!slots)
		return -ENOMEM;
	struct msgindex bigger = {slots, cap, ix->count, ix->bytes};
	for (size_t i = 0; i < ix->cap; i++)
		if (ix->slots[i].m)
			slots[find_slot(&bigger, ix->slots[i].number)] = ix->slots[i];
	free(ix->slots);
	*ix = bigger;
	return 0;
}

int msgindex_reserve(struct msgindex *ix, size_t more)
{
	while ((ix->count + more) * 4 > ix->cap * 3)
		if (grow(ix) < 0)
			return -ENOMEM;
	return 0;
}

int msgindex_put(struct msgindex *ix, struct bus_message *m)
{
	if ((ix->count + 1) * 4 > ix->cap * 3 && grow(ix) < 0)
		return -ENOMEM;
	size_t i = find_slot(ix, m->number);
	if (ix->slots[i].m)
		return -EEXIST;
	ix->slots[i] = (struct msgindex_slot){m->number, m};
	ix->count++;
	ix->bytes += m->len;
	return 0;
}

struct bus_message *msgindex_get(const struct msgindex *ix, uint64_t number)
{
	return ix->cap ? ix->slots[find_slot(ix, number)].m : NULL;
}

void msgindex_remove(struct msgindex *ix, uint64_t number)
{
	if (!ix->cap)
		return;
	size_t hole = find_slot(ix, number);
	if (!ix->slots[hole].m)
		return;
	ix->bytes -= ix->slots[hole].m->len;
	ix->slots[hole].m = NULL;
	ix->count--;
	/* Every entry of the run after the hole that could live in it moves back. */
	size_t mask = ix->cap - 1;
	for (size_t i = (hole + 1) & mask; ix->slots[i].m; i = (i + 1) & mask) {
		size_t want = home(ix, ix->slots[i].number);
		if (((i - want) & mask) >= ((i - hole) & mask)) {
			ix->slots[hole] = ix->slots[i];
			ix->slots[i].m = NULL;
			hole = i;
		}
	}
}

void msgindex_free(struct msgindex *ix)
{
	free(ix->slots);
	ix->slots = NULL;
	ix->cap = ix->count = 0;
	ix->bytes = 0;
}
