// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the relay's files (relay*.cpp); not part of its interface.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace envsteer::relay_detail {

inline std::string errstr(int e) { return std::strerror(e); }

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

}  // namespace envsteer::relay_detail
