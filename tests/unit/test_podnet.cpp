// SPDX-License-Identifier: Apache-2.0
// agent/podnet: finding a pod's network namespace through its cgroup's processes. Entering a
// foreign namespace needs root and namespaces (tests/e2e/test_topology.py); here the cgroup
// is a directory with a cgroup.procs file, and the pod is this process (the test's own
// namespace: no setns).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "agent/podnet.h"
#include "fixtures.h"

namespace envsteer::podnet {
namespace {

using testutil::TempDir;

uint64_t my_ino() {
  struct stat st {};
  EXPECT_EQ(stat("/proc/self/ns/net", &st), 0);
  return st.st_ino;
}

// A pid that no process has (a child that has been reaped).
int dead_pid() {
  pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, nullptr, 0);
  return p;
}

TEST(PodNet, OwnNamespaceIsFoundWithoutEnteringIt) {
  EXPECT_EQ(own_ino(), my_ino());
  TempDir t;
  t.mk("pod/container");
  t.write("pod/cgroup.procs", std::to_string(getpid()) + "\n");
  std::string err;
  UniqueFd pidfd;
  auto n = of_cgroup(t.path() / "pod", &err, &pidfd);
  ASSERT_TRUE(n) << err;
  EXPECT_EQ(n->ino, my_ino());
  EXPECT_FALSE(n->fd);  // no handle is kept for the agent's own namespace
  EXPECT_TRUE(pidfd);
}

TEST(PodNet, ProcessesOfChildCgroupsCount) {
  TempDir t;
  t.mk("pod/container");
  t.write("pod/cgroup.procs", "");
  t.write("pod/container/cgroup.procs", std::to_string(dead_pid()) + "\n" + std::to_string(getpid()) + "\n");
  std::string err;
  auto n = of_cgroup(t.path() / "pod", &err);
  ASSERT_TRUE(n) << err;
  EXPECT_EQ(n->ino, my_ino());
}

TEST(PodNet, NoLiveProcessIsAnError) {
  TempDir t;
  t.mk("pod/container");
  t.write("pod/cgroup.procs", std::to_string(dead_pid()) + "\n");
  std::string err;
  EXPECT_FALSE(of_cgroup(t.path() / "pod", &err));
  EXPECT_NE(err.find("no process of cgroup"), std::string::npos) << err;
  EXPECT_FALSE(of_cgroup(t.path() / "absent", &err));
}

TEST(PodNet, SocketInOwnNamespaceIsAPlainSocket) {
  UniqueFd s(socket_in(nullptr, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(s);
  NetNs own;  // an empty handle of the own namespace: no setns either
  own.ino = own_ino();
  UniqueFd s2(socket_in(&own, AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(s2);
}

TEST(PodNet, PodNetsMapsOwnNamespacePodsToNoHandle) {
  TempDir t;
  t.mk("pod/container");
  t.write("pod/cgroup.procs", std::to_string(getpid()) + "\n");
  int asked = 0;
  PodNets nets([&](uint64_t id) -> std::optional<std::filesystem::path> {
    asked++;
    if (id == 7) return t.path() / "pod";
    return std::nullopt;
  });
  auto l = nets.get(7);
  EXPECT_TRUE(l.found);
  EXPECT_EQ(l.ns, nullptr);
  EXPECT_EQ(l.key(), 0u);
  EXPECT_EQ(nets.held(), 0u);
  EXPECT_EQ(nets.pods(), std::vector<uint64_t>{7});
  nets.get(7);
  EXPECT_EQ(asked, 1);  // kept while its process lives
  auto u = nets.get(8);
  EXPECT_FALSE(u.found);
  EXPECT_NE(nets.last_error().find("not known"), std::string::npos);
  nets.forget(7);
  EXPECT_TRUE(nets.pods().empty());
}

}  // namespace
}  // namespace envsteer::podnet
