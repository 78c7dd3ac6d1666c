// SPDX-License-Identifier: Apache-2.0
// The reconciler owns the steering maps: it keeps a shadow copy of what it
// wrote, turns a DesiredState into the smallest set of map writes, and orders
// them so that the programs never see a half-made state (a frontend appears
// after its backend sets, a set's count grows after its slots are filled and
// shrinks before they are deleted).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <vector>

#include "maps/maps.h"
#include "model.h"

namespace envsteer {

// The desired state does not fit in the maps: nothing was written.
class CapacityError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A map write failed part-way; the shadow reflects what was written, and the
// next apply() retries the rest.
class ApplyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One backend set as the maps hold it: the es_sets entry and every es_slots
// entry, also those beyond the count (written before a count grows, or left
// by an agent that stopped before deleting them).
struct SetShadow {
  bool published = false;  // the es_sets entry exists
  uint32_t count = 0;      // its count
  std::vector<std::optional<es_backend>> slots;  // by slot index; nullopt = absent

  // The backends readers can pick: slots [0, count).
  std::vector<es_backend> live() const;
};

struct Shadow {
  std::map<es_frontend_key, es_frontend, maps::BytesLess<es_frontend_key>> frontends;
  std::map<uint32_t, es_env> envs;
  std::map<EnvName, uint32_t> env_names;  // es_env_names entries
  std::map<es_set_key, SetShadow, maps::BytesLess<es_set_key>> sets;
  std::map<uint64_t, es_pod> pods;
  std::optional<es_config> config;
};

struct ApplyStats {
  size_t updates = 0;
  size_t deletes = 0;
  bool changed() const { return updates + deletes > 0; }
};

class Reconciler {
 public:
  Reconciler(maps::MapBackend& maps, char splitter) : maps_(maps), splitter_(splitter) {}

  // Reads what the maps hold now (a previous agent's work) as the shadow.
  // Returns the number of entries adopted.
  size_t adopt();

  // Makes the maps say what `want` says. Throws CapacityError (nothing
  // written) or ApplyError (partly written, shadow accurate).
  ApplyStats apply(const DesiredState& want);

  // The same for a `want` that differs from the last one applied only where
  // `changed` says (IncrementalModel::take_delta()): only those keys are
  // planned and compared, in the same order as apply() (a delta with `all`
  // is apply()). After an exception the next call must be a full apply():
  // the shadow is accurate, but the delta's unwritten part is not kept.
  ApplyStats apply(const DesiredState& want, const ModelDelta& changed);

  const Shadow& shadow() const { return shadow_; }
  // Sets an apply writes per round (their slots, then their counts, then
  // their tails; each set whole in one round): the layouts of 100 000 sets at
  // once were ~10 MiB of a full apply's peak. Tests make it small.
  void set_chunk(size_t n) { set_chunk_ = n > 0 ? n : 1; }
  std::optional<uint32_t> env_id(const EnvName& e) const;
  std::optional<uint32_t> svc_id(const es_frontend_key& k) const;

 private:
  struct Target;
  Target plan(const DesiredState& want) const;
  Target plan_delta(const DesiredState& want, const ModelDelta& d) const;
  void plan_delta_envs(const DesiredState& want, const ModelDelta& d, Target& t) const;
  void plan_delta_frontends(const DesiredState& want, const ModelDelta& d, Target& t) const;
  void plan_delta_sets(const DesiredState& want, const ModelDelta& d, Target& t) const;
  void count_after_delta(Target& t) const;
  std::optional<uint32_t> delta_env_id(const Target& t, const EnvName& e) const;
  void plan_pods(const DesiredState& want, Target& t) const;
  ApplyStats write(const Target& t);
  void check_capacity(const Target& t) const;
  void put(maps::MapId m, const void* k, const void* v, ApplyStats& st);
  void del(maps::MapId m, const void* k, ApplyStats& st);
  void add_phase(const Target& t, ApplyStats& st, bool defer);
  void write_frontends(const Target& t, const std::set<uint32_t>& later, ApplyStats& st);
  void remove_phase(const Target& t, ApplyStats& st);
  bool needs_room(const Target& t) const;
  std::vector<es_backend> set_layout(const es_set_key& key, const std::vector<BackendRef>& want) const;
  void write_sets(const std::vector<std::pair<es_set_key, std::vector<es_backend>>>& sets, ApplyStats& st);
  template <class K, class V, class Commit>
  void put_all(maps::MapId m, const std::vector<K>& keys, const std::vector<V>& values, ApplyStats& st,
               Commit commit);
  void delete_set(const es_set_key& key, ApplyStats& st);

  maps::MapBackend& maps_;
  char splitter_;
  Shadow shadow_;
  size_t slot_entries_ = 0;  // es_slots entries the shadow holds (capacity checks of a delta)
  size_t set_chunk_ = 4096;
};

}  // namespace envsteer
