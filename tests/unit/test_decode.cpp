// SPDX-License-Identifier: Apache-2.0
// Decoding of Kubernetes objects (k8s/decode.h): real `kubectl get -o yaml` shapes, every used
// field, and bad input whose error names the object and the field.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iterator>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fixtures.h"
#include "k8s/decode.h"

namespace envsteer::k8s {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

json Y(const std::string& yaml) { return yaml_to_json(YAML::Load(yaml)); }

// The documents of tests/data/manifests/cluster.yaml, converted to JSON.
const std::vector<json>& cluster_docs() {
  static const std::vector<json> docs = [] {
    std::vector<json> out;
    for (const YAML::Node& n : YAML::LoadAllFromFile(ES_TEST_DATA_DIR "/manifests/cluster.yaml"))
      out.push_back(yaml_to_json(n));
    return out;
  }();
  return docs;
}

const json& fixture(const std::string& kind, const std::string& name) {
  for (const json& d : cluster_docs())
    if (d.is_object() && d["kind"] == kind && d["metadata"]["name"] == name) return d;
  throw std::runtime_error("no fixture " + kind + " " + name);
}

template <class F>
std::string error_of(F&& f) {
  return testutil::error_of<DecodeError>(f);
}

const char* kService = R"(
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
  - name: admin
    port: 81
  selector:
    app: web
)";

const char* kPod = R"(
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels:
    app: web
spec:
  containers:
  - name: web
    ports:
    - containerPort: 8080
status:
  podIP: 10.244.0.5
)";

const char* kSlice = R"(
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
endpoints:
- addresses: [10.244.0.5]
ports:
- port: 8080
)";

// ---------------------------------------------------------------------------------------------
// yaml_to_json

TEST(YamlToJson, PlainScalarsAreResolvedQuotedStayStrings) {
  json j = Y(R"(
int: 8080
neg: -3
hex: 0x1F
big: 18446744073709551615
float: 1.5
exp: 2e3
yes_bool: true
no_bool: False
null1: null
null2: ~
null3:
str: http
quoted_int: "8080"
single_quoted: '42'
quoted_true: "true"
quoted_null: "null"
tagged: !!str 5
literal: |
  8080
version: 1.0.3
inf: .inf
)");
  EXPECT_EQ(j["int"], 8080);
  EXPECT_TRUE(j["int"].is_number_integer());
  EXPECT_EQ(j["neg"], -3);
  EXPECT_EQ(j["hex"], 31);
  EXPECT_EQ(j["big"].get<uint64_t>(), 18446744073709551615ULL);
  EXPECT_EQ(j["float"], 1.5);
  EXPECT_EQ(j["exp"], 2000.0);
  EXPECT_EQ(j["yes_bool"], true);
  EXPECT_EQ(j["no_bool"], false);
  EXPECT_TRUE(j["null1"].is_null());
  EXPECT_TRUE(j["null2"].is_null());
  EXPECT_TRUE(j["null3"].is_null());
  EXPECT_EQ(j["str"], "http");
  EXPECT_EQ(j["quoted_int"], "8080");
  EXPECT_EQ(j["single_quoted"], "42");
  EXPECT_EQ(j["quoted_true"], "true");
  EXPECT_EQ(j["quoted_null"], "null");
  EXPECT_EQ(j["tagged"], "5");
  EXPECT_EQ(j["literal"], "8080\n");
  EXPECT_EQ(j["version"], "1.0.3");
  EXPECT_EQ(j["inf"], ".inf");
}

TEST(YamlToJson, NestedStructures) {
  json j = Y("a: [1, \"2\", {b: [], c: {}}]\n");
  EXPECT_EQ(j, json::parse(R"({"a": [1, "2", {"b": [], "c": {}}]})"));
  EXPECT_TRUE(Y("").is_null());
}

TEST(YamlToJson, TargetPortNumberOrName) {
  json j = Y("ports:\n- targetPort: 8080\n- targetPort: \"http\"\n- targetPort: http\n");
  EXPECT_TRUE(j["ports"][0]["targetPort"].is_number_integer());
  EXPECT_EQ(j["ports"][1]["targetPort"], "http");
  EXPECT_EQ(j["ports"][2]["targetPort"], "http");
}

TEST(YamlToJson, DuplicateKeyIsAnErrorWithPosition) {
  try {
    Y("metadata:\n  name: a\n  name: b\n");
    FAIL() << "no exception";
  } catch (const YAML::ParserException& e) {
    EXPECT_EQ(e.mark.line, 2);  // 0-based: third line
    EXPECT_THAT(e.msg, HasSubstr("duplicate mapping key \"name\""));
  }
}

// ---------------------------------------------------------------------------------------------
// Service

TEST(DecodeService, RealKubectlOutput) {
  Service s = decode_service(fixture("Service", "web"));
  EXPECT_EQ(s.ns, "shop");
  EXPECT_EQ(s.name, "web");
  EXPECT_EQ(s.uid, "6f1c2a4e-8d0b-4b8e-9a51-3f2d7c9e0a11");
  EXPECT_EQ(s.resource_version, "48213");
  EXPECT_THAT(s.cluster_ips, ElementsAre("10.96.12.34"));
  EXPECT_EQ(s.type, "ClusterIP");
  EXPECT_TRUE(s.has_selector);
  EXPECT_EQ(s.selector, (Labels{{"app", "web"}}));

  ASSERT_EQ(s.ports.size(), 4u);
  // Named targetPort.
  EXPECT_EQ(s.ports[0].name, "http");
  EXPECT_EQ(s.ports[0].port, 80);
  EXPECT_EQ(s.ports[0].protocol, Protocol::TCP);
  EXPECT_EQ(s.ports[0].target_port, 0);
  EXPECT_EQ(s.ports[0].target_port_name, "http");
  // Numeric targetPort.
  EXPECT_EQ(s.ports[1].name, "metrics");
  EXPECT_EQ(s.ports[1].port, 9090);
  EXPECT_EQ(s.ports[1].target_port, 9091);
  EXPECT_EQ(s.ports[1].target_port_name, "");
  // A quoted all-digit targetPort is a number; UDP.
  EXPECT_EQ(s.ports[2].protocol, Protocol::UDP);
  EXPECT_EQ(s.ports[2].target_port, 5353);
  EXPECT_EQ(s.ports[2].target_port_name, "");
  // No protocol -> TCP; no targetPort -> port.
  EXPECT_EQ(s.ports[3].protocol, Protocol::TCP);
  EXPECT_EQ(s.ports[3].target_port, 8080);
}

TEST(DecodeService, DualStackPrefersClusterIPs) {
  Service s = decode_service(fixture("Service", "api"));
  EXPECT_THAT(s.cluster_ips, ElementsAre("10.96.0.20", "fd00:10:96::20"));
  EXPECT_EQ(s.type, "NodePort");
  ASSERT_EQ(s.ports.size(), 1u);
  EXPECT_EQ(s.ports[0].name, "");
  EXPECT_EQ(s.ports[0].target_port, 8443);
  // A quoted "true" label value stays a string.
  EXPECT_EQ(s.selector, (Labels{{"app", "api"}, {"virtual-env", "true"}}));
}

TEST(DecodeService, HeadlessHasNoClusterIP) {
  Service s = decode_service(fixture("Service", "db"));
  EXPECT_TRUE(s.cluster_ips.empty());
  ASSERT_EQ(s.ports.size(), 1u);
  EXPECT_EQ(s.ports[0].target_port, 5432);

  json j = Y(kService);
  j["spec"]["clusterIP"] = "None";
  EXPECT_TRUE(decode_service(j).cluster_ips.empty());
  j["spec"]["clusterIP"] = "";
  EXPECT_TRUE(decode_service(j).cluster_ips.empty());
}

TEST(DecodeService, DefaultsAndClusterIPFallback) {
  json j = Y(kService);
  j["spec"].erase("selector");
  j["spec"]["clusterIPs"] = json::array();
  Service s = decode_service(j);
  EXPECT_EQ(s.ns, "default");
  EXPECT_THAT(s.cluster_ips, ElementsAre("10.96.0.10"));  // empty clusterIPs -> clusterIP
  EXPECT_FALSE(s.has_selector);
  EXPECT_TRUE(s.selector.empty());
  EXPECT_EQ(s.type, "ClusterIP");
  EXPECT_EQ(s.uid, "");

  j["spec"]["selector"] = json::object();
  EXPECT_FALSE(decode_service(j).has_selector);
}

TEST(DecodeService, BadPortNamesObjectAndField) {
  json j = Y(kService);
  j["spec"]["ports"][1]["port"] = "abc";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports[1].port: must be an integer in 1..65535, got \"abc\"");
  j["spec"]["ports"][1]["port"] = 0;
  EXPECT_THAT(error_of([&] { decode_service(j); }),
              HasSubstr("spec.ports[1].port: must be an integer in 1..65535, got 0"));
  j["spec"]["ports"][1]["port"] = 65536;
  EXPECT_THAT(error_of([&] { decode_service(j); }), HasSubstr("got 65536"));
  j["spec"]["ports"][1]["port"] = 80.5;
  EXPECT_THAT(error_of([&] { decode_service(j); }), HasSubstr("got 80.5"));
  j["spec"]["ports"][1].erase("port");
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports[1].port: is required");
}

TEST(DecodeService, BadTargetPort) {
  json j = Y(kService);
  j["spec"]["ports"][0]["targetPort"] = "99999";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports[0].targetPort: must be an integer in 1..65535, "
            "got \"99999\"");
  j["spec"]["ports"][0]["targetPort"] = 0;
  EXPECT_THAT(error_of([&] { decode_service(j); }), HasSubstr("spec.ports[0].targetPort:"));
  j["spec"]["ports"][0]["targetPort"] = true;
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports[0].targetPort: must be a port number or a port "
            "name, got true");
  j["spec"]["ports"][0]["targetPort"] = "";
  EXPECT_THAT(error_of([&] { decode_service(j); }), HasSubstr("got \"\""));
}

TEST(DecodeService, BadProtocol) {
  json j = Y(kService);
  j["spec"]["ports"][0]["protocol"] = "HTTP";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports[0].protocol: must be one of TCP, UDP, SCTP, got "
            "\"HTTP\"");
  j["spec"]["ports"][0]["protocol"] = "tcp";
  EXPECT_THAT(error_of([&] { decode_service(j); }), HasSubstr("got \"tcp\""));
  j["spec"]["ports"][0]["protocol"] = std::string("TCP\0", 4);  // not TCP: the whole string counts
  EXPECT_THAT(error_of([&] { decode_service(j); }), HasSubstr("must be one of TCP, UDP, SCTP"));
}

// The one-byte protocol: exactly the three names the API writes, and back.
TEST(Protocol, NamesBothWays) {
  for (Protocol p : {Protocol::TCP, Protocol::UDP, Protocol::SCTP}) EXPECT_EQ(protocol_of(protocol_name(p)), p);
  EXPECT_STREQ(protocol_name(Protocol::UDP), "UDP");
  EXPECT_EQ(Protocol{}, Protocol::TCP);  // the default, as for an absent field
  EXPECT_EQ(ContainerPort{}.protocol, Protocol::TCP);
  EXPECT_EQ(ServicePort{}.protocol, Protocol::TCP);
  EXPECT_EQ(EndpointPort{}.protocol, Protocol::TCP);
  for (std::string_view bad : {"", "tcp", "Tcp", "TCP ", "ICMP", "SCTP2"}) EXPECT_EQ(protocol_of(bad), std::nullopt) << bad;
  EXPECT_EQ(protocol_of(std::string_view("UDP\0", 4)), std::nullopt);
  EXPECT_EQ(sizeof(Protocol), 1u);
}

TEST(DecodeService, BadClusterIP) {
  json j = Y(kService);
  j["spec"]["clusterIP"] = "10.96.0.300";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.clusterIP: must be an IPv4 or IPv6 address, got "
            "\"10.96.0.300\"");
  j["spec"]["clusterIPs"] = {"10.96.0.10", "fd00::zz"};
  EXPECT_THAT(error_of([&] { decode_service(j); }),
              HasSubstr("Service default/web: spec.clusterIPs[1]: must be an IPv4 or IPv6 "
                        "address, got \"fd00::zz\""));
  j["spec"]["clusterIPs"] = {10};
  EXPECT_THAT(error_of([&] { decode_service(j); }),
              HasSubstr("spec.clusterIPs[0]: must be a string, got 10"));
}

TEST(DecodeService, WrongTypes) {
  json j = Y(kService);
  j["spec"]["ports"] = "80";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports: must be a list, got \"80\"");
  j = Y(kService);
  j["spec"]["ports"][0] = 80;
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.ports[0]: must be a mapping, got 80");
  j = Y(kService);
  j["spec"]["selector"] = {{"app", 5}};
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec.selector[\"app\"]: must be a string, got 5");
  j = Y(kService);
  j["spec"] = "x";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service default/web: spec: must be a mapping, got \"x\"");
  j = Y(kService);
  j["metadata"]["namespace"] = 7;
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service web: metadata.namespace: must be a string, got 7");
}

TEST(DecodeService, MissingName) {
  json j = Y(kService);
  j["metadata"].erase("name");
  EXPECT_EQ(error_of([&] { decode_service(j); }), "Service: metadata.name: is required");
  j["metadata"]["name"] = "";
  EXPECT_EQ(error_of([&] { decode_service(j); }),
            "Service: metadata.name: must be a non-empty string");
  j.erase("metadata");
  EXPECT_EQ(error_of([&] { decode_service(j); }), "Service: metadata: is required");
}

TEST(DecodeService, ErrorCarriesObjectAndField) {
  json j = Y(kService);
  j["spec"]["ports"][1]["port"] = -1;
  try {
    decode_service(j);
    FAIL() << "no exception";
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.object(), "Service default/web");
    EXPECT_EQ(e.field(), "spec.ports[1].port");
  }
}

// ---------------------------------------------------------------------------------------------
// Pod

TEST(DecodePod, RealKubectlOutput) {
  Pod p = decode_pod(fixture("Pod", "web-7d9c6b5f4-x2k8p"));
  EXPECT_EQ(p.ns, "shop");
  EXPECT_EQ(p.name, "web-7d9c6b5f4-x2k8p");
  EXPECT_EQ(p.uid, "4b1c9d2e-7a6f-4e3d-9c8b-1a2b3c4d5e6f");
  EXPECT_EQ(p.resource_version, "48377");
  EXPECT_EQ(p.labels, (Labels{{"app", "web"},
                              {"pod-template-hash", "7d9c6b5f4"},
                              {"virtual-env", "dev.proj1"}}));
  EXPECT_EQ(p.annotations.at("envsteer.io/cgroup"), "kubepods/burstable/pod4b1c/web");
  EXPECT_EQ(p.annotations.size(), 2u);
  EXPECT_THAT(p.pod_ips, ElementsAre("10.244.1.17", "fd00:10:244:1::17"));
  EXPECT_TRUE(p.ready);
  EXPECT_FALSE(p.terminating);
  EXPECT_EQ(p.phase, PodPhase::Running);
  EXPECT_EQ(p.node_name, "node-a");
  ASSERT_EQ(p.ports.size(), 3u);
  EXPECT_EQ(p.ports[0].name, "http");
  EXPECT_EQ(p.ports[0].port, 8080);
  EXPECT_EQ(p.ports[0].protocol, Protocol::TCP);
  EXPECT_EQ(p.ports[1].name, "metrics");
  EXPECT_EQ(p.ports[1].port, 9091);
  EXPECT_EQ(p.ports[2].name, "dns");  // second container
  EXPECT_EQ(p.ports[2].port, 5353);
  EXPECT_EQ(p.ports[2].protocol, Protocol::UDP);
}

TEST(DecodePod, MinimalAndStates) {
  json j = Y(kPod);
  Pod p = decode_pod(j);
  EXPECT_THAT(p.pod_ips, ElementsAre("10.244.0.5"));  // podIP only
  EXPECT_FALSE(p.ready);                               // no conditions
  EXPECT_EQ(p.ports.at(0).protocol, Protocol::TCP);
  EXPECT_EQ(p.ports.at(0).name, "");

  j["metadata"]["deletionTimestamp"] = "2024-05-02T10:00:00Z";
  j["status"]["conditions"] = Y("[{type: Ready, status: \"False\"}, {type: PodScheduled, status: \"True\"}]");
  p = decode_pod(j);
  EXPECT_TRUE(p.terminating);
  EXPECT_FALSE(p.ready);

  j["status"]["conditions"][0]["status"] = "True";
  EXPECT_TRUE(decode_pod(j).ready);

  j.erase("status");
  j.erase("spec");
  p = decode_pod(j);
  EXPECT_TRUE(p.pod_ips.empty());
  EXPECT_FALSE(p.ready);
  EXPECT_TRUE(p.ports.empty());
}

// status.phase and status.qosClass are kept as one byte each: the values the
// agent tells apart, the rest Other; a non-string is still an error.
TEST(DecodePod, PhaseAndQosClass) {
  json j = Y(kPod);
  Pod p = decode_pod(j);
  EXPECT_EQ(p.qos_class, QosClass::None);
  for (const auto& [text, phase] : std::vector<std::pair<std::string, PodPhase>>{
           {"Pending", PodPhase::Pending}, {"Running", PodPhase::Running}, {"Succeeded", PodPhase::Succeeded},
           {"Failed", PodPhase::Failed}, {"Unknown", PodPhase::Unknown}, {"", PodPhase::None},
           {"succeeded", PodPhase::Other}, {"Evicted", PodPhase::Other}}) {
    j["status"]["phase"] = text;
    EXPECT_EQ(decode_pod(j).phase, phase) << text;
  }
  for (const auto& [text, qos, name] : std::vector<std::tuple<std::string, QosClass, std::string>>{
           {"Guaranteed", QosClass::Guaranteed, "Guaranteed"}, {"Burstable", QosClass::Burstable, "Burstable"},
           {"BestEffort", QosClass::BestEffort, "BestEffort"}, {"besteffort", QosClass::BestEffort, "BestEffort"},
           {"GUARANTEED", QosClass::Guaranteed, "Guaranteed"}, {"", QosClass::None, ""},
           {"Burstable2", QosClass::Other, ""}}) {
    j["status"]["qosClass"] = text;
    p = decode_pod(j);
    EXPECT_EQ(p.qos_class, qos) << text;
    EXPECT_EQ(qos_class_name(p.qos_class), name) << text;
  }
  j["status"]["phase"] = 3;
  EXPECT_THAT(error_of([&] { decode_pod(j); }), HasSubstr("status.phase"));
  j["status"]["phase"] = "Running";
  j["status"]["qosClass"] = Y("[a]");
  EXPECT_THAT(error_of([&] { decode_pod(j); }), HasSubstr("status.qosClass"));
}

TEST(DecodePod, BadPodIP) {
  json j = Y(kPod);
  j["status"]["podIP"] = "10.244.0";
  EXPECT_EQ(error_of([&] { decode_pod(j); }),
            "Pod shop/web-1: status.podIP: must be an IPv4 or IPv6 address, got \"10.244.0\"");
  j["status"]["podIPs"] = Y("[{ip: 10.244.0.5}, {ip: not-an-ip}]");
  EXPECT_EQ(error_of([&] { decode_pod(j); }),
            "Pod shop/web-1: status.podIPs[1].ip: must be an IPv4 or IPv6 address, got "
            "\"not-an-ip\"");
}

TEST(DecodePod, LabelValuesMustBeStrings) {
  // Unquoted in YAML, these are a number and a bool, not strings: kubectl would refuse too.
  json j = Y(kPod);
  j["metadata"]["labels"] = Y("{app: web, version: 1}");
  EXPECT_EQ(error_of([&] { decode_pod(j); }),
            "Pod shop/web-1: metadata.labels[\"version\"]: must be a string, got 1");
  j["metadata"]["labels"] = Y("{virtual-env: true}");
  EXPECT_EQ(error_of([&] { decode_pod(j); }),
            "Pod shop/web-1: metadata.labels[\"virtual-env\"]: must be a string, got true");
  j["metadata"]["labels"] = Y("{virtual-env: \"true\"}");
  EXPECT_EQ(decode_pod(j).labels.at("virtual-env"), "true");
  j["metadata"]["annotations"] = Y("{envsteer.io/cgroup: [a]}");
  EXPECT_THAT(error_of([&] { decode_pod(j); }),
              HasSubstr("metadata.annotations[\"envsteer.io/cgroup\"]: must be a string"));
}

TEST(DecodePod, BadContainerPort) {
  json j = Y(kPod);
  j["spec"]["containers"][0]["ports"][0]["containerPort"] = "http";
  EXPECT_EQ(error_of([&] { decode_pod(j); }),
            "Pod shop/web-1: spec.containers[0].ports[0].containerPort: must be an integer in "
            "1..65535, got \"http\"");
  j["spec"]["containers"][0]["ports"][0].erase("containerPort");
  EXPECT_EQ(error_of([&] { decode_pod(j); }),
            "Pod shop/web-1: spec.containers[0].ports[0].containerPort: is required");
  j = Y(kPod);
  j["spec"]["containers"][0]["ports"][0]["protocol"] = "ICMP";
  EXPECT_THAT(error_of([&] { decode_pod(j); }),
              HasSubstr("spec.containers[0].ports[0].protocol: must be one of TCP, UDP, SCTP"));
}

// ---------------------------------------------------------------------------------------------
// EndpointSlice

TEST(DecodeEndpointSlice, RealKubectlOutput) {
  EndpointSlice s = decode_endpoint_slice(fixture("EndpointSlice", "web-8xq2v"));
  EXPECT_EQ(s.ns, "shop");
  EXPECT_EQ(s.name, "web-8xq2v");
  EXPECT_EQ(s.uid, "9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b");
  EXPECT_EQ(s.resource_version, "48380");
  EXPECT_EQ(s.service_name, "web");
  EXPECT_EQ(s.address_type, "IPv4");
  ASSERT_EQ(s.endpoints.size(), 3u);

  EXPECT_THAT(s.endpoints[0].addresses, ElementsAre("10.244.1.17"));
  EXPECT_TRUE(s.endpoints[0].ready);
  EXPECT_EQ(s.endpoints[0].node_name, "node-a");
  ASSERT_TRUE(s.endpoints[0].target.has_value());
  EXPECT_EQ(s.endpoints[0].target->kind, "Pod");
  EXPECT_EQ(s.endpoints[0].target->ns, "shop");
  EXPECT_EQ(s.endpoints[0].target->name, "web-7d9c6b5f4-x2k8p");
  EXPECT_EQ(s.endpoints[0].target->uid, "4b1c9d2e-7a6f-4e3d-9c8b-1a2b3c4d5e6f");

  EXPECT_FALSE(s.endpoints[1].ready);  // ready: false
  EXPECT_FALSE(s.endpoints[1].target.has_value());
  EXPECT_TRUE(s.endpoints[2].ready);  // conditions: {} -> ready absent -> ready

  ASSERT_EQ(s.ports.size(), 3u);
  EXPECT_EQ(s.ports[0].name, "http");
  EXPECT_EQ(s.ports[0].port, 8080);
  EXPECT_EQ(s.ports[1].protocol, Protocol::TCP);  // default
  EXPECT_EQ(s.ports[2].protocol, Protocol::UDP);
}

TEST(DecodeEndpointSlice, ReadinessAbsentNullFalseTrue) {
  json j = Y(kSlice);
  EXPECT_TRUE(decode_endpoint_slice(j).endpoints.at(0).ready);  // no conditions at all
  j["endpoints"][0]["conditions"] = {{"ready", nullptr}};
  EXPECT_TRUE(decode_endpoint_slice(j).endpoints.at(0).ready);
  j["endpoints"][0]["conditions"]["ready"] = false;
  EXPECT_FALSE(decode_endpoint_slice(j).endpoints.at(0).ready);
  j["endpoints"][0]["conditions"]["ready"] = true;
  EXPECT_TRUE(decode_endpoint_slice(j).endpoints.at(0).ready);
  j["endpoints"][0]["conditions"]["ready"] = "yes";
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: endpoints[0].conditions.ready: must be true or "
            "false, got \"yes\"");
}

TEST(DecodeEndpointSlice, AddressesFollowAddressType) {
  json j = Y(kSlice);
  j["endpoints"][0]["addresses"] = {"10.244.0.5", "10.244.0.256"};
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: endpoints[0].addresses[1]: must be an IPv4 address "
            "(addressType IPv4), got \"10.244.0.256\"");
  j["addressType"] = "IPv6";
  j["endpoints"][0]["addresses"] = {"fd00::5"};
  EXPECT_THAT(decode_endpoint_slice(j).endpoints.at(0).addresses, ElementsAre("fd00::5"));
  j["endpoints"][0]["addresses"] = {"10.244.0.5"};
  EXPECT_THAT(error_of([&] { decode_endpoint_slice(j); }),
              HasSubstr("endpoints[0].addresses[0]: must be an IPv6 address"));
  j["addressType"] = "FQDN";
  j["endpoints"][0]["addresses"] = {"web.example.com"};
  EXPECT_THAT(decode_endpoint_slice(j).endpoints.at(0).addresses, ElementsAre("web.example.com"));
}

TEST(DecodeEndpointSlice, BadFields) {
  json j = Y(kSlice);
  j["addressType"] = "IPv5";
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: addressType: must be one of IPv4, IPv6, FQDN, got "
            "\"IPv5\"");
  j.erase("addressType");
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: addressType: is required");
  j = Y(kSlice);
  j["ports"][0]["port"] = 0;
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: ports[0].port: must be an integer in 1..65535, got 0");
  j = Y(kSlice);
  j["endpoints"][0].erase("addresses");
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: endpoints[0].addresses: is required");
  j = Y(kSlice);
  j["endpoints"][0]["targetRef"] = {{"kind", "Pod"}, {"name", 3}};
  EXPECT_EQ(error_of([&] { decode_endpoint_slice(j); }),
            "EndpointSlice default/web-abc: endpoints[0].targetRef.name: must be a string, got 3");
}

TEST(DecodeEndpointSlice, PortMayBeAbsent) {
  json j = Y(kSlice);
  j["ports"][0].erase("port");
  EXPECT_EQ(decode_endpoint_slice(j).ports.at(0).port, 0);
  j["metadata"].erase("labels");
  EXPECT_EQ(decode_endpoint_slice(j).service_name, "");
}

// ---------------------------------------------------------------------------------------------
// add_object

TEST(AddObject, DispatchesOnKind) {
  ClusterState st;
  add_object(Y(kService), st);
  add_object(Y(kPod), st);
  add_object(Y(kSlice), st);
  EXPECT_EQ(st.size(), 3u);
  EXPECT_EQ(st.services.count("default/web"), 1u);
  EXPECT_EQ(st.pods.count("shop/web-1"), 1u);
  EXPECT_EQ(st.slices.count("default/web-abc"), 1u);
  EXPECT_EQ(object_key("shop", "web"), "shop/web");
}

TEST(AddObject, AllFixtureDocuments) {
  ClusterState st;
  for (const json& d : cluster_docs())
    if (!d.is_null()) add_object(d, st);
  EXPECT_EQ(st.services.size(), 3u);
  EXPECT_EQ(st.pods.size(), 1u);
  EXPECT_EQ(st.slices.size(), 1u);
}

TEST(AddObject, ListsRecursively) {
  ClusterState st;
  add_object(Y(R"(
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 10.96.0.1}}
- apiVersion: v1
  kind: List
  items:
  - {apiVersion: v1, kind: Pod, metadata: {name: p, namespace: x}}
)"),
             st);
  EXPECT_EQ(st.services.count("default/a"), 1u);
  EXPECT_EQ(st.pods.count("x/p"), 1u);

  ClusterState empty;
  add_object(Y("{apiVersion: v1, kind: List, items: []}"), empty);
  add_object(Y("{apiVersion: v1, kind: List}"), empty);
  EXPECT_EQ(empty.size(), 0u);
}

TEST(AddObject, TypedListItemsWithoutKind) {
  // As the API server returns GET /api/v1/services: items carry no apiVersion/kind.
  ClusterState st;
  add_object(json::parse(R"({"apiVersion": "v1", "kind": "ServiceList",
      "metadata": {"resourceVersion": "9"},
      "items": [{"metadata": {"name": "s1", "namespace": "n"},
                 "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80}]}}]})"),
             st);
  EXPECT_EQ(st.services.at("n/s1").ports.at(0).port, 80);
}

TEST(AddObject, UnknownKind) {
  ClusterState st;
  EXPECT_EQ(error_of([&] {
              add_object(Y("{apiVersion: apps/v1, kind: Deployment, metadata: {name: web, "
                           "namespace: shop}}"),
                         st);
            }),
            "Deployment shop/web: kind: unknown kind \"Deployment\" with apiVersion \"apps/v1\" "
            "(supported: v1 Service, v1 Pod, discovery.k8s.io/v1 EndpointSlice, v1 Namespace, "
            "and lists of them)");
  // Right kind, wrong version.
  EXPECT_THAT(error_of([&] {
                add_object(Y("{apiVersion: discovery.k8s.io/v1beta1, kind: EndpointSlice, "
                             "metadata: {name: s}}"),
                           st);
              }),
              HasSubstr("EndpointSlice default/s: kind: unknown kind \"EndpointSlice\" with "
                        "apiVersion \"discovery.k8s.io/v1beta1\""));
  EXPECT_EQ(error_of([&] { add_object(Y("{apiVersion: v1, metadata: {name: x}}"), st); }),
            "object default/x: kind: is required");
  EXPECT_EQ(error_of([&] { add_object(Y("{kind: Service, metadata: {name: x}}"), st); }),
            "Service default/x: apiVersion: is required");
  EXPECT_EQ(error_of([&] { add_object(Y("[1, 2]"), st); }),
            "an object must be a mapping, got [1,2]");
  EXPECT_EQ(st.size(), 0u);
}

TEST(AddObject, ErrorInListItemNamesTheItem) {
  ClusterState st;
  EXPECT_EQ(error_of([&] {
              add_object(Y(R"(
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: ok}}
- {apiVersion: v1, kind: Service, metadata: {name: bad, namespace: n}, spec: {ports: [{port: 0}]}}
)"),
                         st);
            }),
            "Service n/bad: spec.ports[0].port: must be an integer in 1..65535, got 0");
  EXPECT_EQ(error_of([&] { add_object(Y("{apiVersion: v1, kind: List, items: {}}"), st); }),
            "List: items: must be a list, got {}");
}

TEST(AddObject, DuplicateObject) {
  ClusterState st;
  add_object(Y(kService), st);
  EXPECT_EQ(error_of([&] { add_object(Y(kService), st); }),
            "Service default/web: metadata.name: duplicate: another Service with this "
            "namespace/name was already defined");
  // The same namespace/name in another kind is fine.
  json pod = Y(kPod);
  pod["metadata"]["name"] = "web";
  pod["metadata"]["namespace"] = "default";
  add_object(pod, st);
  EXPECT_EQ(st.size(), 2u);
  // An explicit "default" namespace is the same object as an absent one.
  json svc = Y(kService);
  svc["metadata"]["namespace"] = "default";
  EXPECT_THAT(error_of([&] { add_object(svc, st); }), HasSubstr("duplicate"));
}

}  // namespace
}  // namespace envsteer::k8s

namespace envsteer::k8s {
namespace {

// One decoder and one choice rule for the VirtualEnvironment resource, at start-up
// (a list) and while watching (the first by namespace/name) alike.
// Labels (one heap block of string_views) behaves like std::map<std::string, std::string>
// for what the agent uses.
std::map<std::string, std::string> as_map(const Labels& l) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : l) m.emplace(k, v);
  return m;
}

// L holds exactly M's entries, in M's order, and finds each of them.
void expect_same(const Labels& l, const std::map<std::string, std::string>& m) {
  ASSERT_EQ(l.size(), m.size());
  EXPECT_EQ(l.empty(), m.empty());
  EXPECT_EQ(static_cast<size_t>(std::distance(l.begin(), l.end())), m.size());
  EXPECT_TRUE(std::equal(l.begin(), l.end(), m.begin(), m.end(),
                         [](const auto& x, const auto& y) { return x.first == y.first && x.second == y.second; }));
  for (const auto& [k, v] : m) {
    auto it = l.find(k);
    ASSERT_NE(it, l.end()) << k;
    EXPECT_EQ(it->first, k);
    EXPECT_EQ(it->second, v);
    EXPECT_EQ(l.at(k), v);
    EXPECT_TRUE(l.contains(k));
    EXPECT_EQ(l.count(k), 1u);
  }
}

TEST(Labels, BehavesLikeASortedMap) {
  Labels l{{"b", "2"}, {"a", "1"}, {"b", "ignored"}};  // like std::map: the first of a key stays
  std::map<std::string, std::string> m{{"b", "2"}, {"a", "1"}, {"b", "ignored"}};
  expect_same(l, m);
  EXPECT_EQ(l.at("b"), "2");
  EXPECT_THROW((void)l.at("c"), std::out_of_range);
  EXPECT_FALSE(l.emplace("a", "other").second);
  EXPECT_EQ(l.at("a"), "1");
  auto [it, added] = l.emplace("c", "3");
  EXPECT_TRUE(added);
  EXPECT_EQ(it->first, "c");
  EXPECT_EQ(it->second, "3");
  EXPECT_TRUE(l.insert_or_assign("0", "0").second);  // before every key
  EXPECT_EQ(l.begin()->first, "0");
  EXPECT_EQ(l.count("c"), 1u);
  EXPECT_EQ(l.find("zz"), l.end());
  EXPECT_EQ(l.find("a0"), l.end());  // between keys
  EXPECT_EQ(l.erase("b"), 1u);
  EXPECT_EQ(l.erase("b"), 0u);
  std::vector<std::string> keys;
  for (const auto& [k, v] : l) keys.emplace_back(k);
  EXPECT_THAT(keys, ElementsAre("0", "a", "c"));
  Labels same{{"c", "3"}, {"a", "1"}, {"0", "0"}};
  EXPECT_EQ(l, same);
  auto [at, fresh] = same.insert_or_assign("a", "x");  // like std::map::insert_or_assign
  EXPECT_FALSE(fresh);
  EXPECT_EQ(at->second, "x");
  EXPECT_EQ(same.at("a"), "x");
  EXPECT_NE(l, same);
  EXPECT_FALSE(same.insert_or_assign("a", "1").second);
  EXPECT_EQ(l, same);
}

TEST(Labels, Empty) {
  Labels l;
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l.size(), 0u);
  EXPECT_EQ(l.begin(), l.end());
  EXPECT_EQ(l.find(""), l.end());
  EXPECT_FALSE(l.contains(""));
  EXPECT_THROW((void)l.at(""), std::out_of_range);
  EXPECT_EQ(l.erase("a"), 0u);
  EXPECT_EQ(l, Labels{});
  EXPECT_EQ(l, Labels(std::vector<Labels::value_type>{}));
  Labels c = l;
  EXPECT_TRUE(c.empty());
  EXPECT_EQ(sizeof(Labels), sizeof(void*));  // one pointer; no block when empty
  // Emptied by erase or clear: equal to the default.
  Labels one{{"k", "v"}};
  EXPECT_EQ(one.size(), 1u);
  EXPECT_NE(one, l);
  EXPECT_EQ(one.erase("k"), 1u);
  EXPECT_TRUE(one.empty());
  EXPECT_EQ(one, l);
  one.emplace("k", "v");
  one.clear();
  EXPECT_EQ(one, l);
}

TEST(Labels, OneEntryAndEmptyKeysOrValues) {
  Labels l{{"", ""}};
  ASSERT_EQ(l.size(), 1u);
  EXPECT_TRUE(l.contains(""));
  EXPECT_EQ(l.at(""), "");
  EXPECT_NE(l, Labels{});  // an empty key is a key
  l.emplace("a", "");
  l.emplace("b", "value");
  expect_same(l, {{"", ""}, {"a", ""}, {"b", "value"}});
  // The same bytes split otherwise are other labels.
  EXPECT_NE((Labels{{"ab", ""}}), (Labels{{"a", "b"}}));
  EXPECT_NE((Labels{{"a", "b"}, {"c", ""}}), (Labels{{"a", ""}, {"bc", ""}}));
  EXPECT_NE((Labels{{"a", "b"}}), (Labels{{"a", "b"}, {"b", ""}}));
}

TEST(Labels, LongKeysAndValuesAndNulBytes) {
  const std::string long_key(300, 'k'), long_value(70000, 'v');  // beyond 16 bits of offset
  const std::string nul_a("a\0b", 3), nul_b("\0", 1), nul_v("x\0y\0", 4);
  Labels l{{long_key, long_value}, {nul_a, nul_v}, {"a", "1"}, {nul_b, ""}, {"ab", long_key}};
  std::map<std::string, std::string> m{{long_key, long_value}, {nul_a, nul_v}, {"a", "1"}, {nul_b, ""}, {"ab", long_key}};
  expect_same(l, m);
  // Sorted as std::string sorts: "\0" < "a" < "a\0b" < "ab" < "kkk..."
  std::vector<std::string> keys;
  for (const auto& [k, v] : l) keys.emplace_back(k);
  EXPECT_THAT(keys, ElementsAre(nul_b, "a", nul_a, "ab", long_key));
  EXPECT_EQ(l.at(nul_a).size(), 4u);
  EXPECT_EQ(l.find(std::string_view("a\0", 2)), l.end());  // a prefix of "a\0b" is another key
  EXPECT_EQ(l.erase(nul_a), 1u);
  m.erase(nul_a);
  expect_same(l, m);
  EXPECT_EQ(as_map(l), m);
}

TEST(Labels, CopiesMovesAndViewsOfItself) {
  Labels a{{"app", "web"}, {"virtual-env", "dev.a-rather-long-environment-name"}};
  Labels b = a;
  EXPECT_EQ(a, b);
  b.insert_or_assign("app", "api");
  EXPECT_EQ(a.at("app"), "web");  // a copy owns its bytes
  Labels c = std::move(b);
  EXPECT_EQ(c.at("app"), "api");
  b = c;
  EXPECT_EQ(b, c);
  const Labels& self = b;
  b = self;  // self-assignment keeps it
  EXPECT_EQ(b, c);
  // Arguments that are views into the labels themselves (the block is rebuilt).
  b.insert_or_assign(b.begin()->first, b.at("virtual-env"));
  EXPECT_EQ(b.at("app"), "dev.a-rather-long-environment-name");
  b.emplace(b.at("app"), b.begin()->first);
  EXPECT_EQ(b.at("dev.a-rather-long-environment-name"), "app");
  // Iterators are random access over the entries.
  auto it = b.begin();
  EXPECT_EQ((it + 2)->first, "virtual-env");
  EXPECT_EQ(it[1].first, "dev.a-rather-long-environment-name");
  EXPECT_EQ(b.end() - b.begin(), 3);
  EXPECT_EQ((--b.end())->first, "virtual-env");
  EXPECT_LT(b.begin(), b.end());
}

// Random operations on Labels and on a std::map: the same entries after each one.
TEST(Labels, RandomOperationsLikeStdMap) {
  std::mt19937 rng(18);
  auto pick = [&]() -> std::string {
    static const std::vector<std::string> pool{"", "a", "b", "ab", std::string("a\0", 2), "app", "virtual-env",
                                               "envsteer.io/cgroup", std::string(40, 'x'), "z"};
    return pool[rng() % pool.size()];
  };
  Labels l;
  std::map<std::string, std::string> m;
  for (int i = 0; i < 3000; i++) {
    const std::string k = pick(), v = pick() + std::to_string(rng() % 3);
    switch (rng() % 5) {
      case 0: {
        bool added = l.emplace(k, v).second;
        EXPECT_EQ(added, m.emplace(k, v).second);
        break;
      }
      case 1: {
        bool added = l.insert_or_assign(k, v).second;
        EXPECT_EQ(added, m.insert_or_assign(k, v).second);
        break;
      }
      case 2:
        EXPECT_EQ(l.erase(k), m.erase(k));
        break;
      case 3: {  // built at once, in any order, a key maybe twice
        std::vector<Labels::value_type> e;
        std::vector<std::string> store;
        store.reserve(8);
        std::map<std::string, std::string> fresh;
        for (size_t n = rng() % 5; n > 0; n--) {
          store.push_back(pick());
          e.emplace_back(store.back(), k);
          fresh.emplace(store.back(), k);
        }
        l = Labels(e);
        m = fresh;
        break;
      }
      default:
        if (rng() % 20 == 0) {
          l.clear();
          m.clear();
        }
        break;
    }
    expect_same(l, m);
    if (HasFailure()) FAIL() << "after operation " << i;
    Labels rebuilt;
    for (const auto& [mk, mv] : m) rebuilt.emplace(mk, mv);
    EXPECT_EQ(l, rebuilt);
  }
}

// IpList (a pod's addresses, one held in place) behaves like std::vector<std::string>.
TEST(IpList, BehavesLikeAVectorOfStrings) {
  IpList l;
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l.begin(), l.end());
  EXPECT_EQ(l, std::vector<std::string>{});
  l.push_back("10.0.0.1");
  EXPECT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0], "10.0.0.1");
  EXPECT_EQ(l, std::vector<std::string>{"10.0.0.1"});
  const std::string* first = &l[0];
  EXPECT_EQ(first, &*l.begin());  // the element itself, not a copy
  l.emplace_back(std::string_view("fd00::1"));
  EXPECT_EQ(l, (std::vector<std::string>{"10.0.0.1", "fd00::1"}));
  EXPECT_EQ(l.end() - l.begin(), 2);
  EXPECT_EQ(l.begin()[1], "fd00::1");
  std::vector<std::string> seen(l.begin(), l.end());
  EXPECT_THAT(seen, ElementsAre("10.0.0.1", "fd00::1"));
  IpList copy = l;
  EXPECT_EQ(copy, l);
  copy.push_back("10.0.0.2");
  EXPECT_NE(copy, l);  // a copy owns its addresses
  EXPECT_EQ(l.size(), 2u);
  IpList moved = std::move(copy);
  EXPECT_EQ(moved.size(), 3u);
  l.clear();
  EXPECT_TRUE(l.empty());
  EXPECT_EQ(l, IpList{});
  // An empty string is an element (the decoders never give one, objects built by hand may).
  IpList e{""};
  EXPECT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0], "");
  EXPECT_NE(e, IpList{});
  e.push_back("x");
  EXPECT_EQ(e, (std::vector<std::string>{"", "x"}));
  IpList one_then_empty{"a", ""};
  EXPECT_EQ(one_then_empty, (std::vector<std::string>{"a", ""}));
  // From a vector, as the decoder gives it; equal by content whatever the holding.
  for (const std::vector<std::string>& v :
       {std::vector<std::string>{}, {"10.1.0.1"}, {""}, {"10.1.0.1", "fd00::2"}, {"a", "b", "c"}}) {
    IpList from(v);
    IpList pushed;
    for (const auto& ip : v) pushed.push_back(ip);
    EXPECT_EQ(from, v);
    EXPECT_EQ(from, pushed);
    EXPECT_EQ(from.size(), v.size());
  }
  EXPECT_NE((IpList{"a", "b"}), (IpList{"a"}));
  EXPECT_NE((IpList{"a"}), (IpList{"b"}));
}

// ContainerPorts (one heap block) gives back the ports it was given, in order.
TEST(ContainerPorts, HoldsThePortsInOrder) {
  ContainerPorts none;
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(none.size(), 0u);
  EXPECT_EQ(none.begin(), none.end());
  EXPECT_THROW((void)none.at(0), std::out_of_range);
  EXPECT_EQ(none, ContainerPorts{});
  EXPECT_EQ(sizeof(ContainerPorts), sizeof(void*));
  const std::string long_name(300, 'n'), nul_name("a\0b", 3);
  std::vector<ContainerPort> given{{"http", 8080, Protocol::TCP}, {"", 1, Protocol::SCTP}, {nul_name, 65535, Protocol::UDP},
                                   {long_name, 53, Protocol::UDP}, {"http", 8080, Protocol::TCP}};
  ContainerPorts pushed;
  for (const auto& g : given) pushed.push_back(g);
  std::vector<ContainerPortView> views(given.begin(), given.end());
  ContainerPorts built(views);
  EXPECT_EQ(pushed, built);
  for (const ContainerPorts* c : {&pushed, &built}) {
    ASSERT_EQ(c->size(), given.size());
    size_t i = 0;
    for (const auto& p : *c) {  // as model.cpp reads them
      EXPECT_EQ(p.name, given[i].name) << i;
      EXPECT_EQ(p.port, given[i].port) << i;
      EXPECT_EQ(p.protocol, given[i].protocol) << i;
      EXPECT_EQ((*c)[i], ContainerPortView(given[i]));
      EXPECT_EQ(c->at(i), ContainerPortView(given[i]));
      i++;
    }
    EXPECT_EQ(i, given.size());
    EXPECT_EQ(c->begin()->name, "http");
    EXPECT_EQ((c->begin() + 2)->name.size(), 3u);
    EXPECT_EQ(c->end() - c->begin(), 5);
  }
  ContainerPorts copy = built;
  EXPECT_EQ(copy, built);
  copy.push_back(copy[3]);  // a view into itself
  EXPECT_EQ(copy.size(), 6u);
  EXPECT_EQ(copy[5].name, long_name);
  EXPECT_NE(copy, built);
  EXPECT_EQ(built.size(), 5u);  // a copy owns its block
  ContainerPorts moved = std::move(copy);
  EXPECT_EQ(moved.size(), 6u);
  moved.clear();
  EXPECT_EQ(moved, none);
  // Any field differing makes them differ.
  EXPECT_NE((ContainerPorts{{"a", 1, Protocol::TCP}}), (ContainerPorts{{"a", 1, Protocol::UDP}}));
  EXPECT_NE((ContainerPorts{{"a", 1, Protocol::TCP}}), (ContainerPorts{{"a", 2, Protocol::TCP}}));
  EXPECT_NE((ContainerPorts{{"a", 1, Protocol::TCP}}), (ContainerPorts{{"b", 1, Protocol::TCP}}));
  EXPECT_NE((ContainerPorts{{"ab", 1, Protocol::TCP}, {"", 1, Protocol::TCP}}),
            (ContainerPorts{{"a", 1, Protocol::TCP}, {"b", 1, Protocol::TCP}}));
}

TEST(DecodeVirtualEnv, FieldsAndTheFirstByName) {
  auto items = nlohmann::json::parse(R"([
    {"metadata": {"namespace": "b", "name": "ve"},
     "spec": {"envHeader": {"name": "X-B", "autoInject": false}, "envLabel": {"name": "lb"}}},
    {"metadata": {"namespace": "a", "name": "ve"},
     "spec": {"envHeader": {"name": "X-A"}, "envLabel": {"name": "la", "splitter": "-", "defaultSubset": "dev"}}},
    "junk"
  ])");
  const nlohmann::json* pick = pick_virtual_env(items);
  ASSERT_NE(pick, nullptr);
  auto v = decode_virtual_env(*pick);
  EXPECT_EQ(v.name, object_key("a", "ve"));
  EXPECT_EQ(v.env_header, "X-A");
  EXPECT_EQ(v.env_label, "la");
  EXPECT_EQ(v.splitter, "-");
  EXPECT_EQ(v.default_subset, "dev");
  EXPECT_FALSE(v.auto_inject.has_value());
  auto b = decode_virtual_env(items[0]);
  ASSERT_TRUE(b.auto_inject.has_value());
  EXPECT_FALSE(*b.auto_inject);
  EXPECT_EQ(pick_virtual_env(nlohmann::json::array()), nullptr);
  // mistyped fields are empty, not errors
  auto odd = decode_virtual_env(nlohmann::json::parse(R"({"spec": {"envHeader": {"name": 7, "autoInject": "no"}}})"));
  EXPECT_EQ(odd.env_header, "");
  EXPECT_FALSE(odd.auto_inject.has_value());
}

}  // namespace
}  // namespace envsteer::k8s

namespace envsteer::k8s {
namespace {

using nlohmann::json;

// The Kubernetes source keeps objects reduced to the fields the decoder reads:
// decoding a reduced object gives the same object, or the same error.
template <class Decode, class Reduce>
void expect_same_after_reduce(const json& obj, Decode decode, Reduce reduce) {
  std::string e1, e2;
  decltype(decode(obj)) a{}, b{};
  try {
    a = decode(obj);
  } catch (const DecodeError& e) {
    e1 = e.what();
  }
  try {
    b = decode(reduce(obj));
  } catch (const DecodeError& e) {
    e2 = e.what();
  }
  EXPECT_EQ(e1, e2) << obj.dump();
  EXPECT_TRUE(a == b) << obj.dump();
}

// v1 Namespace (participation by namespace label): name, uid, resourceVersion,
// labels; keyed by name; a duplicate and a non-string label are errors.
TEST(DecodeNamespace, NameLabelsAndErrors) {
  json n = json::parse(R"({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","uid":"u1",
      "resourceVersion":"7","labels":{"envsteer.io/enabled":"true"}},"spec":{"finalizers":["kubernetes"]}})");
  Namespace got = decode_namespace(n);
  EXPECT_EQ(got.name, "shop");
  EXPECT_EQ(got.uid, "u1");
  EXPECT_EQ(got.resource_version, "7");
  EXPECT_EQ(got.labels, (Labels{{"envsteer.io/enabled", "true"}}));
  EXPECT_TRUE(decode_namespace(reduce_namespace(n)) == got);
  ClusterState st;
  add_object(n, st);
  ASSERT_EQ(st.namespaces.count("shop"), 1u);
  EXPECT_EQ(st.size(), 1u);
  try {
    add_object(n, st);
    ADD_FAILURE() << "duplicate accepted";
  } catch (const DecodeError& e) {
    EXPECT_THAT(std::string(e.what()), ::testing::HasSubstr("Namespace shop: metadata.name: duplicate"));
  }
  n["metadata"]["labels"]["bad"] = 1;
  try {
    decode_namespace(n);
    ADD_FAILURE() << "a non-string label accepted";
  } catch (const DecodeError& e) {
    EXPECT_THAT(std::string(e.what()), ::testing::HasSubstr("Namespace shop: metadata.labels"));
  }
}

TEST(Reduce, DecodesTheSame) {
  auto pod = [](const json& j) { return decode_pod(j); };
  auto svc = [](const json& j) { return decode_service(j); };
  auto slice = [](const json& j) { return decode_endpoint_slice(j); };
  for (const json& doc : cluster_docs()) {
    if (!doc.is_object()) continue;
    const std::string kind = doc.value("kind", "");
    if (kind == "Pod") expect_same_after_reduce(doc, pod, reduce_pod);
    if (kind == "Service") expect_same_after_reduce(doc, svc, reduce_service);
    if (kind == "EndpointSlice") expect_same_after_reduce(doc, slice, reduce_endpoint_slice);
  }
  // broken fields are kept as they are, so the errors are the same
  json p = Y(kPod);
  p["status"]["conditions"] = json::array({7});
  expect_same_after_reduce(p, pod, reduce_pod);
  p = Y(kPod);
  p["spec"]["containers"] = json::array({"x"});
  expect_same_after_reduce(p, pod, reduce_pod);
  p = Y(kPod);
  p["metadata"]["labels"] = {{"a", 1}};
  expect_same_after_reduce(p, pod, reduce_pod);
  p = Y(kPod);
  p["status"] = "up";
  expect_same_after_reduce(p, pod, reduce_pod);
  json s = Y(kService);
  s["spec"]["ports"][0] = 80;
  expect_same_after_reduce(s, svc, reduce_service);
  json sl = Y(kSlice);
  sl["endpoints"][0]["conditions"]["ready"] = "yes";
  expect_same_after_reduce(sl, slice, reduce_endpoint_slice);
  sl = Y(kSlice);
  sl["endpoints"] = json::array({1});
  expect_same_after_reduce(sl, slice, reduce_endpoint_slice);
  expect_same_after_reduce(json("x"), pod, reduce_pod);
  // and what is dropped is dropped
  json full = Y(kPod);
  full["metadata"]["managedFields"] = json::array({{{"manager", "kubelet"}}});
  full["spec"]["tolerations"] = json::array({{{"key", "x"}}});
  json r = reduce_pod(full);
  EXPECT_FALSE(r["metadata"].contains("managedFields"));
  EXPECT_FALSE(r["spec"].contains("tolerations"));
}

}  // namespace
}  // namespace envsteer::k8s
