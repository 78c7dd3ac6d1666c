// SPDX-License-Identifier: Apache-2.0
#include "maps/bpf_maps.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
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

namespace {
constexpr int kENOTSUPP = 524;  // the kernel's ENOTSUPP (not in the uapi headers)
}  // namespace

int BpfMapBackend::update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done) {
  *done = 0;
  if (n == 0) return 0;
  if (n == 1 || no_batch_) return MapBackend::update_batch(map, keys, values, n, done);
  const auto* k = static_cast<const unsigned char*>(keys);
  const auto* v = static_cast<const unsigned char*>(values);
  LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = BPF_ANY, .flags = 0);
  // The kernel writes the entries in order and says how many it wrote; a
  // large batch goes in chunks, so that one call holds no lock for long.
  constexpr uint32_t kChunk = 8192;
  while (*done < n) {
    __u32 count = std::min(kChunk, n - *done);
    int rc = bpf_map_update_batch(fd(map), k + *done * key_size(map), v + *done * value_size(map), &count, &opts);
    if (rc == 0) {
      *done += count;
      continue;
    }
    int err = errno;
    if ((err == EINVAL || err == kENOTSUPP || err == EOPNOTSUPP) && count == 0) {
      // no batch operations on this kernel (before 5.6) or this map type
      no_batch_ = true;
      uint32_t more = 0;
      int r = MapBackend::update_batch(map, k + *done * key_size(map), v + *done * value_size(map), n - *done, &more);
      *done += more;
      return r;
    }
    *done += count;  // written before the failing entry
    return -err;
  }
  return 0;
}

int BpfMapBackend::remove(MapId map, const void* key) {
  if (bpf_map_delete_elem(fd(map), key) == 0) return 0;
  return errno == ENOENT ? 0 : -errno;
}

bool BpfMapBackend::lookup(MapId map, const void* key, void* value) const {
  return bpf_map_lookup_elem(fd(map), key, value) == 0;
}

namespace {

size_t lookup_size(MapId map) {
  if (!per_cpu(map)) return value_size(map);
  int ncpu = libbpf_num_possible_cpus();
  return value_size(map) * static_cast<size_t>(ncpu > 0 ? ncpu : 1);
}

}  // namespace

void BpfMapBackend::for_each(MapId map,
                             const std::function<void(const void*, const void*)>& fn) const {
  // per-CPU maps: the value is every CPU's, one after the other
  std::vector<unsigned char> key(key_size(map)), next(key_size(map)), value(lookup_size(map));
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

void BpfMapBackend::for_each_key(MapId map, const std::function<void(const void* key)>& fn) const {
  std::vector<unsigned char> key(key_size(map)), next(key_size(map));
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd(map), prev, next.data()) == 0) {
    fn(next.data());
    key.swap(next);
    prev = key.data();
  }
}

size_t BpfMapBackend::count(MapId map) const {
  size_t n = 0;
  for_each_key(map, [&](const void*) { n++; });
  return n;
}

namespace {

uint64_t cpu_sum(const void* values, size_t n) {
  const auto* v = static_cast<const uint64_t*>(values);
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i++) sum += v[i];
  return sum;
}

size_t ncpus() {
  int n = libbpf_num_possible_cpus();
  return n > 0 ? static_cast<size_t>(n) : 1;
}

}  // namespace

uint64_t BpfMapBackend::counter(uint32_t index) const {
  std::vector<uint64_t> values(ncpus());
  if (bpf_map_lookup_elem(fd(MapId::Counters), &index, values.data()) != 0) return 0;
  return cpu_sum(values.data(), values.size());
}

void BpfMapBackend::for_each_sum(MapId map, const std::function<void(const void* key, uint64_t sum)>& fn) const {
  for_each(map, [&](const void* k, const void* v) { fn(k, per_cpu(map) ? cpu_sum(v, ncpus()) : *static_cast<const uint64_t*>(v)); });
}

}  // namespace envsteer::maps
