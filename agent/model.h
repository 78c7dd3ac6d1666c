// SPDX-License-Identifier: Apache-2.0
// The model: what the maps must say, computed from the cluster objects any
// source delivers. Pure: no kernel access, so it is unit-tested directly.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "k8s/objects.h"
#include "maps/maps.h"

namespace envsteer {

// Bad input: names the object and the field.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Environment names; "" is the unnamed base (no default-env configured).
using EnvName = std::string;

struct BackendRef {
  es_backend backend{};
  std::string pod;  // "ns/name", "" when the endpoint names no known pod
  // Identity is the address: one slot per backend address.
  bool operator<(const BackendRef& o) const {
    return std::memcmp(&backend, &o.backend, sizeof(backend)) < 0;
  }
  bool operator==(const BackendRef& o) const { return maps::bytes_equal(backend, o.backend); }
};

struct FrontendSpec {
  es_frontend_key key{};
  std::string service;    // "ns/name"
  std::string port_name;  // service port name
  uint32_t flags = 0;     // ES_FE_F_*
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
};

// Where a pod's cgroup is, as the host sees it.
struct CgroupInfo {
  uint64_t id = 0;
  int level = 0;
  std::string path;
  bool under_root = true;  // inside the steered subtree
};

struct ModelOptions {
  std::string env_label = "virtual-env";
  char splitter = '.';
  EnvName default_env;  // "" = base
  std::string cgroup_annotation = "envsteer.io/cgroup";
  // Services without EndpointSlices take their pods from the selector. On for
  // manifests; off for the Kubernetes API, where only labelled pods are
  // watched and the EndpointSlices are the truth (as for kube-proxy).
  bool selector_fallback = true;
  // Resolves an annotation value to the cgroup; nullopt when absent on this
  // host; throws std::invalid_argument for values that can never be valid.
  std::function<std::optional<CgroupInfo>(const std::string&)> resolve_cgroup;
};

struct DesiredState {
  std::map<es_frontend_key, FrontendSpec, maps::BytesLess<es_frontend_key>> frontends;
  std::map<SetName, std::vector<BackendRef>> sets;  // non-empty, sorted, ready only
  std::set<EnvName> envs;                          // named envs incl. ancestors
  std::map<uint64_t, LocalPod> pods;               // by cgroup id
  EnvName default_env;
  std::map<std::string, EnvName> pod_envs;         // every pod: "ns/name" -> env
  std::set<std::string> labelled_pods;             // pods that carry the env label
  std::vector<std::string> warnings;               // not errors: logged
};

// Throws ModelError for bad input (nothing of it is to be applied).
DesiredState build_model(const k8s::ClusterState& cluster, const ModelOptions& opt);

}  // namespace envsteer
