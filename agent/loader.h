// SPDX-License-Identifier: Apache-2.0
// The data path: loads the BPF programs, pins maps and links under the pin
// directory, attaches the cgroup programs to each participating pod's cgroup
// (podattach.h) and the global ones once, and adopts what a previous agent
// pinned (links are updated in place, so traffic never sees a gap).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include "fd.h"
#include "maps/bpf_maps.h"
#include "podattach.h"
#include "settings.h"

struct envsteer_bpf;
struct bpf_map;
struct bpf_program;

namespace envsteer {

struct Features {
  std::string kernel;         // uname release
  bool set_retval = false;    // ECONNREFUSED (else EPERM) when no pod is ready
  bool cgroup_links = false;  // bpf_link for cgroup programs (pin + update)
  bool recv_tracepoint = false;  // tp_btf/sock_recv_length (6.3+): threads adopt request envs
  bool bpf_loop = false;         // bpf_loop (5.17+): the inbound parser's byte loop
  bool task_storage = false;     // task storage (5.11+): per-thread request environment
  bool request_context() const { return recv_tracepoint && bpf_loop && task_storage; }
  std::vector<std::string> notes;  // degradations, one line each
};

Features probe_features();

// Holds an exclusive lock on the pin directory: one agent per pin directory.
class PinLock {
 public:
  // Throws std::runtime_error when another process holds it.
  explicit PinLock(const std::filesystem::path& pin_dir);
  ~PinLock();
  PinLock(const PinLock&) = delete;
  PinLock& operator=(const PinLock&) = delete;
  // true when some process holds the lock (for uninstall/status).
  static bool held(const std::filesystem::path& pin_dir);

 private:
  UniqueFd fd_;
};

struct AttachReport {
  std::vector<std::string> created;   // programs attached fresh
  std::vector<std::string> replaced;  // pinned links updated in place
  size_t maps_reused = 0;
  size_t maps_created = 0;
  size_t pods_adopted = 0;  // pods whose pinned links were updated in place
};

class Datapath {
 public:
  ~Datapath();
  // Start-up in three steps, so that the map writes of the first sync and
  // the read of the source happen while the programs load (the verifier: most
  // of the time). Each throws std::runtime_error with a message an operator
  // can act on; the caller holds the PinLock.
  // 1. Creates the maps (or reuses those a previous agent pinned, after
  //    checking their layout and ABI version) and loads no program: maps() can
  //    be written right away. Pins nothing: dropping the result (the source
  //    could not be read) leaves the pin directory as it was.
  static std::unique_ptr<Datapath> open(const Settings& s, const Features& f);
  // 2. Loads the programs on step 1's maps, in two instances of the object on
  //    two threads (split by the verifier's work: in_first_lane); may run
  //    on another thread while maps() is written (it touches only its own
  //    instances of the object).
  void load(const Settings& s);
  // 3. Pins the maps step 1 created and attaches the global programs (the
  //    cgroup ones go per pod with sync_pods, after the maps are written).
  //    The report covers all steps.
  void attach(const std::filesystem::path& cgroup_root, AttachReport* report);
  maps::BpfMapBackend& maps() { return maps_; }
  bool request_context() const { return request_ctx_; }
  // Per-request steering on steered connections (sk_msg, sk_skb, sockops).
  bool per_request() const { return per_request_; }
  // The cgroup programs on exactly these pod cgroups (cgroup id -> directory).
  // The first call also removes the root links of an agent older than per-pod
  // attachment (kept until now so that steering never stops).
  PodAttacher::Result sync_pods(const std::map<uint64_t, std::string>& want, const std::set<uint64_t>& thread_ctx);
  const PodAttacher* pods() const { return pods_.get(); }
  // The global tracing programs (tp_btf sock_recv_length / sock_send_length)
  // serve only the thread context: attached while some pod of the node opts in,
  // detached otherwise (no program runs on the node's socket reads and writes).
  // Returns true when it changed something.
  bool set_thread_tracing(bool on);
  bool thread_tracing() const { return tracing_on_; }

 private:
  Datapath() = default;
  // Map sizes, feature switches (rodata) and which programs load, the same
  // for every instance of the object (the switches are decided once, in open()).
  void configure(envsteer_bpf* skel, const Settings& s) const;
  // An instance of the object with the programs of one lane, on maps_skel_'s
  // maps; nullptr when these settings load none of them.
  envsteer_bpf* open_lane(const Settings& s, bool first);
  envsteer_bpf* maps_skel_ = nullptr;  // owns the maps (step 1); loads no program
  std::vector<envsteer_bpf*> lanes_;   // the programs (step 2), loaded side by side
  Features features_;
  std::filesystem::path pin_dir_;
  std::vector<bpf_map*> unpinned_;  // created by open(), pinned by attach()
  AttachReport loaded_;             // open()'s part of the report
  bool request_ctx_ = false;
  bool per_request_ = false;
  maps::BpfMapBackend maps_;
  std::unique_ptr<PodAttacher> pods_;
  std::vector<std::filesystem::path> root_links_;  // cgroup links of an older agent, at the root
  std::vector<bpf_program*> tracing_;  // loaded tracing programs
  std::filesystem::path link_dir_;
  bool tracing_on_ = false;
};

// Detaches every pinned link (the pods' too) and removes the pin directory. Returns what it removed.
std::vector<std::string> uninstall(const std::filesystem::path& pin_dir);

// Programs currently linked from the pin directory.
struct LinkStatus {
  std::string name;      // pin name, relative to <pin>/links (pods/<cgroup id>/<program> for a pod's)
  uint32_t link_id = 0;
  uint32_t prog_id = 0;
  std::string prog_name;
  std::string attach_type;
  uint64_t cgroup_id = 0;
  uint64_t run_cnt = 0, run_time_ns = 0;  // with kernel.bpf_stats_enabled
};
std::vector<LinkStatus> pinned_links(const std::filesystem::path& pin_dir);

void route_libbpf_logs();

}  // namespace envsteer
