// SPDX-License-Identifier: Apache-2.0
#include "maps/maps.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <stdexcept>

namespace envsteer::maps {

const char* map_name(MapId id) {
  switch (id) {
    case MapId::Frontends: return ES_MAP_FRONTENDS;
    case MapId::Sets: return ES_MAP_SETS;
    case MapId::Slots: return ES_MAP_SLOTS;
    case MapId::Envs: return ES_MAP_ENVS;
    case MapId::EnvNames: return ES_MAP_ENV_NAMES;
    case MapId::Pods: return ES_MAP_PODS;
    case MapId::Config: return ES_MAP_CONFIG;
    case MapId::Counters: return ES_MAP_COUNTERS;
    case MapId::HttpCfg: return ES_MAP_HTTP_CFG;
    case MapId::Inject: return ES_MAP_INJECT;
    case MapId::Mismatch: return ES_MAP_MISMATCH;
    case MapId::CtxOff: return ES_MAP_CTX_OFF;
    case MapId::Sockhash: return ES_MAP_SOCKHASH;
    case MapId::Binds: return ES_MAP_BINDS;
    case MapId::Upstreams: return ES_MAP_UPSTREAMS;
    case MapId::RelayClients: return ES_MAP_RELAY_CLIENTS;
    case MapId::RelayDone: return ES_MAP_RELAY_DONE;
    case MapId::RelayCfg: return ES_MAP_RELAY_CFG;
    case MapId::RelayAcct: return ES_MAP_RELAY_ACCT;
    case MapId::RelayEv: return ES_MAP_RELAY_EV;
    case MapId::RelayPods: return ES_MAP_RELAY_PODS;
    case MapId::RelayPodDone: return ES_MAP_RELAY_POD_DONE;
    case MapId::ReqStats: return ES_MAP_REQ_STATS;
    case MapId::Rsp: return ES_MAP_RSP;
    case MapId::H2Cfg: return ES_MAP_H2_CFG;
    case MapId::H2Conns: return ES_MAP_H2_CONNS;
    case MapId::Hints: return ES_MAP_HINTS;
    case MapId::Decisions: return ES_MAP_DECISIONS;
    case MapId::TraceCfg: return ES_MAP_TRACE_CFG;
    case MapId::TraceRb: return ES_MAP_TRACE_RB;
    case MapId::kCount: break;
  }
  return "?";
}

bool per_cpu(MapId id) {
  return id == MapId::Counters || id == MapId::ReqStats || id == MapId::Decisions;
}

size_t key_size(MapId id) {
  switch (id) {
    case MapId::Frontends: return sizeof(es_frontend_key);
    case MapId::Sets: return sizeof(es_set_key);
    case MapId::Slots: return sizeof(es_slot_key);
    case MapId::Envs: return sizeof(__u32);
    case MapId::EnvNames: return sizeof(es_env_name);
    case MapId::Pods: return sizeof(__u64);
    case MapId::Config: return sizeof(__u32);
    case MapId::Counters: return sizeof(__u32);
    case MapId::HttpCfg: return sizeof(__u32);
    case MapId::Inject: return sizeof(__u32);
    case MapId::Mismatch: return sizeof(__u32);
    case MapId::CtxOff: return sizeof(__u32);
    case MapId::Sockhash: return sizeof(__u64);
    case MapId::Binds: return sizeof(es_bind_key);
    case MapId::Upstreams: return sizeof(__u64);
    case MapId::RelayClients: return sizeof(__u64);
    case MapId::RelayDone: return sizeof(__u64);
    case MapId::RelayCfg: return sizeof(__u32);
    case MapId::RelayAcct: return sizeof(__u32);
    case MapId::RelayEv: return 0;
    case MapId::RelayPods: return sizeof(__u64);
    case MapId::RelayPodDone: return sizeof(__u64);
    case MapId::ReqStats: return sizeof(es_req_key);
    case MapId::Rsp: return sizeof(__u64);
    case MapId::H2Cfg: return sizeof(__u32);
    case MapId::H2Conns: return sizeof(es_h2_conn_key);
    case MapId::Hints: return sizeof(es_hint_key);
    case MapId::Decisions: return sizeof(es_decision_key);
    case MapId::TraceCfg: return sizeof(__u32);
    case MapId::TraceRb: return 0;
    case MapId::kCount: break;
  }
  return 0;
}

size_t value_size(MapId id) {
  switch (id) {
    case MapId::Frontends: return sizeof(es_frontend);
    case MapId::Sets: return sizeof(es_set);
    case MapId::Slots: return sizeof(es_backend);
    case MapId::Envs: return sizeof(es_env);
    case MapId::EnvNames: return sizeof(__u32);
    case MapId::Pods: return sizeof(es_pod);
    case MapId::Config: return sizeof(es_config);
    case MapId::Counters: return sizeof(__u64);
    case MapId::HttpCfg: return sizeof(es_http_cfg);
    case MapId::Inject: return sizeof(es_inject_cfg);
    case MapId::Mismatch: return sizeof(__u64);
    case MapId::CtxOff: return sizeof(es_ctx_off);
    case MapId::Sockhash: return sizeof(__u64);
    case MapId::Binds: return sizeof(es_bind);
    case MapId::Upstreams: return sizeof(es_upstream);
    case MapId::RelayClients: return sizeof(es_relay_client);
    case MapId::RelayDone: return sizeof(es_relay_done);
    case MapId::RelayCfg: return sizeof(es_relay_cfg);
    case MapId::RelayAcct: return sizeof(es_relay_acct);
    case MapId::RelayEv: return 0;
    case MapId::RelayPods: return sizeof(es_relay_pod);
    case MapId::RelayPodDone: return sizeof(__u64);
    case MapId::ReqStats: return sizeof(__u64);
    case MapId::Rsp: return sizeof(es_rsp);
    case MapId::H2Cfg: return sizeof(es_h2_cfg);
    case MapId::H2Conns: return sizeof(es_h2_conn);
    case MapId::Hints: return sizeof(es_hint);
    case MapId::Decisions: return sizeof(__u64);
    case MapId::TraceCfg: return sizeof(es_trace_cfg);
    case MapId::TraceRb: return 0;
    case MapId::kCount: break;
  }
  return 0;
}

bool parse_ip(const std::string& ip, uint32_t addr[4], uint8_t* family) {
  addr[0] = addr[1] = addr[2] = addr[3] = 0;
  in_addr a4{};
  if (inet_pton(AF_INET, ip.c_str(), &a4) == 1) {
    addr[0] = a4.s_addr;
    *family = ES_FAMILY_INET;
    return true;
  }
  in6_addr a6{};
  if (inet_pton(AF_INET6, ip.c_str(), &a6) == 1) {
    std::memcpy(addr, &a6, 16);
    *family = ES_FAMILY_INET6;
    return true;
  }
  return false;
}

es_frontend_key make_frontend_key(const std::string& ip, uint16_t port, uint8_t proto) {
  es_frontend_key k{};
  if (!parse_ip(ip, k.addr, &k.family)) throw std::invalid_argument("invalid IP address \"" + ip + "\"");
  k.port = htons(port);
  k.proto = proto;
  return k;
}

es_backend make_backend(const std::string& ip, uint16_t port) {
  es_backend b{};
  if (!parse_ip(ip, b.addr, &b.family)) throw std::invalid_argument("invalid IP address \"" + ip + "\"");
  b.port = htons(port);
  return b;
}

std::string format_addr(const uint32_t addr[4], uint8_t family) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == ES_FAMILY_INET) {
    inet_ntop(AF_INET, &addr[0], buf, sizeof(buf));
  } else {
    inet_ntop(AF_INET6, addr, buf, sizeof(buf));
  }
  return buf;
}

static std::string with_port(const std::string& a, uint8_t family, uint16_t port_be) {
  std::string p = std::to_string(ntohs(port_be));
  return family == ES_FAMILY_INET6 ? "[" + a + "]:" + p : a + ":" + p;
}

std::string format_frontend(const es_frontend_key& k) {
  const char* proto = k.proto == IPPROTO_TCP ? "TCP" : k.proto == IPPROTO_UDP ? "UDP" : "?";
  return with_port(format_addr(k.addr, k.family), k.family, k.port) + "/" + proto;
}

std::string format_backend(const es_backend& b) {
  return with_port(format_addr(b.addr, b.family), b.family, b.port);
}

std::string env_name_of(const es_env& e) {
  return std::string(e.name, strnlen(e.name, sizeof(e.name)));
}

std::string env_name_of(const es_env_name& e) {
  return std::string(e.name, strnlen(e.name, sizeof(e.name)));
}

es_env_name make_env_name(std::string_view name) {
  es_env_name n{};
  std::memcpy(n.name, name.data(), std::min(name.size(), sizeof(n.name) - 1));
  return n;
}

int MapBackend::update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done) {
  const auto* k = static_cast<const unsigned char*>(keys);
  const auto* v = static_cast<const unsigned char*>(values);
  for (uint32_t i = 0; i < n; i++) {
    if (int err = update(map, k + i * key_size(map), v + i * value_size(map)); err != 0) {
      *done = i;
      return err;
    }
  }
  *done = n;
  return 0;
}

}  // namespace envsteer::maps
