// SPDX-License-Identifier: Apache-2.0
#include "agent.h"
#include "threadctx.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <future>
#include <thread>

#include "admin_server.h"
#include "cgroup.h"
#include "explain.h"
#include "fd.h"
#include "procstatus.h"
#include "sources/manifest.h"

extern "C" {
#include "bpf/lib/http.h"
}

namespace fs = std::filesystem;

namespace envsteer {

struct Agent::Admin {
  std::vector<std::unique_ptr<admin::Server>> servers;
};

Agent::Agent(Settings s) : s_(std::move(s)) {}

Agent::~Agent() { shutdown(); }

ModelOptions Agent::model_options() const {
  ModelOptions o;
  o.env_label = s_.env_label;
  o.splitter = s_.splitter;
  o.default_env = s_.default_env;
  o.cgroup_annotation = s_.cgroup_annotation;
  o.selector_fallback = !s_.kubernetes;
  o.participation.all = s_.participation == "all";
  o.participation.selector = LabelSelector::parse(s_.participation_selector);
  o.participation.namespace_selector = LabelSelector::parse(s_.participation_namespace_selector);
  if (s_.kubernetes) {
    o.cgroup_source = CgroupSource::Discovered;
    o.discovered_cgroups = discovered_;
  }
  o.resolve_cgroup = [this](const std::string& rel) -> std::optional<CgroupInfo> {
    fs::path dir = cgroup::resolve_in_mount(cg_mount_, rel);
    auto id = cgroup::cgroup_id(dir);
    if (!id) return std::nullopt;
    CgroupInfo ci;
    ci.id = *id;
    ci.path = dir.string();
    ci.level = cgroup::cgroup_level(cg_mount_, dir);
    auto r = dir.lexically_relative(cg_root_);
    ci.under_root = !r.empty() && r != "." && *r.begin() != "..";  // strictly below: the root is no pod's
    return ci;
  };
  return o;
}

const DesiredState Agent::kNoModel{};

namespace {

// Hands the heap's free pages back to the kernel (glibc keeps them otherwise):
// after a full read the steady-state RSS is the model's, not the parse's peak.
void release_free_memory() { malloc_trim(0); }

double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// resourceVersions are opaque to clients; the API server's are decimal
// numbers, and only those are compared (for status: the newest applied).
bool newer_rv(const std::string& a, const std::string& b) {
  auto digits = [](const std::string& s) {
    return !s.empty() && s.size() < 20 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (!digits(a)) return false;
  if (!digits(b)) return true;
  return a.size() != b.size() ? a.size() > b.size() : a > b;
}

}  // namespace

// A whole state (start-up, SIGHUP, a re-read of every file, the first sync
// with the API): the first one loads the model and writes everything; later
// ones go in as the objects that differ from the model's.
bool Agent::apply_cluster(k8s::ClusterState cluster, const char* why, bool latest) {
  if (inc_) return apply_changes(cluster_changes(inc_->cluster(), std::move(cluster)), why, latest);
  return apply_model(build_first_model(std::move(cluster)), why, latest);
}

std::unique_ptr<IncrementalModel> Agent::build_first_model(k8s::ClusterState cluster) const {
  auto t0 = std::chrono::steady_clock::now();
  auto inc = std::make_unique<IncrementalModel>(model_options());
  const size_t n = cluster.size();
  inc->reset(std::move(cluster));
  inc->state();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("model of {} object(s) built in {} ms", n, ms);
  return inc;
}

bool Agent::apply_model(std::unique_ptr<IncrementalModel> inc, const char* why, bool latest) {
  {
    std::lock_guard<std::mutex> g(mu_);
    inc_ = std::move(inc);
    need_full_ = true;
    next_check_ = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  }
  if (apply_changes({}, why, latest)) return true;
  std::lock_guard<std::mutex> g(mu_);
  inc_.reset();  // nothing of a first state stays unless it applies
  model_ = &kNoModel;
  return false;
}

bool Agent::apply_changes(std::vector<ObjectChange> changes, const char* why, bool latest,
                          const Discovered& discovered, ApplyTimes* times) {
  const auto t_called = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> g(mu_);
  const auto t0 = std::chrono::steady_clock::now();
  if (!inc_) return false;
  auto t_model = t0, t_maps = t0;
  ApplyStats st;
  std::string error;
  const char* reason = "invalid_input";
  try {
    const std::vector<std::string> old_warnings = model_->warnings;
    // Applied now: the changes waiting since a failure, then these; a rescan
    // (latest = false) adds only what the model found itself.
    if (latest)
      for (auto& c : changes) pending_[{static_cast<int>(c.kind), c.key}] = std::move(c);
    std::vector<ObjectChange> undo;
    std::string newest_rv;  // of the objects applied now (numeric, as the API server's are)
    if (latest)
      for (const auto& [k, c] : pending_) {
        std::visit(
            [&](const auto& o) {
              if constexpr (requires { o.resource_version; })
                if (newer_rv(o.resource_version, newest_rv)) newest_rv = o.resource_version;
            },
            c.object);
        if (auto u = inc_->apply(c)) undo.push_back(std::move(*u));
      }
    for (const auto& [pod, path] : discovered) inc_->set_discovered_cgroup(pod, path);
    if (std::string(why) == "rescan") inc_->recheck_missing_cgroups();
    const DesiredState& want = inc_->state();
    if (latest) note_skipped(want);
    ModelDelta d = inc_->take_delta();
    t_model = std::chrono::steady_clock::now();
    try {
      st = need_full_ ? rec_->apply(want) : rec_->apply(want, d);
    } catch (...) {
      for (auto it = undo.rbegin(); it != undo.rend(); ++it) inc_->apply(std::move(*it));
      inc_->take_delta();
      need_full_ = true;  // the shadow is exact; the next apply compares everything
      model_ = &inc_->state();
      throw;
    }
    t_maps = std::chrono::steady_clock::now();
    need_full_ = false;
    if (latest) pending_.clear();
    model_ = &want;
    sync_pod_programs();
    for (const auto& w : want.warnings)
      if (std::find(old_warnings.begin(), old_warnings.end(), w) == old_warnings.end()) spdlog::warn("{}", w);
    last_sync_ = std::chrono::system_clock::now();
    if (newer_rv(newest_rv, last_applied_rv_)) last_applied_rv_ = newest_rv;
    syncs_ok_++;
    map_updates_ += st.updates;
    map_deletes_ += st.deletes;
    if (latest) apply_failure_ = {};  // the source's latest state is applied (a read error stays)
    publish_names();
  } catch (const std::exception& e) {
    reason = dynamic_cast<const CapacityError*>(&e) ? "map_full"
             : dynamic_cast<const ApplyError*>(&e)  ? "map_write"
                                                     : "invalid_input";
    error = e.what();
  }
  g.unlock();
  if (!error.empty()) {
    record_failure("not applied", why, error, reason);
    return false;
  }
  if (times) *times = ApplyTimes{t_called, t0, t_model, t_maps};
  auto us = [](auto a, auto b) { return std::chrono::duration_cast<std::chrono::microseconds>(b - a).count(); };
  // the work (model, maps) and, apart, the wait for mu_ (a status or metrics read, a rescan)
  if (st.changed() || std::string(why) != "rescan")
    spdlog::info("applied {} ({}): {} services addresses, {} envs, {} backend sets, {} local pods, "
                 "{} skipped object(s); {} map updates, {} deletes in {} us (model {} us, maps {} us; "
                 "lock waited {} us)",
                 why, st.changed() ? "changed" : "no change", model_->frontends.size(), model_->envs.size(),
                 model_->sets.size(), model_->pods.size(), model_->skipped.size(), st.updates, st.deletes,
                 us(t0, t_maps), us(t0, t_model), us(t_model, t_maps), us(t_called, t0));
  return true;
}

// The cgroup programs on exactly the participating pods' cgroups (the model's
// local pods). A pod whose programs cannot be attached now is tried again
// every 2 s (periodic()); its es_pods entry is written anyway (harmless: no
// program of its own reads it).
void Agent::sync_pod_programs() {
  if (!dp_) return;
  std::map<uint64_t, std::string> want;
  std::set<uint64_t> thread_ctx;  // pods whose requests are parsed on arrival
  for (const auto& [id, pod] : model_->pods) {
    want.emplace(id, pod.cgroup);
    if (pod.thread_ctx) thread_ctx.insert(id);
  }
  auto r = dp_->sync_pods(want, thread_ctx);
  if (r.changed() || r.failed)
    spdlog::info("pod programs: attached to {} pod cgroup(s), removed from {}, {} failed; {} pod(s) carry them",
                 r.attached, r.detached, r.failed, dp_->pods()->pods());
  const bool ctx = std::any_of(model_->pods.begin(), model_->pods.end(),
                               [](const auto& kv) { return kv.second.thread_ctx; });
  if (dp_->set_thread_tracing(ctx))
    spdlog::info("thread context programs (tp_btf sock_recv_length, sock_send_length): {}",
                 ctx ? "attached (a pod of this node opts in)" : "detached (no pod of this node opts in)");
}

void Agent::check_consistency() {
  if (!inc_ || std::chrono::steady_clock::now() < next_check_) return;
  next_check_ = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  std::unique_lock<std::mutex> g(mu_);
  if (!pending_.empty()) return;  // a failed state waits: checked once it applies
  DesiredState full = build_model(inc_->cluster(), inc_->options());
  std::string diff = model_difference(inc_->state(), full);
  if (diff.empty()) return;
  spdlog::error("consistency check: the incremental model differs from a full build ({}); rebuilding it", diff);
  k8s::ClusterState cs = inc_->cluster();
  auto opts = inc_->options();
  inc_ = std::make_unique<IncrementalModel>(opts);
  inc_->reset(std::move(cs));
  model_ = &inc_->state();
  need_full_ = true;
  g.unlock();
  apply_changes({}, "consistency repair", false);
}

namespace {

bool same_skip(const Skipped& a, const Skipped& b) {
  return a.kind == b.kind && a.key == b.key && a.field == b.field && a.reason == b.reason;
}

}  // namespace

void Agent::note_skipped(const DesiredState& want) {
  for (const auto& s : want.skipped) {
    if (std::any_of(skipped_.begin(), skipped_.end(), [&](const Skipped& o) { return same_skip(o, s); })) continue;
    spdlog::warn("skipped: {}", s.message);
    if (events_) {
      auto slash = s.key.find('/');
      events_->record({s.kind, s.key.substr(0, slash), slash == std::string::npos ? s.key : s.key.substr(slash + 1),
                       s.uid, s.field, s.reason, s.message});
    }
  }
  for (const auto& s : skipped_)
    if (std::none_of(want.skipped.begin(), want.skipped.end(), [&](const Skipped& o) { return same_skip(o, s); }))
      spdlog::info("no longer skipped: {} {}{}{} (fixed or deleted)", s.kind, s.key, s.field.empty() ? "" : " ",
                   s.field);
  skipped_ = want.skipped;
}

std::string Agent::last_error() const {
  std::string e = source_failure_.message;
  if (!apply_failure_.message.empty()) e += (e.empty() ? "" : "; ") + apply_failure_.message;
  return e;
}

void Agent::record_failure(const char* what, const char* why, const std::string& msg, const char* reason) {
  std::lock_guard<std::mutex> g(mu_);
  syncs_failed_++;
  failures_by_reason_[reason]++;
  (std::string(reason) == "source" ? source_failure_ : apply_failure_) = Failure{reason, msg};
  last_error_time_ = std::chrono::system_clock::now();
  spdlog::error("{} ({}): {}; keeping the last good state", what, why, msg);
}

bool Agent::sync(const char* why, const std::set<std::string>& names) {
  if (!reader_) reader_ = std::make_unique<sources::ManifestReader>(s_.manifests);
  std::vector<ObjectChange> changes;
  std::optional<k8s::ClusterState> all;
  auto read = [&] {
    // only the files the events named; every file when they did not say
    // (a file whose text is unchanged is not parsed again: no second copy of
    // the cluster beside the model's)
    if (names.empty() && !inc_) all = reader_->read_all();
    else if (names.empty()) changes = reader_->read_every_file();
    else changes = reader_->read_changed(names);
  };
  auto t0 = std::chrono::steady_clock::now();
  try {
    try {
      read();
    } catch (const sources::ManifestError&) {
      // a writer may not be done (editors and `kubectl get > file` write in pieces)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      read();
    }
  } catch (const std::exception& e) {
    record_failure("manifests not applied", why, e.what());
    return false;
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    source_failure_ = {};  // read: what remains is whether it applies
  }
  spdlog::info("read {}: {} in {} us", names.empty() ? std::string("every file") : *names.begin(),
                all ? std::to_string(all->size()) + " object(s)" : std::to_string(changes.size()) + " change(s)",
                std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
  bool ok = all ? apply_cluster(std::move(*all), why) : apply_changes(std::move(changes), why);
  if (names.empty()) release_free_memory();  // a read of every file: what it parsed is freed
  return ok;
}

// Built mostly outside mu_: what has locks of its own (the watches, the relay,
// the HTTP/2 endpoint, the event latencies) and the kernel's maps are read
// first, and mu_ is held only to copy the applied state's figures, so that a
// status poll does not hold up an apply.
nlohmann::json Agent::status_json() {
  nlohmann::json j;
  j["version"] = ENVSTEER_VERSION;
  if (kube_) {
    auto api = kube_->status();
    j["source"] = {{"kind", "kubernetes"}, {"path", api.value("server", "")}, {"api", api}};
  } else {
    j["source"] = {{"kind", "manifests"}, {"path", s_.manifests}};
  }
  j["cgroup_root"] = cg_root_.string();
  j["bpffs"] = s_.bpffs;
  j["settings"] = {{"env_label", s_.env_label}, {"env_header", s_.env_header},
                   {"splitter", std::string(1, s_.splitter)}, {"default_env", s_.default_env}};
  j["kernel"] = {{"release", features_.kernel}, {"set_retval", features_.set_retval},
                 {"recv_tracepoint", features_.recv_tracepoint}, {"bpf_loop", features_.bpf_loop},
                 {"task_storage", features_.task_storage}, {"notes", features_.notes}};
  j["request_context"] = dp_ && dp_->request_context();
  j["per_request_steering"] = dp_ && dp_->per_request();
  if (relay_) j["per_request"] = relay_->status_json();
  j["h2"] = h2_ ? h2_->status_json() : nlohmann::json{{"enabled", false}};
  {
    // what the operator can do about HTTP/2 that was not routed per stream
    nlohmann::json hints = nlohmann::json::array();
    const uint64_t unrouted = dp_ ? dp_->maps().counter(ES_CNT_H2_UNROUTED) : 0;
    const uint64_t no_endpoint = dp_ ? dp_->maps().counter(ES_CNT_H2_NO_ENDPOINT) : 0;
    if (unrouted)
      hints.push_back(std::to_string(unrouted) +
                      " HTTP/2 connection(s) on ports not declared HTTP/2 of services with several backend sets went "
                      "by the caller's environment, not per stream: declare those ports (appProtocol: "
                      "kubernetes.io/h2c or grpc, or a port name grpc*, http2*, h2c*); `envsteer trace` shows them "
                      "(h2-unrouted, with the service), `envsteer explain` says it per port");
    if (no_endpoint)
      hints.push_back(std::to_string(no_endpoint) +
                      " connection(s) to declared HTTP/2 ports of services with several backend sets while no HTTP/2 "
                      "endpoint was published went by the caller's environment: run the agent with --h2-listen");
    j["h2"]["hints"] = hints;
  }
  j["settings"]["env_header_aliases"] = s_.env_header_aliases;
  j["settings"]["baggage_key"] = s_.baggage_key;
  j["settings"]["http_window"] = s_.http_window;
  j["settings"]["auto_inject"] = s_.auto_inject;
  j["settings"]["connect_hints"] = s_.connect_hints;
  j["settings"]["handoff"] = s_.handoff;
  if (events_) {
    auto es = events_->stats();
    j["source"]["api"]["events"] = {{"posted", es.posted}, {"exists", es.exists}, {"failed", es.failed},
                                    {"dropped", es.dropped}};
  }
  auto ts = [](std::chrono::system_clock::time_point t) {
    return t.time_since_epoch().count() == 0 ? 0.0
           : std::chrono::duration<double>(t.time_since_epoch()).count();
  };
  // --kubernetes: watch event received -> its map entries written, over the last events
  nlohmann::json event_latency = kube_ ? event_latency_json() : nlohmann::json();
  std::vector<CtxOffProcess> ctx_off = read_ctx_off_raw();
  std::lock_guard<std::mutex> g(mu_);
  j["ready"] = ready_.load();
  j["participation"] = {{"mode", s_.participation}, {"selector", s_.participation_selector},
                        {"namespace_selector", s_.participation_namespace_selector},
                        {"pods_with_programs", dp_ ? dp_->pods()->pods() : 0},
                        {"thread_context_programs", dp_ && dp_->thread_tracing()},
                        {"attach_failures", dp_ ? dp_->pods()->attach_failures() : 0}};
  const std::string err = last_error();
  nlohmann::json reasons = nlohmann::json::array();
  for (const Failure* f : {&source_failure_, &apply_failure_})
    if (!f->reason.empty()) reasons.push_back(f->reason);
  j["sync"] = {{"ok", syncs_ok_}, {"failed", syncs_failed_}, {"last_ok_unix", ts(last_sync_)},
               {"last_error", err}, {"last_error_reasons", reasons},
               {"last_error_unix", err.empty() ? 0.0 : ts(last_error_time_)},
               {"map_updates", map_updates_}, {"map_deletes", map_deletes_},
               {"last_applied_resource_version", last_applied_rv_}};
  if (kube_) j["sync"]["event_latency"] = std::move(event_latency);
  nlohmann::json phases = nlohmann::json::array();
  for (const auto& p : startup_) phases.push_back({{"phase", p.name}, {"ms", p.ms}, {"rss_mib", p.rss_mib}});
  j["startup"] = {{"phases", std::move(phases)}, {"peak_rss_mib", startup_peak_mib_}};
  nlohmann::json missing = nlohmann::json::array();
  for (const auto& m : model_->missing_cgroups) missing.push_back({{"pod", m.pod}, {"cgroup", m.cgroup}});
  j["model"] = {{"frontends", model_->frontends.size()}, {"envs", model_->envs.size()},
                {"sets", model_->sets.size()}, {"local_pods", model_->pods.size()},
                {"warnings", model_->warnings}, {"missing_cgroups", missing}};
  // Left out of the state (of the source's latest state); everything else is applied.
  nlohmann::json skipped = nlohmann::json::array();
  for (const auto& sk : skipped_)
    skipped.push_back({{"kind", sk.kind}, {"key", sk.key}, {"field", sk.field}, {"reason", sk.reason},
                       {"message", sk.message}});
  j["skipped"] = skipped;
  if (dp_) {
    name_ctx_off_pods(ctx_off);
    j["pods"] = thread_context_json(*model_, ctx_off);
  }
  return j;
}

nlohmann::json Agent::explain_json(const std::string& from, const std::string& to,
                                   const std::optional<std::string>& env) {
  std::lock_guard<std::mutex> g(mu_);
  if (!model_->pod_envs.count(from))
    for (const auto& sk : skipped_)
      if (sk.kind == "Pod" && sk.key == from) throw std::invalid_argument(sk.message);
  const LocalPod* local = nullptr;  // the caller, when it is a pod of this node
  ExplainRequest req{from, to, env};
  for (const auto& [cg, pod] : model_->pods)
    if (pod.pod == from) {
      local = &pod;
      // hints are taken only where the programs were loaded with them (es_feat_hints):
      // a pinned entry of an earlier run is not one
      if (dp_->per_request() && s_.connect_hints) req.pod_cgroup = cg;
    }
  auto j = explain(req, *model_, dp_->maps(), s_.splitter);
  if (local) j["thread_context"] = thread_context_state(*local, ctx_off_processes());
  return j;
}

std::string Agent::metrics_text() {
  static const char* names[] = ES_COUNTER_NAMES;
  static_assert(sizeof(names) / sizeof(names[0]) == ES_CNT_MAX, "ES_COUNTER_NAMES out of sync");
  const std::string observed = observe_metrics();  // takes mu_ itself
  std::string out = "# HELP envsteer_datapath_total Data-path events by kind, summed over CPUs.\n"
                    "# TYPE envsteer_datapath_total counter\n";
  for (uint32_t i = 0; i < ES_CNT_MAX; i++)
    out += "envsteer_datapath_total{event=\"" + std::string(names[i]) + "\"} " +
           std::to_string(dp_->maps().counter(i)) + "\n";
  // read before mu_ (an apply does not wait for them): the watches' status and the kernel's maps
  const nlohmann::json kube_status = kube_ ? kube_->status() : nlohmann::json();
  std::vector<CtxOffProcess> ctx_off = read_ctx_off_raw();
  std::vector<std::pair<es_req_key, uint64_t>> req_stats;
  if (relay_)
    dp_->maps().for_each_sum(maps::MapId::ReqStats, [&](const void* key, uint64_t sum) {
      req_stats.emplace_back(*static_cast<const es_req_key*>(key), sum);
    });
  std::lock_guard<std::mutex> g(mu_);
  out += request_metrics(req_stats);
  name_ctx_off_pods(ctx_off);
  out += thread_context_metrics(*model_, ctx_off);
  out += "# HELP envsteer_pods_with_programs Pod cgroups carrying envsteer's cgroup programs (the pods that take "
         "part).\n# TYPE envsteer_pods_with_programs gauge\nenvsteer_pods_with_programs " +
         std::to_string(dp_->pods()->pods()) + "\n";
  out += "# HELP envsteer_pod_attach_failures_total Failed attempts to attach the programs to a pod cgroup (tried "
         "again every 2 s).\n# TYPE envsteer_pod_attach_failures_total counter\nenvsteer_pod_attach_failures_total " +
         std::to_string(dp_->pods()->attach_failures()) + "\n";
  out += "# TYPE envsteer_syncs_total counter\n";
  out += "envsteer_syncs_total{result=\"ok\"} " + std::to_string(syncs_ok_) + "\n";
  out += "envsteer_syncs_total{result=\"failed\"} " + std::to_string(syncs_failed_) + "\n";
  out += "# HELP envsteer_last_sync_failed 1 while the source cannot be read or its latest state is not applied "
         "(the last good state is served). Skipped objects do not count: see envsteer_objects_skipped.\n"
         "# TYPE envsteer_last_sync_failed gauge\nenvsteer_last_sync_failed " +
         std::string(last_error().empty() ? "0" : "1") + "\n";
  if (kube_) {
    const auto& st = kube_status;
    out += "# HELP envsteer_kubernetes_watch_ok 1 when the resource is listed and its watch works.\n"
           "# TYPE envsteer_kubernetes_watch_ok gauge\n";
    for (const auto& w : st["watches"])
      out += "envsteer_kubernetes_watch_ok{resource=\"" + w["resource"].get<std::string>() + "\"} " +
             (w["listed"].get<bool>() && w["last_error"].get<std::string>().empty() ? "1" : "0") + "\n";
    out += "# TYPE envsteer_kubernetes_api_errors_total counter\n";
    for (const auto& w : st["watches"])
      out += "envsteer_kubernetes_api_errors_total{resource=\"" + w["resource"].get<std::string>() + "\"} " +
             std::to_string(w["errors"].get<uint64_t>()) + "\n";
    out += "# TYPE envsteer_kubernetes_relists_total counter\n";
    for (const auto& w : st["watches"])
      out += "envsteer_kubernetes_relists_total{resource=\"" + w["resource"].get<std::string>() + "\"} " +
             std::to_string(w["relists"].get<uint64_t>()) + "\n";
    if (events_) {
      auto es = events_->stats();
      out += "# HELP envsteer_kubernetes_events_total Events about skipped objects: posted, exists (another agent "
             "posted it), failed, dropped (queue full).\n# TYPE envsteer_kubernetes_events_total counter\n";
      out += "envsteer_kubernetes_events_total{result=\"posted\"} " + std::to_string(es.posted) + "\n";
      out += "envsteer_kubernetes_events_total{result=\"exists\"} " + std::to_string(es.exists) + "\n";
      out += "envsteer_kubernetes_events_total{result=\"failed\"} " + std::to_string(es.failed) + "\n";
      out += "envsteer_kubernetes_events_total{result=\"dropped\"} " + std::to_string(es.dropped) + "\n";
    }
  }
  return out + observed + admin_metrics();
}

// Requests by frontend, resolved environment and path (es_req_stats), and the
// relay's own counters. Called with mu_ held; req_stats: es_req_stats read before.
std::string Agent::request_metrics(const std::vector<std::pair<es_req_key, uint64_t>>& req_stats) {
  std::string out;
  if (!relay_ && !h2_) return out;
  // service address and environment names by their map ids
  std::map<uint32_t, std::string> svc, env;
  for (const auto& [k, f] : model_->frontends)
    if (auto id = rec_->svc_id(k)) svc[*id] = f.service + ":" + std::to_string(ntohs(k.port));
  for (const auto& e : model_->envs)
    if (auto id = rec_->env_id(e)) env[*id] = e;
  if (auto id = rec_->env_id(model_->default_env)) env.emplace(*id, model_->default_env);
  if (relay_) {
    static const char* paths[] = {"passed", "kernel", "slow", "failed"};
    out += "# HELP envsteer_requests_total HTTP requests on steered connections by service address, resolved "
           "environment and path (passed: out on the connection; kernel: re-routed to a bound upstream; slow: "
           "re-routed through the agent; failed).\n# TYPE envsteer_requests_total counter\n";
    for (const auto& [k, sum] : req_stats) {
      if (k.path >= ES_PATH_MAX) continue;
      auto sn = svc.count(k.svc_id) ? svc[k.svc_id] : "svc#" + std::to_string(k.svc_id);
      auto en = env.count(k.env_id) ? env[k.env_id] : "env#" + std::to_string(k.env_id);
      out += "envsteer_requests_total{service=\"" + prom_label(sn) + "\",env=\"" + prom_label(en) + "\",path=\"" +
             paths[k.path] + "\"} " + std::to_string(sum) + "\n";
    }
  }
  if (relay_) out += relay_->metrics();
  if (h2_) {
    out += h2_->metrics([&](uint32_t id) { return svc.count(id) ? svc[id] : "svc#" + std::to_string(id); },
                        [&](uint32_t id) { return env.count(id) ? env[id] : "env#" + std::to_string(id); });
  }
  return out;
}

// The admin surface (README "Security"):
// - TCP, --admin (default 127.0.0.1:9966): /healthz, /readyz, /metrics. Loopback by default:
//   in a pod that is the pod's own network namespace, on a node the host's.
// - --metrics-bind (opt-in): /metrics only, for a Prometheus outside the pod.
// - the unix socket, --admin-socket (mode 0600, this uid only): all of the above and
//   /v1/status, /v1/explain, /v1/trace, which show every tenant's pods, environments,
//   backends and request headers: never on the network.
// /healthz is answered by each listener's accepting thread (admin_server.h), so no client,
// slow or not, can starve the liveness probe.
//
// open_admin() binds the listeners before the agent touches the kernel (an address or socket
// in use stops it first); start_admin() serves them once the state is built.
namespace {

// The handlers of the admin routes; open_admin() says which listener serves which.
struct AdminHandlers {
  admin::Handler healthz, readyz, metrics, status, explain;
};

AdminHandlers admin_handlers(Agent& a) {
  AdminHandlers h;
  h.healthz = [](const admin::Request&) {
    admin::Response r;
    r.body = "ok\n";
    return r;
  };
  h.readyz = [&a](const admin::Request&) {
    admin::Response r;
    std::string why = a.not_ready_reason();
    r.status = why.empty() ? 200 : 503;
    r.body = why.empty() ? "ready\n" : "not ready: " + why + "\n";
    return r;
  };
  h.metrics = [&a](const admin::Request&) {
    admin::Response r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = a.metrics_text();
    return r;
  };
  h.status = [&a](const admin::Request&) {
    admin::Response r;
    r.content_type = "application/json";
    r.body = a.status_json().dump(2) + "\n";
    return r;
  };
  h.explain = [&a](const admin::Request& q) {
    admin::Response r;
    r.content_type = "application/json";
    try {
      std::optional<std::string> env;
      if (q.has_param("env")) env = q.param("env");
      r.body = a.explain_json(q.param("from"), q.param("to"), env).dump(2) + "\n";
    } catch (const std::exception& e) {
      r.status = 400;
      r.body = nlohmann::json{{"error", e.what()}}.dump() + "\n";
    }
    return r;
  };
  return h;
}

}  // namespace

void Agent::open_admin() {
  // A client that went away makes the next write fail with EPIPE: never a signal.
  signal(SIGPIPE, SIG_IGN);
  admin_ = std::make_unique<Admin>();
  const AdminHandlers h = admin_handlers(*this);
  const auto& [healthz, readyz, metrics, status, explain] = h;
  if (!s_.admin.empty()) {
    auto srv = std::make_unique<admin::Server>("tcp");
    srv->inline_route("/healthz", healthz);
    srv->route("/readyz", readyz);
    srv->route("/metrics", metrics);
    srv->listen_tcp(s_.admin);
    admin_->servers.push_back(std::move(srv));
  }
  if (!s_.metrics_bind.empty()) {
    auto srv = std::make_unique<admin::Server>("metrics");
    srv->route("/metrics", metrics);
    srv->listen_tcp(s_.metrics_bind);
    admin_->servers.push_back(std::move(srv));
  }
  if (!s_.admin_socket.empty()) {
    admin::Limits l;
    l.workers = 2;
    l.max_queued = 16;
    l.max_streams = TraceHub::kMaxClients;
    auto srv = std::make_unique<admin::Server>("socket", l);
    srv->inline_route("/healthz", healthz);
    srv->route("/readyz", readyz);
    srv->route("/metrics", metrics);
    srv->route("/v1/status", status);
    srv->route("/v1/explain", explain);
    srv->route("/v1/trace", [this](const admin::Request& q) {
      if (trace_) return trace_response(*trace_, q);
      admin::Response r;
      r.status = 503;
      r.body = "tracing is not available\n";
      return r;
    });
    srv->listen_unix(s_.admin_socket);
    admin_->servers.push_back(std::move(srv));
  }
}

void Agent::start_admin() {
  if (!admin_) return;
  for (auto& srv : admin_->servers) {
    srv->start();
    const char* what = srv->name() == "tcp"       ? "health and metrics (/healthz /readyz /metrics)"
                       : srv->name() == "metrics" ? "metrics only (/metrics)"
                                                  : "admin API, root only (/healthz /readyz /metrics /v1/status "
                                                    "/v1/explain /v1/trace)";
    spdlog::info("admin: {} on {}", what, srv->address());
  }
}

void Agent::stop_admin() {
  if (!admin_) return;
  for (auto& srv : admin_->servers) srv->stop();
  admin_.reset();
}

std::string Agent::admin_metrics() {
  if (!admin_) return "";
  std::string out =
      "# HELP envsteer_admin_connections_dropped_total Admin connections closed without an answer to a request: "
      "head not complete in time (timeout), the oldest of too many waiting (cap), not this uid (peer), "
      "no worker free (busy).\n# TYPE envsteer_admin_connections_dropped_total counter\n";
  std::string bad = "# TYPE envsteer_admin_bad_requests_total counter\n";
  for (const auto& srv : admin_->servers) {
    auto st = srv->stats();
    auto row = [&](const char* reason, uint64_t v) {
      out += "envsteer_admin_connections_dropped_total{listener=\"" + srv->name() + "\",reason=\"" + reason +
             "\"} " + std::to_string(v) + "\n";
    };
    row("timeout", st.dropped_timeout);
    row("cap", st.dropped_cap);
    row("peer", st.refused_peer);
    row("busy", st.refused_busy);
    bad += "envsteer_admin_bad_requests_total{listener=\"" + srv->name() + "\"} " + std::to_string(st.bad_requests) +
           "\n";
  }
  return out + bad;
}

void Agent::write_http_config() {
  es_http_cfg hc{};
  es_http_cfg_init(&hc, s_.splitter, static_cast<__u16>(s_.http_window));
  es_http_cfg_add_name(&hc, s_.env_header.data(), static_cast<__u32>(s_.env_header.size()));
  for (const auto& a : s_.env_header_aliases) es_http_cfg_add_name(&hc, a.data(), static_cast<__u32>(a.size()));
  if (!s_.baggage_key.empty())
    es_http_cfg_set_baggage_key(&hc, s_.baggage_key.data(), static_cast<__u32>(s_.baggage_key.size()));
  uint32_t zero = 0;
  if (int err = dp_->maps().update(maps::MapId::HttpCfg, &zero, &hc); err != 0)
    throw std::runtime_error(std::string("writing the HTTP parser settings failed: ") + strerror(-err));
  es_inject_cfg ic{};
  std::memcpy(ic.name, s_.env_header.data(), std::min(s_.env_header.size(), sizeof(ic.name) - 1));
  ic.len = static_cast<__u8>(std::min(s_.env_header.size(), sizeof(ic.name) - 1));
  ic.auto_inject = s_.auto_inject ? 1 : 0;
  if (int err = dp_->maps().update(maps::MapId::Inject, &zero, &ic); err != 0)
    throw std::runtime_error(std::string("writing the header insertion settings failed: ") + strerror(-err));
}

// This node's pod: the cgroup found for it in kubelet's layout ("" = not yet);
// nullopt: not this node's (or no uid).
std::optional<std::string> Agent::discover_pod(const k8s::Pod& pod) {
  if (!pod_cgroups_ || pod.node_name != s_.node_name || pod.uid.empty()) return std::nullopt;
  try {
    auto path = pod_cgroups_->watch(pod.uid, k8s::qos_class_name(pod.qos_class));
    watched_uids_.insert(pod.uid);
    uid_pod_[pod.uid] = k8s::object_key(pod.ns, pod.name);
    // a finished pod's cgroup is gone for good: not "missing"
    if (path || (pod.phase != k8s::PodPhase::Succeeded && pod.phase != k8s::PodPhase::Failed))
      return path ? path->string() : "";
  } catch (const std::invalid_argument& e) {
    spdlog::warn("Pod {}: metadata.uid: {}; not managed", k8s::object_key(pod.ns, pod.name), e.what());
  }
  return std::nullopt;
}

void Agent::discover_local_cgroups(const k8s::ClusterState& cs) {
  if (!pod_cgroups_) return;
  std::set<std::string> before = std::move(watched_uids_);
  watched_uids_.clear();
  std::map<std::string, std::string> found;
  for (const auto& [key, pod] : cs.pods)
    if (auto path = discover_pod(pod)) found[key] = *path;
  for (const auto& uid : before)
    if (!watched_uids_.count(uid)) pod_cgroups_->unwatch(uid), uid_pod_.erase(uid);
  discovered_ = std::move(found);
}

// A pod's cgroup appeared or went away (kubelet creates it after the pod
// object): the pods it is for are discovered again.
void Agent::on_pod_cgroup_events(const std::vector<podcgroup::PodCgroupWatcher::Event>& events, const char* why) {
  if (!inc_) return;
  Discovered disc;
  for (const auto& e : events) {
    auto it = uid_pod_.find(e.uid);
    if (it == uid_pod_.end()) continue;
    auto pod = inc_->cluster().pods.find(it->second);
    if (pod != inc_->cluster().pods.end()) disc.push_back({it->second, discover_pod(pod->second)});
  }
  if (!disc.empty()) apply_changes({}, why, apply_failure_.message.empty(), disc);
}

bool Agent::apply_kube(const char* why) {
  if (!kube_->synced()) return false;
  // VirtualEnvironment settings shape the watches and the loaded programs:
  // they are read at start-up, and a change restarts the agent (the pinned
  // state keeps steering meanwhile; the DaemonSet or systemd starts it again).
  auto ve = kube_->virtual_env();
  if (!ve_baseline_) {
    ve_baseline_ = ve;
  } else if (*ve_baseline_ != ve) {
    spdlog::warn("VirtualEnvironment {} changed: exiting so that a restarted agent applies its settings "
                 "(steering continues from the pinned state)",
                 ve ? ve->name : (*ve_baseline_)->name);
    restart_requested_ = true;
    return false;
  }
  if (!inc_) {
    k8s::ClusterState cs = kube_->snapshot();
    discover_local_cgroups(cs);
    if (!apply_cluster(std::move(cs), why)) return false;
    release_free_memory();  // the lists' pages and the start-up copies
  } else {
    // the objects that changed; this node's pods' cgroups with them
    std::vector<sources::EventTimes> received;
    std::vector<ObjectChange> changes = kube_->take_changes(&received);
    const auto taken = std::chrono::steady_clock::now();
    Discovered disc;
    for (const auto& c : changes) {
      if (c.kind != ObjectChange::Kind::Pod) continue;
      const auto* pod = std::get_if<k8s::Pod>(&c.object);
      std::optional<std::string> path = pod ? discover_pod(*pod) : std::nullopt;
      if (!path && inc_->cluster().pods.count(c.key)) {
        const auto& old = inc_->cluster().pods.at(c.key);
        if (!old.uid.empty() && (!pod || pod->uid != old.uid) && watched_uids_.erase(old.uid))
          pod_cgroups_->unwatch(old.uid), uid_pod_.erase(old.uid);
      }
      disc.push_back({c.key, path});
    }
    ApplyTimes times;
    if (!apply_changes(std::move(changes), why, true, disc, &times)) return false;
    note_event_latency(received, taken, times);
  }
  if (!ready_) {
    ready_ = true;
    spdlog::info("ready: steering {} service address(es) for {} local pod(s)", model_->frontends.size(),
                 model_->pods.size());
  }
  return true;
}

void Agent::note_event_latency(const std::vector<sources::EventTimes>& received,
                               std::chrono::steady_clock::time_point taken, const ApplyTimes& t) {
  auto us = [](auto a, auto b) {
    return static_cast<uint32_t>(
        std::clamp<int64_t>(std::chrono::duration_cast<std::chrono::microseconds>(b - a).count(), 0, UINT32_MAX));
  };
  std::lock_guard<std::mutex> g(lat_mu_);
  for (const auto& e : received) {
    EventStages v{us(e.read, t.written), us(e.read, e.queued), us(e.queued, taken), us(taken, t.called),
                  us(t.called, t.locked), us(t.locked, t.modelled), us(t.modelled, t.written)};
    if (event_us_.size() < kEventWindow) event_us_.push_back(v);
    else event_us_[events_seen_ % kEventWindow] = v;
    events_seen_++;
  }
}

// Percentiles of the whole (watch line read -> map entries written) and of
// each stage on the way: decode (the line parsed and decoded on the watch's
// thread), queue (decoded -> taken by the apply thread), prepare (cgroup
// discovery of this node's pods), lock (waiting for mu_), model, maps.
nlohmann::json Agent::event_latency_json() const {
  std::vector<EventStages> rows;
  uint64_t seen;
  {
    std::lock_guard<std::mutex> g(lat_mu_);
    rows = event_us_;
    seen = events_seen_;
  }
  std::vector<uint32_t> v(rows.size());
  // selected, not sorted: a status poll costs the apply thread's CPU little
  auto stats = [&](uint32_t EventStages::*f) {
    for (size_t i = 0; i < rows.size(); i++) v[i] = rows[i].*f;
    if (v.empty()) return nlohmann::json{{"p50_ms", 0.0}, {"p99_ms", 0.0}, {"max_ms", 0.0}};
    auto at = [&](double p) { return v.begin() + static_cast<ptrdiff_t>(p * static_cast<double>(v.size() - 1) + 0.5); };
    auto p50 = at(0.5), p99 = at(0.99);
    std::nth_element(v.begin(), p50, v.end());
    std::nth_element(p50, p99, v.end());
    const uint32_t max = *std::max_element(p99, v.end());
    return nlohmann::json{{"p50_ms", *p50 / 1000.0}, {"p99_ms", *p99 / 1000.0}, {"max_ms", max / 1000.0}};
  };
  nlohmann::json j = stats(&EventStages::total);
  j["events"] = seen;
  j["window"] = rows.size();
  j["stages"] = {{"decode", stats(&EventStages::decode)}, {"queue", stats(&EventStages::queue)},
                 {"prepare", stats(&EventStages::prepare)}, {"lock", stats(&EventStages::lock)},
                 {"model", stats(&EventStages::model)}, {"maps", stats(&EventStages::maps)}};
  return j;
}

std::string Agent::not_ready_reason() {
  if (!ready_.load()) return kube_ ? "waiting for the first full sync with the Kubernetes API" : "starting";
  if (kube_) {
    auto st = kube_->status();
    for (const auto& w : st["watches"])
      if (!w["last_error"].get<std::string>().empty())
        return "Kubernetes API: " + w["resource"].get<std::string>() + ": " + w["last_error"].get<std::string>() +
               " (serving the last good state)";
  }
  std::lock_guard<std::mutex> g(mu_);
  std::string why;
  for (const Failure* f : {&source_failure_, &apply_failure_})
    if (!f->message.empty())
      why += (why.empty() ? "" : "; ") + std::string(f->reason == "map_full" ? "maps full: " : "last sync failed: ") +
             f->message;
  return why.empty() ? "" : why + " (serving the last good state)";
}

// The prior art's VirtualEnvironment resource, read once at start-up: its
// settings apply where no flag was given.
void Agent::adopt_virtual_env(const sources::KubeConfig& cfg) {
  sources::KubeClient c(cfg);
  auto r = c.get("/apis/env.alibaba.com/v1alpha2/virtualenvironments", std::chrono::seconds(10));
  if (r.status != 200) return;
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  const nlohmann::json* obj = j.is_object() && j.contains("items") ? k8s::pick_virtual_env(j["items"]) : nullptr;
  if (!obj) return;
  auto ve = k8s::decode_virtual_env(*obj);
  auto take = [&](const char* flag, const std::string& value, std::string& into) {
    if (s_.explicit_flags.count(flag) || value.empty()) return;
    into = value;
    spdlog::info("VirtualEnvironment {}: {} = {}", ve.name, flag, into);
  };
  take("env-header", ve.env_header, s_.env_header);
  take("env-label", ve.env_label, s_.env_label);
  take("default-env", ve.default_subset, s_.default_env);
  std::string splitter;
  take("splitter", ve.splitter, splitter);
  if (splitter.size() == 1) s_.splitter = splitter[0];
  if (!s_.explicit_flags.count("auto-inject") && ve.auto_inject) s_.auto_inject = *ve.auto_inject;
  validate_settings(s_);
}

// The source is opened before anything touches the kernel: bad settings, a
// manifest path that does not exist or (--kubernetes) an API that cannot be
// configured exit here. The manifests are read by run(), beside the loading of
// the programs.
void Agent::open_source() {
  validate_settings(s_);
  if (s_.kubernetes && !s_.manifests.empty())
    throw std::invalid_argument("--manifests and --kubernetes: give one source, not both");
  if (!s_.kubernetes && s_.manifests.empty())
    throw std::invalid_argument("--manifests: required (a YAML file or directory), or --kubernetes");
  cg_mount_ = cgroup::find_cgroup2_mount();
  cg_root_ = s_.cgroup_root.empty() ? cg_mount_ : cgroup::resolve_in_mount(cg_mount_, s_.cgroup_root);
  if (!cgroup::cgroup_id(cg_root_)) throw std::runtime_error("--cgroup-root: " + cg_root_.string() + " does not exist");
  if (!s_.kubernetes) {  // bad objects are skipped later, reported
    std::error_code ec;
    if (!fs::exists(s_.manifests, ec)) throw sources::ManifestError(s_.manifests + ": no such file or directory");
    reader_ = std::make_unique<sources::ManifestReader>(s_.manifests);
    return;
  }
  sources::KubeConfig kc = s_.kubeconfig.empty() ? sources::in_cluster_config()
                                                 : sources::load_kubeconfig(s_.kubeconfig, s_.kube_context);
  if (s_.node_name.empty())
    spdlog::warn("no --node-name and no $NODE_NAME: only labelled pods are watched, none is local");
  adopt_virtual_env(kc);
  sources::KubernetesOptions ko;
  ko.node_name = s_.node_name;
  ko.env_label = s_.env_label;
  ko.watch_namespaces = s_.participation != "all" && !s_.participation_namespace_selector.empty();
  kube_ = std::make_unique<sources::KubernetesSource>(kc, ko);
  sources::EventRecorder::Options eo;
  eo.node = s_.node_name;
  events_ = std::make_unique<sources::EventRecorder>(kc, eo);
  pod_cgroups_ = std::make_unique<podcgroup::PodCgroupWatcher>(cg_root_);
  spdlog::info("source: Kubernetes API {} ({})", kc.server, kc.source);
}

// The loaded programs attached and their new maps pinned (a previous agent's
// are adopted), the relay, the reconciler's shadow of what the maps hold, the
// observability readers.
void Agent::start_datapath(std::unique_ptr<Datapath> loaded, size_t adopted) {
  AttachReport rep;
  loaded->attach(cg_root_, &rep);
  dp_ = std::move(loaded);
  write_http_config();
  spdlog::info("request context (env header -> thread -> connect): {}",
               dp_->request_context() ? "on"
               : !s_.header_context ? "off (--no-header-context)"
                                    : "unavailable on this kernel (see the degraded lines above)");
  spdlog::info("per-request steering on pooled connections: {}",
               dp_->per_request() ? "on"
               : !s_.header_context ? "off (--no-header-context)"
                                    : "unavailable on this kernel (needs bpf_loop, 5.17)");
  if (dp_->per_request())
    spdlog::info("connect hints (a pod's next connection goes to the set of its last relayed request): {}",
                 s_.connect_hints ? "on" : "off (--no-connect-hints)");
  if (dp_->per_request() && s_.header_context)
    spdlog::info("parse once per hop (a request between pods of the node parsed by its sender only): {}",
                 s_.handoff ? "on" : "off (--no-handoff)");
  if (dp_->per_request()) {
    RelayOptions ro;
    ro.idle_timeout = std::chrono::milliseconds(s_.upstream_idle_ms);
    ro.connect_timeout = std::chrono::milliseconds(s_.upstream_connect_timeout_ms);
    ro.response_timeout = std::chrono::milliseconds(s_.response_timeout_ms);
    ro.warm = s_.relay_warm;
    ro.max_client_bytes = s_.relay_client_bytes;
    ro.max_pod_bytes = s_.relay_pod_bytes;
    ro.max_total_bytes = s_.relay_total_bytes;
    ro.sockets = s_.relay_sockets;
    ro.max_clients_per_pod = s_.relay_clients_per_pod;
    ro.hints = s_.connect_hints;
    ro.pod_dir = [this](uint64_t id) { return pod_dir(id); };
    relay_ = std::make_unique<Relay>(dp_->maps(), ro);
    relay_->start();
  }
  spdlog::info("data path for cgroup {}: {} program(s) attached, {} replaced in place, {} pod cgroup(s) "
               "adopted (participation: {}{}); maps under {}/maps: {} reused ({} entries adopted), {} created",
               cg_root_.string(), rep.created.size(), rep.replaced.size(), rep.pods_adopted, s_.participation,
               s_.participation == "all" ? ""
                                         : ", selector \"" + s_.participation_selector + "\", namespace selector \"" +
                                               s_.participation_namespace_selector + "\"",
               s_.bpffs,
               rep.maps_reused, adopted, rep.maps_created);
  start_observe();
  start_h2();
}

// HTTP/2 per stream (README "HTTP/2 and gRPC"): needs the sockops program of
// per-request steering, which records the diverted connections.
void Agent::start_h2() {
  if (s_.h2_listen.empty() || !dp_->per_request()) {
    // a previous agent's endpoint is gone: nothing is to be sent to it
    es_h2_cfg none{};
    uint32_t zero = 0;
    dp_->maps().update(maps::MapId::H2Cfg, &zero, &none);
  }
  if (s_.h2_listen.empty()) {
    spdlog::info("HTTP/2 per stream: off (--h2-listen not set): HTTP/2 connections are steered at connect by the "
                 "caller's environment");
    return;
  }
  if (!dp_->per_request()) {
    spdlog::warn("HTTP/2 per stream: unavailable without per-request steering (see above); --h2-listen ignored");
    return;
  }
  H2Options o;
  o.listen = s_.h2_listen;
  o.route.names.push_back(s_.env_header);
  for (const auto& a : s_.env_header_aliases) o.route.names.push_back(a);
  for (auto& n : o.route.names)
    for (auto& ch : n) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  o.route.baggage_key = s_.baggage_key;
  o.route.splitter = s_.splitter;
  o.route.auto_inject = s_.auto_inject;
  o.inject_name = o.route.names[0];
  o.max_clients = s_.h2_max_clients;
  o.max_streams = s_.h2_max_streams;
  o.max_upstreams = s_.h2_max_upstreams;
  o.window = s_.h2_window;
  o.conn_window = s_.h2_window * 2;
  o.max_clients_per_pod = s_.h2_max_clients_per_pod;
  o.opening_timeout = std::chrono::milliseconds(s_.h2_opening_timeout_ms);
  o.pod_dir = [this](uint64_t id) { return pod_dir(id); };
  o.connect_timeout = std::chrono::milliseconds(s_.upstream_connect_timeout_ms);
  o.upstream_idle = std::chrono::milliseconds(s_.upstream_idle_ms);
  TraceHub* hub = trace_.get();
  h2_ = std::make_unique<H2Proxy>(dp_->maps(), o, [hub](const es_trace_event& ev) {
    if (hub) hub->publish(ev);
  });
  h2_->start();
}

// One signalfd read: false when the agent is to stop.
bool Agent::handle_signals(int sfd, bool manifests) {
  signalfd_siginfo si{};
  bool keep = true;
  while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
    if (si.ssi_signo == SIGHUP) {
      if (manifests) {
        spdlog::info("SIGHUP: re-reading {}", s_.manifests);
        sync("SIGHUP", {});
      } else {
        spdlog::info("SIGHUP: re-applying the Kubernetes state");
        apply_kube("SIGHUP");
      }
    } else {
      spdlog::info("{}: stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
      keep = false;
    }
  }
  return keep;
}

// Every 2 s: pods whose cgroup did not exist yet are looked at again (with
// --kubernetes inotify reports them, and a bounded rescan runs every 30 s as a
// safety net); exited processes leave the thread-context table.
void Agent::periodic() {
  if (pod_cgroups_) {
    if (++rescan_ticks_ % 15 == 0) on_pod_cgroup_events(pod_cgroups_->rescan(), "pod cgroup rescan");
  } else if (inc_ && !model_->missing_cgroups.empty()) {
    // the last good state again, for cgroups that appeared since: it clears no
    // error (a broken source, or a latest state that does not apply, stays
    // reported until fixed)
    apply_changes({}, "rescan", false);
  }
  if (dp_ && dp_->pods()->has_failures()) {
    std::lock_guard<std::mutex> g(mu_);
    sync_pod_programs();
  }
  check_consistency();
  sweep_thread_context();
}

// Until a signal says stop (0) or something fails (1).
int Agent::loop(int sfd, sources::ManifestWatcher* watcher) {
  auto next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    pollfd fds[3] = {{sfd, POLLIN, 0},
                     {watcher ? watcher->fd() : kube_->fd(), POLLIN, 0},
                     {pod_cgroups_ ? pod_cgroups_->fd() : -1, POLLIN, 0}};
    int n = poll(fds, 3, 1000);
    if (n < 0 && errno != EINTR) {
      spdlog::error("poll: {}", strerror(errno));
      return 1;
    }
    if ((fds[0].revents & POLLIN) && !handle_signals(sfd, watcher != nullptr)) return 0;
    if (watcher && fds[1].revents & POLLIN && watcher->drain()) sync("manifest change", watcher->take_names());
    if (kube_ && fds[1].revents & POLLIN) {
      kube_->drain();
      apply_kube(ready_ ? "kubernetes event" : "first sync");
      if (restart_requested_) return 0;
    }
    if (pod_cgroups_ && fds[2].revents & POLLIN) {
      // a pod's cgroup appeared or went away (kubelet creates it after the pod object)
      on_pod_cgroup_events(pod_cgroups_->drain(), "pod cgroup change");
    }

    if (std::chrono::steady_clock::now() >= next_tick) {
      periodic();
      next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    }
  }
}

// Stops everything that runs beside the loop; also what ~Agent does after an
// exception. Idempotent.
void Agent::shutdown() {
  ready_ = false;
  if (h2_) h2_->stop();
  if (relay_) relay_->stop();
  if (kube_) kube_->stop();
  events_.reset();
  if (trace_) trace_->close();  // ends the trace streams, so the admin servers can stop
  stop_admin();
}

void Agent::note_phase(const char* name, double ms, const std::string& detail) {
  const double rss = proc_self_status_mib("VmRSS");
  spdlog::info("start-up: {} {:.0f} ms, RSS {:.0f} MiB{}", name, ms, rss, detail);
  std::lock_guard<std::mutex> g(mu_);
  startup_.push_back({name, ms, rss});
}

int Agent::run() {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  // One malloc arena for every thread: the program load's threads hold the
  // kernel's parsed BTF (~12 MiB each) while the first model is built; in
  // arenas of their own, the memory they free would stay out of the model's
  // reach and add to the peak. (Small allocations go through each thread's
  // cache first, so the threads seldom wait for the arena's lock.)
  mallopt(M_ARENA_MAX, 1);
  open_source();

  features_ = probe_features();
  spdlog::info("envsteer {} on kernel {}: set_retval={}", ENVSTEER_VERSION, features_.kernel, features_.set_retval);
  for (const auto& n : features_.notes) spdlog::warn("degraded: {}", n);

  cgroup::ensure_bpffs(s_.bpffs);
  std::error_code ec;
  const bool new_pin_dir = !fs::exists(s_.bpffs, ec);
  fs::create_directories(s_.bpffs);
  lock_ = std::make_unique<PinLock>(s_.bpffs);
  open_admin();

  // The maps come first (a tenth of a second); then the programs load (the
  // verifier, seconds) on their own thread while the manifests are read, the
  // first model is built and written to the maps. Nothing is pinned or
  // attached before the load is done, so a source that cannot be read (or a
  // program the kernel refuses) stops the agent before it changes anything
  // under the pin directory; only maps a previous agent pinned (same ABI) get
  // the first sync's writes early, and they say what the cluster says.
  auto t_maps_open = clock::now();
  note_phase("open", ms_between(t_start, t_maps_open));
  std::unique_ptr<Datapath> dp = Datapath::open(s_, features_);
  rec_ = std::make_unique<Reconciler>(dp->maps(), s_.splitter);
  const size_t adopted = rec_->adopt();
  auto t_load = clock::now();
  note_phase("maps_open", ms_between(t_maps_open, t_load));
  auto loading = std::async(std::launch::async, [this, d = dp.get(), t_load] {
    d->load(s_);
    return ms_between(t_load, clock::now());
  });
  // Before any return or throw below: the load thread is joined (the future
  // goes first) and nothing keeps the maps' backend.
  auto drop_datapath = [&] {
    try {
      loading.get();
    } catch (const std::exception& e) {
      spdlog::debug("the program load beside the read failed too: {}", e.what());
    }
    rec_.reset();
    dp.reset();
  };
  std::unique_ptr<IncrementalModel> first_model;
  bool applied = false;
  if (reader_) {
    try {
      auto t_read = clock::now();
      k8s::ClusterState cs = reader_->read_all();
      const size_t n = cs.size();
      auto t_model = clock::now();
      note_phase("read", ms_between(t_read, t_model), " (" + std::to_string(n) + " object(s) from " + s_.manifests + ")");
      first_model = build_first_model(std::move(cs));
      note_phase("model", ms_between(t_model, clock::now()));
    } catch (...) {
      // the maps (none pinned) and the loaded programs go with it
      drop_datapath();
      lock_.reset();
      if (new_pin_dir) fs::remove(s_.bpffs, ec);  // only while empty
      throw;
    }
    // the first sync's map writes, beside the verifier (sync_pod_programs waits for the programs)
    auto t_apply = clock::now();
    if (!apply_model(std::move(first_model), "start-up")) {
      drop_datapath();
      return 1;
    }
    applied = true;
    note_phase("maps", ms_between(t_apply, clock::now()));
  }
  auto t_wait = clock::now();
  double load_ms = 0;
  try {
    load_ms = loading.get();
  } catch (...) {
    rec_.reset();
    throw;
  }
  note_phase("program_load", load_ms, " (on its own thread, beside the read, the model and the map writes)");
  note_phase("load_wait", ms_between(t_wait, clock::now()));

  // Signals are read from a signalfd in the loop; block them before threads start.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  UniqueFd sfd(signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));

  auto t_dp = clock::now();
  start_datapath(std::move(dp), adopted);
  if (applied) sync_pod_programs();  // the first sync's pods get their programs
  note_phase("attach", ms_between(t_dp, clock::now()));
  std::unique_ptr<sources::ManifestWatcher> watcher;
  if (applied) {
    release_free_memory();  // the parse's buffers and the start-up copies
    watcher = std::make_unique<sources::ManifestWatcher>(s_.manifests);
    ready_ = true;
    const double total = ms_between(t_start, clock::now());
    {
      std::lock_guard<std::mutex> g(mu_);
      startup_peak_mib_ = proc_self_status_mib("VmHWM");
    }
    note_phase("ready", total, " (agent start -> ready)");
    spdlog::info("ready: steering {} service address(es) for {} local pod(s)", model_->frontends.size(),
                 model_->pods.size());
  } else {
    // Nothing is applied before the first full sync: the adopted (pinned)
    // state keeps steering meanwhile, never an empty one.
    kube_->start();
  }
  start_admin();

  int exit_code = loop(sfd.get(), watcher.get());
  sfd.reset();
  shutdown();
  if (s_.cleanup_on_exit) {
    dp_.reset();
    auto removed = uninstall(s_.bpffs);
    spdlog::info("--cleanup-on-exit: detached and unpinned {} object(s) under {}", removed.size(), s_.bpffs);
  } else {
    spdlog::info("exiting; programs and maps stay pinned under {} and keep steering", s_.bpffs);
  }
  return exit_code;
}

}  // namespace envsteer
