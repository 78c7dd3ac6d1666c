// SPDX-License-Identifier: Apache-2.0
// The reconciler (agent/reconciler.h) against FakeMaps (fake_maps.h).
//
// The BPF programs read the maps while the agent writes them, so what matters
// is not only the end state but every state in between. apply_checked()
// replays the op log of one apply() on a scratch copy of the maps and checks,
// after EVERY single op, what a concurrent connect() could observe:
//   - a set with count c has its slots [0, c)                      (no hole)
//   - an env's parent, a pod's env, the default env, a set's env exist
//   - every env name entry points to an env of that name
//   - a frontend sees, per env, only backends that the previous or the new
//     desired state give it                                       (no leak)
//   - when a frontend is written, its sets are complete: it routes exactly as
//     the new desired state says                             (no half frontend)
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <memory>
#include <random>
#include <set>
#include <tuple>
#include <sstream>
#include <string>
#include <vector>

#include "cluster_events.h"
#include "envname.h"
#include "fake_maps.h"
#include "reconciler.h"

namespace envsteer::reconciler_test {
namespace {

using fake::at;
using fake::bytes_of;
using fake::FakeMaps;
using fake::from_bytes;
using fake::MapState;
using fake::Op;
using fake::Routing;
using maps::MapId;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// --- desired states by name ----------------------------------------------

// "10.96.0.1:80", "10.96.0.1:53/UDP", "[fd00::1]:80"
std::pair<std::string, uint16_t> split_host_port(std::string s) {
  auto colon = s.rfind(':');
  std::string ip = s.substr(0, colon);
  auto port = static_cast<uint16_t>(std::stoi(s.substr(colon + 1)));
  if (!ip.empty() && ip.front() == '[') ip = ip.substr(1, ip.size() - 2);
  return {ip, port};
}

es_frontend_key FE(const std::string& spec) {
  std::string s = spec;
  uint8_t proto = IPPROTO_TCP;
  if (auto slash = s.find('/'); slash != std::string::npos) {
    proto = s.substr(slash + 1) == "UDP" ? IPPROTO_UDP : IPPROTO_TCP;
    s = s.substr(0, slash);
  }
  auto [ip, port] = split_host_port(s);
  return maps::make_frontend_key(ip, port, proto);
}

es_backend BE(const std::string& spec) {
  auto [ip, port] = split_host_port(spec);
  return maps::make_backend(ip, port);
}

struct Want {
  DesiredState d;

  Want& frontend(const std::string& fe) {
    auto k = FE(fe);
    d.frontends.emplace(k, FrontendSpec{k, "ns/" + fe, ""});
    return *this;
  }
  Want& env(const EnvName& e) {
    for (auto& level : env_chain(e, '.')) d.envs.insert(level);
    return *this;
  }
  Want& set(const std::string& fe, const EnvName& e, const std::vector<std::string>& backends) {
    frontend(fe);
    env(e);
    auto& v = d.sets[SetName{FE(fe), e}];
    for (const auto& b : backends) {
      BackendRef r{BE(b), ""};
      auto pos = std::lower_bound(v.begin(), v.end(), r);
      if (pos == v.end() || !(*pos == r)) v.insert(pos, r);
    }
    return *this;
  }
  Want& pod(uint64_t cgroup, const EnvName& e, int level) {
    env(e);
    d.pods[cgroup] = LocalPod{"ns/pod-" + std::to_string(cgroup), e, "/cg/" + std::to_string(cgroup), level};
    return *this;
  }
  Want& default_env(const EnvName& e) {
    d.default_env = e;
    env(e);
    return *this;
  }
  operator const DesiredState&() const { return d; }
};

// --- invariants ----------------------------------------------------------

std::string u(uint32_t v) { return std::to_string(v); }

bool env_exists(const MapState& s, uint32_t id) { return at(s, MapId::Envs).count(bytes_of(id)) > 0; }

// Invariants of one state, independent of what is being applied.
std::vector<std::string> state_violations(const MapState& s) {
  std::vector<std::string> out;
  for (const auto& [k, v] : at(s, MapId::Sets)) {
    auto key = from_bytes<es_set_key>(k);
    auto set = from_bytes<es_set>(v);
    for (uint32_t i = 0; i < set.count; i++)
      if (!at(s, MapId::Slots).count(bytes_of(es_slot_key{key.svc_id, key.env_id, i})))
        out.push_back("set {svc " + u(key.svc_id) + ", env " + u(key.env_id) + "} has count " + u(set.count) +
                      " but no slot " + u(i));
    if (key.env_id != ES_ENV_BASE && !env_exists(s, key.env_id))
      out.push_back("set {svc " + u(key.svc_id) + ", env " + u(key.env_id) + "} names a missing env");
  }
  for (const auto& [k, v] : at(s, MapId::Envs)) {
    auto id = from_bytes<uint32_t>(k);
    auto e = from_bytes<es_env>(v);
    if (id == ES_ENV_NONE || id == ES_ENV_BASE) out.push_back("env id " + u(id) + " is reserved");
    if (e.parent_id != ES_ENV_NONE) {
      auto p = at(s, MapId::Envs).find(bytes_of(e.parent_id));
      if (p == at(s, MapId::Envs).end())
        out.push_back("env " + u(id) + " (" + maps::env_name_of(e) + ") has missing parent " + u(e.parent_id));
      else if (from_bytes<es_env>(p->second).depth + 1 != e.depth)
        out.push_back("env " + u(id) + " depth does not follow its parent's");
    } else if (e.depth != 0) {
      out.push_back("env " + u(id) + " has no parent but depth " + u(e.depth));
    }
  }
  for (const auto& [k, v] : at(s, MapId::EnvNames)) {
    auto name = maps::env_name_of(from_bytes<es_env_name>(k));
    auto id = from_bytes<uint32_t>(v);
    auto e = at(s, MapId::Envs).find(bytes_of(id));
    if (e == at(s, MapId::Envs).end())
      out.push_back("env name \"" + name + "\" -> missing env " + u(id));
    else if (maps::env_name_of(from_bytes<es_env>(e->second)) != name)
      out.push_back("env name \"" + name + "\" -> env " + u(id) + " of another name");
  }
  for (const auto& [k, v] : at(s, MapId::Pods)) {
    auto p = from_bytes<es_pod>(v);
    if (p.env_id != ES_ENV_BASE && !env_exists(s, p.env_id))
      out.push_back("pod cgroup " + std::to_string(from_bytes<uint64_t>(k)) + " -> missing env " + u(p.env_id));
  }
  auto cfg = at(s, MapId::Config).find(bytes_of(uint32_t{0}));
  if (cfg != at(s, MapId::Config).end()) {
    auto c = from_bytes<es_config>(cfg->second);
    if (c.default_env_id != ES_ENV_BASE && !env_exists(s, c.default_env_id))
      out.push_back("config default env " + u(c.default_env_id) + " is missing");
  }
  return out;
}

// Union of two routings (what may be visible while going from one to the other).
Routing merge(const Routing& a, const Routing& b) {
  Routing out = a;
  for (const auto& [fe, envs] : b)
    for (const auto& [env, bes] : envs) out[fe][env].insert(bes.begin(), bes.end());
  return out;
}

// Checks the state after op #i of a replay; "" when fine.
std::string transition_violations(const MapState& s, const Op& op, const Routing& allowed, const Routing& want) {
  std::string out;
  for (const auto& v : state_violations(s)) out += "  " + v + "\n";
  auto sem = fake::semantics(s);
  for (const auto& [fe, envs] : sem.routing) {
    if (fe.rfind("<orphan", 0) == 0) continue;  // sets of no frontend are invisible
    for (const auto& [env, bes] : envs) {
      for (const auto& b : bes) {
        auto a = allowed.find(fe);
        bool ok = a != allowed.end() && a->second.count(env) && a->second.at(env).count(b);
        if (!ok)
          out += "  frontend " + fe + " env \"" + env + "\" shows backend " + b +
                 ", which neither the old nor the new desired state gives it\n";
      }
    }
  }
  if (op.kind == Op::Update && op.map == MapId::Frontends) {
    auto fe = maps::format_frontend(op.key_as<es_frontend_key>());
    auto w = want.find(fe);
    auto have = sem.routing.find(fe);
    std::map<EnvName, std::set<std::string>> want_r, have_r;
    if (w != want.end()) want_r = w->second;
    if (have != sem.routing.end()) have_r = have->second;
    if (want_r != have_r) {
      fake::Semantics a, b;
      a.routing[fe] = want_r;
      b.routing[fe] = have_r;
      out += "  frontend " + fe + " was published before its sets were complete:\n    want " +
             fake::to_string(a) + "    have " + fake::to_string(b);
    }
  }
  return out;
}

// Replays ops[from..) on `before` and checks every intermediate state.
// Returns "" or a report of the first violation with the op log.
std::string check_replay(MapState before, const std::vector<Op>& ops, size_t from, const Routing& allowed,
                         const Routing& want) {
  for (size_t i = from; i < ops.size(); i++) {
    fake::apply_op(before, ops[i]);
    std::string v = transition_violations(before, ops[i], allowed, want);
    if (!v.empty())
      return "after op #" + std::to_string(i) + " (" + fake::describe(ops[i]) + "):\n" + v + "op log:\n" +
             fake::describe(ops, from);
  }
  return "";
}

// apply() with the every-op check. `prev` is the desired state the maps held
// before (for the no-leak check).
ApplyStats apply_checked(Reconciler& r, FakeMaps& fm, const DesiredState& want, const DesiredState& prev,
                         const ModelDelta* delta = nullptr) {
  MapState before = fm.state;
  size_t from = fm.ops.size();
  ApplyStats st;
  std::string err;
  try {
    st = delta ? r.apply(want, *delta) : r.apply(want);
  } catch (...) {
    err = check_replay(before, fm.ops, from, merge(fake::semantics(prev).routing, fake::semantics(want).routing),
                       fake::semantics(want).routing);
    EXPECT_EQ(err, "");
    throw;
  }
  err = check_replay(before, fm.ops, from, merge(fake::semantics(prev).routing, fake::semantics(want).routing),
                     fake::semantics(want).routing);
  EXPECT_EQ(err, "");
  size_t updates = 0, deletes = 0;
  for (size_t i = from; i < fm.ops.size(); i++) (fm.ops[i].kind == Op::Update ? updates : deletes)++;
  EXPECT_EQ(st.updates, updates);
  EXPECT_EQ(st.deletes, deletes);
  return st;
}

ApplyStats apply_checked(Reconciler& r, FakeMaps& fm, const DesiredState& want) {
  return apply_checked(r, fm, want, DesiredState{});
}

// The shadow, encoded as the maps it claims to mirror.
MapState encode(const Shadow& sh) {
  MapState s;
  for (const auto& [k, v] : sh.frontends) at(s, MapId::Frontends)[bytes_of(k)] = bytes_of(v);
  for (const auto& [id, e] : sh.envs) at(s, MapId::Envs)[bytes_of(id)] = bytes_of(e);
  for (const auto& [name, id] : sh.env_names) at(s, MapId::EnvNames)[bytes_of(maps::make_env_name(name))] = bytes_of(id);
  for (const auto& [k, set] : sh.sets) {
    if (set.published) at(s, MapId::Sets)[bytes_of(k)] = bytes_of(es_set{set.count, 0});
    for (size_t i = 0; i < set.slots.size(); i++)
      if (set.slots[i])
        at(s, MapId::Slots)[bytes_of(es_slot_key{k.svc_id, k.env_id, static_cast<uint32_t>(i)})] =
            bytes_of(*set.slots[i]);
  }
  for (const auto& [cg, p] : sh.pods) at(s, MapId::Pods)[bytes_of(cg)] = bytes_of(p);
  if (sh.config) at(s, MapId::Config)[bytes_of(uint32_t{0})] = bytes_of(*sh.config);
  return s;
}

// "" when the shadow says exactly what the maps hold; else the differences.
std::string shadow_diff(const Reconciler& r, const FakeMaps& fm) {
  MapState sh = encode(r.shadow());
  std::string out;
  for (size_t m = 0; m < maps::kMapCount; m++) {
    auto id = static_cast<MapId>(m);
    if (id == MapId::Counters) continue;
    auto& have = fm.state[m];
    auto& claim = sh[m];
    for (const auto& [k, v] : have) {
      auto it = claim.find(k);
      if (it == claim.end()) {
        out += "  map holds, shadow lacks: " + fake::describe(Op{Op::Update, id, k, v}) + "\n";
      } else if (it->second != v) {
        out += "  map: " + fake::describe(Op{Op::Update, id, k, v}) +
               "\n  shadow: " + fake::describe(Op{Op::Update, id, k, it->second}) + "\n";
      }
    }
    for (const auto& [k, v] : claim) {
      // The shadow cannot tell "no set" from "set with count 0" (write_set()
      // creates the empty shadow entry before the first slot is written).
      if (id == MapId::Sets && from_bytes<es_set>(v).count == 0) continue;
      if (!have.count(k)) out += "  shadow claims, map lacks: " + fake::describe(Op{Op::Update, id, k, v}) + "\n";
    }
  }
  return out;
}

std::vector<std::string> ops_since(const FakeMaps& fm, size_t from) {
  std::vector<std::string> out;
  for (size_t i = from; i < fm.ops.size(); i++) out.push_back(fake::describe(fm.ops[i]));
  return out;
}

void expect_converged(const FakeMaps& fm, const DesiredState& want) {
  EXPECT_EQ(fake::to_string(fake::semantics(fm.state)), fake::to_string(fake::semantics(want)));
  EXPECT_THAT(fake::garbage(fm.state), IsEmpty());
  EXPECT_THAT(state_violations(fm.state), IsEmpty());
}

// A state with a bit of everything: three frontends (one UDP, one IPv6), a
// three-level env chain, a default env, local pods.
Want rich() {
  Want w;
  w.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080"})
      .set("10.96.0.1:80", "dev.proj1", {"10.1.0.3:8080"})
      .set("10.96.0.1:80", "dev.proj1.alice", {"10.1.0.4:8080", "10.1.0.5:8080", "10.1.0.6:8080"})
      .set("10.96.0.2:53/UDP", "dev", {"10.1.0.7:5353"})
      .set("[fd00::1]:80", "qa", {"[fd01::1]:8080", "[fd01::2]:8080"})
      .frontend("10.96.0.3:80")  // a service without ready pods
      .env("team.x.y")
      .default_env("dev")
      .pod(1001, "dev.proj1.alice", 4)
      .pod(1002, "", 3)
      .pod(1003, "team.x", 5);
  return w;
}

// --- first apply -----------------------------------------------------------

TEST(ReconcilerApply, FirstApplyWritesEverythingInOrder) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w = rich();
  auto st = apply_checked(r, fm, w);
  EXPECT_EQ(st.deletes, 0u);
  EXPECT_TRUE(st.changed());
  expect_converged(fm, w);
  EXPECT_EQ(shadow_diff(r, fm), "");
  // every entry is written once
  size_t entries = 0;
  for (size_t m = 0; m < maps::kMapCount; m++) entries += fm.state[m].size();
  EXPECT_EQ(st.updates, entries);
  EXPECT_EQ(fm.missing_removes, 0u);
}

TEST(ReconcilerApply, FirstApplyOrderEnvsSetsFrontendsPodsConfig) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  apply_checked(r, fm, rich());
  // the coarse order of the first apply: envs (parents first), names, slots/sets, frontends, pods, config
  auto rank = [](MapId m) {
    switch (m) {
      case MapId::Envs: return 0;
      case MapId::EnvNames: return 1;
      case MapId::Slots: case MapId::Sets: return 2;
      case MapId::Frontends: return 3;
      case MapId::Pods: return 4;
      case MapId::Config: return 5;
      default: return 9;
    }
  };
  for (size_t i = 1; i < fm.ops.size(); i++)
    EXPECT_LE(rank(fm.ops[i - 1].map), rank(fm.ops[i].map)) << fake::describe(fm.ops, 0);
  EXPECT_EQ(fm.ops.back().map, MapId::Config);
}

TEST(ReconcilerApply, ReapplyWritesNothing) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w = rich();
  apply_checked(r, fm, w);
  size_t n = fm.ops.size();
  auto st = apply_checked(r, fm, w, w);
  EXPECT_EQ(st.updates, 0u);
  EXPECT_EQ(st.deletes, 0u);
  EXPECT_FALSE(st.changed());
  EXPECT_EQ(fm.ops.size(), n);
}

TEST(ReconcilerApply, ReapplyOfAnEquivalentModelWritesNothing) {
  // The same content built in another order (backend order inside a set is
  // the model's business, not a change).
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "dev", {"10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"});
  b.set("10.96.0.1:80", "dev", {"10.1.0.3:80"}).set("10.96.0.1:80", "dev", {"10.1.0.2:80", "10.1.0.1:80"});
  apply_checked(r, fm, a);
  EXPECT_FALSE(apply_checked(r, fm, b, a).changed());
}

// --- incremental changes -------------------------------------------------

// ids on a fresh reconciler: env ids from 2 (1 is the base), svc ids from 1
TEST(ReconcilerApply, AddingOneBackendWritesOneSlotAndTheCount) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.3:8080"});
  apply_checked(r, fm, a);
  Want b = a;
  b.set("10.96.0.1:80", "", {"10.1.0.2:8080"});  // sorts in the middle; still appended
  size_t from = fm.ops.size();
  auto st = apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_slots {svc 1, env 1, slot 2} = 10.1.0.2:8080",
                                               "update es_sets {svc 1, env 1} count 3"));
  EXPECT_EQ(st.updates, 2u);
  EXPECT_EQ(st.deletes, 0u);
  expect_converged(fm, b);
}

TEST(ReconcilerApply, RemovingFromTheMiddleMovesTheLastIntoTheHole) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.3:8080"});
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  auto st = apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_slots {svc 1, env 1, slot 1} = 10.1.0.3:8080",
                                               "update es_sets {svc 1, env 1} count 2",
                                               "remove es_slots {svc 1, env 1, slot 2}"));
  EXPECT_EQ(st.updates, 2u);
  EXPECT_EQ(st.deletes, 1u);
  expect_converged(fm, b);
}

TEST(ReconcilerApply, RemovingTheLastBackendShrinksThenDeletes) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080"});
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_sets {svc 1, env 1} count 2",
                                               "remove es_slots {svc 1, env 1, slot 2}"));
}

TEST(ReconcilerApply, ReplacedBackendReusesItsSlot) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b, c;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.9:8080", "10.1.0.3:8080"});
  c.set("10.96.0.1:80", "", {"10.1.0.7:8080"});
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_slots {svc 1, env 1, slot 1} = 10.1.0.9:8080"));
  from = fm.ops.size();
  apply_checked(r, fm, c, b);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_slots {svc 1, env 1, slot 0} = 10.1.0.7:8080",
                                               "update es_sets {svc 1, env 1} count 1",
                                               // the tail goes from the end, so the shadow shrinks with it
                                               "remove es_slots {svc 1, env 1, slot 2}",
                                               "remove es_slots {svc 1, env 1, slot 1}"));
  expect_converged(fm, c);
}

TEST(ReconcilerApply, RemovingAServiceDeletesFrontendThenSetThenSlots) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080"})
      .set("10.96.0.2:80", "", {"10.1.0.5:8080", "10.1.0.6:8080"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:8080", "10.1.0.2:8080"});
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  auto st = apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("remove es_frontends 10.96.0.2:80/TCP",
                                               "remove es_sets {svc 2, env 1}",
                                               "remove es_slots {svc 2, env 1, slot 1}",
                                               "remove es_slots {svc 2, env 1, slot 0}"));
  EXPECT_EQ(st.updates, 0u);
  EXPECT_EQ(st.deletes, 4u);
  expect_converged(fm, b);
}

TEST(ReconcilerApply, RemovingAServiceWithSeveralSets) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080"})
      .set("10.96.0.1:80", "dev", {"10.1.0.2:8080", "10.1.0.3:8080"})
      .set("10.96.0.1:80", "dev.x", {"10.1.0.4:8080"});
  Want b;
  b.env("dev.x");
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  ASSERT_FALSE(fm.ops.size() == from);
  EXPECT_EQ(fake::describe(fm.ops[from]), "remove es_frontends 10.96.0.1:80/TCP");
  // each set's entry goes before its slots
  std::set<std::string> sets_gone;
  for (size_t i = from + 1; i < fm.ops.size(); i++) {
    const auto& op = fm.ops[i];
    EXPECT_EQ(op.kind, Op::Remove);
    if (op.map == MapId::Sets) {
      auto k = op.key_as<es_set_key>();
      sets_gone.insert(u(k.svc_id) + "/" + u(k.env_id));
    } else if (op.map == MapId::Slots) {
      auto k = op.key_as<es_slot_key>();
      EXPECT_TRUE(sets_gone.count(u(k.svc_id) + "/" + u(k.env_id))) << fake::describe(op);
    }
  }
  EXPECT_EQ(sets_gone.size(), 3u);
  expect_converged(fm, b);
}

TEST(ReconcilerApply, SetEmptiedKeepsTheFrontend) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:8080"});
  b.frontend("10.96.0.1:80");
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("remove es_sets {svc 1, env 1}", "remove es_slots {svc 1, env 1, slot 0}"));
  expect_converged(fm, b);
}

TEST(ReconcilerApply, PodMovingToAChildEnvAddsTheSetBeforeDroppingTheOld) {
  // A pod relabelled from dev to dev.x: its backend appears in dev.x before it
  // leaves dev, so a caller in dev.x never falls back to nothing.
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "dev", {"10.1.0.1:8080"}).env("dev.x");
  b.set("10.96.0.1:80", "dev.x", {"10.1.0.1:8080"});
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  auto ops = ops_since(fm, from);
  ASSERT_EQ(ops.size(), 4u);
  EXPECT_THAT(ops[0], HasSubstr("update es_slots"));
  EXPECT_THAT(ops[1], HasSubstr("update es_sets"));
  EXPECT_THAT(ops[2], HasSubstr("remove es_sets"));
  EXPECT_THAT(ops[3], HasSubstr("remove es_slots"));
  expect_converged(fm, b);
}

// --- environments ----------------------------------------------------------

TEST(ReconcilerEnvs, ParentsWrittenBeforeChildren) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w;
  w.env("z.y.x.w").env("a.b").env("a.b.c.d.e").env("m");
  apply_checked(r, fm, w);
  std::set<uint32_t> seen;
  for (const auto& op : fm.ops) {
    if (op.map != MapId::Envs) continue;
    auto e = op.value_as<es_env>();
    EXPECT_TRUE(e.parent_id == ES_ENV_NONE || seen.count(e.parent_id)) << maps::env_name_of(e);
    seen.insert(op.key_as<uint32_t>());
  }
  EXPECT_EQ(seen.size(), 10u);
  // names after the envs they point to (state_violations checked that per op)
  auto dev = r.env_id("a.b.c.d.e");
  ASSERT_TRUE(dev);
  auto e = fm.env(*dev);
  ASSERT_TRUE(e);
  EXPECT_EQ(maps::env_name_of(*e), "a.b.c.d.e");
  EXPECT_EQ(e->depth, 4u);
  EXPECT_EQ(e->parent_id, *r.env_id("a.b.c.d"));
  EXPECT_EQ(fm.get<uint32_t>(MapId::EnvNames, maps::make_env_name("a.b.c.d.e")), dev);
}

TEST(ReconcilerEnvs, RemovalDeletesChildrenBeforeParents) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.env("dev.a.x").env("dev.b").env("qa").set("10.96.0.1:80", "dev.a", {"10.1.0.1:80"}).pod(7, "dev.a.x", 2);
  b.env("qa");
  apply_checked(r, fm, a);
  uint32_t qa = *r.env_id("qa");
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  std::vector<std::string> env_removes;
  std::set<std::string> names_gone;
  for (size_t i = from; i < fm.ops.size(); i++) {
    const auto& op = fm.ops[i];
    if (op.map == MapId::Envs || op.map == MapId::EnvNames) {
      EXPECT_EQ(op.kind, Op::Remove) << fake::describe(op);
    }
    if (op.map == MapId::EnvNames) names_gone.insert(maps::env_name_of(op.key_as<es_env_name>()));
    if (op.map == MapId::Envs) env_removes.push_back(std::to_string(op.key_as<uint32_t>()));
  }
  EXPECT_THAT(names_gone, ElementsAre("dev", "dev.a", "dev.a.x", "dev.b"));
  EXPECT_EQ(env_removes.size(), 4u);
  // positions of the env removes, by the name each id had
  std::map<std::string, size_t> pos;
  for (size_t i = from; i < fm.ops.size(); i++) {
    const auto& op = fm.ops[i];
    if (op.map != MapId::Envs) continue;
    for (size_t j = 0; j < from; j++)
      if (fm.ops[j].map == MapId::Envs && fm.ops[j].key == op.key)
        pos[maps::env_name_of(fm.ops[j].value_as<es_env>())] = i;
  }
  EXPECT_LT(pos.at("dev.a.x"), pos.at("dev.a"));
  EXPECT_LT(pos.at("dev.a"), pos.at("dev"));
  EXPECT_LT(pos.at("dev.b"), pos.at("dev"));
  EXPECT_EQ(r.env_id("qa"), qa);
  expect_converged(fm, b);
}

TEST(ReconcilerEnvs, IdsStableAcrossApplies) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a;
  a.set("10.96.0.1:80", "dev", {"10.1.0.1:80"}).set("10.96.0.2:80", "qa.x", {"10.1.0.2:80"}).env("tmp");
  apply_checked(r, fm, a);
  auto dev = r.env_id("dev"), qax = r.env_id("qa.x"), tmp = r.env_id("tmp");
  auto s1 = r.svc_id(FE("10.96.0.1:80")), s2 = r.svc_id(FE("10.96.0.2:80"));
  ASSERT_TRUE(dev && qax && tmp && s1 && s2);
  EXPECT_EQ(r.env_id(""), uint32_t{ES_ENV_BASE});
  EXPECT_EQ(r.env_id("nope"), std::nullopt);
  EXPECT_EQ(r.svc_id(FE("10.96.0.9:80")), std::nullopt);

  // drop tmp and 10.96.0.1, add new ones: survivors keep their ids, newcomers
  // take ids no live entry uses
  Want b;
  b.set("10.96.0.2:80", "qa.x", {"10.1.0.2:80", "10.1.0.3:80"})
      .set("10.96.0.3:80", "dev", {"10.1.0.4:80"})
      .env("new1")
      .env("new2.child");
  apply_checked(r, fm, b, a);
  EXPECT_EQ(r.env_id("dev"), dev);
  EXPECT_EQ(r.env_id("qa.x"), qax);
  EXPECT_EQ(r.svc_id(FE("10.96.0.2:80")), s2);
  EXPECT_EQ(r.env_id("tmp"), std::nullopt);
  auto s3 = r.svc_id(FE("10.96.0.3:80"));
  ASSERT_TRUE(s3);
  EXPECT_NE(*s3, *s1);  // 10.96.0.1 was still live while 10.96.0.3 was created
  EXPECT_NE(*s3, *s2);
  for (const char* n : {"new1", "new2", "new2.child"}) {
    auto id = r.env_id(n);
    ASSERT_TRUE(id) << n;
    EXPECT_NE(*id, *tmp) << n;  // tmp's id was live during that apply
    EXPECT_NE(*id, *dev) << n;
    EXPECT_NE(*id, *qax) << n;
  }
  expect_converged(fm, b);
}

// --- config ----------------------------------------------------------------

TEST(ReconcilerConfig, BaseWhenNoDefaultEnv) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w;
  w.set("10.96.0.1:80", "dev", {"10.1.0.1:80"});
  apply_checked(r, fm, w);
  auto c = fm.config();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->abi_version, uint32_t{ES_ABI_VERSION});
  EXPECT_EQ(c->default_env_id, uint32_t{ES_ENV_BASE});
  // no local pod: an empty level range, no ancestor walk
  EXPECT_EQ(c->min_pod_level, 1u);
  EXPECT_EQ(c->max_pod_level, 0u);
}

TEST(ReconcilerConfig, DefaultEnvIdAndPodLevels) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w;
  w.default_env("dev.main").pod(11, "dev", 5).pod(12, "", 3).pod(13, "qa", 7);
  apply_checked(r, fm, w);
  auto c = fm.config();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->default_env_id, *r.env_id("dev.main"));
  EXPECT_EQ(c->min_pod_level, 3u);
  EXPECT_EQ(c->max_pod_level, 7u);
  EXPECT_EQ(c->flags, 0u);  // no pod with the thread context: no hand-off to this node
  EXPECT_EQ(fm.get<es_pod>(MapId::Pods, uint64_t{11})->env_id, *r.env_id("dev"));
  EXPECT_EQ(fm.get<es_pod>(MapId::Pods, uint64_t{12})->env_id, uint32_t{ES_ENV_BASE});

  // switching the default env back to the base: the config changes before the
  // env goes away (state_violations checks that per op)
  Want b;
  b.pod(11, "dev", 5);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, w);
  c = fm.config();
  EXPECT_EQ(c->default_env_id, uint32_t{ES_ENV_BASE});
  EXPECT_EQ(c->min_pod_level, 5u);
  EXPECT_EQ(c->max_pod_level, 5u);
  auto ops = ops_since(fm, from);
  EXPECT_THAT(ops[0], HasSubstr("update es_config"));
  expect_converged(fm, b);
}

TEST(ReconcilerConfig, LocalThreadContextFlag) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w;
  w.pod(11, "dev", 5).pod(12, "qa", 5);
  apply_checked(r, fm, w);
  EXPECT_EQ(fm.config()->flags, 0u);
  // a pod opts in: the senders of the node may hand it their requests (es_ho_note)
  Want on = w;
  on.d.pods[12].thread_ctx = true;
  apply_checked(r, fm, on, w);
  EXPECT_EQ(fm.config()->flags, uint32_t{ES_CFG_F_LOCAL_CTX});
  // it goes: the flag with it
  Want off;
  off.pod(11, "dev", 5);
  apply_checked(r, fm, off, on);
  EXPECT_EQ(fm.config()->flags, 0u);
  expect_converged(fm, off);
}

TEST(ReconcilerConfig, PodEnvChangeIsOneUpdate) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.pod(11, "dev", 5).env("qa");
  b.pod(11, "qa", 5).env("dev");
  apply_checked(r, fm, a);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_pods cgroup 11 env " + u(*r.env_id("qa"))));
}

// --- adoption --------------------------------------------------------------

TEST(ReconcilerAdopt, SecondReconcilerAdoptsAndWritesNothing) {
  FakeMaps fm;
  Want w = rich();
  Reconciler first(fm, '.');
  apply_checked(first, fm, w);

  Reconciler second(fm, '.');
  size_t adopted = second.adopt();
  size_t entries = 0;
  for (auto m : {MapId::Frontends, MapId::Sets, MapId::Slots, MapId::Envs, MapId::EnvNames, MapId::Pods})
    entries += fm.size(m);
  EXPECT_EQ(adopted, entries);
  EXPECT_EQ(shadow_diff(second, fm), "");
  size_t from = fm.ops.size();
  auto st = apply_checked(second, fm, w, w);
  EXPECT_FALSE(st.changed()) << fake::describe(fm.ops, from);
  for (const auto& e : w.d.envs) EXPECT_EQ(second.env_id(e), first.env_id(e)) << e;
  for (const auto& [k, spec] : w.d.frontends) EXPECT_EQ(second.svc_id(k), first.svc_id(k));

  // and it goes on from there like the first would have
  Want b = rich();
  b.set("10.96.0.1:80", "dev.proj1", {"10.1.0.9:8080"}).pod(1004, "qa", 2);
  apply_checked(second, fm, b, w);
  expect_converged(fm, b);
}

TEST(ReconcilerAdopt, StraySlotBeyondTheCountIsDeletedOnNextApply) {
  FakeMaps fm;
  Want w;
  w.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80"});
  {
    Reconciler first(fm, '.');
    apply_checked(first, fm, w);
  }
  // a previous agent died between publishing a smaller count and deleting the tail
  es_slot_key stray{1, ES_ENV_BASE, 2};
  at(fm.state, MapId::Slots)[bytes_of(stray)] = bytes_of(BE("10.1.0.3:80"));
  // and one for a set that no longer exists
  es_slot_key orphan{1, 77, 0};
  at(fm.state, MapId::Slots)[bytes_of(orphan)] = bytes_of(BE("10.1.0.4:80"));

  Reconciler r(fm, '.');
  r.adopt();
  // the shadow mirrors both: slot 2 beyond the count of 2, and a set that is not published
  ASSERT_EQ(r.shadow().sets.count(es_set_key{1, ES_ENV_BASE}), 1u);
  EXPECT_EQ(r.shadow().sets.at(es_set_key{1, ES_ENV_BASE}).count, 2u);
  EXPECT_EQ(r.shadow().sets.at(es_set_key{1, ES_ENV_BASE}).slots.size(), 3u);
  ASSERT_EQ(r.shadow().sets.count(es_set_key{1, 77}), 1u);
  EXPECT_FALSE(r.shadow().sets.at(es_set_key{1, 77}).published);
  size_t from = fm.ops.size();
  auto st = apply_checked(r, fm, w, w);
  EXPECT_THAT(ops_since(fm, from), ::testing::UnorderedElementsAre("remove es_slots {svc 1, env 1, slot 2}",
                                                                   "remove es_slots {svc 1, env 77, slot 0}"));
  EXPECT_EQ(st.deletes, 2u);
  EXPECT_EQ(r.shadow().sets.count(es_set_key{1, 77}), 0u);
  EXPECT_EQ(r.shadow().sets.at(es_set_key{1, ES_ENV_BASE}).slots.size(), 2u);
  EXPECT_THAT(fake::garbage(fm.state), IsEmpty());
  EXPECT_FALSE(apply_checked(r, fm, w, w).changed());
}

TEST(ReconcilerAdopt, MissingSlotInsideTheCountIsRefilled) {
  FakeMaps fm;
  Want w;
  w.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"});
  {
    Reconciler first(fm, '.');
    apply_checked(first, fm, w);
  }
  at(fm.state, MapId::Slots).erase(bytes_of(es_slot_key{1, ES_ENV_BASE, 1}));
  Reconciler r(fm, '.');
  r.adopt();
  size_t from = fm.ops.size();
  apply_checked(r, fm, w, w);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("update es_slots {svc 1, env 1, slot 1} = 10.1.0.2:80"));
  expect_converged(fm, w);
}

TEST(ReconcilerAdopt, EmptyMapsAdoptNothing) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  EXPECT_EQ(r.adopt(), 0u);
  EXPECT_FALSE(r.shadow().config.has_value());
  Want w = rich();
  apply_checked(r, fm, w);
  expect_converged(fm, w);
}

// --- capacity --------------------------------------------------------------

TEST(ReconcilerCapacity, TooBigWritesNothing) {
  Want w = rich();
  // what rich() needs per map
  FakeMaps probe;
  Reconciler pr(probe, '.');
  pr.apply(w);
  for (auto m : {MapId::Frontends, MapId::Sets, MapId::Slots, MapId::Envs, MapId::EnvNames, MapId::Pods}) {
    SCOPED_TRACE(maps::map_name(m));
    uint32_t need = static_cast<uint32_t>(probe.size(m));
    ASSERT_GT(need, 0u);
    {
      FakeMaps fm;
      fm.set_capacity(m, need - 1);
      Reconciler r(fm, '.');
      try {
        r.apply(w);
        ADD_FAILURE() << "no CapacityError";
      } catch (const CapacityError& e) {
        EXPECT_THAT(e.what(), HasSubstr(maps::map_name(m)));
      }
      EXPECT_THAT(fm.ops, IsEmpty());
      EXPECT_EQ(fm.attempts, 0u);
      EXPECT_EQ(shadow_diff(r, fm), "");
    }
    {
      FakeMaps fm;
      fm.set_capacity(m, need);
      Reconciler r(fm, '.');
      apply_checked(r, fm, w);
      expect_converged(fm, w);
    }
  }
}

TEST(ReconcilerCapacity, TooBigAfterAGoodStateKeepsTheGoodState) {
  FakeMaps fm;
  fm.set_capacity(MapId::Slots, 4);
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"}).set("10.96.0.2:80", "", {"10.1.0.4:80", "10.1.0.5:80"});
  apply_checked(r, fm, a);
  size_t n = fm.ops.size(), attempts = fm.attempts;
  EXPECT_THROW(r.apply(b), CapacityError);
  EXPECT_EQ(fm.ops.size(), n);
  EXPECT_EQ(fm.attempts, attempts);
  expect_converged(fm, a);
  EXPECT_FALSE(apply_checked(r, fm, a, a).changed());
}

// Regression (found by review) 4: agent/reconciler.cpp apply() writes every addition (lines 245-286)
// before any removal (lines 288-325), and check_capacity() (lines 149-162)
// only compares the TARGET size with max_entries. A target that fits but replaces entries of a
// full map therefore needs old+new entries at once: the BPF hash map refuses
// the new key with -E2BIG, apply() throws ApplyError, and every retry fails
// at the same write, because the removals that would make room never run.
// Repro: Frontends capacity 2; apply {A, B}; apply {C, D} -> ApplyError
// "update of map es_frontends failed: Argument list too long", forever (the
// sets of C and D are left behind as orphans; see also BUG 3). The same holds
// for every hash map (sets, slots, envs, names, pods) near its limit.
// Expected: the state is applied (e.g. removals first where the order allows
// it, or a capacity check on the transient peak with a two-step fallback).
TEST(ReconcilerCapacity, FullMapCanBeReplacedByAStateThatFits) {
  FakeMaps fm;
  fm.set_capacity(MapId::Frontends, 2);
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:80"}).set("10.96.0.2:80", "", {"10.1.0.2:80"});
  b.set("10.96.0.3:80", "", {"10.1.0.1:80"}).set("10.96.0.4:80", "", {"10.1.0.2:80"});
  apply_checked(r, fm, a);
  EXPECT_NO_THROW(apply_checked(r, fm, b, a));
  EXPECT_NO_THROW(apply_checked(r, fm, b, a));
  expect_converged(fm, b);
}

// --- write failures --------------------------------------------------------

// s1 -> s2 touches every kind of write: new/removed frontends, sets that grow,
// shrink, appear and vanish, envs that appear and vanish, pods, the config.
Want fail_s1() {
  Want w;
  w.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80"})
      .set("10.96.0.1:80", "dev", {"10.1.0.3:80"})
      .set("10.96.0.2:80", "dev.x", {"10.1.0.4:80", "10.1.0.5:80", "10.1.0.6:80"})
      .set("10.96.0.2:80", "qa", {"10.1.0.7:80"})
      .env("old.gone")
      .pod(100, "dev.x", 3)
      .pod(101, "old.gone", 3);
  return w;
}

Want fail_s2() {
  Want w;
  w.set("10.96.0.2:80", "dev.x", {"10.1.0.4:80", "10.1.0.6:80"})
      .set("10.96.0.2:80", "dev", {"10.1.0.8:80", "10.1.0.9:80"})
      .set("10.96.0.3:53/UDP", "qa", {"10.1.0.10:53"})
      .set("10.96.0.3:53/UDP", "dev.y", {"10.1.0.11:53", "10.1.0.12:53"})
      .default_env("dev")
      .pod(100, "dev.y", 4)
      .pod(102, "", 2);
  return w;
}

// Sets written a round at a time (set_chunk): every op keeps the invariants,
// the maps end as with one round, and a change of every kind converges.
TEST(ReconcilerApply, SetsWrittenInRoundsKeepEveryOpInvariant) {
  for (size_t chunk : {1, 2, 3}) {
    FakeMaps fm;
    Reconciler r(fm, '.');
    r.set_chunk(chunk);
    Want w = rich();
    auto st = apply_checked(r, fm, w);
    expect_converged(fm, w);
    EXPECT_EQ(shadow_diff(r, fm), "");
    size_t entries = 0;
    for (size_t m = 0; m < maps::kMapCount; m++) entries += fm.state[m].size();
    EXPECT_EQ(st.updates, entries) << chunk;  // still every entry once
    FakeMaps fm2;
    Reconciler r2(fm2, '.');
    r2.set_chunk(chunk);
    Want s1 = fail_s1(), s2 = fail_s2();
    apply_checked(r2, fm2, s1);
    apply_checked(r2, fm2, s2, s1);
    expect_converged(fm2, s2);
    EXPECT_EQ(shadow_diff(r2, fm2), "");
  }
}

// After an interrupted s1 -> s2, a state with a new frontend (it may get a
// freed service id) that lacks some envs the removed frontend had.
Want fail_s3() {
  Want w;
  w.set("10.96.0.2:80", "dev.x", {"10.1.0.4:80"})
      .set("10.96.0.4:80", "qa", {"10.1.0.13:80"})
      .set("10.96.0.5:80", "dev.x", {"10.1.0.14:80"})
      .pod(100, "dev.x", 4);
  return w;
}

TEST(ReconcilerFailure, FailedWriteThrowsApplyErrorNamingTheMap) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  fm.fail_nth_write(1);
  try {
    r.apply(fail_s1());
    ADD_FAILURE() << "no ApplyError";
  } catch (const ApplyError& e) {
    EXPECT_THAT(e.what(), HasSubstr("es_envs"));
    EXPECT_THAT(e.what(), HasSubstr("Cannot allocate memory"));
  }
  EXPECT_THAT(fm.ops, IsEmpty());
  EXPECT_EQ(shadow_diff(r, fm), "");
  apply_checked(r, fm, fail_s1());
  expect_converged(fm, fail_s1());
}

// Sets of the maps whose service id no frontend of the maps uses.
std::set<uint32_t> orphan_svc_ids(const MapState& s) {
  std::set<uint32_t> used, out;
  for (const auto& [k, v] : at(s, MapId::Frontends)) used.insert(from_bytes<es_frontend>(v).svc_id);
  for (const auto& [k, v] : at(s, MapId::Sets)) {
    auto id = from_bytes<es_set_key>(k).svc_id;
    if (!used.count(id)) out.insert(id);
  }
  return out;
}

// Fails write #n of s1 -> s2 (s1 = {} when null) for every n, checks what the
// failed apply left behind, then applies `target` without failure and checks
// every op of that recovery and the result.
//
// The contract: "ApplyError: partly written, shadow accurate; the next apply()
// retries the rest" — for every failure point.
void failure_sweep(const DesiredState* s1, const DesiredState& s2, const DesiredState& target) {
  size_t total;
  std::vector<Op> clean;  // the ops of an uninterrupted s1 -> s2
  {
    FakeMaps fm;
    Reconciler r(fm, '.');
    if (s1) r.apply(*s1);
    size_t from = fm.ops.size(), before = fm.attempts;
    r.apply(s2);
    total = fm.attempts - before;
    clean.assign(fm.ops.begin() + static_cast<std::ptrdiff_t>(from), fm.ops.end());
  }
  ASSERT_EQ(total, clean.size());
  ASSERT_GT(total, 0u);
  const DesiredState empty;
  const DesiredState& prev = s1 ? *s1 : empty;
  for (size_t n = 1; n <= total; n++) {
    const Op& failing = clean[n - 1];
    SCOPED_TRACE("failing write #" + std::to_string(n) + " (" + fake::describe(failing) + ")");
    FakeMaps fm;
    Reconciler r(fm, '.');
    if (s1) apply_checked(r, fm, *s1);
    fm.fail_nth_write(n);
    size_t from = fm.ops.size();
    // the failed apply, too, never shows a half state
    EXPECT_THROW(apply_checked(r, fm, s2, prev), ApplyError);
    EXPECT_EQ(fm.ops.size() - from, n - 1);

    EXPECT_EQ(shadow_diff(r, fm), "");

    // recovery: the maps are somewhere between prev and s2
    MapState before = fm.state;
    from = fm.ops.size();
    r.apply(target);
    Routing allowed = merge(merge(fake::semantics(prev).routing, fake::semantics(s2).routing),
                            fake::semantics(target).routing);
    std::string replay = check_replay(before, fm.ops, from, allowed, fake::semantics(target).routing);
    EXPECT_EQ(replay, "");
    EXPECT_THAT(orphan_svc_ids(fm.state), IsEmpty());
    expect_converged(fm, target);
    EXPECT_EQ(shadow_diff(r, fm), "");
    EXPECT_FALSE(apply_checked(r, fm, target, target).changed());
  }
}

TEST(ReconcilerFailure, EveryWriteOfTheFirstApplyCanFail) {
  Want s1 = fail_s1();
  failure_sweep(nullptr, s1, s1);
}

TEST(ReconcilerFailure, EveryWriteOfAnUpdateCanFailThenRetry) {
  Want s1 = fail_s1(), s2 = fail_s2();
  failure_sweep(&s1.d, s2, s2);
}

TEST(ReconcilerFailure, EveryWriteOfAnUpdateCanFailThenAnotherState) {
  Want s1 = fail_s1(), s2 = fail_s2(), s3 = fail_s3();
  failure_sweep(&s1.d, s2, s3);
  failure_sweep(&s1.d, s2, s1);  // roll back
}

// A failure in the removal phase (nothing of the set's shadow involved) is
// retried cleanly.
TEST(ReconcilerFailure, FailedFrontendDeleteIsRetried) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want a, b;
  a.set("10.96.0.1:80", "", {"10.1.0.1:80"}).set("10.96.0.2:80", "", {"10.1.0.2:80"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:80"});
  apply_checked(r, fm, a);
  fm.fail_nth_write(1);  // "remove es_frontends 10.96.0.2:80/TCP"
  EXPECT_THROW(apply_checked(r, fm, b, a), ApplyError);
  EXPECT_EQ(shadow_diff(r, fm), "");
  EXPECT_EQ(r.svc_id(FE("10.96.0.2:80")), 2u);
  size_t from = fm.ops.size();
  apply_checked(r, fm, b, a);
  EXPECT_THAT(ops_since(fm, from), ElementsAre("remove es_frontends 10.96.0.2:80/TCP", "remove es_sets {svc 2, env 1}",
                                               "remove es_slots {svc 2, env 1, slot 0}"));
  expect_converged(fm, b);
}

// Regression (found by review) 1 (agent/reconciler.cpp write_set(), lines 209-225): the shadow of a set
// is a vector whose size stands for the set's count, but write_set()
// push_back()s appended slots into it (line 215) BEFORE the count is
// published (line 219). When a slot or count write of a growing set fails
// (ApplyError), the shadow claims the grown count while the map still holds
// the old one (or no es_sets entry at all for a new set). The next apply()
// then compares shadow == desired (same size, same backends), skips
// write_set(), and never writes the count: the new backends stay invisible
// forever; for a new set the frontend is published with NO set (callers fall
// back or are refused) although apply() reports success.
// Repro: desired = 10.96.0.1:80 with set "" = {10.1.0.1:80, 10.1.0.2:80};
// fm.fail_nth_write(3) (the es_sets write after the two slot writes);
// apply() -> ApplyError; apply() again -> succeeds writing only the frontend
// and the config; es_sets {svc 1, env 1} is missing, slots 0 and 1 are
// orphaned. Expected: the count is written by the retry.
TEST(ReconcilerFailure, FailedCountWriteOfAGrowingSetIsRetried) {
  FakeMaps fm;
  Reconciler r(fm, '.');
  Want w;
  w.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80"});
  fm.fail_nth_write(3);
  EXPECT_THROW(r.apply(w), ApplyError);
  EXPECT_EQ(shadow_diff(r, fm), "");
  r.apply(w);
  expect_converged(fm, w);
}

// BUG 2 (agent/reconciler.cpp write_set() line 225 and delete_set() lines
// 231-237): the shadow of a set is shortened only after ALL tail slots are
// deleted, and delete_set() removes the es_sets entry before its slots but
// keeps the shadow set until the last slot is gone. A failed slot delete
// leaves a shadow that claims the old count (or a set entry that is gone).
// The next apply diffs against that: wanting the old backends again writes
// nothing (they stay invisible), wanting fewer publishes a count over a hole.
// Repro: set "" = {A, B, C} applied; desired {A}: ops "count 1", "remove
// slot 1", "remove slot 2" -> fail the 3rd; then desired {A, B}: apply()
// writes only "count 2" and "remove slot 2" -> count 2 with slot 1 missing
// (every connect that picks slot 1 takes the slot-race fallback, forever);
// or desired {A, B, C}:
// apply() writes nothing, count stays 1.
TEST(ReconcilerFailure, FailedTailDeleteThenRegrowth) {
  Want a, b, c;
  a.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"});
  b.set("10.96.0.1:80", "", {"10.1.0.1:80"});
  c.set("10.96.0.1:80", "", {"10.1.0.1:80", "10.1.0.2:80"});
  for (const Want* next : {&a, &c}) {
    FakeMaps fm;
    Reconciler r(fm, '.');
    r.apply(a);
    fm.fail_nth_write(3);
    EXPECT_THROW(r.apply(b), ApplyError);
    EXPECT_EQ(shadow_diff(r, fm), "");
    apply_checked(r, fm, *next, b);     // fails for c: "has count 2 but no slot 1"
    expect_converged(fm, *next);        // fails for a: only 10.1.0.1:80 visible
  }
}

// BUG 3 (agent/reconciler.cpp plan(), lines 120-126): new service ids are
// allocated avoiding only the ids of the shadow's FRONTENDS. Sets of a
// frontend that is gone but whose sets are still in the maps (an apply that
// failed between "remove es_frontends" and the set deletes; a previous agent
// that died there and was adopted; a failed frontend write of a new service)
// keep their svc id, a new frontend can get that id, and since frontends are
// written before stale sets are removed, the new service is published with
// the OLD service's sets: callers in an env the new service has no set for
// are sent to the old service's pods until the removal phase (or forever if
// that apply fails again).
// Repro: s1 = {10.96.0.1:80: "" {10.1.0.1:80}, "dev" {10.1.0.3:80}};
// apply s1; fail the 2nd write of s1 -> {} ("remove es_sets {svc 1, env 1}"
// after "remove es_frontends 10.96.0.1:80/TCP"); apply s3 = {10.96.0.4:80:
// "qa" {10.1.0.13:80}}: 10.96.0.4 gets svc 1 and, when published, routes
// env "" to 10.1.0.1:80 and "dev" to 10.1.0.3:80. Expected: ids of sets still
// in the shadow (and of its stray slots) are not reused.
TEST(ReconcilerFailure, OrphanSetsDoNotLeakIntoANewFrontend) {
  Want s1, s2, s3;
  s1.set("10.96.0.1:80", "", {"10.1.0.1:80"}).set("10.96.0.1:80", "dev", {"10.1.0.3:80"});
  s3.set("10.96.0.4:80", "qa", {"10.1.0.13:80"});
  FakeMaps fm;
  Reconciler r(fm, '.');
  r.apply(s1);
  fm.fail_nth_write(2);
  EXPECT_THROW(r.apply(s2), ApplyError);
  Routing allowed = merge(fake::semantics(s1).routing, fake::semantics(s3).routing);
  MapState before = fm.state;
  size_t from = fm.ops.size();
  r.apply(s3);
  EXPECT_EQ(check_replay(before, fm.ops, from, allowed, fake::semantics(s3).routing), "");
}

// --- randomized ------------------------------------------------------------

// Random desired states over small pools, each mostly a small change of the
// previous one (now and then a jump or an empty state).
class RandomWorld {
 public:
  explicit RandomWorld(uint32_t seed) : rng_(seed) {}

  Want next() {
    std::uniform_real_distribution<double> p(0, 1);
    double roll = p(rng_);
    if (roll < 0.04) {
      members_.clear();
      lone_.clear();
      pods_.clear();
    } else if (roll < 0.12) {
      members_.clear();
      for (size_t f = 0; f < kFrontends.size(); f++)
        for (size_t e = 0; e < kEnvs.size(); e++)
          for (size_t b = 0; b < 6; b++)
            if (p(rng_) < 0.12) members_.insert({f, e, b});
    } else {
      for (size_t f = 0; f < kFrontends.size(); f++)
        for (size_t e = 0; e < kEnvs.size(); e++)
          for (size_t b = 0; b < 6; b++)
            if (p(rng_) < 0.015) flip(members_, std::make_tuple(f, e, b));
    }
    for (size_t f = 0; f < kFrontends.size(); f++)
      if (p(rng_) < 0.08) flip(lone_, f);
    for (size_t e = 0; e < kEnvs.size(); e++)
      if (p(rng_) < 0.05) flip(extra_envs_, e);
    if (p(rng_) < 0.08) default_env_ = kDefaults[rng_() % kDefaults.size()];
    for (uint64_t cg = 0; cg < 5; cg++) {
      if (p(rng_) < 0.1) {
        if (pods_.count(cg) && p(rng_) < 0.5) pods_.erase(cg);
        else pods_[cg] = {rng_() % kEnvs.size(), 1 + static_cast<int>(rng_() % 6)};
      }
    }

    Want w;
    for (size_t f : lone_) w.frontend(kFrontends[f]);
    for (const auto& [f, e, b] : members_) {
      bool v6 = kFrontends[f][0] == '[';
      std::string be = v6 ? "[fd01::" + std::to_string(b + 1) + "]:8080" : "10.1.0." + std::to_string(b + 1) + ":8080";
      w.set(kFrontends[f], kEnvs[e], {be});
    }
    for (size_t e : extra_envs_) w.env(kEnvs[e]);
    w.default_env(default_env_);
    for (const auto& [cg, pe] : pods_) w.pod(1000 + cg, kEnvs[pe.first], pe.second);
    return w;
  }

 private:
  template <class S, class T>
  static void flip(S& s, const T& v) {
    if (!s.erase(v)) s.insert(v);
  }

  const std::vector<std::string> kFrontends = {"10.96.0.1:80", "10.96.0.1:53/UDP", "10.96.0.2:80",
                                               "10.96.0.3:8080", "[fd00::1]:80", "[fd00::2]:443"};
  const std::vector<EnvName> kEnvs = {"", "dev", "dev.a", "dev.a.x", "dev.b", "qa", "qa.c"};
  const std::vector<EnvName> kDefaults = {"", "", "dev", "qa.c"};

  std::mt19937 rng_;
  std::set<std::tuple<size_t, size_t, size_t>> members_;
  std::set<size_t> lone_;
  std::set<size_t> extra_envs_;
  std::map<uint64_t, std::pair<size_t, int>> pods_;
  EnvName default_env_;
};

TEST(ReconcilerProperty, RandomSequencesConvergeWithSafeIntermediateStates) {
  RandomWorld world(20240611);
  FakeMaps fm;
  auto r = std::make_unique<Reconciler>(fm, '.');
  DesiredState prev;
  size_t total_ops = 0, adoptions = 0, rewrites = 0;
  std::array<size_t, maps::kMapCount> removes{};
  for (int iter = 0; iter < 300; iter++) {
    SCOPED_TRACE("iteration " + std::to_string(iter));
    Want want = world.next();
    size_t from = fm.ops.size();
    MapState before = fm.state;
    apply_checked(*r, fm, want, prev);
    if (::testing::Test::HasFailure()) return;  // one report is enough
    total_ops += fm.ops.size() - from;
    for (size_t i = from; i < fm.ops.size(); i++) {
      const Op& op = fm.ops[i];
      if (op.kind == Op::Remove) removes[static_cast<size_t>(op.map)]++;
      if (op.kind == Op::Update && op.map == MapId::Slots && at(before, MapId::Slots).count(op.key)) rewrites++;
    }

    // What a fresh reconciler writes for this state means the same.
    FakeMaps fresh;
    Reconciler fr(fresh, '.');
    fr.apply(want);
    EXPECT_EQ(fake::to_string(fake::semantics(fm.state)), fake::to_string(fake::semantics(fresh.state)));
    expect_converged(fm, want);
    EXPECT_EQ(shadow_diff(*r, fm), "");
    // never more entries than a fresh apply
    for (size_t m = 0; m < maps::kMapCount; m++) EXPECT_EQ(fm.state[m].size(), fresh.state[m].size()) << m;

    if (iter % 17 == 0) {
      EXPECT_FALSE(apply_checked(*r, fm, want, want).changed());
    }
    if (iter % 29 == 0) {  // an agent restart
      r = std::make_unique<Reconciler>(fm, '.');
      r->adopt();
      EXPECT_EQ(shadow_diff(*r, fm), "");
      EXPECT_FALSE(apply_checked(*r, fm, want, want).changed());
      adoptions++;
    }
    if (::testing::Test::HasFailure()) return;
    prev = want.d;
  }
  // the sequence really exercised every kind of change
  EXPECT_GT(total_ops, 300u);
  EXPECT_GT(adoptions, 5u);
  EXPECT_GT(rewrites, 10u);  // slots refilled in place / holes closed
  for (auto m : {MapId::Frontends, MapId::Sets, MapId::Slots, MapId::Envs, MapId::EnvNames, MapId::Pods})
    EXPECT_GT(removes[static_cast<size_t>(m)], 5u) << maps::map_name(m);
}

// The incremental path: random cluster events through IncrementalModel, each
// delta applied with apply(want, delta) and every op of it checked like
// above; the maps then mean what a fresh reconciler writes for a full build
// of the same objects, with no more entries. Agent restarts now and then (a
// new model and reconciler adopting the maps: nothing to write).
TEST(ReconcilerProperty, IncrementalDeltasEqualAFullBuildWithSafeIntermediateStates) {
  for (uint32_t seed : {7u, 8u, 9u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    events_test::FakeCgroups cg;
    events_test::RandomCluster world(seed, cg);
    const bool kube = seed == 9;
    auto m = std::make_unique<IncrementalModel>(world.options(!kube, "dev", kube));
    FakeMaps fm;
    auto r = std::make_unique<Reconciler>(fm, '.');
    r->apply(m->state(), m->take_delta());
    DesiredState prev = m->state();
    size_t delta_ops = 0, restarts = 0;
    for (int i = 0; i < 400; i++) {
      events_test::Event ev = world.next();
      SCOPED_TRACE("event " + std::to_string(i) + ": " + ev.what);
      ev.apply(*m);
      const DesiredState& want = m->state();
      ModelDelta d = m->take_delta();
      size_t from = fm.ops.size();
      apply_checked(*r, fm, want, prev, &d);
      if (::testing::Test::HasFailure()) return;
      delta_ops += fm.ops.size() - from;
      FakeMaps fresh;
      Reconciler fr(fresh, '.');
      fr.apply(build_model(m->cluster(), m->options()));
      EXPECT_EQ(fake::to_string(fake::semantics(fm.state)), fake::to_string(fake::semantics(fresh.state)));
      expect_converged(fm, want);
      EXPECT_EQ(shadow_diff(*r, fm), "");
      for (size_t k = 0; k < maps::kMapCount; k++) EXPECT_EQ(fm.state[k].size(), fresh.state[k].size()) << k;
      if (i % 53 == 52) {
        DesiredState held = want;  // `want` is the old model's
        auto opts = m->options();
        k8s::ClusterState cs = m->cluster();
        m = std::make_unique<IncrementalModel>(opts);
        m->reset(std::move(cs));
        r = std::make_unique<Reconciler>(fm, '.');
        r->adopt();
        ModelDelta all = m->take_delta();
        EXPECT_TRUE(all.all);
        EXPECT_FALSE(apply_checked(*r, fm, m->state(), held, &all).changed());
        restarts++;
      }
      if (::testing::Test::HasFailure()) return;
      prev = m->state();
    }
    EXPECT_GT(delta_ops, 100u);
    EXPECT_GT(restarts, 5u);
  }
}

}  // namespace
}  // namespace envsteer::reconciler_test
