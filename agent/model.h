// SPDX-License-Identifier: Apache-2.0
// The model: what the maps must say, computed from the cluster objects any
// source delivers. Pure: no kernel access, so it is unit-tested directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "k8s/objects.h"
#include "maps/maps.h"
#include "participation.h"

namespace envsteer {

// Why an object (or a part of it) is left out of the model: the values of
// Skipped::reason, and of the `reason` label of envsteer_objects_skipped.
namespace skip_reason {
inline constexpr const char* kInvalidEnv = "invalid_env";            // env label value is no env name
inline constexpr const char* kInvalidAddress = "invalid_address";    // a clusterIP or endpoint address
inline constexpr const char* kAddressInUse = "address_in_use";       // another Service has the address
inline constexpr const char* kInvalidCgroup = "invalid_cgroup";      // cgroup annotation outside the mount
inline constexpr const char* kCgroupOutsideRoot = "cgroup_outside_root";  // not strictly below --cgroup-root
inline constexpr const char* kCgroupShared = "cgroup_shared";        // claimed by another pod, or holds one
inline constexpr const char* kInvalidObject = "invalid_object";      // the source could not decode it
}  // namespace skip_reason

// An object, or the part of it `field` names, that the model leaves out;
// everything else is applied. A skipped Pod (field = its env label, or the
// whole object) is no backend and no local pod; a Pod skipped for its cgroup
// (field = the cgroup annotation, or metadata.uid for a discovered cgroup)
// stays a backend but its processes are not steered; a skipped Service has no
// address at all; a skipped endpoint address is just not a backend.
struct Skipped {
  std::string kind;     // "Pod", "Service", "EndpointSlice"
  std::string key;      // "ns/name"
  std::string uid;      // metadata.uid, when known (for Kubernetes Events)
  std::string field;    // "" = the whole object
  std::string reason;   // skip_reason::*
  std::string message;  // "<Kind> <ns/name>: <field>: what is wrong; what is left out"
  bool operator==(const Skipped&) const = default;
};

// A local pod whose cgroup does not exist (yet): not an error of the object
// (the kubelet creates the cgroup after the pod), listed until it appears.
struct MissingCgroup {
  std::string pod;     // "ns/name"
  std::string cgroup;  // as given (annotation), or "" when discovery has not found it
  bool operator==(const MissingCgroup&) const = default;
};

// Environment names; "" is the unnamed base (no default-env configured).
using EnvName = std::string;

struct BackendRef {
  es_backend backend{};
  std::string pod;  // "ns/name", "" when the endpoint names no known pod
  // Identity (and order) is the address: one slot per backend address, whatever its
  // flags (maps::same_backend). Equality is the whole entry, flags too: what changed.
  bool operator<(const BackendRef& o) const {
    return std::memcmp(&backend, &o.backend, offsetof(es_backend, flags)) < 0;
  }
  bool operator==(const BackendRef& o) const { return maps::bytes_equal(backend, o.backend); }
};

struct FrontendSpec {
  es_frontend_key key{};
  std::string service;    // "ns/name"
  std::string port_name;  // service port name
  uint32_t flags = 0;     // ES_FE_F_*
  bool operator==(const FrontendSpec& o) const {
    return maps::bytes_equal(key, o.key) && service == o.service && port_name == o.port_name && flags == o.flags;
  }
};

// Opt-ins, as annotations. On a Pod: its threads serve one request each
// (thread-per-request servers), so a thread's request environment is known
// while it serves that request. On a Service: each connection to it carries
// one request, so connect() may take the calling thread's environment.
inline constexpr const char* kThreadContextAnnotation = "envsteer.io/thread-context";
inline constexpr const char* kConnPerRequestAnnotation = "envsteer.io/connection-per-request";

struct SetName {
  es_frontend_key frontend{};
  EnvName env;
  bool operator<(const SetName& o) const {
    int c = std::memcmp(&frontend, &o.frontend, sizeof(frontend));
    return c != 0 ? c < 0 : env < o.env;
  }
  bool operator==(const SetName& o) const { return maps::bytes_equal(frontend, o.frontend) && env == o.env; }
};

struct LocalPod {
  std::string pod;  // "ns/name"
  EnvName env;
  std::string cgroup;  // absolute directory
  int level = 0;
  bool labelled = false;    // carries the env label (auto-inject inserts its env)
  bool thread_ctx = false;  // annotation envsteer.io/thread-context: "on"
  // ES_POD_F_* as the programs read them
  uint32_t flags() const {
    return (labelled ? ES_POD_F_LABELLED : 0u) | (thread_ctx ? ES_POD_F_THREAD_CTX : 0u);
  }
  bool operator==(const LocalPod&) const = default;
};

// Where a pod's cgroup is, as the host sees it.
struct CgroupInfo {
  uint64_t id = 0;
  int level = 0;
  std::string path;
  bool under_root = true;  // strictly below the steered root (the root itself is no pod's)
};

// Where local pods' cgroups come from.
enum class CgroupSource {
  Annotation,  // the pod's cgroup annotation (manifests)
  Discovered,  // only ModelOptions::discovered_cgroups (--kubernetes); annotations are ignored
};

struct ModelOptions {
  std::string env_label = "virtual-env";
  char splitter = '.';
  EnvName default_env;  // "" = base
  std::string cgroup_annotation = "envsteer.io/cgroup";
  CgroupSource cgroup_source = CgroupSource::Annotation;
  // With CgroupSource::Discovered: this node's pods ("ns/name") -> the cgroup
  // the agent found for them under the kubelet's pod cgroups ("" = not yet).
  std::map<std::string, std::string> discovered_cgroups;
  // Services without EndpointSlices take their pods from the selector. On for
  // manifests; off for the Kubernetes API, where only labelled pods are
  // watched and the EndpointSlices are the truth (as for kube-proxy).
  bool selector_fallback = true;
  // Which local pods take part (participation.h): the others get no es_pods
  // entry (and the agent attaches no program to their cgroups).
  Participation participation;
  // Resolves an annotation value to the cgroup; nullopt when absent on this
  // host; throws std::invalid_argument for values that can never be valid.
  // Discovered cgroups (absolute paths) go through it too.
  std::function<std::optional<CgroupInfo>(const std::string&)> resolve_cgroup;
};

// A pod that is a backend: its env, and whether it carries the env label
// (else the default env is its env).
struct PodEnv {
  EnvName env;
  bool labelled = false;
  bool operator==(const PodEnv&) const = default;
};

struct DesiredState {
  std::map<es_frontend_key, FrontendSpec, maps::BytesLess<es_frontend_key>> frontends;
  std::map<SetName, std::vector<BackendRef>> sets;  // non-empty, sorted, ready only
  std::set<EnvName> envs;                          // named envs incl. ancestors
  std::map<uint64_t, LocalPod> pods;               // by cgroup id
  EnvName default_env;
  // every pod that is a backend: "ns/name" -> env, labelled (one map: a second
  // of the labelled ones' names was ~8 MiB at 100 000 pods, issue 18)
  std::map<std::string, PodEnv> pod_envs;
  std::vector<std::string> warnings;               // not errors: logged
  std::vector<Skipped> skipped;                    // sorted by (kind, key, field); no duplicates
  std::vector<MissingCgroup> missing_cgroups;      // sorted by pod
};

// Pure. Bad objects never fail the whole model: each one is left out and
// listed in DesiredState::skipped, and everything else is built.
DesiredState build_model(const k8s::ClusterState& cluster, const ModelOptions& opt);

// What may have changed in a DesiredState since the last take_delta(): the
// reconciler writes only these keys (and compares the few local pods whole).
struct ModelDelta {
  bool all = false;  // anything may have changed: a full apply
  std::set<es_frontend_key, maps::BytesLess<es_frontend_key>> frontends;
  std::set<SetName> sets;
  std::set<EnvName> envs;  // added or removed
  bool pods = false;       // local pods or the config (pod levels)
  bool empty() const { return !all && frontends.empty() && sets.empty() && envs.empty() && !pods; }
  void merge(ModelDelta&& o);
};

// "" when a and b say the same (every field of DesiredState), else the first
// difference, for the periodic consistency check and the tests.
std::string model_difference(const DesiredState& a, const DesiredState& b);

// One object as a source now has it: decoded, undecodable, or deleted.
struct ObjectChange {
  enum class Kind { Service, Pod, EndpointSlice, Namespace };
  Kind kind = Kind::Pod;
  std::string key;  // "ns/name" ("name" for a Namespace)
  std::variant<std::monostate, k8s::Service, k8s::Pod, k8s::EndpointSlice, k8s::InvalidObject, k8s::Namespace>
      object;  // monostate: deleted
};

// The changes that turn cluster `from` into `to` (every object that differs).
std::vector<ObjectChange> cluster_changes(const k8s::ClusterState& from, k8s::ClusterState&& to);

// The model kept up to date object by object. It holds the one copy of the
// cluster's objects the agent keeps, with indexes from each object to what
// depends on it, so that an event recomputes only the Services it touches
// (their frontends and backend sets), the Pod's own entries, and the
// environments whose use starts or ends. It applies the same rules as
// build_model() (shared code): after any sequence of events state() equals
// build_model(cluster(), options) — tested, and checked by the agent now and
// then.
class IncrementalModel {
 public:
  explicit IncrementalModel(ModelOptions opt);
  ~IncrementalModel();
  IncrementalModel(const IncrementalModel&) = delete;
  IncrementalModel& operator=(const IncrementalModel&) = delete;

  // Replaces everything (start-up, a re-list, a consistency repair); the next
  // delta is `all`.
  void reset(k8s::ClusterState cluster);

  // One object added, changed or deleted. An upsert of an equal object is a
  // no-op. An object the source could not decode is set_invalid (it replaces
  // a decoded one of the same kind and key, and the other way round).
  void upsert(k8s::Service s);
  void upsert(k8s::Pod p);
  void upsert(k8s::EndpointSlice s);
  // A Namespace's labels decide participation of its pods (participation.h).
  void upsert(k8s::Namespace n);
  void remove_service(const std::string& key);
  void remove_pod(const std::string& key);
  void remove_slice(const std::string& key);
  void remove_namespace(const std::string& name);
  void set_invalid(k8s::InvalidObject o);
  // Any of the above; returns the change that undoes it (nullopt: nothing changed).
  std::optional<ObjectChange> apply(ObjectChange c);

  // --kubernetes: the cgroup found for this node's pod ("" = not yet);
  // nullopt: not this node's pod.
  void set_discovered_cgroup(const std::string& pod, const std::optional<std::string>& path);
  // Resolves again the cgroups of pods whose cgroup was missing (they may
  // have appeared since).
  void recheck_missing_cgroups();

  const DesiredState& state();
  const k8s::ClusterState& cluster() const;
  const ModelOptions& options() const;
  ModelDelta take_delta();

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

}  // namespace envsteer
