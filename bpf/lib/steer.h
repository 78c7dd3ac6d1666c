/* SPDX-License-Identifier: Apache-2.0 */
/* Connect-time steering: frontend -> caller's environment -> walk -> backend. */
#ifndef ENVSTEER_STEER_H
#define ENVSTEER_STEER_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "resolve.h"
#include "request.h"
#include "trace.h"

#define ES_ECONNREFUSED 111

/* Set before load by the agent from its feature probe and settings. */
const volatile __u8 es_feat_set_retval = 0;

enum es_hook {
	ES_HOOK_CONNECT = 0,
	ES_HOOK_SENDMSG = 1,
};

/* The managed pod the current task belongs to, or NULL for host processes. */
static __always_inline const struct es_pod *es_current_pod(const struct es_config *cfg, __u64 *pod_cg)
{
	return es_pod_of_id(NULL, cfg, pod_cg);
}

/* connect()/sendmsg() fails with ECONNREFUSED (EPERM on kernels before 5.19,
 * which lack bpf_set_retval for cgroup programs). */
static __always_inline int es_refuse(void)
{
	es_count(ES_CNT_REFUSED);
	if (es_feat_set_retval)
		bpf_set_retval(-ES_ECONNREFUSED);
	return 0;
}

static __always_inline const struct es_backend *es_pick(__u32 svc_id, __u32 env_id, __u32 count)
{
	struct es_slot_key sk = { .svc_id = svc_id, .env_id = env_id };
	const struct es_backend *be;

	sk.slot = count > 1 ? bpf_get_prandom_u32() % count : 0;
	be = bpf_map_lookup_elem(&es_slots, &sk);
	if (be)
		return be;
	/* The agent shrank the set between our two lookups; slot 0 stays filled
	 * while the set exists. */
	es_count(ES_CNT_SLOT_RACE);
	sk.slot = 0;
	return bpf_map_lookup_elem(&es_slots, &sk);
}

/* Remember the service address (getpeername) and, for UDP, the reverse
 * translation of replies (recvmsg). */
static __always_inline void es_remember(struct bpf_sock_addr *ctx, const struct es_frontend_key *fe,
					const struct es_frontend *f, const struct es_backend *be,
					const struct es_resolution *res, __u32 pod_env, __u32 pod_flags, __u64 pod_cg,
					int hook, __u8 steered)
{
	if (hook == ES_HOOK_CONNECT) {
		struct es_sock *s = bpf_sk_storage_get(&es_socks, ctx->sk, 0,
						       BPF_SK_STORAGE_GET_F_CREATE);
		if (s) {
			s->orig_addr[0] = fe->addr[0];
			s->orig_addr[1] = fe->addr[1];
			s->orig_addr[2] = fe->addr[2];
			s->orig_addr[3] = fe->addr[3];
			s->orig_port = fe->port;
			s->family = fe->family;
			/* a pod of this node that reads requests on arrival:
			 * the requests passed on the connection are handed off */
			if (steered != ES_STEER_H2 && be && (be->flags & ES_BE_F_LOCAL_CTX))
				steered |= ES_STEER_F_CTX;
			s->steered = steered;
			s->svc_id = f->svc_id;
			s->env_id = res->env_id;
			s->level = res->level;
			s->pod_env_id = pod_env;
			s->pod_flags = pod_flags;
			s->pod_cgroup = pod_cg;
		}
	}
	if (fe->proto == IPPROTO_UDP && be) {
		struct es_revnat_key rk = {};
		struct es_revnat rv = {};

		rk.cookie = bpf_get_socket_cookie(ctx);
		rk.addr[0] = be->addr[0];
		rk.addr[1] = be->addr[1];
		rk.addr[2] = be->addr[2];
		rk.addr[3] = be->addr[3];
		rk.port = be->port;
		rk.family = fe->family;
		rv.addr[0] = fe->addr[0];
		rv.addr[1] = fe->addr[1];
		rv.addr[2] = fe->addr[2];
		rv.addr[3] = fe->addr[3];
		rv.port = fe->port;
		rv.family = fe->family;
		bpf_map_update_elem(&es_revnat, &rk, &rv, BPF_ANY);
	}
}

/* HTTP/2 to a service with more than one backend set: the connection is made
 * to the agent's HTTP/2 endpoint, which routes each stream by its own
 * environment (agent/h2proxy.cpp). Connections to other services are not
 * touched. Without an endpoint (no agent, another address family) the
 * connection is steered at connect time as any other, and counted. */
static __always_inline const struct es_h2_cfg *es_h2_endpoint(const struct es_frontend_key *key,
							      const struct es_frontend *fe, int hook)
{
	const struct es_h2_cfg *h;

	if (hook != ES_HOOK_CONNECT || key->proto != IPPROTO_TCP ||
	    (fe->flags & (ES_FE_F_H2 | ES_FE_F_MULTI_SET)) != (ES_FE_F_H2 | ES_FE_F_MULTI_SET))
		return NULL;
	h = bpf_map_lookup_elem(&es_h2_cfg, &(__u32){0});
	if (!h || !h->port || h->family != key->family) {
		es_count(ES_CNT_H2_NO_ENDPOINT);
		return NULL;
	}
	es_count(ES_CNT_H2_DIVERTED);
	return h;
}

/* A connect hint (maps/abi.h): the backend set of the calling pod's last
 * request to this service that went through the relay, when that is another
 * set than the caller's own (res). Only where every request on the connection
 * is routed by its own header before it leaves (per-request steering, TCP, a
 * service with more than one backend set whose port is not declared HTTP/2),
 * and only once the caller's own environment resolved: a connect it refuses
 * stays refused. NULL: no hint, the caller's own set. */
static __always_inline const struct es_backend *
es_hint_pick(const struct es_frontend_key *key, const struct es_frontend *fe, const struct es_config *cfg,
	     __u64 pod_cg, struct es_resolution *res, __u32 *env, __u32 *src)
{
	struct es_hint_key hk = {};
	const struct es_hint *h;
	const struct es_backend *be;
	struct es_resolution hr;
	__u32 henv;

	if (!es_feat_per_request || !es_feat_hints || key->proto != IPPROTO_TCP ||
	    (fe->flags & (ES_FE_F_MULTI_SET | ES_FE_F_H2)) != ES_FE_F_MULTI_SET)
		return NULL;
	hk.pod = pod_cg;
	hk.svc_id = fe->svc_id;
	h = bpf_map_lookup_elem(&es_hints, &hk);
	if (!h)
		return NULL;
	henv = h->env_id;
	if (!es_resolve(NULL, fe->svc_id, henv, cfg->default_env_id, &hr) || hr.env_id == res->env_id)
		return NULL;
	be = es_pick(fe->svc_id, hr.env_id, hr.count);
	if (!be || be->family != key->family)
		return NULL;
	*res = hr;
	*env = henv;
	*src = ES_SRC_HINT;
	es_count(ES_CNT_CONNECT_HINTED);
	return be;
}

/* Resolve a frontend for the calling pod. Returns NULL when the address is
 * not to be touched (*verdict = 1) or must be refused (*verdict = 0). */
static __always_inline const struct es_backend *
es_steer(const struct es_frontend_key *key, const struct es_frontend **fe_out,
	 struct es_resolution *res, __u32 *pod_env, __u32 *pod_flags, __u64 *pod_cg, int *verdict,
	 int hook, const struct es_h2_cfg **h2, __u8 *hinted)
{
	const struct es_thread *th;
	const struct es_frontend *fe;
	const struct es_config *cfg;
	const struct es_pod *pod;
	const struct es_backend *be, *hb;
	__u32 env, src, skipped = 0;

	*verdict = 1;
	*hinted = 0;
	fe = bpf_map_lookup_elem(&es_frontends, key);
	if (!fe)
		return NULL;
	cfg = es_get_config();
	if (!cfg)
		return NULL;
	pod = es_current_pod(cfg, pod_cg);
	if (!pod) {
		es_count(ES_CNT_UNMANAGED);
		return NULL;
	}
	es_count(ES_CNT_CONNECT_SEEN);
	*pod_env = pod->env_id ? pod->env_id : cfg->default_env_id;
	*pod_flags = pod->flags;
	/* The order of the routing rule: the request the thread serves, the pod, the default.
	 * A connection outlives the request that opens it (pools, HTTP/2
	 * channels): only a Service that promises one request per connection
	 * takes the thread's. HTTP/1.x requests on other connections are routed
	 * one by one (outbound.h), the thread's environment inserted. */
	th = es_current_thread(pod->flags, 1);
	if (th && !(fe->flags & ES_FE_F_CONN_PER_REQUEST)) {
		es_count(ES_CNT_CTX_NOT_FOR_CONNECT);
		th = NULL;
	}
	env = es_request_env_id(th, es_splitter, &skipped);
	src = ES_SRC_REQUEST;
	if (env != ES_ENV_NONE) {
		es_count(ES_CNT_ENV_REQUEST);
	} else if (pod->env_id != ES_ENV_NONE) {
		env = pod->env_id;
		src = pod->env_id == cfg->default_env_id ? ES_SRC_DEFAULT : ES_SRC_POD;
		es_count(pod->env_id == cfg->default_env_id ? ES_CNT_ENV_DEFAULT : ES_CNT_ENV_POD);
	} else {
		env = cfg->default_env_id;
		src = ES_SRC_DEFAULT;
		es_count(ES_CNT_ENV_DEFAULT);
	}
	be = NULL;
	if (es_resolve(NULL, fe->svc_id, env, cfg->default_env_id, res)) {
		/* an unknown request env (dev.proj1.zed) that resolved at a known
		 * ancestor is a fallback too */
		if (skipped && res->outcome == ES_OUT_OWN) {
			res->outcome = ES_OUT_FALLBACK;
			res->level += skipped;
		} else if (skipped && res->outcome == ES_OUT_FALLBACK) {
			res->level += skipped;
		}
		be = es_pick(fe->svc_id, res->env_id, res->count);
	}
	if (be && hook == ES_HOOK_CONNECT && src != ES_SRC_REQUEST) {
		hb = es_hint_pick(key, fe, cfg, *pod_cg, res, &env, &src);
		if (hb) {
			be = hb;
			*hinted = 1;
		}
	}
	/* HTTP/2 to a multi-set service goes to the agent's endpoint, whatever the
	 * caller's own environment resolves to: each stream is routed by its own */
	*h2 = es_h2_endpoint(key, fe, hook);
	es_trace_connect(key, fe->svc_id, env, src, res, *pod_env, *pod_flags, *pod_cg, be);
	if (*h2) {
		*fe_out = fe;
		return be;
	}
	if (!be) {
		*verdict = es_refuse();
		return NULL;
	}
	if (res->outcome == ES_OUT_OWN)
		es_count(ES_CNT_STEERED_OWN);
	else if (res->outcome == ES_OUT_FALLBACK)
		es_count(ES_CNT_STEERED_FALLBACK);
	else
		es_count(ES_CNT_STEERED_DEFAULT);
	*fe_out = fe;
	return be;
}

static __always_inline int es_sock_addr4(struct bpf_sock_addr *ctx, int hook)
{
	struct es_frontend_key key = {};
	const struct es_frontend *fe = NULL;
	const struct es_backend *be;
	const struct es_h2_cfg *h2;
	struct es_resolution res;
	__u32 pod_env = 0, pod_flags = 0;
	__u64 pod_cg = 0;
	__u8 hinted;
	int verdict;

	key.addr[0] = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	key.family = ES_FAMILY_INET;
	be = es_steer(&key, &fe, &res, &pod_env, &pod_flags, &pod_cg, &verdict, hook, &h2, &hinted);
	if (!fe || (!h2 && (!be || be->family != ES_FAMILY_INET)))
		return verdict;
	if (h2) {
		ctx->user_ip4 = h2->addr[0];
		ctx->user_port = h2->port;
	} else {
		ctx->user_ip4 = be->addr[0];
		ctx->user_port = be->port;
	}
	es_remember(ctx, &key, fe, be, &res, pod_env, pod_flags, pod_cg, hook,
		    h2 ? ES_STEER_H2 : ES_STEER_POD | (hinted ? ES_STEER_F_HINT : 0));
	return 1;
}

/* IPv6 sockets, including IPv4-mapped addresses (::ffff:a.b.c.d) that
 * dual-stack sockets (Java's default, for one) use to reach IPv4 services. */
static __always_inline int es_sock_addr6(struct bpf_sock_addr *ctx, int hook)
{
	struct es_frontend_key key = {};
	const struct es_frontend *fe = NULL;
	const struct es_backend *be;
	const struct es_h2_cfg *h2;
	const __u32 *to;
	struct es_resolution res;
	__u32 pod_env = 0, pod_flags = 0;
	__u64 pod_cg = 0;
	__u8 hinted;
	int verdict, mapped;

	key.addr[0] = ctx->user_ip6[0];
	key.addr[1] = ctx->user_ip6[1];
	key.addr[2] = ctx->user_ip6[2];
	key.addr[3] = ctx->user_ip6[3];
	mapped = key.addr[0] == 0 && key.addr[1] == 0 && key.addr[2] == bpf_htonl(0x0000ffff);
	if (mapped) {
		key.addr[0] = key.addr[3];
		key.addr[2] = 0;
		key.addr[3] = 0;
		key.family = ES_FAMILY_INET;
	} else {
		key.family = ES_FAMILY_INET6;
	}
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	be = es_steer(&key, &fe, &res, &pod_env, &pod_flags, &pod_cg, &verdict, hook, &h2, &hinted);
	if (!fe || (!h2 && (!be || be->family != key.family)))
		return verdict;
	if (h2)
		to = h2->addr;
	else if (be)
		to = be->addr;
	else
		return verdict;
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = to[0];
	} else {
		ctx->user_ip6[0] = to[0];
		ctx->user_ip6[1] = to[1];
		ctx->user_ip6[2] = to[2];
		ctx->user_ip6[3] = to[3];
	}
	if (h2)
		ctx->user_port = h2->port;
	else if (be)
		ctx->user_port = be->port;
	es_remember(ctx, &key, fe, be, &res, pod_env, pod_flags, pod_cg, hook,
		    h2 ? ES_STEER_H2 : ES_STEER_POD | (hinted ? ES_STEER_F_HINT : 0));
	return 1;
}

static __always_inline const struct es_sock *es_sock_of(struct bpf_sock_addr *ctx)
{
	const struct es_sock *s = bpf_sk_storage_get(&es_socks, ctx->sk, 0, 0);

	return s && s->steered ? s : NULL;
}

static __always_inline int es_getpeername4(struct bpf_sock_addr *ctx)
{
	const struct es_sock *s = es_sock_of(ctx);

	if (!s || s->family != ES_FAMILY_INET)
		return 1;
	ctx->user_ip4 = s->orig_addr[0];
	ctx->user_port = s->orig_port;
	es_count(ES_CNT_GETPEERNAME);
	return 1;
}

static __always_inline int es_getpeername6(struct bpf_sock_addr *ctx)
{
	const struct es_sock *s = es_sock_of(ctx);

	if (!s)
		return 1;
	if (s->family == ES_FAMILY_INET) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = s->orig_addr[0];
	} else {
		ctx->user_ip6[0] = s->orig_addr[0];
		ctx->user_ip6[1] = s->orig_addr[1];
		ctx->user_ip6[2] = s->orig_addr[2];
		ctx->user_ip6[3] = s->orig_addr[3];
	}
	ctx->user_port = s->orig_port;
	es_count(ES_CNT_GETPEERNAME);
	return 1;
}

/* UDP replies: report the service address as their source. */
static __always_inline int es_recvmsg(struct bpf_sock_addr *ctx, int v6)
{
	struct es_revnat_key rk = {};
	const struct es_revnat *rv;
	int mapped = 0;

	rk.cookie = bpf_get_socket_cookie(ctx);
	if (v6) {
		rk.addr[0] = ctx->user_ip6[0];
		rk.addr[1] = ctx->user_ip6[1];
		rk.addr[2] = ctx->user_ip6[2];
		rk.addr[3] = ctx->user_ip6[3];
		mapped = rk.addr[0] == 0 && rk.addr[1] == 0 && rk.addr[2] == bpf_htonl(0x0000ffff);
		if (mapped) {
			rk.addr[0] = rk.addr[3];
			rk.addr[2] = 0;
			rk.addr[3] = 0;
			rk.family = ES_FAMILY_INET;
		} else {
			rk.family = ES_FAMILY_INET6;
		}
	} else {
		rk.addr[0] = ctx->user_ip4;
		rk.family = ES_FAMILY_INET;
	}
	rk.port = (__u16)ctx->user_port;
	rv = bpf_map_lookup_elem(&es_revnat, &rk);
	if (!rv)
		return 1;
	if (!v6) {
		ctx->user_ip4 = rv->addr[0];
	} else if (mapped) {
		ctx->user_ip6[3] = rv->addr[0];
	} else {
		ctx->user_ip6[0] = rv->addr[0];
		ctx->user_ip6[1] = rv->addr[1];
		ctx->user_ip6[2] = rv->addr[2];
		ctx->user_ip6[3] = rv->addr[3];
	}
	ctx->user_port = rv->port;
	es_count(ES_CNT_UDP_REVNAT);
	return 1;
}

#endif
