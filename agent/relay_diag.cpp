// SPDX-License-Identifier: Apache-2.0
// Client resets and fences through sock_diag (SOCK_DESTROY, locked queries).
#include "relay.h"

#include <bpf/bpf.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "maps/abi.h"

#include "relay_internal.h"

namespace envsteer {

using namespace relay_detail;

// A sock_diag request for the client connection (its exact socket: addresses
// and cookie): SOCK_DESTROY, or SOCK_DIAG_BY_FAMILY with ext (a query whose
// INET_DIAG_INFO takes the socket's lock). 0 or an errno.
int Relay::client_diag(uint64_t client, uint16_t type, uint8_t ext) const {
  es_relay_client rc{};
  if (bpf_map_lookup_elem(clients_map_, &client, &rc) != 0) return ENOENT;
  UniqueFd nl(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return errno;
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 r;
  } req{};
  req.nlh.nlmsg_len = sizeof(req);
  req.nlh.nlmsg_type = type;
  req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  req.r.sdiag_family = rc.family == ES_FAMILY_INET6 ? AF_INET6 : AF_INET;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_ext = ext;
  req.r.idiag_states = ~0u;
  req.r.id.idiag_sport = rc.lport;
  req.r.id.idiag_dport = rc.rport;
  std::memcpy(req.r.id.idiag_src, rc.laddr, sizeof(rc.laddr));
  std::memcpy(req.r.id.idiag_dst, rc.raddr, sizeof(rc.raddr));
  req.r.id.idiag_cookie[0] = static_cast<uint32_t>(client);
  req.r.id.idiag_cookie[1] = static_cast<uint32_t>(client >> 32);
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  int err = EIO;
  // The kernel answers within sendto(); the reply is read to learn the outcome.
  if (sendto(nl.get(), &req, sizeof(req), 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == sizeof(req)) {
    alignas(nlmsghdr) char ack[4096];
    pollfd p{nl.get(), POLLIN, 0};
    if (poll(&p, 1, 1000) == 1) {
      ssize_t r = recv(nl.get(), ack, sizeof(ack), 0);
      auto* h = reinterpret_cast<nlmsghdr*>(ack);
      if (r >= static_cast<ssize_t>(sizeof(nlmsghdr) + sizeof(nlmsgerr)) && h->nlmsg_type == NLMSG_ERROR)
        err = -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
      else if (r >= static_cast<ssize_t>(sizeof(nlmsghdr)) && h->nlmsg_type == type)
        err = 0;
    }
  } else {
    err = errno;
  }
  return err;
}

bool Relay::destroy_client(uint64_t client) {
  es_relay_client rc{};
  if (bpf_map_lookup_elem(clients_map_, &client, &rc) != 0) return false;
  int err = client_diag(client, SOCK_DESTROY, 0);
  if (err == 0) {
    count(RelayCounter::clients_destroyed);
    spdlog::info("per-request steering: client connection {} reset", client);
  } else {
    count(RelayCounter::destroy_failures);
    spdlog::warn("per-request steering: could not reset client connection {}: {}", client, errstr(err));
  }
  return err == 0;
}

}  // namespace envsteer
