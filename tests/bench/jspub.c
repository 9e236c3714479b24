/*
 * jspub — the bare NATS JetStream peer of busfs's cross-node send, for `make bench`.
 *
 *   jspub URLS sync  N        N x js_Publish of 200 bytes, each waiting for its ack
 *   jspub URLS async N WINDOW N x js_PublishAsync, at most WINDOW unacknowledged, then
 *                             js_PublishAsyncComplete
 *
 * Publishes to subject bench.<pid> of stream BENCH (subjects bench.>, file storage,
 * 3 replicas: the stream busfs --cluster makes for itself, so both store the same way),
 * created when missing. Every message has its own Nats-Msg-Id, as busfs's do.
 * Prints one line: "<rate> msgs/s (<count> msgs, <seconds> s, <us> us/op)".
 * Exit 1 with a message on stderr when a publish fails.
 */
#define _POSIX_C_SOURCE 200809L
#include <nats/nats.h>
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

int main(int argc, char **argv)
{
	if (argc < 4 || (strcmp(argv[2], "sync") != 0 && strcmp(argv[2], "async") != 0) ||
	    (strcmp(argv[2], "async") == 0 && argc < 5)) {
		fprintf(stderr, "usage: jspub URLS sync N | jspub URLS async N WINDOW\n");
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
	const char *subjects[] = {"bench.>"};
	sc.Name = "BENCH";
	sc.Subjects = subjects;
	sc.SubjectsLen = 1;
	sc.Storage = js_FileStorage;
	sc.Replicas = 3;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	s = js_AddStream(&si, js, &sc, NULL, &jerr);
	if (s != NATS_OK && jerr != JSStreamNameExistErr)
		die("stream BENCH", s);
	jsStreamInfo_Destroy(si);

	char subject[64], id[64], body[200];
	snprintf(subject, sizeof subject, "bench.%d", (int)getpid());
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
