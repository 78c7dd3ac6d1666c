// SPDX-License-Identifier: Apache-2.0
// The fast Pod decoder (k8s/fastdecode.h) against the nlohmann path it stands in for
// (add_object of json::parse): on a table of pods and on thousands of generated variants,
// a Pod it returns is the one the nlohmann path gives; anything the nlohmann path rejects,
// it declines.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <set>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "k8s/decode.h"
#include "k8s/fastdecode.h"

namespace envsteer::k8s {
namespace {

using nlohmann::json;

// What the manifest reader's nlohmann path makes of one list item: the Pod, or the error.
template <class T>
struct Slow_ {
  std::optional<T> obj;  // the Pod or Service
  std::string error;     // "" when it decoded one
};
using Slow = Slow_<Pod>;

// The older decoder's result for TEXT as one object of kind T (Pod or Service).
template <typename T>
Slow_<T> slow_decode_as(const std::string& text) {
  constexpr bool pod = std::is_same_v<T, Pod>;
  Slow_<T> out;
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    out.error = "parse error";
    return out;
  }
  ClusterState cs;
  try {
    add_object(doc, cs);
  } catch (const std::exception& e) {
    out.error = e.what();
    return out;
  }
  const auto& objs = [&]() -> const auto& {
    if constexpr (pod)
      return cs.pods;
    else
      return cs.services;
  }();
  if (objs.size() != 1 || cs.size() != 1) {
    out.error = pod ? "not one Pod" : "not one Service";
    return out;
  }
  out.obj = objs.begin()->second;
  if constexpr (pod)
    EXPECT_EQ(*out.obj, decode_pod(doc)) << text;
  else
    EXPECT_EQ(*out.obj, decode_service(doc)) << text;
  return out;
}

Slow slow_decode(const std::string& text) { return slow_decode_as<Pod>(text); }

// The fast path for kind T.
template <typename T>
std::optional<T> fast_decode_as(const std::string& text) {
  if constexpr (std::is_same_v<T, Pod>)
    return fast_decode_pod(text);
  else
    return fast_decode_service(text);
}

// The law: an object from the fast path is the slow path's. Returns whether fast took it.
template <typename T>
bool check_as(const std::string& text) {
  if constexpr (!std::is_same_v<T, Pod>) {
    EXPECT_FALSE(fast_decode_pod(text).has_value());
  }
  std::optional<T> fast = fast_decode_as<T>(text);
  if (!fast) return false;
  Slow_<T> slow = slow_decode_as<T>(text);
  EXPECT_TRUE(slow.obj.has_value()) << "fast accepted what the slow path rejects (" << slow.error << "): " << text;
  if (slow.obj) {
    EXPECT_EQ(*fast, *slow.obj) << text;
  }
  return true;
}

// Declines, and the slow path rejects it with an error containing WHAT.
template <typename T>
void expect_rejected_as(const std::string& text, const std::string& what) {
  SCOPED_TRACE(text);
  EXPECT_FALSE(fast_decode_as<T>(text).has_value());
  Slow_<T> slow = slow_decode_as<T>(text);
  EXPECT_FALSE(slow.obj.has_value());
  EXPECT_NE(slow.error.find(what), std::string::npos) << slow.error;
}

bool check(const std::string& text) { return check_as<Pod>(text); }

// Takes it and gives what the slow path gives.
void expect_fast(const std::string& text) {
  SCOPED_TRACE(text);
  EXPECT_TRUE(check(text)) << "fast declined";
}

void expect_rejected(const std::string& text, const std::string& what) { expect_rejected_as<Pod>(text, what); }

// Declines something the slow path decodes (the unusual: the slow path does it).
void expect_declined_valid(const std::string& text) {
  SCOPED_TRACE(text);
  EXPECT_FALSE(fast_decode_pod(text).has_value());
  EXPECT_TRUE(slow_decode(text).obj.has_value());
}

const std::string kTypical =
    R"({"apiVersion":"v1","kind":"Pod","metadata":{"name":"pod-0-0","namespace":"ns-0","uid":"u-1",)"
    R"("resourceVersion":"123","labels":{"app":"svc-0","virtual-env":"dev.e0"},)"
    R"("annotations":{"envsteer.io/cgroup":"cproot/pod-0"}},)"
    R"("spec":{"nodeName":"x","containers":[{"name":"app","ports":[{"containerPort":8080,"name":"http","protocol":"TCP"}]}]},)"
    R"("status":{"phase":"Running","podIP":"127.140.0.0","podIPs":[{"ip":"127.140.0.0"}],"qosClass":"BestEffort",)"
    R"("conditions":[{"type":"Ready","status":"True"}]}})";

// KTYPICAL with FIELD (a JSON member, "key":value) put in OBJECT's braces ("" top level,
// "metadata", "spec", "status").
std::string with(const std::string& object, const std::string& member) {
  std::string t = kTypical;
  size_t at = object.empty() ? 0 : t.find("\"" + object + "\":{");
  at = t.find('{', at) + 1;
  return t.insert(at, member + ",");
}

TEST(FastDecode, TypicalPod) {
  expect_fast(kTypical);
  Pod p = *fast_decode_pod(kTypical);
  EXPECT_EQ(p.ns, "ns-0");
  EXPECT_EQ(p.name, "pod-0-0");
  EXPECT_EQ(p.resource_version, "123");
  EXPECT_EQ(p.labels.at("virtual-env"), "dev.e0");
  ASSERT_EQ(p.ports.size(), 1u);
  EXPECT_EQ(p.ports[0].port, 8080);
  EXPECT_EQ(p.pod_ips, std::vector<std::string>{"127.140.0.0"});
  EXPECT_TRUE(p.ready);
  EXPECT_FALSE(p.terminating);
}

TEST(FastDecode, MinimalPod) {
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"}})");
  Pod p = *fast_decode_pod(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"}})");
  EXPECT_EQ(p.ns, "default");
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":""}})");
  expect_fast(R"(  {"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":null,"uid":null,)"
              R"("resourceVersion":null,"labels":null,"annotations":null},"spec":null,"status":null}  )");
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"spec":{},"status":{}})");
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"spec":{"containers":[]},)"
              R"("status":{"podIPs":[],"podIP":"","conditions":[]}})");
}

TEST(FastDecode, EveryOptionalField) {
  const std::string t =
      R"({"metadata":{"deletionTimestamp":"2024-01-01T00:00:00Z","annotations":{"z":"1","a":"2"},)"
      R"("labels":{"b":"x","a":"y","c":""},"resourceVersion":"9","uid":"uid","namespace":"n","name":"p",)"
      R"("managedFields":[{"x":1.5e3,"y":[true,false,null]}]},"status":{"conditions":[)"
      R"({"type":"PodScheduled","status":"True"},{"type":"Ready","status":"False"},{"type":"Ready","status":"True"},)"
      R"({"type":"ContainersReady"},{"status":"x"},{"type":null,"status":5}],"qosClass":"Guaranteed","phase":"Pending",)"
      R"("podIPs":[{"ip":"10.0.0.1"},{"ip":"fd00::1","extra":1}],"podIP":"ignored-when-podIPs"},)"
      R"("spec":{"containers":[{"name":"a","ports":[{"containerPort":80},{"containerPort":53,"protocol":"UDP","name":"dns"}]},)"
      R"({"name":"b"},{"ports":null},{"ports":[{"containerPort":65535,"protocol":"SCTP","name":null,"protocol2":1}]}],)"
      R"("nodeName":"node-1","volumes":[]},"apiVersion":"v1","kind":"Pod"})";
  expect_fast(t);
  Pod p = *fast_decode_pod(t);
  EXPECT_TRUE(p.terminating);
  EXPECT_TRUE(p.ready);  // the last Ready condition
  EXPECT_EQ(p.pod_ips, (std::vector<std::string>{"10.0.0.1", "fd00::1"}));
  ASSERT_EQ(p.ports.size(), 3u);
  EXPECT_EQ(p.ports[0].protocol, Protocol::TCP);
  EXPECT_EQ(p.ports[1].name, "dns");
  EXPECT_EQ(p.ports[2].protocol, Protocol::SCTP);
  EXPECT_EQ(p.labels.begin()->first, "a");  // sorted
  // deletionTimestamp of any non-null value is a deletion; null is none
  expect_fast(with("metadata", R"("deletionTimestamp":5)"));
  EXPECT_TRUE(fast_decode_pod(with("metadata", R"("deletionTimestamp":{})"))->terminating);
  EXPECT_FALSE(fast_decode_pod(with("metadata", R"("deletionTimestamp":null)"))->terminating);
  // a Ready condition last saying False
  for (const char* last : {R"({"status":"False","type":"Ready"})", R"({"type":"Ready"})", R"({"type":"Ready","status":null})",
                           R"({"type":"Ready","status":"true"})"}) {
    const std::string t = R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},)"
                          R"("status":{"conditions":[{"type":"Ready","status":"True"},)" +
                          std::string(last) + "]}}";
    expect_fast(t);
    EXPECT_FALSE(fast_decode_pod(t)->ready);
  }
  // resourceVersion as a hand-written integer
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","resourceVersion":42}})");
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","resourceVersion":-7}})");
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","resourceVersion":-0}})");
}

TEST(FastDecode, PodIPFallbackAndIPv6) {
  for (const char* ip : {"10.1.2.3", "::1", "fd00:10:244::5", "2001:db8::ffff:1.2.3.4", "0.0.0.0"}) {
    expect_fast(std::string(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"status":{"podIP":")") + ip +
                "\"}}");
    expect_fast(std::string(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"status":{"podIPs":[{"ip":")") +
                ip + "\"}],\"podIP\":7}}");
  }
  // empty podIPs: podIP is read
  Pod p = *fast_decode_pod(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},)"
                           R"("status":{"podIPs":[],"podIP":"fd00::2"}})");
  EXPECT_EQ(p.pod_ips, std::vector<std::string>{"fd00::2"});
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"status":{"podIPs":null,"podIP":null}})");
}

TEST(FastDecode, StringsWithEscapesAndUnicode) {
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a\"b\\c\/d\n\t\u00e9\u0000z","namespace":"\u006es",)"
              R"("labels":{"k\u00e9y":"v\ud83d\ude00","k":"caf\u00e9 \u003c\u0026\u003e","\u0041":"A"},)"
              R"("annotations":{"j":"{\"a\":[1,2]}"}}})");
  expect_fast("{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"caf\xc3\xa9-\xf0\x9f\x98\x80\"}}");
  // keys spelled with escapes are the same keys
  expect_fast(R"({"\u006bind":"Pod","apiVersion":"v1","metadata":{"n\u0061me":"a"}})");
  Pod p = *fast_decode_pod(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a\u0000b"}})");
  EXPECT_EQ(p.name, std::string("a\0b", 3));
  // broken escapes and bytes: not JSON for either
  for (const std::string bad : {R"("\uDC00")", R"("\uD800")", R"("\uD800\u0041")", R"("\x")", "\"\xc0\x80\"",
                                "\"\xed\xa0\x80\"", "\"a\x01\"", "\"\xff\""}) {
    std::string t = R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","uid":)" + bad + "}}";
    expect_rejected(t, "parse error");
  }
}

TEST(FastDecode, SeveralContainersAndNamedPorts) {
  const std::string t =
      R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"spec":{"containers":[)"
      R"({"name":"c1","ports":[{"name":"http","containerPort":8080},{"name":"metrics","containerPort":9090,"protocol":"TCP"}]},)"
      R"({"name":"c2","ports":[{"name":"grpc","containerPort":9000},{"containerPort":53,"protocol":"UDP"}]},)"
      R"({"name":"c3","ports":[]}]}})";
  expect_fast(t);
  Pod p = *fast_decode_pod(t);
  ASSERT_EQ(p.ports.size(), 4u);
  EXPECT_EQ(p.ports[2].name, "grpc");
  EXPECT_EQ(p.ports[3].protocol, Protocol::UDP);
}

TEST(FastDecode, RejectedBySlowPathDeclined) {
  const std::string pre = R"({"kind":"Pod","apiVersion":"v1",)";
  expect_rejected(pre + R"("metadata":{}})", "metadata.name: is required");
  expect_rejected(pre + R"("metadata":{"name":null}})", "metadata.name: is required");
  expect_rejected(pre + R"("metadata":{"name":""}})", "metadata.name: must be a non-empty string");
  expect_rejected(pre + R"("metadata":{"name":5}})", "metadata.name: must be a string");
  expect_rejected(pre + R"("spec":{}})", "metadata: is required");
  expect_rejected(pre + R"("metadata":null})", "metadata: is required");
  expect_rejected(pre + R"("metadata":[]})", "metadata: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a","namespace":1}})", "metadata.namespace: must be a string");
  expect_rejected(pre + R"("metadata":{"name":"a","uid":true}})", "metadata.uid: must be a string");
  expect_rejected(pre + R"("metadata":{"name":"a","resourceVersion":1.5}})", "metadata.resourceVersion");
  expect_rejected(pre + R"("metadata":{"name":"a","labels":[]}})", "metadata.labels: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a","labels":{"a":1}}})", R"(metadata.labels["a"]: must be a string)");
  expect_rejected(pre + R"("metadata":{"name":"a","annotations":{"a":null}}})", "metadata.annotations");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":[]})", "spec: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"nodeName":1}})", "spec.nodeName");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":{}}})", "spec.containers: must be a list");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[1]}})", "spec.containers[0]: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[{"ports":{}}]}})", "spec.containers[0].ports");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[{"ports":[null]}]}})", "ports[0]: must be a mapping");
  for (const char* port : {R"({})", R"({"containerPort":null})"})
    expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[{"ports":[)" + port + "]}]}}",
                    "containerPort: is required");
  for (const char* port : {"0", "65536", "-1", "80.0", "8e1", "\"80\"", "true", "18446744073709551615", "99999999999999999999"})
    expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[{"ports":[{"containerPort":)" + port + "}]}]}}",
                    "containerPort: must be an integer in 1..65535");
  for (const char* proto : {R"("tcp")", R"("")", "1", "[]"})
    expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[{"ports":[{"containerPort":1,"protocol":)" +
                        proto + "}]}]}}",
                    "protocol: must be");
  expect_rejected(pre + R"("metadata":{"name":"a"},"spec":{"containers":[{"ports":[{"containerPort":1,"name":2}]}]}})",
                  "ports[0].name: must be a string");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":5})", "status: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"podIPs":{}}})", "status.podIPs: must be a list");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"podIPs":["10.0.0.1"]}})", "status.podIPs[0]: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"podIPs":[{}]}})", "status.podIPs[0].ip: is required");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"podIPs":[{"ip":null}]}})", "is required");
  for (const char* ip : {R"("")", R"("10.0.0")", R"("10.0.0.1 ")", R"("::g")", "1", R"("localhost")"})
    expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"podIPs":[{"ip":)" + ip + "}]}}", "status.podIPs[0].ip: must be");
  for (const char* ip : {R"("x")", "1", "[]", R"(" ")"})
    expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"podIP":)" + ip + "}}", "status.podIP: must be");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"phase":1}})", "status.phase");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"qosClass":{}}})", "status.qosClass");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"conditions":{}}})", "status.conditions: must be a list");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"conditions":[1]}})", "status.conditions[0]: must be a mapping");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"conditions":[{"type":1}]}})", "status.conditions[0].type");
  expect_rejected(pre + R"("metadata":{"name":"a"},"status":{"conditions":[{"type":"Ready","status":true}]}})",
                  "status.conditions[0].status");
  // not a v1 Pod
  expect_rejected(R"({"kind":"Pod","metadata":{"name":"a"}})", "apiVersion: is required");
  expect_rejected(R"({"kind":"Pod","apiVersion":"v2","metadata":{"name":"a"}})", "unknown kind");
  expect_rejected(R"({"kind":"pod","apiVersion":"v1","metadata":{"name":"a"}})", "unknown kind");
  expect_rejected(R"({"kind":5,"apiVersion":"v1","metadata":{"name":"a"}})", "kind: must be a string");
  expect_rejected(R"({"kind":null,"apiVersion":"v1","metadata":{"name":"a"}})", "kind: is required");
  expect_rejected(R"([{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"}}])", "must be a mapping");
  // not JSON
  for (const std::string& t : std::vector<std::string>{R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"}}x)",
                              R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},})",
                              R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"})",
                              R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","x":tru}})",
                              R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","x":01}})",
                              R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","x":1e999}})",
                              R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":'a'}})", std::string()})
    expect_rejected(t, "parse error");
}

TEST(FastDecode, DuplicateKeysDeclined) {
  // nlohmann keeps the last value: the fast path must not give the first
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","name":"b"}})");
  EXPECT_EQ(slow_decode(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","name":"b"}})").obj->name, "b");
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"metadata":{"name":"b"}})");
  expect_declined_valid(R"({"kind":"Pod","kind":"Pod","apiVersion":"v1","metadata":{"name":"a"}})");
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","labels":{"x":"1","x":"2"}}})");
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","labels":{"x":"1","y":"3","x":"2"}}})");
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","l\u0061bels":{},"labels":{}}})");
  expect_declined_valid(with("status", R"("podIPs":[{"ip":"10.0.0.2","ip":"10.0.0.3"}])"));
  expect_declined_valid(with("status", R"("conditions":[{"type":"Ready","status":"False","status":"True"}])"));
  expect_declined_valid(with("spec", R"("nodeName":"y")"));
  // a first value the slow path would reject, overwritten by a good one
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":5,"name":"a"}})");
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"spec":[],"spec":{}})");
  // and the other way round: a good first value overwritten by a bad one
  expect_rejected(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"x","namespace":7}})",
                  "metadata.namespace: must be a string");
  // a key twice where the decoder does not read is no matter
  expect_fast(with("spec", R"("volumes":[],"volumes":{})"));
  expect_fast(with("", R"("extra":1,"extra":2)"));
}

TEST(FastDecode, UnusualButValidDeclined) {
  // an unsigned resourceVersion beyond int64 (the slow path wraps it; the fast one does not try)
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","resourceVersion":18446744073709551615}})");
  // numbers beyond 64 bits anywhere: simdjson refuses them, nlohmann makes them floats
  expect_declined_valid(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a"},"x":123456789012345678901234567890})");
}

TEST(FastDecode, LargeItem) {
  std::string big(100000, 'x');
  expect_fast(R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","annotations":{"big":")" + big + "\"}}}");
  expect_fast(kTypical);  // and the thread's parser still works
}

// ---------------------------------------------------------------------------------------------
// Generated pods: random structure and values, some of them wrong or unusual.

class Gen {
 public:
  explicit Gen(uint32_t seed) : rng_(seed) {}

  // A pod's JSON text; *plain: nothing in it the fast path may decline.
  std::string pod(bool* plain) {
    plain_ = true;
    std::vector<std::string> m;
    m.push_back(kv("kind", odd(0.03) ? pick({R"("Service")", R"("pod")", "5", "null", R"("Pod ")"}) : R"("Pod")"));
    m.push_back(kv("apiVersion", odd(0.03) ? pick({R"("v2")", "null", "1", R"("V1")"}) : R"("v1")"));
    if (odd(0.02)) m.pop_back();
    m.push_back(kv("metadata", odd(0.02) ? pick({"null", "[]", R"("x")", "{}"}) : metadata()));
    if (chance(0.8)) m.push_back(kv("spec", odd(0.02) ? pick({"null", "[]", "1"}) : spec()));
    if (chance(0.8)) m.push_back(kv("status", odd(0.02) ? pick({"null", "[]", "true"}) : status()));
    if (chance(0.3)) m.push_back(kv("extra", any_value(3)));
    if (odd(0.03)) twice(m);  // a key twice
    std::string t = object(m);
    if (odd(0.02)) t = corrupt(t);
    *plain = plain_;
    return t;
  }

 private:
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  // An unusual choice: the pod is then not plain.
  bool odd(double p) {
    if (!chance(p)) return false;
    plain_ = false;
    return true;
  }
  std::string pick(std::initializer_list<const char*> v) { return *(v.begin() + rng_() % v.size()); }
  int range(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  // One of M's members again (a key twice).
  void twice(std::vector<std::string>& m) {
    std::string again = m[rng_() % m.size()];
    m.push_back(std::move(again));
  }

  std::string ws() { return chance(0.1) ? pick({" ", "\n", "\t ", "\r\n  "}) : ""; }
  std::string kv(const std::string& k, const std::string& v) { return ws() + quote(k) + ws() + ":" + ws() + v + ws(); }
  std::string object(std::vector<std::string> members) {
    std::shuffle(members.begin(), members.end(), rng_);
    std::string s = "{";
    for (size_t i = 0; i < members.size(); i++) s += (i ? "," : "") + members[i];
    return s + "}";
  }
  std::string list(const std::vector<std::string>& v) {
    std::string s = "[" + ws();
    for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + v[i];
    return s + ws() + "]";
  }

  // S as a JSON string, sometimes with ASCII spelled as \u escapes.
  std::string quote(const std::string& s) {
    const bool spell = chance(0.05);
    std::string out = "\"";
    for (unsigned char c : s) {
      if (c == '"') out += "\\\"";
      else if (c == '\\') out += "\\\\";
      else if (c == '\n') out += "\\n";
      else if (c < 0x20 || (spell && c < 0x80 && chance(0.3))) {
        char b[8];
        std::snprintf(b, sizeof b, "\\u%04x", c);
        out += b;
      } else {
        out += static_cast<char>(c);
      }
    }
    return out + "\"";
  }

  std::string word(int max = 8) {
    static const std::vector<std::string> parts = {"a", "b", "z", "app", "env", "-", ".", "/", "\"", "\\", "\n",
                                                   "\xc3\xa9", "\xf0\x9f\x98\x80", std::string(1, '\0'), "0", "Ready"};
    std::string s;
    for (int i = range(0, max); i > 0; i--) s += parts[rng_() % parts.size()];
    return s;
  }
  std::string str() { return quote(word()); }
  std::string nonempty() { return quote("n" + word()); }

  // A value of another type, for a field that wants a string (the pod is then not plain).
  std::string wrong() {
    plain_ = false;
    return pick({"1", "-2", "1.5", "true", "false", "[]", "{}", R"(["a"])", R"({"a":"b"})"});
  }
  // A string field that may be absent (nullopt), null, or wrong.
  std::optional<std::string> opt_str(double absent = 0.3) {
    if (chance(absent)) return std::nullopt;
    if (chance(0.1)) return std::string("null");
    if (odd(0.03)) return wrong();
    return str();
  }
  void add(std::vector<std::string>& m, const std::string& k, std::optional<std::string> v) {
    if (v) m.push_back(kv(k, *v));
  }

  std::string string_map() {
    if (chance(0.1)) return "null";
    if (odd(0.02)) return pick({"[]", R"("a")", "1"});
    std::vector<std::string> m;
    std::set<std::string> keys;
    for (int i = range(0, 5); i > 0; i--)
      if (std::string k = word(4); keys.insert(k).second) m.push_back(kv(k, odd(0.02) ? wrong() : str()));
    if (!m.empty() && odd(0.03)) twice(m);
    return object(m);
  }

  std::string metadata() {
    std::vector<std::string> m;
    if (odd(0.02)) add(m, "name", pick({"null", R"("")", "1"}));
    else if (!odd(0.02)) m.push_back(kv("name", nonempty()));
    add(m, "namespace", opt_str());
    add(m, "uid", opt_str());
    if (chance(0.2)) {
      if (odd(0.3)) m.push_back(kv("resourceVersion", pick({"1.5", "18446744073709551615", "1e3", "true"})));
      else m.push_back(kv("resourceVersion", std::to_string(range(-1000, 1000000))));
    } else {
      add(m, "resourceVersion", opt_str());
    }
    if (chance(0.8)) m.push_back(kv("labels", string_map()));
    if (chance(0.5)) m.push_back(kv("annotations", string_map()));
    if (chance(0.2)) m.push_back(kv("deletionTimestamp", pick({R"("2024-01-01T00:00:00Z")", "null", "1", "{}"})));
    if (chance(0.2)) m.push_back(kv("managedFields", any_value(4)));
    if (!m.empty() && odd(0.02)) twice(m);
    return object(m);
  }

  std::string port_number() {
    if (odd(0.05)) return pick({"0", "65536", "-1", "80.0", "1e2", R"("80")", "null", "99999999999999999999"});
    return chance(0.5) ? std::to_string(range(1, 65535)) : pick({"1", "80", "65535"});
  }

  std::string container_port() {
    std::vector<std::string> m;
    add(m, "name", opt_str());
    if (!odd(0.02)) m.push_back(kv("containerPort", port_number()));
    if (chance(0.6)) {
      if (chance(0.1)) m.push_back(kv("protocol", "null"));
      else if (odd(0.03)) m.push_back(kv("protocol", pick({R"("tcp")", R"("")", "6", R"("ICMP")"})));
      else m.push_back(kv("protocol", pick({R"("TCP")", R"("UDP")", R"("SCTP")"})));
    }
    if (chance(0.1)) m.push_back(kv("hostPort", port_number()));
    if (!m.empty() && odd(0.02)) twice(m);
    return odd(0.01) ? pick({"1", "null", "[]"}) : object(m);
  }

  std::string spec() {
    std::vector<std::string> m;
    add(m, "nodeName", opt_str());
    if (chance(0.9)) {
      if (odd(0.02)) {
        m.push_back(kv("containers", pick({"{}", "1", R"("x")"})));
      } else if (chance(0.05)) {
        m.push_back(kv("containers", "null"));
      } else {
        std::vector<std::string> cs;
        for (int c = range(0, 3); c > 0; c--) {
          std::vector<std::string> cm;
          cm.push_back(kv("name", str()));
          if (chance(0.8)) {
            if (odd(0.02)) {
              cm.push_back(kv("ports", pick({"{}", "1"})));
            } else {
              std::vector<std::string> ps;
              for (int p = range(0, 3); p > 0; p--) ps.push_back(container_port());
              cm.push_back(kv("ports", list(ps)));
            }
          }
          if (chance(0.2)) cm.push_back(kv("image", any_value(2)));
          if (odd(0.01)) twice(cm);
          cs.push_back(odd(0.01) ? pick({"1", "null", "[]"}) : object(cm));
        }
        m.push_back(kv("containers", list(cs)));
      }
    }
    if (chance(0.2)) m.push_back(kv("volumes", any_value(3)));
    if (!m.empty() && odd(0.02)) twice(m);
    return object(m);
  }

  std::string ip() {
    if (odd(0.05)) return pick({R"("10.0.0")", R"("x")", R"("")", "1", R"("::g")", R"(" 10.0.0.1")"});
    if (chance(0.5)) return "\"10." + std::to_string(range(0, 255)) + "." + std::to_string(range(0, 255)) + ".1\"";
    return pick({R"("fd00::1")", R"("::1")", R"("2001:db8::7")", R"("fe80::1:2:3:4")"});
  }

  std::string status() {
    std::vector<std::string> m;
    if (chance(0.7)) {
      if (odd(0.02)) {
        m.push_back(kv("podIPs", pick({"{}", R"(["10.0.0.1"])", R"([{}])", R"([{"ip":null}])", "1"})));
      } else if (chance(0.1)) {
        m.push_back(kv("podIPs", pick({"[]", "null"})));
      } else {
        std::vector<std::string> ips;
        for (int i = range(1, 2); i > 0; i--) {
          std::vector<std::string> im{kv("ip", ip())};
          if (odd(0.02)) twice(im);
          ips.push_back(object(im));
        }
        m.push_back(kv("podIPs", list(ips)));
      }
    }
    if (chance(0.7)) m.push_back(kv("podIP", chance(0.1) ? pick({R"("")", "null"}) : ip()));
    add(m, "phase", opt_str());
    add(m, "qosClass", opt_str());
    if (chance(0.8)) {
      std::vector<std::string> cs;
      for (int c = range(0, 4); c > 0; c--) {
        std::vector<std::string> cm;
        if (chance(0.9)) {
          if (chance(0.1)) cm.push_back(kv("type", "null"));
          else if (odd(0.02)) cm.push_back(kv("type", wrong()));
          else cm.push_back(kv("type", pick({R"("Ready")", R"("Ready")", R"("PodScheduled")", R"("ready")"})));
        }
        if (chance(0.9)) {
          if (odd(0.02)) cm.push_back(kv("status", wrong()));
          else cm.push_back(kv("status", pick({R"("True")", R"("False")", R"("Unknown")", "null"})));
        }
        if (!cm.empty() && odd(0.02)) twice(cm);
        cs.push_back(odd(0.01) ? pick({"1", "null", R"("Ready")"}) : object(cm));
      }
      m.push_back(kv("conditions", odd(0.01) ? pick({"{}", "1"}) : list(cs)));
    }
    if (!m.empty() && odd(0.02)) twice(m);
    return object(m);
  }

  // Anything, for fields the decoder does not read.
  std::string any_value(int depth) {
    int k = range(0, depth > 0 ? 7 : 4);
    switch (k) {
      case 0: return "null";
      case 1: return pick({"true", "false"});
      case 2: return pick({"0", "-12", "3.25", "1e10", "-0.0", "18446744073709551615"});
      case 3:
      case 4: return str();
      case 5: {
        std::vector<std::string> v;
        for (int i = range(0, 3); i > 0; i--) v.push_back(any_value(depth - 1));
        return list(v);
      }
      default: {
        std::vector<std::string> m;
        for (int i = range(0, 3); i > 0; i--) m.push_back(kv(word(3), any_value(depth - 1)));
        return object(m);
      }
    }
  }

  // Not JSON any more (or by chance still): a byte dropped, changed or added.
  std::string corrupt(std::string t) {
    if (t.empty()) return t;
    size_t at = rng_() % t.size();
    switch (range(0, 2)) {
      case 0: t.erase(at, 1); break;
      case 1: t[at] = pick({",", "}", "]", "\"", "\\", "\x01", "\xff", "0"})[0]; break;
      default: t.insert(at, pick({",", "{", "]", "\"", " ", "\\u"})); break;
    }
    return t;
  }

  std::mt19937 rng_;
  bool plain_ = true;
};

// ---------------------------------------------------------------------------------------------
// Services

Slow_<Service> slow_service(const std::string& text) { return slow_decode_as<Service>(text); }

bool check_service(const std::string& text) { return check_as<Service>(text); }

void expect_fast_service(const std::string& text) {
  SCOPED_TRACE(text);
  EXPECT_TRUE(check_service(text)) << "fast declined";
}

void expect_rejected_service(const std::string& text, const std::string& what) {
  expect_rejected_as<Service>(text, what);
}

const std::string kService =
    R"({"apiVersion":"v1","kind":"Service","metadata":{"name":"svc-0","namespace":"ns-0","uid":"svc-ns-0-svc-0"},)"
    R"("spec":{"clusterIP":"127.130.0.0","clusterIPs":["127.130.0.0"],"type":"ClusterIP",)"
    R"("ports":[{"name":"http","port":80,"protocol":"TCP","targetPort":8080}],"selector":{"app":"svc-0"}}})";

std::string svc_spec(const std::string& spec) {
  return R"({"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":)" + spec + "}";
}

TEST(FastDecode, Services) {
  expect_fast_service(kService);
  Service s = *fast_decode_service(kService);
  EXPECT_EQ(s.cluster_ips, std::vector<std::string>{"127.130.0.0"});
  ASSERT_EQ(s.ports.size(), 1u);
  EXPECT_EQ(s.ports[0].target_port, 8080);
  EXPECT_TRUE(s.has_selector);
  EXPECT_FALSE(fast_decode_pod(kService).has_value());
  EXPECT_FALSE(fast_decode_service(kTypical).has_value());
  expect_fast_service(R"({"kind":"Service","apiVersion":"v1","metadata":{"name":"a"}})");
  EXPECT_EQ(fast_decode_service(R"({"kind":"Service","apiVersion":"v1","metadata":{"name":"a"}})")->type, "ClusterIP");
  // what the Service decoder does not read: labels, deletionTimestamp, status
  expect_fast_service(R"({"kind":"Service","apiVersion":"v1","metadata":{"name":"a","labels":{"a":1},)"
                      R"("deletionTimestamp":1,"annotations":{"envsteer.io/x":"y"}},"status":5})");
  for (const char* spec :
       {R"({})", "null", R"({"clusterIP":"None"})", R"({"clusterIP":""})", R"({"clusterIPs":["None","fd00::1"]})",
        R"({"clusterIPs":[],"clusterIP":"10.0.0.1"})", R"({"clusterIPs":null,"clusterIP":null})",
        R"({"clusterIPs":["10.0.0.1"],"clusterIP":5})", R"({"clusterIPs":["","10.0.0.2","fd00::2"]})",
        R"({"type":null})", R"({"type":""})", R"({"type":"NodePort"})", R"({"selector":{}})", R"({"selector":null})",
        R"({"selector":{"b":"1","a":"2"}})", R"({"ports":[]})", R"({"ports":null})",
        R"({"ports":[{"port":80}]})", R"({"ports":[{"port":80,"targetPort":null}]})",
        R"({"ports":[{"port":80,"targetPort":"8080"},{"port":81,"targetPort":"http","protocol":"UDP","name":"b"}]})",
        R"({"ports":[{"port":80,"targetPort":"00080"},{"port":81,"targetPort":65535,"appProtocol":"h2c"}]})",
        R"({"ports":[{"port":80,"targetPort":"8a"},{"port":81,"targetPort":"-1"},{"port":82,"targetPort":" 1"}]})",
        R"({"ports":[{"port":80,"protocol":null,"name":null,"appProtocol":null,"nodePort":30000}]})"})
    expect_fast_service(svc_spec(spec));
  EXPECT_EQ(fast_decode_service(svc_spec(R"({"ports":[{"port":80,"targetPort":"00080"}]})"))->ports[0].target_port, 80);
  EXPECT_EQ(fast_decode_service(svc_spec(R"({"ports":[{"port":80,"targetPort":"http"}]})"))->ports[0].target_port_name,
            "http");
  EXPECT_EQ(fast_decode_service(svc_spec(R"({"ports":[{"port":80}]})"))->ports[0].target_port, 80);
  EXPECT_FALSE(fast_decode_service(svc_spec(R"({"selector":{}})"))->has_selector);

  // rejected by the slow path: declined
  for (const auto& [spec, what] : std::vector<std::pair<std::string, std::string>>{
           {"[]", "spec: must be a mapping"},
           {R"({"clusterIPs":{}})", "spec.clusterIPs: must be a list"},
           {R"({"clusterIPs":["x"]})", "spec.clusterIPs[0]: must be an IPv4 or IPv6"},
           {R"({"clusterIPs":[null]})", "spec.clusterIPs[0]: must be a string"},
           {R"({"clusterIP":"10.0.0"})", "spec.clusterIP: must be"},
           {R"({"clusterIP":1})", "spec.clusterIP: must be a string"},
           {R"({"ports":{}})", "spec.ports: must be a list"},
           {R"({"ports":[1]})", "spec.ports[0]: must be a mapping"},
           {R"({"ports":[{}]})", "spec.ports[0].port: is required"},
           {R"({"ports":[{"port":null}]})", "spec.ports[0].port: is required"},
           {R"({"ports":[{"port":0}]})", "spec.ports[0].port: must be an integer"},
           {R"({"ports":[{"port":"80"}]})", "spec.ports[0].port: must be an integer"},
           {R"({"ports":[{"port":80.0}]})", "spec.ports[0].port: must be an integer"},
           {R"({"ports":[{"port":80,"protocol":"tcp"}]})", "protocol: must be one of"},
           {R"({"ports":[{"port":80,"name":1}]})", "spec.ports[0].name: must be a string"},
           {R"({"ports":[{"port":80,"appProtocol":[]}]})", "spec.ports[0].appProtocol: must be a string"},
           {R"({"ports":[{"port":80,"targetPort":""}]})", "targetPort: must be a port number or a port name"},
           {R"({"ports":[{"port":80,"targetPort":true}]})", "targetPort: must be a port number or a port name"},
           {R"({"ports":[{"port":80,"targetPort":0}]})", "targetPort: must be an integer"},
           {R"({"ports":[{"port":80,"targetPort":8080.5}]})", "targetPort: must be an integer"},
           {R"({"ports":[{"port":80,"targetPort":"0"}]})", "targetPort: must be an integer"},
           {R"({"ports":[{"port":80,"targetPort":"65536"}]})", "targetPort: must be an integer"},
           {R"({"ports":[{"port":80,"targetPort":"000080"}]})", "targetPort: must be an integer"},
           {R"({"selector":[]})", "spec.selector: must be a mapping"},
           {R"({"selector":{"a":null}})", "spec.selector"},
           {R"({"type":1})", "spec.type: must be a string"}})
    expect_rejected_service(svc_spec(spec), what);
  expect_rejected_service(R"({"kind":"Service","apiVersion":"v1","metadata":{"name":"a","annotations":{"a":1}}})",
                          "metadata.annotations");
  expect_rejected_service(R"({"kind":"Service","apiVersion":"v1","metadata":{"namespace":"a"}})", "metadata.name");
  // duplicates: declined, the slow path decodes them
  for (const char* spec : {R"({"type":"A","type":"B"})", R"({"selector":{"a":"1","a":"2"}})",
                           R"({"ports":[{"port":80,"port":81}]})", R"({"ports":[],"ports":[{"port":80}]})"}) {
    EXPECT_FALSE(fast_decode_service(svc_spec(spec)).has_value()) << spec;
    EXPECT_TRUE(slow_service(svc_spec(spec)).obj.has_value()) << spec;
  }
}

TEST(FastDecode, GeneratedServicesAgreeWithSlowPath) {
  std::mt19937 rng(7);
  auto pick = [&](std::initializer_list<const char*> v) { return std::string(*(v.begin() + rng() % v.size())); };
  auto object = [&](std::vector<std::string> m) {
    if (!m.empty() && rng() % 20 == 0) m.push_back(std::string(m[rng() % m.size()]));  // a key twice
    std::shuffle(m.begin(), m.end(), rng);
    std::string o = "{";
    for (size_t k = 0; k < m.size(); k++) o += (k ? "," : "") + m[k];
    return o + "}";
  };
  int taken = 0, n = 3000;
  for (int i = 0; i < n; i++) {
    std::string ports;
    for (int p = static_cast<int>(rng() % 3); p > 0; p--) {
      std::vector<std::string> m;
      m.push_back(R"("port":)" + pick({"80", "443", "1", "65535", "0", R"("80")", "null", "8.0"}));
      if (rng() % 2)
        m.push_back(R"("targetPort":)" + pick({"8080", R"("8080")", R"("http")", R"("0")", R"("")", "null",
                                               R"("123456")", R"("00080")", "true", "70000"}));
      if (rng() % 2) m.push_back(R"("protocol":)" + pick({R"("TCP")", R"("UDP")", R"("SCTP")", "null", R"("x")"}));
      if (rng() % 2) m.push_back(R"("name":)" + pick({R"("http")", R"("")", "null", "1"}));
      if (rng() % 4 == 0) m.push_back(R"("appProtocol":)" + pick({R"("h2c")", "null", "{}"}));
      ports += (ports.empty() ? "" : ",") + object(m);
    }
    std::vector<std::string> spec;
    if (rng() % 2)
      spec.push_back(R"("clusterIP":)" + pick({R"("10.0.0.1")", R"("None")", R"("")", "null", R"("x")", R"("fd00::1")"}));
    if (rng() % 2)
      spec.push_back(R"("clusterIPs":)" + pick({R"(["10.0.0.1"])", "[]", "null", R"(["None"])",
                                                R"(["10.0.0.1","fd00::1"])", "[1]", "{}"}));
    if (rng() % 4) spec.push_back(R"("ports":[)" + ports + "]");
    if (rng() % 2)
      spec.push_back(R"("selector":)" + pick({R"({"app":"a"})", "{}", "null", R"({"b":"1","a":"2"})", R"({"a":1})",
                                              R"({"a":"1","a":"2"})"}));
    if (rng() % 2) spec.push_back(R"("type":)" + pick({R"("ClusterIP")", R"("")", "null", R"("NodePort")", "2"}));
    std::vector<std::string> md{R"("name":)" + pick({R"("s")", R"("s")", R"("")", "null"}),
                                R"("namespace":)" + pick({R"("n")", "null", R"("")", "3"}),
                                R"("annotations":)" + pick({"{}", "null", R"({"a":"b"})", R"({"a":1})"}),
                                R"("labels":)" + pick({"{}", "5"})};
    std::vector<std::string> top{R"("kind":"Service")", R"("apiVersion":)" + pick({R"("v1")", R"("v1")", R"("v1")", R"("v2")"}),
                                 R"("metadata":)" + object(md), R"("spec":)" + (rng() % 20 ? object(spec) : pick({"null", "[]"}))};
    std::string t = object(top);
    SCOPED_TRACE(t);
    taken += check_service(t);
  }
  std::printf("%d services, %d taken by the fast path\n", n, taken);
  EXPECT_GT(taken, n / 20);
  EXPECT_LT(taken, n);
}

TEST(FastDecode, GeneratedPodsAgreeWithSlowPath) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    Gen gen(seed);
    int taken = 0, plain = 0, n = 4000;
    for (int i = 0; i < n; i++) {
      bool is_plain = false;
      std::string t = gen.pod(&is_plain);
      SCOPED_TRACE(t);
      const bool fast = check(t);
      taken += fast;
      if (is_plain) {
        plain++;
        EXPECT_TRUE(fast) << "a plain pod declined";
      }
      if (!fast && !is_plain) (void)slow_decode(t);  // (the slow path's own checks)
    }
    std::printf("seed %u: %d pods, %d plain, %d taken by the fast path\n", seed, n, plain, taken);
    // the generator reaches both sides
    EXPECT_GT(plain, n / 4) << "seed " << seed;
    EXPECT_LT(plain, n) << "seed " << seed;
    EXPECT_GE(taken, plain) << "seed " << seed;
  }
}

}  // namespace
}  // namespace envsteer::k8s
