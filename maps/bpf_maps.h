// SPDX-License-Identifier: Apache-2.0
// MapBackend over real BPF map file descriptors (pinned maps).
#pragma once

#include <array>
#include <filesystem>
#include <vector>

#include "maps/maps.h"

namespace envsteer::maps {

class BpfMapBackend : public MapBackend {
 public:
  BpfMapBackend() { fds_.fill(-1); }
  ~BpfMapBackend() override;
  BpfMapBackend(const BpfMapBackend&) = delete;
  BpfMapBackend& operator=(const BpfMapBackend&) = delete;

  // Opens every map pinned under <pin_dir>/maps. Throws std::runtime_error
  // naming the map when one is missing or has another layout.
  void open_pinned(const std::filesystem::path& pin_dir);
  // Takes ownership of a duplicate of fd.
  void set_fd(MapId map, int fd);
  int fd(MapId map) const { return fds_[static_cast<size_t>(map)]; }

  int update(MapId map, const void* key, const void* value) override;
  int remove(MapId map, const void* key) override;
  // BPF_MAP_UPDATE_BATCH (kernel 5.6+); one by one where the kernel lacks it.
  int update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done) override;
  bool lookup(MapId map, const void* key, void* value) const override;
  void for_each(MapId map,
                const std::function<void(const void* key, const void* value)>& fn) const override;
  uint32_t capacity(MapId map) const override;

  // Number of entries (walks the keys).
  size_t count(MapId map) const;
  // Sum of a per-CPU counter over all CPUs.
  uint64_t counter(uint32_t index) const;
  // Every entry of a map of __u64 counters, summed over the CPUs where per-CPU.
  void for_each_sum(MapId map, const std::function<void(const void* key, uint64_t sum)>& fn) const;
  // The keys of a map (a snapshot).
  template <class K>
  std::vector<K> keys(MapId map) const {
    std::vector<K> out;
    for_each_key(map, [&](const void* k) { out.push_back(*static_cast<const K*>(k)); });
    return out;
  }
  void for_each_key(MapId map, const std::function<void(const void* key)>& fn) const;

 private:
  std::array<int, kMapCount> fds_{};
  bool no_batch_ = false;  // the kernel said BPF_MAP_UPDATE_BATCH is not there
};

}  // namespace envsteer::maps
