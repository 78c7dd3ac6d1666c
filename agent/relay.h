// SPDX-License-Identifier: Apache-2.0
// Per-request steering, the agent's part: the slow path of a re-routed request.
//
// The sk_msg program re-routes a request whose environment resolves to another
// backend set than its connection's. When no upstream is bound yet for
// (client connection, set), it frames the bytes (struct es_relay_hdr) and
// queues them on the relay socket, a loopback TCP socket of this agent whose
// listener is closed at once (nothing outside the kernel can write to it). The
// relay thread reads the frames, opens an upstream connection to a pod of the
// set, registers it (es_upstreams, es_sockhash, es_binds), forwards the bytes
// and records the frame as done (es_relay_done). Later requests of the client
// for that set go to the upstream in the kernel; responses come back into the
// client's socket through the sk_skb verdict program.
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
//     way): the upstream is closed, the client is untouched, and its next
//     request for that target binds a new upstream through the relay;
//   - a request unanswered, a response cut short or framed by the close (or
//     after an upgrade), framing the kernel could not follow: the client
//     connection is reset (SOCK_DESTROY, counted), as the application would
//     see the failure on a direct connection, rather than wait for ever.
// An upstream the relay unbinds while it still owes something is closed once
// it owes nothing, or when the server or the client closes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bpf/lib/response.h"
#include "maps/abi.h"
#include "maps/bpf_maps.h"

namespace envsteer {

struct RelayOptions {
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds send_timeout{5000};
  std::chrono::milliseconds idle_timeout{60000};  // an upstream with no traffic is closed
  uint32_t max_frames = 64;                       // frames a client may have queued here
  uint32_t max_frame_bytes = 1u << 20;            // larger frames are a protocol error
};

struct RelayStats {
  uint64_t frames = 0, bytes = 0;
  uint64_t upstreams_opened = 0, connect_failures = 0, no_backend = 0;
  uint64_t closed_client_gone = 0, closed_idle = 0, closed_by_server = 0, closed_pod_gone = 0;
  uint64_t clients_destroyed = 0, destroy_failures = 0, protocol_errors = 0, forward_failures = 0;
  // why a client was reset when an upstream of its closed: what the upstream still owed it
  uint64_t reset_request = 0, reset_response = 0, reset_until_close = 0, reset_unframed = 0;
  // a request for a target whose previous upstream still owed a response: refused (reset)
  uint64_t reset_reorder = 0;
  uint64_t active = 0;
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
  // Unregisters the relay socket and closes every upstream.
  void stop();

  RelayStats stats() const;
  nlohmann::json status_json() const;

 private:
  struct Upstream {
    int fd = -1;
    uint64_t cookie = 0, client = 0;
    uint32_t svc_id = 0, env_id = 0;
    std::string backend;  // "addr:port"
    uint64_t slow_reqs = 0;  // request heads the relay forwarded (the kernel counts its own)
    es_http_state req{};     // the relay's parse of the bytes it forwarded
    bool req_unframed = false;  // they were not HTTP/1.x requests: the counts cannot be trusted
    bool unbound = false;       // binding removed and client fenced: closed once it owes nothing
  };

  // What an upstream still owes its client.
  enum class Owed { Nothing, Request, Response, UntilClose, Unframed };
  struct Snapshot {
    Owed owed = Owed::Unframed;
    uint64_t reqs = 0, done = 0;
    unsigned phase = 0, status = 0;
  };

  void loop();
  void on_relay_readable();
  void handle_frame(const es_relay_hdr& h, const uint8_t* payload, size_t n);
  Upstream* open_upstream(uint64_t client, uint32_t svc_id, uint32_t env_id);
  void close_upstream(uint64_t cookie, bool destroy_client, const char* why);
  void on_upstream_closed(uint64_t cookie);
  void settle(Upstream& u);
  Snapshot owed(const Upstream& u) const;
  bool client_alive(uint64_t client) const;
  void sweep();
  void unbind(const Upstream& u);
  void forget_client(uint64_t client);
  int client_diag(uint64_t client, uint16_t type, uint8_t ext) const;
  bool destroy_client(uint64_t client);
  void reset_relay_socket();
  void cleanup_previous();

  const maps::BpfMapBackend& m_;  // the Datapath's maps; it outlives the relay
  RelayOptions o_;
  int binds_ = -1, upstreams_ = -1, clients_ = -1, done_ = -1, cfg_ = -1, sockhash_ = -1, sets_ = -1,
      slots_ = -1, rsp_ = -1;
  int relay_ = -1, relay_peer_ = -1, epoll_ = -1, wake_ = -1;
  uint64_t relay_cookie_ = 0;
  std::vector<uint8_t> buf_;
  es_http_cfg http_cfg_{};  // for counting request heads: no env names needed
  std::map<uint64_t, Upstream> ups_;  // by upstream cookie
  std::thread thread_;
  std::atomic<bool> running_{false};
  mutable std::mutex mu_;  // guards stats_
  RelayStats stats_;
};

}  // namespace envsteer
