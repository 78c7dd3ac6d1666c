// SPDX-License-Identifier: Apache-2.0
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

namespace envsteer {
namespace {

std::string errstr(int e) { return std::strerror(e); }

uint64_t socket_cookie(int fd) {
  uint64_t c = 0;
  socklen_t l = sizeof(c);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l) != 0) return 0;
  return c;
}

// Milliseconds since the socket last sent or received data.
uint64_t idle_ms(int fd) {
  tcp_info ti{};
  socklen_t l = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0) return 0;
  return std::min<uint64_t>(ti.tcpi_last_data_sent, ti.tcpi_last_data_recv);
}

}  // namespace

Relay::Relay(const maps::BpfMapBackend& m, RelayOptions o) : m_(m), o_(o) {
  using maps::MapId;
  binds_ = m.fd(MapId::Binds);
  upstreams_ = m.fd(MapId::Upstreams);
  clients_ = m.fd(MapId::RelayClients);
  done_ = m.fd(MapId::RelayDone);
  cfg_ = m.fd(MapId::RelayCfg);
  sockhash_ = m.fd(MapId::Sockhash);
  sets_ = m.fd(MapId::Sets);
  slots_ = m.fd(MapId::Slots);
  rsp_ = m.fd(MapId::Rsp);
  es_http_cfg_init(&http_cfg_, '.', 0);
  epoll_ = epoll_create1(EPOLL_CLOEXEC);
  wake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_ < 0 || wake_ < 0) throw std::runtime_error("per-request steering: epoll/eventfd: " + errstr(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 1;
  epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev);
}

Relay::~Relay() {
  stop();
  for (int fd : {epoll_, wake_})  // the map fds are the Datapath's
    if (fd >= 0) close(fd);
}

// A connected loopback pair; the listener is closed before anything else can
// connect to it, and the accepted end must be our own connecting socket.
void Relay::reset_relay_socket() {
  if (relay_ >= 0) {
    epoll_ctl(epoll_, EPOLL_CTL_DEL, relay_, nullptr);
    close(relay_);
  }
  if (relay_peer_ >= 0) close(relay_peer_);
  relay_ = relay_peer_ = -1;
  buf_.clear();
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  if (l < 0 || bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l, 1) != 0 ||
      getsockname(l, reinterpret_cast<sockaddr*>(&a), &al) != 0) {
    int e = errno;
    if (l >= 0) close(l);
    throw std::runtime_error("per-request steering: relay socket: " + errstr(e));
  }
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 || connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    int e = errno;
    close(l);
    if (c >= 0) close(c);
    throw std::runtime_error("per-request steering: relay connect: " + errstr(e));
  }
  sockaddr_in mine{}, peer{};
  socklen_t ml = sizeof(mine), pl = sizeof(peer);
  getsockname(c, reinterpret_cast<sockaddr*>(&mine), &ml);
  int s = accept4(l, reinterpret_cast<sockaddr*>(&peer), &pl, SOCK_CLOEXEC);
  close(l);
  if (s < 0 || peer.sin_port != mine.sin_port || peer.sin_addr.s_addr != mine.sin_addr.s_addr) {
    if (s >= 0) close(s);
    close(c);
    throw std::runtime_error("per-request steering: relay socket accepted a stranger");
  }
  relay_ = s;
  relay_peer_ = c;
  int fl = fcntl(relay_, F_GETFL);
  fcntl(relay_, F_SETFL, fl | O_NONBLOCK);
  relay_cookie_ = socket_cookie(relay_);
  uint64_t fdv = static_cast<uint64_t>(relay_);
  if (!relay_cookie_ || bpf_map_update_elem(sockhash_, &relay_cookie_, &fdv, BPF_ANY) != 0)
    throw std::runtime_error("per-request steering: adding the relay socket to es_sockhash: " + errstr(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  epoll_ctl(epoll_, EPOLL_CTL_ADD, relay_, &ev);
  es_relay_cfg rc{};
  rc.relay = relay_cookie_;
  rc.max_frames = o_.max_frames;
  uint32_t zero = 0;
  if (bpf_map_update_elem(cfg_, &zero, &rc, BPF_ANY) != 0)
    throw std::runtime_error("per-request steering: writing es_relay_cfg: " + errstr(errno));
}

void Relay::cleanup_previous() {
  // Upstreams die with the agent that opened them, and frames queued on its
  // relay socket are lost: the clients that had either are destroyed (their
  // applications see a reset and reconnect) rather than left waiting.
  std::set<uint64_t> victims;
  for (const auto& k : m_.keys<es_bind_key>(maps::MapId::Binds)) victims.insert(k.client);
  for (uint64_t c : m_.keys<uint64_t>(maps::MapId::RelayClients)) {
    es_relay_client rc{};
    uint32_t done = 0;
    if (bpf_map_lookup_elem(clients_, &c, &rc) != 0) continue;
    bpf_map_lookup_elem(done_, &c, &done);
    if (rc.sent != done) victims.insert(c);
  }
  size_t destroyed = 0;
  for (uint64_t c : victims)
    if (client_alive(c) && destroy_client(c)) destroyed++;
  size_t stale = 0;
  for (const auto& k : m_.keys<es_bind_key>(maps::MapId::Binds)) stale += bpf_map_delete_elem(binds_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::Upstreams)) stale += bpf_map_delete_elem(upstreams_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::RelayClients)) stale += bpf_map_delete_elem(clients_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::RelayDone)) stale += bpf_map_delete_elem(done_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::Rsp)) stale += bpf_map_delete_elem(rsp_, &k) == 0;
  if (stale || destroyed)
    spdlog::info("per-request steering: removed {} entries of the previous agent; {} client connection(s) "
                 "with re-routed requests in flight reset",
                 stale, destroyed);
}

void Relay::start() {
  cleanup_previous();
  reset_relay_socket();
  running_ = true;
  thread_ = std::thread([this] { loop(); });
  spdlog::info("per-request steering: relay socket ready (cookie {}), idle timeout {} ms, {} frames per client",
               relay_cookie_, o_.idle_timeout.count(), o_.max_frames);
}

void Relay::stop() {
  if (!running_.exchange(false)) return;
  uint64_t one = 1;
  if (write(wake_, &one, sizeof(one)) < 0) { /* the thread also wakes on its timeout */
  }
  if (thread_.joinable()) thread_.join();
  uint32_t zero = 0;
  es_relay_cfg rc{};
  bpf_map_update_elem(cfg_, &zero, &rc, BPF_ANY);
  std::vector<uint64_t> cookies;
  for (auto& [c, u] : ups_) cookies.push_back(c);
  for (uint64_t c : cookies) close_upstream(c, false, "agent stopping");
  if (relay_ >= 0) close(relay_);
  if (relay_peer_ >= 0) close(relay_peer_);
  relay_ = relay_peer_ = -1;
}

RelayStats Relay::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return stats_;
}

nlohmann::json Relay::status_json() const {
  RelayStats s = stats();
  return {{"relay_cookie", relay_cookie_},
          {"upstreams_active", s.active},
          {"frames", s.frames},
          {"bytes", s.bytes},
          {"upstreams_opened", s.upstreams_opened},
          {"connect_failures", s.connect_failures},
          {"no_backend", s.no_backend},
          {"closed", {{"client_gone", s.closed_client_gone},
                      {"idle", s.closed_idle},
                      {"by_server", s.closed_by_server},
                      {"pod_gone", s.closed_pod_gone}}},
          {"clients_destroyed", s.clients_destroyed},
          {"client_resets", {{"request_unanswered", s.reset_request},
                             {"response_cut", s.reset_response},
                             {"until_close", s.reset_until_close},
                             {"unframed", s.reset_unframed},
                             {"reorder", s.reset_reorder}}},
          {"protocol_errors", s.protocol_errors},
          {"forward_failures", s.forward_failures}};
}

bool Relay::client_alive(uint64_t client) const {
  uint64_t v = 0;
  return bpf_map_lookup_elem(sockhash_, &client, &v) == 0;
}

void Relay::loop() {
  auto next_sweep = std::chrono::steady_clock::now();
  while (running_) {
    epoll_event evs[32];
    int n = epoll_wait(epoll_, evs, 32, 200);
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == 1) {
        uint64_t v;
        while (read(wake_, &v, sizeof(v)) > 0) {
        }
      } else if (tag == 0) {
        on_relay_readable();
      } else if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        on_upstream_closed(tag);
      }
    }
    if (std::chrono::steady_clock::now() >= next_sweep) {
      sweep();
      next_sweep = std::chrono::steady_clock::now() + std::chrono::milliseconds(250);
    }
  }
}

void Relay::on_relay_readable() {
  uint8_t tmp[65536];
  for (int round = 0; round < 64; round++) {
    ssize_t r = recv(relay_, tmp, sizeof(tmp), 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (r <= 0) {
      spdlog::error("per-request steering: relay socket {}: re-creating it",
                    r == 0 ? "closed" : errstr(errno));
      reset_relay_socket();
      return;
    }
    buf_.insert(buf_.end(), tmp, tmp + r);
    size_t off = 0;
    while (buf_.size() - off >= sizeof(es_relay_hdr)) {
      es_relay_hdr h{};
      std::memcpy(&h, buf_.data() + off, sizeof(h));
      if (h.magic != ES_RELAY_MAGIC || h.len > o_.max_frame_bytes) {
        // Only the kernel writes here; a broken stream means a bug: start over.
        spdlog::error("per-request steering: bad frame on the relay socket (magic {:#x}, len {}): re-creating it",
                      h.magic, h.len);
        {
          std::lock_guard<std::mutex> g(mu_);
          stats_.protocol_errors++;
        }
        reset_relay_socket();
        return;
      }
      if (buf_.size() - off < sizeof(h) + h.len) break;
      handle_frame(h, buf_.data() + off + sizeof(h), h.len);
      off += sizeof(h) + h.len;
    }
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<long>(off));
  }
}

void Relay::handle_frame(const es_relay_hdr& h, const uint8_t* payload, size_t n) {
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.frames++;
    stats_.bytes += n;
  }
  auto same = [&](const Upstream& u) { return u.client == h.client && u.svc_id == h.svc_id && u.env_id == h.env_id; };
  Upstream* up = nullptr;
  for (auto& [c, u] : ups_)
    if (same(u) && !u.unbound) {
      up = &u;
      break;
    }
  if (up) {
    // Closed by its server before this request came (its FIN not handled yet):
    // settled first, the request then goes to a new upstream.
    pollfd p{up->fd, POLLRDHUP, 0};
    if (poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
      on_upstream_closed(up->cookie);
      up = nullptr;
    }
  }
  bool refused = false;
  if (!up && client_alive(h.client))
    for (auto& [c, u] : ups_)
      if (same(u) && owed(u).owed != Owed::Nothing) {
        // The target's previous upstream still owes this client a response (a
        // pipelined request, or framing the kernel could not follow): on a new
        // upstream the answers could overtake each other. Refused, visibly.
        spdlog::warn("per-request steering: client {} sent a request for a target whose previous upstream {} "
                     "still owes it a response: the client connection is reset",
                     h.client, u.backend);
        std::lock_guard<std::mutex> g(mu_);
        stats_.reset_reorder++;
        refused = true;
        break;
      }
  if (!up && !refused && client_alive(h.client)) up = open_upstream(h.client, h.svc_id, h.env_id);
  bool ok = false;
  if (up) {
    // Count the request heads before they go: the response may come at once.
    for (size_t off = 0; off < n && !up->req_unframed;) {
      __u32 used = 0;
      int ev = es_http_feed_buf(&up->req, &http_cfg_, payload + off, static_cast<__u32>(n - off),
                                ES_HTTP_EV_HEADERS, &used);
      off += used;
      if (ev & ES_HTTP_EV_HEADERS) up->slow_reqs++;
      if ((ev & ES_HTTP_EV_NOT_HTTP) && up->req.err != ES_HTTP_ERR_TUNNEL) up->req_unframed = true;
      if (used == 0 || (ev & ES_HTTP_EV_NOT_HTTP)) break;
    }
    size_t sent = 0;
    while (sent < n) {
      ssize_t w = send(up->fd, payload + sent, n - sent, MSG_NOSIGNAL);
      if (w <= 0) break;
      sent += static_cast<size_t>(w);
    }
    ok = sent == n;
    if (!ok) {
      spdlog::warn("per-request steering: forwarding to {} failed: {}", up->backend, errstr(errno));
      std::lock_guard<std::mutex> g(mu_);
      stats_.forward_failures++;
    }
  }
  // The frame is done either way: later requests of this client must not wait for it.
  uint32_t seq = h.seq;
  bpf_map_update_elem(done_, &h.client, &seq, BPF_ANY);
  if (!ok && client_alive(h.client)) {
    // The request cannot reach a pod of its environment: fail the client's
    // connection visibly, as a refused or reset direct connection would.
    if (up) close_upstream(up->cookie, false, "forward failed");
    destroy_client(h.client);
  }
}

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

// A sock_diag request for the client connection (its exact socket: addresses
// and cookie): SOCK_DESTROY, or SOCK_DIAG_BY_FAMILY with ext (a query whose
// INET_DIAG_INFO takes the socket's lock). 0 or an errno.
int Relay::client_diag(uint64_t client, uint16_t type, uint8_t ext) const {
  es_relay_client rc{};
  if (bpf_map_lookup_elem(clients_, &client, &rc) != 0) return ENOENT;
  int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return errno;
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
  if (sendto(nl, &req, sizeof(req), 0, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == sizeof(req)) {
    alignas(nlmsghdr) char ack[4096];
    pollfd p{nl, POLLIN, 0};
    if (poll(&p, 1, 1000) == 1) {
      ssize_t r = recv(nl, ack, sizeof(ack), 0);
      auto* h = reinterpret_cast<nlmsghdr*>(ack);
      if (r >= static_cast<ssize_t>(sizeof(nlmsghdr) + sizeof(nlmsgerr)) && h->nlmsg_type == NLMSG_ERROR)
        err = -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
      else if (r >= static_cast<ssize_t>(sizeof(nlmsghdr)) && h->nlmsg_type == type)
        err = 0;
    }
  } else {
    err = errno;
  }
  close(nl);
  return err;
}

bool Relay::destroy_client(uint64_t client) {
  es_relay_client rc{};
  if (bpf_map_lookup_elem(clients_, &client, &rc) != 0) return false;
  int err = client_diag(client, SOCK_DESTROY, 0);
  std::lock_guard<std::mutex> g(mu_);
  if (err == 0) {
    stats_.clients_destroyed++;
    spdlog::info("per-request steering: client connection {} reset", client);
  } else {
    stats_.destroy_failures++;
    spdlog::warn("per-request steering: could not reset client connection {}: {}", client, errstr(err));
  }
  return err == 0;
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
