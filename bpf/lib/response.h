/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Response framing on an agent's upstream connection, followed in the kernel
 * by the sk_skb verdict program as the responses go by to their client, so
 * that when the server closes or resets the upstream the agent can tell from
 * what was sent and received (never from when) whether the client still waits
 * for something from it:
 *
 *   reqs   request heads the sk_msg program sent to the upstream in the
 *          kernel (the agent counts the ones it forwarded itself)
 *   done   final responses complete (1xx interim responses do not count)
 *   phase  IDLE between responses; else inside a response head, body, chunk
 *          or trailer; UNTIL_CLOSE in a body framed by the close (or after a
 *          101 upgrade); DEAD when the bytes did not frame as HTTP/1.x
 *          responses.
 *
 * The upstream is idle (es_rsp_idle) when phase is IDLE and every request has
 * its final response: nothing is owed to the client. Anything else: the client
 * may be waiting, and only resetting it ends the wait.
 *
 * Framing as a client does it (RFC 9112 6.3): 1xx, 204 and 304 have no body;
 * Transfer-Encoding with chunked last is chunked, any other Transfer-Encoding
 * and a response with neither header end with the close; else Content-Length.
 * One thing is not known here: that a response answers HEAD (no body despite a
 * Content-Length). After one the counts stop adding up (the next response is
 * taken for its body) and the upstream never looks idle again: its close then
 * resets the client - a visible failure, never a hang.
 *
 * Bytes are fed one at a time where they decide something (es_rsp_feed);
 * bodies are taken in bulk (es_rsp_skippable / es_rsp_skip). The agent also
 * takes runs of head bytes that only move the position in bulk
 * (es_rsp_run_kind, es_rsp_feed_buf); the BPF follower feeds head bytes
 * several per loop step instead (es_rsp_step: a step per byte run cost more
 * than feeding the bytes). Shared by the BPF program, the agent and the unit
 * tests.
 */
#ifndef ENVSTEER_RESPONSE_H
#define ENVSTEER_RESPONSE_H

#include "http.h"

/* struct es_rsp, the pinned map es_rsp: maps/abi.h. */

enum {
	ES_RSP_P_IDLE = 0,
	ES_RSP_P_STATUS,
	ES_RSP_P_NAME, /* a header name, or the blank line that ends the head */
	ES_RSP_P_VALUE,
	ES_RSP_P_CHUNK_SIZE,
	ES_RSP_P_CHUNK_EXT,
	ES_RSP_P_CHUNK_END, /* the line end after a chunk's data */
	ES_RSP_P_TRAILER,
	ES_RSP_P_BODY,	      /* from here on: bytes taken in bulk */
	ES_RSP_P_CHUNK_DATA,
	ES_RSP_P_UNTIL_CLOSE, /* framed by the close, or a tunnel after 101 */
	ES_RSP_P_DEAD,
};

enum es_rsp_err {
	ES_RSP_ERR_NONE = 0,
	ES_RSP_ERR_STATUS,  /* not an HTTP/1.x status line */
	ES_RSP_ERR_HEADER,  /* bad header syntax (no colon, obs-fold, blank in a name) */
	ES_RSP_ERR_FRAMING, /* bad or conflicting Content-Length, bad chunk line */
};

#define ES_RSP_EV_DONE 0x01    /* a final response ended with this byte */
#define ES_RSP_EV_INTERIM 0x02 /* a 1xx response ended (its request waits on) */
#define ES_RSP_EV_DEAD 0x04

#define ES_RSP_M_CL 0x01 /* the name still matches content-length */
#define ES_RSP_M_TE 0x02 /* ... transfer-encoding */
#define ES_RSP_H_NONE 0
#define ES_RSP_H_CL 1
#define ES_RSP_H_TE 2

#define ES_RSP_F_CL 0x01      /* a Content-Length was read (in left) */
#define ES_RSP_F_TE 0x02      /* a Transfer-Encoding was read */
#define ES_RSP_F_CHUNKED 0x04 /* its last coding is chunked */
#define ES_RSP_F_TOKOK 0x08   /* the coding being read still matches chunked */

/* 1 when nothing is owed on the upstream: no response under way and every
 * request sent (in the kernel, plus slow by the agent) has its final response. */
ES_INLINE int es_rsp_idle(const struct es_rsp *r, __u64 slow)
{
	return r->phase == ES_RSP_P_IDLE && r->reqs + slow == r->done;
}

/* 1 when a run of `reqs` requests sent to an upstream that had completed
 * `base` responses when the run began may still be waiting for a response:
 * one is under way, or fewer than reqs came. r NULL: the upstream is closed
 * (the agent resets the client of an upstream closed while it owes
 * something, so a closed one owes nothing here). */
ES_INLINE int es_rsp_run_owes(const struct es_rsp *r, __u64 base, __u32 reqs)
{
	if (!r)
		return 0;
	return r->phase != ES_RSP_P_IDLE || r->done < base + reqs;
}

/* 1 when the responses to the requests sent on a connection to its own pod
 * may not all have arrived: one is under way, or fewer than the requests
 * counted came. r NULL: they are not followed, so nothing is proven. */
ES_INLINE int es_rsp_own_owes(const struct es_rsp *r)
{
	if (!r)
		return 1;
	return r->phase != ES_RSP_P_IDLE || r->done < r->reqs;
}

ES_INLINE int es_rsp_dead(struct es_rsp *r, __u8 why)
{
	r->phase = ES_RSP_P_DEAD;
	r->err = why;
	return ES_RSP_EV_DEAD;
}

ES_INLINE int es_rsp_final(struct es_rsp *r)
{
	r->done++;
	r->phase = ES_RSP_P_IDLE;
	r->status = 0;
	r->flags = 0;
	r->pos = 0;
	r->hdr = 0;
	r->sub = 0;
	r->num = 0;
	r->left = 0;
	return ES_RSP_EV_DONE;
}

/* Bytes that may be taken at once: the rest of a body or chunk; everything
 * once the response ends with the close or the tracker gave up. */
ES_INLINE __u64 es_rsp_skippable(const struct es_rsp *r)
{
	if (r->phase == ES_RSP_P_BODY || r->phase == ES_RSP_P_CHUNK_DATA)
		return r->left;
	if (r->phase >= ES_RSP_P_UNTIL_CLOSE)
		return ~0ULL;
	return 0;
}

/* Takes n <= es_rsp_skippable() bytes. */
ES_INLINE int es_rsp_skip(struct es_rsp *r, __u64 n)
{
	r->bytes += n;
	if (r->phase != ES_RSP_P_BODY && r->phase != ES_RSP_P_CHUNK_DATA)
		return 0;
	if (n > r->left)
		n = r->left;
	r->left -= n;
	if (r->left)
		return 0;
	if (r->phase == ES_RSP_P_BODY)
		return es_rsp_final(r);
	r->phase = ES_RSP_P_CHUNK_END;
	return 0;
}

/* The blank line ended a head: the framing of what follows. */
ES_INLINE int es_rsp_head_end(struct es_rsp *r)
{
	__u16 s = r->status;

	if (s < 200) {
		if (s == 101) { /* upgraded: a tunnel until the close */
			r->phase = ES_RSP_P_UNTIL_CLOSE;
			return 0;
		}
		r->phase = ES_RSP_P_IDLE; /* interim: the final response follows */
		r->status = 0;
		r->flags = 0;
		r->left = 0;
		return ES_RSP_EV_INTERIM;
	}
	if (s == 204 || s == 304)
		return es_rsp_final(r);
	if (r->flags & ES_RSP_F_TE) {
		if (r->flags & ES_RSP_F_CHUNKED) {
			r->phase = ES_RSP_P_CHUNK_SIZE;
			r->num = 0;
			r->sub = 0;
		} else {
			r->phase = ES_RSP_P_UNTIL_CLOSE;
		}
		return 0;
	}
	if (r->flags & ES_RSP_F_CL) {
		if (r->left == 0)
			return es_rsp_final(r);
		r->phase = ES_RSP_P_BODY;
		return 0;
	}
	r->phase = ES_RSP_P_UNTIL_CLOSE;
	return 0;
}

/* One element of a Content-Length list ended ("5" or "5, 5"). */
ES_INLINE int es_rsp_cl_commit(struct es_rsp *r)
{
	if (r->sub == 0 || ((r->flags & ES_RSP_F_CL) && r->left != r->num))
		return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
	r->left = r->num;
	r->flags |= ES_RSP_F_CL;
	r->num = 0;
	r->sub = 0;
	return 0;
}

/* One coding of a Transfer-Encoding list ended: the last one decides. */
ES_INLINE void es_rsp_te_commit(struct es_rsp *r)
{
	if (r->sub == 0)
		return;
	if ((r->flags & ES_RSP_F_TOKOK) && r->pos == 7)
		r->flags |= ES_RSP_F_CHUNKED;
	else
		r->flags &= (__u8)~ES_RSP_F_CHUNKED;
	r->sub = 0;
}

ES_INLINE int es_rsp_value_byte(struct es_rsp *r, __u8 c)
{
	int d;

	if (r->hdr == ES_RSP_H_CL) {
		if (c >= '0' && c <= '9') {
			if (r->sub == 2 || r->num >= ES_HTTP_CL_LIMIT)
				return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
			r->sub = 1;
			r->num = r->num * 10 + (c - '0');
			return 0;
		}
		if (es_http_ows(c)) {
			if (r->sub == 1)
				r->sub = 2;
			return 0;
		}
		if (c == ',')
			return es_rsp_cl_commit(r);
		return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
	}
	if (r->hdr == ES_RSP_H_TE) {
		if (c == ',') {
			es_rsp_te_commit(r);
			return 0;
		}
		if (es_http_ows(c)) {
			if (r->sub == 1)
				r->sub = 2;
			return 0;
		}
		if (r->sub == 0) {
			r->sub = 1;
			r->pos = 0;
			r->flags |= ES_RSP_F_TOKOK;
		}
		/* parameters, or more after a blank: not plain "chunked" */
		if (r->sub == 2 || c == ';') {
			r->sub = 2;
			r->flags &= (__u8)~ES_RSP_F_TOKOK;
			return 0;
		}
		d = r->pos < 7 && es_http_lower(c) == es_http_kc(ES_HTTP_K_CHUNKED, 0, 0, r->pos);
		if (!d)
			r->flags &= (__u8)~ES_RSP_F_TOKOK;
		if (r->pos < 255)
			r->pos++;
	}
	return 0;
}

ES_INLINE int es_rsp_value_end(struct es_rsp *r)
{
	int ev = 0;

	if (r->hdr == ES_RSP_H_CL) {
		ev = es_rsp_cl_commit(r);
		if (ev)
			return ev;
	} else if (r->hdr == ES_RSP_H_TE) {
		es_rsp_te_commit(r);
		r->flags |= ES_RSP_F_TE;
	}
	r->phase = ES_RSP_P_NAME;
	r->pos = 0;
	r->hdr = ES_RSP_M_CL | ES_RSP_M_TE;
	return 0;
}

ES_INLINE int es_rsp_name_byte(struct es_rsp *r, __u8 c)
{
	__u8 l = es_http_lower(c), p = r->pos;

	if (c == ':') {
		if (p == 0)
			return es_rsp_dead(r, ES_RSP_ERR_HEADER);
		if ((r->hdr & ES_RSP_M_CL) && p == 14)
			r->hdr = ES_RSP_H_CL;
		else if ((r->hdr & ES_RSP_M_TE) && p == 17)
			r->hdr = ES_RSP_H_TE;
		else
			r->hdr = ES_RSP_H_NONE;
		r->phase = ES_RSP_P_VALUE;
		r->sub = 0;
		r->num = 0;
		r->pos = 0;
		r->flags &= (__u8)~ES_RSP_F_TOKOK;
		return 0;
	}
	if (!es_http_tchar(c))
		return es_rsp_dead(r, ES_RSP_ERR_HEADER);
	if (p >= 14 || l != es_http_kc(ES_HTTP_K_CL0, ES_HTTP_K_CL1, 0, p))
		r->hdr &= (__u8)~ES_RSP_M_CL;
	if (p >= 17 || l != es_http_kc(ES_HTTP_K_TE0, ES_HTTP_K_TE1, ES_HTTP_K_TE2, p))
		r->hdr &= (__u8)~ES_RSP_M_TE;
	if (p < 255)
		r->pos = p + 1;
	return 0;
}

ES_INLINE int es_rsp_status_byte(struct es_rsp *r, __u8 c)
{
	__u8 p = r->pos;

	/* past 13 the position decides nothing: it stays there, so that the
	 * reason phrase is a run (es_rsp_run_kind) */
	if (p < 13)
		r->pos = p + 1;
	if (p < 7)
		return c == es_http_kc(ES_HTTP_K_VERSION, 0, 0, p) ? 0 : es_rsp_dead(r, ES_RSP_ERR_STATUS);
	if (p == 7)
		return c == '0' || c == '1' ? 0 : es_rsp_dead(r, ES_RSP_ERR_STATUS);
	if (p == 8)
		return c == ' ' ? 0 : es_rsp_dead(r, ES_RSP_ERR_STATUS);
	if (p <= 11) {
		if (c < '0' || c > '9')
			return es_rsp_dead(r, ES_RSP_ERR_STATUS);
		r->status = (__u16)(r->status * 10 + (c - '0'));
		return 0;
	}
	if (p == 12 && c != ' ')
		return es_rsp_dead(r, ES_RSP_ERR_STATUS);
	return 0; /* the reason phrase */
}

/* A line feed: the end of the current line. */
ES_INLINE int es_rsp_line_end(struct es_rsp *r)
{
	__u8 ph = r->phase;

	if (ph == ES_RSP_P_STATUS) {
		/* "HTTP/1.1 200" without a reason is taken too */
		if (r->pos < 12 || r->status < 100)
			return es_rsp_dead(r, ES_RSP_ERR_STATUS);
		r->phase = ES_RSP_P_NAME;
		r->pos = 0;
		r->hdr = ES_RSP_M_CL | ES_RSP_M_TE;
		return 0;
	}
	if (ph == ES_RSP_P_NAME) {
		if (r->pos)
			return es_rsp_dead(r, ES_RSP_ERR_HEADER);
		return es_rsp_head_end(r);
	}
	if (ph == ES_RSP_P_VALUE)
		return es_rsp_value_end(r);
	if (ph == ES_RSP_P_CHUNK_SIZE || ph == ES_RSP_P_CHUNK_EXT) {
		if (r->sub == 0)
			return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
		r->sub = 0;
		r->pos = 0;
		if (r->num == 0) {
			r->phase = ES_RSP_P_TRAILER;
			return 0;
		}
		r->left = r->num;
		r->phase = ES_RSP_P_CHUNK_DATA;
		return 0;
	}
	if (ph == ES_RSP_P_CHUNK_END) {
		r->phase = ES_RSP_P_CHUNK_SIZE;
		r->num = 0;
		r->sub = 0;
		return 0;
	}
	/* ES_RSP_P_TRAILER: a blank line ends the response */
	if (r->pos == 0)
		return es_rsp_final(r);
	r->pos = 0;
	return 0;
}

ES_INLINE int es_rsp_feed(struct es_rsp *r, __u8 c)
{
	__u8 ph = r->phase;
	int d;

	if (ph >= ES_RSP_P_BODY)
		return es_rsp_skip(r, 1);
	r->bytes++;
	/* line ends: LF, with or without the CR before it */
	if (c == '\r')
		return 0;
	if (c == '\n')
		return ph == ES_RSP_P_IDLE ? 0 : es_rsp_line_end(r);
	if (ph == ES_RSP_P_IDLE) {
		r->phase = ES_RSP_P_STATUS;
		r->pos = 0;
		r->status = 0;
		return es_rsp_status_byte(r, c);
	}
	if (ph == ES_RSP_P_STATUS)
		return es_rsp_status_byte(r, c);
	if (ph == ES_RSP_P_NAME)
		return es_rsp_name_byte(r, c);
	if (ph == ES_RSP_P_VALUE)
		return es_rsp_value_byte(r, c);
	if (ph == ES_RSP_P_CHUNK_SIZE) {
		d = es_http_hex(c);
		if (d >= 0) {
			if (r->sub == 2 || (r->num >> 56))
				return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
			r->sub = 1;
			r->num = (r->num << 4) | (__u64)d;
			return 0;
		}
		if (es_http_ows(c)) {
			if (r->sub == 1)
				r->sub = 2;
			return 0;
		}
		if (c == ';' && r->sub) {
			r->phase = ES_RSP_P_CHUNK_EXT;
			return 0;
		}
		return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
	}
	if (ph == ES_RSP_P_CHUNK_EXT)
		return 0;
	if (ph == ES_RSP_P_CHUNK_END)
		return es_rsp_dead(r, ES_RSP_ERR_FRAMING);
	/* ES_RSP_P_TRAILER */
	r->pos = 1;
	return 0;
}

#ifndef __bpf__
/*
 * Runs: head bytes that change nothing but the counts, taken in bulk with
 * exactly the state feeding them one by one leaves (unit tests and fuzz_http
 * compare the two):
 *  - ES_RSP_RUN_LINE: the rest of a line nothing is read from - a value of
 *    another header than the two framing ones, the reason phrase, a chunk
 *    extension, a trailer line after its first byte: every byte but LF (a CR
 *    changes nothing but the count anywhere in a head);
 *  - ES_RSP_RUN_NAME: a header name neither framing name can still match
 *    (Server, Date, Connection from its second byte on): tchar bytes;
 *  - ES_RSP_RUN_VERSION: the status line's "HTTP/1." after its first byte:
 *    the bytes that match it;
 *  - ES_RSP_RUN_CL, ES_RSP_RUN_TE: a name that still matches exactly one of
 *    the framing names (after its first byte): the bytes that go on
 *    matching it, case-insensitively.
 * Most head bytes of a typical response are in runs. User space only: the BPF
 * follower feeds head bytes several per loop step (outbound.h es_rsp_step).
 */
enum {
	ES_RSP_RUN_NONE = 0,
	ES_RSP_RUN_LINE,
	ES_RSP_RUN_NAME,
	ES_RSP_RUN_VERSION,
	ES_RSP_RUN_CL,
	ES_RSP_RUN_TE,
};

/* The kind of run the next bytes may be taken in (ES_RSP_RUN_NONE: feed them). */
ES_INLINE int es_rsp_run_kind(const struct es_rsp *r)
{
	__u8 ph = r->phase;

	if (ph == ES_RSP_P_VALUE)
		return r->hdr == ES_RSP_H_NONE ? ES_RSP_RUN_LINE : ES_RSP_RUN_NONE;
	if (ph == ES_RSP_P_NAME) {
		if (!r->pos)
			return ES_RSP_RUN_NONE;
		if (r->hdr == 0)
			return ES_RSP_RUN_NAME;
		if (r->hdr == ES_RSP_M_CL)
			return ES_RSP_RUN_CL;
		return r->hdr == ES_RSP_M_TE ? ES_RSP_RUN_TE : ES_RSP_RUN_NONE;
	}
	if (ph == ES_RSP_P_STATUS)
		return r->pos >= 13 ? ES_RSP_RUN_LINE : r->pos < 7 ? ES_RSP_RUN_VERSION : ES_RSP_RUN_NONE;
	if (ph == ES_RSP_P_CHUNK_EXT)
		return ES_RSP_RUN_LINE;
	if (ph == ES_RSP_P_TRAILER)
		return r->pos ? ES_RSP_RUN_LINE : ES_RSP_RUN_NONE;
	return ES_RSP_RUN_NONE;
}

/* 1 when byte c, the k-th from here, continues a run of that kind. */
ES_INLINE int es_rsp_run_byte(const struct es_rsp *r, int kind, __u32 k, __u8 c)
{
	if (kind == ES_RSP_RUN_LINE)
		return c != '\n';
	if (kind == ES_RSP_RUN_NAME)
		return es_http_tchar(c);
	k += r->pos;
	if (kind == ES_RSP_RUN_CL)
		return k < 14 && es_http_lower(c) == es_http_kc(ES_HTTP_K_CL0, ES_HTTP_K_CL1, 0, k);
	if (kind == ES_RSP_RUN_TE)
		return k < 17 && es_http_lower(c) == es_http_kc(ES_HTTP_K_TE0, ES_HTTP_K_TE1, ES_HTTP_K_TE2, k);
	return k < 7 && c == es_http_kc(ES_HTTP_K_VERSION, 0, 0, k);
}

/* Takes n bytes of a run of that kind. */
ES_INLINE void es_rsp_run_take(struct es_rsp *r, int kind, __u32 n)
{
	__u32 p;

	r->bytes += n;
	if (kind != ES_RSP_RUN_LINE) {
		p = (__u32)r->pos + n;
		r->pos = p > 255 ? 255 : (__u8)p;
	}
}

/* Feeds buf[0..len) (user space; the BPF program has its own loop,
 * es_rsp_step), bodies and runs in bulk. */
ES_INLINE int es_rsp_feed_buf(struct es_rsp *r, const void *buf, __u64 len)
{
	const __u8 *p = (const __u8 *)buf;
	__u64 i = 0, n, k;
	int all = 0, kind;

	while (i < len) {
		n = es_rsp_skippable(r);
		kind = es_rsp_run_kind(r);
		if (n) {
			if (n > len - i)
				n = len - i;
			all |= es_rsp_skip(r, n);
			i += n;
		} else if (kind && es_rsp_run_byte(r, kind, 0, p[i])) {
			for (k = 1; k < len - i && k < 0xffffffffULL && es_rsp_run_byte(r, kind, (__u32)k, p[i + k]); k++)
				;
			es_rsp_run_take(r, kind, (__u32)k);
			i += k;
		} else {
			all |= es_rsp_feed(r, p[i]);
			i++;
		}
	}
	return all;
}
#endif

#endif
