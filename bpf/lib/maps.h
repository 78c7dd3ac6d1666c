/* SPDX-License-Identifier: Apache-2.0 */
/* Map definitions. The agent is the only writer of the steering maps; the
 * programs read them and write only per-socket state and counters. Everything
 * is pinned by name so traffic keeps flowing while the agent restarts.
 * Sizes here are defaults: the agent sets max_entries before load. */
#ifndef ENVSTEER_MAPS_H
#define ENVSTEER_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "../../maps/abi.h"
#include "http.h"
#include "response.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_frontend_key);
	__type(value, struct es_frontend);
} es_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_set_key);
	__type(value, struct es_set);
} es_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_slot_key);
	__type(value, struct es_backend);
} es_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_env);
} es_envs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_env_name);
	__type(value, __u32);
} es_env_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64); /* cgroup v2 id */
	__type(value, struct es_pod);
} es_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_config);
} es_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ES_CNT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} es_counters SEC(".maps");

/* Per-socket steering state; freed by the kernel with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, int);
	__type(value, struct es_sock);
} es_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_revnat_key);
	__type(value, struct es_revnat);
} es_revnat SEC(".maps");

/* Header names, baggage key and parse window for the HTTP parser. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_http_cfg);
} es_http_cfg SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, int);
	__type(value, struct es_rx);
} es_rx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, int);
	__type(value, struct es_thread);
} es_threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_inject_cfg);
} es_inject SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32); /* tgid */
	__type(value, struct es_ctx_off);
} es_ctx_off SEC(".maps");

/* Requests whose environment resolves elsewhere than their connection, by frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} es_mismatch SEC(".maps");

/* Steered TCP connections: their sends go through the sk_msg program. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
} es_sockhash SEC(".maps");



struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, int);
	__type(value, struct es_tx);
} es_tx SEC(".maps");

/* Per-request steering: see maps/abi.h. The agent writes binds, upstreams,
 * relay_done and relay_cfg; the programs write relay_clients and req_stats. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_bind_key);
	__type(value, struct es_bind);
} es_binds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct es_upstream);
} es_upstreams SEC(".maps");

/* Upstream socket cookie -> the framing of its responses (bpf/lib/response.h):
 * created by the agent with the upstream, updated by sk_msg (reqs) and the
 * sk_skb verdict program (the rest), read by the agent when it closes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct es_rsp);
} es_rsp SEC(".maps");

/* Client socket cookie -> the framing of the responses its own pod sends on
 * it (response.h), for connections to services with more than one backend set:
 * created by sk_msg at the connection's first request to its own pod, which
 * counts those requests (reqs); followed by the sk_skb verdict program;
 * deleted by sockops when the connection closes. At most one per socket of
 * es_sockhash: the same size. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct es_rsp);
} es_own_rsp SEC(".maps");

/* Connect hints (maps/abi.h): least recently used go first, so that a pod
 * with many services or a churn of pods cannot fill it for the others (a lost
 * hint costs one relayed request, never a wrong route). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_hint_key);
	__type(value, struct es_hint);
} es_hints SEC(".maps");

/* Parse once per hop (maps/abi.h es_ho_slot): per CPU, no lock, nothing to
 * allocate or free; a record lost costs its receiver one parse. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ES_HO_SLOTS);
	__type(key, __u32);
	__type(value, struct es_ho_slot);
} es_hocache SEC(".maps");

static __always_inline __u32 es_ho_idx(const struct es_handoff_key *k)
{
	return (k->seq ^ (k->seq >> 11) ^ k->client_port ^ k->client[0]) & (ES_HO_SLOTS - 1);
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct es_relay_client);
} es_relay_clients SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct es_relay_done);
} es_relay_done SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_relay_cfg);
} es_relay_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_relay_acct);
} es_relay_acct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct es_relay_pod);
} es_relay_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, __u64);
} es_relay_pod_done SEC(".maps");

/* Relay clients closing (struct es_relay_event), read by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} es_relay_ev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_req_key);
	__type(value, __u64);
} es_req_stats SEC(".maps");

/* Per-CPU scratch where an inserted header line is composed. */
struct es_hdr_buf {
	char b[128];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct es_hdr_buf);
} es_hdrbuf SEC(".maps");

/* Per-CPU window of payload bytes for the ingress parse (request.h). Only
 * cgroup_skb ingress uses it, which does not nest with itself on a CPU. In a
 * map value, not on the stack, so the verifier does not follow the window's
 * bounds through the byte loop. */
#define ES_RX_WIN 64 /* a power of two */

struct es_rx_win {
	__u32 start, len; /* the payload at [start, start + len) */
	__u8 b[ES_RX_WIN];
	struct es_handoff_key hk; /* this connection's hand-off key (request.h: es_ho_take) */
	__u8 ho;                  /* ... when its receiver looks records up */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct es_rx_win);
} es_rxwin SEC(".maps");

/* Per-CPU scratch for an environment name being walked by prefix. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct es_env_name);
} es_scratch SEC(".maps");

static __always_inline void es_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&es_counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline const struct es_config *es_get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&es_config, &zero);
}

/* The managed pod of the current task (skb NULL) or of an skb's socket, or
 * NULL. A pod's processes usually sit in container cgroups below the pod's
 * cgroup, so after the exact match try its ancestors, deepest first. skb is a
 * constant at every call site, so each program keeps only its own helpers. */
/* The managed pod of skb's socket, or of the current task (skb NULL); *id_out
 * (if given) gets its cgroup id, the es_pods key. */
static __always_inline const struct es_pod *es_pod_of_id(struct __sk_buff *skb, const struct es_config *cfg,
							 __u64 *id_out)
{
	const struct es_pod *pod;
	__u64 id = skb ? bpf_skb_cgroup_id(skb) : bpf_get_current_cgroup_id();
	int i;

	pod = bpf_map_lookup_elem(&es_pods, &id);
	if (pod)
		goto found;
	for (i = 0; i < ES_MAX_CGROUP_LEVEL; i++) {
		int level = (int)cfg->max_pod_level - i;

		if (level < (int)cfg->min_pod_level || level < 0)
			break;
		id = skb ? bpf_skb_ancestor_cgroup_id(skb, level) : bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			continue;
		pod = bpf_map_lookup_elem(&es_pods, &id);
		if (pod)
			goto found;
	}
	return NULL;
found:
	if (id_out)
		*id_out = id;
	return pod;
}

static __always_inline const struct es_pod *es_pod_of(struct __sk_buff *skb, const struct es_config *cfg)
{
	return es_pod_of_id(skb, cfg, NULL);
}

#define ES_LOOKUP_SET(ctx, key) ((const struct es_set *)bpf_map_lookup_elem(&es_sets, (key)))
#define ES_LOOKUP_ENV(ctx, id) ((const struct es_env *)es_lookup_env_id(id))

static __always_inline void *es_lookup_env_id(__u32 id)
{
	return bpf_map_lookup_elem(&es_envs, &id);
}

/* HTTP/2 per stream: the agent's endpoint, and the diverted connections it
 * has not accepted yet (LRU: a connection never accepted ages out). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_h2_cfg);
} es_h2_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_h2_conn_key);
	__type(value, struct es_h2_conn);
} es_h2_conns SEC(".maps");

#endif
