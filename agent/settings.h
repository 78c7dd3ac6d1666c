// SPDX-License-Identifier: Apache-2.0
// Agent settings: defaults, YAML config file, validation. Flags win over the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <set>
#include <vector>

namespace envsteer {

struct Limits {
  uint32_t frontends = 65536;  // service addresses (ClusterIP:port/proto)
  uint32_t sets = 262144;      // (frontend, environment) pairs with ready pods
  uint32_t slots = 524288;     // backends summed over all sets
  uint32_t envs = 65536;       // environment names, ancestors included
  uint32_t pods = 65536;       // local (managed) pods
};

struct Settings {
  std::string manifests;                    // file or directory
  bool kubernetes = false;                  // follow the cluster's API instead
  std::string kubeconfig;                   // "" = in-cluster service account
  std::string kube_context;                 // "" = current-context
  std::string node_name;                    // "" = $NODE_NAME
  std::set<std::string> explicit_flags;     // settings given on the command line (win over the API's)
  std::string cgroup_root;                  // "" = the cgroup2 mount
  std::string bpffs = "/sys/fs/bpf/envsteer";
  std::string env_label = "virtual-env";
  std::string env_header = "X-Virtual-Env";  // a request's environment
  std::vector<std::string> env_header_aliases;  // more header names (at most 3)
  std::string baggage_key = "virtual-env";     // W3C baggage member; "" = off
  uint32_t http_window = 4096;                 // header bytes of a request parsed
  bool header_context = true;                  // learn request environments in the kernel
  // Which of this node's pods take part (participation.h): "selected" (pods with
  // the env label, matching participation_selector, or in a Namespace matching
  // participation_namespace_selector) or "all".
  std::string participation = "selected";
  std::string participation_selector = "envsteer.io/enabled=true";
  std::string participation_namespace_selector = "envsteer.io/enabled=true";
  bool auto_inject = true;                     // a labelled pod's requests carry its env unless they carry one
  bool connect_hints = true;                   // connect to the set of the pod's last relayed request (es_hints)
  bool handoff = true;                         // parse once per hop between pods of the node (es_hocache)
  // The relay of re-routed requests (README "Per-request steering": bounds and timeouts).
  uint32_t upstream_idle_ms = 60000;            // an upstream owing nothing, no traffic this long: closed
  uint32_t upstream_connect_timeout_ms = 2000;  // connecting an upstream
  uint32_t response_timeout_ms = 300000;        // owing a response, no traffic this long: client reset
  uint32_t relay_warm = 2;                      // pre-connected upstreams per set in recent use
  uint64_t relay_client_bytes = 1u << 20;       // bytes one client may have queued at the relay
  uint64_t relay_pod_bytes = 8u << 20;          // the same, all clients of one pod
  uint64_t relay_total_bytes = 64u << 20;       // the same, all clients together
  uint32_t relay_sockets = 4;                   // relay sockets, chosen by the client's pod
  uint32_t relay_clients_per_pod = 1024;        // relay clients one pod may have at once
  // HTTP/2 per stream (README "HTTP/2 and gRPC"): the agent's HTTP/2 endpoint and its bounds.
  std::string h2_listen;                        // ADDR:PORT reachable from the pods; "" = off
  uint32_t h2_max_clients = 1024;               // client connections at once
  uint32_t h2_max_streams = 128;                // concurrent streams per client connection
  uint32_t h2_max_upstreams = 8;                // upstream connections per client connection
  uint32_t h2_window = 1u << 20;                // flow-control window per stream, both directions
  uint32_t h2_max_clients_per_pod = 256;        // client connections of one pod at once
  uint32_t h2_opening_timeout_ms = 30000;       // ms for a connection's first bytes (preface, upgrade)
  char splitter = '.';
  std::string default_env;                  // "" = unlabelled pods form the unnamed base
  // The admin surface (README "Security"): health and metrics over TCP, on loopback by
  // default; everything (status, explain, trace too) on a root-only unix socket; an opt-in
  // listener that serves only /metrics, for Prometheus.
  std::string admin = "127.0.0.1:9966";                  // /healthz /readyz /metrics; "" = none
  std::string admin_socket = "/run/envsteer/admin.sock";  // everything, mode 0600; "" = none
  std::string metrics_bind;                              // /metrics only; "" = none
  bool cleanup_on_exit = false;
  std::string log_level = "info";
  std::string cgroup_annotation = "envsteer.io/cgroup";
  Limits limits;
};

// Applies a YAML config file: the keys are the flags' names in camelCase, as
// load_settings_file() reads them (settings.cpp is the list; an unknown key is
// an error). Throws std::runtime_error naming the file and key on bad input;
// nothing is applied then.
void load_settings_file(const std::filesystem::path& file, Settings& s);

// Throws std::invalid_argument naming the setting.
void validate_settings(const Settings& s);

}  // namespace envsteer
