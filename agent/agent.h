// SPDX-License-Identifier: Apache-2.0
// The agent: source -> model -> reconciler -> maps, plus the admin endpoint.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

#include "k8s/objects.h"
#include "loader.h"
#include "metrics.h"
#include "model.h"
#include "reconciler.h"
#include "relay.h"
#include "h2proxy.h"
#include "settings.h"
#include "podcgroup.h"
#include "sources/kubeevents.h"
#include "sources/kubernetes.h"
#include "sources/manifest.h"
#include "threadctx.h"
#include "trace.h"

namespace envsteer {

class Agent {
 public:
  explicit Agent(Settings s);
  ~Agent();

  // Runs until SIGTERM/SIGINT. Returns the process exit code.
  int run();

  // For the admin endpoint (thread-safe).
  nlohmann::json status_json();
  nlohmann::json explain_json(const std::string& from, const std::string& to,
                              const std::optional<std::string>& env);
  bool ready() const { return ready_.load(); }
  // "" when ready, else why not.
  std::string not_ready_reason();
  std::string metrics_text();

 private:
  ModelOptions model_options() const;
  // Reads the source, builds the model and applies it. On bad input keeps the
  // last good state. Returns false on error (message logged and kept).
  bool sync(const char* why, const std::set<std::string>& names);
  // latest: cluster is the source's latest state (its skips are reported and
  // applying it clears an apply error); false for a rescan of the last good
  // state while the latest one is not applied.
  bool apply_cluster(k8s::ClusterState cluster, const char* why, bool latest = true);
  // The first state: its model built (pure: no kernel access, so it can run
  // beside the loading of the programs), then applied whole.
  std::unique_ptr<IncrementalModel> build_first_model(k8s::ClusterState cluster) const;
  bool apply_model(std::unique_ptr<IncrementalModel> inc, const char* why, bool latest = true);
  // The incremental path: the objects that changed (and, with --kubernetes,
  // cgroups found for this node's pods) go into the model, and only the map
  // entries they touch are written. A change that does not apply is taken
  // back (the model stays the last good state) and tried again with the next.
  using Discovered = std::vector<std::pair<std::string, std::optional<std::string>>>;
  // When an apply called, got mu_, had the model and had the maps written.
  struct ApplyTimes {
    std::chrono::steady_clock::time_point called, locked, modelled, written;
  };
  bool apply_changes(std::vector<ObjectChange> changes, const char* why, bool latest = true,
                     const Discovered& discovered = {}, ApplyTimes* times = nullptr);
  // Now and then: the incremental model against a full build of its objects
  // (logged and repaired when they differ).
  void check_consistency();
  // The cgroup programs on the participating pods' cgroups (under mu_).
  void sync_pod_programs();
  std::unique_ptr<IncrementalModel> inc_;  // the objects and the model as last applied (under mu_)
  std::map<std::pair<int, std::string>, ObjectChange> pending_;  // changes not applied yet, latest per object
  bool need_full_ = true;                  // the next apply compares everything (after a failure)
  std::chrono::steady_clock::time_point next_check_{};
  std::unique_ptr<sources::ManifestReader> reader_;
  std::map<std::string, std::string> uid_pod_;  // --kubernetes: this node's pods by uid
  std::optional<std::string> discover_pod(const k8s::Pod& pod);

  // reason: source, invalid_input, map_full, map_write (a label of envsteer_sync_failures_total)
  void record_failure(const char* what, const char* why, const std::string& msg, const char* reason = "source");
  // Takes the skipped objects of a model built from the source's latest state:
  // one log line (and a Kubernetes Event) per newly skipped object.
  void note_skipped(const DesiredState& want);  // under mu_
  void open_admin();
  void start_admin();
  void stop_admin();
  std::string admin_metrics();  // the admin listeners' own counters
  void write_http_config();

  Settings s_;
  std::filesystem::path cg_mount_, cg_root_;
  Features features_;
  std::unique_ptr<PinLock> lock_;
  std::unique_ptr<Datapath> dp_;
  std::unique_ptr<sources::KubernetesSource> kube_;
  std::unique_ptr<podcgroup::PodCgroupWatcher> pod_cgroups_;  // kubelet's pod cgroups (--kubernetes)
  std::set<std::string> watched_uids_;
  std::optional<std::optional<sources::VirtualEnvSettings>> ve_baseline_;  // set at the first sync
  bool restart_requested_ = false;
  // This node's pods get their cgroup from kubelet's layout, and only from there
  // (ModelOptions::discovered_cgroups; the annotation is ignored).
  void discover_local_cgroups(const k8s::ClusterState& cs);
  // The one rule for the watcher's events, from drain() and rescan() alike:
  // any event (a local pod's cgroup appeared or went) re-applies the state.
  void on_pod_cgroup_events(const std::vector<podcgroup::PodCgroupWatcher::Event>& events, const char* why);
  std::map<std::string, std::string> discovered_;  // "ns/name" -> pod cgroup ("" = not found yet)
  std::unique_ptr<sources::EventRecorder> events_;  // Events for skipped objects (--kubernetes)
  bool apply_kube(const char* why);
  void adopt_virtual_env(const sources::KubeConfig& cfg);
  std::unique_ptr<Reconciler> rec_;
  std::unique_ptr<Relay> relay_;  // per-request steering's slow path (with the request context)
  std::unique_ptr<H2Proxy> h2_;   // HTTP/2 per stream (--h2-listen)
  void start_h2();
  std::string request_metrics(const std::vector<std::pair<es_req_key, uint64_t>>& req_stats);
  static const DesiredState kNoModel;
  const DesiredState* model_ = &kNoModel;     // inc_->state(): the last applied model
  std::vector<Skipped> skipped_;              // of the source's latest state, applied or not

  mutable std::mutex mu_;  // guards model_, rec_ state, status fields
  std::atomic<bool> ready_{false};
  // An error stays until it is gone: a source that cannot be read until a
  // read works; a state that cannot be applied until the source's latest
  // state applies. Rescans of the last good state clear neither.
  struct Failure {
    std::string reason, message;
  };
  Failure source_failure_, apply_failure_;
  std::string last_error() const;  // under mu_: "" when none
  std::chrono::system_clock::time_point last_sync_{}, last_error_time_{};
  uint64_t syncs_ok_ = 0, syncs_failed_ = 0, map_updates_ = 0, map_deletes_ = 0;
  // --kubernetes: the newest metadata.resourceVersion among the objects
  // applied (status; the bench's event-to-map latency under churn)
  std::string last_applied_rv_;
  // --kubernetes: watch event read -> map entries written, by stage (us), the
  // last kEventWindow events (status sync.event_latency), under lat_mu_: a
  // status read never waits for an apply, nor an apply for it.
  struct EventStages {
    uint32_t total, decode, queue, prepare, lock, model, maps;
  };
  static constexpr size_t kEventWindow = 16384;
  mutable std::mutex lat_mu_;
  std::vector<EventStages> event_us_;  // under lat_mu_
  uint64_t events_seen_ = 0;           // under lat_mu_
  void note_event_latency(const std::vector<sources::EventTimes>& received,
                          std::chrono::steady_clock::time_point taken, const ApplyTimes& t);
  nlohmann::json event_latency_json() const;  // takes lat_mu_ (briefly: a copy)

  // Observability (metrics.h, trace.h): the names the kernel's ids stand for,
  // published after every apply; the trace hub and the decision counters.
  void start_observe();
  void publish_names();  // under mu_
  // run() in steps
  void open_source();
  void start_datapath(std::unique_ptr<Datapath> loaded, size_t adopted);
  // Start-up phases (status "startup"): how long each took, the RSS after it.
  struct Phase {
    std::string name;
    double ms = 0, rss_mib = 0;
  };
  std::vector<Phase> startup_;  // under mu_
  double startup_peak_mib_ = 0;  // VmHWM when ready, under mu_
  void note_phase(const char* name, double ms, const std::string& detail = "");
  int loop(int sfd, sources::ManifestWatcher* watcher);
  bool handle_signals(int sfd, bool manifests);
  void periodic();
  void shutdown();
  int rescan_ticks_ = 0;
  // Processes whose thread context the kernel switched off, with their pods
  // (under mu_); in two steps: the map read (no lock), their pods named (under mu_).
  std::vector<CtxOffProcess> ctx_off_processes() const;
  std::vector<CtxOffProcess> read_ctx_off_raw() const;
  void name_ctx_off_pods(std::vector<CtxOffProcess>& procs) const;
  // Forgets switched-off processes that are gone (log line per new one).
  void sweep_thread_context();
  std::set<uint32_t> ctx_off_logged_;
  mutable std::map<uint64_t, std::string> ctx_pod_cache_;  // cgroup id -> pod, under mu_
  // Local pods' cgroup directories by cgroup id, for the relay (which finds a
  // pod's network namespace there); a copy under its own lock, so that the
  // relay thread never waits for an apply.
  mutable std::mutex pod_dirs_mu_;
  std::map<uint64_t, std::string> pod_dirs_;  // under pod_dirs_mu_
  bool pod_dirs_published_ = false;          // under pod_dirs_mu_
  std::optional<std::filesystem::path> pod_dir(uint64_t cgroup_id) const;
  std::shared_ptr<const NameTable> names() const;         // takes mu_
  std::shared_ptr<const NameTable> names_locked() const;  // under mu_
  std::string observe_metrics();
  mutable std::mutex names_mu_;
  mutable std::shared_ptr<const NameTable> names_;
  mutable bool names_stale_ = true;  // under names_mu_
  std::unique_ptr<TraceHub> trace_;
  std::map<std::string, uint64_t> failures_by_reason_;

  struct Admin;
  std::unique_ptr<Admin> admin_;
};

}  // namespace envsteer
