// SPDX-License-Identifier: Apache-2.0
// The resolution walk of bpf/lib/resolve.h (the code connect() runs), over a
// small in-memory table instead of BPF maps.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "maps/abi.h"

namespace envsteer::resolve_test {
namespace {

// What the walk reads: sets by (svc, env), envs by id. Counts the lookups so
// a test can see the walk is bounded.
struct Table {
  std::map<std::pair<__u32, __u32>, es_set> sets;
  std::map<__u32, es_env> envs;
  int set_lookups = 0;
  int env_lookups = 0;

  Table& set(__u32 svc, __u32 env, __u32 count) {
    sets[{svc, env}] = es_set{count, 0};
    return *this;
  }
  Table& env(__u32 id, __u32 parent, __u32 depth = 0) {
    es_env e{};
    e.parent_id = parent;
    e.depth = depth;
    envs[id] = e;
    return *this;
  }
};

const es_set* table_set(void* ctx, const es_set_key* k) {
  auto* t = static_cast<Table*>(ctx);
  t->set_lookups++;
  auto it = t->sets.find({k->svc_id, k->env_id});
  return it == t->sets.end() ? nullptr : &it->second;
}

const es_env* table_env(void* ctx, __u32 id) {
  auto* t = static_cast<Table*>(ctx);
  t->env_lookups++;
  auto it = t->envs.find(id);
  return it == t->envs.end() ? nullptr : &it->second;
}

}  // namespace
}  // namespace envsteer::resolve_test

#define ES_LOOKUP_SET(ctx, key) envsteer::resolve_test::table_set((ctx), (key))
#define ES_LOOKUP_ENV(ctx, id) envsteer::resolve_test::table_env((ctx), (id))
extern "C" {
#include "bpf/lib/resolve.h"
}

namespace envsteer::resolve_test {
namespace {

constexpr __u32 kSvc = 7;
constexpr __u32 kOther = 8;
// ids: 1 = base, 2 = dev, 3 = dev.proj1, 4 = dev.proj1.alice, 5 = qa
constexpr __u32 kBase = ES_ENV_BASE, kDev = 2, kProj = 3, kAlice = 4, kQa = 5;

Table envs() {
  Table t;
  t.env(kDev, ES_ENV_NONE, 0).env(kProj, kDev, 1).env(kAlice, kProj, 2).env(kQa, ES_ENV_NONE, 0);
  return t;
}

struct Result {
  int found;
  es_resolution res;
};

Result resolve(Table& t, __u32 env, __u32 default_env, __u32 svc = kSvc) {
  Result r{};
  r.res = es_resolution{0xdead, 0xdead, 0xdead, 0xdead};
  r.found = es_resolve(&t, svc, env, default_env, &r.res);
  return r;
}

// One walk over the envs() table: the sets (service, env, ready count) there are, the
// environment asked for and the default, and what is expected of the result (a field left
// out is not checked).
struct WalkCase {
  const char* name;
  std::vector<std::tuple<__u32, __u32, __u32>> sets;
  __u32 env;
  __u32 default_env;
  int found;
  std::optional<__u32> env_id = {};
  std::optional<__u32> level = {};
  std::optional<__u32> count = {};
  std::optional<__u32> outcome = {};
  std::optional<int> set_lookups = {};
};

const WalkCase kWalks[] = {
    {.name = "own environment",
     .sets = {{kSvc, kAlice, 2}, {kSvc, kProj, 5}, {kSvc, kBase, 1}},
     .env = kAlice, .default_env = kBase, .found = 1,
     .env_id = kAlice, .level = 0, .count = 2, .outcome = ES_OUT_OWN},
    {.name = "fallback one level",
     .sets = {{kSvc, kProj, 5}, {kSvc, kDev, 3}, {kSvc, kBase, 1}},
     .env = kAlice, .default_env = kBase, .found = 1,
     .env_id = kProj, .level = 1, .count = 5, .outcome = ES_OUT_FALLBACK},
    {.name = "fallback two levels",
     .sets = {{kSvc, kDev, 3}, {kSvc, kBase, 1}},
     .env = kAlice, .default_env = kBase, .found = 1,
     .env_id = kDev, .level = 2, .count = 3, .outcome = ES_OUT_FALLBACK},
    {.name = "other services' sets do not count",
     .sets = {{kOther, kAlice, 4}, {kOther, kProj, 4}, {kSvc, kDev, 3}},
     .env = kAlice, .default_env = ES_ENV_NONE, .found = 1,
     .env_id = kDev, .level = 2},
    {.name = "siblings are not on the chain",
     .sets = {{kSvc, kQa, 2}},
     .env = kAlice, .default_env = ES_ENV_NONE, .found = 0,
     .outcome = ES_OUT_NONE},
    {.name = "default env when the chain has no ready set",
     .sets = {{kSvc, kQa, 2}},
     .env = kAlice, .default_env = kQa, .found = 1,
     .env_id = kQa, .count = 2, .outcome = ES_OUT_DEFAULT},
    {.name = "default is the base when no default env is configured",
     .sets = {{kSvc, kBase, 4}},
     .env = kProj, .default_env = kBase, .found = 1,
     .env_id = kBase, .count = 4, .outcome = ES_OUT_DEFAULT},
    // default env "dev" is an ancestor of dev.proj1.alice: found by the walk.
    {.name = "default env on the chain is a fallback",
     .sets = {{kSvc, kDev, 3}},
     .env = kAlice, .default_env = kDev, .found = 1,
     .env_id = kDev, .outcome = ES_OUT_FALLBACK},
    // an unlabelled caller, no default-env
    {.name = "requested env is the default",
     .sets = {{kSvc, kBase, 1}},
     .env = kBase, .default_env = kBase, .found = 1,
     .env_id = kBase, .level = 0, .outcome = ES_OUT_OWN},
    {.name = "unknown env id falls to the default",
     .sets = {{kSvc, kDev, 3}, {kSvc, kBase, 1}},
     .env = 99, .default_env = kBase, .found = 1,
     .env_id = kBase, .count = 1, .outcome = ES_OUT_DEFAULT},
    {.name = "unknown env id without a default is refused",
     .sets = {{kSvc, kDev, 3}},
     .env = 99, .default_env = kBase, .found = 0,
     .outcome = ES_OUT_NONE},
    // no set lookup for env 0 itself
    {.name = "none as the requested env goes straight to the default",
     .sets = {{kSvc, kDev, 3}},
     .env = ES_ENV_NONE, .default_env = kDev, .found = 1,
     .env_id = kDev, .outcome = ES_OUT_DEFAULT, .set_lookups = 1},
    {.name = "count zero is empty",
     .sets = {{kSvc, kAlice, 0}, {kSvc, kProj, 0}, {kSvc, kDev, 2}},
     .env = kAlice, .default_env = kBase, .found = 1,
     .env_id = kDev, .level = 2, .outcome = ES_OUT_FALLBACK},
    {.name = "default with count zero is refused",
     .sets = {{kSvc, kAlice, 0}, {kSvc, kBase, 0}},
     .env = kAlice, .default_env = kBase, .found = 0,
     .env_id = ES_ENV_NONE, .count = 0, .outcome = ES_OUT_NONE},
    {.name = "no ready pod anywhere is refused",
     .sets = {},
     .env = kAlice, .default_env = kBase, .found = 0,
     .env_id = ES_ENV_NONE, .level = 0, .count = 0, .outcome = ES_OUT_NONE},
    {.name = "default env none refuses even if the base has pods",
     .sets = {{kSvc, kBase, 3}},
     .env = kAlice, .default_env = ES_ENV_NONE, .found = 0,
     .outcome = ES_OUT_NONE},
};

TEST(ResolveWalk, Table) {
  for (const WalkCase& c : kWalks) {
    SCOPED_TRACE(c.name);
    Table t = envs();
    for (const auto& [svc, env, count] : c.sets) t.set(svc, env, count);
    auto r = resolve(t, c.env, c.default_env);
    EXPECT_EQ(r.found, c.found);
    if (c.env_id) {
      EXPECT_EQ(r.res.env_id, *c.env_id);
    }
    if (c.level) {
      EXPECT_EQ(r.res.level, *c.level);
    }
    if (c.count) {
      EXPECT_EQ(r.res.count, *c.count);
    }
    if (c.outcome) {
      EXPECT_EQ(r.res.outcome, *c.outcome);
    }
    if (c.set_lookups) {
      EXPECT_EQ(t.set_lookups, *c.set_lookups);
    }
  }
}

TEST(ResolveWalk, ParentCycleTerminates) {
  // A corrupt table: 10 -> 11 -> 10 -> ... The walk is bounded.
  Table t;
  t.env(10, 11).env(11, 10).set(kSvc, kBase, 2);
  auto r = resolve(t, 10, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kBase);
  EXPECT_EQ(r.res.outcome, ES_OUT_DEFAULT);
  EXPECT_LE(t.set_lookups, ES_MAX_ENV_DEPTH + 1);
  EXPECT_LE(t.env_lookups, ES_MAX_ENV_DEPTH);
}

TEST(ResolveWalk, SelfParentTerminatesAndRefuses) {
  Table t;
  t.env(10, 10);
  auto r = resolve(t, 10, kBase);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(r.res.outcome, ES_OUT_NONE);
  EXPECT_LE(t.set_lookups, ES_MAX_ENV_DEPTH + 1);
}

// The deepest valid name has 32 segments: the walk reaches its root.
TEST(ResolveWalk, DeepestChainReachesTheRoot) {
  Table t;
  // ids 100 (root, depth 0) .. 131 (depth 31)
  for (__u32 d = 0; d < ES_MAX_ENV_DEPTH; d++) t.env(100 + d, d == 0 ? ES_ENV_NONE : 100 + d - 1, d);
  t.set(kSvc, 100, 1);
  auto r = resolve(t, 100 + ES_MAX_ENV_DEPTH - 1, ES_ENV_NONE);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, 100u);
  EXPECT_EQ(r.res.level, static_cast<__u32>(ES_MAX_ENV_DEPTH - 1));
  EXPECT_EQ(r.res.outcome, ES_OUT_FALLBACK);
}

TEST(ResolveWalk, ChainLongerThanTheBoundStops) {
  // One level more than any valid name can have: the root is not reached.
  Table t;
  for (__u32 d = 0; d <= ES_MAX_ENV_DEPTH; d++) t.env(100 + d, d == 0 ? ES_ENV_NONE : 100 + d - 1, d);
  t.set(kSvc, 100, 1);
  auto r = resolve(t, 100 + ES_MAX_ENV_DEPTH, ES_ENV_NONE);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(t.set_lookups, ES_MAX_ENV_DEPTH);
}

}  // namespace
}  // namespace envsteer::resolve_test
