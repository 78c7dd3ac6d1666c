// SPDX-License-Identifier: Apache-2.0
// Typed access to envsteer's BPF maps through a small adapter interface, so the
// reconciler can be tested against an in-memory fake (tests/unit) and runs
// against the pinned kernel maps (BpfMapBackend) in the agent.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>

#include "maps/abi.h"

namespace envsteer::maps {

// Every pinned map the agent reads or writes (socket and task storage are the
// programs' own and are not listed). The Datapath (agent/loader.h) owns one fd
// of each; everything else takes them from there.
enum class MapId {
  Frontends, Sets, Slots, Envs, EnvNames, Pods, Config, Counters, HttpCfg, Inject, Mismatch, CtxOff,
  // per-request steering (the relay)
  Sockhash, Binds, Upstreams, RelayClients, RelayDone, RelayCfg, RelayAcct, RelayEv, RelayPods, RelayPodDone, ReqStats, Rsp,
  Hints,
  // HTTP/2 per stream
  H2Cfg, H2Conns,
  // observability
  Decisions, TraceCfg, TraceRb,
  kCount
};
constexpr size_t kMapCount = static_cast<size_t>(MapId::kCount);

// Pinned name of each map (as in bpf/lib/maps.h).
const char* map_name(MapId id);
// Per-CPU maps hold one value per possible CPU.
bool per_cpu(MapId id);

// Key/value sizes of each map, from the ABI header.
size_t key_size(MapId id);
size_t value_size(MapId id);

class MapBackend {
 public:
  virtual ~MapBackend() = default;
  // 0 on success, -errno on failure.
  virtual int update(MapId map, const void* key, const void* value) = 0;
  virtual int remove(MapId map, const void* key) = 0;
  // N entries, keys and values packed (key_size() and value_size() apart),
  // written in order. 0 on success; on failure -errno, with *done the number
  // of entries written before it (all of them are then in the map). The
  // default writes them one by one with update().
  virtual int update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done);
  // true when found; value filled.
  virtual bool lookup(MapId map, const void* key, void* value) const = 0;
  virtual void for_each(MapId map,
                        const std::function<void(const void* key, const void* value)>& fn) const = 0;
  // max_entries of the map; 0 = unbounded (fake).
  virtual uint32_t capacity(MapId map) const = 0;
};

// Byte-wise ordering for the ABI structs so they can key std::map.
template <class T>
struct BytesLess {
  bool operator()(const T& a, const T& b) const { return std::memcmp(&a, &b, sizeof(T)) < 0; }
};
template <class T>
bool bytes_equal(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Addresses as the ABI stores them.
es_frontend_key make_frontend_key(const std::string& ip, uint16_t port, uint8_t proto);  // throws
es_backend make_backend(const std::string& ip, uint16_t port);                          // throws
bool parse_ip(const std::string& ip, uint32_t addr[4], uint8_t* family);
std::string format_addr(const uint32_t addr[4], uint8_t family);
std::string format_frontend(const es_frontend_key& k);  // "127.96.0.1:80/TCP", "[fd00::1]:80/UDP"
std::string format_backend(const es_backend& b);        // "127.1.0.3:8080"
// The same backend: address, port and family (its flags are no part of it).
inline bool same_backend(const es_backend& a, const es_backend& b) {
  return std::memcmp(a.addr, b.addr, sizeof(a.addr)) == 0 && a.port == b.port && a.family == b.family;
}
std::string env_name_of(const es_env& e);
std::string env_name_of(const es_env_name& e);
es_env_name make_env_name(std::string_view name);

}  // namespace envsteer::maps
