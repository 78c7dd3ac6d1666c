/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Observability of steering decisions: per-service decision counters (always
 * on, per-CPU) and decision events for `envsteer trace` (a ring buffer read by
 * the agent). Events are emitted only while the agent has a trace client
 * attached (es_trace_cfg.enabled) and at most at the configured rate per CPU,
 * so tracing cannot hurt the data path: with no client the cost is one array
 * lookup per decision.
 */
#ifndef ENVSTEER_TRACE_H
#define ENVSTEER_TRACE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"
#include "ratelimit.h"
#include "request.h"
#include "resolve.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} es_trace_rb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct es_trace_cfg);
} es_trace_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct es_trace_bucket);
} es_trace_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct es_decision_key);
	__type(value, __u64);
} es_decisions SEC(".maps");

/* Bumps the per-service counter of a decision. */
static __always_inline void es_decision_count(__u32 svc_id, __u32 env_id, __u32 kind, __u32 level)
{
	struct es_decision_key k = { .svc_id = svc_id, .env_id = env_id, .outcome = kind, .level = level };
	__u64 one = 1, *v;

	v = bpf_map_lookup_elem(&es_decisions, &k);
	if (v) {
		*v += 1;
		return;
	}
	if (bpf_map_update_elem(&es_decisions, &k, &one, BPF_NOEXIST) == 0)
		return;
	/* another CPU made it meanwhile, or the map is full */
	v = bpf_map_lookup_elem(&es_decisions, &k);
	if (v)
		*v += 1;
	else
		es_count(ES_CNT_DECISION_MAP_FULL);
}

/* A trace event slot, or NULL when tracing is off or over its rate. The
 * caller fills it and calls bpf_ringbuf_submit(ev, 0). */
static __always_inline struct es_trace_event *es_trace_reserve(__u32 kind)
{
	const struct es_trace_cfg *cfg;
	struct es_trace_bucket *b;
	struct es_trace_event *ev;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&es_trace_cfg, &zero);
	if (!cfg || !cfg->enabled)
		return NULL;
	b = bpf_map_lookup_elem(&es_trace_bucket, &zero);
	if (!b)
		return NULL;
	if (!es_bucket_take(b, bpf_ktime_get_ns(), cfg->rate, cfg->burst)) {
		es_count(ES_CNT_TRACE_RATE_LIMITED);
		return NULL;
	}
	ev = bpf_ringbuf_reserve(&es_trace_rb, sizeof(*ev), 0);
	if (!ev) {
		es_count(ES_CNT_TRACE_LOST);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->kind = kind;
	es_count(ES_CNT_TRACE_EMITTED);
	return ev;
}

/* The calling thread's request environment name, when it serves one. */
static __always_inline void es_trace_thread_env(struct es_trace_event *ev, __u32 pod_flags)
{
	struct es_thread *th = es_current_thread(pod_flags, 0);

	if (!th)
		return;
	__builtin_memcpy(ev->thread_env, th->env, ES_ENV_NAME_MAX);
	ev->env_len = th->len;
}

/* A connect()/sendmsg() decision: counted per service, and traced. be is
 * NULL when the connect is refused. env_req is where the walk started. */
static __always_inline void es_trace_connect(const struct es_frontend_key *fe, __u32 svc_id, __u32 env_req,
					     __u32 source, const struct es_resolution *res, __u32 pod_env,
					     __u32 pod_flags, __u64 pod_cg, const struct es_backend *be)
{
	struct es_trace_event *ev;
	__u32 kind = ES_EV_CONNECT_REFUSED;

	if (be && res->outcome == ES_OUT_OWN)
		kind = ES_EV_CONNECT_STEERED;
	else if (be && res->outcome == ES_OUT_FALLBACK)
		kind = ES_EV_CONNECT_FALLBACK;
	else if (be)
		kind = ES_EV_CONNECT_DEFAULT;
	es_decision_count(svc_id, be ? res->env_id : env_req, kind, be ? res->level : 0);

	ev = es_trace_reserve(kind);
	if (!ev)
		return;
	/* the pod, as found for the decision: the task's own cgroup may be gone
	 * by the time the agent reads the event */
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pod_cgroup_id = pod_cg;
	ev->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	ev->svc_id = svc_id;
	ev->env_req = env_req;
	ev->env_res = be ? res->env_id : ES_ENV_NONE;
	ev->pod_env = pod_env;
	ev->level = be ? res->level : 0;
	ev->source = source;
	ev->fe_addr[0] = fe->addr[0];
	ev->fe_addr[1] = fe->addr[1];
	ev->fe_addr[2] = fe->addr[2];
	ev->fe_addr[3] = fe->addr[3];
	ev->fe_port = fe->port;
	ev->family = fe->family;
	ev->proto = fe->proto;
	if (be) {
		ev->be_addr[0] = be->addr[0];
		ev->be_addr[1] = be->addr[1];
		ev->be_addr[2] = be->addr[2];
		ev->be_addr[3] = be->addr[3];
		ev->be_port = be->port;
	}
	if (source == ES_SRC_REQUEST)
		es_trace_thread_env(ev, pod_flags);
	bpf_ringbuf_submit(ev, 0);
}

#endif
