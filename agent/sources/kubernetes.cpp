// SPDX-License-Identifier: Apache-2.0
#include "sources/kubernetes.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <optional>
#include <tuple>
#include <type_traits>
#include <variant>

#include "k8s/decode.h"

using nlohmann::json;

namespace envsteer::sources {

enum class Kind { Service, Slice, Pod, VirtualEnv, Namespace };

// An object as a watch keeps it: decoded when it arrives (compact: only the
// fields envsteer uses; the JSON goes at once), or why it could not be; the
// VirtualEnvironment as JSON (few, read by decode_virtual_env).
using Stored = std::variant<k8s::Service, k8s::Pod, k8s::EndpointSlice, k8s::Namespace, k8s::InvalidObject, json>;

struct KubernetesSource::Watch {
  std::string name;   // for logs and status
  Kind kind;
  std::string path;   // collection path
  std::string query;  // selectors
  bool optional = false;  // 404 means "not installed" (the CRD)
  std::unique_ptr<KubeClient> client;
  std::thread thread;
  // state, under mu_
  std::map<std::string, Stored> objects;  // "ns/name" -> object (a Namespace: "name")
  bool listed = false;
  bool absent = false;
  std::string rv, last_error;
  uint64_t events = 0, relists = 0, errors = 0;
  std::chrono::system_clock::time_point last_ok{};
};

namespace {

// j[k] when it is an object, else an empty object (API objects have null fields).
const json& obj_at(const json& j, const char* k) {
  static const json empty = json::object();
  if (!j.is_object()) return empty;
  auto it = j.find(k);
  return it != j.end() && it->is_object() ? *it : empty;
}

std::string str_at(const json& j, const char* k) {
  if (!j.is_object()) return "";
  auto it = j.find(k);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

// "ns/name"; a Namespace (cluster-scoped) by its name.
std::string key_of(Kind kind, const json& obj) {
  const json& m = obj_at(obj, "metadata");
  if (kind == Kind::Namespace) return str_at(m, "name");
  return k8s::object_key(str_at(m, "namespace"), str_at(m, "name"));
}

ObjectChange::Kind change_kind(Kind k) {
  switch (k) {
    case Kind::Service: return ObjectChange::Kind::Service;
    case Kind::Slice: return ObjectChange::Kind::EndpointSlice;
    case Kind::Namespace: return ObjectChange::Kind::Namespace;
    default: return ObjectChange::Kind::Pod;
  }
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Service: return "Service";
    case Kind::Slice: return "EndpointSlice";
    case Kind::Namespace: return "Namespace";
    default: return "Pod";
  }
}

// What the watch keeps of an object: it decoded, or why it could not be.
Stored decoded(Kind kind, const std::string& key, const json& obj) {
  try {
    switch (kind) {
      case Kind::Service: return k8s::decode_service(obj);
      case Kind::Slice: return k8s::decode_endpoint_slice(obj);
      case Kind::Pod: return k8s::decode_pod(obj);
      case Kind::Namespace: return k8s::decode_namespace(obj);
      case Kind::VirtualEnv: return Stored(std::in_place_type<json>, obj);
    }
  } catch (const std::exception& e) {
    // reported by the model (status, metrics, one log line while it lasts)
    return k8s::InvalidObject{kind_name(kind), key, str_at(obj_at(obj, "metadata"), "uid"), e.what()};
  }
  return Stored(std::in_place_type<json>, obj);
}

std::string status_message(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("message") && j["message"].is_string()) return j["message"].get<std::string>();
  return body.substr(0, 200);
}

}  // namespace

KubernetesSource::KubernetesSource(KubeConfig cfg, KubernetesOptions opt) : cfg_(std::move(cfg)), opt_(std::move(opt)) {
  efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  auto add = [&](std::string name, Kind kind, std::string path, std::string query, bool optional = false) {
    auto w = std::make_unique<Watch>();
    w->name = std::move(name);
    w->kind = kind;
    w->path = std::move(path);
    w->query = std::move(query);
    w->optional = optional;
    w->client = std::make_unique<KubeClient>(cfg_);
    watches_.push_back(std::move(w));
  };
  add("services", Kind::Service, "/api/v1/services", "");
  add("endpointslices", Kind::Slice, "/apis/discovery.k8s.io/v1/endpointslices", "");
  // Pods cluster-wide only with the env label (labelled pods are few) ...
  add("pods (labelled)", Kind::Pod, "/api/v1/pods", "labelSelector=" + url_escape(opt_.env_label));
  // ... and every pod of this node, for its cgroup.
  if (!opt_.node_name.empty())
    add("pods (this node)", Kind::Pod, "/api/v1/pods", "fieldSelector=" + url_escape("spec.nodeName=" + opt_.node_name));
  if (opt_.watch_namespaces) add("namespaces", Kind::Namespace, "/api/v1/namespaces", "");
  add("virtualenvironments", Kind::VirtualEnv, "/apis/env.alibaba.com/v1alpha2/virtualenvironments", "", true);
}

KubernetesSource::~KubernetesSource() {
  stop();
  if (efd_ >= 0) close(efd_);
}

void KubernetesSource::start() {
  for (auto& w : watches_) w->thread = std::thread([this, &w] { run(*w); });
}

void KubernetesSource::stop() {
  stop_ = true;
  for (auto& w : watches_)
    if (w->thread.joinable()) w->thread.join();
}

void KubernetesSource::notify() {
  uint64_t one = 1;
  (void)!write(efd_, &one, sizeof(one));
}

void KubernetesSource::drain() {
  uint64_t v;
  while (read(efd_, &v, sizeof(v)) == sizeof(v)) {
  }
}

bool KubernetesSource::list(Watch& w, std::string* rv, std::string* err) {
  std::map<std::string, Stored> fresh;
  std::string cont;
  for (int page = 0; page < 100000; page++) {
    std::string q = "?limit=" + std::to_string(opt_.page_size);
    if (!w.query.empty()) q += "&" + w.query;
    if (!cont.empty()) q += "&continue=" + url_escape(cont);
    auto r = w.client->get(w.path + q);
    if (r.status == 404 && w.optional) {
      std::lock_guard<std::mutex> g(mu_);
      w.absent = true;
      w.listed = true;
      *err = "not installed (404)";
      return false;
    }
    if (r.status == 410) {  // continue token expired: start the list over
      cont.clear();
      fresh.clear();
      continue;
    }
    if (r.status != 200) {
      *err = r.status ? "list " + w.path + ": HTTP " + std::to_string(r.status) + ": " + status_message(r.body)
                      : "list " + w.path + ": " + r.error;
      return false;
    }
    auto j = json::parse(r.body, nullptr, false);
    if (!j.is_object() || !j.contains("items") || !(j["items"].is_array() || j["items"].is_null())) {
      *err = "list " + w.path + ": response is not a list";
      return false;
    }
    if (j["items"].is_array())
      for (auto& item : j["items"]) {
        std::string key = key_of(w.kind, item);
        fresh.insert_or_assign(key, decoded(w.kind, key, item));
        item = nullptr;  // the page's copy goes now
      }
    const json& m = obj_at(j, "metadata");
    *rv = str_at(m, "resourceVersion");
    cont = str_at(m, "continue");
    if (cont.empty()) break;
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& [key, obj] : w.objects) note_change(w, key);  // a re-list: old and new may differ
    for (const auto& [key, obj] : fresh) note_change(w, key);
    w.objects = std::move(fresh);
    w.listed = true;
    w.absent = false;
    w.rv = *rv;
    w.relists++;
    w.last_error.clear();
    w.last_ok = std::chrono::system_clock::now();
  }
  notify();
  return true;
}

void KubernetesSource::apply_event(Watch& w, const std::string& type, const json& obj,
                                   std::chrono::steady_clock::time_point read) {
  const std::string key = key_of(w.kind, obj);
  std::optional<Stored> now;
  if (type != "DELETED") now = decoded(w.kind, key, obj);  // outside the lock
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!now) w.objects.erase(key);
    else w.objects.insert_or_assign(key, std::move(*now));
    note_change(w, key, read);
    w.events++;
    w.last_ok = std::chrono::system_clock::now();
  }
  notify();
}

KubernetesSource::WatchEnd KubernetesSource::watch(Watch& w, std::string* rv, std::string* err) {
  std::string q = "?watch=1&allowWatchBookmarks=true&resourceVersion=" + url_escape(*rv) +
                  "&timeoutSeconds=" + std::to_string(opt_.watch_timeout_seconds);
  if (!w.query.empty()) q += "&" + w.query;
  bool gone = false;
  auto r = w.client->stream(w.path + q, [&](std::string_view line) {
    const auto read = std::chrono::steady_clock::now();
    auto ev = json::parse(line, nullptr, false);
    if (!ev.is_object() || !ev.contains("object") || !ev["object"].is_object()) return true;  // not an event
    const std::string type = str_at(ev, "type");
    const json& obj = ev["object"];
    std::string orv = str_at(obj_at(obj, "metadata"), "resourceVersion");
    if (type == "ERROR") {
      auto code = obj.find("code");
      if (code != obj.end() && code->is_number() && code->get<int>() == 410) gone = true;
      else *err = "watch " + w.path + ": " + (str_at(obj, "message").empty() ? "error event" : str_at(obj, "message"));
      return false;
    }
    if (!orv.empty()) *rv = orv;
    {
      std::lock_guard<std::mutex> g(mu_);
      w.last_error.clear();  // the stream works again
    }
    if (type == "BOOKMARK") {
      std::lock_guard<std::mutex> g(mu_);
      w.rv = *rv;
      w.last_ok = std::chrono::system_clock::now();
      return true;
    }
    if (type == "ADDED" || type == "MODIFIED" || type == "DELETED") apply_event(w, type, obj, read);
    std::lock_guard<std::mutex> g(mu_);
    w.rv = *rv;
    return true;
  }, stop_, std::chrono::seconds(opt_.watch_timeout_seconds + 60));
  if (stop_) return WatchEnd::Stopped;
  if (gone || r.status == 410) return WatchEnd::Gone;
  if (r.status != 200) {
    *err = r.status ? "watch " + w.path + ": HTTP " + std::to_string(r.status) + ": " + status_message(r.body)
                    : "watch " + w.path + ": " + r.error;
    return WatchEnd::Broken;
  }
  if (!r.error.empty()) {
    *err = "watch " + w.path + ": " + r.error;
    return WatchEnd::Broken;
  }
  return err->empty() ? WatchEnd::Timeout : WatchEnd::Broken;
}

void KubernetesSource::run(Watch& w) {
  std::mt19937 rng(std::random_device{}());
  auto backoff = opt_.backoff_min;
  std::string rv;
  bool need_list = true;
  auto sleep_for = [&](std::chrono::milliseconds d) {
    auto until = std::chrono::steady_clock::now() + d;
    while (!stop_ && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  };
  auto failed = [&](const std::string& err) {
    {
      std::lock_guard<std::mutex> g(mu_);
      w.errors++;
      w.last_error = err;
    }
    // exponential backoff with full jitter, keeping the last good state
    std::uniform_int_distribution<long> jitter(backoff.count() / 2, backoff.count());
    auto d = std::chrono::milliseconds(jitter(rng));
    spdlog::warn("kubernetes: {}: {}; retrying in {} ms (serving the last good state)", w.name, err, d.count());
    sleep_for(d);
    backoff = std::min(backoff * 2, opt_.backoff_max);
  };
  while (!stop_) {
    std::string err;
    if (need_list) {
      if (!list(w, &rv, &err)) {
        bool absent;
        {
          std::lock_guard<std::mutex> g(mu_);
          absent = w.absent;
        }
        if (absent) {  // optional resource not installed: look again now and then
          sleep_for(std::chrono::seconds(30));
          continue;
        }
        failed(err);
        continue;
      }
      spdlog::info("kubernetes: {}: listed at resourceVersion {}", w.name, rv);
      need_list = false;
      backoff = opt_.backoff_min;
    }
    auto end = watch(w, &rv, &err);
    switch (end) {
      case WatchEnd::Stopped:
        return;
      case WatchEnd::Timeout:
        backoff = opt_.backoff_min;
        break;  // re-watch from rv
      case WatchEnd::Gone:
        spdlog::info("kubernetes: {}: resourceVersion {} expired (410); re-listing", w.name, rv);
        need_list = true;
        break;
      case WatchEnd::Broken:
        failed(err);
        break;  // re-watch from rv; a 410 on that watch triggers a re-list
    }
    if (end != WatchEnd::Broken) {
      std::lock_guard<std::mutex> g(mu_);
      w.last_error.clear();
    }
  }
}

bool KubernetesSource::synced() const {
  std::lock_guard<std::mutex> g(mu_);
  for (const auto& w : watches_)
    if (!w->listed) return false;
  return true;
}

void KubernetesSource::note_change(const Watch& w, const std::string& key, std::chrono::steady_clock::time_point read) {
  if (w.kind == Kind::VirtualEnv) return;
  const auto now = std::chrono::steady_clock::now();
  changed_.try_emplace({static_cast<int>(w.kind), key}, EventTimes{read == decltype(read){} ? now : read, now});
}

// One object as the watches have it now (the two pod watches overlap: the
// last one that has it, as in snapshot()).
ObjectChange KubernetesSource::current(int kind, const std::string& key) const {
  const Kind k = static_cast<Kind>(kind);
  ObjectChange c{change_kind(k), key, {}};
  const Stored* obj = nullptr;
  for (const auto& w : watches_) {
    if (w->kind != k) continue;
    if (auto it = w->objects.find(key); it != w->objects.end()) obj = &it->second;
  }
  if (!obj) return c;
  std::visit(
      [&](const auto& o) {
        if constexpr (!std::is_same_v<std::decay_t<decltype(o)>, json>) c.object = o;
      },
      *obj);
  return c;
}

std::vector<ObjectChange> KubernetesSource::take_changes(std::vector<EventTimes>* received) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<ObjectChange> out;
  out.reserve(changed_.size());
  for (const auto& [k, at] : changed_) {
    out.push_back(current(k.first, k.second));
    if (received) received->push_back(at);
  }
  changed_.clear();
  return out;
}

k8s::ClusterState KubernetesSource::snapshot() {
  k8s::ClusterState cs;
  std::lock_guard<std::mutex> g(mu_);
  changed_.clear();
  for (const auto& w : watches_) {
    for (const auto& [key, obj] : w->objects) {
      // the two pod watches overlap: the later one's copy, as in current()
      if (const auto* o = std::get_if<k8s::Service>(&obj)) cs.services[key] = *o;
      else if (const auto* o = std::get_if<k8s::EndpointSlice>(&obj)) cs.slices[key] = *o;
      else if (const auto* o = std::get_if<k8s::Pod>(&obj)) cs.pods[key] = *o;
      else if (const auto* o = std::get_if<k8s::Namespace>(&obj)) cs.namespaces[key] = *o;
      else if (const auto* o = std::get_if<k8s::InvalidObject>(&obj)) cs.invalid.push_back(*o);
    }
  }
  // the two pod watches overlap: one entry per object
  std::sort(cs.invalid.begin(), cs.invalid.end(), [](const k8s::InvalidObject& a, const k8s::InvalidObject& b) {
    return std::tie(a.kind, a.key) < std::tie(b.kind, b.key);
  });
  cs.invalid.erase(std::unique(cs.invalid.begin(), cs.invalid.end(),
                               [](const k8s::InvalidObject& a, const k8s::InvalidObject& b) {
                                 return a.kind == b.kind && a.key == b.key;
                               }),
                   cs.invalid.end());
  return cs;
}

std::optional<VirtualEnvSettings> KubernetesSource::virtual_env() const {
  std::lock_guard<std::mutex> g(mu_);
  for (const auto& w : watches_) {
    if (w->kind != Kind::VirtualEnv || w->objects.empty()) continue;
    // the first by namespace/name (the watch keys its objects so): k8s::pick_virtual_env's rule
    const auto* obj = std::get_if<json>(&w->objects.begin()->second);
    if (!obj) continue;
    VirtualEnvSettings v = k8s::decode_virtual_env(*obj);
    return v;
  }
  return std::nullopt;
}

json KubernetesSource::status() const {
  std::lock_guard<std::mutex> g(mu_);
  json j;
  j["server"] = cfg_.server;
  j["config"] = cfg_.source;
  json ws = json::array();
  for (const auto& w : watches_) {
    ws.push_back({{"resource", w->name},
                  {"listed", w->listed},
                  {"installed", !w->absent},
                  {"objects", w->objects.size()},
                  {"resourceVersion", w->rv},
                  {"events", w->events},
                  {"relists", w->relists},
                  {"errors", w->errors},
                  {"last_error", w->last_error},
                  {"last_ok_unix", std::chrono::duration<double>(w->last_ok.time_since_epoch()).count()}});
  }
  j["watches"] = ws;
  return j;
}

}  // namespace envsteer::sources
