// SPDX-License-Identifier: Apache-2.0
// The manifest source (sources/manifest.h): files, directories, bad input, and the watcher.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
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
using ::testing::StartsWith;

const fs::path kData = fs::path(ES_TEST_DATA_DIR) / "manifests";

const char* kService = R"(apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 80
)";

void write(const fs::path& file, const std::string& text) { testutil::write_file(file, text); }

// A fresh temporary directory per test, removed afterwards.
class ManifestFiles : public ::testing::Test {
 protected:
  testutil::TempDir tmp_{"envsteer-manifest"};
  const fs::path dir_ = tmp_.path();
};

template <class F>
std::string error_of(F&& f) {
  return testutil::error_of<ManifestError>(f);
}

// ---------------------------------------------------------------------------------------------
// Loading

TEST(LoadManifests, MultiDocumentFile) {
  k8s::ClusterState st = load_manifests(kData / "cluster.yaml");
  EXPECT_EQ(st.services.size(), 3u);
  EXPECT_EQ(st.pods.size(), 1u);
  EXPECT_EQ(st.slices.size(), 1u);
  EXPECT_EQ(st.services.at("shop/web").ports.size(), 4u);
  EXPECT_TRUE(st.pods.at("shop/web-7d9c6b5f4-x2k8p").ready);
}

TEST(LoadManifests, KindList) {
  k8s::ClusterState st = load_manifests(kData / "list.yaml");
  EXPECT_EQ(st.size(), 2u);
  EXPECT_EQ(st.services.at("shop/cart").ports.at(0).target_port, 8080);
  EXPECT_FALSE(st.pods.at("shop/cart-1").ready);
}

TEST(LoadManifests, DirectoryOfYamlYmlAndJson) {
  // dir/ also holds README.md and subdir/nested.yaml (a duplicate of Service a): not read.
  k8s::ClusterState st = load_manifests(kData / "dir");
  EXPECT_EQ(st.size(), 3u);
  EXPECT_EQ(st.services.count("default/a"), 1u);
  EXPECT_EQ(st.pods.count("default/a-1"), 1u);
  const k8s::EndpointSlice& slice = st.slices.at("default/a-abcde");  // from EndpointSliceList
  EXPECT_EQ(slice.address_type, "IPv6");
  EXPECT_EQ(slice.service_name, "a");
  EXPECT_TRUE(slice.endpoints.at(0).ready);  // "ready": null
}

TEST_F(ManifestFiles, SkipsHiddenEditorAndOtherFiles) {
  write(dir_ / "web.yaml", kService);
  // Each of these would be a duplicate of web.yaml (or broken) if it were read.
  for (const char* name : {".web.yaml", "web.yaml~", ".#web.yaml", ".web.yaml.swp", "web.yaml.bak",
                           "notes.txt", "#web.yaml#"})
    write(dir_ / name, kService);
  fs::create_directory(dir_ / "sub");
  write(dir_ / "sub" / "web.yaml", kService);
  fs::create_directory(dir_ / "dir.yaml");  // a directory with a manifest-like name

  k8s::ClusterState st = load_manifests(dir_);
  EXPECT_EQ(st.size(), 1u);
  EXPECT_TRUE(is_manifest_file_name("a.yml"));
  EXPECT_FALSE(is_manifest_file_name(".a.yml"));
  EXPECT_FALSE(is_manifest_file_name("a.yml~"));
}

TEST_F(ManifestFiles, FollowsSymlinkedFiles) {
  fs::create_directory(dir_ / "..v1");
  write(dir_ / "..v1" / "web.yaml", kService);
  fs::create_directory_symlink("..v1", dir_ / "..data");
  fs::create_symlink("..data/web.yaml", dir_ / "web.yaml");  // a ConfigMap volume's layout
  EXPECT_EQ(load_manifests(dir_).services.count("default/web"), 1u);
}

TEST_F(ManifestFiles, DirectoryIsReadInNameOrder) {
  write(dir_ / "b.yaml", kService);
  write(dir_ / "a.yml", kService);
  write(dir_ / "c.json", "");
  // The second definition, in name order, is the duplicate.
  EXPECT_EQ(error_of([&] { load_manifests(dir_); }),
            (dir_ / "b.yaml").string() +
                ": document 1: Service default/web: metadata.name: duplicate: another Service "
                "with this namespace/name was already defined");

  fs::remove(dir_ / "a.yml");
  write(dir_ / "20-bad.yaml", "kind: [\n");
  write(dir_ / "10-bad.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n");
  EXPECT_THAT(error_of([&] { load_manifests(dir_); }),
              StartsWith((dir_ / "10-bad.yaml").string() + ": document 1: Secret default/s: kind: "
                                                           "unknown kind \"Secret\""));
}

TEST_F(ManifestFiles, EmptyDocumentsFilesAndDirectories) {
  EXPECT_EQ(load_manifests(dir_).size(), 0u);
  write(dir_ / "empty.yaml", "");
  write(dir_ / "comments.yaml", "# nothing here\n---\n---\n");
  write(dir_ / "empty.json", "\n");
  write(dir_ / "web.yaml", std::string("---\n") + kService + "---\n");
  EXPECT_EQ(load_manifests(dir_).size(), 1u);
}

TEST_F(ManifestFiles, JsonFile) {
  write(dir_ / "svc.json", R"({"apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "j", "namespace": "n"},
    "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "targetPort": "http"}]}})");
  k8s::ClusterState st = load_manifests(dir_ / "svc.json");
  EXPECT_EQ(st.services.at("n/j").ports.at(0).target_port_name, "http");
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST_F(ManifestFiles, MalformedYamlNamesFileAndLine) {
  fs::path f = dir_ / "bad.yaml";
  write(f, std::string(kService) + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [p\n");
  EXPECT_THAT(error_of([&] { load_manifests(f); }),
              StartsWith(f.string() + ": line 14 column 1: end of sequence flow not found"));
  write(f, "apiVersion: v1\nkind: Service\n  metadata: x\n");
  EXPECT_THAT(error_of([&] { load_manifests(f); }), StartsWith(f.string() + ": line 3 column "));
}

TEST_F(ManifestFiles, DuplicateYamlKeyNamesLine) {
  fs::path f = dir_ / "dup.yaml";
  write(f, "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n");
  EXPECT_EQ(error_of([&] { load_manifests(f); }),
            f.string() + ": line 5 column 3: duplicate mapping key \"name\"");
}

TEST_F(ManifestFiles, MalformedJsonNamesFileAndLine) {
  fs::path f = dir_ / "bad.json";
  write(f, "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\"\n  \"metadata\": {}\n}\n");
  EXPECT_THAT(error_of([&] { load_manifests(f); }), StartsWith(f.string() + ": line 4 column "));
}

TEST_F(ManifestFiles, DecodeErrorNamesFileDocumentObjectAndField) {
  fs::path f = dir_ / "m.yaml";
  std::string bad = kService;
  bad.replace(bad.find("name: web"), 9, "name: api");
  bad.replace(bad.find("port: 80"), 8, "port: \"abc\"");
  write(f, std::string(kService) + "---\n" + bad);
  EXPECT_EQ(error_of([&] { load_manifests(f); }),
            f.string() + ": document 2: Service default/api: spec.ports[0].port: must be an "
                         "integer in 1..65535, got \"abc\"");
}

TEST_F(ManifestFiles, BadInputCases) {
  struct Case {
    const char* yaml;
    const char* expected;  // after "<file>: document 1: "
  } cases[] = {
      {"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: x}\n",
       "ConfigMap x/c: kind: unknown kind \"ConfigMap\" with apiVersion \"v1\""},
      {"apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n",
       "Service: metadata.name: is required"},
      {"apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.0.0.1.2}\n",
       "Service default/s: spec.clusterIP: must be an IPv4 or IPv6 address, got \"10.0.0.1.2\""},
      {"apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {virtual-env: 1.5}}\n",
       "Pod default/p: metadata.labels[\"virtual-env\"]: must be a string, got 1.5"},
      {"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: {}}\n",
       "Pod default/p: spec.containers: must be a list, got {}"},
      {"just a string\n", "an object must be a mapping, got \"just a string\""},
  };
  fs::path f = dir_ / "case.yaml";
  for (const Case& c : cases) {
    write(f, c.yaml);
    EXPECT_THAT(error_of([&] { load_manifests(f); }),
                StartsWith(f.string() + ": document 1: " + c.expected))
        << c.yaml;
  }
}

TEST_F(ManifestFiles, DuplicateAcrossDocuments) {
  fs::path f = dir_ / "m.yaml";
  write(f, std::string(kService) + "---\n" + kService);
  EXPECT_THAT(error_of([&] { load_manifests(f); }),
              StartsWith(f.string() + ": document 2: Service default/web: metadata.name: duplicate"));
}

TEST_F(ManifestFiles, MissingPath) {
  EXPECT_EQ(error_of([&] { load_manifests(dir_ / "nope.yaml"); }),
            (dir_ / "nope.yaml").string() + ": no such file or directory");
}

// ---------------------------------------------------------------------------------------------
// ManifestWatcher

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

TEST_F(ManifestFiles, WatchDirectory) {
  ManifestWatcher w(dir_);
  EXPECT_GE(w.fd(), 0);
  EXPECT_FALSE(readable(w.fd()));
  EXPECT_FALSE(w.drain());

  write(dir_ / "web.yaml", kService);
  EXPECT_TRUE(readable(w.fd()));
  EXPECT_TRUE(w.drain());
  EXPECT_FALSE(w.drain());  // all consumed

  write(dir_ / "notes.txt", "x");
  write(dir_ / ".#web.yaml", "x");
  write(dir_ / "web.yaml~", "x");
  EXPECT_FALSE(w.drain());

  fs::rename(dir_ / "web.yaml~", dir_ / "web2.yaml");  // moved into place
  EXPECT_TRUE(w.drain());
  fs::remove(dir_ / "web2.yaml");
  EXPECT_TRUE(w.drain());
}

TEST_F(ManifestFiles, WatchFile) {
  fs::path f = dir_ / "m.yaml";
  write(f, kService);
  ManifestWatcher w(f);
  EXPECT_FALSE(w.drain());

  // An unrelated file in the parent directory.
  write(dir_ / "other.yaml", kService);
  fs::remove(dir_ / "other.yaml");
  EXPECT_FALSE(w.drain());

  // In-place rewrite, like `kubectl get -o yaml > m.yaml`.
  write(f, kService);
  EXPECT_TRUE(w.drain());

  // Editor-style rename-replace.
  write(dir_ / ".m.yaml.swp", "x");
  EXPECT_FALSE(w.drain());
  write(dir_ / "m.yaml.tmp", kService);
  fs::rename(dir_ / "m.yaml.tmp", f);
  EXPECT_TRUE(w.drain());

  // Deleted, then created anew.
  fs::remove(f);
  EXPECT_TRUE(w.drain());
  write(f, kService);
  EXPECT_TRUE(w.drain());
}

TEST_F(ManifestFiles, WatchFileNotYetExisting) {
  fs::path f = dir_ / "later.yaml";
  ManifestWatcher w(f);
  write(f, kService);
  EXPECT_TRUE(w.drain());
}

TEST_F(ManifestFiles, WatchConfigMapVolumeSwap) {
  // kubelet's layout: web.yaml -> ..data/web.yaml, ..data -> ..v1; an update renames a new
  // ..data symlink over the old one.
  fs::create_directory(dir_ / "..v1");
  write(dir_ / "..v1" / "web.yaml", kService);
  fs::create_directory_symlink("..v1", dir_ / "..data");
  fs::create_symlink("..data/web.yaml", dir_ / "web.yaml");
  ManifestWatcher file_watch(dir_ / "web.yaml");
  ManifestWatcher dir_watch(dir_);

  fs::create_directory(dir_ / "..v2");
  write(dir_ / "..v2" / "web.yaml", kService);
  EXPECT_FALSE(file_watch.drain());
  EXPECT_FALSE(dir_watch.drain());

  fs::create_directory_symlink("..v2", dir_ / "..data_tmp");
  fs::rename(dir_ / "..data_tmp", dir_ / "..data");
  EXPECT_TRUE(file_watch.drain());
  EXPECT_TRUE(dir_watch.drain());
}

TEST_F(ManifestFiles, WatchedDirectoryRemoved) {
  fs::path sub = dir_ / "sub";
  fs::create_directory(sub);
  ManifestWatcher w(sub);
  fs::remove_all(sub);
  EXPECT_TRUE(w.drain());
}

TEST(ManifestWatcher, MissingDirectoryThrows) {
  EXPECT_THAT(error_of([] { ManifestWatcher w("/nonexistent-envsteer/dir/m.yaml"); }),
              HasSubstr("/nonexistent-envsteer/dir: cannot watch: "));
}

}  // namespace
}  // namespace envsteer::sources
