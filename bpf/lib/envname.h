/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Environment names, shared by the BPF programs, the agent, the unit tests and
 * the fuzzer. An environment name is a Kubernetes label value (at most 63
 * bytes of [A-Za-z0-9-_.], starting and ending alphanumeric) whose segments,
 * split by the splitter character, are all non-empty.
 */
#ifndef ENVSTEER_ENVNAME_H
#define ENVSTEER_ENVNAME_H

#include "compat.h"
#include "../../maps/abi.h"

ES_INLINE int es_is_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

ES_INLINE int es_is_label_char(char c)
{
	return es_is_alnum(c) || c == '-' || c == '_' || c == '.';
}

/* 1 when s[0..len) is a valid, non-empty environment name. */
ES_INLINE int es_env_valid(const char *s, int len, char splitter)
{
	int i;

	if (len <= 0 || len > ES_ENV_NAME_MAX - 1)
		return 0;
	if (!es_is_alnum(s[0]) || !es_is_alnum(s[len - 1]))
		return 0;
	for (i = 1; i < ES_ENV_NAME_MAX - 1; i++) {
		if (i >= len)
			break;
		if (!es_is_label_char(s[i]))
			return 0;
		/* first and last byte are alphanumeric, so an empty segment can only
		 * be two splitters in a row */
		if (s[i] == splitter && s[i - 1] == splitter)
			return 0;
	}
	return 1;
}

/* Length of the parent name of a valid s[0..len), or 0 when s has one segment. */
ES_INLINE int es_env_parent_len(const char *s, int len, char splitter)
{
	int i, parent = 0;

	for (i = 0; i < ES_ENV_NAME_MAX - 1; i++) {
		if (i >= len)
			break;
		if (s[i] == splitter)
			parent = i;
	}
	return parent;
}

/* Depth of a valid name: its number of segments minus one (0 for "dev"). */
ES_INLINE int es_env_depth(const char *s, int len, char splitter)
{
	int i, n = 0;

	for (i = 0; i < ES_ENV_NAME_MAX - 1; i++) {
		if (i >= len)
			break;
		if (s[i] == splitter)
			n++;
	}
	return n;
}

/*
 * A name eight bytes at a time (BPF: 8 verifier steps instead of 64 for a
 * copy). Words are loaded little-endian: byte i of the word is bits 8i..8i+7.
 */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "es_env_word_*: little-endian words only"
#endif

/* w, the word at byte offset at of a name of n bytes, with the bytes at n and
 * beyond set to NUL. */
ES_INLINE __u64 es_env_word_pad(__u64 w, __u32 at, __u32 n)
{
	if (at >= n)
		return 0;
	if (n - at < 8)
		w &= (1ULL << ((n - at) * 8)) - 1;
	return w;
}

/* How many bytes of w are c. Byte-exact (no borrow crosses bytes): y has a
 * zero byte exactly where w has c, and t the high bit of exactly those bytes. */
ES_INLINE __u32 es_env_word_count(__u64 w, char c)
{
	const __u64 ones = 0x0101010101010101ULL, low7 = 0x7f7f7f7f7f7f7f7fULL;
	__u64 y = w ^ (ones * (__u8)c);
	__u64 t = ~(((y & low7) + low7) | y | low7);

	return (__u32)(((t >> 7) * ones) >> 56);
}

/* Copies the name of n bytes at src (NULL: none) into dst, eight bytes a step,
 * NUL-padded to ES_ENV_NAME_MAX; returns how many of its bytes are c (its
 * depth). Both buffers 8-aligned: env names in map values (request.h,
 * outbound.h). */
ES_INLINE __u32 es_env_copy_words(char *dst, const char *src, __u32 n, char c)
{
	__u32 at, depth = 0;
	__u64 w;
	int i;

	for (i = 0; i < ES_ENV_NAME_MAX / 8; i++) {
		at = (__u32)i * 8;
		w = 0;
		if (src)
			__builtin_memcpy(&w, __builtin_assume_aligned(src + at, 8), 8);
		w = es_env_word_pad(w, at, n);
		__builtin_memcpy(__builtin_assume_aligned(dst + at, 8), &w, 8);
		depth += es_env_word_count(w, c);
	}
	return depth;
}

/* The splitter must be a label character that cannot start a name. */
ES_INLINE int es_splitter_valid(char c)
{
	return c == '.' || c == '-' || c == '_';
}

#endif
