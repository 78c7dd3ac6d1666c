// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the relay's files (relay*.cpp); not part of its interface.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "maps/abi.h"

namespace envsteer::relay_detail {

inline std::string errstr(int e) { return std::strerror(e); }

// epoll tags of the relay's own descriptors (relay socket i: kTagRelay + i);
// every other tag is an upstream's socket cookie (cookies count up from 1 and
// never reach these).
constexpr uint64_t kTagWake = ~0ull, kTagEvents = ~0ull - 1, kTagRelay = ~0ull - 2 - ES_RELAY_SOCKETS_MAX;

inline void add_epoll(int ep, int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

inline uint64_t socket_cookie(int fd) {
  uint64_t c = 0;
  socklen_t l = sizeof(c);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l) != 0) return 0;
  return c;
}

// Milliseconds since the socket last sent or received data.
inline uint64_t idle_ms(int fd) {
  tcp_info ti{};
  socklen_t l = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0) return 0;
  return std::min<uint64_t>(ti.tcpi_last_data_sent, ti.tcpi_last_data_recv);
}

// The socket address of a backend; returns its length.
inline socklen_t backend_sockaddr(const es_backend& be, sockaddr_storage* ss) {
  *ss = {};
  if (be.family == ES_FAMILY_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(ss);
    a->sin6_family = AF_INET6;
    std::memcpy(&a->sin6_addr, be.addr, 16);
    a->sin6_port = be.port;
    return sizeof(*a);
  }
  auto* a = reinterpret_cast<sockaddr_in*>(ss);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = be.addr[0];
  a->sin_port = be.port;
  return sizeof(*a);
}

}  // namespace envsteer::relay_detail
