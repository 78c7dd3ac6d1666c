// SPDX-License-Identifier: Apache-2.0
// `envsteer explain`: the environment chain walked and the pods it resolves
// to, computed with the kernel's own walk (bpf/lib/resolve.h) over the live maps.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "maps/maps.h"
#include "model.h"

namespace envsteer {

struct ExplainRequest {
  std::string from;  // "ns/pod"
  std::string to;    // "ns/svc" or "ns/svc:port" (port number or name)
  std::optional<std::string> env;  // overrides the caller's environment
  uint64_t pod_cgroup = 0;         // the caller's cgroup id, for its connect hints (0: not shown)
};

// Throws std::invalid_argument for unknown pods/services or bad input.
nlohmann::json explain(const ExplainRequest& req, const DesiredState& model, const maps::MapBackend& live,
                       char splitter);

// Human-readable rendering of explain()'s JSON.
std::string render_explain(const nlohmann::json& j);

}  // namespace envsteer
