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
#include <set>

#include "maps/abi.h"

#include "relay_internal.h"

namespace envsteer {

using namespace relay_detail;

// A sock_diag request for the client connection (its exact socket: addresses
// and cookie): SOCK_DESTROY, or SOCK_DIAG_BY_FAMILY with ext (a query whose
// INET_DIAG_INFO takes the socket's lock). 0 or an errno; -1: not a client the
// relay holds or the kernel has an es_relay_clients entry of.
// One netlink socket, kept: every request is answered within sendto(), and
// its answers (a diag message, then the acknowledgement) are read at once.
// The request goes to the sock_diag of the client's own network namespace
// (its pod's): a socket is found only by a netlink socket of its namespace.
int Relay::client_diag(uint64_t client, uint16_t type, uint8_t ext) {
  es_relay_client rc{};
  std::shared_ptr<const podnet::NetNs> ns;
  if (auto it = clients_.find(client); it != clients_.end()) {
    rc = it->second.rc;  // its addresses do not change
    ns = it->second.ns;
  } else {
    if (bpf_map_lookup_elem(clients_map_, &client, &rc) != 0) return -1;
    ns = client_ns(client, rc.pod_cgroup);
  }
  int fd = diag_socket(ns.get());
  if (fd < 0) return errno;
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 r;
  } req{};
  req.nlh.nlmsg_len = sizeof(req);
  req.nlh.nlmsg_type = type;
  req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  req.nlh.nlmsg_seq = ++diag_seq_;
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
  if (sendto(fd, &req, sizeof(req), 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != sizeof(req)) {
    int e = errno;
    if (ns) diags_.erase(ns->ino);
    else diag_.reset();
    return e;
  }
  int err = EIO;
  alignas(nlmsghdr) char buf[8192];
  for (int i = 0; i < 8; i++) {  // the answers are queued already; stale ones (older seq) are skipped
    ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (r <= 0) break;
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(r)); h = NLMSG_NEXT(h, r)) {
      if (h->nlmsg_seq != diag_seq_) continue;
      if (h->nlmsg_type == NLMSG_ERROR && h->nlmsg_len >= NLMSG_LENGTH(sizeof(nlmsgerr)))
        return -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;  // the acknowledgement ends it
      if (h->nlmsg_type == type) err = 0;
    }
  }
  return err;
}

// The netlink socket for sock_diag in ns (nullptr: the agent's namespace),
// made on first use and kept while the namespace is in use here. -1: errno.
int Relay::diag_socket(const podnet::NetNs* ns) {
  constexpr int type = SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK;
  if (!ns) {
    if (!diag_) diag_.reset(socket(AF_NETLINK, type, NETLINK_SOCK_DIAG));
    return diag_.get();
  }
  UniqueFd& d = diags_[ns->ino];
  if (!d) d.reset(podnet::socket_in(ns, AF_NETLINK, type, NETLINK_SOCK_DIAG));
  int fd = d.get();
  if (fd < 0) {
    int e = errno;
    diags_.erase(ns->ino);
    errno = e;
  }
  return fd;
}

// The network namespace of a client's pod (nullptr: the agent's own, or not
// found: counted, and the relay works in its own namespace for that client).
std::shared_ptr<const podnet::NetNs> Relay::client_ns(uint64_t client, uint64_t pod) {
  if (!o_.pod_dir) return nullptr;
  auto l = nets_.get(pod);
  if (!l.found) {
    count(RelayCounter::netns_unknown);
    if (netns_warned_.size() > 4096) netns_warned_.clear();
    if (netns_warned_.insert(pod).second)
      spdlog::warn("per-request steering: the network namespace of client {}'s pod (cgroup {}) is not found ({}): "
                   "its upstreams and resets are made in the agent's namespace",
                   client, pod, nets_.last_error());
  }
  return l.ns;
}

// Handles of pods with no client here are dropped (a handle keeps its
// namespace alive), and so are sock_diag sockets of namespaces not in use. A
// pod in the agent's own namespace (no namespace handle, only its process's
// pidfd) keeps its entry for two seconds after its last new client, so that a
// pod whose clients come one after another is not looked up again for each.
void Relay::drop_pod_nets() {
  auto now = std::chrono::steady_clock::now();
  for (uint64_t pod : nets_.pods()) {
    if (pod_clients_.count(pod)) continue;
    auto seen = pod_seen_.find(pod);
    if (seen != pod_seen_.end() && now - seen->second < std::chrono::seconds(2)) continue;
    nets_.forget(pod);
    if (seen != pod_seen_.end()) pod_seen_.erase(seen);
  }
  std::erase_if(pod_seen_, [&](const auto& e) { return now - e.second >= std::chrono::seconds(2); });
  std::set<uint64_t> live;
  for (const auto& [k, c] : clients_)
    if (c.ns) live.insert(c.ns->ino);
  for (const auto& [k, u] : ups_)
    if (u.ns) live.insert(u.ns->ino);
  for (auto it = diags_.begin(); it != diags_.end();) {
    if (!live.count(it->first) && !nets_.by_ino(it->first)) it = diags_.erase(it);
    else ++it;
  }
}

bool Relay::destroy_client(uint64_t client) {
  int err = client_diag(client, SOCK_DESTROY, 0);
  if (err == -1) return false;  // not a client the kernel framed for
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
