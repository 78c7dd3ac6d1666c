// SPDX-License-Identifier: Apache-2.0
// Pod cgroup discovery (agent/podcgroup.h): kubelet layouts of both cgroup
// drivers, prefixed and nested roots, the bounded search, container cgroups,
// and the inotify watcher. Fake hierarchies are plain directories in a temp
// dir; one test (root only) uses the real cgroup2 mount.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cgroup.h"
#include "fixtures.h"
#include "podcgroup.h"

namespace fs = std::filesystem;

namespace envsteer::podcgroup {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Kind = PodCgroupWatcher::Event::Kind;

const std::string kUid = "8f0c5e1a-3b2d-4c6e-9a7f-1d2e3f4a5b6c";
const std::string kUid_ = "8f0c5e1a_3b2d_4c6e_9a7f_1d2e3f4a5b6c";
const std::string kOther = "11111111-2222-3333-4444-555555555555";
const std::string kOther_ = "11111111_2222_3333_4444_555555555555";
const std::string kCid(64, 'a');
const std::string kCid2 = std::string(63, 'b') + "0";

// A directory tree standing in for a cgroup2 mount.
struct TempTree : testutil::TempDir {
  TempTree() : TempDir("podcg") {}
  const fs::path& root() const { return path(); }
};

// --- names ------------------------------------------------------------------

TEST(PodCgroupNames, NormalizeQos) {
  EXPECT_EQ(normalize_qos("Guaranteed"), "guaranteed");
  EXPECT_EQ(normalize_qos("Burstable"), "burstable");
  EXPECT_EQ(normalize_qos("BestEffort"), "besteffort");
  EXPECT_EQ(normalize_qos("besteffort"), "besteffort");
  EXPECT_EQ(normalize_qos(""), "");
  EXPECT_EQ(normalize_qos("Best-Effort"), "");
  EXPECT_EQ(normalize_qos("../kubepods"), "");
}

TEST(PodCgroupNames, CanonicalUid) {
  EXPECT_EQ(canonical_uid(kUid), kUid);
  EXPECT_EQ(canonical_uid(kUid_), kUid);
  EXPECT_EQ(canonical_uid("8F0C5E1A-3B2D-4C6E-9A7F-1D2E3F4A5B6C"), kUid);
  EXPECT_EQ(canonical_uid("0123456789abcdef0123456789abcdef"), "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(canonical_uid(""), "");
  EXPECT_EQ(canonical_uid("../../etc"), "");
  EXPECT_EQ(canonical_uid("8f0c5e1a/3b2d"), "");
  EXPECT_EQ(canonical_uid("abc"), "");
}

TEST(PodCgroupNames, PodUidFromDirname) {
  EXPECT_EQ(pod_uid_from_dirname("kubepods-burstable-pod" + kUid_ + ".slice"), kUid);
  EXPECT_EQ(pod_uid_from_dirname("kubepods-pod" + kUid_ + ".slice"), kUid);
  EXPECT_EQ(pod_uid_from_dirname("kubelet-kubepods-besteffort-pod" + kUid_ + ".slice"), kUid);
  EXPECT_EQ(pod_uid_from_dirname("pod" + kUid), kUid);
  EXPECT_EQ(pod_uid_from_dirname("kubepods-burstable.slice"), std::nullopt);
  EXPECT_EQ(pod_uid_from_dirname("kubepods.slice"), std::nullopt);
  EXPECT_EQ(pod_uid_from_dirname("burstable"), std::nullopt);
  EXPECT_EQ(pod_uid_from_dirname("podman"), std::nullopt);
  EXPECT_EQ(pod_uid_from_dirname("pod"), std::nullopt);
  EXPECT_EQ(pod_uid_from_dirname("cri-containerd-" + kCid + ".scope"), std::nullopt);
}

// --- find_pod_cgroup: the direct layouts ------------------------------------

TEST(PodCgroupFind, SystemdBurstable) {
  TempTree t;
  auto pod = t.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUid_ + ".slice");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), pod);
}

TEST(PodCgroupFind, SystemdBestEffort) {
  TempTree t;
  auto pod = t.mk("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUid_ + ".slice");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "BestEffort"), pod);
}

TEST(PodCgroupFind, SystemdGuaranteedIsOneLevelUp) {
  TempTree t;
  t.mk("kubepods.slice/kubepods-burstable.slice");
  t.mk("kubepods.slice/kubepods-besteffort.slice");
  auto pod = t.mk("kubepods.slice/kubepods-pod" + kUid_ + ".slice");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Guaranteed"), pod);
}

TEST(PodCgroupFind, CgroupfsAllThree) {
  TempTree t;
  const std::string b = "11111111-0000-0000-0000-00000000000b";
  const std::string e = "11111111-0000-0000-0000-00000000000e";
  const std::string g = "11111111-0000-0000-0000-00000000000a";
  auto pb = t.mk("kubepods/burstable/pod" + b);
  auto pe = t.mk("kubepods/besteffort/pod" + e);
  auto pg = t.mk("kubepods/pod" + g);
  EXPECT_EQ(find_pod_cgroup(t.root(), b, "Burstable"), pb);
  EXPECT_EQ(find_pod_cgroup(t.root(), e, "BestEffort"), pe);
  EXPECT_EQ(find_pod_cgroup(t.root(), g, "Guaranteed"), pg);
}

TEST(PodCgroupFind, UidDashUnderscoreConversion) {
  TempTree t;
  auto sd = t.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUid_ + ".slice");
  auto cf = t.mk("kubepods/besteffort/pod" + kOther);
  // The API form finds the escaped systemd name and the escaped form the dashed cgroupfs one.
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), sd);
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid_, "Burstable"), sd);
  EXPECT_EQ(find_pod_cgroup(t.root(), kOther_, "BestEffort"), cf);
  // A systemd slice never carries the dashed form: that is another hierarchy level.
  TempTree u;
  u.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUid + ".slice");
  EXPECT_EQ(find_pod_cgroup(u.root(), kUid, "Burstable"), std::nullopt);
}

TEST(PodCgroupFind, WrongOrEmptyQosSearchesAll) {
  TempTree t;
  auto pb = t.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUid_ + ".slice");
  auto pg = t.mk("kubepods/pod" + kOther);
  for (const char* q : {"", "Bogus", "Guaranteed", "BestEffort", "Burstable"}) {
    EXPECT_EQ(find_pod_cgroup(t.root(), kUid, q), pb) << q;
    EXPECT_EQ(find_pod_cgroup(t.root(), kOther, q), pg) << q;
  }
}

TEST(PodCgroupFind, ReturnsAbsolutePathForRelativeMount) {
  TempTree t;
  auto pod = t.mk("kubepods/burstable/pod" + kUid);
  const fs::path cwd = fs::current_path();
  fs::current_path(t.root());
  auto got = find_pod_cgroup(".", kUid, "Burstable");
  auto got2 = find_pod_cgroup("./", kUid, "Burstable");
  fs::current_path(cwd);
  ASSERT_TRUE(got);
  EXPECT_TRUE(got->is_absolute());
  EXPECT_EQ(fs::canonical(*got), fs::canonical(pod));
  EXPECT_EQ(got, got2);
}

TEST(PodCgroupFind, NotFound) {
  TempTree t;
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), std::nullopt);  // empty mount
  t.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kOther_ + ".slice");
  t.mk("kubepods/burstable/pod" + kOther);
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), std::nullopt);
  EXPECT_EQ(find_pod_cgroup(t.root() / "missing", kUid, ""), std::nullopt);
  // Not a UID: never turned into a path.
  t.mk("kubepods/burstable/pod..");
  EXPECT_EQ(find_pod_cgroup(t.root(), "", ""), std::nullopt);
  EXPECT_EQ(find_pod_cgroup(t.root(), "..", "Burstable"), std::nullopt);
  EXPECT_EQ(find_pod_cgroup(t.root(), "../../x", "Burstable"), std::nullopt);
}

// --- find_pod_cgroup: prefixed and nested roots -----------------------------

TEST(PodCgroupFind, KubeletCgroupRootSystemd) {
  // --cgroup-root=/kubelet with the systemd driver (kind's node config).
  TempTree t;
  auto pod = t.mk("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
                  "kubelet-kubepods-besteffort-pod" + kUid_ + ".slice");
  auto g = t.mk("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + kOther_ + ".slice");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "BestEffort"), pod);
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, ""), pod);
  EXPECT_EQ(find_pod_cgroup(t.root(), kOther, "Guaranteed"), g);
}

TEST(PodCgroupFind, KubeletCgroupRootCgroupfs) {
  TempTree t;
  auto pod = t.mk("kubelet/kubepods/burstable/pod" + kUid);
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), pod);
  // Any other --cgroup-root is found by the walk.
  TempTree u;
  auto pod2 = u.mk("custom/root/kubepods/besteffort/pod" + kUid);
  EXPECT_EQ(find_pod_cgroup(u.root(), kUid, "BestEffort"), pod2);
}

TEST(PodCgroupFind, KindNodeSeenFromTheHost) {
  // A kind node is a docker container; from the host its kubelet tree sits in
  // the node container's scope, the root at depth 4 and the pod at depth 6.
  TempTree t;
  const std::string node = "system.slice/docker-" + kCid + ".scope/";
  t.mk("system.slice/containerd.service");
  t.mk("user.slice/user-1000.slice/session-1.scope");
  t.mk(node + "init.scope");
  t.mk(node + "system.slice/containerd.service");
  auto pod = t.mk(node + "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                  "kubelet-kubepods-burstable-pod" + kUid_ + ".slice");
  auto g = t.mk(node + "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + kOther_ + ".slice");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), pod);
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, ""), pod);
  EXPECT_EQ(find_pod_cgroup(t.root(), kOther, "Guaranteed"), g);
}

TEST(PodCgroupFind, PodUnderContainerdService) {
  // Pod slices created below containerd.service (containerd in docker, no
  // systemd to own kubepods.slice): no root, the pod name alone is matched.
  TempTree t;
  auto pod = t.mk("system.slice/containerd.service/kubepods-burstable-pod" + kUid_ + ".slice");
  t.mk("system.slice/containerd.service/kubepods-burstable-pod" + kUid_ + ".slice/cri-containerd-" +
       kCid + ".scope");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), pod);
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Guaranteed"), pod);
}

TEST(PodCgroupFind, DirectPathsWinOverTheWalk) {
  TempTree t;
  t.mk("a/kubepods/burstable/pod" + kUid);  // shallower in the walk, but not a usual root
  auto pod = t.mk("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
                  "kubelet-kubepods-burstable-pod" + kUid_ + ".slice");
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), pod);
}

TEST(PodCgroupFind, WalkIsBoundedByDepth) {
  TempTree t;
  t.mk("a/b/c/d/e/pod" + kUid);  // pod at depth 6, no kubepods root on the way
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, ""), std::nullopt);
  auto shallow = t.mk("a/b/c/pod" + kOther);  // depth 4
  EXPECT_EQ(find_pod_cgroup(t.root(), kOther, ""), shallow);
  SearchLimits deeper;
  deeper.max_depth = 6;
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "", deeper), t.root() / "a/b/c/d/e" / ("pod" + kUid));
}

TEST(PodCgroupFind, BigTreeStaysFastAndBounded) {
  TempTree t;
  // 2000 decoy cgroups: 20 slices x 100 scopes, plus 100 other pods with containers.
  for (int i = 0; i < 20; i++)
    for (int j = 0; j < 100; j++)
      fs::create_directories(t.root() / ("s" + std::to_string(i) + ".slice") /
                             ("u" + std::to_string(j) + ".scope"));
  for (int i = 0; i < 100; i++) {
    char uid[40];
    std::snprintf(uid, sizeof uid, "22222222-0000-0000-0000-%012d", i);
    std::string u(uid);
    std::replace(u.begin(), u.end(), '-', '_');
    fs::create_directories(t.root() / "kubepods.slice/kubepods-burstable.slice" /
                           ("kubepods-burstable-pod" + u + ".slice") / ("cri-containerd-" + kCid + ".scope"));
  }
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), std::nullopt);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  EXPECT_LT(ms.count(), 1000);

  // A pod past the directory budget is not found; with the default budget it is.
  auto pod = t.mk("zz/kubepods/burstable/pod" + kUid);
  SearchLimits small;
  small.max_dirs = 10;
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable", small), std::nullopt);
  start = std::chrono::steady_clock::now();
  EXPECT_EQ(find_pod_cgroup(t.root(), kUid, "Burstable"), pod);
  ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  EXPECT_LT(ms.count(), 1000);
}

// --- the watcher ------------------------------------------------------------

std::string show(const PodCgroupWatcher::Event& e) {
  const char* k = e.kind == Kind::Appeared ? "appeared" : "disappeared";
  return std::string(k) + " " + e.uid + " " + e.path.filename().string();
}

// Polls the watcher's fd (at most 2 s in all) until `n` events have come.
std::vector<std::string> wait_events(PodCgroupWatcher& w, size_t n) {
  std::vector<std::string> got;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (got.size() < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    struct pollfd p{w.fd(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    for (const auto& e : w.drain()) got.push_back(show(e));
  }
  return got;
}

bool quiet(PodCgroupWatcher& w) {
  struct pollfd p{w.fd(), POLLIN, 0};
  if (::poll(&p, 1, 50) == 0) return true;
  return w.drain().empty();  // events for unrelated directories are fine
}

TEST(PodCgroupWatcher, ExistingPodIsReturnedWithoutEvent) {
  TempTree t;
  auto pod = t.mk("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUid_ + ".slice");
  t.mk(pod.lexically_relative(t.root()).string() + "/cri-containerd-" + kCid + ".scope");
  PodCgroupWatcher w(t.root());
  EXPECT_EQ(w.watch(kUid, "BestEffort"), pod);
  EXPECT_EQ(w.path_of(kUid_), pod);
  EXPECT_TRUE(quiet(w));
  EXPECT_THROW(w.watch("../x", ""), std::invalid_argument);
}

TEST(PodCgroupWatcher, PodAppearsLaterThenDisappears) {
  TempTree t;
  t.mk("kubepods.slice/kubepods-burstable.slice");
  PodCgroupWatcher w(t.root());
  EXPECT_EQ(w.watch(kUid, "Burstable"), std::nullopt);
  EXPECT_EQ(w.watch(kOther, "Burstable"), std::nullopt);
  EXPECT_TRUE(quiet(w));

  const std::string name = "kubepods-burstable-pod" + kUid_ + ".slice";
  auto pod = t.mk("kubepods.slice/kubepods-burstable.slice/" + name);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " " + name));
  EXPECT_EQ(w.path_of(kUid), pod);
  EXPECT_EQ(w.path_of(kOther), std::nullopt);

  // Containers start (and restart) inside it: nothing changes for the pod.
  const std::string c1 = "cri-containerd-" + kCid + ".scope";
  const std::string c2 = "cri-containerd-" + kCid2 + ".scope";
  fs::create_directory(pod / c1);
  fs::remove(pod / c1);
  fs::create_directory(pod / c2);
  EXPECT_TRUE(quiet(w));

  // Removed.
  fs::remove(pod / c2);
  fs::remove(pod);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("disappeared " + kUid + " " + name));
  EXPECT_EQ(w.path_of(kUid), std::nullopt);
  EXPECT_TRUE(quiet(w));
}

TEST(PodCgroupWatcher, QosParentCreatedAfterWatchIsArmed) {
  TempTree t;
  t.mk("kubepods.slice");
  PodCgroupWatcher w(t.root());
  EXPECT_EQ(w.watch(kUid, "BestEffort"), std::nullopt);
  t.mk("kubepods.slice/kubepods-besteffort.slice");
  EXPECT_TRUE(quiet(w));  // the QoS slice is no pod of ours
  const std::string name = "kubepods-besteffort-pod" + kUid_ + ".slice";
  t.mk("kubepods.slice/kubepods-besteffort.slice/" + name);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " " + name));
}

TEST(PodCgroupWatcher, WholeTreeCreatedAtOnce) {
  // The root, QoS slice and pod appear between two drains (a race with arming).
  TempTree t;
  PodCgroupWatcher w(t.root());
  EXPECT_EQ(w.watch(kUid, ""), std::nullopt);
  EXPECT_EQ(w.watch(kOther, "Guaranteed"), std::nullopt);
  const std::string name = "kubepods-burstable-pod" + kUid_ + ".slice";
  t.mk("kubepods.slice/kubepods-burstable.slice/" + name + "/cri-containerd-" + kCid + ".scope");
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " " + name));
  // A guaranteed pod directly in the root, now watched.
  t.mk("kubepods.slice/kubepods-pod" + kOther_ + ".slice");
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kOther + " kubepods-pod" + kOther_ + ".slice"));
}

TEST(PodCgroupWatcher, CgroupfsDriver) {
  TempTree t;
  t.mk("kubepods");
  PodCgroupWatcher w(t.root());
  w.watch(kUid, "Burstable");
  w.watch(kOther, "Guaranteed");
  t.mk("kubepods/burstable/pod" + kUid);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " pod" + kUid));
  t.mk("kubepods/pod" + kOther + "/" + kCid);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kOther + " pod" + kOther));
  fs::remove_all(t.root() / "kubepods/burstable");  // the QoS directory goes too
  EXPECT_THAT(wait_events(w, 1), ElementsAre("disappeared " + kUid + " pod" + kUid));
  t.mk("kubepods/burstable/pod" + kUid);  // re-armed on the new QoS directory
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " pod" + kUid));
}

TEST(PodCgroupWatcher, UnwatchStopsEvents) {
  TempTree t;
  t.mk("kubepods.slice/kubepods-burstable.slice");
  PodCgroupWatcher w(t.root());
  w.watch(kUid, "Burstable");
  w.unwatch(kUid_);
  t.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUid_ + ".slice");
  EXPECT_TRUE(quiet(w));
  EXPECT_EQ(w.path_of(kUid), std::nullopt);
}

TEST(PodCgroupWatcher, NestedRootFoundAtConstructionIsWatched) {
  TempTree t;
  const std::string root = "system.slice/docker-" + kCid + ".scope/kubelet.slice/kubelet-kubepods.slice";
  t.mk(root + "/kubelet-kubepods-burstable.slice");
  PodCgroupWatcher w(t.root());
  EXPECT_EQ(w.watch(kUid, "Burstable"), std::nullopt);
  const std::string name = "kubelet-kubepods-burstable-pod" + kUid_ + ".slice";
  t.mk(root + "/kubelet-kubepods-burstable.slice/" + name);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " " + name));
}

TEST(PodCgroupWatcher, RescanFindsWhatInotifyCannotSee) {
  TempTree t;
  PodCgroupWatcher w(t.root());
  EXPECT_EQ(w.watch(kUid, "Burstable"), std::nullopt);
  // A root in an unusual place that appears after construction: not watched.
  const std::string name = "kubepods-burstable-pod" + kUid_ + ".slice";
  t.mk("system.slice/containerd.service/" + name + "/cri-containerd-" + kCid + ".scope");
  EXPECT_TRUE(quiet(w));
  std::vector<std::string> got;
  for (const auto& e : w.rescan()) got.push_back(show(e));
  EXPECT_THAT(got, ElementsAre("appeared " + kUid + " " + name));
  // From now on its parent is watched.
  const std::string other = "kubepods-besteffort-pod" + kOther_ + ".slice";
  w.watch(kOther, "BestEffort");
  t.mk("system.slice/containerd.service/" + other);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kOther + " " + other));
  // A rescan with nothing new reports nothing.
  EXPECT_THAT(w.rescan(), IsEmpty());
}

// The agent acts on every event from drain() and rescan() alike (Agent::on_pod_cgroup_events):
// both report only a watched pod's cgroup appearing or disappearing, never what happens inside
// it or beside it.
TEST(PodCgroupWatcher, DrainAndRescanReportOnlyPodsComingAndGoing) {
  TempTree t;
  const std::string qos = "kubepods.slice/kubepods-burstable.slice/";
  const std::string name = "kubepods-burstable-pod" + kUid_ + ".slice";
  auto pod = t.mk(qos + name);
  PodCgroupWatcher w(t.root());
  ASSERT_EQ(w.watch(kUid, "Burstable"), pod);
  auto churn = [&] {
    fs::create_directories(pod / ("cri-containerd-" + kCid + ".scope") / "inner");
    fs::create_directory(pod / ("crio-" + kCid2));
    fs::remove_all(pod / ("cri-containerd-" + kCid + ".scope"));
    t.mk(qos + "kubepods-burstable-pod" + kOther_ + ".slice");  // a pod nobody watches
    t.mk(qos + "not-a-pod");
  };
  churn();
  EXPECT_TRUE(quiet(w));
  EXPECT_THAT(w.rescan(), IsEmpty());
  fs::remove_all(pod / ("crio-" + kCid2));
  EXPECT_THAT(w.rescan(), IsEmpty());  // rescan drains the pending events first

  // The pod goes, and comes back: drain and rescan report the same events.
  fs::remove(pod);
  EXPECT_THAT(wait_events(w, 1), ElementsAre("disappeared " + kUid + " " + name));
  t.mk(qos + name);
  std::vector<std::string> got;
  for (const auto& e : w.rescan()) got.push_back(show(e));
  EXPECT_THAT(got, ElementsAre("appeared " + kUid + " " + name));
  fs::remove(pod);
  got.clear();
  for (const auto& e : w.rescan()) got.push_back(show(e));
  EXPECT_THAT(got, ElementsAre("disappeared " + kUid + " " + name));
  EXPECT_TRUE(quiet(w));
}

TEST(PodCgroupWatcher, WatchCountStaysSmall) {
  TempTree t;
  t.mk("kubepods.slice/kubepods-burstable.slice");
  t.mk("kubepods.slice/kubepods-besteffort.slice");
  PodCgroupWatcher w(t.root());
  const size_t base = w.watch_count();
  EXPECT_LE(base, 4u);  // mount (for the absent roots), root, two QoS slices
  for (int i = 0; i < 50; i++) {
    char uid[40];
    std::snprintf(uid, sizeof uid, "33333333-0000-0000-0000-%012d", i);
    std::string u(uid);
    std::replace(u.begin(), u.end(), '-', '_');
    t.mk("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice");
    w.watch(uid, "Burstable");
  }
  EXPECT_EQ(w.watch_count(), base + 50);  // one per found pod
  for (int i = 0; i < 50; i++) {
    char uid[40];
    std::snprintf(uid, sizeof uid, "33333333-0000-0000-0000-%012d", i);
    w.unwatch(uid);
  }
  EXPECT_EQ(w.watch_count(), base);
}

// --- the real cgroup2 mount (root only) -------------------------------------

TEST(PodCgroupReal, FindsAPodInTheRealCgroup2Mount) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  fs::path mount;
  try {
    mount = cgroup::find_cgroup2_mount();
  } catch (const std::exception& e) {
    GTEST_SKIP() << e.what();
  }
  const fs::path top = mount / ("envsteer-podcg-test-" + std::to_string(::getpid()));
  const fs::path root = top / "kubepods.slice";
  const fs::path qos = root / "kubepods-burstable.slice";
  const fs::path pod = qos / ("kubepods-burstable-pod" + kUid_ + ".slice");
  const fs::path ctr = pod / ("cri-containerd-" + kCid + ".scope");
  std::error_code ec;
  if (!fs::create_directory(top, ec)) GTEST_SKIP() << "cannot create cgroups in " << mount << ": " << ec.message();
  // Removed deepest first (cgroupfs needs rmdir, children before parents),
  // also when an ASSERT returns early.
  struct Cleanup {
    std::vector<fs::path> made;
    ~Cleanup() {
      for (auto it = made.rbegin(); it != made.rend(); ++it) ::rmdir(it->c_str());
    }
  };
  {
    Cleanup c{{top}};
    auto& made = c.made;
    for (const auto& d : {root, qos}) {
      ASSERT_TRUE(fs::create_directory(d));
      made.push_back(d);
    }
    PodCgroupWatcher w(top);
    EXPECT_EQ(w.watch(kUid, "Burstable"), std::nullopt);
    ASSERT_TRUE(fs::create_directory(pod));
    made.push_back(pod);
    EXPECT_THAT(wait_events(w, 1), ElementsAre("appeared " + kUid + " " + pod.filename().string()));
    ASSERT_TRUE(fs::create_directory(ctr));
    made.push_back(ctr);
    EXPECT_TRUE(quiet(w));  // a container: nothing to report

    EXPECT_EQ(find_pod_cgroup(top, kUid, "Burstable"), pod);
    EXPECT_EQ(find_pod_cgroup(top, kUid, ""), pod);
    auto id = cgroup::cgroup_id(pod);
    ASSERT_TRUE(id);
    EXPECT_NE(*id, 0u);
    EXPECT_EQ(cgroup::path_of_id(top, *id), pod);
    EXPECT_EQ(cgroup::cgroup_level(mount, pod), 4);

    ASSERT_EQ(::rmdir(ctr.c_str()), 0);
    made.pop_back();
    ASSERT_EQ(::rmdir(pod.c_str()), 0);
    made.pop_back();
    EXPECT_THAT(wait_events(w, 1), ElementsAre("disappeared " + kUid + " " + pod.filename().string()));
  }
  EXPECT_FALSE(fs::exists(top));
}

}  // namespace
}  // namespace envsteer::podcgroup
