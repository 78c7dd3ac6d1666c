// SPDX-License-Identifier: Apache-2.0
// The Kubernetes source: list, then watch from the list's resourceVersion
// (with bookmarks), per resource; on 410 Gone or a broken stream re-list, with
// exponential backoff and jitter. What it has seen stays served while the API
// is unreachable. Feeds the same ClusterState the manifest source does.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "k8s/objects.h"
#include "k8s/decode.h"
#include "model.h"
#include "sources/kubeclient.h"

namespace envsteer::sources {

using VirtualEnvSettings = k8s::VirtualEnvSettings;

// When the watch had a change (steady clock): its line read from the stream,
// and decoded into the source's state, ready to be taken.
struct EventTimes {
  std::chrono::steady_clock::time_point read, queued;
};

struct KubernetesOptions {
  std::string node_name;               // this node: all its pods are watched
  std::string env_label = "virtual-env";  // cluster-wide pods are watched with this label only
  std::chrono::milliseconds backoff_min{500}, backoff_max{30000};
  int watch_timeout_seconds = 300;     // server-side watch timeout (re-watch after)
  int page_size = 500;
  // Namespaces (list+watch, cluster-wide) for participation by namespace label.
  bool watch_namespaces = false;
};

class KubernetesSource {
 public:
  KubernetesSource(KubeConfig cfg, KubernetesOptions opt);
  ~KubernetesSource();

  void start();
  void stop();

  // Readable when something changed (poll it); drain() clears it.
  int fd() const { return efd_; }
  void drain();

  // true once every resource was listed at least once.
  bool synced() const;
  // Everything, decoded; the changes noted so far are then taken (a full
  // state includes them).
  k8s::ClusterState snapshot();
  // The objects that changed (were added, modified, deleted, re-listed)
  // since the last snapshot() or take_changes(), each as it is now.
  // received: when the watch first had each change, for the agent's own
  // event -> map latency by stage.
  std::vector<ObjectChange> take_changes(std::vector<EventTimes>* received = nullptr);
  std::optional<VirtualEnvSettings> virtual_env() const;
  nlohmann::json status() const;

 private:
  struct Watch;
  void run(Watch& w);
  bool list(Watch& w, std::string* rv, std::string* err);
  enum class WatchEnd { Timeout, Gone, Broken, Stopped };
  WatchEnd watch(Watch& w, std::string* rv, std::string* err);
  void apply_event(Watch& w, const std::string& type, const nlohmann::json& obj,
                   std::chrono::steady_clock::time_point read);
  void notify();
  // under mu_; read: when its watch line was read (a list: now)
  void note_change(const Watch& w, const std::string& key, std::chrono::steady_clock::time_point read = {});
  ObjectChange current(int kind, const std::string& key) const;  // under mu_
  // (Kind, key) -> when it first changed since the last take, under mu_
  std::map<std::pair<int, std::string>, EventTimes> changed_;

  KubeConfig cfg_;
  KubernetesOptions opt_;
  std::vector<std::unique_ptr<Watch>> watches_;
  std::atomic<bool> stop_{false};
  int efd_ = -1;
  mutable std::mutex mu_;
};

}  // namespace envsteer::sources
