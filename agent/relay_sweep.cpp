// SPDX-License-Identifier: Apache-2.0
// The relay's sweep: clients gone, idle upstreams, pods that left their set.
#include "relay.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>

#include "maps/abi.h"

#include "relay_internal.h"

namespace envsteer {

using namespace relay_detail;

bool Relay::client_alive(uint64_t client) const {
  uint64_t v = 0;
  return bpf_map_lookup_elem(sockhash_, &client, &v) == 0;
}

void Relay::sweep() {
  std::vector<std::pair<uint64_t, int>> to_close;  // cookie, reason
  for (auto& [cookie, u] : ups_) {
    if (!client_alive(u.client)) {
      to_close.emplace_back(cookie, 0);
      continue;
    }
    if (!u.unbound) {
      bool pod_gone = true;
      es_set_key sk{u.svc_id, u.env_id};
      es_set set{};
      if (bpf_map_lookup_elem(sets_, &sk, &set) == 0)
        for (uint32_t i = 0; i < set.count && i < 4096; i++) {
          es_slot_key k{u.svc_id, u.env_id, i};
          es_backend be{};
          if (bpf_map_lookup_elem(slots_, &k, &be) == 0 && maps::format_backend(be) == u.backend) {
            pod_gone = false;
            break;
          }
        }
      bool idle = idle_ms(u.fd) >= static_cast<uint64_t>(o_.idle_timeout.count());
      if (!pod_gone && !idle) continue;
      // Unbind first: new requests take the slow path to a fresh upstream;
      // this one closes once it owes the client nothing.
      settle(u);
      std::lock_guard<std::mutex> g(mu_);
      (pod_gone ? stats_.closed_pod_gone : stats_.closed_idle)++;
      spdlog::info("per-request steering: upstream {} of client {} unbound: {}", u.backend, u.client,
                   pod_gone ? "its pod left the set" : "idle");
    }
    if (owed(u).owed == Owed::Nothing) to_close.emplace_back(cookie, 1);
  }
  for (auto [cookie, why] : to_close) {
    if (why == 0) {
      std::lock_guard<std::mutex> g(mu_);
      stats_.closed_client_gone++;
    }
    close_upstream(cookie, false, why == 0 ? "client closed" : "unbound, nothing owed");
  }
  // Clients gone: forget their relay entries (bounded work per sweep).
  size_t checked = 0;
  for (uint64_t c : m_.keys<uint64_t>(maps::MapId::RelayClients)) {
    if (++checked > 4096) break;
    if (client_alive(c)) continue;
    bool has_upstream = false;
    for (auto& [k, u] : ups_) has_upstream |= u.client == c;
    if (!has_upstream) forget_client(c);
  }
}

}  // namespace envsteer
