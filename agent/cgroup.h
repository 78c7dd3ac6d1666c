// SPDX-License-Identifier: Apache-2.0
// cgroup v2 helpers: find the mount, map directories to cgroup ids and back.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace envsteer::cgroup {

// The cgroup2 mount point (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified),
// read from /proc/self/mounts. Throws when cgroup v2 is not mounted.
std::filesystem::path find_cgroup2_mount();

// The cgroup id (as bpf_get_current_cgroup_id() reports it) of a cgroup2
// directory; nullopt when it does not exist.
std::optional<uint64_t> cgroup_id(const std::filesystem::path& dir);

// Depth below the mount: the mount itself is level 0.
int cgroup_level(const std::filesystem::path& mount, const std::filesystem::path& dir);

// Resolves "rel" (relative to the mount, or absolute inside it) to an absolute
// directory inside the mount; throws std::invalid_argument when it escapes it.
std::filesystem::path resolve_in_mount(const std::filesystem::path& mount, const std::string& rel);

// Finds the directory of a cgroup id by walking the mount (bounded); for status.
std::optional<std::filesystem::path> path_of_id(const std::filesystem::path& mount, uint64_t id,
                                                size_t max_dirs = 100000);

// Makes sure bpffs is mounted at /sys/fs/bpf (or the bpffs containing dir).
void ensure_bpffs(const std::filesystem::path& pin_dir);

}  // namespace envsteer::cgroup
