/* cluster.h — one bus across hosts on NATS JetStream (SPEC §12). The only part of
 * busfs that speaks NATS; it calls the core the way the FUSE layer does (remote.h).
 *
 * Without --cluster none of it runs: cluster_start is never called and the FUSE layer
 * sees fs->cluster == NULL. */
#ifndef BUSFS_FS_CLUSTER_H
#define BUSFS_FS_CLUSTER_H

#include "fs.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "busfs/bus.h"

struct cluster_config {
	const char *urls;        /* nats://HOST:PORT[,nats://...] */
	const char *node;        /* this node's name: [A-Za-z][A-Za-z0-9_-]* */
	int replicas;            /* stream and KV replicas (--cluster-replicas, 3) */
	double timeout_s;        /* publish ack wait for a send (--cluster-timeout, 5) */
	double dedupe_window_s;  /* the stream's duplicate window (--dedupe-window) */
};

struct cluster;

/* Whether --cluster names 1 to 16 servers, each nats://HOST[:PORT] or tls://... */
bool cluster_urls_valid(const char *urls);
/* Whether a --node name can be used (it becomes a subject token and a KV key part). */
bool cluster_node_valid(const char *node);

/* Connects (retrying in the background while the servers are away) and starts the
 * publisher and the receiver threads. NULL with a message on stderr when it cannot
 * even begin (bad URL, no memory). */
struct cluster *cluster_start(struct bus *bus, const struct cluster_config *cfg);
/* Stops the threads, answers every parked send (ETIMEDOUT), closes the connection. */
void cluster_stop(struct cluster *cl);

/* A send that queued messages for other nodes (their delivery numbers) is answered
 * once each was stored by JetStream: for a write, fuse_reply_write(req, write_size),
 * for a flush (write_size 0) fuse_reply_err(req, 0); ETIMEDOUT when one was not within
 * --cluster-timeout (the reason goes to the errors logs of agent_id, path). */
void cluster_park(struct cluster *cl, fuse_req_t req, const uint64_t *numbers, size_t n,
		  size_t write_size, uint64_t agent_id, const char *path);

/* A write to outbox/NAME@NODE while the connection is down is answered once it is up
 * (fuse_reply_write(req, size)), or with ETIMEDOUT after --cluster-timeout: shells
 * ignore errors at close, so a cut-off node must refuse the write itself. The verdict
 * is shared by the parked write and the open file (each holds a reference): its FLUSH
 * sends nothing once a write of it failed. */
struct cluster_verdict;
struct cluster_verdict *cluster_park_write(struct cluster *cl, fuse_req_t req, size_t size,
					   struct cluster_verdict *v, uint64_t agent_id,
					   const char *path);
/* The errno a parked write of this file ended with, 0 while none failed. */
int cluster_verdict_error(const struct cluster_verdict *v);
void cluster_verdict_put(struct cluster_verdict *v);

/* The remote agents known now ("NAME@NODE") with their ids (stable while known),
 * sorted; fn returns non-zero to stop. */
void cluster_remote_agents(struct cluster *cl, int (*fn)(void *ctx, const char *name, uint64_t id),
			   void *ctx);
bool cluster_remote_id(struct cluster *cl, const char *name, uint64_t *id);
/* The name of a remote agent id (BUS_NAME_MAX + 1 bytes); false when it is gone. */
bool cluster_remote_name(struct cluster *cl, uint64_t id, char *name);
/* agents/NAME@NODE/health: the document its node put into busfs_health. */
bool cluster_remote_health(struct cluster *cl, uint64_t id, struct buf *out);
/* Adds remote agents and "nodes" to a rendered health/status document. */
void cluster_status_splice(struct cluster *cl, struct buf *out);
/* Whether the connection to NATS is up now. */
bool cluster_connected(struct cluster *cl);

#endif
