// SPDX-License-Identifier: Apache-2.0
// The Kubernetes objects envsteer reads, reduced to the fields it uses.
// Filled by the decoder (agent/k8s/decode.h) from manifests or API JSON.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace envsteer::k8s {

using Labels = std::map<std::string, std::string>;

// "namespace/name"
std::string object_key(const std::string& ns, const std::string& name);

struct ServicePort {
  std::string name;        // may be empty for a single-port service
  int32_t port = 0;        // 1..65535
  std::string protocol;    // "TCP", "UDP" or "SCTP" (default "TCP")
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

struct ContainerPort {
  std::string name;
  int32_t port = 0;
  std::string protocol;  // default "TCP"
  bool operator==(const ContainerPort&) const = default;
};

struct Pod {
  std::string ns, name, uid, resource_version;
  Labels labels;
  Labels annotations;
  std::vector<std::string> pod_ips;  // status.podIPs, else [status.podIP]
  bool ready = false;                // status.conditions[type=Ready].status == "True"
  bool terminating = false;          // metadata.deletionTimestamp set
  std::string phase;
  std::string qos_class;             // status.qosClass: Guaranteed, Burstable, BestEffort
  std::string node_name;
  std::vector<ContainerPort> ports;  // spec.containers[].ports[]
  bool operator==(const Pod&) const = default;
};

struct EndpointPort {
  std::string name;
  int32_t port = 0;
  std::string protocol;  // default "TCP"
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
