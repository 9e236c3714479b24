/* quota.h — what each uid holds in the bus: its agents, the bytes of its pending
 * messages and drafts, and its open drafts per inbox (SPEC §11).
 *
 * Nothing here is journalled: the counts follow the state as records apply it (an
 * agent added or removed, a message delivered or consumed) and drafts as they open
 * and close, so a restart rebuilds them from the agents and pending messages it
 * loads. Bytes are charged to the uid that owns the SENDING agent: a message's
 * envelope from delivery until it leaves the inbox, a draft's bound as it is written.
 * Under the bus lock, like the rest of the state. */
#ifndef BUSFS_QUOTA_H
#define BUSFS_QUOTA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct quota_uid {
	uid_t uid;
	uint32_t agents;
	uint64_t pending_bytes;  /* envelopes in inboxes, sent by this uid's agents */
	uint64_t draft_bytes;    /* what its open drafts will commit */
};

/* Every uid that ever held something, sorted by uid (there are few). */
struct quota {
	struct quota_uid *v;
	size_t n, cap;
};

/* Open drafts to one inbox, per opening uid (in struct agent, freed with it). */
struct quota_drafts {
	struct quota_drafter {
		uid_t uid;
		uint32_t open;
	} *v;
	size_t n, cap;
};

void quota_init(struct quota *q);
void quota_free(struct quota *q);
/* The uid's entry, made when missing; NULL only when out of memory. */
struct quota_uid *quota_of(struct quota *q, uid_t uid);
/* The uid's entry or NULL, without making one. */
const struct quota_uid *quota_find(const struct quota *q, uid_t uid);
/* Bytes the uid holds: pending and drafts. */
uint64_t quota_bytes(const struct quota *q, uid_t uid);

uint32_t quota_drafts_open(const struct quota_drafts *d, uid_t uid);
/* 0 or -ENOMEM. */
int quota_drafts_add(struct quota_drafts *d, uid_t uid);
void quota_drafts_sub(struct quota_drafts *d, uid_t uid);
void quota_drafts_free(struct quota_drafts *d);

#endif
