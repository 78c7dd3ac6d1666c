// SPDX-License-Identifier: Apache-2.0
// Kubernetes Events for objects the agent skips (a bad env label, a Service on
// a taken address, ...), so that whoever owns the object sees why in
// `kubectl describe`. Best effort and off the agent's loop: one sender thread,
// a bounded queue, a rate limit. Every agent sees the same cluster-wide skips,
// so an Event's name is derived from what it reports: the first agent creates
// it, the others get 409 AlreadyExists and stop there.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "sources/kubeclient.h"

namespace envsteer::sources {

struct EventSpec {
  std::string kind;     // "Pod", "Service", "EndpointSlice"
  std::string ns, name, uid;
  std::string field;    // "" = the whole object
  std::string reason;   // snake_case code, e.g. "invalid_env"
  std::string message;
};

// "SkippedInvalidEnv" for "invalid_env".
std::string event_reason(const std::string& code);
// metadata.name of the Event for spec: "<object name>.envsteer-<8 hex digits>",
// the same on every node for the same object, field and reason.
std::string event_name(const EventSpec& spec);
// The core/v1 Event to POST to /api/v1/namespaces/<ns>/events.
nlohmann::json skip_event(const EventSpec& spec, const std::string& node,
                          std::chrono::system_clock::time_point now);

class EventRecorder {
 public:
  struct Options {
    std::string node;           // reportingInstance, source.host
    size_t queue = 100;         // Events waiting; more are dropped
    int burst = 10;             // token bucket: at most `burst` at once,
    std::chrono::milliseconds refill{6000};  // then one per refill interval
  };
  struct Stats {
    uint64_t posted = 0, exists = 0, failed = 0, dropped = 0;
  };

  EventRecorder(KubeConfig cfg, Options opt);
  ~EventRecorder();
  EventRecorder(const EventRecorder&) = delete;
  EventRecorder& operator=(const EventRecorder&) = delete;

  // Queues an Event; dropped (counted) when the queue is full.
  void record(EventSpec spec);
  Stats stats() const;

 private:
  void run();

  KubeClient client_;
  Options opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EventSpec> queue_;
  Stats stats_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace envsteer::sources
