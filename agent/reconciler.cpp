// SPDX-License-Identifier: Apache-2.0
#include "reconciler.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <type_traits>

#include "envname.h"

namespace envsteer {

using maps::MapId;

struct Reconciler::Target {
  std::map<EnvName, uint32_t> env_ids;  // named envs
  std::map<uint32_t, es_env> envs;
  std::map<es_frontend_key, es_frontend, maps::BytesLess<es_frontend_key>> frontends;
  // Backend sets, sorted by key (BytesLess): the model's lists, not copies
  // (100 000 sets copied as maps of es_backend vectors were ~9 MiB of a full
  // apply's peak). A Target lives only while the DesiredState it reads does.
  struct SetRef {
    es_set_key key;
    const std::vector<BackendRef>* backends;
  };
  std::vector<SetRef> sets;
  bool has_set(const es_set_key& k) const {
    auto it = std::lower_bound(sets.begin(), sets.end(), k, [](const SetRef& r, const es_set_key& x) {
      return maps::BytesLess<es_set_key>{}(r.key, x);
    });
    return it != sets.end() && maps::bytes_equal(it->key, k);
  }
  void sort_sets() {
    std::sort(sets.begin(), sets.end(),
              [](const SetRef& a, const SetRef& b) { return maps::BytesLess<es_set_key>{}(a.key, b.key); });
  }
  std::map<uint64_t, es_pod> pods;
  es_config config{};
  size_t slots = 0;
  // A delta (plan_delta): the maps above hold only what may have changed, the
  // removals are listed, and the counts are of the whole state afterwards.
  bool partial = false;
  std::vector<es_frontend_key> drop_frontends;
  std::vector<es_set_key> drop_sets;
  std::vector<EnvName> drop_env_names;
  std::vector<uint32_t> drop_envs;
  size_t n_frontends = 0, n_sets = 0, n_envs = 0, n_env_names = 0;  // partial only
};

std::vector<es_backend> SetShadow::live() const {
  std::vector<es_backend> v;
  for (uint32_t i = 0; i < count; i++)
    v.push_back(i < slots.size() && slots[i] ? *slots[i] : es_backend{});  // zeroed: unknown, rewritten
  return v;
}

namespace {

// Smallest id >= first that is not in use. `next` carries the search on from the id the
// previous call returned (every id below it is in use or taken), so that n allocations cost
// O(n log n), not O(n^2): 100 000 new services took minutes with a scan from `first`.
template <class Used>
uint32_t alloc_id(const Used& used, std::set<uint32_t>& taken, uint32_t first, uint32_t& next) {
  uint32_t id = std::max(first, next);
  while (used.count(id) || taken.count(id)) id++;
  taken.insert(id);
  next = id + 1;
  return id;
}

}  // namespace

std::optional<uint32_t> Reconciler::env_id(const EnvName& e) const {
  if (e.empty()) return ES_ENV_BASE;
  auto it = shadow_.env_names.find(e);
  if (it == shadow_.env_names.end()) return std::nullopt;
  return it->second;
}

std::optional<uint32_t> Reconciler::svc_id(const es_frontend_key& k) const {
  auto it = shadow_.frontends.find(k);
  if (it == shadow_.frontends.end()) return std::nullopt;
  return it->second.svc_id;
}

size_t Reconciler::adopt() {
  shadow_ = Shadow{};
  slot_entries_ = 0;
  size_t n = 0;
  maps_.for_each(MapId::Frontends, [&](const void* k, const void* v) {
    shadow_.frontends[*static_cast<const es_frontend_key*>(k)] = *static_cast<const es_frontend*>(v);
    n++;
  });
  maps_.for_each(MapId::Envs, [&](const void* k, const void* v) {
    shadow_.envs[*static_cast<const uint32_t*>(k)] = *static_cast<const es_env*>(v);
    n++;
  });
  maps_.for_each(MapId::EnvNames, [&](const void* k, const void* v) {
    shadow_.env_names[maps::env_name_of(*static_cast<const es_env_name*>(k))] =
        *static_cast<const uint32_t*>(v);
    n++;
  });
  maps_.for_each(MapId::Sets, [&](const void* k, const void* v) {
    auto& set = shadow_.sets[*static_cast<const es_set_key*>(k)];
    set.published = true;
    set.count = static_cast<const es_set*>(v)->count;
    n++;
  });
  maps_.for_each(MapId::Slots, [&](const void* k, const void* v) {
    const auto& sk = *static_cast<const es_slot_key*>(k);
    auto& set = shadow_.sets[es_set_key{sk.svc_id, sk.env_id}];
    if (sk.slot >= set.slots.size()) set.slots.resize(sk.slot + 1);
    set.slots[sk.slot] = *static_cast<const es_backend*>(v);
    slot_entries_++;
    n++;
  });
  maps_.for_each(MapId::Pods, [&](const void* k, const void* v) {
    shadow_.pods[*static_cast<const uint64_t*>(k)] = *static_cast<const es_pod*>(v);
    n++;
  });
  uint32_t zero = 0;
  es_config cfg{};
  if (maps_.lookup(MapId::Config, &zero, &cfg) && cfg.abi_version != 0) shadow_.config = cfg;
  return n;
}

Reconciler::Target Reconciler::plan(const DesiredState& want) const {
  Target t;
  std::set<uint32_t> taken;
  uint32_t next_env = 0;
  std::set<uint32_t> used_env_ids;
  // Ids still referenced from the maps are not free, even when their entry is
  // gone (a partly applied removal, or a previous agent that stopped mid-way):
  // a new environment or service must never inherit an old one's backends.
  for (const auto& [id, e] : shadow_.envs) used_env_ids.insert(id);
  for (const auto& [k, set] : shadow_.sets) used_env_ids.insert(k.env_id);
  for (const auto& [cg, pod] : shadow_.pods) used_env_ids.insert(pod.env_id);
  used_env_ids.insert(ES_ENV_NONE);
  used_env_ids.insert(ES_ENV_BASE);

  // Environments, parents before children (shorter names first).
  std::vector<EnvName> names(want.envs.begin(), want.envs.end());
  std::sort(names.begin(), names.end(),
            [](const auto& a, const auto& b) { return a.size() != b.size() ? a.size() < b.size() : a < b; });
  for (const auto& name : names) {
    auto it = shadow_.env_names.find(name);
    uint32_t id = it != shadow_.env_names.end() ? it->second : alloc_id(used_env_ids, taken, 2, next_env);
    t.env_ids[name] = id;
  }
  auto id_of = [&](const EnvName& e) { return e.empty() ? uint32_t{ES_ENV_BASE} : t.env_ids.at(e); };
  for (const auto& name : names) {
    es_env e{};
    EnvName parent = env_parent(name, splitter_);
    e.parent_id = parent.empty() ? ES_ENV_NONE : id_of(parent);
    e.depth = static_cast<uint16_t>(es_env_depth(name.data(), static_cast<int>(name.size()), splitter_));
    e.len = static_cast<uint16_t>(std::min(name.size(), sizeof(e.name) - 1));
    std::memcpy(e.name, name.data(), std::min(name.size(), sizeof(e.name) - 1));
    t.envs[id_of(name)] = e;
  }

  std::set<uint32_t> used_svc_ids, svc_taken;
  uint32_t next_svc = 0;
  for (const auto& [k, f] : shadow_.frontends) used_svc_ids.insert(f.svc_id);
  for (const auto& [k, set] : shadow_.sets) used_svc_ids.insert(k.svc_id);
  used_svc_ids.insert(0);
  for (const auto& [key, spec] : want.frontends) {
    auto it = shadow_.frontends.find(key);
    es_frontend f{};
    f.svc_id = it != shadow_.frontends.end() ? it->second.svc_id : alloc_id(used_svc_ids, svc_taken, 1, next_svc);
    f.flags = spec.flags;
    t.frontends[key] = f;
  }
  for (const auto& [name, backends] : want.sets) {
    es_set_key k{t.frontends.at(name.frontend).svc_id, id_of(name.env)};
    t.sets.push_back({k, &backends});
    t.slots += backends.size();
  }
  t.sort_sets();
  plan_pods(want, t);
  return t;
}

// Local pods (few) and the config, always whole; env ids from t, else the shadow.
void Reconciler::plan_pods(const DesiredState& want, Target& t) const {
  auto id_of = [&](const EnvName& e) {
    if (e.empty()) return uint32_t{ES_ENV_BASE};
    auto it = t.env_ids.find(e);
    return it != t.env_ids.end() ? it->second : shadow_.env_names.at(e);
  };
  uint32_t min_level = ES_MAX_CGROUP_LEVEL, max_level = 0, flags = 0;
  for (const auto& [cg, pod] : want.pods) {
    t.pods[cg] = es_pod{id_of(pod.env), pod.flags()};
    if (pod.thread_ctx) flags |= ES_CFG_F_LOCAL_CTX;
    min_level = std::min<uint32_t>(min_level, static_cast<uint32_t>(pod.level));
    max_level = std::max<uint32_t>(max_level, static_cast<uint32_t>(pod.level));
  }
  if (want.pods.empty()) min_level = 1, max_level = 0;  // no ancestor walk
  t.config.abi_version = ES_ABI_VERSION;
  t.config.default_env_id = id_of(want.default_env);
  t.config.min_pod_level = min_level;
  t.config.max_pod_level = max_level;
  t.config.flags = flags;
}

// The id of env in a delta's target: allocated by it, or already written.
std::optional<uint32_t> Reconciler::delta_env_id(const Target& t, const EnvName& e) const {
  if (e.empty()) return ES_ENV_BASE;
  if (auto it = t.env_ids.find(e); it != t.env_ids.end()) return it->second;
  if (auto it = shadow_.env_names.find(e); it != shadow_.env_names.end()) return it->second;
  return std::nullopt;
}

// Only the keys a delta names. New ids are allocated like plan() does (the
// ids in use are collected only when a new name needs one).
Reconciler::Target Reconciler::plan_delta(const DesiredState& want, const ModelDelta& d) const {
  Target t;
  t.partial = true;
  plan_delta_envs(want, d, t);
  plan_delta_frontends(want, d, t);
  plan_delta_sets(want, d, t);
  plan_pods(want, t);
  count_after_delta(t);
  return t;
}

void Reconciler::plan_delta_envs(const DesiredState& want, const ModelDelta& d, Target& t) const {
  std::vector<EnvName> added;
  for (const auto& e : d.envs) {
    bool wanted = want.envs.count(e) > 0;
    auto have = shadow_.env_names.find(e);
    if (wanted && have == shadow_.env_names.end()) {
      added.push_back(e);
    } else if (!wanted && have != shadow_.env_names.end()) {
      t.drop_env_names.push_back(e);
      t.drop_envs.push_back(have->second);
    }
  }
  if (added.empty()) return;
  std::set<uint32_t> used{ES_ENV_NONE, ES_ENV_BASE}, taken;
  for (const auto& [id, e] : shadow_.envs) used.insert(id);
  for (const auto& [k, set] : shadow_.sets) used.insert(k.env_id);
  for (const auto& [cg, pod] : shadow_.pods) used.insert(pod.env_id);
  uint32_t next = 0;
  std::sort(added.begin(), added.end(),
            [](const auto& a, const auto& b) { return a.size() != b.size() ? a.size() < b.size() : a < b; });
  for (const auto& name : added) t.env_ids[name] = alloc_id(used, taken, 2, next);
  for (const auto& name : added) {
    es_env e{};
    EnvName parent = env_parent(name, splitter_);
    e.parent_id = parent.empty() ? ES_ENV_NONE : delta_env_id(t, parent).value();
    e.depth = static_cast<uint16_t>(es_env_depth(name.data(), static_cast<int>(name.size()), splitter_));
    e.len = static_cast<uint16_t>(std::min(name.size(), sizeof(e.name) - 1));
    std::memcpy(e.name, name.data(), std::min(name.size(), sizeof(e.name) - 1));
    t.envs[t.env_ids.at(name)] = e;
  }
}

void Reconciler::plan_delta_frontends(const DesiredState& want, const ModelDelta& d, Target& t) const {
  std::optional<std::set<uint32_t>> used_svc;
  std::set<uint32_t> svc_taken;
  uint32_t next_svc = 0;
  for (const auto& key : d.frontends) {
    auto want_it = want.frontends.find(key);
    auto have = shadow_.frontends.find(key);
    if (want_it == want.frontends.end()) {
      if (have != shadow_.frontends.end()) t.drop_frontends.push_back(key);
      continue;
    }
    es_frontend f{};
    if (have != shadow_.frontends.end()) {
      f.svc_id = have->second.svc_id;
    } else {
      if (!used_svc) {
        used_svc.emplace(std::set<uint32_t>{0});
        for (const auto& [k, fe] : shadow_.frontends) used_svc->insert(fe.svc_id);
        for (const auto& [k, set] : shadow_.sets) used_svc->insert(k.svc_id);
      }
      f.svc_id = alloc_id(*used_svc, svc_taken, 1, next_svc);
    }
    f.flags = want_it->second.flags;
    t.frontends[key] = f;
  }
}

void Reconciler::plan_delta_sets(const DesiredState& want, const ModelDelta& d, Target& t) const {
  for (const auto& name : d.sets) {
    std::optional<uint32_t> svc;
    if (auto it = t.frontends.find(name.frontend); it != t.frontends.end()) svc = it->second.svc_id;
    else if (auto it = shadow_.frontends.find(name.frontend); it != shadow_.frontends.end()) svc = it->second.svc_id;
    auto env = delta_env_id(t, name.env);
    if (!svc || !env) continue;  // never written (its frontend or env is gone too)
    es_set_key k{*svc, *env};
    auto want_it = want.sets.find(name);
    if (want_it != want.sets.end()) {
      t.sets.push_back({k, &want_it->second});
    } else if (shadow_.sets.count(k)) {
      t.drop_sets.push_back(k);
    }
  }
  t.sort_sets();
}

// The counts of the whole state after a delta, for the capacity checks.
void Reconciler::count_after_delta(Target& t) const {
  t.n_frontends = shadow_.frontends.size() - t.drop_frontends.size();
  for (const auto& [k, f] : t.frontends) t.n_frontends += !shadow_.frontends.count(k);
  t.n_sets = shadow_.sets.size() - t.drop_sets.size();
  t.slots = slot_entries_;
  for (const auto& k : t.drop_sets) {
    for (const auto& sl : shadow_.sets.at(k).slots) t.slots -= sl.has_value();
  }
  for (const auto& [k, bes] : t.sets) {
    auto it = shadow_.sets.find(k);
    size_t have = 0;
    if (it != shadow_.sets.end())
      for (const auto& sl : it->second.slots) have += sl.has_value();
    t.n_sets += it == shadow_.sets.end();
    t.slots = t.slots - have + bes->size();
  }
  t.n_envs = shadow_.envs.size() + t.envs.size() - t.drop_envs.size();
  t.n_env_names = shadow_.env_names.size() + t.env_ids.size() - t.drop_env_names.size();
}

void Reconciler::check_capacity(const Target& t) const {
  auto check = [&](MapId m, size_t n, const char* what, const char* limit) {
    uint32_t cap = maps_.capacity(m);
    if (cap != 0 && n > cap)
      throw CapacityError(std::to_string(n) + " " + what + " do not fit in map " + maps::map_name(m) +
                          " (" + std::to_string(cap) + " entries; raise limits." + limit + ")");
  };
  check(MapId::Frontends, t.partial ? t.n_frontends : t.frontends.size(), "service addresses", "frontends");
  check(MapId::Sets, t.partial ? t.n_sets : t.sets.size(), "(service address, environment) backend sets", "sets");
  check(MapId::Slots, t.slots, "backends", "slots");
  check(MapId::Envs, t.partial ? t.n_envs : t.envs.size(), "environments", "envs");
  check(MapId::EnvNames, t.partial ? t.n_env_names : t.env_ids.size(), "environment names", "envs");
  check(MapId::Pods, t.pods.size(), "local pods", "pods");
}

void Reconciler::put(MapId m, const void* k, const void* v, ApplyStats& st) {
  int err = maps_.update(m, k, v);
  if (err != 0)
    throw ApplyError(std::string("update of map ") + maps::map_name(m) + " failed: " + std::strerror(-err));
  st.updates++;
}

void Reconciler::del(MapId m, const void* k, ApplyStats& st) {
  int err = maps_.remove(m, k);
  if (err != 0)
    throw ApplyError(std::string("delete from map ") + maps::map_name(m) + " failed: " + std::strerror(-err));
  st.deletes++;
}

// Slots keep their backend where it stays, so a change writes only the slots
// it touches: removed backends leave holes that new ones fill, and leftover
// holes are closed by moving the last slots down. Returns the slots as they
// are to be: slot i holds next[i].
std::vector<es_backend> Reconciler::set_layout(const es_set_key& key, const std::vector<BackendRef>& want) const {
  auto found = shadow_.sets.find(key);
  const std::vector<es_backend> old = found == shadow_.sets.end() ? std::vector<es_backend>{} : found->second.live();
  auto same = [](const es_backend& x, const es_backend& y) { return maps::bytes_equal(x, y); };
  auto in = [&](const std::vector<BackendRef>& v, const es_backend& b) {
    return std::any_of(v.begin(), v.end(), [&](const BackendRef& x) { return same(x.backend, b); });
  };
  std::vector<std::optional<es_backend>> next;
  for (size_t i = 0; i < old.size(); i++) {
    bool keep = in(want, old[i]);
    for (size_t j = 0; j < i && keep; j++) keep = !(next[j] && same(*next[j], old[i]));  // no duplicates
    next.push_back(keep ? std::optional(old[i]) : std::nullopt);
  }
  std::vector<es_backend> adds;
  for (const auto& r : want)
    if (std::none_of(next.begin(), next.end(), [&](const auto& x) { return x && same(*x, r.backend); }))
      adds.push_back(r.backend);
  size_t a = 0;
  for (auto& slot : next)
    if (!slot && a < adds.size()) slot = adds[a++];
  for (; a < adds.size(); a++) next.push_back(adds[a]);
  for (size_t hole = 0; hole < next.size(); hole++) {
    if (next[hole]) continue;
    while (!next.empty() && !next.back()) next.pop_back();
    if (hole >= next.size()) break;
    next[hole] = next.back();
    next.pop_back();
  }
  std::vector<es_backend> out;
  out.reserve(next.size());
  for (const auto& x : next) out.push_back(*x);
  return out;
}

// Entries of one map written with one update_batch() (in order); commit(i)
// brings the shadow up to date for entry i once the kernel has it, so that a
// failed write leaves the shadow exact.
template <class K, class V, class Commit>
void Reconciler::put_all(MapId m, const std::vector<K>& keys, const std::vector<V>& values, ApplyStats& st,
                         Commit commit) {
  static_assert(std::is_trivially_copyable_v<K> && std::is_trivially_copyable_v<V>);
  if (keys.empty()) return;
  if (sizeof(K) != maps::key_size(m) || sizeof(V) != maps::value_size(m) || keys.size() != values.size())
    throw ApplyError(std::string("update of map ") + maps::map_name(m) + ": entry layout mismatch");
  uint32_t done = 0;
  int err = maps_.update_batch(m, keys.data(), values.data(), static_cast<uint32_t>(keys.size()), &done);
  for (uint32_t i = 0; i < done; i++) commit(i);
  st.updates += done;
  if (err != 0)
    throw ApplyError(std::string("update of map ") + maps::map_name(m) + " failed: " + std::strerror(-err));
}

// The sets that change (a round of them), in three steps over all of them: 1.
// fill slots (in place and appended), 2. publish the counts, 3. drop the
// tails. Each set's slots are written before its count grows, and its count
// shrinks before its tail goes; steps 1 and 2 are one batch each.
void Reconciler::write_sets(const std::vector<std::pair<es_set_key, std::vector<es_backend>>>& sets, ApplyStats& st) {
  auto same = [](const es_backend& x, const es_backend& y) { return maps::bytes_equal(x, y); };
  std::vector<es_slot_key> slot_keys;
  std::vector<es_backend> slot_values;
  for (const auto& [key, next] : sets) {
    auto it = shadow_.sets.find(key);
    for (size_t i = 0; i < next.size(); i++) {
      if (it != shadow_.sets.end() && i < it->second.slots.size() && it->second.slots[i] &&
          same(*it->second.slots[i], next[i]))
        continue;
      slot_keys.push_back(es_slot_key{key.svc_id, key.env_id, static_cast<uint32_t>(i)});
      slot_values.push_back(next[i]);
    }
  }
  put_all(MapId::Slots, slot_keys, slot_values, st, [&](size_t i) {
    const es_slot_key& sk = slot_keys[i];
    auto& cur = shadow_.sets[es_set_key{sk.svc_id, sk.env_id}];
    if (sk.slot >= cur.slots.size()) cur.slots.resize(sk.slot + 1);
    slot_entries_ += !cur.slots[sk.slot];
    cur.slots[sk.slot] = slot_values[i];
  });
  std::vector<es_set_key> set_keys;
  std::vector<es_set> set_values;
  for (const auto& [key, next] : sets) {
    const auto& cur = shadow_.sets[key];
    if (!cur.published || cur.count != next.size()) {
      set_keys.push_back(key);
      set_values.push_back(es_set{static_cast<uint32_t>(next.size()), 0});
    }
  }
  put_all(MapId::Sets, set_keys, set_values, st, [&](size_t i) {
    auto& cur = shadow_.sets[set_keys[i]];
    cur.published = true;
    cur.count = set_values[i].count;
  });
  for (const auto& [key, next] : sets) {
    auto& cur = shadow_.sets[key];
    for (size_t i = cur.slots.size(); i-- > next.size();) {
      if (cur.slots[i]) {
        es_slot_key sk{key.svc_id, key.env_id, static_cast<uint32_t>(i)};
        del(MapId::Slots, &sk, st);
        slot_entries_--;
      }
      cur.slots.pop_back();
    }
  }
}

void Reconciler::delete_set(const es_set_key& key, ApplyStats& st) {
  auto it = shadow_.sets.find(key);
  if (it == shadow_.sets.end()) return;
  auto& cur = it->second;
  if (cur.published) {
    del(MapId::Sets, &key, st);
    cur.published = false;
    cur.count = 0;
  }
  while (!cur.slots.empty()) {
    if (cur.slots.back()) {
      es_slot_key sk{key.svc_id, key.env_id, static_cast<uint32_t>(cur.slots.size() - 1)};
      del(MapId::Slots, &sk, st);
      slot_entries_--;
    }
    cur.slots.pop_back();
  }
  shadow_.sets.erase(it);
}

// Additions and changes, dependencies first.
void Reconciler::add_phase(const Target& t, ApplyStats& st, bool defer) {
  std::vector<std::pair<uint32_t, const es_env*>> envs;
  for (const auto& [id, e] : t.envs) envs.emplace_back(id, &e);
  std::stable_sort(envs.begin(), envs.end(), [](auto& a, auto& b) { return a.second->depth < b.second->depth; });
  std::vector<uint32_t> env_keys;
  std::vector<es_env> env_values;
  for (const auto& [id, e] : envs) {
    auto it = shadow_.envs.find(id);
    if (it != shadow_.envs.end() && maps::bytes_equal(it->second, *e)) continue;
    env_keys.push_back(id);
    env_values.push_back(*e);
  }
  put_all(MapId::Envs, env_keys, env_values, st, [&](size_t i) { shadow_.envs[env_keys[i]] = env_values[i]; });
  std::vector<const EnvName*> names;
  std::vector<es_env_name> name_keys;
  std::vector<uint32_t> name_values;
  for (const auto& [name, id] : t.env_ids) {
    auto it = shadow_.env_names.find(name);
    if (it != shadow_.env_names.end() && it->second == id) continue;
    names.push_back(&name);
    name_keys.push_back(maps::make_env_name(name));
    name_values.push_back(id);
  }
  put_all(MapId::EnvNames, name_keys, name_values, st,
          [&](size_t i) { shadow_.env_names[*names[i]] = name_values[i]; });
  // set_chunk_ sets at a time, each whole in one round (its own order holds)
  std::vector<std::pair<es_set_key, std::vector<es_backend>>> sets;
  for (const auto& [key, backends] : t.sets) {
    auto it = shadow_.sets.find(key);
    if (it != shadow_.sets.end() && it->second.published && it->second.count == backends->size() &&
        it->second.slots.size() == backends->size()) {
      auto live = it->second.live();
      std::vector<es_backend> want;
      want.reserve(backends->size());
      for (const auto& r : *backends) want.push_back(r.backend);
      if (std::is_permutation(live.begin(), live.end(), want.begin(),
                              [](const es_backend& x, const es_backend& y) { return maps::bytes_equal(x, y); }))
        continue;
    }
    sets.emplace_back(key, set_layout(key, *backends));
    if (sets.size() >= set_chunk_) {
      write_sets(sets, st);
      sets.clear();
    }
  }
  write_sets(sets, st);
  sets.clear();
  // A frontend that changes (its flags) while sets of it go away is written
  // after they are gone (write_frontends): when it is written it routes
  // exactly as `t` says.
  std::set<uint32_t> losing_sets;
  if (defer) {
    if (t.partial)
      for (const auto& k : t.drop_sets) losing_sets.insert(k.svc_id);
    else
      for (const auto& [k, set] : shadow_.sets)
        if (!t.has_set(k)) losing_sets.insert(k.svc_id);
  }
  write_frontends(t, losing_sets, st);
  for (const auto& [cg, pod] : t.pods) {
    auto it = shadow_.pods.find(cg);
    if (it != shadow_.pods.end() && maps::bytes_equal(it->second, pod)) continue;
    put(MapId::Pods, &cg, &pod, st);
    shadow_.pods[cg] = pod;
  }
  if (!shadow_.config || !maps::bytes_equal(*shadow_.config, t.config)) {
    uint32_t zero = 0;
    put(MapId::Config, &zero, &t.config, st);
    shadow_.config = t.config;
  }
}

void Reconciler::write_frontends(const Target& t, const std::set<uint32_t>& later, ApplyStats& st) {
  std::vector<es_frontend_key> keys;
  std::vector<es_frontend> values;
  for (const auto& [key, f] : t.frontends) {
    auto it = shadow_.frontends.find(key);
    if (it != shadow_.frontends.end() && maps::bytes_equal(it->second, f)) continue;
    if (it != shadow_.frontends.end() && later.count(f.svc_id)) continue;
    keys.push_back(key);
    values.push_back(f);
  }
  put_all(MapId::Frontends, keys, values, st, [&](size_t i) { shadow_.frontends[keys[i]] = values[i]; });
}

// Removals, dependents first.
void Reconciler::remove_phase(const Target& t, ApplyStats& st) {
  for (auto it = shadow_.pods.begin(); it != shadow_.pods.end();) {
    if (t.pods.count(it->first)) { ++it; continue; }
    del(MapId::Pods, &it->first, st);
    it = shadow_.pods.erase(it);
  }
  if (t.partial) {
    for (const auto& key : t.drop_frontends) {
      del(MapId::Frontends, &key, st);
      shadow_.frontends.erase(key);
    }
    for (const auto& key : t.drop_sets) delete_set(key, st);
    for (const auto& name : t.drop_env_names) {
      es_env_name k = maps::make_env_name(name);
      del(MapId::EnvNames, &k, st);
      shadow_.env_names.erase(name);
    }
    std::vector<std::pair<uint32_t, uint32_t>> stale;  // (depth, id), deepest first
    for (uint32_t id : t.drop_envs)
      if (auto it = shadow_.envs.find(id); it != shadow_.envs.end()) stale.emplace_back(uint32_t{it->second.depth}, id);
    std::sort(stale.rbegin(), stale.rend());
    for (const auto& [depth, id] : stale) {
      del(MapId::Envs, &id, st);
      shadow_.envs.erase(id);
    }
    return;
  }
  for (auto it = shadow_.frontends.begin(); it != shadow_.frontends.end();) {
    auto want = t.frontends.find(it->first);
    if (want != t.frontends.end() && maps::bytes_equal(want->second, it->second)) { ++it; continue; }
    if (want != t.frontends.end()) { ++it; continue; }  // changed: rewritten by the add phase
    del(MapId::Frontends, &it->first, st);
    it = shadow_.frontends.erase(it);
  }
  std::vector<es_set_key> gone;
  for (const auto& [key, v] : shadow_.sets)
    if (!t.has_set(key)) gone.push_back(key);
  for (const auto& key : gone) delete_set(key, st);
  for (auto it = shadow_.env_names.begin(); it != shadow_.env_names.end();) {
    if (t.env_ids.count(it->first)) { ++it; continue; }
    es_env_name k = maps::make_env_name(it->first);
    del(MapId::EnvNames, &k, st);
    it = shadow_.env_names.erase(it);
  }
  std::vector<std::pair<uint32_t, uint32_t>> stale;  // (depth, id), deepest first
  for (const auto& [id, e] : shadow_.envs)
    if (!t.envs.count(id)) stale.emplace_back(uint32_t{e.depth}, id);
  std::sort(stale.rbegin(), stale.rend());
  for (const auto& [depth, id] : stale) {
    del(MapId::Envs, &id, st);
    shadow_.envs.erase(id);
  }
}

// True when the maps cannot hold the old and the new entries at once.
bool Reconciler::needs_room(const Target& t) const {
  auto over = [&](MapId m, size_t n) {
    uint32_t cap = maps_.capacity(m);
    return cap != 0 && n > cap;
  };
  size_t frontends = shadow_.frontends.size(), sets = 0, slots = 0, envs = shadow_.envs.size(),
         names = shadow_.env_names.size(), pods = shadow_.pods.size();
  for (const auto& [k, f] : t.frontends) frontends += !shadow_.frontends.count(k);
  if (t.partial) {
    sets = shadow_.sets.size();  // at most: unpublished ones counted too
    slots = slot_entries_;
  } else {
    for (const auto& [k, s] : shadow_.sets) {
      sets += s.published;
      for (const auto& sl : s.slots) slots += sl.has_value();
    }
  }
  for (const auto& [k, bes] : t.sets) {
    auto it = shadow_.sets.find(k);
    sets += it == shadow_.sets.end() || !it->second.published;
    size_t have = it == shadow_.sets.end() ? 0 : it->second.slots.size();
    slots += bes->size() > have ? bes->size() - have : 0;
  }
  for (const auto& [id, e] : t.envs) envs += !shadow_.envs.count(id);
  for (const auto& [n, id] : t.env_ids) names += !shadow_.env_names.count(n);
  for (const auto& [cg, p] : t.pods) pods += !shadow_.pods.count(cg);
  return over(MapId::Frontends, frontends) || over(MapId::Sets, sets) || over(MapId::Slots, slots) ||
         over(MapId::Envs, envs) || over(MapId::EnvNames, names) || over(MapId::Pods, pods);
}

ApplyStats Reconciler::apply(const DesiredState& want) { return write(plan(want)); }

ApplyStats Reconciler::apply(const DesiredState& want, const ModelDelta& changed) {
  if (changed.all) return apply(want);
  return write(plan_delta(want, changed));
}

ApplyStats Reconciler::write(const Target& t) {
  check_capacity(t);
  ApplyStats st;
  if (needs_room(t)) {
    // The new state fits, but not beside the old one: make room first. What
    // goes away goes away a moment earlier; nothing half-made is ever visible.
    remove_phase(t, st);
    add_phase(t, st, false);
  } else {
    add_phase(t, st, true);
    remove_phase(t, st);
    write_frontends(t, {}, st);  // the ones deferred
  }
  return st;
}

}  // namespace envsteer
