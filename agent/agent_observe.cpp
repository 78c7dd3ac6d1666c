// SPDX-License-Identifier: Apache-2.0
// The agent's observability glue: names for the kernel's ids, the trace hub,
// and the metrics of metrics.h.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>

#include "agent.h"
#include "cgroup.h"

namespace envsteer {

void Agent::start_observe() {
  trace_ = std::make_unique<TraceHub>(dp_->maps(), [this] { return names(); });
  std::lock_guard<std::mutex> g(mu_);
  publish_names();
}

// The names change with every apply, but are read only by trace clients,
// metrics and status: built when read (a walk of the whole model), not when written.
void Agent::publish_names() {
  ctx_pod_cache_.clear();
  {
    std::map<uint64_t, std::string> dirs;
    for (const auto& [id, p] : model_->pods) dirs.emplace(id, p.cgroup);
    std::lock_guard<std::mutex> g(pod_dirs_mu_);
    pod_dirs_.swap(dirs);
    pod_dirs_published_ = true;
  }
  std::lock_guard<std::mutex> g(names_mu_);
  names_stale_ = true;
}

// A local pod's cgroup directory. Before the first state is applied (the relay
// resets a previous agent's clients at start-up) the cgroup subtree is walked.
std::optional<std::filesystem::path> Agent::pod_dir(uint64_t cgroup_id) const {
  {
    std::lock_guard<std::mutex> g(pod_dirs_mu_);
    if (auto it = pod_dirs_.find(cgroup_id); it != pod_dirs_.end()) return std::filesystem::path(it->second);
    if (pod_dirs_published_) return std::nullopt;
  }
  return cgroup::path_of_id(cg_root_, cgroup_id, 20000);
}

std::shared_ptr<const NameTable> Agent::names_locked() const {
  {
    std::lock_guard<std::mutex> g(names_mu_);
    if (!names_stale_ || !rec_) return names_;
  }
  auto t = std::make_shared<const NameTable>(build_names(*model_, rec_->shadow()));
  std::lock_guard<std::mutex> g(names_mu_);
  names_ = std::move(t);
  names_stale_ = false;
  return names_;
}

std::shared_ptr<const NameTable> Agent::names() const {
  std::lock_guard<std::mutex> g(mu_);
  return names_locked();
}

std::string Agent::observe_metrics() {
  ObserveInput in;
  in.ready = not_ready_reason().empty();
  for (uint32_t i = 0; i < ES_CNT_MAX; i++) in.counters.push_back(dp_->maps().counter(i));
  in.decisions = read_decisions(dp_->maps());
  dp_->maps().for_each(maps::MapId::Mismatch, [&](const void* k, const void* v) {
    in.mismatches[*static_cast<const uint32_t*>(k)] += *static_cast<const uint64_t*>(v);
  });
  in.trace_clients = trace_ ? trace_->clients() : 0;
  in.now_unix = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  {
    std::lock_guard<std::mutex> g(mu_);
    const Shadow& sh = rec_->shadow();
    size_t slots = 0;
    for (const auto& [k, set] : sh.sets)
      for (const auto& sl : set.slots) slots += sl ? 1 : 0;
    auto& m = dp_->maps();
    using maps::MapId;
    in.maps = {{ES_MAP_FRONTENDS, sh.frontends.size(), m.capacity(MapId::Frontends)},
               {ES_MAP_SETS, sh.sets.size(), m.capacity(MapId::Sets)},
               {ES_MAP_SLOTS, slots, m.capacity(MapId::Slots)},
               {ES_MAP_ENVS, sh.envs.size(), m.capacity(MapId::Envs)},
               {ES_MAP_ENV_NAMES, sh.env_names.size(), m.capacity(MapId::EnvNames)},
               {ES_MAP_PODS, sh.pods.size(), m.capacity(MapId::Pods)},
               {ES_MAP_MISMATCH, in.mismatches.size(), m.capacity(MapId::Mismatch)}};
    in.maps.push_back({ES_MAP_DECISIONS, in.decisions.size(), dp_->maps().capacity(maps::MapId::Decisions)});
    if (last_sync_.time_since_epoch().count() != 0)
      in.last_sync_unix = std::chrono::duration<double>(last_sync_.time_since_epoch()).count();
    in.sync_failures = failures_by_reason_;
    for (const Failure* f : {&source_failure_, &apply_failure_})
      if (!f->reason.empty()) in.failing_reasons.insert(f->reason);
    for (const auto& sk : skipped_) in.skipped[{sk.kind, sk.reason}]++;
    in.missing_cgroups = model_->missing_cgroups.size();
  }
  auto n = names();
  return render_observability(in, n ? *n : NameTable{});
}

}  // namespace envsteer

namespace envsteer {

// Under mu_ (every caller holds it). A container cgroup's pod is found by a
// walk of the pods' subtrees: cached until the names change.
std::vector<CtxOffProcess> Agent::ctx_off_processes() const {
  auto procs = read_ctx_off_raw();
  name_ctx_off_pods(procs);
  return procs;
}

std::vector<CtxOffProcess> Agent::read_ctx_off_raw() const {
  if (!dp_) return {};
  return read_ctx_off(dp_->maps(), [](uint64_t) { return std::string(); });
}

void Agent::name_ctx_off_pods(std::vector<CtxOffProcess>& procs) const {
  std::shared_ptr<const NameTable> n;  // only for a process not seen yet (a rebuild may walk the model)
  for (auto& p : procs) {
    const uint64_t cg = p.off.cgroup_id;
    auto it = ctx_pod_cache_.find(cg);
    if (it == ctx_pod_cache_.end() && !n) n = names_locked();
    if (it == ctx_pod_cache_.end()) it = ctx_pod_cache_.emplace(cg, n ? n->pod_of_cgroup(cg) : "").first;
    p.pod = it->second;
  }
}

namespace {

// Whether this agent sees the host's processes: its pid namespace is the
// initial one, whose pids the BPF programs record. Only that namespace holds
// kernel threads: kthreadd is its pid 2 (PF_KTHREAD in /proc/2/stat's flags,
// which no user process can set). Without that a missing /proc entry says
// nothing about a process, so nothing is swept. (NSpid cannot tell: it lists
// pids from the namespace that mounted /proc down, one in a container with its
// own /proc: the DaemonSet's pod, hostPID: false, forgot every switched-off
// process within 2 s.)
bool host_pids_visible() {
  static const bool visible = [] {
    std::ifstream f("/proc/2/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto p = stat.rfind(')');
    if (p == std::string::npos) return false;
    std::istringstream fields(stat.substr(p + 1));
    std::string v;
    for (int i = 0; i <= 6; ++i)  // state ppid pgrp session tty_nr tpgid flags
      if (!(fields >> v)) return false;
    constexpr unsigned long PF_KTHREAD = 0x00200000;
    return (std::stoul(v) & PF_KTHREAD) != 0;
  }();
  return visible;
}

}  // namespace

void Agent::sweep_thread_context() {
  if (!dp_) return;
  std::lock_guard<std::mutex> g(mu_);
  auto procs = ctx_off_processes();
  std::set<uint32_t> now;
  for (const auto& p : procs) now.insert(p.tgid);
  std::erase_if(ctx_off_logged_, [&](uint32_t t) { return !now.count(t); });
  for (const auto& p : procs) {
    if (!ctx_off_logged_.insert(p.tgid).second) continue;
    spdlog::warn("thread context switched off for pid {} of pod {} ({}): not a thread-per-request server; its "
                 "requests fall back to the pod's own environment",
                 p.tgid, p.pod.empty() ? "?" : p.pod, ctx_off_reason_name(p.off.reason));
  }
  if (!host_pids_visible()) return;
  size_t n = sweep_ctx_off(dp_->maps(), [](uint32_t tgid) {
    return ::access(("/proc/" + std::to_string(tgid)).c_str(), F_OK) == 0;
  });
  if (n) spdlog::debug("thread context: forgot {} exited process(es)", n);
}

}  // namespace envsteer
