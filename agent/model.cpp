// SPDX-License-Identifier: Apache-2.0
#include "model.h"

#include <netinet/in.h>

#include <algorithm>
#include <initializer_list>
#include <set>
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

// One ready endpoint of a service port, and where its address comes from
// (to name it when the address is bad).
struct Endpoint {
  std::string ip;
  int32_t port = 0;
  std::string pod;  // "" if unknown
  std::string kind, key, uid, field;  // the EndpointSlice or Pod holding the address
};

bool path_within(const std::string& inner, const std::string& outer) {
  return !outer.empty() && inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
         (outer.back() == '/' || inner[outer.size()] == '/');
}

class Builder {
 public:
  Builder(const k8s::ClusterState& c, const ModelOptions& o) : c_(c), o_(o) {}

  DesiredState build() {
    out_.default_env = o_.default_env;
    if (!o_.default_env.empty()) add_env(o_.default_env);
    for (const auto& bad : c_.invalid) {
      skip(bad.kind, bad.key, bad.uid, "", skip_reason::kInvalidObject,
           bad.kind + " " + bad.key + ": " + bad.message + "; skipped");
      if (bad.kind == "Pod") skipped_pods_.insert(bad.key);
    }
    for (const auto& [key, pod] : c_.pods) add_pod(pod);
    settle_cgroup_claims();
    std::map<es_frontend_key, std::string, maps::BytesLess<es_frontend_key>> owner;
    for (const auto& [key, svc] : c_.services) add_service(svc, owner);
    for (auto& [k, s] : skipped_) out_.skipped.push_back(std::move(s));
    std::sort(out_.missing_cgroups.begin(), out_.missing_cgroups.end(),
              [](const MissingCgroup& a, const MissingCgroup& b) { return a.pod < b.pod; });
    return std::move(out_);
  }

 private:
  // Records a skipped object (or part); the first record of (kind, key, field) stays.
  void skip(const std::string& kind, const std::string& key, const std::string& uid, const std::string& field,
            const char* reason, std::string message) {
    skipped_.try_emplace(std::tuple(kind, key, field), Skipped{kind, key, uid, field, reason, std::move(message)});
  }

  // The pod's env; nullopt (and the pod skipped) when its label is no env name.
  std::optional<EnvName> env_of_pod(const k8s::Pod& p) {
    auto it = p.labels.find(o_.env_label);
    if (it == p.labels.end() || it->second.empty()) return o_.default_env;
    if (!env_valid(it->second, o_.splitter)) {
      const std::string field = "metadata.labels." + o_.env_label;
      skip("Pod", pod_ref(p), p.uid, field, skip_reason::kInvalidEnv,
           "Pod " + pod_ref(p) + ": " + field + ": \"" + it->second +
               "\" is not a valid environment name (a label value of at most 63 characters whose segments "
               "split by '" + std::string(1, o_.splitter) +
               "' are non-empty); the pod is skipped: no backend, its processes not steered");
      return std::nullopt;
    }
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
    const std::string ref = pod_ref(p);
    if (skipped_pods_.count(ref)) return;  // the source could not decode it
    auto env_or = env_of_pod(p);
    if (!env_or) {
      skipped_pods_.insert(ref);
      return;
    }
    const EnvName env = *env_or;
    if (!env.empty()) add_env(env);
    out_.pod_envs[ref] = env;
    bool labelled = false;
    if (auto it = p.labels.find(o_.env_label); it != p.labels.end() && !it->second.empty()) {
      out_.labelled_pods.insert(ref);
      labelled = true;
    }
    bool thread_ctx = opt_in(p.annotations, kThreadContextAnnotation, "Pod " + ref, {"on", "true"},
                             {"off", "false"});

    // Where the pod's cgroup is claimed to be, and by which field.
    std::string value, field;
    auto ann = p.annotations.find(o_.cgroup_annotation);
    if (o_.cgroup_source == CgroupSource::Discovered) {
      auto d = o_.discovered_cgroups.find(ref);
      if (d == o_.discovered_cgroups.end()) return;  // not this node's
      if (ann != p.annotations.end())
        out_.warnings.push_back("Pod " + ref + ": metadata.annotations." + o_.cgroup_annotation +
                                " is ignored with --kubernetes (the cgroup is found under the kubelet's pod "
                                "cgroups by metadata.uid)");
      if (d->second.empty()) {
        out_.missing_cgroups.push_back({ref, ""});
        out_.warnings.push_back("Pod " + ref + ": its cgroup was not found (yet) under the kubelet's pod cgroups; "
                                "its processes are not steered");
        return;
      }
      value = d->second;
      field = "metadata.uid";
    } else {
      if (ann == p.annotations.end()) return;
      value = ann->second;
      field = "metadata.annotations." + o_.cgroup_annotation;
    }
    if (!o_.resolve_cgroup) return;
    const std::string not_steered = "; the pod stays a backend, its processes are not steered";
    std::optional<CgroupInfo> cg;
    try {
      cg = o_.resolve_cgroup(value);
    } catch (const std::invalid_argument& e) {
      skip("Pod", ref, p.uid, field, skip_reason::kInvalidCgroup,
           "Pod " + ref + ": " + field + ": " + e.what() + not_steered);
      return;
    }
    if (!cg) {
      out_.missing_cgroups.push_back({ref, value});
      out_.warnings.push_back("Pod " + ref + ": cgroup \"" + value +
                              "\" does not exist (yet); its processes are not steered");
      return;
    }
    if (!cg->under_root) {
      skip("Pod", ref, p.uid, field, skip_reason::kCgroupOutsideRoot,
           "Pod " + ref + ": " + field + ": cgroup " + cg->path +
               " is not inside the steered cgroup root" + not_steered);
      return;
    }
    claims_.push_back({LocalPod{ref, env, cg->path, cg->level, labelled, thread_ctx}, cg->id, p.uid, field});
  }

  // Local pods whose cgroups are valid one by one, checked together: one
  // cgroup is one pod's (a later pod by key order claiming it is skipped), and
  // a pod whose cgroup holds another pod's cgroup is skipped (it would take
  // that slice's other pods' processes).
  struct Claim {
    LocalPod pod;
    uint64_t id = 0;
    std::string uid, field;
  };
  void settle_cgroup_claims() {
    std::vector<const Claim*> unique;
    std::map<uint64_t, const Claim*> by_id;
    for (const auto& c : claims_) {  // in pod key order
      auto [it, fresh] = by_id.emplace(c.id, &c);
      if (fresh) {
        unique.push_back(&c);
        continue;
      }
      skip("Pod", c.pod.pod, c.uid, c.field, skip_reason::kCgroupShared,
           "Pod " + c.pod.pod + ": " + c.field + ": cgroup " + c.pod.cgroup + " is already the cgroup of Pod " +
               it->second->pod.pod + "; the pod stays a backend, its processes are not steered");
    }
    std::map<std::string, const Claim*> by_path;
    for (const Claim* c : unique) by_path.emplace(c->pod.cgroup, c);
    for (const Claim* c : unique) {
      // the paths below c's start with c's path and '/': they sort together, from here
      const std::string prefix = !c->pod.cgroup.empty() && c->pod.cgroup.back() == '/' ? c->pod.cgroup
                                                                                         : c->pod.cgroup + "/";
      auto below = by_path.lower_bound(prefix);
      const Claim* inner = below != by_path.end() && path_within(below->first, c->pod.cgroup) ? below->second : nullptr;
      if (inner) {
        skip("Pod", c->pod.pod, c->uid, c->field, skip_reason::kCgroupShared,
             "Pod " + c->pod.pod + ": " + c->field + ": cgroup " + c->pod.cgroup + " holds the cgroup of Pod " +
                 inner->pod.pod + "; the pod stays a backend, its processes are not steered");
        continue;
      }
      out_.pods.emplace(c->id, c->pod);
    }
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
      for (size_t ei = 0; ei < sl.endpoints.size(); ei++) {
        const auto& ep = sl.endpoints[ei];
        if (!ep.ready) continue;
        std::string pod;
        if (ep.target && (ep.target->kind.empty() || ep.target->kind == "Pod"))
          pod = k8s::object_key(ep.target->ns.empty() ? sl.ns : ep.target->ns, ep.target->name);
        if (!pod.empty() && skipped_pods_.count(pod)) continue;  // never a backend of any env
        for (size_t ai = 0; ai < ep.addresses.size(); ai++)
          eps.push_back({ep.addresses[ai], port, pod, "EndpointSlice", k8s::object_key(sl.ns, sl.name), sl.uid,
                         "endpoints[" + std::to_string(ei) + "].addresses[" + std::to_string(ai) + "]"});
      }
    }
    if (have_slices || !svc.has_selector || !o_.selector_fallback) return eps;

    for (const k8s::Pod* pp : selector_candidates(svc.ns, svc.selector)) {
      const auto& pod = *pp;
      if (pod.ns != svc.ns || !pod.ready || pod.terminating || skipped_pods_.count(pod_ref(pod))) continue;
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
      for (size_t ai = 0; ai < pod.pod_ips.size(); ai++)
        eps.push_back({pod.pod_ips[ai], port, pod_ref(pod), "Pod", pod_ref(pod), pod.uid,
                       "status.podIPs[" + std::to_string(ai) + "]"});
    }
    return eps;
  }

  EnvName env_of_endpoint(const Endpoint& ep) {
    if (ep.pod.empty()) return o_.default_env;
    auto it = out_.pod_envs.find(ep.pod);
    return it == out_.pod_envs.end() ? o_.default_env : it->second;
  }

  // A Service is skipped whole when one of its addresses is invalid or taken by
  // a Service before it in key order (or twice by itself): never half of it.
  void add_service(const k8s::Service& svc,
                   std::map<es_frontend_key, std::string, maps::BytesLess<es_frontend_key>>& owner) {
    const std::string ref = k8s::object_key(svc.ns, svc.name);
    const std::string skipped = "; the Service is skipped: none of its addresses is steered";
    struct Addr {
      size_t port_index;
      es_frontend_key key;
    };
    std::vector<Addr> addrs;
    std::map<es_frontend_key, size_t, maps::BytesLess<es_frontend_key>> mine;
    std::vector<std::string> port_warnings;
    for (size_t pi = 0; pi < svc.ports.size(); pi++) {
      const auto& sp = svc.ports[pi];
      if (proto_number(sp.protocol) == 0) {
        port_warnings.push_back("Service " + ref + ": spec.ports[" + std::to_string(pi) + "]: protocol " +
                                sp.protocol + " is not steered");
        continue;
      }
      for (const auto& ip : svc.cluster_ips) {
        es_frontend_key key{};
        try {
          key = maps::make_frontend_key(ip, static_cast<uint16_t>(sp.port), proto_number(sp.protocol));
        } catch (const std::invalid_argument& e) {
          skip("Service", ref, svc.uid, "spec.clusterIPs", skip_reason::kInvalidAddress,
               "Service " + ref + ": spec.clusterIPs: " + e.what() + skipped);
          return;
        }
        const std::string field = "spec.ports[" + std::to_string(pi) + "]";
        if (auto it = owner.find(key); it != owner.end()) {
          skip("Service", ref, svc.uid, field, skip_reason::kAddressInUse,
               "Service " + ref + ": " + field + ": address " + maps::format_frontend(key) +
                   " is already used by Service " + it->second + skipped);
          return;
        }
        if (auto [it, fresh] = mine.emplace(key, pi); !fresh) {
          skip("Service", ref, svc.uid, field, skip_reason::kAddressInUse,
               "Service " + ref + ": " + field + ": address " + maps::format_frontend(key) +
                   " is already used by its spec.ports[" + std::to_string(it->second) + "]" + skipped);
          return;
        }
        addrs.push_back({pi, key});
      }
    }
    for (auto& w : port_warnings) out_.warnings.push_back(std::move(w));
    const bool per_request =
        opt_in(svc.annotations, kConnPerRequestAnnotation, "Service " + ref, {"true"}, {"false"});
    std::map<size_t, std::vector<Endpoint>> eps_of_port;
    for (const auto& a : addrs) {
      const auto& sp = svc.ports[a.port_index];
      owner.emplace(a.key, ref);
      out_.frontends[a.key] = FrontendSpec{a.key, ref, sp.name, per_request ? ES_FE_F_CONN_PER_REQUEST : 0u};
      auto eit = eps_of_port.find(a.port_index);
      if (eit == eps_of_port.end()) eit = eps_of_port.emplace(a.port_index, endpoints(svc, sp)).first;
      for (const auto& ep : eit->second) {
        es_backend be{};
        try {
          be = maps::make_backend(ep.ip, static_cast<uint16_t>(ep.port));
        } catch (const std::invalid_argument& e) {
          skip(ep.kind, ep.key, ep.uid, ep.field, skip_reason::kInvalidAddress,
               ep.kind + " " + ep.key + ": " + ep.field + ": " + e.what() + "; the address is no backend");
          continue;
        }
        if (be.family != a.key.family) continue;  // IPv4 frontends reach IPv4 pods only
        auto& set = out_.sets[SetName{a.key, env_of_endpoint(ep)}];
        BackendRef ref_be{be, ep.pod};
        auto pos = std::lower_bound(set.begin(), set.end(), ref_be);
        if (pos == set.end() || !(*pos == ref_be)) set.insert(pos, ref_be);
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
  std::set<std::string> skipped_pods_;  // no backend of any env
  std::vector<Claim> claims_;           // local pods, before settle_cgroup_claims()
  std::map<std::tuple<std::string, std::string, std::string>, Skipped> skipped_;  // (kind, key, field)
};

}  // namespace

DesiredState build_model(const k8s::ClusterState& cluster, const ModelOptions& opt) {
  return Builder(cluster, opt).build();
}

}  // namespace envsteer
