/*
 * jspub — the bare NATS JetStream peer of busfs's cross-node send, for `make bench`.
 *
 *   jspub URLS sync  N        N x js_Publish of 200 bytes, each waiting for its ack
 *   jspub URLS async N WINDOW N x js_PublishAsync, at most WINDOW unacknowledged, then
 *                             js_PublishAsyncComplete
 *   jspub URLS consume        the other side: a durable pull consumer of what the two
 *                             modes above publish, fetching up to 64 at a time and
 *                             acking each, as a busfs node's receiver does, until
 *                             SIGTERM; prints how many it acked
 *
 * Publishes to subject busfs.msg.jspub.<pid> of busfs's own stream BUSFS (subjects
 * busfs.msg.>, file storage, 3 replicas; created like busfs --cluster does when
 * missing), which no node consumes: both sides store through the same stream leader,
 * the same way. Every message has its own Nats-Msg-Id, as busfs's do.
 * Prints one line: "<rate> msgs/s (<count> msgs, <seconds> s, <us> us/op)".
 * Exit 1 with a message on stderr when a publish fails.
 */
#define _POSIX_C_SOURCE 200809L
#include <nats/nats.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, natsStatus s)
{
	fprintf(stderr, "jspub: %s: %s\n", what, natsStatus_GetText(s));
	exit(1);
}

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static int consume(const char *urls)
{
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	natsSubscription *sub = NULL;
	natsStatus s = natsConnection_ConnectTo(&nc, urls);
	if (s == NATS_OK)
		s = natsConnection_JetStream(&js, nc, NULL);
	jsSubOptions so;
	jsSubOptions_Init(&so);
	so.Stream = "BUSFS";
	so.Config.AckPolicy = js_AckExplicit;
	jsErrCode jerr = 0;
	for (int i = 0; s == NATS_OK && i < 100; i++) {
		/* busfs's stream: made by the nodes, which may still be starting. */
		s = js_PullSubscribe(&sub, js, "busfs.msg.jspub.>", "jspub-bench", NULL, &so, &jerr);
		if (s != NATS_OK && i < 99) {
			nats_Sleep(100);
			s = NATS_OK;
			continue;
		}
		break;
	}
	if (s != NATS_OK || !sub)
		die("pull subscribe", s);
	signal(SIGTERM, on_term);
	long acked = 0;
	while (!stop) {
		natsMsgList list = {0};
		s = natsSubscription_Fetch(&list, sub, 64, 200, &jerr);
		for (int i = 0; s == NATS_OK && i < list.Count; i++)
			if (natsMsg_Ack(list.Msgs[i], NULL) == NATS_OK)
				acked++;
		natsMsgList_Destroy(&list);
	}
	printf("%ld acked\n", acked);
	natsSubscription_Destroy(sub);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	nats_Close();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[2], "consume") == 0)
		return consume(argv[1]);
	if (argc < 4 || (strcmp(argv[2], "sync") != 0 && strcmp(argv[2], "async") != 0) ||
	    (strcmp(argv[2], "async") == 0 && argc < 5)) {
		fprintf(stderr, "usage: jspub URLS sync N | jspub URLS async N WINDOW | "
			"jspub URLS consume\n");
		return 2;
	}
	bool async = strcmp(argv[2], "async") == 0;
	long n = atol(argv[3]);
	long window = async ? atol(argv[4]) : 1;
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	natsStatus s = natsConnection_ConnectTo(&nc, argv[1]);
	if (s != NATS_OK)
		die("connect", s);
	jsOptions jo;
	jsOptions_Init(&jo);
	jo.PublishAsync.MaxPending = window;
	if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
		die("jetstream", s);
	jsStreamConfig sc;
	jsStreamConfig_Init(&sc);
	const char *subjects[] = {"busfs.msg.>"};
	sc.Name = "BUSFS";
	sc.Subjects = subjects;
	sc.SubjectsLen = 1;
	sc.Storage = js_FileStorage;
	sc.Replicas = 3;
	sc.Duplicates = (int64_t)120 * 1000000000;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	s = js_AddStream(&si, js, &sc, NULL, &jerr);
	if (s != NATS_OK && jerr != JSStreamNameExistErr)
		die("stream BUSFS", s);
	jsStreamInfo_Destroy(si);

	char subject[64], id[64], body[200];
	snprintf(subject, sizeof subject, "busfs.msg.jspub.%d", (int)getpid());
	memset(body, 'x', sizeof body);
	double t0 = now_s();
	for (long i = 0; i < n; i++) {
		jsPubOptions po;
		jsPubOptions_Init(&po);
		snprintf(id, sizeof id, "%d-%ld-%.0f", (int)getpid(), i, t0 * 1e6);
		po.MsgId = id;
		if (async) {
			natsMsg *m = NULL;
			if ((s = natsMsg_Create(&m, subject, NULL, body, sizeof body)) == NATS_OK)
				s = js_PublishMsgAsync(js, &m, &po);
			natsMsg_Destroy(m);
		} else {
			jsPubAck *ack = NULL;
			s = js_Publish(&ack, js, subject, body, sizeof body, &po, &jerr);
			jsPubAck_Destroy(ack);
		}
		if (s != NATS_OK)
			die("publish", s);
	}
	if (async) {
		jsPubOptions po;
		jsPubOptions_Init(&po);
		po.MaxWait = 30000;
		if ((s = js_PublishAsyncComplete(js, &po)) != NATS_OK)
			die("publish complete", s);
		natsMsgList failed = {0};
		if (js_PublishAsyncGetPendingList(&failed, js) == NATS_OK && failed.Count) {
			fprintf(stderr, "jspub: %d publishes not acknowledged\n", failed.Count);
			return 1;
		}
	}
	double secs = now_s() - t0;
	printf("%.0f msgs/s (%ld msgs, %.3f s, %.1f us/op)\n", (double)n / secs, n, secs,
	       secs * 1e6 / (double)n);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	nats_Close();
	return 0;
}
