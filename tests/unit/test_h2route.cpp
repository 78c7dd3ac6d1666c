// SPDX-License-Identifier: Apache-2.0
// HTTP/2 per stream, the routing part (agent/h2route.h): a stream's env from its
// headers, and the kernel's walk over (fake) live maps.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <cstring>
#include <stdexcept>

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
  p.phase = k8s::PodPhase::Running;
  p.labels = {{"app", app}};
  if (!env.empty()) p.labels.insert_or_assign("virtual-env", env);
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
  k8s::ServicePort sp{name, p, k8s::Protocol::TCP, p, ""};
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
  p1.labels.insert_or_assign("virtual-env", "dev");  // now one set only
  inc.upsert(p1);
  EXPECT_EQ(flags(inc.state(), "10.96.0.1", 50051), uint32_t{ES_FE_F_H2});
  auto delta = inc.take_delta();
  EXPECT_TRUE(delta.all || delta.frontends.count(maps::make_frontend_key("10.96.0.1", 50051, 6)));
  p1.labels.insert_or_assign("virtual-env", "dev.proj2");
  inc.upsert(p1);
  EXPECT_EQ(flags(inc.state(), "10.96.0.1", 50051), both);
}

TEST(H2Upgrade, ClassifiesTheFirstBytes) {
  EXPECT_EQ(h2::classify_opening(""), h2::Opening::Need);
  EXPECT_EQ(h2::classify_opening("PRI * HTTP/2.0\r\n"), h2::Opening::Need);
  EXPECT_EQ(h2::classify_opening("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"), h2::Opening::Preface);
  EXPECT_EQ(h2::classify_opening("PRI"), h2::Opening::Need);
  EXPECT_EQ(h2::classify_opening("GET"), h2::Opening::Need);
  EXPECT_EQ(h2::classify_opening("GET / HTTP/1.1\r\n"), h2::Opening::Http1);
  EXPECT_EQ(h2::classify_opening("PRIX / HTTP/1.1"), h2::Opening::Http1);
  EXPECT_EQ(h2::classify_opening(" GET"), h2::Opening::Garbage);
  EXPECT_EQ(h2::classify_opening(std::string("\x16\x03\x01", 3)), h2::Opening::Garbage);  // TLS
  EXPECT_EQ(h2::classify_opening(std::string(40, 'A')), h2::Opening::Garbage);
}

TEST(H2Upgrade, Base64url) {
  EXPECT_EQ(*h2::base64url_decode("AAMAAABkAAQCAAAAAAIAAAAA"),
            std::string("\x00\x03\x00\x00\x00\x64\x00\x04\x02\x00\x00\x00\x00\x02\x00\x00\x00\x00", 18));
  EXPECT_EQ(*h2::base64url_decode("-_8"), std::string("\xfb\xff", 2));
  EXPECT_EQ(*h2::base64url_decode(""), "");
  EXPECT_FALSE(h2::base64url_decode("AA AA"));
}

TEST(H2Upgrade, ParsesTheUpgradeRequest) {
  // what curl --http2 sends
  std::string req =
      "GET /x?y=1 HTTP/1.1\r\nHost: 10.96.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
      "X-Virtual-Env: dev.proj1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
      "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0";
  auto r = h2::parse_http1_request(req);
  ASSERT_TRUE(r.complete && r.valid);
  EXPECT_TRUE(r.upgrade_h2c);
  EXPECT_EQ(r.settings.size(), 18u);
  EXPECT_FALSE(r.has_body);
  EXPECT_EQ(r.head_len, req.find("PRI"));
  auto h = h2::upgrade_stream_headers(r);
  h2::Headers want{{":method", "GET"},        {":scheme", "http"},          {":authority", "10.96.0.1"},
                   {":path", "/x?y=1"},       {"user-agent", "curl/7.88.1"}, {"accept", "*/*"},
                   {"x-virtual-env", "dev.proj1"}};
  EXPECT_EQ(h, want);
  auto e = h2::stream_env(h, cfg());
  EXPECT_EQ(e.env, "dev.proj1");
}

TEST(H2Upgrade, TheBodyLength) {
  auto r = h2::parse_http1_request("POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n");
  EXPECT_EQ(r.content_length, 12);
  r = h2::parse_http1_request("POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n");
  EXPECT_EQ(r.content_length, -2);  // two lengths: not trusted
  r = h2::parse_http1_request("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n");
  EXPECT_EQ(r.content_length, -2);
  r = h2::parse_http1_request("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n");
  EXPECT_EQ(r.content_length, -2);
  r = h2::parse_http1_request("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_TRUE(r.chunked && r.has_body);
  EXPECT_EQ(r.content_length, -1);
  r = h2::parse_http1_request("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(r.content_length, 0);
  EXPECT_FALSE(r.has_body);
}

TEST(H2Upgrade, WhatIsNotAnUpgrade) {
  auto r = h2::parse_http1_request("GET / HTTP/1.1\r\nHost: a\r\n");
  EXPECT_FALSE(r.complete);
  r = h2::parse_http1_request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_TRUE(r.valid);
  EXPECT_FALSE(r.upgrade_h2c);
  // Connection must list HTTP2-Settings, and the settings must be there exactly once
  r = h2::parse_http1_request("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n");
  EXPECT_FALSE(r.upgrade_h2c);
  r = h2::parse_http1_request(
      "GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
      "HTTP2-Settings: AAMAAABk\r\n\r\n");
  EXPECT_FALSE(r.valid);
  r = h2::parse_http1_request("GET / HTTP/1.1\r\nConnection: upgrade,http2-settings\r\nupgrade: websocket, h2c\r\n"
                              "http2-settings: \r\nContent-Length: 3\r\n\r\n");
  EXPECT_TRUE(r.upgrade_h2c);  // empty settings: allowed
  EXPECT_TRUE(r.has_body);
  EXPECT_EQ(r.content_length, 3);
  EXPECT_FALSE(r.chunked);
  r = h2::parse_http1_request("GET / HTTP/2.0\r\n\r\n");
  EXPECT_FALSE(r.valid);
  r = h2::parse_http1_request("GET / HTTP/1.1\r\n folded\r\n\r\n");
  EXPECT_FALSE(r.valid);
  // TE other than trailers is connection-specific in HTTP/2
  r = h2::parse_http1_request("POST /a HTTP/1.1\r\nTE: trailers\r\n\r\n");
  EXPECT_EQ(h2::upgrade_stream_headers(r).back(), (std::pair<std::string, std::string>{"te", "trailers"}));
  r = h2::parse_http1_request("POST /a HTTP/1.1\r\nTE: gzip\r\n\r\n");
  EXPECT_EQ(h2::upgrade_stream_headers(r).size(), 3u);
}

TEST(H2Listen, AddressesOfEitherFamily) {
  auto a = h2::parse_listen("198.18.0.7:15002");
  EXPECT_EQ(a.family, AF_INET);
  EXPECT_EQ(a.host, "198.18.0.7");
  EXPECT_EQ(a.port, 15002);
  a = h2::parse_listen("[fd00::7]:15002");
  EXPECT_EQ(a.family, AF_INET6);
  EXPECT_EQ(a.host, "fd00::7");
  // $(POD_IP):PORT in an IPv6 cluster: no brackets, the last colon is the port's
  a = h2::parse_listen("fd00:18:0::7:15002");
  EXPECT_EQ(a.family, AF_INET6);
  EXPECT_EQ(a.host, "fd00:18:0::7");
  EXPECT_EQ(a.port, 15002);
  EXPECT_EQ(h2::parse_listen("127.0.0.1:0").port, 0);
  EXPECT_THROW(h2::parse_listen("node-a:15002"), std::invalid_argument);  // no IP address
  EXPECT_THROW(h2::parse_listen("10.0.0.1"), std::invalid_argument);
  EXPECT_THROW(h2::parse_listen(":15002"), std::invalid_argument);
  EXPECT_THROW(h2::parse_listen("10.0.0.1:70000"), std::invalid_argument);
}

}  // namespace
}  // namespace envsteer
