// SPDX-License-Identifier: Apache-2.0
// One field of /proc/self/status ("VmRSS", "CapEff", ...): its value text.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace envsteer {

// The text after "FIELD:" (leading blanks kept, newline dropped); nullopt when
// the file or the field cannot be read.
inline std::optional<std::string> proc_self_status(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "re");
  if (!f) return std::nullopt;
  char line[256];
  const size_t n = std::strlen(field);
  std::optional<std::string> value;
  while (std::fgets(line, sizeof(line), f))
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') {
      value = std::string(line + n + 1);
      if (!value->empty() && value->back() == '\n') value->pop_back();
      break;
    }
  std::fclose(f);
  return value;
}

// A "kB" field (VmRSS, VmHWM) in MiB; 0 when unreadable.
inline double proc_self_status_mib(const char* field) {
  auto v = proc_self_status(field);
  return v ? std::strtod(v->c_str(), nullptr) / 1024.0 : 0;
}

}  // namespace envsteer
