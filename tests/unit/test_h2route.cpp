// SPDX-License-Identifier: Apache-2.0
// HTTP/2 per stream, the routing part (agent/h2route.h): a stream's env from its
// headers, and the kernel's walk over (fake) live maps.
#include <gtest/gtest.h>

#include <cstring>

#include "fake_maps.h"
#include "h2route.h"
#include "model.h"

namespace envsteer {
namespace {

h2::RouteConfig cfg() {
  h2::RouteConfig c;
  c.names = {"x-virtual-env", "x-env"};
  c.baggage_key = "virtual-env";
  return c;
}

TEST(H2Route, HeaderAliasBaggageByRank) {
  auto c = cfg();
  auto e = h2::stream_env({{":method", "POST"}, {"x-virtual-env", " dev.proj1 "}}, c);
  EXPECT_EQ(e.from, h2::EnvFrom::Header);
  EXPECT_EQ(e.env, "dev.proj1");
  // the env header beats an alias and baggage, whatever their order
  e = h2::stream_env({{"baggage", "a=b,virtual-env=dev.b;p=1"}, {"x-env", "dev.a"}, {"X-Virtual-Env", "dev.h"}}, c);
  EXPECT_EQ(e.env, "dev.h");
  e = h2::stream_env({{"baggage", "a=b, virtual-env = dev.b ;p=1"}, {"x-env", "dev.a"}}, c);
  EXPECT_EQ(e.env, "dev.a");
  e = h2::stream_env({{"baggage", "a=b, virtual-env = dev.b ;p=1"}}, c);
  EXPECT_EQ(e.env, "dev.b");
  // the first one of a rank
  e = h2::stream_env({{"x-virtual-env", "dev.1"}, {"x-virtual-env", "dev.2"}}, c);
  EXPECT_EQ(e.env, "dev.1");
  // pseudo-headers are never env headers
  e = h2::stream_env({{":path", "/x"}}, c);
  EXPECT_EQ(e.from, h2::EnvFrom::Absent);
}

TEST(H2Route, InvalidCountsAsAbsentButIsSeen) {
  auto c = cfg();
  auto e = h2::stream_env({{"x-virtual-env", "dev..x"}}, c);
  EXPECT_EQ(e.from, h2::EnvFrom::Invalid);
  EXPECT_TRUE(e.env.empty());
  e = h2::stream_env({{"x-virtual-env", std::string(64, 'a')}}, c);
  EXPECT_EQ(e.from, h2::EnvFrom::Invalid);
  // an invalid primary does not hide a valid alias
  e = h2::stream_env({{"x-virtual-env", "bad value"}, {"x-env", "dev.a"}}, c);
  EXPECT_EQ(e.from, h2::EnvFrom::Header);
  EXPECT_EQ(e.env, "dev.a");
  c.baggage_key = "";
  e = h2::stream_env({{"baggage", "virtual-env=dev.b"}}, c);
  EXPECT_EQ(e.from, h2::EnvFrom::Absent);
}

TEST(H2Route, BaggageMember) {
  EXPECT_EQ(h2::baggage_member("k=v", "k"), "v");
  EXPECT_EQ(h2::baggage_member("a=1,k=v;prop=x", "k"), "v");
  EXPECT_EQ(h2::baggage_member(" k = v ", "k"), "v");
  EXPECT_FALSE(h2::baggage_member("kk=v,ak=v", "k"));
  EXPECT_FALSE(h2::baggage_member("", "k"));
}

// envs: dev(2) <- dev.proj1(3) <- dev.proj1.alice(4); test(5). Service 7 has pods
// in dev and dev.proj1; service 8 only in dev.proj1.
struct Live {
  fake::FakeMaps m;
  void env(uint32_t id, const std::string& name, uint32_t parent, uint16_t depth) {
    es_env e{};
    e.parent_id = parent;
    e.depth = depth;
    e.len = static_cast<uint16_t>(name.size());
    std::memcpy(e.name, name.data(), name.size());
    m.update(maps::MapId::Envs, &id, &e);
    es_env_name n = maps::make_env_name(name);
    m.update(maps::MapId::EnvNames, &n, &id);
  }
  void set(uint32_t svc, uint32_t env, uint32_t count) {
    es_set_key k{svc, env};
    es_set s{count, 0};
    m.update(maps::MapId::Sets, &k, &s);
  }
  Live() {
    env(2, "dev", 0, 0);
    env(3, "dev.proj1", 2, 1);
    env(4, "dev.proj1.alice", 3, 2);
    env(5, "test", 0, 0);
    set(7, 2, 1);
    set(7, 3, 2);
    set(8, 3, 1);
    uint32_t zero = 0;
    es_config c{};
    c.abi_version = ES_ABI_VERSION;
    c.default_env_id = 2;
    m.update(maps::MapId::Config, &zero, &c);
  }
};

TEST(H2Route, WalkLikeTheKernel) {
  Live l;
  auto d = h2::resolve(l.m, 7, "dev.proj1", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_res, 3u);
  EXPECT_EQ(d.outcome, 1u);  // ES_OUT_OWN (bpf/lib/resolve.h: 1 own, 2 fallback, 3 default)
  EXPECT_EQ(d.count, 2u);
  d = h2::resolve(l.m, 7, "dev.proj1.alice", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_res, 3u);
  EXPECT_EQ(d.level, 1u);
  // unknown below a known one: walked segment by segment
  d = h2::resolve(l.m, 7, "dev.proj1.zed.x", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_req, 3u);
  EXPECT_EQ(d.env_res, 3u);
  EXPECT_EQ(d.outcome, 2u);
  EXPECT_EQ(d.level, 2u);
  // no level known at all: the default
  d = h2::resolve(l.m, 7, "nowhere", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_res, 2u);
  // outside the chain: the default environment's pods
  d = h2::resolve(l.m, 7, "test", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_res, 2u);
  EXPECT_EQ(d.outcome, 3u);
  // from the caller's own environment (no header)
  d = h2::resolve(l.m, 7, "", 4, '.');
  EXPECT_EQ(d.env_res, 3u);
  d = h2::resolve(l.m, 7, "", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_res, 2u);
  // no ready pod in the chain nor the default: refused (UNAVAILABLE)
  d = h2::resolve(l.m, 8, "dev", ES_ENV_NONE, '.');
  EXPECT_EQ(d.env_res, uint32_t{ES_ENV_NONE});
  EXPECT_EQ(d.env_req, 2u);
  EXPECT_EQ(h2::env_name(l.m, 4), "dev.proj1.alice");
  EXPECT_EQ(h2::env_name(l.m, 99), "");
}

k8s::Pod pod(const std::string& name, const std::string& ip, const std::string& app, const std::string& env) {
  k8s::Pod p;
  p.ns = "t";
  p.name = name;
  p.pod_ips = {ip};
  p.ready = true;
  p.phase = "Running";
  p.labels = {{"app", app}};
  if (!env.empty()) p.labels["virtual-env"] = env;
  return p;
}

k8s::Service svc(const std::string& name, const std::string& ip, std::vector<k8s::ServicePort> ports) {
  k8s::Service s;
  s.ns = "t";
  s.name = name;
  s.cluster_ips = {ip};
  s.type = "ClusterIP";
  s.selector = {{"app", name}};
  s.has_selector = true;
  s.ports = std::move(ports);
  return s;
}

k8s::ServicePort port(const std::string& name, int32_t p, const std::string& app_protocol = "") {
  k8s::ServicePort sp{name, p, "TCP", p, ""};
  sp.app_protocol = app_protocol;
  return sp;
}

// A declared HTTP/2 port (appProtocol, else an Istio-style port name) and more
// than one backend set: the two flags the connect program needs; they follow the
// pods' labels in the incremental model too.
TEST(H2Model, DeclaredPortsAndMultiSetFlags) {
  k8s::ClusterState cs;
  auto add_svc = [&](const k8s::Service& s) { cs.services[k8s::object_key(s.ns, s.name)] = s; };
  add_svc(svc("g", "10.96.0.1",
              {port("grpc", 50051), port("web", 80, "kubernetes.io/h2c"), port("http", 8080),
               port("grpc-web", 81, "grpc-web"), port("h2c-x", 82), port("grpcx", 83), port("any", 84, "GRPC")}));
  add_svc(svc("one", "10.96.0.2", {port("grpc", 50051)}));
  for (auto& p : {pod("g-dev", "10.0.0.1", "g", "dev"), pod("g-p1", "10.0.0.2", "g", "dev.proj1"),
                  pod("o-dev", "10.0.0.3", "one", "")})
    cs.pods[k8s::object_key(p.ns, p.name)] = p;
  ModelOptions opt;
  opt.default_env = "dev";
  auto d = build_model(cs, opt);
  auto flags = [&](const DesiredState& st, const std::string& ip, uint16_t p) {
    return st.frontends.at(maps::make_frontend_key(ip, p, 6)).flags;
  };
  const uint32_t both = ES_FE_F_H2 | ES_FE_F_MULTI_SET;
  EXPECT_EQ(flags(d, "10.96.0.1", 50051), both);
  EXPECT_EQ(flags(d, "10.96.0.1", 80), both);
  EXPECT_EQ(flags(d, "10.96.0.1", 8080), uint32_t{ES_FE_F_MULTI_SET});
  EXPECT_EQ(flags(d, "10.96.0.1", 81), uint32_t{ES_FE_F_MULTI_SET});  // grpc-web is HTTP/1.1
  EXPECT_EQ(flags(d, "10.96.0.1", 82), both);
  EXPECT_EQ(flags(d, "10.96.0.1", 83), uint32_t{ES_FE_F_MULTI_SET});  // "grpcx" is no grpc-* name
  EXPECT_EQ(flags(d, "10.96.0.1", 84), both);
  EXPECT_EQ(flags(d, "10.96.0.2", 50051), uint32_t{ES_FE_F_H2});  // one backend set: never diverted

  IncrementalModel inc(opt);
  inc.reset(cs);
  EXPECT_EQ(flags(inc.state(), "10.96.0.1", 50051), both);
  auto p1 = cs.pods.at("t/g-p1");
  p1.labels["virtual-env"] = "dev";  // now one set only
  inc.upsert(p1);
  EXPECT_EQ(flags(inc.state(), "10.96.0.1", 50051), uint32_t{ES_FE_F_H2});
  auto delta = inc.take_delta();
  EXPECT_TRUE(delta.all || delta.frontends.count(maps::make_frontend_key("10.96.0.1", 50051, 6)));
  p1.labels["virtual-env"] = "dev.proj2";
  inc.upsert(p1);
  EXPECT_EQ(flags(inc.state(), "10.96.0.1", 50051), both);
}

}  // namespace
}  // namespace envsteer
