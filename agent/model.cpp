// SPDX-License-Identifier: Apache-2.0
#include "model.h"

#include <netinet/in.h>

#include <algorithm>
#include <initializer_list>
#include <iterator>
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

uint8_t proto_number(k8s::Protocol p) {
  if (p == k8s::Protocol::TCP) return IPPROTO_TCP;
  if (p == k8s::Protocol::UDP) return IPPROTO_UDP;
  return 0;  // SCTP is not steered
}

// One ready endpoint of a service port, and where its address comes from
// (named only when the address is bad: most endpoints never are).
struct Endpoint {
  const std::string* ip = nullptr;  // in the object below, which outlives the rule
  int32_t port = 0;
  std::string pod;  // "" if unknown
  const k8s::EndpointSlice* slice = nullptr;  // holds the address, else pod_obj does
  const k8s::Pod* pod_obj = nullptr;
  size_t ei = 0, ai = 0;  // endpoints[ei].addresses[ai] or status.podIPs[ai]

  std::string kind() const { return slice ? "EndpointSlice" : "Pod"; }
  std::string key() const { return slice ? k8s::object_key(slice->ns, slice->name) : pod; }
  const std::string& uid() const { return slice ? slice->uid : pod_obj->uid; }
  std::string field() const {
    return slice ? "endpoints[" + std::to_string(ei) + "].addresses[" + std::to_string(ai) + "]"
                 : "status.podIPs[" + std::to_string(ai) + "]";
  }
};

bool path_within(const std::string& inner, const std::string& outer) {
  return !outer.empty() && inner.size() > outer.size() && inner.compare(0, outer.size(), outer) == 0 &&
         (outer.back() == '/' || inner[outer.size()] == '/');
}

// ---------------------------------------------------------------------------
// The rules, one object at a time. build_model() and IncrementalModel both
// call them; only how they find the rest of the cluster differs (Lookup).

// What a rule leaves out and warns about, in the order it finds them.
struct Report {
  std::vector<Skipped> skips;
  std::vector<std::string> warnings;
  void skip(const std::string& kind, const std::string& key, const std::string& uid, const std::string& field,
            const char* reason, std::string message) {
    skips.push_back(Skipped{kind, key, uid, field, reason, std::move(message)});
  }
};

using SkipKey = std::tuple<std::string, std::string, std::string>;  // (kind, key, field)
SkipKey skip_key(const Skipped& s) { return {s.kind, s.key, s.field}; }

Skipped invalid_object_skip(const k8s::InvalidObject& bad) {
  return Skipped{bad.kind, bad.key, bad.uid, "", skip_reason::kInvalidObject,
                 bad.kind + " " + bad.key + ": " + bad.message + "; skipped"};
}

// An on/off annotation: absent is off; a value that is neither is off and
// warned about (a typo must not switch a guess on). KIND and REF name the
// object in the warning (built only then: most objects have no such annotation).
bool opt_in(const k8s::Labels& annotations, const char* key, const char* kind, const std::string& ref,
            std::initializer_list<const char*> on, std::initializer_list<const char*> off, Report& r) {
  auto it = annotations.find(key);
  if (it == annotations.end()) return false;
  for (const char* v : on)
    if (it->second == v) return true;
  for (const char* v : off)
    if (it->second == v) return false;
  r.warnings.push_back(std::string(kind) + " " + ref + ": metadata.annotations." + key + ": \"" + std::string(it->second) +
                       "\" is not \"" + *on.begin() + "\" or \"" + *off.begin() + "\"; taken as \"" + *off.begin() + "\"");
  return false;
}

// A local pod whose cgroup is valid on its own; settle_claims() checks them together.
struct Claim {
  LocalPod pod;
  uint64_t id = 0;
  std::string uid, field;
  bool operator==(const Claim&) const = default;
};

struct PodResult {
  bool valid = false;  // its env label is an env name: a backend, maybe local
  EnvName env;
  bool labelled = false;
  std::optional<Claim> claim;
  std::optional<MissingCgroup> missing;
  Report report;
};

// The labels of Namespace ns, nullptr when it is not known.
const k8s::Labels* namespace_labels(const k8s::ClusterState& c, const std::string& ns) {
  auto it = c.namespaces.find(ns);
  return it == c.namespaces.end() ? nullptr : &it->second.labels;
}

PodResult pod_rule(const k8s::Pod& p, const ModelOptions& o, const k8s::Labels* ns_labels) {
  PodResult out;
  Report& r = out.report;
  const std::string ref = pod_ref(p);
  auto it = p.labels.find(o.env_label);
  const bool has_label = it != p.labels.end() && !it->second.empty();
  if (!has_label) {
    out.env = o.default_env;
  } else if (!env_valid(it->second, o.splitter)) {
    const std::string field = "metadata.labels." + o.env_label;
    r.skip("Pod", ref, p.uid, field, skip_reason::kInvalidEnv,
           "Pod " + ref + ": " + field + ": \"" + std::string(it->second) +
               "\" is not a valid environment name (a label value of at most 63 characters whose segments "
               "split by '" + std::string(1, o.splitter) +
               "' are non-empty); the pod is skipped: no backend, its processes not steered");
    return out;
  } else {
    out.env = it->second;
  }
  out.valid = true;
  out.labelled = has_label;
  bool thread_ctx = opt_in(p.annotations, kThreadContextAnnotation, "Pod", ref, {"on", "true"},
                           {"off", "false"}, r);
  // A pod that takes no part is a backend like any other, but not a local pod:
  // no cgroup is looked for, nothing of it is steered.
  if (!o.participation.takes_part(p, o.env_label, ns_labels)) return out;

  // Where the pod's cgroup is claimed to be, and by which field.
  std::string value, field;
  auto ann = p.annotations.find(o.cgroup_annotation);
  if (o.cgroup_source == CgroupSource::Discovered) {
    auto d = o.discovered_cgroups.find(ref);
    if (d == o.discovered_cgroups.end()) return out;  // not this node's
    if (ann != p.annotations.end())
      r.warnings.push_back("Pod " + ref + ": metadata.annotations." + o.cgroup_annotation +
                           " is ignored with --kubernetes (the cgroup is found under the kubelet's pod "
                           "cgroups by metadata.uid)");
    if (d->second.empty()) {
      out.missing = MissingCgroup{ref, ""};
      r.warnings.push_back("Pod " + ref + ": its cgroup was not found (yet) under the kubelet's pod cgroups; "
                           "its processes are not steered");
      return out;
    }
    value = d->second;
    field = "metadata.uid";
  } else {
    if (ann == p.annotations.end()) return out;
    value = ann->second;
    field = "metadata.annotations." + o.cgroup_annotation;
  }
  if (!o.resolve_cgroup) return out;
  const char* const not_steered = "; the pod stays a backend, its processes are not steered";
  std::optional<CgroupInfo> cg;
  try {
    cg = o.resolve_cgroup(value);
  } catch (const std::invalid_argument& e) {
    r.skip("Pod", ref, p.uid, field, skip_reason::kInvalidCgroup,
           "Pod " + ref + ": " + field + ": " + e.what() + not_steered);
    return out;
  }
  if (!cg) {
    out.missing = MissingCgroup{ref, value};
    r.warnings.push_back("Pod " + ref + ": cgroup \"" + value + "\" does not exist (yet); its processes are not steered");
    return out;
  }
  if (!cg->under_root) {
    r.skip("Pod", ref, p.uid, field, skip_reason::kCgroupOutsideRoot,
           "Pod " + ref + ": " + field + ": cgroup " + cg->path + " is not inside the steered cgroup root" +
               not_steered);
    return out;
  }
  out.claim = Claim{LocalPod{ref, out.env, cg->path, cg->level, out.labelled, thread_ctx}, cg->id, p.uid, field};
  return out;
}

// The local pods with the thread context, by pod key: their backends get
// ES_BE_F_LOCAL_CTX (Lookup::pod_local_ctx), in the full build and the incremental one.
std::set<std::string> thread_ctx_pods(const std::map<uint64_t, LocalPod>& pods) {
  std::set<std::string> out;
  for (const auto& [cg, lp] : pods)
    if (lp.thread_ctx) out.insert(lp.pod);
  return out;
}

// Local pods whose cgroups are valid one by one (in pod key order), checked
// together: one cgroup is one pod's (a later pod by key order claiming it is
// skipped), and a pod whose cgroup holds another pod's cgroup is skipped (it
// would take that slice's other pods' processes).
void settle_claims(const std::vector<const Claim*>& claims, std::map<uint64_t, LocalPod>& pods, Report& r) {
  std::vector<const Claim*> unique;
  std::map<uint64_t, const Claim*> by_id;
  for (const Claim* c : claims) {
    auto [it, fresh] = by_id.emplace(c->id, c);
    if (fresh) {
      unique.push_back(c);
      continue;
    }
    r.skip("Pod", c->pod.pod, c->uid, c->field, skip_reason::kCgroupShared,
           "Pod " + c->pod.pod + ": " + c->field + ": cgroup " + c->pod.cgroup + " is already the cgroup of Pod " +
               it->second->pod.pod + "; the pod stays a backend, its processes are not steered");
  }
  std::map<std::string, const Claim*> by_path;
  for (const Claim* c : unique) by_path.emplace(c->pod.cgroup, c);
  for (const Claim* c : unique) {
    // the paths below c's start with c's path and '/': they sort together, from here
    const std::string prefix =
        !c->pod.cgroup.empty() && c->pod.cgroup.back() == '/' ? c->pod.cgroup : c->pod.cgroup + "/";
    auto below = by_path.lower_bound(prefix);
    const Claim* inner = below != by_path.end() && path_within(below->first, c->pod.cgroup) ? below->second : nullptr;
    if (inner) {
      r.skip("Pod", c->pod.pod, c->uid, c->field, skip_reason::kCgroupShared,
             "Pod " + c->pod.pod + ": " + c->field + ": cgroup " + c->pod.cgroup + " holds the cgroup of Pod " +
                 inner->pod.pod + "; the pod stays a backend, its processes are not steered");
      continue;
    }
    pods.emplace(c->id, c->pod);
  }
}

// Of the pods of ns (by_ns) and of its pods by (ns, label, value) (by_label),
// the smallest list that holds every pod selector may match; nullptr: none.
template <class ByNs, class ByLabel>
const typename ByNs::mapped_type* smallest_candidates(const ByNs& by_ns, const ByLabel& by_label,
                                                      const std::string& ns, const k8s::Labels& selector) {
  if (selector.empty()) {
    auto it = by_ns.find(ns);
    return it == by_ns.end() ? nullptr : &it->second;
  }
  const typename ByNs::mapped_type* best = nullptr;
  for (const auto& [k, v] : selector) {
    auto it = by_label.find(typename ByLabel::key_type{ns, k, v});
    if (it == by_label.end()) return nullptr;
    if (!best || it->second.size() < best->size()) best = &it->second;
  }
  return best;
}

// What the service rule needs to know about the rest of the cluster.
class Lookup {
 public:
  virtual ~Lookup() = default;
  // The EndpointSlices of Service ns/name, in key order.
  virtual void for_each_slice(const std::string& ns, const std::string& name,
                              const std::function<void(const k8s::EndpointSlice&)>& fn) const = 0;
  // Pods of ns that may match selector (a superset of the matching ones), in key order.
  virtual void for_each_candidate(const std::string& ns, const k8s::Labels& selector,
                                  const std::function<void(const k8s::Pod&)>& fn) const = 0;
  // Pods that are no backend of any env (undecodable, or an invalid env label).
  virtual bool pod_skipped(const std::string& pod) const = 0;
  virtual const EnvName* pod_env(const std::string& pod) const = 0;  // nullptr: unknown
  // A local pod (its cgroup claim settled) with the thread context: its backends get
  // ES_BE_F_LOCAL_CTX (senders hand their parse to it).
  virtual bool pod_local_ctx(const std::string& pod) const = 0;
  // The Service before `svc` in key order that has address k, nullptr when none.
  virtual const std::string* owner_before(const es_frontend_key& k, const std::string& svc) const = 0;
};

struct ServiceResult {
  bool accepted = false;
  std::vector<es_frontend_key> addrs;  // every valid address it asks for, accepted or not
  std::vector<FrontendSpec> frontends;
  std::map<SetName, std::vector<BackendRef>> sets;
  // Pods its EndpointSlices name: it depends on them. The pods it reads by its
  // selector are not listed: a change of such a pod (labels before or after)
  // finds it by its namespace's Services and their selectors (services_of_pod),
  // and 100 000 of them were ~14 MiB of IncrementalModel::svc_by_pod (issue 18).
  std::set<std::string> pods;
  Report report;
};

// Ready endpoints of one service port, from EndpointSlices when the service
// has any, else from its selector over the pods.
std::vector<Endpoint> endpoints(const k8s::Service& svc, const k8s::ServicePort& sp, const ModelOptions& o,
                                const Lookup& look, ServiceResult& out) {
  std::vector<Endpoint> eps;
  bool have_slices = false;
  look.for_each_slice(svc.ns, svc.name, [&](const k8s::EndpointSlice& sl) {
    have_slices = true;
    if (sl.address_type == "FQDN") return;
    int32_t port = 0;
    for (const auto& p : sl.ports)
      if (p.name == sp.name && p.protocol == sp.protocol) port = p.port;
    if (port == 0) return;
    for (size_t ei = 0; ei < sl.endpoints.size(); ei++) {
      const auto& ep = sl.endpoints[ei];
      if (!ep.ready) continue;
      std::string pod;
      if (ep.target && (ep.target->kind.empty() || ep.target->kind == "Pod"))
        pod = k8s::object_key(ep.target->ns.empty() ? sl.ns : ep.target->ns, ep.target->name);
      if (!pod.empty()) out.pods.insert(pod);
      if (!pod.empty() && look.pod_skipped(pod)) continue;  // never a backend of any env
      for (size_t ai = 0; ai < ep.addresses.size(); ai++)
        eps.push_back({&ep.addresses[ai], port, pod, &sl, nullptr, ei, ai});
    }
  });
  if (have_slices || !svc.has_selector || !o.selector_fallback) return eps;

  look.for_each_candidate(svc.ns, svc.selector, [&](const k8s::Pod& pod) {
    if (pod.ns != svc.ns || !selector_matches(svc.selector, pod.labels)) return;
    std::string ref = pod_ref(pod);
    if (!pod.ready || pod.terminating || look.pod_skipped(ref)) return;
    int32_t port = sp.target_port != 0 ? sp.target_port : 0;
    if (!sp.target_port_name.empty()) {
      for (const auto& cp : pod.ports)
        if (cp.name == sp.target_port_name && cp.protocol == sp.protocol) port = cp.port;
    } else if (port == 0) {
      port = sp.port;
    }
    if (port == 0) {
      out.report.warnings.push_back("Service " + k8s::object_key(svc.ns, svc.name) + ": port \"" + sp.name +
                                    "\": Pod " + ref + " has no container port named \"" +
                                    sp.target_port_name + "\"; skipped");
      return;
    }
    for (size_t ai = 0; ai < pod.pod_ips.size(); ai++) eps.push_back({&pod.pod_ips[ai], port, ref, nullptr, &pod, 0, ai});
  });
  return eps;
}

// A port declared HTTP/2: appProtocol kubernetes.io/h2c, h2c, http2 or grpc, or
// (as Istio reads them) a port name grpc, http2, h2c or one of them and "-...".
bool http2_port(const k8s::ServicePort& sp) {
  std::string ap = sp.app_protocol;
  for (auto& c : ap) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ap == "kubernetes.io/h2c" || ap == "h2c" || ap == "http2" || ap == "grpc") return true;
  if (!ap.empty()) return false;  // declared something else (grpc-web, http, ...)
  for (const char* p : {"grpc", "http2", "h2c"}) {
    const std::string n = p;
    if (sp.name == n || (sp.name.size() > n.size() && sp.name.compare(0, n.size(), n) == 0 && sp.name[n.size()] == '-'))
      return true;
  }
  return false;
}

// A Service is skipped whole when one of its addresses is invalid or taken by
// a Service before it in key order (or twice by itself): never half of it.
ServiceResult service_rule(const k8s::Service& svc, const ModelOptions& o, const Lookup& look) {
  ServiceResult out;
  Report& r = out.report;
  const std::string ref = k8s::object_key(svc.ns, svc.name);
  for (const auto& sp : svc.ports) {
    if (proto_number(sp.protocol) == 0) continue;
    for (const auto& ip : svc.cluster_ips) {
      try {
        out.addrs.push_back(maps::make_frontend_key(ip, static_cast<uint16_t>(sp.port), proto_number(sp.protocol)));
      } catch (const std::invalid_argument&) {
      }
    }
  }
  const char* const skipped = "; the Service is skipped: none of its addresses is steered";
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
                              k8s::protocol_name(sp.protocol) + " is not steered");
      continue;
    }
    for (const auto& ip : svc.cluster_ips) {
      es_frontend_key key{};
      try {
        key = maps::make_frontend_key(ip, static_cast<uint16_t>(sp.port), proto_number(sp.protocol));
      } catch (const std::invalid_argument& e) {
        r.skip("Service", ref, svc.uid, "spec.clusterIPs", skip_reason::kInvalidAddress,
               "Service " + ref + ": spec.clusterIPs: " + e.what() + skipped);
        return out;
      }
      const std::string field = "spec.ports[" + std::to_string(pi) + "]";
      if (const std::string* owner = look.owner_before(key, ref)) {
        r.skip("Service", ref, svc.uid, field, skip_reason::kAddressInUse,
               "Service " + ref + ": " + field + ": address " + maps::format_frontend(key) +
                   " is already used by Service " + *owner + skipped);
        return out;
      }
      if (auto [it, fresh] = mine.emplace(key, pi); !fresh) {
        r.skip("Service", ref, svc.uid, field, skip_reason::kAddressInUse,
               "Service " + ref + ": " + field + ": address " + maps::format_frontend(key) +
                   " is already used by its spec.ports[" + std::to_string(it->second) + "]" + skipped);
        return out;
      }
      addrs.push_back({pi, key});
    }
  }
  out.accepted = true;
  for (auto& w : port_warnings) r.warnings.push_back(std::move(w));
  const bool per_request = opt_in(svc.annotations, kConnPerRequestAnnotation, "Service", ref, {"true"}, {"false"}, r);
  std::map<size_t, std::vector<Endpoint>> eps_of_port;
  for (const auto& a : addrs) {
    const auto& sp = svc.ports[a.port_index];
    out.frontends.push_back(FrontendSpec{a.key, ref, sp.name, per_request ? ES_FE_F_CONN_PER_REQUEST : 0u});
    auto eit = eps_of_port.find(a.port_index);
    if (eit == eps_of_port.end()) eit = eps_of_port.emplace(a.port_index, endpoints(svc, sp, o, look, out)).first;
    for (const auto& ep : eit->second) {
      es_backend be{};
      try {
        be = maps::make_backend(*ep.ip, static_cast<uint16_t>(ep.port));
      } catch (const std::invalid_argument& e) {
        r.skip(ep.kind(), ep.key(), ep.uid(), ep.field(), skip_reason::kInvalidAddress,
               ep.kind() + " " + ep.key() + ": " + ep.field() + ": " + e.what() + "; the address is no backend");
        continue;
      }
      if (be.family != a.key.family) continue;  // IPv4 frontends reach IPv4 pods only
      const EnvName* env = ep.pod.empty() ? nullptr : look.pod_env(ep.pod);
      if (!ep.pod.empty() && look.pod_local_ctx(ep.pod)) be.flags |= ES_BE_F_LOCAL_CTX;
      auto& set = out.sets[SetName{a.key, env ? *env : o.default_env}];
      BackendRef ref_be{be, ep.pod};
      auto pos = std::lower_bound(set.begin(), set.end(), ref_be);
      if (pos == set.end() || !maps::same_backend(pos->backend, be)) set.insert(pos, ref_be);
    }
  }
  // HTTP/2 per stream (README "HTTP/2 and gRPC"): a declared HTTP/2 port of a
  // frontend with ready pods in more than one backend set goes to the agent's
  // HTTP/2 endpoint; every other connection is left alone.
  for (auto& f : out.frontends) {
    size_t sets = 0;
    for (auto it = out.sets.lower_bound(SetName{f.key, ""}); it != out.sets.end() && maps::bytes_equal(it->first.frontend, f.key); ++it)
      sets += !it->second.empty();
    if (sets > 1) f.flags |= ES_FE_F_MULTI_SET;
  }
  for (size_t i = 0; i < out.frontends.size(); i++)
    if (http2_port(svc.ports[addrs[i].port_index])) out.frontends[i].flags |= ES_FE_F_H2;
  return out;
}


// ---------------------------------------------------------------------------
// The full build.

class Builder : public Lookup {
 public:
  Builder(const k8s::ClusterState& c, const ModelOptions& o) : c_(c), o_(o) {}

  DesiredState build() {
    out_.default_env = o_.default_env;
    if (!o_.default_env.empty())
      for (auto& level : env_chain(o_.default_env, o_.splitter)) out_.envs.insert(level);
    for (const auto& bad : c_.invalid) {
      Skipped s = invalid_object_skip(bad);
      skipped_.try_emplace(skip_key(s), std::move(s));
      if (bad.kind == "Pod") skipped_pods_.insert(bad.key);
    }
    std::vector<Claim> claims;
    for (const auto& [key, pod] : c_.pods) {
      if (skipped_pods_.count(key)) continue;  // the source could not decode it
      PodResult pr = pod_rule(pod, o_, namespace_labels(c_, pod.ns));
      take(pr.report);
      if (!pr.valid) {
        skipped_pods_.insert(key);
        continue;
      }
      if (!pr.env.empty())
        for (auto& level : env_chain(pr.env, o_.splitter)) out_.envs.insert(level);
      out_.pod_envs[key] = PodEnv{pr.env, pr.labelled};
      if (pr.claim) claims.push_back(std::move(*pr.claim));
      if (pr.missing) out_.missing_cgroups.push_back(std::move(*pr.missing));
    }
    std::vector<const Claim*> ptrs;
    for (const auto& c : claims) ptrs.push_back(&c);
    Report settled;
    settle_claims(ptrs, out_.pods, settled);
    take(settled);
    ctx_pods_ = thread_ctx_pods(out_.pods);
    for (const auto& [key, sl] : c_.slices) slices_by_svc_[NsName{sl.ns, sl.service_name}].push_back(&sl);
    for (const auto& [key, pod] : c_.pods) {
      pods_by_ns_[pod.ns].push_back(&pod);
      for (const auto& [k, v] : pod.labels) pods_by_label_[LabelKey{pod.ns, k, v}].push_back(&pod);
    }
    for (const auto& [key, svc] : c_.services) {
      ServiceResult sr = service_rule(svc, o_, *this);
      take(sr.report);
      if (!sr.accepted) continue;
      for (auto& f : sr.frontends) {
        owner_.emplace(f.key, key);
        out_.frontends[f.key] = std::move(f);
      }
      for (auto& [name, set] : sr.sets) out_.sets[name] = std::move(set);
    }
    for (auto& [k, s] : skipped_) out_.skipped.push_back(std::move(s));
    std::sort(out_.missing_cgroups.begin(), out_.missing_cgroups.end(),
              [](const MissingCgroup& a, const MissingCgroup& b) { return a.pod < b.pod; });
    return std::move(out_);
  }

 private:
  // The first record of (kind, key, field) stays.
  void take(Report& r) {
    for (auto& s : r.skips) skipped_.try_emplace(skip_key(s), std::move(s));
    for (auto& w : r.warnings) out_.warnings.push_back(std::move(w));
  }

  void for_each_slice(const std::string& ns, const std::string& name,
                      const std::function<void(const k8s::EndpointSlice&)>& fn) const override {
    auto it = slices_by_svc_.find(NsName{ns, name});
    if (it == slices_by_svc_.end()) return;
    for (const auto* sl : it->second) fn(*sl);
  }
  void for_each_candidate(const std::string& ns, const k8s::Labels& selector,
                          const std::function<void(const k8s::Pod&)>& fn) const override {
    if (const auto* best = smallest_candidates(pods_by_ns_, pods_by_label_, ns, selector))
      for (const auto* p : *best) fn(*p);
  }
  bool pod_skipped(const std::string& pod) const override { return skipped_pods_.count(pod) > 0; }
  const EnvName* pod_env(const std::string& pod) const override {
    auto it = out_.pod_envs.find(pod);
    return it == out_.pod_envs.end() ? nullptr : &it->second.env;
  }
  bool pod_local_ctx(const std::string& pod) const override { return ctx_pods_.count(pod) > 0; }
  const std::string* owner_before(const es_frontend_key& k, const std::string&) const override {
    auto it = owner_.find(k);  // only Services before this one are in it yet
    return it == owner_.end() ? nullptr : &it->second;
  }

  using NsName = std::pair<std::string, std::string>;
  using LabelKey = std::tuple<std::string, std::string, std::string>;  // ns, label, value
  const k8s::ClusterState& c_;
  const ModelOptions& o_;
  DesiredState out_;
  std::map<NsName, std::vector<const k8s::EndpointSlice*>> slices_by_svc_;
  std::map<std::string, std::vector<const k8s::Pod*>> pods_by_ns_;
  std::map<LabelKey, std::vector<const k8s::Pod*>> pods_by_label_;
  std::set<std::string> skipped_pods_;  // no backend of any env
  std::set<std::string> ctx_pods_;      // local pods with the thread context
  std::map<es_frontend_key, std::string, maps::BytesLess<es_frontend_key>> owner_;
  std::map<SkipKey, Skipped> skipped_;
};

}  // namespace

DesiredState build_model(const k8s::ClusterState& cluster, const ModelOptions& opt) {
  return Builder(cluster, opt).build();
}

// ---------------------------------------------------------------------------
// The incremental model.

void ModelDelta::merge(ModelDelta&& o) {
  all = all || o.all;
  pods = pods || o.pods;
  frontends.merge(o.frontends);
  sets.merge(o.sets);
  envs.merge(o.envs);
}

struct IncrementalModel::Impl : public Lookup {
  using NsName = std::pair<std::string, std::string>;
  using LabelKey = std::tuple<std::string, std::string, std::string>;  // ns, label, value
  using FeSet = std::set<es_frontend_key, maps::BytesLess<es_frontend_key>>;

  // What a Service contributes, to take it back when it is recomputed.
  struct SvcInfo {
    bool accepted = false;
    std::vector<es_frontend_key> addrs;      // asked for (claimants_)
    std::vector<es_frontend_key> frontends;  // given
    // pods read: keys of svc_by_pod, whose entries point back at this one's key in svcs
    std::vector<const std::string*> pods;
  };

  ModelOptions o;
  k8s::ClusterState c;
  DesiredState st;
  ModelDelta delta;

  // indexes from an object to what depends on it
  std::map<NsName, std::set<std::string>> slices_by_svc;  // slice keys
  // Pods are indexed by their entries in c.pods (stable while they are there;
  // ordered by key): a pointer per index entry, not a copy of the name.
  using PodEntry = const std::pair<const std::string, k8s::Pod>*;
  struct ByKey {
    bool operator()(PodEntry a, PodEntry b) const { return a->first < b->first; }
  };
  // Sorted by key; a vector (8 bytes an entry) rather than a set (48): a
  // change moves the pointers after the one added or removed.
  struct PodSet {
    std::vector<PodEntry> v;
    void insert(PodEntry e) {
      auto it = std::lower_bound(v.begin(), v.end(), e, ByKey{});
      if (it == v.end() || *it != e) v.insert(it, e);
    }
    void erase(PodEntry e) {
      auto it = std::lower_bound(v.begin(), v.end(), e, ByKey{});
      if (it != v.end() && *it == e) v.erase(it);
    }
    size_t size() const { return v.size(); }
    bool empty() const { return v.empty(); }
    auto begin() const { return v.begin(); }
    auto end() const { return v.end(); }
  };
  std::map<std::string, PodSet> pods_by_ns;
  std::map<std::string, std::set<std::string>> services_by_ns;
  std::map<LabelKey, PodSet> pods_by_label;  // only with selector_fallback
  std::map<es_frontend_key, std::set<std::string>, maps::BytesLess<es_frontend_key>> claimants;
  std::map<std::string, SvcInfo> svcs;
  // pod -> the Services whose EndpointSlices name it (keys of svcs: those nodes
  // stay while they are listed); those that select it are found by services_by_ns
  std::map<std::string, std::vector<const std::string*>> svc_by_pod;
  std::set<std::string> invalid_pods, skipped_pods;
  std::map<EnvName, uint32_t> env_refs;
  std::map<std::string, Claim> claims;  // local pods, valid one by one
  bool claims_dirty = false;
  std::set<std::string> ctx_pods;  // settled local pods with the thread context (pod_local_ctx)

  // what is left out and warned about, by who found it ("P:pod", "S:svc", "I:kind/key", "C")
  std::map<SkipKey, std::map<std::string, Skipped>> skips;
  std::map<std::string, std::vector<std::string>> pod_warnings, svc_warnings;
  std::map<std::string, MissingCgroup> missing;
  bool reports_dirty = true;

  explicit Impl(ModelOptions opt) : o(std::move(opt)) {}

  // --- Lookup
  void for_each_slice(const std::string& ns, const std::string& name,
                      const std::function<void(const k8s::EndpointSlice&)>& fn) const override {
    auto it = slices_by_svc.find(NsName{ns, name});
    if (it == slices_by_svc.end()) return;
    for (const auto& k : it->second) fn(c.slices.at(k));
  }
  void for_each_candidate(const std::string& ns, const k8s::Labels& selector,
                          const std::function<void(const k8s::Pod&)>& fn) const override {
    if (const auto* best = smallest_candidates(pods_by_ns, pods_by_label, ns, selector))
      for (PodEntry e : *best) fn(e->second);
  }
  bool pod_skipped(const std::string& pod) const override { return skipped_pods.count(pod) > 0; }
  const EnvName* pod_env(const std::string& pod) const override {
    auto it = st.pod_envs.find(pod);
    return it == st.pod_envs.end() ? nullptr : &it->second.env;
  }
  bool pod_local_ctx(const std::string& pod) const override { return ctx_pods.count(pod) > 0; }
  const std::string* owner_before(const es_frontend_key& k, const std::string& svc) const override {
    auto it = claimants.find(k);
    if (it == claimants.end()) return nullptr;
    for (const auto& other : it->second) {
      if (other >= svc) break;
      auto s = svcs.find(other);
      if (s != svcs.end() && s->second.accepted) return &other;
    }
    return nullptr;
  }

  // --- reports
  void add_report(const std::string& who, Report& r, std::map<std::string, std::vector<std::string>>& warnings) {
    if (!r.skips.empty() || !r.warnings.empty()) reports_dirty = true;
    for (auto& s : r.skips) skips[skip_key(s)].try_emplace(who, std::move(s));
    if (!r.warnings.empty()) warnings[who.substr(2)] = std::move(r.warnings);
  }
  void drop_report(const std::string& who, const std::vector<SkipKey>& keys) {
    for (const auto& k : keys) {
      auto it = skips.find(k);
      if (it == skips.end()) continue;
      if (it->second.erase(who)) reports_dirty = true;
      if (it->second.empty()) skips.erase(it);
    }
  }
  // The skip keys a producer may have recorded are only known by scanning; producers
  // record few, so each keeps its list.
  std::map<std::string, std::vector<SkipKey>> skip_keys_of;
  void record(const std::string& who, Report& r, std::map<std::string, std::vector<std::string>>& warnings) {
    std::vector<SkipKey> keys;
    for (const auto& s : r.skips) keys.push_back(skip_key(s));
    if (!keys.empty()) skip_keys_of[who] = std::move(keys);
    add_report(who, r, warnings);
  }
  void forget(const std::string& who, std::map<std::string, std::vector<std::string>>& warnings) {
    auto it = skip_keys_of.find(who);
    if (it != skip_keys_of.end()) {
      drop_report(who, it->second);
      skip_keys_of.erase(it);
    }
    if (warnings.erase(who.substr(2))) reports_dirty = true;
  }

  void assemble_reports() {
    if (!reports_dirty) return;
    reports_dirty = false;
    st.skipped.clear();
    for (const auto& [k, by] : skips) st.skipped.push_back(by.begin()->second);
    st.warnings.clear();
    for (const auto* w : {&pod_warnings, &svc_warnings})
      for (const auto& [key, list] : *w) st.warnings.insert(st.warnings.end(), list.begin(), list.end());
    st.missing_cgroups.clear();
    for (const auto& [key, m] : missing) st.missing_cgroups.push_back(m);
  }

  // A key the next delta names; none while it is `all` (a load names 100 000s).
  template <class Set, class K>
  void note(Set& keys, const K& k) {
    if (!delta.all) keys.insert(k);
  }

  // --- envs
  // D uses of env E (and its ancestors) begin (d > 0) or end (d < 0).
  void env_ref(const EnvName& e, int d) {
    if (e.empty()) return;
    for (auto& level : env_chain(e, o.splitter)) {
      auto& n = env_refs[level];
      if (d > 0 && (n += static_cast<uint32_t>(d)) == static_cast<uint32_t>(d)) {
        st.envs.insert(level);
        note(delta.envs, level);
      } else if (d < 0 && (n -= static_cast<uint32_t>(-d)) == 0) {
        env_refs.erase(level);
        st.envs.erase(level);
        note(delta.envs, level);
      }
    }
  }

  // --- pods
  // Recomputes a pod's own entries; true when what services read of it changed.
  bool recompute_pod(const std::string& key) {
    const std::string who = "P:" + key;
    std::optional<EnvName> old_env;
    if (auto it = st.pod_envs.find(key); it != st.pod_envs.end()) {
      old_env = it->second.env;
      env_ref(it->second.env, -1);
      st.pod_envs.erase(it);
    }
    const bool was_skipped = skipped_pods.erase(key) > 0;
    forget(who, pod_warnings);
    if (missing.erase(key)) reports_dirty = true;
    std::optional<Claim> old_claim;
    if (auto it = claims.find(key); it != claims.end()) {
      old_claim = std::move(it->second);
      claims.erase(it);
    }
    std::optional<Claim> new_claim;
    auto pit = c.pods.find(key);
    if (invalid_pods.count(key)) {
      skipped_pods.insert(key);
    } else if (pit != c.pods.end()) {
      PodResult pr = pod_rule(pit->second, o, namespace_labels(c, pit->second.ns));
      record(who, pr.report, pod_warnings);
      if (!pr.valid) {
        skipped_pods.insert(key);
      } else {
        env_ref(pr.env, +1);
        st.pod_envs[key] = PodEnv{pr.env, pr.labelled};
        if (pr.claim) new_claim = std::move(pr.claim);
        if (pr.missing) {
          missing[key] = std::move(*pr.missing);
          reports_dirty = true;
        }
      }
    }
    if (new_claim) claims[key] = *new_claim;
    if (old_claim != new_claim) claims_dirty = true;
    std::optional<EnvName> new_env;
    if (auto it = st.pod_envs.find(key); it != st.pod_envs.end()) new_env = it->second.env;
    return old_env != new_env || was_skipped != (skipped_pods.count(key) > 0);
  }

  void settle() {
    if (!claims_dirty) return;
    claims_dirty = false;
    std::vector<const Claim*> ptrs;
    for (const auto& [k, cl] : claims) ptrs.push_back(&cl);
    std::map<uint64_t, LocalPod> pods;
    Report r;
    settle_claims(ptrs, pods, r);
    forget("C:", pod_warnings);
    record("C:", r, pod_warnings);
    if (pods != st.pods) {
      st.pods = std::move(pods);
      delta.pods = true;
    }
    // The Services that name a pod which became, or stopped being, a local pod with
    // the thread context: their backend flags (ES_BE_F_LOCAL_CTX) change.
    std::set<std::string> ctx = thread_ctx_pods(st.pods);
    if (ctx == ctx_pods) return;
    std::vector<std::string> changed;
    std::set_symmetric_difference(ctx.begin(), ctx.end(), ctx_pods.begin(), ctx_pods.end(),
                                  std::back_inserter(changed));
    ctx_pods = std::move(ctx);
    std::set<std::string> work;
    for (const auto& key : changed) {
      auto it = c.pods.find(key);
      const k8s::Pod* p = it == c.pods.end() ? nullptr : &it->second;
      services_of_pod(key, p, p, work);
    }
    run(work);
  }

  // Index (or unindex) pod entry `e` of c.pods, with the labels it has now.
  void index_pod(const std::pair<const std::string, k8s::Pod>& e, bool add) {
    const k8s::Pod& p = e.second;
    auto upd = [&](PodSet& s) { add ? (void)s.insert(&e) : (void)s.erase(&e); };
    upd(pods_by_ns[p.ns]);
    if (o.selector_fallback)
      for (const auto& [k, v] : p.labels) {
        auto& s = pods_by_label[LabelKey{p.ns, k, v}];
        upd(s);
        if (s.empty()) pods_by_label.erase(LabelKey{p.ns, k, v});
      }
    if (pods_by_ns[p.ns].empty()) pods_by_ns.erase(p.ns);
  }

  // Services that read pod `key`: those whose EndpointSlices name it (svc_by_pod),
  // and those whose selector matches it with its old or new labels.
  void services_of_pod(const std::string& key, const k8s::Pod* before, const k8s::Pod* after,
                       std::set<std::string>& work) {
    if (auto it = svc_by_pod.find(key); it != svc_by_pod.end())
      for (const std::string* s : it->second) work.insert(*s);
    if (!o.selector_fallback) return;
    for (const k8s::Pod* p : {before, after}) {
      if (!p) continue;
      auto ns = services_by_ns.find(p->ns);
      if (ns == services_by_ns.end()) continue;
      for (const auto& sk : ns->second) {
        const auto& svc = c.services.at(sk);
        if (svc.has_selector && selector_matches(svc.selector, p->labels)) work.insert(sk);
      }
    }
  }

  // Namespace `name` had labels `before` (nullptr: unknown); its pods are
  // recomputed when that changes whether they take part.
  void namespace_changed(const std::string& name, const k8s::Labels* before) {
    const bool was = o.participation.namespace_takes_part(before);
    const bool now = o.participation.namespace_takes_part(namespace_labels(c, name));
    if (was == now) return;
    auto it = pods_by_ns.find(name);
    if (it == pods_by_ns.end()) return;
    std::set<std::string> work;
    for (PodEntry e : it->second)
      if (recompute_pod(e->first))  // participation never changes what Services read; kept exact anyway
        services_of_pod(e->first, &e->second, &e->second, work);
    settle();
    run(work);
  }

  void pod_changed(const std::string& key, std::optional<k8s::Pod> before) {
    recompute_pod(key);
    settle();
    std::set<std::string> work;
    auto it = c.pods.find(key);
    services_of_pod(key, before ? &*before : nullptr, it == c.pods.end() ? nullptr : &it->second, work);
    run(work);
  }

  // --- services
  void drop_sets_of(const es_frontend_key& fe) {
    auto lo = st.sets.lower_bound(SetName{fe, ""});
    while (lo != st.sets.end() && maps::bytes_equal(lo->first.frontend, fe)) {
      note(delta.sets, lo->first);
      lo = st.sets.erase(lo);
    }
  }

  // KEY is the key of its svcs entry when old.pods is not empty.
  void take_back(const std::string& key, const SvcInfo& old) {
    for (const auto& fe : old.frontends) {
      auto it = st.frontends.find(fe);
      if (it == st.frontends.end() || it->second.service != key) continue;  // a Service before it took it
      st.frontends.erase(it);
      note(delta.frontends, fe);
      drop_sets_of(fe);
    }
    for (const auto& a : old.addrs) {
      auto it = claimants.find(a);
      if (it == claimants.end()) continue;
      it->second.erase(key);
      if (it->second.empty()) claimants.erase(it);
    }
    for (const std::string* p : old.pods) {
      auto it = svc_by_pod.find(*p);
      auto& list = it->second;
      list.erase(std::find(list.begin(), list.end(), &key));
      if (list.empty()) svc_by_pod.erase(it);
    }
    forget("S:" + key, svc_warnings);
  }

  // Recomputes one Service; adds to `work` the Services after it whose
  // addresses it may now take or leave.
  void recompute_service(const std::string& key, std::set<std::string>& work) {
    // The svcs entry stays (svc_by_pod points at its key) while it is recomputed,
    // not accepted meanwhile (owner_before); it goes when the Service is gone.
    SvcInfo old;
    auto self = svcs.find(key);
    if (self != svcs.end()) {
      old = std::move(self->second);
      self->second = SvcInfo{};
      take_back(self->first, old);
    }
    SvcInfo now;
    if (auto it = c.services.find(key); it != c.services.end()) {
      ServiceResult sr = service_rule(it->second, o, *this);
      record("S:" + key, sr.report, svc_warnings);
      if (self == svcs.end()) self = svcs.try_emplace(key).first;
      now.accepted = sr.accepted;
      now.addrs = std::move(sr.addrs);
      for (const auto& a : now.addrs) claimants[a].insert(key);
      now.pods.reserve(sr.pods.size());
      for (auto& p : sr.pods) {
        auto pit = svc_by_pod.try_emplace(std::move(p)).first;
        pit->second.push_back(&self->first);
        now.pods.push_back(&pit->first);
      }
      for (auto& f : sr.frontends) {
        now.frontends.push_back(f.key);
        note(delta.frontends, f.key);
        drop_sets_of(f.key);  // a Service after it held the address until now
        st.frontends[f.key] = std::move(f);
      }
      for (auto& [name, set] : sr.sets) {
        note(delta.sets, name);
        st.sets[name] = std::move(set);
      }
    } else if (self != svcs.end()) {
      svcs.erase(self);
    }
    auto same = [](const std::vector<es_frontend_key>& a, const std::vector<es_frontend_key>& b) {
      return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](const auto& x, const auto& y) {
               return maps::bytes_equal(x, y);
             });
    };
    if (old.accepted != now.accepted || !same(old.addrs, now.addrs)) {
      for (const auto* list : {&old.addrs, &now.addrs})
        for (const auto& a : *list)
          if (auto it = claimants.find(a); it != claimants.end())
            for (const auto& z : it->second)
              if (z > key) work.insert(z);
    }
    if (c.services.count(key)) self->second = std::move(now);
  }

  // In key order: a Service's address ownership depends only on those before it.
  void run(std::set<std::string>& work) {
    while (!work.empty()) {
      std::string key = *work.begin();
      work.erase(work.begin());
      recompute_service(key, work);
    }
  }

  void services_named(const std::string& ns, const std::string& name, std::set<std::string>& work) {
    std::string key = k8s::object_key(ns, name);
    if (c.services.count(key) || svcs.count(key)) work.insert(key);
  }

  void index_service(const k8s::Service& s, const std::string& key, bool add) {
    auto& set = services_by_ns[s.ns];
    add ? (void)set.insert(key) : (void)set.erase(key);
    if (set.empty()) services_by_ns.erase(s.ns);
  }

  void index_slice(const k8s::EndpointSlice& s, const std::string& key, bool add) {
    auto& set = slices_by_svc[NsName{s.ns, s.service_name}];
    add ? (void)set.insert(key) : (void)set.erase(key);
    if (set.empty()) slices_by_svc.erase(NsName{s.ns, s.service_name});
  }

  void clear_invalid(const std::string& kind, const std::string& key) {
    auto it = std::find_if(c.invalid.begin(), c.invalid.end(),
                           [&](const k8s::InvalidObject& b) { return b.kind == kind && b.key == key; });
    if (it == c.invalid.end()) return;
    c.invalid.erase(it);
    forget("I:" + kind + "/" + key, svc_warnings);
    if (kind == "Pod") invalid_pods.erase(key);
  }

  // --- load: every object is new. Each index is built at once in key order
  // and each object computed once, without what an event needs (taking back
  // an object's old entries, a work set, the keys a delta names); the result
  // is the one recompute_pod() and run() give (the equivalence tests).

  // A label of the pod indexed last, and its pods_by_label list.
  struct LastLabel {
    std::string_view key, value;  // in the pod (c.pods)
    PodSet* pods;
  };
  // The pod indexed last: its namespace's list and its labels' (index_new_pod).
  struct LastPod {
    const std::string* ns = nullptr;
    PodSet* in_ns = nullptr;
    std::vector<LastLabel> labels, next;
  };

  // index_pod(e, true) of a pod after every pod indexed so far (key order).
  // Pods next to each other in key order (a Deployment's, a Service's) share
  // their namespace and most labels: those lists are the last pod's, not
  // looked up again (a LabelKey of three strings per label).
  void index_new_pod(const std::pair<const std::string, k8s::Pod>& e, LastPod& last) {
    const k8s::Pod& p = e.second;
    if (!last.ns || *last.ns != p.ns) {
      last.ns = &p.ns;
      last.in_ns = &pods_by_ns[p.ns];
      last.labels.clear();
    }
    last.in_ns->v.push_back(&e);
    if (!o.selector_fallback) return;
    last.next.clear();
    for (const auto& [k, v] : p.labels) {
      PodSet* pods = nullptr;
      const size_t i = last.next.size();  // the same place first: labels in the same order
      if (i < last.labels.size() && last.labels[i].key == k && last.labels[i].value == v) {
        pods = last.labels[i].pods;
      } else {
        for (const auto& l : last.labels)
          if (l.key == k && l.value == v) pods = l.pods;
      }
      if (!pods) pods = &pods_by_label[LabelKey{p.ns, k, v}];
      pods->v.push_back(&e);
      last.next.push_back({k, v, pods});
    }
    std::swap(last.labels, last.next);
  }

  // recompute_pod() of a pod new to the model, after the pods before it in
  // key order; its env's uses are counted into env_uses (env_ref() once per env).
  void load_pod(const std::pair<const std::string, k8s::Pod>& e, std::map<EnvName, int>& env_uses) {
    const std::string& key = e.first;
    if (!invalid_pods.empty() && invalid_pods.count(key)) {
      skipped_pods.insert(key);
      return;
    }
    PodResult pr = pod_rule(e.second, o, namespace_labels(c, e.second.ns));
    if (!pr.report.skips.empty() || !pr.report.warnings.empty()) record("P:" + key, pr.report, pod_warnings);
    if (!pr.valid) {
      skipped_pods.emplace_hint(skipped_pods.end(), key);
      return;
    }
    if (!pr.env.empty()) env_uses[pr.env]++;
    st.pod_envs.emplace_hint(st.pod_envs.end(), key, PodEnv{std::move(pr.env), pr.labelled});
    if (pr.claim) {
      claims.emplace_hint(claims.end(), key, std::move(*pr.claim));
      claims_dirty = true;
    }
    if (pr.missing) {
      missing.emplace_hint(missing.end(), key, std::move(*pr.missing));
      reports_dirty = true;
    }
  }

  // recompute_service() of a Service new to the model, after the Services
  // before it in key order and before those after it: no Service after it can
  // hold its addresses yet, so none is recomputed for it.
  void load_service(const std::string& key, const k8s::Service& s) {
    ServiceResult sr = service_rule(s, o, *this);
    if (!sr.report.skips.empty() || !sr.report.warnings.empty()) record("S:" + key, sr.report, svc_warnings);
    auto self = svcs.emplace_hint(svcs.end(), key, SvcInfo{});
    SvcInfo& now = self->second;
    now.accepted = sr.accepted;
    now.addrs = std::move(sr.addrs);
    for (const auto& a : now.addrs) {
      auto& by = claimants[a];
      by.emplace_hint(by.end(), key);
    }
    now.pods.reserve(sr.pods.size());
    for (auto& p : sr.pods) {
      auto pit = svc_by_pod.try_emplace(std::move(p)).first;
      pit->second.push_back(&self->first);
      now.pods.push_back(&pit->first);
    }
    now.frontends.reserve(sr.frontends.size());
    for (auto& f : sr.frontends) {
      now.frontends.push_back(f.key);
      st.frontends.insert_or_assign(f.key, std::move(f));
    }
    // Its sets come sorted, those of one frontend together, and no other
    // Service has sets of that frontend: one search per frontend, then each
    // set goes just before the same place (a hinted insert, not a search
    // among the 100 000 sets for each).
    auto place = st.sets.end();
    const es_frontend_key* placed = nullptr;
    for (auto& [name, set] : sr.sets) {
      if (!placed || !maps::bytes_equal(*placed, name.frontend)) {
        place = st.sets.lower_bound(name);
        placed = &name.frontend;
      }
      st.sets.insert_or_assign(place, name, std::move(set));
    }
  }

  // Loads a whole cluster into a fresh Impl.
  void load(k8s::ClusterState cluster) {
    delta = ModelDelta{};
    delta.all = true;
    c = std::move(cluster);
    st.default_env = o.default_env;
    if (!o.default_env.empty()) env_ref(o.default_env, +1);  // for good
    for (const auto& bad : c.invalid) {
      Report r;
      r.skips.push_back(invalid_object_skip(bad));
      record("I:" + bad.kind + "/" + bad.key, r, svc_warnings);
      if (bad.kind == "Pod") invalid_pods.insert(bad.key), skipped_pods.insert(bad.key);
    }
    LastPod last;
    for (const auto& e : c.pods) index_new_pod(e, last);
    // grown by doubling: up to half of 300 000 pointers unused at 100 000 pods
    for (auto& [k, s] : pods_by_ns) s.v.shrink_to_fit();
    for (auto& [k, s] : pods_by_label) s.v.shrink_to_fit();
    std::map<EnvName, int> env_uses;
    for (const auto& e : c.pods) load_pod(e, env_uses);
    for (const auto& [env, n] : env_uses) env_ref(env, n);
    settle();
    for (const auto& [key, sl] : c.slices) index_slice(sl, key, true);
    for (const auto& [key, s] : c.services) {
      auto& in_ns = services_by_ns[s.ns];
      in_ns.emplace_hint(in_ns.end(), key);
    }
    for (const auto& [key, s] : c.services) load_service(key, s);
    delta = ModelDelta{};
    delta.all = true;
  }
};

IncrementalModel::IncrementalModel(ModelOptions opt) : p_(std::make_unique<Impl>(std::move(opt))) { p_->load({}); }
IncrementalModel::~IncrementalModel() = default;

void IncrementalModel::reset(k8s::ClusterState cluster) {
  ModelOptions o = std::move(p_->o);
  p_.reset();  // the old indexes go before the new ones are built
  p_ = std::make_unique<Impl>(std::move(o));
  p_->load(std::move(cluster));
}

void IncrementalModel::upsert(k8s::Service s) {
  const std::string key = k8s::object_key(s.ns, s.name);
  auto& c = p_->c;
  p_->clear_invalid("Service", key);
  auto it = c.services.find(key);
  if (it != c.services.end() && it->second == s) return;
  if (it != c.services.end()) p_->index_service(it->second, key, false);
  p_->index_service(s, key, true);
  c.services[key] = std::move(s);
  std::set<std::string> work{key};
  p_->run(work);
}

void IncrementalModel::remove_service(const std::string& key) {
  auto& c = p_->c;
  p_->clear_invalid("Service", key);
  auto it = c.services.find(key);
  if (it == c.services.end()) return;
  p_->index_service(it->second, key, false);
  c.services.erase(it);
  std::set<std::string> work{key};
  p_->run(work);
}

void IncrementalModel::upsert(k8s::Pod pod) {
  const std::string key = k8s::object_key(pod.ns, pod.name);
  auto& c = p_->c;
  bool was_invalid = p_->invalid_pods.count(key) > 0;
  p_->clear_invalid("Pod", key);
  auto it = c.pods.find(key);
  if (it != c.pods.end() && it->second == pod && !was_invalid) return;
  std::optional<k8s::Pod> before;
  if (it != c.pods.end()) {
    p_->index_pod(*it, false);
    before = std::move(it->second);
    it->second = std::move(pod);
  } else {
    it = c.pods.emplace(key, std::move(pod)).first;
  }
  p_->index_pod(*it, true);
  p_->pod_changed(key, std::move(before));
}

void IncrementalModel::remove_pod(const std::string& key) {
  auto& c = p_->c;
  bool was_invalid = p_->invalid_pods.count(key) > 0;
  p_->clear_invalid("Pod", key);
  auto it = c.pods.find(key);
  if (it == c.pods.end() && !was_invalid) return;
  std::optional<k8s::Pod> before;
  if (it != c.pods.end()) {
    p_->index_pod(*it, false);
    before = std::move(it->second);
    c.pods.erase(it);
  }
  p_->pod_changed(key, std::move(before));
}

void IncrementalModel::upsert(k8s::EndpointSlice s) {
  const std::string key = k8s::object_key(s.ns, s.name);
  auto& c = p_->c;
  p_->clear_invalid("EndpointSlice", key);
  auto it = c.slices.find(key);
  if (it != c.slices.end() && it->second == s) return;
  std::set<std::string> work;
  if (it != c.slices.end()) {
    p_->index_slice(it->second, key, false);
    p_->services_named(it->second.ns, it->second.service_name, work);
  }
  p_->index_slice(s, key, true);
  p_->services_named(s.ns, s.service_name, work);
  c.slices[key] = std::move(s);
  p_->run(work);
}

void IncrementalModel::remove_slice(const std::string& key) {
  auto& c = p_->c;
  p_->clear_invalid("EndpointSlice", key);
  auto it = c.slices.find(key);
  if (it == c.slices.end()) return;
  std::set<std::string> work;
  p_->index_slice(it->second, key, false);
  p_->services_named(it->second.ns, it->second.service_name, work);
  c.slices.erase(it);
  p_->run(work);
}

void IncrementalModel::upsert(k8s::Namespace n) {
  const std::string name = n.name;
  auto& c = p_->c;
  p_->clear_invalid("Namespace", name);
  auto it = c.namespaces.find(name);
  if (it != c.namespaces.end() && it->second == n) return;
  std::optional<k8s::Labels> before;
  if (it != c.namespaces.end()) before = std::move(it->second.labels);
  c.namespaces[name] = std::move(n);
  p_->namespace_changed(name, before ? &*before : nullptr);
}

void IncrementalModel::remove_namespace(const std::string& name) {
  auto& c = p_->c;
  p_->clear_invalid("Namespace", name);
  auto it = c.namespaces.find(name);
  if (it == c.namespaces.end()) return;
  k8s::Labels before = std::move(it->second.labels);
  c.namespaces.erase(it);
  p_->namespace_changed(name, &before);
}

void IncrementalModel::set_invalid(k8s::InvalidObject bad) {
  if (bad.kind == "Service") remove_service(bad.key);
  else if (bad.kind == "EndpointSlice") remove_slice(bad.key);
  else if (bad.kind == "Pod") remove_pod(bad.key);
  else if (bad.kind == "Namespace") remove_namespace(bad.key);
  auto& inv = p_->c.invalid;
  const std::string key = bad.key, kind = bad.kind;
  Report r;
  r.skips.push_back(invalid_object_skip(bad));
  p_->record("I:" + kind + "/" + key, r, p_->svc_warnings);
  auto pos = std::lower_bound(inv.begin(), inv.end(), bad, [](const k8s::InvalidObject& a, const k8s::InvalidObject& b) {
    return std::tie(a.kind, a.key) < std::tie(b.kind, b.key);
  });
  inv.insert(pos, std::move(bad));
  if (kind == "Pod") {
    p_->invalid_pods.insert(key);
    p_->pod_changed(key, std::nullopt);
  }
}

void IncrementalModel::set_discovered_cgroup(const std::string& pod, const std::optional<std::string>& path) {
  auto& d = p_->o.discovered_cgroups;
  auto it = d.find(pod);
  if (path ? (it != d.end() && it->second == *path) : it == d.end()) return;
  if (path) d[pod] = *path;
  else d.erase(it);
  p_->recompute_pod(pod);
  p_->settle();
}

void IncrementalModel::recheck_missing_cgroups() {
  std::vector<std::string> keys;
  for (const auto& [k, m] : p_->missing) keys.push_back(k);
  for (const auto& k : keys) p_->recompute_pod(k);
  p_->settle();
}

std::optional<ObjectChange> IncrementalModel::apply(ObjectChange ch) {
  using K = ObjectChange::Kind;
  const char* kind = ch.kind == K::Service     ? "Service"
                     : ch.kind == K::Pod       ? "Pod"
                     : ch.kind == K::Namespace ? "Namespace"
                                               : "EndpointSlice";
  const auto& c = p_->c;
  ObjectChange undo{ch.kind, ch.key, {}};
  auto inv = std::find_if(c.invalid.begin(), c.invalid.end(),
                          [&](const k8s::InvalidObject& b) { return b.kind == kind && b.key == ch.key; });
  if (inv != c.invalid.end()) {
    undo.object = *inv;
  } else if (ch.kind == K::Service) {
    if (auto it = c.services.find(ch.key); it != c.services.end()) undo.object = it->second;
  } else if (ch.kind == K::Pod) {
    if (auto it = c.pods.find(ch.key); it != c.pods.end()) undo.object = it->second;
  } else if (ch.kind == K::Namespace) {
    if (auto it = c.namespaces.find(ch.key); it != c.namespaces.end()) undo.object = it->second;
  } else if (auto it = c.slices.find(ch.key); it != c.slices.end()) {
    undo.object = it->second;
  }
  if (undo.object == ch.object) return std::nullopt;
  if (auto* bad = std::get_if<k8s::InvalidObject>(&ch.object)) set_invalid(std::move(*bad));
  else if (auto* s = std::get_if<k8s::Service>(&ch.object)) upsert(std::move(*s));
  else if (auto* pod = std::get_if<k8s::Pod>(&ch.object)) upsert(std::move(*pod));
  else if (auto* sl = std::get_if<k8s::EndpointSlice>(&ch.object)) upsert(std::move(*sl));
  else if (auto* ns = std::get_if<k8s::Namespace>(&ch.object)) upsert(std::move(*ns));
  else if (ch.kind == K::Service) remove_service(ch.key);
  else if (ch.kind == K::Pod) remove_pod(ch.key);
  else if (ch.kind == K::Namespace) remove_namespace(ch.key);
  else remove_slice(ch.key);
  return undo;
}

namespace {

template <class T>
void diff_kind(const std::map<std::string, T>& from, std::map<std::string, T>& to, ObjectChange::Kind kind,
               std::vector<ObjectChange>& out) {
  for (auto& [key, obj] : to) {
    auto it = from.find(key);
    if (it == from.end() || !(it->second == obj)) out.push_back({kind, key, std::move(obj)});
  }
  for (const auto& [key, obj] : from)
    if (!to.count(key)) out.push_back({kind, key, std::monostate{}});
}

}  // namespace

std::vector<ObjectChange> cluster_changes(const k8s::ClusterState& from, k8s::ClusterState&& to) {
  using K = ObjectChange::Kind;
  std::vector<ObjectChange> out;
  auto kind_of = [](const std::string& k) {
    return k == "Service" ? K::Service : k == "Pod" ? K::Pod : k == "Namespace" ? K::Namespace : K::EndpointSlice;
  };
  // undecodable objects first: a decoded one of the same key is then not deleted after it
  std::set<std::pair<K, std::string>> bad;
  for (auto& b : to.invalid) {
    bad.insert({kind_of(b.kind), b.key});
    auto it = std::find(from.invalid.begin(), from.invalid.end(), b);
    if (it == from.invalid.end()) out.push_back({kind_of(b.kind), b.key, b});
  }
  for (const auto& b : from.invalid)
    if (!bad.count({kind_of(b.kind), b.key}) && !(b.kind == "Service"     ? to.services.count(b.key)
                                                  : b.kind == "Pod"       ? to.pods.count(b.key)
                                                  : b.kind == "Namespace" ? to.namespaces.count(b.key)
                                                                          : to.slices.count(b.key)))
      out.push_back({kind_of(b.kind), b.key, std::monostate{}});
  std::vector<ObjectChange> objs;
  diff_kind(from.services, to.services, K::Service, objs);
  diff_kind(from.pods, to.pods, K::Pod, objs);
  diff_kind(from.slices, to.slices, K::EndpointSlice, objs);
  diff_kind(from.namespaces, to.namespaces, K::Namespace, objs);
  for (auto& c : objs)
    if (!(std::holds_alternative<std::monostate>(c.object) && bad.count({c.kind, c.key}))) out.push_back(std::move(c));
  return out;
}

const DesiredState& IncrementalModel::state() {
  p_->assemble_reports();
  return p_->st;
}

const k8s::ClusterState& IncrementalModel::cluster() const { return p_->c; }
const ModelOptions& IncrementalModel::options() const { return p_->o; }

ModelDelta IncrementalModel::take_delta() {
  ModelDelta d = std::move(p_->delta);
  p_->delta = ModelDelta{};
  return d;
}

namespace {

template <class T>
std::string first_difference(const char* what, const T& a, const T& b) {
  return a == b ? "" : std::string(what) + " differ";
}

}  // namespace

std::string model_difference(const DesiredState& a, const DesiredState& b) {
  if (a.frontends.size() != b.frontends.size()) return "frontends differ in number";
  for (auto i = a.frontends.begin(), j = b.frontends.begin(); i != a.frontends.end(); ++i, ++j)
    if (!(i->second == j->second)) return "frontend " + maps::format_frontend(i->first) + " differs";
  if (a.sets.size() != b.sets.size()) return "backend sets differ in number";
  for (auto i = a.sets.begin(), j = b.sets.begin(); i != a.sets.end(); ++i, ++j) {
    bool same = i->first == j->first && i->second.size() == j->second.size();
    for (size_t k = 0; same && k < i->second.size(); k++)
      same = i->second[k] == j->second[k] && i->second[k].pod == j->second[k].pod;
    if (!same) return "backend set " + maps::format_frontend(i->first.frontend) + " env \"" + i->first.env + "\" differs";
  }
  for (const std::string& d :
       {first_difference("envs", a.envs, b.envs), first_difference("local pods", a.pods, b.pods),
        first_difference("default env", a.default_env, b.default_env),
        first_difference("pod envs", a.pod_envs, b.pod_envs),
        first_difference("warnings", a.warnings, b.warnings), first_difference("skipped", a.skipped, b.skipped),
        first_difference("missing cgroups", a.missing_cgroups, b.missing_cgroups)})
    if (!d.empty()) return d;
  return "";
}

}  // namespace envsteer
