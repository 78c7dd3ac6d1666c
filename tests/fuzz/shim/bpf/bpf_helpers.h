/* SPDX-License-Identifier: Apache-2.0 */
/*
 * User-space stand-in for libbpf's <bpf/bpf_helpers.h>, so that the BPF
 * headers under bpf/lib/ compile unchanged into the sk_msg fuzzer
 * (tests/fuzz/fuzz_msg.c). Map definitions keep libbpf's macros, so every map
 * becomes a plain global whose address names it and whose member types carry
 * its type, key, value and size; SEC() is dropped. The helpers are declared
 * here and implemented by the fuzzer over in-memory maps and a fake sk_msg.
 */
#ifndef ES_SHIM_BPF_HELPERS_H
#define ES_SHIM_BPF_HELPERS_H

#include <linux/bpf.h>

#define __uint(name, val) int (*name)[val]
#define __type(name, val) __typeof__(val) *name
#define __array(name, val) __typeof__(val) *name[]
#define SEC(name)

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

enum libbpf_pin_type {
	LIBBPF_PIN_NONE,
	LIBBPF_PIN_BY_NAME,
};

struct task_struct;
/* The kernel's struct tcp_sock as the programs read it (outbound.h). */
struct tcp_sock {
	__u32 write_seq;
};

/* Signatures as in libbpf's bpf_helper_defs.h. */
static void *bpf_map_lookup_elem(void *map, const void *key);
static long bpf_map_update_elem(void *map, const void *key, const void *value, __u64 flags);
static long bpf_map_delete_elem(void *map, const void *key);
static void *bpf_sk_storage_get(void *map, void *sk, void *value, __u64 flags);
static void *bpf_task_storage_get(void *map, struct task_struct *task, void *value, __u64 flags);
static struct task_struct *bpf_get_current_task_btf(void);
static __u64 bpf_get_socket_cookie(void *ctx);
static long bpf_sock_hash_update(struct bpf_sock_ops *skops, void *map, void *key, __u64 flags);
static long bpf_sock_ops_cb_flags_set(struct bpf_sock_ops *skops, int flags);
static long bpf_loop(__u32 nr_loops, void *callback_fn, void *callback_ctx, __u64 flags);
static long bpf_msg_pull_data(struct sk_msg_md *msg, __u32 start, __u32 end, __u64 flags);
static long bpf_msg_push_data(struct sk_msg_md *msg, __u32 start, __u32 len, __u64 flags);
static long bpf_msg_apply_bytes(struct sk_msg_md *msg, __u32 bytes);
static long bpf_msg_cork_bytes(struct sk_msg_md *msg, __u32 bytes);
static long bpf_msg_redirect_hash(struct sk_msg_md *msg, void *map, void *key, __u64 flags);
static long bpf_sk_redirect_hash(struct __sk_buff *skb, void *map, void *key, __u64 flags);
static long bpf_probe_read_kernel(void *dst, __u32 size, const void *unsafe_ptr);
static __u64 bpf_get_current_cgroup_id(void);
static __u64 bpf_get_current_ancestor_cgroup_id(int ancestor_level);
static __u64 bpf_get_current_pid_tgid(void);
static __u64 bpf_ktime_get_ns(void);
static __u64 bpf_ktime_get_coarse_ns(void);
static __u32 bpf_get_prandom_u32(void);
static void *bpf_ringbuf_reserve(void *ringbuf, __u64 size, __u64 flags);
static void bpf_ringbuf_submit(void *data, __u64 flags);
static long bpf_skb_load_bytes(const void *skb, __u32 offset, void *to, __u32 len);
static struct bpf_sock *bpf_sk_fullsock(struct bpf_sock *sk);
static struct bpf_tcp_sock *bpf_tcp_sock(struct bpf_sock *sk);
static __u64 bpf_skb_cgroup_id(struct __sk_buff *skb);
static __u64 bpf_skb_ancestor_cgroup_id(struct __sk_buff *skb, int ancestor_level);
static struct tcp_sock *bpf_skc_to_tcp_sock(void *sk);

#endif
