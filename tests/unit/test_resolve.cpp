// SPDX-License-Identifier: Apache-2.0
// The resolution walk of bpf/lib/resolve.h (the code connect() runs), over a
// small in-memory table instead of BPF maps.
#include <gtest/gtest.h>

#include <map>
#include <utility>

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

TEST(ResolveWalk, OwnEnvironment) {
  Table t = envs();
  t.set(kSvc, kAlice, 2).set(kSvc, kProj, 5).set(kSvc, kBase, 1);
  auto r = resolve(t, kAlice, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kAlice);
  EXPECT_EQ(r.res.level, 0u);
  EXPECT_EQ(r.res.count, 2u);
  EXPECT_EQ(r.res.outcome, ES_OUT_OWN);
}

TEST(ResolveWalk, FallbackOneLevel) {
  Table t = envs();
  t.set(kSvc, kProj, 5).set(kSvc, kDev, 3).set(kSvc, kBase, 1);
  auto r = resolve(t, kAlice, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kProj);
  EXPECT_EQ(r.res.level, 1u);
  EXPECT_EQ(r.res.count, 5u);
  EXPECT_EQ(r.res.outcome, ES_OUT_FALLBACK);
}

TEST(ResolveWalk, FallbackTwoLevels) {
  Table t = envs();
  t.set(kSvc, kDev, 3).set(kSvc, kBase, 1);
  auto r = resolve(t, kAlice, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kDev);
  EXPECT_EQ(r.res.level, 2u);
  EXPECT_EQ(r.res.count, 3u);
  EXPECT_EQ(r.res.outcome, ES_OUT_FALLBACK);
}

TEST(ResolveWalk, OtherServicesSetsDoNotCount) {
  Table t = envs();
  t.set(kOther, kAlice, 4).set(kOther, kProj, 4).set(kSvc, kDev, 3);
  auto r = resolve(t, kAlice, ES_ENV_NONE);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kDev);
  EXPECT_EQ(r.res.level, 2u);
}

TEST(ResolveWalk, SiblingsAreNotOnTheChain) {
  Table t = envs();
  t.set(kSvc, kQa, 2);
  auto r = resolve(t, kAlice, ES_ENV_NONE);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(r.res.outcome, ES_OUT_NONE);
}

TEST(ResolveWalk, DefaultEnvWhenChainHasNoReadySet) {
  Table t = envs();
  t.set(kSvc, kQa, 2);
  auto r = resolve(t, kAlice, kQa);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kQa);
  EXPECT_EQ(r.res.count, 2u);
  EXPECT_EQ(r.res.outcome, ES_OUT_DEFAULT);
}

TEST(ResolveWalk, DefaultIsTheBaseWhenNoDefaultEnvConfigured) {
  Table t = envs();
  t.set(kSvc, kBase, 4);
  auto r = resolve(t, kProj, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kBase);
  EXPECT_EQ(r.res.count, 4u);
  EXPECT_EQ(r.res.outcome, ES_OUT_DEFAULT);
}

TEST(ResolveWalk, DefaultEnvOnTheChainIsAFallback) {
  // default env "dev" is an ancestor of dev.proj1.alice: found by the walk.
  Table t = envs();
  t.set(kSvc, kDev, 3);
  auto r = resolve(t, kAlice, kDev);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kDev);
  EXPECT_EQ(r.res.outcome, ES_OUT_FALLBACK);
}

TEST(ResolveWalk, RequestedEnvIsTheDefault) {
  Table t = envs();
  t.set(kSvc, kBase, 1);
  auto r = resolve(t, kBase, kBase);  // an unlabelled caller, no default-env
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kBase);
  EXPECT_EQ(r.res.level, 0u);
  EXPECT_EQ(r.res.outcome, ES_OUT_OWN);
}

TEST(ResolveWalk, UnknownEnvIdFallsToDefault) {
  Table t = envs();
  t.set(kSvc, kDev, 3).set(kSvc, kBase, 1);
  auto r = resolve(t, 99, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kBase);
  EXPECT_EQ(r.res.count, 1u);
  EXPECT_EQ(r.res.outcome, ES_OUT_DEFAULT);
}

TEST(ResolveWalk, UnknownEnvIdWithoutDefaultIsRefused) {
  Table t = envs();
  t.set(kSvc, kDev, 3);
  auto r = resolve(t, 99, kBase);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(r.res.outcome, ES_OUT_NONE);
}

TEST(ResolveWalk, NoneAsRequestedEnvGoesStraightToDefault) {
  Table t = envs();
  t.set(kSvc, kDev, 3);
  auto r = resolve(t, ES_ENV_NONE, kDev);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kDev);
  EXPECT_EQ(r.res.outcome, ES_OUT_DEFAULT);
  // no set lookup for env 0 itself
  EXPECT_EQ(t.set_lookups, 1);
}

TEST(ResolveWalk, CountZeroIsEmpty) {
  Table t = envs();
  t.set(kSvc, kAlice, 0).set(kSvc, kProj, 0).set(kSvc, kDev, 2);
  auto r = resolve(t, kAlice, kBase);
  EXPECT_EQ(r.found, 1);
  EXPECT_EQ(r.res.env_id, kDev);
  EXPECT_EQ(r.res.level, 2u);
  EXPECT_EQ(r.res.outcome, ES_OUT_FALLBACK);
}

TEST(ResolveWalk, DefaultWithCountZeroIsRefused) {
  Table t = envs();
  t.set(kSvc, kAlice, 0).set(kSvc, kBase, 0);
  auto r = resolve(t, kAlice, kBase);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(r.res.env_id, static_cast<__u32>(ES_ENV_NONE));
  EXPECT_EQ(r.res.count, 0u);
  EXPECT_EQ(r.res.outcome, ES_OUT_NONE);
}

TEST(ResolveWalk, NoReadyAnywhereIsRefused) {
  Table t = envs();
  auto r = resolve(t, kAlice, kBase);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(r.res.env_id, static_cast<__u32>(ES_ENV_NONE));
  EXPECT_EQ(r.res.level, 0u);
  EXPECT_EQ(r.res.count, 0u);
  EXPECT_EQ(r.res.outcome, ES_OUT_NONE);
}

TEST(ResolveWalk, DefaultEnvNoneRefusesEvenIfBaseHasPods) {
  Table t = envs();
  t.set(kSvc, kBase, 3);
  auto r = resolve(t, kAlice, ES_ENV_NONE);
  EXPECT_EQ(r.found, 0);
  EXPECT_EQ(r.res.outcome, ES_OUT_NONE);
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
