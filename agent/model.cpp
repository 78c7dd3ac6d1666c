// SPDX-License-Identifier: Apache-2.0
#include "model.h"

#include <netinet/in.h>

#include <algorithm>
#include <initializer_list>
#include <tuple>

#include "envname.h"

namespace envsteer {

namespace {

std::string pod_ref(const k8s::Pod& p) { return k8s::object_key(p.ns, p.name); }

bool selector_matches(const k8s::Labels& selector, const k8s::Labels& labels) {
  for (const auto& [k, v] : selector) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

uint8_t proto_number(const std::string& p) {
  if (p.empty() || p == "TCP") return IPPROTO_TCP;
  if (p == "UDP") return IPPROTO_UDP;
  return 0;  // SCTP and others are not steered
}

// One ready endpoint of a service port.
struct Endpoint {
  std::string ip;
  int32_t port = 0;
  std::string pod;  // "" if unknown
};

class Builder {
 public:
  Builder(const k8s::ClusterState& c, const ModelOptions& o) : c_(c), o_(o) {}

  DesiredState build() {
    out_.default_env = o_.default_env;
    if (!o_.default_env.empty()) add_env(o_.default_env);
    for (const auto& [key, pod] : c_.pods) add_pod(pod);
    std::map<es_frontend_key, std::string, maps::BytesLess<es_frontend_key>> owner;
    for (const auto& [key, svc] : c_.services) add_service(svc, owner);
    return std::move(out_);
  }

 private:
  EnvName env_of_pod(const k8s::Pod& p) {
    auto it = p.labels.find(o_.env_label);
    if (it == p.labels.end() || it->second.empty()) return o_.default_env;
    if (!env_valid(it->second, o_.splitter))
      throw ModelError("Pod " + pod_ref(p) + ": metadata.labels." + o_.env_label + ": \"" +
                       it->second + "\" is not a valid environment name (a label value of at most 63 "
                       "characters whose segments split by '" + std::string(1, o_.splitter) +
                       "' are non-empty)");
    return it->second;
  }

  // An on/off annotation: absent is off; a value that is neither is off and
  // warned about (a typo must not switch a guess on).
  bool opt_in(const k8s::Labels& annotations, const char* key, const std::string& who,
              std::initializer_list<const char*> on, std::initializer_list<const char*> off) {
    auto it = annotations.find(key);
    if (it == annotations.end()) return false;
    for (const char* v : on)
      if (it->second == v) return true;
    for (const char* v : off)
      if (it->second == v) return false;
    out_.warnings.push_back(who + ": metadata.annotations." + key + ": \"" + it->second + "\" is not \"" +
                            *on.begin() + "\" or \"" + *off.begin() + "\"; taken as \"" + *off.begin() + "\"");
    return false;
  }

  void add_env(const EnvName& e) {
    for (auto& level : env_chain(e, o_.splitter)) out_.envs.insert(level);
  }

  void add_pod(const k8s::Pod& p) {
    EnvName env = env_of_pod(p);
    if (!env.empty()) add_env(env);
    out_.pod_envs[pod_ref(p)] = env;
    bool labelled = false;
    if (auto it = p.labels.find(o_.env_label); it != p.labels.end() && !it->second.empty()) {
      out_.labelled_pods.insert(pod_ref(p));
      labelled = true;
    }
    bool thread_ctx = opt_in(p.annotations, kThreadContextAnnotation, "Pod " + pod_ref(p), {"on", "true"},
                             {"off", "false"});

    auto ann = p.annotations.find(o_.cgroup_annotation);
    if (ann == p.annotations.end() || !o_.resolve_cgroup) return;
    std::optional<CgroupInfo> cg;
    try {
      cg = o_.resolve_cgroup(ann->second);
    } catch (const std::invalid_argument& e) {
      throw ModelError("Pod " + pod_ref(p) + ": metadata.annotations." + o_.cgroup_annotation +
                       ": " + e.what());
    }
    if (!cg) {
      out_.warnings.push_back("Pod " + pod_ref(p) + ": cgroup \"" + ann->second +
                              "\" does not exist (yet); its processes are not steered");
      return;
    }
    if (!cg->under_root) {
      out_.warnings.push_back("Pod " + pod_ref(p) + ": cgroup " + cg->path +
                              " is outside the steered cgroup root; its processes are not steered");
      return;
    }
    auto [it, fresh] =
        out_.pods.emplace(cg->id, LocalPod{pod_ref(p), env, cg->path, cg->level, labelled, thread_ctx});
    if (!fresh)
      throw ModelError("Pod " + pod_ref(p) + ": metadata.annotations." + o_.cgroup_annotation +
                       ": cgroup " + cg->path + " is already the cgroup of Pod " + it->second.pod);
  }

  // Indexes over the cluster, built on first use, so that a service's slices
  // and selected pods are found without a scan of every object (10 000
  // services over 100 000 pods would be 10^9 selector checks). The lists keep
  // the objects' key order, so results are the same as a full scan's.
  using NsName = std::pair<std::string, std::string>;
  using LabelKey = std::tuple<std::string, std::string, std::string>;  // ns, label, value
  void build_indexes() {
    if (indexed_) return;
    indexed_ = true;
    for (const auto& [key, sl] : c_.slices) slices_by_svc_[NsName{sl.ns, sl.service_name}].push_back(&sl);
    for (const auto& [key, pod] : c_.pods) {
      pods_by_ns_[pod.ns].push_back(&pod);
      for (const auto& [k, v] : pod.labels) pods_by_label_[LabelKey{pod.ns, k, v}].push_back(&pod);
    }
  }

  // The pods of ns that may match selector: the smallest candidate list.
  const std::vector<const k8s::Pod*>& selector_candidates(const std::string& ns, const k8s::Labels& selector) {
    static const std::vector<const k8s::Pod*> none;
    const std::vector<const k8s::Pod*>* best = nullptr;
    if (selector.empty()) {
      auto it = pods_by_ns_.find(ns);
      return it == pods_by_ns_.end() ? none : it->second;
    }
    for (const auto& [k, v] : selector) {
      auto it = pods_by_label_.find(LabelKey{ns, k, v});
      if (it == pods_by_label_.end()) return none;
      if (!best || it->second.size() < best->size()) best = &it->second;
    }
    return *best;
  }

  // Ready endpoints of one service port, from EndpointSlices when the service
  // has any, else from its selector over the pods.
  std::vector<Endpoint> endpoints(const k8s::Service& svc, const k8s::ServicePort& sp) {
    build_indexes();
    std::vector<Endpoint> eps;
    bool have_slices = false;
    static const std::vector<const k8s::EndpointSlice*> no_slices;
    auto sit = slices_by_svc_.find(NsName{svc.ns, svc.name});
    for (const k8s::EndpointSlice* slp : sit == slices_by_svc_.end() ? no_slices : sit->second) {
      const auto& sl = *slp;
      have_slices = true;
      if (sl.address_type == "FQDN") continue;
      int32_t port = 0;
      for (const auto& p : sl.ports)
        if (p.name == sp.name && proto_number(p.protocol) == proto_number(sp.protocol)) port = p.port;
      if (port == 0) continue;
      for (const auto& ep : sl.endpoints) {
        if (!ep.ready) continue;
        std::string pod;
        if (ep.target && (ep.target->kind.empty() || ep.target->kind == "Pod"))
          pod = k8s::object_key(ep.target->ns.empty() ? sl.ns : ep.target->ns, ep.target->name);
        for (const auto& ip : ep.addresses) eps.push_back({ip, port, pod});
      }
    }
    if (have_slices || !svc.has_selector || !o_.selector_fallback) return eps;

    for (const k8s::Pod* pp : selector_candidates(svc.ns, svc.selector)) {
      const auto& pod = *pp;
      if (pod.ns != svc.ns || !pod.ready || pod.terminating) continue;
      if (!selector_matches(svc.selector, pod.labels)) continue;
      int32_t port = sp.target_port != 0 ? sp.target_port : 0;
      if (!sp.target_port_name.empty()) {
        for (const auto& cp : pod.ports)
          if (cp.name == sp.target_port_name && proto_number(cp.protocol) == proto_number(sp.protocol))
            port = cp.port;
      } else if (port == 0) {
        port = sp.port;
      }
      if (port == 0) {
        out_.warnings.push_back("Service " + k8s::object_key(svc.ns, svc.name) + ": port \"" +
                                sp.name + "\": Pod " + pod_ref(pod) + " has no container port named \"" +
                                sp.target_port_name + "\"; skipped");
        continue;
      }
      for (const auto& ip : pod.pod_ips) eps.push_back({ip, port, pod_ref(pod)});
    }
    return eps;
  }

  EnvName env_of_endpoint(const Endpoint& ep) {
    if (ep.pod.empty()) return o_.default_env;
    auto it = out_.pod_envs.find(ep.pod);
    return it == out_.pod_envs.end() ? o_.default_env : it->second;
  }

  void add_service(const k8s::Service& svc,
                   std::map<es_frontend_key, std::string, maps::BytesLess<es_frontend_key>>& owner) {
    const std::string ref = k8s::object_key(svc.ns, svc.name);
    const bool per_request =
        opt_in(svc.annotations, kConnPerRequestAnnotation, "Service " + ref, {"true"}, {"false"});
    for (size_t pi = 0; pi < svc.ports.size(); pi++) {
      const auto& sp = svc.ports[pi];
      uint8_t proto = proto_number(sp.protocol);
      if (proto == 0) {
        out_.warnings.push_back("Service " + ref + ": spec.ports[" + std::to_string(pi) +
                                "]: protocol " + sp.protocol + " is not steered");
        continue;
      }
      auto eps = endpoints(svc, sp);
      for (const auto& ip : svc.cluster_ips) {
        es_frontend_key key{};
        try {
          key = maps::make_frontend_key(ip, static_cast<uint16_t>(sp.port), proto);
        } catch (const std::invalid_argument& e) {
          throw ModelError("Service " + ref + ": spec.clusterIPs: " + e.what());
        }
        auto [it, fresh] = owner.emplace(key, ref);
        if (!fresh)
          throw ModelError("Service " + ref + ": spec.ports[" + std::to_string(pi) + "]: address " +
                           maps::format_frontend(key) + " is already used by Service " + it->second);
        out_.frontends[key] = FrontendSpec{key, ref, sp.name, per_request ? ES_FE_F_CONN_PER_REQUEST : 0u};
        for (const auto& ep : eps) {
          es_backend be{};
          try {
            be = maps::make_backend(ep.ip, static_cast<uint16_t>(ep.port));
          } catch (const std::invalid_argument& e) {
            throw ModelError("Service " + ref + ": endpoint of " + (ep.pod.empty() ? "?" : ep.pod) +
                             ": " + e.what());
          }
          if (be.family != key.family) continue;  // IPv4 frontends reach IPv4 pods only
          auto& set = out_.sets[SetName{key, env_of_endpoint(ep)}];
          BackendRef ref_be{be, ep.pod};
          auto pos = std::lower_bound(set.begin(), set.end(), ref_be);
          if (pos == set.end() || !(*pos == ref_be)) set.insert(pos, ref_be);
        }
      }
    }
  }

  const k8s::ClusterState& c_;
  const ModelOptions& o_;
  DesiredState out_;
  bool indexed_ = false;
  std::map<NsName, std::vector<const k8s::EndpointSlice*>> slices_by_svc_;
  std::map<std::string, std::vector<const k8s::Pod*>> pods_by_ns_;
  std::map<LabelKey, std::vector<const k8s::Pod*>> pods_by_label_;
};

}  // namespace

DesiredState build_model(const k8s::ClusterState& cluster, const ModelOptions& opt) {
  return Builder(cluster, opt).build();
}

}  // namespace envsteer
