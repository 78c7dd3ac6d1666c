// SPDX-License-Identifier: Apache-2.0
#include "cgroup.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace envsteer::cgroup {

fs::path find_cgroup2_mount() {
  std::ifstream in("/proc/self/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string dev, dir, type;
    ls >> dev >> dir >> type;
    if (type == "cgroup2") return dir;
  }
  throw std::runtime_error("cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mounts)");
}

std::optional<uint64_t> cgroup_id(const fs::path& dir) {
  // The cgroup id is the kernfs node id, which name_to_handle_at() returns as
  // the file handle of the directory (what libbpf's get_cgroup_id does).
  struct {
    struct file_handle fh;
    uint64_t id;
  } h{};
  h.fh.handle_bytes = sizeof(uint64_t);
  int mount_id = 0;
  if (name_to_handle_at(AT_FDCWD, dir.c_str(), &h.fh, &mount_id, 0) != 0) return std::nullopt;
  uint64_t id = 0;
  std::memcpy(&id, h.fh.f_handle, sizeof(id));
  return id;
}

int cgroup_level(const fs::path& mount, const fs::path& dir) {
  int level = 0;
  for (const auto& part : dir.lexically_relative(mount)) {
    if (part == "." || part.empty()) continue;
    level++;
  }
  return level;
}

fs::path resolve_in_mount(const fs::path& mount, const std::string& rel) {
  fs::path p(rel);
  fs::path abs = p.is_absolute() ? p.lexically_normal() : (mount / p).lexically_normal();
  auto r = abs.lexically_relative(mount);
  if (r.empty() || *r.begin() == "..")
    throw std::invalid_argument("cgroup path \"" + rel + "\" is outside the cgroup2 mount " +
                                mount.string());
  if (!abs.empty() && abs.filename().empty()) abs = abs.parent_path();
  return abs;
}

std::optional<fs::path> path_of_id(const fs::path& mount, uint64_t id, size_t max_dirs) {
  if (cgroup_id(mount) == id) return mount;
  size_t seen = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(mount, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_directory(ec)) continue;
    if (++seen > max_dirs) break;
    if (cgroup_id(it->path()) == id) return it->path();
  }
  return std::nullopt;
}

void ensure_bpffs(const fs::path& pin_dir) {
  fs::path root = "/sys/fs/bpf";
  struct statfs st{};
  fs::path probe = pin_dir;
  while (!probe.empty() && !fs::exists(probe)) probe = probe.parent_path();
  if (!probe.empty() && statfs(probe.c_str(), &st) == 0 && st.f_type == BPF_FS_MAGIC) return;
  if (statfs(root.c_str(), &st) == 0 && st.f_type == BPF_FS_MAGIC) return;
  fs::create_directories(root);
  if (mount("bpf", root.c_str(), "bpf", 0, "mode=0700") != 0)
    throw std::runtime_error("cannot mount bpffs at /sys/fs/bpf: " + std::string(strerror(errno)));
}

}  // namespace envsteer::cgroup
