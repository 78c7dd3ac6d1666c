// SPDX-License-Identifier: Apache-2.0
// The relay's upstreams: connect (non-blocking), bind to a client, pool and
// reuse, settle and close, and what each still owes its client.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "relay.h"
#include "relay_internal.h"

namespace envsteer {

using namespace relay_detail;

namespace {

bool peer_closed(int fd) {
  pollfd p{fd, POLLRDHUP | POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLIN));
}

}  // namespace

// The upstream the client's front frame goes to: its bound one for the target,
// else a pooled one, else a new connect. nullptr: the client was failed.
Relay::Upstream* Relay::upstream_for(Client& c, const Frame& f) {
  if (c.failed) return nullptr;
  Upstream* bound = nullptr;
  for (uint64_t k : c.ups) {
    auto it = ups_.find(k);
    if (it != ups_.end() && it->second.svc_id == f.svc_id && it->second.env_id == f.env_id && !it->second.unbound) {
      bound = &it->second;
      break;
    }
  }
  if (bound && bound->state == UpState::Bound && !f.counted && peer_closed(bound->fd.get())) {
    // Closed by its server before this request came (its FIN not handled
    // yet): settled first, the request then goes to another upstream.
    on_upstream_closed(*bound);
    if (c.failed) return nullptr;
    bound = nullptr;
  }
  if (bound) return bound;
  for (uint64_t k : c.ups) {
    auto it = ups_.find(k);
    if (it == ups_.end() || it->second.svc_id != f.svc_id || it->second.env_id != f.env_id) continue;
    if (owed(it->second).owed != Owed::Nothing) {
      // The target's previous upstream still owes this client a response (a
      // pipelined request, or framing the kernel could not follow): on another
      // upstream the answers could overtake each other. Refused, visibly.
      spdlog::warn("per-request steering: client {} sent a request for a target whose previous upstream {} "
                   "still owes it a response: the client connection is reset",
                   c.cookie, it->second.backend);
      fail_client(c, RelayCounter::reset_reorder);
      return nullptr;
    }
  }
  PoolKey key{f.svc_id, f.env_id, c.ns ? c.ns->ino : 0};
  wanted_[key] = Want{std::chrono::steady_clock::now(), c.ns};
  demand_[key]++;
  Upstream* u = take_pooled(key);
  if (u) {
    bind_upstream(*u, c);
  } else {
    u = start_connect(f.svc_id, f.env_id, c.cookie, c.ns);
    if (u) c.ups.push_back(u->cookie);
  }
  if (!u || c.failed) {
    if (!c.failed) fail_client(c, RelayCounter::reset_no_upstream);
    return nullptr;
  }
  // refilled at the end of the loop's turn: the connects (socket in the pod's namespace, SYN) do
  // not delay this frame on its way to the server
  warm_later_.push_back(key);
  return u;
}

// A non-blocking connect to a pod of the set, from the network namespace ns
// (the client's pod's: the server sees that pod's address); finished by
// finish_connect(). client 0: for the pool of (set, ns).
Relay::Upstream* Relay::start_connect(uint32_t svc_id, uint32_t env_id, uint64_t client,
                                      const std::shared_ptr<const podnet::NetNs>& ns) {
  es_set_key sk{svc_id, env_id};
  es_set set{};
  if (bpf_map_lookup_elem(sets_, &sk, &set) != 0 || set.count == 0) {
    count(RelayCounter::no_backend);
    spdlog::warn("per-request steering: no ready pod in set (svc {}, env {}) for client {}", svc_id, env_id, client);
    return nullptr;
  }
  static thread_local std::mt19937 rng{std::random_device{}()};
  es_slot_key slk{svc_id, env_id, static_cast<uint32_t>(rng() % set.count)};
  es_backend be{};
  if (bpf_map_lookup_elem(slots_, &slk, &be) != 0) {
    slk.slot = 0;  // the set shrank under us; slot 0 stays filled while it exists
    if (bpf_map_lookup_elem(slots_, &slk, &be) != 0) return nullptr;
  }
  sockaddr_storage ss{};
  socklen_t sl = backend_sockaddr(be, &ss);
  UniqueFd fd(podnet::socket_in(ns.get(), ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    count(RelayCounter::connect_failures);
    spdlog::warn("per-request steering: a socket for client {}{}: {}", client,
                 ns ? " in its pod's network namespace" : "", errstr(errno));
    return nullptr;
  }
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::string where = maps::format_backend(be);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), sl) != 0 && errno != EINPROGRESS) {
    count(RelayCounter::connect_failures);
    spdlog::warn("per-request steering: connecting to {} for client {}: {}", where, client, errstr(errno));
    return nullptr;
  }
  uint64_t cookie = socket_cookie(fd.get());
  if (!cookie) return nullptr;
  count(RelayCounter::connects);
  Upstream& u = ups_[cookie];
  u.fd = std::move(fd);
  u.cookie = cookie;
  u.client = client;
  u.svc_id = svc_id;
  u.env_id = env_id;
  u.ns = ns;
  u.be = be;
  u.backend = where;
  u.since = std::chrono::steady_clock::now();
  // Registered once for the upstream's life, edge-triggered: EPOLLOUT when the connect is done
  // and again only after a send found the socket full; EPOLLRDHUP when the server closes. No
  // epoll_ctl per state change (pooled, bound, writing). A pooled upstream's unexpected data is
  // found when it is taken (peer_closed) or by the pool's idle close.
  add_epoll(epoll_.get(), u.fd.get(), EPOLLOUT | EPOLLRDHUP | EPOLLET, cookie);
  if (!client) warming_[pool_key(u)]++;
  return &u;
}

void Relay::finish_connect(Upstream& u) {
  PoolKey key = pool_key(u);
  if (!u.client) warming_[key]--;
  int err = 0;
  socklen_t l = sizeof(err);
  getsockopt(u.fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
  auto it = clients_.find(u.client);
  Client* c = it != clients_.end() && !it->second.failed ? &it->second : nullptr;
  if (err || !register_upstream(u)) {
    count(RelayCounter::connect_failures);
    spdlog::warn("per-request steering: connecting to {}{}: {}", u.backend,
                 c ? " for client " + std::to_string(c->cookie) : std::string(" (pool)"), errstr(err ? err : errno));
    close_upstream(u.cookie, RelayCounter::kCount);
    if (c) fail_client(*c, RelayCounter::reset_no_upstream);
    return;
  }
  if (c) {
    bind_upstream(u, *c);
    pump(*c);
    return;
  }
  // for the pool (or its client went away while it connected)
  u.client = 0;
  u.state = UpState::Pooled;
  u.since = std::chrono::steady_clock::now();
  pool_[key].push_back(u.cookie);
  pool_size_++;
}

// The framing tracker, then the socket in the sockhash: without an
// es_upstreams entry the verdict program leaves its data to the socket itself
// (a pooled upstream that receives anything is spoiled).
bool Relay::register_upstream(Upstream& u) {
  es_rsp rz{};
  uint64_t fdv = static_cast<uint64_t>(u.fd.get());
  if (bpf_map_update_elem(rsp_, &u.cookie, &rz, BPF_ANY) != 0) return false;
  if (bpf_map_update_elem(sockhash_, &u.cookie, &fdv, BPF_ANY) == 0) return true;
  int e = errno;
  bpf_map_delete_elem(rsp_, &u.cookie);  // close_upstream() of a connecting upstream leaves es_rsp alone
  errno = e;
  return false;
}

// Responses must find their client before the request leaves: the upstream
// entry, then the binding (the kernel uses it once every frame is done).
void Relay::bind_upstream(Upstream& u, Client& c) {
  es_upstream ue{c.cookie, u.svc_id, u.env_id};
  es_bind_key bk{c.cookie, u.svc_id, u.env_id};
  es_bind b{u.cookie, static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  u.client = c.cookie;
  u.state = UpState::Bound;
  u.slow_reqs = 0;
  u.req = {};
  u.req_unframed = false;
  u.unbound = false;
  if (std::find(c.ups.begin(), c.ups.end(), u.cookie) == c.ups.end()) c.ups.push_back(u.cookie);
  if (bpf_map_update_elem(upstreams_, &u.cookie, &ue, BPF_ANY) != 0 ||
      bpf_map_update_elem(binds_, &bk, &b, BPF_ANY) != 0) {
    spdlog::warn("per-request steering: binding the upstream to {} for client {}: {}", u.backend, c.cookie,
                 errstr(errno));
    close_upstream(u.cookie, RelayCounter::kCount);
    fail_client(c, RelayCounter::reset_no_upstream);
    return;
  }
  count(RelayCounter::binds);
  note_hint(c, u);
  spdlog::debug("per-request steering: client {} -> {} (svc {}, env {}) bound", c.cookie, u.backend, u.svc_id,
                u.env_id);
}

// The client's pod connects to this set next time (maps/abi.h es_hints): written once an
// upstream of the set is connected, so a set whose pod refuses connections is never hinted.
// A failed write costs that pod one more relayed request, nothing else.
void Relay::note_hint(const Client& c, const Upstream& u) {
  if (!o_.hints || !c.pod) return;
  es_hint_key k{};
  k.pod = c.pod;
  k.svc_id = u.svc_id;
  es_hint h{};
  h.env_id = u.env_id;
  if (bpf_map_update_elem(hints_, &k, &h, BPF_ANY) != 0)
    spdlog::debug("per-request steering: connect hint for pod {} svc {}: {}", c.pod, u.svc_id, errstr(errno));
}

// The most recently pooled upstream of the set that is still quiet.
Relay::Upstream* Relay::take_pooled(const PoolKey& k) {
  auto pit = pool_.find(k);
  while (pit != pool_.end() && !pit->second.empty()) {
    uint64_t cookie = pit->second.back();
    pit->second.pop_back();
    pool_size_--;
    auto it = ups_.find(cookie);
    if (it == ups_.end()) continue;
    if (peer_closed(it->second.fd.get())) {
      close_upstream(cookie, RelayCounter::closed_spoiled);
      continue;
    }
    count(RelayCounter::pool_taken);
    return &it->second;
  }
  return nullptr;
}

// Pre-connects upstreams for a set in recent use, up to its target: the warm
// count, more when it binds many (a burst of new clients).
void Relay::warm_up(const PoolKey& k) {
  if (!o_.warm || !running_) return;
  auto w = wanted_.find(k);
  if (w == wanted_.end()) return;
  uint32_t target = std::max(o_.warm, std::min(o_.pool_per_set, rate_[k] / 16));
  size_t have = pool_[k].size() + warming_[k];
  for (; have < target && pool_size_ + have < o_.pool_total; have++)
    if (!start_connect(std::get<0>(k), std::get<1>(k), 0, w->second.ns)) break;
}

void Relay::warm_pending() {
  if (warm_later_.empty()) return;
  std::sort(warm_later_.begin(), warm_later_.end());
  warm_later_.erase(std::unique(warm_later_.begin(), warm_later_.end()), warm_later_.end());
  for (const PoolKey& k : warm_later_) warm_up(k);
  warm_later_.clear();
}

void Relay::close_upstream(uint64_t cookie, RelayCounter why) {
  auto it = ups_.find(cookie);
  if (it == ups_.end()) return;
  Upstream& u = it->second;
  PoolKey key = pool_key(u);
  if (u.state == UpState::Bound && !u.unbound) unbind(u);
  if (u.state == UpState::Connecting && !u.client) warming_[key]--;
  if (u.state == UpState::Pooled) pool_size_ -= std::erase(pool_[key], cookie);
  if (u.client)
    if (auto c = clients_.find(u.client); c != clients_.end()) std::erase(c->second.ups, cookie);
  if (u.state == UpState::Bound) bpf_map_delete_elem(upstreams_, &cookie);  // only a bind writes it
  if (u.state != UpState::Connecting) bpf_map_delete_elem(rsp_, &cookie);  // written when connected
  // (the close below takes the socket out of the epoll set and the sockhash)
  if (why != RelayCounter::kCount) count(why);
  spdlog::debug("per-request steering: upstream {} of client {} closed", u.backend, u.client);
  ups_.erase(it);  // closes the socket (and takes it out of the sockhash)
}

void Relay::on_upstream_event(uint64_t cookie, uint32_t events) {
  auto it = ups_.find(cookie);
  if (it == ups_.end()) return;
  Upstream& u = it->second;
  switch (u.state) {
    case UpState::Connecting:
      finish_connect(u);
      return;
    case UpState::Pooled:
      // a pooled upstream must stay quiet: a close spoils it (data is found when it is taken)
      if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) close_upstream(cookie, RelayCounter::closed_by_server);
      return;
    case UpState::Bound:
      if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        on_upstream_closed(u);
      } else if (events & EPOLLOUT) {
        auto c = clients_.find(u.client);
        if (c != clients_.end() && !c->second.failed) pump(c->second);
      }
      return;
  }
}

// Removes the binding of u's (client, set): new requests of the client for
// that set then take the slow path. Called once per bound upstream (settle(),
// or close_upstream() of one not yet settled); while u is bound and not
// settled, the binding names u (a client's next upstream for the set is bound
// only after this one is settled).
void Relay::unbind(const Upstream& u) {
  es_bind_key bk{u.client, u.svc_id, u.env_id};
  bpf_map_delete_elem(binds_, &bk);
}

// Unbinds u, then fences its client: the sk_msg program runs under the client
// socket's lock and counts a kernel-path request (es_rsp.reqs) in the run that
// found the binding, so once a query that takes that lock has returned, every
// request that could still reach u is in the count, and no later one reaches it.
bool Relay::settle(Upstream& u) {
  bool alive = client_alive(u.client);
  if (u.unbound || u.state != UpState::Bound) return alive;
  unbind(u);
  u.unbound = true;
  if (alive) client_diag(u.client, SOCK_DIAG_BY_FAMILY, 1u << (INET_DIAG_INFO - 1));
  return alive;
}

Relay::Snapshot Relay::owed(const Upstream& u) const {
  Snapshot s;
  // TCP_INFO takes the upstream's socket lock: whatever the server sent
  // before its close has been through the verdict program.
  tcp_info ti{};
  socklen_t tl = sizeof(ti);
  getsockopt(u.fd.get(), IPPROTO_TCP, TCP_INFO, &ti, &tl);
  es_rsp r{};
  if (bpf_map_lookup_elem(rsp_, &u.cookie, &r) != 0) return s;
  s.reqs = r.reqs + u.slow_reqs;
  s.done = r.done;
  s.fin = r.fin;
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
void Relay::on_upstream_closed(Upstream& u) {
  bool alive = settle(u);
  Snapshot s = owed(u);
  uint64_t client = u.client;
  bool reset = alive && s.owed != Owed::Nothing;
  // A close with nothing owed is the normal end of an upstream (a server's
  // keep-alive timeout, "Connection: close"): logged at debug, not per request.
  auto level = reset ? spdlog::level::info : spdlog::level::debug;
  int err = 0;
  if (spdlog::should_log(level)) {
    socklen_t l = sizeof(err);
    getsockopt(u.fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
  }
  spdlog::log(level,
              "per-request steering: upstream {} of client {} {} by the server with {} ({} requests, {} answered): {}",
              u.backend, client, err ? "reset (" + errstr(err) + ")" : std::string("closed"),
              owed_str(static_cast<int>(s.owed)), s.reqs, s.done,
              !alive  ? "the client is gone"
              : reset ? "the client connection is reset"
                      : "the client's next request for it binds another upstream");
  close_upstream(u.cookie, RelayCounter::closed_by_server);
  if (!reset) return;
  RelayCounter why = s.owed == Owed::Request      ? RelayCounter::reset_request
                     : s.owed == Owed::Response   ? RelayCounter::reset_response
                     : s.owed == Owed::UntilClose ? RelayCounter::reset_until_close
                                                  : RelayCounter::reset_unframed;
  if (auto it = clients_.find(client); it != clients_.end()) {
    fail_client(it->second, why);
  } else {
    count(why);
    destroy_client(client);
  }
}

}  // namespace envsteer
