/*
 * nats.h — a real 3-server NATS JetStream cluster on loopback for the cluster tests
 * (nats.c). Each server has its own ports and store dir under the group's temp dir,
 * is started by the test and stopped by pid; the group waits for every server's
 * /healthz (JetStream current, a meta leader known) before a test uses it.
 */
#ifndef BUSFS_TESTS_FS_NATS_H
#define BUSFS_TESTS_FS_NATS_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#define NATS_SERVERS 3             /* with JetStream */
#define NATS_EDGE NATS_SERVERS    /* the index of the edge server, when there is one */

struct nats_group {
    char dir[PATH_MAX];           /* /tmp/busfs-nats-XXXXXX */
    int n;                        /* servers: NATS_SERVERS, + 1 with an edge */
    int client_port[NATS_SERVERS + 1];
    int cluster_port[NATS_SERVERS + 1];
    int http_port[NATS_SERVERS + 1];
    pid_t pid[NATS_SERVERS + 1];  /* 0 when that server is down */
    char urls[512];               /* nats://127.0.0.1:P1,nats://...,... */
    int attempt;                  /* of the start: each has its own store dirs */
};

/* Skips the test when nats-server is not installed, unless CI=true: then fails. */
void nats_require(void);
/* Writes the configs, starts the three servers and waits (30 s) until JetStream is
 * up on each. With edge, a fourth server joins the cluster without JetStream (index
 * NATS_EDGE): a node connected to it alone is cut off by stopping it, while no
 * JetStream stream or consumer has to move. */
void nats_start(struct nats_group *g, bool edge);
/* Starts server i again (same config and store) and waits for its health. */
void nats_restart(struct nats_group *g, int i);
/* kill -9 of server i, reaped. */
void nats_kill9(struct nats_group *g, int i);
/* nats://127.0.0.1:<client port of i> */
const char *nats_url(const struct nats_group *g, int i);
/* Every server stopped (SIGTERM, then SIGKILL), the temp dir removed. */
void nats_stop(struct nats_group *g);

#endif
