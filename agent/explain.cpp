// SPDX-License-Identifier: Apache-2.0
#include "explain.h"

#include <arpa/inet.h>

#include <sstream>
#include <stdexcept>

#include "envname.h"
#include "livewalk.h"

namespace envsteer {

namespace {

const char* outcome_name(uint32_t o) {
  switch (o) {
    case ES_OUT_OWN: return "own";
    case ES_OUT_FALLBACK: return "fallback";
    case ES_OUT_DEFAULT: return "default";
    default: return "refused";
  }
}

std::string env_display(const EnvName& e) { return e.empty() ? "<base>" : e; }

uint32_t live_count(const maps::MapBackend& live, uint32_t svc, uint32_t env) {
  es_set_key k{svc, env};
  es_set s{};
  return live.lookup(maps::MapId::Sets, &k, &s) ? s.count : 0;
}

// An environment's id as the kernel knows it.
uint32_t env_id_of(const maps::MapBackend& live, const EnvName& e) {
  if (e.empty()) return ES_ENV_BASE;
  es_env_name k = maps::make_env_name(e);
  uint32_t id = 0;
  return live.lookup(maps::MapId::EnvNames, &k, &id) ? id : ES_ENV_NONE;
}

// The environment explained (the flag, else the calling pod's), with where it
// came from in out["env_source"].
EnvName requested_env(const ExplainRequest& req, const DesiredState& model, char splitter, nlohmann::json& out) {
  EnvName env;
  if (req.env) {
    if (!req.env->empty() && !env_valid(*req.env, splitter))
      throw std::invalid_argument("--env: \"" + *req.env + "\" is not a valid environment name");
    env = *req.env;
    out["env_source"] = "flag";
  } else {
    auto it = model.pod_envs.find(req.from);
    if (it == model.pod_envs.end()) throw std::invalid_argument("unknown pod \"" + req.from + "\"");
    env = it->second.env;
    out["env_source"] = it->second.labelled ? "pod-label" : "default";
  }
  return env.empty() ? model.default_env : env;
}

// What every frontend's walk shares: the chain of the environment and where
// the kernel starts on it.
struct Walk {
  const maps::MapBackend& live;
  const DesiredState& model;
  std::vector<EnvName> chain;
  uint32_t start = ES_ENV_NONE;  // the first level of the chain the kernel knows
  uint32_t skipped = 0;          // levels before it (unknown names fall back segment by segment)
  es_config cfg{};
  std::map<std::string, std::string> pod_of;  // backend -> pod, from the model
  uint64_t pod_cgroup = 0;                     // the caller's, for its connect hints
};

Walk walk_of(const maps::MapBackend& live, const DesiredState& model, const EnvName& env, char splitter) {
  Walk w{live, model, env.empty() ? std::vector<EnvName>{""} : env_chain(env, splitter)};
  uint32_t zero = 0;
  live.lookup(maps::MapId::Config, &zero, &w.cfg);
  for (const auto& level : w.chain) {
    if ((w.start = env_id_of(live, level)) != ES_ENV_NONE) break;
    w.skipped++;
  }
  if (w.start == ES_ENV_NONE) w.start = w.cfg.default_env_id;
  for (const auto& [name, bes] : model.sets)
    for (const auto& b : bes) w.pod_of[maps::format_backend(b.backend)] = b.pod;
  return w;
}

// The ready backends of one resolution, with their pods.
nlohmann::json backends_of(const Walk& w, uint32_t svc_id, const es_resolution& res) {
  nlohmann::json backends = nlohmann::json::array();
  for (uint32_t i = 0; i < res.count; i++) {
    es_slot_key sk{svc_id, res.env_id, i};
    es_backend b{};
    if (!w.live.lookup(maps::MapId::Slots, &sk, &b)) continue;
    auto addr = maps::format_backend(b);
    auto pod = w.pod_of.find(addr);
    backends.push_back({{"address", addr}, {"pod", pod != w.pod_of.end() ? pod->second : ""}});
  }
  return backends;
}

std::string env_name_live(const Walk& w, uint32_t id) {
  es_env e{};
  return id == ES_ENV_BASE ? "<base>" : w.live.lookup(maps::MapId::Envs, &id, &e) ? maps::env_name_of(e) : "?";
}

// The caller's connect hint for this frontend (maps/abi.h es_hints), as
// es_hint_pick (bpf/lib/steer.h) takes it: only on a multi-set service whose
// port is not declared HTTP/2, and only where the hint's set is another than
// the one the caller's environment resolved to. Null when there is none.
nlohmann::json hint_of(const Walk& w, const es_frontend& fe, const es_resolution& own) {
  if (!w.pod_cgroup || own.outcome == ES_OUT_NONE ||
      (fe.flags & (ES_FE_F_MULTI_SET | ES_FE_F_H2)) != ES_FE_F_MULTI_SET)
    return nullptr;
  es_hint_key hk{};
  hk.pod = w.pod_cgroup;
  hk.svc_id = fe.svc_id;
  es_hint h{};
  if (!w.live.lookup(maps::MapId::Hints, &hk, &h)) return nullptr;
  es_resolution hr{};
  if (!resolve_live(w.live, fe.svc_id, h.env_id, w.cfg.default_env_id, &hr) || hr.env_id == own.env_id)
    return nullptr;
  return {{"env", env_name_live(w, h.env_id)},
          {"resolved_env", env_name_live(w, hr.env_id)},
          {"backends", backends_of(w, fe.svc_id, hr)}};
}

// The kernel's walk for one loaded frontend: each level of the chain, the
// default, the outcome and the backends it picks from.
nlohmann::json explain_frontend(const Walk& w, const es_frontend& fe, nlohmann::json f) {
  using nlohmann::json;
  json walk = json::array();
  for (const auto& level : w.chain) {
    uint32_t id = env_id_of(w.live, level);
    walk.push_back({{"env", env_display(level)}, {"known", id != ES_ENV_NONE},
                    {"ready", id ? live_count(w.live, fe.svc_id, id) : 0}});
  }
  es_resolution res{};
  resolve_live(w.live, fe.svc_id, w.start, w.cfg.default_env_id, &res);
  if (w.skipped && res.outcome == ES_OUT_OWN) res.outcome = ES_OUT_FALLBACK;  // as the kernel counts it
  if (res.outcome == ES_OUT_DEFAULT || (res.outcome == ES_OUT_NONE && w.cfg.default_env_id != w.start))
    walk.push_back({{"env", env_display(w.model.default_env)}, {"known", true}, {"default", true},
                    {"ready", live_count(w.live, fe.svc_id, w.cfg.default_env_id)}});
  f["walk"] = walk;
  f["outcome"] = outcome_name(res.outcome);
  if (res.outcome != ES_OUT_NONE) {
    f["resolved_env"] = env_name_live(w, res.env_id);
    f["backends"] = backends_of(w, fe.svc_id, res);
  } else {
    f["backends"] = json::array();
  }
  if (json hint = hint_of(w, fe, res); !hint.is_null()) f["hint"] = std::move(hint);
  // HTTP/2 (gRPC, h2c): per stream only on declared ports of multi-set services
  // with the endpoint on; elsewhere a connection's streams all go where it went.
  if (fe.flags & ES_FE_F_MULTI_SET) {
    es_h2_cfg hc{};
    uint32_t zero = 0;
    const bool endpoint = w.live.lookup(maps::MapId::H2Cfg, &zero, &hc) && hc.port != 0;
    if (!(fe.flags & ES_FE_F_H2))
      f["http2"] = "per connection: HTTP/2 here is not routed per stream (this port is not declared HTTP/2; "
                   "declare it with appProtocol: kubernetes.io/h2c or grpc, or a port name grpc*, http2*, h2c*)";
    else if (!endpoint)
      f["http2"] = "per connection: declared HTTP/2, but no HTTP/2 endpoint runs on this node (--h2-listen)";
    else
      f["http2"] = "per stream: connections go to the agent's HTTP/2 endpoint, each stream by its own environment";
  }
  return f;
}

}  // namespace

nlohmann::json explain(const ExplainRequest& req, const DesiredState& model, const maps::MapBackend& live,
                       char splitter) {
  using nlohmann::json;
  json out;
  out["from"] = req.from;
  EnvName env = requested_env(req, model, splitter, out);
  out["env"] = env_display(env);

  std::string svc = req.to, port;
  if (auto c = svc.rfind(':'); c != std::string::npos) {
    port = svc.substr(c + 1);
    svc = svc.substr(0, c);
  }
  out["service"] = svc;

  Walk w = walk_of(live, model, env, splitter);
  w.pod_cgroup = req.pod_cgroup;
  json fes = json::array();
  for (const auto& [key, spec] : model.frontends) {
    if (spec.service != svc) continue;
    if (!port.empty() && port != spec.port_name && port != std::to_string(ntohs(key.port))) continue;
    json f;
    f["address"] = maps::format_frontend(key);
    f["port_name"] = spec.port_name;
    es_frontend fe{};
    if (live.lookup(maps::MapId::Frontends, &key, &fe)) {
      fes.push_back(explain_frontend(w, fe, std::move(f)));
      continue;
    }
    f["outcome"] = "not-loaded";
    f["walk"] = json::array();
    f["backends"] = json::array();
    fes.push_back(f);
  }
  if (fes.empty())
    throw std::invalid_argument("unknown service \"" + req.to + "\" (no such service address is loaded)");
  out["frontends"] = fes;
  return out;
}

std::string render_explain(const nlohmann::json& j) {
  std::ostringstream o;
  o << "from " << j.value("from", "") << " (env " << j.value("env", "") << ", from "
    << j.value("env_source", "") << ") to " << j.value("service", "") << "\n";
  for (const auto& f : j["frontends"]) {
    o << "  " << f.value("address", "") << (f.value("port_name", "").empty() ? "" : " (" + f.value("port_name", "") + ")")
      << ": " << f.value("outcome", "") << "\n";
    for (const auto& w : f["walk"]) {
      o << "    " << (w.value("default", false) ? "default " : "walk    ") << w.value("env", "") << ": ";
      if (!w.value("known", true)) o << "unknown environment\n";
      else o << w.value("ready", 0) << " ready pod(s)\n";
    }
    if (f.contains("resolved_env")) o << "    -> " << f.value("resolved_env", "") << ":\n";
    for (const auto& b : f["backends"])
      o << "       " << b.value("address", "") << "  " << b.value("pod", "") << "\n";
    if (f.value("outcome", "") == "refused") o << "    -> connect() fails with ECONNREFUSED\n";
    if (f.contains("hint")) {
      const auto& h = f["hint"];
      o << "    hint: the relay last carried this pod's requests for " << h.value("env", "")
        << " here, so its next connect() (outside a thread's request) goes to " << h.value("resolved_env", "")
        << ":\n";
      for (const auto& b : h["backends"])
        o << "       " << b.value("address", "") << "  " << b.value("pod", "") << "\n";
      o << "      (every request on that connection is still routed by its own header)\n";
    }
    if (f.contains("http2")) o << "    HTTP/2: " << f.value("http2", "") << "\n";
  }
  return o.str();
}

}  // namespace envsteer
