// SPDX-License-Identifier: Apache-2.0
// HTTP/2 per stream, the routing part: a stream's environment from its own
// headers (the same names, aliases and W3C baggage member as the kernel's
// HTTP/1.x parser, bpf/lib/http.h), and the kernel's walk (bpf/lib/resolve.h)
// over the live maps. Pure functions over a map backend: unit tested.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "maps/abi.h"
#include "maps/maps.h"

namespace envsteer::h2 {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct RouteConfig {
  std::vector<std::string> names;  // env header [0] and its aliases, lower case
  std::string baggage_key;         // W3C baggage member; "" = not looked at
  char splitter = '.';
  bool auto_inject = true;         // labelled callers' streams without a header get theirs
};

enum class EnvFrom { Header, Absent, Invalid };

struct StreamEnv {
  EnvFrom from = EnvFrom::Absent;
  std::string env;  // the valid value (Header only)
  int rank = 0;     // 1 the env header, 2 an alias, 3 baggage
};

// The environment a stream carries. Header names are matched case-insensitively
// (HTTP/2 sends them in lower case); values are trimmed of blanks and validated;
// the best rank wins (the env header over an alias over baggage), the first one
// of a rank. A value that is present but not a valid name counts as absent
// (EnvFrom::Invalid, so that it is counted).
StreamEnv stream_env(const Headers& h, const RouteConfig& cfg);

// The W3C baggage member `key` of one baggage header value, trimmed; nullopt
// when absent.
std::optional<std::string> baggage_member(std::string_view value, std::string_view key);

// What the walk decided for one stream.
struct Decision {
  uint32_t env_req = ES_ENV_NONE;  // environment the walk started from
  uint32_t env_res = ES_ENV_NONE;  // the backend set used (ES_ENV_NONE: no ready pod)
  uint32_t level = 0;              // levels walked up (unknown names count by segment)
  uint32_t outcome = 0;            // ES_OUT_* (bpf/lib/resolve.h)
  uint32_t count = 0;              // pods in the set
};

// The kernel's walk for svc_id from a named environment ("" = start from
// start_id, e.g. the caller's own environment id). Unknown names are walked
// segment by segment, as es_request_env_id() does.
Decision resolve(const maps::MapBackend& live, uint32_t svc_id, const std::string& env, uint32_t start_id,
                 char splitter);

// The environment's name as the kernel knows it ("" when unknown).
std::string env_name(const maps::MapBackend& live, uint32_t env_id);

}  // namespace envsteer::h2
