/* quota.c — per-uid counts of agents, bytes and open drafts (see quota.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "quota.h"

void quota_init(struct quota *q) { memset(q, 0, sizeof *q); }

void quota_free(struct quota *q)
{
	free(q->v);
	quota_init(q);
}

static size_t quota_index(const struct quota *q, uid_t uid)
{
	size_t lo = 0, hi = q->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (q->v[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const struct quota_uid *quota_find(const struct quota *q, uid_t uid)
{
	size_t i = quota_index(q, uid);
	return i < q->n && q->v[i].uid == uid ? &q->v[i] : NULL;
}

struct quota_uid *quota_of(struct quota *q, uid_t uid)
{
	size_t i = quota_index(q, uid);
	if (i < q->n && q->v[i].uid == uid)
		return &q->v[i];
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 8;
		struct quota_uid *p = realloc(q->v, cap * sizeof *p);
		if (!p)
			return NULL;
		q->v = p;
		q->cap = cap;
	}
	memmove(q->v + i + 1, q->v + i, (q->n - i) * sizeof *q->v);
	q->n++;
	memset(&q->v[i], 0, sizeof q->v[i]);
	q->v[i].uid = uid;
	return &q->v[i];
}

uint64_t quota_bytes(const struct quota *q, uid_t uid)
{
	const struct quota_uid *u = quota_find(q, uid);
	return u ? u->pending_bytes + u->draft_bytes : 0;
}

static struct quota_drafter *drafter(const struct quota_drafts *d, uid_t uid)
{
	for (size_t i = 0; i < d->n; i++)
		if (d->v[i].uid == uid)
			return &d->v[i];
	return NULL;
}

uint32_t quota_drafts_open(const struct quota_drafts *d, uid_t uid)
{
	const struct quota_drafter *x = drafter(d, uid);
	return x ? x->open : 0;
}

int quota_drafts_add(struct quota_drafts *d, uid_t uid)
{
	struct quota_drafter *x = drafter(d, uid);
	if (x) {
		x->open++;
		return 0;
	}
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 4;
		struct quota_drafter *p = realloc(d->v, cap * sizeof *p);
		if (!p)
			return -ENOMEM;
		d->v = p;
		d->cap = cap;
	}
	d->v[d->n++] = (struct quota_drafter){uid, 1};
	return 0;
}

void quota_drafts_sub(struct quota_drafts *d, uid_t uid)
{
	struct quota_drafter *x = drafter(d, uid);
	if (!x || --x->open)
		return;
	*x = d->v[--d->n]; /* the last entry takes the empty place */
	if (!d->n)
		quota_drafts_free(d);
}

void quota_drafts_free(struct quota_drafts *d)
{
	free(d->v);
	memset(d, 0, sizeof *d);
}
