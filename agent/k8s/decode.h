// SPDX-License-Identifier: Apache-2.0
// Decoding of Kubernetes objects (as `kubectl get -o yaml/json` prints them, or as the API
// server returns them) into the reduced structs of objects.h, with validation.
//
// Accepted: v1 Service, v1 Pod, discovery.k8s.io/v1 EndpointSlice, v1 Namespace, and lists of them
// (`kind: List`, or typed lists such as `ServiceList`, whose items may omit apiVersion/kind).
// Unknown extra fields are ignored. Every error names the object and the JSON field path:
//   Service default/web: spec.ports[1].port: must be an integer in 1..65535, got "abc"
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "k8s/objects.h"

namespace envsteer::k8s {

class DecodeError : public std::runtime_error {
 public:
  // object: "Kind namespace/name" (or "Kind" when the name is unknown, or "" when not even
  // the kind is); field: JSON path such as "spec.ports[1].port" (may be empty).
  DecodeError(const std::string& object, const std::string& field, const std::string& problem);

  const std::string& object() const { return object_; }
  const std::string& field() const { return field_; }

 private:
  std::string object_, field_;
};

Service decode_service(const nlohmann::json& obj);
Pod decode_pod(const nlohmann::json& obj);
// EndpointSlice ports[].port may be absent (API meaning: "all ports"); it is then 0.
EndpointSlice decode_endpoint_slice(const nlohmann::json& obj);
// v1 Namespace: name, uid, resourceVersion, labels (metadata.namespace is ignored).
Namespace decode_namespace(const nlohmann::json& obj);

// OBJ (a Service, Pod or EndpointSlice as the API server sends it) with only
// the fields the decoder reads: decode_*(reduce_*(o)) is decode_*(o), errors
// included. The Kubernetes source keeps its objects in this form (a real Pod
// is mostly managedFields, volumes, tolerations and container statuses).
nlohmann::json reduce_service(const nlohmann::json& obj);
nlohmann::json reduce_pod(const nlohmann::json& obj);
nlohmann::json reduce_endpoint_slice(const nlohmann::json& obj);
nlohmann::json reduce_namespace(const nlohmann::json& obj);

// The prior art's VirtualEnvironment resource (env.alibaba.com/v1alpha2): the settings
// envsteer takes from it, where no flag says otherwise. Lenient: absent or mistyped
// fields are empty. When a cluster holds several, the agent follows the first by
// namespace/name (pick_virtual_env), at start-up and while watching alike.
struct VirtualEnvSettings {
  std::string name;  // "ns/name" of the object they came from
  std::string env_header, env_label, splitter, default_subset;
  std::optional<bool> auto_inject;
  bool operator==(const VirtualEnvSettings&) const = default;
};
VirtualEnvSettings decode_virtual_env(const nlohmann::json& obj);
// The one of a list's items to follow (nullptr when there is none).
const nlohmann::json* pick_virtual_env(const nlohmann::json& items);

// Decodes OBJ (one object or a list of them) into OUT. Unknown kinds and a second object of
// the same kind and namespace/name throw DecodeError. On error OUT may hold the objects
// decoded before it; callers that need all-or-nothing decode into a scratch state.
void add_object(const nlohmann::json& obj, ClusterState& out);

// Faithful YAML -> JSON. Quoted (and block) scalars stay strings; plain scalars are resolved
// like YAML 1.2 core schema: null/~/empty -> null, true/false -> bool, integers and floats ->
// numbers, anything else -> string. Explicit tags (!!str, !!int, ...) are honoured.
// Structural problems (duplicate mapping key, non-scalar key, nesting too deep) throw
// YAML::ParserException carrying the node's position.
nlohmann::json yaml_to_json(const YAML::Node& node);

}  // namespace envsteer::k8s
