// SPDX-License-Identifier: Apache-2.0
// The rules below mirror decode.cpp's decode_pod, decode_service and their helpers (member(), get_string(),
// require_port(), get_protocol(), read_pod_ips(), read_ready_condition(), ...): a field
// absent or null is "not there"; a field the decoder reads and would reject, or a value of
// another type than it accepts, declines. Every object the decoder reads from is walked
// whole, so a key it reads given twice is seen (and declines).
#include "k8s/fastdecode.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <simdjson.h>

namespace envsteer::k8s {

namespace {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

// Thrown inside, caught by fast_decode_pod: the nlohmann path decodes this item.
struct Decline {};

[[noreturn]] void decline() { throw Decline{}; }

// ---------------------------------------------------------------------------------------------
// What the item says, as views into the parser's document (valid until its next parse).

using PortView = ContainerPortView;

struct PodView {
  std::string_view name, ns, uid, resource_version;
  std::string resource_version_number;  // resourceVersion given as an integer, printed
  bool rv_is_number = false;
  std::vector<std::pair<std::string_view, std::string_view>> labels, annotations;  // sorted by key
  bool terminating = false;
  std::string_view node_name;
  std::vector<PortView> ports;
  std::vector<std::string_view> pod_ips;
  std::string_view phase, qos_class;
  bool ready = false;
};

// The one place a Pod is filled (k8s::Pod's layout may change: adapt here).
Pod make_pod(const PodView& v) {
  Pod pod;
  pod.ns = v.ns.empty() ? std::string("default") : std::string(v.ns);
  pod.name = std::string(v.name);
  pod.uid = std::string(v.uid);
  pod.resource_version = v.rv_is_number ? v.resource_version_number : std::string(v.resource_version);
  pod.labels = Labels(v.labels);
  pod.annotations = Labels(v.annotations);
  pod.terminating = v.terminating;
  pod.node_name = std::string(v.node_name);
  pod.ports = ContainerPorts(v.ports);
  pod.pod_ips.reserve(v.pod_ips.size());
  for (std::string_view ip : v.pod_ips) pod.pod_ips.emplace_back(ip);
  pod.phase = pod_phase_of(v.phase);
  pod.qos_class = qos_class_of(v.qos_class);
  pod.ready = v.ready;
  return pod;
}

struct ServicePortView {
  std::string_view name;
  int32_t port = 0;
  Protocol protocol = Protocol::TCP;
  int32_t target_port = 0;
  std::string_view target_port_name;
  std::string_view app_protocol;
};

struct ServiceView {
  std::string_view name, ns, uid, resource_version;
  std::string resource_version_number;
  bool rv_is_number = false;
  std::vector<std::pair<std::string_view, std::string_view>> annotations, selector;  // sorted by key
  std::vector<std::string_view> cluster_ips;
  std::vector<ServicePortView> ports;
  std::string_view type;  // "" when absent: ClusterIP
};

// The one place a Service is filled.
Service make_service(const ServiceView& v) {
  Service s;
  s.ns = v.ns.empty() ? std::string("default") : std::string(v.ns);
  s.name = std::string(v.name);
  s.uid = std::string(v.uid);
  s.resource_version = v.rv_is_number ? v.resource_version_number : std::string(v.resource_version);
  s.type = v.type.empty() ? std::string("ClusterIP") : std::string(v.type);
  s.annotations = Labels(v.annotations);
  s.cluster_ips.reserve(v.cluster_ips.size());
  for (std::string_view ip : v.cluster_ips) s.cluster_ips.emplace_back(ip);
  s.ports.reserve(v.ports.size());
  for (const ServicePortView& p : v.ports)
    s.ports.push_back(ServicePort{std::string(p.name), p.port, p.protocol, p.target_port,
                                  std::string(p.target_port_name), std::string(p.app_protocol)});
  s.selector = Labels(v.selector);
  s.has_selector = !s.selector.empty();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Reading values the way decode.cpp does.

bool is_null(const element& e) { return e.type() == element_type::NULL_VALUE; }

std::string_view str(const element& e) { return e.get_string().value_unsafe(); }

// get_string(): absent or null -> "", a string -> it, anything else declines.
std::string_view opt_string(const element* e) {
  if (!e || is_null(*e)) return {};
  if (e->type() != element_type::STRING) decline();
  return str(*e);
}

// get_object()/get_array(): absent or null -> nullopt, else it must be one.
std::optional<object> opt_object(const element* e) {
  if (!e || is_null(*e)) return std::nullopt;
  if (e->type() != element_type::OBJECT) decline();
  return e->get_object().value_unsafe();
}

std::optional<array> opt_array(const element* e) {
  if (!e || is_null(*e)) return std::nullopt;
  if (e->type() != element_type::ARRAY) decline();
  return e->get_array().value_unsafe();
}

object must_object(const element& e) {
  if (e.type() != element_type::OBJECT) decline();
  return e.get_object().value_unsafe();
}

// The keys of interest of one object, each at most once. KEYS: the names, in a fixed order;
// found[i] is the value of keys[i] (nullptr when absent). A key of interest given twice
// declines; other keys are not looked at.
template <size_t N>
void members(const object& o, const std::string_view (&keys)[N], const element* (&found)[N],
             element (&store)[N]) {
  for (size_t i = 0; i < N; i++) found[i] = nullptr;
  for (auto field : o) {
    for (size_t i = 0; i < N; i++) {
      if (field.key != keys[i]) continue;
      if (found[i]) decline();  // nlohmann keeps the last value, simdjson would give the first
      store[i] = field.value;
      found[i] = &store[i];
      break;
    }
  }
}

// require_port(): present, not null, an integer in 1..65535.
int32_t port_number(const element* e) {
  if (!e) decline();
  int64_t v = 0;
  if (e->type() == element_type::INT64) v = e->get_int64().value_unsafe();
  else decline();  // null, a float, an unsigned beyond int64 (out of range anyway), anything else
  if (v < 1 || v > 65535) decline();
  return static_cast<int32_t>(v);
}

// get_protocol(): absent or null -> TCP, else one of TCP, UDP, SCTP.
Protocol protocol(const element* e) {
  if (!e || is_null(*e)) return Protocol::TCP;
  std::optional<Protocol> p = protocol_of(opt_string(e));
  if (!p) decline();
  return *p;
}

// as_ip(): a string inet_pton reads as IPv4 or IPv6 (up to a NUL, as decode.cpp's c_str()).
std::string_view ip_string(const element& e) {
  if (e.type() != element_type::STRING) decline();
  std::string_view s = str(e);
  std::string z(s);
  unsigned char buf[16];
  if (inet_pton(AF_INET, z.c_str(), buf) != 1 && inet_pton(AF_INET6, z.c_str(), buf) != 1) decline();
  return s;
}

// get_string_map(): absent or null -> empty, else a mapping of strings; sorted by key.
void string_map(const element* e, std::vector<std::pair<std::string_view, std::string_view>>& out) {
  auto m = opt_object(e);
  if (!m) return;
  out.reserve(m->size());
  bool sorted = true;
  for (auto field : *m) {
    if (field.value.type() != element_type::STRING) decline();
    if (!out.empty() && !(out.back().first < field.key)) sorted = false;
    out.emplace_back(field.key, str(field.value));
  }
  if (sorted) return;
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < out.size(); i++)
    if (out[i - 1].first == out[i].first) decline();  // a key twice: nlohmann keeps the last
}

// read_meta(): name, namespace, uid, resourceVersion (f[0..3]).
template <class View>
void read_meta(const element* const (&f)[7], View& v) {
  v.name = opt_string(f[0]);
  if (v.name.empty()) decline();  // required, non-empty
  v.ns = opt_string(f[1]);
  v.uid = opt_string(f[2]);
  if (f[3] && f[3]->type() == element_type::INT64) {  // a hand-written number
    v.rv_is_number = true;
    v.resource_version_number = std::to_string(f[3]->get_int64().value_unsafe());
  } else {
    v.resource_version = opt_string(f[3]);
  }
}

constexpr std::string_view kMetaKeys[] = {"name", "namespace", "uid", "resourceVersion",
                                          "labels", "annotations", "deletionTimestamp"};

void read_metadata(const element* e, PodView& v) {
  if (!e) decline();
  object md = must_object(*e);  // null or another type: "is required" / "must be a mapping"
  const element* f[7];
  element s[7];
  members(md, kMetaKeys, f, s);
  read_meta(f, v);
  string_map(f[4], v.labels);
  string_map(f[5], v.annotations);
  v.terminating = f[6] && !is_null(*f[6]);
}

void read_metadata(const element* e, ServiceView& v) {
  if (!e) decline();
  object md = must_object(*e);
  const element* f[7];
  element s[7];
  members(md, kMetaKeys, f, s);  // (labels and deletionTimestamp: not read for a Service)
  read_meta(f, v);
  string_map(f[5], v.annotations);
}

// read_target_port(): absent or null -> the port; a number -> a port number; a string of
// digits -> a port number; any other non-empty string -> a port name.
void target_port(const element* e, ServicePortView& p) {
  if (!e || is_null(*e)) {
    p.target_port = p.port;
    return;
  }
  if (e->type() != element_type::STRING) {
    p.target_port = port_number(e);  // a number (else declines)
    return;
  }
  std::string_view s = str(*e);
  if (s.empty()) decline();
  if (s.find_first_not_of("0123456789") != std::string_view::npos) {
    p.target_port_name = s;
    return;
  }
  if (s.size() > 5) decline();
  int32_t n = 0;
  for (char c : s) n = n * 10 + (c - '0');
  if (n < 1 || n > 65535) decline();
  p.target_port = n;
}

void read_spec(const element* e, ServiceView& v) {
  auto spec = opt_object(e);
  if (!spec) return;
  static constexpr std::string_view keys[] = {"clusterIPs", "clusterIP", "ports", "selector", "type"};
  const element* f[5];
  element s[5];
  members(*spec, keys, f, s);
  // spec.clusterIPs when present and non-empty, else spec.clusterIP; "None" and "" dropped
  auto add = [&](const element& ip) {
    if (ip.type() == element_type::STRING && (str(ip).empty() || str(ip) == "None")) return;
    v.cluster_ips.push_back(ip_string(ip));
  };
  auto ips = opt_array(f[0]);
  if (ips && ips->size() > 0) {
    for (element ip : *ips) add(ip);
  } else if (f[1] && !is_null(*f[1])) {
    add(*f[1]);
  }
  if (auto ports = opt_array(f[2])) {
    for (element p : *ports) {
      static constexpr std::string_view pkeys[] = {"name", "port", "protocol", "targetPort", "appProtocol"};
      const element* pf[5];
      element ps[5];
      members(must_object(p), pkeys, pf, ps);
      ServicePortView pv;
      pv.name = opt_string(pf[0]);
      pv.port = port_number(pf[1]);
      pv.protocol = protocol(pf[2]);
      target_port(pf[3], pv);
      pv.app_protocol = opt_string(pf[4]);
      v.ports.push_back(pv);
    }
  }
  string_map(f[3], v.selector);
  v.type = opt_string(f[4]);
}

void read_spec(const element* e, PodView& v) {
  auto spec = opt_object(e);
  if (!spec) return;
  static constexpr std::string_view keys[] = {"nodeName", "containers"};
  const element* f[2];
  element s[2];
  members(*spec, keys, f, s);
  v.node_name = opt_string(f[0]);
  auto containers = opt_array(f[1]);
  if (!containers) return;
  for (element c : *containers) {
    static constexpr std::string_view ckeys[] = {"ports"};
    const element* cf[1];
    element cs[1];
    members(must_object(c), ckeys, cf, cs);
    auto ports = opt_array(cf[0]);
    if (!ports) continue;
    for (element p : *ports) {
      static constexpr std::string_view pkeys[] = {"name", "containerPort", "protocol"};
      const element* pf[3];
      element ps[3];
      members(must_object(p), pkeys, pf, ps);
      PortView pv;
      pv.name = opt_string(pf[0]);
      if (pf[1] && is_null(*pf[1])) decline();  // "is required"
      pv.port = port_number(pf[1]);
      pv.protocol = protocol(pf[2]);
      v.ports.push_back(pv);
    }
  }
}

void read_status(const element* e, PodView& v) {
  auto status = opt_object(e);
  if (!status) return;
  static constexpr std::string_view keys[] = {"podIPs", "podIP", "phase", "qosClass", "conditions"};
  const element* f[5];
  element s[5];
  members(*status, keys, f, s);
  // status.podIPs[].ip when present and non-empty, else status.podIP
  auto ips = opt_array(f[0]);
  if (ips && ips->size() > 0) {
    for (element item : *ips) {
      static constexpr std::string_view ikeys[] = {"ip"};
      const element* inf[1];
      element ins[1];
      members(must_object(item), ikeys, inf, ins);
      if (!inf[0] || is_null(*inf[0])) decline();  // "is required"
      v.pod_ips.push_back(ip_string(*inf[0]));
    }
  } else if (f[1] && !is_null(*f[1])) {
    if (!(f[1]->type() == element_type::STRING && str(*f[1]).empty())) v.pod_ips.push_back(ip_string(*f[1]));
  }
  v.phase = opt_string(f[2]);
  v.qos_class = opt_string(f[3]);
  // the last condition of type Ready: its status == "True"
  auto conditions = opt_array(f[4]);
  if (!conditions) return;
  for (element c : *conditions) {
    static constexpr std::string_view ckeys[] = {"type", "status"};
    const element* cf[2];
    element cs[2];
    members(must_object(c), ckeys, cf, cs);
    if (opt_string(cf[0]) != "Ready") continue;  // (a type of another type declines)
    v.ready = opt_string(cf[1]) == "True";
  }
}

// An item that is larger than this is parsed by a parser of its own, freed after: the
// thread's parser keeps its buffers at the largest size it has parsed.
constexpr size_t kKeptParserMax = 64 * 1024;

FastObject decode(simdjson::dom::parser& parser, std::string_view text) {
  element doc;
  if (parser.parse(text.data(), text.size()).get(doc) != simdjson::SUCCESS) return {};
  try {
    object top = must_object(doc);
    static constexpr std::string_view keys[] = {"kind", "apiVersion", "metadata", "spec", "status"};
    const element* f[5];
    element s[5];
    members(top, keys, f, s);
    if (!f[0] || f[0]->type() != element_type::STRING) return {};
    if (!f[1] || f[1]->type() != element_type::STRING || str(*f[1]) != "v1") return {};
    if (str(*f[0]) == "Pod") {
      PodView v;
      read_metadata(f[2], v);
      read_spec(f[3], v);
      read_status(f[4], v);
      return make_pod(v);
    }
    if (str(*f[0]) == "Service") {  // (status is not read)
      ServiceView v;
      read_metadata(f[2], v);
      read_spec(f[3], v);
      return make_service(v);
    }
    return {};
  } catch (const Decline&) {
    return {};
  }
}

}  // namespace

FastObject fast_decode(std::string_view item_json) {
  if (item_json.size() > kKeptParserMax) {
    simdjson::dom::parser own;
    return decode(own, item_json);
  }
  thread_local simdjson::dom::parser parser;
  return decode(parser, item_json);
}

std::optional<Pod> fast_decode_pod(std::string_view item_json) {
  FastObject o = fast_decode(item_json);
  if (Pod* p = std::get_if<Pod>(&o)) return std::move(*p);
  return std::nullopt;
}

std::optional<Service> fast_decode_service(std::string_view item_json) {
  FastObject o = fast_decode(item_json);
  if (Service* p = std::get_if<Service>(&o)) return std::move(*p);
  return std::nullopt;
}

}  // namespace envsteer::k8s
