/* message.c — envelopes, msg_ids, inbox file names and the message record codec.
 *
 * The envelope is written once, as text, when a message is committed; the journal
 * stores that very text, so recovery rebuilds byte-identical files. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "busfs/clock.h"
#include "busfs/json.h"
#include "busfs/message.h"

void message_ref(struct bus_message *m) { atomic_fetch_add(&m->refs, 1); }

void message_unref(struct bus_message *m)
{
	if (m && atomic_fetch_sub(&m->refs, 1) == 1)
		free(m);
}

/* "<number, 20 digits>-<msg_id>.json", cut at BUS_FILE_NAME_LEN. */
void message_file_name(const struct bus_message *m, char *out)
{
	char tmp[128];
	uint64_t v = m->number;
	for (int i = 19; i >= 0; i--, v /= 10)
		tmp[i] = (char)('0' + v % 10);
	tmp[20] = '-';
	size_t idl = strnlen(m->msg_id, sizeof tmp - 27);
	memcpy(tmp + 21, m->msg_id, idl);
	memcpy(tmp + 21 + idl, ".json", 6);
	memcpy(out, tmp, BUS_FILE_NAME_LEN);
	out[BUS_FILE_NAME_LEN] = '\0';
}

static uint64_t parse_digits(const char *p, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return 0;
		if (v > (UINT64_MAX - 9) / 10)
			return 0;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	return v;
}

uint64_t message_id_number(const char *id)
{
	/* MSG-YYYYMMDD-HHMMSS-xxxxxxxx-NNNNNNNNNNNNNNNNNNNN */
	if (strlen(id) != BUS_MSG_ID_LEN || strncmp(id, "MSG-", 4) != 0 || id[12] != '-' ||
	    id[19] != '-' || id[28] != '-')
		return 0;
	for (int i = 4; i < 28; i++) {
		bool digit = id[i] >= '0' && id[i] <= '9';
		bool hex = digit || (id[i] >= 'a' && id[i] <= 'f');
		if (i == 12 || i == 19)
			continue;
		if (i > 19 ? !hex : !digit)
			return 0;
	}
	return parse_digits(id + 29, 20);
}

uint64_t message_parse_file_name(const char *name, char *msg_id)
{
	char id[BUS_MSG_ID_LEN + 1];
	uint64_t number = message_parse_any_file_name(name, id);
	if (!number || message_id_number(id) != number)
		return 0;
	if (msg_id)
		memcpy(msg_id, id, BUS_MSG_ID_LEN + 1);
	return number;
}

uint64_t message_parse_any_file_name(const char *name, char *msg_id)
{
	size_t n = strlen(name);
	if (n != BUS_FILE_NAME_LEN || name[20] != '-' || strcmp(name + n - 5, ".json") != 0)
		return 0;
	uint64_t number = parse_digits(name, 20);
	char id[BUS_MSG_ID_LEN + 1];
	memcpy(id, name + 21, BUS_MSG_ID_LEN);
	id[BUS_MSG_ID_LEN] = '\0';
	if (number == 0 || message_id_number(id) == 0)
		return 0;
	if (msg_id)
		memcpy(msg_id, id, BUS_MSG_ID_LEN + 1);
	return number;
}

void message_id_format(char *out, uint32_t store_id, int64_t time_us, uint64_t number)
{
	/* MSG-YYYYMMDD-HHMMSS-<store id>-<counter>, the date and time from the RFC 3339
	 * text (which caches its second). */
	static const char hex[] = "0123456789abcdef";
	char ts[BUS_TIME_LEN + 1];
	bus_time_format(time_us, ts);
	char *p = out;
	memcpy(p, "MSG-", 4);
	p += 4;
	memcpy(p, ts, 4);
	memcpy(p + 4, ts + 5, 2);
	memcpy(p + 6, ts + 8, 2);
	p[8] = '-';
	memcpy(p + 9, ts + 11, 2);
	memcpy(p + 11, ts + 14, 2);
	memcpy(p + 13, ts + 17, 2);
	p[15] = '-';
	p += 16;
	for (int i = 7; i >= 0; i--)
		*p++ = hex[(store_id >> (4 * i)) & 0xf];
	*p++ = '-';
	for (int i = 19; i >= 0; i--) {
		p[i] = (char)('0' + number % 10);
		number /= 10;
	}
	p += 20;
	*p = '\0';
}

/* Record layout: u64 number, u64 sequence, u8 flags (1 requires_ack, 2 has a ttl,
 * 4 has an idempotency key), str to, str from, str msg_id, u32 corr_off, u32 corr_len,
 * bytes envelope, then u64 expires_us when flag 2 is set and str key when flag 4 is. */
#define MSG_FLAG_ACK 1
#define MSG_FLAG_TTL 2
#define MSG_FLAG_KEY 4
#define MSG_KEY_MAX 128

static uint8_t record_flags(bool ack, int64_t expires_us, const char *key)
{
	return (uint8_t)((ack ? MSG_FLAG_ACK : 0) | (expires_us ? MSG_FLAG_TTL : 0) |
			 (key ? MSG_FLAG_KEY : 0));
}
void message_encode(struct buf *rec, const struct envelope *env)
{
	char id[BUS_MSG_ID_LEN + 1];
	char ts[BUS_TIME_LEN + 1];
	if (env->msg_id)
		snprintf(id, sizeof id, "%s", env->msg_id);
	else
		message_id_format(id, env->store_id, env->time_us, env->number);
	if (env->timestamp)
		snprintf(ts, sizeof ts, "%s", env->timestamp);
	else
		bus_time_format(env->time_us, ts);

	buf_put_u64(rec, env->number);
	buf_put_u64(rec, env->sequence);
	buf_put_u8(rec, record_flags(env->requires_ack, env->expires_us, env->idem_key));
	buf_put_str(rec, env->to);
	buf_put_str(rec, env->from);
	buf_put_str(rec, id);
	size_t corr_at = rec->len;
	buf_put_u32(rec, 0);
	buf_put_u32(rec, 0);
	size_t len_at = rec->len;
	buf_put_u32(rec, 0);
	size_t start = rec->len;

	/* Once per message on the send path: plain appends, no printf. */
	buf_puts(rec, "{\"version\":1,\"msg_id\":\"");
	buf_puts(rec, id);
	buf_puts(rec, "\",\"from\":\"");
	buf_puts(rec, env->from);
	buf_puts(rec, "\",\"to\":\"");
	buf_puts(rec, env->to);
	buf_puts(rec, "\",\"timestamp\":\"");
	buf_puts(rec, ts);
	buf_puts(rec, "\",\"sequence\":");
	buf_put_uint(rec, env->sequence);
	buf_puts(rec, ",\"type\":");
	buf_append(rec, env->type_token, env->type_len);
	buf_puts(rec, ",\"payload\":");
	buf_append(rec, env->payload, env->payload_len);
	buf_puts(rec, env->requires_ack ? ",\"requires_ack\":true" : ",\"requires_ack\":false");
	buf_puts(rec, env->urgent ? ",\"priority\":\"urgent\"" : ",\"priority\":\"normal\"");
	if (env->corr_token) {
		buf_puts(rec, ",\"correlation_id\":");
		uint32_t off = (uint32_t)(rec->len - start);
		buf_append(rec, env->corr_token, env->corr_len);
		if (buf_ok(rec)) {
			uint8_t *p = (uint8_t *)rec->data + corr_at;
			uint32_t len = (uint32_t)env->corr_len;
			for (int i = 0; i < 4; i++) {
				p[i] = (uint8_t)(off >> (8 * i));
				p[4 + i] = (uint8_t)(len >> (8 * i));
			}
		}
	}
	if (env->base64)
		buf_puts(rec, ",\"encoding\":\"base64\"");
	buf_puts(rec, "}\n");
	if (buf_ok(rec)) {
		uint32_t len = (uint32_t)(rec->len - start);
		uint8_t *p = (uint8_t *)rec->data + len_at;
		for (int i = 0; i < 4; i++)
			p[i] = (uint8_t)(len >> (8 * i));
	}
	if (env->expires_us)
		buf_put_u64(rec, (uint64_t)env->expires_us);
	if (env->idem_key)
		buf_put_str(rec, env->idem_key);
}

void message_encode_again(struct buf *rec, const struct bus_message *m)
{
	buf_put_u64(rec, m->number);
	buf_put_u64(rec, m->sequence);
	buf_put_u8(rec, record_flags(m->requires_ack, m->expires_us, m->idem_key));
	buf_put_str(rec, m->to);
	buf_put_str(rec, m->from);
	buf_put_str(rec, m->msg_id);
	buf_put_u32(rec, m->corr_off);
	buf_put_u32(rec, m->corr_len);
	buf_put_bytes(rec, m->envelope, m->len);
	if (m->expires_us)
		buf_put_u64(rec, (uint64_t)m->expires_us);
	if (m->idem_key)
		buf_put_str(rec, m->idem_key);
}

struct bus_message *message_decode(struct reader *r)
{
	uint64_t number = rd_u64(r);
	uint64_t sequence = rd_u64(r);
	uint8_t flags = rd_u8(r);
	char to[BUS_NAME_MAX + 1], from[BUS_NAME_MAX + 1], id[BUS_MSG_ID_LEN + 1];
	rd_str(r, to, sizeof to);
	rd_str(r, from, sizeof from);
	rd_str(r, id, sizeof id);
	uint32_t corr_off = rd_u32(r);
	uint32_t corr_len = rd_u32(r);
	size_t len;
	const char *env = rd_bytes(r, &len);
	uint64_t expires = flags & MSG_FLAG_TTL ? rd_u64(r) : 0;
	const char *key = NULL;
	size_t kl = 0;
	if (flags & MSG_FLAG_KEY) {
		key = rd_bytes(r, &kl);
		if (!key || kl == 0 || kl > MSG_KEY_MAX || memchr(key, '\0', kl))
			return NULL;
	}
	if (r->bad || !env || len == 0 || number == 0 || (uint64_t)corr_off + corr_len > len ||
	    (flags & ~(MSG_FLAG_ACK | MSG_FLAG_TTL | MSG_FLAG_KEY)) ||
	    expires > (uint64_t)INT64_MAX / 2)
		return NULL;
	size_t tl = strlen(to) + 1, fl = strlen(from) + 1, il = strlen(id) + 1;
	struct bus_message *m = malloc(sizeof *m + len + 1 + tl + fl + il + (key ? kl + 1 : 0));
	if (!m)
		return NULL;
	atomic_init(&m->refs, 1);
	m->number = number;
	m->sequence = sequence;
	m->requires_ack = flags & MSG_FLAG_ACK;
	m->in_inbox = m->in_outbox = m->in_inflight = m->in_dead = false;
	m->dead_reason = 0;
	m->deliveries = 0;
	m->token = 0;
	m->deadline_us = m->ready_us = m->dead_us = 0;
	m->expires_us = (int64_t)expires;
	m->charged = false;
	m->charged_uid = 0;
	m->corr_off = corr_off;
	m->corr_len = corr_len;
	m->len = len;
	memcpy(m->envelope, env, len);
	m->envelope[len] = '\0';
	char *tail = m->envelope + len + 1;
	m->to = memcpy(tail, to, tl);
	m->from = memcpy(tail + tl, from, fl);
	m->msg_id = memcpy(tail + tl + fl, id, il);
	m->idem_key = NULL;
	if (key) {
		char *k = tail + tl + fl + il;
		memcpy(k, key, kl);
		k[kl] = '\0';
		m->idem_key = k;
	}
	return m;
}

void payload_from_body(struct buf *out, const char *body, size_t len, bool *base64)
{
	*base64 = false;
	if (json_is_value(body, len)) {
		json_append_compact(out, body, len);
		return;
	}
	if (utf8_text_valid(body, len)) {
		size_t n = len;
		if (n && body[n - 1] == '\n')
			n--;
		json_append_string(out, body, n);
		return;
	}
	*base64 = true;
	buf_putc(out, '"');
	base64_append(out, (const unsigned char *)body, len);
	buf_putc(out, '"');
}
