// SPDX-License-Identifier: Apache-2.0
#include "k8s/decode.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <regex>

namespace envsteer::k8s {

using nlohmann::json;

std::string object_key(const std::string& ns, const std::string& name) {
  return ns + "/" + name;
}

namespace {

std::string join_message(const std::string& object, const std::string& field,
                         const std::string& problem) {
  std::string msg;
  for (const std::string* part : {&object, &field, &problem}) {
    if (part->empty()) continue;
    if (!msg.empty()) msg += ": ";
    msg += *part;
  }
  return msg;
}

}  // namespace

DecodeError::DecodeError(const std::string& object, const std::string& field,
                         const std::string& problem)
    : std::runtime_error(join_message(object, field, problem)), object_(object), field_(field) {}

namespace {

// ---------------------------------------------------------------------------------------------
// Small helpers for reading JSON with error messages that name the object and the field.

// A value as shown in an error message ("got ..."), shortened.
std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

std::string quote(const std::string& s) { return json(s).dump(); }

std::string field(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string index(const std::string& path, size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

// The object being decoded ("Service default/web"); every failure goes through it.
struct Ctx {
  std::string object;

  [[noreturn]] void fail(const std::string& path, const std::string& problem) const {
    throw DecodeError(object, path, problem);
  }
};

// PARENT[KEY], or nullptr when absent or null. PARENT must be a JSON object.
const json* member(const json& parent, const char* key) {
  auto it = parent.find(key);
  if (it == parent.end() || it->is_null()) return nullptr;
  return &*it;
}

const json* get_object(const Ctx& ctx, const json& parent, const std::string& path,
                       const char* key) {
  const json* v = member(parent, key);
  if (v && !v->is_object()) ctx.fail(field(path, key), "must be a mapping, got " + show(*v));
  return v;
}

const json* get_array(const Ctx& ctx, const json& parent, const std::string& path,
                      const char* key) {
  const json* v = member(parent, key);
  if (v && !v->is_array()) ctx.fail(field(path, key), "must be a list, got " + show(*v));
  return v;
}

void require_object(const Ctx& ctx, const json& v, const std::string& path) {
  if (!v.is_object()) ctx.fail(path, "must be a mapping, got " + show(v));
}

std::string as_string(const Ctx& ctx, const json& v, const std::string& path) {
  if (!v.is_string()) ctx.fail(path, "must be a string, got " + show(v));
  return v.get<std::string>();
}

// PARENT[KEY] as a string; "" when absent.
std::string get_string(const Ctx& ctx, const json& parent, const std::string& path,
                       const char* key) {
  const json* v = member(parent, key);
  if (!v) return std::string();
  if (v->is_string()) return v->get<std::string>();  // the path is built only for the error
  return as_string(ctx, *v, field(path, key));
}

std::string require_string(const Ctx& ctx, const json& parent, const std::string& path,
                           const char* key) {
  if (!member(parent, key)) ctx.fail(field(path, key), "is required");
  std::string s = get_string(ctx, parent, path, key);
  if (s.empty()) ctx.fail(field(path, key), "must be a non-empty string");
  return s;
}

bool is_port_number(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() >= 1 && v.get<uint64_t>() <= 65535;
  if (v.is_number_integer()) return v.get<int64_t>() >= 1 && v.get<int64_t>() <= 65535;
  return false;
}

int32_t as_port(const Ctx& ctx, const json& v, const std::string& path) {
  if (!is_port_number(v)) ctx.fail(path, "must be an integer in 1..65535, got " + show(v));
  return static_cast<int32_t>(v.get<int64_t>());
}

int32_t require_port(const Ctx& ctx, const json& parent, const std::string& path,
                     const char* key) {
  const json* v = member(parent, key);
  if (!v) ctx.fail(field(path, key), "is required");
  if (is_port_number(*v)) return static_cast<int32_t>(v->get<int64_t>());
  return as_port(ctx, *v, field(path, key));  // throws
}

Protocol get_protocol(const Ctx& ctx, const json& parent, const std::string& path) {
  const json* v = member(parent, "protocol");
  if (!v) return Protocol::TCP;
  std::string p = v->is_string() ? v->get<std::string>() : as_string(ctx, *v, field(path, "protocol"));
  std::optional<Protocol> proto = protocol_of(p);
  if (!proto) ctx.fail(field(path, "protocol"), "must be one of TCP, UDP, SCTP, got " + quote(p));
  return *proto;
}

bool parses_as(int family, const std::string& s) {
  unsigned char buf[16];
  return inet_pton(family, s.c_str(), buf) == 1;
}

std::string as_ip(const Ctx& ctx, const json& v, const std::string& path) {
  std::string s = as_string(ctx, v, path);
  if (!parses_as(AF_INET, s) && !parses_as(AF_INET6, s))
    ctx.fail(path, "must be an IPv4 or IPv6 address, got " + quote(s));
  return s;
}

// A mapping of strings to strings (labels, annotations, selector).
Labels get_string_map(const Ctx& ctx, const json& parent, const std::string& path,
                      const char* key) {
  const json* m = get_object(ctx, parent, path, key);
  if (!m) return {};
  std::vector<Labels::value_type> entries;  // views into M
  entries.reserve(m->size());
  for (auto it = m->begin(); it != m->end(); ++it) {
    if (it->is_string()) {
      entries.emplace_back(it.key(), it->get_ref<const std::string&>());  // keys come sorted
      continue;
    }
    as_string(ctx, *it, field(path, key) + "[" + quote(it.key()) + "]");  // throws
  }
  return Labels(entries);
}

// ---------------------------------------------------------------------------------------------
// metadata

struct Meta {
  Ctx ctx;
  std::string ns, name, uid, resource_version;
  const json* metadata = nullptr;
};

Meta read_meta(const json& obj, const std::string& kind) {
  Meta m{Ctx{kind}};
  if (!obj.is_object()) m.ctx.fail("", "must be a mapping, got " + show(obj));
  m.metadata = get_object(m.ctx, obj, "", "metadata");
  if (!m.metadata) m.ctx.fail("metadata", "is required");
  const json& md = *m.metadata;

  m.name = require_string(m.ctx, md, "metadata", "name");
  m.ctx.object = kind + " " + m.name;
  m.ns = get_string(m.ctx, md, "metadata", "namespace");
  if (m.ns.empty()) m.ns = "default";
  m.ctx.object = kind + " " + object_key(m.ns, m.name);

  m.uid = get_string(m.ctx, md, "metadata", "uid");
  // resourceVersion is a string in the API; tolerate a hand-written number.
  if (const json* rv = member(md, "resourceVersion"); rv && rv->is_number_integer())
    m.resource_version = std::to_string(rv->get<int64_t>());
  else
    m.resource_version = get_string(m.ctx, md, "metadata", "resourceVersion");
  return m;
}

template <class T>
void copy_meta(const Meta& m, T& out) {
  out.ns = m.ns;
  out.name = m.name;
  out.uid = m.uid;
  out.resource_version = m.resource_version;
}

// ---------------------------------------------------------------------------------------------
// Service

bool all_digits(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

void read_target_port(const Ctx& ctx, const json& p, const std::string& path, ServicePort& out) {
  const json* v = member(p, "targetPort");
  std::string tp_path = field(path, "targetPort");
  if (!v) {
    out.target_port = out.port;
    return;
  }
  if (v->is_number()) {
    out.target_port = as_port(ctx, *v, tp_path);
    return;
  }
  if (!v->is_string() || v->get<std::string>().empty())
    ctx.fail(tp_path, "must be a port number or a port name, got " + show(*v));
  std::string s = v->get<std::string>();
  if (!all_digits(s)) {
    out.target_port_name = s;
    return;
  }
  if (s.size() > 5 || std::stoi(s) < 1 || std::stoi(s) > 65535)
    ctx.fail(tp_path, "must be an integer in 1..65535, got " + quote(s));
  out.target_port = std::stoi(s);
}

ServicePort read_service_port(const Ctx& ctx, const json& p, const std::string& path) {
  require_object(ctx, p, path);
  ServicePort out;
  out.name = get_string(ctx, p, path, "name");
  out.port = require_port(ctx, p, path, "port");
  out.protocol = get_protocol(ctx, p, path);
  read_target_port(ctx, p, path, out);
  out.app_protocol = get_string(ctx, p, path, "appProtocol");
  return out;
}

// spec.clusterIPs when present and non-empty, else spec.clusterIP; "None" and "" dropped.
std::vector<std::string> read_cluster_ips(const Ctx& ctx, const json& spec) {
  std::vector<std::string> out;
  auto add = [&](const json& v, const std::string& path) {
    if (v.is_string() && (v.get<std::string>().empty() || v.get<std::string>() == "None")) return;
    out.push_back(as_ip(ctx, v, path));
  };
  const json* ips = get_array(ctx, spec, "spec", "clusterIPs");
  if (ips && !ips->empty()) {
    for (size_t i = 0; i < ips->size(); ++i) add((*ips)[i], index("spec.clusterIPs", i));
  } else if (const json* ip = member(spec, "clusterIP")) {
    add(*ip, "spec.clusterIP");
  }
  return out;
}

}  // namespace

Service decode_service(const json& obj) {
  Meta m = read_meta(obj, "Service");
  const Ctx& ctx = m.ctx;
  Service s;
  copy_meta(m, s);
  s.type = "ClusterIP";
  s.annotations = get_string_map(m.ctx, *m.metadata, "metadata", "annotations");

  const json* spec = get_object(ctx, obj, "", "spec");
  if (!spec) return s;

  s.cluster_ips = read_cluster_ips(ctx, *spec);
  if (const json* ports = get_array(ctx, *spec, "spec", "ports")) {
    for (size_t i = 0; i < ports->size(); ++i)
      s.ports.push_back(read_service_port(ctx, (*ports)[i], index("spec.ports", i)));
  }
  s.selector = get_string_map(ctx, *spec, "spec", "selector");
  s.has_selector = !s.selector.empty();
  if (std::string type = get_string(ctx, *spec, "spec", "type"); !type.empty()) s.type = type;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Pod

namespace {

void read_container_ports(const Ctx& ctx, const json& spec, Pod& pod) {
  const json* containers = get_array(ctx, spec, "spec", "containers");
  if (!containers) return;
  std::vector<ContainerPort> all;
  for (size_t c = 0; c < containers->size(); ++c) {
    const json& container = (*containers)[c];
    std::string cpath = index("spec.containers", c);
    require_object(ctx, container, cpath);
    const json* ports = get_array(ctx, container, cpath, "ports");
    if (!ports) continue;
    for (size_t i = 0; i < ports->size(); ++i) {
      const json& p = (*ports)[i];
      std::string ppath = index(field(cpath, "ports"), i);
      require_object(ctx, p, ppath);
      ContainerPort cp;
      cp.name = get_string(ctx, p, ppath, "name");
      cp.port = require_port(ctx, p, ppath, "containerPort");
      cp.protocol = get_protocol(ctx, p, ppath);
      all.push_back(std::move(cp));
    }
  }
  std::vector<ContainerPortView> views(all.begin(), all.end());
  pod.ports = ContainerPorts(views);
}

// status.podIPs[].ip when present and non-empty, else status.podIP.
std::vector<std::string> read_pod_ips(const Ctx& ctx, const json& status) {
  std::vector<std::string> out;
  const json* ips = get_array(ctx, status, "status", "podIPs");
  if (ips && !ips->empty()) {
    for (size_t i = 0; i < ips->size(); ++i) {
      std::string path = index("status.podIPs", i);
      require_object(ctx, (*ips)[i], path);
      const json* ip = member((*ips)[i], "ip");
      if (!ip) ctx.fail(field(path, "ip"), "is required");
      out.push_back(as_ip(ctx, *ip, field(path, "ip")));
    }
  } else if (const json* ip = member(status, "podIP")) {
    if (!(ip->is_string() && ip->get<std::string>().empty()))
      out.push_back(as_ip(ctx, *ip, "status.podIP"));
  }
  return out;
}

bool read_ready_condition(const Ctx& ctx, const json& status) {
  const json* conditions = get_array(ctx, status, "status", "conditions");
  if (!conditions) return false;
  bool ready = false;
  for (size_t i = 0; i < conditions->size(); ++i) {
    const json& c = (*conditions)[i];
    if (!c.is_object()) require_object(ctx, c, index("status.conditions", i));  // throws
    const json* type = member(c, "type");
    if (type && type->is_string() && type->get_ref<const std::string&>() != "Ready") continue;
    std::string path = index("status.conditions", i);
    if (get_string(ctx, c, path, "type") == "Ready") ready = get_string(ctx, c, path, "status") == "True";
  }
  return ready;
}

}  // namespace

Pod decode_pod(const json& obj) {
  Meta m = read_meta(obj, "Pod");
  const Ctx& ctx = m.ctx;
  Pod pod;
  copy_meta(m, pod);
  pod.labels = get_string_map(ctx, *m.metadata, "metadata", "labels");
  pod.annotations = get_string_map(ctx, *m.metadata, "metadata", "annotations");
  pod.terminating = member(*m.metadata, "deletionTimestamp") != nullptr;

  if (const json* spec = get_object(ctx, obj, "", "spec")) {
    pod.node_name = get_string(ctx, *spec, "spec", "nodeName");
    read_container_ports(ctx, *spec, pod);
  }
  if (const json* status = get_object(ctx, obj, "", "status")) {
    pod.pod_ips = read_pod_ips(ctx, *status);
    pod.phase = pod_phase_of(get_string(ctx, *status, "status", "phase"));
    pod.qos_class = qos_class_of(get_string(ctx, *status, "status", "qosClass"));
    pod.ready = read_ready_condition(ctx, *status);
  }
  return pod;
}

// ---------------------------------------------------------------------------------------------
// Namespace

Namespace decode_namespace(const json& obj) {
  Ctx ctx{"Namespace"};
  if (!obj.is_object()) ctx.fail("", "must be a mapping, got " + show(obj));
  const json* md = get_object(ctx, obj, "", "metadata");
  if (!md) ctx.fail("metadata", "is required");
  Namespace out;
  out.name = require_string(ctx, *md, "metadata", "name");
  ctx.object = "Namespace " + out.name;
  out.uid = get_string(ctx, *md, "metadata", "uid");
  if (const json* rv = member(*md, "resourceVersion"); rv && rv->is_number_integer())
    out.resource_version = std::to_string(rv->get<int64_t>());
  else
    out.resource_version = get_string(ctx, *md, "metadata", "resourceVersion");
  out.labels = get_string_map(ctx, *md, "metadata", "labels");
  return out;
}

// ---------------------------------------------------------------------------------------------
// EndpointSlice

namespace {

std::string as_address(const Ctx& ctx, const json& v, const std::string& path,
                       const std::string& address_type) {
  std::string s = as_string(ctx, v, path);
  if (address_type == "IPv4" && !parses_as(AF_INET, s))
    ctx.fail(path, "must be an IPv4 address (addressType IPv4), got " + quote(s));
  if (address_type == "IPv6" && !parses_as(AF_INET6, s))
    ctx.fail(path, "must be an IPv6 address (addressType IPv6), got " + quote(s));
  if (s.empty()) ctx.fail(path, "must be a non-empty string");
  return s;
}

ObjectRef read_target_ref(const Ctx& ctx, const json& ref, const std::string& path) {
  ObjectRef out;
  out.kind = get_string(ctx, ref, path, "kind");
  out.ns = get_string(ctx, ref, path, "namespace");
  out.name = get_string(ctx, ref, path, "name");
  out.uid = get_string(ctx, ref, path, "uid");
  return out;
}

Endpoint read_endpoint(const Ctx& ctx, const json& e, const std::string& path,
                       const std::string& address_type) {
  require_object(ctx, e, path);
  Endpoint out;
  const json* addresses = get_array(ctx, e, path, "addresses");
  if (!addresses) ctx.fail(field(path, "addresses"), "is required");
  for (size_t i = 0; i < addresses->size(); ++i)
    out.addresses.push_back(
        as_address(ctx, (*addresses)[i], index(field(path, "addresses"), i), address_type));

  if (const json* cond = get_object(ctx, e, path, "conditions")) {
    if (const json* ready = member(*cond, "ready")) {
      std::string rpath = field(path, "conditions.ready");
      if (!ready->is_boolean()) ctx.fail(rpath, "must be true or false, got " + show(*ready));
      out.ready = ready->get<bool>();
    }
  }
  if (const json* ref = get_object(ctx, e, path, "targetRef"))
    out.target = read_target_ref(ctx, *ref, field(path, "targetRef"));
  out.node_name = get_string(ctx, e, path, "nodeName");
  return out;
}

EndpointPort read_endpoint_port(const Ctx& ctx, const json& p, const std::string& path) {
  require_object(ctx, p, path);
  EndpointPort out;
  out.name = get_string(ctx, p, path, "name");
  if (const json* port = member(p, "port")) out.port = as_port(ctx, *port, field(path, "port"));
  out.protocol = get_protocol(ctx, p, path);
  return out;
}

}  // namespace

EndpointSlice decode_endpoint_slice(const json& obj) {
  Meta m = read_meta(obj, "EndpointSlice");
  const Ctx& ctx = m.ctx;
  EndpointSlice slice;
  copy_meta(m, slice);
  Labels labels = get_string_map(ctx, *m.metadata, "metadata", "labels");
  if (auto it = labels.find("kubernetes.io/service-name"); it != labels.end())
    slice.service_name = it->second;

  slice.address_type = require_string(ctx, obj, "", "addressType");
  if (slice.address_type != "IPv4" && slice.address_type != "IPv6" &&
      slice.address_type != "FQDN")
    ctx.fail("addressType", "must be one of IPv4, IPv6, FQDN, got " + quote(slice.address_type));

  if (const json* endpoints = get_array(ctx, obj, "", "endpoints")) {
    for (size_t i = 0; i < endpoints->size(); ++i)
      slice.endpoints.push_back(
          read_endpoint(ctx, (*endpoints)[i], index("endpoints", i), slice.address_type));
  }
  if (const json* ports = get_array(ctx, obj, "", "ports")) {
    for (size_t i = 0; i < ports->size(); ++i)
      slice.ports.push_back(read_endpoint_port(ctx, (*ports)[i], index("ports", i)));
  }
  return slice;
}

// ---------------------------------------------------------------------------------------------
// reduce_*: the fields the decoders above read, nothing else. A value of another type than
// expected is kept as it is (the decoder reports it).

namespace {

// V with only KEYS when it is a mapping; anything else as it is.
json only(const json& v, std::initializer_list<const char*> keys) {
  if (!v.is_object()) return v;
  json out = json::object();
  for (const char* k : keys)
    if (auto it = v.find(k); it != v.end()) out[k] = *it;
  return out;
}

// only() of each item when V is a list; anything else as it is.
json each_only(const json& v, std::initializer_list<const char*> keys) {
  if (!v.is_array()) return v;
  json out = json::array();
  for (const json& item : v) out.push_back(only(item, keys));
  return out;
}

// OBJ's kind, apiVersion and the metadata fields the decoders read; nullopt: OBJ is no mapping.
std::optional<json> reduce_common(const json& obj) {
  if (!obj.is_object()) return std::nullopt;
  json out = only(obj, {"kind", "apiVersion"});
  if (auto md = obj.find("metadata"); md != obj.end())
    out["metadata"] = only(*md, {"name", "namespace", "uid", "resourceVersion", "labels", "annotations",
                                 "deletionTimestamp"});
  return out;
}

}  // namespace

json reduce_service(const json& obj) {
  auto out = reduce_common(obj);
  if (!out) return obj;
  if (auto spec = obj.find("spec"); spec != obj.end())
    (*out)["spec"] = only(*spec, {"clusterIP", "clusterIPs", "ports", "selector", "type"});
  return *out;
}

json reduce_pod(const json& obj) {
  auto out = reduce_common(obj);
  if (!out) return obj;
  if (auto spec = obj.find("spec"); spec != obj.end()) {
    json s = only(*spec, {"nodeName", "containers"});
    if (s.is_object() && s.contains("containers")) s["containers"] = each_only(s["containers"], {"ports"});
    (*out)["spec"] = std::move(s);
  }
  if (auto status = obj.find("status"); status != obj.end()) {
    json s = only(*status, {"podIPs", "podIP", "phase", "qosClass", "conditions"});
    if (s.is_object() && s.contains("conditions")) s["conditions"] = each_only(s["conditions"], {"type", "status"});
    (*out)["status"] = std::move(s);
  }
  return *out;
}

json reduce_namespace(const json& obj) {
  auto out = reduce_common(obj);
  return out ? *out : obj;
}

json reduce_endpoint_slice(const json& obj) {
  auto out = reduce_common(obj);
  if (!out) return obj;
  for (const char* k : {"addressType", "ports"})
    if (auto it = obj.find(k); it != obj.end()) (*out)[k] = *it;
  if (auto eps = obj.find("endpoints"); eps != obj.end()) {
    json e = each_only(*eps, {"addresses", "conditions", "targetRef", "nodeName"});
    if (e.is_array())
      for (json& ep : e) {
        if (!ep.is_object()) continue;
        if (ep.contains("conditions")) ep["conditions"] = only(ep["conditions"], {"ready"});
        if (ep.contains("targetRef")) ep["targetRef"] = only(ep["targetRef"], {"kind", "namespace", "name", "uid"});
      }
    (*out)["endpoints"] = std::move(e);
  }
  return *out;
}

// ---------------------------------------------------------------------------------------------
// add_object

namespace {

// "Kind namespace/name" as far as it can be read from OBJ, for error messages.
std::string describe(const json& obj) {
  std::string kind = "object";
  if (const json* k = member(obj, "kind"); k && k->is_string() && !k->get<std::string>().empty())
    kind = k->get<std::string>();
  const json* md = member(obj, "metadata");
  if (!md || !md->is_object()) return kind;
  const json* name = member(*md, "name");
  if (!name || !name->is_string()) return kind;
  std::string ns = "default";
  if (const json* n = member(*md, "namespace"); n && n->is_string() && !n->get<std::string>().empty())
    ns = n->get<std::string>();
  return kind + " " + object_key(ns, name->get<std::string>());
}

template <class T>
void insert_unique(std::map<std::string, T>& into, T obj, const std::string& kind) {
  std::string key = object_key(obj.ns, obj.name);
  if (!into.emplace(key, std::move(obj)).second)
    throw DecodeError(kind + " " + key, "metadata.name",
                      "duplicate: another " + kind + " with this namespace/name was already defined");
}

bool is_list_kind(const std::string& kind) {
  return kind.size() >= 4 && kind.compare(kind.size() - 4, 4, "List") == 0;
}

void add_list(const json& list, const std::string& api, const std::string& kind, ClusterState& out) {
  Ctx ctx{describe(list)};
  const json* items = get_array(ctx, list, "", "items");
  if (!items) return;
  // Typed lists from the API server (ServiceList, ...) omit apiVersion/kind on their items.
  std::string item_kind = kind == "List" ? "" : kind.substr(0, kind.size() - 4);
  for (const json& item : *items) {
    if (!item_kind.empty() && item.is_object() && !item.contains("kind")) {
      json copy = item;
      copy["kind"] = item_kind;
      if (!copy.contains("apiVersion")) copy["apiVersion"] = api;
      add_object(copy, out);
    } else {
      add_object(item, out);
    }
  }
}

}  // namespace

void add_object(const json& obj, ClusterState& out) {
  if (!obj.is_object()) throw DecodeError("", "", "an object must be a mapping, got " + show(obj));
  Ctx ctx{describe(obj)};
  if (!member(obj, "kind")) ctx.fail("kind", "is required");
  std::string kind = get_string(ctx, obj, "", "kind");
  std::string api = get_string(ctx, obj, "", "apiVersion");

  if (is_list_kind(kind)) return add_list(obj, api, kind, out);
  if (api.empty()) ctx.fail("apiVersion", "is required");

  if (api == "v1" && kind == "Service") return insert_unique(out.services, decode_service(obj), kind);
  if (api == "v1" && kind == "Pod") return insert_unique(out.pods, decode_pod(obj), kind);
  if (api == "discovery.k8s.io/v1" && kind == "EndpointSlice")
    return insert_unique(out.slices, decode_endpoint_slice(obj), kind);
  if (api == "v1" && kind == "Namespace") {
    Namespace n = decode_namespace(obj);
    std::string name = n.name;
    if (!out.namespaces.emplace(name, std::move(n)).second)
      throw DecodeError("Namespace " + name, "metadata.name",
                        "duplicate: another Namespace with this name was already defined");
    return;
  }

  ctx.fail("kind", "unknown kind " + quote(kind) + " with apiVersion " + quote(api) +
                       " (supported: v1 Service, v1 Pod, discovery.k8s.io/v1 EndpointSlice, "
                       "v1 Namespace, and lists of them)");
}

// ---------------------------------------------------------------------------------------------
// yaml_to_json

namespace {

constexpr int kMaxDepth = 100;

std::optional<json> parse_integer(const std::string& s) {
  static const std::regex dec("[-+]?[0-9]+"), hex("0x[0-9a-fA-F]+"), oct("0o[0-7]+");
  int base = 10;
  std::string digits = s;
  if (std::regex_match(s, hex)) {
    base = 16;
    digits = s.substr(2);
  } else if (std::regex_match(s, oct)) {
    base = 8;
    digits = s.substr(2);
  } else if (!std::regex_match(s, dec)) {
    return std::nullopt;
  }
  if (digits[0] == '+') digits.erase(0, 1);
  const char* end = digits.data() + digits.size();
  int64_t i = 0;
  if (auto r = std::from_chars(digits.data(), end, i, base); r.ec == std::errc() && r.ptr == end)
    return json(i);
  uint64_t u = 0;
  if (auto r = std::from_chars(digits.data(), end, u, base); r.ec == std::errc() && r.ptr == end)
    return json(u);
  return json(std::strtod(digits.c_str(), nullptr));  // too big for 64 bits
}

// A plain (unquoted, untagged) scalar, resolved like the YAML 1.2 core schema. Infinity and
// NaN have no JSON form and stay strings.
json resolve_plain(const std::string& s) {
  static const std::regex null_re("null|Null|NULL|~|"), true_re("true|True|TRUE"),
      false_re("false|False|FALSE"),
      float_re("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  if (std::regex_match(s, null_re)) return nullptr;
  if (std::regex_match(s, true_re)) return true;
  if (std::regex_match(s, false_re)) return false;
  if (auto i = parse_integer(s)) return *i;
  if (std::regex_match(s, float_re)) return std::strtod(s.c_str(), nullptr);
  return s;
}

json scalar_to_json(const YAML::Node& node) {
  const std::string& tag = node.Tag();
  if (tag == "!" || tag == "tag:yaml.org,2002:str") return node.Scalar();  // quoted or !!str
  return resolve_plain(node.Scalar());
}

json convert(const YAML::Node& node, int depth) {
  if (depth > kMaxDepth)
    throw YAML::ParserException(node.Mark(), "nesting deeper than " + std::to_string(kMaxDepth) +
                                                 " levels");
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return scalar_to_json(node);
    case YAML::NodeType::Sequence: {
      json arr = json::array();
      for (const YAML::Node& item : node) arr.push_back(convert(item, depth + 1));
      return arr;
    }
    case YAML::NodeType::Map: {
      json obj = json::object();
      for (const auto& kv : node) {
        if (!kv.first.IsScalar())
          throw YAML::ParserException(kv.first.Mark(), "mapping key must be a scalar");
        const std::string& key = kv.first.Scalar();
        if (obj.contains(key))
          throw YAML::ParserException(kv.first.Mark(), "duplicate mapping key " + quote(key));
        obj[key] = convert(kv.second, depth + 1);
      }
      return obj;
    }
    default:  // Null, Undefined
      return nullptr;
  }
}

}  // namespace

json yaml_to_json(const YAML::Node& node) { return convert(node, 0); }

namespace {

const nlohmann::json& member_object(const nlohmann::json& o, const char* k) {
  static const nlohmann::json empty = nlohmann::json::object();
  return o.is_object() && o.contains(k) && o[k].is_object() ? o[k] : empty;
}

std::string member_string(const nlohmann::json& o, const char* k) {
  return o.is_object() && o.contains(k) && o[k].is_string() ? o[k].get<std::string>() : "";
}

std::string key_of(const nlohmann::json& obj) {
  const auto& md = member_object(obj, "metadata");
  return object_key(member_string(md, "namespace"), member_string(md, "name"));
}

}  // namespace

VirtualEnvSettings decode_virtual_env(const nlohmann::json& obj) {
  VirtualEnvSettings v;
  v.name = key_of(obj);
  const auto& spec = member_object(obj, "spec");
  const auto& hdr = member_object(spec, "envHeader");
  const auto& lbl = member_object(spec, "envLabel");
  v.env_header = member_string(hdr, "name");
  if (hdr.contains("autoInject") && hdr["autoInject"].is_boolean()) v.auto_inject = hdr["autoInject"].get<bool>();
  v.env_label = member_string(lbl, "name");
  v.splitter = member_string(lbl, "splitter");
  v.default_subset = member_string(lbl, "defaultSubset");
  return v;
}

const nlohmann::json* pick_virtual_env(const nlohmann::json& items) {
  const nlohmann::json* best = nullptr;
  if (!items.is_array()) return nullptr;
  for (const auto& it : items)
    if (it.is_object() && (!best || key_of(it) < key_of(*best))) best = &it;
  return best;
}

}  // namespace envsteer::k8s
