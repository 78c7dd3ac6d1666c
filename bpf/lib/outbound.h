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

#include "msgplan.h"
#include "response.h"
#include "request.h"
#include "resolve.h"
#include "trace.h"

/* Requests with a header inserted per send (pipelining). */
#define ES_MAX_INSERTS 8
#define ES_INJECT_MAX (32 + 2 + ES_ENV_NAME_MAX + 2)

/* The hint that made connection s is dropped (counted why): the pod's next
 * connection to the service is made to its own set. */
static __always_inline void es_hint_drop(const struct es_sock *s, __u32 why)
{
	struct es_hint_key hk = {};

	es_count(why);
	hk.pod = s->pod_cgroup;
	hk.svc_id = s->svc_id;
	bpf_map_delete_elem(&es_hints, &hk);
}

/* A connection a hint made (ES_STEER_F_HINT) got bytes that cannot be routed
 * by their own header: they are refused, and the hint dropped. */
static __always_inline void es_hint_refuse(const struct es_sock *s)
{
	es_hint_drop(s, ES_CNT_HINT_REFUSED);
}

/* A connection a hint made is watched until it is established (its state
 * changes reach sockops): a connect that fails (refused, timed out) drops the
 * hint, so that the pod's next connection is made to its own set. */
static __always_inline void es_hint_watch(struct bpf_sock_ops *skops)
{
	const struct es_sock *s;

	if (!es_feat_hints || !skops->sk)
		return;
	s = bpf_sk_storage_get(&es_socks, skops->sk, 0, 0);
	if (s && (s->steered & ES_STEER_F_HINT))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void es_hint_connect_failed(struct bpf_sock_ops *skops)
{
	const struct es_sock *s;

	if (skops->args[0] != BPF_TCP_SYN_SENT || skops->args[1] != BPF_TCP_CLOSE || !skops->sk)
		return;
	s = bpf_sk_storage_get(&es_socks, skops->sk, 0, 0);
	if (s && (s->steered & ES_STEER_F_HINT))
		es_hint_drop(s, ES_CNT_HINT_CONNECT_FAILED);
}

/* A client of the relay is closing or gone: the agent pools or closes its
 * upstreams now rather than at its next sweep. */
static __always_inline void es_relay_client_state(struct bpf_sock_ops *skops)
{
	struct es_relay_event *ev;
	__u32 state = skops->args[1];
	__u64 cookie;

	if (state != BPF_TCP_FIN_WAIT1 && state != BPF_TCP_CLOSE && state != BPF_TCP_LAST_ACK)
		return;
	cookie = bpf_get_socket_cookie(skops);
	/* the own pod's responses were followed while it was open (es_own_rsp) */
	if (state == BPF_TCP_CLOSE)
		bpf_map_delete_elem(&es_own_rsp, &cookie);
	if (!bpf_map_lookup_elem(&es_relay_clients, &cookie))
		return;
	ev = bpf_ringbuf_reserve(&es_relay_ev, sizeof(*ev), 0);
	if (!ev) {
		es_count(ES_CNT_RELAY_EV_LOST); /* the agent's sweep finds it later */
		return;
	}
	ev->client = cookie;
	ev->state = state;
	ev->pad = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* A connection made to the agent's HTTP/2 endpoint: what the agent needs,
 * under the client's own address (its peer address there). */
static __always_inline void es_h2_record(struct bpf_sock_ops *skops, const struct es_sock *s, __u64 cookie)
{
	struct es_h2_conn_key k = {};
	struct es_h2_conn v = {};

	if (skops->family == 2 /* AF_INET */) {
		k.addr[0] = skops->local_ip4;
		k.family = ES_FAMILY_INET;
	} else {
		k.addr[0] = skops->local_ip6[0];
		k.addr[1] = skops->local_ip6[1];
		k.addr[2] = skops->local_ip6[2];
		k.addr[3] = skops->local_ip6[3];
		k.family = ES_FAMILY_INET6;
		if (k.addr[0] == 0 && k.addr[1] == 0 && k.addr[2] == bpf_htonl(0x0000ffff)) {
			k.addr[0] = k.addr[3];
			k.addr[2] = 0;
			k.addr[3] = 0;
			k.family = ES_FAMILY_INET;
		}
	}
	k.port = bpf_htons((__u16)skops->local_port);
	v.orig_addr[0] = s->orig_addr[0];
	v.orig_addr[1] = s->orig_addr[1];
	v.orig_addr[2] = s->orig_addr[2];
	v.orig_addr[3] = s->orig_addr[3];
	v.orig_port = s->orig_port;
	v.family = s->family;
	v.svc_id = s->svc_id;
	v.pod_env_id = s->pod_env_id;
	v.pod_flags = s->pod_flags;
	v.pod_cgroup = s->pod_cgroup;
	v.cookie = cookie;
	if (bpf_map_update_elem(&es_h2_conns, &k, &v, BPF_ANY))
		es_count(ES_CNT_H2_CONN_LOST);
}

/* The service of the connection has ready pods in more than one backend set:
 * its requests may be re-routed. */
static __always_inline int es_multi_set(const struct es_sock *s)
{
	struct es_frontend_key fk = {};
	const struct es_frontend *fe;

	fk.addr[0] = s->orig_addr[0];
	fk.addr[1] = s->orig_addr[1];
	fk.addr[2] = s->orig_addr[2];
	fk.addr[3] = s->orig_addr[3];
	fk.port = s->orig_port;
	fk.proto = IPPROTO_TCP;
	fk.family = s->family;
	fe = bpf_map_lookup_elem(&es_frontends, &fk);
	return fe && (fe->flags & ES_FE_F_MULTI_SET);
}

/* An HTTP/2 connection preface on a connection to a service with more than one
 * backend set whose port is not declared HTTP/2: its streams all go to the pod
 * of its connection (the caller's environment). Counted and traced, so that the
 * port can be declared (README "HTTP/2 and gRPC"). */
static __always_inline void es_h2_preface(struct sk_msg_md *msg, const struct es_sock *s)
{
	struct es_trace_event *ev;
	__u8 *p = msg->data;

	/* the length first: no pointer arithmetic on an empty region (fuzz_msg) */
	if ((long)msg->data_end - (long)msg->data < 8 || (void *)(p + 8) > msg->data_end)
		return;
	if (p[0] != 'P' || p[1] != 'R' || p[2] != 'I' || p[3] != ' ' || p[4] != '*' || p[5] != ' ' ||
	    p[6] != 'H' || p[7] != 'T')
		return;
	if (!es_multi_set(s))
		return;
	es_count(ES_CNT_H2_UNROUTED);
	ev = es_trace_reserve(ES_EV_H2_UNROUTED);
	if (!ev)
		return;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pod_cgroup_id = s->pod_cgroup;
	ev->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	ev->svc_id = s->svc_id;
	ev->env_req = s->env_id;
	ev->env_res = s->env_id;
	ev->pod_env = s->pod_env_id;
	ev->level = s->level;
	ev->source = ES_SRC_POD;
	ev->fe_addr[0] = s->orig_addr[0];
	ev->fe_addr[1] = s->orig_addr[1];
	ev->fe_addr[2] = s->orig_addr[2];
	ev->fe_addr[3] = s->orig_addr[3];
	ev->fe_port = s->orig_port;
	ev->family = s->family;
	ev->proto = IPPROTO_TCP;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int es_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct es_sock *s;
	__u64 cookie;

	if (!es_feat_per_request)
		return 1;
	if (skops->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		es_hint_watch(skops);
		return 1;
	}
	if (skops->op == BPF_SOCK_OPS_STATE_CB) {
		es_hint_connect_failed(skops);
		es_relay_client_state(skops);
		return 1;
	}
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	s = bpf_sk_storage_get(&es_socks, sk, 0, 0);
	if (!s || !s->steered)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	s->cookie = cookie; /* sk_msg programs cannot ask for it */
	if (s->steered == ES_STEER_H2) {
		es_h2_record(skops, s, cookie);
		return 1; /* the agent's endpoint speaks HTTP/2: nothing to parse here */
	}
	bpf_sock_hash_update(skops, &es_sockhash, &cookie, BPF_ANY);
	/* State changes matter only where a request can leave the connection's
	 * own pod (a service with more than one backend set): a relay client's
	 * close, the end of the own pod's follower (es_own_rsp). Elsewhere they
	 * would be 1-3 more runs per connection for nothing. A connection made
	 * while its service had one set is never followed (es_own_note); if it
	 * becomes a relay client later, the relay's sweep finds its close. */
	if (!es_multi_set(s))
		return 1;
	s->steered |= ES_STEER_F_STATE;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

/* The program's pointers; the scalars live in es_tx.v (a map value, so the
 * verifier does not track their values through the byte loop, which keeps
 * its work on the loop callbacks small). */
struct es_msg_ctx {
	struct sk_msg_md *msg;
	struct es_tx *tx;
	const struct es_sock *sock;
	const struct es_http_cfg *cfg;
	__u8 head; /* a request head was routed in this run (es_count_path) */
	__u8 held; /* es_tx.held when the run began (maps/abi.h) */
};

/* Bytes of a run (http.h) taken in one step of the byte loop, at most. */
#define ES_MSG_RUN 16
/* Bytes fed one after another in one step of the byte loop, at most. */
#define ES_MSG_FEED 8

static long es_msg_byte(__u32 i, void *data)
{
	struct es_msg_ctx *c = data;
	struct sk_msg_md *msg = c->msg;
	struct es_http_run run;
	__u64 skip;
	__u32 idx, j;
	__u8 *p, b;
	int ev, kind;

	if (c->tx->v.off >= c->tx->v.size)
		return 1;
	skip = es_http_skippable(&c->tx->st);
	if (skip) {
		__u32 left = c->tx->v.size - c->tx->v.off;

		if (skip > left)
			skip = left;
		ev = es_http_skip(&c->tx->st, skip);
		c->tx->v.off += (__u32)skip;
		if (ev & ES_HTTP_EV_DONE)
			c->tx->v.req_begin = (__s32)c->tx->v.off;
		return 0;
	}
	if (c->tx->v.off < c->tx->v.pstart || c->tx->v.off >= c->tx->v.pend) {
		__u32 end = c->tx->v.off + ES_PULL;

		if (end > c->tx->v.size)
			end = c->tx->v.size;
		if (bpf_msg_pull_data(msg, c->tx->v.off, end, 0))
			return 1;
		c->tx->v.pstart = c->tx->v.off;
		c->tx->v.pend = end;
	}
	idx = c->tx->v.off - c->tx->v.pstart;
	if (idx >= ES_PULL) /* bounds the packet offset for the verifier */
		return 1;
	p = (__u8 *)(long)msg->data + idx;
	if ((void *)(p + 1) > (void *)(long)msg->data_end)
		return 1;
	kind = es_http_run_start(&c->tx->st, c->cfg, &run);
	if (kind && es_http_run_byte(&run, 0, *p)) {
		/* a run (http.h): up to the byte that ends it, the pulled
		 * region's end or the header window, without the state machine */
		__u32 max = es_http_run_max(&c->tx->st, c->cfg), lim = c->tx->v.pend - c->tx->v.off, k;
		__u8 last = *p;

		for (k = 1; k < ES_MSG_RUN; k++) {
			if (k >= lim || k >= max || (void *)(p + k + 1) > (void *)(long)msg->data_end ||
			    !es_http_run_byte(&run, k, p[k]))
				break;
			last = p[k];
		}
		if (max) {
			es_http_run_take(&c->tx->st, kind, k);
			c->tx->v.off += k;
			c->tx->prev = last;
			return 0;
		}
	}
	b = *p;
	c->tx->v.off++;
	ev = es_http_feed(&c->tx->st, c->cfg, b);
	/* bytes that are fed too (the env value, line ends, the version's
	 * digits, a name's first byte: es_http_feeds_next) go on in this step
	 * while they raise no event, up to ES_MSG_FEED, in the pulled region */
	for (j = 1; j < ES_MSG_FEED && !ev; j++) {
		if (c->tx->v.off >= c->tx->v.pend || c->tx->v.off >= c->tx->v.size ||
		    (void *)(p + j + 1) > (void *)(long)msg->data_end || !es_http_feeds_next(&c->tx->st))
			break;
		c->tx->prev = b;
		b = p[j];
		c->tx->v.off++;
		ev = es_http_feed(&c->tx->st, c->cfg, b);
	}
	if (ev & ES_HTTP_EV_REQLINE)
		c->tx->v.reqline = (__s32)c->tx->v.off;
	if (ev & ES_HTTP_EV_HEADERS) {
		/* decided outside the byte loop; c->tx->prev is still the byte
		 * before the final line end */
		c->tx->v.head = 1;
		c->tx->v.done = (ev & ES_HTTP_EV_DONE) ? 1 : 0;
		return 1;
	}
	c->tx->prev = b;
	if (ev & ES_HTTP_EV_DONE)
		c->tx->v.req_begin = (__s32)c->tx->v.off;
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

static __always_inline void es_count_request(__u32 svc_id, __u32 env_id, __u32 path)
{
	struct es_req_key k = { .svc_id = svc_id, .env_id = env_id, .path = path };
	__u64 one = 1, *v = bpf_map_lookup_elem(&es_req_stats, &k);

	if (v)
		*v += 1;
	else
		bpf_map_update_elem(&es_req_stats, &k, &one, BPF_NOEXIST);
}

/* es_env_id_by_name for the per-request decision, as bpf_loop callbacks: the
 * decision runs inside a callback already, where the unrolled walk makes the
 * verifier's work explode. */
struct es_walk {
	struct es_env_name *key;
	__u32 pos;
	__u32 id;
};

static long es_walk_cb(__u32 i, void *data)
{
	struct es_walk *w = data;
	__u32 *id;
	char ch;

	if (i > 0) {
		if (w->pos <= 1)
			return 1;
		w->pos--;
		ch = w->key->name[w->pos & (ES_ENV_NAME_MAX - 1)];
		w->key->name[w->pos & (ES_ENV_NAME_MAX - 1)] = 0;
		if (ch != es_splitter)
			return 0;
	}
	id = bpf_map_lookup_elem(&es_env_names, w->key);
	if (!id)
		return 0;
	w->id = *id;
	return 1;
}

static __always_inline __u32 es_env_id_of(const char *name, __u32 len)
{
	struct es_walk w = {};
	__u32 zero = 0;

	w.key = bpf_map_lookup_elem(&es_scratch, &zero);
	if (!w.key || len == 0 || len >= ES_ENV_NAME_MAX)
		return ES_ENV_NONE;
	/* the key NUL-padded: zeroed, then the name's len bytes (one helper
	 * call, not a loop step per padding byte) */
	__builtin_memset(w.key->name, 0, ES_ENV_NAME_MAX);
	if (bpf_probe_read_kernel(w.key->name, len & (ES_ENV_NAME_MAX - 1), name))
		return ES_ENV_NONE;
	w.pos = len;
	bpf_loop(ES_ENV_NAME_MAX, es_walk_cb, &w, 0);
	return w.id;
}

/* The connection's own pod: out on the connection itself. */
static __always_inline void es_own_route(const struct es_sock *s, struct es_route *r)
{
	r->kind = ES_ROUTE_PASS;
	r->upstream = 0;
	r->svc_id = s->svc_id;
	r->env_id = s->env_id;
	r->pad = 0;
}

/* Where a request of environment env (ES_ENV_NONE: the default) goes. Its
 * connection's own backend set serves it: out on the connection. Otherwise to
 * the upstream bound to (connection, set) once the agent has forwarded every
 * frame this connection sent it (order), else through the agent. */
static __always_inline void es_route_request(const struct es_sock *s, const struct es_tx *tx, __u32 env,
					     struct es_route *r)
{
	const struct es_config *cfg = es_get_config();
	struct es_bind_key bk = {};
	struct es_resolution res;
	const struct es_bind *b;
	const struct es_rsp *rsp;
	const struct es_relay_done *done;
	__u64 cookie = s->cookie;

	es_own_route(s, r);
	if (!cfg || !es_resolve(NULL, s->svc_id, env == ES_ENV_NONE ? cfg->default_env_id : env,
				 cfg->default_env_id, &res)) {
		/* no ready pod anywhere: the connection's pod is as good as any,
		 * unless a hint chose it (another environment's) */
		if (s->steered & ES_STEER_F_HINT) {
			r->kind = ES_ROUTE_FAIL;
			es_hint_refuse(s);
		}
		return;
	}
	if (res.env_id == s->env_id)
		return;
	es_count_mismatch(s->svc_id);
	r->env_id = res.env_id;
	r->kind = ES_ROUTE_SLOW;
	bk.client = cookie;
	bk.svc_id = s->svc_id;
	bk.env_id = res.env_id;
	b = bpf_map_lookup_elem(&es_binds, &bk);
	if (!b)
		return;
	/* closed by its server: the agent settles it and binds a new one */
	rsp = bpf_map_lookup_elem(&es_rsp, &b->upstream);
	if (rsp && rsp->fin)
		return;
	if (tx->slow_seq) {
		done = bpf_map_lookup_elem(&es_relay_done, &cookie);
		if (!done || done->seq != tx->slow_seq)
			return;
	}
	r->kind = ES_ROUTE_KERNEL;
	r->upstream = b->upstream;
}

static __always_inline int es_same_route(const struct es_route *a, const struct es_route *b)
{
	return a->kind == b->kind && a->upstream == b->upstream && a->env_id == b->env_id;
}

/* Frames of this client not yet forwarded by the agent. */
static __always_inline int es_frames_pending(const struct es_msg_ctx *c, const struct es_relay_done **done)
{
	__u64 cookie = c->sock->cookie;

	*done = bpf_map_lookup_elem(&es_relay_done, &cookie);
	return c->tx->slow_seq && (!*done || (*done)->seq != c->tx->slow_seq);
}

/* The request whose head just ended is HEAD (http.h: a 4-byte method starting
 * with H). */
static __always_inline __u8 es_head_method(const struct es_tx *tx)
{
	return (tx->st.flags & ES_HTTP_F_HEAD) ? 1 : 0;
}

/* A request for another target than the run of requests before it (in a
 * later send: within one send es_msg_refuses_head decides) would be answered
 * out of order if the run still waits for a response: the client would read
 * the new request's answer as the old one's. Such a request is refused. For a
 * run re-routed to an upstream the kernel follows that upstream's responses
 * (es_rsp); for a run on the connection's own pod, the responses on the
 * connection itself (es_own_rsp, es_own_note) when they are followed; when
 * they are not, nothing proves them answered. */
static __always_inline int es_run_owes(const struct es_msg_ctx *c, const struct es_route *r)
{
	const struct es_tx *tx = c->tx;
	const struct es_relay_done *done;
	struct es_bind_key bk = {};
	const struct es_bind *b;
	__u64 up = tx->run_up;

	if (!tx->run_reqs || tx->run_env == r->env_id)
		return 0;
	if (tx->run_head) {
		/* the answer to HEAD has no body despite its Content-Length: a
		 * tracker counting answers is out of step after it, and a body
		 * of a later answer could read as an answer head (never proof) */
		es_count(ES_CNT_REQ_ORDER_UNTRACKED);
		return 1;
	}
	if (!tx->run_far) {
		__u64 cookie = c->sock->cookie;

		if (tx->own != ES_OWN_TRACKED) {
			es_count(ES_CNT_REQ_ORDER_UNTRACKED);
			return 1;
		}
		return es_rsp_own_owes(bpf_map_lookup_elem(&es_own_rsp, &cookie));
	}
	/* The run's upstream: the one its last request went to in the kernel,
	 * else the one the agent bound for its frames (bound before it
	 * forwards any), else the one its last frame went to. Frames the agent
	 * has not marked done do not matter: an answer to every request of the
	 * run (counted from its start) says they were forwarded. */
	if (!up) {
		bk.client = c->sock->cookie;
		bk.svc_id = c->sock->svc_id;
		bk.env_id = tx->run_env;
		b = bpf_map_lookup_elem(&es_binds, &bk);
		if (b)
			up = b->upstream;
	}
	if (!up && !es_frames_pending(c, &done) && done)
		up = done->upstream;
	if (!up)
		return 1; /* not known */
	return es_rsp_run_owes(bpf_map_lookup_elem(&es_rsp, &up), tx->run_base, tx->run_reqs);
}

/* The run the request with route r belongs to: the one before it (same
 * target) or a new one. A request through the agent while none of the
 * client's frames is pending there gets a new upstream (the one bound before
 * was closed, else the request would go in the kernel): the run starts again
 * on it (what the old one owed, the agent settles: it resets the client). */
static __always_inline void es_run_note(struct es_msg_ctx *c, const struct es_route *r)
{
	struct es_tx *tx = c->tx;
	const struct es_relay_done *done;
	const struct es_rsp *rsp;

	if (tx->run_reqs && tx->run_env == r->env_id &&
	    !(r->kind == ES_ROUTE_SLOW && !es_frames_pending(c, &done))) {
		tx->run_reqs++;
		tx->run_head |= es_head_method(tx);
		if (r->kind == ES_ROUTE_KERNEL)
			tx->run_up = r->upstream;
		return;
	}
	tx->run_env = r->env_id;
	tx->run_reqs = 1;
	tx->run_head = es_head_method(tx);
	tx->run_far = r->kind == ES_ROUTE_SLOW || r->kind == ES_ROUTE_KERNEL;
	tx->run_up = 0;
	tx->run_base = 0;
	if (r->kind == ES_ROUTE_KERNEL) {
		tx->run_up = r->upstream;
		rsp = bpf_map_lookup_elem(&es_rsp, &tx->run_up);
		if (rsp)
			tx->run_base = rsp->done;
	}
}

/* A request head goes to the connection's own pod. Its responses on the
 * connection are followed (es_own_rsp, by the verdict program) from the first
 * such request on, when the service has more than one backend set then (a
 * request can be re-routed only there; which connection will carry a request
 * for another target is not known before it does, and the answers before it
 * can only be proven when followed from the start). Each request is counted
 * before its bytes go. A connection whose first request to its own pod went
 * unfollowed (the service had one backend set then, or when the connection
 * was made) stays so: es_run_owes refuses
 * a request for another target after them; the client reconnects.
 * Connections to single-set services never pay for the parse. */
static __always_inline void es_own_note(struct es_msg_ctx *c)
{
	struct es_tx *tx = c->tx;
	struct es_rsp *o, z = {};
	__u64 cookie = c->sock->cookie;

	if (tx->own == ES_OWN_UNTRACKED)
		return;
	if (tx->own == ES_OWN_NONE) {
		tx->own = ES_OWN_UNTRACKED;
		/* followed only where sockops deletes the entry at the close */
		if (!cookie || !(c->sock->steered & ES_STEER_F_STATE) || !es_multi_set(c->sock) ||
		    bpf_map_update_elem(&es_own_rsp, &cookie, &z, BPF_NOEXIST))
			return;
		tx->own = ES_OWN_TRACKED;
	}
	o = bpf_map_lookup_elem(&es_own_rsp, &cookie);
	if (!o) {
		tx->own = ES_OWN_UNTRACKED;
		return;
	}
	__sync_fetch_and_add(&o->reqs, 1);
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

#ifdef __bpf__
/* The one field of the kernel's struct tcp_sock read (CO-RE, through
 * bpf_skc_to_tcp_sock): where the next byte sent on the connection goes. */
struct tcp_sock {
	__u32 write_seq;
} __attribute__((preserve_access_index));
#endif

_Static_assert(__builtin_offsetof(struct es_tx, st) % 8 == 0 && __builtin_offsetof(struct es_tx, ho_rec) % 8 == 0 &&
		       __builtin_offsetof(struct es_ho_rec, env) % 8 == 0 && __builtin_offsetof(struct es_thread, env) % 8 == 0 &&
		       __builtin_offsetof(struct es_env, name) % 8 == 0,
	       "es_ho_note copies env names in aligned words (es_env_copy_words)");

/* Parse once per hop (maps/abi.h es_ho_slot): the head just decided (route and
 * header) is noted for its receiver when the whole request is known from it: it
 * passes on this connection, begins at the message's first byte, has a body of
 * known length (none, or Content-Length), is no upgrade, and its environment is
 * the one a parse of its bytes on the wire finds (env: the header's value or the
 * inserted one; NULL: neither). Written when the verdict passes it (es_ho_send). */
static __always_inline void es_ho_note(struct es_msg_ctx *c, const char *env, __u32 env_len, __u32 added)
{
	const struct es_config *cfg;
	struct es_tx *tx = c->tx;
	__u64 body = 0;

	if (!es_feat_handoff)
		return;
	/* no pod of this node parses requests on arrival: no receiver here;
	 * nor on this connection's pod (es_backend ES_BE_F_LOCAL_CTX at
	 * connect: a pod that gained the thread context since parses itself) */
	if (!(c->sock->steered & ES_STEER_F_CTX))
		return;
	cfg = es_get_config();
	if (!cfg || !(cfg->flags & ES_CFG_F_LOCAL_CTX))
		return;
	if (tx->route.kind != ES_ROUTE_PASS || tx->v.req_begin != 0 ||
	    tx->upgrade || (tx->st.flags & ES_HTTP_F_H2C) || env_len >= ES_ENV_NAME_MAX ||
	    tx->st.pos + added != tx->v.off)
		return;
	if (tx->st.phase == ES_HTTP_P_BODY)
		body = tx->st.body;
	else if (tx->st.phase != ES_HTTP_P_IDLE)
		return; /* chunked: where it ends is not known yet */
	if (body > 0x7fffffffULL - tx->v.off)
		return;
	tx->ho_rec.len = tx->v.off + (__u32)body;
	tx->ho_rec.env_len = (__u8)env_len;
	es_env_copy_words(tx->ho_rec.env, env, env_len, es_splitter);
	tx->ho_pend = 1;
}

/* The verdict passes the noted request (es_ho_note) on the connection: its
 * record for the receiver, keyed by the sequence number of its first byte (no
 * earlier byte of the connection is still unsent: the kernel runs the program
 * only when the last verdict's bytes are done), into this CPU's cache, where
 * the receive path that follows the send finds it. A sender preempted while it
 * writes a slot holds it: another sender on this CPU leaves its record out, a
 * receiver does not take it. */
static __always_inline void es_ho_send(struct es_msg_ctx *c)
{
	struct sk_msg_md *msg = c->msg;
	struct es_tx *tx = c->tx;
	struct es_handoff_key k = {};
	struct es_ho_slot *sl;
	struct tcp_sock *tp;
	__u32 idx;
	__u8 *p;

	tx->ho_pend = 0;
	if (!msg->sk)
		return;
	tp = bpf_skc_to_tcp_sock(msg->sk);
	if (!tp)
		return;
	k.seq = tp->write_seq;
	ES_HO_ADDR(k.server, msg->family, msg->remote_ip4, msg->remote_ip6);
	ES_HO_ADDR(k.client, msg->family, msg->local_ip4, msg->local_ip6);
	/* local_port in host order; remote_port in network order, in the upper
	 * half where the kernel shifts it there */
	k.server_port = bpf_ntohs((__u16)(msg->remote_port > 0xffff ? msg->remote_port >> 16 : msg->remote_port));
	k.client_port = (__u16)msg->local_port;
	if (bpf_msg_pull_data(msg, 0, 8, 0))
		return;
	p = (__u8 *)(long)msg->data;
	if ((void *)(p + 8) > (void *)(long)msg->data_end)
		return;
	__builtin_memcpy(&tx->ho_rec.first, p, 8);
	idx = es_ho_idx(&k);
	sl = bpf_map_lookup_elem(&es_hocache, &idx);
	if (!sl || __sync_val_compare_and_swap(&sl->lock, 0, 1) != 0)
		return;
	sl->valid = 0;
	__asm__ __volatile__("" ::: "memory");
	sl->key = k;
	sl->ts = bpf_ktime_get_coarse_ns();
	sl->rec = tx->ho_rec;
	__asm__ __volatile__("" ::: "memory");
	sl->valid = 1;
	__asm__ __volatile__("" ::: "memory");
	sl->lock = 0;
	es_count(ES_CNT_HO_SENT);
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

/* A request head ended at c->tx->v.off: its environment, its route, and the header
 * insertion. Returns 1 when the message must be split before this request
 * (its route differs from the bytes before it in this message). */
static __always_inline int es_head_done(struct es_msg_ctx *c)
{
	const struct es_sock *s = c->sock;
	const struct es_inject_cfg *ic;
	const struct es_thread *th;
	const struct es_env *pe;
	struct es_route r;
	const char *env = NULL, *name = NULL;
	__u32 zero = 0, env_len = 0, name_len = 0, at, added, id = ES_ENV_NONE;
	__s32 line;

	es_count(ES_CNT_TX_REQUEST);
	if (c->tx->st.flags & ES_HTTP_F_ENV_SEEN) {
		es_count(ES_CNT_TX_HAS_HEADER);
		if (es_http_env_outcome(&c->tx->st) == ES_HTTP_ENV_FOUND) {
			name = es_http_env(&c->tx->st);
			name_len = (__u32)es_http_env_len(&c->tx->st);
		}
	} else {
		/* known environments only: the request the thread provably
		 * serves, else (auto-inject) a labelled pod's own; an unlabelled
		 * pod inserts nothing of its own */
		th = es_current_thread(s->pod_flags, 1);
		ic = bpf_map_lookup_elem(&es_inject, &zero);
		if (th) {
			env = th->env;
			env_len = th->len;
		} else if (ic && ic->auto_inject && (s->pod_flags & ES_POD_F_LABELLED) &&
			   s->pod_env_id > ES_ENV_BASE) {
			__u32 pid = s->pod_env_id;

			pe = bpf_map_lookup_elem(&es_envs, &pid);
			if (pe) {
				env = pe->name;
				env_len = pe->len;
			}
		}
		name = env;
		name_len = env_len;
	}
	if (name && name_len > 0 && name_len < ES_ENV_NAME_MAX)
		id = es_env_id_of(name, name_len);
	else
		id = s->pod_env_id;
	c->tx->v.env_req = id;
	c->tx->upgrade = (c->tx->st.flags & (ES_HTTP_F_UPGRADE | ES_HTTP_F_CONNECT)) ? 1 : 0;
	if (c->tx->unroutable) {
		/* its first bytes went to the connection's own pod before its head
		 * was complete: the rest follows them */
		c->tx->unroutable = 0;
		r = c->tx->route;
	} else if (c->tx->st.flags & ES_HTTP_F_H2C) {
		/* an h2c upgrade turns the connection into one that carries
		 * requests of every environment: it stays with the connection's
		 * own pod (the calling pod's environment), not re-routed - but
		 * a hint's pod is another environment's: refused there */
		es_count(ES_CNT_REQ_H2C_KEPT);
		es_own_route(s, &r);
		if (s->steered & ES_STEER_F_HINT) {
			r.kind = ES_ROUTE_FAIL;
			es_hint_refuse(s);
		}
	} else {
		es_route_request(s, c->tx, id, &r);
	}
	if (es_msg_refuses_head(c->tx->v.req_begin, c->tx->pipelined, es_same_route(&r, &c->tx->v.route)))
		return 1;
	if (es_run_owes(c, &r)) {
		es_count(ES_CNT_REQ_ORDER_REFUSED);
		return 1;
	}
	if ((s->steered & ES_STEER_F_HINT) && !c->tx->run_reqs &&
	    (r.kind == ES_ROUTE_SLOW || r.kind == ES_ROUTE_KERNEL))
		es_count(ES_CNT_HINT_MISSED);
	es_run_note(c, &r);
	if (r.kind == ES_ROUTE_PASS)
		es_own_note(c);
	c->tx->pipelined = 0;
	if (c->tx->v.req_begin == 0)
		c->tx->v.route = r;
	c->tx->route = r;

	if (!env || env_len == 0) {
		/* for the receiver: the header's value (when it is the one a parse
		 * finds), or none */
		if (!(c->tx->st.flags & ES_HTTP_F_ENV_SEEN)) {
			es_count(ES_CNT_TX_NO_ENV);
			es_ho_note(c, NULL, 0, 0);
		} else if (es_http_env_outcome(&c->tx->st) == ES_HTTP_ENV_FOUND && name)
			es_ho_note(c, name, name_len, 0);
		return 0;
	}
	ic = bpf_map_lookup_elem(&es_inject, &zero);
	if (!ic) {
		es_ho_note(c, NULL, 0, 0);
		return 0;
	}
	/* after the request line when it ended in this send, else before the
	 * blank line that ends the head (the request line went out earlier) */
	line = c->tx->v.reqline;
	if (line > 0) {
		at = (__u32)line;
	} else {
		__u32 blank = c->tx->prev == '\r' ? 2 : 1;

		/* the blank line began in an earlier send (its CR is gone): no
		 * place is left to insert at */
		if (c->tx->v.off < blank) {
			es_count(ES_CNT_TX_INJECT_FAILED);
			es_ho_note(c, NULL, 0, 0);
			return 0;
		}
		at = c->tx->v.off - blank;
	}
	added = es_insert_header(c->msg, at, ic, env, env_len);
	if (!added) {
		/* (no record: what the message holds now is not known here) */
		es_count(ES_CNT_TX_INJECT_FAILED);
		return 0;
	}
	es_count(ES_CNT_TX_INJECTED);
	c->tx->v.off += added;
	c->tx->v.size += added;
	c->tx->v.pstart = c->tx->v.pend = 0; /* the data moved: pull again */
	es_ho_note(c, env, env_len, added);
	return 0;
}

/* A per-request decision for `envsteer trace` (when a client is attached). */
static __always_inline void es_trace_request(const struct es_sock *s, const struct es_route *r, __u32 env_req,
					     __u32 kind)
{
	struct es_trace_event *ev = es_trace_reserve(kind);

	if (!ev)
		return;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	ev->svc_id = s->svc_id;
	ev->env_req = env_req;
	ev->env_res = r->env_id;
	ev->pod_env = s->pod_env_id;
	ev->source = ES_SRC_REQUEST;
	ev->fe_addr[0] = s->orig_addr[0];
	ev->fe_addr[1] = s->orig_addr[1];
	ev->fe_addr[2] = s->orig_addr[2];
	ev->fe_addr[3] = s->orig_addr[3];
	ev->fe_port = s->orig_port;
	ev->family = s->family;
	ev->proto = IPPROTO_TCP;
	ev->flags = r->kind;
	es_trace_thread_env(ev, s->pod_flags);
	bpf_ringbuf_submit(ev, 0);
}

/* Whether len more bytes would take the pod's clients over their share of the
 * agent's queues (one pod cannot fill them for the others). */
static __always_inline int es_relay_pod_full(__u64 pod, __u32 len, __u64 max)
{
	const struct es_relay_pod *p = bpf_map_lookup_elem(&es_relay_pods, &pod);
	const __u64 *done = bpf_map_lookup_elem(&es_relay_pod_done, &pod);
	__u64 framed = p ? p->framed : 0, d = done ? *done : 0;

	return (framed > d ? framed - d : 0) + len > max;
}

static __always_inline void es_relay_pod_add(__u64 pod, __u32 len)
{
	struct es_relay_pod *p = bpf_map_lookup_elem(&es_relay_pods, &pod), np = {};

	if (p) {
		__sync_fetch_and_add(&p->framed, len);
		return;
	}
	np.framed = len;
	if (bpf_map_update_elem(&es_relay_pods, &pod, &np, BPF_NOEXIST)) {
		p = bpf_map_lookup_elem(&es_relay_pods, &pod);
		if (p)
			__sync_fetch_and_add(&p->framed, len);
	}
}

/* After a redirect verdict: the kernel gives the next run of this send the
 * rest bytes the verdict did not cover, unless the message was held - then the
 * redirect frees them (no run follows) - and the redirect ends the socket's
 * cork buffer (psock->cork, tcp_bpf_send_verdict). */
static __always_inline void es_redirected(struct es_msg_ctx *c, __u32 rest)
{
	c->tx->rest = c->held ? 0 : rest;
	c->tx->held = 0;
}

/* Frames bytes 0..len of the message for the agent and queues them on its
 * relay socket (the last byte of a large frame that takes the whole message
 * goes in a frame of its own, next run: es_relay_frame_cut). */
static __always_inline int es_to_agent(struct es_msg_ctx *c, __u32 len)
{
	struct sk_msg_md *msg = c->msg;
	const struct es_relay_cfg *rc;
	struct es_relay_client *rcl, nc = {};
	const struct es_relay_done *done;
	struct es_relay_acct *acct;
	struct es_relay_hdr *h;
	__u64 cookie = c->sock->cookie, pod = c->sock->pod_cgroup, relay, done_bytes, framed, before = 0;
	__u32 zero = 0, seq, size = c->tx->v.size, slot;
	__u8 pull, carry;
	void *d, *e;

	len = es_relay_frame_cut(len, size, &pull, &carry);
	if (c->held) {
		/* the kernel frees what a redirect of a held message does not
		 * deliver: no run follows it */
		len = len + carry;
		pull = 0;
		carry = 0;
	}
	rc = bpf_map_lookup_elem(&es_relay_cfg, &zero);
	acct = bpf_map_lookup_elem(&es_relay_acct, &zero);
	if (!rc || !rc->sockets || !cookie || !acct)
		return -1;
	/* by the pod: its clients' frames fill their own socket, in order */
	slot = es_relay_slot(pod, rc->sockets);
	if (slot >= ES_RELAY_SOCKETS_MAX)
		return -1;
	relay = rc->relay[slot];
	if (!relay)
		return -1;
	seq = c->tx->slow_seq + 1;
	done = bpf_map_lookup_elem(&es_relay_done, &cookie);
	done_bytes = done ? done->bytes : 0;
	/* Bounded queues at the agent: refuse (the send fails, counted) rather
	 * than grow without end. The agent reads its socket at once; what it
	 * holds per client waits for that client's upstream only. */
	if (rc->max_frames && seq - (done ? done->seq : 0) > rc->max_frames) {
		es_count(ES_CNT_RELAY_FULL_FRAMES);
		return -1;
	}
	/* the agent may count more done than framed (a frame it resynced) */
	framed = acct->framed > rc->done_bytes ? acct->framed - rc->done_bytes : 0;
	if (rc->max_total_bytes && framed + len > rc->max_total_bytes) {
		es_count(ES_CNT_RELAY_FULL_TOTAL);
		return -1;
	}
	if (rc->max_pod_bytes && es_relay_pod_full(pod, len, rc->max_pod_bytes)) {
		es_count(ES_CNT_RELAY_FULL_POD);
		return -1;
	}
	/* the pods of one socket together: what its kernel memory holds */
	framed = acct->socket_framed[slot] > rc->socket_done[slot] ?
			 acct->socket_framed[slot] - rc->socket_done[slot] : 0;
	if (rc->max_socket_bytes && framed + len > rc->max_socket_bytes) {
		es_count(ES_CNT_RELAY_FULL_SOCKET);
		return -1;
	}
	rcl = bpf_map_lookup_elem(&es_relay_clients, &cookie);
	if (rcl && rc->max_client_bytes && rcl->bytes > done_bytes &&
	    rcl->bytes - done_bytes + len > rc->max_client_bytes) {
		es_count(ES_CNT_RELAY_FULL_CLIENT);
		return -1;
	}
	if (!rcl) {
		if (rc->max_client_bytes && len > rc->max_client_bytes) {
			es_count(ES_CNT_RELAY_FULL_CLIENT);
			return -1;
		}
		nc.family = (__u8)(msg->family == 10 ? ES_FAMILY_INET6 : ES_FAMILY_INET);
		if (msg->family == 10) {
			nc.laddr[0] = msg->local_ip6[0];
			nc.laddr[1] = msg->local_ip6[1];
			nc.laddr[2] = msg->local_ip6[2];
			nc.laddr[3] = msg->local_ip6[3];
			nc.raddr[0] = msg->remote_ip6[0];
			nc.raddr[1] = msg->remote_ip6[1];
			nc.raddr[2] = msg->remote_ip6[2];
			nc.raddr[3] = msg->remote_ip6[3];
		} else {
			nc.laddr[0] = msg->local_ip4;
			nc.raddr[0] = msg->remote_ip4;
		}
		/* local_port is in host order; remote_port in network order, in
		 * the upper half on little-endian kernels that shift it there */
		nc.lport = bpf_htons((__u16)msg->local_port);
		nc.rport = (__u16)(msg->remote_port > 0xffff ? msg->remote_port >> 16 : msg->remote_port);
		nc.sent = seq;
		nc.bytes = len;
		nc.pod_cgroup = pod;
		if (bpf_map_update_elem(&es_relay_clients, &cookie, &nc, BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&es_relay_clients, &cookie)) {
			es_count(ES_CNT_RELAY_TABLE_FULL);
			return -1;
		}
	} else {
		before = rcl->bytes;
		rcl->sent = seq;
		rcl->bytes += len;
	}
	__sync_fetch_and_add(&acct->framed, len);
	__sync_fetch_and_add(&acct->socket_framed[slot], len);
	es_relay_pod_add(pod, len);
	if (bpf_msg_push_data(msg, 0, ES_RELAY_HDR_LEN, 0))
		return -1;
	/* pulled whole, the frame is one element: delivered all or nothing */
	if (bpf_msg_pull_data(msg, 0, ES_RELAY_HDR_LEN + (pull ? len : 0), 0))
		return -1;
	d = (void *)(long)msg->data;
	e = (void *)(long)msg->data_end;
	if (d + ES_RELAY_HDR_LEN > e)
		return -1;
	h = d;
	h->magic = ES_RELAY_MAGIC;
	h->len = len;
	h->client = cookie;
	h->svc_id = c->tx->v.route.svc_id;
	h->env_id = c->tx->v.route.env_id;
	h->seq = seq;
	h->before = (__u32)before;
	h->pod = pod;
	h->key = rc->key[slot];
	bpf_msg_apply_bytes(msg, len + ES_RELAY_HDR_LEN == msg->size ? 0 : len + ES_RELAY_HDR_LEN);
	if (bpf_msg_redirect_hash(msg, &es_sockhash, &relay, BPF_F_INGRESS) != SK_PASS)
		return -1;
	c->tx->slow_seq = seq;
	es_redirected(c, size - len);
	c->tx->carry = carry;
	return 0;
}

/* The verdict for bytes 0..len of the message: along c->tx->v.route. */
static __always_inline int es_verdict(struct es_msg_ctx *c, __u32 len)
{
	struct sk_msg_md *msg = c->msg;
	__u32 kind = c->tx->v.route.kind;
	__u64 up = c->tx->v.route.upstream;

	bpf_msg_cork_bytes(msg, 0);
	bpf_msg_apply_bytes(msg, len >= c->tx->v.size ? 0 : len);
	/* what the kernel gives the next run of this send (es_msg_run_kind) */
	c->tx->rest = len >= c->tx->v.size ? 0 : c->tx->v.size - len;
	if (kind == ES_ROUTE_PASS) {
		if (c->tx->ho_pend)
			es_ho_send(c);
		return SK_PASS;
	}
	c->tx->ho_pend = 0;
	if (kind == ES_ROUTE_KERNEL) {
		if (bpf_msg_redirect_hash(msg, &es_sockhash, &up, 0) == SK_PASS) {
			struct es_rsp *rsp = c->head ? bpf_map_lookup_elem(&es_rsp, &up) : NULL;

			es_redirected(c, c->tx->rest);

			/* one more request the upstream owes a response to,
			 * counted before its bytes go (the agent reads it when
			 * the upstream closes) */
			if (rsp)
				__sync_fetch_and_add(&rsp->reqs, 1);
			return SK_PASS;
		}
		/* the upstream closed: the agent binds a new one */
		es_count(ES_CNT_REQ_UPSTREAM_GONE);
		c->tx->v.route.kind = ES_ROUTE_SLOW;
		if (es_same_route(&c->tx->route, &c->tx->v.route) || c->tx->route.upstream == up)
			c->tx->route.kind = ES_ROUTE_SLOW;
		kind = ES_ROUTE_SLOW;
	}
	if (kind == ES_ROUTE_SLOW && es_to_agent(c, len) == 0)
		return SK_PASS;
	c->tx->rest = 0;
	c->tx->carry = 0;
	es_count(ES_CNT_REQ_FAILED);
	es_count_request(c->tx->v.route.svc_id, c->tx->v.route.env_id, ES_PATH_FAILED);
	es_trace_request(c->sock, &c->tx->v.route, c->tx->v.env_req, ES_EV_REQ_FAILED);
	/* the rest of this request fails too (and, as the kernel keeps a drop
	 * verdict on the socket, every later send of the connection) */
	c->tx->route.kind = ES_ROUTE_FAIL;
	return SK_DROP;
}

static __always_inline void es_count_path(const struct es_route *r)
{
	if (r->kind == ES_ROUTE_PASS) {
		es_count(ES_CNT_REQ_PASSED);
		es_count_request(r->svc_id, r->env_id, ES_PATH_PASSED);
	} else if (r->kind == ES_ROUTE_KERNEL) {
		es_count(ES_CNT_REQ_KERNEL);
		es_count_request(r->svc_id, r->env_id, ES_PATH_KERNEL);
	} else if (r->kind == ES_ROUTE_SLOW) {
		es_count(ES_CNT_REQ_SLOW);
		es_count_request(r->svc_id, r->env_id, ES_PATH_SLOW);
	}
}

/* The plan's changes (msgplan.h, in the order listed there), then the
 * verdict for its bytes; a held message gets none. */
static __always_inline int es_msg_apply(struct es_msg_ctx *c, const struct es_msg_plan *p)
{
	struct es_tx *tx = c->tx;
	__u32 act = p->act;

	if (act & ES_MSG_A_HINT_REFUSED)
		es_hint_refuse(c->sock);
	if (act & ES_MSG_A_REWIND)
		es_http_rewind(&tx->st);
	if (act & ES_MSG_A_PIPELINED)
		tx->pipelined = 1;
	if (act & ES_MSG_A_REFUSE) {
		tx->route.kind = ES_ROUTE_FAIL;
		es_http_halt(&tx->st);
		tx->pipelined = 0;
		es_count(ES_CNT_REQ_PIPELINE_REFUSED);
	}
	if (act & ES_MSG_A_FAIL_MSG)
		tx->v.route.kind = ES_ROUTE_FAIL;
	if (act & ES_MSG_A_FOLLOW)
		tx->v.route = tx->route;
	if (act & ES_MSG_A_UNFRAMED_FAIL) {
		es_count(ES_CNT_REQ_UNFRAMED_FAILED);
		tx->route.kind = ES_ROUTE_FAIL;
		tx->v.route.kind = ES_ROUTE_FAIL;
	}
	if (act & ES_MSG_A_UNROUTABLE) {
		es_count(ES_CNT_REQ_UNROUTABLE);
		es_own_route(c->sock, &tx->route);
		tx->v.route = tx->route;
		tx->unroutable = 1;
	}
	if (act & ES_MSG_A_CORK) {
		es_count(ES_CNT_REQ_CORKED);
		tx->held = 1;
		bpf_msg_apply_bytes(c->msg, 0);
		bpf_msg_cork_bytes(c->msg, tx->v.size + 1);
		return SK_PASS;
	}
	return es_verdict(c, p->covered);
}

/* What the plan is decided from, after the byte loops (refused: es_head_done
 * refused the first head). */
static __always_inline void es_msg_state_of(const struct es_msg_ctx *c, __u8 refused, struct es_msg_state *s)
{
	const struct es_tx *tx = c->tx;

	s->off = tx->v.off;
	s->size = tx->v.size;
	s->req_begin = tx->v.req_begin;
	s->window = c->cfg ? c->cfg->window : 0;
	s->phase = tx->st.phase;
	s->tunnel = tx->st.err == ES_HTTP_ERR_TUNNEL;
	s->upgrade = tx->upgrade;
	s->pipelined = tx->pipelined;
	s->route_kind = (__u8)tx->route.kind;
	s->refused = refused;
	s->second_head = !refused && tx->v.head;
	s->hint = (c->sock->steered & ES_STEER_F_HINT) ? 1 : 0;
	s->decided = tx->run_reqs ? 1 : 0;
}

/* The byte loops over a send: up to the first request head, which is decided
 * (route, header, counted and traced), then on to the next head or the end.
 * Returns 1 when that head was refused (es_head_done). */
static __always_inline __u8 es_msg_parse(struct es_msg_ctx *c)
{
	struct es_tx *tx = c->tx;
	struct sk_msg_md *msg = c->msg;

	/* the first readable region, but never more than one pull: the byte
	 * loop indexes at most ES_PULL bytes from pstart */
	tx->v.pend = (__u32)((long)msg->data_end - (long)msg->data);
	if (tx->v.pend > ES_PULL)
		tx->v.pend = ES_PULL;
	/* bounded by the message plus an insertion */
	bpf_loop(tx->v.size + ES_INJECT_MAX, es_msg_byte, c, 0);
	if (!tx->v.head)
		return 0;
	if (es_head_done(c))
		return 1;
	es_count_path(&tx->route);
	c->head = 1;
	es_trace_request(c->sock, &tx->route, tx->v.env_req,
			 tx->route.kind == ES_ROUTE_PASS     ? ES_EV_REQ_PASS
			 : tx->route.kind == ES_ROUTE_KERNEL ? ES_EV_REQ_REDIRECT
							     : ES_EV_REQ_SLOW);
	tx->prev = '\n';
	tx->v.reqline = -1;
	if (tx->v.done)
		tx->v.req_begin = (__s32)tx->v.off;
	tx->v.head = 0;
	bpf_loop(tx->v.size + ES_INJECT_MAX, es_msg_byte, c, 0);
	return 0;
}

static __always_inline int es_msg(struct sk_msg_md *msg)
{
	struct es_msg_ctx c = {};
	struct es_msg_state s = {};
	struct es_msg_plan plan;
	__u8 refused = 0, carry;
	int kind;

	if (!es_feat_per_request)
		return SK_PASS;
	/* upstream and relay sockets of the agent carry no steering state */
	c.sock = bpf_sk_storage_get(&es_socks, msg->sk, 0, 0);
	if (!c.sock || !c.sock->steered)
		return SK_PASS;
	c.tx = bpf_sk_storage_get(&es_tx, msg->sk, 0, 0);
	if (!c.tx) { /* the connection's first send */
		es_h2_preface(msg, c.sock);
		c.tx = bpf_sk_storage_get(&es_tx, msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	}
	if (!c.tx)
		return SK_PASS;
	c.msg = msg;
	c.tx->ho_pend = 0;
	c.tx->v.off = 0;
	c.tx->v.pstart = 0;
	c.tx->v.pend = 0;
	c.tx->v.head = 0;
	c.tx->v.done = 0;
	c.tx->v.size = msg->size;
	c.tx->v.route = c.tx->route;
	c.tx->v.reqline = -1;
	/* idle: the next request begins in this message (after the LF of an
	 * empty line whose CR ended the last send, if so) */
	c.tx->v.req_begin = c.tx->st.phase == ES_HTTP_P_IDLE ? 0 : -1;
	kind = es_msg_run_kind(c.tx->rest, c.tx->carry, msg->size);
	carry = c.tx->carry;
	/* held stays set after the held message went out on the connection:
	 * the kernel keeps the socket's cork buffer (psock->cork) until a
	 * redirect, which frees what it does not deliver (tcp_bpf_send_verdict) */
	c.held = c.tx->held;
	c.tx->rest = 0;
	c.tx->carry = 0;
	if (kind == ES_RUN_PARTLY) {
		/* the parser has seen these bytes: the connection fails (the
		 * relay resets it for the frame cut short) */
		es_count(ES_CNT_REQ_PARTLY_DELIVERED);
		c.tx->route.kind = ES_ROUTE_FAIL;
		c.tx->v.route.kind = ES_ROUTE_FAIL;
		es_http_halt(&c.tx->st);
		return es_verdict(&c, c.tx->v.size);
	}
	if (kind == ES_RUN_CARRY) {
		/* parsed already: the last byte of the frame before, to the relay
		 * like it (a frame of its own) */
		if (c.tx->v.route.kind != ES_ROUTE_SLOW)
			c.tx->v.route.kind = ES_ROUTE_FAIL;
		return es_verdict(&c, carry);
	}
	/* inert (not HTTP, or upgraded): nothing to parse, the plan says where
	 * the bytes go (they follow their request, or fail) */
	if (!es_http_inert(&c.tx->st)) {
		c.cfg = bpf_map_lookup_elem(&es_http_cfg, &(__u32){0});
		if (!c.cfg)
			return es_verdict(&c, c.tx->v.size);
		refused = es_msg_parse(&c);
	}
	es_msg_state_of(&c, refused, &s);
	es_msg_decide(&s, &plan);
	return es_msg_apply(&c, &plan);
}

/* Response bytes of an upstream through its framing tracker (response.h):
 * bodies in bulk, head bytes up to ES_RSP_RUN per loop step, all from a small
 * window loaded with bpf_skb_load_bytes. */
#define ES_RSP_WIN 64
#define ES_RSP_RUN 32

struct es_rsp_ctx {
	struct __sk_buff *skb;
	struct es_rsp *r;
	__u32 off, len, wstart, wlen;
	__u8 win[ES_RSP_WIN];
};

static long es_rsp_step(__u32 i, void *data)
{
	struct es_rsp_ctx *c = data;
	__u64 skip;
	__u32 idx, n, lim, k;

	if (c->off >= c->len)
		return 1;
	skip = es_rsp_skippable(c->r);
	if (skip) {
		n = c->len - c->off;
		if (skip > n)
			skip = n;
		es_rsp_skip(c->r, skip);
		c->off += (__u32)skip;
		return 0;
	}
	if (c->off < c->wstart || c->off >= c->wstart + c->wlen) {
		n = c->len - c->off; /* at least 1: off < len */
		if (n > ES_RSP_WIN)
			n = ES_RSP_WIN;
		/* the verifier needs the bounds 1..ES_RSP_WIN on the register
		 * passed, in a form every verifier follows (6.1 learns no n != 0
		 * from a test) */
		__asm__ __volatile__("" : "+r"(n));
		n = ((n - 1) & (ES_RSP_WIN - 1)) + 1;
		if (bpf_skb_load_bytes(c->skb, c->off, c->win, n)) {
			es_rsp_dead(c->r, ES_RSP_ERR_NONE);
			return 1;
		}
		c->wstart = c->off;
		c->wlen = n;
	}
	idx = c->off - c->wstart;
	if (idx >= ES_RSP_WIN)
		return 1;
	/* keep the bound on the register that indexes the window */
	__asm__ __volatile__("" : "+r"(idx));
	idx &= ES_RSP_WIN - 1;
	/* head bytes one after another in this step, up to the head's end
	 * (a body is skipped by the next step), the window's end or
	 * ES_RSP_RUN bytes: a step or two per line, where a step per run of
	 * bytes took 32 steps for a typical 90-byte response (bench, three
	 * A/B pairs: es_skb_verdict 1423 -> 1171 ns per keep-alive response) */
	lim = c->wlen - idx;
	for (k = 0; k < ES_RSP_RUN && k < lim; k++) {
		/* the tracker is read from memory for each byte: a value the
		 * compiler kept from the byte before would be a different
		 * constant on each path, and the verifier's states would
		 * never merge (ES_HTTP_FORGET) */
		ES_HTTP_FORGET();
		if (k && c->r->phase >= ES_RSP_P_BODY)
			break;
		es_rsp_feed(c->r, c->win[(idx + k) & (ES_RSP_WIN - 1)]);
	}
	c->off += k;
	return 0;
}

/* Data received on a socket of es_sockhash. On an upstream of the agent: the
 * response goes into its client's receive queue. Everything else passes (the
 * program is there for FIONREAD too: see es_skb_verdict). */
static __always_inline int es_skb(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb), client;
	const struct es_upstream *u = bpf_map_lookup_elem(&es_upstreams, &cookie);
	struct es_rsp_ctx rc = {};

	if (!u) {
		/* a client connection whose own pod's responses are followed
		 * (es_own_note); everything else passes untouched */
		rc.r = bpf_map_lookup_elem(&es_own_rsp, &cookie);
		if (rc.r && skb->len) {
			rc.skb = skb;
			rc.len = skb->len;
			bpf_loop(rc.len + 1, es_rsp_step, &rc, 0);
		}
		return SK_PASS;
	}
	rc.r = bpf_map_lookup_elem(&es_rsp, &cookie);
	if (rc.r) {
		struct bpf_sock *sk = skb->sk;

		/* framing first: when the client has read a response's last
		 * byte, the tracker already counts it as done */
		rc.skb = skb;
		rc.len = skb->len;
		if (rc.len)
			bpf_loop(rc.len + 1, es_rsp_step, &rc, 0);
		/* the server's FIN came (alone, or with these bytes): no more
		 * requests for this upstream in the kernel */
		if (skb->len == 0 || (sk && sk->state != BPF_TCP_ESTABLISHED))
			rc.r->fin = 1;
	}
	/* the upstream's FIN alone arrives as an empty skb: it must not reach
	 * the client (the agent handles the close) */
	if (skb->len == 0)
		return SK_DROP;
	client = u->client;
	if (bpf_sk_redirect_hash(skb, &es_sockhash, &client, BPF_F_INGRESS) == SK_PASS) {
		es_count(ES_CNT_RSP_REDIRECTED);
		return SK_PASS;
	}
	es_count(ES_CNT_RSP_DROPPED);
	return SK_DROP;
}

#endif
