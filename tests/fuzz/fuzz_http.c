/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the HTTP/1.x request parser (bpf/lib/http.h), built
 * with ASan and UBSan. Input: one configuration byte, four bytes seeding the
 * chunking, then the stream. The stream is parsed three ways (byte by byte,
 * in pseudo-random pieces with bulk body skips, in one buffer); the events,
 * the reported heads and the final state must agree, and every reported
 * environment must be one es_env_valid() accepts. The same stream also goes
 * through the response tracker (bpf/lib/response.h) byte by byte and with
 * bodies and runs in bulk (es_rsp_feed_buf), whole and in pieces, from a
 * starting phase the configuration byte picks: the states must be the same.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpf/lib/http.h"
#include "bpf/lib/response.h"

#define CHECK(cond)                                                              \
	do {                                                                     \
		if (!(cond)) {                                                   \
			fprintf(stderr, "fuzz_http: %s:%d: %s\n", __FILE__, __LINE__, \
				#cond);                                          \
			abort();                                                 \
		}                                                                \
	} while (0)

struct head {
	char env[ES_ENV_NAME_MAX];
	int env_len;
	int outcome;
	__u32 line_len;
	__u16 flags;
};

struct trace {
	size_t n;	 /* events recorded */
	size_t *at;	 /* stream offset after the byte */
	int *ev;
	size_t nheads;
	struct head *heads;
	int dead;
	int all;
};

static void trace_init(struct trace *t, size_t cap)
{
	memset(t, 0, sizeof(*t));
	t->at = calloc(cap + 1, sizeof(*t->at));
	t->ev = calloc(cap + 1, sizeof(*t->ev));
	t->heads = calloc(cap + 1, sizeof(*t->heads));
	CHECK(t->at && t->ev && t->heads);
}

static void trace_free(struct trace *t)
{
	free(t->at);
	free(t->ev);
	free(t->heads);
}

/* Checks what holds after every event and records it. */
static void record(struct trace *t, const struct es_http_state *st, const struct es_http_cfg *cfg,
		   int ev, size_t at)
{
	struct head *h;

	CHECK(st->env_len <= ES_ENV_NAME_MAX - 1);
	CHECK(st->vtot <= ES_ENV_NAME_MAX - 1);
	CHECK(st->phase <= ES_HTTP_P_DEAD);
	CHECK((ev & ~0x1f) == 0);
	if (!ev || t->dead)
		return;
	t->at[t->n] = at;
	t->ev[t->n] = ev;
	t->n++;
	t->all |= ev;
	if (ev & ES_HTTP_EV_REQLINE)
		CHECK(st->line_len == st->pos && st->line_len >= 13);
	if (ev & ES_HTTP_EV_HEADERS) {
		h = &t->heads[t->nheads++];
		h->env_len = es_http_env_len(st);
		memcpy(h->env, es_http_env(st), sizeof(h->env));
		h->outcome = es_http_env_outcome(st);
		h->line_len = st->line_len;
		h->flags = st->flags;
		CHECK(h->line_len > 0 && h->line_len < st->pos);
		if (h->outcome == ES_HTTP_ENV_FOUND) {
			CHECK(h->env_len > 0);
			CHECK(es_env_valid(h->env, h->env_len, cfg->splitter));
			CHECK(st->env_rank >= 1 && st->env_rank <= 3);
			CHECK(st->flags & ES_HTTP_F_ENV_SEEN);
		} else {
			CHECK(h->env_len == 0);
		}
		if (!(st->flags & ES_HTTP_F_WINDOW))
			CHECK(!(st->flags & ES_HTTP_F_ENV_BEYOND));
		if (cfg->window && st->pos <= cfg->window)
			CHECK(!(st->flags & ES_HTTP_F_WINDOW));
	}
	if (ev & ES_HTTP_EV_NOT_HTTP) {
		CHECK(es_http_inert(st));
		CHECK(st->err != ES_HTTP_ERR_NONE);
		t->dead = 1;
	}
}

static int heads_equal(const struct head *a, const struct head *b)
{
	return a->env_len == b->env_len && !memcmp(a->env, b->env, (size_t)a->env_len) &&
	       a->outcome == b->outcome && a->line_len == b->line_len && a->flags == b->flags;
}

static void compare(const struct trace *a, const struct trace *b)
{
	size_t i;

	CHECK(a->n == b->n);
	CHECK(a->nheads == b->nheads);
	CHECK(a->dead == b->dead);
	for (i = 0; i < a->n; i++)
		CHECK(a->at[i] == b->at[i] && a->ev[i] == b->ev[i]);
	for (i = 0; i < a->nheads; i++)
		CHECK(heads_equal(&a->heads[i], &b->heads[i]));
}

/* The state apart from the events of the last byte, which a bulk skip leaves. */
static void compare_states(struct es_http_state a, struct es_http_state b)
{
	a.ev = 0;
	b.ev = 0;
	CHECK(!memcmp(&a, &b, sizeof(a)));
}

static void make_cfg(struct es_http_cfg *cfg, __u8 sel)
{
	static const __u16 windows[4] = { 0, 48, 300, 4096 };

	es_http_cfg_init(cfg, (sel & 0x10) ? '-' : '.', windows[sel & 3]);
	CHECK(!es_http_cfg_add_name(cfg, "X-Virtual-Env", 13));
	if (sel & 0x08) {
		CHECK(!es_http_cfg_add_name(cfg, "x-env", 5));
		CHECK(!es_http_cfg_add_name(cfg, "e", 1));
	}
	if (sel & 0x04)
		CHECK(!es_http_cfg_set_baggage_key(cfg, "virtual-env", 11));
	if (sel & 0x20)
		CHECK(!es_http_cfg_set_baggage_key(cfg, "e", 1));
}

/* The response tracker: byte by byte (es_rsp_feed only) vs bodies and runs
 * in bulk, in pieces and in one buffer. start: 0 idle, 1 after a status line,
 * 2 at a chunk size, 3 in a trailer line. */
static void check_response(const uint8_t *s, size_t n, int start, uint32_t rng)
{
	struct es_rsp a = { 0 }, b, c;
	int ea = 0, eb = 0, ec;
	size_t i, off, piece;

	if (start == 1) {
		a.phase = ES_RSP_P_NAME;
		a.hdr = ES_RSP_M_CL | ES_RSP_M_TE;
		a.status = 200;
	} else if (start == 2) {
		a.phase = ES_RSP_P_CHUNK_SIZE;
	} else if (start == 3) {
		a.phase = ES_RSP_P_TRAILER;
	}
	b = a;
	c = a;
	for (i = 0; i < n; i++)
		ea |= es_rsp_feed(&a, s[i]);
	for (off = 0; off < n; off += piece) {
		rng = rng * 1103515245u + 12345u;
		piece = 1 + (rng >> 16) % 13;
		if (piece > n - off)
			piece = n - off;
		eb |= es_rsp_feed_buf(&b, s + off, piece);
	}
	ec = es_rsp_feed_buf(&c, s, n);
	CHECK(a.phase <= ES_RSP_P_DEAD);
	CHECK(a.bytes == n);
	CHECK(!memcmp(&a, &b, sizeof(a)));
	CHECK(!memcmp(&a, &c, sizeof(a)));
	CHECK(ea == eb && ea == ec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct es_http_cfg cfg;
	struct es_http_state a = { 0 }, b = { 0 }, c = { 0 };
	struct trace ta, tb;
	const uint8_t *s;
	size_t n, i, off;
	uint32_t rng;
	int all;

	if (size < 5)
		return 0;
	make_cfg(&cfg, data[0]);
	rng = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 |
	      (uint32_t)data[4] << 24;
	s = data + 5;
	n = size - 5;
	trace_init(&ta, n);
	trace_init(&tb, n);

	/* byte by byte */
	for (i = 0; i < n; i++) {
		int was_dead = ta.dead, ev = es_http_feed(&a, &cfg, s[i]);

		/* inert: every later byte says so, and nothing else */
		if (was_dead)
			CHECK(ev == ES_HTTP_EV_NOT_HTTP);
		record(&ta, &a, &cfg, ev, i + 1);
	}

	/* pseudo-random pieces, stopping at every event */
	off = 0;
	while (off < n && !tb.dead) {
		size_t piece, end;

		rng = rng * 1103515245u + 12345u;
		piece = (rng >> 16) % 17 == 0 ? n : 1 + (rng >> 16) % 9;
		end = off + piece > n ? n : off + piece;
		while (off < end && !tb.dead) {
			__u32 used = 0;
			int ev = es_http_feed_buf(&b, &cfg, s + off, (__u32)(end - off), 0xff, &used);

			CHECK(used > 0 && used <= end - off);
			off += used;
			record(&tb, &b, &cfg, ev, off);
		}
	}
	compare(&ta, &tb);
	compare_states(a, b);

	/* one buffer */
	all = es_http_parse_buf(&c, &cfg, s, (__u32)n);
	CHECK(all == ta.all);
	compare_states(a, c);

	trace_free(&ta);
	trace_free(&tb);
	check_response(s, n, data[0] >> 6, rng);
	return 0;
}
