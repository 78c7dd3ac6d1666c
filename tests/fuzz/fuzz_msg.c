/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the sk_msg program's logic (bpf/lib/outbound.h: es_msg()
 * and everything it calls), seen the way the kernel runs it: region by region.
 *
 * The real BPF headers are compiled in user space: tests/fuzz/shim/ stands in
 * for libbpf's <bpf/bpf_helpers.h> (maps become plain globals, SEC() goes), and
 * this file implements the helpers over in-memory maps and a fake sk_msg whose
 * bytes sit in up to 17 scatterlist elements of fuzzer-chosen sizes, with the
 * kernel's semantics (net/core/filter.c: bpf_msg_pull_data, bpf_msg_push_data;
 * net/ipv4/tcp_bpf.c: tcp_bpf_sendmsg, tcp_bpf_send_verdict): a verdict covers
 * apply_bytes and the rest comes back in a new run; cork_bytes holds the
 * message until the next send is appended, unless its 17 elements are full; a
 * redirect leaves msg->sk_redir set for later runs on the same message; a
 * redirect of a held message frees what it does not cover; a drop frees the
 * whole message, fails the send, and sticks to the socket.
 *
 * Input: 4 configuration bytes, then the requests (a count and 6 bytes each),
 * then the sends (2 bytes each: size and region plan, plus what the agent does
 * after the send). tests/fuzz/gen_msg_seeds.py writes the seed corpus and
 * documents the format.
 *
 * Every original byte of the stream is tagged with its offset; pushed bytes
 * (inserted headers, relay frame headers) with their push. At the end, the
 * stream as the program saw it is parsed once with http.h, and:
 *  - all delivered bytes of one request go to one destination (the connection
 *    itself, or one backend set through its upstream or the agent's relay);
 *    a request may only be cut short by failure (FAIL) and then stays cut;
 *  - a request goes where its environment resolves (the header it carries,
 *    else the one inserted, else the pod's); the connection's own pod is also
 *    allowed for an h2c upgrade and for a head too long to hold (README
 *    "Limits"); a head is never sent before it is complete otherwise;
 *  - bytes the parser cannot frame go to the connection's own pod only when
 *    the request before them did, else fail; after an Upgrade or CONNECT they
 *    may follow that request;
 *  - an upstream's es_rsp.reqs counts the request heads that reached it in the
 *    kernel (the agent decides from it what an upstream owes when it closes);
 *  - each destination gets its bytes in order, unchanged, once; inserted bytes
 *    are exactly one "<header>: <env>\r\n" line, after the request line or
 *    before the blank line, of a request without the header; relay frames are
 *    well formed and numbered;
 *  - on a connection a connect hint made (ES_STEER_F_HINT: its pod is another
 *    set's than the caller's own, so nobody's fallback), a byte goes out on it
 *    only in or after a request whose complete head was decided there (route
 *    PASS): unframed bytes before one, heads too long to hold, h2c upgrades and
 *    requests resolving nowhere are refused instead, each refusal counted
 *    (hint_refused) and the pod's hint dropped; other connections leave both
 *    alone (check_hint);
 *  - with the relay up and unbounded, no upstream lost, requests that parse,
 *    heads within the hold limit and sends that each carry one request
 *    (mainstream clients), nothing fails and nothing is lost;
 *  - parse once per hop (es_hocache, check_handoff): every record a run leaves
 *    is keyed by the connection as its receiver sees it, and where the
 *    receiver's parse of the connection's bytes is at a request boundary at a
 *    record's seq, the record's first bytes, env and len are that request's.
 * Set FUZZ_MSG_TRACE=1 to print what happens while reproducing an input, and
 * FUZZ_MSG_STREAM=<file> to write the generated stream there.
 * FUZZ_MSG_HO_STATS=1 prints how many hand-off records were checked;
 * FUZZ_MSG_HO_STRICT=1 makes a record off the receiver's boundaries a violation.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* BPF callbacks and the helper signatures below have parameters they do not use */
#pragma clang diagnostic ignored "-Wunused-parameter"
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"
#include "bpf/lib/outbound.h"
#pragma clang diagnostic pop

#define FK_MAX_FRAGS 17		/* MAX_MSG_FRAGS */
#define FK_MAX_STREAM (96 * 1024)
#define FK_MAX_SENDS 4096
#define FK_CONN_COOKIE 0x1234ULL
#define FK_RELAY_COOKIE 0x7777ULL
#define FK_SVC 1
#define FK_MAX_ENV 8
#define FK_POD_CG 4242ULL	/* the calling pod's cgroup id (es_sock.pod_cgroup, es_hints key) */

static int fk_trace_on;

static void fk_dump(void);

static void __attribute__((format(printf, 1, 2), noreturn)) violation(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "fuzz_msg: VIOLATION: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	fk_dump();
	abort();
}

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond))                                                             \
			violation("%s:%d: %s", __FILE__, __LINE__, #cond);               \
	} while (0)

static void __attribute__((format(printf, 1, 2))) trace(const char *fmt, ...)
{
	va_list ap;

	if (!fk_trace_on)
		return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------------------
 * Maps: every map global of the BPF headers, by address
 * ------------------------------------------------------------------------ */

struct fk_ent {
	struct fk_ent *next;
	void *key;
	void *val;
};

struct fk_map {
	const void *def;
	const char *name;
	unsigned type, ksz, vsz, max, n;
	struct fk_ent *head;
	unsigned char *arr;
};

static struct fk_map fk_maps[40];
static unsigned fk_nmaps;

static void fk_map_add(const void *def, const char *name, unsigned type, unsigned ksz, unsigned vsz,
		       unsigned max)
{
	struct fk_map *m = &fk_maps[fk_nmaps++];

	CHECK(fk_nmaps <= sizeof(fk_maps) / sizeof(fk_maps[0]));
	m->def = def;
	m->name = name;
	m->type = type;
	m->ksz = ksz;
	m->vsz = vsz;
	m->max = max;
	if (type == BPF_MAP_TYPE_ARRAY || type == BPF_MAP_TYPE_PERCPU_ARRAY) {
		CHECK(ksz == 4 && max <= 4096);
		m->arr = calloc(max, vsz);
		CHECK(m->arr);
	}
}

/* type, key, value and size from the definition's member types (libbpf's __uint/__type) */
#define FK_MAP(m)                                                                        \
	fk_map_add(&m, #m, (unsigned)(sizeof(*m.type) / sizeof(int)), sizeof(*m.key),     \
		   sizeof(*m.value), (unsigned)(sizeof(*m.max_entries) / sizeof(int)))

static void fk_maps_init(void)
{
	if (fk_nmaps)
		return;
	FK_MAP(es_frontends);
	FK_MAP(es_sets);
	FK_MAP(es_slots);
	FK_MAP(es_envs);
	FK_MAP(es_env_names);
	FK_MAP(es_pods);
	FK_MAP(es_config);
	FK_MAP(es_counters);
	FK_MAP(es_revnat);
	FK_MAP(es_http_cfg);
	FK_MAP(es_inject);
	FK_MAP(es_ctx_off);
	FK_MAP(es_mismatch);
	FK_MAP(es_binds);
	FK_MAP(es_upstreams);
	FK_MAP(es_rsp);
	FK_MAP(es_own_rsp);
	FK_MAP(es_relay_clients);
	FK_MAP(es_relay_done);
	FK_MAP(es_relay_cfg);
	FK_MAP(es_relay_acct);
	FK_MAP(es_relay_pods);
	FK_MAP(es_relay_pod_done);
	FK_MAP(es_req_stats);
	FK_MAP(es_hdrbuf);
	FK_MAP(es_scratch);
	FK_MAP(es_trace_cfg);
	FK_MAP(es_trace_bucket);
	FK_MAP(es_decisions);
	FK_MAP(es_hints);
	FK_MAP(es_hocache);
}

static void fk_maps_reset(void)
{
	unsigned i;

	for (i = 0; i < fk_nmaps; i++) {
		struct fk_map *m = &fk_maps[i];

		while (m->head) {
			struct fk_ent *e = m->head;

			m->head = e->next;
			free(e->key);
			free(e->val);
			free(e);
		}
		m->n = 0;
		if (m->arr)
			memset(m->arr, 0, (size_t)m->max * m->vsz);
	}
}

static struct fk_map *fk_map_of(const void *def)
{
	unsigned i;

	for (i = 0; i < fk_nmaps; i++)
		if (fk_maps[i].def == def)
			return &fk_maps[i];
	violation("a helper was called with a map the fuzzer does not know (%p)", def);
}

static struct fk_ent *fk_find(struct fk_map *m, const void *key)
{
	struct fk_ent *e;

	for (e = m->head; e; e = e->next)
		if (!memcmp(e->key, key, m->ksz))
			return e;
	return NULL;
}

static void *bpf_map_lookup_elem(void *map, const void *key)
{
	struct fk_map *m = fk_map_of(map);
	struct fk_ent *e;

	if (m->arr) {
		__u32 idx = *(const __u32 *)key;

		return idx < m->max ? m->arr + (size_t)idx * m->vsz : NULL;
	}
	e = fk_find(m, key);
	return e ? e->val : NULL;
}

static long bpf_map_update_elem(void *map, const void *key, const void *value, __u64 flags)
{
	struct fk_map *m = fk_map_of(map);
	struct fk_ent *e;

	if (flags > BPF_EXIST)
		return -EINVAL;
	if (m->arr) {
		__u32 idx = *(const __u32 *)key;

		if (idx >= m->max)
			return -E2BIG;
		if (flags == BPF_NOEXIST)
			return -EEXIST;
		memcpy(m->arr + (size_t)idx * m->vsz, value, m->vsz);
		return 0;
	}
	e = fk_find(m, key);
	if (e && flags == BPF_NOEXIST)
		return -EEXIST;
	if (!e && flags == BPF_EXIST)
		return -ENOENT;
	if (!e) {
		if (m->n >= m->max)
			return -E2BIG;
		e = calloc(1, sizeof(*e));
		CHECK(e);
		e->key = malloc(m->ksz);
		e->val = malloc(m->vsz);
		CHECK(e->key && e->val);
		memcpy(e->key, key, m->ksz);
		e->next = m->head;
		m->head = e;
		m->n++;
	}
	memcpy(e->val, value, m->vsz);
	return 0;
}

static __attribute__((unused)) long bpf_map_delete_elem(void *map, const void *key)
{
	struct fk_map *m = fk_map_of(map);
	struct fk_ent **pp, *e;

	if (m->arr)
		return -EINVAL;
	for (pp = &m->head; (e = *pp); pp = &e->next) {
		if (!memcmp(e->key, key, m->ksz)) {
			*pp = e->next;
			free(e->key);
			free(e->val);
			free(e);
			m->n--;
			return 0;
		}
	}
	return -ENOENT;
}

/* ------------------------------------------------------------------------
 * The steered client connection, its thread, the other helpers
 * ------------------------------------------------------------------------ */

static struct {
	struct bpf_sock sk;
	struct es_sock sock;
	struct es_tx tx;
	int tx_made;
	struct es_thread th;
	int th_on;
	__u64 now;
	int ringbuf_full;
} fk;

static void *bpf_sk_storage_get(void *map, void *sk, void *value, __u64 flags)
{
	if (sk != &fk.sk)
		return NULL;
	if (map == &es_socks)
		return &fk.sock;
	if (map == &es_tx) {
		if (!fk.tx_made && (flags & BPF_SK_STORAGE_GET_F_CREATE)) {
			memset(&fk.tx, 0, sizeof(fk.tx));
			if (value)
				memcpy(&fk.tx, value, sizeof(fk.tx));
			fk.tx_made = 1;
		}
		return fk.tx_made ? &fk.tx : NULL;
	}
	return NULL; /* es_rx: inbound only */
}

static struct task_struct *bpf_get_current_task_btf(void)
{
	return (struct task_struct *)&fk.th;
}

static void *bpf_task_storage_get(void *map, struct task_struct *task, void *value, __u64 flags)
{
	CHECK(map == &es_threads);
	return fk.th_on && task == (struct task_struct *)&fk.th ? &fk.th : NULL;
}

static __u64 bpf_get_socket_cookie(void *ctx)
{
	return FK_CONN_COOKIE;
}

static long bpf_sock_hash_update(struct bpf_sock_ops *skops, void *map, void *key, __u64 flags)
{
	return 0;
}

static long bpf_sock_ops_cb_flags_set(struct bpf_sock_ops *skops, int flags)
{
	return 0;
}

static long bpf_loop(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags)
{
	long (*cb)(__u32, void *) = (long (*)(__u32, void *))callback_fn;
	__u32 i;

	if (flags)
		return -EINVAL;
	if (nr_loops > (1U << 23)) /* BPF_MAX_LOOPS */
		return -E2BIG;
	for (i = 0; i < nr_loops; i++) {
		long r = cb(i, callback_ctx);

		CHECK(r == 0 || r == 1); /* what the verifier allows */
		if (r)
			return i + 1;
	}
	return i;
}

static long bpf_probe_read_kernel(void *dst, __u32 size, const void *unsafe_ptr)
{
	/* copy_from_kernel_nofault copies upwards: overlapping is fine when dst < src */
	memmove(dst, unsafe_ptr, size);
	return 0;
}

static __u64 bpf_get_current_cgroup_id(void)
{
	return 4242;
}

static __u64 bpf_get_current_ancestor_cgroup_id(int ancestor_level)
{
	return 0;
}

static __u64 bpf_get_current_pid_tgid(void)
{
	return (4000ULL << 32) | 4001;
}

static __u64 bpf_ktime_get_ns(void)
{
	return fk.now += 1000;
}

static __u64 bpf_ktime_get_coarse_ns(void)
{
	return fk.now;
}

static __attribute__((unused)) __u32 bpf_get_prandom_u32(void)
{
	return 4; /* chosen by fair dice roll */
}

static void *bpf_ringbuf_reserve(void *ringbuf, __u64 size, __u64 flags)
{
	CHECK(ringbuf == &es_trace_rb && size == sizeof(struct es_trace_event));
	return fk.ringbuf_full ? NULL : malloc(size);
}

static void bpf_ringbuf_submit(void *data, __u64 flags)
{
	const struct es_trace_event *ev = data;

	CHECK(ev->kind >= ES_EV_REQ_PASS && ev->kind <= ES_EV_REQ_FAILED);
	free(data);
}

/* inbound-only helpers: the sk_msg path never calls them */
static long bpf_skb_load_bytes(const void *skb, __u32 offset, void *to, __u32 len)
{
	violation("bpf_skb_load_bytes called on the sk_msg path");
}

static struct bpf_sock *bpf_sk_fullsock(struct bpf_sock *sk)
{
	violation("bpf_sk_fullsock called on the sk_msg path");
}

static struct bpf_tcp_sock *bpf_tcp_sock(struct bpf_sock *sk)
{
	violation("bpf_tcp_sock called on the sk_msg path");
}

static __u64 bpf_skb_cgroup_id(struct __sk_buff *skb)
{
	violation("bpf_skb_cgroup_id called on the sk_msg path");
}

static __u64 bpf_skb_ancestor_cgroup_id(struct __sk_buff *skb, int ancestor_level)
{
	violation("bpf_skb_ancestor_cgroup_id called on the sk_msg path");
}

static long bpf_sk_redirect_hash(struct __sk_buff *skb, void *map, void *key, __u64 flags)
{
	violation("bpf_sk_redirect_hash called on the sk_msg path");
}

/* ------------------------------------------------------------------------
 * The fake sk_msg: scatterlist elements of tagged bytes
 * ------------------------------------------------------------------------ */

/* tag of a byte: >= 0 its offset in the original stream; < 0 -(push id) */
struct fk_elem {
	uint8_t *b;
	int32_t *t;
	uint32_t len;
	uint8_t copy; /* sg.copy: not readable in place (data is NULL while first) */
};

struct fk_msg {
	struct sk_msg_md md; /* what the program gets: first */
	struct fk_elem e[FK_MAX_FRAGS];
	uint32_t n, size;
	uint32_t apply_bytes, cork_bytes;
	uint64_t sk_redir; /* cookie; 0 = none */
	uint8_t redir_ingress;
};

static struct fk_elem fk_elem_new(uint32_t len)
{
	struct fk_elem e = { 0 };

	e.b = malloc(len ? len : 1);
	e.t = malloc((len ? len : 1) * sizeof(int32_t));
	CHECK(e.b && e.t);
	e.len = len;
	return e;
}

static void fk_elem_free(struct fk_elem *e)
{
	free(e->b);
	free(e->t);
	memset(e, 0, sizeof(*e));
}

static void fk_msg_clear(struct fk_msg *m) /* sk_msg_free + sk_msg_init */
{
	uint32_t i;

	for (i = 0; i < m->n; i++)
		fk_elem_free(&m->e[i]);
	memset(m, 0, sizeof(*m));
}

static void fk_compute_data_pointers(struct fk_msg *m)
{
	if (!m->n || m->e[0].copy) {
		m->md.data = NULL;
		m->md.data_end = NULL;
	} else {
		m->md.data = m->e[0].b;
		m->md.data_end = m->e[0].b + m->e[0].len;
	}
	m->md.size = m->size;
}

static struct fk_msg *fk_msg_of(struct sk_msg_md *md)
{
	return (struct fk_msg *)md;
}

static void fk_insert_elems(struct fk_msg *m, uint32_t at, uint32_t count)
{
	CHECK(m->n + count <= FK_MAX_FRAGS);
	memmove(&m->e[at + count], &m->e[at], (m->n - at) * sizeof(m->e[0]));
	m->n += count;
}

static long bpf_msg_pull_data(struct sk_msg_md *md, __u32 start, __u32 end, __u64 flags)
{
	struct fk_msg *m = fk_msg_of(md);
	uint32_t i, offset = 0, len = 0, bytes = end - start, total, copy = 0, last, k, pos;
	struct fk_elem ne;

	if (flags || end <= start)
		return -EINVAL;
	for (i = 0; i < m->n; i++) {
		offset += len;
		len = m->e[i].len;
		if (start < offset + len)
			break;
	}
	if (i == m->n)
		return -EINVAL;
	total = start - offset + bytes;
	if (!m->e[i].copy && total <= len)
		goto out;
	for (last = i; last < m->n; last++) {
		copy += m->e[last].len;
		if (total <= copy)
			break;
	}
	if (total > copy)
		return -EINVAL;
	/* linearize elements i..last into one buffer of their whole lengths */
	ne = fk_elem_new(copy);
	for (k = i, pos = 0; k <= last; k++) {
		memcpy(ne.b + pos, m->e[k].b, m->e[k].len);
		memcpy(ne.t + pos, m->e[k].t, m->e[k].len * sizeof(int32_t));
		pos += m->e[k].len;
		fk_elem_free(&m->e[k]);
	}
	m->e[i] = ne;
	memmove(&m->e[i + 1], &m->e[last + 1], (m->n - last - 1) * sizeof(m->e[0]));
	m->n -= last - i;
	trace("    pull [%u,%u): linearized %u elements (%u bytes)\n", start, end, last - i + 1, copy);
out:
	m->md.data = m->e[i].b + (start - offset);
	m->md.data_end = (uint8_t *)m->md.data + bytes;
	return 0;
}

static int32_t fk_push_id;

static long bpf_msg_push_data(struct sk_msg_md *md, __u32 start, __u32 len, __u64 flags)
{
	struct fk_msg *m = fk_msg_of(md);
	uint32_t i, offset = 0, l = 0, space, copy = 0, k;
	struct fk_elem ne;

	if (flags)
		return -EINVAL;
	if (!len)
		return 0;
	for (i = 0; i < m->n; i++) {
		offset += l;
		l = m->e[i].len;
		if (start < offset + l)
			break;
	}
	if (i == m->n) /* start >= offset + l: not inside the message (kernels from 6.13) */
		return -EINVAL;
	space = FK_MAX_FRAGS - m->n;
	if (!space || (space == 1 && start != offset))
		copy = m->e[i].len;
	fk_push_id++;
	ne = fk_elem_new(len + copy);
	memset(ne.b, 0xAA, len + copy); /* a fresh page: what the program does not write stays garbage */
	for (k = 0; k < len + copy; k++)
		ne.t[k] = -fk_push_id;
	if (copy) {
		uint32_t front = start - offset, back = m->e[i].len - front;

		memcpy(ne.b, m->e[i].b, front);
		memcpy(ne.t, m->e[i].t, front * sizeof(int32_t));
		memcpy(ne.b + front + len, m->e[i].b + front, back);
		memcpy(ne.t + front + len, m->e[i].t + front, back * sizeof(int32_t));
		fk_elem_free(&m->e[i]);
		m->e[i] = ne;
	} else if (start != offset) {
		struct fk_elem *p = &m->e[i], rest;
		uint32_t front = start - offset;

		rest = fk_elem_new(p->len - front);
		memcpy(rest.b, p->b + front, rest.len);
		memcpy(rest.t, p->t + front, rest.len * sizeof(int32_t));
		rest.copy = p->copy;
		p->len = front;
		fk_insert_elems(m, i + 1, 2);
		m->e[i + 1] = ne;
		m->e[i + 2] = rest;
	} else {
		fk_insert_elems(m, i, 1);
		m->e[i] = ne;
	}
	m->size += len;
	fk_compute_data_pointers(m);
	trace("    push %u bytes at %u (push %d%s)\n", len, start, fk_push_id, copy ? ", copied" : "");
	return 0;
}

static long bpf_msg_apply_bytes(struct sk_msg_md *md, __u32 bytes)
{
	fk_msg_of(md)->apply_bytes = bytes;
	return 0;
}

static long bpf_msg_cork_bytes(struct sk_msg_md *md, __u32 bytes)
{
	fk_msg_of(md)->cork_bytes = bytes;
	return 0;
}

/* ------------------------------------------------------------------------
 * Sockets in es_sockhash besides the client: the relay, the upstreams
 * ------------------------------------------------------------------------ */

struct fk_upstream {
	uint64_t cookie;
	uint32_t env;
	int alive; /* in es_sockhash */
	int fin;   /* its server closed it (es_rsp.fin): no new kernel-path requests */
};

static struct {
	int relay_up;
	struct fk_upstream up[32];
	unsigned nup;
	int killed;
} fh;

static int fk_in_sockhash(uint64_t cookie)
{
	unsigned i;

	if (cookie == FK_RELAY_COOKIE)
		return fh.relay_up;
	for (i = 0; i < fh.nup; i++)
		if (fh.up[i].cookie == cookie)
			return fh.up[i].alive;
	return 0;
}

static long bpf_msg_redirect_hash(struct sk_msg_md *md, void *map, void *key, __u64 flags)
{
	struct fk_msg *m = fk_msg_of(md);
	uint64_t cookie = *(const uint64_t *)key;

	CHECK(map == &es_sockhash);
	if (flags & ~(__u64)BPF_F_INGRESS)
		return SK_DROP;
	if (!fk_in_sockhash(cookie))
		return SK_DROP;
	m->sk_redir = cookie;
	m->redir_ingress = (flags & BPF_F_INGRESS) ? 1 : 0;
	return SK_PASS;
}

/* ------------------------------------------------------------------------
 * Where bytes went
 * ------------------------------------------------------------------------ */

enum { ST_UNSENT = 0, ST_OWN, ST_SET, ST_FAIL, ST_LOST };

/* streams: [0] out on the connection, [e] the backend set of environment e */
struct fk_stream {
	int32_t *t;
	uint8_t *b;
	size_t n, cap;
};

struct fk_push {
	uint32_t len;       /* pushed bytes (a copied push counts only its new bytes) */
	int stream;         /* -1: not delivered (yet), -2: relay frame header */
	size_t pos, got;    /* where in the stream, how many bytes arrived there */
	int split;          /* its bytes arrived in pieces or at several places */
	int failed;
};

static struct {
	const uint8_t *s; /* the original stream */
	size_t sn;
	uint8_t *st;      /* ST_* per byte */
	uint8_t *dest;    /* stream index per byte (ST_OWN, ST_SET) */
	uint8_t *up;      /* 1 + index in fh.up of the upstream a byte was redirected to; 0 */
	int32_t *seen;    /* per byte that went out on the connection: frontier then */
	int32_t frontier; /* the furthest original byte in a message the program ran on; -1 */
	struct fk_stream out[FK_MAX_ENV + 1];
	struct fk_push *push;
	size_t npush, cap_push;
	/* relay: the agent's view */
	uint8_t hdr[ES_RELAY_HDR_LEN];
	int32_t hdr_push;
	uint32_t hpos, left, frame_env, seq, frames;
	uint32_t frames_env[FK_MAX_ENV + 1];
	int enospc;
	int dropped;
	int partial_on;   /* the relay's receive memory may cut one frame (cf.relay_partial) */
	int cut;          /* 1: a relay delivery is cut short (memory); 2: it was */
	size_t lost;
} fd;

/* The connection's next sequence number: the bytes sent on it so far, from 0. */
static struct tcp_sock *bpf_skc_to_tcp_sock(void *sk)
{
	static struct tcp_sock tp;

	if (sk != &fk.sk)
		violation("bpf_skc_to_tcp_sock called with another socket");
	tp.write_seq = (__u32)fd.out[0].n;
	return &tp;
}


static struct fk_push *fk_push_rec(int32_t tag)
{
	size_t id = (size_t)(-tag);

	CHECK(tag < 0 && id <= (size_t)fk_push_id);
	while (fd.cap_push <= id) {
		size_t ncap = fd.cap_push ? fd.cap_push * 2 : 64;

		fd.push = realloc(fd.push, ncap * sizeof(*fd.push));
		CHECK(fd.push);
		memset(fd.push + fd.cap_push, 0, (ncap - fd.cap_push) * sizeof(*fd.push));
		fd.cap_push = ncap;
	}
	if (id > fd.npush) {
		size_t k;

		for (k = fd.npush + 1; k <= id; k++)
			fd.push[k].stream = -1;
		fd.npush = id;
	}
	return &fd.push[id];
}

static void fk_stream_put(int si, uint8_t b, int32_t t, int up)
{
	struct fk_stream *o = &fd.out[si];

	if (o->n == o->cap) {
		o->cap = o->cap ? o->cap * 2 : 4096;
		o->t = realloc(o->t, o->cap * sizeof(int32_t));
		o->b = realloc(o->b, o->cap);
		CHECK(o->t && o->b);
	}
	if (t < 0) {
		struct fk_push *p = fk_push_rec(t);

		if (p->stream == -1) {
			p->stream = si;
			p->pos = o->n;
		} else if (p->stream != si || p->pos + p->got != o->n) {
			p->split = 1;
		}
		p->got++;
	} else {
		uint8_t kind = si ? ST_SET : ST_OWN;

		if (fd.st[t] != ST_UNSENT)
			violation("byte %d delivered twice (now to stream %d, before: state %u)", t, si, fd.st[t]);
		if (b != fd.s[t])
			violation("byte %d changed on its way to stream %d: 0x%02x instead of 0x%02x", t, si, b,
				  fd.s[t]);
		fd.st[t] = kind;
		fd.dest[t] = (uint8_t)si;
		fd.up[t] = (uint8_t)up;
		fd.seen[t] = fd.frontier;
	}
	o->t[o->n] = t;
	o->b[o->n] = b;
	o->n++;
}

/* The agent reads its relay socket: frames of struct es_relay_hdr and payload. */
static void fk_relay_byte(uint8_t b, int32_t t)
{
	if (fd.hpos < ES_RELAY_HDR_LEN) {
		struct es_relay_hdr h;

		if (t >= 0)
			violation("relay: byte %d of the stream where a frame header belongs", t);
		if (fd.hpos == 0)
			fd.hdr_push = t;
		else if (t != fd.hdr_push)
			violation("relay: a frame header made of several pushes");
		fk_push_rec(t)->stream = -2;
		fd.hdr[fd.hpos++] = b;
		if (fd.hpos < ES_RELAY_HDR_LEN)
			return;
		memcpy(&h, fd.hdr, sizeof(h));
		if (h.magic != ES_RELAY_MAGIC || h.client != FK_CONN_COOKIE || h.svc_id != FK_SVC)
			violation("relay: bad frame header (magic %#x client %#llx svc %u)", h.magic,
				  (unsigned long long)h.client, h.svc_id);
		if (h.seq != fd.seq + 1)
			violation("relay: frame seq %u after %u", h.seq, fd.seq);
		if (!h.env_id || h.env_id > FK_MAX_ENV || h.env_id == fk.sock.env_id)
			violation("relay: frame for environment %u (the connection's is %u)", h.env_id,
				  fk.sock.env_id);
		if (!h.len)
			violation("relay: empty frame");
		fd.seq = h.seq;
		fd.left = h.len;
		fd.frame_env = h.env_id;
		fd.frames++;
		fd.frames_env[h.env_id]++;
		return;
	}
	fk_stream_put((int)fd.frame_env, b, t, 0);
	if (--fd.left == 0)
		fd.hpos = 0;
}

enum { TO_OWN, TO_REDIRECT, TO_FAIL, TO_LOST };

/* Takes n bytes off the front of the message to where they go. */
static void fk_take(struct fk_msg *m, uint32_t n, int to, uint64_t cookie, int ingress)
{
	int si = 0, relay = 0, up = 0;
	uint32_t i;

	if (to == TO_REDIRECT) {
		if (cookie == FK_RELAY_COOKIE) {
			if (!ingress)
				violation("a redirect to the relay socket without BPF_F_INGRESS");
			if (fd.hpos != 0)
				violation("relay: a delivery begins inside a frame");
			relay = 1;
		} else {
			for (i = 0; i < fh.nup; i++) {
				if (fh.up[i].cookie == cookie) {
					si = (int)fh.up[i].env;
					up = (int)i + 1;
				}
			}
			if (!si)
				violation("a redirect to unknown socket %#llx", (unsigned long long)cookie);
			if (ingress)
				violation("a redirect to an upstream with BPF_F_INGRESS");
		}
	}
	CHECK(n <= m->size);
	if (fd.cut == 2 && n && (to == TO_OWN || to == TO_REDIRECT))
		violation("%u bytes after a relay frame delivered in part were sent on (parsed again)", n);
	while (n) {
		struct fk_elem *e = &m->e[0];
		uint32_t k, c = e->len < n ? e->len : n;

		for (k = 0; k < c; k++) {
			uint8_t b = e->b[k];
			int32_t t = e->t[k];

			if (to == TO_OWN || (to == TO_REDIRECT && !relay)) {
				fk_stream_put(si, b, t, up);
			} else if (relay) {
				fk_relay_byte(b, t);
			} else if (t >= 0) {
				CHECK(fd.st[t] == ST_UNSENT);
				fd.st[t] = to == TO_FAIL ? ST_FAIL : ST_LOST;
				fd.lost += to == TO_LOST;
			} else {
				fk_push_rec(t)->failed = 1;
			}
		}
		if (c == e->len) {
			fk_elem_free(e);
			memmove(&m->e[0], &m->e[1], (m->n - 1) * sizeof(m->e[0]));
			m->n--;
			memset(&m->e[m->n], 0, sizeof(m->e[0]));
		} else {
			memmove(e->b, e->b + c, e->len - c);
			memmove(e->t, e->t + c, (e->len - c) * sizeof(int32_t));
			e->len -= c;
		}
		m->size -= c;
		n -= c;
	}
	if (relay && fd.hpos != 0 && !fd.cut)
		violation("relay: a delivery ends inside a frame (%u payload bytes missing)", fd.left);
}

/* ------------------------------------------------------------------------
 * The kernel's send path (tcp_bpf_sendmsg, tcp_bpf_send_verdict)
 * ------------------------------------------------------------------------ */

enum { EV_NONE, EV_PASS, EV_REDIRECT, EV_DROP };

static struct {
	int eval;
	uint32_t apply_bytes, cork_bytes;
	uint64_t sk_redir;
	uint8_t redir_ingress;
	struct fk_msg *cork;
	unsigned runs;
} ps;

static void fk_apply(uint32_t bytes) /* sk_msg_apply_bytes */
{
	if (ps.apply_bytes)
		ps.apply_bytes = ps.apply_bytes < bytes ? 0 : ps.apply_bytes - bytes;
}

/* The connection as sk_msg_md shows it: local 127.0.0.11:40000, remote
 * 127.1.0.1:8080; local_port in host order, remote_port in network order in
 * the upper half (the kernel shifts it there on little-endian machines). */
static void fk_md_conn(struct sk_msg_md *md)
{
	md->sk = &fk.sk;
	md->family = fk.sock.family == ES_FAMILY_INET6 ? 10 : 2;
	md->local_ip4 = 0x0b00007f;
	md->remote_ip4 = 0x0100017f;
	md->local_port = 40000;
	md->remote_port = (__u32)bpf_htons(8080) << 16;
}

static void fk_ho_collect(void);

static int fk_run_prog(struct fk_msg *m)
{
	int rc;

	fk_compute_data_pointers(m);
	fk_md_conn(&m->md);
	CHECK(++ps.runs < 4 * fd.sn + 1000);
	{
		uint32_t i, k;

		for (i = 0; i < m->n; i++)
			for (k = 0; k < m->e[i].len; k++)
				if (m->e[i].t[k] > fd.frontier)
					fd.frontier = m->e[i].t[k];
	}
	trace("  run %u: %u bytes in %u elements%s, first %u%s\n", ps.runs, m->size, m->n,
	      m->n == FK_MAX_FRAGS ? " (full)" : "", m->n ? m->e[0].len : 0,
	      m->n && m->e[0].copy ? " (not readable)" : "");
	rc = es_msg(&m->md);
	fk_ho_collect();
	CHECK(rc == SK_PASS || rc == SK_DROP);
	CHECK(m->size == m->md.size);
	trace("    -> %s apply %u cork %u redir %#llx%s; route %u env %u\n", rc == SK_PASS ? "PASS" : "DROP",
	      m->apply_bytes, m->cork_bytes, (unsigned long long)m->sk_redir, m->redir_ingress ? " ingress" : "",
	      fk.tx.route.kind, fk.tx.route.env_id);
	return rc;
}

/* 1: the message is held (corked); 0: done; -EACCES: dropped */
static int fk_send_verdict(struct fk_msg **mp)
{
	struct fk_msg *m = *mp;
	int full = m->n == FK_MAX_FRAGS; /* sk_msg_full(), on entry */

	for (;;) {
		uint32_t tosend;

		if (ps.eval == EV_NONE) {
			int rc = fk_run_prog(m);

			ps.eval = rc == SK_PASS ? (m->sk_redir ? EV_REDIRECT : EV_PASS) : EV_DROP;
			ps.apply_bytes = m->apply_bytes;
			if (ps.eval == EV_REDIRECT) {
				ps.sk_redir = m->sk_redir;
				ps.redir_ingress = m->redir_ingress;
			}
		}
		if (m->cork_bytes && m->cork_bytes > m->size) {
			if (!full) {
				ps.cork_bytes = m->cork_bytes - m->size;
				ps.cork = m;
				trace("    held (cork %u)\n", ps.cork_bytes);
				return 1;
			}
			fd.enospc = 1; /* a full message cannot wait: the verdict applies now */
			trace("    cork ignored: the message is full\n");
		}
		tosend = m->size;
		if (ps.apply_bytes && ps.apply_bytes < tosend)
			tosend = ps.apply_bytes;
		switch (ps.eval) {
		case EV_PASS:
			trace("    %u bytes out on the connection\n", tosend);
			fk_take(m, tosend, TO_OWN, 0, 0);
			fk_apply(tosend);
			break;
		case EV_REDIRECT: {
			uint64_t to = ps.sk_redir;
			int ingress = ps.redir_ingress, cork = 0;

			fk_apply(tosend);
			if (!ps.apply_bytes) {
				ps.eval = EV_NONE;
				ps.sk_redir = 0;
			}
			if (ps.cork) {
				cork = 1;
				ps.cork = NULL;
			}
			trace("    %u bytes redirected to %#llx%s\n", tosend, (unsigned long long)to,
			      cork ? " (held message: the rest is freed)" : "");
			if (fd.partial_on && ingress && !cork && !fd.cut && m->n >= 2 && m->e[0].len < tosend) {
				/* bpf_tcp_ingress under TCP memory pressure: the
				 * relay's receive memory takes the first element
				 * only; the kernel runs the program on the rest */
				trace("    the relay takes %u of them (memory): the rest comes back\n", m->e[0].len);
				fd.cut = 1;
				fk_take(m, m->e[0].len, TO_REDIRECT, to, ingress);
				fd.cut = 2;
			} else {
				fk_take(m, tosend, TO_REDIRECT, to, ingress);
			}
			if (cork) {
				fk_take(m, m->size, TO_LOST, 0, 0);
				fk_msg_clear(m);
				free(m);
				*mp = NULL;
				m = NULL;
			}
			break;
		}
		default:
			trace("    %u bytes dropped, %u freed: the send fails (EACCES)\n", tosend, m->size - tosend);
			fk_take(m, tosend, TO_FAIL, 0, 0);
			fk_take(m, m->size, TO_LOST, 0, 0);
			fk_msg_clear(m);
			fk_apply(tosend);
			return -EACCES; /* psock->eval stays __SK_DROP */
		}
		if (!ps.apply_bytes) {
			ps.eval = EV_NONE;
			ps.sk_redir = 0;
		}
		if (!m || !m->size)
			return 0;
	}
}

struct fk_send {
	uint32_t off, len;   /* bytes of the original stream */
	uint32_t nreg;
	uint32_t *reg;       /* element sizes */
	uint8_t coalesce;    /* the first element continues the held message's last one */
	uint8_t copy;        /* the first element is not readable in place */
	uint8_t agent;       /* what the agent does after the send: AG_* */
};

#define AG_CATCH_UP 1
#define AG_BIND 2
#define AG_KILL 4

/* tcp_bpf_sendmsg: 0, or -EACCES when the send failed */
static int fk_sendmsg(const struct fk_send *sd)
{
	uint32_t r = 0, done = 0;

	trace("send [%u,%u) %u bytes in %u elements%s%s\n", sd->off, sd->off + sd->len, sd->len, sd->nreg,
	      sd->coalesce ? ", coalesced" : "", sd->copy ? ", first not readable" : "");
	if (ps.eval == EV_DROP) {
		trace("  dropped: the socket's verdict is drop\n");
		return -EACCES;
	}
	while (done < sd->len) {
		struct fk_msg *m;
		int ret;

		if (ps.cork) {
			m = ps.cork;
		} else {
			m = calloc(1, sizeof(*m));
			CHECK(m);
		}
		/* copy the send into elements, as many as fit (sk_msg_alloc) */
		for (; r < sd->nreg; r++) {
			uint32_t len = sd->reg[r], base = sd->off + done, k;
			struct fk_elem *e;

			if (r == 0 && sd->coalesce && m->n && !m->e[m->n - 1].copy) {
				/* the page frag continues the held message's last element */
				e = &m->e[m->n - 1];
				e->b = realloc(e->b, e->len + len);
				e->t = realloc(e->t, (e->len + len) * sizeof(int32_t));
				CHECK(e->b && e->t);
				memcpy(e->b + e->len, fd.s + base, len);
				for (k = 0; k < len; k++)
					e->t[e->len + k] = (int32_t)(base + k);
				e->len += len;
			} else {
				if (m->n == FK_MAX_FRAGS)
					break; /* -ENOSPC: the rest goes in the next round */
				e = &m->e[m->n++];
				*e = fk_elem_new(len);
				memcpy(e->b, fd.s + base, len);
				for (k = 0; k < len; k++)
					e->t[k] = (int32_t)(base + k);
				e->copy = r == 0 && sd->copy;
			}
			m->size += len;
			done += len;
		}
		if (ps.cork_bytes) {
			ps.cork_bytes = sd->len > ps.cork_bytes ? 0 : ps.cork_bytes - sd->len;
			CHECK(ps.cork_bytes == 0); /* es_msg corks for one more byte */
			ps.eval = EV_NONE;
		}
		ret = fk_send_verdict(&m);
		if (ret < 0) {
			if (m != ps.cork)
				free(m);
			/* what this send had not copied yet never reaches the program */
			return ret;
		}
		if (ret == 0 && m && m != ps.cork)
			free(m);
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * Environments, sets, the agent
 * ------------------------------------------------------------------------ */

struct fk_env {
	const char *name;
	uint32_t parent;
};

/* id -> name; ES_ENV_BASE (1) is unnamed */
static const struct fk_env fk_envs[FK_MAX_ENV + 1] = {
	[2] = { "dev", 0 },
	[3] = { "dev.proj1", 2 },
	[4] = { "dev.proj1.alice", 3 },
	[5] = { "dev.proj2", 2 },
	[6] = { "other", 0 },
};

static struct {
	uint16_t window;
	int aliases, baggage;
	int auto_inject;
	uint32_t conn_env, pod_env, pod_flags;
	int proj2_set;
	int relay_up;
	uint32_t max_frames;
	const char *thread_env;
	int prebind;
	int tracing;
	int align;
	int relay_partial; /* the relay's receive memory takes one element of a frame, once */
	int single_set;    /* the service had one backend set at the first request (not followed) */
	int connected_single; /* the connection was made while the service had one set (no state
			       * callback, so never followed); the service has two now */
	int hinted;        /* the connection was made by a connect hint (ES_STEER_F_HINT): conn_env
			    * is a set other than the caller's own (own_set) */
	uint32_t own_set;  /* the set the caller's own environment resolved to at connect */
	int no_dev_set;    /* dev (the default environment) has no backends: some requests resolve
			    * nowhere */
	int local_ctx;     /* a pod of the node has the thread context (es_config.flags): requests
			    * are handed off (es_hocache) */
	int peer_ctx;      /* ... and the connection's pod is one (ES_STEER_F_CTX at connect) */
	struct es_http_cfg http;
} cf;

static int fk_has_set(uint32_t env)
{
	return (env == 2 && !cf.no_dev_set) || env == 3 || (env == 5 && cf.proj2_set);
}

static void fk_setup_maps(void)
{
	struct es_config c = { 0 };
	struct es_inject_cfg ic = { 0 };
	struct es_relay_cfg rc = { 0 };
	struct es_trace_cfg tc = { 0 };
	__u32 zero = 0, id;

	c.abi_version = ES_ABI_VERSION;
	c.default_env_id = 2;
	c.flags = cf.local_ctx ? ES_CFG_F_LOCAL_CTX : 0;
	CHECK(!bpf_map_update_elem(&es_config, &zero, &c, BPF_ANY));
	CHECK(!bpf_map_update_elem(&es_http_cfg, &zero, &cf.http, BPF_ANY));
	memcpy(ic.name, "X-Virtual-Env", 13);
	ic.len = 13;
	ic.auto_inject = (__u8)cf.auto_inject;
	CHECK(!bpf_map_update_elem(&es_inject, &zero, &ic, BPF_ANY));
	for (id = 2; id <= FK_MAX_ENV; id++) {
		struct es_env e = { 0 };
		struct es_env_name n = { 0 };
		const char *nm = fk_envs[id].name;
		size_t i;

		if (!nm)
			continue;
		e.parent_id = fk_envs[id].parent;
		e.len = (__u16)strlen(nm);
		memcpy(e.name, nm, e.len);
		for (i = 0; i < e.len; i++)
			e.depth += nm[i] == '.';
		memcpy(n.name, nm, e.len);
		CHECK(!bpf_map_update_elem(&es_envs, &id, &e, BPF_ANY));
		CHECK(!bpf_map_update_elem(&es_env_names, &n, &id, BPF_ANY));
		if (fk_has_set(id)) {
			struct es_set_key k = { .svc_id = FK_SVC, .env_id = id };
			struct es_set s = { .count = 1 };

			CHECK(!bpf_map_update_elem(&es_sets, &k, &s, BPF_ANY));
		}
	}
	/* three relay sockets, one fake socket: the slot is chosen, the frames land alike */
	rc.sockets = cf.relay_up ? 3 : 0;
	rc.relay[0] = rc.relay[1] = rc.relay[2] = FK_RELAY_COOKIE;
	rc.max_frames = cf.max_frames;
	CHECK(!bpf_map_update_elem(&es_relay_cfg, &zero, &rc, BPF_ANY));
	fh.relay_up = cf.relay_up;
	{
		/* the pod's hint for the service (es_hints): the connection's set when a hint made
		 * it; else one naming the caller's own set, which es_hint_pick passes over (the
		 * program must leave it alone) */
		struct es_hint_key hk = { .pod = FK_POD_CG, .svc_id = FK_SVC };
		struct es_hint h = { .env_id = cf.hinted ? cf.conn_env : cf.own_set };

		CHECK(!bpf_map_update_elem(&es_hints, &hk, &h, BPF_ANY));
	}
	if (cf.tracing) {
		tc.enabled = 1;
		tc.rate = 1000;
		tc.burst = 4;
		CHECK(!bpf_map_update_elem(&es_trace_cfg, &zero, &tc, BPF_ANY));
	}
}

/* The agent binds an upstream to (connection, set). */
static void fk_bind(uint32_t env)
{
	struct es_bind_key k = { .client = FK_CONN_COOKIE, .svc_id = FK_SVC, .env_id = env };
	struct es_bind b = { 0 };
	struct fk_upstream *u;
	unsigned i;

	struct es_rsp rsp = { 0 };

	for (i = 0; i < fh.nup; i++)
		if (fh.up[i].env == env && fh.up[i].alive && !fh.up[i].fin)
			return;
	if (fh.nup == sizeof(fh.up) / sizeof(fh.up[0]))
		return;
	u = &fh.up[fh.nup++];
	u->cookie = 0x10000 + fh.nup * 0x100 + env;
	u->env = env;
	u->alive = 1;
	b.upstream = u->cookie;
	CHECK(!bpf_map_update_elem(&es_rsp, &u->cookie, &rsp, BPF_ANY));
	CHECK(!bpf_map_update_elem(&es_binds, &k, &b, BPF_ANY));
	trace("agent: upstream %#llx bound for environment %u\n", (unsigned long long)u->cookie, env);
}

static void fk_agent(uint8_t what)
{
	__u64 cookie = FK_CONN_COOKIE;
	uint32_t e;
	unsigned i;

	if (what & AG_CATCH_UP) {
		/* the connection's own pod has answered what it got */
		struct es_rsp *o = bpf_map_lookup_elem(&es_own_rsp, &cookie);

		if (o)
			o->done = o->reqs;
	}
	if ((what & AG_CATCH_UP) && fd.seq) {
		struct es_relay_done d = { .seq = fd.seq };

		CHECK(!bpf_map_update_elem(&es_relay_done, &cookie, &d, BPF_ANY));
		trace("agent: forwarded frames up to %u\n", fd.seq);
	}
	if (what & AG_BIND)
		for (e = 1; e <= FK_MAX_ENV; e++)
			if (fd.frames_env[e])
				fk_bind(e);
	if (what & AG_KILL) {
		/* an upstream's server closes it (FIN: es_rsp.fin), or, once it
		 * has, the upstream is gone from es_sockhash */
		for (i = 0; i < fh.nup; i++) {
			struct fk_upstream *u = &fh.up[i];

			if (!u->alive)
				continue;
			fh.killed = 1;
			if (!u->fin) {
				struct es_rsp *r = bpf_map_lookup_elem(&es_rsp, &u->cookie);

				CHECK(r);
				r->fin = 1;
				u->fin = 1;
				trace("upstream %#llx: its server closed it\n", (unsigned long long)u->cookie);
			} else {
				u->alive = 0;
				trace("upstream %#llx closed\n", (unsigned long long)u->cookie);
			}
			break;
		}
	}
}

/* ------------------------------------------------------------------------
 * The input: configuration, requests, sends
 * ------------------------------------------------------------------------ */

struct rd {
	const uint8_t *p;
	size_t n, i;
};

static uint8_t rd8(struct rd *r)
{
	return r->i < r->n ? r->p[r->i++] : 0;
}

static int rd_more(const struct rd *r)
{
	return r->i < r->n;
}

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void bput(struct buf *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 256;
		b->p = realloc(b->p, b->cap);
		CHECK(b->p);
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void bstr(struct buf *b, const char *s)
{
	bput(b, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3))) bfmt(struct buf *b, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	CHECK(n >= 0 && (size_t)n < sizeof(tmp));
	bput(b, tmp, (size_t)n);
}

static const char SMUGGLED[] = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Virtual-Env: dev.proj2\r\n\r\n";

/* n bytes of filler, or of request look-alikes */
static void bfill(struct buf *b, size_t n, int smuggle, uint8_t seed)
{
	size_t i;

	for (i = 0; i < n; i++) {
		uint8_t c = smuggle ? (uint8_t)SMUGGLED[i % (sizeof(SMUGGLED) - 1)]
				    : (uint8_t)('a' + (i * 7 + seed) % 26);

		bput(b, &c, 1);
	}
}

static void beol(struct buf *b, int lf)
{
	bstr(b, lf ? "\n" : "\r\n");
}

static const char *const ENV_VALUES[] = {
	NULL, "dev", "dev.proj1", "dev.proj1.alice", "dev.proj2", "dev.unknown.x", "other", "-bad",
};

/* The env header(s) of variant v. */
static void benv(struct buf *b, unsigned v, int lf)
{
	switch (v & 15) {
	case 0:
		return;
	case 1: case 2: case 3: case 4: case 5: case 6: case 7:
		bfmt(b, "X-Virtual-Env: %s", ENV_VALUES[v & 15]);
		break;
	case 8:
		bstr(b, "X-Env: dev.proj1"); /* an alias when configured */
		break;
	case 9:
		bstr(b, "baggage: a=b, virtual-env=dev.proj1;p=1");
		break;
	case 10:
		bstr(b, "X-Virtual-Env: dev");
		beol(b, lf);
		bstr(b, "X-Virtual-Env: dev.proj1");
		break;
	case 11:
		bstr(b, "X-Virtual-Env:");
		break;
	case 12:
		bstr(b, "X-Virtual-Env: DEV.PROJ1");
		break;
	case 13:
		bstr(b, "x-VIRTUAL-env:   dev.proj1  ");
		break;
	case 14:
		bstr(b, "X-Virtual-Env: dev.proj1.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
		break;
	default:
		bstr(b, "X-Virtual-Env: dev.proj2");
		beol(b, lf);
		bstr(b, "baggage: virtual-env=dev.proj1");
		break;
	}
	beol(b, lf);
}

/*
 * One request from 6 bytes o[]:
 *  o[0] bits 0-2 kind: 0 GET, 1 POST Content-Length, 2 POST chunked, 3 Upgrade:
 *       websocket + tunnel bytes, 4 CONNECT + tunnel bytes, 5 h2c upgrade + h2
 *       preface, 6 malformed (variant o[5] & 7), 7 raw bytes (o[4] of them);
 *       bit 3 HTTP/1.0, bit 4 LF line ends, bit 5 an empty line before it,
 *       bit 6 bodies look like requests, bit 7 env header after the padding
 *  o[1] env header variant (benv), bit 4 Expect: 100-continue, bit 5 a
 *       Content-Length on a GET (o[4] bytes of body)
 *  o[2..3] padding header size (little-endian, modulo 9001)
 *  o[4] body size (Content-Length: o[4] * 9 + (o[5] >> 4); chunk size o[4] + 1)
 *  o[5] variants: chunk count, malformed kind, tunnel size
 */
static void gen_request(struct buf *b, const uint8_t o[6])
{
	unsigned kind = o[0] & 7, pad = ((unsigned)o[2] | (unsigned)o[3] << 8) % 9001;
	int v10 = o[0] & 0x08, lf = (o[0] & 0x10) != 0, smuggle = (o[0] & 0x40) != 0;
	int env_late = (o[0] & 0x80) != 0, bad = kind == 6 ? o[5] & 7 : -1;
	size_t cl = 0, i;

	if (o[0] & 0x20)
		beol(b, lf);
	if (kind == 7) {
		bfill(b, o[4], smuggle, o[5]);
		return;
	}
	/* request line */
	if (kind == 4)
		bstr(b, "CONNECT db.example:5432");
	else if (bad == 6)
		bstr(b, "get /");
	else
		bstr(b, kind == 1 || kind == 2 ? "POST /echo" : "GET /");
	if (bad == 1)
		bstr(b, " HTTP/3.0");
	else
		bstr(b, v10 ? " HTTP/1.0" : " HTTP/1.1");
	beol(b, lf);
	bstr(b, "Host: x");
	beol(b, lf);
	if (!env_late)
		benv(b, o[1], lf);
	if (pad) {
		bstr(b, "X-Pad: ");
		bfill(b, pad, 0, o[3]);
		beol(b, lf);
	}
	if (env_late)
		benv(b, o[1], lf);
	if (o[1] & 0x10)
		bstr(b, "Expect: 100-continue"), beol(b, lf);
	if (kind == 1)
		cl = (size_t)o[4] * 9 + (o[5] >> 4);
	if (kind == 0 && (o[1] & 0x20))
		cl = o[4];
	if (cl || kind == 1)
		bfmt(b, "Content-Length: %zu", cl), beol(b, lf);
	if (kind == 2)
		bstr(b, "Transfer-Encoding: chunked"), beol(b, lf);
	if (kind == 3)
		bstr(b, "Connection: Upgrade"), beol(b, lf), bstr(b, "Upgrade: websocket"), beol(b, lf);
	if (kind == 5) {
		bstr(b, "Connection: Upgrade, HTTP2-Settings"), beol(b, lf);
		bstr(b, "Upgrade: h2c"), beol(b, lf);
		bstr(b, "HTTP2-Settings: AAMAAABkAAQAAP__"), beol(b, lf);
	}
	switch (bad) {
	case 0:
		bstr(b, "X-Fold: a"), beol(b, lf), bstr(b, " b"), beol(b, lf);
		break;
	case 2:
		bstr(b, "Content-Length: 3"), beol(b, lf), bstr(b, "Transfer-Encoding: chunked"), beol(b, lf);
		break;
	case 3:
		bstr(b, "Content-Length: 1x"), beol(b, lf);
		break;
	case 4:
		bstr(b, "X-Cr: a\rb"), beol(b, lf);
		break;
	case 5:
		bstr(b, "NoColon"), beol(b, lf);
		break;
	case 7:
		bstr(b, "Content-Length: 5, 6"), beol(b, lf);
		break;
	default:
		break;
	}
	beol(b, lf);
	/* body */
	if (cl)
		bfill(b, cl, smuggle, o[5]);
	if (kind == 2) {
		unsigned n = 1 + ((o[5] >> 3) & 3);

		for (i = 0; i < n; i++) {
			bfmt(b, "%x", o[4] + 1u);
			if (o[5] & 1)
				bstr(b, ";ext=1");
			beol(b, lf);
			bfill(b, o[4] + 1u, smuggle, (uint8_t)(o[5] + i));
			beol(b, lf);
		}
		bstr(b, "0");
		beol(b, lf);
		if (o[5] & 2)
			bstr(b, "X-Trailer: t"), beol(b, lf);
		beol(b, lf);
	}
	if (kind == 3 || kind == 4) {
		/* tunnel bytes: a masked WebSocket frame, or whatever CONNECT carries */
		uint8_t ws[2] = { 0x81, (uint8_t)(0x80 | (o[5] & 0x3f)) };

		if (kind == 3)
			bput(b, ws, 2);
		bfill(b, o[5] & 0x3f, smuggle, o[4]);
	}
	if (kind == 5)
		bstr(b, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}

/* The size of a send from one byte (s): classes of small, medium, boundary, rest. */
static uint32_t send_size(uint8_t s, uint32_t left)
{
	static const uint32_t edges[] = { 1023, 1024, 1025, 4095, 4096, 4097, 5119, 5120, 5121, 1, 2, 31, 32, 1100, 2048, 9000 };
	uint32_t v = s >> 2, n;

	switch (s & 3) {
	case 0:
		n = 1 + v;
		break;
	case 1:
		n = (v + 1) * 97;
		break;
	case 2:
		n = edges[v & 15];
		break;
	default:
		n = left;
		break;
	}
	return n < left ? n : left;
}

/*
 * Element sizes of a send from one byte (plan bits 0-2). sk_msg_alloc() fills a
 * send from the socket's page frag: its remainder, then whole pages, so a send
 * brings few elements; at most FK_SEND_ELEMS here (a 32 KiB send on 4 KiB
 * pages), the last one taking the rest. A message the program holds is
 * linearized by its pulls, so the 17-element limit (where the kernel ignores
 * cork_bytes) is not reached by sends of real sizes either.
 */
#define FK_SEND_ELEMS 8

static uint32_t split_regions(uint32_t len, uint8_t plan, uint8_t seed, uint32_t *reg)
{
	static const uint32_t sizes[] = { 0, 1, 7, 512, 1000, 1024, 1100, 4096 };
	uint32_t n = 0, left = len, x = seed * 2654435761u + 1;

	while (left) {
		uint32_t k = sizes[plan & 7];

		if ((plan & 7) == 0 || n == FK_SEND_ELEMS - 1) {
			k = left;
		} else if ((plan & 7) == 2) {
			x = x * 1103515245u + 12345u;
			k = 1 + (x >> 16) % (n == 0 ? 64 : 5000);
		}
		if (k > left)
			k = left;
		reg[n++] = k;
		left -= k;
	}
	return n;
}

static struct fk_send sends[FK_MAX_SENDS];
static uint32_t nsends;
static uint32_t req_starts[64], nreq;

static void fk_dump(void)
{
	uint32_t i;

	fprintf(stderr, "fuzz_msg: connection env %u, pod env %u flags %#x, window %u, auto-inject %d, thread env %s, "
		"relay %s max_frames %u, proj2 set %d, prebind %d\n",
		cf.conn_env, cf.pod_env, cf.pod_flags, cf.window, cf.auto_inject,
		cf.thread_env ? cf.thread_env : "-", cf.relay_up ? "up" : "down", cf.max_frames, cf.proj2_set,
		cf.prebind);
	fprintf(stderr, "fuzz_msg: %s (the caller's own set %u), dev has backends %d\n",
		cf.hinted ? "connection made by a hint" : "no hint", cf.own_set, !cf.no_dev_set);
	fprintf(stderr, "fuzz_msg: stream of %zu bytes; requests generated at:", fd.sn);
	for (i = 0; i < nreq; i++)
		fprintf(stderr, " %u", req_starts[i]);
	fprintf(stderr, "\nfuzz_msg: sends (offset+len [elements]):");
	for (i = 0; i < nsends && i < 200; i++) {
		uint32_t k;

		fprintf(stderr, " %u+%u[", sends[i].off, sends[i].len);
		for (k = 0; k < sends[i].nreg && k < 20; k++)
			fprintf(stderr, "%s%u", k ? "," : "", sends[i].reg[k]);
		fprintf(stderr, "%s]%s%s%s", sends[i].nreg > 20 ? ",..." : "", sends[i].coalesce ? "c" : "",
			sends[i].copy ? "n" : "", sends[i].agent ? "a" : "");
	}
	fprintf(stderr, "\nfuzz_msg: reproduce with FUZZ_MSG_TRACE=1 to see every run\n");
}

/* ------------------------------------------------------------------------
 * The reference: the stream as the program saw it, parsed once
 * ------------------------------------------------------------------------ */

enum { SEG_NEUTRAL = -1, SEG_UNFRAMED = -2, SEG_NONE = -3 };

struct seg {
	size_t first;      /* first byte (original offset), incl. the empty lines before it */
	size_t start;      /* its first byte proper */
	size_t head_bytes; /* bytes program-seen from `first` to the end of the head */
	int64_t reqline;   /* original offset of the request line's LF */
	int64_t blank;     /* original offset where the final empty line begins */
	int64_t he;        /* offset of the head's last byte; -1: incomplete */
	int died_in_head;
	uint16_t flags;
	int outcome;
	char env[ES_ENV_NAME_MAX];
	int env_len;
	int dest;          /* -1: none yet */
	int any_fail;
	int pushes;
};

static struct seg segs[4096];
static uint32_t nseg;
static int *segof; /* per original byte: seg index, SEG_NEUTRAL, SEG_UNFRAMED, SEG_NONE (lost) */
static int64_t death = -1;
static int tunnel_owner = -1; /* last request whose head completed before the death */

static void reference_parse(void)
{
	struct es_http_state st;
	size_t o, prev_o = 0, neutral_first = (size_t)-1;
	int cur = -1, have_prev = 0, last_head = -1;

	memset(&st, 0, sizeof(st));
	nseg = 0;
	for (o = 0; o < fd.sn; o++) {
		uint8_t b = fd.s[o], ph = st.phase;
		int ev;

		if (fd.st[o] == ST_LOST) {
			segof[o] = SEG_NONE;
			continue;
		}
		if (death >= 0) {
			segof[o] = SEG_UNFRAMED;
			continue;
		}
		ev = es_http_feed(&st, &cf.http, b);
		if (ph == ES_HTTP_P_IDLE && st.phase == ES_HTTP_P_IDLE && !(ev & ES_HTTP_EV_NOT_HTTP)) {
			segof[o] = SEG_NEUTRAL; /* an empty line before a request */
			if (neutral_first == (size_t)-1)
				neutral_first = o;
			prev_o = o;
			have_prev = 1;
			continue;
		}
		if (ph == ES_HTTP_P_IDLE) {
			struct seg *s;

			CHECK(nseg < sizeof(segs) / sizeof(segs[0]));
			cur = (int)nseg++;
			s = &segs[cur];
			memset(s, 0, sizeof(*s));
			s->first = neutral_first != (size_t)-1 ? neutral_first : o;
			s->start = o;
			s->head_bytes = o - s->first; /* the empty lines before it */
			s->reqline = s->blank = s->he = -1;
			s->dest = -1;
			neutral_first = (size_t)-1;
		}
		segof[o] = cur;
		if (cur >= 0 && segs[cur].he < 0)
			segs[cur].head_bytes++;
		if (ev & ES_HTTP_EV_REQLINE)
			segs[cur].reqline = (int64_t)o;
		if (ev & ES_HTTP_EV_HEADERS) {
			struct seg *s = &segs[cur];

			s->he = (int64_t)o;
			s->blank = have_prev && fd.s[prev_o] == '\r' ? (int64_t)prev_o : (int64_t)o;
			s->flags = st.flags;
			s->outcome = es_http_env_outcome(&st);
			s->env_len = es_http_env_len(&st);
			memcpy(s->env, es_http_env(&st), sizeof(s->env));
			last_head = cur;
		}
		if ((ev & ES_HTTP_EV_NOT_HTTP) && !(ev & ES_HTTP_EV_HEADERS)) {
			death = (int64_t)o;
			segof[o] = SEG_UNFRAMED;
			if (cur >= 0 && segs[cur].he < 0) {
				/* a head that never completed: all of it is unframed */
				size_t k;

				segs[cur].died_in_head = 1;
				for (k = segs[cur].start; k < o; k++)
					if (segof[k] == cur)
						segof[k] = SEG_UNFRAMED;
			}
		} else if (ev & ES_HTTP_EV_NOT_HTTP) {
			death = (int64_t)o + 1; /* CONNECT: the tunnel begins after the head */
		}
		if (ev & ES_HTTP_EV_DONE)
			cur = -1;
		prev_o = o;
		have_prev = 1;
	}
	tunnel_owner = last_head;
}

static uint32_t ref_env_id_by_name(const char *name, int len)
{
	char key[ES_ENV_NAME_MAX];
	int pos;
	uint32_t id;

	if (len <= 0 || len >= ES_ENV_NAME_MAX)
		return ES_ENV_NONE;
	for (pos = len; pos >= 1; pos--) {
		if (pos != len && name[pos] != '.')
			continue;
		memset(key, 0, sizeof(key));
		memcpy(key, name, (size_t)pos);
		for (id = 2; id <= FK_MAX_ENV; id++)
			if (fk_envs[id].name && !strcmp(fk_envs[id].name, key))
				return id;
		if (pos == 1)
			break;
	}
	return ES_ENV_NONE;
}

static uint32_t ref_resolve(uint32_t env)
{
	int i;

	for (i = 0; i < ES_MAX_ENV_DEPTH && env != ES_ENV_NONE; i++) {
		if (fk_has_set(env))
			return env;
		if (env > FK_MAX_ENV || !fk_envs[env].name)
			break;
		env = fk_envs[env].parent;
	}
	return fk_has_set(2) ? 2 : ES_ENV_NONE;
}

/* The env name the kernel inserts into a request without the header, or NULL. */
static const char *ref_inserted(void)
{
	if (fk.th_on && (cf.pod_flags & ES_POD_F_THREAD_CTX) && fk.th.active && fk.th.len &&
	    fk.th.len < ES_ENV_NAME_MAX)
		return cf.thread_env;
	if (cf.auto_inject && (cf.pod_flags & ES_POD_F_LABELLED) && cf.pod_env > ES_ENV_BASE &&
	    cf.pod_env <= FK_MAX_ENV && fk_envs[cf.pod_env].name)
		return fk_envs[cf.pod_env].name;
	return NULL;
}

/* The set a complete request's environment resolves to; ES_ENV_NONE: none. */
static uint32_t ref_target(const struct seg *s)
{
	uint32_t id;

	if (s->flags & ES_HTTP_F_ENV_SEEN) {
		id = s->outcome == ES_HTTP_ENV_FOUND ? ref_env_id_by_name(s->env, s->env_len) : cf.pod_env;
	} else {
		const char *n = ref_inserted();

		id = n ? ref_env_id_by_name(n, (int)strlen(n)) : cf.pod_env;
	}
	if (id == ES_ENV_NONE)
		id = 2;
	return ref_resolve(id);
}

/* The stream (0: the connection's own pod, e: set e) a complete request belongs to. */
static int ref_expected(const struct seg *s)
{
	uint32_t res = ref_target(s);

	if (res == ES_ENV_NONE || res == cf.conn_env)
		return 0;
	return (int)res;
}

static uint32_t hold_limit(void)
{
	return (uint32_t)cf.window + ES_PULL;
}

static int seg_long(const struct seg *s)
{
	return s->head_bytes + 2 >= hold_limit();
}

static void check_inserts(void)
{
	const char *want = ref_inserted();
	char line[128];
	size_t want_len = 0, id;

	if (want)
		want_len = (size_t)snprintf(line, sizeof(line), "X-Virtual-Env: %s\r\n", want);
	for (id = 1; id <= fd.npush; id++) {
		const struct fk_push *p = &fd.push[id];
		const struct fk_stream *o;
		int32_t before, after;
		struct seg *s;
		int sb;

		if (p->stream == -2 || p->stream == -1)
			continue; /* a relay frame header (checked by the relay), or never delivered */
		if (p->split)
			violation("inserted bytes (push %zu) arrived in pieces", id);
		o = &fd.out[p->stream];
		if (p->pos == 0)
			violation("inserted bytes (push %zu) begin stream %d", id, p->stream);
		before = o->t[p->pos - 1];
		after = p->pos + p->got < o->n ? o->t[p->pos + p->got] : -1;
		if (before < 0 || (after < 0 && p->pos + p->got < o->n))
			violation("inserted bytes (push %zu) next to other inserted bytes", id);
		sb = segof[before];
		if (sb < 0)
			violation("inserted bytes (push %zu) after byte %d, which is in no request", id, before);
		s = &segs[sb];
		if (after >= 0 && segof[after] != sb)
			violation("inserted bytes (push %zu) between two requests (bytes %d and %d)", id, before, after);
		if (s->flags & ES_HTTP_F_ENV_SEEN)
			violation("a header inserted (push %zu) into request at %zu, which has one", id, s->start);
		if (!want)
			violation("a header inserted (push %zu) though no environment is known", id);
		if (p->got != want_len || memcmp(o->b + p->pos, line, want_len))
			violation("inserted bytes (push %zu, %zu bytes) are not \"%.*s\"", id, p->got,
				  (int)want_len - 2, line);
		if (!(before == s->reqline || (after >= 0 && after == s->blank) ||
		      (after < 0 && s->blank == before + 1)))
			violation("a header inserted (push %zu) after byte %d: neither after the request line "
				  "(%lld) nor before the blank line (%lld)",
				  id, before, (long long)s->reqline, (long long)s->blank);
		if (++s->pushes > 1)
			violation("two headers inserted into the request at %zu", s->start);
	}
}

static void check_streams(void)
{
	int si;

	for (si = 0; si <= FK_MAX_ENV; si++) {
		const struct fk_stream *o = &fd.out[si];
		int64_t last = -1;
		size_t k;

		if (si && o->n && !fk_has_set((uint32_t)si))
			violation("bytes went to environment %d, which has no backends", si);
		if (si && o->n && (uint32_t)si == cf.conn_env)
			violation("bytes were re-routed to the connection's own set %d", si);
		for (k = 0; k < o->n; k++) {
			if (o->t[k] < 0)
				continue;
			if (o->t[k] <= last)
				violation("stream %d: byte %d after byte %lld (out of order)", si, o->t[k],
					  (long long)last);
			last = o->t[k];
		}
	}
}

static const char *dest_name(int d)
{
	static char b[32];

	if (d == 0)
		return "the connection's own pod";
	snprintf(b, sizeof(b), "set of env %d", d);
	return b;
}

static void check_requests(void)
{
	size_t o;
	uint32_t i;

	/* one destination per request; failure only at its end */
	for (o = 0; o < fd.sn; o++) {
		int si = segof[o];
		struct seg *s;

		if (si < 0)
			continue;
		s = &segs[si];
		switch (fd.st[o]) {
		case ST_OWN:
		case ST_SET:
			if (s->any_fail)
				violation("request at %zu: byte %zu delivered after an earlier byte failed", s->start, o);
			if (s->dest < 0)
				s->dest = fd.dest[o];
			else if (s->dest != fd.dest[o])
				violation("request at %zu split: byte %zu went to %s, earlier bytes to %s "
					  "(smuggling)", s->start, o, dest_name(fd.dest[o]), dest_name(s->dest));
			break;
		case ST_FAIL:
		case ST_LOST:
			s->any_fail = 1;
			break;
		default:
			break;
		}
	}
	for (i = 0; i < nseg; i++) {
		struct seg *s = &segs[i];

		if (s->dest < 0 || s->died_in_head)
			continue;
		if (s->he < 0) {
			if (!(s->dest == 0 && seg_long(s) && !cf.hinted))
				violation("request at %zu went to %s before its head was complete (%zu bytes of head)",
					  s->start, dest_name(s->dest), s->head_bytes);
			continue;
		}
		if (s->dest != ref_expected(s) &&
		    !(s->dest == 0 && !cf.hinted && ((s->flags & ES_HTTP_F_H2C) || seg_long(s))))
			violation("request at %zu (env header %s%.*s) went to %s; it belongs to %s", s->start,
				  s->outcome == ES_HTTP_ENV_FOUND ? "" : "none/invalid",
				  s->outcome == ES_HTTP_ENV_FOUND ? s->env_len : 0, s->env, dest_name(s->dest),
				  dest_name(ref_expected(s)));
	}
	/* bytes the parser cannot frame */
	if (death >= 0) {
		const struct seg *t = tunnel_owner >= 0 ? &segs[tunnel_owner] : NULL;
		int tunnel = t && (t->flags & (ES_HTTP_F_UPGRADE | ES_HTTP_F_CONNECT));
		int own_ok = !t || t->dest == 0;
		uint32_t k;

		/* a dying head too long to hold went out on the connection before it died */
		for (k = 0; k < nseg; k++)
			if (segs[k].died_in_head && seg_long(&segs[k]) && !cf.hinted)
				own_ok = 1;
		for (o = 0; o < fd.sn; o++) {
			int d;

			if (segof[o] != SEG_UNFRAMED || (fd.st[o] != ST_OWN && fd.st[o] != ST_SET))
				continue;
			d = fd.dest[o];
			if (tunnel && d == t->dest)
				continue;
			if (d == 0 && own_ok)
				continue;
			violation("unframed byte %zu (the parser died at %lld) went to %s; the request before "
				  "it went to %s%s", o, (long long)death, dest_name(d),
				  t ? (t->dest < 0 ? "nowhere" : dest_name(t->dest)) : "(none)",
				  tunnel ? " (a tunnel)" : "");
		}
	}
}

/* es_rsp.reqs of an upstream: the request heads that reached it in the kernel (what
 * it owes the client, for the agent when it closes). */
static void check_upstream_counts(void)
{
	uint64_t heads[sizeof(fh.up) / sizeof(fh.up[0])] = { 0 };
	uint32_t i;

	for (i = 0; i < nseg; i++) {
		const struct seg *s = &segs[i];

		if (s->he >= 0 && fd.st[s->he] == ST_SET && fd.up[s->he])
			heads[fd.up[s->he] - 1]++;
	}
	for (i = 0; i < fh.nup; i++) {
		const struct es_rsp *r = bpf_map_lookup_elem(&es_rsp, &fh.up[i].cookie);

		CHECK(r);
		if (r->reqs != heads[i])
			violation("upstream %#llx counts %llu requests sent in the kernel; %llu heads reached it",
				  (unsigned long long)fh.up[i].cookie, (unsigned long long)r->reqs,
				  (unsigned long long)heads[i]);
	}
}

/* es_own_rsp.reqs: at least the request heads that went out on the connection
 * itself once it is followed (fewer would let the kernel prove answered a
 * request whose response is still to come, and re-route the next one ahead). */
static void check_own_counts(void)
{
	const __u64 cookie = FK_CONN_COOKIE;
	const struct es_rsp *o = bpf_map_lookup_elem(&es_own_rsp, &cookie);
	uint64_t heads = 0;
	uint32_t i;

	for (i = 0; i < nseg; i++)
		if (segs[i].he >= 0 && fd.st[segs[i].he] == ST_OWN)
			heads++;
	if (cf.single_set && o)
		violation("the own pod's responses are followed on a service with one backend set");
	if (cf.connected_single && o)
		violation("the own pod's responses are followed on a connection without the state callback "
			  "(its es_own_rsp entry would outlive it)");
	if (o && o->reqs < heads)
		violation("the own pod got %llu request heads; %llu counted", (unsigned long long)heads,
			  (unsigned long long)o->reqs);
}

static __u64 fk_counter(__u32 idx)
{
	const __u64 *v = bpf_map_lookup_elem(&es_counters, &idx);

	return v ? *v : 0;
}

/* A request decided with route PASS on a hinted connection: its head complete, its
 * environment resolving to the connection's set, not an h2c upgrade (refused there), and
 * on the connection. */
static int hint_pass(const struct seg *s)
{
	return s->he >= 0 && s->dest == 0 && !(s->flags & ES_HTTP_F_H2C) && ref_target(s) == cf.conn_env;
}

/*
 * Connect hints (maps/abi.h es_hints). A connection a hint made (ES_STEER_F_HINT) went to
 * another set than the caller's own, so its own pod is nobody's fallback:
 *  (a) a byte goes out on it only as part of a request whose head was decided with route
 *      PASS (complete and in the program's hands when the byte left, its environment
 *      resolved to the connection's set), or after such a request (unframed bytes, empty
 *      lines between requests);
 *  (b) unframed bytes before any such request, heads too long to hold: refused, never sent
 *      unrouted (ES_MSG_A_UNROUTABLE);
 *  (c) h2c upgrades and requests whose environment resolves nowhere: refused;
 * every such refusal counts hint_refused and drops the hint, and nothing else does. On
 * other connections the hint is never touched and nothing is counted.
 */
static void check_hint(void)
{
	const struct es_hint_key hk = { .pod = FK_POD_CG, .svc_id = FK_SVC };
	const struct es_hint *h = bpf_map_lookup_elem(&es_hints, &hk);
	__u64 refused = fk_counter(ES_CNT_HINT_REFUSED), missed = fk_counter(ES_CNT_HINT_MISSED);
	int could_refuse = death >= 0;
	size_t o, first = (size_t)-1;
	uint32_t i;

	trace("hint: %s, set %u (the caller's %u); hint_refused %llu, hint_missed %llu, hint %s\n",
	      cf.hinted ? "hinted" : "not hinted", cf.conn_env, cf.own_set, (unsigned long long)refused,
	      (unsigned long long)missed, h ? "kept" : "dropped");
	if (!cf.hinted) {
		if (refused || missed)
			violation("a connection without a hint counts hint_refused %llu, hint_missed %llu",
				  (unsigned long long)refused, (unsigned long long)missed);
		if (!h || h->env_id != cf.own_set)
			violation("a connection without a hint changed the pod's hint");
		return;
	}
	if (!!refused == !!h)
		violation("hint_refused counts %llu but the hint is %s", (unsigned long long)refused,
			  h ? "still there" : "gone");
	if (h && h->env_id != cf.conn_env)
		violation("the hint changed to environment %u", h->env_id);
	if (missed > 1)
		violation("hint_missed counts %llu on one connection", (unsigned long long)missed);
	if (fk_counter(ES_CNT_REQ_UNROUTABLE))
		violation("a head too long to hold was sent unrouted on a hinted connection");
	if (fk_counter(ES_CNT_REQ_H2C_KEPT) && !refused)
		violation("an h2c upgrade was kept on a hinted connection without a refusal");

	/* (a): every byte that went out on the connection */
	for (o = 0; o < fd.sn; o++) {
		int si = segof[o];

		if (fd.st[o] != ST_OWN)
			continue;
		if (si >= 0) {
			const struct seg *s = &segs[si];

			if (!hint_pass(s))
				violation("hinted connection (set %u, the caller's %u): byte %zu of the request at %zu "
					  "went out on it; its head %s, it belongs to %s%s", cf.conn_env, cf.own_set, o,
					  s->start, s->he < 0 ? "incomplete" : "complete",
					  ref_target(s) == ES_ENV_NONE ? "no set" : dest_name(ref_expected(s)),
					  (s->flags & ES_HTTP_F_H2C) ? " (h2c)" : "");
			if (fd.seen[o] < s->he)
				violation("hinted connection: byte %zu of the request at %zu went out before its head "
					  "(ending at %lld) reached the program (it had up to byte %d)", o, s->start,
					  (long long)s->he, fd.seen[o]);
		} else if (si == SEG_NEUTRAL) {
			/* an empty line between requests: with the one before it or the one after.
			 * Empty lines before the first request pass before anything is decided (no
			 * head in the message: es_msg_decide has nothing to hold); they carry no
			 * request, and a server ignores them (RFC 9112 section 2.2): allowed. */
			int prev = -1, next = -1;

			for (i = 0; i < nseg; i++) {
				if (segs[i].start < o)
					prev = (int)i;
				else if (next < 0)
					next = (int)i;
			}
			if (prev >= 0 && !hint_pass(&segs[prev]) && !(next >= 0 && hint_pass(&segs[next])))
				violation("hinted connection: empty line byte %zu went out on it, with no request "
					  "decided PASS next to it", o);
		} else if (si == SEG_UNFRAMED) {
			if (tunnel_owner < 0 || !hint_pass(&segs[tunnel_owner]))
				violation("hinted connection: unframed byte %zu (the parser died at %lld) went out on it "
					  "after %s", o, (long long)death,
					  tunnel_owner < 0 ? "no request" : "a request not decided PASS there");
		}
	}

	/* what may be refused for the hint (sound: refused > 0 only then) */
	for (i = 0; i < nseg; i++)
		if (seg_long(&segs[i]) || (segs[i].he >= 0 && ((segs[i].flags & ES_HTTP_F_H2C) ||
								ref_target(&segs[i]) == ES_ENV_NONE)))
			could_refuse = 1;
	if (refused && !could_refuse)
		violation("hint_refused counts %llu, but no request needed a refusal", (unsigned long long)refused);

	/* the first bytes the program saw, when they failed for the hint: counted */
	for (o = 0; o < fd.sn && first == (size_t)-1; o++)
		if (segof[o] != SEG_NONE && segof[o] != SEG_NEUTRAL)
			first = o;
	if (first != (size_t)-1 && fd.st[first] == ST_FAIL && !refused) {
		int si = segof[first];
		const struct seg *s = si >= 0 ? &segs[si] : NULL;

		if (!s || s->he < 0 || (s->flags & ES_HTTP_F_H2C) || ref_expected(s) == 0)
			violation("hinted connection: its first request (byte %zu) failed, not re-routed, and "
				  "hint_refused counts nothing", first);
	}
	/* hint_missed: the first request re-routed */
	if (nseg && segs[0].he >= 0 && segs[0].dest > 0 && missed != 1)
		violation("hinted connection: its first request went to %s, hint_missed counts %llu",
			  dest_name(segs[0].dest), (unsigned long long)missed);
	if (missed && !(nseg && segs[0].he >= 0 && ref_expected(&segs[0]) > 0 && !(segs[0].flags & ES_HTTP_F_H2C)))
		violation("hint_missed counts %llu but the first request was not for another set",
			  (unsigned long long)missed);
}

/* Mainstream clients under good conditions: nothing fails, nothing is lost. */
static void check_liveness(void)
{
	uint32_t i;
	size_t o;

	if (!cf.relay_up || cf.max_frames || fh.killed || death >= 0 || fd.enospc || fd.dropped || fd.cut)
		goto out_of_domain;
	for (i = 0; i < nseg; i++)
		if ((segs[i].flags & (ES_HTTP_F_UPGRADE | ES_HTTP_F_CONNECT | ES_HTTP_F_H2C)) ||
		    seg_long(&segs[i]) || (cf.hinted && segs[i].he >= 0 && ref_target(&segs[i]) == ES_ENV_NONE))
			goto out_of_domain; /* (on a hinted connection, a request for no set is refused) */
	/* each send carries bytes of one request at most: by the original stream,
	 * whatever the kernel freed */
	{
		struct es_http_state st;
		int64_t req = -1, seen;

		memset(&st, 0, sizeof(st));
		for (i = 0, o = 0; i < nsends; i++) {
			seen = -1;
			for (; o < (size_t)sends[i].off + sends[i].len; o++) {
				uint8_t ph = st.phase;

				es_http_feed(&st, &cf.http, fd.s[o]);
				if (ph == ES_HTTP_P_IDLE && st.phase == ES_HTTP_P_IDLE)
					continue; /* empty lines between requests */
				if (ph == ES_HTTP_P_IDLE)
					req++;
				if (seen >= 0 && seen != req)
					goto out_of_domain; /* pipelining */
				seen = req;
			}
		}
	}
	for (o = 0; o < fd.sn; o++) {
		if (fd.st[o] == ST_FAIL || fd.st[o] == ST_LOST)
			violation("a mainstream client lost byte %zu (%s)", o, fd.st[o] == ST_FAIL ? "failed" : "freed");
	}
	for (i = 0; i < nseg; i++) {
		const struct seg *s = &segs[i];

		if (s->he < 0 || s->dest < 0)
			continue;
		if (s->dest != ref_expected(s))
			violation("a mainstream client's request at %zu went to %s instead of %s", s->start,
				  dest_name(s->dest), dest_name(ref_expected(s)));
		if (!(s->flags & ES_HTTP_F_ENV_SEEN) && ref_inserted() && s->pushes != 1)
			violation("a mainstream client's request at %zu without the header got %d inserted",
				  s->start, s->pushes);
	}
	return;
out_of_domain:
	return;
}

/*
 * Parse once per hop (maps/abi.h es_ho_slot). The connection's hand-off key as
 * the receiving socket's ingress program builds it (request.h es_ingress: local
 * = server, ports in host order), from the connection sk_msg_md describes.
 */
static int fk_ho_strict;       /* FUZZ_MSG_HO_STRICT: a record off the receiver's boundaries is a violation
				* (harmless for Law 1: the receiver never looks there) */

static void fk_ho_key(struct es_handoff_key *k)
{
	struct sk_msg_md md;

	memset(&md, 0, sizeof(md));
	memset(k, 0, sizeof(*k));
	fk_md_conn(&md);
	es_ho_addr(k->server, md.family, md.remote_ip4, md.remote_ip6[0], md.remote_ip6[1], md.remote_ip6[2],
		   md.remote_ip6[3]);
	es_ho_addr(k->client, md.family, md.local_ip4, md.local_ip6[0], md.local_ip6[1], md.local_ip6[2],
		   md.local_ip6[3]);
	k->server_port = bpf_ntohs((__u16)(md.remote_port >> 16));
	k->client_port = (__u16)md.local_port;
}

/* Every record a run of the program wrote into es_hocache, in order (slots are
 * overwritten: they are collected after each run, fk_ho_collect). */
#define FK_HO_MAX 4096
static struct {
	struct es_ho_slot s[FK_HO_MAX];
	unsigned n;
	struct es_ho_slot last[ES_HO_SLOTS];
} fho;

static void fk_ho_collect(void)
{
	const struct es_ho_slot *sl = (const struct es_ho_slot *)fk_map_of(&es_hocache)->arr;
	unsigned i;

	for (i = 0; i < ES_HO_SLOTS; i++) {
		if (!memcmp(&sl[i], &fho.last[i], sizeof(sl[i])))
			continue;
		if (sl[i].lock)
			violation("hand-off slot %u left locked by a run", i);
		if (sl[i].valid && fho.n < FK_HO_MAX)
			fho.s[fho.n++] = sl[i];
		fho.last[i] = sl[i];
	}
}

static struct {
	unsigned long cases;   /* cases with a REQ record */
	unsigned long records; /* REQ records written (left in the map at the end) */
	unsigned long taken;   /* ... at a receiver boundary with their 8 bytes on the stream: checked */
	unsigned long env;     /* ... of them with an environment */
	unsigned long body;    /* ... of them longer than their head (a Content-Length body) */
	unsigned long several; /* cases with more than one record */
	unsigned long off;     /* records where the receiver is not at a boundary */
	unsigned long runs;    /* inputs run (the stats are printed every 20 000) */
} ho_stats;
static int fk_ho_stats_on;

/* A record r at q, where the receiver's parse (st) is at a request boundary:
 * what it says of the request that begins there (Law 1, (1)-(3)). */
static void check_ho_record(const struct es_ho_rec *r, size_t q, const struct es_http_state *at)
{
	const struct fk_stream *o = &fd.out[0];
	struct es_http_state st = *at;
	size_t p = q, end = q + r->len, he = 0;
	int head = 0, done = 0;

	if (memcmp(&r->first, o->b + q, 8))
		violation("hand-off record at %zu: its first bytes \"%.8s\" are not the stream's \"%.8s\"", q,
			  (const char *)&r->first, (const char *)o->b + q);
	while (p < o->n) {
		__u64 sk = es_http_skippable(&st);
		int ev;

		if (sk) {
			__u64 k = sk < o->n - p ? sk : o->n - p;

			ev = es_http_skip(&st, k);
			p += (size_t)k;
		} else {
			ev = es_http_feed(&st, &cf.http, o->b[p]);
			p++;
		}
		if ((ev & ES_HTTP_EV_NOT_HTTP) || st.phase == ES_HTTP_P_DEAD)
			violation("hand-off record at %zu (len %u): the receiver's parse dies at %zu, inside it", q,
				  r->len, p - 1);
		if (ev & ES_HTTP_EV_HEADERS) {
			int out = es_http_env_outcome(&st), n = es_http_env_len(&st);

			head = 1;
			he = p;
			if (out == ES_HTTP_ENV_FOUND) {
				if (r->env_len != n || memcmp(r->env, es_http_env(&st), (size_t)n))
					violation("hand-off record at %zu: env \"%.*s\" (%u); the receiver's parse finds "
						  "\"%.*s\" (%d)", q, r->env_len, r->env, r->env_len, n,
						  es_http_env(&st), n);
			} else if (r->env_len) {
				violation("hand-off record at %zu: env \"%.*s\"; the receiver's parse finds none "
					  "(outcome %d)", q, r->env_len, r->env, out);
			}
		}
		if (ev & ES_HTTP_EV_DONE) {
			if (p != end)
				violation("hand-off record at %zu: len %u (to %zu); the receiver's parse ends the "
					  "request at %zu", q, r->len, end, p);
			if (st.phase != ES_HTTP_P_IDLE || st.cr)
				violation("hand-off record at %zu: the request ends at %zu, but not at a boundary "
					  "(phase %u cr %u)", q, p, st.phase, st.cr);
			done = 1;
			break;
		}
		if (p >= end)
			violation("hand-off record at %zu: len %u (to %zu); the receiver's parse is still in the "
				  "request there (phase %u%s)", q, r->len, end, st.phase,
				  head ? "" : ", head incomplete");
	}
	/* else: the stream ends before the request does, and before q + len */
	ho_stats.taken++;
	ho_stats.env += r->env_len != 0;
	ho_stats.body += done && he < end;
	trace("handoff: record at %zu, len %u, env \"%.*s\": checked (%s)\n", q, r->len, r->env_len, r->env,
	      done ? "whole request" : "the stream ends inside it");
}

/*
 * Parse once per hop: every record a run left in es_hocache describes the request that
 * begins at its seq on the connection (fd.out[0], whose bytes are numbered from 0
 * like write_seq in bpf_skc_to_tcp_sock), as the receiver parses it with the
 * same settings: wherever that parse is at a request boundary at a record's seq
 * (and 8 bytes are there), (1) the record's first bytes are the stream's, (2) its
 * env is the one the receiver's parse finds in the head (none unless FOUND), (3)
 * the request ends (phase IDLE again) exactly at seq + len, without the parse
 * dying inside it, or the stream ends first. The receiver skips len bytes instead
 * of parsing them: by (3), its state after them is the one a parse has.
 */
static void check_handoff(void)
{
	const struct fk_stream *o = &fd.out[0];
	struct es_handoff_key want;
	struct es_http_state st;
	unsigned long nrec = fho.n, seen = 0;
	unsigned j;
	size_t p;

	fk_ho_key(&want);
	for (j = 0; j < fho.n; j++) {
		const struct es_handoff_key *k = &fho.s[j].key;
		const struct es_ho_rec *r = &fho.s[j].rec;
		int i;

		if (memcmp(k->server, want.server, sizeof(want.server)) ||
		    memcmp(k->client, want.client, sizeof(want.client)) || k->server_port != want.server_port ||
		    k->client_port != want.client_port)
			violation("hand-off record (seq %u) keyed %u -> %u; the receiver's key is %u -> %u", k->seq,
				  k->client_port, k->server_port, want.client_port, want.server_port);
		if (k->seq > o->n)
			violation("hand-off record at %u, beyond the %zu bytes the connection sent", k->seq, o->n);
		if (!r->len || r->env_len >= ES_ENV_NAME_MAX)
			violation("hand-off record at %u: len %u, env_len %u", k->seq, r->len, r->env_len);
		for (i = r->env_len; i < ES_ENV_NAME_MAX; i++)
			if (r->env[i])
				violation("hand-off record at %u: env not NUL-padded (byte %d)", k->seq, i);
	}
	if (nrec && !cf.local_ctx)
		violation("hand-off: %lu records on a node without a pod that has the thread context", nrec);
	if (nrec && !cf.peer_ctx)
		violation("hand-off: %lu records for a pod without the thread context", nrec);
	if (nrec > 1)
		ho_stats.several++;

	/* the receiver's parse of the connection's bytes */
	memset(&st, 0, sizeof(st));
	for (p = 0; nrec && p <= o->n;) {
		__u64 sk;

		if (st.phase == ES_HTTP_P_IDLE && !st.cr) {
			for (j = 0; j < fho.n; j++) {
				if (fho.s[j].key.seq == p) {
					seen++;
					if (p + 8 <= o->n)
						check_ho_record(&fho.s[j].rec, p, &st);
				}
			}
		}
		if (p == o->n || st.phase == ES_HTTP_P_DEAD)
			break;
		sk = es_http_skippable(&st);
		if (sk) {
			__u64 k = sk < o->n - p ? sk : o->n - p;

			es_http_skip(&st, k);
			p += (size_t)k;
		} else {
			es_http_feed(&st, &cf.http, o->b[p]);
			p++;
		}
	}
	if (nrec) {
		ho_stats.cases++;
		ho_stats.records += nrec;
		ho_stats.off += nrec - seen;
	}
	trace("handoff: %lu records (sent counter %llu), %lu at the receiver's boundaries\n", nrec,
	      (unsigned long long)fk_counter(ES_CNT_HO_SENT), seen);
	if (nrec != (unsigned long)fk_counter(ES_CNT_HO_SENT) && fho.n < FK_HO_MAX)
		violation("hand-off: %lu records collected, the counter says %llu", nrec,
			  (unsigned long long)fk_counter(ES_CNT_HO_SENT));
	if (nrec != seen && fk_ho_strict)
		violation("hand-off: %lu records where the receiver is not at a boundary (never taken)", nrec - seen);
	if (nrec != seen)
		trace("handoff: %lu records where the receiver is not at a boundary (never taken)\n", nrec - seen);
}

static void fk_ho_stats_print(void)
{
	fprintf(stderr,
		"fuzz_msg: handoff: %lu cases with records, %lu records, %lu checked at the receiver's "
		"boundaries (%lu with env, %lu with a body), %lu cases with several, %lu off a boundary\n",
		ho_stats.cases, ho_stats.records, ho_stats.taken, ho_stats.env, ho_stats.body, ho_stats.several,
		ho_stats.off);
}

/* ------------------------------------------------------------------------
 * The fuzz target
 * ------------------------------------------------------------------------ */

static void fk_reset(void)
{
	int i;
	uint32_t k;

	fk_maps_reset();
	fho.n = 0;
	memset(fho.last, 0, sizeof(fho.last));
	memset(&fk, 0, sizeof(fk));
	memset(&fh, 0, sizeof(fh));
	if (ps.cork) {
		fk_msg_clear(ps.cork);
		free(ps.cork);
	}
	memset(&ps, 0, sizeof(ps));
	for (i = 0; i <= FK_MAX_ENV; i++) {
		free(fd.out[i].t);
		free(fd.out[i].b);
	}
	free(fd.st);
	free(fd.dest);
	free(fd.up);
	free(fd.seen);
	free(fd.push);
	memset(&fd, 0, sizeof(fd));
	fd.frontier = -1;
	for (k = 0; k < nsends; k++)
		free(sends[k].reg);
	nsends = 0;
	nreq = 0;
	fk_push_id = 0;
	free(segof);
	segof = NULL;
	nseg = 0;
	death = -1;
	tunnel_owner = -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint16_t windows[4] = { 4096, 300, 0, 1000 };
	static const uint32_t conn_envs[4] = { 2, 3, 5, 2 };
	static const uint32_t pod_envs[8] = { 2, 3, 4, 5, 6, 2, 3, 2 };
	struct rd r = { data, size, 0 };
	struct buf s = { 0 };
	uint8_t c0, c1, c2, c3;
	uint32_t nops, i, off;
	const char *te;

	fk_trace_on = getenv("FUZZ_MSG_TRACE") != NULL;
	fk_ho_strict = getenv("FUZZ_MSG_HO_STRICT") != NULL;
	if (!fk_ho_stats_on && getenv("FUZZ_MSG_HO_STATS")) {
		fk_ho_stats_on = 1;
				atexit(fk_ho_stats_print);
	}
	if (fk_ho_stats_on && ++ho_stats.runs % 20000 == 0)
		fk_ho_stats_print();
	fk_maps_init();
	fk_reset();
	if (size < 5)
		return 0;

	/*
	 * c0: bits 0-1 window, bit 2 auto-inject, bit 3 pod labelled, bit 4 pod
	 *     opted into the thread context, bit 5 aliases and baggage configured,
	 *     bit 6 tracing on, bit 7 trace ring buffer full
	 * c1: bits 0-1 the connection's set, bits 2-4 the pod's env, bit 5 dev.proj2
	 *     has backends, bit 6 relay down, bit 7 sends aligned on requests
	 * c2: bits 0-1 max frames at the agent, bits 2-4 the thread's env, bit 5 an
	 *     upstream for dev.proj1 bound from the start, bit 6 IPv6, bit 7 the
	 *     connection's pod does not have the thread context (no records for it)
	 * c3: bit 0 the relay's receive memory takes only the first element of one
	 *     frame (bpf_tcp_ingress under TCP memory pressure), bit 1 the service
	 *     has one backend set in es_frontends (the own pod's responses are not
	 *     followed), bit 2 the connection was made while it had one (sockops
	 *     left it without the state callback: never followed either), bit 3 the
	 *     connection was made by a connect hint (es_hints, ES_STEER_F_HINT: to a
	 *     set other than the caller's own, chosen by bits 4-5; not with bits 1-2),
	 *     bit 6 dev (the default) has no backends, bit 7 a pod of the node has the
	 *     thread context (ES_CFG_F_LOCAL_CTX: requests are handed off)
	 */
	c0 = rd8(&r);
	c1 = rd8(&r);
	c2 = rd8(&r);
	c3 = rd8(&r);
	cf.relay_partial = c3 & 1;
	fd.partial_on = cf.relay_partial;
	cf.single_set = (c3 >> 1) & 1;
	cf.connected_single = (c3 >> 2) & 1;
	cf.window = windows[c0 & 3];
	cf.auto_inject = (c0 >> 2) & 1;
	cf.pod_flags = ((c0 & 0x08) ? ES_POD_F_LABELLED : 0) | ((c0 & 0x10) ? ES_POD_F_THREAD_CTX : 0);
	cf.aliases = cf.baggage = (c0 >> 5) & 1;
	cf.tracing = (c0 >> 6) & 1;
	fk.ringbuf_full = (c0 >> 7) & 1;
	cf.conn_env = conn_envs[c1 & 3];
	cf.pod_env = pod_envs[(c1 >> 2) & 7];
	cf.proj2_set = (c1 >> 5) & 1;
	cf.relay_up = !((c1 >> 6) & 1);
	cf.align = (c1 >> 7) & 1;
	cf.max_frames = c2 & 3;
	te = ENV_VALUES[(c2 >> 2) & 7];
	cf.thread_env = te && te[0] != '-' ? te : NULL;
	cf.prebind = (c2 >> 5) & 1;
	cf.no_dev_set = (c3 >> 6) & 1;
	cf.local_ctx = (c3 >> 7) & 1;
	cf.peer_ctx = !((c2 >> 7) & 1);
	cf.hinted = 0;
	if (cf.conn_env == 5 && !cf.proj2_set)
		cf.conn_env = 2; /* a connection goes to a set that exists */
	if (cf.conn_env == 2 && cf.no_dev_set)
		cf.conn_env = 3;
	/* at connect, the caller's own environment (its pod's: the thread's serves only
	 * services of one request per connection) resolved to own_set */
	cf.own_set = ref_resolve(cf.pod_env);
	if ((c3 >> 3) & 1) {
		/* es_hint_pick: a hint for another set than own_set, one with backends */
		uint32_t cand[3], nc = 0, e;

		for (e = 2; e <= 5; e++)
			if (fk_has_set(e) && e != cf.own_set)
				cand[nc++] = e;
		if (nc && cf.own_set != ES_ENV_NONE) {
			cf.hinted = 1;
			cf.conn_env = cand[((c3 >> 4) & 3) % nc];
			cf.single_set = cf.connected_single = 0; /* only to a service of several sets */
		}
	}

	es_http_cfg_init(&cf.http, '.', cf.window);
	CHECK(!es_http_cfg_add_name(&cf.http, "X-Virtual-Env", 13));
	if (cf.aliases) {
		CHECK(!es_http_cfg_add_name(&cf.http, "X-Env", 5));
		CHECK(!es_http_cfg_set_baggage_key(&cf.http, "virtual-env", 11));
	}
	fk_setup_maps();

	/* as sockops leaves it once established (outbound.h es_sockops) */
	fk.sock.steered = ES_STEER_POD | (cf.single_set || cf.connected_single ? 0 : ES_STEER_F_STATE) |
			  (cf.hinted ? ES_STEER_F_HINT : 0) | (cf.peer_ctx ? ES_STEER_F_CTX : 0);
	fk.sock.pod_cgroup = FK_POD_CG;
	fk.sock.svc_id = FK_SVC;
	fk.sock.env_id = cf.conn_env;
	fk.sock.pod_env_id = cf.pod_env;
	fk.sock.pod_flags = cf.pod_flags;
	fk.sock.cookie = FK_CONN_COOKIE;
	fk.sock.family = (c2 & 0x40) ? ES_FAMILY_INET6 : ES_FAMILY_INET;
	fk.sock.orig_addr[0] = 0x0100600a;
	fk.sock.orig_port = bpf_htons(80);
	{
		/* the service address: more than one backend set, unless not */
		struct es_frontend_key fk_key = { .port = fk.sock.orig_port, .proto = IPPROTO_TCP,
						  .family = fk.sock.family };
		struct es_frontend fe = { .svc_id = FK_SVC, .flags = cf.single_set ? 0 : ES_FE_F_MULTI_SET };

		fk_key.addr[0] = fk.sock.orig_addr[0];
		CHECK(!bpf_map_update_elem(&es_frontends, &fk_key, &fe, BPF_ANY));
	}
	if (cf.thread_env) {
		fk.th_on = 1;
		fk.th.active = 1;
		fk.th.len = (__u8)strlen(cf.thread_env);
		memcpy(fk.th.env, cf.thread_env, fk.th.len);
		fk.th.sock = 99;
	}
	if (cf.prebind)
		fk_bind(3);

	/* the stream */
	nops = 1 + rd8(&r) % 16;
	for (i = 0; i < nops && s.n < FK_MAX_STREAM - 32 * 1024; i++) {
		uint8_t o[6];
		int k;

		for (k = 0; k < 6; k++)
			o[k] = rd8(&r);
		req_starts[nreq++] = (uint32_t)s.n;
		gen_request(&s, o);
	}
	if (!s.n) {
		free(s.p);
		return 0;
	}
	fd.s = s.p;
	fd.sn = s.n;
	if (getenv("FUZZ_MSG_STREAM")) {
		/* the generated stream, for a look at a reproducer */
		FILE *f = fopen(getenv("FUZZ_MSG_STREAM"), "wb");

		if (f) {
			fwrite(s.p, 1, s.n, f);
			fclose(f);
		}
	}
	fd.st = calloc(s.n, 1);
	fd.dest = calloc(s.n, 1);
	fd.up = calloc(s.n, 1);
	fd.seen = calloc(s.n, sizeof(int32_t));
	segof = calloc(s.n, sizeof(int));
	CHECK(fd.st && fd.dest && fd.up && fd.seen && segof);

	/* the sends: what is left of the input, two bytes each; then the rest in one */
	off = 0;
	while (off < s.n && nsends < FK_MAX_SENDS) {
		struct fk_send *sd = &sends[nsends++];
		uint8_t a = rd_more(&r) ? rd8(&r) : 3, p = rd8(&r);
		uint32_t left = (uint32_t)s.n - off, k;

		if (cf.align) {
			/* never across the start of a generated request */
			for (k = 0; k < nreq; k++)
				if (req_starts[k] > off && req_starts[k] - off < left)
					left = req_starts[k] - off;
		}
		sd->off = off;
		sd->len = send_size(a, left);
		sd->reg = malloc(FK_SEND_ELEMS * sizeof(uint32_t));
		CHECK(sd->reg);
		sd->nreg = split_regions(sd->len, p, (uint8_t)(a ^ nsends), sd->reg);
		sd->coalesce = (p >> 3) & 1;
		sd->copy = (p >> 4) & 1;
		sd->agent = (uint8_t)((p >> 5) & 7);
		off += sd->len;
	}
	if (off < s.n) {
		free(s.p);
		fk_reset();
		return 0;
	}

	for (i = 0; i < nsends; i++) {
		if (fk_sendmsg(&sends[i]) < 0) {
			fd.dropped = 1;
			trace("the send failed: the connection is unusable\n");
			break;
		}
		fk_agent(sends[i].agent);
	}

	reference_parse();
	check_streams();
	check_requests();
	check_inserts();
	check_upstream_counts();
	check_own_counts();
	check_hint();
	check_liveness();
	check_handoff();

	free(s.p);
	fd.s = NULL;
	fk_reset();
	return 0;
}
