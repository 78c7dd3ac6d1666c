/* SPDX-License-Identifier: Apache-2.0 */
/* envsteer entry programs: thin wrappers over lib/. */
#include "lib/steer.h"

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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
