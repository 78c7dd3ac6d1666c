/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Outbound requests on steered connections: sockops puts every steered TCP
 * connection into es_sockhash; the sk_msg program sees each send, follows the
 * HTTP/1.x requests in it with the streaming parser, and inserts
 * "<header>: <env>\r\n" after the request line of a request that lacks the env
 * header when the sending thread (or, with auto-inject, the pod) has one. A
 * header the application sent is never changed.
 */
#ifndef ENVSTEER_OUTBOUND_H
#define ENVSTEER_OUTBOUND_H

#include "request.h"
#include "resolve.h"

/* Sends are looked at in pieces of this size (bpf_msg_pull_data copies when a
 * piece spans pages). */
#define ES_PULL 1024
/* Requests with a header inserted per send (pipelining). */
#define ES_MAX_INSERTS 8
#define ES_INJECT_MAX (32 + 2 + ES_ENV_NAME_MAX + 2)

static __always_inline int es_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct es_sock *s;
	__u64 cookie;

	if (!es_feat_request_ctx || skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	s = bpf_sk_storage_get(&es_socks, sk, 0, 0);
	if (!s || !s->steered)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	bpf_sock_hash_update(skops, &es_sockhash, &cookie, BPF_ANY);
	return 1;
}

struct es_msg_ctx {
	struct sk_msg_md *msg;
	struct es_tx *tx;
	const struct es_sock *sock;
	const struct es_http_cfg *cfg;
	__u32 off;      /* next byte of the message to parse */
	__u32 size;     /* message size (grows with insertions) */
	__u32 pstart;   /* the pulled range msg->data..data_end covers */
	__u32 pend;
	__s32 reqline;  /* offset after the request line in this message; -1 */
	__u8 check;     /* chk holds the env of a request head to check */
};

/* Per-CPU: the environment of the last request head of a send, checked
 * against the connection's routing once the send is parsed. */
struct es_chk {
	char name[ES_ENV_NAME_MAX];
	__u32 len;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct es_chk);
} es_chk SEC(".maps");

static __always_inline void es_note_env(struct es_msg_ctx *c, const char *name, __u32 len)
{
	__u32 zero = 0;
	struct es_chk *k = bpf_map_lookup_elem(&es_chk, &zero);

	if (!k)
		return;
	__builtin_memcpy(k->name, name, ES_ENV_NAME_MAX);
	k->len = len;
	c->check = 1;
}

static __always_inline void es_head_done(struct es_msg_ctx *c, const struct es_sock *s);

static long es_msg_byte(__u32 i, void *data)
{
	struct es_msg_ctx *c = data;
	struct sk_msg_md *msg = c->msg;
	__u64 skip;
	__u32 idx;
	__u8 *p, b;
	int ev;

	if (c->off >= c->size)
		return 1;
	skip = es_http_skippable(&c->tx->st);
	if (skip) {
		__u32 left = c->size - c->off;

		if (skip > left)
			skip = left;
		es_http_skip(&c->tx->st, skip);
		c->off += (__u32)skip;
		return 0;
	}
	if (c->off < c->pstart || c->off >= c->pend) {
		__u32 end = c->off + ES_PULL;

		if (end > c->size)
			end = c->size;
		if (bpf_msg_pull_data(msg, c->off, end, 0))
			return 1;
		c->pstart = c->off;
		c->pend = end;
	}
	idx = c->off - c->pstart;
	if (idx >= ES_PULL) /* bounds the packet offset for the verifier */
		return 1;
	p = (__u8 *)(long)msg->data + idx;
	if ((void *)(p + 1) > (void *)(long)msg->data_end)
		return 1;
	b = *p;
	c->off++;
	ev = es_http_feed(&c->tx->st, c->cfg, b);
	if (ev & ES_HTTP_EV_REQLINE)
		c->reqline = (__s32)c->off;
	if (ev & ES_HTTP_EV_HEADERS) {
		/* c->tx->prev is still the byte before the final line end */
		es_head_done(c, c->sock);
		c->reqline = -1;
	}
	c->tx->prev = b;
	return ev & ES_HTTP_EV_NOT_HTTP ? 1 : 0;
}

static __always_inline void es_count_mismatch(__u32 svc_id)
{
	__u64 one = 1, *v = bpf_map_lookup_elem(&es_mismatch, &svc_id);

	es_count(ES_CNT_TX_MISMATCH);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&es_mismatch, &svc_id, &one, BPF_NOEXIST);
}

/* A request's environment resolves to another set than the one its connection
 * was routed to: counted per frontend (the per-request steering issue builds
 * re-routing on this). */
static __always_inline void es_check_request_env(const struct es_sock *s, const char *name, __u32 len)
{
	const struct es_config *cfg = es_get_config();
	struct es_resolution res;
	__u32 env;

	if (!cfg || !s)
		return;
	env = es_env_id_by_name(name, len, es_splitter);
	if (env == ES_ENV_NONE)
		env = cfg->default_env_id;
	if (es_resolve(NULL, s->svc_id, env, cfg->default_env_id, &res) && res.env_id != s->env_id)
		es_count_mismatch(s->svc_id);
}

struct es_hdr_ctx {
	struct sk_msg_md *msg;
	struct es_hdr_buf *hb;
	__u32 total;
	__u8 ok;
};

/* Copies byte i of the composed line into the message (a bpf_loop callback,
 * so the verifier looks at one byte's copy once). */
static long es_hdr_copy(__u32 i, void *data)
{
	struct es_hdr_ctx *h = data;
	__u8 *p = (__u8 *)(long)h->msg->data;
	__u32 idx = i;

	if (i >= h->total || i >= 128)
		return 1;
	/* keep the mask: clang would drop it after the check above, and the
	 * verifier needs it on the register it indexes with */
	__asm__ __volatile__("" : "+r"(idx));
	idx &= 127;
	if ((void *)(p + idx + 1) > (void *)(long)h->msg->data_end) {
		h->ok = 0;
		return 1;
	}
	p[idx] = (__u8)h->hb->b[idx];
	return 0;
}

/* Writes "<name>: <env>\r\n" at offset at; returns its length or 0. The line
 * is composed in a per-CPU buffer, then copied into the message. */
static __always_inline __u32 es_insert_header(struct sk_msg_md *msg, __u32 at, const struct es_inject_cfg *ic,
					      const char *env, __u32 env_len)
{
	struct es_hdr_ctx h = {};
	struct es_hdr_buf *hb;
	__u32 n = ic->len, zero = 0;

	if (n == 0 || n > 31 || env_len == 0 || env_len >= ES_ENV_NAME_MAX)
		return 0;
	hb = bpf_map_lookup_elem(&es_hdrbuf, &zero);
	if (!hb)
		return 0;
	/* fixed-size copies, then the separators at their variable offsets */
	__builtin_memcpy(hb->b, ic->name, 32);
	__builtin_memcpy(hb->b + 64, env, ES_ENV_NAME_MAX);
	hb->b[n & 127] = ':';
	hb->b[(n + 1) & 127] = ' ';
	if (bpf_probe_read_kernel(hb->b + ((n + 2) & 63), ES_ENV_NAME_MAX, hb->b + 64))
		return 0;
	hb->b[(n + 2 + env_len) & 127] = '\r';
	hb->b[(n + 3 + env_len) & 127] = '\n';
	h.total = n + 4 + env_len;

	if (bpf_msg_push_data(msg, at, h.total, 0))
		return 0;
	if (bpf_msg_pull_data(msg, at, at + h.total, 0))
		return 0;
	h.msg = msg;
	h.hb = hb;
	h.ok = 1;
	bpf_loop(h.total, es_hdr_copy, &h, 0);
	return h.ok ? h.total : 0;
}

/* The end of a request head was reached in this send: decide, maybe insert. */
static __always_inline void es_head_done(struct es_msg_ctx *c, const struct es_sock *s)
{
	const struct es_inject_cfg *ic;
	const struct es_thread *th;
	const struct es_env *pe;
	const char *env = NULL;
	__u32 zero = 0, env_len = 0, at, added;
	__s32 line;

	es_count(ES_CNT_TX_REQUEST);
	if (c->tx->st.flags & ES_HTTP_F_ENV_SEEN) {
		es_count(ES_CNT_TX_HAS_HEADER);
		if (es_http_env_outcome(&c->tx->st) == ES_HTTP_ENV_FOUND)
			es_note_env(c, es_http_env(&c->tx->st), (__u32)es_http_env_len(&c->tx->st));
		return;
	}
	ic = bpf_map_lookup_elem(&es_inject, &zero);
	if (!ic)
		return;
	th = es_current_thread();
	if (th && th->len > 0 && th->len < ES_ENV_NAME_MAX) {
		env = th->env;
		env_len = th->len;
	} else if (ic->auto_inject && s && s->pod_env_id > ES_ENV_BASE) {
		__u32 id = s->pod_env_id;

		pe = bpf_map_lookup_elem(&es_envs, &id);
		if (pe) {
			env = pe->name;
			env_len = pe->len;
		}
	}
	if (!env || env_len == 0) {
		es_count(ES_CNT_TX_NO_ENV);
		return;
	}
	/* after the request line when it ended in this send, else before the
	 * blank line that ends the head (the request line went out earlier) */
	line = c->reqline;
	if (line > 0) {
		at = (__u32)line;
	} else {
		__u32 blank = c->tx->prev == '\r' ? 2 : 1;

		/* the blank line began in an earlier send (its CR is gone): no
		 * place is left to insert at */
		if (c->off < blank) {
			es_count(ES_CNT_TX_INJECT_FAILED);
			return;
		}
		at = c->off - blank;
	}
	added = es_insert_header(c->msg, at, ic, env, env_len);
	if (!added) {
		es_count(ES_CNT_TX_INJECT_FAILED);
		return;
	}
	es_count(ES_CNT_TX_INJECTED);
	es_note_env(c, env, env_len);
	c->off += added;
	c->size += added;
	c->pstart = c->pend = 0; /* the data moved: pull again */
}

static __always_inline int es_msg(struct sk_msg_md *msg)
{
	struct es_msg_ctx c = {};

	if (!es_feat_request_ctx)
		return SK_PASS;
	c.tx = bpf_sk_storage_get(&es_tx, msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c.tx || es_http_inert(&c.tx->st))
		return SK_PASS;
	c.cfg = bpf_map_lookup_elem(&es_http_cfg, &(__u32){0});
	if (!c.cfg)
		return SK_PASS;
	c.sock = bpf_sk_storage_get(&es_socks, msg->sk, 0, 0);
	c.msg = msg;
	c.size = msg->size;
	c.pend = (__u32)((long)msg->data_end - (long)msg->data);
	c.reqline = -1;
	/* the byte loop also inserts: bound it to the message plus insertions */
	bpf_loop(c.size + ES_MAX_INSERTS * ES_INJECT_MAX, es_msg_byte, &c, 0);
	if (c.check) {
		__u32 zero = 0, i;
		struct es_chk *k = bpf_map_lookup_elem(&es_chk, &zero);

		if (k) {
			/* the parser's value buffer is not NUL-padded past the value */
			for (i = 0; i < ES_ENV_NAME_MAX; i++)
				if (i >= k->len)
					k->name[i] = 0;
			es_check_request_env(c.sock, k->name, k->len);
		}
	}
	return SK_PASS;
}

#endif
