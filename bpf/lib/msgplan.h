/* SPDX-License-Identifier: Apache-2.0 */
/*
 * What the sk_msg program (outbound.h: es_msg) does with a send once its byte
 * loops have stopped: how many bytes of the message the verdict covers and
 * what changes for the connection (refused, held, rewound to a pipelined
 * request, unroutable, unframed). A pure function of the parser's and the
 * program's variables, with no helper calls and no writes to anything but its
 * result, so that it is unit tested (tests/unit/test_msgplan.cpp) like the
 * parser; outbound.h applies the plan. Shared by the BPF program, the unit
 * tests and the fuzzer.
 */
#ifndef ENVSTEER_MSGPLAN_H
#define ENVSTEER_MSGPLAN_H

#include "http.h"

/* Sends are looked at in pieces of this size (bpf_msg_pull_data copies when a
 * piece spans pages); a head is held over sends while the message is shorter
 * than the parse window plus this. */
#define ES_PULL 1024

/* A verdict that does not cover its whole message makes the kernel run the
 * program again at once on the rest (es_tx.rest bytes). A redirect to the
 * relay's receive queue can deliver less than it covers (bpf_tcp_ingress
 * charges the relay socket's receive memory per scatterlist element: under
 * memory pressure the charge fails after the first ones), and the kernel then
 * runs the program on the undelivered rest too: bytes the parser has seen. A
 * run is one of these, told apart by the size of its message. */
enum {
	ES_RUN_FRESH = 0, /* new bytes (no rest expected, or a new send after a failed one) */
	ES_RUN_REST,	  /* the rest of the last verdict's message, as expected: parsed */
	ES_RUN_CARRY,	  /* ... whose first es_tx.carry bytes are parsed already: they go
			   * where the frame they were cut from went */
	ES_RUN_PARTLY,	  /* more than the rest: part of what the last verdict covered came
			   * back (delivered in part); never parsed again: the connection fails */
};

ES_INLINE int es_msg_run_kind(__u32 rest, __u8 carry, __u32 size)
{
	if (!rest || size < rest)
		return ES_RUN_FRESH;
	if (size > rest)
		return ES_RUN_PARTLY;
	return carry ? ES_RUN_CARRY : ES_RUN_REST;
}

/* A relay frame of one scatterlist element is delivered whole or not at all. */
#define ES_RELAY_ONE_ELEM (4096 - ES_RELAY_HDR_LEN)

/* How a frame for the relay of the message's first len bytes (of size) is
 * cut, so that a part delivered always shows in the next run (es_msg_run_kind):
 * a frame that leaves a rest shows it by a longer rest; one that takes the
 * whole message is pulled into one element (*pull) when that is at most a
 * page, else it leaves its last byte to a run of its own (*carry), whose frame
 * is small enough to pull. Returns the payload bytes framed now. */
ES_INLINE __u32 es_relay_frame_cut(__u32 len, __u32 size, __u8 *pull, __u8 *carry)
{
	*pull = 0;
	*carry = 0;
	if (len < size)
		return len;
	if (len <= ES_RELAY_ONE_ELEM) {
		*pull = 1;
		return len;
	}
	*carry = 1;
	return len - 1;
}

/* What the program knows of a send after its byte loops. */
struct es_msg_state {
	__u32 off;	 /* es_msg_vars.off: the next byte not parsed */
	__u32 size;	 /* es_msg_vars.size */
	__s32 req_begin; /* es_msg_vars.req_begin: the request in progress began here; -1 earlier */
	__u32 window;	 /* es_http_cfg.window */
	__u8 phase;	 /* the parser's phase (ES_HTTP_P_*) */
	__u8 tunnel;	 /* the parser stopped at a tunnel (ES_HTTP_ERR_TUNNEL) */
	__u8 upgrade;	 /* es_tx.upgrade */
	__u8 pipelined;	 /* es_tx.pipelined */
	__u8 route_kind; /* es_tx.route.kind: the request in progress */
	__u8 refused;	 /* a head in this send was refused (es_msg_refuses_head) */
	__u8 second_head; /* after the first head, the byte loop stopped at another */
	__u8 hint;	 /* the connection's pod was chosen by a hint (ES_STEER_F_HINT): not the
			  * caller's own, so nothing may go there unrouted */
	__u8 decided;	 /* a request head of the connection was routed before (es_tx.run_reqs) */
	__u8 pad[3];
};

/* What changes, applied in this order by outbound.h (es_msg_apply). */
enum {
	ES_MSG_A_REWIND = 0x01,	     /* the parser back to the boundary before the request at covered */
	ES_MSG_A_PIPELINED = 0x02,   /* that request is decided in a run of its own (es_tx.pipelined) */
	ES_MSG_A_REFUSE = 0x04,	     /* the connection is refused from here: route FAIL, parser dead,
				      * not pipelined (req_pipeline_refused) */
	ES_MSG_A_FAIL_MSG = 0x08,    /* the bytes of this verdict fail too */
	ES_MSG_A_FOLLOW = 0x10,	     /* unframed bytes follow the request before them (its route) */
	ES_MSG_A_UNFRAMED_FAIL = 0x20, /* unframed bytes after a re-routed request: fail, and the
					* rest of the connection (req_unframed_failed) */
	ES_MSG_A_UNROUTABLE = 0x40,  /* a head too long to hold: it goes, head and body, to the
				      * connection's own pod (req_head_unroutable) */
	ES_MSG_A_CORK = 0x80,	     /* hold the whole message until the next send (req_head_corked);
				      * no verdict */
	ES_MSG_A_HINT_REFUSED = 0x100, /* with a refusal on a hinted connection: counted (hint_refused),
					* the hint dropped (the pod's next connect takes its own set) */
};

struct es_msg_plan {
	__u32 covered; /* bytes 0..covered of the message get this run's verdict */
	__u32 act;     /* ES_MSG_A_* */
};

/* A request head whose route is not the route of the bytes before it in this
 * message (it began after them, or it was pipelined after a request of an
 * earlier run) is refused: its response could overtake the earlier one's. */
ES_INLINE int es_msg_refuses_head(__s32 req_begin, __u8 pipelined, int same_route)
{
	return (req_begin > 0 || pipelined) && !same_route;
}

/* Bytes the parser cannot frame (and no tunnel of an Upgrade or CONNECT
 * follows them): they may go only where the request before them went when
 * that was the connection's own pod (or nowhere, after a failure); after a
 * re-routed request they fail. */
ES_INLINE __u32 es_msg_unframed_act(__u8 tunnel, __u8 upgrade, __u32 route_kind, __u8 open_hint)
{
	/* no request routed yet on a connection a hint made: its pod is not
	 * the caller's, and these bytes name no environment */
	if (open_hint)
		return ES_MSG_A_UNFRAMED_FAIL | ES_MSG_A_HINT_REFUSED;
	if (tunnel || upgrade)
		return 0;
	if (route_kind == ES_ROUTE_PASS || route_kind == ES_ROUTE_FAIL)
		return ES_MSG_A_FOLLOW;
	return ES_MSG_A_UNFRAMED_FAIL;
}

/* A request head that continues in a later send (its route is unknown yet). */
ES_INLINE void es_msg_plan_open_head(const struct es_msg_state *s, struct es_msg_plan *p)
{
	if (s->req_begin > 0) {
		/* it follows another request in this send: pipelined, decided
		 * from its first byte like a second head (and the held message
		 * it becomes still names this run's redirect target in
		 * msg->sk_redir: only the same route may use it) */
		p->covered = (__u32)s->req_begin;
		p->act = ES_MSG_A_REWIND | ES_MSG_A_PIPELINED;
	} else if (s->size < s->window + ES_PULL) {
		/* held until the next send, then parsed again */
		p->act = ES_MSG_A_REWIND | ES_MSG_A_CORK;
	} else if (s->pipelined && s->route_kind != ES_ROUTE_PASS) {
		/* too long to hold, and pipelined after a request that did not
		 * go out on the connection: the connection's own pod is another
		 * target, refused like a second head (this message may still
		 * name that request's redirect target: it must not pass) */
		p->act = ES_MSG_A_REFUSE | ES_MSG_A_FAIL_MSG;
	} else if (s->hint) {
		/* too long to hold, on a connection a hint made: its own pod is
		 * not the caller's fallback, refused */
		p->act = ES_MSG_A_REFUSE | ES_MSG_A_FAIL_MSG | ES_MSG_A_HINT_REFUSED;
	} else {
		/* too long to hold: the connection's own pod (its env is not
		 * known yet) */
		p->act = ES_MSG_A_UNROUTABLE;
	}
}

/* The plan for a send whose byte loops stopped in state s. */
ES_INLINE void es_msg_decide(const struct es_msg_state *s, struct es_msg_plan *p)
{
	int inert = s->phase == ES_HTTP_P_DEAD;

	p->covered = 0;
	p->act = 0;
	if (s->refused) {
		/* the bytes before the refused request go out; the request and
		 * the rest of the connection are refused (EACCES on send),
		 * never answered out of order */
		p->act = ES_MSG_A_REFUSE;
		if (s->req_begin > 0)
			p->covered = (__u32)s->req_begin;
		else
			p->act |= ES_MSG_A_FAIL_MSG;
	} else if (s->second_head) {
		/* a second request head (pipelining): decided in a run of its
		 * own, from its first byte */
		if (s->req_begin > 0) {
			p->covered = (__u32)s->req_begin;
			p->act = ES_MSG_A_REWIND | ES_MSG_A_PIPELINED;
		} else {
			p->covered = s->off;
		}
	} else if (inert) {
		if (!s->tunnel && !s->upgrade && s->req_begin > 0)
			/* the parser gave up on a request that began in this
			 * message: the bytes before it go their way, it is
			 * decided next run */
			p->covered = (__u32)s->req_begin;
		else
			p->act = es_msg_unframed_act(s->tunnel, s->upgrade, s->route_kind,
						     s->hint && !s->decided);
	} else if (s->off < s->size) {
		/* more heads than one run decides: the rest next run */
		p->covered = s->off;
	} else if (s->phase >= ES_HTTP_P_METHOD && s->phase <= ES_HTTP_P_VALUE && s->req_begin >= 0) {
		es_msg_plan_open_head(s, p);
	}
	if (!p->covered || p->covered > s->size)
		p->covered = s->size;
}

#endif
