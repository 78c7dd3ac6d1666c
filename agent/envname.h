// SPDX-License-Identifier: Apache-2.0
// C++ face of the shared C environment-name logic (bpf/lib/envname.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

extern "C" {
#include "bpf/lib/envname.h"
}

namespace envsteer {

inline bool env_valid(std::string_view e, char splitter) {
  return es_env_valid(e.data(), static_cast<int>(e.size()), splitter) != 0;
}

// "" for a one-segment name.
inline std::string env_parent(std::string_view e, char splitter) {
  int n = es_env_parent_len(e.data(), static_cast<int>(e.size()), splitter);
  return std::string(e.substr(0, static_cast<size_t>(n)));
}

// e, parent(e), ..., the one-segment root.
inline std::vector<std::string> env_chain(std::string_view e, char splitter) {
  std::vector<std::string> out;
  std::string cur(e);
  while (!cur.empty()) {
    out.push_back(cur);
    cur = env_parent(cur, splitter);
  }
  return out;
}

}  // namespace envsteer
