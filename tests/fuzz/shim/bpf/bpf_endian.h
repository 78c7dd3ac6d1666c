/* SPDX-License-Identifier: Apache-2.0 */
/* User-space stand-in for libbpf's <bpf/bpf_endian.h> (see bpf_helpers.h here). */
#ifndef ES_SHIM_BPF_ENDIAN_H
#define ES_SHIM_BPF_ENDIAN_H

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the sk_msg fuzzer assumes a little-endian host"
#endif

#define bpf_htons(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define bpf_ntohs(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define bpf_htonl(x) ((__u32)__builtin_bswap32((__u32)(x)))
#define bpf_ntohl(x) ((__u32)__builtin_bswap32((__u32)(x)))

#endif
