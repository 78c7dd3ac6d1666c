// SPDX-License-Identifier: Apache-2.0
#include "maps/bpf_maps.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include <cerrno>
#include <stdexcept>
#include <vector>

namespace envsteer::maps {

BpfMapBackend::~BpfMapBackend() {
  for (int fd : fds_)
    if (fd >= 0) close(fd);
}

void BpfMapBackend::set_fd(MapId map, int fd) {
  int& slot = fds_[static_cast<size_t>(map)];
  if (slot >= 0) close(slot);
  slot = fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

void BpfMapBackend::open_pinned(const std::filesystem::path& pin_dir) {
  for (size_t i = 0; i < kMapCount; i++) {
    auto id = static_cast<MapId>(i);
    auto path = pin_dir / "maps" / map_name(id);
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) throw std::runtime_error("cannot open pinned map " + path.string() + ": " + strerror(errno));
    bpf_map_info info{};
    __u32 len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0 || info.key_size != key_size(id) ||
        info.value_size != value_size(id)) {
      close(fd);
      throw std::runtime_error("pinned map " + path.string() +
                               " has another layout (an incompatible envsteer version?)");
    }
    int& slot = fds_[i];
    if (slot >= 0) close(slot);
    slot = fd;
  }
}

int BpfMapBackend::update(MapId map, const void* key, const void* value) {
  return bpf_map_update_elem(fd(map), key, value, BPF_ANY) == 0 ? 0 : -errno;
}

int BpfMapBackend::remove(MapId map, const void* key) {
  if (bpf_map_delete_elem(fd(map), key) == 0) return 0;
  return errno == ENOENT ? 0 : -errno;
}

bool BpfMapBackend::lookup(MapId map, const void* key, void* value) const {
  return bpf_map_lookup_elem(fd(map), key, value) == 0;
}

void BpfMapBackend::for_each(MapId map,
                             const std::function<void(const void*, const void*)>& fn) const {
  std::vector<unsigned char> key(key_size(map)), next(key_size(map)), value(value_size(map));
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd(map), prev, next.data()) == 0) {
    if (bpf_map_lookup_elem(fd(map), next.data(), value.data()) == 0) fn(next.data(), value.data());
    key.swap(next);
    prev = key.data();
  }
}

uint32_t BpfMapBackend::capacity(MapId map) const {
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd(map), &info, &len) != 0) return 0;
  return info.max_entries;
}

size_t BpfMapBackend::count(MapId map) const {
  std::vector<unsigned char> key(key_size(map)), next(key_size(map));
  const void* prev = nullptr;
  size_t n = 0;
  while (bpf_map_get_next_key(fd(map), prev, next.data()) == 0) {
    n++;
    key.swap(next);
    prev = key.data();
  }
  return n;
}

uint64_t BpfMapBackend::counter(uint32_t index) const {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return 0;
  std::vector<uint64_t> values(static_cast<size_t>(ncpu));
  if (bpf_map_lookup_elem(fd(MapId::Counters), &index, values.data()) != 0) return 0;
  uint64_t sum = 0;
  for (auto v : values) sum += v;
  return sum;
}

}  // namespace envsteer::maps
