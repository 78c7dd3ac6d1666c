// SPDX-License-Identifier: Apache-2.0
// Participation (agent/participation.h, issue 17): the label selector, which
// local pods take part (only they become local pods of the model: es_pods
// entries and programs on their cgroups), and the settings that choose it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "model.h"
#include "participation.h"
#include "settings.h"

namespace envsteer::participation_test {
namespace {

k8s::Pod pod(const std::string& name, k8s::Labels labels, const std::string& cgroup) {
  k8s::Pod p;
  p.ns = "a";
  p.name = name;
  p.labels = std::move(labels);
  p.pod_ips = {"10.1.0." + std::to_string(name.size())};
  p.ready = true;
  p.phase = k8s::PodPhase::Running;
  p.annotations.insert_or_assign("envsteer.io/cgroup", cgroup);
  return p;
}

TEST(LabelSelector, EqualityTerms) {
  auto s = LabelSelector::parse("envsteer.io/enabled=true");
  EXPECT_TRUE(s.matches({{"envsteer.io/enabled", "true"}}));
  EXPECT_FALSE(s.matches({{"envsteer.io/enabled", "false"}}));
  EXPECT_FALSE(s.matches({}));
  auto t = LabelSelector::parse(" app == web , tier!=db,team,!legacy ");
  EXPECT_TRUE(t.matches({{"app", "web"}, {"team", "x"}}));
  EXPECT_TRUE(t.matches({{"app", "web"}, {"team", ""}, {"tier", "front"}}));
  EXPECT_FALSE(t.matches({{"app", "web"}, {"team", "x"}, {"tier", "db"}}));   // !=
  EXPECT_FALSE(t.matches({{"app", "web"}}));                                   // team absent
  EXPECT_FALSE(t.matches({{"app", "web"}, {"team", "x"}, {"legacy", "1"}}));   // !legacy
  EXPECT_FALSE(t.matches({{"app", "api"}, {"team", "x"}}));
}

TEST(LabelSelector, EmptyMatchesNothing) {
  auto s = LabelSelector::parse("");
  EXPECT_TRUE(s.empty());
  EXPECT_FALSE(s.matches({}));
  EXPECT_FALSE(s.matches({{"a", "b"}}));
}

TEST(LabelSelector, BadTermsNameTheTerm) {
  for (const char* bad : {"a=b,", ",a", "a b=c", "env in (dev,prod)", "=x", "a=b=c", "a=b c"}) {
    try {
      LabelSelector::parse(bad);
      ADD_FAILURE() << bad << " parsed";
    } catch (const std::invalid_argument& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr("label selector")) << bad;
    }
  }
}

struct Fixture {
  k8s::ClusterState cs;
  ModelOptions o;
  Fixture() {
    o.participation.all = false;
    o.participation.selector = LabelSelector::parse(kDefaultParticipationSelector);
    o.resolve_cgroup = [](const std::string& rel) -> std::optional<CgroupInfo> {
      return CgroupInfo{std::hash<std::string>{}(rel) | 1, 2, "/sys/fs/cgroup/" + rel, true};
    };
    add(pod("labelled", {{"virtual-env", "dev.a"}, {"app", "web"}}, "pods/labelled"));
    add(pod("enabled", {{"envsteer.io/enabled", "true"}, {"app", "web"}}, "pods/enabled"));
    add(pod("plain", {{"app", "web"}}, "pods/plain"));
    add(pod("disabled", {{"envsteer.io/enabled", "false"}, {"app", "web"}}, "pods/disabled"));
  }
  void add(k8s::Pod p) { cs.pods[k8s::object_key(p.ns, p.name)] = std::move(p); }
};

std::set<std::string> local_pods(const DesiredState& d) {
  std::set<std::string> out;
  for (const auto& [id, p] : d.pods) out.insert(p.pod);
  return out;
}

TEST(Participation, OnlyPodsThatTakePartAreLocal) {
  Fixture f;
  auto d = build_model(f.cs, f.o);
  EXPECT_EQ(local_pods(d), (std::set<std::string>{"a/labelled", "a/enabled"}));
  // the others are backends like before (of the default environment: unlabelled)
  EXPECT_EQ(d.pod_envs.size(), 4u);
  EXPECT_EQ(d.pod_envs.at("a/plain").env, "");
  EXPECT_TRUE(d.missing_cgroups.empty());
  EXPECT_TRUE(d.skipped.empty());
}

TEST(Participation, AllMakesEveryLocalPodTakePart) {
  Fixture f;
  f.o.participation.all = true;
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)).size(), 4u);
}

TEST(Participation, NoSelectorLeavesOnlyTheEnvLabel) {
  Fixture f;
  f.o.participation.selector = LabelSelector::parse("");
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)), (std::set<std::string>{"a/labelled"}));
  f.o.env_label = "other-env";  // a pod with another label than the env label does not take part by it
  EXPECT_TRUE(local_pods(build_model(f.cs, f.o)).empty());
}

TEST(Participation, NonParticipantsNeedNoCgroup) {
  Fixture f;
  f.add(pod("absent", {{"app", "web"}}, "pods/absent"));
  f.o.resolve_cgroup = [](const std::string& rel) -> std::optional<CgroupInfo> {
    if (rel != "pods/labelled") return std::nullopt;
    return CgroupInfo{7, 2, "/sys/fs/cgroup/" + rel, true};
  };
  auto d = build_model(f.cs, f.o);
  EXPECT_EQ(local_pods(d), (std::set<std::string>{"a/labelled"}));
  // only the participant that takes part waits for its cgroup
  ASSERT_EQ(d.missing_cgroups.size(), 1u);
  EXPECT_EQ(d.missing_cgroups[0].pod, "a/enabled");
}

// Relabelling into and out of participation: the incremental model follows,
// names the local pods as changed, and equals a full build.
TEST(Participation, RelabelIntoAndOutOfParticipationIncrementally) {
  Fixture f;
  IncrementalModel m(f.o);
  m.reset(f.cs);
  m.take_delta();
  k8s::Pod p = m.cluster().pods.at("a/plain");
  p.labels.insert_or_assign("envsteer.io/enabled", "true");
  m.upsert(p);
  EXPECT_TRUE(m.take_delta().pods);
  EXPECT_EQ(local_pods(m.state()), (std::set<std::string>{"a/labelled", "a/enabled", "a/plain"}));
  EXPECT_EQ(model_difference(m.state(), build_model(m.cluster(), f.o)), "");
  k8s::Pod l = m.cluster().pods.at("a/labelled");
  l.labels.erase("virtual-env");
  m.upsert(l);
  EXPECT_TRUE(m.take_delta().pods);
  EXPECT_EQ(local_pods(m.state()), (std::set<std::string>{"a/enabled", "a/plain"}));
  EXPECT_EQ(model_difference(m.state(), build_model(m.cluster(), f.o)), "");
}

k8s::Namespace ns(const std::string& name, k8s::Labels labels) {
  k8s::Namespace n;
  n.name = name;
  n.uid = "uid-" + name;
  n.labels = std::move(labels);
  return n;
}

// A Namespace with the label makes every pod in it take part; the pod's own
// labels still count, and an unknown Namespace makes nobody take part.
TEST(Participation, NamespaceLabelMakesItsPodsTakePart) {
  Fixture f;
  f.o.participation.namespace_selector = LabelSelector::parse(kDefaultParticipationNamespaceSelector);
  f.cs.namespaces["a"] = ns("a", {{"envsteer.io/enabled", "true"}});
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)).size(), 4u);
  f.cs.namespaces["a"] = ns("a", {{"envsteer.io/enabled", "false"}});
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)), (std::set<std::string>{"a/labelled", "a/enabled"}));
  f.cs.namespaces.clear();
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)), (std::set<std::string>{"a/labelled", "a/enabled"}));
  // another Namespace's label says nothing about these pods
  f.cs.namespaces["b"] = ns("b", {{"envsteer.io/enabled", "true"}});
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)), (std::set<std::string>{"a/labelled", "a/enabled"}));
  // "" matches no Namespace
  f.cs.namespaces["a"] = ns("a", {{"envsteer.io/enabled", "true"}});
  f.o.participation.namespace_selector = LabelSelector::parse("");
  EXPECT_EQ(local_pods(build_model(f.cs, f.o)), (std::set<std::string>{"a/labelled", "a/enabled"}));
}

// A Namespace gaining, changing and losing its label (and being deleted): the
// incremental model recomputes its pods, names the local pods as changed, and
// equals a full build after each step; a change that keeps the match is no change.
TEST(Participation, NamespaceRelabelIncrementally) {
  Fixture f;
  f.o.participation.namespace_selector = LabelSelector::parse(kDefaultParticipationNamespaceSelector);
  f.cs.namespaces["a"] = ns("a", {{"team", "x"}});
  IncrementalModel m(f.o);
  m.reset(f.cs);
  m.take_delta();
  auto check = [&](const std::set<std::string>& want, bool changed) {
    EXPECT_EQ(m.take_delta().pods, changed);
    EXPECT_EQ(local_pods(m.state()), want);
    EXPECT_EQ(model_difference(m.state(), build_model(m.cluster(), f.o)), "");
  };
  const std::set<std::string> own{"a/labelled", "a/enabled"};
  const std::set<std::string> every{"a/labelled", "a/enabled", "a/plain", "a/disabled"};
  m.upsert(ns("a", {{"team", "x"}, {"envsteer.io/enabled", "true"}}));
  check(every, true);
  m.upsert(ns("a", {{"team", "y"}, {"envsteer.io/enabled", "true"}}));  // still matches
  check(every, false);
  m.upsert(ns("a", {{"team", "y"}}));
  check(own, true);
  m.upsert(ns("a", {{"envsteer.io/enabled", "true"}}));
  check(every, true);
  m.remove_namespace("a");
  check(own, true);
  // through apply() (as the sources deliver it), with its undo
  auto undo = m.apply(ObjectChange{ObjectChange::Kind::Namespace, "a", ns("a", {{"envsteer.io/enabled", "true"}})});
  ASSERT_TRUE(undo.has_value());
  check(every, true);
  m.apply(std::move(*undo));
  check(own, true);
  // a pod created later in a labelled Namespace takes part at once
  m.upsert(ns("a", {{"envsteer.io/enabled", "true"}}));
  m.take_delta();
  m.upsert(pod("late", {{"app", "web"}}, "pods/late"));
  EXPECT_TRUE(local_pods(m.state()).count("a/late"));
  EXPECT_EQ(model_difference(m.state(), build_model(m.cluster(), f.o)), "");
  // an undecodable Namespace is no Namespace (its pods take part by their own labels)
  m.set_invalid(k8s::InvalidObject{"Namespace", "a", "uid-a", "metadata.labels[\"x\"]: must be a string"});
  EXPECT_EQ(local_pods(m.state()), own);
  EXPECT_EQ(model_difference(m.state(), build_model(m.cluster(), f.o)), "");
}

TEST(ParticipationSettings, DefaultsAndValidation) {
  Settings s;
  EXPECT_EQ(s.participation, "selected");
  EXPECT_EQ(s.participation_selector, kDefaultParticipationSelector);
  EXPECT_NO_THROW(validate_settings(s));
  s.participation = "all";
  EXPECT_NO_THROW(validate_settings(s));
  s.participation = "some";
  EXPECT_THROW(validate_settings(s), std::invalid_argument);
  s.participation = "selected";
  s.participation_selector = "env in (a)";
  try {
    validate_settings(s);
    ADD_FAILURE() << "bad selector accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("--participation-selector"));
  }
  s.participation_selector = "";
  EXPECT_NO_THROW(validate_settings(s));
  EXPECT_EQ(s.participation_namespace_selector, kDefaultParticipationNamespaceSelector);
  s.participation_namespace_selector = "a b";
  try {
    validate_settings(s);
    ADD_FAILURE() << "bad namespace selector accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("--participation-namespace-selector"));
  }
  s.participation_namespace_selector = "";
  EXPECT_NO_THROW(validate_settings(s));
}

}  // namespace
}  // namespace envsteer::participation_test
