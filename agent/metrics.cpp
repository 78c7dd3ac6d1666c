// SPDX-License-Identifier: Apache-2.0
#include "metrics.h"
#include "model.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace envsteer {

std::string prom_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

DecisionTotals aggregate_decisions(const std::vector<DecisionSample>& samples, const NameTable& names) {
  DecisionTotals t;
  for (const auto& s : samples) {
    if (s.value == 0) continue;
    std::string svc = names.service(s.key.svc_id);
    if (svc.empty()) svc = names.frontend(s.key.svc_id);
    if (svc.empty()) svc = "svc#" + std::to_string(s.key.svc_id);
    std::string env = names.env(s.key.env_id);
    t[{svc, env, event_kind_name(s.key.outcome), s.key.level}] += s.value;
  }
  return t;
}

namespace {

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3f", v);
  return buf;
}

uint64_t cnt(const ObserveInput& in, uint32_t i) { return i < in.counters.size() ? in.counters[i] : 0; }

// Renders the metric families in parts (data path, maps, sync, trace) into one text.
struct Families {
  std::string o;
  void family(const char* name, const char* type, const char* help) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void data_path(const ObserveInput& in, const NameTable& names);
  void maps(const ObserveInput& in);
  void sync(const ObserveInput& in);
  void trace(const ObserveInput& in);
};

// connect() decisions, inbound header parsing, insertions, pooled-connection mismatches.
void Families::data_path(const ObserveInput& in, const NameTable& names) {
  family("envsteer_steering_decisions_total", "counter",
         "connect() decisions by service, environment (resolved; requested for refusals), outcome "
         "(steered, fallback, default, refused) and fallback depth.");
  for (const auto& [k, v] : aggregate_decisions(in.decisions, names)) {
    const auto& [svc, env, outcome, level] = k;
    o += "envsteer_steering_decisions_total{service=\"" + prom_label(svc) + "\",env=\"" + prom_label(env) +
         "\",outcome=\"" + outcome + "\",level=\"" + std::to_string(level) + "\"} " + std::to_string(v) + "\n";
  }

  family("envsteer_header_parse_total", "counter", "Inbound requests by env header parse outcome.");
  const std::pair<const char*, uint32_t> parse[] = {{"found", ES_CNT_HDR_FOUND},
                                                    {"absent", ES_CNT_HDR_ABSENT},
                                                    {"invalid", ES_CNT_HDR_INVALID},
                                                    {"beyond_window", ES_CNT_HDR_BEYOND}};
  for (auto [name, idx] : parse)
    o += std::string("envsteer_header_parse_total{outcome=\"") + name + "\"} " + std::to_string(cnt(in, idx)) + "\n";
  family("envsteer_headers_inserted_total", "counter", "Env headers inserted into outgoing requests by the kernel.");
  o += "envsteer_headers_inserted_total " + std::to_string(cnt(in, ES_CNT_TX_INJECTED)) + "\n";

  family("envsteer_pooled_connection_mismatches_total", "counter",
         "Requests whose environment resolves elsewhere than their (pooled) connection, by service.");
  std::map<std::string, uint64_t> mm;
  for (const auto& [svc_id, v] : in.mismatches) {
    std::string svc = names.service(svc_id);
    if (svc.empty()) svc = "svc#" + std::to_string(svc_id);
    mm[svc] += v;
  }
  for (const auto& [svc, v] : mm)
    o += "envsteer_pooled_connection_mismatches_total{service=\"" + prom_label(svc) + "\"} " + std::to_string(v) + "\n";
}

void Families::maps(const ObserveInput& in) {
  family("envsteer_map_entries", "gauge", "Entries in each BPF map the agent fills.");
  for (const auto& m : in.maps)
    o += "envsteer_map_entries{map=\"" + m.map + "\"} " + std::to_string(m.entries) + "\n";
  family("envsteer_map_capacity", "gauge", "max_entries of each BPF map the agent fills.");
  for (const auto& m : in.maps)
    o += "envsteer_map_capacity{map=\"" + m.map + "\"} " + std::to_string(m.capacity) + "\n";
}

// Readiness, sync age and failures, skipped objects, missing pod cgroups.
void Families::sync(const ObserveInput& in) {
  family("envsteer_ready", "gauge", "1 when the agent is ready (synced, last sync applied, API reachable).");
  o += std::string("envsteer_ready ") + (in.ready ? "1" : "0") + "\n";
  family("envsteer_last_sync_success_timestamp_seconds", "gauge",
         "When the source was last applied successfully (Unix time; 0 = never).");
  o += "envsteer_last_sync_success_timestamp_seconds " + num(in.last_sync_unix) + "\n";
  family("envsteer_last_sync_age_seconds", "gauge",
         "Seconds since the last successful apply (-1 = never): the age of the state being served.");
  o += "envsteer_last_sync_age_seconds " + num(in.last_sync_unix > 0 ? in.now_unix - in.last_sync_unix : -1) + "\n";
  family("envsteer_sync_failures_total", "counter",
         "Source states not applied (the last good state was kept), by reason.");
  for (const char* r : {"source", "invalid_input", "map_full", "map_write"}) {
    auto it = in.sync_failures.find(r);
    o += std::string("envsteer_sync_failures_total{reason=\"") + r + "\"} " +
         std::to_string(it == in.sync_failures.end() ? 0 : it->second) + "\n";
  }
  family("envsteer_last_sync_failed_reason", "gauge", "1 for the reason the last sync failed; none when it worked.");
  for (const char* r : {"source", "invalid_input", "map_full", "map_write"})
    o += std::string("envsteer_last_sync_failed_reason{reason=\"") + r + "\"} " +
         (in.failing_reasons.count(r) ? "1" : "0") + "\n";
  family("envsteer_objects_skipped", "gauge",
         "Objects (or the part of one a field names) left out of the applied state, by kind and reason; "
         "everything else is applied. Listed in status until fixed or deleted.");
  static const std::pair<const char*, const char*> kSkipSeries[] = {
      {"Pod", skip_reason::kInvalidEnv},          {"Pod", skip_reason::kInvalidCgroup},
      {"Pod", skip_reason::kCgroupOutsideRoot},   {"Pod", skip_reason::kCgroupShared},
      {"Pod", skip_reason::kInvalidAddress},      {"Pod", skip_reason::kInvalidObject},
      {"Service", skip_reason::kInvalidAddress},  {"Service", skip_reason::kAddressInUse},
      {"Service", skip_reason::kInvalidObject},   {"EndpointSlice", skip_reason::kInvalidAddress},
      {"EndpointSlice", skip_reason::kInvalidObject}};
  std::map<std::pair<std::string, std::string>, size_t> skip_rows;
  for (const auto& [kind, reason] : kSkipSeries) skip_rows[{kind, reason}] = 0;
  for (const auto& [kr, n] : in.skipped) skip_rows[kr] = n;
  for (const auto& [kr, n] : skip_rows)
    o += "envsteer_objects_skipped{kind=\"" + prom_label(kr.first) + "\",reason=\"" + prom_label(kr.second) + "\"} " +
         std::to_string(n) + "\n";
  family("envsteer_pod_cgroups_missing", "gauge",
         "Local pods whose cgroup does not exist (yet): not steered until it appears (not an error).");
  o += "envsteer_pod_cgroups_missing " + std::to_string(in.missing_cgroups) + "\n";
}

void Families::trace(const ObserveInput& in) {
  family("envsteer_trace_clients", "gauge", "Attached `envsteer trace` clients (tracing is on while > 0).");
  o += "envsteer_trace_clients " + std::to_string(in.trace_clients) + "\n";
  family("envsteer_trace_events_total", "counter", "Decision events: emitted, dropped by the rate limit, lost.");
  o += "envsteer_trace_events_total{result=\"emitted\"} " + std::to_string(cnt(in, ES_CNT_TRACE_EMITTED)) + "\n";
  o += "envsteer_trace_events_total{result=\"rate_limited\"} " + std::to_string(cnt(in, ES_CNT_TRACE_RATE_LIMITED)) +
       "\n";
  o += "envsteer_trace_events_total{result=\"lost\"} " + std::to_string(cnt(in, ES_CNT_TRACE_LOST)) + "\n";
}

}  // namespace

std::string render_observability(const ObserveInput& in, const NameTable& names) {
  Families f;
  f.data_path(in, names);
  f.maps(in);
  f.sync(in);
  f.trace(in);
  return f.o;
}

std::vector<DecisionSample> read_decisions(const maps::BpfMapBackend& m) {
  std::vector<DecisionSample> out;
  m.for_each_sum(maps::MapId::Decisions, [&](const void* k, uint64_t sum) {
    out.push_back(DecisionSample{*static_cast<const es_decision_key*>(k), sum});
  });
  return out;
}

}  // namespace envsteer
