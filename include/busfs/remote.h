/* remote.h — what the cluster layer (fs/cluster.c) asks of the core: the node's own
 * name, the remote agents it learned, the queues of messages to other nodes, and
 * messages fetched from them (SPEC §12; core/remote.c). No NATS here. */
#ifndef BUSFS_REMOTE_H
#define BUSFS_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "busfs/bus.h"
#include "busfs/message.h"

/* "NAME@NODE" with both parts valid agent names and the whole at most BUS_NAME_MAX
 * bytes; the parts are copied out when not NULL (BUS_NAME_MAX + 1 bytes each). */
bool bus_remote_split(const char *name, char *agent, char *node);

/* This node's name (--node); remote names of it are refused. */
void bus_set_node(struct bus *bus, const char *node);
/* Learns that the remote agent NAME@NODE exists (present) or no longer does. */
int bus_remote_known(struct bus *bus, const char *name, bool present);

/* One queued message to another node, leased to the caller. */
struct bus_outgoing {
	struct bus_message *m;         /* a reference: bus_outgoing_release */
	uint64_t number, token;
	char node[BUS_NAME_MAX + 1];   /* the node it goes to */
	char agent[BUS_NAME_MAX + 1];  /* its recipient there */
};
/* Leases the oldest queued message of some node (round robin) for lease_s seconds:
 * 0, or -EAGAIN when none is ready. */
int bus_outgoing_claim(struct bus *bus, double lease_s, struct bus_outgoing *out);
void bus_outgoing_release(struct bus_outgoing *out);
/* The message is stored on the other side: it leaves the queue. -ESTALE when that
 * lease is no longer its own. */
int bus_outgoing_done(struct bus *bus, uint64_t number, uint64_t token);
/* Not published: queued again, ready after delay_s. */
int bus_outgoing_retry(struct bus *bus, uint64_t number, uint64_t token, double delay_s);
/* Takes a message out of its queue before it was published: 0, -EBUSY while it is
 * being published, -ENOENT when it is not queued (published already). */
int bus_outgoing_cancel(struct bus *bus, uint64_t number);
/* Whether the message is still in a queue. */
bool bus_outgoing_queued(struct bus *bus, uint64_t number);
/* Messages queued or being published, over every node. */
size_t bus_outgoing_depth(struct bus *bus);

/* Commits a message fetched from node from_node for the local agent `agent` (data is
 * the envelope its node stored, expires_us the end of its ttl or 0): 0 delivered, 1 already delivered (the same msg_id
 * within --dedupe-window), -ENOENT no such agent (an "undeliverable" message to the
 * sender is queued in the same commit), -EAGAIN its inbox is full or draining (fetch
 * it again later), -EINVAL not an envelope, else -ENOSPC, -ENOMEM, -EIO. */
int bus_remote_receive(struct bus *bus, const char *agent, const char *from_node,
		       const char *data, size_t len, int64_t expires_us, struct bus_error *err);

#endif
