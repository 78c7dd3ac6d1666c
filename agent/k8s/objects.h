// SPDX-License-Identifier: Apache-2.0
// The Kubernetes objects envsteer reads, reduced to the fields it uses.
// Filled by the decoder (agent/k8s/decode.h) from manifests or API JSON.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace envsteer::k8s {

// Labels, annotations, a selector: string -> string, sorted by key, with the
// part of std::map's interface the agent uses. One vector rather than a node
// per entry: objects hold a handful of them, and 100 000 pods' labels as map
// nodes were a tenth of the agent's memory (issue 18).
class Labels {
 public:
  using value_type = std::pair<std::string, std::string>;
  using iterator = std::vector<value_type>::iterator;
  using const_iterator = std::vector<value_type>::const_iterator;

  Labels() = default;
  Labels(std::initializer_list<value_type> init) {
    for (const auto& e : init) emplace(e.first, e.second);
  }

  const_iterator begin() const { return v_.begin(); }
  const_iterator end() const { return v_.end(); }
  iterator begin() { return v_.begin(); }
  iterator end() { return v_.end(); }
  size_t size() const { return v_.size(); }
  bool empty() const { return v_.empty(); }
  void clear() { v_.clear(); }

  const_iterator find(std::string_view k) const {
    auto it = lower(k);
    return it != v_.end() && it->first == k ? it : v_.end();
  }
  iterator find(std::string_view k) {
    auto it = lower(k);
    return it != v_.end() && it->first == k ? it : v_.end();
  }
  size_t count(std::string_view k) const { return find(k) != end() ? 1 : 0; }
  bool contains(std::string_view k) const { return find(k) != end(); }
  const std::string& at(std::string_view k) const {
    auto it = find(k);
    if (it == end()) throw std::out_of_range("Labels::at: no key " + std::string(k));
    return it->second;
  }
  std::string& operator[](std::string_view k) { return emplace(std::string(k), std::string()).first->second; }
  // Like std::map: an existing key keeps its value.
  std::pair<iterator, bool> emplace(std::string k, std::string v) {
    if (v_.empty() || v_.back().first < k) {  // decoders add keys in order
      v_.emplace_back(std::move(k), std::move(v));
      return {v_.end() - 1, true};
    }
    auto it = lower(k);
    if (it != v_.end() && it->first == k) return {it, false};
    return {v_.emplace(it, std::move(k), std::move(v)), true};
  }
  iterator emplace_hint(const_iterator, std::string k, std::string v) {
    return emplace(std::move(k), std::move(v)).first;
  }
  size_t erase(std::string_view k) {
    auto it = find(k);
    if (it == end()) return 0;
    v_.erase(it);
    return 1;
  }
  void reserve(size_t n) { v_.reserve(n); }
  bool operator==(const Labels&) const = default;

 private:
  const_iterator lower(std::string_view k) const {
    return std::lower_bound(v_.begin(), v_.end(), k, [](const value_type& e, std::string_view x) { return e.first < x; });
  }
  iterator lower(std::string_view k) {
    return std::lower_bound(v_.begin(), v_.end(), k, [](const value_type& e, std::string_view x) { return e.first < x; });
  }
  std::vector<value_type> v_;
};

// "namespace/name"
std::string object_key(const std::string& ns, const std::string& name);

// spec.ports[].protocol and the like: one byte, not a string (100 000 pods'
// container ports were 72 B each with two strings, issue 18). The decoders
// accept exactly these three names; absent means TCP.
enum class Protocol : uint8_t { TCP, UDP, SCTP };
// "TCP" -> TCP, ...; nullopt for anything else (exact names, as the API writes them).
inline std::optional<Protocol> protocol_of(std::string_view s) {
  if (s == "TCP") return Protocol::TCP;
  if (s == "UDP") return Protocol::UDP;
  if (s == "SCTP") return Protocol::SCTP;
  return std::nullopt;
}
inline const char* protocol_name(Protocol p) {
  switch (p) {
    case Protocol::TCP: return "TCP";
    case Protocol::UDP: return "UDP";
    case Protocol::SCTP: return "SCTP";
  }
  return "?";
}

struct ServicePort {
  std::string name;        // may be empty for a single-port service
  int32_t port = 0;        // 1..65535
  Protocol protocol = Protocol::TCP;
  int32_t target_port = 0; // numeric targetPort; 0 when named or absent
  std::string target_port_name;  // named targetPort, resolved per pod
  std::string app_protocol;      // spec.ports[].appProtocol ("" when absent)
  bool operator==(const ServicePort&) const = default;
};

struct Service {
  std::string ns, name, uid, resource_version;
  std::vector<std::string> cluster_ips;  // spec.clusterIPs, else [spec.clusterIP]; "None" dropped
  std::vector<ServicePort> ports;
  Labels selector;
  Labels annotations;                    // metadata.annotations (envsteer.io/...)
  bool has_selector = false;             // spec.selector present and non-empty
  std::string type;                      // ClusterIP, NodePort, ... (informational)
  bool operator==(const Service&) const = default;
};

// status.phase as the agent tells it apart (a pod that Succeeded or Failed
// never has its cgroup again); a value none of these is Other. One byte, not a
// string: 100 000 pods' phase and QoS class strings were 6 MiB (issue 18).
enum class PodPhase : uint8_t { None, Pending, Running, Succeeded, Failed, Unknown, Other };
inline PodPhase pod_phase_of(std::string_view s) {  // "" = None; exact names, as the API writes them
  if (s.empty()) return PodPhase::None;
  if (s == "Pending") return PodPhase::Pending;
  if (s == "Running") return PodPhase::Running;
  if (s == "Succeeded") return PodPhase::Succeeded;
  if (s == "Failed") return PodPhase::Failed;
  if (s == "Unknown") return PodPhase::Unknown;
  return PodPhase::Other;
}

// status.qosClass, any case (it names the kubelet's slice of the pod's
// cgroup); None when absent, Other when no known class: both mean "look in
// every slice" (podcgroup.h).
enum class QosClass : uint8_t { None, Guaranteed, Burstable, BestEffort, Other };
inline QosClass qos_class_of(std::string_view s) {
  if (s.empty()) return QosClass::None;
  auto is = [&](std::string_view lower) {
    return s.size() == lower.size() && std::equal(s.begin(), s.end(), lower.begin(), [](char a, char b) {
             return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
           });
  };
  if (is("guaranteed")) return QosClass::Guaranteed;
  if (is("burstable")) return QosClass::Burstable;
  if (is("besteffort")) return QosClass::BestEffort;
  return QosClass::Other;
}
// "Guaranteed", "Burstable", "BestEffort"; "" for None and Other.
inline const char* qos_class_name(QosClass q) {
  switch (q) {
    case QosClass::Guaranteed: return "Guaranteed";
    case QosClass::Burstable: return "Burstable";
    case QosClass::BestEffort: return "BestEffort";
    default: return "";
  }
}

struct ContainerPort {
  std::string name;
  int32_t port = 0;
  Protocol protocol = Protocol::TCP;
  bool operator==(const ContainerPort&) const = default;
};

struct Pod {
  std::string ns, name, uid, resource_version;
  Labels labels;
  Labels annotations;
  std::vector<std::string> pod_ips;  // status.podIPs, else [status.podIP]
  bool ready = false;                // status.conditions[type=Ready].status == "True"
  bool terminating = false;          // metadata.deletionTimestamp set
  PodPhase phase = PodPhase::None;   // status.phase (pod_phase_of)
  QosClass qos_class = QosClass::None;  // status.qosClass (qos_class_of)
  std::string node_name;
  std::vector<ContainerPort> ports;  // spec.containers[].ports[]
  bool operator==(const Pod&) const = default;
};

struct EndpointPort {
  std::string name;
  int32_t port = 0;
  Protocol protocol = Protocol::TCP;
  bool operator==(const EndpointPort&) const = default;
};

struct ObjectRef {
  std::string kind, ns, name, uid;
  bool operator==(const ObjectRef&) const = default;
};

struct Endpoint {
  std::vector<std::string> addresses;
  bool ready = true;  // conditions.ready; absent means ready (API semantics)
  std::optional<ObjectRef> target;  // targetRef
  std::string node_name;
  bool operator==(const Endpoint&) const = default;
};

struct EndpointSlice {
  std::string ns, name, uid, resource_version;
  std::string service_name;  // label kubernetes.io/service-name
  std::string address_type;  // IPv4, IPv6, FQDN
  std::vector<Endpoint> endpoints;
  std::vector<EndpointPort> ports;
  bool operator==(const EndpointSlice&) const = default;
};

// A Namespace (cluster-scoped): only its labels matter (participation by
// namespace label, participation.h). Keyed by its name.
struct Namespace {
  std::string name, uid, resource_version;
  Labels labels;
  bool operator==(const Namespace&) const = default;
};

// An object a source has but could not decode (the Kubernetes source skips it
// and the model reports it; the manifest source rejects the whole file).
struct InvalidObject {
  std::string kind;  // "Service", "Pod", "EndpointSlice", "Namespace"
  std::string key;   // "namespace/name" ("name" for a Namespace)
  std::string uid;
  std::string message;
  bool operator==(const InvalidObject&) const = default;
};

// Everything a source knows, keyed by "namespace/name".
struct ClusterState {
  std::map<std::string, Service> services;
  std::map<std::string, Pod> pods;
  std::map<std::string, EndpointSlice> slices;
  std::map<std::string, Namespace> namespaces;  // by name
  std::vector<InvalidObject> invalid;  // sorted by (kind, key)

  size_t size() const { return services.size() + pods.size() + slices.size() + namespaces.size(); }
};

}  // namespace envsteer::k8s
