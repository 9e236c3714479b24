/* strmap.h — an open-addressing hash map from short strings to 64-bit values.
 * Used for per-pair sequences ("from\x01to" -> last sequence) and the metric series
 * index. Its slot array never shrinks; strmap_del frees the key. */
#ifndef BUSFS_STRMAP_H
#define BUSFS_STRMAP_H

#include <stddef.h>
#include <stdint.h>

struct strmap_slot {
	char *key;
	uint64_t value;
};

struct strmap {
	struct strmap_slot *slots;
	size_t cap;   /* power of two */
	size_t count;
};

void strmap_init(struct strmap *m);
void strmap_free(struct strmap *m);
/* The value, or 0 when absent. */
uint64_t strmap_get(const struct strmap *m, const char *key);
/* Returns 0 or -ENOMEM; setting a key that is there already cannot fail. */
int strmap_set(struct strmap *m, const char *key, uint64_t value);
/* Removes key (and frees its copy); nothing when absent. Other keys keep their values. */
void strmap_del(struct strmap *m, const char *key);

#define strmap_foreach(m, s) \
	for (struct strmap_slot *s = (m)->slots; s && s < (m)->slots + (m)->cap; s++) \
		if (s->key)

#endif
