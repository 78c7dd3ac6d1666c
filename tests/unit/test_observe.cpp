// SPDX-License-Identifier: Apache-2.0
// Observability: the trace rate limit (bpf/lib/ratelimit.h, the kernel's
// code), event decoding, text format and filters (agent/trace.h), decision
// aggregation and the Prometheus rendering (agent/metrics.h).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <regex>
#include <sstream>

#include "metrics.h"
#include "trace.h"

extern "C" {
#include "bpf/lib/ratelimit.h"
}

namespace envsteer {
namespace {

constexpr uint64_t kSec = 1000000000ULL;

TEST(TraceRateLimit, BurstThenRate) {
  es_trace_bucket b{};
  uint64_t t = 5 * kSec;
  int ok = 0;
  for (int i = 0; i < 100; i++) ok += es_bucket_take(&b, t, 10, 5);
  EXPECT_EQ(ok, 5) << "a fresh bucket holds the burst only";
  // one second later: 10 more tokens, capped at the burst of 5
  t += kSec;
  ok = 0;
  for (int i = 0; i < 100; i++) ok += es_bucket_take(&b, t, 10, 5);
  EXPECT_EQ(ok, 5);
  // 100 ms at 10/s: exactly one token
  t += kSec / 10;
  EXPECT_EQ(es_bucket_take(&b, t, 10, 5), 1);
  EXPECT_EQ(es_bucket_take(&b, t, 10, 5), 0);
}

TEST(TraceRateLimit, SteadyStreamIsBoundedByRate) {
  es_trace_bucket b{};
  const uint32_t rate = 50, burst = 50;
  uint64_t t = kSec;
  int ok = 0;
  // 10 s of one attempt every 100 us (100000 attempts)
  for (int i = 0; i < 100000; i++, t += 100000) ok += es_bucket_take(&b, t, rate, burst);
  EXPECT_LE(ok, static_cast<int>(burst + rate * 10 + 1));
  EXPECT_GE(ok, static_cast<int>(rate * 10 - 1));
}

TEST(TraceRateLimit, LowRatesRefillInThousandths) {
  es_trace_bucket b{};
  uint64_t t = kSec;
  EXPECT_EQ(es_bucket_take(&b, t, 1, 1), 1);
  EXPECT_EQ(es_bucket_take(&b, t + kSec / 2, 1, 1), 0);
  EXPECT_EQ(es_bucket_take(&b, t + kSec, 1, 1), 1);
  // a long pause or a clock going back refills without overflow
  EXPECT_EQ(es_bucket_take(&b, t + 1000000 * kSec, 1, 1), 1);
  EXPECT_EQ(es_bucket_take(&b, t, 1, 1), 1);
  EXPECT_EQ(es_bucket_take(&b, t, 1, 1), 0);
}

NameTable names() {
  NameTable t;
  t.services[7] = {"shop/s", "127.96.2.1:80/TCP"};
  t.services[8] = {"shop/s", "127.96.2.1:81/TCP"};
  t.services[9] = {"shop/t", "127.96.2.2:80/TCP"};
  t.envs = {{ES_ENV_BASE, "<base>"}, {2, "dev"}, {3, "dev.proj1"}};
  t.pods[1234] = "shop/c-proj1";
  t.backends["127.1.2.1:8080"] = "shop/s-dev";
  return t;
}

es_trace_event fallback_event() {
  es_trace_event ev{};
  ev.ts_ns = 5 * kSec + 123456789;
  ev.cgroup_id = 1299;
  ev.pod_cgroup_id = 1234;
  ev.kind = ES_EV_CONNECT_FALLBACK;
  ev.pid = 42;
  ev.svc_id = 7;
  ev.env_req = 3;
  ev.env_res = 2;
  ev.pod_env = 3;
  ev.level = 2;
  ev.source = ES_SRC_REQUEST;
  inet_pton(AF_INET, "127.96.2.1", &ev.fe_addr[0]);
  inet_pton(AF_INET, "127.1.2.1", &ev.be_addr[0]);
  ev.fe_port = htons(80);
  ev.be_port = htons(8080);
  ev.family = ES_FAMILY_INET;
  ev.proto = IPPROTO_TCP;
  std::string te = "dev.proj1.zed";
  std::memcpy(ev.thread_env, te.data(), te.size());
  ev.env_len = static_cast<__u8>(te.size());
  return ev;
}

TEST(TraceEvent, DecodeNamesEveryField) {
  auto j = decode_event(fallback_event(), names(), 1700000000LL * 1000000000LL);
  EXPECT_EQ(j["kind"], "fallback");
  EXPECT_EQ(j["time"], "2023-11-14T22:13:25.123456Z");
  EXPECT_EQ(j["pod"], "shop/c-proj1");
  EXPECT_EQ(j["pod_env"], "dev.proj1");
  EXPECT_EQ(j["service"], "shop/s");
  EXPECT_EQ(j["frontend"], "127.96.2.1:80/TCP");
  EXPECT_EQ(j["env_source"], "request");
  EXPECT_EQ(j["env_requested"], "dev.proj1");
  EXPECT_EQ(j["thread_env"], "dev.proj1.zed");
  EXPECT_EQ(j["env_resolved"], "dev");
  EXPECT_EQ(j["level"], 2);
  EXPECT_EQ(j["backend"], "127.1.2.1:8080");
  EXPECT_EQ(j["backend_pod"], "shop/s-dev");
  EXPECT_EQ(j["pid"], 42);
  EXPECT_EQ(j["cgroup_id"], 1299);
}

TEST(TraceEvent, RefusedHasNoBackendAndUnknownIdsStayVisible) {
  auto ev = fallback_event();
  ev.kind = ES_EV_CONNECT_REFUSED;
  ev.env_res = ES_ENV_NONE;
  ev.svc_id = 99;
  ev.env_req = 77;
  ev.pod_cgroup_id = 1;
  ev.env_len = 0;
  auto j = decode_event(ev, names(), 0);
  EXPECT_EQ(j["kind"], "refused");
  EXPECT_EQ(j["backend"], "");
  EXPECT_EQ(j["backend_pod"], "");
  EXPECT_EQ(j["env_resolved"], "");
  EXPECT_EQ(j["env_requested"], "#77");
  EXPECT_EQ(j["service"], "");
  EXPECT_EQ(j["thread_env"], "");
  EXPECT_EQ(format_event(j).find("ECONNREFUSED") != std::string::npos, true) << format_event(j);
}

TEST(TraceEvent, TextLine) {
  auto j = decode_event(fallback_event(), names(), 1700000000LL * 1000000000LL);
  EXPECT_EQ(format_event(j),
            "22:13:25.123456 fallback shop/c-proj1 -> shop/s (127.96.2.1:80/TCP) env dev.proj1 "
            "[request, thread dev.proj1.zed] -> dev level 2 -> 127.1.2.1:8080 shop/s-dev");
}

TEST(TraceEvent, KindNamesIncludeReservedRequestKinds) {
  EXPECT_EQ(event_kind_name(ES_EV_CONNECT_STEERED), "steered");
  EXPECT_EQ(event_kind_name(ES_EV_CONNECT_DEFAULT), "default");
  EXPECT_EQ(event_kind_name(ES_EV_REQ_PASS), "request-pass");
  EXPECT_EQ(event_kind_name(ES_EV_REQ_REDIRECT), "request-redirect");
  EXPECT_EQ(event_kind_name(ES_EV_REQ_SLOW), "request-slow");
  EXPECT_EQ(event_kind_name(ES_EV_REQ_FAILED), "request-failed");
  EXPECT_EQ(event_kind_name(200), "kind-200");
}

TEST(TraceFilter, ServiceEnvPod) {
  auto j = decode_event(fallback_event(), names(), 0);
  EXPECT_TRUE(TraceFilter{}.matches(j));
  EXPECT_TRUE((TraceFilter{"shop/s", "", ""}).matches(j));
  EXPECT_TRUE((TraceFilter{"127.96.2.1:80/TCP", "", ""}).matches(j));
  EXPECT_FALSE((TraceFilter{"shop/t", "", ""}).matches(j));
  for (const char* e : {"dev", "dev.proj1", "dev.proj1.zed"}) EXPECT_TRUE((TraceFilter{"", e, ""}).matches(j)) << e;
  EXPECT_FALSE((TraceFilter{"", "prod", ""}).matches(j));
  EXPECT_TRUE((TraceFilter{"", "", "shop/c-proj1"}).matches(j));
  EXPECT_TRUE((TraceFilter{"", "", "shop/s-dev"}).matches(j));
  EXPECT_FALSE((TraceFilter{"", "", "shop/other"}).matches(j));
  EXPECT_FALSE((TraceFilter{"shop/s", "dev", "shop/other"}).matches(j));
}

TEST(Metrics, DecisionsAggregateOverFrontendsOfOneService) {
  std::vector<DecisionSample> s = {
      {{7, 3, ES_EV_CONNECT_STEERED, 0}, 5},  {{8, 3, ES_EV_CONNECT_STEERED, 0}, 2},
      {{7, 2, ES_EV_CONNECT_FALLBACK, 1}, 4}, {{7, 2, ES_EV_CONNECT_FALLBACK, 2}, 1},
      {{9, 3, ES_EV_CONNECT_REFUSED, 0}, 3},  {{50, 2, ES_EV_CONNECT_STEERED, 0}, 6},
      {{9, 2, ES_EV_CONNECT_STEERED, 0}, 0}};
  auto t = aggregate_decisions(s, names());
  using K = DecisionTotals::key_type;
  EXPECT_EQ(t.size(), 5u);
  EXPECT_EQ(t.at(K{"shop/s", "dev.proj1", "steered", 0}), 7u);
  EXPECT_EQ(t.at(K{"shop/s", "dev", "fallback", 1}), 4u);
  EXPECT_EQ(t.at(K{"shop/s", "dev", "fallback", 2}), 1u);
  EXPECT_EQ(t.at(K{"shop/t", "dev.proj1", "refused", 0}), 3u);
  EXPECT_EQ(t.at(K{"svc#50", "dev", "steered", 0}), 6u);
}

TEST(Metrics, LabelEscaping) { EXPECT_EQ(prom_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd"); }

TEST(Metrics, RenderIsValidExpositionFormat) {
  ObserveInput in;
  in.counters.assign(ES_CNT_MAX, 0);
  in.counters[ES_CNT_HDR_FOUND] = 11;
  in.counters[ES_CNT_HDR_BEYOND] = 2;
  in.counters[ES_CNT_TX_INJECTED] = 4;
  in.counters[ES_CNT_TRACE_RATE_LIMITED] = 9;
  in.decisions = {{{7, 2, ES_EV_CONNECT_FALLBACK, 1}, 4}};
  in.mismatches = {{7, 3}, {8, 1}};
  in.maps = {{"es_frontends", 2, 2}};
  in.ready = false;
  in.last_sync_unix = 1000;
  in.now_unix = 1030.5;
  in.sync_failures = {{"map_full", 2}};
  in.failing_reasons = {"map_full"};
  in.skipped = {{{"Pod", "invalid_env"}, 2}};
  in.missing_cgroups = 3;
  in.trace_clients = 1;
  std::string out = render_observability(in, names());
  auto has = [&](const std::string& line) { return out.find(line + "\n") != std::string::npos; };
  EXPECT_TRUE(has("envsteer_steering_decisions_total{service=\"shop/s\",env=\"dev\",outcome=\"fallback\",level=\"1\"} 4"))
      << out;
  EXPECT_TRUE(has("envsteer_header_parse_total{outcome=\"found\"} 11"));
  EXPECT_TRUE(has("envsteer_header_parse_total{outcome=\"beyond_window\"} 2"));
  EXPECT_TRUE(has("envsteer_headers_inserted_total 4"));
  EXPECT_TRUE(has("envsteer_pooled_connection_mismatches_total{service=\"shop/s\"} 4"));
  EXPECT_TRUE(has("envsteer_map_entries{map=\"es_frontends\"} 2"));
  EXPECT_TRUE(has("envsteer_map_capacity{map=\"es_frontends\"} 2"));
  EXPECT_TRUE(has("envsteer_ready 0"));
  EXPECT_TRUE(has("envsteer_last_sync_age_seconds 30.500"));
  EXPECT_TRUE(has("envsteer_sync_failures_total{reason=\"map_full\"} 2"));
  EXPECT_TRUE(has("envsteer_sync_failures_total{reason=\"source\"} 0"));
  EXPECT_TRUE(has("envsteer_last_sync_failed_reason{reason=\"map_full\"} 1"));
  EXPECT_TRUE(has("envsteer_last_sync_failed_reason{reason=\"source\"} 0"));
  // skipped objects: every (kind, reason) series is there, 0 when none is skipped
  EXPECT_TRUE(has("envsteer_objects_skipped{kind=\"Pod\",reason=\"invalid_env\"} 2"));
  EXPECT_TRUE(has("envsteer_objects_skipped{kind=\"Service\",reason=\"address_in_use\"} 0"));
  EXPECT_TRUE(has("envsteer_pod_cgroups_missing 3"));
  EXPECT_TRUE(has("envsteer_trace_clients 1"));
  EXPECT_TRUE(has("envsteer_trace_events_total{result=\"rate_limited\"} 9"));
  // every line is a comment or `name{labels} value`; every family has HELP and TYPE once
  std::regex sample(R"(^[a-z_]+(\{[a-z_]+="([^"\\]|\\.)*"(,[a-z_]+="([^"\\]|\\.)*")*\})? -?[0-9.]+$)");
  std::map<std::string, int> types;
  std::istringstream is(out);
  for (std::string line; std::getline(is, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      types[line.substr(7, line.find(' ', 7) - 7)]++;
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
    std::string name = line.substr(0, line.find_first_of("{ "));
    EXPECT_EQ(types.count(name), 1u) << "no TYPE before " << line;
  }
  for (const auto& [n, c] : types) EXPECT_EQ(c, 1) << n;
}

TEST(Metrics, NeverSyncedAgeIsMinusOne) {
  ObserveInput in;
  std::string out = render_observability(in, NameTable{});
  EXPECT_NE(out.find("envsteer_last_sync_age_seconds -1.000\n"), std::string::npos) << out;
}

TEST(NameTableTest, BuiltFromModelAndShadow) {
  DesiredState m;
  Shadow sh;
  auto fk = maps::make_frontend_key("127.96.2.1", 80, IPPROTO_TCP);
  m.frontends[fk] = FrontendSpec{fk, "shop/s", "http"};
  sh.frontends[fk] = es_frontend{7, 0};
  es_env e{};
  std::memcpy(e.name, "dev", 3);
  sh.envs[2] = e;
  m.pods[1234] = LocalPod{"shop/c", "dev", "/x", 3};
  BackendRef br;
  br.backend = maps::make_backend("127.1.2.1", 8080);
  br.pod = "shop/s-dev";
  m.sets[SetName{fk, "dev"}] = {br};
  auto t = build_names(m, sh);
  EXPECT_EQ(t.service(7), "shop/s");
  EXPECT_EQ(t.frontend(7), "127.96.2.1:80/TCP");
  EXPECT_EQ(t.env(2), "dev");
  EXPECT_EQ(t.env(ES_ENV_BASE), "<base>");
  EXPECT_EQ(t.env(ES_ENV_NONE), "");
  EXPECT_EQ(t.pod(1234), "shop/c");
  EXPECT_EQ(t.backend_pod("127.1.2.1:8080"), "shop/s-dev");
}

}  // namespace
}  // namespace envsteer
