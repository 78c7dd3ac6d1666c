// SPDX-License-Identifier: Apache-2.0
#include "threadctx.h"

#include <map>

#include "metrics.h"

namespace envsteer {

const char* ctx_off_reason_name(uint32_t reason) {
  switch (reason) {
    case ES_CTX_OFF_READ_WHILE_SERVING: return "read-while-serving";
    case ES_CTX_OFF_ANSWERED_OTHER: return "answered-other-request";
    case ES_CTX_OFF_OTHER_THREAD: return "answered-by-other-thread";
    default: return "unknown";
  }
}

std::vector<CtxOffProcess> read_ctx_off(const maps::MapBackend& m,
                                        const std::function<std::string(uint64_t)>& pod_of) {
  std::vector<CtxOffProcess> out;
  m.for_each(maps::MapId::CtxOff, [&](const void* k, const void* v) {
    CtxOffProcess p;
    p.tgid = *static_cast<const uint32_t*>(k);
    p.off = *static_cast<const es_ctx_off*>(v);
    out.push_back(p);
  });
  for (auto& p : out) p.pod = pod_of(p.off.cgroup_id);
  return out;
}

std::string thread_context_state(const LocalPod& pod, const std::vector<CtxOffProcess>& off) {
  if (!pod.thread_ctx) return "off";
  for (const auto& p : off)
    if (p.pod == pod.pod) return "switched-off";
  return "on";
}

nlohmann::json thread_context_json(const DesiredState& model, const std::vector<CtxOffProcess>& off) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [cg, pod] : model.pods) {
    nlohmann::json j{{"pod", pod.pod}, {"env", pod.env}, {"labelled", pod.labelled}};
    std::string state = thread_context_state(pod, off);
    j["thread_context"] = state;
    if (state == "off")
      j["why"] = std::string("not opted in (annotation ") + kThreadContextAnnotation + ": \"on\" is for thread-per-request servers)";
    else if (state == "on")
      j["why"] = std::string("annotation ") + kThreadContextAnnotation + ": \"on\"";
    else
      j["why"] = "processes of the pod were seen serving interleaved requests: not thread-per-request";
    nlohmann::json procs = nlohmann::json::array();
    for (const auto& p : off)
      if (p.pod == pod.pod) procs.push_back({{"pid", p.tgid}, {"reason", ctx_off_reason_name(p.off.reason)}});
    if (!procs.empty()) j["switched_off_processes"] = procs;
    out.push_back(j);
  }
  return out;
}

std::string thread_context_metrics(const DesiredState& model, const std::vector<CtxOffProcess>& off) {
  std::string out =
      "# HELP envsteer_thread_context Thread context of each local pod (1 for its state): on, off (not opted "
      "in) or switched-off (interleaved requests seen).\n"
      "# TYPE envsteer_thread_context gauge\n";
  for (const auto& [cg, pod] : model.pods)
    out += "envsteer_thread_context{pod=\"" + prom_label(pod.pod) + "\",state=\"" +
           thread_context_state(pod, off) + "\"} 1\n";
  std::map<std::pair<std::string, std::string>, size_t> by;
  for (const auto& p : off) by[{p.pod, ctx_off_reason_name(p.off.reason)}]++;
  out += "# HELP envsteer_thread_context_switched_off Processes whose thread context the kernel switched off, by "
         "pod and reason.\n"
         "# TYPE envsteer_thread_context_switched_off gauge\n";
  for (const auto& [k, n] : by)
    out += "envsteer_thread_context_switched_off{pod=\"" + prom_label(k.first) + "\",reason=\"" + k.second +
           "\"} " + std::to_string(n) + "\n";
  return out;
}

size_t sweep_ctx_off(maps::MapBackend& m, const std::function<bool(uint32_t)>& alive) {
  std::vector<uint32_t> gone;
  m.for_each(maps::MapId::CtxOff, [&](const void* k, const void*) {
    uint32_t tgid = *static_cast<const uint32_t*>(k);
    if (!alive(tgid)) gone.push_back(tgid);
  });
  size_t n = 0;
  for (uint32_t t : gone)
    if (m.remove(maps::MapId::CtxOff, &t) == 0) n++;
  return n;
}

}  // namespace envsteer
