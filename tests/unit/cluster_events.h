// SPDX-License-Identifier: Apache-2.0
// Random event sequences over a small cluster (Services, Pods, EndpointSlices,
// undecodable objects, cgroups appearing, discovered cgroups), drawn from
// small pools so that the interesting cases happen often: two Services on one
// address, a Pod named by several slices and selectors, invalid env labels and
// addresses, shared and nested cgroups. For the incremental model's tests.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "k8s/objects.h"
#include "model.h"

namespace envsteer::events_test {

// cgroup paths a test resolves: some exist, some appear later, some are
// invalid, one is outside the root, some nest inside others.
class FakeCgroups {
 public:
  std::set<std::string> present = {"/cg/p1", "/cg/p2", "/cg/p2/c", "/out/p5"};
  std::optional<CgroupInfo> resolve(const std::string& v) const {
    if (v.rfind("bad", 0) == 0) throw std::invalid_argument("\"" + v + "\" is not a cgroup path");
    if (!present.count(v)) return std::nullopt;
    CgroupInfo ci;
    ci.id = std::hash<std::string>{}(v) | 1;
    ci.path = v;
    ci.level = static_cast<int>(std::count(v.begin(), v.end(), '/'));
    ci.under_root = v.rfind("/cg/", 0) == 0;
    return ci;
  }
  std::vector<std::string> pool() const { return {"/cg/p1", "/cg/p2", "/cg/p2/c", "/cg/p3", "/cg/p4", "/out/p5", "bad:x"}; }
};

struct Event {
  std::string what;  // for failure messages
  std::function<void(IncrementalModel&)> apply;
};

class RandomCluster {
 public:
  // participation: pods take part by the env label, a pod label or their
  // Namespace's label (else every pod does), and Namespaces come and go.
  RandomCluster(uint32_t seed, FakeCgroups& cg, bool participation = false)
      : rng_(seed), cg_(cg), participation_(participation) {}

  Event next() {
    int roll = pick(100);
    if (roll < 30) return pod_event();
    if (roll < 50) return service_event();
    if (roll < 72) return slice_event();
    if (roll < 78) return invalid_event();
    if (roll < 86) return cgroup_event();
    if (roll < 93) return discovered_event();
    if (participation_ && roll < 97) return namespace_event();
    return pod_event();
  }

  ModelOptions options(bool selector_fallback, const std::string& default_env, bool discovered) const {
    ModelOptions o;
    o.default_env = default_env;
    o.selector_fallback = selector_fallback;
    o.cgroup_source = discovered ? CgroupSource::Discovered : CgroupSource::Annotation;
    const FakeCgroups* cg = &cg_;
    o.resolve_cgroup = [cg](const std::string& v) { return cg->resolve(v); };
    if (participation_) {
      o.participation.all = false;
      o.participation.selector = LabelSelector::parse(kDefaultParticipationSelector);
      o.participation.namespace_selector = LabelSelector::parse(kDefaultParticipationNamespaceSelector);
    }
    return o;
  }

 private:
  int pick(int n) { return static_cast<int>(rng_() % static_cast<uint32_t>(n)); }
  template <class T>
  const T& any(const std::vector<T>& v) { return v[static_cast<size_t>(pick(static_cast<int>(v.size())))]; }
  bool chance(int percent) { return pick(100) < percent; }

  const std::vector<std::string> ns_ = {"a", "b"};
  const std::vector<std::string> apps_ = {"web", "api", "db"};
  const std::vector<std::string> envs_ = {"", "dev", "dev.a", "dev.a.x", "dev.b", "qa", "dev..bad"};
  const std::vector<std::string> pod_ips_ = {"10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5",
                                             "10.1.0.6", "fd01::1", "fd01::2", "not-an-ip"};
  const std::vector<std::string> vips_ = {"10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00::1", "bad-vip"};

  std::string ns() { return any(ns_); }

  Event pod_event() {
    std::string name = "pod" + std::to_string(pick(10)), n = ns();
    if (chance(15)) return {"remove pod " + n + "/" + name, [k = k8s::object_key(n, name)](IncrementalModel& m) {
                              m.remove_pod(k);
                            }};
    k8s::Pod p;
    p.ns = n;
    p.name = name;
    p.uid = "uid-" + n + "-" + name;
    p.labels.insert_or_assign("app", any(apps_));
    if (chance(80)) p.labels.insert_or_assign("virtual-env", any(envs_));
    if (chance(20)) p.labels.insert_or_assign("tier", "x");
    p.pod_ips = {any(pod_ips_)};
    if (chance(15)) p.pod_ips.push_back(any(pod_ips_));
    p.ready = chance(80);
    p.terminating = chance(5);
    p.phase = k8s::PodPhase::Running;
    p.node_name = chance(50) ? "this" : "other";
    if (chance(60)) p.ports.push_back({"http", 8080 + pick(2), k8s::Protocol::TCP});
    if (chance(20)) p.ports.push_back({"dns", 53, k8s::Protocol::UDP});
    if (chance(20)) p.annotations.insert_or_assign(kThreadContextAnnotation, chance(50) ? "on" : "maybe");
    if (chance(45)) p.annotations.insert_or_assign("envsteer.io/cgroup", any(cg_.pool()));
    if (participation_ && chance(15)) p.labels.insert_or_assign("envsteer.io/enabled", "true");
    return {"upsert pod " + n + "/" + name, [p](IncrementalModel& m) { m.upsert(p); }};
  }

  Event service_event() {
    std::string name = "svc" + std::to_string(pick(6)), n = ns();
    if (chance(12)) return {"remove service " + n + "/" + name, [k = k8s::object_key(n, name)](IncrementalModel& m) {
                              m.remove_service(k);
                            }};
    k8s::Service s;
    s.ns = n;
    s.name = name;
    s.uid = "uid-" + n + "-" + name;
    s.type = "ClusterIP";
    s.cluster_ips = {any(vips_)};
    if (chance(15)) s.cluster_ips.push_back(any(vips_));
    s.ports.push_back({"http", 80, k8s::Protocol::TCP, chance(70) ? 8080 : 0, ""});
    if (chance(30)) s.ports.push_back({"named", 81, k8s::Protocol::TCP, 0, "http"});
    if (chance(20)) s.ports.push_back({"dns", 53, chance(80) ? k8s::Protocol::UDP : k8s::Protocol::SCTP, 0, ""});
    if (chance(5)) s.ports.push_back({"dup", 80, k8s::Protocol::TCP, 0, ""});
    if (chance(85)) {
      s.selector.insert_or_assign("app", any(apps_));
      if (chance(15)) s.selector.insert_or_assign("tier", "x");
      s.has_selector = true;
    }
    if (chance(20)) s.annotations.insert_or_assign(kConnPerRequestAnnotation, chance(70) ? "true" : "yes");
    return {"upsert service " + n + "/" + name, [s](IncrementalModel& m) { m.upsert(s); }};
  }

  Event slice_event() {
    std::string name = "slice" + std::to_string(pick(6)), n = ns();
    if (chance(15)) return {"remove slice " + n + "/" + name, [k = k8s::object_key(n, name)](IncrementalModel& m) {
                              m.remove_slice(k);
                            }};
    k8s::EndpointSlice sl;
    sl.ns = n;
    sl.name = name;
    sl.uid = "uid-" + n + "-" + name;
    sl.service_name = "svc" + std::to_string(pick(6));
    sl.address_type = chance(90) ? "IPv4" : "FQDN";
    sl.ports.push_back({"http", 8080, k8s::Protocol::TCP});
    if (chance(30)) sl.ports.push_back({"named", 9090, k8s::Protocol::TCP});
    if (chance(20)) sl.ports.push_back({"dns", 53, k8s::Protocol::UDP});
    int eps = pick(4);
    for (int i = 0; i < eps; i++) {
      k8s::Endpoint e;
      e.addresses = {any(pod_ips_)};
      e.ready = chance(80);
      if (chance(75))
        e.target = k8s::ObjectRef{chance(90) ? "Pod" : "Node", chance(80) ? "" : any(ns_), "pod" + std::to_string(pick(10)), ""};
      sl.endpoints.push_back(e);
    }
    return {"upsert slice " + n + "/" + name, [sl](IncrementalModel& m) { m.upsert(sl); }};
  }

  Event invalid_event() {
    static const std::vector<std::string> kinds = {"Pod", "Service", "EndpointSlice"};
    k8s::InvalidObject bad;
    bad.kind = any(kinds);
    std::string prefix = bad.kind == "Pod" ? "pod" : bad.kind == "Service" ? "svc" : "slice";
    bad.key = k8s::object_key(ns(), prefix + std::to_string(pick(bad.kind == "Pod" ? 10 : 6)));
    bad.uid = "uid-bad";
    bad.message = "spec: cannot decode";
    return {"invalid " + bad.kind + " " + bad.key, [bad](IncrementalModel& m) { m.set_invalid(bad); }};
  }

  Event namespace_event() {
    std::string n = ns();
    int r = pick(10);
    if (r == 0) return {"remove namespace " + n, [n](IncrementalModel& m) { m.remove_namespace(n); }};
    if (r == 1) {
      k8s::InvalidObject bad{"Namespace", n, "uid-bad", "metadata.labels: cannot decode"};
      return {"invalid namespace " + n, [bad](IncrementalModel& m) { m.set_invalid(bad); }};
    }
    k8s::Namespace o;
    o.name = n;
    o.uid = "uid-ns-" + n;
    if (chance(50)) o.labels.insert_or_assign("envsteer.io/enabled", chance(80) ? "true" : "false");
    if (chance(30)) o.labels.insert_or_assign("team", any(apps_));
    return {"upsert namespace " + n + " (" + std::to_string(o.labels.size()) + " labels)",
            [o](IncrementalModel& m) { m.upsert(o); }};
  }

  Event cgroup_event() {
    std::string path = any(std::vector<std::string>{"/cg/p3", "/cg/p4", "/cg/p3/x"});
    return {"cgroup " + path + " appears", [this, path](IncrementalModel& m) {
              cg_.present.insert(path);
              m.recheck_missing_cgroups();
            }};
  }

  Event discovered_event() {
    std::string key = k8s::object_key(ns(), "pod" + std::to_string(pick(10)));
    std::optional<std::string> path;
    int r = pick(4);
    if (r == 1) path = "";
    if (r >= 2) path = any(cg_.pool());
    return {"discovered " + key + " -> " + (path ? "\"" + *path + "\"" : "none"),
            [key, path](IncrementalModel& m) { m.set_discovered_cgroup(key, path); }};
  }

  std::mt19937 rng_;
  FakeCgroups& cg_;
  bool participation_ = false;
};

}  // namespace envsteer::events_test
