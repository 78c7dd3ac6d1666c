// SPDX-License-Identifier: Apache-2.0
// Per-request steering, the agent's part: the slow path of a re-routed request.
//
// The sk_msg program re-routes a request whose environment resolves to another
// backend set than its connection's. When no upstream is bound yet for
// (client connection, set), it frames the bytes (struct es_relay_hdr) and
// queues them on a relay socket, a loopback TCP socket of this agent whose
// listener is closed at once (nothing outside the kernel can write to it). There
// are a few (RelayOptions::sockets), each with its own key and byte bound; the
// programs choose one by the client's pod (es_relay_slot), so that one pod's
// frames fill its own socket, not the others' (law 2: the kernel's memory
// pressure then cuts or refuses the full socket's frames, and a pod on another
// socket goes on). The relay thread reads them all, a bounded share each per
// turn of its loop, the frames into a queue per client, gives the client an
// upstream connection to a pod of the set (a warm one from the set's pool, or a
// new one; made inside the client's pod's network namespace, so that the server
// sees that pod's address, agent/podnet.h), registers it (es_upstreams, es_sockhash, es_binds), forwards the
// bytes and records the frame as done (es_relay_done). Later requests of the
// client for that set go to the upstream in the kernel; responses come back
// into the client's socket through the sk_skb verdict program.
//
// Nothing blocks the relay thread: the relay socket is read at once, every
// upstream is non-blocking (connects too), and a client's frames wait only for
// that client's upstream. Bounds (README "Per-request steering"): frames and
// bytes a client may have queued at the agent, bytes of all clients together
// (the kernel refuses the send beyond them, counted), clients per pod (beyond
// it the client is reset, counted). Timeouts: connect; a response (an upstream
// that owes its client something and saw no traffic either way); idle (an
// upstream that owes nothing); a pooled upstream unused.
//
// Closes are decided from what the upstream owes its client, never from
// timing. The kernel counts the requests it sends to an upstream and follows
// the framing of the responses (bpf/lib/response.h, map es_rsp); the relay
// adds the requests it forwarded itself. When the server closes or resets an
// upstream, or the relay drops it (client gone, pod gone, idle), the binding is
// removed first and the client connection fenced (a sock_diag query takes its
// socket lock, so a send that found the binding has counted its request);
// then:
//   - nothing owed (every request has its complete final response, none under
//     way): the upstream is pooled for the next client of its set, or closed;
//     the client is untouched, and its next request for that target binds
//     another upstream through the relay;
//   - a request unanswered, a response cut short or framed by the close (or
//     after an upgrade), framing the kernel could not follow: the client
//     connection is reset (SOCK_DESTROY, counted), as the application would
//     see the failure on a direct connection, rather than wait for ever.
// An upstream the relay unbinds while it still owes something is closed once
// it owes nothing, or when the server or the client closes.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bpf/lib/response.h"
#include "fd.h"
#include "maps/abi.h"
#include "maps/bpf_maps.h"
#include "podnet.h"

struct ring_buffer;

namespace envsteer {

struct RelayOptions {
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds idle_timeout{60000};       // an upstream owing nothing, no traffic: closed
  std::chrono::milliseconds response_timeout{300000};  // owing a response, no traffic: the client is reset
  std::chrono::milliseconds pool_idle{2000};           // a pooled upstream unused this long: closed
  uint32_t warm = 2;                // pre-connected upstreams kept per set in recent use (0: none)
  uint32_t pool_per_set = 32;       // pooled upstreams per set at most
  uint32_t pool_total = 1024;       // pooled upstreams in all at most
  uint32_t max_frames = 64;         // frames a client may have queued here
  uint32_t max_frame_bytes = 1u << 20;  // larger frames are a protocol error
  uint64_t max_client_bytes = 1u << 20;  // bytes a client may have queued here
  uint64_t max_pod_bytes = 8u << 20;     // the same, all clients of one pod
  uint64_t max_total_bytes = 64u << 20;  // the same, all clients
  uint32_t sockets = 4;                  // relay sockets (1..ES_RELAY_SOCKETS_MAX), chosen by the client's pod
  uint64_t max_socket_bytes = 0;         // the same, the clients of one socket (0: max(total / sockets, 2 x per pod), at most total)
  uint32_t max_clients_per_pod = 1024;   // relay clients of one pod at once (the node table is shared)
  // Connect hints (maps/abi.h es_hints): a bound upstream notes its set for the client's pod
  // and service, so that the pod's next connection there is made to it at connect().
  bool hints = true;
  // The cgroup directory of a pod cgroup id: where the relay finds the pod's
  // network namespace (upstreams and client resets are made there). Unset:
  // everything in the agent's own namespace.
  podnet::PodNets::Resolver pod_dir;
};

// The relay's counters: one list names them for the status, the metrics and the code.
#define ES_RELAY_COUNTERS(X)                                                          \
  X(frames, "frames", "", "")                                                        \
  X(bytes, "bytes", "", "")                                                          \
  X(bytes_lost, "bytes_lost", "", "")                                                \
  X(binds, "upstreams_opened", "", "")                                               \
  X(connects, "connects", "", "")                                                    \
  X(pool_taken, "pool_taken", "", "")                                                \
  X(closed_client_gone, "closed", "reason", "client_gone")                           \
  X(closed_idle, "closed", "reason", "idle")                                         \
  X(closed_by_server, "closed", "reason", "by_server")                               \
  X(closed_pod_gone, "closed", "reason", "pod_gone")                                 \
  X(closed_pool_idle, "closed", "reason", "pool_idle")                               \
  X(closed_spoiled, "closed", "reason", "pool_spoiled")                              \
  X(connect_failures, "errors", "kind", "connect")                                   \
  X(connect_timeouts, "errors", "kind", "connect_timeout")                           \
  X(no_backend, "errors", "kind", "no_backend")                                      \
  X(forward_failures, "errors", "kind", "forward")                                   \
  X(protocol_errors, "errors", "kind", "protocol")                                   \
  X(destroy_failures, "errors", "kind", "reset_failed")                              \
  X(netns_unknown, "errors", "kind", "pod_netns")                                    \
  X(clients_destroyed, "clients_destroyed", "", "")                                  \
  X(reset_request, "client_resets", "reason", "request_unanswered")                  \
  X(reset_response, "client_resets", "reason", "response_cut")                       \
  X(reset_until_close, "client_resets", "reason", "until_close")                     \
  X(reset_unframed, "client_resets", "reason", "unframed")                           \
  X(reset_reorder, "client_resets", "reason", "reorder")                             \
  X(reset_response_timeout, "client_resets", "reason", "response_timeout")           \
  X(reset_pod_share, "client_resets", "reason", "pod_share")                         \
  X(reset_no_upstream, "client_resets", "reason", "no_upstream")                     \
  X(reset_forward, "client_resets", "reason", "forward_failed")                      \
  X(reset_relay_stream, "client_resets", "reason", "relay_stream_lost")              \
  X(client_events, "client_events", "", "")

enum class RelayCounter {
#define ES_RC_ENUM(id, name, label, value) id,
  ES_RELAY_COUNTERS(ES_RC_ENUM)
#undef ES_RC_ENUM
      kCount
};

struct RelayStats {
  std::array<uint64_t, static_cast<size_t>(RelayCounter::kCount)> n{};
  uint64_t operator[](RelayCounter c) const { return n[static_cast<size_t>(c)]; }
  uint64_t active = 0;      // upstreams bound to a client
  uint64_t pooled = 0;      // connected, waiting for a client
  uint64_t connecting = 0;  // connects under way
  uint64_t clients = 0;     // clients with frames or upstreams here
  uint64_t queued_bytes = 0;  // frame bytes waiting for an upstream
  uint64_t inflight_bytes = 0;  // framed by the kernel, not yet forwarded or dropped (socket + queues)
  uint64_t netns = 0;       // pods' network namespaces the relay holds a handle of
  struct Socket {
    uint64_t cookie = 0;
    uint64_t frames = 0;          // frames read from it
    uint64_t inflight_bytes = 0;  // framed for it by the kernel, not yet forwarded or dropped (bounded)
  };
  std::vector<Socket> sockets;
};

class Relay {
 public:
  // maps: the Datapath's (agent/loader.h), which outlives the relay. Throws
  // std::runtime_error when the relay socket cannot be set up.
  Relay(const maps::BpfMapBackend& maps, RelayOptions o);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Cleans what a previous agent left (its upstreams died with it: their
  // clients are destroyed), registers the relay socket, starts the thread.
  void start();
  // Unregisters the relay socket and closes every upstream; returns within a
  // few hundred milliseconds whatever clients and servers do.
  void stop();

  RelayStats stats() const;
  nlohmann::json status_json() const;
  // Prometheus text of the relay's counters and gauges.
  std::string metrics() const;

 private:
  struct Frame {
    uint32_t seq = 0, svc_id = 0, env_id = 0;
    std::vector<uint8_t> data;
    size_t off = 0;        // bytes written to the upstream
    bool counted = false;  // request heads counted (before the first byte goes)
  };
  struct Client {
    uint64_t cookie = 0, pod = 0;
    es_relay_client rc{};  // the kernel's entry when the client came (its addresses, for sock_diag)
    std::shared_ptr<const podnet::NetNs> ns;  // its pod's network namespace (nullptr: the agent's)
    std::deque<Frame> q;  // in order; the front one is being forwarded
    uint64_t q_bytes = 0;
    // The kernel's count of the client's payload bytes (es_relay_client.bytes) accounted here:
    // frames read, and frames counted that never arrived (a frame header's `before` says so).
    uint64_t seen = 0;
    es_relay_done done{};
    std::vector<uint64_t> ups;  // upstream cookies
    bool failed = false;        // reset or gone: removed at the end of the loop's turn
  };
  enum class UpState { Connecting, Pooled, Bound };
  struct Upstream {
    UniqueFd fd;
    uint64_t cookie = 0, client = 0;  // client 0: for the pool
    UpState state = UpState::Connecting;
    uint32_t svc_id = 0, env_id = 0;
    std::shared_ptr<const podnet::NetNs> ns;  // where it was made (nullptr: the agent's namespace)
    es_backend be{};
    std::string backend;  // "addr:port"
    std::chrono::steady_clock::time_point since;  // connect started / pooled
    uint64_t slow_reqs = 0;     // request heads the relay forwarded (the kernel counts its own)
    es_http_state req{};        // the relay's parse of the bytes it forwarded
    bool req_unframed = false;  // they were not HTTP/1.x requests: the counts cannot be trusted
    bool unbound = false;       // binding removed and client fenced: closed once it owes nothing
  };
  using SetKey = std::pair<uint32_t, uint32_t>;  // (svc_id, env_id)
  // A pool: the set, and the network namespace its upstreams come from (its
  // inode, 0 for the agent's): an upstream made in one pod's namespace carries
  // that pod's address and is never handed to a client of another.
  using PoolKey = std::tuple<uint32_t, uint32_t, uint64_t>;
  struct Want {
    std::chrono::steady_clock::time_point last;
    std::shared_ptr<const podnet::NetNs> ns;
  };
  static PoolKey pool_key(const Upstream& u) { return {u.svc_id, u.env_id, u.ns ? u.ns->ino : 0}; }

  // What an upstream still owes its client.
  enum class Owed { Nothing, Request, Response, UntilClose, Unframed };
  struct Snapshot {
    Owed owed = Owed::Unframed;
    uint64_t reqs = 0, done = 0;
    bool fin = false;  // the server closed its side
  };

  // One relay socket: the frames of the pods es_relay_slot() gives it.
  struct RelaySock {
    size_t index = 0;
    UniqueFd fd, peer;
    uint64_t cookie = 0;
    uint64_t key = 0;       // es_relay_cfg.key[index]: frame headers carry it
    uint64_t prev_key = 0;  // the key before: frames still carrying it are dropped
    bool rotate_key = false;
    std::vector<uint8_t> buf;
    es_relay_hdr last_hdr{};  // the last good frame header (for a bad one's report)
    uint64_t done = 0, done_published = 0;  // bytes of its clients forwarded or dropped (es_relay_cfg.socket_done)
  };

  // relay.cpp: the sockets, frames, the loop
  void loop();
  void reset_relay_socket(RelaySock& s);
  void cleanup_previous();
  void on_bad_stream(RelaySock& s, const char* what);
  size_t next_header(const RelaySock& s, size_t from, size_t to, bool whole) const;
  // rotate: the socket whose key is renewed (bytes out of step may have carried it)
  void frame_lost(uint64_t client, const char* what, RelaySock* rotate);
  void new_key(RelaySock& s);
  void on_relay_readable(RelaySock& s);
  RelaySock& sock_of(uint64_t pod) { return socks_[es_relay_slot(pod, static_cast<uint32_t>(socks_.size()))]; }
  void handle_frame(const es_relay_hdr& h, const uint8_t* payload, size_t n);
  Client* client_for(uint64_t cookie);
  void bytes_done(uint64_t pod, uint64_t n);
  void publish_pods(bool all = true);
  void pump(Client& c);
  bool write_front(Client& c, Upstream& u);
  void frame_done(Client& c, uint64_t upstream);
  void publish_done_total(bool all = true);
  void write_cfg();  // es_relay_cfg: the sockets, their keys, the bounds and the bytes done
  void count(RelayCounter c, uint64_t n = 1);
  void update_gauges();
  // relay_upstream.cpp: the upstreams and their pool
  Upstream* upstream_for(Client& c, const Frame& f);
  Upstream* start_connect(uint32_t svc_id, uint32_t env_id, uint64_t client,
                          const std::shared_ptr<const podnet::NetNs>& ns);
  void on_upstream_event(uint64_t cookie, uint32_t events);
  void finish_connect(Upstream& u);
  bool register_upstream(Upstream& u);
  void note_hint(const Client& c, const Upstream& u);
  void bind_upstream(Upstream& u, Client& c);
  Upstream* take_pooled(const PoolKey& k);
  void close_upstream(uint64_t cookie, RelayCounter why);
  void on_upstream_closed(Upstream& u);
  bool settle(Upstream& u);  // true: the client is alive
  Snapshot owed(const Upstream& u) const;
  void warm_up(const PoolKey& k);
  void warm_pending();  // warm_up() of the pools taken from in this turn of the loop
  // relay_sweep.cpp: clients gone, timeouts, pods gone, pool upkeep
  void on_client_events();
  void on_client_gone(uint64_t client);
  bool client_alive(uint64_t client) const;
  void sweep();
  void sweep_upstream(Upstream& u);
  void reap_clients();
  bool backend_in_set(const Upstream& u);
  void fail_client(Client& c, RelayCounter why);
  // Removes the client's kernel entries. Bytes the kernel counted for it that the relay has not
  // read (seen: those it has) are done with a second later, less what arrives meanwhile.
  void forget_client(uint64_t client, uint64_t seen = 0);
  void credit_forgotten();
  void flush_forgotten();
  void resync_total();
  void find_lost_frames();
  struct Unfinished {
    uint64_t client;
    uint32_t sent;  // frames the kernel sent
    uint64_t pod;   // the client's pod: its relay socket
  };
  bool unfinished_clients(std::vector<Unfinished>& out, size_t cap) const;
  // relay_diag.cpp: client resets and fences through sock_diag
  int client_diag(uint64_t client, uint16_t type, uint8_t ext);
  bool destroy_client(uint64_t client);
  std::shared_ptr<const podnet::NetNs> client_ns(uint64_t client, uint64_t pod);
  int diag_socket(const podnet::NetNs* ns);
  void drop_pod_nets();
  void unbind(const Upstream& u);

  const maps::BpfMapBackend& m_;  // the Datapath's maps; it outlives the relay
  RelayOptions o_;
  int binds_ = -1, upstreams_ = -1, clients_map_ = -1, done_ = -1, cfg_ = -1, sockhash_ = -1, sets_ = -1,
      slots_ = -1, rsp_ = -1, acct_ = -1, pods_ = -1, pod_done_map_ = -1, hints_ = -1;
  std::vector<RelaySock> socks_;  // made in start(), before the thread runs; never resized after
  UniqueFd epoll_, wake_;
  UniqueFd diag_;          // NETLINK_SOCK_DIAG, for client resets and fences
  std::map<uint64_t, UniqueFd> diags_;  // the same in pods' namespaces, by namespace inode
  podnet::PodNets nets_;   // pods' network namespaces (relay thread; start() before it runs)
  uint32_t diag_seq_ = 0;
  ring_buffer* events_ = nullptr;  // es_relay_ev
  es_http_cfg http_cfg_{};  // for counting request heads: no env names needed
  std::map<uint64_t, Upstream> ups_;  // by upstream cookie
  std::unordered_map<uint64_t, Client> clients_;
  std::unordered_map<uint64_t, uint32_t> pod_clients_;  // pod cgroup -> clients here
  // pod in the agent's own namespace -> its last new client
  std::unordered_map<uint64_t, std::chrono::steady_clock::time_point> pod_seen_;
  std::map<PoolKey, std::deque<uint64_t>> pool_;        // pooled upstream cookies, oldest first
  std::map<PoolKey, Want> wanted_;                       // pools that recently needed one
  std::map<SetKey, std::vector<es_backend>> set_cache_;  // a sweep's view of the sets
  std::map<PoolKey, uint32_t> warming_;  // connects under way for the pool
  std::vector<PoolKey> warm_later_;      // pools to refill at the end of the turn, after the frames went out
  size_t pool_size_ = 0;                 // upstreams in pool_, all pools
  std::map<PoolKey, uint32_t> demand_, rate_;  // binds this sweep period, and the last
  std::vector<uint64_t> gone_;        // client cookies reported closing by the kernel
  std::vector<uint64_t> dead_;        // clients failed or gone, removed by reap_clients()
  uint64_t done_total_ = 0, done_total_published_ = 0;
  std::unordered_map<uint64_t, uint64_t> pod_done_;  // pod cgroup -> bytes forwarded or dropped
  std::vector<uint64_t> pod_dirty_;                  // pods whose pod_done_ is not yet in the map
  std::unordered_map<uint64_t, uint64_t> pod_published_;  // pod cgroup -> its pod_done_ last written
  std::chrono::steady_clock::time_point next_resync_{}, next_lost_check_{};
  std::unordered_map<uint64_t, uint32_t> lost_suspects_;  // client -> frames sent, seen missing once
  // Clients forgotten with bytes counted by the kernel and not read here: their frames on the
  // way are subtracted as they come; the rest never arrives and is done with a second later.
  struct Forgotten {
    uint64_t pod = 0, pending = 0;
    std::chrono::steady_clock::time_point at;
  };
  std::unordered_map<uint64_t, Forgotten> forgotten_;
  std::vector<uint64_t> done_stale_;  // es_relay_done entries to delete (one batch per loop turn)
  uint64_t queued_bytes_ = 0;
  std::thread thread_;
  std::atomic<bool> running_{false};
  std::array<std::atomic<uint64_t>, static_cast<size_t>(RelayCounter::kCount)> counters_{};
  std::set<uint64_t> netns_warned_;  // pods whose namespace could not be found (logged once)
  std::atomic<uint64_t> g_netns_{0};
  // per relay socket, for the status: cookie, frames read, bytes done with
  std::array<std::atomic<uint64_t>, ES_RELAY_SOCKETS_MAX> g_sock_cookie_{}, g_sock_frames_{}, g_sock_done_{};
  std::atomic<uint64_t> g_active_{0}, g_pooled_{0}, g_connecting_{0}, g_clients_{0}, g_queued_{0}, g_done_{0};
};

}  // namespace envsteer
