// SPDX-License-Identifier: Apache-2.0
// Kubernetes Events for skipped objects (agent/sources/kubeevents.h): the body
// and the name, which every node derives alike (one Event for all agents).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <regex>

#include "sources/kubeevents.h"

namespace envsteer::sources {
namespace {

EventSpec spec() {
  return {"Pod", "team-a", "web-1", "u-1", "metadata.labels.virtual-env", "invalid_env",
          "Pod team-a/web-1: metadata.labels.virtual-env: \"dev..x\" is not a valid environment name"};
}

TEST(KubeEvents, ReasonIsCamelCase) {
  EXPECT_EQ(event_reason("invalid_env"), "SkippedInvalidEnv");
  EXPECT_EQ(event_reason("address_in_use"), "SkippedAddressInUse");
}

TEST(KubeEvents, NameIsTheSameOnEveryNodeAndDiffersPerFinding) {
  EXPECT_EQ(event_name(spec()), event_name(spec()));
  EXPECT_THAT(event_name(spec()), ::testing::MatchesRegex("web-1\\.envsteer-[0-9a-f]{8}"));
  auto other = spec();
  other.reason = "cgroup_shared";
  EXPECT_NE(event_name(other), event_name(spec()));
  other = spec();
  other.uid = "u-2";  // the object was re-created
  EXPECT_NE(event_name(other), event_name(spec()));
  // a DNS subdomain of at most 253 characters, even for a name at the limit
  other = spec();
  other.name = std::string(250, 'a') + ".b";
  auto n = event_name(other);
  EXPECT_LE(n.size(), 253u);
  EXPECT_TRUE(std::regex_match(n, std::regex("[a-z0-9]([a-z0-9.-]*[a-z0-9])?"))) << n;
}

TEST(KubeEvents, BodyNamesTheObjectFieldAndNode) {
  auto j = skip_event(spec(), "node-1", std::chrono::system_clock::from_time_t(0));
  EXPECT_EQ(j["apiVersion"], "v1");
  EXPECT_EQ(j["kind"], "Event");
  EXPECT_EQ(j["metadata"]["namespace"], "team-a");
  EXPECT_EQ(j["metadata"]["name"], event_name(spec()));
  EXPECT_EQ(j["involvedObject"], (nlohmann::json{{"apiVersion", "v1"},
                                                 {"kind", "Pod"},
                                                 {"namespace", "team-a"},
                                                 {"name", "web-1"},
                                                 {"uid", "u-1"},
                                                 {"fieldPath", "metadata.labels.virtual-env"}}));
  EXPECT_EQ(j["type"], "Warning");
  EXPECT_EQ(j["reason"], "SkippedInvalidEnv");
  EXPECT_EQ(j["source"]["host"], "node-1");
  EXPECT_EQ(j["reportingInstance"], "node-1");
  EXPECT_EQ(j["firstTimestamp"], "1970-01-01T00:00:00Z");
  EXPECT_EQ(j["count"], 1);
  auto s = spec();
  s.kind = "EndpointSlice";
  s.message = std::string(5000, 'x');
  j = skip_event(s, "node-1", std::chrono::system_clock::now());
  EXPECT_EQ(j["involvedObject"]["apiVersion"], "discovery.k8s.io/v1");
  EXPECT_LE(j["message"].get<std::string>().size(), 1024u);
}

}  // namespace
}  // namespace envsteer::sources
