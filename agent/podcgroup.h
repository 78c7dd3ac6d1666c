// SPDX-License-Identifier: Apache-2.0
// Pod cgroup discovery (issue 4, "Pod cgroup discovery"): from a pod's UID and
// QoS class to its pod-level cgroup v2 directory, and an inotify watcher that
// reports pod cgroups appearing and disappearing. The container cgroups below a
// pod's need no tracking: every process in the pod's subtree belongs to it.
//
// Layouts the kubelet creates (<uid_> is the UID with '-' replaced by '_',
// because systemd uses '-' as the slice hierarchy separator):
//
//   systemd driver   kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice
//                    kubepods.slice/kubepods-pod<uid_>.slice            (Guaranteed)
//   cgroupfs driver  kubepods/<qos>/pod<uid>
//                    kubepods/pod<uid>                                  (Guaranteed)
//
// with <qos> = burstable | besteffort. A kubelet --cgroup-root moves the whole
// tree: "/kubelet" becomes kubelet.slice/kubelet-kubepods.slice/
// kubelet-kubepods-<qos>.slice/kubelet-kubepods-<qos>-pod<uid_>.slice (systemd,
// e.g. kind) or kubelet/kubepods/<qos>/pod<uid> (cgroupfs); seen from the host,
// a kind node adds system.slice/docker-<id>.scope/ in front.
//
// Everything here looks at directory names only (no cgroup files are read),
// so it works on any cgroup2 mount (/sys/fs/cgroup, the hybrid
// /sys/fs/cgroup/unified, a bind mount in a DaemonSet pod) and on plain
// directories in tests.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fd.h"

namespace envsteer::podcgroup {

// Bounds of the fallback search (see find_pod_cgroup).
struct SearchLimits {
  // Deepest level (mount = 0) at which a pod directory or a kubepods root is
  // recognised by name; directories above it are listed, none at it or below.
  // Pods below a recognised root are probed directly, so they may be deeper.
  int max_depth = 4;
  // At most this many directories are listed per search.
  size_t max_dirs = 10000;
};

// "guaranteed", "burstable", "besteffort" from pod.status.qosClass (any
// case); "" for anything else.
std::string normalize_qos(const std::string& qos_class);

// The UID in canonical form (lower case, dashes), or "" when it is not
// UID-like (empty, or characters other than hex digits, '-' and '_'). Accepts
// both the API form (dashes) and the systemd-escaped form (underscores).
std::string canonical_uid(const std::string& pod_uid);

// The canonical UID of a pod-level cgroup directory name ("pod<uid>",
// "<prefix>-pod<uid_>.slice"), or nullopt when the name is not one.
std::optional<std::string> pod_uid_from_dirname(const std::string& name);

// The absolute pod-level cgroup directory of a pod, or nullopt.
//
// Searched, in order (the first existing directory wins):
//  1. Direct paths under the usual kubepods roots of the mount
//     (kubepods.slice, kubepods, kubelet.slice/kubelet-kubepods.slice,
//     kubelet/kubepods), for the given QoS class first, then the other two.
//     An empty or unknown qos_class just means "all three".
//  2. A bounded breadth-first walk of the mount (limits above; the shallowest
//     match wins): a directory named like this pod's cgroup (either driver, any
//     prefix) is returned; a directory named like a kubepods root
//     ("kubepods", "kubepods.slice", "<prefix>-kubepods.slice") has the direct
//     layouts probed below it. The walk does not descend into pod directories.
// Returns nullopt for a UID that canonical_uid() rejects.
std::optional<std::filesystem::path> find_pod_cgroup(const std::filesystem::path& cgroup2_mount,
                                                     const std::string& pod_uid,
                                                     const std::string& qos_class,
                                                     const SearchLimits& limits = {});

// Follows pod cgroups with inotify: no polling. Not thread-safe; meant for the
// agent's event loop: poll() fd() for POLLIN, then call drain().
//
// What is watched (IN_CREATE/IN_DELETE/IN_MOVED_* of directories):
//  - every known kubepods root and its burstable/besteffort QoS directories
//    (a QoS directory that appears later is armed when its root reports it);
//  - for each usual root that does not exist yet, its nearest existing
//    ancestor inside the mount (so the kubelet creating kubepods.slice later
//    arms everything below it);
//  - unusual pod parents found by the bounded walk (a directory that already
//    holds pod cgroups outside a kubepods root);
//  - each watched pod's own cgroup (its removal or move, nothing inside it).
// Roots in an unusual place that appear only after construction are picked up
// by rescan(), which the agent should call on a slow timer (tens of seconds)
// as a safety net; it also catches anything lost to an inotify queue overflow
// (drain() rescans by itself on IN_Q_OVERFLOW).
class PodCgroupWatcher {
 public:
  // Every event is a pod cgroup of a watched pod appearing or disappearing:
  // each one changes which local pods are steered.
  struct Event {
    enum class Kind { Appeared, Disappeared };
    std::string uid;  // canonical
    std::filesystem::path path;  // the pod cgroup
    Kind kind = Kind::Appeared;
  };

  // Discovers kubepods roots with a bounded walk of the mount. Throws
  // std::system_error when inotify is unavailable.
  explicit PodCgroupWatcher(std::filesystem::path cgroup2_mount, SearchLimits limits = {});
  ~PodCgroupWatcher();
  PodCgroupWatcher(const PodCgroupWatcher&) = delete;
  PodCgroupWatcher& operator=(const PodCgroupWatcher&) = delete;

  // Nonblocking inotify descriptor, readable when drain() has work.
  int fd() const { return fd_.get(); }

  // Registers interest in a pod (again: updates its QoS class) and returns
  // where its cgroup is now. No event is queued for the state at this moment;
  // drain() reports changes from here on. Throws std::invalid_argument for a
  // UID canonical_uid() rejects.
  std::optional<std::filesystem::path> watch(const std::string& pod_uid,
                                             const std::string& qos_class);
  // Forgets a pod; no more events for it.
  void unwatch(const std::string& pod_uid);
  // Last known pod cgroup of a watched pod.
  std::optional<std::filesystem::path> path_of(const std::string& pod_uid) const;
  // Reads the pending inotify events (never blocks) and returns what changed
  // for watched pods, in order.
  std::vector<Event> drain();
  // drain(), plus a bounded rediscovery of roots and a bounded search for
  // every watched pod not found yet. The same kind of events as drain().
  std::vector<Event> rescan();

  // Number of inotify watches held (for status and tests).
  size_t watch_count() const { return by_wd_.size(); }

 private:
  struct Pod {
    std::string qos;
    std::optional<std::filesystem::path> path;
    int wd = -1;  // on path
  };
  enum class Role { Parent, Pod };
  struct Watch {
    std::filesystem::path dir;
    Role role = Role::Parent;
    std::string uid;  // Role::Pod
  };

  void discover();
  void arm();
  int add_watch(const std::filesystem::path& dir, Role role, const std::string& uid);
  void remove_watch(int wd);
  std::map<std::string, std::filesystem::path> scan_parents() const;
  void refresh(std::vector<Event>& out);
  void set_pod_path(const std::string& uid, Pod& pod,
                    const std::optional<std::filesystem::path>& path, std::vector<Event>& out);

  std::filesystem::path mount_;
  SearchLimits limits_;
  UniqueFd fd_;
  std::set<std::filesystem::path> roots_;         // kubepods roots (existing or not)
  std::set<std::filesystem::path> pod_parents_;   // unusual places holding pod cgroups
  std::map<std::string, Pod> pods_;               // by canonical uid
  std::map<int, Watch> by_wd_;
  std::map<std::filesystem::path, int> parent_wd_;  // Role::Parent watches by dir
};

}  // namespace envsteer::podcgroup
