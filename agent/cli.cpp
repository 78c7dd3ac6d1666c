// SPDX-License-Identifier: Apache-2.0
#include "cli.h"

#include <CLI/CLI.hpp>
#include <httplib.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>

#include <iostream>
#include <map>
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

// GET on the agent's admin unix socket. The raw answer; nullopt (and *err) when the agent
// cannot be reached.
std::optional<std::pair<int, std::string>> socket_get(const std::string& socket_path, const std::string& path,
                                                      std::string* err, time_t timeout = 10) {
  if (socket_path.empty()) {
    if (err) *err = "no admin socket (--admin-socket)";
    return std::nullopt;
  }
  httplib::Client c(socket_path);
  c.set_address_family(AF_UNIX);
  c.set_connection_timeout(std::min<time_t>(timeout, 2));
  c.set_read_timeout(timeout);
  c.set_write_timeout(timeout);
  auto res = c.Get(path);
  if (!res) {
    if (err) {
      *err = "agent not reachable at " + socket_path + " (" + httplib::to_string(res.error());
      if (access(socket_path.c_str(), F_OK) != 0) *err += ": no such socket; is the agent running?";
      else if (access(socket_path.c_str(), W_OK) != 0) *err += ": permission denied; run as root";
      *err += ")";
    }
    return std::nullopt;
  }
  return std::make_pair(res->status, res->body);
}

std::optional<json> admin_get(const std::string& socket_path, const std::string& path, std::string* err) {
  auto res = socket_get(socket_path, path, err);
  if (!res) return std::nullopt;
  auto j = json::parse(res->second, nullptr, false);
  if (res->first != 200) {
    if (err) *err = j.is_object() && j.contains("error") ? j["error"].get<std::string>() : res->second;
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
  auto pl = pinned_links(pin);
  // every pod has its own links: find their cgroups in one bounded walk of the mount
  std::map<uint64_t, std::string> cg_path;
  for (const auto& l : pl)
    if (l.cgroup_id) cg_path[l.cgroup_id];
  if (!mount.empty() && !cg_path.empty()) {
    size_t left = cg_path.size(), seen = 0;
    std::error_code ec;
    auto note = [&](const fs::path& d) {
      auto id = cgroup::cgroup_id(d);
      auto it = id ? cg_path.find(*id) : cg_path.end();
      if (it != cg_path.end() && it->second.empty()) {
        it->second = d.string();
        left--;
      }
    };
    note(mount);
    for (auto it = fs::recursive_directory_iterator(mount, fs::directory_options::skip_permission_denied, ec);
         left && !ec && it != fs::recursive_directory_iterator() && ++seen <= 100000; it.increment(ec))
      if (it->is_directory(ec)) note(it->path());
  }
  for (const auto& l : pl) {
    std::string cg = l.cgroup_id ? cg_path[l.cgroup_id] : "";
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
      if (a.contains("participation"))
        std::cout << "  participation: " << a["participation"]["mode"].get<std::string>()
                  << (a["participation"]["mode"] == "all"
                          ? std::string()
                          : " (env label, or selector \"" + a["participation"]["selector"].get<std::string>() +
                                "\", or namespace selector \"" +
                                a["participation"].value("namespace_selector", std::string()) + "\")")
                  << "; " << a["participation"]["pods_with_programs"] << " pod cgroup(s) carry the programs\n";
      for (const auto& w : a["model"]["warnings"]) std::cout << "  warning: " << w.get<std::string>() << "\n";
      if (a.contains("skipped") && !a["skipped"].empty()) {
        std::cout << "  skipped objects (" << a["skipped"].size() << "; everything else is applied):\n";
        for (const auto& sk : a["skipped"])
          std::cout << "    [" << sk["reason"].get<std::string>() << "] " << sk["message"].get<std::string>() << "\n";
      }
      if (a.contains("h2") && a["h2"].contains("listen")) {
        const auto& h = a["h2"];
        std::cout << "  HTTP/2 endpoint " << h["listen"].get<std::string>() << ": " << h["clients"]
                  << " client connection(s), " << h["upstreams"] << " upstream(s), " << h["streams"]
                  << " stream(s), " << h["buffered_bytes"] << " bytes buffered\n    streams:";
        for (const auto& [k, v] : h["streams_by_outcome"].items()) std::cout << " " << k << " " << v;
        std::cout << "\n";
      }
      if (a.contains("h2") && a["h2"].contains("hints"))
        for (const auto& hint : a["h2"]["hints"]) std::cout << "  HTTP/2: " << hint.get<std::string>() << "\n";
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

namespace {

// `--config FILE` of `run`, found before the command line is parsed: the file
// is applied first, and the flags given then overwrite what they name (CLI11
// writes only the options that are given), so flags win without a merge.
std::string config_arg(int argc, char** argv) {
  bool in_run = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "run") in_run = true;
    if (!in_run) continue;
    if (a == "--config" && i + 1 < argc) return argv[i + 1];
    if (a.rfind("--config=", 0) == 0) return a.substr(9);
  }
  return "";
}

struct RunCmd {
  CLI::App* cmd = nullptr;
  std::string config_file, splitter, log_format = "text";
  bool no_header_context = false;
  // flags whose explicit use beats the cluster's VirtualEnvironment settings
  std::vector<std::pair<CLI::Option*, const char*>> explicit_opts;
  CLI::Option* o_split = nullptr;

  void add(CLI::App& app, Settings& s) {
    splitter = std::string(1, s.splitter);
    cmd = app.add_subcommand("run", "load the programs, keep the maps in sync with the manifests");
    cmd->add_option("--config", config_file, "YAML settings file (flags win over it)")->check(CLI::ExistingFile);
    cmd->add_option("--manifests", s.manifests,
                    "YAML/JSON file or directory of v1 Service, v1 Pod, discovery.k8s.io/v1 "
                    "EndpointSlice objects (re-read on change and on SIGHUP)");
    cmd->add_flag("--kubernetes", s.kubernetes,
                  "follow the Kubernetes API (in-cluster service account, or --kubeconfig) instead of --manifests");
    cmd->add_option("--kubeconfig", s.kubeconfig, "kubeconfig file for --kubernetes (default: in-cluster)");
    cmd->add_option("--context", s.kube_context, "kubeconfig context (default: current-context)");
    cmd->add_option("--node-name", s.node_name, "this node's name (default: $NODE_NAME)");
    cmd->add_option("--cgroup-root", s.cgroup_root,
                    "cgroup v2 directory whose subtree is steered (default: the cgroup2 mount)");
    cmd->add_option("--bpffs", s.bpffs, "pin directory for maps and links")->capture_default_str();
    explicit_opts.emplace_back(
        cmd->add_option("--env-label", s.env_label, "pod label holding the environment")->capture_default_str(),
        "env-label");
    explicit_opts.emplace_back(cmd->add_option("--env-header", s.env_header,
                                               "HTTP header carrying a request's environment")
                                   ->capture_default_str(),
                               "env-header");
    cmd->add_option("--env-header-alias", s.env_header_aliases,
                    "another header name carrying the environment (repeatable, at most 3)");
    cmd->add_option("--baggage-key", s.baggage_key, "W3C baggage member carrying the environment (\"\" disables)")
        ->capture_default_str();
    cmd->add_option("--http-window", s.http_window, "bytes of a request's header section parsed for the env header")
        ->capture_default_str();
    explicit_opts.emplace_back(
        cmd->add_flag("--auto-inject,!--no-auto-inject", s.auto_inject,
                      "insert a labelled pod's own environment into its outgoing HTTP requests that carry "
                      "none (default on; --no-auto-inject switches it off)"),
        "auto-inject");
    cmd->add_flag("--connect-hints,!--no-connect-hints", s.connect_hints,
                  "connect a pod to the backend set of its last request to the service that went through the "
                  "relay (a client opening one tagged connection per request then skips the relay); every "
                  "request is still routed by its own header (default on)");
    cmd->add_flag("--handoff,!--no-handoff", s.handoff,
                  "parse once per hop: a request sent from one pod of the node to another that has the thread "
                  "context is parsed by its sender only, which hands its environment and length to the "
                  "receiver (default on)");
    cmd->add_option("--upstream-idle-ms", s.upstream_idle_ms,
                    "close an upstream of re-routed requests that owes nothing after this much idle time")
        ->capture_default_str();
    cmd->add_option("--upstream-connect-timeout-ms", s.upstream_connect_timeout_ms,
                    "give up connecting an upstream of re-routed requests after this long (the client is reset)")
        ->capture_default_str();
    cmd->add_option("--response-timeout-ms", s.response_timeout_ms,
                    "reset the client of an upstream that owes it a response and has been silent this long")
        ->capture_default_str();
    cmd->add_option("--relay-warm", s.relay_warm,
                    "pre-connected upstreams kept per backend set in recent use (0: none)")
        ->capture_default_str();
    cmd->add_option("--relay-client-bytes", s.relay_client_bytes,
                    "bytes one client connection may have queued at the relay (beyond: its send fails)")
        ->capture_default_str();
    cmd->add_option("--relay-pod-bytes", s.relay_pod_bytes,
                    "bytes the client connections of one pod together may have queued at the relay")
        ->capture_default_str();
    cmd->add_option("--relay-total-bytes", s.relay_total_bytes,
                    "bytes all client connections together may have queued at the relay")
        ->capture_default_str();
    cmd->add_option("--relay-sockets", s.relay_sockets,
                    "relay sockets the re-routed requests' frames are queued on, chosen by the client's pod (1-16); "
                    "each holds at most max(--relay-total-bytes / N, --relay-pod-bytes): a pod that fills its "
                    "socket delays no pod on another")
        ->capture_default_str();
    cmd->add_option("--relay-clients-per-pod", s.relay_clients_per_pod,
                    "client connections of one pod the relay serves at once (beyond: reset)")
        ->capture_default_str();
    cmd->add_option("--h2-listen", s.h2_listen,
                    "ADDR:PORT of the HTTP/2 endpoint that routes each stream of declared HTTP/2 ports of "
                    "services with several backend sets by its own environment; must be reachable from the pods "
                    "(\"\": off)")
        ->capture_default_str();
    cmd->add_option("--h2-max-clients", s.h2_max_clients, "HTTP/2 client connections at once (beyond: closed)")
        ->capture_default_str();
    cmd->add_option("--h2-max-streams", s.h2_max_streams, "concurrent streams per HTTP/2 client connection")
        ->capture_default_str();
    cmd->add_option("--h2-max-upstreams", s.h2_max_upstreams,
                    "upstream connections per HTTP/2 client connection (one per backend set in use)")
        ->capture_default_str();
    cmd->add_option("--h2-window", s.h2_window,
                    "HTTP/2 flow-control window per stream, both directions (bytes; the connection's is twice it)")
        ->capture_default_str();
    cmd->add_option("--h2-max-clients-per-pod", s.h2_max_clients_per_pod,
                    "HTTP/2 client connections one pod may have at the endpoint at once (beyond: closed)")
        ->capture_default_str();
    cmd->add_option("--h2-opening-timeout-ms", s.h2_opening_timeout_ms,
                    "an HTTP/2 client connection whose first bytes (preface or h2c Upgrade request) do not arrive "
                    "within this is closed")
        ->capture_default_str();
    cmd->add_option("--participation", s.participation,
                    "which of this node's pods take part: \"selected\" (pods with the env label, matching "
                    "--participation-selector, or in a Namespace matching --participation-namespace-selector) "
                    "or \"all\"; the others run no envsteer program")
        ->capture_default_str();
    cmd->add_option("--participation-selector", s.participation_selector,
                    "pod label selector (key=value, key!=value, key, !key; comma = and) of the pods that take "
                    "part besides those with the env label (\"\": none)")
        ->capture_default_str();
    cmd->add_option("--participation-namespace-selector", s.participation_namespace_selector,
                    "Namespace label selector: every pod of a matching Namespace takes part (\"\": none; "
                    "with --kubernetes the agent then lists and watches Namespaces)")
        ->capture_default_str();
    cmd->add_flag("--no-header-context", no_header_context,
                  "do not learn request environments from HTTP headers (connect-time by pod only)");
    o_split = cmd->add_option("--splitter", splitter, "separator of environment segments")->capture_default_str();
    explicit_opts.emplace_back(o_split, "splitter");
    explicit_opts.emplace_back(cmd->add_option("--default-env", s.default_env,
                                               "environment of unlabelled pods and final fallback (default: "
                                               "none, unlabelled pods form the base)"),
                               "default-env");
    cmd->add_option("--admin", s.admin, "HOST:PORT serving /healthz, /readyz and /metrics (\"\" disables)")
        ->capture_default_str();
    cmd->add_option("--admin-socket", s.admin_socket,
                    "unix socket (mode 0600) serving the whole admin API: health, metrics, "
                    "status, explain, trace (\"\" disables)")
        ->capture_default_str();
    cmd->add_option("--metrics-bind", s.metrics_bind,
                    "also serve /metrics alone on HOST:PORT, e.g. 0.0.0.0:9967 for Prometheus "
                    "(default: none)");
    cmd->add_flag("--cleanup-on-exit", s.cleanup_on_exit, "detach and unpin everything on exit");
    cmd->add_option("--log-level", s.log_level, "trace, debug, info, warn, error")->capture_default_str();
    cmd->add_option("--log-format", log_format, "text or json (one JSON object per line)")->capture_default_str();
  }

  int run(Settings& s) {
    if (splitter.size() != 1) throw std::invalid_argument("--splitter: must be one character");
    s.splitter = splitter[0];
    if (no_header_context) s.header_context = false;
    for (auto [opt, name] : explicit_opts)
      if (opt->count()) s.explicit_flags.insert(name);
    if (s.node_name.empty())
      if (const char* nn = std::getenv("NODE_NAME")) s.node_name = nn;
    setup_logging(s.log_level, log_format);
    Agent agent(s);
    return agent.run();
  }
};

// The read-only commands: they talk to the running agent over its admin socket.
struct QueryCmds {
  std::string bpffs = Settings{}.bpffs, admin_socket = Settings{}.admin_socket;
  bool as_json = false, force = false, want_ready = false;
  double health_timeout = 3;
  CLI::App *status = nullptr, *explain = nullptr, *trace = nullptr, *health = nullptr, *uninst = nullptr;
  ExplainRequest ex;
  std::string ex_env;
  CLI::Option* o_exenv = nullptr;
  TraceFilter tf;
  uint32_t trace_rate = 0;
  uint64_t trace_count = 0;
  double trace_duration = 0;

  void add(CLI::App& app) {
    status = app.add_subcommand("status", "programs, attach points, pins, map fill levels, kernel features");
    status->add_option("--bpffs", bpffs, "pin directory")->capture_default_str();
    status->add_option("--admin-socket", admin_socket, "the agent's admin socket (\"\": do not ask the agent)")
        ->capture_default_str();
    status->add_flag("--json", as_json, "machine-readable output");

    explain = app.add_subcommand("explain", "the environment chain walked and the pods it resolves to");
    explain->add_option("--from", ex.from, "calling pod NS/POD")->required();
    explain->add_option("--to", ex.to, "service NS/SERVICE[:PORT]")->required();
    o_exenv = explain->add_option("--env", ex_env, "request environment (instead of the pod's own)");
    explain->add_option("--admin-socket", admin_socket, "the agent's admin socket")->capture_default_str();
    explain->add_flag("--json", as_json, "machine-readable output");

    trace = app.add_subcommand("trace", "live stream of steering decisions (from the running agent)");
    trace->add_option("--service", tf.service, "only this service NS/NAME (or its address IP:PORT/PROTO)");
    trace->add_option("--env", tf.env, "only decisions involving this environment");
    trace->add_option("--pod", tf.pod, "only this calling or chosen pod NS/NAME");
    trace->add_flag("--json", as_json, "one JSON object per line");
    trace->add_option("--rate", trace_rate, "kernel rate limit, events per second per CPU (default 100)");
    trace->add_option("--count", trace_count, "stop after this many events");
    trace->add_option("--duration", trace_duration, "stop after this many seconds");
    trace->add_option("--admin-socket", admin_socket, "the agent's admin socket")->capture_default_str();

    health = app.add_subcommand("health",
                                "ask the running agent whether it is alive (exit 0) or not (exit 1), over its "
                                "admin socket; for exec probes");
    health->add_option("--admin-socket", admin_socket, "the agent's admin socket")->capture_default_str();
    health->add_flag("--ready", want_ready, "readiness (/readyz: synced and serving the current state) instead");
    health->add_option("--timeout", health_timeout, "seconds to wait for the answer")
        ->capture_default_str()
        ->check(CLI::Range(0.1, 60.0));

    uninst = app.add_subcommand("uninstall", "detach every program and remove the pins");
    uninst->add_option("--bpffs", bpffs, "pin directory")->capture_default_str();
    uninst->add_flag("--force", force, "even while an agent holds the pin directory");
  }

  int do_status() {
    json j = pinned_status(bpffs);
    std::string err;
    if (auto a = admin_get(admin_socket, "/v1/status", &err)) j["agent"] = *a;
    else j["agent"] = {{"error", err}};
    if (as_json) std::cout << j.dump(2) << "\n";
    else print_status(j);
    return j["links"].empty() ? 3 : 0;
  }

  int do_explain() {
    std::string q = "/v1/explain?from=" + httplib::detail::encode_query_param(ex.from) +
                    "&to=" + httplib::detail::encode_query_param(ex.to);
    if (o_exenv->count()) q += "&env=" + httplib::detail::encode_query_param(ex_env);
    std::string err;
    auto j = admin_get(admin_socket, q, &err);
    if (!j) {
      std::cerr << "envsteer explain: " << err << "\n";
      return 1;
    }
    if (as_json) std::cout << j->dump(2) << "\n";
    else std::cout << render_explain(*j);
    return 0;
  }

  int do_health() {
    std::string err;
    auto res = socket_get(admin_socket, want_ready ? "/readyz" : "/healthz", &err,
                          static_cast<time_t>(std::ceil(health_timeout)));
    if (!res) {
      std::cerr << "envsteer health: " << err << "\n";
      return 1;
    }
    std::cout << res->second;
    return res->first == 200 ? 0 : 1;
  }

  int do_uninstall() {
    if (!force && PinLock::held(bpffs)) {
      std::cerr << "envsteer uninstall: an agent is running on " << bpffs << "; stop it first (or pass --force)\n";
      return 1;
    }
    auto removed = uninstall(bpffs);
    std::cout << "removed " << removed.size() << " pinned object(s) under " << bpffs << "\n";
    return 0;
  }

  int dispatch() {
    // stdout carries the result (JSON with --json); warnings, e.g. libbpf's about
    // a missing kernel feature while status probes them, go to stderr
    spdlog::set_default_logger(spdlog::stderr_color_mt("cli"));
    setup_logging("warn");
    if (*status) return do_status();
    if (*explain) return do_explain();
    if (*trace) return run_trace_client(admin_socket, tf, as_json, trace_rate, trace_count, trace_duration);
    if (*health) return do_health();
    if (*uninst) return do_uninstall();
    return 0;
  }
};

}  // namespace

int cli_main(int argc, char** argv) {
  CLI::App app{"envsteer: per-environment service steering in the kernel (eBPF), no sidecars"};
  app.require_subcommand(1);
  app.set_version_flag("--version", ENVSTEER_VERSION);

  Settings s;
  try {
    if (auto file = config_arg(argc, argv); !file.empty() && fs::is_regular_file(file)) load_settings_file(file, s);
  } catch (const std::exception& e) {
    std::cerr << "envsteer: " << e.what() << "\n";
    return 1;
  }
  RunCmd run;
  run.add(app, s);
  QueryCmds query;
  query.add(app);
  CLI11_PARSE(app, argc, argv);

  try {
    if (*run.cmd) return run.run(s);
    return query.dispatch();
  } catch (const std::exception& e) {
    std::cerr << "envsteer: " << e.what() << "\n";
    spdlog::shutdown();
    return 1;
  }
}

}  // namespace envsteer
