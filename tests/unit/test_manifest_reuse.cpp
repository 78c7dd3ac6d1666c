// SPDX-License-Identifier: Apache-2.0
// load_manifests() on a directory re-parses only the files whose text changed: what it
// returns must still be exactly what a fresh read of every file returns.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "fixtures.h"
#include "sources/manifest.h"

namespace envsteer::sources {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string pod(const std::string& name, const std::string& env) {
  return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: a\n  uid: u-" +
         name + "\n  labels:\n    virtual-env: " + env +
         "\nstatus:\n  podIP: 10.1.0.1\n  conditions:\n  - type: Ready\n    status: \"True\"\n";
}

class ManifestReuse : public ::testing::Test {
 protected:
  void write(const std::string& name, const std::string& text) { tmp_.write(name, text); }
  std::string env(const k8s::ClusterState& s, const std::string& key) {
    return std::string(s.pods.at(key).labels.at("virtual-env"));
  }
  testutil::TempDir tmp_{"envsteer-reuse"};
  const fs::path dir_ = tmp_.path();
};

TEST_F(ManifestReuse, ChangedFileIsReparsedOthersKept) {
  write("1.yaml", pod("p1", "dev.a"));
  write("2.yaml", pod("p2", "dev.b"));
  auto s = load_manifests(dir_);
  ASSERT_EQ(s.pods.size(), 2u);
  // the same size, other content: still seen
  write("2.yaml", pod("p2", "dev.c"));
  s = load_manifests(dir_);
  EXPECT_EQ(env(s, "a/p1"), "dev.a");
  EXPECT_EQ(env(s, "a/p2"), "dev.c");
  // unchanged files give the same objects again
  s = load_manifests(dir_);
  EXPECT_EQ(s.pods.size(), 2u);
  EXPECT_EQ(env(s, "a/p2"), "dev.c");
}

TEST_F(ManifestReuse, RemovedFileDropsItsObjects) {
  write("1.yaml", pod("p1", "dev.a"));
  write("2.yaml", pod("p2", "dev.b"));
  EXPECT_EQ(load_manifests(dir_).pods.size(), 2u);
  fs::remove(dir_ / "2.yaml");
  auto s = load_manifests(dir_);
  EXPECT_EQ(s.pods.size(), 1u);
  EXPECT_EQ(s.pods.count("a/p1"), 1u);
}

TEST_F(ManifestReuse, DuplicateAcrossFilesStillAnError) {
  write("1.yaml", pod("p1", "dev.a"));
  write("2.yaml", pod("p2", "dev.b"));
  load_manifests(dir_);
  write("2.yaml", pod("p1", "dev.b"));
  try {
    load_manifests(dir_);
    FAIL() << "no error for a pod defined in two files";
  } catch (const ManifestError& e) {
    EXPECT_THAT(e.what(), HasSubstr("2.yaml"));
    EXPECT_THAT(e.what(), HasSubstr("duplicate"));
  }
  write("2.yaml", pod("p2", "dev.d"));
  auto s = load_manifests(dir_);
  EXPECT_EQ(env(s, "a/p2"), "dev.d");
}

TEST_F(ManifestReuse, ErrorThenFixedFile) {
  write("1.yaml", pod("p1", "dev.a"));
  write("2.yaml", pod("p2", "dev.b"));
  load_manifests(dir_);
  write("2.yaml", "kind: [\n");
  EXPECT_THROW(load_manifests(dir_), ManifestError);
  // after the failure, nothing stale is reused for the unchanged file either
  auto s = load_manifests(dir_ / "1.yaml");
  EXPECT_EQ(s.pods.size(), 1u);
  write("2.yaml", pod("p2", "dev.e"));
  s = load_manifests(dir_);
  EXPECT_EQ(s.pods.size(), 2u);
  EXPECT_EQ(env(s, "a/p1"), "dev.a");
  EXPECT_EQ(env(s, "a/p2"), "dev.e");
}

}  // namespace
}  // namespace envsteer::sources
