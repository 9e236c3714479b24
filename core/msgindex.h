/* msgindex.h — every message the bus holds (in an inbox, an outbox or both), found
 * by its store-wide number.
 *
 * Inode numbers of message files carry only that number (fs/fs.h), so this index is
 * how a GETATTR or OPEN finds the message, and from it the agent. Open addressing
 * with linear probing; a slot keeps the number beside the pointer, so a probe reads
 * the table only, not the message (a million messages are a million cache misses
 * apart); at most 3/4 full; removal shifts the following run back, so there are no
 * tombstones. Under the bus lock; it holds no references: a message leaves the index
 * before its last place in the bus lets go of it. */
#ifndef BUSFS_MSGINDEX_H
#define BUSFS_MSGINDEX_H

#include <stddef.h>
#include <stdint.h>

#include "busfs/message.h"

struct msgindex_slot {
	uint64_t number;
	struct bus_message *m;      /* NULL: empty */
};

struct msgindex {
	struct msgindex_slot *slots;
	size_t cap;                 /* a power of two, or 0 */
	size_t count;
	uint64_t bytes;             /* the envelopes' lengths, summed */
};

/* Makes room for `more` puts that then cannot fail for memory; 0 or -ENOMEM. */
int msgindex_reserve(struct msgindex *ix, size_t more);
/* -ENOMEM, or -EEXIST when a message of that number is there already. */
int msgindex_put(struct msgindex *ix, struct bus_message *m);
struct bus_message *msgindex_get(const struct msgindex *ix, uint64_t number);
void msgindex_remove(struct msgindex *ix, uint64_t number);
void msgindex_free(struct msgindex *ix);

#endif
