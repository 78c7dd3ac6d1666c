// SPDX-License-Identifier: Apache-2.0
// The relay's upkeep: clients gone (signalled by the kernel, and swept),
// timeouts, pods that left their set, the pool, the byte accounts.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include "relay.h"
#include "relay_internal.h"

namespace envsteer {

using namespace relay_detail;

// The clients the kernel has framed more for than the relay has done with
// (frames on their way, queued here, or lost), with the kernel's count. Done is
// the relay's own count for a client it holds, else what a relay published in
// es_relay_done. Looks at `cap` entries of es_relay_clients at most: false when
// the walk stopped there.
bool Relay::unfinished_clients(std::vector<Unfinished>& out, size_t cap) const {
  size_t checked = 0;
  for (uint64_t c : m_.keys<uint64_t>(maps::MapId::RelayClients)) {
    if (++checked > cap) return false;
    es_relay_client rc{};
    es_relay_done d{};
    if (bpf_map_lookup_elem(clients_map_, &c, &rc) != 0) continue;
    if (auto it = clients_.find(c); it != clients_.end()) d = it->second.done;
    else bpf_map_lookup_elem(done_, &c, &d);
    if (rc.sent != d.seq) out.push_back({c, rc.sent, rc.pod_cgroup});
  }
  return true;
}

bool Relay::client_alive(uint64_t client) const {
  uint64_t v = 0;
  return client && bpf_map_lookup_elem(sockhash_, &client, &v) == 0;
}

// Relay clients that closed (sockops, es_relay_ev).
void Relay::on_client_events() {
  ring_buffer__consume(events_);
  std::vector<uint64_t> gone;
  gone.swap(gone_);
  count(RelayCounter::client_events, gone.size());
  // a closing client signals FIN_WAIT1 and CLOSE, usually read together: handled once
  std::sort(gone.begin(), gone.end());
  gone.erase(std::unique(gone.begin(), gone.end()), gone.end());
  for (uint64_t c : gone) on_client_gone(c);
  reap_clients();
}

void Relay::on_client_gone(uint64_t cookie) {
  if (client_alive(cookie)) return;  // half-closed: it may still read answers
  auto it = clients_.find(cookie);
  if (it == clients_.end()) {
    forget_client(cookie);
    return;
  }
  Client& c = it->second;
  for (uint64_t k : std::vector<uint64_t>(c.ups)) {
    auto u = ups_.find(k);
    if (u == ups_.end()) continue;
    if (u->second.state == UpState::Connecting) {
      u->second.client = 0;  // finishes into the pool
      warming_[pool_key(u->second)]++;
    } else {
      close_upstream(k, RelayCounter::closed_client_gone);
    }
  }
  c.ups.clear();
  c.failed = true;
  dead_.push_back(cookie);
}

// A client's connection cannot be served: reset it (counted by why), close
// its upstreams, drop what it had queued.
void Relay::fail_client(Client& c, RelayCounter why) {
  if (c.failed) return;
  c.failed = true;
  count(why);
  if (client_alive(c.cookie)) destroy_client(c.cookie);
  for (uint64_t k : std::vector<uint64_t>(c.ups)) close_upstream(k, RelayCounter::kCount);
  c.ups.clear();
  dead_.push_back(c.cookie);
}

// Clients failed or gone: their queued bytes count as done, their kernel
// entries are removed, their pod's share freed.
void Relay::reap_clients() {
  for (uint64_t cookie : dead_) {
    auto it = clients_.find(cookie);
    if (it == clients_.end()) continue;
    Client& c = it->second;
    bytes_done(c.pod, c.q_bytes);
    queued_bytes_ -= c.q_bytes;
    if (auto p = pod_clients_.find(c.pod); p != pod_clients_.end() && --p->second == 0) pod_clients_.erase(p);
    for (uint64_t k : c.ups) close_upstream(k, RelayCounter::kCount);
    uint64_t seen = c.seen;
    clients_.erase(it);
    forget_client(cookie, seen);
  }
  dead_.clear();
}

void Relay::forget_client(uint64_t client, uint64_t seen) {
  es_relay_client rc{};
  int r = bpf_map_lookup_and_delete_elem(clients_map_, &client, &rc);
  if (r != 0 && r != -ENOENT) {  // a hash map's lookup-and-delete needs Linux 5.14
    r = bpf_map_lookup_elem(clients_map_, &client, &rc);
    bpf_map_delete_elem(clients_map_, &client);
  }
  done_stale_.push_back(client);
  if (r == 0 && rc.bytes > seen) {
    Forgotten& f = forgotten_[client];
    f.pod = rc.pod_cgroup;
    f.pending = rc.bytes - seen;
    f.at = std::chrono::steady_clock::now();
  }
}

// es_relay_done entries of forgotten clients, in batches (a hash map's batch delete stops at a
// key it does not have: that one is skipped).
void Relay::flush_forgotten() {
  for (size_t i = 0; i < done_stale_.size();) {
    __u32 want = static_cast<__u32>(std::min<size_t>(done_stale_.size() - i, 1024)), n = want;
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    int r = bpf_map_delete_batch(done_, done_stale_.data() + i, &n, &opts);
    if (r == 0) {
      i += want;
    } else if (r == -ENOENT && n < want) {
      i += n + 1;  // n deleted, then one it does not have
    } else {  // no batch operations (Linux < 5.6): one by one
      for (; i < done_stale_.size(); i++) bpf_map_delete_elem(done_, &done_stale_[i]);
    }
  }
  done_stale_.clear();
}

// Bytes of forgotten clients that have not arrived a second later never will: done with,
// counted. (A frame is queued on the relay socket within its sender's send(); the lost-frame
// check relies on the same second.)
void Relay::credit_forgotten() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = forgotten_.begin(); it != forgotten_.end();) {
    if (now - it->second.at < std::chrono::seconds(1)) {
      ++it;
      continue;
    }
    if (it->second.pending) {
      bytes_done(it->second.pod, it->second.pending);
      count(RelayCounter::bytes_lost, it->second.pending);
      spdlog::debug("per-request steering: client {}: {} framed bytes never reached the relay", it->first,
                    it->second.pending);
    }
    it = forgotten_.erase(it);
  }
}

// Whether u's pod still serves its set (a sweep reads each set once).
bool Relay::backend_in_set(const Upstream& u) {
  SetKey k{u.svc_id, u.env_id};
  auto it = set_cache_.find(k);
  if (it == set_cache_.end()) {
    std::vector<es_backend> bes;
    es_set_key sk{u.svc_id, u.env_id};
    es_set set{};
    if (bpf_map_lookup_elem(sets_, &sk, &set) == 0)
      for (uint32_t i = 0; i < set.count && i < 4096; i++) {
        es_slot_key slk{u.svc_id, u.env_id, i};
        es_backend be{};
        if (bpf_map_lookup_elem(slots_, &slk, &be) == 0) bes.push_back(be);
      }
    it = set_cache_.emplace(k, std::move(bes)).first;
  }
  for (const auto& be : it->second)
    if (maps::same_backend(be, u.be)) return true;  // its pod may have gained or lost a flag
  return false;
}

void Relay::sweep() {
  set_cache_.clear();
  std::vector<uint64_t> cookies;
  cookies.reserve(ups_.size());
  for (const auto& [c, u] : ups_) cookies.push_back(c);
  for (uint64_t c : cookies)
    if (auto it = ups_.find(c); it != ups_.end()) sweep_upstream(it->second);
  // clients gone without a signal (the ring buffer was full)
  for (auto& [cookie, c] : clients_)
    if (!c.failed && !client_alive(cookie)) on_client_gone(cookie);
  reap_clients();
  // the pool: rates of the last period, warm sets still in use
  auto now = std::chrono::steady_clock::now();
  rate_ = demand_;
  demand_.clear();
  for (auto it = wanted_.begin(); it != wanted_.end();) {
    if (now - it->second.last > o_.pool_idle) {
      it = wanted_.erase(it);
      continue;
    }
    warm_up(it->first);
    ++it;
  }
  // pools are per calling pod's namespace too: forget the empty ones nobody wants (pods come
  // and go)
  std::erase_if(pool_, [&](const auto& e) { return e.second.empty() && !wanted_.count(e.first); });
  std::erase_if(warming_, [&](const auto& e) { return e.second == 0 && !wanted_.count(e.first); });
  // kernel entries of clients this relay never kept (refused frames), gone
  size_t checked = 0;
  for (uint64_t c : m_.keys<uint64_t>(maps::MapId::RelayClients)) {
    if (++checked > 4096) break;
    if (!clients_.count(c) && !client_alive(c)) forget_client(c);
  }
  find_lost_frames();
  credit_forgotten();
  resync_total();
  drop_pod_nets();
}

// A client whose last frame never reached the relay (the kernel delivered it
// out of step, or into a socket that was being replaced) would wait for ever:
// the kernel says it sent more frames than the relay has, the relay holds none
// of its bytes, and that stays so for a second (a frame on its way is read
// within that time). Reset it (counted).
void Relay::find_lost_frames() {
  auto now = std::chrono::steady_clock::now();
  if (now < next_lost_check_) return;
  next_lost_check_ = now + std::chrono::seconds(1);
  std::unordered_map<uint64_t, uint32_t> suspects;
  std::vector<Unfinished> unfinished;
  unfinished_clients(unfinished, 16384);
  for (const auto& u : unfinished) {
    uint64_t c = u.client;
    uint32_t sent = u.sent;
    if (auto it = clients_.find(c); it != clients_.end() && (it->second.failed || !it->second.q.empty()))
      continue;  // failing already, or its frames are here
    if (auto was = lost_suspects_.find(c); was != lost_suspects_.end() && was->second == sent)
      frame_lost(c, "a frame never reached the relay", nullptr);
    else
      suspects[c] = sent;
  }
  lost_suspects_.swap(suspects);
  reap_clients();
}

void Relay::sweep_upstream(Upstream& u) {
  auto now = std::chrono::steady_clock::now();
  switch (u.state) {
    case UpState::Connecting:
      if (now - u.since < o_.connect_timeout) return;
      count(RelayCounter::connect_timeouts);
      spdlog::warn("per-request steering: connecting to {}: no answer in {} ms", u.backend,
                   o_.connect_timeout.count());
      if (auto c = clients_.find(u.client); c != clients_.end() && !c->second.failed) {
        close_upstream(u.cookie, RelayCounter::kCount);
        fail_client(c->second, RelayCounter::reset_no_upstream);
      } else {
        close_upstream(u.cookie, RelayCounter::kCount);
      }
      return;
    case UpState::Pooled:
      if (now - u.since >= o_.pool_idle) close_upstream(u.cookie, RelayCounter::closed_pool_idle);
      else if (!backend_in_set(u)) close_upstream(u.cookie, RelayCounter::closed_pod_gone);
      return;
    case UpState::Bound:
      break;
  }
  if (!client_alive(u.client)) {
    close_upstream(u.cookie, RelayCounter::closed_client_gone);
    return;
  }
  Snapshot s = owed(u);
  if (u.unbound) {
    if (s.owed == Owed::Nothing) close_upstream(u.cookie, RelayCounter::kCount);
    return;
  }
  uint64_t quiet = idle_ms(u.fd.get());
  if (s.owed != Owed::Nothing) {
    // Owing a response: never idle; but a server silent for the response
    // timeout fails its client visibly instead of leaving it to hang.
    if (quiet >= static_cast<uint64_t>(o_.response_timeout.count())) {
      spdlog::warn("per-request steering: upstream {} of client {}: no traffic for {} ms with a response owed: "
                   "the client connection is reset",
                   u.backend, u.client, quiet);
      auto c = clients_.find(u.client);
      uint64_t cookie = u.cookie;
      if (c != clients_.end()) {
        fail_client(c->second, RelayCounter::reset_response_timeout);
      } else {
        count(RelayCounter::reset_response_timeout);
        destroy_client(u.client);
      }
      close_upstream(cookie, RelayCounter::kCount);
      return;
    }
    if (!backend_in_set(u)) settle(u);  // closed once it owes nothing
    return;
  }
  bool pod_gone = !backend_in_set(u);
  if (!pod_gone && quiet < static_cast<uint64_t>(o_.idle_timeout.count())) return;
  // Unbind first: new requests take the slow path to another upstream; this
  // one closes once it owes the client nothing.
  settle(u);
  spdlog::info("per-request steering: upstream {} of client {} unbound: {}", u.backend, u.client,
               pod_gone ? "its pod left the set" : "idle");
  if (owed(u).owed == Owed::Nothing)
    close_upstream(u.cookie, pod_gone ? RelayCounter::closed_pod_gone : RelayCounter::closed_idle);
  else
    count(pod_gone ? RelayCounter::closed_pod_gone : RelayCounter::closed_idle);
}

// The programs add every frame's bytes to es_relay_acct and es_relay_pods; a
// frame they counted but could not deliver (a failed redirect) is done with by
// handle_frame() or credit_forgotten(). A safety net besides: when the relay
// holds no client and every frame is done, the accounts are exact: take them,
// and drop the pods' entries. Checked when the total is off, else every 10 s
// (a walk of es_relay_clients).
void Relay::resync_total() {
  // Only with no client held here and none forgotten with bytes pending: the bytes of frames
  // that never arrived are done with by handle_frame() (a gap before a client's next frame) and
  // credit_forgotten(); a resync while one of them is under way would count them twice.
  if (queued_bytes_ != 0 || !forgotten_.empty() || !clients_.empty()) return;
  uint32_t zero = 0;
  es_relay_acct acct{};
  if (bpf_map_lookup_elem(acct_, &zero, &acct) != 0) return;
  auto now = std::chrono::steady_clock::now();
  if (acct.framed == done_total_ && now < next_resync_) return;
  std::vector<std::pair<uint64_t, es_relay_pod>> pods;
  for (uint64_t p : m_.keys<uint64_t>(maps::MapId::RelayPods)) {
    es_relay_pod v{};
    if (bpf_map_lookup_elem(pods_, &p, &v) == 0) pods.emplace_back(p, v);
  }
  std::vector<Unfinished> unfinished;
  if (!unfinished_clients(unfinished, 16384) || !unfinished.empty()) return;  // a frame on its way
  next_resync_ = now + std::chrono::seconds(10);
  if (acct.framed > done_total_)
    spdlog::debug("per-request steering: {} framed bytes never reached the relay", acct.framed - done_total_);
  done_total_ = acct.framed;
  for (auto& rs : socks_) rs.done = acct.socket_framed[rs.index];
  std::unordered_map<uint64_t, bool> has_client;
  for (const auto& [cookie, c] : clients_) has_client[c.pod] = true;
  for (const auto& [pod, v] : pods) {
    if (has_client.count(pod)) {
      pod_done_[pod] = v.framed;
      pod_dirty_.push_back(pod);
    } else {
      bpf_map_delete_elem(pods_, &pod);
      bpf_map_delete_elem(pod_done_map_, &pod);
      pod_done_.erase(pod);
      pod_published_.erase(pod);
    }
  }
}

}  // namespace envsteer
