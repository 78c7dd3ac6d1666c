// SPDX-License-Identifier: Apache-2.0
#include "h2route.h"

#include <cstring>

#include "envname.h"
#include "livewalk.h"

namespace envsteer::h2 {

namespace {

bool blank(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view v) {
  while (!v.empty() && blank(v.front())) v.remove_prefix(1);
  while (!v.empty() && blank(v.back())) v.remove_suffix(1);
  return v;
}

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

uint32_t env_id_of(const maps::MapBackend& live, std::string_view name) {
  if (name.empty() || name.size() >= ES_ENV_NAME_MAX) return ES_ENV_NONE;
  es_env_name k = maps::make_env_name(name);
  uint32_t id = 0;
  return live.lookup(maps::MapId::EnvNames, &k, &id) ? id : ES_ENV_NONE;
}

}  // namespace

std::optional<std::string> baggage_member(std::string_view value, std::string_view key) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view member = value.substr(0, comma);
    value = comma == std::string_view::npos ? std::string_view{} : value.substr(comma + 1);
    member = member.substr(0, member.find(';'));  // properties are not the value
    size_t eq = member.find('=');
    if (eq == std::string_view::npos) continue;
    if (trim(member.substr(0, eq)) == key) return std::string(trim(member.substr(eq + 1)));
  }
  return std::nullopt;
}

StreamEnv stream_env(const Headers& h, const RouteConfig& cfg) {
  StreamEnv out;
  bool invalid = false;
  auto offer = [&](std::string_view v, int rank) {
    if (out.from == EnvFrom::Header && out.rank <= rank) return;
    v = trim(v);
    if (!env_valid(v, cfg.splitter)) {
      invalid = true;
      return;
    }
    out.from = EnvFrom::Header;
    out.env = std::string(v);
    out.rank = rank;
  };
  for (const auto& [name, value] : h) {
    if (name.empty() || name[0] == ':') continue;
    for (size_t i = 0; i < cfg.names.size(); i++)
      if (iequal(name, cfg.names[i])) offer(value, i == 0 ? 1 : 2);
    if (!cfg.baggage_key.empty() && iequal(name, "baggage"))
      if (auto v = baggage_member(value, cfg.baggage_key)) offer(*v, 3);
  }
  if (out.from != EnvFrom::Header && invalid) out.from = EnvFrom::Invalid;
  return out;
}

Decision resolve(const maps::MapBackend& live, uint32_t svc_id, const std::string& env, uint32_t start_id,
                 char splitter) {
  Decision d;
  uint32_t zero = 0, skipped = 0;
  es_config cfg{};
  live.lookup(maps::MapId::Config, &zero, &cfg);
  uint32_t start = start_id;
  if (!env.empty()) {
    // unknown names fall back segment by segment (es_request_env_id); a name no
    // level of which is known starts from the default, as an HTTP/1.x request's does
    start = ES_ENV_NONE;
    for (const auto& level : env_chain(env, splitter)) {
      if ((start = env_id_of(live, level)) != ES_ENV_NONE) break;
      skipped++;
    }
    if (start == ES_ENV_NONE) {
      skipped = 0;
      start = cfg.default_env_id;
    }
  }
  if (start == ES_ENV_NONE) start = cfg.default_env_id;
  d.env_req = start;
  es_resolution res{};
  if (!resolve_live(live, svc_id, start, cfg.default_env_id, &res)) return d;
  if (skipped && (res.outcome == ES_OUT_OWN || res.outcome == ES_OUT_FALLBACK)) {
    res.outcome = ES_OUT_FALLBACK;
    res.level += skipped;
  }
  d.env_res = res.env_id;
  d.level = res.level;
  d.outcome = res.outcome;
  d.count = res.count;
  return d;
}

std::string env_name(const maps::MapBackend& live, uint32_t env_id) {
  es_env e{};
  if (env_id == ES_ENV_NONE || !live.lookup(maps::MapId::Envs, &env_id, &e)) return "";
  return std::string(e.name, strnlen(e.name, sizeof(e.name)));
}

}  // namespace envsteer::h2
