// SPDX-License-Identifier: Apache-2.0
// The observability part of /metrics (Prometheus text format 0.0.4): steering
// decisions by service and environment from the kernel's per-CPU decision
// counters, header and trace counters, map fill levels, sync state. The
// rendering is pure (unit-tested); read_decisions() reads the pinned map.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "maps/abi.h"
#include "maps/bpf_maps.h"
#include "trace.h"

namespace envsteer {

struct DecisionSample {
  es_decision_key key{};
  uint64_t value = 0;  // summed over CPUs
};

struct MapFill {
  std::string map;
  uint64_t entries = 0;
  uint64_t capacity = 0;
};

struct ObserveInput {
  std::vector<uint64_t> counters;  // ES_CNT_* (summed over CPUs)
  std::vector<DecisionSample> decisions;
  std::map<uint32_t, uint64_t> mismatches;  // es_mismatch: svc_id -> requests
  std::vector<MapFill> maps;
  bool ready = false;
  double last_sync_unix = 0;  // 0: never
  double now_unix = 0;
  std::map<std::string, uint64_t> sync_failures;  // by reason
  std::set<std::string> failing_reasons;          // of the errors shown now; empty when the last sync worked
  std::map<std::pair<std::string, std::string>, size_t> skipped;  // (kind, reason) -> objects skipped now
  size_t missing_cgroups = 0;                     // local pods whose cgroup does not exist (yet)
  size_t trace_clients = 0;
};

// (service, env, outcome, level) -> count. Frontends of one service (ports,
// families) are summed; ids the model no longer names keep their frontend
// address, or "svc#<id>", as the service.
using DecisionTotals = std::map<std::tuple<std::string, std::string, std::string, uint32_t>, uint64_t>;
DecisionTotals aggregate_decisions(const std::vector<DecisionSample>& samples, const NameTable& names);

// A Prometheus label value, escaped.
std::string prom_label(const std::string& v);

std::string render_observability(const ObserveInput& in, const NameTable& names);

// Reads the pinned es_decisions map.
// The per-service decision counters (es_decisions), summed over the CPUs.
std::vector<DecisionSample> read_decisions(const maps::BpfMapBackend& m);

}  // namespace envsteer
