// SPDX-License-Identifier: Apache-2.0
// The cgroup programs, attached to each participating pod's own cgroup
// (issue 17): a pod that takes no part has no envsteer program on its path.
// Links are pinned per pod, <pin>/links/pods/<cgroup id>/<program>, so they
// outlive the agent; a new agent updates them in place (no gap in steering).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace envsteer {

struct CgroupProgram {
  std::string name;
  int fd = -1;               // the loaded program (owned by the skeleton)
  uint32_t attach_type = 0;  // enum bpf_attach_type
  // Serves only the thread context (cgroup_skb ingress: the request headers a
  // reading thread adopts): attached only to pods that opt into it, and kept
  // once attached while the pod takes part (the sockets' state it keeps must
  // not go stale under a thread that reads: request.h).
  bool thread_ctx_only = false;
};

class PodAttacher {
 public:
  PodAttacher(std::filesystem::path dir, std::vector<CgroupProgram> progs);

  // The per-pod links an earlier agent pinned: each is updated in place to
  // this agent's program of the same name (links of programs not loaded now are
  // detached, a pod whose cgroup is gone is dropped). Returns the pods kept.
  size_t adopt();

  struct Result {
    size_t attached = 0;  // pods that got programs
    size_t detached = 0;  // pods whose programs were removed
    size_t failed = 0;    // pods that could not get them (tried again on the next sync)
    bool changed() const { return attached || detached; }
  };
  // Makes the attachments what want says (cgroup id -> its directory): pods
  // not in it lose their programs, the others get every program (those marked
  // thread_ctx_only when the pod is in thread_ctx, or had them already).
  // Never throws.
  Result sync(const std::map<uint64_t, std::string>& want, const std::set<uint64_t>& thread_ctx);
  // Pods whose last sync failed are tried again.
  bool has_failures() const { return !failing_.empty(); }

  size_t pods() const { return pods_.size(); }
  uint64_t attach_failures() const { return attach_failures_; }

 private:
  std::filesystem::path pod_dir(uint64_t id) const;
  void detach_pod(uint64_t id);
  // "" when every program is attached, else what failed
  std::string attach_pod(uint64_t id, const std::string& path, bool thread_ctx);
  // whether the pod has every program it should have
  bool complete(uint64_t id, bool thread_ctx) const;

  std::filesystem::path dir_;
  std::vector<CgroupProgram> progs_;
  std::map<uint64_t, std::set<std::string>> pods_;  // programs linked, by cgroup id
  std::set<uint64_t> failing_;
  uint64_t attach_failures_ = 0;
};

}  // namespace envsteer
