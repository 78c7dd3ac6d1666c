// SPDX-License-Identifier: Apache-2.0
// `envsteer trace`: decision events from the kernel's ring buffer (bpf/lib/trace.h),
// named with the agent's model and streamed to clients of the admin socket.
//
// The agent is the ring buffer's only reader and the only writer of the trace
// switch: it turns tracing on while at least one client is attached and off
// when the last one leaves (and at start-up, in case a previous agent died
// with it on). Clients get names (pods, services, environments) that only the
// agent's model knows, several clients can watch at once with their own
// filters, and no two readers ever fight over the ring buffer or the switch.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "maps/abi.h"
#include "maps/bpf_maps.h"
#include "model.h"
#include "reconciler.h"

#include "admin_server.h"

struct ring_buffer;

namespace envsteer {

// Names of the ids the kernel reports, from the last applied model.
struct NameTable {
  struct Service {
    std::string name;      // "ns/name"
    std::string frontend;  // "127.96.0.1:80/TCP"
  };
  std::map<uint32_t, Service> services;  // by svc_id
  std::map<uint32_t, std::string> envs;  // by env id ("<base>" for the unnamed base)
  std::map<uint64_t, std::string> pods;  // local pods by cgroup id
  std::map<std::string, std::string> pod_dirs;  // local pods by cgroup directory
  std::map<std::string, std::string> backends;  // "ip:port" -> pod

  std::string service(uint32_t id) const;   // "" when unknown
  std::string frontend(uint32_t id) const;  // "" when unknown
  std::string env(uint32_t id) const;       // "" for ES_ENV_NONE, "#<id>" when unknown
  std::string pod(uint64_t cgroup_id) const;
  // The pod whose cgroup is cgroup_id or an ancestor of it (processes sit in
  // container cgroups below their pod's): walks the pods' subtrees, bounded.
  std::string pod_of_cgroup(uint64_t cgroup_id) const;
  std::string backend_pod(const std::string& addr) const;
};

NameTable build_names(const DesiredState& model, const Shadow& shadow);

// "steered", "fallback", "default", "refused", "request-pass", ...; "kind-<n>" otherwise.
std::string event_kind_name(uint32_t kind);

// One event as JSON (the --json output). mono_to_real_ns converts the kernel's
// CLOCK_MONOTONIC timestamp to wall-clock time.
nlohmann::json decode_event(const es_trace_event& ev, const NameTable& names, int64_t mono_to_real_ns);
// One human-readable line (no newline) from decode_event()'s JSON.
std::string format_event(const nlohmann::json& ev);

struct TraceFilter {
  std::string service;  // "ns/name" or the frontend "ip:port/PROTO"; "" = any
  std::string env;      // requested, resolved, thread or pod environment; "" = any
  std::string pod;      // calling pod or backend pod "ns/name"; "" = any
  bool matches(const nlohmann::json& ev) const;
};

class TraceHub {
 public:
  static constexpr uint32_t kDefaultRate = 100;  // events per second per CPU
  static constexpr uint32_t kMaxRate = 10000;
  static constexpr size_t kMaxClients = 4;       // each holds an admin thread
  static constexpr size_t kQueueLimit = 4096;    // events waiting per client

  struct Client {
    TraceFilter filter;
    uint32_t rate = kDefaultRate;
    std::deque<nlohmann::json> queue;
    uint64_t dropped = 0;  // queue overflow (a slow client)
  };

  // Opens the pinned ring buffer and trace switch under <pin_dir>/maps and
  // turns tracing off. Throws std::runtime_error.
  // m: the Datapath's maps, which outlive the hub.
  TraceHub(const maps::BpfMapBackend& m, std::function<std::shared_ptr<const NameTable>()> names);
  ~TraceHub();
  TraceHub(const TraceHub&) = delete;
  TraceHub& operator=(const TraceHub&) = delete;

  // nullptr when kMaxClients are attached already.
  std::shared_ptr<Client> attach(TraceFilter filter, uint32_t rate);
  void detach(const std::shared_ptr<Client>& c);
  // Waits up to `wait` for events of c. nullopt once the hub is closed.
  std::optional<std::vector<nlohmann::json>> take(Client& c, std::chrono::milliseconds wait);
  size_t clients() const;
  // An event decided in user space (the HTTP/2 endpoint's streams): delivered
  // like the kernel's while a client is attached, within the lowest client rate.
  void publish(const es_trace_event& ev);
  // Stops the reader, releases every client, turns tracing off.
  void close();

 private:
  static int on_event(void* ctx, void* data, size_t size);
  void deliver(const nlohmann::json& ev);
  void run();
  void write_switch();  // under mu_

  int cfg_fd_ = -1, rb_fd_ = -1;  // not owned
  ring_buffer* rb_ = nullptr;
  std::function<std::shared_ptr<const NameTable>()> names_;
  std::shared_ptr<const NameTable> batch_names_;  // reader thread only
  std::map<uint64_t, std::string> pod_cache_;     // reader thread only; for batch_names_
  int64_t mono_to_real_ns_ = 0;                  // reader thread only
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Client>> clients_;
  bool closed_ = false;
  std::atomic<bool> active_{false};  // a client is attached (write_switch)
  std::chrono::steady_clock::time_point user_window_{};
  uint32_t user_sent_ = 0;  // publish()ed events in the current second
  std::thread reader_;
};

// GET /v1/trace?service=&env=&pod=&format=json|text&rate=N: a chunked stream
// of events, one per line; an empty line every second without events (so a
// client that went away is noticed). 429 when kMaxClients are attached. Served
// on the admin unix socket only (root).
admin::Response trace_response(TraceHub& hub, const admin::Request& q);

// `envsteer trace`: prints the stream of the agent at socket_path until count
// events (0 = no limit) or duration seconds (0 = no limit) or an interrupt. Exit code.
int run_trace_client(const std::string& socket_path, const TraceFilter& f, bool as_json, uint32_t rate, uint64_t count,
                     double duration);

}  // namespace envsteer
