// SPDX-License-Identifier: Apache-2.0
// The relay's upstream pool: open, bind, settle and close upstreams, and what
// each still owes its client.
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

Relay::Upstream* Relay::open_upstream(uint64_t client, uint32_t svc_id, uint32_t env_id) {
  es_set_key sk{svc_id, env_id};
  es_set set{};
  if (bpf_map_lookup_elem(sets_, &sk, &set) != 0 || set.count == 0) {
    std::lock_guard<std::mutex> g(mu_);
    stats_.no_backend++;
    spdlog::warn("per-request steering: no ready pod in set (svc {}, env {}) for client {}", svc_id, env_id, client);
    return nullptr;
  }
  static thread_local std::mt19937 rng{std::random_device{}()};
  es_slot_key slk{svc_id, env_id, static_cast<uint32_t>(rng() % set.count)};
  es_backend be{};
  if (bpf_map_lookup_elem(slots_, &slk, &be) != 0) {
    slk.slot = 0;
    if (bpf_map_lookup_elem(slots_, &slk, &be) != 0) return nullptr;
  }
  sockaddr_storage ss{};
  socklen_t sl;
  int fam;
  if (be.family == ES_FAMILY_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    std::memcpy(&a->sin6_addr, be.addr, 16);
    a->sin6_port = be.port;
    sl = sizeof(*a);
    fam = AF_INET6;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = be.addr[0];
    a->sin_port = be.port;
    sl = sizeof(*a);
    fam = AF_INET;
  }
  std::string where = maps::format_backend(be);
  int fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return nullptr;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int rc = connect(fd, reinterpret_cast<sockaddr*>(&ss), sl);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = poll(&p, 1, static_cast<int>(o_.connect_timeout.count())) == 1 ? 0 : -1;
    int err = rc == 0 ? 0 : ETIMEDOUT;
    socklen_t l = sizeof(err);
    if (rc == 0) getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      errno = err;
      rc = -1;
    }
  }
  if (rc != 0) {
    int e = errno;
    close(fd);
    std::lock_guard<std::mutex> g(mu_);
    stats_.connect_failures++;
    spdlog::warn("per-request steering: connecting to {} for client {}: {}", where, client, errstr(e));
    return nullptr;
  }
  // Blocking from here, with a send timeout: the relay thread writes frames.
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  timeval tv{static_cast<time_t>(o_.send_timeout.count() / 1000),
             static_cast<suseconds_t>((o_.send_timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  Upstream u;
  u.fd = fd;
  u.cookie = socket_cookie(fd);
  u.client = client;
  u.svc_id = svc_id;
  u.env_id = env_id;
  u.backend = where;
  // Responses must find their client before the request leaves: the framing
  // tracker, the upstream entry, then the socket in the sockhash, then the
  // binding.
  es_rsp rz{};
  es_upstream ue{client, svc_id, env_id};
  uint64_t fdv = static_cast<uint64_t>(fd);
  es_bind_key bk{client, svc_id, env_id};
  es_bind b{u.cookie, static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  if (!u.cookie || bpf_map_update_elem(rsp_, &u.cookie, &rz, BPF_ANY) != 0 ||
      bpf_map_update_elem(upstreams_, &u.cookie, &ue, BPF_ANY) != 0 ||
      bpf_map_update_elem(sockhash_, &u.cookie, &fdv, BPF_ANY) != 0 ||
      bpf_map_update_elem(binds_, &bk, &b, BPF_ANY) != 0) {
    int e = errno;
    bpf_map_delete_elem(upstreams_, &u.cookie);
    bpf_map_delete_elem(rsp_, &u.cookie);
    close(fd);
    std::lock_guard<std::mutex> g(mu_);
    stats_.connect_failures++;
    spdlog::warn("per-request steering: registering the upstream to {}: {}", where, errstr(e));
    return nullptr;
  }
  epoll_event ev{};
  ev.events = EPOLLRDHUP;
  ev.data.u64 = u.cookie;
  epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev);
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.upstreams_opened++;
    stats_.active = ups_.size() + 1;
  }
  spdlog::debug("per-request steering: client {} -> {} (svc {}, env {}) bound", client, where, svc_id, env_id);
  auto [it, _] = ups_.emplace(u.cookie, u);
  return &it->second;
}

void Relay::close_upstream(uint64_t cookie, bool destroy, const char* why) {
  auto it = ups_.find(cookie);
  if (it == ups_.end()) return;
  Upstream u = it->second;
  ups_.erase(it);
  unbind(u);
  bpf_map_delete_elem(upstreams_, &cookie);
  epoll_ctl(epoll_, EPOLL_CTL_DEL, u.fd, nullptr);
  close(u.fd);
  bpf_map_delete_elem(rsp_, &cookie);
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.active = ups_.size();
  }
  spdlog::debug("per-request steering: upstream {} of client {} closed: {}", u.backend, u.client, why);
  if (destroy && client_alive(u.client)) destroy_client(u.client);
}

// Removes the binding of u's (client, set) when it still names this upstream:
// new requests of the client for that set then take the slow path.
void Relay::unbind(const Upstream& u) {
  es_bind_key bk{u.client, u.svc_id, u.env_id};
  es_bind b{};
  if (bpf_map_lookup_elem(binds_, &bk, &b) == 0 && b.upstream == u.cookie) bpf_map_delete_elem(binds_, &bk);
}

// Unbinds u, then fences its client: the sk_msg program runs under the client
// socket's lock and counts a kernel-path request (es_rsp.reqs) in the run that
// found the binding, so once a query that takes that lock has returned, every
// request that could still reach u is in the count, and no later one reaches it.
void Relay::settle(Upstream& u) {
  if (u.unbound) return;
  unbind(u);
  u.unbound = true;
  if (client_alive(u.client)) client_diag(u.client, SOCK_DIAG_BY_FAMILY, 1u << (INET_DIAG_INFO - 1));
}

Relay::Snapshot Relay::owed(const Upstream& u) const {
  Snapshot s;
  // TCP_INFO takes the upstream's socket lock: whatever the server sent
  // before its close has been through the verdict program.
  tcp_info ti{};
  socklen_t tl = sizeof(ti);
  getsockopt(u.fd, IPPROTO_TCP, TCP_INFO, &ti, &tl);
  es_rsp r{};
  if (bpf_map_lookup_elem(rsp_, &u.cookie, &r) != 0) return s;
  s.reqs = r.reqs + u.slow_reqs;
  s.done = r.done;
  s.phase = r.phase;
  s.status = r.status;
  if (u.req_unframed || r.phase == ES_RSP_P_DEAD || s.reqs < r.done)
    s.owed = Owed::Unframed;
  else if (r.phase == ES_RSP_P_UNTIL_CLOSE)
    s.owed = Owed::UntilClose;
  else if (r.phase != ES_RSP_P_IDLE)
    s.owed = Owed::Response;
  else if (s.reqs > r.done)
    s.owed = Owed::Request;
  else
    s.owed = Owed::Nothing;
  return s;
}

namespace {
const char* owed_str(int o) {
  switch (o) {
    case 0: return "nothing owed";
    case 1: return "a request unanswered";
    case 2: return "a response under way";
    case 3: return "a response framed by the close (or a tunnel) under way";
    default: return "framing the kernel could not follow";
  }
}
}  // namespace

// The server closed or reset the upstream. Decided from what it owes the
// client, whichever of this and the sweep came first.
void Relay::on_upstream_closed(uint64_t cookie) {
  auto it = ups_.find(cookie);
  if (it == ups_.end()) return;
  Upstream& u = it->second;
  epoll_ctl(epoll_, EPOLL_CTL_DEL, u.fd, nullptr);
  int err = 0;
  socklen_t l = sizeof(err);
  getsockopt(u.fd, SOL_SOCKET, SO_ERROR, &err, &l);
  settle(u);
  Snapshot s = owed(u);
  bool alive = client_alive(u.client);
  bool reset = alive && s.owed != Owed::Nothing;
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.closed_by_server++;
    if (reset) {
      switch (s.owed) {
        case Owed::Request: stats_.reset_request++; break;
        case Owed::Response: stats_.reset_response++; break;
        case Owed::UntilClose: stats_.reset_until_close++; break;
        default: stats_.reset_unframed++; break;
      }
    }
  }
  spdlog::info("per-request steering: upstream {} of client {} {} by the server with {} ({} requests, {} answered): {}",
               u.backend, u.client, err ? "reset (" + errstr(err) + ")" : std::string("closed"),
               owed_str(static_cast<int>(s.owed)), s.reqs, s.done,
               !alive  ? "the client is gone"
               : reset ? "the client connection is reset"
                       : "the client's next request for it binds a new upstream");
  close_upstream(cookie, reset, "closed by the server");
}

void Relay::forget_client(uint64_t client) {
  bpf_map_delete_elem(clients_, &client);
  bpf_map_delete_elem(done_, &client);
}

}  // namespace envsteer
