// SPDX-License-Identifier: Apache-2.0
// build_model (agent/model.h): Kubernetes objects -> what the maps must say.
// Objects are built by hand with small fluent helpers; results are checked by
// name ("10.96.0.1:80/TCP" -> env -> "10.1.0.1:8080").
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>

#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "fake_maps.h"
#include "model.h"

namespace envsteer::model_test {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// --- object builders -----------------------------------------------------

struct PodB {
  k8s::Pod p;
  PodB(const std::string& ns, const std::string& name, const std::string& ip) {
    p.ns = ns;
    p.name = name;
    p.pod_ips = {ip};
    p.ready = true;
    p.phase = k8s::PodPhase::Running;
  }
  PodB& label(const std::string& k, const std::string& v) {
    p.labels.insert_or_assign(k, v);
    return *this;
  }
  PodB& app(const std::string& v) { return label("app", v); }
  PodB& env(const std::string& v) { return label("virtual-env", v); }
  PodB& ips(std::vector<std::string> v) { p.pod_ips = std::move(v); return *this; }
  PodB& ready(bool r) { p.ready = r; return *this; }
  PodB& terminating() { p.terminating = true; return *this; }
  PodB& port(const std::string& name, int32_t port, k8s::Protocol proto = k8s::Protocol::TCP) {
    p.ports.push_back({name, port, proto});
    return *this;
  }
  PodB& cgroup(const std::string& v, const std::string& ann = "envsteer.io/cgroup") {
    p.annotations.insert_or_assign(ann, v);
    return *this;
  }
};

struct SvcB {
  k8s::Service s;
  SvcB(const std::string& ns, const std::string& name, std::vector<std::string> ips) {
    s.ns = ns;
    s.name = name;
    s.cluster_ips = std::move(ips);
    s.type = "ClusterIP";
  }
  SvcB& select(const std::string& k, const std::string& v) {
    s.selector.insert_or_assign(k, v);
    s.has_selector = true;
    return *this;
  }
  SvcB& port(int32_t port, int32_t target = 0, const std::string& name = "", k8s::Protocol proto = k8s::Protocol::TCP) {
    s.ports.push_back({name, port, proto, target, ""});
    return *this;
  }
  SvcB& named_port(int32_t port, const std::string& target_name, const std::string& name = "",
                   k8s::Protocol proto = k8s::Protocol::TCP) {
    s.ports.push_back({name, port, proto, 0, target_name});
    return *this;
  }
};

struct SliceB {
  k8s::EndpointSlice sl;
  SliceB(const std::string& ns, const std::string& name, const std::string& service,
         const std::string& type = "IPv4") {
    sl.ns = ns;
    sl.name = name;
    sl.service_name = service;
    sl.address_type = type;
  }
  SliceB& port(const std::string& name, int32_t port, k8s::Protocol proto = k8s::Protocol::TCP) {
    sl.ports.push_back({name, port, proto});
    return *this;
  }
  // pod = "" for no targetRef
  SliceB& ep(const std::string& ip, bool ready = true, const std::string& pod = "", const std::string& pod_ns = "") {
    k8s::Endpoint e;
    e.addresses = {ip};
    e.ready = ready;
    if (!pod.empty()) e.target = k8s::ObjectRef{"Pod", pod_ns, pod, ""};
    sl.endpoints.push_back(e);
    return *this;
  }
};

struct Cluster {
  k8s::ClusterState cs;
  Cluster& add(const PodB& b) { cs.pods[k8s::object_key(b.p.ns, b.p.name)] = b.p; return *this; }
  Cluster& add(const SvcB& b) { cs.services[k8s::object_key(b.s.ns, b.s.name)] = b.s; return *this; }
  Cluster& add(const SliceB& b) { cs.slices[k8s::object_key(b.sl.ns, b.sl.name)] = b.sl; return *this; }
};

// --- result helpers ------------------------------------------------------

// Backends of one frontend in one env, as "ip:port", sorted.
std::vector<std::string> backends(const DesiredState& d, const std::string& frontend, const EnvName& env) {
  auto sem = fake::semantics(d);
  auto fe = sem.routing.find(frontend);
  if (fe == sem.routing.end()) return {"<no frontend " + frontend + ">"};
  auto it = fe->second.find(env);
  if (it == fe->second.end()) return {};
  return {it->second.begin(), it->second.end()};
}

// env -> backends of one frontend.
std::map<EnvName, std::set<std::string>> routes(const DesiredState& d, const std::string& frontend) {
  auto sem = fake::semantics(d);
  auto fe = sem.routing.find(frontend);
  if (fe == sem.routing.end()) return {{"<no frontend>", {}}};
  return fe->second;
}

std::vector<std::string> frontends(const DesiredState& d) {
  std::vector<std::string> out;
  for (const auto& [k, spec] : d.frontends) out.push_back(maps::format_frontend(k));
  return out;
}

DesiredState build(const Cluster& c, const ModelOptions& o = {}) { return build_model(c.cs, o); }

// The skipped objects as "Kind ns/name field reason".
std::vector<std::string> skips(const DesiredState& d) {
  std::vector<std::string> out;
  for (const auto& s : d.skipped) out.push_back(s.kind + " " + s.key + " " + s.field + " " + s.reason);
  return out;
}

const Skipped& only_skip(const DesiredState& d) {
  static const Skipped none{"<none>", "", "", "", "", ""};
  EXPECT_EQ(d.skipped.size(), 1u) << ::testing::PrintToString(skips(d));
  return d.skipped.empty() ? none : d.skipped[0];
}

struct FakeCgroups {
  std::map<std::string, std::optional<CgroupInfo>> known;
  std::vector<std::string> asked;

  FakeCgroups& add(const std::string& rel, uint64_t id, int level, bool under_root = true) {
    known[rel] = CgroupInfo{id, level, "/sys/fs/cgroup/" + rel, under_root};
    return *this;
  }

  ModelOptions options() {
    ModelOptions o;
    o.resolve_cgroup = [this](const std::string& rel) -> std::optional<CgroupInfo> {
      asked.push_back(rel);
      if (rel.find("..") != std::string::npos) throw std::invalid_argument("\"" + rel + "\" leaves the cgroup root");
      auto it = known.find(rel);
      return it == known.end() ? std::nullopt : it->second;
    };
    return o;
  }
};

// --- selector membership -------------------------------------------------

TEST(BuildModelSelector, MatchesNamespaceAndAllLabels) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").select("tier", "fe").port(80, 8080))
      .add(PodB("a", "web-1", "10.1.0.1").app("web").label("tier", "fe"))
      .add(PodB("a", "web-2", "10.1.0.2").app("web").label("tier", "fe").label("extra", "x"))
      .add(PodB("a", "web-3", "10.1.0.3").app("web"))                      // missing tier
      .add(PodB("a", "api", "10.1.0.4").app("api").label("tier", "fe"))   // wrong app
      .add(PodB("b", "web-4", "10.1.0.5").app("web").label("tier", "fe"));  // other namespace
  auto d = build(c);
  EXPECT_THAT(frontends(d), ElementsAre("10.96.0.1:80/TCP"));
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080", "10.1.0.2:8080"));
  EXPECT_EQ(routes(d, "10.96.0.1:80/TCP").size(), 1u);
  EXPECT_EQ(d.frontends.begin()->second.service, "a/web");
}

TEST(BuildModelSelector, OnlyReadyNonTerminatingPods) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "ok", "10.1.0.1").app("web"))
      .add(PodB("a", "unready", "10.1.0.2").app("web").ready(false))
      .add(PodB("a", "going", "10.1.0.3").app("web").terminating());
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080"));
}

TEST(BuildModelSelector, NoReadyPodMeansNoSetButTheFrontendStays) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "unready", "10.1.0.2").app("web").env("dev").ready(false));
  auto d = build(c);
  EXPECT_THAT(frontends(d), ElementsAre("10.96.0.1:80/TCP"));
  EXPECT_THAT(d.sets, IsEmpty());
  // the env of an unready pod is still known (its pod may call out)
  EXPECT_THAT(d.envs, ElementsAre("dev"));
}

TEST(BuildModelSelector, ServiceWithoutSelectorOrSlicesHasNoBackends) {
  Cluster c;
  c.add(SvcB("a", "ext", {"10.96.0.9"}).port(80, 8080)).add(PodB("a", "p", "10.1.0.1").app("web"));
  auto d = build(c);
  EXPECT_THAT(frontends(d), ElementsAre("10.96.0.9:80/TCP"));
  EXPECT_THAT(d.sets, IsEmpty());
}

TEST(BuildModelSelector, AllPodIpsOfTheFamily) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "p", "10.1.0.1").app("web").ips({"10.1.0.1", "10.1.0.11"}));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), UnorderedElementsAre("10.1.0.1:8080", "10.1.0.11:8080"));
}

// --- ports ---------------------------------------------------------------

TEST(BuildModelPorts, NamedTargetPortResolvedPerPod) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").named_port(80, "http", "web"))
      .add(PodB("a", "p1", "10.1.0.1").app("web").port("metrics", 9100).port("http", 8080))
      .add(PodB("a", "p2", "10.1.0.2").app("web").port("http", 9090))
      .add(PodB("a", "p3", "10.1.0.3").app("web").port("metrics", 9100));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080", "10.1.0.2:9090"));
  ASSERT_EQ(d.warnings.size(), 1u);
  EXPECT_THAT(d.warnings[0], AllOf(HasSubstr("a/p3"), HasSubstr("\"http\""), HasSubstr("a/web")));
}

TEST(BuildModelPorts, NamedTargetPortMustMatchTheProtocol) {
  Cluster c;
  c.add(SvcB("a", "dns", {"10.96.0.10"}).select("app", "dns").named_port(53, "dns", "dns", k8s::Protocol::UDP))
      .add(PodB("a", "udp", "10.1.0.1").app("dns").port("dns", 5353, k8s::Protocol::UDP))
      .add(PodB("a", "tcp-only", "10.1.0.2").app("dns").port("dns", 5354, k8s::Protocol::TCP));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.10:53/UDP", ""), ElementsAre("10.1.0.1:5353"));
  EXPECT_THAT(d.warnings, Contains(HasSubstr("a/tcp-only")));
}

TEST(BuildModelPorts, NumericAndAbsentTargetPort) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080, "http").port(443, 0, "https"))
      .add(PodB("a", "p1", "10.1.0.1").app("web"));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080"));
  // no targetPort: the service port itself (Kubernetes default)
  EXPECT_THAT(backends(d, "10.96.0.1:443/TCP", ""), ElementsAre("10.1.0.1:443"));
  EXPECT_THAT(d.warnings, IsEmpty());
}

TEST(BuildModelPorts, UdpPort) {
  Cluster c;
  c.add(SvcB("a", "dns", {"10.96.0.10"}).select("app", "dns").port(53, 5353, "dns", k8s::Protocol::UDP).port(53, 5353, "dns-tcp"))
      .add(PodB("a", "p1", "10.1.0.1").app("dns"));
  auto d = build(c);
  EXPECT_THAT(frontends(d), UnorderedElementsAre("10.96.0.10:53/UDP", "10.96.0.10:53/TCP"));
  EXPECT_THAT(backends(d, "10.96.0.10:53/UDP", ""), ElementsAre("10.1.0.1:5353"));
  for (const auto& [k, spec] : d.frontends) {
    if (spec.port_name == "dns") EXPECT_EQ(k.proto, IPPROTO_UDP);
    else EXPECT_EQ(k.proto, IPPROTO_TCP);
  }
}

TEST(BuildModelPorts, SctpSkippedWithWarning) {
  Cluster c;
  c.add(SvcB("a", "mix", {"10.96.0.1"}).select("app", "x").port(80, 8080, "http").port(9, 9, "sig", k8s::Protocol::SCTP))
      .add(PodB("a", "p1", "10.1.0.1").app("x"));
  auto d = build(c);
  EXPECT_THAT(frontends(d), ElementsAre("10.96.0.1:80/TCP"));
  ASSERT_EQ(d.warnings.size(), 1u);
  EXPECT_THAT(d.warnings[0], AllOf(HasSubstr("a/mix"), HasSubstr("spec.ports[1]"), HasSubstr("SCTP")));
}

TEST(BuildModelPorts, DualStackKeepsFamiliesApart) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1", "fd00::1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "p1", "10.1.0.1").app("web").ips({"10.1.0.1", "fd01::1"}))
      .add(PodB("a", "v6only", "fd01::2").app("web"))
      .add(PodB("a", "v4only", "10.1.0.3").app("web"));
  auto d = build(c);
  EXPECT_THAT(frontends(d), UnorderedElementsAre("10.96.0.1:80/TCP", "[fd00::1]:80/TCP"));
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080", "10.1.0.3:8080"));
  EXPECT_THAT(backends(d, "[fd00::1]:80/TCP", ""), ElementsAre("[fd01::1]:8080", "[fd01::2]:8080"));
}

// Two Services on one address: the later one by key order is skipped whole (every
// port), named with the field and the Service it collides with; the rest applies.
TEST(BuildModelPorts, DuplicateServiceAddressSkipsTheLaterServiceWhole) {
  Cluster c;
  c.add(SvcB("a", "one", {"10.96.0.1"}).port(80, 8080).select("app", "one"))
      .add(SvcB("b", "two", {"10.96.0.1"}).port(443, 9443).port(80, 9090).select("app", "two"))
      .add(SvcB("c", "three", {"10.96.0.3"}).port(80, 8080).select("app", "three"))
      .add(PodB("a", "one-1", "10.1.0.1").app("one"))
      .add(PodB("c", "three-1", "10.1.0.3").app("three"));
  auto d = build(c);
  EXPECT_THAT(frontends(d), ElementsAre("10.96.0.1:80/TCP", "10.96.0.3:80/TCP"));  // not b/two's :443
  EXPECT_EQ(d.frontends.begin()->second.service, "a/one");
  EXPECT_THAT(backends(d, "10.96.0.3:80/TCP", ""), ElementsAre("10.1.0.3:8080"));
  const auto& s = only_skip(d);
  EXPECT_EQ(s.kind, "Service");
  EXPECT_EQ(s.key, "b/two");
  EXPECT_EQ(s.field, "spec.ports[1]");
  EXPECT_EQ(s.reason, skip_reason::kAddressInUse);
  EXPECT_THAT(s.message, AllOf(HasSubstr("Service b/two"), HasSubstr("a/one"), HasSubstr("10.96.0.1:80/TCP")));
  // the same whichever order the source delivered them in (maps are keyed): rebuilding is stable
  EXPECT_EQ(build(c).skipped, d.skipped);
}

TEST(BuildModelPorts, OneServiceUsingAnAddressTwiceIsSkipped) {
  Cluster c;
  c.add(SvcB("a", "twice", {"10.96.0.1"}).port(80, 8080, "a").port(80, 9090, "b"));
  auto d = build(c);
  EXPECT_THAT(d.frontends, IsEmpty());
  EXPECT_THAT(skips(d), ElementsAre("Service a/twice spec.ports[1] address_in_use"));
}

TEST(BuildModelPorts, SameAddressOtherPortOrProtocolIsFine) {
  Cluster c;
  c.add(SvcB("a", "one", {"10.96.0.1"}).port(80, 8080))
      .add(SvcB("a", "two", {"10.96.0.1"}).port(81, 8080))
      .add(SvcB("a", "three", {"10.96.0.1"}).port(80, 8080, "", k8s::Protocol::UDP));
  auto d = build(c);
  EXPECT_EQ(d.frontends.size(), 3u);
}

TEST(BuildModelPorts, InvalidClusterIpSkipsTheServiceOnly) {
  Cluster c;
  c.add(SvcB("a", "bad", {"10.96.0.2", "10.96.0.300"}).port(80, 8080))
      .add(SvcB("a", "good", {"10.96.0.1"}).port(80, 8080));
  auto d = build(c);
  EXPECT_THAT(frontends(d), ElementsAre("10.96.0.1:80/TCP"));  // none of a/bad's, not even its good IP
  const auto& s = only_skip(d);
  EXPECT_EQ(s.reason, skip_reason::kInvalidAddress);
  EXPECT_EQ(s.field, "spec.clusterIPs");
  EXPECT_THAT(s.message, AllOf(HasSubstr("a/bad"), HasSubstr("spec.clusterIPs"), HasSubstr("10.96.0.300")));
}

// A skipped Service does not hold its addresses: a later Service on one of them is fine.
TEST(BuildModelPorts, ASkippedServiceClaimsNoAddress) {
  Cluster c;
  c.add(SvcB("a", "bad", {"10.96.0.1", "nonsense"}).port(80, 8080))
      .add(SvcB("b", "good", {"10.96.0.1"}).port(80, 8080));
  auto d = build(c);
  ASSERT_EQ(d.frontends.size(), 1u);
  EXPECT_EQ(d.frontends.begin()->second.service, "b/good");
  EXPECT_THAT(skips(d), ElementsAre("Service a/bad spec.clusterIPs invalid_address"));
}

// --- environments --------------------------------------------------------

TEST(BuildModelEnvs, PodsGroupedByEnvLabel) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "base", "10.1.0.1").app("web"))
      .add(PodB("a", "dev", "10.1.0.2").app("web").env("dev"))
      .add(PodB("a", "proj1-a", "10.1.0.3").app("web").env("dev.proj1"))
      .add(PodB("a", "proj1-b", "10.1.0.4").app("web").env("dev.proj1"))
      .add(PodB("a", "empty-label", "10.1.0.5").app("web").env(""));
  auto d = build(c);
  auto r = routes(d, "10.96.0.1:80/TCP");
  EXPECT_EQ(r.size(), 3u);
  EXPECT_THAT(r[""], UnorderedElementsAre("10.1.0.1:8080", "10.1.0.5:8080"));
  EXPECT_THAT(r["dev"], UnorderedElementsAre("10.1.0.2:8080"));
  EXPECT_THAT(r["dev.proj1"], UnorderedElementsAre("10.1.0.3:8080", "10.1.0.4:8080"));
  EXPECT_EQ(d.default_env, "");
  EXPECT_EQ(d.pod_envs.at("a/base"), (PodEnv{"", false}));
  EXPECT_EQ(d.pod_envs.at("a/empty-label"), (PodEnv{"", false}));  // an empty label is no label
  EXPECT_EQ(d.pod_envs.at("a/proj1-b"), (PodEnv{"dev.proj1", true}));
  EXPECT_EQ(d.pod_envs.size(), 5u);
}

TEST(BuildModelEnvs, UnlabelledPodsJoinTheDefaultEnv) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "base", "10.1.0.1").app("web"))
      .add(PodB("a", "dev", "10.1.0.2").app("web").env("dev"));
  ModelOptions o;
  o.default_env = "dev";
  auto d = build(c, o);
  auto r = routes(d, "10.96.0.1:80/TCP");
  EXPECT_EQ(r.size(), 1u);
  EXPECT_THAT(r["dev"], UnorderedElementsAre("10.1.0.1:8080", "10.1.0.2:8080"));
  EXPECT_EQ(d.default_env, "dev");
  EXPECT_EQ(d.pod_envs.at("a/base"), (PodEnv{"dev", false}));
  EXPECT_EQ(d.pod_envs.at("a/dev"), (PodEnv{"dev", true}));
}

TEST(BuildModelEnvs, EnvsIncludeAncestorsAndTheDefaultEnv) {
  Cluster c;
  c.add(PodB("a", "alice", "10.1.0.1").env("dev.proj1.alice"))
      .add(PodB("a", "bob", "10.1.0.2").env("team-b.x").ready(false))
      .add(PodB("a", "plain", "10.1.0.3"));
  ModelOptions o;
  o.default_env = "qa.main";
  auto d = build(c, o);
  EXPECT_THAT(d.envs, ElementsAre("dev", "dev.proj1", "dev.proj1.alice", "qa", "qa.main", "team-b", "team-b.x"));
}

TEST(BuildModelEnvs, NoNamedEnvForTheBase) {
  Cluster c;
  c.add(PodB("a", "plain", "10.1.0.3"));
  auto d = build(c);
  EXPECT_THAT(d.envs, IsEmpty());
}

TEST(BuildModelEnvs, CustomLabelAndSplitter) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "p", "10.1.0.1").app("web").label("env", "dev-proj1").env("ignored"));
  ModelOptions o;
  o.env_label = "env";
  o.splitter = '-';
  auto d = build(c, o);
  EXPECT_THAT(d.envs, ElementsAre("dev", "dev-proj1"));
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", "dev-proj1"), ElementsAre("10.1.0.1:8080"));
}

// A pod whose env label is a legal label value but no env name ("dev..x") is skipped:
// reported with the field, never a backend of any env (not even the default's), not
// local; every other pod and service is built.
TEST(BuildModelEnvs, InvalidEnvLabelSkipsThePodOnly) {
  for (const std::string& bad : std::vector<std::string>{"dev..x", "-dev", "dev x", std::string(64, 'a')}) {
    FakeCgroups cg;
    cg.add("pods/bad", 1002, 2).add("pods/good", 1001, 2);
    Cluster c;
    c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
        .add(SvcB("a", "api", {"10.96.0.2"}).port(80, 8080, "http"))
        .add(SliceB("a", "api-x", "api").port("http", 8080).ep("10.1.0.2", true, "bad").ep("10.1.0.1", true, "good"))
        .add(PodB("a", "good", "10.1.0.1").app("web").env("dev").cgroup("pods/good"))
        .add(PodB("a", "bad", "10.1.0.2").app("web").env(bad).cgroup("pods/bad"));
    auto o = cg.options();
    o.default_env = "dev";
    auto d = build(c, o);
    const std::map<EnvName, std::set<std::string>> only_good{{"dev", {"10.1.0.1:8080"}}};
    EXPECT_EQ(routes(d, "10.96.0.1:80/TCP"), only_good) << bad;  // by selector
    EXPECT_EQ(routes(d, "10.96.0.2:80/TCP"), only_good) << bad;  // by EndpointSlice
    EXPECT_EQ(d.pod_envs.count("a/bad"), 0u);
    ASSERT_EQ(d.pods.size(), 1u);
    EXPECT_EQ(d.pods.begin()->second.pod, "a/good");
    const auto& s = only_skip(d);
    EXPECT_EQ(s.kind, "Pod");
    EXPECT_EQ(s.key, "a/bad");
    EXPECT_EQ(s.field, "metadata.labels.virtual-env");
    EXPECT_EQ(s.reason, skip_reason::kInvalidEnv);
    EXPECT_THAT(s.message, AllOf(HasSubstr("Pod a/bad"), HasSubstr("metadata.labels.virtual-env"))) << bad;
  }
  Cluster c;
  c.add(PodB("a", "bad", "10.1.0.2").label("env", "dev--x"));
  ModelOptions o;
  o.env_label = "env";
  o.splitter = '-';
  EXPECT_THAT(skips(build(c, o)), ElementsAre("Pod a/bad metadata.labels.env invalid_env"));
}

// --- EndpointSlices ------------------------------------------------------

TEST(BuildModelSlices, SlicesWinOverTheSelector) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080, "http"))
      .add(PodB("a", "by-selector", "10.1.0.1").app("web").env("dev"))
      .add(PodB("a", "qa-pod", "10.1.0.9").env("qa"))
      .add(SliceB("a", "web-abc", "web")
               .port("metrics", 9000)
               .port("http", 8443)
               .ep("10.1.0.9", true, "qa-pod")     // known pod: its env
               .ep("10.1.0.8", false, "qa-pod")    // not ready: excluded
               .ep("10.1.0.7")                     // no targetRef: default env
               .ep("10.1.0.6", true, "ghost"));    // unknown pod: default env
  auto d = build(c);
  auto r = routes(d, "10.96.0.1:80/TCP");
  EXPECT_EQ(r.size(), 2u);
  EXPECT_THAT(r["qa"], UnorderedElementsAre("10.1.0.9:8443"));
  EXPECT_THAT(r[""], UnorderedElementsAre("10.1.0.6:8443", "10.1.0.7:8443"));
}

// The Kubernetes source: EndpointSlices are the only membership (only labelled pods are
// watched cluster-wide, so a selector would see a partial set).
TEST(BuildModelSlices, WithoutSelectorFallbackOnlySlicesCount) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080, "http"))
      .add(PodB("a", "by-selector", "10.1.0.1").app("web").env("dev"));
  ModelOptions o;
  o.selector_fallback = false;
  EXPECT_TRUE(routes(build(c, o), "10.96.0.1:80/TCP").empty());
  o.selector_fallback = true;
  EXPECT_EQ(routes(build(c, o), "10.96.0.1:80/TCP").size(), 1u);
}

TEST(BuildModelSlices, UnknownPodGoesToTheConfiguredDefaultEnv) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).port(80, 8080, "http"))
      .add(SliceB("a", "web-abc", "web").port("http", 8080).ep("10.1.0.6", true, "ghost").ep("10.1.0.7"));
  ModelOptions o;
  o.default_env = "dev";
  auto d = build(c, o);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", "dev"), ElementsAre("10.1.0.6:8080", "10.1.0.7:8080"));
}

TEST(BuildModelSlices, TargetRefNamespaceDefaultsToTheSlices) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).port(80, 8080, "http"))
      .add(PodB("a", "p", "10.1.0.9").env("dev"))
      .add(PodB("b", "p", "10.1.0.8").env("qa"))
      .add(SliceB("a", "web-abc", "web").port("http", 8080).ep("10.1.0.9", true, "p").ep("10.1.0.8", true, "p", "b"));
  auto d = build(c);
  auto r = routes(d, "10.96.0.1:80/TCP");
  EXPECT_THAT(r["dev"], UnorderedElementsAre("10.1.0.9:8080"));
  EXPECT_THAT(r["qa"], UnorderedElementsAre("10.1.0.8:8080"));
}

TEST(BuildModelSlices, PortMatchedByNameAndProtocol) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).port(80, 8080, "http").port(53, 53, "dns", k8s::Protocol::UDP).port(81, 81, "nomatch"))
      .add(SliceB("a", "web-abc", "web").port("http", 8443).port("dns", 5353, k8s::Protocol::UDP).ep("10.1.0.9"));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.9:8443"));
  EXPECT_THAT(backends(d, "10.96.0.1:53/UDP", ""), ElementsAre("10.1.0.9:5353"));
  // a port the slice does not list has no backends, even though the service
  // has slices (the selector is not consulted)
  EXPECT_THAT(backends(d, "10.96.0.1:81/TCP", ""), IsEmpty());
}

TEST(BuildModelSlices, SlicesOfOtherServicesOrNamespacesIgnored) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080, "http"))
      .add(PodB("a", "p", "10.1.0.1").app("web"))
      .add(SliceB("b", "web-x", "web").port("http", 9999).ep("10.1.0.50"))
      .add(SliceB("a", "api-x", "api").port("http", 9999).ep("10.1.0.51"));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080"));
}

TEST(BuildModelSlices, SeveralSlicesMergedAndDeduplicated) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1", "fd00::1"}).port(80, 8080, "http"))
      .add(SliceB("a", "web-1", "web").port("http", 8080).ep("10.1.0.2").ep("10.1.0.1"))
      .add(SliceB("a", "web-2", "web").port("http", 8080).ep("10.1.0.1"))
      .add(SliceB("a", "web-6", "web", "IPv6").port("http", 8080).ep("fd01::1"))
      .add(SliceB("a", "web-fqdn", "web", "FQDN").port("http", 8080).ep("example.org"));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080", "10.1.0.2:8080"));
  EXPECT_THAT(backends(d, "[fd00::1]:80/TCP", ""), ElementsAre("[fd01::1]:8080"));
  // DesiredState.sets: sorted, no duplicate
  for (const auto& [name, bes] : d.sets) {
    for (size_t i = 1; i < bes.size(); i++) EXPECT_TRUE(bes[i - 1] < bes[i]);
  }
}

// --- local pods ----------------------------------------------------------

TEST(BuildModelLocalPods, ResolvedCgroupMakesAPodLocal) {
  FakeCgroups cg;
  cg.add("pods/alice", 1001, 3).add("pods/plain", 1002, 2);
  Cluster c;
  c.add(PodB("a", "alice", "10.1.0.1").env("dev.alice").cgroup("pods/alice"))
      .add(PodB("a", "plain", "10.1.0.2").cgroup("pods/plain"))
      .add(PodB("a", "remote", "10.1.0.3").env("dev"));  // no annotation: another node's pod
  auto d = build(c, cg.options());
  ASSERT_EQ(d.pods.size(), 2u);
  const auto& alice = d.pods.at(1001);
  EXPECT_EQ(alice.pod, "a/alice");
  EXPECT_EQ(alice.env, "dev.alice");
  EXPECT_EQ(alice.level, 3);
  EXPECT_EQ(alice.cgroup, "/sys/fs/cgroup/pods/alice");
  EXPECT_EQ(d.pods.at(1002).env, "");
  EXPECT_EQ(d.pods.at(1002).level, 2);
  EXPECT_THAT(cg.asked, UnorderedElementsAre("pods/alice", "pods/plain"));
  EXPECT_THAT(d.warnings, IsEmpty());
}

// A missing cgroup is no error of the pod (the kubelet creates it later): a warning, and
// a structured entry the agent rescans for (no message wording involved).
TEST(BuildModelLocalPods, MissingCgroupIsAStructuredWarning) {
  FakeCgroups cg;
  Cluster c;
  c.add(PodB("a", "later", "10.1.0.1").env("dev").cgroup("pods/later"))
      .add(PodB("a", "early", "10.1.0.2").env("dev").cgroup("pods/early"));
  auto d = build(c, cg.options());
  EXPECT_THAT(d.pods, IsEmpty());
  EXPECT_THAT(d.missing_cgroups, ElementsAre(MissingCgroup{"a/early", "pods/early"}, MissingCgroup{"a/later", "pods/later"}));
  ASSERT_EQ(d.warnings.size(), 2u);
  EXPECT_THAT(d.warnings, Contains(AllOf(HasSubstr("a/later"), HasSubstr("pods/later"))));
  EXPECT_THAT(d.skipped, IsEmpty());
  EXPECT_EQ(d.pod_envs.at("a/later").env, "dev");  // still a pod of the cluster
  cg.add("pods/later", 1001, 2);
  d = build(c, cg.options());
  EXPECT_THAT(d.missing_cgroups, ElementsAre(MissingCgroup{"a/early", "pods/early"}));
}

TEST(BuildModelLocalPods, CgroupOutsideTheRootIsSkipped) {
  FakeCgroups cg;
  cg.add("elsewhere/p", 1001, 2, /*under_root=*/false);
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).select("app", "web").port(80, 8080))
      .add(PodB("a", "p", "10.1.0.1").app("web").cgroup("elsewhere/p"));
  auto d = build(c, cg.options());
  EXPECT_THAT(d.pods, IsEmpty());
  const auto& s = only_skip(d);
  EXPECT_EQ(s.reason, skip_reason::kCgroupOutsideRoot);
  EXPECT_EQ(s.field, "metadata.annotations.envsteer.io/cgroup");
  EXPECT_THAT(s.message, AllOf(HasSubstr("a/p"), HasSubstr("not inside")));
  // only its cgroup is refused: it is still a backend
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080"));
}

TEST(BuildModelLocalPods, AnnotationOutsideTheMountIsSkipped) {
  FakeCgroups cg;
  cg.add("pods/good", 1001, 2);
  Cluster c;
  c.add(PodB("a", "evil", "10.1.0.1").cgroup("../../etc")).add(PodB("a", "good", "10.1.0.2").cgroup("pods/good"));
  auto d = build(c, cg.options());
  ASSERT_EQ(d.pods.size(), 1u);
  EXPECT_EQ(d.pods.at(1001).pod, "a/good");
  const auto& s = only_skip(d);
  EXPECT_EQ(s.key, "a/evil");
  EXPECT_EQ(s.reason, skip_reason::kInvalidCgroup);
  EXPECT_THAT(s.message, AllOf(HasSubstr("a/evil"), HasSubstr("metadata.annotations.envsteer.io/cgroup"),
                               HasSubstr("leaves the cgroup root")));
  EXPECT_EQ(d.pod_envs.count("a/evil"), 1u);
}

// One cgroup, two pods: the later by key order is skipped, the first stays local.
TEST(BuildModelLocalPods, TwoPodsInOneCgroupSkipsTheLaterOne) {
  FakeCgroups cg;
  cg.add("pods/shared", 1001, 2).add("pods/other", 1002, 2);
  Cluster c;
  c.add(PodB("a", "one", "10.1.0.1").env("dev").cgroup("pods/shared"))
      .add(PodB("a", "two", "10.1.0.2").env("dev.x").cgroup("pods/shared"))
      .add(PodB("a", "three", "10.1.0.3").cgroup("pods/other"));
  auto d = build(c, cg.options());
  ASSERT_EQ(d.pods.size(), 2u);
  EXPECT_EQ(d.pods.at(1001).pod, "a/one");
  EXPECT_EQ(d.pods.at(1001).env, "dev");
  EXPECT_EQ(d.pods.at(1002).pod, "a/three");
  const auto& s = only_skip(d);
  EXPECT_EQ(s.key, "a/two");
  EXPECT_EQ(s.reason, skip_reason::kCgroupShared);
  EXPECT_THAT(s.message, AllOf(HasSubstr("a/one"), HasSubstr("a/two"), HasSubstr("metadata.annotations.envsteer.io/cgroup")));
}

// A pod claiming a parent slice of another pod's cgroup would take every other process
// below it: skipped; the inner pod stays local. Siblings sharing a name prefix are fine.
TEST(BuildModelLocalPods, ACgroupHoldingAnotherPodsCgroupIsSkipped) {
  FakeCgroups cg;
  cg.add("kubepods", 1000, 1).add("kubepods/pod-a", 1001, 2).add("kubepods/pod-a-2", 1002, 2);
  Cluster c;
  c.add(PodB("a", "slice", "10.1.0.9").env("dev.evil").cgroup("kubepods"))
      .add(PodB("a", "pa", "10.1.0.1").cgroup("kubepods/pod-a"))
      .add(PodB("a", "pa2", "10.1.0.2").cgroup("kubepods/pod-a-2"));
  auto d = build(c, cg.options());
  EXPECT_EQ(d.pods.size(), 2u);
  EXPECT_EQ(d.pods.count(1000), 0u);
  const auto& s = only_skip(d);
  EXPECT_EQ(s.key, "a/slice");
  EXPECT_EQ(s.reason, skip_reason::kCgroupShared);
  EXPECT_THAT(s.message, HasSubstr("holds the cgroup of Pod a/pa"));
}

// --kubernetes: a pod's cgroup comes only from the agent's discovery; the annotation
// neither adds a pod nor moves one (it could name a parent slice, or any node's pod).
TEST(BuildModelLocalPods, DiscoveredCgroupsIgnoreTheAnnotation) {
  FakeCgroups cg;
  cg.add("kubepods/pod-a", 1001, 2).add("kubepods", 1000, 1).add("kubepods/pod-r", 1003, 2);
  Cluster c;
  c.add(PodB("a", "local", "10.1.0.1").env("dev").cgroup("kubepods"))         // claims the parent slice
      .add(PodB("a", "remote", "10.1.0.2").env("dev.x").cgroup("kubepods/pod-r"))  // another node's pod
      .add(PodB("a", "late", "10.1.0.3").env("dev"));                           // cgroup not created yet
  auto o = cg.options();
  o.cgroup_source = CgroupSource::Discovered;
  o.discovered_cgroups = {{"a/local", "kubepods/pod-a"}, {"a/late", ""}};
  auto d = build(c, o);
  ASSERT_EQ(d.pods.size(), 1u);
  EXPECT_EQ(d.pods.at(1001).pod, "a/local");
  EXPECT_THAT(cg.asked, ElementsAre("kubepods/pod-a"));
  EXPECT_THAT(d.missing_cgroups, ElementsAre(MissingCgroup{"a/late", ""}));
  EXPECT_THAT(d.warnings, Contains(AllOf(HasSubstr("a/local"), HasSubstr("ignored"))));
  EXPECT_THAT(d.skipped, IsEmpty());
}

TEST(BuildModelLocalPods, DiscoveredCgroupsAreValidatedToo) {
  FakeCgroups cg;
  cg.add("kubepods/pod-a", 1001, 2, /*under_root=*/false);
  Cluster c;
  c.add(PodB("a", "p", "10.1.0.1").env("dev"));
  auto o = cg.options();
  o.cgroup_source = CgroupSource::Discovered;
  o.discovered_cgroups = {{"a/p", "kubepods/pod-a"}};
  auto d = build(c, o);
  EXPECT_THAT(d.pods, IsEmpty());
  EXPECT_THAT(skips(d), ElementsAre("Pod a/p metadata.uid cgroup_outside_root"));
}

TEST(BuildModelLocalPods, CustomAnnotationAndNoResolver) {
  FakeCgroups cg;
  cg.add("pods/p", 1001, 2);
  Cluster c;
  c.add(PodB("a", "p", "10.1.0.1").cgroup("pods/p", "example.com/cg"));
  auto o = cg.options();
  EXPECT_THAT(build(c, o).pods, IsEmpty());  // default annotation name: not there
  o.cgroup_annotation = "example.com/cg";
  EXPECT_EQ(build(c, o).pods.size(), 1u);
  o.resolve_cgroup = nullptr;  // e.g. explain without a host: nothing is local
  EXPECT_THAT(build(c, o).pods, IsEmpty());
}

// --- skipped objects -----------------------------------------------------

// An endpoint address that does not parse is left out (named by slice and field); the
// slice's other endpoints stay.
TEST(BuildModelSkipped, InvalidEndpointAddressIsSkippedAlone) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).port(80, 8080, "http"))
      .add(SliceB("a", "web-abc", "web").port("http", 8080).ep("10.1.0.1").ep("10.1.0.999"));
  auto d = build(c);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", ""), ElementsAre("10.1.0.1:8080"));
  const auto& s = only_skip(d);
  EXPECT_EQ(s.kind, "EndpointSlice");
  EXPECT_EQ(s.key, "a/web-abc");
  EXPECT_EQ(s.field, "endpoints[1].addresses[0]");
  EXPECT_EQ(s.reason, skip_reason::kInvalidAddress);
}

// Objects the source could not decode are reported; an undecodable pod's endpoints are
// no backend (its env is unknown: it must not serve the default env).
TEST(BuildModelSkipped, UndecodableObjectsAreReportedAndTheirPodsAreNoBackend) {
  Cluster c;
  c.add(SvcB("a", "web", {"10.96.0.1"}).port(80, 8080, "http"))
      .add(PodB("a", "ok", "10.1.0.1").env("dev"))
      .add(SliceB("a", "web-abc", "web").port("http", 8080).ep("10.1.0.1", true, "ok").ep("10.1.0.2", true, "mangled"));
  c.cs.invalid.push_back({"Pod", "a/mangled", "u-1", "spec.containers: must be an array"});
  c.cs.invalid.push_back({"Service", "a/odd", "u-2", "spec.ports[0].port: out of range"});
  ModelOptions o;
  o.default_env = "dev";
  auto d = build(c, o);
  EXPECT_THAT(backends(d, "10.96.0.1:80/TCP", "dev"), ElementsAre("10.1.0.1:8080"));
  EXPECT_THAT(skips(d), ElementsAre("Pod a/mangled  invalid_object", "Service a/odd  invalid_object"));
  EXPECT_EQ(d.skipped[0].uid, "u-1");
  EXPECT_THAT(d.skipped[0].message, AllOf(HasSubstr("Pod a/mangled"), HasSubstr("spec.containers")));
}

// Many bad objects at once: each is reported once, sorted, and nothing good is lost.
TEST(BuildModelSkipped, EveryBadObjectReportedOnceInOrder) {
  FakeCgroups cg;
  cg.add("pods/good", 1001, 2).add("pods/shared", 1002, 2);
  Cluster c;
  c.add(SvcB("z", "dup", {"10.96.0.1", "fd00::1"}).port(80, 8080).port(81, 8080))
      .add(SvcB("a", "web", {"10.96.0.1", "fd00::1"}).port(80, 8080).port(81, 8080).select("app", "web"))
      .add(PodB("b", "bad", "10.1.0.2").app("web").env("a..b"))
      .add(PodB("a", "good", "10.1.0.1").app("web").env("dev").cgroup("pods/good"))
      .add(PodB("a", "s1", "10.1.0.3").app("web").cgroup("pods/shared"))
      .add(PodB("a", "s2", "10.1.0.4").app("web").cgroup("pods/shared"));
  auto d = build(c, cg.options());
  EXPECT_THAT(skips(d), ElementsAre("Pod a/s2 metadata.annotations.envsteer.io/cgroup cgroup_shared",
                                    "Pod b/bad metadata.labels.virtual-env invalid_env",
                                    "Service z/dup spec.ports[0] address_in_use"));
  EXPECT_EQ(d.frontends.size(), 4u);
  EXPECT_THAT(backends(d, "10.96.0.1:81/TCP", "dev"), ElementsAre("10.1.0.1:8080"));
  EXPECT_EQ(d.pods.size(), 2u);
}

}  // namespace
}  // namespace envsteer::model_test
