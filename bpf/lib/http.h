/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Streaming HTTP/1.x request parser: finds the environment header of every
 * request on a connection and follows the body framing, so that keep-alive
 * and pipelined requests are seen one by one. Bytes are fed one at a time
 * because in the kernel one request arrives in several segments or send()
 * calls; the state lives in per-socket storage between them. Shared by the BPF
 * programs, the agent, the unit tests and the fuzzer. docs/http-parser.md
 * says what is accepted and what each outcome means.
 *
 * Use: es_http_feed() per byte (BPF: from a bpf_loop() callback or a bounded
 * loop); on ES_HTTP_EV_REQLINE a header may be inserted right after that byte;
 * on ES_HTTP_EV_HEADERS read es_http_env_outcome() and es_http_env(); take
 * body bytes in bulk with es_http_skippable() / es_http_skip(). User space
 * has es_http_feed_buf() and es_http_parse_buf().
 *
 * BPF: no loop but the unrolled one over the configured names, no globals, no
 * big stack objects, and few branches on values the verifier could know
 * exactly, so that the states of the paths through one byte merge.
 */
#ifndef ENVSTEER_HTTP_H
#define ENVSTEER_HTTP_H

#include "compat.h"
#include "envname.h"
#include "../../maps/abi.h"

#define ES_HTTP_METHOD_MAX 24


/* Events: a bit mask, one byte may raise several. */
#define ES_HTTP_EV_REQLINE 0x01	 /* request line complete: insert a header after this byte */
#define ES_HTTP_EV_HEADERS 0x02	 /* end of the header section: the env outcome is final */
#define ES_HTTP_EV_DONE 0x04	 /* request complete incl. body; the next byte starts a new one */
#define ES_HTTP_EV_WINDOW 0x08	 /* the header section runs past the window */
#define ES_HTTP_EV_NOT_HTTP 0x10 /* not (or no longer) HTTP/1.x: inert until es_http_reset() */

/* Flags of the current (or just finished) request. */
#define ES_HTTP_F_WINDOW 0x0001	     /* header section longer than the window */
#define ES_HTTP_F_ENV_SEEN 0x0002    /* an env header or baggage member was present */
#define ES_HTTP_F_ENV_INVALID 0x0004 /* one within the window had a bad or over-long value */
#define ES_HTTP_F_ENV_BEYOND 0x0008  /* one ended beyond the window: ignored */
#define ES_HTTP_F_CL 0x0010	     /* Content-Length */
#define ES_HTTP_F_TE 0x0020	     /* Transfer-Encoding */
#define ES_HTTP_F_CHUNKED 0x0040
#define ES_HTTP_F_CONNECT 0x0080
#define ES_HTTP_F_HTTP10 0x0100
#define ES_HTTP_F_H2C 0x0200	     /* HTTP2-Settings: an h2c upgrade request (RFC 7540 3.2) */
#define ES_HTTP_F_UPGRADE 0x0400     /* Upgrade: what follows a 101 is no longer HTTP/1.x */
#define ES_HTTP_F_HEAD 0x0800	     /* a 4-byte method starting with H (HEAD): its answer may have
				      * a Content-Length and no body, which response trackers
				      * cannot tell */

/* Why a parser went inert. */
enum es_http_err {
	ES_HTTP_ERR_NONE = 0,
	ES_HTTP_ERR_NOT_HTTP,  /* the request line is not an HTTP/1.0 or 1.1 one */
	ES_HTTP_ERR_MALFORMED, /* bad header syntax, bare CR, obs-fold */
	ES_HTTP_ERR_FRAMING,   /* conflicting or bad Content-Length / Transfer-Encoding, bad chunk */
	ES_HTTP_ERR_TOO_BIG,   /* Content-Length >= 10^18 or chunk size >= 2^60 */
	ES_HTTP_ERR_TUNNEL,    /* after CONNECT the connection carries something else */
};

/* What a finished header section said about the environment. */
enum es_http_env_outcome {
	ES_HTTP_ENV_ABSENT = 0,
	ES_HTTP_ENV_FOUND,
	ES_HTTP_ENV_INVALID, /* present, but no valid value: counts as absent */
	ES_HTTP_ENV_BEYOND,  /* present only past the window: counts as absent */
};


/* Phases. Head 1..7; a CR may end a line in 5..12; 13.. skip the CR logic. */
enum {
	ES_HTTP_P_IDLE = 0,
	ES_HTTP_P_METHOD,
	ES_HTTP_P_TARGET,
	ES_HTTP_P_VERSION,
	ES_HTTP_P_NAME,
	ES_HTTP_P_RL_END,
	ES_HTTP_P_LINE,
	ES_HTTP_P_VALUE,
	ES_HTTP_P_CHUNK_SIZE,
	ES_HTTP_P_CHUNK_EXT,
	ES_HTTP_P_CHUNK_END,
	ES_HTTP_P_TRAILER_START,
	ES_HTTP_P_TRAILER,
	ES_HTTP_P_BODY,
	ES_HTTP_P_CHUNK_DATA,
	ES_HTTP_P_DEAD,
};

/* Kind of header being read; the env kinds equal their rank. */
enum {
	ES_HTTP_H_NONE = 0,
	ES_HTTP_H_PRIMARY = 1,
	ES_HTTP_H_ALIAS = 2,
	ES_HTTP_H_BAGGAGE = 3,
	ES_HTTP_H_CL,
	ES_HTTP_H_TE,
};

/* Baggage list positions. */
enum {
	ES_HTTP_BG_START = 0, /* before a member's key */
	ES_HTTP_BG_KEY,
	ES_HTTP_BG_KEY_END, /* blanks after the key */
	ES_HTTP_BG_VAL,
	ES_HTTP_BG_SKIP, /* properties or a malformed member, up to the next ',' */
};

/* Built-in names as little-endian packed constants: no .rodata in BPF. */
#define ES_HTTP_PACK(a, b, c, d, e, f, g, h)                                        \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |         \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)
#define ES_HTTP_K_CL0 ES_HTTP_PACK('c', 'o', 'n', 't', 'e', 'n', 't', '-')
#define ES_HTTP_K_CL1 ES_HTTP_PACK('l', 'e', 'n', 'g', 't', 'h', 0, 0)
#define ES_HTTP_K_TE0 ES_HTTP_PACK('t', 'r', 'a', 'n', 's', 'f', 'e', 'r')
#define ES_HTTP_K_TE1 ES_HTTP_PACK('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n')
#define ES_HTTP_K_TE2 ES_HTTP_PACK('g', 0, 0, 0, 0, 0, 0, 0)
#define ES_HTTP_K_BAGGAGE ES_HTTP_PACK('b', 'a', 'g', 'g', 'a', 'g', 'e', 0)
#define ES_HTTP_K_CHUNKED ES_HTTP_PACK('c', 'h', 'u', 'n', 'k', 'e', 'd', 0)
#define ES_HTTP_K_CONNECT ES_HTTP_PACK('C', 'O', 'N', 'N', 'E', 'C', 'T', 0)
#define ES_HTTP_K_UPGRADE ES_HTTP_PACK('u', 'p', 'g', 'r', 'a', 'd', 'e', 0)
#define ES_HTTP_K_H2S0 ES_HTTP_PACK('h', 't', 't', 'p', '2', '-', 's', 'e')
#define ES_HTTP_K_H2S1 ES_HTTP_PACK('t', 't', 'i', 'n', 'g', 's', 0, 0)
#define ES_HTTP_K_VERSION ES_HTTP_PACK('H', 'T', 'T', 'P', '/', '1', '.', 0)

/* match bits: configured names in the low bits, then the built-ins */
#define ES_HTTP_M_CL 0x100
#define ES_HTTP_M_TE 0x200
#define ES_HTTP_M_BAGGAGE 0x400
#define ES_HTTP_M_H2C 0x800
#define ES_HTTP_M_UPGRADE 0x1000

/* Character classes as bitmaps of ASCII 0..63 and 64..127: one shift
 * instead of a chain of range checks. Tests pin them to RFC 9110 tchar and to
 * es_is_alnum / es_is_label_char of envname.h. */
#define ES_HTTP_TCHAR_LO 0x03ff6cfa00000000ULL
#define ES_HTTP_TCHAR_HI 0x57ffffffc7fffffeULL
#define ES_HTTP_ALNUM_LO 0x03ff000000000000ULL
#define ES_HTTP_ALNUM_HI 0x07fffffe07fffffeULL
#define ES_HTTP_LABEL_LO 0x03ff600000000000ULL
#define ES_HTTP_LABEL_HI 0x07fffffe87fffffeULL

/* Largest Content-Length accepted before another digit: keeps it < 10^18. */
#define ES_HTTP_CL_LIMIT 100000000000000000ULL

/* Byte i of a constant packed in a, b, c; 0 past its end. */
ES_INLINE __u8 es_http_kc(__u64 a, __u64 b, __u64 c, __u32 i)
{
	if (i < 8)
		return (__u8)(a >> (i * 8));
	if (i < 16)
		return (__u8)(b >> ((i - 8) * 8));
	if (i < 24)
		return (__u8)(c >> ((i - 16) * 8));
	return 0;
}

/* 1 when c is in the class given by the bitmaps lo, hi. */
ES_INLINE int es_http_in(__u64 lo, __u64 hi, __u8 c)
{
	if (c < 64)
		return (lo >> c) & 1;
	if (c < 128)
		return (hi >> (c - 64)) & 1;
	return 0;
}

ES_INLINE int es_http_tchar(__u8 c)
{
	return es_http_in(ES_HTTP_TCHAR_LO, ES_HTTP_TCHAR_HI, c);
}

ES_INLINE __u8 es_http_lower(__u8 c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

ES_INLINE int es_http_ows(__u8 c)
{
	return c == ' ' || c == '\t';
}

/* Value of a hex digit, or -1. */
ES_INLINE int es_http_hex(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = es_http_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* ---- configuration (agent, tests) ---- */

ES_INLINE void es_http_cfg_init(struct es_http_cfg *cfg, char splitter, __u16 window)
{
	__builtin_memset(cfg, 0, sizeof(*cfg));
	cfg->splitter = splitter;
	cfg->window = window;
}

/* Adds a header name (the first one added is the primary); 0 or -1. */
ES_INLINE int es_http_cfg_add_name(struct es_http_cfg *cfg, const char *name, __u32 len)
{
	__u8 n = cfg->n_names;
	__u32 i;

	if (n >= ES_HTTP_MAX_NAMES || len == 0 || len > ES_HTTP_NAME_MAX)
		return -1;
	for (i = 0; i < len; i++) {
		if (!es_http_tchar((__u8)name[i]))
			return -1;
		cfg->names[n][i] = (char)es_http_lower((__u8)name[i]);
	}
	cfg->name_len[n] = (__u8)len;
	cfg->n_names = n + 1;
	return 0;
}

/* Sets the baggage member key (len 0 turns baggage off); 0 or -1. */
ES_INLINE int es_http_cfg_set_baggage_key(struct es_http_cfg *cfg, const char *key, __u32 len)
{
	__u32 i;

	if (len > ES_HTTP_NAME_MAX)
		return -1;
	for (i = 0; i < len; i++) {
		if (!es_http_tchar((__u8)key[i]))
			return -1;
		cfg->baggage_key[i] = key[i];
	}
	cfg->baggage_key_len = (__u8)len;
	return 0;
}

/* ---- results ---- */

/* The env value of the current or just finished request (es_http_env_len bytes). */
ES_INLINE const char *es_http_env(const struct es_http_state *st)
{
	return st->val[st->best & 1];
}

ES_INLINE int es_http_env_len(const struct es_http_state *st)
{
	return st->env_len;
}

ES_INLINE int es_http_env_outcome(const struct es_http_state *st)
{
	if (st->env_len)
		return ES_HTTP_ENV_FOUND;
	if (st->flags & ES_HTTP_F_ENV_INVALID)
		return ES_HTTP_ENV_INVALID;
	if (st->flags & ES_HTTP_F_ENV_BEYOND)
		return ES_HTTP_ENV_BEYOND;
	return ES_HTTP_ENV_ABSENT;
}

/* Bytes of the current request consumed so far (a header is inserted at line_len). */
ES_INLINE __u32 es_http_pos(const struct es_http_state *st)
{
	return st->pos;
}

ES_INLINE int es_http_inert(const struct es_http_state *st)
{
	return st->phase == ES_HTTP_P_DEAD;
}

/* ---- the machine ---- */

/* Forget everything: a new connection, or retry after NOT_HTTP. */
ES_INLINE void es_http_reset(struct es_http_state *st)
{
	__builtin_memset(st, 0, sizeof(*st));
}

/* A new request starts; the previous one's results are dropped. */
ES_INLINE void es_http_begin(struct es_http_state *st)
{
	char *tail = (char *)st + __builtin_offsetof(struct es_http_state, body);

	__builtin_memset(tail, 0, sizeof(*st) - __builtin_offsetof(struct es_http_state, body));
	st->phase = ES_HTTP_P_METHOD;
	st->kok = 1;
}

ES_INLINE int es_http_dead(struct es_http_state *st, __u8 why)
{
	st->phase = ES_HTTP_P_DEAD;
	st->err = why;
	return ES_HTTP_EV_NOT_HTTP;
}

/* Back to the boundary before a request whose bytes are looked at again
 * later: the parser is idle there (es_http_begin resets the rest at the
 * request's first byte). */
ES_INLINE void es_http_rewind(struct es_http_state *st)
{
	st->phase = ES_HTTP_P_IDLE;
	st->cr = 0;
}

/* No more parsing on this connection (inert), its error left as it is. */
ES_INLINE void es_http_halt(struct es_http_state *st)
{
	st->phase = ES_HTTP_P_DEAD;
}

/* Body bytes that may be consumed in bulk with es_http_skip (0 outside a body). */
ES_INLINE __u64 es_http_skippable(const struct es_http_state *st)
{
	if (st->phase == ES_HTTP_P_BODY || st->phase == ES_HTTP_P_CHUNK_DATA)
		return st->body;
	return 0;
}

/* Consumes min(n, es_http_skippable()) body bytes at once; returns the events. */
ES_INLINE int es_http_skip(struct es_http_state *st, __u64 n)
{
	__u64 p;

	if (n > es_http_skippable(st))
		n = es_http_skippable(st);
	if (!n)
		return 0;
	p = (__u64)st->pos + n;
	st->pos = p > 0xffffffffULL ? 0xffffffffU : (__u32)p;
	st->body -= n;
	if (st->body)
		return 0;
	if (st->phase == ES_HTTP_P_BODY) {
		st->phase = ES_HTTP_P_IDLE;
		return ES_HTTP_EV_DONE;
	}
	st->phase = ES_HTTP_P_CHUNK_END;
	return 0;
}

ES_INLINE void es_http_cap_start(struct es_http_state *st)
{
	st->vtot = 0;
	st->vows = 0;
	st->vbad = 0;
	st->vprev = 0;
}

/* Narrows st->match by name byte c. The hits are built without branching on
 * the match bits, so the verifier need not track which names are still in. */
ES_INLINE void es_http_name_byte(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	__u16 hits = 0;
	__u8 i = st->npos;
	int k;

	if (st->npos < 255)
		st->npos++;
	/* no name is left to match: nothing to compare (es_http_run takes such
	 * names in bulk) */
	if (!st->match)
		return;
	c = es_http_lower(c);
	for (k = 0; k < ES_HTTP_MAX_NAMES; k++) {
		if (i < cfg->name_len[k] && (__u8)cfg->names[k][i & (ES_HTTP_NAME_MAX - 1)] == c)
			hits |= 1U << k;
	}
	/* a built-in yields 0 past its end, and c is never 0 */
	if (es_http_kc(ES_HTTP_K_CL0, ES_HTTP_K_CL1, 0, i) == c)
		hits |= ES_HTTP_M_CL;
	if (es_http_kc(ES_HTTP_K_TE0, ES_HTTP_K_TE1, ES_HTTP_K_TE2, i) == c)
		hits |= ES_HTTP_M_TE;
	if (es_http_kc(ES_HTTP_K_BAGGAGE, 0, 0, i) == c)
		hits |= ES_HTTP_M_BAGGAGE;
	if (es_http_kc(ES_HTTP_K_H2S0, ES_HTTP_K_H2S1, 0, i) == c)
		hits |= ES_HTTP_M_H2C;
	if (es_http_kc(ES_HTTP_K_UPGRADE, 0, 0, i) == c)
		hits |= ES_HTTP_M_UPGRADE;
	st->match &= hits;
}

/* The ':' after a name: decide what the value is. */
ES_INLINE void es_http_name_end(struct es_http_state *st, const struct es_http_cfg *cfg)
{
	__u16 exact = 0, m;
	__u8 n = st->npos, h = ES_HTTP_H_NONE;
	int k;

	for (k = 0; k < ES_HTTP_MAX_NAMES; k++) {
		if (cfg->name_len[k] == n && k < cfg->n_names)
			exact |= 1U << k;
	}
	if (!es_http_kc(ES_HTTP_K_CL0, ES_HTTP_K_CL1, 0, n))
		exact |= ES_HTTP_M_CL;
	if (!es_http_kc(ES_HTTP_K_TE0, ES_HTTP_K_TE1, ES_HTTP_K_TE2, n))
		exact |= ES_HTTP_M_TE;
	if (!es_http_kc(ES_HTTP_K_BAGGAGE, 0, 0, n) && cfg->baggage_key_len)
		exact |= ES_HTTP_M_BAGGAGE;
	if (!es_http_kc(ES_HTTP_K_H2S0, ES_HTTP_K_H2S1, 0, n))
		exact |= ES_HTTP_M_H2C;
	if (!es_http_kc(ES_HTTP_K_UPGRADE, 0, 0, n))
		exact |= ES_HTTP_M_UPGRADE;
	m = st->match & exact;
	if (m & ES_HTTP_M_H2C)
		st->flags |= ES_HTTP_F_H2C;
	if (m & ES_HTTP_M_UPGRADE)
		st->flags |= ES_HTTP_F_UPGRADE;

	if (m & 1) {
		h = ES_HTTP_H_PRIMARY;
	} else if (m & ((1U << ES_HTTP_MAX_NAMES) - 1)) {
		h = ES_HTTP_H_ALIAS;
	} else if (m & ES_HTTP_M_CL) {
		h = ES_HTTP_H_CL;
	} else if (m & ES_HTTP_M_TE) {
		h = ES_HTTP_H_TE;
		st->flags |= ES_HTTP_F_TE;
	} else if (m & ES_HTTP_M_BAGGAGE) {
		h = ES_HTTP_H_BAGGAGE;
	}
	if (h == ES_HTTP_H_PRIMARY || h == ES_HTTP_H_ALIAS)
		st->flags |= ES_HTTP_F_ENV_SEEN;
	/* a value that cannot beat the one held is not even read */
	if (h && h <= ES_HTTP_H_BAGGAGE && st->env_rank && st->env_rank <= h)
		h = ES_HTTP_H_NONE;
	st->hdr = h;
	st->sub = 0;
	st->num = 0;
	st->kpos = 0;
	st->kok = 1;
	es_http_cap_start(st);
}

/*
 * One byte of an env value into the candidate slot. Blanks around the value
 * are trimmed; the checks of es_env_valid() are made byte by byte, because
 * its loop per candidate would multiply the verifier's work per byte fed.
 */
ES_INLINE void es_http_cap(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	__u8 n = st->vtot;
	int bad;

	if (es_http_ows(c)) {
		if (n)
			st->vows = 1;
		return;
	}
	bad = st->vbad | st->vows | (n >= ES_ENV_NAME_MAX - 1) |
	      !es_http_in(n ? ES_HTTP_LABEL_LO : ES_HTTP_ALNUM_LO,
			  n ? ES_HTTP_LABEL_HI : ES_HTTP_ALNUM_HI, c) |
	      (c == (__u8)cfg->splitter && st->vprev == c);
	if (bad) {
		st->vbad = 1;
		return;
	}
	st->val[(st->best ^ 1) & 1][n & (ES_ENV_NAME_MAX - 1)] = (char)c;
	st->vtot = n + 1;
	st->vprev = c;
}

/* The candidate value is complete: keep it if valid, in the window and better. */
ES_INLINE void es_http_commit(struct es_http_state *st, __u8 rank)
{
	st->flags |= ES_HTTP_F_ENV_SEEN;
	if (st->flags & ES_HTTP_F_WINDOW) {
		st->flags |= ES_HTTP_F_ENV_BEYOND;
		return;
	}
	/* what es_env_valid() checks last: non-empty, ends alphanumeric */
	if (st->vbad || !st->vtot ||
	    !es_http_in(ES_HTTP_ALNUM_LO, ES_HTTP_ALNUM_HI, st->vprev)) {
		st->flags |= ES_HTTP_F_ENV_INVALID;
		return;
	}
	if (st->env_rank && st->env_rank <= rank)
		return;
	st->best = (st->best ^ 1) & 1;
	st->env_len = st->vtot;
	st->env_rank = rank;
}

ES_INLINE void es_http_bag_key(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	__u8 i = st->kpos;

	if (i >= cfg->baggage_key_len || (__u8)cfg->baggage_key[i & (ES_HTTP_NAME_MAX - 1)] != c)
		st->kok = 0;
	if (i < 255)
		st->kpos = i + 1;
}

ES_INLINE void es_http_bag_eq(struct es_http_state *st, const struct es_http_cfg *cfg)
{
	st->kok = st->kok && st->kpos == cfg->baggage_key_len;
	st->sub = ES_HTTP_BG_VAL;
	es_http_cap_start(st);
}

/* W3C baggage: key OWS "=" OWS value *( ";" property ), members split by ','.
 * Returns 1 when c belongs to the value of the member looked for. */
ES_INLINE int es_http_bag_byte(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	switch (st->sub) {
	case ES_HTTP_BG_START:
		if (es_http_ows(c) || c == ',')
			return 0;
		if (c == '=' || c == ';') {
			st->sub = ES_HTTP_BG_SKIP;
			return 0;
		}
		st->sub = ES_HTTP_BG_KEY;
		st->kpos = 0;
		st->kok = 1;
		es_http_bag_key(st, cfg, c);
		return 0;
	case ES_HTTP_BG_KEY:
		if (c == '=')
			es_http_bag_eq(st, cfg);
		else if (es_http_ows(c))
			st->sub = ES_HTTP_BG_KEY_END;
		else if (c == ',')
			st->sub = ES_HTTP_BG_START;
		else if (c == ';')
			st->sub = ES_HTTP_BG_SKIP;
		else
			es_http_bag_key(st, cfg, c);
		return 0;
	case ES_HTTP_BG_KEY_END:
		if (c == '=')
			es_http_bag_eq(st, cfg);
		else if (!es_http_ows(c))
			st->sub = c == ',' ? ES_HTTP_BG_START : ES_HTTP_BG_SKIP;
		return 0;
	case ES_HTTP_BG_VAL:
		if (c == ',' || c == ';') {
			if (st->kok)
				es_http_commit(st, ES_HTTP_H_BAGGAGE);
			st->sub = c == ',' ? ES_HTTP_BG_START : ES_HTTP_BG_SKIP;
			return 0;
		}
		return st->kok;
	default:
		if (c == ',')
			st->sub = ES_HTTP_BG_START;
		return 0;
	}
}

/* Content-Length: 1*DIGIT, or a list of equal ones ("5, 5"), RFC 9110 8.6. */
ES_INLINE int es_http_cl_commit(struct es_http_state *st)
{
	if ((st->flags & ES_HTTP_F_CL) && st->body != st->num)
		return es_http_dead(st, ES_HTTP_ERR_FRAMING);
	st->body = st->num;
	st->flags |= ES_HTTP_F_CL;
	st->num = 0;
	st->sub = 0;
	return 0;
}

ES_INLINE int es_http_cl_byte(struct es_http_state *st, __u8 c)
{
	if (c >= '0' && c <= '9') {
		if (st->sub == 2)
			return es_http_dead(st, ES_HTTP_ERR_FRAMING);
		if (st->num >= ES_HTTP_CL_LIMIT)
			return es_http_dead(st, ES_HTTP_ERR_TOO_BIG);
		st->num = st->num * 10 + (c - '0');
		st->sub = 1;
		return 0;
	}
	if (es_http_ows(c)) {
		if (st->sub == 1)
			st->sub = 2;
		return 0;
	}
	if (c == ',' && st->sub)
		return es_http_cl_commit(st);
	return es_http_dead(st, ES_HTTP_ERR_FRAMING);
}

/* Transfer-Encoding list element ends: chunked must come last, and once. */
ES_INLINE int es_http_te_end(struct es_http_state *st)
{
	int chunked = st->kpos == 7;

	st->sub = 0;
	st->kpos = 0;
	if (st->flags & ES_HTTP_F_CHUNKED)
		return es_http_dead(st, ES_HTTP_ERR_FRAMING);
	if (chunked)
		st->flags |= ES_HTTP_F_CHUNKED;
	return 0;
}

ES_INLINE int es_http_te_byte(struct es_http_state *st, __u8 c)
{
	if (c == ',')
		return st->sub ? es_http_te_end(st) : 0;
	if (es_http_ows(c)) {
		if (st->sub == 1)
			st->sub = 2;
		return 0;
	}
	if (st->sub == 2) {
		st->kpos = 0xff;
		return 0;
	}
	st->sub = 1;
	c = es_http_lower(c);
	if (st->kpos < 7 && es_http_kc(ES_HTTP_K_CHUNKED, 0, 0, st->kpos) == c)
		st->kpos++;
	else
		st->kpos = 0xff;
	return 0;
}

ES_INLINE int es_http_value_byte(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	switch (st->hdr) {
	case ES_HTTP_H_NONE:
		return 0;
	case ES_HTTP_H_CL:
		return es_http_cl_byte(st, c);
	case ES_HTTP_H_TE:
		return es_http_te_byte(st, c);
	case ES_HTTP_H_BAGGAGE:
		if (!es_http_bag_byte(st, cfg, c))
			return 0;
		break;
	default:
		break;
	}
	/* one copy of the capture code for both kinds of value */
	es_http_cap(st, cfg, c);
	return 0;
}

ES_INLINE int es_http_value_end(struct es_http_state *st)
{
	st->phase = ES_HTTP_P_LINE;
	switch (st->hdr) {
	case ES_HTTP_H_PRIMARY:
	case ES_HTTP_H_ALIAS:
		es_http_commit(st, st->hdr);
		return 0;
	case ES_HTTP_H_BAGGAGE:
		if (st->sub == ES_HTTP_BG_VAL && st->kok)
			es_http_commit(st, ES_HTTP_H_BAGGAGE);
		return 0;
	case ES_HTTP_H_CL:
		if (!st->sub)
			return es_http_dead(st, ES_HTTP_ERR_FRAMING);
		return es_http_cl_commit(st);
	case ES_HTTP_H_TE:
		return st->sub ? es_http_te_end(st) : 0;
	default:
		return 0;
	}
}

/* The empty line after the headers. */
ES_INLINE int es_http_head_end(struct es_http_state *st)
{
	if ((st->flags & ES_HTTP_F_TE) &&
	    (!(st->flags & ES_HTTP_F_CHUNKED) || (st->flags & ES_HTTP_F_CL)))
		return es_http_dead(st, ES_HTTP_ERR_FRAMING);
	if (st->flags & ES_HTTP_F_CONNECT) {
		es_http_dead(st, ES_HTTP_ERR_TUNNEL);
		return ES_HTTP_EV_HEADERS;
	}
	if (st->flags & ES_HTTP_F_CHUNKED) {
		st->phase = ES_HTTP_P_CHUNK_SIZE;
		st->num = 0;
		st->npos = 0;
		return ES_HTTP_EV_HEADERS;
	}
	if (st->body) {
		st->phase = ES_HTTP_P_BODY;
		return ES_HTTP_EV_HEADERS;
	}
	st->phase = ES_HTTP_P_IDLE;
	return ES_HTTP_EV_HEADERS | ES_HTTP_EV_DONE;
}

ES_INLINE int es_http_chunk_line_end(struct es_http_state *st)
{
	if (st->num) {
		st->body = st->num;
		st->phase = ES_HTTP_P_CHUNK_DATA;
	} else {
		st->phase = ES_HTTP_P_TRAILER_START;
	}
	return 0;
}

ES_INLINE int es_http_step(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	__u8 ph = st->phase;
	int ev = 0, d;

	if (ph >= ES_HTTP_P_BODY) {
		if (ph == ES_HTTP_P_DEAD)
			return ES_HTTP_EV_NOT_HTTP;
		return es_http_skip(st, 1);
	}
	if (st->cr && c != '\n')
		return es_http_dead(st, ES_HTTP_ERR_MALFORMED);
	if (ph == ES_HTTP_P_IDLE) {
		/* empty lines before a request are ignored (RFC 9112 2.2) */
		if (c == '\r' || c == '\n') {
			st->cr = c == '\r';
			return 0;
		}
		es_http_begin(st);
		ph = ES_HTTP_P_METHOD;
	}
	if (st->pos != 0xffffffffU)
		st->pos++;
	if (ph <= ES_HTTP_P_VALUE && cfg->window && st->pos > cfg->window &&
	    !(st->flags & ES_HTTP_F_WINDOW)) {
		st->flags |= ES_HTTP_F_WINDOW;
		ev = ES_HTTP_EV_WINDOW;
	}
	if (c == '\r' && ph >= ES_HTTP_P_RL_END) {
		st->cr = 1;
		return ev;
	}
	st->cr = 0;
	if (ph == ES_HTTP_P_LINE && es_http_tchar(c)) {
		/* a header name starts; es_http_name_end drops unconfigured names */
		st->match = 0xffff;
		st->npos = 0;
		st->phase = ES_HTTP_P_NAME;
		ph = ES_HTTP_P_NAME;
	}

	switch (ph) {
	case ES_HTTP_P_METHOD:
		/* what nginx accepts; anything else is not a request line */
		if ((c >= 'A' && c <= 'Z') || c == '-' || c == '_') {
			if (st->npos >= ES_HTTP_METHOD_MAX)
				return ev | es_http_dead(st, ES_HTTP_ERR_NOT_HTTP);
			if (st->kpos == st->npos && es_http_kc(ES_HTTP_K_CONNECT, 0, 0, st->npos) == c)
				st->kpos++;
			if (!st->npos && c == 'H')
				st->flags |= ES_HTTP_F_HEAD;
			st->npos++;
			return ev;
		}
		if (c != ' ' || !st->npos)
			return ev | es_http_dead(st, ES_HTTP_ERR_NOT_HTTP);
		if (st->npos == 7 && st->kpos == 7)
			st->flags |= ES_HTTP_F_CONNECT;
		if (st->npos != 4)
			st->flags &= ~ES_HTTP_F_HEAD;
		st->npos = 0;
		st->kpos = 0;
		st->phase = ES_HTTP_P_TARGET;
		return ev;
	case ES_HTTP_P_TARGET:
		if (c > ' ' && c != 0x7f) {
			st->npos = 1;
			return ev;
		}
		if (c != ' ' || !st->npos)
			return ev | es_http_dead(st, ES_HTTP_ERR_NOT_HTTP);
		st->npos = 0;
		st->phase = ES_HTTP_P_VERSION;
		return ev;
	case ES_HTTP_P_VERSION:
		if (st->npos < 7) {
			if (es_http_kc(ES_HTTP_K_VERSION, 0, 0, st->npos) != c)
				return ev | es_http_dead(st, ES_HTTP_ERR_NOT_HTTP);
			st->npos++;
			return ev;
		}
		if (c == '0')
			st->flags |= ES_HTTP_F_HTTP10;
		else if (c != '1')
			return ev | es_http_dead(st, ES_HTTP_ERR_NOT_HTTP);
		st->phase = ES_HTTP_P_RL_END;
		return ev;
	case ES_HTTP_P_RL_END:
		if (c != '\n')
			return ev | es_http_dead(st, ES_HTTP_ERR_NOT_HTTP);
		st->line_len = st->pos;
		st->phase = ES_HTTP_P_LINE;
		return ev | ES_HTTP_EV_REQLINE;
	case ES_HTTP_P_LINE:
		if (c == '\n')
			return ev | es_http_head_end(st);
		/* a blank here is obs-fold, which RFC 9112 lets a server reject */
		return ev | es_http_dead(st, ES_HTTP_ERR_MALFORMED);
	case ES_HTTP_P_NAME:
		if (es_http_tchar(c)) {
			es_http_name_byte(st, cfg, c);
			return ev;
		}
		if (c != ':')
			return ev | es_http_dead(st, ES_HTTP_ERR_MALFORMED);
		es_http_name_end(st, cfg);
		st->phase = ES_HTTP_P_VALUE;
		return ev;
	case ES_HTTP_P_VALUE:
		if (c == '\n')
			return ev | es_http_value_end(st);
		return ev | es_http_value_byte(st, cfg, c);
	case ES_HTTP_P_CHUNK_SIZE:
		d = es_http_hex(c);
		if (d >= 0) {
			if (st->num >> 56)
				return es_http_dead(st, ES_HTTP_ERR_TOO_BIG);
			st->num = st->num << 4 | (__u64)d;
			st->npos = 1;
			return 0;
		}
		if (!st->npos)
			return es_http_dead(st, ES_HTTP_ERR_FRAMING);
		if (c == '\n')
			return es_http_chunk_line_end(st);
		if (c == ';' || es_http_ows(c)) {
			st->phase = ES_HTTP_P_CHUNK_EXT;
			return 0;
		}
		return es_http_dead(st, ES_HTTP_ERR_FRAMING);
	case ES_HTTP_P_CHUNK_EXT:
		return c == '\n' ? es_http_chunk_line_end(st) : 0;
	case ES_HTTP_P_CHUNK_END:
		if (c != '\n')
			return es_http_dead(st, ES_HTTP_ERR_FRAMING);
		st->phase = ES_HTTP_P_CHUNK_SIZE;
		st->num = 0;
		st->npos = 0;
		return 0;
	case ES_HTTP_P_TRAILER_START:
		if (c == '\n') {
			st->phase = ES_HTTP_P_IDLE;
			return ES_HTTP_EV_DONE;
		}
		st->phase = ES_HTTP_P_TRAILER;
		return 0;
	default: /* ES_HTTP_P_TRAILER: trailer fields are skipped */
		if (c == '\n')
			st->phase = ES_HTTP_P_TRAILER_START;
		return 0;
	}
}

/*
 * Runs: bytes that change nothing in the state but the position. Parsers take
 * them in bulk (a scan for the byte that ends the run, no state machine per
 * byte), with exactly the state that feeding them one by one leaves (the
 * unit tests and the fuzzer compare the two):
 *  - ES_HTTP_RUN_VALUE: the value of a header nothing is read from: every
 *    byte but CR and LF;
 *  - ES_HTTP_RUN_NAME: a header name no configured or built-in name can still
 *    match (decided by its first byte or the few after it): tchar bytes;
 *  - ES_HTTP_RUN_TARGET: the request target: bytes above ' ' but DEL;
 *  - ES_HTTP_RUN_METHOD: the method after its first byte, once it is no
 *    longer a prefix of CONNECT: the method's characters, up to its limit;
 *  - ES_HTTP_RUN_VERSION: the request line's "HTTP/1.": the bytes that match;
 *  - ES_HTTP_RUN_LIT_NAME: a header name that still matches exactly one
 *    configured or built-in name: the bytes that go on matching that name,
 *    case-insensitively (the env header's name after its first byte).
 * A run never crosses the window (the byte that does raises an event).
 */
enum {
	ES_HTTP_RUN_NONE = 0,
	ES_HTTP_RUN_VALUE,
	ES_HTTP_RUN_NAME,
	ES_HTTP_RUN_TARGET,
	ES_HTTP_RUN_METHOD,
	ES_HTTP_RUN_VERSION,
	ES_HTTP_RUN_LIT_NAME,
};

/* A run about to be taken: its kind, and for VERSION and LIT_NAME the
 * literal its bytes must match (packed like ES_HTTP_PACK, 0 past its end),
 * loaded once per run instead of once per byte. */
struct es_http_run {
	__u64 lit[4];
	__u32 at;  /* index in the literal of the run's first byte */
	__u32 end; /* the literal's length */
	int kind;
};

/* Byte i of a literal; 0 past its end (es_http_kc, with a fourth word). */
ES_INLINE __u8 es_http_lit(const __u64 *lit, __u32 i)
{
	if (i < 24)
		return es_http_kc(lit[0], lit[1], lit[2], i);
	return i < 32 ? (__u8)(lit[3] >> ((i - 24) * 8)) : 0;
}

/* A configured name (lower case, zero-padded) as a literal: packed
 * little-endian, as the BPF target and x86 store it (test_http.cpp pins the
 * layout this needs). */
ES_INLINE void es_http_lit_load(__u64 *lit, const char *name)
{
#ifdef __bpf__
	/* names[] begins the map value: 8-byte aligned, four words per name
	 * (a byte-wise copy would be 32 loads) */
	const __u64 *w = (const __u64 *)(const void *)name;

	lit[0] = w[0];
	lit[1] = w[1];
	lit[2] = w[2];
	lit[3] = w[3];
#else
	__builtin_memcpy(lit, name, ES_HTTP_NAME_MAX);
#endif
}

/* The kind of run the next bytes may be taken in (ES_HTTP_RUN_NONE: feed
 * them); fills run (cfg NULL: the kind alone, no configured literal). */
ES_INLINE int es_http_run_start(const struct es_http_state *st, const struct es_http_cfg *cfg,
				struct es_http_run *run)
{
	__u16 m = st->match;
	int kind = ES_HTTP_RUN_NONE, k;

	run->lit[0] = run->lit[1] = run->lit[2] = run->lit[3] = 0;
	run->at = st->npos;
	run->end = 0;
	if (st->cr) {
		kind = ES_HTTP_RUN_NONE;
	} else if (st->phase == ES_HTTP_P_VALUE) {
		kind = st->hdr == ES_HTTP_H_NONE ? ES_HTTP_RUN_VALUE : ES_HTTP_RUN_NONE;
	} else if (st->phase == ES_HTTP_P_NAME) {
		if (!m) {
			kind = ES_HTTP_RUN_NAME;
		} else if (!(m & (m - 1))) {
			/* one name left: the rest of it is a literal */
			kind = ES_HTTP_RUN_LIT_NAME;
			if (!cfg) {
				/* the kind alone (es_http_feeds_next) */
			} else if (m & ((1U << ES_HTTP_MAX_NAMES) - 1)) {
				for (k = 0; k < ES_HTTP_MAX_NAMES - 1 && !(m & (1U << k)); k++)
					;
				es_http_lit_load(run->lit, cfg->names[k]);
				run->end = cfg->name_len[k];
			} else {
				run->end = ES_HTTP_NAME_MAX; /* a built-in: ends at its 0 */
			}
			if (m == ES_HTTP_M_CL) {
				run->lit[0] = ES_HTTP_K_CL0;
				run->lit[1] = ES_HTTP_K_CL1;
			} else if (m == ES_HTTP_M_TE) {
				run->lit[0] = ES_HTTP_K_TE0;
				run->lit[1] = ES_HTTP_K_TE1;
				run->lit[2] = ES_HTTP_K_TE2;
			} else if (m == ES_HTTP_M_BAGGAGE) {
				run->lit[0] = ES_HTTP_K_BAGGAGE;
			} else if (m == ES_HTTP_M_H2C) {
				run->lit[0] = ES_HTTP_K_H2S0;
				run->lit[1] = ES_HTTP_K_H2S1;
			} else if (m == ES_HTTP_M_UPGRADE) {
				run->lit[0] = ES_HTTP_K_UPGRADE;
			}
		}
	} else if (st->phase == ES_HTTP_P_TARGET) {
		kind = ES_HTTP_RUN_TARGET;
	} else if (st->phase == ES_HTTP_P_METHOD) {
		/* the first byte was fed (it began the request); CONNECT is
		 * followed byte by byte */
		kind = st->kpos != st->npos ? ES_HTTP_RUN_METHOD : ES_HTTP_RUN_NONE;
	} else if (st->phase == ES_HTTP_P_VERSION && st->npos < 7) {
		kind = ES_HTTP_RUN_VERSION;
		run->lit[0] = ES_HTTP_K_VERSION;
		run->end = 7;
	}
	run->kind = kind;
	return kind;
}

/* 1 when the next byte is fed, not taken in a run (es_http_run_start), and
 * is no request boundary or body. The BPF byte loops go on feeding bytes
 * within one step while it holds (the env value, line ends, the version's
 * digits, the first byte of a name). */
ES_INLINE int es_http_feeds_next(const struct es_http_state *st)
{
	struct es_http_run run;

	return st->phase != ES_HTTP_P_IDLE && st->phase < ES_HTTP_P_BODY &&
	       es_http_run_start(st, (const struct es_http_cfg *)0, &run) == ES_HTTP_RUN_NONE;
}

/* 1 when byte c, the k-th from the run's start, continues it. */
ES_INLINE int es_http_run_byte(const struct es_http_run *run, __u32 k, __u8 c)
{
	__u8 e;

	switch (run->kind) {
	case ES_HTTP_RUN_VALUE:
		return c != '\r' && c != '\n';
	case ES_HTTP_RUN_NAME:
		return es_http_tchar(c);
	case ES_HTTP_RUN_TARGET:
		return c > ' ' && c != 0x7f;
	case ES_HTTP_RUN_METHOD:
		return ((c >= 'A' && c <= 'Z') || c == '-' || c == '_') &&
		       run->at + k < ES_HTTP_METHOD_MAX;
	case ES_HTTP_RUN_VERSION:
		e = es_http_lit(run->lit, run->at + k);
		return run->at + k < run->end && c == e;
	default: /* ES_HTTP_RUN_LIT_NAME: names have no byte 0 */
		e = es_http_lit(run->lit, run->at + k);
		return run->at + k < run->end && e && es_http_lower(c) == e;
	}
}

/* The longest run allowed now: the byte past the window is fed on its own. */
ES_INLINE __u32 es_http_run_max(const struct es_http_state *st, const struct es_http_cfg *cfg)
{
	if (!cfg->window || (st->flags & ES_HTTP_F_WINDOW))
		return 0xffffffffU;
	return st->pos < cfg->window ? cfg->window - st->pos : 0;
}

/* Takes n bytes of a run of that kind (n within es_http_run_max). */
ES_INLINE void es_http_run_take(struct es_http_state *st, int kind, __u32 n)
{
	__u64 p = (__u64)st->pos + n;
	__u32 t;

	st->pos = p > 0xffffffffULL ? 0xffffffffU : (__u32)p;
	if (kind == ES_HTTP_RUN_TARGET) {
		st->npos = 1;
	} else if (kind != ES_HTTP_RUN_VALUE) {
		/* the name, method or version position */
		t = (__u32)st->npos + n;
		st->npos = t > 255 ? 255 : (__u8)t;
	}
	st->ev = 0;
}

/*
 * In BPF the verifier must see every field of the state as an unknown value
 * loaded from memory: a value the compiler kept in a register from the last
 * byte (the phase, the events) would be an exact constant, each path would
 * carry a different one, and their states would never merge.
 */
#ifdef __bpf__
#define ES_HTTP_FORGET() __asm__ __volatile__("" ::: "memory")
#else
#define ES_HTTP_FORGET() ((void)0)
#endif

/* Feeds one byte; returns ES_HTTP_EV_* bits (0 for most bytes). */
ES_INLINE int es_http_feed(struct es_http_state *st, const struct es_http_cfg *cfg, __u8 c)
{
	ES_HTTP_FORGET();
	st->ev = (__u8)es_http_step(st, cfg, c);
	ES_HTTP_FORGET();
	return st->ev;
}

/*
 * Feeds buf[0..len) (user space; BPF callers loop over es_http_feed), taking
 * body bytes and runs in bulk. Stops after the first byte whose events meet stop, or
 * after NOT_HTTP. Returns the OR of the events; *used (if set) gets the bytes
 * consumed.
 */
ES_INLINE int es_http_feed_buf(struct es_http_state *st, const struct es_http_cfg *cfg,
			       const void *buf, __u32 len, int stop, __u32 *used)
{
	const __u8 *p = (const __u8 *)buf;
	struct es_http_run run;
	__u32 i = 0, k, max;
	__u64 n;
	int ev, kind, all = 0;

	while (i < len) {
		n = es_http_skippable(st);
		kind = es_http_run_start(st, cfg, &run);
		if (n > 1) {
			if (n > len - i)
				n = len - i;
			ev = es_http_skip(st, n);
			i += (__u32)n;
		} else if (kind && (max = es_http_run_max(st, cfg)) > 0 && es_http_run_byte(&run, 0, p[i])) {
			for (k = 1; k < len - i && k < max && es_http_run_byte(&run, k, p[i + k]); k++)
				;
			es_http_run_take(st, kind, k);
			i += k;
			continue;
		} else {
			ev = es_http_feed(st, cfg, p[i]);
			i++;
		}
		all |= ev;
		if (ev & (stop | ES_HTTP_EV_NOT_HTTP))
			break;
	}
	if (used)
		*used = i;
	return all;
}

/* Feeds a whole buffer; the state then describes the last request in it. */
ES_INLINE int es_http_parse_buf(struct es_http_state *st, const struct es_http_cfg *cfg,
				const void *buf, __u32 len)
{
	return es_http_feed_buf(st, cfg, buf, len, 0, (__u32 *)0);
}

#endif
