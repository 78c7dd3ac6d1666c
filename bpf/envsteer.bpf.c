/* SPDX-License-Identifier: Apache-2.0 */
/* envsteer entry programs: thin wrappers over lib/. */
#include "lib/steer.h"
#include "lib/outbound.h"

SEC("cgroup/connect4")
int es_connect4(struct bpf_sock_addr *ctx)
{
	return es_sock_addr4(ctx, ES_HOOK_CONNECT);
}

SEC("cgroup/connect6")
int es_connect6(struct bpf_sock_addr *ctx)
{
	return es_sock_addr6(ctx, ES_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int es_sendmsg4(struct bpf_sock_addr *ctx)
{
	return es_sock_addr4(ctx, ES_HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int es_sendmsg6(struct bpf_sock_addr *ctx)
{
	return es_sock_addr6(ctx, ES_HOOK_SENDMSG);
}

SEC("cgroup/recvmsg4")
int es_recvmsg4(struct bpf_sock_addr *ctx)
{
	return es_recvmsg(ctx, 0);
}

SEC("cgroup/recvmsg6")
int es_recvmsg6(struct bpf_sock_addr *ctx)
{
	return es_recvmsg(ctx, 1);
}

SEC("cgroup/getpeername4")
int es_getpeername4_prog(struct bpf_sock_addr *ctx)
{
	return es_getpeername4(ctx);
}

SEC("cgroup/getpeername6")
int es_getpeername6_prog(struct bpf_sock_addr *ctx)
{
	return es_getpeername6(ctx);
}

/* Inbound HTTP requests to managed pods: the env header of each request. */
SEC("cgroup_skb/ingress")
int es_http_ingress(struct __sk_buff *skb)
{
	return es_ingress(skb);
}

/* sock_recvmsg() returned data: the reading thread adopts its request's env.
 * (Tracepoint arguments: struct sock *sk, int ret, int flags.) */
SEC("tp_btf/sock_recv_length")
int es_sock_recv_length(unsigned long long *ctx)
{
	return es_recv((struct sock *)ctx[0], (int)ctx[1], (int)ctx[2]);
}

/* sock_sendmsg() sent data: a thread answering its request ends its context.
 * (Tracepoint arguments: struct sock *sk, int ret, int flags.) */
SEC("tp_btf/sock_send_length")
int es_sock_send_length(unsigned long long *ctx)
{
	return es_send((struct sock *)ctx[0], (int)ctx[1]);
}

/* Steered TCP connections enter es_sockhash once established. */
SEC("sockops")
int es_sockops_prog(struct bpf_sock_ops *skops)
{
	return es_sockops(skops);
}

/* Every send on a steered connection: env header insertion and per-request
 * routing (out on the connection, to a bound upstream, or to the agent). */
SEC("sk_msg")
int es_msg_prog(struct sk_msg_md *msg)
{
	return es_msg(msg);
}

/* Receive side of the sockets in es_sockhash: responses on the agent's
 * upstreams go to their client; the rest passes. A verdict program is needed
 * anyway: a socket in a sockhash with only an sk_msg program reports FIONREAD
 * 0 on kernels up to at least 6.18 (tcp_bpf answers SIOCINQ from the psock
 * queue, which only a verdict program fills). */
SEC("sk_skb/stream_verdict")
int es_skb_verdict(struct __sk_buff *skb)
{
	return es_skb(skb);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
