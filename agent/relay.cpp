// SPDX-License-Identifier: Apache-2.0
// The relay: its socket, the frames the kernel queues on it, its thread and its
// status. Upstreams: relay_upstream.cpp; sweep and timeouts: relay_sweep.cpp;
// client resets: relay_diag.cpp.
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

}  // namespace envsteer
