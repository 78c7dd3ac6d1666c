// SPDX-License-Identifier: Apache-2.0
#include "cli.h"

#include <CLI/CLI.hpp>
#include <httplib.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "agent.h"
#include "cgroup.h"
#include "explain.h"
#include "loader.h"
#include "trace.h"
#include "maps/bpf_maps.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace envsteer {

namespace {

std::optional<json> admin_get(const std::string& admin, const std::string& path, std::string* err) {
  auto colon = admin.rfind(':');
  if (admin.empty() || colon == std::string::npos) {
    if (err) *err = "no admin address";
    return std::nullopt;
  }
  httplib::Client c(admin.substr(0, colon), std::stoi(admin.substr(colon + 1)));
  c.set_connection_timeout(2);
  c.set_read_timeout(10);
  auto res = c.Get(path);
  if (!res) {
    if (err) *err = "agent not reachable at " + admin + " (" + httplib::to_string(res.error()) + ")";
    return std::nullopt;
  }
  auto j = json::parse(res->body, nullptr, false);
  if (res->status != 200) {
    if (err) *err = j.is_object() && j.contains("error") ? j["error"].get<std::string>() : res->body;
    return std::nullopt;
  }
  return j;
}

json pinned_status(const fs::path& pin) {
  json j;
  j["bpffs"] = pin.string();
  j["agent_lock_held"] = PinLock::held(pin);
  std::string mount;
  try {
    mount = cgroup::find_cgroup2_mount().string();
  } catch (...) {
  }
  json links = json::array();
  for (const auto& l : pinned_links(pin)) {
    std::string cg;
    if (!mount.empty() && l.cgroup_id)
      if (auto p = cgroup::path_of_id(mount, l.cgroup_id)) cg = p->string();
    links.push_back({{"pin", l.name}, {"link_id", l.link_id}, {"prog_id", l.prog_id}, {"program", l.prog_name},
                     {"attach_type", l.attach_type}, {"cgroup_id", l.cgroup_id}, {"cgroup", cg},
                     {"run_cnt", l.run_cnt}, {"run_time_ns", l.run_time_ns}});
  }
  j["links"] = links;
  json maps_j = json::array();
  json counters = json::object();
  try {
    maps::BpfMapBackend m;
    m.open_pinned(pin);
    for (size_t i = 0; i < maps::kMapCount; i++) {
      auto id = static_cast<maps::MapId>(i);
      if (id == maps::MapId::Config || id == maps::MapId::Counters || id == maps::MapId::HttpCfg ||
          id == maps::MapId::Inject)
        continue;
      maps_j.push_back({{"name", maps::map_name(id)}, {"entries", m.count(id)}, {"max_entries", m.capacity(id)}});
    }
    static const char* names[] = ES_COUNTER_NAMES;
  static_assert(sizeof(names) / sizeof(names[0]) == ES_CNT_MAX, "ES_COUNTER_NAMES out of sync");
    for (uint32_t i = 0; i < ES_CNT_MAX; i++) counters[names[i]] = m.counter(i);
    j["maps_error"] = nullptr;
  } catch (const std::exception& e) {
    j["maps_error"] = e.what();
  }
  j["maps"] = maps_j;
  j["counters"] = counters;
  Features f = probe_features();
  j["kernel"] = {{"release", f.kernel}, {"set_retval", f.set_retval},
                 {"request_context", f.request_context()}, {"notes", f.notes}};
  return j;
}

void print_status(const json& j) {
  std::cout << "pin directory: " << j["bpffs"].get<std::string>()
            << (j["agent_lock_held"].get<bool>() ? "  (agent running)" : "  (no agent holds it)") << "\n";
  std::cout << "kernel " << j["kernel"]["release"].get<std::string>()
            << ": ECONNREFUSED on refusal: " << (j["kernel"]["set_retval"].get<bool>() ? "yes" : "no (EPERM)")
            << "; request context (sock_recv_length, bpf_loop, task storage): "
            << (j["kernel"]["request_context"].get<bool>() ? "yes" : "no") << "\n";
  for (const auto& n : j["kernel"]["notes"]) std::cout << "  degraded: " << n.get<std::string>() << "\n";
  std::cout << "programs (" << j["links"].size() << "):\n";
  for (const auto& l : j["links"])
    std::cout << "  " << l["program"].get<std::string>() << "  " << l["attach_type"].get<std::string>() << "  prog "
              << l["prog_id"] << "  link " << l["link_id"] << "  cgroup "
              << (l["cgroup"].get<std::string>().empty() ? std::to_string(l["cgroup_id"].get<uint64_t>())
                                                         : l["cgroup"].get<std::string>())
              << "\n";
  if (!j["maps_error"].is_null()) std::cout << "maps: " << j["maps_error"].get<std::string>() << "\n";
  else {
    std::cout << "maps:\n";
    for (const auto& m : j["maps"])
      std::cout << "  " << m["name"].get<std::string>() << "  " << m["entries"] << "/" << m["max_entries"] << "\n";
    std::cout << "counters:\n";
    for (const auto& [k, v] : j["counters"].items()) std::cout << "  " << k << " " << v << "\n";
  }
  if (j.contains("agent")) {
    const auto& a = j["agent"];
    if (a.contains("error")) {
      std::cout << "agent: " << a["error"].get<std::string>() << "\n";
    } else {
      std::cout << "agent: " << (a["ready"].get<bool>() ? "ready" : "not ready") << ", source "
                << a["source"]["kind"].get<std::string>() << " " << a["source"]["path"].get<std::string>() << "\n";
      std::cout << "  syncs ok " << a["sync"]["ok"] << ", failed " << a["sync"]["failed"];
      if (!a["sync"]["last_error"].get<std::string>().empty())
        std::cout << "; last error: " << a["sync"]["last_error"].get<std::string>();
      std::cout << "\n  model: " << a["model"]["frontends"] << " service addresses, " << a["model"]["envs"]
                << " environments, " << a["model"]["sets"] << " backend sets, " << a["model"]["local_pods"]
                << " local pods\n";
      for (const auto& w : a["model"]["warnings"]) std::cout << "  warning: " << w.get<std::string>() << "\n";
      if (a.contains("skipped") && !a["skipped"].empty()) {
        std::cout << "  skipped objects (" << a["skipped"].size() << "; everything else is applied):\n";
        for (const auto& sk : a["skipped"])
          std::cout << "    [" << sk["reason"].get<std::string>() << "] " << sk["message"].get<std::string>() << "\n";
      }
      if (a.contains("pods")) {
        std::cout << "  local pods (thread context):\n";
        for (const auto& p : a["pods"]) {
          std::cout << "    " << p["pod"].get<std::string>() << "  env "
                    << (p["env"].get<std::string>().empty() ? "<base>" : p["env"].get<std::string>())
                    << (p["labelled"].get<bool>() ? "" : " (unlabelled)") << "  thread context "
                    << p["thread_context"].get<std::string>();
          if (p.contains("switched_off_processes"))
            for (const auto& q : p["switched_off_processes"])
              std::cout << "  [pid " << q["pid"] << ": " << q["reason"].get<std::string>() << "]";
          std::cout << "\n";
        }
      }
    }
  }
}

// %j: the message as a JSON string body (quotes, backslashes, control bytes escaped).
class JsonMessage : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    static const char* hex = "0123456789abcdef";
    for (char ch : std::string_view(msg.payload.data(), msg.payload.size())) {
      auto c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        dest.push_back('\\');
        dest.push_back(static_cast<char>(c));
      } else if (c < 0x20) {
        const char esc[] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        dest.append(esc, esc + sizeof(esc));
      } else {
        dest.push_back(static_cast<char>(c));
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonMessage>(); }
};

void setup_logging(const std::string& level, const std::string& format = "text") {
  if (format == "json") {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    f->add_flag<JsonMessage>('j').set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%j"})");
    spdlog::set_formatter(std::move(f));
  } else if (format == "text") {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  } else {
    throw std::invalid_argument("--log-format: text or json, got \"" + format + "\"");
  }
  spdlog::set_level(spdlog::level::from_str(level));
  route_libbpf_logs();
}

}  // namespace

int cli_main(int argc, char** argv) {
  CLI::App app{"envsteer: per-environment service steering in the kernel (eBPF), no sidecars"};
  app.require_subcommand(1);
  app.set_version_flag("--version", ENVSTEER_VERSION);

  Settings s;
  std::string config_file;
  std::string splitter(1, s.splitter);
  auto* run = app.add_subcommand("run", "load the programs, keep the maps in sync with the manifests");
  run->add_option("--config", config_file, "YAML settings file (flags win over it)")->check(CLI::ExistingFile);
  auto* o_manifests = run->add_option("--manifests", s.manifests,
                                      "YAML/JSON file or directory of v1 Service, v1 Pod, discovery.k8s.io/v1 "
                                      "EndpointSlice objects (re-read on change and on SIGHUP)");
  run->add_flag("--kubernetes", s.kubernetes,
                "follow the Kubernetes API (in-cluster service account, or --kubeconfig) instead of --manifests");
  run->add_option("--kubeconfig", s.kubeconfig, "kubeconfig file for --kubernetes (default: in-cluster)");
  run->add_option("--context", s.kube_context, "kubeconfig context (default: current-context)");
  run->add_option("--node-name", s.node_name, "this node's name (default: $NODE_NAME)");
  auto* o_cg = run->add_option("--cgroup-root", s.cgroup_root,
                               "cgroup v2 directory whose subtree is steered (default: the cgroup2 mount)");
  auto* o_bpffs = run->add_option("--bpffs", s.bpffs, "pin directory for maps and links")->capture_default_str();
  auto* o_label = run->add_option("--env-label", s.env_label, "pod label holding the environment")->capture_default_str();
  auto* o_header = run->add_option("--env-header", s.env_header, "HTTP header carrying a request's environment")
                       ->capture_default_str();
  auto* o_alias = run->add_option("--env-header-alias", s.env_header_aliases,
                                  "another header name carrying the environment (repeatable, at most 3)");
  auto* o_bag = run->add_option("--baggage-key", s.baggage_key,
                                "W3C baggage member carrying the environment (\"\" disables)")
                    ->capture_default_str();
  auto* o_win = run->add_option("--http-window", s.http_window,
                                "bytes of a request's header section parsed for the env header")
                    ->capture_default_str();
  auto* o_auto = run->add_flag("--auto-inject,!--no-auto-inject", s.auto_inject,
                               "insert a labelled pod's own environment into its outgoing HTTP requests that carry "
                               "none (default on; --no-auto-inject switches it off)");
  auto* o_idle = run->add_option("--upstream-idle-ms", s.upstream_idle_ms,
                                 "close an upstream of re-routed requests after this much idle time")
                     ->capture_default_str()
                     ->check(CLI::Range(100u, 86400000u));
  bool no_header_context = false;
  auto* o_nohc = run->add_flag("--no-header-context", no_header_context,
                               "do not learn request environments from HTTP headers (connect-time by pod only)");
  auto* o_split = run->add_option("--splitter", splitter, "separator of environment segments")->capture_default_str();
  auto* o_def = run->add_option("--default-env", s.default_env,
                                "environment of unlabelled pods and final fallback (default: none, unlabelled pods "
                                "form the base)");
  auto* o_admin = run->add_option("--admin", s.admin, "admin HTTP endpoint HOST:PORT (\"\" disables)")
                      ->capture_default_str();
  auto* o_cleanup = run->add_flag("--cleanup-on-exit", s.cleanup_on_exit, "detach and unpin everything on exit");
  auto* o_log = run->add_option("--log-level", s.log_level, "trace, debug, info, warn, error")->capture_default_str();
  std::string log_format = "text";
  run->add_option("--log-format", log_format, "text or json (one JSON object per line)")->capture_default_str();

  std::string bpffs = s.bpffs, admin = s.admin;
  bool as_json = false, force = false;
  auto* status = app.add_subcommand("status", "programs, attach points, pins, map fill levels, kernel features");
  status->add_option("--bpffs", bpffs, "pin directory")->capture_default_str();
  status->add_option("--admin", admin, "agent admin endpoint")->capture_default_str();
  status->add_flag("--json", as_json, "machine-readable output");

  ExplainRequest ex;
  std::string ex_env;
  auto* explain_cmd = app.add_subcommand("explain", "the environment chain walked and the pods it resolves to");
  explain_cmd->add_option("--from", ex.from, "calling pod NS/POD")->required();
  explain_cmd->add_option("--to", ex.to, "service NS/SERVICE[:PORT]")->required();
  auto* o_exenv = explain_cmd->add_option("--env", ex_env, "request environment (instead of the pod's own)");
  explain_cmd->add_option("--admin", admin, "agent admin endpoint")->capture_default_str();
  explain_cmd->add_flag("--json", as_json, "machine-readable output");

  TraceFilter tf;
  uint32_t trace_rate = 0;
  uint64_t trace_count = 0;
  double trace_duration = 0;
  auto* trace_cmd = app.add_subcommand("trace", "live stream of steering decisions (from the running agent)");
  trace_cmd->add_option("--service", tf.service, "only this service NS/NAME (or its address IP:PORT/PROTO)");
  trace_cmd->add_option("--env", tf.env, "only decisions involving this environment");
  trace_cmd->add_option("--pod", tf.pod, "only this calling or chosen pod NS/NAME");
  trace_cmd->add_flag("--json", as_json, "one JSON object per line");
  trace_cmd->add_option("--rate", trace_rate, "kernel rate limit, events per second per CPU (default 100)");
  trace_cmd->add_option("--count", trace_count, "stop after this many events");
  trace_cmd->add_option("--duration", trace_duration, "stop after this many seconds");
  trace_cmd->add_option("--admin", admin, "agent admin endpoint")->capture_default_str();

  auto* uninst = app.add_subcommand("uninstall", "detach every program and remove the pins");
  uninst->add_option("--bpffs", bpffs, "pin directory")->capture_default_str();
  uninst->add_flag("--force", force, "even while an agent holds the pin directory");

  CLI11_PARSE(app, argc, argv);

  try {
    if (*run) {
      if (!config_file.empty()) {
        Settings file_s;
        load_settings_file(config_file, file_s);
        // flags given on the command line win over the file
        Settings flags = s;
        s = file_s;
        s.kubernetes = flags.kubernetes || file_s.kubernetes;
        if (!flags.kubeconfig.empty()) s.kubeconfig = flags.kubeconfig;
        if (!flags.kube_context.empty()) s.kube_context = flags.kube_context;
        if (!flags.node_name.empty()) s.node_name = flags.node_name;
        if (o_manifests->count()) s.manifests = flags.manifests;
        if (o_cg->count()) s.cgroup_root = flags.cgroup_root;
        if (o_bpffs->count()) s.bpffs = flags.bpffs;
        if (o_label->count()) s.env_label = flags.env_label;
        if (o_header->count()) s.env_header = flags.env_header;
        if (o_def->count()) s.default_env = flags.default_env;
        if (o_admin->count()) s.admin = flags.admin;
        if (o_cleanup->count()) s.cleanup_on_exit = flags.cleanup_on_exit;
        if (o_log->count()) s.log_level = flags.log_level;
        if (o_alias->count()) s.env_header_aliases = flags.env_header_aliases;
        if (o_bag->count()) s.baggage_key = flags.baggage_key;
        if (o_win->count()) s.http_window = flags.http_window;
        if (o_auto->count()) s.auto_inject = flags.auto_inject;
        if (o_idle->count()) s.upstream_idle_ms = flags.upstream_idle_ms;
        if (o_split->count()) {
          if (splitter.size() != 1) throw std::invalid_argument("--splitter: must be one character");
          s.splitter = splitter[0];
        }
      } else {
        if (splitter.size() != 1) throw std::invalid_argument("--splitter: must be one character");
        s.splitter = splitter[0];
      }
      if (o_nohc->count()) s.header_context = false;
      if (o_label->count()) s.explicit_flags.insert("env-label");
      if (o_header->count()) s.explicit_flags.insert("env-header");
      if (o_split->count()) s.explicit_flags.insert("splitter");
      if (o_def->count()) s.explicit_flags.insert("default-env");
      if (o_auto->count()) s.explicit_flags.insert("auto-inject");
      if (s.node_name.empty())
        if (const char* nn = std::getenv("NODE_NAME")) s.node_name = nn;
      setup_logging(s.log_level, log_format);
      Agent agent(s);
      return agent.run();
    }
    // stdout carries the result (JSON with --json); warnings, e.g. libbpf's about
    // a missing kernel feature while status probes them, go to stderr
    spdlog::set_default_logger(spdlog::stderr_color_mt("cli"));
    setup_logging("warn");
    if (*status) {
      json j = pinned_status(bpffs);
      std::string err;
      if (auto a = admin_get(admin, "/v1/status", &err)) j["agent"] = *a;
      else j["agent"] = {{"error", err}};
      if (as_json) std::cout << j.dump(2) << "\n";
      else print_status(j);
      return j["links"].empty() ? 3 : 0;
    }
    if (*explain_cmd) {
      std::string q = "/v1/explain?from=" + httplib::detail::encode_query_param(ex.from) +
                      "&to=" + httplib::detail::encode_query_param(ex.to);
      if (o_exenv->count()) q += "&env=" + httplib::detail::encode_query_param(ex_env);
      std::string err;
      auto j = admin_get(admin, q, &err);
      if (!j) {
        std::cerr << "envsteer explain: " << err << "\n";
        return 1;
      }
      if (as_json) std::cout << j->dump(2) << "\n";
      else std::cout << render_explain(*j);
      return 0;
    }
    if (*trace_cmd) return run_trace_client(admin, tf, as_json, trace_rate, trace_count, trace_duration);
    if (*uninst) {
      if (!force && PinLock::held(bpffs)) {
        std::cerr << "envsteer uninstall: an agent is running on " << bpffs
                  << "; stop it first (or pass --force)\n";
        return 1;
      }
      auto removed = uninstall(bpffs);
      std::cout << "removed " << removed.size() << " pinned object(s) under " << bpffs << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "envsteer: " << e.what() << "\n";
    spdlog::shutdown();
    return 1;
  }
  return 0;
}

}  // namespace envsteer
