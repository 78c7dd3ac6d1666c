// SPDX-License-Identifier: Apache-2.0
// Sockets in a pod's network namespace.
//
// A socket belongs to the network namespace it was created in: its source
// address, routes and sock_diag view are that namespace's. The agent opens
// connections and netlink sockets on behalf of pods (the relay's upstreams, its
// client resets, HTTP/2's upstreams), so it finds the pod's namespace through a
// process of the pod's cgroup (pidfd_open + setns, Linux 5.8), keeps a handle
// per pod, and creates each socket there: setns(pod) -> socket() -> setns(back)
// on the calling thread (connect, bind and I/O can follow in any namespace).
// A pod in the agent's own namespace (hostNetwork pods, the loopback tests)
// needs no setns. Needs CAP_SYS_ADMIN (setns) and the pods' pids (hostPID).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "fd.h"

namespace envsteer::podnet {

// One network namespace: an open handle and its identity (the nsfs inode).
struct NetNs {
  UniqueFd fd;
  uint64_t ino = 0;
};

// The inode of the calling thread's network namespace at the first call (the
// agent's own; 0 when it cannot be read).
uint64_t own_ino();

// The network namespace of a live process of the cgroup directory (or of a
// directory below it, breadth first, bounded): pidfd_open, check that the pid
// is still in the cgroup, then setns through the pidfd (which fails if that
// process is gone, so a reused pid is never taken) and open the namespace from
// inside. nullopt and *err when none is found. *pidfd receives the process's
// pidfd (its exit says the handle may be stale).
std::optional<NetNs> of_cgroup(const std::filesystem::path& dir, std::string* err, UniqueFd* pidfd = nullptr);

// socket(domain, type, protocol) created in ns (nullptr: the calling thread's
// own namespace, no setns). Returns the fd, or -1 with errno set. The calling
// thread is always back in its own namespace on return (the process aborts if
// it cannot get back: every later socket would be in the wrong namespace).
int socket_in(const NetNs* ns, int domain, int type, int protocol);

// Pod cgroup id -> its network namespace, for one thread. A pod in the
// agent's own namespace maps to nullptr (no setns). Handles are found on first
// use, found again when the process they came from has exited, and dropped by
// forget() (a handle keeps a namespace alive: drop it when the pod has nothing
// left here).
class PodNets {
 public:
  // The cgroup directory of a pod cgroup id (nullopt: unknown).
  using Resolver = std::function<std::optional<std::filesystem::path>(uint64_t)>;
  explicit PodNets(Resolver r) : resolve_(std::move(r)) {}

  struct Lookup {
    std::shared_ptr<const NetNs> ns;  // nullptr: the agent's own namespace
    bool found = false;                // false: unknown (no process of the pod found); ns is nullptr
    uint64_t key() const { return ns ? ns->ino : 0; }
  };
  Lookup get(uint64_t pod);
  // A handle held for some pod with this namespace inode (nullptr: none).
  std::shared_ptr<const NetNs> by_ino(uint64_t ino) const;
  void forget(uint64_t pod) { pods_.erase(pod); }
  // Pods with a handle (own-namespace pods included).
  std::vector<uint64_t> pods() const;
  // Foreign namespaces held.
  size_t held() const;
  // Why the last failed get() failed.
  const std::string& last_error() const { return err_; }

 private:
  struct Entry {
    std::shared_ptr<const NetNs> ns;
    UniqueFd pidfd;
  };
  Resolver resolve_;
  std::map<uint64_t, Entry> pods_;
  std::string err_;
};

}  // namespace envsteer::podnet
