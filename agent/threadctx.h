// SPDX-License-Identifier: Apache-2.0
// The thread context per pod, as an operator sees it: on (the pod opted in
// with envsteer.io/thread-context: "on"), off (it did not), or switched off
// for some of its processes because the kernel saw them serve interleaved
// requests (es_ctx_off). Also the sweep of processes that are gone.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "maps/maps.h"
#include "model.h"

namespace envsteer {

struct CtxOffProcess {
  uint32_t tgid = 0;
  es_ctx_off off{};
  std::string pod;  // "ns/name", "" when the cgroup is no local pod's
};

// "read-while-serving", "answered-other-request", "answered-by-other-thread".
const char* ctx_off_reason_name(uint32_t reason);

// Every switched-off process; pod_of maps a cgroup id to its pod ("" unknown).
std::vector<CtxOffProcess> read_ctx_off(const maps::MapBackend& m,
                                        const std::function<std::string(uint64_t)>& pod_of);

// One entry per local pod: {"pod", "env", "labelled", "thread_context": "on" |
// "off" | "switched-off", "why", "processes": [{"pid", "reason"}]}.
nlohmann::json thread_context_json(const DesiredState& model, const std::vector<CtxOffProcess>& off);

// The state of one pod as thread_context_json() names it.
std::string thread_context_state(const LocalPod& pod, const std::vector<CtxOffProcess>& off);

// Prometheus lines: envsteer_thread_context{pod,state} and
// envsteer_thread_context_switched_off{pod,reason}.
std::string thread_context_metrics(const DesiredState& model, const std::vector<CtxOffProcess>& off);

// Removes the entries of processes that no longer exist (alive(tgid) false);
// returns how many.
size_t sweep_ctx_off(maps::MapBackend& m, const std::function<bool(uint32_t)>& alive);

}  // namespace envsteer
