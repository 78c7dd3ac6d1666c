// SPDX-License-Identifier: Apache-2.0
// An in-memory MapBackend for the reconciler tests: it holds every map as raw
// key bytes -> value bytes, logs every successful write in order (so a test can
// replay the log and look at every intermediate state the BPF programs could
// observe), enforces per-map capacities like a BPF hash map (-E2BIG when a NEW
// key would exceed max_entries; replacing an existing key always works), and
// can fail the Nth write with -ENOMEM.
//
// Also: typed decoding of a map state, and its "semantics" (what connect()
// would see, by names instead of ids) to compare two states independently of
// the ids a reconciler picked.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <functional>
#include <stdexcept>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "maps/maps.h"
#include "model.h"

namespace envsteer::fake {

using maps::MapId;

// One map: key bytes -> value bytes.
using RawMap = std::map<std::string, std::string>;
// Every map, indexed by MapId.
using MapState = std::array<RawMap, maps::kMapCount>;

inline RawMap& at(MapState& s, MapId m) { return s[static_cast<size_t>(m)]; }
inline const RawMap& at(const MapState& s, MapId m) { return s[static_cast<size_t>(m)]; }

template <class T>
std::string bytes_of(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <class T>
T from_bytes(const std::string& b) {
  T v{};
  if (b.size() != sizeof(T)) throw std::logic_error("from_bytes: size mismatch");
  std::memcpy(&v, b.data(), sizeof(T));
  return v;
}

struct Op {
  enum Kind { Update, Remove } kind;
  MapId map;
  std::string key, value;  // value empty for Remove

  template <class K>
  K key_as() const { return from_bytes<K>(key); }
  template <class V>
  V value_as() const { return from_bytes<V>(value); }
};

// Applies one logged op to a state (for replays).
inline void apply_op(MapState& s, const Op& op) {
  if (op.kind == Op::Update)
    at(s, op.map)[op.key] = op.value;
  else
    at(s, op.map).erase(op.key);
}

class FakeMaps : public maps::MapBackend {
 public:
  MapState state;
  std::vector<Op> ops;        // successful writes, in order
  size_t attempts = 0;        // every update()/remove() call, failed ones included
  size_t missing_removes = 0; // remove() of an absent key (returns 0, like BpfMapBackend)

  void set_capacity(MapId m, uint32_t cap) { caps_[static_cast<size_t>(m)] = cap; }
  // The n-th write (update or remove, 1-based, counted from now) fails with
  // -ENOMEM and changes nothing; 0 disarms.
  void fail_nth_write(size_t n) { fail_in_ = n; }

  int update(MapId map, const void* key, const void* value) override {
    attempts++;
    if (should_fail()) return -ENOMEM;
    std::string k(static_cast<const char*>(key), maps::key_size(map));
    std::string v(static_cast<const char*>(value), maps::value_size(map));
    auto& m = at(state, map);
    uint32_t cap = capacity(map);
    if (cap != 0 && !m.count(k) && m.size() >= cap) return -E2BIG;
    m[k] = v;
    ops.push_back(Op{Op::Update, map, k, v});
    return 0;
  }

  int remove(MapId map, const void* key) override {
    attempts++;
    if (should_fail()) return -ENOMEM;
    std::string k(static_cast<const char*>(key), maps::key_size(map));
    if (at(state, map).erase(k) == 0) missing_removes++;
    ops.push_back(Op{Op::Remove, map, k, {}});
    return 0;
  }

  bool lookup(MapId map, const void* key, void* value) const override {
    std::string k(static_cast<const char*>(key), maps::key_size(map));
    const auto& m = at(state, map);
    auto it = m.find(k);
    if (it == m.end()) return false;
    std::memcpy(value, it->second.data(), it->second.size());
    return true;
  }

  void for_each(MapId map,
                const std::function<void(const void* key, const void* value)>& fn) const override {
    for (const auto& [k, v] : at(state, map)) fn(k.data(), v.data());
  }

  uint32_t capacity(MapId map) const override { return caps_[static_cast<size_t>(map)]; }

  // --- typed accessors ---------------------------------------------------
  size_t size(MapId m) const { return at(state, m).size(); }

  template <class V, class K>
  std::optional<V> get(MapId m, const K& key) const {
    const auto& raw = at(state, m);
    auto it = raw.find(bytes_of(key));
    if (it == raw.end()) return std::nullopt;
    return from_bytes<V>(it->second);
  }

  template <class K, class V>
  std::vector<std::pair<K, V>> entries(MapId m) const {
    std::vector<std::pair<K, V>> out;
    for (const auto& [k, v] : at(state, m)) out.emplace_back(from_bytes<K>(k), from_bytes<V>(v));
    return out;
  }

  std::optional<es_config> config() const { return get<es_config>(MapId::Config, uint32_t{0}); }
  std::optional<es_set> set(uint32_t svc, uint32_t env) const {
    return get<es_set>(MapId::Sets, es_set_key{svc, env});
  }
  std::optional<es_backend> slot(uint32_t svc, uint32_t env, uint32_t i) const {
    return get<es_backend>(MapId::Slots, es_slot_key{svc, env, i});
  }
  std::optional<es_env> env(uint32_t id) const { return get<es_env>(MapId::Envs, id); }

 private:
  bool should_fail() {
    if (fail_in_ == 0) return false;
    return --fail_in_ == 0;
  }

  std::array<uint32_t, maps::kMapCount> caps_{};
  size_t fail_in_ = 0;
};

// --- describing ops (for failure messages) -------------------------------

inline std::string describe(const Op& op) {
  std::ostringstream o;
  o << (op.kind == Op::Update ? "update " : "remove ") << maps::map_name(op.map) << " ";
  switch (op.map) {
    case MapId::Frontends:
      o << maps::format_frontend(op.key_as<es_frontend_key>());
      if (op.kind == Op::Update) o << " -> svc " << op.value_as<es_frontend>().svc_id;
      break;
    case MapId::Sets: {
      auto k = op.key_as<es_set_key>();
      o << "{svc " << k.svc_id << ", env " << k.env_id << "}";
      if (op.kind == Op::Update) o << " count " << op.value_as<es_set>().count;
      break;
    }
    case MapId::Slots: {
      auto k = op.key_as<es_slot_key>();
      o << "{svc " << k.svc_id << ", env " << k.env_id << ", slot " << k.slot << "}";
      if (op.kind == Op::Update) o << " = " << maps::format_backend(op.value_as<es_backend>());
      break;
    }
    case MapId::Envs:
      o << op.key_as<uint32_t>();
      if (op.kind == Op::Update) {
        auto e = op.value_as<es_env>();
        o << " = \"" << maps::env_name_of(e) << "\" parent " << e.parent_id << " depth " << e.depth;
      }
      break;
    case MapId::EnvNames:
      o << "\"" << maps::env_name_of(op.key_as<es_env_name>()) << "\"";
      if (op.kind == Op::Update) o << " = " << op.value_as<uint32_t>();
      break;
    case MapId::Pods:
      o << "cgroup " << op.key_as<uint64_t>();
      if (op.kind == Op::Update) o << " env " << op.value_as<es_pod>().env_id;
      break;
    case MapId::Config:
      if (op.kind == Op::Update) {
        auto c = op.value_as<es_config>();
        o << "default_env " << c.default_env_id << " levels " << c.min_pod_level << ".."
          << c.max_pod_level;
      }
      break;
    default:
      break;
  }
  return o.str();
}

inline std::string describe(const std::vector<Op>& ops, size_t from = 0) {
  std::string out;
  for (size_t i = from; i < ops.size(); i++) out += "  #" + std::to_string(i) + " " + describe(ops[i]) + "\n";
  return out;
}

// --- semantics of a map state --------------------------------------------

// frontend ("127.96.0.1:80/TCP") -> env name ("" = base) -> backends ("127.1.0.1:8080")
using Routing = std::map<std::string, std::map<EnvName, std::set<std::string>>>;

struct Semantics {
  Routing routing;                      // sets as connect() sees them (slots [0,count))
  std::map<EnvName, EnvName> envs;      // name -> parent name ("" at the top)
  std::map<uint64_t, EnvName> pods;     // cgroup id -> env name
  std::optional<EnvName> default_env;   // from the config entry
  uint32_t min_level = 0, max_level = 0;

  bool operator==(const Semantics&) const = default;
};

inline std::string env_label(const MapState& s, uint32_t id) {
  if (id == ES_ENV_BASE) return "";
  auto it = at(s, MapId::Envs).find(bytes_of(id));
  if (it == at(s, MapId::Envs).end()) return "<unknown env id " + std::to_string(id) + ">";
  return maps::env_name_of(from_bytes<es_env>(it->second));
}

inline Semantics semantics(const MapState& s) {
  Semantics out;
  std::map<uint32_t, std::string> fe_by_svc;
  for (const auto& [k, v] : at(s, MapId::Frontends)) {
    auto key = from_bytes<es_frontend_key>(k);
    auto f = from_bytes<es_frontend>(v);
    fe_by_svc[f.svc_id] = maps::format_frontend(key);
    out.routing[maps::format_frontend(key)];  // a frontend without sets still counts
  }
  for (const auto& [k, v] : at(s, MapId::Sets)) {
    auto key = from_bytes<es_set_key>(k);
    auto set = from_bytes<es_set>(v);
    auto fe = fe_by_svc.find(key.svc_id);
    std::string fname = fe == fe_by_svc.end() ? "<orphan svc " + std::to_string(key.svc_id) + ">" : fe->second;
    auto& backends = out.routing[fname][env_label(s, key.env_id)];
    for (uint32_t i = 0; i < set.count; i++) {
      auto it = at(s, MapId::Slots).find(bytes_of(es_slot_key{key.svc_id, key.env_id, i}));
      backends.insert(it == at(s, MapId::Slots).end() ? "<missing slot>"
                                                       : maps::format_backend(from_bytes<es_backend>(it->second)));
    }
  }
  for (const auto& [k, v] : at(s, MapId::Envs)) {
    auto e = from_bytes<es_env>(v);
    out.envs[maps::env_name_of(e)] = e.parent_id == ES_ENV_NONE ? "" : env_label(s, e.parent_id);
  }
  for (const auto& [k, v] : at(s, MapId::Pods))
    out.pods[from_bytes<uint64_t>(k)] = env_label(s, from_bytes<es_pod>(v).env_id);
  auto cfg = at(s, MapId::Config).find(bytes_of(uint32_t{0}));
  if (cfg != at(s, MapId::Config).end()) {
    auto c = from_bytes<es_config>(cfg->second);
    out.default_env = env_label(s, c.default_env_id);
    out.min_level = c.min_pod_level;
    out.max_level = c.max_pod_level;
  }
  return out;
}

// What a DesiredState says, in the same terms.
inline Semantics semantics(const DesiredState& d, char splitter = '.') {
  Semantics out;
  for (const auto& [key, spec] : d.frontends) out.routing[maps::format_frontend(key)];
  for (const auto& [name, backends] : d.sets) {
    auto& set = out.routing[maps::format_frontend(name.frontend)][name.env];
    for (const auto& b : backends) set.insert(maps::format_backend(b.backend));
  }
  for (const auto& e : d.envs) {
    std::string parent;
    auto pos = e.rfind(splitter);
    if (pos != std::string::npos) parent = e.substr(0, pos);
    out.envs[e] = parent;
  }
  uint32_t min_level = ES_MAX_CGROUP_LEVEL, max_level = 0;
  for (const auto& [cg, pod] : d.pods) {
    out.pods[cg] = pod.env;
    min_level = std::min<uint32_t>(min_level, static_cast<uint32_t>(pod.level));
    max_level = std::max<uint32_t>(max_level, static_cast<uint32_t>(pod.level));
  }
  if (d.pods.empty()) min_level = 1, max_level = 0;
  out.default_env = d.default_env;
  out.min_level = min_level;
  out.max_level = max_level;
  return out;
}

inline std::string to_string(const Semantics& s) {
  std::ostringstream o;
  for (const auto& [fe, envs] : s.routing) {
    o << fe << ":";
    for (const auto& [env, bes] : envs) {
      o << " [" << (env.empty() ? "<base>" : env) << ":";
      for (const auto& b : bes) o << " " << b;
      o << "]";
    }
    o << "\n";
  }
  o << "envs:";
  for (const auto& [e, p] : s.envs) o << " " << e << "(^" << p << ")";
  o << "\npods:";
  for (const auto& [cg, e] : s.pods) o << " " << cg << "=" << (e.empty() ? "<base>" : e);
  o << "\ndefault env: " << (s.default_env ? (s.default_env->empty() ? "<base>" : *s.default_env) : "<no config>")
    << " levels " << s.min_level << ".." << s.max_level << "\n";
  return o.str();
}

// Entries no connect() can ever reach and no later apply would clean up:
// slots outside [0,count) of an existing set, sets of no frontend.
inline std::vector<std::string> garbage(const MapState& s) {
  std::vector<std::string> out;
  std::set<uint32_t> svcs;
  for (const auto& [k, v] : at(s, MapId::Frontends)) svcs.insert(from_bytes<es_frontend>(v).svc_id);
  for (const auto& [k, v] : at(s, MapId::Sets)) {
    auto key = from_bytes<es_set_key>(k);
    if (!svcs.count(key.svc_id))
      out.push_back("set {svc " + std::to_string(key.svc_id) + ", env " + std::to_string(key.env_id) +
                    "} belongs to no frontend");
  }
  for (const auto& [k, v] : at(s, MapId::Slots)) {
    auto key = from_bytes<es_slot_key>(k);
    auto it = at(s, MapId::Sets).find(bytes_of(es_set_key{key.svc_id, key.env_id}));
    if (it == at(s, MapId::Sets).end() || key.slot >= from_bytes<es_set>(it->second).count)
      out.push_back("slot {svc " + std::to_string(key.svc_id) + ", env " + std::to_string(key.env_id) +
                    ", slot " + std::to_string(key.slot) + "} is outside its set");
  }
  return out;
}

}  // namespace envsteer::fake
