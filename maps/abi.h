/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envsteer kernel/user ABI: the one definition of every map key and value,
 * included by the BPF programs and by the C++ agent. Plain __u32/__u64
 * structs with explicit padding, so both compilers agree on the layout.
 *
 * Bump ES_ABI_VERSION whenever a layout below changes: a new agent refuses to
 * adopt pinned maps of another ABI version instead of misreading them.
 */
#ifndef ENVSTEER_ABI_H
#define ENVSTEER_ABI_H

#ifndef __bpf__
#include <linux/types.h>
#endif

#define ES_ABI_VERSION 9

/* An environment name: a Kubernetes label value, at most 63 bytes. */
#define ES_ENV_NAME_MAX 64
/* 63 bytes hold at most 32 one-letter segments: the longest parent chain. */
#define ES_MAX_ENV_DEPTH 32
/* Deepest cgroup v2 level at which a pod's cgroup may sit. */
#define ES_MAX_CGROUP_LEVEL 32

/* Environment ids. 0 never names an environment. */
#define ES_ENV_NONE 0
/* The unnamed base environment of unlabelled pods when no default-env is set. */
#define ES_ENV_BASE 1

#define ES_FAMILY_INET 4
#define ES_FAMILY_INET6 6

/* Service frontend: a ClusterIP:port/protocol that connect() may target.
 * IPv4 addresses use addr[0] only, the rest is zero. Port in network order. */
struct es_frontend_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 family; /* ES_FAMILY_INET or ES_FAMILY_INET6 */
};

struct es_frontend {
	__u32 svc_id; /* frontend id, names backend sets */
	__u32 flags;  /* ES_FE_F_* */
};

/* The Service says each connection carries one request (annotation
 * envsteer.io/connection-per-request: "true"): connect() may then follow the
 * calling thread's request environment. Without it connect() uses the calling
 * pod's own environment, because a pooled connection outlives the request that
 * opened it (HTTP/1.x requests are re-routed one by one anyway). */
#define ES_FE_F_CONN_PER_REQUEST 0x1
/* The port is declared HTTP/2 (appProtocol kubernetes.io/h2c or grpc, or a port
 * name grpc, grpc-*, http2, h2c): its streams can be routed one by one. */
#define ES_FE_F_H2 0x2
/* The frontend has ready pods in more than one backend set (environment). */
#define ES_FE_F_MULTI_SET 0x4

/* Ready backends of one frontend in one environment. */
struct es_set_key {
	__u32 svc_id;
	__u32 env_id;
};

struct es_set {
	__u32 count; /* slots 0..count-1 are filled */
	__u32 pad;
};

struct es_slot_key {
	__u32 svc_id;
	__u32 env_id;
	__u32 slot;
};

struct es_backend {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family;
	__u8 flags; /* ES_BE_F_*; not part of the backend's identity (its address is) */
};

/* es_backend.flags: the backend is a pod of this node with the thread
 * context, which reads requests on arrival: a sender hands it its parse
 * (es_hocache). Other receivers get no records (they would never take them,
 * and would push the ones that are taken out of the cache). */
#define ES_BE_F_LOCAL_CTX 0x1

/* Environment by id: the parent link is what connect() walks. */
struct es_env {
	__u32 parent_id; /* ES_ENV_NONE at the top */
	__u16 depth;     /* 0 for a one-segment name */
	__u16 len;       /* bytes of name (NUL-padded) */
	char name[ES_ENV_NAME_MAX];
};

/* Environment id by name (header lookups walk unknown names by prefix). */
struct es_env_name {
	char name[ES_ENV_NAME_MAX];
};

/* A managed (local) pod, keyed by its cgroup v2 id. */
struct es_pod {
	__u32 env_id; /* the pod's own environment */
	__u32 flags;  /* ES_POD_F_* */
};

#define ES_POD_F_LABELLED 0x1  /* the pod carries the env label (auto-inject applies) */
#define ES_POD_F_THREAD_CTX 0x2 /* envsteer.io/thread-context: "on" (thread-per-request) */

/* Settings the programs read at run time (single-entry array). */
struct es_config {
	__u32 abi_version;
	__u32 default_env_id; /* final fallback; ES_ENV_BASE when no default-env */
	__u32 min_pod_level;  /* shallowest cgroup level of a managed pod */
	__u32 max_pod_level;  /* deepest */
	__u32 flags;          /* ES_CFG_F_* */
	__u32 pad;
};

/* es_config.flags: a pod of this node has the thread context (only then may a
 * request sent here be handed to its receiver: outbound.h es_ho_note). */
#define ES_CFG_F_LOCAL_CTX 0x1

/* Per-socket state (socket storage) for steered sockets. */
struct es_sock {
	__u32 orig_addr[4]; /* the service address the app asked for */
	__u16 orig_port;
	__u8 family;
	__u8 steered;
	__u32 svc_id;
	__u32 env_id;  /* environment the connect resolved for */
	__u32 level;   /* fallback depth taken: 0 = own env */
	__u32 pod_env_id; /* the calling pod's own environment (the default when unlabelled) */
	__u32 pod_flags;  /* ES_POD_F_* of the calling pod at connect() */
	__u64 cookie;     /* socket cookie (set once established): es_sockhash key */
	__u64 pod_cgroup; /* cgroup id of the calling pod (its es_pods key): the relay's fair share */
};

/*
 * Connect hints (LRU hash es_hints, kernel-only). A client that opens one
 * connection per request, each tagged for another environment than its own,
 * would pay the relay on every request: its connection goes to its own set at
 * connect() (the header comes later). The relay notes the backend set of an
 * upstream it connected (bound) for a client under (pod, service); the next
 * connect() from that pod to that service resolves the noted environment and,
 * when it is another set than the caller's own, connects there
 * (ES_STEER_F_HINT; a connect that fails drops the hint). A hint only
 * picks where the TCP connection goes: every request on such a connection is
 * still routed by its own header before a byte of it leaves (a wrong hint costs
 * the relay, as without hints), and bytes that cannot be routed by their own
 * header are refused there rather than left with the hinted pod (outbound.h).
 */
struct es_hint_key {
	__u64 pod; /* the calling pod's cgroup id (es_sock.pod_cgroup) */
	__u32 svc_id;
	__u32 pad;
};

struct es_hint {
	__u32 env_id; /* the set's environment (resolved again at each connect) */
	__u32 pad;
};

/* UDP reverse translation: replies from a backend appear to come from the VIP. */
struct es_revnat_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad[5];
};

struct es_revnat {
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* Global counters (per-CPU array, index = enum value). */
enum es_counter {
	ES_CNT_CONNECT_SEEN = 0,   /* connect/sendmsg to a frontend from a managed pod */
	ES_CNT_STEERED_OWN,        /* resolved at the requested environment itself */
	ES_CNT_STEERED_FALLBACK,   /* resolved at an ancestor */
	ES_CNT_STEERED_DEFAULT,    /* resolved at the default environment */
	ES_CNT_REFUSED,            /* no ready pod anywhere: ECONNREFUSED */
	ES_CNT_UNMANAGED,          /* frontend hit from an unmanaged process */
	ES_CNT_SLOT_RACE,          /* slot vanished under a concurrent update */
	ES_CNT_GETPEERNAME,        /* getpeername rewritten to the service address */
	ES_CNT_UDP_REVNAT,         /* recvmsg source rewritten to the service address */
	ES_CNT_ENV_REQUEST,        /* connect used the thread's request environment */
	ES_CNT_ENV_POD,            /* connect used the calling pod's own environment */
	ES_CNT_ENV_DEFAULT,        /* connect used the default environment */
	ES_CNT_HDR_FOUND,          /* inbound request carried a valid env header */
	ES_CNT_HDR_ABSENT,         /* inbound request without one */
	ES_CNT_HDR_INVALID,        /* env header present but invalid or over-long */
	ES_CNT_HDR_BEYOND,         /* env header beyond the parse window */
	ES_CNT_RX_NOT_HTTP,        /* inbound connection found not to be HTTP/1.x */
	ES_CNT_RX_GAP,             /* inbound stream lost sync (missing segment) */
	ES_CNT_THREAD_ADOPT,       /* a thread adopted a request's environment */
	ES_CNT_TX_REQUEST,         /* outbound request on a steered connection */
	ES_CNT_TX_HAS_HEADER,      /* it carried the env header itself: left alone */
	ES_CNT_TX_INJECTED,        /* env header inserted by the kernel */
	ES_CNT_TX_NO_ENV,          /* no header and no environment to insert */
	ES_CNT_TX_INJECT_FAILED,   /* insertion impossible (memory, split line end) */
	ES_CNT_TX_MISMATCH,        /* request env resolves elsewhere than its connection */
	ES_CNT_REQ_PASSED,         /* request went out on its own connection */
	ES_CNT_REQ_KERNEL,         /* re-routed in the kernel to a bound upstream */
	ES_CNT_REQ_SLOW,           /* re-routed through the agent (first use of a target) */
	ES_CNT_REQ_FAILED,         /* could not be routed: the send failed (EACCES) */
	ES_CNT_REQ_CORKED,         /* request head split over sends: held until complete */
	ES_CNT_REQ_UNROUTABLE,     /* head too long to hold: sent on the connection */
	ES_CNT_REQ_UPSTREAM_GONE,  /* bound upstream closed: re-bound via the agent */
	ES_CNT_RSP_REDIRECTED,     /* response segments moved from an upstream to its client */
	ES_CNT_RSP_DROPPED,        /* response for a client that is gone: dropped */
	ES_CNT_REQ_PIPELINE_REFUSED, /* pipelined request for another target: connection refused */
	ES_CNT_TRACE_EMITTED,      /* decision events written to the trace ring buffer */
	ES_CNT_TRACE_RATE_LIMITED, /* decision events dropped by the trace rate limit */
	ES_CNT_TRACE_LOST,         /* decision events lost: ring buffer full (no reader) */
	ES_CNT_DECISION_MAP_FULL,  /* per-service decision counter not kept: map full */
	ES_CNT_CTX_OFF,            /* a process was seen serving interleaved requests: its thread context is off */
	ES_CNT_CTX_OFF_IGNORED,    /* a thread context was not used: its process is switched off */
	ES_CNT_CTX_AMBIGUOUS,      /* a read spanned requests (pipelining): the thread knows no env */
	ES_CNT_CTX_CLOSED,         /* a thread answered its request: its context ended */
	ES_CNT_CTX_NOT_FOR_CONNECT, /* connect() kept the pod env: the service may pool connections */
	ES_CNT_CTX_OFF_MAP_FULL,   /* a process to switch off did not fit in es_ctx_off */
	ES_CNT_REQ_H2C_KEPT,       /* an h2c upgrade request stayed on its connection's own pod */
	ES_CNT_REQ_UNFRAMED_FAILED, /* bytes the parser cannot frame after a re-routed request: failed */
	ES_CNT_RELAY_FULL_FRAMES,   /* a client had max_frames frames queued at the agent: refused */
	ES_CNT_RELAY_FULL_CLIENT,   /* a client had max_client_bytes queued at the agent: refused */
	ES_CNT_RELAY_FULL_TOTAL,    /* all clients had max_total_bytes queued at the agent: refused */
	ES_CNT_RELAY_FULL_POD,      /* a pod's clients had max_pod_bytes queued at the agent: refused */
	ES_CNT_RELAY_TABLE_FULL,    /* es_relay_clients full: refused */
	ES_CNT_RELAY_EV_LOST,       /* a relay client's close not signalled (ring buffer full) */
	ES_CNT_REQ_ORDER_REFUSED,   /* a request for another target before the responses of the
				     * re-routed run before it were in: connection refused */
	ES_CNT_H2_DIVERTED,         /* HTTP/2 connection to a multi-set service: to the agent's endpoint */
	ES_CNT_H2_NO_ENDPOINT,      /* ... but no endpoint (agent down, other family): steered at connect */
	ES_CNT_H2_CONN_LOST,        /* ... its (address, port) could not be recorded for the agent */
	ES_CNT_H2_UNROUTED,         /* HTTP/2 preface on an undeclared port of a multi-set service */
	ES_CNT_REQ_ORDER_UNTRACKED, /* a request for another target after requests on the connection's
				     * own pod whose responses are not followed (es_own_rsp): refused
				     * (also counted in req_order_refused) */
	ES_CNT_REQ_PARTLY_DELIVERED, /* the kernel ran the program again over a send it had delivered in
				      * part (the relay's receive memory): the connection fails */
	ES_CNT_RELAY_FULL_SOCKET,   /* the clients of one relay socket had max_socket_bytes queued: refused */
	ES_CNT_CONNECT_HINTED,      /* connect() went to the backend set of the pod's last re-routed
				     * request to the service (es_hints), not the caller's own */
	ES_CNT_HINT_MISSED,         /* ... and its first request was for another set: re-routed */
	ES_CNT_HINT_REFUSED,        /* ... and its bytes could not be routed by their own header
				     * (not HTTP/1.x, head too long, h2c, no ready pod): refused, the hint dropped */
	ES_CNT_HINT_CONNECT_FAILED, /* ... and the connect failed (refused, timed out): the hint dropped */
	ES_CNT_HO_SENT,             /* requests handed to their receiver on this node (es_hocache) */
	ES_CNT_HO_TAKEN,            /* ... taken by it: their bytes not parsed again */
	ES_CNT_HO_MISMATCH,         /* ... found for the connection and sequence number but not taken
				     * (first bytes differ, too old): parsed */
	ES_CNT_MAX
};

#define ES_COUNTER_NAMES                                                             \
	{ "connect_seen", "steered_own_env", "steered_fallback", "steered_default",    \
	  "refused_no_ready_pod", "unmanaged_caller", "slot_race", "getpeername",       \
	  "udp_revnat", "env_from_request", "env_from_pod", "env_from_default",        \
	  "header_found", "header_absent", "header_invalid", "header_beyond_window",    \
	  "rx_not_http", "rx_stream_gap", "thread_adopt", "tx_request", "tx_has_header", \
	  "tx_injected", "tx_no_env", "tx_inject_failed", "tx_env_mismatch",             \
	  "req_passed", "req_rerouted_kernel", "req_slow_path", "req_failed",           \
	  "req_head_corked", "req_head_unroutable", "req_upstream_gone",                \
	  "rsp_redirected", "rsp_dropped", "req_pipeline_refused",                      \
	  "trace_emitted", "trace_rate_limited", "trace_lost", "decision_map_full",     \
	  "thread_ctx_switched_off", "thread_ctx_off_ignored", "thread_ctx_ambiguous",  \
	  "thread_ctx_closed", "thread_ctx_not_for_connect", "thread_ctx_off_map_full", \
	  "req_h2c_upgrade_kept", "req_unframed_failed", "relay_refused_frames",       \
	  "relay_refused_client_bytes", "relay_refused_total_bytes",                    \
	  "relay_refused_pod_bytes",                                                     \
	  "relay_refused_table_full", "relay_close_events_lost", "req_order_refused",  \
	  "h2_diverted", "h2_no_endpoint", "h2_conn_lost", "h2_unrouted",              \
	  "req_order_untracked", "req_partly_delivered", "relay_refused_socket_bytes",   \
	  "connect_hinted", "hint_missed", "hint_refused", "hint_connect_failed",       \
	  "handoff_sent", "handoff_taken", "handoff_mismatch" }

/* Outbound header insertion settings (single-entry array). */
struct es_inject_cfg {
	char name[32];   /* the env header name as configured (case kept) */
	__u8 len;
	__u8 auto_inject; /* insert the pod's own environment when the thread has none */
	__u8 pad[6];
};

/* A thread's request context (task storage), kept only in pods with
 * ES_POD_F_THREAD_CTX: the environment of the HTTP request the thread is
 * serving. It is valid from the read of that request until the thread writes
 * on that request's socket (its response) or reads another request. */
struct es_thread {
	char env[ES_ENV_NAME_MAX];
	__u8 len;    /* 0: the request had no (valid) env header, or it is unknown */
	__u8 depth;  /* splitters in env (es_env.depth of the name) */
	__u8 active; /* serving a request: between its read and its response */
	__u8 pad[5];
	__u64 since_ns; /* when it was adopted */
	__u64 sock;     /* cookie of the socket the request came on */
};

/* Processes seen serving interleaved requests (not thread-per-request): their
 * thread context is off for good. Key: tgid. Written by the programs, swept of
 * dead processes by the agent. */
enum es_ctx_off_reason {
	ES_CTX_OFF_NONE = 0,
	ES_CTX_OFF_READ_WHILE_SERVING = 1, /* a thread read a request while serving another */
	ES_CTX_OFF_ANSWERED_OTHER = 2,     /* a thread answered a request while serving another */
	ES_CTX_OFF_OTHER_THREAD = 3,       /* a request was answered by another thread than its reader */
};

struct es_ctx_off {
	__u64 cgroup_id; /* of the thread that tripped it */
	__u64 ts_ns;
	__u32 reason;    /* enum es_ctx_off_reason */
	__u32 pad;
};

/*
 * Per-request steering on pooled connections. A request whose environment
 * resolves to another backend set than its connection's is sent to an upstream
 * connection bound to (client connection, target set). The agent opens the
 * upstreams: the first request for a target reaches it through the relay
 * socket, framed by struct es_relay_hdr.
 */
struct es_bind_key {
	__u64 client;  /* client socket cookie */
	__u32 svc_id;
	__u32 env_id;  /* resolved environment (the backend set) */
};

struct es_bind {
	__u64 upstream; /* upstream socket cookie (key in es_sockhash) */
	__u64 created_ns;
};

/* Upstream socket cookie -> its client: where responses go. */
struct es_upstream {
	__u64 client;
	__u32 svc_id;
	__u32 env_id;
};

/* A client connection that has sent frames to the agent (written by BPF). */
struct es_relay_client {
	__u32 laddr[4]; /* the client connection's own address */
	__u32 raddr[4]; /* its peer (the pod it connected to) */
	__u16 lport;    /* network order */
	__u16 rport;
	__u8 family;
	__u8 pad[3];
	__u32 sent;     /* frames sent (the last frame's seq) */
	__u32 pad2;
	__u64 bytes;      /* payload bytes framed for the agent, in all */
	__u64 pod_cgroup; /* the client's pod (es_sock.pod_cgroup) */
};

/* What the agent has done with a client's frames (agent-written): the last
 * frame forwarded (or dropped with its client), and the payload bytes of all
 * of them. The programs frame more only while sent - seq <= max_frames and
 * bytes framed - bytes done stays within max_client_bytes. */
struct es_relay_done {
	__u32 seq;
	__u32 pad;
	__u64 bytes;
	__u64 upstream; /* the upstream the last frame went to (its cookie) */
};

/* Relay sockets of the agent at most. The programs choose a client's socket
 * by its pod (es_relay_slot): one pod's frames fill one socket, and a client's
 * frames, always on one socket, stay in order. */
#define ES_RELAY_SOCKETS_MAX 16

/* Bytes framed for the agent by the programs (single-entry array, added to
 * atomically; compared with es_relay_cfg.done_bytes and socket_done). */
struct es_relay_acct {
	__u64 framed;                             /* all clients */
	__u64 socket_framed[ES_RELAY_SOCKETS_MAX]; /* the clients of each relay socket */
};

/* Bytes framed for the agent by the clients of one pod (hash by the pod's
 * cgroup id, es_relay_pods, added to atomically by the programs); the agent
 * writes what it has forwarded or dropped of them into es_relay_pod_done. */
struct es_relay_pod {
	__u64 framed;
};

/* A client of the relay changed TCP state (sockops, ring buffer es_relay_ev):
 * the agent frees or pools its upstreams at once instead of at its sweep. */
struct es_relay_event {
	__u64 client;
	__u32 state; /* BPF_TCP_* */
	__u32 pad;
};

/* Relay settings (single-entry array, agent-written). */
struct es_relay_cfg {
	__u32 sockets;    /* relay sockets in use, 1..ES_RELAY_SOCKETS_MAX; 0: no agent */
	__u32 max_frames; /* frames a client may have queued at the agent */
	__u64 max_client_bytes; /* payload bytes a client may have queued at the agent */
	__u64 max_pod_bytes;    /* the same, all clients of one pod together */
	__u64 max_total_bytes;  /* the same, all clients together */
	__u64 max_socket_bytes; /* the same, the clients of one relay socket (its kernel memory) */
	__u64 done_bytes;       /* bytes of all clients the agent forwarded or dropped */
	__u64 relay[ES_RELAY_SOCKETS_MAX];       /* cookies of the agent's relay sockets */
	__u64 key[ES_RELAY_SOCKETS_MAX];         /* random, per relay socket: copied into its frame headers */
	__u64 socket_done[ES_RELAY_SOCKETS_MAX]; /* done_bytes of each relay socket's clients */
};

/* The relay socket of a pod's clients, of n: a hash of its cgroup id (the
 * same in the programs and the agent). */
static inline __u32 es_relay_slot(__u64 pod, __u32 n)
{
	return n ? (__u32)(((pod * 0x9E3779B97F4A7C15ull) >> 32) % n) : 0;
}

#define ES_RELAY_MAGIC 0x45535231 /* "ESR1" */
#define ES_RELAY_HDR_LEN 48

/* Header of a frame on the relay socket; len payload bytes follow. */
struct es_relay_hdr {
	__u32 magic;
	__u32 len;
	__u64 client;
	__u32 svc_id;
	__u32 env_id;
	__u32 seq;
	/* Low 32 bits of the client's payload bytes framed before this frame
	 * (es_relay_client.bytes): more than the agent has read of the client
	 * says frames were counted that never arrived (a redirect refused for
	 * memory): their bytes are done with at once, not held in the bounds. */
	__u32 before;
	__u64 pod; /* the client's pod (es_sock.pod_cgroup): whose share the bytes are */
	__u64 key; /* es_relay_cfg.key of its socket: a header the agent reads is one the programs wrote */
};

/* Requests by frontend, resolved environment and path (per-CPU hash). */
enum es_req_path { ES_PATH_PASSED = 0, ES_PATH_KERNEL, ES_PATH_SLOW, ES_PATH_FAILED, ES_PATH_MAX };

struct es_req_key {
	__u32 svc_id;
	__u32 env_id;
	__u32 path;
	__u32 pad;
};

/* ------------------------------------------------------------------------
 * Per-socket HTTP state (socket storage es_rx, es_tx) and the parser's
 * settings (es_http_cfg). The parser itself is bpf/lib/http.h.
 * ------------------------------------------------------------------------ */

#define ES_HTTP_MAX_NAMES 4	/* env header name [0] and its aliases */
#define ES_HTTP_NAME_MAX 32	/* header name or baggage key; a power of two */
#define ES_HTTP_WINDOW_DEFAULT 4096

/* Set once by the agent (es_http_cfg_*), read by every parse. */
struct es_http_cfg {
	char names[ES_HTTP_MAX_NAMES][ES_HTTP_NAME_MAX]; /* lower case */
	__u8 name_len[ES_HTTP_MAX_NAMES];
	char baggage_key[ES_HTTP_NAME_MAX]; /* W3C baggage member, case-sensitive */
	__u8 n_names;
	__u8 baggage_key_len; /* 0: baggage is not looked at */
	char splitter;
	__u8 pad;
	__u16 window; /* an env header must end within this many request bytes; 0 = no limit */
	__u16 pad2;
};

/* Per connection; all zero = before the first request. 176 bytes. */
struct es_http_state {
	char val[2][ES_ENV_NAME_MAX]; /* best env value so far, and the candidate being read */
	__u64 body;	/* bytes left of the body or chunk; the Content-Length within the head */
	__u64 num;	/* number being read: a Content-Length element, a chunk size */
	__u32 pos;	/* bytes of the current request consumed (saturating) */
	__u32 line_len; /* request line length incl. its line end: where a header goes */
	__u16 flags;	/* ES_HTTP_F_* */
	__u16 match;	/* names the current header name still matches */
	__u8 phase;
	__u8 cr;	/* a CR was seen: the next byte must be LF */
	__u8 hdr;	/* kind of the current header */
	__u8 sub;	/* position within a value's list syntax */
	__u8 npos;	/* length of the current token (saturating) */
	__u8 kpos;	/* bytes of the baggage key / "chunked" / "CONNECT" matched */
	__u8 kok;	/* the baggage key still matches */
	__u8 vtot;	/* candidate bytes stored (blanks are not) */
	__u8 vows;	/* a blank followed the candidate's first byte */
	__u8 vbad;	/* the candidate cannot be a valid name */
	__u8 vprev;	/* its last byte */
	__u8 best;	/* val slot of the best value */
	__u8 env_len;	/* 0: none */
	__u8 env_rank;	/* 1 primary name, 2 alias, 3 baggage; 0: none */
	__u8 err;	/* enum es_http_err once inert */
	__u8 ev;	/* events of the last byte fed */
	__u8 pad[4];
};

/* Inbound HTTP parse state of a managed pod's TCP socket. */
struct es_rx {
	struct es_http_state st;
	__u32 next_seq; /* TCP sequence number of the next payload byte */
	__u8 synced;    /* next_seq is valid */
	__u8 seen;      /* at least one request head completed */
	__u8 env_len;   /* environment of the request that began at req_start; 0 = none */
	__u8 env_depth; /* its splitters */
	char env[ES_ENV_NAME_MAX];
	/* Thread context bookkeeping (pods with ES_POD_F_THREAD_CTX): */
	__u32 req_start; /* sequence number of the first byte of the latest request */
	__u32 read_seq;  /* sequence number of the next byte the application reads */
	__u32 reader;    /* thread id that read the request not yet answered; 0 */
	__u8 pod_flags;  /* ES_POD_F_* of the socket's pod */
	__u8 broken;     /* stream sync lost: the thread context is unknown here */
	__u8 ho;         /* boundaries looked up in es_hocache without a record, up to ES_HO_MISSES */
	__u8 pad;
	__u32 skip;      /* bytes of a handed-off request still to pass without parsing */
	__u32 ho_tried;  /* sequence number of the last boundary looked up in es_hocache */
};

/* Parse once per hop (request.h, outbound.h): a request that the sk_msg
 * program of a pod on this node parsed and passed on its connection, handed to
 * the receiving pod's ingress program, which takes its environment and skips
 * its bytes instead of parsing them again. The record waits in a slot of a
 * per-CPU cache (es_hocache): the receive path of a send between two pods of
 * the node runs on the CPU of the send, right after it. It is taken only by
 * that connection (as the receiver sees it) at the sequence number of the
 * request's first byte, when its first bytes are those, within a second;
 * anything else (another CPU, a slot overwritten, a write in progress) and the
 * receiver parses the request as before. */
#define ES_HO_SLOTS 16          /* slots per CPU (a power of two) */
#define ES_HO_MISSES 8          /* boundaries a receiver looks up without a record before it stops */
#define ES_HO_MAX_AGE_NS 1000000000ULL

struct es_handoff_key {
	__u32 server[4]; /* the receiving socket's address (IPv4 in [0]; IPv4-mapped IPv6 as IPv4) */
	__u32 client[4]; /* the sending socket's */
	__u16 server_port; /* host order */
	__u16 client_port;
	__u32 seq; /* TCP sequence number of the request's first byte */
};

struct es_ho_rec {
	__u64 first;  /* the request's first 8 bytes on the wire, as loaded */
	__u32 len;    /* its bytes on the wire: head (with an inserted header) and body */
	__u8 env_len; /* its environment as the receiver would parse it; 0: none */
	__u8 pad[3];
	char env[ES_ENV_NAME_MAX];
};

struct es_ho_slot {
	__u64 lock;  /* a sender is writing the slot (it may be preempted meanwhile) */
	__u32 valid; /* it holds a record not taken yet */
	__u32 pad0;
	__u64 ts;    /* bpf_ktime_get_coarse_ns() when written */
	struct es_handoff_key key;
	__u32 pad;
	struct es_ho_rec rec;
};

/* Where the bytes of the request in progress go. */
enum es_route_kind { ES_ROUTE_PASS = 0, ES_ROUTE_KERNEL, ES_ROUTE_SLOW, ES_ROUTE_FAIL };

struct es_route {
	__u64 upstream; /* ES_ROUTE_KERNEL: upstream cookie */
	__u32 svc_id;   /* the target set (KERNEL, SLOW) */
	__u32 env_id;
	__u32 kind;
	__u32 pad;
};

/* Outbound HTTP parse state of a steered connection. */
/* Working variables of one sk_msg program run (see outbound.h). */
struct es_msg_vars {
	__u32 off;       /* next byte of the message to parse */
	__u32 size;      /* message size (grows with insertions) */
	__u32 pstart;    /* the pulled range msg->data..data_end covers */
	__u32 pend;
	__s32 reqline;   /* offset after the request line in this message; -1 */
	__s32 req_begin; /* where the request in progress began in this message; -1: earlier */
	__u8 head;       /* the byte loop stopped at the end of a request head */
	__u8 done;       /* ... which also ended the request (no body) */
	__u8 pad[2];
	__u32 env_req;   /* the environment of the request last decided */
	struct es_route route; /* where bytes 0..off of this message go */
};

struct es_tx {
	struct es_msg_vars v;
	struct es_http_state st;
	struct es_route route; /* of the request in progress (its body follows it) */
	__u32 slow_seq;        /* frames sent to the agent */
	__u8 prev;             /* the last byte parsed, also across sends */
	__u8 pipelined;        /* the request at the start of the next run was pipelined */
	__u8 unroutable;       /* the request in progress could not be routed by its head: it
				* stays on the connection's own pod, head and body */
	__u8 upgrade;          /* the last complete request asked for an Upgrade or CONNECT:
				* bytes the parser cannot follow after it are its tunnel */
	/* The run: the requests in a row for one target (env_id), so that a
	 * request for another target waits for nothing the run still owes
	 * (outbound.h: es_run_owes). */
	__u8 run_far;          /* the run's target is an upstream (re-routed), not the own pod */
	__u8 own;              /* ES_OWN_*: are the own pod's responses followed (es_own_rsp)? */
	__u8 carry;            /* the next run's first `carry` bytes were parsed already: they
				* continue the relay frame cut before them (outbound.h) */
	__u8 held;             /* a run held a message (cork) and no redirect came since: the
				* kernel keeps its cork buffer until one, and that redirect
				* frees what it does not cover (no run follows) */
	__u32 run_env;
	__u32 run_reqs;        /* request heads in the run (on run_up, or on the upstream the
				* agent bound for its frames) */
	__u64 run_base;        /* responses run_up had completed when the run began */
	__u64 run_up;          /* the run's upstream when a request of it went in the kernel */
	__u32 rest;            /* bytes the kernel gives the next run of this send (the ones the
				* last verdict did not cover); 0: no run expected */
	__u8 run_head;         /* a request of the run is HEAD (ES_HTTP_F_HEAD): the upstream's
				* answer count cannot be trusted for it (response.h) */
	__u8 ho_pend;          /* this run's first request is handed off when it passes (es_hocache) */
	__u8 pad2[2];
	struct es_ho_rec ho_rec; /* ... its record (without the first bytes) */
};

/* es_tx.own: responses on the connection itself, from its own pod. */
#define ES_OWN_NONE 0      /* no request went to the own pod yet */
#define ES_OWN_TRACKED 1   /* es_own_rsp follows them (the service has more than one backend set) */
#define ES_OWN_UNTRACKED 2 /* requests went there unfollowed: their answers cannot be proven */

/* Responses on an upstream of the relay, as the verdict program follows them
 * (bpf/lib/response.h). */
/* Pinned next to the other maps (<pin dir>/maps/es_rsp): upstream cookie ->
 * struct es_rsp. The agent creates the entry, zeroed, before the upstream is
 * registered and deletes it when the upstream closes; the programs update it
 * in place: reqs only by atomic adds (sk_msg), the rest only by the verdict
 * program (one upstream's data is verdicted under its socket lock). */
struct es_rsp {
	__u64 reqs;  /* request heads sent in the kernel (sk_msg, atomic adds) */
	__u64 done;  /* final responses complete */
	__u64 left;  /* body or chunk bytes left; the Content-Length within a head */
	__u64 num;   /* number being read: a Content-Length element, a chunk size */
	__u64 bytes; /* response bytes seen */
	__u16 status;
	__u8 phase;
	__u8 pos;   /* bytes of the status line, header name or token (saturating) */
	__u8 hdr;   /* name: ES_RSP_M_* still matching; value: ES_RSP_H_* */
	__u8 flags; /* ES_RSP_F_* of the head being read */
	__u8 sub;   /* position within a value or chunk-size line */
	__u8 err;   /* enum es_rsp_err once DEAD */
	__u8 fin;   /* the server closed the upstream (its FIN went by): no request
		     * is sent to it in the kernel any more */
	__u8 pad[7];
};

/*
 * HTTP/2 per stream (agent/h2*.cpp). A connection from a managed pod to a
 * frontend with ES_FE_F_H2 | ES_FE_F_MULTI_SET is made to the agent's HTTP/2
 * endpoint instead (connect4/6; es_sock.steered = ES_STEER_H2). Once it is
 * established, sockops records what the agent needs under the client's own
 * address (the peer address of the connection the agent accepts).
 */
#define ES_STEER_POD 1 /* es_sock.steered: connected to a pod */
#define ES_STEER_H2 2  /* connected to the agent's HTTP/2 endpoint */
#define ES_STEER_F_CTX 0x20   /* es_sock.steered, with ES_STEER_POD: connected to a backend with
			       * ES_BE_F_LOCAL_CTX (requests passed on it are handed off) */
#define ES_STEER_F_HINT 0x40  /* es_sock.steered, with ES_STEER_POD: connected by a hint (es_hints) */
#define ES_STEER_F_STATE 0x80 /* es_sock.steered, with ES_STEER_POD: its state changes reach
			       * sockops (set once established, outbound.h es_sockops) */

/* The agent's HTTP/2 endpoint (single-entry array, agent-written). */
struct es_h2_cfg {
	__u32 addr[4]; /* IPv4 in addr[0] */
	__u16 port;    /* network order; 0: no endpoint (nothing is diverted) */
	__u8 family;   /* ES_FAMILY_INET or ES_FAMILY_INET6 */
	__u8 pad;
	__u32 pad2;
};

/* es_h2_conns key: the client connection's own address (IPv4-mapped IPv6 as IPv4). */
struct es_h2_conn_key {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family;
	__u8 pad;
};

struct es_h2_conn {
	__u32 orig_addr[4]; /* the service address the app asked for */
	__u16 orig_port;
	__u8 family;
	__u8 pad;
	__u32 svc_id;
	__u32 pod_env_id;   /* the calling pod's own environment (the default when unlabelled) */
	__u32 pod_flags;    /* ES_POD_F_* */
	__u64 pod_cgroup;   /* the calling pod (es_pods key) */
	__u64 cookie;       /* the client socket's cookie */
};

/* Names of the pinned maps below the pin directory (".../maps/<name>"). */
#define ES_MAP_FRONTENDS "es_frontends"
#define ES_MAP_SETS "es_sets"
#define ES_MAP_SLOTS "es_slots"
#define ES_MAP_ENVS "es_envs"
#define ES_MAP_ENV_NAMES "es_env_names"
#define ES_MAP_PODS "es_pods"
#define ES_MAP_CONFIG "es_config"
#define ES_MAP_COUNTERS "es_counters"
#define ES_MAP_SOCKS "es_socks"
#define ES_MAP_REVNAT "es_revnat"
#define ES_MAP_HTTP_CFG "es_http_cfg"
#define ES_MAP_RX "es_rx"
#define ES_MAP_THREADS "es_threads"
#define ES_MAP_INJECT "es_inject"
#define ES_MAP_MISMATCH "es_mismatch"
#define ES_MAP_SOCKHASH "es_sockhash"
#define ES_MAP_BINDS "es_binds"
#define ES_MAP_UPSTREAMS "es_upstreams"
#define ES_MAP_RELAY_CLIENTS "es_relay_clients"
#define ES_MAP_RELAY_DONE "es_relay_done"
#define ES_MAP_RELAY_CFG "es_relay_cfg"
#define ES_MAP_RELAY_ACCT "es_relay_acct"
#define ES_MAP_RELAY_EV "es_relay_ev"
#define ES_MAP_RELAY_PODS "es_relay_pods"
#define ES_MAP_RELAY_POD_DONE "es_relay_pod_done"
#define ES_MAP_REQ_STATS "es_req_stats"
#define ES_MAP_CTX_OFF "es_ctx_off"
#define ES_MAP_RSP "es_rsp"
#define ES_MAP_OWN_RSP "es_own_rsp"
#define ES_MAP_H2_CFG "es_h2_cfg"
#define ES_MAP_H2_CONNS "es_h2_conns"
#define ES_MAP_HINTS "es_hints"

/* ------------------------------------------------------------------------
 * Observability: decision events (trace ring buffer) and per-service
 * decision counters. See bpf/lib/trace.h.
 * ------------------------------------------------------------------------ */

/* es_trace_event.kind */
enum es_event_kind {
	ES_EV_NONE = 0,
	/* connect()/sendmsg() decisions (bpf/lib/steer.h) */
	ES_EV_CONNECT_STEERED = 1,  /* resolved at the requested environment itself */
	ES_EV_CONNECT_FALLBACK = 2, /* resolved at an ancestor (level = steps walked) */
	ES_EV_CONNECT_DEFAULT = 3,  /* resolved at the default environment */
	ES_EV_CONNECT_REFUSED = 4,  /* no ready pod anywhere: ECONNREFUSED */
	/* per-request decisions on steered connections (sk_msg) */
	ES_EV_REQ_PASS = 16,     /* request stays on its connection's pod */
	ES_EV_REQ_REDIRECT = 17, /* request re-routed to an upstream connection */
	ES_EV_REQ_SLOW = 18,     /* request waits for an upstream connection (agent) */
	ES_EV_REQ_FAILED = 19,   /* request could not be routed */
	/* HTTP/2 */
	ES_EV_H2_UNROUTED = 20,  /* HTTP/2 preface on an undeclared port of a multi-set service (kernel) */
	ES_EV_STREAM = 24,       /* an HTTP/2 stream routed by the agent (flags: its stream id) */
	ES_EV_STREAM_FAILED = 25, /* an HTTP/2 stream the agent could not route or serve */
	ES_EV_KIND_MAX = 32,
};

/* Where the environment a decision started from came from. */
enum es_env_source {
	ES_SRC_NONE = 0,
	ES_SRC_REQUEST = 1, /* the request the calling thread serves (header) */
	ES_SRC_POD = 2,     /* the calling pod's own label */
	ES_SRC_DEFAULT = 3, /* the default environment */
	ES_SRC_HINT = 4,    /* the pod's last re-routed request to the service (es_hints) */
};

/* One decision, as the kernel reports it to `envsteer trace`. */
struct es_trace_event {
	__u64 ts_ns;     /* bpf_ktime_get_ns() */
	__u64 cgroup_id; /* cgroup v2 id of the calling task (or of the socket) */
	__u64 pod_cgroup_id; /* the managed pod's cgroup when known, else 0 (the reader walks up) */
	__u32 kind;      /* enum es_event_kind */
	__u32 pid;       /* tgid of the calling task; 0 when not in task context */
	__u32 svc_id;    /* frontend (service address) id */
	__u32 env_req;   /* environment the walk started from (ES_ENV_NONE: unknown) */
	__u32 env_res;   /* environment whose pods were used (ES_ENV_NONE: refused) */
	__u32 pod_env;   /* the calling pod's own environment */
	__u32 level;     /* fallback depth: 0 = the requested environment itself */
	__u32 source;    /* enum es_env_source */
	__u32 fe_addr[4]; /* service address asked for; IPv4 in [0] */
	__u32 be_addr[4]; /* backend chosen (zero when refused) */
	__u16 fe_port;   /* network order */
	__u16 be_port;   /* network order */
	__u8 family;     /* ES_FAMILY_INET or ES_FAMILY_INET6 */
	__u8 proto;      /* IPPROTO_TCP, IPPROTO_UDP */
	__u8 env_len;    /* bytes of thread_env; 0 = the thread serves no request env */
	__u8 pad;
	__u32 flags;     /* reserved for per-request events */
	char thread_env[ES_ENV_NAME_MAX]; /* the env header the calling thread adopted */
	__u32 pad2;
};

/* Trace switch and rate limit (single-entry array, written by the agent). */
struct es_trace_cfg {
	__u32 enabled; /* 0: nothing is emitted (no trace client attached) */
	__u32 rate;    /* events per second per CPU */
	__u32 burst;   /* bucket size per CPU */
	__u32 pad;
};

/* Per-CPU token bucket state of the trace rate limit. */
struct es_trace_bucket {
	__u64 tokens_milli; /* tokens x 1000 */
	__u64 last_ns;
};

/* Per-service decision counters (per-CPU hash, value __u64). */
struct es_decision_key {
	__u32 svc_id;
	__u32 env_id;  /* resolved environment; for refusals the requested one */
	__u32 outcome; /* enum es_event_kind, ES_EV_CONNECT_* */
	__u32 level;   /* fallback depth */
};

#define ES_MAP_TRACE_RB "es_trace_rb"
#define ES_MAP_TRACE_CFG "es_trace_cfg"
#define ES_MAP_TRACE_BUCKET "es_trace_bucket"
#define ES_MAP_DECISIONS "es_decisions"

#endif /* ENVSTEER_ABI_H */
