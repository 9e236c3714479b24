/* strmap.c — FNV-1a hashed, linearly probed string map; deletion shifts the rest of
 * the probe run back (no tombstones), so a lookup still stops at the first empty slot. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "busfs/strmap.h"

static uint64_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

void strmap_init(struct strmap *m) { memset(m, 0, sizeof *m); }

void strmap_free(struct strmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i].key);
	free(m->slots);
	strmap_init(m);
}

static struct strmap_slot *find(const struct strmap *m, const char *key)
{
	if (!m->cap)
		return NULL;
	size_t i = hash(key) & (m->cap - 1);
	for (;;) {
		struct strmap_slot *s = &m->slots[i];
		if (!s->key || strcmp(s->key, key) == 0)
			return s;
		i = (i + 1) & (m->cap - 1);
	}
}

uint64_t strmap_get(const struct strmap *m, const char *key)
{
	struct strmap_slot *s = find(m, key);
	return s && s->key ? s->value : 0;
}

static int grow(struct strmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	struct strmap_slot *slots = calloc(cap, sizeof *slots);
	if (!slots)
		return -ENOMEM;
	struct strmap old = *m;
	m->slots = slots;
	m->cap = cap;
	for (size_t i = 0; i < old.cap; i++) {
		if (!old.slots[i].key)
			continue;
		struct strmap_slot *s = find(m, old.slots[i].key);
		*s = old.slots[i];
	}
	free(old.slots);
	return 0;
}

int strmap_set(struct strmap *m, const char *key, uint64_t value)
{
	struct strmap_slot *s = find(m, key);
	if (s && s->key) {
		s->value = value; /* an existing key never allocates */
		return 0;
	}
	if ((m->count + 1) * 4 > m->cap * 3) {
		if (grow(m) < 0)
			return -ENOMEM;
		s = find(m, key);
	}
	if (!s->key) {
		s->key = strdup(key);
		if (!s->key)
			return -ENOMEM;
		m->count++;
	}
	s->value = value;
	return 0;
}

void strmap_del(struct strmap *m, const char *key)
{
	struct strmap_slot *s = find(m, key);
	if (!s || !s->key)
		return;
	free(s->key);
	s->key = NULL;
	m->count--;
	size_t mask = m->cap - 1, hole = (size_t)(s - m->slots);
	for (size_t i = (hole + 1) & mask; m->slots[i].key; i = (i + 1) & mask) {
		size_t home = hash(m->slots[i].key) & mask;
		/* The entry at i may fill the hole unless its home lies in (hole, i]. */
		if (((i - home) & mask) >= ((i - hole) & mask)) {
			m->slots[hole] = m->slots[i];
			m->slots[i].key = NULL;
			hole = i;
		}
	}
}
