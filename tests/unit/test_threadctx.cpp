// SPDX-License-Identifier: Apache-2.0
// The opt-ins of the "never wrong" rule (agent/model.h annotations), the flags
// they give the programs (es_pod.flags, es_frontend.flags), and how the thread
// context is shown per pod (agent/threadctx.h).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fake_maps.h"
#include "model.h"
#include "reconciler.h"
#include "threadctx.h"

namespace envsteer::threadctx_test {
namespace {

using ::testing::HasSubstr;

k8s::Pod pod(const std::string& name, const std::string& ip, const std::string& cg,
             k8s::Labels labels, k8s::Labels ann = {}) {
  k8s::Pod p;
  p.ns = "t";
  p.name = name;
  p.pod_ips = {ip};
  p.ready = true;
  p.phase = k8s::PodPhase::Running;
  p.labels = std::move(labels);
  p.annotations = std::move(ann);
  p.annotations.insert_or_assign("envsteer.io/cgroup", cg);
  return p;
}

k8s::Service svc(const std::string& name, const std::string& ip, k8s::Labels ann = {}) {
  k8s::Service s;
  s.ns = "t";
  s.name = name;
  s.cluster_ips = {ip};
  s.type = "ClusterIP";
  s.selector = {{"app", name}};
  s.has_selector = true;
  s.ports.push_back({"http", 80, k8s::Protocol::TCP, 8080, ""});
  s.annotations = std::move(ann);
  return s;
}

struct Fixture {
  k8s::ClusterState cs;
  ModelOptions opt;
  std::map<std::string, uint64_t> ids;
  Fixture() {
    opt.default_env = "dev";
    opt.resolve_cgroup = [this](const std::string& rel) -> std::optional<CgroupInfo> {
      auto it = ids.find(rel);
      if (it == ids.end()) return std::nullopt;
      return CgroupInfo{it->second, 2, "/cg/" + rel, true};
    };
  }
  void add(const k8s::Pod& p, uint64_t id) {
    ids[std::string(p.annotations.at("envsteer.io/cgroup"))] = id;
    cs.pods[k8s::object_key(p.ns, p.name)] = p;
  }
  void add(const k8s::Service& s) { cs.services[k8s::object_key(s.ns, s.name)] = s; }
  DesiredState build() { return build_model(cs, opt); }
};

TEST(ThreadContextOptIn, PodAnnotationAndLabelBecomePodFlags) {
  Fixture f;
  f.add(pod("threads", "10.1.0.1", "p/threads", {{"virtual-env", "dev.a"}}, {{kThreadContextAnnotation, "on"}}), 11);
  f.add(pod("loop", "10.1.0.2", "p/loop", {{"virtual-env", "dev"}}), 12);
  f.add(pod("plain", "10.1.0.3", "p/plain", {}, {{kThreadContextAnnotation, "true"}}), 13);
  f.add(pod("off", "10.1.0.4", "p/off", {{"virtual-env", "dev"}}, {{kThreadContextAnnotation, "off"}}), 14);
  auto d = f.build();
  EXPECT_EQ(d.pods.at(11).flags(), uint32_t{ES_POD_F_LABELLED | ES_POD_F_THREAD_CTX});
  EXPECT_EQ(d.pods.at(12).flags(), uint32_t{ES_POD_F_LABELLED});
  EXPECT_EQ(d.pods.at(13).flags(), uint32_t{ES_POD_F_THREAD_CTX});  // unlabelled: never auto-injects
  EXPECT_EQ(d.pods.at(14).flags(), 0u | ES_POD_F_LABELLED);
  EXPECT_TRUE(d.warnings.empty());

  fake::FakeMaps fm;
  Reconciler r(fm, '.');
  r.apply(d);
  EXPECT_EQ(r.shadow().pods.at(11).flags, uint32_t{ES_POD_F_LABELLED | ES_POD_F_THREAD_CTX});
  EXPECT_EQ(r.shadow().pods.at(12).flags, uint32_t{ES_POD_F_LABELLED});
}

// The flags of service s's backend pod ip in the set of env.
uint8_t backend_flags(const DesiredState& d, const std::string& env, const std::string& ip) {
  for (const auto& [name, set] : d.sets)
    if (name.env == env)
      for (const auto& b : set)
        if (maps::format_backend(b.backend) == ip + ":8080") return b.backend.flags;
  ADD_FAILURE() << "no backend " << ip << " in " << env;
  return 0xff;
}

// Senders hand their parse only to pods that take it (outbound.h es_ho_note): a local pod
// with the thread context. Its backend entries say so; a pod of another node (no cgroup
// here) or without the opt-in does not get the flag. The incremental model follows the
// annotation and the cgroup both ways, and stays equal to a full build.
TEST(ThreadContextOptIn, LocalThreadContextPodsAreFlaggedBackends) {
  Fixture f;
  f.add(svc("s", "10.96.0.9"));
  auto on = pod("s-ctx", "10.1.0.1", "p/ctx", {{"app", "s"}, {"virtual-env", "dev"}}, {{kThreadContextAnnotation, "on"}});
  f.add(on, 11);
  f.add(pod("s-plain", "10.1.0.2", "p/plain", {{"app", "s"}, {"virtual-env", "dev.a"}}), 12);
  auto remote = pod("s-remote", "10.1.0.3", "p/remote", {{"app", "s"}, {"virtual-env", "dev.b"}},
                    {{kThreadContextAnnotation, "on"}});
  f.cs.pods[k8s::object_key(remote.ns, remote.name)] = remote;  // no cgroup on this node
  auto d = f.build();
  EXPECT_EQ(backend_flags(d, "dev", "10.1.0.1"), ES_BE_F_LOCAL_CTX);
  EXPECT_EQ(backend_flags(d, "dev.a", "10.1.0.2"), 0);
  EXPECT_EQ(backend_flags(d, "dev.b", "10.1.0.3"), 0);

  IncrementalModel m(f.opt);
  m.reset(f.cs);
  EXPECT_EQ(backend_flags(m.state(), "dev", "10.1.0.1"), ES_BE_F_LOCAL_CTX);
  auto off = on;
  off.annotations.erase(std::string(kThreadContextAnnotation));
  m.upsert(off);
  EXPECT_EQ(backend_flags(m.state(), "dev", "10.1.0.1"), 0);
  EXPECT_TRUE(m.state().sets == build_model(m.cluster(), m.options()).sets);
  m.upsert(on);
  EXPECT_EQ(backend_flags(m.state(), "dev", "10.1.0.1"), ES_BE_F_LOCAL_CTX);
  // its cgroup gone (the pod is no longer this node's, as far as the model knows)
  f.ids.erase("p/ctx");
  m.recheck_missing_cgroups();
  auto gone = on;
  gone.annotations.insert_or_assign("envsteer.io/cgroup", "p/elsewhere");
  m.upsert(gone);
  EXPECT_EQ(backend_flags(m.state(), "dev", "10.1.0.1"), 0);
  EXPECT_TRUE(m.state().sets == build_model(m.cluster(), m.options()).sets);

  // the reconciler writes the flag into the slot (the programs copy it at connect)
  fake::FakeMaps fm;
  Reconciler r(fm, '.');
  r.apply(d);
  bool seen = false;
  for (const auto& [key, set] : r.shadow().sets)
    for (const auto& slot : set.slots)
      if (slot && maps::format_backend(*slot) == "10.1.0.1:8080") seen = (slot->flags == ES_BE_F_LOCAL_CTX);
  EXPECT_TRUE(seen);
}

// A backend is its address: two pods listed with one address (an address reused while the
// old pod is still listed), one a local pod with the thread context, make one slot, not two
// that differ by their flags.
TEST(ThreadContextOptIn, OneSlotPerAddressWhateverItsFlags) {
  Fixture f;
  f.add(svc("s", "10.96.0.9"));
  f.add(pod("s-ctx", "10.1.0.1", "p/ctx", {{"app", "s"}, {"virtual-env", "dev"}}, {{kThreadContextAnnotation, "on"}}), 11);
  auto old = pod("s-old", "10.1.0.1", "p/old", {{"app", "s"}, {"virtual-env", "dev"}});
  f.cs.pods[k8s::object_key(old.ns, old.name)] = old;  // not this node's
  auto d = f.build();
  size_t n = 0;
  for (const auto& [name, set] : d.sets)
    if (name.env == "dev")
      for (const auto& b : set) n += maps::format_backend(b.backend) == "10.1.0.1:8080";
  EXPECT_EQ(n, 1u);
  IncrementalModel m(f.opt);
  m.reset(f.cs);
  EXPECT_TRUE(m.state().sets == d.sets);
}

TEST(ThreadContextOptIn, TypoIsOffAndWarned) {
  Fixture f;
  f.add(pod("typo", "10.1.0.1", "p/typo", {{"virtual-env", "dev"}}, {{kThreadContextAnnotation, "yes"}}), 11);
  auto d = f.build();
  EXPECT_EQ(d.pods.at(11).flags() & ES_POD_F_THREAD_CTX, 0u);
  ASSERT_EQ(d.warnings.size(), 1u);
  EXPECT_THAT(d.warnings[0], HasSubstr("t/typo"));
  EXPECT_THAT(d.warnings[0], HasSubstr("envsteer.io/thread-context"));
}

TEST(ThreadContextOptIn, ServiceAnnotationBecomesFrontendFlag) {
  Fixture f;
  f.add(svc("one", "10.96.0.1", {{kConnPerRequestAnnotation, "true"}}));
  f.add(svc("pooled", "10.96.0.2"));
  f.add(svc("typo", "10.96.0.3", {{kConnPerRequestAnnotation, "on"}}));
  auto d = f.build();
  auto flags = [&](const std::string& ip) {
    return d.frontends.at(maps::make_frontend_key(ip, 80, 6)).flags;
  };
  EXPECT_EQ(flags("10.96.0.1"), uint32_t{ES_FE_F_CONN_PER_REQUEST});
  EXPECT_EQ(flags("10.96.0.2"), 0u);
  EXPECT_EQ(flags("10.96.0.3"), 0u);
  ASSERT_EQ(d.warnings.size(), 1u);
  EXPECT_THAT(d.warnings[0], HasSubstr("Service t/typo"));

  fake::FakeMaps fm;
  Reconciler r(fm, '.');
  r.apply(d);
  EXPECT_EQ(r.shadow().frontends.at(maps::make_frontend_key("10.96.0.1", 80, 6)).flags,
            uint32_t{ES_FE_F_CONN_PER_REQUEST});
  // dropping the annotation rewrites the frontend in place
  f.cs.services["t/one"].annotations.clear();
  r.apply(f.build());
  EXPECT_EQ(r.shadow().frontends.at(maps::make_frontend_key("10.96.0.1", 80, 6)).flags, 0u);
}

TEST(ThreadContextView, StatePerPodAndSwitchedOffProcesses) {
  Fixture f;
  f.add(pod("threads", "10.1.0.1", "p/threads", {{"virtual-env", "dev"}}, {{kThreadContextAnnotation, "on"}}), 11);
  f.add(pod("go", "10.1.0.2", "p/go", {{"virtual-env", "dev"}}, {{kThreadContextAnnotation, "on"}}), 12);
  f.add(pod("node", "10.1.0.3", "p/node", {{"virtual-env", "dev"}}), 13);
  auto d = f.build();

  fake::FakeMaps fm;
  es_ctx_off off{};
  off.cgroup_id = 1200;  // a container cgroup below the go pod's
  off.reason = ES_CTX_OFF_OTHER_THREAD;
  uint32_t tgid = 4242;
  ASSERT_EQ(fm.update(maps::MapId::CtxOff, &tgid, &off), 0);
  auto procs = read_ctx_off(fm, [](uint64_t cg) { return cg == 1200 ? std::string("t/go") : std::string(); });
  ASSERT_EQ(procs.size(), 1u);

  auto j = thread_context_json(d, procs);
  std::map<std::string, nlohmann::json> by;
  for (const auto& p : j) by[p["pod"].get<std::string>()] = p;
  EXPECT_EQ(by["t/threads"]["thread_context"], "on");
  EXPECT_EQ(by["t/go"]["thread_context"], "switched-off");
  EXPECT_EQ(by["t/go"]["switched_off_processes"][0]["pid"], 4242);
  EXPECT_EQ(by["t/go"]["switched_off_processes"][0]["reason"], "answered-by-other-thread");
  EXPECT_EQ(by["t/node"]["thread_context"], "off");

  auto m = thread_context_metrics(d, procs);
  EXPECT_THAT(m, HasSubstr("envsteer_thread_context{pod=\"t/go\",state=\"switched-off\"} 1"));
  EXPECT_THAT(m, HasSubstr("envsteer_thread_context{pod=\"t/node\",state=\"off\"} 1"));
  EXPECT_THAT(m, HasSubstr("envsteer_thread_context_switched_off{pod=\"t/go\",reason=\"answered-by-other-thread\"} 1"));

  // a process that is gone is forgotten; the pod's context is on again for new ones
  EXPECT_EQ(sweep_ctx_off(fm, [](uint32_t t) { return t != 4242; }), 1u);
  EXPECT_TRUE(read_ctx_off(fm, [](uint64_t) { return std::string(); }).empty());
}

}  // namespace
}  // namespace envsteer::threadctx_test
