/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The request environment: learned from the env header of HTTP/1.x requests
 * arriving at managed pods (cgroup_skb ingress), adopted by the thread that
 * reads the request (tp_btf/sock_recv_length), and used for that thread's
 * outgoing requests while it serves that request.
 *
 * A thread's context is a guess unless the server is thread-per-request, so it
 * exists only in pods that opt in (ES_POD_F_THREAD_CTX), and only for the
 * window in which the thread provably serves one request: from reading it
 * until writing on its socket (the response, tp_btf/sock_send_length). A
 * process whose threads read a request while serving another, answer another
 * request than their own, or answer a request another thread read is not
 * thread-per-request: its context is switched off for good (es_ctx_off). A
 * read that may span two requests (pipelining) gives no context at all.
 */
#ifndef ENVSTEER_REQUEST_H
#define ENVSTEER_REQUEST_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"

#define ES_AF_INET 2
#define ES_AF_INET6 10
#define ES_MSG_PEEK 2
#define ES_ETH_P_IP 0x0800
#define ES_ETH_P_IPV6 0x86DD

/* Set before load: 0 disables the header programs' work (they return early). */
const volatile __u8 es_feat_request_ctx = 1;
/* Per-request steering and header insertion on steered connections (sockops,
 * sk_msg, sk_skb): needs bpf_loop only, so it also runs where the thread
 * context (es_feat_request_ctx) does not. */
const volatile __u8 es_feat_per_request = 1;
/* Connect hints (maps/abi.h es_hints), with per-request steering only. */
const volatile __u8 es_feat_hints = 1;
/* Parse once per hop (maps/abi.h es_ho_slot), with both of the above. */
const volatile __u8 es_feat_handoff = 1;
const volatile char es_splitter = '.';

#ifdef __bpf__
/* The one field of the kernel's struct sock read directly (CO-RE): the global
 * tp_btf programs run for every socket of the node, and most have no socket
 * storage at all; they leave on this load, before any helper call. */
struct sock {
	void *sk_bpf_storage;
} __attribute__((preserve_access_index));
#define ES_SK_NO_STORAGE(sk) (!(sk)->sk_bpf_storage)
#else
struct sock;
#define ES_SK_NO_STORAGE(sk) 0
#endif

/* Payload bytes are loaded ES_RX_WIN (maps.h) at a time into es_rxwin: one
 * helper call, not one per byte. Bytes of a run (http.h) taken in one step of
 * the byte loop, at most: */
#define ES_RX_RUN 16
/* Bytes fed one after another in one step of the byte loop, at most. */
#define ES_RX_FEED 8

struct es_feed_ctx {
	struct __sk_buff *skb;
	struct es_rx *rx;
	const struct es_http_cfg *cfg;
	__u32 off;
	__u32 end;
	__u32 seq_base; /* the byte at offset off has sequence number seq_base + off */
	struct es_rx_win *w;
};

_Static_assert(__builtin_offsetof(struct es_rx, env) % 8 == 0 && __builtin_offsetof(struct es_rx, st) % 8 == 0 &&
		       __builtin_offsetof(struct es_http_state, val) % 8 == 0 && ES_ENV_NAME_MAX % 8 == 0,
	       "es_rx_headers_done copies env names in aligned words");

/* A request head is complete: record its environment on the socket. A
 * request without a (valid) header clears it, so no environment outlives the
 * request that carried it on a keep-alive connection. */
static __always_inline void es_rx_headers_done(struct es_rx *rx)
{
	int outcome = es_http_env_outcome(&rx->st);
	const char *v = es_http_env(&rx->st);
	__u32 n = (__u32)es_http_env_len(&rx->st);

	rx->seen = 1;
	if (outcome == ES_HTTP_ENV_FOUND && v && n > 0 && n < ES_ENV_NAME_MAX) {
		/*
		 * NUL-padded: es_request_env_id() walks it by truncation. Eight
		 * bytes a step (both buffers are 8-aligned in their map values): a
		 * byte loop here was 45% of the verifier's work on this program
		 * (64 steps on every path that completes a head: 533k -> 301k
		 * instructions processed).
		 */
		rx->env_depth = (__u8)es_env_copy_words(rx->env, v, n, es_splitter);
		rx->env_len = (__u8)n;
		es_count(ES_CNT_HDR_FOUND);
		return;
	}
	rx->env_len = 0;
	if (outcome == ES_HTTP_ENV_INVALID)
		es_count(ES_CNT_HDR_INVALID);
	else if (outcome == ES_HTTP_ENV_BEYOND)
		es_count(ES_CNT_HDR_BEYOND);
	else
		es_count(ES_CNT_HDR_ABSENT);
}

/* The connection as the receiving socket sees it (maps/abi.h es_handoff_key):
 * IPv4 in the first word, IPv4-mapped IPv6 as IPv4, ports in host order. */
/* (The fields are passed by value: context fields are read one by one.) */
static __always_inline void es_ho_addr(__u32 *dst, __u32 family, __u32 ip4, __u32 a, __u32 b, __u32 c, __u32 d)
{
	if (family == ES_AF_INET6 && !(a == 0 && b == 0 && c == bpf_htonl(0xffff))) {
		dst[0] = a;
		dst[1] = b;
		dst[2] = c;
		dst[3] = d;
		return;
	}
	dst[0] = family == ES_AF_INET6 ? d : ip4;
	dst[1] = 0;
	dst[2] = 0;
	dst[3] = 0;
}
#define ES_HO_ADDR(dst, family, ip4, ip6) es_ho_addr(dst, family, ip4, (ip6)[0], (ip6)[1], (ip6)[2], (ip6)[3])

static __always_inline int es_ho_same_key(const struct es_handoff_key *a, const struct es_handoff_key *b)
{
	return a->seq == b->seq && a->server_port == b->server_port && a->client_port == b->client_port &&
	       a->client[0] == b->client[0] && a->client[1] == b->client[1] && a->client[2] == b->client[2] &&
	       a->client[3] == b->client[3] && a->server[0] == b->server[0] && a->server[1] == b->server[1] &&
	       a->server[2] == b->server[2] && a->server[3] == b->server[3];
}

/* At a request boundary: the record a sender of this node left for the request
 * that begins here (maps/abi.h es_ho_slot), if any. Taken only when it is this
 * connection's at this sequence number, no sender is writing its slot, it is
 * fresh and the request's first bytes are its: then the request's environment
 * is the one the sender parsed from the same bytes (with the same parser and
 * settings, an inserted header included), and its bytes (head and
 * Content-Length body) pass without a parse. The slot is this CPU's: no other
 * CPU touches it, and a sender on this CPU cannot run inside this program (it
 * runs in softirq); one preempted in the middle of a write holds the lock.
 * Returns 1 when taken. */
static __always_inline int es_ho_take(struct es_feed_ctx *c)
{
	struct es_rx *rx = c->rx;
	struct es_ho_slot *sl;
	__u32 seq = c->seq_base + c->off, idx;
	__u64 first = 0;

	rx->ho_tried = seq;
	/* its first bytes must be in this segment to be checked: else parsed */
	if (c->end - c->off < 8)
		return 0;
	c->w->hk.seq = seq;
	idx = es_ho_idx(&c->w->hk);
	sl = bpf_map_lookup_elem(&es_hocache, &idx);
	if (!sl || sl->lock || !sl->valid || !es_ho_same_key(&sl->key, &c->w->hk)) {
		/* a connection none of whose requests comes with a record (its
		 * sender is on another node, or on another CPU) stops looking */
		rx->ho++;
		return 0;
	}
	sl->valid = 0;
	if (bpf_ktime_get_coarse_ns() - sl->ts > ES_HO_MAX_AGE_NS ||
	    bpf_skb_load_bytes(c->skb, c->off, &first, 8) || first != sl->rec.first || !sl->rec.len ||
	    sl->rec.env_len >= ES_ENV_NAME_MAX) {
		es_count(ES_CNT_HO_MISMATCH);
		return 0;
	}
	rx->env_depth = (__u8)es_env_copy_words(rx->env, sl->rec.env, sl->rec.env_len, es_splitter);
	rx->env_len = sl->rec.env_len;
	rx->seen = 1;
	rx->req_start = seq;
	rx->skip = sl->rec.len;
	rx->ho = 0;
	es_count(sl->rec.env_len ? ES_CNT_HDR_FOUND : ES_CNT_HDR_ABSENT);
	es_count(ES_CNT_HO_TAKEN);
	return 1;
}

static long es_feed_byte(__u32 i, void *data)
{
	struct es_feed_ctx *c = data;
	struct es_http_run run;
	__u64 skip;
	__u32 idx, j;
	__u8 b;
	int ev, idle, kind;

	if (c->off >= c->end)
		return 1;
	if (c->rx->skip) {
		/* a handed-off request (es_ho_take) */
		__u32 left = c->end - c->off, n = c->rx->skip;

		if (n > left)
			n = left;
		c->rx->skip -= n;
		c->off += n;
		return 0;
	}
	if (c->w->ho && c->rx->st.phase == ES_HTTP_P_IDLE && !c->rx->st.cr &&
	    c->seq_base + c->off != c->rx->ho_tried && es_ho_take(c))
		return 0;
	skip = es_http_skippable(&c->rx->st);
	if (skip) {
		/* body bytes: no need to look at them one by one */
		__u32 left = c->end - c->off;

		if (skip > left)
			skip = left;
		es_http_skip(&c->rx->st, skip);
		c->off += (__u32)skip;
		return 0;
	}
	if (c->off < c->w->start || c->off >= c->w->start + c->w->len) {
		__u32 n = c->end - c->off; /* at least 1: off < end */

		if (n > ES_RX_WIN)
			n = ES_RX_WIN;
		/* the verifier needs the bounds 1..ES_RX_WIN on the register
		 * passed, in a form every verifier follows (6.1 learns no n != 0
		 * from a test) */
		__asm__ __volatile__("" : "+r"(n));
		n = ((n - 1) & (ES_RX_WIN - 1)) + 1;
		if (bpf_skb_load_bytes(c->skb, c->off, c->w->b, n))
			return 1;
		c->w->start = c->off;
		c->w->len = n;
	}
	idx = c->off - c->w->start;
	if (idx >= ES_RX_WIN)
		return 1;
	/* keep the bound on the register that indexes the window (clang drops
	 * the mask after the check above) */
	__asm__ __volatile__("" : "+r"(idx));
	idx &= ES_RX_WIN - 1;
	kind = es_http_run_start(&c->rx->st, c->cfg, &run);
	if (kind && es_http_run_byte(&run, 0, c->w->b[idx])) {
		/* a run (http.h): up to the byte that ends it, the window's end or
		 * the header window, without the state machine */
		__u32 max = es_http_run_max(&c->rx->st, c->cfg), lim = c->w->len - idx, k;

		if (lim > max)
			lim = max;
		for (k = 1; k < ES_RX_RUN; k++) {
			if (k >= lim || !es_http_run_byte(&run, k, c->w->b[(idx + k) & (ES_RX_WIN - 1)]))
				break;
		}
		if (max) {
			es_http_run_take(&c->rx->st, kind, k);
			c->off += k;
			return 0;
		}
	}
	b = c->w->b[idx];
	idle = c->rx->st.phase == ES_HTTP_P_IDLE;
	c->off++;
	ev = es_http_feed(&c->rx->st, c->cfg, b);
	if (idle && c->rx->st.phase != ES_HTTP_P_IDLE) {
		/* a new request begins: its environment is unknown until its
		 * head is complete */
		c->rx->req_start = c->seq_base + c->off - 1;
		c->rx->env_len = 0;
	}
	/* bytes that are fed too (es_http_feeds_next: never a request boundary,
	 * where the hand-off is looked for) go on in this step while they raise
	 * no event, up to ES_RX_FEED, within the window */
	for (j = 1; j < ES_RX_FEED && !ev; j++) {
		if (c->off >= c->end || idx + j >= c->w->len || !es_http_feeds_next(&c->rx->st))
			break;
		c->off++;
		ev = es_http_feed(&c->rx->st, c->cfg, c->w->b[(idx + j) & (ES_RX_WIN - 1)]);
	}
	if (ev & ES_HTTP_EV_HEADERS)
		es_rx_headers_done(c->rx);
	if (ev & ES_HTTP_EV_NOT_HTTP) {
		/* A request the parser gives up on carries no environment: on a
		 * socket that has seen a request line, reading it clears the
		 * thread's (responses never get that far, so a client thread keeps
		 * its request's environment). */
		if (c->rx->seen || c->rx->st.line_len > 0) {
			c->rx->seen = 1;
			c->rx->env_len = 0;
		}
		es_count(ES_CNT_RX_NOT_HTTP);
		return 1;
	}
	return 0;
}

/* Offset of the TCP payload and its sequence number; 0 when not TCP. */
static __always_inline __u32 es_tcp_payload(struct __sk_buff *skb, __u32 *seq)
{
	struct tcphdr th;
	__u32 off;

	/* by the packet's protocol, not skb->family: that is the socket's, and
	 * a dual-stack IPv6 socket (Java's default) receives IPv4 packets */
	if (skb->protocol == bpf_htons(ES_ETH_P_IP)) {
		struct iphdr ih;

		if (bpf_skb_load_bytes(skb, 0, &ih, sizeof(ih)) || ih.protocol != IPPROTO_TCP)
			return 0;
		off = (__u32)ih.ihl * 4;
	} else if (skb->protocol == bpf_htons(ES_ETH_P_IPV6)) {
		struct ipv6hdr ih6;

		/* extension headers are not followed: such packets are not parsed */
		if (bpf_skb_load_bytes(skb, 0, &ih6, sizeof(ih6)) || ih6.nexthdr != IPPROTO_TCP)
			return 0;
		off = sizeof(ih6);
	} else {
		return 0;
	}
	if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)))
		return 0;
	*seq = bpf_ntohl(th.seq);
	return off + (__u32)th.doff * 4;
}

static __always_inline int es_ingress(struct __sk_buff *skb)
{
	const struct es_http_cfg *hcfg;
	const struct es_config *cfg;
	struct es_feed_ctx fc = {};
	struct bpf_sock *sk;
	struct es_rx *rx;
	__u32 off, seq = 0, len;

	if (!es_feat_request_ctx)
		return 1;
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	/* a listener: data that completes a handshake is the child's */
	if (!sk || sk->protocol != IPPROTO_TCP || sk->state == BPF_TCP_LISTEN)
		return 1;
	/* most segments of a connection carry no payload (SYN, ACK, FIN, RST):
	 * leave before touching socket storage */
	off = es_tcp_payload(skb, &seq);
	if (!off || off >= skb->len)
		return 1;
	len = skb->len - off;
	cfg = es_get_config();
	if (!cfg)
		return 1;
	rx = bpf_sk_storage_get(&es_rx, sk, 0, 0);
	if (!rx) {
		const struct es_pod *pod = es_pod_of(skb, cfg);

		if (!pod)
			return 1;
		rx = bpf_sk_storage_get(&es_rx, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!rx)
			return 1;
		rx->pod_flags = (__u8)pod->flags;
		/* what the parse finds serves only the thread context: in the
		 * other pods the socket stays inert, one lookup per segment (the
		 * agent attaches this program only to pods that opt in) */
		if (!(pod->flags & ES_POD_F_THREAD_CTX)) {
			rx->st.phase = ES_HTTP_P_DEAD;
		} else {
			/* only a stream seen from its first byte is parsed: on a
			 * connection older than the program (an agent start, a pod
			 * that opts in later) this segment may be in the middle of
			 * a request or a body, where no request boundary is known.
			 * Such a socket stays inert: its readers get no context
			 * (counted as a gap). */
			struct bpf_tcp_sock *tp = bpf_tcp_sock(sk);

			if (!tp || tp->bytes_received != 0 || tp->rcv_nxt != seq) {
				rx->st.phase = ES_HTTP_P_DEAD;
				es_count(ES_CNT_RX_GAP);
				return 1;
			}
		}
	}
	if (es_http_inert(&rx->st))
		return 1;
	if (!rx->synced) {
		rx->synced = 1;
		rx->next_seq = seq;
		rx->read_seq = seq;
		rx->req_start = seq;
	}
	if (seq != rx->next_seq) {
		__s32 d = (__s32)(rx->next_seq - seq);

		if (d > 0 && (__u32)d < len) {
			off += (__u32)d;  /* retransmission overlapping new data */
			len -= (__u32)d;
			seq = rx->next_seq;
		} else if (d > 0) {
			return 1;  /* pure retransmission */
		} else {
			/* a gap (out-of-order segment): start over at the next request;
			 * what a thread reads here can no longer be told apart */
			es_count(ES_CNT_RX_GAP);
			es_http_reset(&rx->st);
			rx->env_len = 0;
			rx->broken = 1;
			rx->skip = 0;
			rx->ho = ES_HO_MISSES;
		}
	}
	rx->next_seq = seq + len;
	hcfg = bpf_map_lookup_elem(&es_http_cfg, &(__u32){0});
	if (!hcfg)
		return 1;
	fc.w = bpf_map_lookup_elem(&es_rxwin, &(__u32){0});
	if (!fc.w)
		return 1;
	fc.w->start = 0;
	fc.w->len = 0;
	fc.w->ho = 0;
	if (es_feat_handoff && rx->ho < ES_HO_MISSES && !rx->broken) {
		/* the receiver's view of the connection: local = server */
		ES_HO_ADDR(fc.w->hk.server, sk->family, sk->src_ip4, sk->src_ip6);
		ES_HO_ADDR(fc.w->hk.client, sk->family, sk->dst_ip4, sk->dst_ip6);
		fc.w->hk.server_port = (__u16)sk->src_port;
		fc.w->hk.client_port = bpf_ntohs((__u16)sk->dst_port);
		fc.w->ho = 1;
	}
	fc.skb = skb;
	fc.rx = rx;
	fc.cfg = hcfg;
	fc.off = off;
	fc.end = off + len;
	fc.seq_base = seq - off;
	bpf_loop(len, es_feed_byte, &fc, 0);
	return 1;
}

/* A process seen serving interleaved requests: its thread context is off. */
static __always_inline void es_ctx_switch_off(__u32 tgid, __u32 reason)
{
	struct es_ctx_off v = {};

	if (bpf_map_lookup_elem(&es_ctx_off, &tgid))
		return;
	v.cgroup_id = bpf_get_current_cgroup_id();
	v.ts_ns = bpf_ktime_get_ns();
	v.reason = reason;
	if (bpf_map_update_elem(&es_ctx_off, &tgid, &v, BPF_NOEXIST) == 0)
		es_count(ES_CNT_CTX_OFF);
	else if (!bpf_map_lookup_elem(&es_ctx_off, &tgid))
		es_count(ES_CNT_CTX_OFF_MAP_FULL);
}

/* sock_recvmsg() returned data: a thread reading a request adopts its
 * environment, when the read lies within that request. */
static __always_inline int es_recv(struct sock *sk, int ret, int flags)
{
	struct es_thread *th;
	struct es_rx *rx;
	__u64 id, cookie;
	__u32 begin;

	if (!es_feat_request_ctx || ret <= 0 || (flags & ES_MSG_PEEK) || ES_SK_NO_STORAGE(sk))
		return 0;
	rx = bpf_sk_storage_get(&es_rx, sk, 0, 0);
	if (!rx)
		return 0;
	begin = rx->read_seq;
	rx->read_seq = begin + (__u32)ret;
	if (!rx->seen || !(rx->pod_flags & ES_POD_F_THREAD_CTX))
		return 0;
	id = bpf_get_current_pid_tgid();
	cookie = bpf_get_socket_cookie(sk);
	th = bpf_task_storage_get(&es_threads, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!th)
		return 0;
	if (th->active && th->sock != cookie)
		es_ctx_switch_off((__u32)(id >> 32), ES_CTX_OFF_READ_WHILE_SERVING);
	if (!rx->broken && (__s32)(begin - rx->req_start) >= 0) {
		__builtin_memcpy(th->env, rx->env, ES_ENV_NAME_MAX);
		th->len = rx->env_len;
		th->depth = rx->env_depth;
	} else {
		/* the read began before the latest request: it may hold an
		 * earlier one, whose environment is gone */
		th->len = 0;
		es_count(ES_CNT_CTX_AMBIGUOUS);
	}
	th->active = 1;
	th->sock = cookie;
	th->since_ns = bpf_ktime_get_ns();
	rx->reader = (__u32)id;
	es_count(ES_CNT_THREAD_ADOPT);
	return 0;
}

/* sock_sendmsg() sent data: a thread writing on a request's socket answers
 * it, which ends its context; answering any other request than the one it
 * serves, or one that another thread read, shows that the process is not
 * thread-per-request. */
static __always_inline int es_send(struct sock *sk, int ret)
{
	struct es_thread *th;
	struct es_rx *rx;
	__u64 id;

	if (!es_feat_request_ctx || ret <= 0 || ES_SK_NO_STORAGE(sk))
		return 0;
	rx = bpf_sk_storage_get(&es_rx, sk, 0, 0);
	if (!rx || !rx->seen || !(rx->pod_flags & ES_POD_F_THREAD_CTX))
		return 0;
	id = bpf_get_current_pid_tgid();
	th = bpf_task_storage_get(&es_threads, bpf_get_current_task_btf(), 0, 0);
	if (th && th->active) {
		if (th->sock != bpf_get_socket_cookie(sk))
			es_ctx_switch_off((__u32)(id >> 32), ES_CTX_OFF_ANSWERED_OTHER);
		th->active = 0;
		th->len = 0;
		es_count(ES_CNT_CTX_CLOSED);
	}
	if (rx->reader && rx->reader != (__u32)id)
		es_ctx_switch_off((__u32)(id >> 32), ES_CTX_OFF_OTHER_THREAD);
	rx->reader = 0;
	return 0;
}

/* The id of the most specific known environment on the chain of name[0..len)
 * (unknown names fall back segment by segment); ES_ENV_NONE when no level is
 * known. name is NUL-padded to ES_ENV_NAME_MAX bytes. */
static __always_inline __u32 es_env_id_by_name(const char *name, __u32 len, char splitter)
{
	struct es_env_name *key;
	__u32 zero = 0, *id;
	int pos, i;

	if (len == 0 || len >= ES_ENV_NAME_MAX)
		return ES_ENV_NONE;
	key = bpf_map_lookup_elem(&es_scratch, &zero);
	if (!key)
		return ES_ENV_NONE;
	__builtin_memcpy(key->name, name, ES_ENV_NAME_MAX);
	pos = (int)len;
	id = bpf_map_lookup_elem(&es_env_names, key);
	if (id)
		return *id;
	for (i = 0; i < ES_ENV_NAME_MAX - 1; i++) {
		char c;

		if (pos <= 1)
			break;
		pos--;
		c = key->name[pos & (ES_ENV_NAME_MAX - 1)];
		key->name[pos & (ES_ENV_NAME_MAX - 1)] = 0;
		if (c != splitter)
			continue;
		id = bpf_map_lookup_elem(&es_env_names, key);
		if (id)
			return *id;
	}
	return ES_ENV_NONE;
}

/* The calling thread's request context, when it is one envsteer knows: the
 * pod opted in, the thread serves a request right now, and its process was
 * never seen serving interleaved requests. */
static __always_inline struct es_thread *es_current_thread(__u32 pod_flags, int count)
{
	struct es_thread *th;
	__u32 tgid;

	if (!es_feat_request_ctx || !(pod_flags & ES_POD_F_THREAD_CTX))
		return NULL;
	th = bpf_task_storage_get(&es_threads, bpf_get_current_task_btf(), 0, 0);
	if (!th || !th->active || th->len == 0 || th->len >= ES_ENV_NAME_MAX)
		return NULL;
	tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	if (bpf_map_lookup_elem(&es_ctx_off, &tgid)) {
		if (count)
			es_count(ES_CNT_CTX_OFF_IGNORED);
		return NULL;
	}
	return th;
}

/* A thread context's environment as an id (see es_env_id_by_name); *skipped
 * gets the unknown levels walked past. */
static __always_inline __u32 es_request_env_id(const struct es_thread *th, char splitter, __u32 *skipped)
{
	const struct es_env *e;
	__u32 id;

	*skipped = 0;
	if (!th)
		return ES_ENV_NONE;
	id = es_env_id_by_name(th->env, th->len, splitter);
	if (id == ES_ENV_NONE)
		return id;
	e = bpf_map_lookup_elem(&es_envs, &id);
	if (e && th->depth > e->depth)
		*skipped = th->depth - e->depth;
	return id;
}

#endif
