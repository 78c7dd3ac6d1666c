// SPDX-License-Identifier: Apache-2.0
#include "settings.h"

#include <yaml-cpp/yaml.h>

#include <set>
#include <stdexcept>

#include "admin_server.h"
#include "envname.h"
#include "h2route.h"
#include "participation.h"

extern "C" {
#include "bpf/lib/http.h"
#include "maps/abi.h"
}

namespace envsteer {

namespace {

// Reads one key of a mapping; every key read is noted in `known`, so the
// check for unknown keys follows the reads (a key list of its own went stale).
template <class T>
void read(const YAML::Node& n, const char* key, T& out, const std::string& file, std::set<std::string>& known) {
  known.insert(key);
  if (!n[key]) return;
  try {
    out = n[key].as<T>();
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(file + ": " + key + ": " + e.what());
  }
}

}  // namespace

void load_settings_file(const std::filesystem::path& file, Settings& s) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(file.string() + ": " + e.what());
  }
  if (!root.IsMap()) throw std::runtime_error(file.string() + ": expected a mapping of settings");
  const std::string f = file.string();
  std::set<std::string> known{"limits"};
  Settings out = s;  // nothing is half-applied when a value is bad
  auto read = [&](const YAML::Node& n, const char* key, auto& dest) { envsteer::read(n, key, dest, f, known); };
  read(root, "manifests", out.manifests);
  read(root, "cgroupRoot", out.cgroup_root);
  read(root, "bpffs", out.bpffs);
  read(root, "envLabel", out.env_label);
  read(root, "envHeader", out.env_header);
  read(root, "defaultEnv", out.default_env);
  read(root, "admin", out.admin);
  read(root, "adminSocket", out.admin_socket);
  read(root, "metricsBind", out.metrics_bind);
  read(root, "logLevel", out.log_level);
  read(root, "cleanupOnExit", out.cleanup_on_exit);
  read(root, "cgroupAnnotation", out.cgroup_annotation);
  read(root, "envHeaderAliases", out.env_header_aliases);
  read(root, "baggageKey", out.baggage_key);
  read(root, "httpWindow", out.http_window);
  read(root, "headerContext", out.header_context);
  read(root, "participation", out.participation);
  read(root, "participationSelector", out.participation_selector);
  read(root, "participationNamespaceSelector", out.participation_namespace_selector);
  read(root, "autoInject", out.auto_inject);
  read(root, "connectHints", out.connect_hints);
  read(root, "handoff", out.handoff);
  read(root, "upstreamIdleMs", out.upstream_idle_ms);
  read(root, "upstreamConnectTimeoutMs", out.upstream_connect_timeout_ms);
  read(root, "responseTimeoutMs", out.response_timeout_ms);
  read(root, "relayWarm", out.relay_warm);
  read(root, "relayClientBytes", out.relay_client_bytes);
  read(root, "relayPodBytes", out.relay_pod_bytes);
  read(root, "relayTotalBytes", out.relay_total_bytes);
  read(root, "relaySockets", out.relay_sockets);
  read(root, "relayClientsPerPod", out.relay_clients_per_pod);
  read(root, "h2Listen", out.h2_listen);
  read(root, "h2MaxClients", out.h2_max_clients);
  read(root, "h2MaxStreams", out.h2_max_streams);
  read(root, "h2MaxUpstreams", out.h2_max_upstreams);
  read(root, "h2Window", out.h2_window);
  read(root, "h2MaxClientsPerPod", out.h2_max_clients_per_pod);
  read(root, "h2OpeningTimeoutMs", out.h2_opening_timeout_ms);
  std::string sp;
  read(root, "splitter", sp);
  if (root["splitter"]) {
    if (sp.size() != 1) throw std::runtime_error(f + ": splitter: must be one character");
    out.splitter = sp[0];
  }
  for (const auto& kv : root) {
    auto k = kv.first.as<std::string>();
    if (!known.count(k)) throw std::runtime_error(f + ": unknown setting \"" + k + "\"");
  }
  if (auto l = root["limits"]) {
    if (!l.IsMap()) throw std::runtime_error(f + ": limits: must be a mapping of frontends, sets, slots, envs, pods");
    std::set<std::string> lk;
    auto lread = [&](const char* key, auto& dest) { envsteer::read(l, key, dest, f, lk); };
    lread("frontends", out.limits.frontends);
    lread("sets", out.limits.sets);
    lread("slots", out.limits.slots);
    lread("envs", out.limits.envs);
    lread("pods", out.limits.pods);
    for (const auto& kv : l) {
      auto k = kv.first.as<std::string>();
      if (!lk.count(k)) throw std::runtime_error(f + ": unknown setting \"limits." + k + "\"");
    }
  }
  s = std::move(out);
}

void validate_settings(const Settings& s) {
  if (s.env_label.empty()) throw std::invalid_argument("--env-label: must not be empty");
  if (s.env_header.empty()) throw std::invalid_argument("--env-header: must not be empty");
  if (!es_splitter_valid(s.splitter))
    throw std::invalid_argument(std::string("--splitter: must be one of '.', '-', '_', got '") +
                                s.splitter + "'");
  if (!s.default_env.empty() &&
      !es_env_valid(s.default_env.data(), static_cast<int>(s.default_env.size()), s.splitter))
    throw std::invalid_argument("--default-env: \"" + s.default_env +
                                "\" is not a valid environment name");
  auto header_ok = [](const std::string& h) {
    if (h.empty() || h.size() >= ES_HTTP_NAME_MAX) return false;
    for (unsigned char c : h)
      if (!es_http_tchar(c)) return false;
    return true;
  };
  if (!header_ok(s.env_header))
    throw std::invalid_argument("--env-header: \"" + s.env_header + "\" is not a header name of 1.." +
                                std::to_string(ES_HTTP_NAME_MAX - 1) + " token characters");
  if (s.env_header_aliases.size() > ES_HTTP_MAX_NAMES - 1)
    throw std::invalid_argument("--env-header-alias: at most " + std::to_string(ES_HTTP_MAX_NAMES - 1) + " aliases");
  for (const auto& a : s.env_header_aliases)
    if (!header_ok(a)) throw std::invalid_argument("--env-header-alias: \"" + a + "\" is not a header name");
  if (!s.baggage_key.empty() && !header_ok(s.baggage_key))
    throw std::invalid_argument("--baggage-key: \"" + s.baggage_key + "\" is not a baggage key");
  if (s.http_window < 64 || s.http_window > 65535)
    throw std::invalid_argument("--http-window: must be 64..65535 bytes, got " + std::to_string(s.http_window));
  if (s.bpffs.empty() || s.bpffs[0] != '/') throw std::invalid_argument("--bpffs: must be an absolute path");
  if (!s.admin.empty()) admin::parse_host_port(s.admin, "--admin");
  if (!s.metrics_bind.empty()) admin::parse_host_port(s.metrics_bind, "--metrics-bind");
  if (!s.admin.empty() && s.admin == s.metrics_bind)
    throw std::invalid_argument("--metrics-bind: must differ from --admin (" + s.admin + ")");
  if (!s.admin_socket.empty() && (s.admin_socket[0] != '/' || s.admin_socket.size() > 107))
    throw std::invalid_argument("--admin-socket: must be an absolute path of at most 107 bytes, got \"" +
                                s.admin_socket + "\"");
  auto range = [](uint64_t v, uint64_t lo, uint64_t hi, const char* flag) {
    if (v < lo || v > hi)
      throw std::invalid_argument(std::string(flag) + ": must be " + std::to_string(lo) + ".." + std::to_string(hi) +
                                  ", got " + std::to_string(v));
  };
  range(s.upstream_idle_ms, 100, 86400000, "--upstream-idle-ms");
  range(s.upstream_connect_timeout_ms, 10, 600000, "--upstream-connect-timeout-ms");
  range(s.response_timeout_ms, 100, 86400000, "--response-timeout-ms");
  range(s.relay_warm, 0, 32, "--relay-warm");
  // a frame is one send's piece of at most a few hundred KiB: a client must fit one
  range(s.relay_client_bytes, 1u << 20, 1ull << 30, "--relay-client-bytes");
  range(s.relay_pod_bytes, s.relay_client_bytes, 1ull << 34, "--relay-pod-bytes");
  range(s.relay_total_bytes, s.relay_pod_bytes, 1ull << 34, "--relay-total-bytes");
  range(s.relay_sockets, 1, ES_RELAY_SOCKETS_MAX, "--relay-sockets");
  range(s.relay_clients_per_pod, 1, 16384, "--relay-clients-per-pod");
  if (!s.h2_listen.empty()) h2::parse_listen(s.h2_listen);  // throws what is wrong
  range(s.h2_max_clients, 1, 65536, "--h2-max-clients");
  range(s.h2_max_streams, 1, 4096, "--h2-max-streams");
  range(s.h2_max_upstreams, 1, 256, "--h2-max-upstreams");
  range(s.h2_window, 65535, 1u << 30, "--h2-window");
  range(s.h2_max_clients_per_pod, 1, 65536, "--h2-max-clients-per-pod");
  range(s.h2_opening_timeout_ms, 100, 3600000, "--h2-opening-timeout-ms");
  if (s.participation != "selected" && s.participation != "all")
    throw std::invalid_argument("--participation: must be \"selected\" or \"all\", got \"" + s.participation + "\"");
  try {
    LabelSelector::parse(s.participation_selector);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("--participation-selector: ") + e.what());
  }
  try {
    LabelSelector::parse(s.participation_namespace_selector);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("--participation-namespace-selector: ") + e.what());
  }
  auto& l = s.limits;
  if (!l.frontends || !l.sets || !l.slots || !l.envs || !l.pods)
    throw std::invalid_argument("limits: every limit must be at least 1");
}

}  // namespace envsteer
