// SPDX-License-Identifier: Apache-2.0
// HTTP/2 per stream: the agent's HTTP/2 endpoint (README "HTTP/2 and gRPC").
//
// One HTTP/2 connection multiplexes streams of several environments, and HPACK
// hides each stream's headers from the kernel. So a connection from a managed
// pod to a declared HTTP/2 port (appProtocol kubernetes.io/h2c or grpc, or a
// port named grpc*, http2*, h2c*) of a service with ready pods in more than one
// backend set is made to this endpoint instead (connect4/6, bpf/lib/steer.h);
// sockops records the service and the calling pod under the client's address
// (es_h2_conns). The endpoint terminates HTTP/2 toward the client (libnghttp2)
// and routes every stream by its own environment: its env header (the same
// names, aliases and baggage member as HTTP/1.x), else the caller's own
// environment (the pod's label, else the default), walked with the kernel's
// walk over the live maps (h2route.h). Each stream goes on an HTTP/2 upstream
// connection of this client connection to a pod of its backend set (one per
// set, opened on first need). Connections to services with one backend set
// never come here.
//
// Bounds: client connections; concurrent streams per client connection
// (SETTINGS_MAX_CONCURRENT_STREAMS); upstream connections per client
// connection; bytes buffered: flow control is end to end (a window is given
// back to a sender only when the bytes went on to the other side), so what one
// client connection can make the agent hold is its windows, whatever it or the
// server does (a client that never reads stops its servers, not the agent).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "h2route.h"
#include "maps/abi.h"
#include "maps/bpf_maps.h"
#include "podnet.h"

namespace envsteer {

struct H2Options {
  std::string listen = "127.0.0.1:15002";  // the endpoint, ADDR:PORT ([V6]:PORT)
  h2::RouteConfig route;
  std::string inject_name = "x-virtual-env";  // header added by auto-inject (lower case)
  uint32_t max_clients = 1024;          // client connections at once (beyond: closed at accept, counted)
  uint32_t max_clients_per_pod = 256;   // the same, of one calling pod (one pod cannot take them all)
  uint32_t max_streams = 128;           // concurrent streams per client connection
  uint32_t max_upstreams = 8;           // upstream connections per client connection
  uint32_t window = 1u << 20;           // per-stream flow-control window, both directions
  uint32_t conn_window = 2u << 20;      // per-connection window, both directions
  std::chrono::milliseconds connect_timeout{2000};
  // A client connection whose first bytes (the preface, or an h2c Upgrade
  // request with its body) have not arrived this long after accept: closed.
  std::chrono::milliseconds opening_timeout{30000};
  std::chrono::milliseconds upstream_idle{60000};  // an upstream without streams this long: closed
  // The cgroup directory of a pod: upstreams are opened in the calling pod's
  // network namespace (podnet.h), so servers see the pod's own address.
  podnet::PodNets::Resolver pod_dir;
};

// The endpoint's counters: one list names them for the status, the metrics and the code.
#define ES_H2_COUNTERS(X)                                                  \
  X(accepted, "connections_total", "event", "accepted")                   \
  X(unknown, "connections_total", "event", "unknown_caller")             \
  X(refused_max_clients, "connections_total", "event", "refused_max_clients") \
  X(refused_pod_share, "connections_total", "event", "refused_max_clients_per_pod") \
  X(opening_timeout, "connections_total", "event", "opening_timeout")     \
  X(closed, "connections_total", "event", "closed")                       \
  X(upgraded, "connections_total", "event", "h2c_upgrade")                \
  X(http1_refused, "connections_total", "event", "http1_refused")         \
  X(up_connects, "upstreams_total", "event", "connect")                   \
  X(up_connect_failed, "upstreams_total", "event", "connect_failed")     \
  X(up_lost, "upstreams_total", "event", "lost")                          \
  X(up_goaway, "upstreams_total", "event", "goaway")                      \
  X(up_idle, "upstreams_total", "event", "idle_closed")                   \
  X(up_moved, "upstreams_total", "event", "pod_left_set")                 \
  X(retried, "retries_total", "event", "retried")                         \
  X(retry_gave_up, "retries_total", "event", "gave_up")                   \
  X(protocol_errors, "errors_total", "kind", "protocol")                  \
  X(max_upstreams, "errors_total", "kind", "max_upstreams")               \
  X(streams_refused, "errors_total", "kind", "max_streams")               \
  X(pod_netns, "errors_total", "kind", "pod_netns")                       \
  X(injected, "headers_inserted_total", "", "")

class H2Proxy {
 public:
  using TraceFn = std::function<void(const es_trace_event&)>;
  // maps: the Datapath's (agent/loader.h), which outlives the endpoint. trace:
  // called on the endpoint's thread for every stream decision (may be empty).
  H2Proxy(const maps::BpfMapBackend& maps, H2Options o, TraceFn trace);
  ~H2Proxy();
  H2Proxy(const H2Proxy&) = delete;
  H2Proxy& operator=(const H2Proxy&) = delete;

  // Binds the listener (throws std::runtime_error), starts the thread, then
  // publishes the endpoint to the programs (es_h2_cfg).
  void start();
  // Sends GOAWAY to every client and closes everything. The endpoint stays
  // published for the next agent (new connections are refused meanwhile).
  void stop();

  nlohmann::json status_json() const;
  // Prometheus text: the counters, gauges and streams by service, environment
  // and outcome (names from the callers' functions; called under the agent's lock).
  std::string metrics(const std::function<std::string(uint32_t)>& svc_name,
                      const std::function<std::string(uint32_t)>& env_name) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> p_;
};

// Stream outcomes (the `outcome` label of envsteer_h2_streams_total).
enum class StreamOutcome : uint32_t {
  Header = 0,      // routed by the stream's own env header
  Caller,          // no env header: the caller's own environment (counted fallback)
  Invalid,         // an invalid env header: the caller's own environment (counted)
  NoPod,           // no ready pod for the chain: UNAVAILABLE / 503
  UpstreamFailed,  // the upstream connection failed or was lost: UNAVAILABLE / reset
  Limit,           // a bound was hit (upstreams per client connection): UNAVAILABLE / 503
  kCount
};
const char* stream_outcome_name(StreamOutcome o);

}  // namespace envsteer
