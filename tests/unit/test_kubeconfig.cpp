// SPDX-License-Identifier: Apache-2.0
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "fixtures.h"
#include "sources/kubeclient.h"

namespace fs = std::filesystem;
namespace testutil = envsteer::testutil;
using envsteer::sources::KubeConfigError;
using envsteer::sources::load_kubeconfig;
using ::testing::HasSubstr;

namespace {

class KubeConfigFile : public ::testing::Test {
 protected:
  fs::path write(const std::string& text) { return tmp_.write("config", text); }
  std::string error_of(const std::string& text, const std::string& ctx = "") {
    return testutil::error_of<KubeConfigError>([&] { load_kubeconfig(write(text), ctx); });
  }
  testutil::TempDir tmp_{"envsteer-kubeconfig"};
  const fs::path dir_ = tmp_.path();
};

// "PEM" and "secret" in base64
const char* kTwoContexts = R"(apiVersion: v1
kind: Config
current-context: dev
clusters:
- name: c1
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: UEVN
- name: c2
  cluster:
    server: https://127.0.0.2:6443
    certificate-authority: certs/ca.crt
contexts:
- name: dev
  context: {cluster: c1, user: u1}
- name: other
  context: {cluster: c2, user: u2}
users:
- name: u1
  user: {token: abc}
- name: u2
  user:
    client-certificate: /abs/client.crt
    client-key: client.key
    client-key-data: c2VjcmV0
)";

TEST_F(KubeConfigFile, CurrentContextWithTokenAndInlineCA) {
  auto k = load_kubeconfig(write(kTwoContexts));
  EXPECT_EQ(k.server, "https://127.0.0.1:6443");
  EXPECT_EQ(k.ca_data, "PEM");
  EXPECT_EQ(k.token, "abc");
  EXPECT_THAT(k.source, HasSubstr("context dev"));
}

TEST_F(KubeConfigFile, NamedContextWithClientCertAndRelativePaths) {
  auto k = load_kubeconfig(write(kTwoContexts), "other");
  EXPECT_EQ(k.server, "https://127.0.0.2:6443");
  EXPECT_EQ(k.ca_file, (dir_ / "certs/ca.crt").string());
  EXPECT_EQ(k.client_cert_file, "/abs/client.crt");
  EXPECT_EQ(k.client_key_file, (dir_ / "client.key").string());
  EXPECT_EQ(k.client_key_data, "secret");
  EXPECT_TRUE(k.token.empty());
}

TEST_F(KubeConfigFile, ErrorsNameTheFileAndTheProblem) {
  EXPECT_THAT(error_of(kTwoContexts, "nope"), AllOf(HasSubstr("config"), HasSubstr("nope")));
  EXPECT_THAT(error_of("clusters: []\n"), HasSubstr("current-context"));
  EXPECT_THAT(error_of("current-context: x\ncontexts:\n- name: x\n  context: {cluster: c}\nclusters:\n"
                       "- name: c\n  cluster: {}\n"),
              HasSubstr("no server"));
  EXPECT_THAT(error_of("current-context: x\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\nclusters:\n"
                       "- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user:\n"
                       "    exec: {command: aws}\n"),
              HasSubstr("exec"));
  EXPECT_THAT(error_of("current-context: x\ncontexts:\n- name: x\n  context: {cluster: c}\nclusters:\n"
                       "- name: c\n  cluster: {server: 'https://127.0.0.1:1', certificate-authority-data: '#!'}\n"),
              HasSubstr("base64"));
  EXPECT_THAT(error_of("a: [\n"), HasSubstr("config"));
}

TEST(KubeInCluster, NeedsTheServiceEnvironment) {
  unsetenv("KUBERNETES_SERVICE_HOST");
  try {
    envsteer::sources::in_cluster_config("/nonexistent");
    ADD_FAILURE() << "no error";
  } catch (const KubeConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("KUBERNETES_SERVICE_HOST"));
  }
}

TEST(KubeUrl, EscapesSelectors) {
  EXPECT_EQ(envsteer::sources::url_escape("spec.nodeName=n1"), "spec.nodeName%3Dn1");
  EXPECT_EQ(envsteer::sources::url_escape("a in (x,y)"), "a%20in%20%28x%2Cy%29");
}

}  // namespace
