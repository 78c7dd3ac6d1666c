// SPDX-License-Identifier: Apache-2.0
#include "sources/kubernetes.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <random>
#include <tuple>

#include "k8s/decode.h"

using nlohmann::json;

namespace envsteer::sources {

enum class Kind { Service, Slice, Pod, VirtualEnv };

struct KubernetesSource::Watch {
  std::string name;   // for logs and status
  Kind kind;
  std::string path;   // collection path
  std::string query;  // selectors
  bool optional = false;  // 404 means "not installed" (the CRD)
  std::unique_ptr<KubeClient> client;
  std::thread thread;
  // state, under mu_
  std::map<std::string, json> objects;  // "ns/name" -> object
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

std::string key_of(const json& obj) {
  const json& m = obj_at(obj, "metadata");
  return k8s::object_key(str_at(m, "namespace"), str_at(m, "name"));
}

// What the watch keeps of an object: only what the decoder reads.
json reduced(Kind kind, const json& obj) {
  switch (kind) {
    case Kind::Service: return k8s::reduce_service(obj);
    case Kind::Slice: return k8s::reduce_endpoint_slice(obj);
    case Kind::Pod: return k8s::reduce_pod(obj);
    case Kind::VirtualEnv: break;
  }
  return obj;
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
  std::map<std::string, json> fresh;
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
        std::string key = key_of(item);
        fresh[key] = reduced(w.kind, item);
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

void KubernetesSource::apply_event(Watch& w, const std::string& type, const json& obj) {
  {
    std::lock_guard<std::mutex> g(mu_);
    const std::string key = key_of(obj);
    if (type == "DELETED") w.objects.erase(key);
    else w.objects[key] = reduced(w.kind, obj);
    note_change(w, key);
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
    if (type == "ADDED" || type == "MODIFIED" || type == "DELETED") apply_event(w, type, obj);
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

void KubernetesSource::note_change(const Watch& w, const std::string& key) {
  if (w.kind != Kind::VirtualEnv) changed_.try_emplace({static_cast<int>(w.kind), key}, std::chrono::steady_clock::now());
}

// One object as the watches have it now (the two pod watches overlap: the
// last one that has it, as in snapshot()).
ObjectChange KubernetesSource::current(int kind, const std::string& key) const {
  using K = ObjectChange::Kind;
  const Kind k = static_cast<Kind>(kind);
  ObjectChange c{k == Kind::Service ? K::Service : k == Kind::Slice ? K::EndpointSlice : K::Pod, key, {}};
  const json* obj = nullptr;
  for (const auto& w : watches_) {
    if (w->kind != k) continue;
    if (auto it = w->objects.find(key); it != w->objects.end()) obj = &it->second;
  }
  if (!obj) return c;
  try {
    switch (k) {
      case Kind::Service: c.object = k8s::decode_service(*obj); break;
      case Kind::Slice: c.object = k8s::decode_endpoint_slice(*obj); break;
      default: c.object = k8s::decode_pod(*obj); break;
    }
  } catch (const std::exception& e) {
    const char* kn = k == Kind::Service ? "Service" : k == Kind::Slice ? "EndpointSlice" : "Pod";
    c.object = k8s::InvalidObject{kn, key, str_at(obj_at(*obj, "metadata"), "uid"), e.what()};
  }
  return c;
}

std::vector<ObjectChange> KubernetesSource::take_changes(std::vector<std::chrono::steady_clock::time_point>* received) {
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
      try {
        switch (w->kind) {
          case Kind::Service: cs.services[key] = k8s::decode_service(obj); break;
          case Kind::Slice: cs.slices[key] = k8s::decode_endpoint_slice(obj); break;
          case Kind::Pod: cs.pods[key] = k8s::decode_pod(obj); break;  // the two pod watches overlap
          case Kind::VirtualEnv: break;
        }
      } catch (const std::exception& e) {
        // reported by the model (status, metrics, one log line while it lasts)
        const char* kind = w->kind == Kind::Service ? "Service" : w->kind == Kind::Slice ? "EndpointSlice" : "Pod";
        cs.invalid.push_back({kind, key, str_at(obj_at(obj, "metadata"), "uid"), e.what()});
      }
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
    VirtualEnvSettings v = k8s::decode_virtual_env(w->objects.begin()->second);
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
