// SPDX-License-Identifier: Apache-2.0
// The relay: its socket, the frames the kernel queues on it, the clients'
// queues, the thread and its status. Upstreams and their pool:
// relay_upstream.cpp; clients gone, sweep and timeouts: relay_sweep.cpp;
// client resets: relay_diag.cpp.
#include "relay.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>

#include "metrics.h"
#include "procstatus.h"
#include "relay_internal.h"

namespace envsteer {

using namespace relay_detail;

Relay::Relay(const maps::BpfMapBackend& m, RelayOptions o) : m_(m), o_(o), nets_(o_.pod_dir) {
  using maps::MapId;
  binds_ = m.fd(MapId::Binds);
  upstreams_ = m.fd(MapId::Upstreams);
  clients_map_ = m.fd(MapId::RelayClients);
  done_ = m.fd(MapId::RelayDone);
  cfg_ = m.fd(MapId::RelayCfg);
  acct_ = m.fd(MapId::RelayAcct);
  pods_ = m.fd(MapId::RelayPods);
  pod_done_map_ = m.fd(MapId::RelayPodDone);
  sockhash_ = m.fd(MapId::Sockhash);
  sets_ = m.fd(MapId::Sets);
  slots_ = m.fd(MapId::Slots);
  rsp_ = m.fd(MapId::Rsp);
  hints_ = m.fd(MapId::Hints);
  es_http_cfg_init(&http_cfg_, '.', 0);
  o_.sockets = std::clamp<uint32_t>(o_.sockets, 1, ES_RELAY_SOCKETS_MAX);
  // Room for two full pods: a pod whose hash shares a socket with one pod at its own
  // bound still gets its share (the total bound caps it anyway).
  if (!o_.max_socket_bytes)
    o_.max_socket_bytes = std::min(o_.max_total_bytes, std::max(o_.max_total_bytes / o_.sockets, 2 * o_.max_pod_bytes));
  socks_.resize(o_.sockets);
  for (size_t i = 0; i < socks_.size(); i++) socks_[i].index = i;
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!epoll_ || !wake_) throw std::runtime_error("per-request steering: epoll/eventfd: " + errstr(errno));
  add_epoll(epoll_.get(), wake_.get(), EPOLLIN, kTagWake);
  events_ = ring_buffer__new(
      m.fd(MapId::RelayEv),
      [](void* ctx, void* data, size_t len) -> int {
        auto* self = static_cast<Relay*>(ctx);
        if (len >= sizeof(es_relay_event)) self->gone_.push_back(static_cast<const es_relay_event*>(data)->client);
        return 0;
      },
      this, nullptr);
  if (!events_) throw std::runtime_error("per-request steering: reading es_relay_ev: " + errstr(errno));
  add_epoll(epoll_.get(), ring_buffer__epoll_fd(events_), EPOLLIN, kTagEvents);
}

Relay::~Relay() {
  stop();
  if (events_) ring_buffer__free(events_);
}

// A connected loopback pair; the listener is closed before anything else can
// connect to it, and the accepted end must be our own connecting socket. Its
// new key reaches the programs with the next write_cfg().
void Relay::reset_relay_socket(RelaySock& rs) {
  if (rs.fd) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, rs.fd.get(), nullptr);
  rs.fd.reset();
  rs.peer.reset();
  rs.buf.clear();
  rs.last_hdr = {};
  UniqueFd l(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  if (!l || bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(l.get(), 1) != 0 ||
      getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &al) != 0)
    throw std::runtime_error("per-request steering: relay socket: " + errstr(errno));
  UniqueFd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!c || connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
    throw std::runtime_error("per-request steering: relay connect: " + errstr(errno));
  sockaddr_in mine{}, peer{};
  socklen_t ml = sizeof(mine), pl = sizeof(peer);
  getsockname(c.get(), reinterpret_cast<sockaddr*>(&mine), &ml);
  UniqueFd s(accept4(l.get(), reinterpret_cast<sockaddr*>(&peer), &pl, SOCK_CLOEXEC | SOCK_NONBLOCK));
  l.reset();
  if (!s || peer.sin_port != mine.sin_port || peer.sin_addr.s_addr != mine.sin_addr.s_addr)
    throw std::runtime_error("per-request steering: relay socket accepted a stranger");
  rs.fd = std::move(s);
  rs.peer = std::move(c);
  rs.cookie = socket_cookie(rs.fd.get());
  uint64_t fdv = static_cast<uint64_t>(rs.fd.get());
  if (!rs.cookie || bpf_map_update_elem(sockhash_, &rs.cookie, &fdv, BPF_ANY) != 0)
    throw std::runtime_error("per-request steering: adding the relay socket to es_sockhash: " + errstr(errno));
  g_sock_cookie_[rs.index] = rs.cookie;
  add_epoll(epoll_.get(), rs.fd.get(), EPOLLIN, kTagRelay + rs.index);
  new_key(rs);
}

// Writes the relay settings with the bytes done so far (the kernel compares
// them with what it framed: the total and per-socket bounds). Not all: only
// once a sixteenth of a bound is done since the last write (the kernel's view
// lags by less; the sweep writes the rest every 250 ms): one map write less per
// request.
void Relay::publish_done_total(bool all) {
  bool changed = done_total_ != done_total_published_, due = false;
  if (changed && (all || done_total_ - done_total_published_ >= o_.max_total_bytes / 16)) due = true;
  for (const auto& rs : socks_) {
    if (rs.done == rs.done_published) continue;
    changed = true;
    if (all || rs.done - rs.done_published >= o_.max_socket_bytes / 16) due = true;
  }
  if (changed && due) write_cfg();
}

void Relay::write_cfg() {
  es_relay_cfg rc{};
  rc.sockets = static_cast<uint32_t>(socks_.size());
  rc.max_frames = o_.max_frames;
  rc.max_client_bytes = o_.max_client_bytes;
  rc.max_pod_bytes = o_.max_pod_bytes;
  rc.max_total_bytes = o_.max_total_bytes;
  rc.max_socket_bytes = o_.max_socket_bytes;
  rc.done_bytes = done_total_;
  for (auto& rs : socks_) {
    rc.relay[rs.index] = rs.cookie;
    rc.key[rs.index] = rs.key;
    rc.socket_done[rs.index] = rs.done;
  }
  uint32_t zero = 0;
  if (bpf_map_update_elem(cfg_, &zero, &rc, BPF_ANY) != 0)
    throw std::runtime_error("per-request steering: writing es_relay_cfg: " + errstr(errno));
  done_total_published_ = done_total_;
  for (auto& rs : socks_) rs.done_published = rs.done;
}

void Relay::cleanup_previous() {
  // Upstreams die with the agent that opened them, and frames queued on its
  // relay socket are lost: the clients that had either are destroyed (their
  // applications see a reset and reconnect) rather than left waiting.
  std::set<uint64_t> victims;
  for (const auto& k : m_.keys<es_bind_key>(maps::MapId::Binds)) victims.insert(k.client);
  std::vector<Unfinished> unfinished;
  unfinished_clients(unfinished, SIZE_MAX);
  for (const auto& u : unfinished) victims.insert(u.client);
  size_t destroyed = 0;
  for (uint64_t c : victims)
    if (client_alive(c) && destroy_client(c)) destroyed++;
  size_t stale = 0;
  for (const auto& k : m_.keys<es_bind_key>(maps::MapId::Binds)) stale += bpf_map_delete_elem(binds_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::Upstreams)) stale += bpf_map_delete_elem(upstreams_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::RelayClients))
    stale += bpf_map_delete_elem(clients_map_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::RelayDone)) stale += bpf_map_delete_elem(done_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::Rsp)) stale += bpf_map_delete_elem(rsp_, &k) == 0;
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::RelayPods)) bpf_map_delete_elem(pods_, &k);
  for (uint64_t k : m_.keys<uint64_t>(maps::MapId::RelayPodDone)) bpf_map_delete_elem(pod_done_map_, &k);
  // Whatever the previous agent had not read is gone: nothing is queued here.
  uint32_t zero = 0;
  es_relay_acct acct{};
  bpf_map_lookup_elem(acct_, &zero, &acct);
  done_total_ = acct.framed;
  for (auto& rs : socks_) rs.done = acct.socket_framed[rs.index];
  if (stale || destroyed)
    spdlog::info("per-request steering: removed {} entries of the previous agent; {} client connection(s) "
                 "with re-routed requests in flight reset",
                 stale, destroyed);
}

namespace {

// Effective capabilities of this process (/proc/self/status CapEff); 0 when unreadable.
uint64_t effective_caps() {
  auto v = proc_self_status("CapEff");
  return v ? std::strtoull(v->c_str(), nullptr, 16) : 0;
}

}  // namespace

void Relay::start() {
  if (o_.pod_dir) {
    constexpr uint64_t kSysPtrace = 1ull << 19, kSysAdmin = 1ull << 21;
    uint64_t caps = effective_caps();
    std::string missing =
        std::string(caps & kSysAdmin ? "" : " CAP_SYS_ADMIN") + (caps & kSysPtrace ? "" : " CAP_SYS_PTRACE");
    if (!missing.empty())
      spdlog::warn("degraded: per-request steering: without{} the relay may not enter pods' network namespaces: "
                   "upstreams of re-routed requests of such pods then come from the agent's address, and their "
                   "connections cannot be reset (counted: errors.pod_netns)",
                   missing);
  }
  cleanup_previous();
  for (auto& rs : socks_) reset_relay_socket(rs);
  write_cfg();
  running_ = true;
  thread_ = std::thread([this] { loop(); });
  spdlog::info("per-request steering: {} relay socket(s) ready (chosen by pod); per client {} frames, {} bytes; "
               "{} bytes per pod, {} per relay socket, {} in all; {} clients per pod; timeouts: connect {} ms, "
               "response {} ms, idle {} ms; pool: {} warm, {} per set, closed after {} ms unused",
               socks_.size(), o_.max_frames, o_.max_client_bytes, o_.max_pod_bytes, o_.max_socket_bytes,
               o_.max_total_bytes, o_.max_clients_per_pod,
               o_.connect_timeout.count(), o_.response_timeout.count(), o_.idle_timeout.count(), o_.warm,
               o_.pool_per_set, o_.pool_idle.count());
}

void Relay::stop() {
  if (!running_.exchange(false)) return;
  uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) { /* the thread also wakes on its timeout */
  }
  if (thread_.joinable()) thread_.join();
  uint32_t zero = 0;
  es_relay_cfg rc{};
  bpf_map_update_elem(cfg_, &zero, &rc, BPF_ANY);
  std::vector<uint64_t> cookies;
  for (auto& [c, u] : ups_) cookies.push_back(c);
  for (uint64_t c : cookies) close_upstream(c, RelayCounter::kCount);
  for (auto& rs : socks_) {
    rs.fd.reset();
    rs.peer.reset();
  }
}

void Relay::count(RelayCounter c, uint64_t n) {
  counters_[static_cast<size_t>(c)].fetch_add(n, std::memory_order_relaxed);
}

void Relay::update_gauges() {
  uint64_t active = 0, pooled = 0, connecting = 0;
  for (const auto& [c, u] : ups_) {
    if (u.state == UpState::Bound) active++;
    else if (u.state == UpState::Pooled) pooled++;
    else connecting++;
  }
  g_active_ = active;
  g_pooled_ = pooled;
  g_connecting_ = connecting;
  g_clients_ = clients_.size();
  g_queued_ = queued_bytes_;
  g_done_ = done_total_;
  g_netns_ = nets_.held();
  for (const auto& rs : socks_) g_sock_done_[rs.index] = rs.done;
}

RelayStats Relay::stats() const {
  RelayStats s;
  for (size_t i = 0; i < s.n.size(); i++) s.n[i] = counters_[i].load(std::memory_order_relaxed);
  s.active = g_active_;
  s.pooled = g_pooled_;
  s.connecting = g_connecting_;
  s.clients = g_clients_;
  s.queued_bytes = g_queued_;
  s.netns = g_netns_;
  uint32_t zero = 0;
  es_relay_acct acct{};
  bool have = bpf_map_lookup_elem(acct_, &zero, &acct) == 0;
  if (have && acct.framed > g_done_) s.inflight_bytes = acct.framed - g_done_;
  for (size_t i = 0; i < o_.sockets; i++) {
    RelayStats::Socket k;
    k.cookie = g_sock_cookie_[i];
    k.frames = g_sock_frames_[i].load(std::memory_order_relaxed);
    uint64_t done = g_sock_done_[i];
    if (have && acct.socket_framed[i] > done) k.inflight_bytes = acct.socket_framed[i] - done;
    s.sockets.push_back(k);
  }
  return s;
}

nlohmann::json Relay::status_json() const {
  RelayStats s = stats();
  nlohmann::json socks = nlohmann::json::array();
  for (size_t i = 0; i < s.sockets.size(); i++)
    socks.push_back({{"socket", i},
                     {"cookie", s.sockets[i].cookie},
                     {"frames", s.sockets[i].frames},
                     {"inflight_bytes", s.sockets[i].inflight_bytes}});
  nlohmann::json j = {{"relay_cookie", s.sockets.empty() ? 0 : s.sockets[0].cookie},
                      {"relay_sockets", socks},
                      {"upstreams_active", s.active},
                      {"upstreams_pooled", s.pooled},
                      {"upstreams_connecting", s.connecting},
                      {"clients", s.clients},
                      {"queued_bytes", s.queued_bytes},
                      {"inflight_bytes", s.inflight_bytes},
                      {"pod_netns", s.netns},
                      {"bounds",
                       {{"frames_per_client", o_.max_frames},
                        {"bytes_per_client", o_.max_client_bytes},
                        {"bytes_per_pod", o_.max_pod_bytes},
                        {"bytes_per_socket", o_.max_socket_bytes},
                        {"bytes_total", o_.max_total_bytes},
                        {"clients_per_pod", o_.max_clients_per_pod}}},
                      {"timeouts_ms",
                       {{"connect", o_.connect_timeout.count()},
                        {"response", o_.response_timeout.count()},
                        {"idle", o_.idle_timeout.count()},
                        {"pool_idle", o_.pool_idle.count()}}}};
  size_t i = 0;
#define ES_RC_JSON(id, name, label, value)          \
  if (std::string(label).empty())                   \
    j[name] = s.n[i];                               \
  else                                              \
    j[name][value] = s.n[i];                        \
  i++;
  ES_RELAY_COUNTERS(ES_RC_JSON)
#undef ES_RC_JSON
  return j;
}

std::string Relay::metrics() const {
  RelayStats s = stats();
  std::string out;
  auto gauge = [&](const char* name, const char* help, uint64_t v) {
    out += std::string("# HELP envsteer_relay_") + name + " " + help + "\n# TYPE envsteer_relay_" + name +
           " gauge\nenvsteer_relay_" + name + " " + std::to_string(v) + "\n";
  };
  gauge("upstreams", "Upstream connections bound to a client for re-routed requests.", s.active);
  gauge("upstreams_pooled", "Connected upstreams waiting for a client (warm or reused).", s.pooled);
  gauge("upstreams_connecting", "Upstream connects under way.", s.connecting);
  gauge("clients", "Client connections with frames or upstreams at the relay.", s.clients);
  gauge("queued_bytes", "Frame bytes waiting for their client's upstream.", s.queued_bytes);
  gauge("inflight_bytes", "Bytes framed for the relay and not yet forwarded or dropped (bounded in all).",
        s.inflight_bytes);
  gauge("pod_netns", "Pods' network namespaces the relay holds a handle of (upstreams and resets are made there).",
        s.netns);
  out += "# HELP envsteer_relay_socket_inflight_bytes Bytes framed for one relay socket (the clients of the pods it "
         "serves) and not yet forwarded or dropped (bounded per socket).\n"
         "# TYPE envsteer_relay_socket_inflight_bytes gauge\n";
  for (size_t i = 0; i < s.sockets.size(); i++)
    out += "envsteer_relay_socket_inflight_bytes{socket=\"" + std::to_string(i) + "\"} " +
           std::to_string(s.sockets[i].inflight_bytes) + "\n";
  out += "# HELP envsteer_relay_socket_frames_total Frames read from one relay socket.\n"
         "# TYPE envsteer_relay_socket_frames_total counter\n";
  for (size_t i = 0; i < s.sockets.size(); i++)
    out += "envsteer_relay_socket_frames_total{socket=\"" + std::to_string(i) + "\"} " +
           std::to_string(s.sockets[i].frames) + "\n";
  std::string last;
  size_t i = 0;
#define ES_RC_PROM(id, name, label, value)                                                                  \
  {                                                                                                           \
    std::string fam = std::string("envsteer_relay_") + name + "_total";                                       \
    if (fam != last) out += "# TYPE " + fam + " counter\n";                                                   \
    last = fam;                                                                                               \
    out += fam;                                                                                               \
    if (!std::string(label).empty()) out += std::string("{") + label + "=\"" + prom_label(value) + "\"}";     \
    out += " " + std::to_string(s.n[i++]) + "\n";                                                             \
  }
  ES_RELAY_COUNTERS(ES_RC_PROM)
#undef ES_RC_PROM
  return out;
}

void Relay::loop() {
  auto next_sweep = std::chrono::steady_clock::now();
  while (running_) {
    epoll_event evs[64];
    int n = epoll_wait(epoll_.get(), evs, 64, 100);
    uint32_t relay_ready = 0;  // bit i: relay socket i
    bool events_ready = false;
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == kTagWake) {
        uint64_t v;
        while (read(wake_.get(), &v, sizeof(v)) > 0) {
        }
      } else if (tag >= kTagRelay && tag < kTagRelay + socks_.size()) {
        relay_ready |= 1u << (tag - kTagRelay);
      } else if (tag == kTagEvents) {
        events_ready = true;
      } else {
        on_upstream_event(tag, evs[i].events);
      }
    }
    // each a bounded share per turn: level-triggered, a socket with more wakes the next turn at once
    for (auto& rs : socks_)
      if (relay_ready & (1u << rs.index)) on_relay_readable(rs);
    if (events_ready) on_client_events();
    warm_pending();
    bool swept = false;
    if (std::chrono::steady_clock::now() >= next_sweep) {
      sweep();
      swept = true;
      next_sweep = std::chrono::steady_clock::now() + std::chrono::milliseconds(250);
    }
    reap_clients();
    flush_forgotten();
    publish_done_total(swept);
    publish_pods(swept);
    update_gauges();
  }
}

// Where the next frame header written by the programs begins in buf[from,
// to): its magic and this socket's key or the one before it (64-bit secrets:
// bytes a client sent cannot pass for one; a frame with the previous key is
// one too, else a resync would skip it and the frames it hides). buf.size() when none; a header cut by the end of the
// buffer counts as found unless whole (it is completed by the next read).
size_t Relay::next_header(const RelaySock& rs, size_t from, size_t to, bool whole) const {
  const std::vector<uint8_t>& buf = rs.buf;
  static constexpr uint32_t magic = ES_RELAY_MAGIC;
  for (size_t i = from; i + sizeof(magic) <= to; i++) {
    const void* p = memchr(buf.data() + i, static_cast<uint8_t>(magic & 0xff), to - i);
    if (!p) break;
    i = static_cast<const uint8_t*>(p) - buf.data();
    if (i + sizeof(magic) > to || std::memcmp(buf.data() + i, &magic, sizeof(magic)) != 0) continue;
    if (i + sizeof(es_relay_hdr) > buf.size()) {
      if (whole) continue;
      return i;
    }
    es_relay_hdr h{};
    std::memcpy(&h, buf.data() + i, sizeof(h));
    if (h.key == rs.key || (rs.prev_key && h.key == rs.prev_key)) return i;
  }
  return buf.size();
}

// The kernel now and then delivers part of a frame out of step (README,
// limits): the client whose bytes are lost or in doubt is reset, the others'
// frames are found again by their keyed headers and go on.
void Relay::frame_lost(uint64_t client, const char* what, RelaySock* rotate) {
  count(RelayCounter::protocol_errors);
  // Bytes that were out of step may have carried a header, key included, to
  // an upstream: a new key from now on (frames framed with the old one are
  // dropped, their clients reset).
  if (rotate) rotate->rotate_key = true;
  spdlog::warn("per-request steering: relay stream: {} (client {}): the client connection is reset", what, client);
  if (auto it = clients_.find(client); it != clients_.end()) {
    fail_client(it->second, RelayCounter::reset_relay_stream);
  } else if (client) {
    count(RelayCounter::reset_relay_stream);
    if (client_alive(client)) destroy_client(client);
    forget_client(client);
  }
}

// Reads at most kReadsPerTurn buffers of one relay socket per turn of the loop,
// so that a socket full of one pod's frames does not delay the others'.
void Relay::on_relay_readable(RelaySock& rs) {
  constexpr int kReadsPerTurn = 4;
  std::vector<uint8_t>& buf = rs.buf;
  uint8_t tmp[65536];
  for (int round = 0; round < kReadsPerTurn; round++) {
    ssize_t r = recv(rs.fd.get(), tmp, sizeof(tmp), 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (r <= 0) {
      on_bad_stream(rs, r == 0 ? "closed" : "failed");
      return;
    }
    buf.insert(buf.end(), tmp, tmp + r);
    // a short read drained the socket (epoll is level-triggered for it: more data wakes the loop
    // again), so no recv that only says EAGAIN
    bool drained = static_cast<size_t>(r) < sizeof(tmp);
    size_t off = 0;
    while (buf.size() - off >= sizeof(es_relay_hdr)) {
      es_relay_hdr h{};
      std::memcpy(&h, buf.data() + off, sizeof(h));
      if (h.magic == ES_RELAY_MAGIC && rs.prev_key && h.key == rs.prev_key && h.len <= o_.max_frame_bytes) {
        // framed before the key changed: not forwarded, its client reset. It may have come
        // in part too: the frames behind it begin at the first header inside it.
        size_t end = off + sizeof(h) + h.len;
        size_t inner = next_header(rs, off + sizeof(h), std::min(buf.size(), end), true);
        if (inner >= buf.size() && buf.size() < end) break;
        frame_lost(h.client, "a frame with the previous key", nullptr);
        off = std::min(inner, end);
        continue;
      }
      if (h.magic != ES_RELAY_MAGIC || h.key != rs.key || h.len > o_.max_frame_bytes) {
        // Bytes without a header: the rest of the frame before (the kernel
        // delivered it in two). Its client's stream is broken.
        frame_lost(rs.last_hdr.client, "bytes out of step after a frame", &rs);
        rs.last_hdr = {};
        off = next_header(rs, off + 1, buf.size(), false);
        continue;
      }
      // A header inside the payload: this frame came in part. Looked for also
      // while the frame is incomplete, so frames behind a cut one do not wait.
      size_t inner = next_header(rs, off + sizeof(h), std::min(buf.size(), off + sizeof(h) + h.len), true);
      if (inner >= buf.size() && buf.size() - off < sizeof(h) + h.len) break;
      if (inner < off + sizeof(h) + h.len) {
        frame_lost(h.client, "a frame cut short", &rs);
        off = inner;
        continue;
      }
      rs.last_hdr = h;
      g_sock_frames_[rs.index].fetch_add(1, std::memory_order_relaxed);
      handle_frame(h, buf.data() + off + sizeof(h), h.len);
      off += sizeof(h) + h.len;
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<long>(std::min(off, buf.size())));
    if (drained) break;
  }
  if (rs.rotate_key) {
    rs.rotate_key = false;
    new_key(rs);
    write_cfg();
  }
}

// A new key for the socket's frame headers; the programs use it from the next write_cfg().
void Relay::new_key(RelaySock& rs) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  rs.prev_key = rs.key;
  rs.key = rng() | 1;
}

// The relay socket's stream cannot be followed (or it closed): every frame
// in it is lost. The clients that had frames on their way are reset (they
// would wait for ever), then a new socket takes over.
void Relay::on_bad_stream(RelaySock& rs, const char* what) {
  spdlog::error("per-request steering: relay socket {} {}: clients with frames under way on it are reset, socket "
                "re-created", rs.index, what);
  std::vector<Unfinished> unfinished;
  unfinished_clients(unfinished, SIZE_MAX);
  for (const auto& u : unfinished) {
    if (&sock_of(u.pod) != &rs) continue;  // another socket's: its frames go on
    uint64_t c = u.client;
    if (auto it = clients_.find(c); it != clients_.end()) {
      fail_client(it->second, RelayCounter::reset_relay_stream);
    } else {
      count(RelayCounter::reset_relay_stream);
      if (client_alive(c)) destroy_client(c);
      forget_client(c);
    }
  }
  reap_clients();
  reset_relay_socket(rs);
  write_cfg();
}

void Relay::handle_frame(const es_relay_hdr& h, const uint8_t* payload, size_t n) {
  count(RelayCounter::frames);
  count(RelayCounter::bytes, n);
  Client* c = client_for(h.client);
  if (!c) {  // refused (its pod's share), or gone: the frame is done with
    bytes_done(h.pod, n);
    if (auto t = forgotten_.find(h.client); t != forgotten_.end())
      t->second.pending -= std::min<uint64_t>(t->second.pending, n);
    return;
  }
  c->pod = h.pod;
  // Frames the kernel counted before this one and the relay never read (a redirect refused
  // for memory, a frame cut short or dropped here): their bytes are done with now, so that they
  // do not hold the client's, its pod's and the total bounds.
  uint32_t gap = h.before - static_cast<uint32_t>(c->seen);
  if (gap && gap < (1u << 31)) {
    c->seen += gap;
    c->done.bytes += gap;
    bytes_done(c->pod, gap);
    count(RelayCounter::bytes_lost, gap);
    spdlog::debug("per-request steering: client {}: {} bytes framed before frame {} never arrived", c->cookie, gap,
                  h.seq);
  } else if (gap) {
    c->seen -= static_cast<uint32_t>(0u - gap);  // the kernel counted less than read (not expected)
  }
  c->seen += n;
  Frame f;
  f.seq = h.seq;
  f.svc_id = h.svc_id;
  f.env_id = h.env_id;
  f.data.assign(payload, payload + n);
  c->q.push_back(std::move(f));
  c->q_bytes += n;
  queued_bytes_ += n;
  pump(*c);
}

// The client's state here, made at its first frame. Every client of a pod
// holds an entry of the node's es_relay_clients table: beyond its share the
// client is reset (counted) so that one pod cannot take the node's table.
Relay::Client* Relay::client_for(uint64_t cookie) {
  if (auto it = clients_.find(cookie); it != clients_.end()) return &it->second;
  es_relay_client rc{};
  if (bpf_map_lookup_elem(clients_map_, &cookie, &rc) != 0 || !client_alive(cookie)) {
    forget_client(cookie);
    return nullptr;
  }
  uint32_t& share = pod_clients_[rc.pod_cgroup];
  if (o_.max_clients_per_pod && share >= o_.max_clients_per_pod) {
    spdlog::warn("per-request steering: pod (cgroup {}) has {} clients at the relay, its share: client {} reset",
                 rc.pod_cgroup, share, cookie);
    count(RelayCounter::reset_pod_share);
    destroy_client(cookie);
    forget_client(cookie);
    if (share == 0) pod_clients_.erase(rc.pod_cgroup);
    return nullptr;
  }
  share++;
  Client& c = clients_[cookie];
  c.cookie = cookie;
  c.pod = rc.pod_cgroup;
  c.rc = rc;
  c.ns = client_ns(cookie, rc.pod_cgroup);
  if (!c.ns) pod_seen_[rc.pod_cgroup] = std::chrono::steady_clock::now();
  return &c;
}

// Forwards the client's frames in order, as far as its upstreams take them.
void Relay::pump(Client& c) {
  while (!c.q.empty()) {
    Upstream* u = upstream_for(c, c.q.front());
    if (!u) return;  // the client was failed (and may be gone)
    if (u->state != UpState::Bound) return;  // connecting: resumed when it is up
    if (!write_front(c, *u)) return;  // the upstream is full (resumed on EPOLLOUT) or the client failed
    frame_done(c, u->cookie);
  }
}

// Writes what is left of the front frame; true when all of it is out.
bool Relay::write_front(Client& c, Upstream& u) {
  Frame& f = c.q.front();
  if (!f.counted) {
    // Count the request heads before they go: the response may come at once.
    f.counted = true;
    for (size_t off = 0; off < f.data.size() && !u.req_unframed;) {
      __u32 used = 0;
      int ev = es_http_feed_buf(&u.req, &http_cfg_, f.data.data() + off, static_cast<__u32>(f.data.size() - off),
                                ES_HTTP_EV_HEADERS, &used);
      off += used;
      if (ev & ES_HTTP_EV_HEADERS) u.slow_reqs++;
      if ((ev & ES_HTTP_EV_NOT_HTTP) && u.req.err != ES_HTTP_ERR_TUNNEL) u.req_unframed = true;
      if (used == 0 || (ev & ES_HTTP_EV_NOT_HTTP)) break;
    }
  }
  while (f.off < f.data.size()) {
    ssize_t w = send(u.fd.get(), f.data.data() + f.off, f.data.size() - f.off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      f.off += static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return false;  // resumed by the upstream's next EPOLLOUT edge (registered once, edge-triggered)
    spdlog::warn("per-request steering: forwarding to {} for client {} failed: {}", u.backend, c.cookie,
                 errstr(errno));
    count(RelayCounter::forward_failures);
    fail_client(c, RelayCounter::reset_forward);
    return false;
  }
  return true;
}

// The front frame is out: the kernel may send the client's next requests to
// the upstream itself once every frame it sent is done.
void Relay::frame_done(Client& c, uint64_t upstream) {
  Frame& f = c.q.front();
  c.done.seq = f.seq;
  c.done.upstream = upstream;
  c.done.bytes += f.data.size();
  bytes_done(c.pod, f.data.size());
  c.q_bytes -= f.data.size();
  queued_bytes_ -= f.data.size();
  c.q.pop_front();
  bpf_map_update_elem(done_, &c.cookie, &c.done, BPF_ANY);
}

}  // namespace envsteer

namespace envsteer {

// Bytes of a pod's client forwarded or dropped: its share and the total free up.
void Relay::bytes_done(uint64_t pod, uint64_t n) {
  done_total_ += n;
  sock_of(pod).done += n;
  uint64_t& d = pod_done_[pod];
  if (d == 0 || n) pod_dirty_.push_back(pod);
  d += n;
}

// The same per pod: a pod's done bytes are written once a sixteenth of its
// bound is done since the last write, or by the sweep.
void Relay::publish_pods(bool all) {
  if (pod_dirty_.empty()) return;
  std::sort(pod_dirty_.begin(), pod_dirty_.end());
  pod_dirty_.erase(std::unique(pod_dirty_.begin(), pod_dirty_.end()), pod_dirty_.end());
  size_t keep = 0;
  for (uint64_t pod : pod_dirty_) {
    auto it = pod_done_.find(pod);
    if (it == pod_done_.end()) continue;
    auto pub = pod_published_.find(pod);
    if (!all && pub != pod_published_.end() && it->second - pub->second < o_.max_pod_bytes / 16) {
      pod_dirty_[keep++] = pod;
      continue;
    }
    bpf_map_update_elem(pod_done_map_, &pod, &it->second, BPF_ANY);
    pod_published_[pod] = it->second;
  }
  pod_dirty_.resize(keep);
}

}  // namespace envsteer
