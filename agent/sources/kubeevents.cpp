// SPDX-License-Identifier: Apache-2.0
#include "sources/kubeevents.h"

#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <ctime>

namespace envsteer::sources {

namespace {

std::string rfc3339(std::chrono::system_clock::time_point t) {
  std::time_t s = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

uint32_t fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

std::string status_message(const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("message") && j["message"].is_string()) return j["message"].get<std::string>();
  return body.substr(0, 200);
}

}  // namespace

std::string event_reason(const std::string& code) {
  std::string out = "Skipped";
  bool up = true;
  for (char c : code) {
    if (c == '_' || c == '-') {
      up = true;
      continue;
    }
    out.push_back(up ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c);
    up = false;
  }
  return out;
}

std::string event_name(const EventSpec& spec) {
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x",
                fnv1a(spec.kind + "\n" + spec.ns + "\n" + spec.name + "\n" + spec.uid + "\n" + spec.field + "\n" +
                      spec.reason));
  // a DNS subdomain of at most 253 characters: object names are; keep room for the suffix
  std::string base = spec.name.substr(0, 253 - 18);
  while (!base.empty() && (base.back() == '.' || base.back() == '-')) base.pop_back();
  if (base.empty()) base = "object";
  return base + ".envsteer-" + hex;
}

nlohmann::json skip_event(const EventSpec& spec, const std::string& node, std::chrono::system_clock::time_point now) {
  const std::string ts = rfc3339(now);
  nlohmann::json involved = {{"apiVersion", spec.kind == "EndpointSlice" ? "discovery.k8s.io/v1" : "v1"},
                             {"kind", spec.kind},
                             {"namespace", spec.ns},
                             {"name", spec.name}};
  if (!spec.uid.empty()) involved["uid"] = spec.uid;
  if (!spec.field.empty()) involved["fieldPath"] = spec.field;
  std::string message = spec.message.size() > 1024 ? spec.message.substr(0, 1021) + "..." : spec.message;
  return {{"apiVersion", "v1"},
          {"kind", "Event"},
          {"metadata", {{"name", event_name(spec)}, {"namespace", spec.ns}}},
          {"involvedObject", involved},
          {"reason", event_reason(spec.reason)},
          {"message", message},
          {"type", "Warning"},
          {"source", {{"component", "envsteer"}, {"host", node}}},
          {"reportingComponent", "envsteer.io/agent"},
          {"reportingInstance", node},
          {"firstTimestamp", ts},
          {"lastTimestamp", ts},
          {"count", 1}};
}

EventRecorder::EventRecorder(KubeConfig cfg, Options opt) : client_(std::move(cfg)), opt_(std::move(opt)) {
  // The sender takes no signal (the agent reads SIGTERM/SIGHUP from a signalfd
  // in its loop, and may create this before it blocks them).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  thread_ = std::thread([this] { run(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

EventRecorder::~EventRecorder() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EventRecorder::record(EventSpec spec) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (queue_.size() >= opt_.queue) {
      stats_.dropped++;
      return;
    }
    queue_.push_back(std::move(spec));
  }
  cv_.notify_all();
}

EventRecorder::Stats EventRecorder::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return stats_;
}

void EventRecorder::run() {
  using clock = std::chrono::steady_clock;
  double tokens = opt_.burst;
  auto last = clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    auto now = clock::now();
    tokens = std::min<double>(opt_.burst, tokens + std::chrono::duration<double>(now - last) /
                                                       std::chrono::duration<double>(opt_.refill));
    last = now;
    if (tokens < 1) {
      auto wait =
          std::chrono::duration_cast<clock::duration>((1 - tokens) * std::chrono::duration<double>(opt_.refill));
      cv_.wait_for(lk, wait, [&] { return stop_; });
      continue;
    }
    tokens -= 1;
    EventSpec spec = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    auto r = client_.post("/api/v1/namespaces/" + url_escape(spec.ns) + "/events",
                          skip_event(spec, opt_.node, std::chrono::system_clock::now()).dump(),
                          std::chrono::seconds(5));
    lk.lock();
    if (r.status == 201 || r.status == 200) {
      stats_.posted++;
    } else if (r.status == 409) {
      stats_.exists++;  // another agent (or this one, before a restart) reported it
    } else {
      stats_.failed++;
      spdlog::warn("kubernetes: Event for {} {}/{} not created: {}{}", spec.kind, spec.ns, spec.name,
                   r.status ? "HTTP " + std::to_string(r.status) + ": " + status_message(r.body) : r.error,
                   r.status == 403 ? " (the agent's ClusterRole needs create on events)" : "");
    }
  }
}

}  // namespace envsteer::sources
