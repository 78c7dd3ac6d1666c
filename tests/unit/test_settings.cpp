// SPDX-License-Identifier: Apache-2.0
// Agent settings (agent/settings.h): the YAML config file and validation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "fixtures.h"
#include "maps/abi.h"
#include "settings.h"

namespace envsteer::settings_test {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A config file in a private temp dir, removed with the fixture.
class SettingsFile : public ::testing::Test {
 protected:
  fs::path write(const std::string& content, const std::string& name = "config.yaml") {
    return tmp_.write(name, content);
  }

  // The runtime_error message of loading `content`, or "<no error>".
  std::string load_error(const std::string& content) {
    Settings s;
    auto p = write(content);
    return testutil::error_of<std::runtime_error>([&] { load_settings_file(p, s); });
  }

  testutil::TempDir tmp_{"envsteer-settings"};
  const fs::path dir_ = tmp_.path();
};

std::string validate_error(const Settings& s) {
  return testutil::error_of<std::invalid_argument>([&] { validate_settings(s); });
}

TEST_F(SettingsFile, AllKeys) {
  auto p = write(R"(
manifests: /etc/envsteer/manifests
cgroupRoot: /sys/fs/cgroup/unified/kubepods
bpffs: /sys/fs/bpf/es-test
envLabel: example.com/env
envHeader: X-Env
splitter: "-"
defaultEnv: dev
admin: 127.0.0.1:19966
logLevel: debug
cleanupOnExit: true
cgroupAnnotation: example.com/cgroup
participation: all
participationSelector: "team=a,!legacy"
participationNamespaceSelector: "mesh=envsteer"
limits:
  frontends: 10
  sets: 20
  slots: 30
  envs: 40
  pods: 50
)");
  Settings s;
  load_settings_file(p, s);
  EXPECT_EQ(s.manifests, "/etc/envsteer/manifests");
  EXPECT_EQ(s.cgroup_root, "/sys/fs/cgroup/unified/kubepods");
  EXPECT_EQ(s.bpffs, "/sys/fs/bpf/es-test");
  EXPECT_EQ(s.env_label, "example.com/env");
  EXPECT_EQ(s.env_header, "X-Env");
  EXPECT_EQ(s.splitter, '-');
  EXPECT_EQ(s.default_env, "dev");
  EXPECT_EQ(s.admin, "127.0.0.1:19966");
  EXPECT_EQ(s.log_level, "debug");
  EXPECT_TRUE(s.cleanup_on_exit);
  EXPECT_EQ(s.cgroup_annotation, "example.com/cgroup");
  EXPECT_EQ(s.participation, "all");
  EXPECT_EQ(s.participation_selector, "team=a,!legacy");
  EXPECT_EQ(s.participation_namespace_selector, "mesh=envsteer");
  EXPECT_EQ(s.limits.frontends, 10u);
  EXPECT_EQ(s.limits.sets, 20u);
  EXPECT_EQ(s.limits.slots, 30u);
  EXPECT_EQ(s.limits.envs, 40u);
  EXPECT_EQ(s.limits.pods, 50u);
  EXPECT_NO_THROW(validate_settings(s));
}

TEST_F(SettingsFile, AbsentKeysKeepWhatIsThere) {
  Settings s;
  s.default_env = "from-flag";
  s.limits.pods = 7;
  load_settings_file(write("envLabel: team\nlimits:\n  slots: 99\n"), s);
  EXPECT_EQ(s.env_label, "team");
  EXPECT_EQ(s.limits.slots, 99u);
  EXPECT_EQ(s.default_env, "from-flag");
  EXPECT_EQ(s.limits.pods, 7u);
  Settings defaults;
  EXPECT_EQ(s.bpffs, defaults.bpffs);
  EXPECT_EQ(s.env_header, defaults.env_header);
  EXPECT_EQ(s.splitter, '.');
  EXPECT_EQ(s.limits.frontends, defaults.limits.frontends);
}

TEST_F(SettingsFile, UnknownKeyNamesFileAndKey) {
  auto err = load_error("envLabel: team\ndefaultEnvironment: dev\n");
  EXPECT_THAT(err, AllOf(HasSubstr("config.yaml"), HasSubstr("unknown setting"), HasSubstr("defaultEnvironment")));
}

TEST_F(SettingsFile, SplitterMustBeOneCharacter) {
  EXPECT_THAT(load_error("splitter: ab\n"), AllOf(HasSubstr("config.yaml"), HasSubstr("splitter")));
  EXPECT_THAT(load_error("splitter: \"\"\n"), HasSubstr("splitter"));
}

TEST_F(SettingsFile, SplitterOutsideTheAllowedSetIsRejectedByValidation) {
  Settings s;
  load_settings_file(write("splitter: /\n"), s);
  EXPECT_EQ(s.splitter, '/');
  EXPECT_THAT(validate_error(s), AllOf(HasSubstr("--splitter"), HasSubstr("'/'")));
}

TEST_F(SettingsFile, WrongTypesNameTheKey) {
  EXPECT_THAT(load_error("cleanupOnExit: maybe\n"), AllOf(HasSubstr("config.yaml"), HasSubstr("cleanupOnExit")));
  EXPECT_THAT(load_error("limits:\n  frontends: lots\n"), HasSubstr("frontends"));
  EXPECT_THAT(load_error("limits:\n  slots: -1\n"), HasSubstr("slots"));
  EXPECT_THAT(load_error("envLabel: [a, b]\n"), HasSubstr("envLabel"));
}

TEST_F(SettingsFile, LimitsMustBeAMapping) {
  // an error (naming the file and the key)
  EXPECT_NE(load_error("limits: 5\n"), "<no error>");
}

TEST_F(SettingsFile, NotAMapping) {
  EXPECT_THAT(load_error("- envLabel\n- team\n"), AllOf(HasSubstr("config.yaml"), HasSubstr("mapping")));
  EXPECT_THAT(load_error("just a string\n"), HasSubstr("mapping"));
}

TEST_F(SettingsFile, MalformedYamlNamesTheFile) {
  EXPECT_THAT(load_error("envLabel: [unclosed\n"), HasSubstr("config.yaml"));
}

TEST_F(SettingsFile, MissingFileNamesTheFile) {
  Settings s;
  try {
    load_settings_file(dir_ / "nope.yaml", s);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("nope.yaml"));
  }
}

// Regression (found by review) (agent/settings.cpp load_settings_file(), lines 60-66): only top-level
// keys are checked against the known list; keys under `limits:` are read by
// name and anything else is silently ignored, so a typo keeps the default.
// Repro: "limits:\n  frontend: 10\n" (missing "s") loads without error and
// limits.frontends stays 65536. Expected: "unknown setting \"limits.frontend\""
// like a misspelt top-level key.
TEST_F(SettingsFile, UnknownLimitKeyIsAnError) {
  EXPECT_THAT(load_error("limits:\n  frontend: 10\n"), HasSubstr("frontend"));
}

// Regression (agent/settings.cpp read(), line 16, called from line 61): `limits`
// that is not a mapping makes `n[key]` throw outside read()'s try block, so
// the error is yaml-cpp's raw "operator[] call on a scalar (key:
// \"frontends\")" without the file name or the "limits" key.
// Repro: config file "limits: 5\n". Expected: "<file>: limits: must be a
// mapping" (or similar naming file and key).
TEST_F(SettingsFile, LimitsNotAMappingNamesFileAndKey) {
  EXPECT_THAT(load_error("limits: 5\n"), AllOf(HasSubstr("config.yaml"), HasSubstr("limits")));
}

TEST(ValidateSettings, DefaultsAreValid) { EXPECT_NO_THROW(validate_settings(Settings{})); }

TEST(ValidateSettings, DefaultEnvMustBeAValidName) {
  Settings s;
  for (const char* bad : {"dev..x", "-dev", "dev.", "dev x", "dev/x"}) {
    s.default_env = bad;
    EXPECT_THAT(validate_error(s), AllOf(HasSubstr("--default-env"), HasSubstr(bad))) << bad;
  }
  s.default_env = std::string(64, 'a');
  EXPECT_THAT(validate_error(s), HasSubstr("--default-env"));
  s.default_env = "dev.proj1";
  EXPECT_NO_THROW(validate_settings(s));
}

TEST(ValidateSettings, DefaultEnvIsCheckedWithTheConfiguredSplitter) {
  Settings s;
  s.splitter = '-';
  s.default_env = "dev..x";  // a label value with one segment when '-' splits
  EXPECT_NO_THROW(validate_settings(s));
  s.default_env = "dev--x";
  EXPECT_THAT(validate_error(s), HasSubstr("--default-env"));
}

TEST(ValidateSettings, BpffsMustBeAbsolute) {
  Settings s;
  s.bpffs = "sys/fs/bpf/envsteer";
  EXPECT_THAT(validate_error(s), HasSubstr("--bpffs"));
  s.bpffs = "";
  EXPECT_THAT(validate_error(s), HasSubstr("--bpffs"));
  s.bpffs = "/x";
  EXPECT_NO_THROW(validate_settings(s));
}

TEST(ValidateSettings, EveryLimitAtLeastOne) {
  for (uint32_t Limits::*field : {&Limits::frontends, &Limits::sets, &Limits::slots, &Limits::envs, &Limits::pods}) {
    Settings s;
    s.limits.*field = 0;
    EXPECT_THAT(validate_error(s), HasSubstr("limits"));
    s.limits.*field = 1;
    EXPECT_NO_THROW(validate_settings(s));
  }
}

TEST(ValidateSettings, LabelHeaderSplitter) {
  Settings s;
  s.env_label = "";
  EXPECT_THAT(validate_error(s), HasSubstr("--env-label"));
  s = Settings{};
  s.env_header = "";
  EXPECT_THAT(validate_error(s), HasSubstr("--env-header"));
  for (char c : {'.', '-', '_'}) {
    s = Settings{};
    s.splitter = c;
    EXPECT_NO_THROW(validate_settings(s)) << c;
  }
  for (char c : {'a', '/', ' ', '\0'}) {
    s = Settings{};
    s.splitter = c;
    EXPECT_THAT(validate_error(s), HasSubstr("--splitter")) << int(c);
  }
}

TEST_F(SettingsFile, AdminSurfaceKeys) {
  Settings s;
  EXPECT_EQ(s.admin, "127.0.0.1:9966");
  EXPECT_EQ(s.admin_socket, "/run/envsteer/admin.sock");
  EXPECT_EQ(s.metrics_bind, "");
  load_settings_file(write("adminSocket: /run/x/admin.sock\nmetricsBind: 0.0.0.0:9967\nadmin: \"\"\n"), s);
  EXPECT_EQ(s.admin_socket, "/run/x/admin.sock");
  EXPECT_EQ(s.metrics_bind, "0.0.0.0:9967");
  EXPECT_EQ(s.admin, "");
  EXPECT_NO_THROW(validate_settings(s));
}

TEST(ValidateSettings, AdminAddressesAndSocket) {
  Settings s;
  s.admin = "9966";
  EXPECT_THAT(validate_error(s), HasSubstr("--admin"));
  s = Settings{};
  s.metrics_bind = "::1:9967";  // IPv6 needs brackets
  EXPECT_THAT(validate_error(s), HasSubstr("--metrics-bind"));
  s.metrics_bind = "[::]:9967";
  EXPECT_NO_THROW(validate_settings(s));
  s.metrics_bind = s.admin;
  EXPECT_THAT(validate_error(s), HasSubstr("--metrics-bind"));
  s = Settings{};
  s.admin_socket = "admin.sock";
  EXPECT_THAT(validate_error(s), HasSubstr("--admin-socket"));
  s.admin_socket = "/" + std::string(120, 'x');
  EXPECT_THAT(validate_error(s), HasSubstr("--admin-socket"));
  s.admin_socket = "";
  s.admin = "";
  EXPECT_NO_THROW(validate_settings(s));
}

namespace envsteer::settings_test {
namespace {

// Every key the reader takes is accepted (the unknown-key check follows the
// reads): upstreamIdleMs was read but rejected as unknown.
TEST_F(SettingsFile, EveryReadKeyIsAccepted) {
  Settings s;
  auto p = write(R"(
upstreamIdleMs: 1500
autoInject: false
connectHints: false
handoff: false
headerContext: false
httpWindow: 8192
baggageKey: ctx
envHeaderAliases: [X-Env]
)");
  ASSERT_NO_THROW(load_settings_file(p, s));
  EXPECT_EQ(s.upstream_idle_ms, 1500u);
  EXPECT_FALSE(s.auto_inject);
  EXPECT_FALSE(s.connect_hints);
  EXPECT_FALSE(s.handoff);
  EXPECT_FALSE(s.header_context);
  EXPECT_EQ(s.http_window, 8192u);
}

TEST_F(SettingsFile, BadValueAppliesNothing) {
  Settings s;
  s.env_label = "keep";
  auto p = write("envLabel: changed\nhttpWindow: lots\n");
  EXPECT_THROW(load_settings_file(p, s), std::runtime_error);
  EXPECT_EQ(s.env_label, "keep");
}

TEST_F(SettingsFile, AutoInjectIsOnByDefault) { EXPECT_TRUE(Settings{}.auto_inject); }

TEST_F(SettingsFile, UnknownLimitNamed) {
  EXPECT_THAT(load_error("limits:\n  frontend: 3\n"), HasSubstr("unknown setting \"limits.frontend\""));
}

}  // namespace
}  // namespace envsteer::settings_test

TEST_F(SettingsFile, RelaySocketsReadAndBounded) {
  Settings s;
  EXPECT_EQ(s.relay_sockets, 4u);
  auto p = write("relaySockets: 7\n");
  ASSERT_NO_THROW(load_settings_file(p, s));
  EXPECT_EQ(s.relay_sockets, 7u);
  EXPECT_NO_THROW(validate_settings(s));
  s.relay_sockets = 0;
  EXPECT_THAT(validate_error(s), HasSubstr("--relay-sockets"));
  s.relay_sockets = ES_RELAY_SOCKETS_MAX + 1;
  EXPECT_THAT(validate_error(s), HasSubstr("--relay-sockets"));
  s.relay_sockets = ES_RELAY_SOCKETS_MAX;
  EXPECT_NO_THROW(validate_settings(s));
}

}  // namespace
}  // namespace envsteer::settings_test
