// SPDX-License-Identifier: Apache-2.0
// The HTTP/2 endpoint's upstream connections: one per (client connection,
// backend set), to a pod of the set, opened on first need (h2proxy.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <random>

#include "h2_internal.h"
#include "maps/maps.h"
#include "relay_internal.h"

namespace envsteer {

using namespace h2detail;

// The socket is made in the calling pod's network namespace (the server sees
// the pod's address); a pod whose namespace cannot be found is connected from
// the agent's own (counted: errors pod_netns).
UniqueFd H2Proxy::Impl::open_upstream_socket(const es_backend& be, const es_h2_conn& caller, int* err) {
  sockaddr_storage ss{};
  socklen_t sl = relay_detail::backend_sockaddr(be, &ss);
  auto ns = nets.get(caller.pod_cgroup);
  if (!ns.found) {
    count(kH2_pod_netns);
    spdlog::debug("HTTP/2 per stream: pod {}: {}; connecting from the agent's namespace", caller.pod_cgroup,
                  nets.last_error());
  }
  UniqueFd fd(podnet::socket_in(ns.ns.get(), ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) {
    *err = errno;
    return fd;
  }
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), sl) != 0 && errno != EINPROGRESS) {
    *err = errno;
    return UniqueFd();
  }
  *err = 0;
  return fd;
}

ssize_t h2_rsp_read(nghttp2_session* s, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                    nghttp2_data_source* src, void* ud);

namespace {

using Impl = H2Proxy::Impl;

Impl& impl_of(void* conn) { return *static_cast<Impl*>(static_cast<Conn*>(conn)->owner); }

Stream* stream_of(nghttp2_session* s, int32_t id) {
  return static_cast<Stream*>(nghttp2_session_get_stream_user_data(s, id));
}

int up_begin_headers(nghttp2_session* s, const nghttp2_frame* f, void*) {
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  Stream* st = stream_of(s, f->hd.stream_id);
  if (st && !st->rsp_started) st->rsp_hdrs.clear();  // a new response head (after a 1xx)
  return 0;
}

int up_header(nghttp2_session* s, const nghttp2_frame* f, const uint8_t* name, size_t namelen, const uint8_t* value,
              size_t valuelen, uint8_t, void*) {
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  Stream* st = stream_of(s, f->hd.stream_id);
  if (!st) return 0;
  st->hdr_bytes += namelen + valuelen + 32;
  if (st->hdr_bytes > kMaxStreamHeaderBytes) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // the stream is reset
  auto& to = st->rsp_started ? st->rsp_trailers : st->rsp_hdrs;
  to.emplace_back(std::string(reinterpret_cast<const char*>(name), namelen),
                  std::string(reinterpret_cast<const char*>(value), valuelen));
  return 0;
}

int up_frame_recv(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
  Impl& p = impl_of(ud);
  auto& u = *static_cast<Upstream*>(static_cast<Conn*>(ud));
  if (f->hd.type == NGHTTP2_GOAWAY) {
    // the server is going away: its streams up to last_stream_id finish here,
    // new ones go on a new connection
    if (!u.draining) p.count(kH2_up_goaway);
    u.draining = true;
    return 0;
  }
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
  Stream* st = stream_of(s, f->hd.stream_id);
  if (!st || st->client_closed || !st->client) return 0;
  Client& c = *st->client;
  bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (f->hd.type == NGHTTP2_HEADERS && !st->rsp_started) {
    std::string status;
    for (const auto& [k, v] : st->rsp_hdrs)
      if (k == ":status") status = v;
    if (!status.empty() && status[0] == '1') {  // interim: not passed on
      st->rsp_hdrs.clear();
      return 0;
    }
    st->rsp_started = true;
    st->rsp_end = end;
    p.drop_sent(*st);  // the server is processing it: never retried
    auto nv = to_nv(st->rsp_hdrs);
    nghttp2_data_provider prd{};
    prd.source.ptr = st;
    prd.read_callback = h2_rsp_read;
    nghttp2_submit_response(c.session, st->id, nv.data(), nv.size(), end ? nullptr : &prd);
    p.mark(c);
    return 0;
  }
  if (end || f->hd.type == NGHTTP2_HEADERS) {  // trailers end the stream too
    st->rsp_end = true;
    nghttp2_session_resume_data(c.session, st->id);
    p.mark(c);
  }
  return 0;
}

int up_data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data, size_t len, void* ud) {
  Impl& p = impl_of(ud);
  Stream* st = stream_of(s, id);
  if (!st || st->client_closed || !st->client) {
    nghttp2_session_consume(s, id, len);
    p.mark(*static_cast<Conn*>(ud));
    return 0;
  }
  st->rsp.append(data, len);
  p.add_buffered(*st->client, static_cast<int64_t>(len));
  if (st->rsp_started) {
    nghttp2_session_resume_data(st->client->session, st->id);
    p.mark(*st->client);
  }
  return 0;
}

int up_stream_close(nghttp2_session* s, int32_t id, uint32_t code, void* ud) {
  Impl& p = impl_of(ud);
  auto& u = *static_cast<Upstream*>(static_cast<Conn*>(ud));
  Stream* st = stream_of(s, id);
  if (!st) return 0;
  st->up_closed = true;
  // not processed by the server (RFC 9113 8.7): sent again on another upstream connection
  if (code == NGHTTP2_REFUSED_STREAM && p.retry_refused(*st, u)) return 0;
  // request bytes the upstream will not take: the client's window back
  if (st->req.size() && st->client && st->client->session) {
    if (size_t owed = take_owed(*st, st->req.size())) {
      nghttp2_session_consume_connection(st->client->session, owed);
      if (!st->client_closed) nghttp2_session_consume_stream(st->client->session, st->id, owed);
    }
    p.add_buffered(*st->client, -static_cast<int64_t>(st->req.size()));
    st->req = {};
    p.mark(*st->client);
  }
  if (!st->rsp_end && !st->client_closed) {
    p.count_stream(*st, u.svc_id, u.env_id, StreamOutcome::UpstreamFailed);
    p.fail_stream(*st, StreamOutcome::UpstreamFailed,
                  std::string("envsteer: the upstream stream was reset (") + nghttp2_http2_strerror(code) + ")");
    return 0;
  }
  p.maybe_free(*st);
  return 0;
}

// The request body toward the upstream, as its windows allow; the client's
// window is given back as it goes.
ssize_t req_read(nghttp2_session* s, int32_t, uint8_t* buf, size_t len, uint32_t* flags, nghttp2_data_source* src,
                 void* ud) {
  Impl& p = impl_of(ud);
  auto* st = static_cast<Stream*>(src->ptr);
  size_t n = st->req.take(buf, len);
  if (n && st->client && st->client->session) {
    p.add_buffered(*st->client, -static_cast<int64_t>(n));
    if (size_t owed = take_owed(*st, n)) {
      nghttp2_session_consume_connection(st->client->session, owed);
      if (!st->client_closed) nghttp2_session_consume_stream(st->client->session, st->id, owed);
    }
    p.mark(*st->client);
    if (st->retry_ok) {  // kept until the response begins, for a retry
      if (st->sent.size() + n <= kRetryKeep) {
        st->sent.append(buf, n);
        p.add_buffered(*st->client, static_cast<int64_t>(n));
      } else {
        p.drop_sent(*st);
      }
    }
  }
  if (st->req.size() == 0 && st->req_end) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!st->req_trailers.empty()) {
      auto nv = to_nv(st->req_trailers);
      if (nghttp2_submit_trailer(s, st->up_id, nv.data(), nv.size()) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return static_cast<ssize_t>(n);
  }
  if (n == 0) return NGHTTP2_ERR_DEFERRED;
  return static_cast<ssize_t>(n);
}

}  // namespace

nghttp2_session_callbacks* h2_client_callbacks() {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, up_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, up_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, up_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, up_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, up_stream_close);
  return cb;
}

// Whether the upstream's pod is still a ready pod of its set (checked at most
// once a second per upstream; a pod that left gets no new streams).
bool H2Proxy::Impl::still_in_set(Upstream& u) {
  auto now = Clock::now();
  if (now - u.checked < std::chrono::seconds(1)) return true;
  es_set_key sk{u.svc_id, u.env_id};
  es_set set{};
  if (!maps.lookup(maps::MapId::Sets, &sk, &set) || set.count == 0) return false;
  for (uint32_t i = 0; i < set.count && i < 256; i++) {
    es_slot_key k{u.svc_id, u.env_id, i};
    es_backend be{};
    if (maps.lookup(maps::MapId::Slots, &k, &be) && maps::same_backend(be, u.be)) {  // flags aside
      u.checked = now;
      return true;
    }
  }
  return set.count > 256;  // not looked through: kept
}

Upstream* H2Proxy::Impl::upstream_for(Client& c, uint32_t svc_id, uint32_t env_id, std::string* err) {
  if (auto it = c.by_set.find(env_id); it != c.by_set.end()) {
    Upstream* u = it->second;
    if (!u->dead && !u->draining && still_in_set(*u)) return u;
    if (!u->dead && !u->draining) {
      count(kH2_up_moved);
      u->draining = true;
    }
    c.by_set.erase(it);
  }
  size_t live = 0;
  for (Upstream* u : c.ups) live += !u->dead;
  if (live >= o.max_upstreams) {
    for (Upstream* u : c.ups)  // idle ones make room
      if (!u->dead && u->streams.empty() && live >= o.max_upstreams) {
        u->dead = true;
        live--;
      }
  }
  if (live >= o.max_upstreams) {
    count(kH2_max_upstreams);
    *err = "limit: " + std::to_string(o.max_upstreams) + " upstream connections for this connection already";
    return nullptr;
  }
  return open_upstream(c, svc_id, env_id, err);
}

Upstream* H2Proxy::Impl::open_upstream(Client& c, uint32_t svc_id, uint32_t env_id, std::string* err) {
  es_set_key sk{svc_id, env_id};
  es_set set{};
  if (!maps.lookup(maps::MapId::Sets, &sk, &set) || set.count == 0) {
    *err = "no ready pod in the set";
    return nullptr;
  }
  static thread_local std::mt19937 rng{std::random_device{}()};
  es_slot_key slk{svc_id, env_id, static_cast<uint32_t>(rng() % set.count)};
  es_backend be{};
  if (!maps.lookup(maps::MapId::Slots, &slk, &be)) {
    slk.slot = 0;  // the set shrank under us; slot 0 stays filled while it exists
    if (!maps.lookup(maps::MapId::Slots, &slk, &be)) {
      *err = "no ready pod in the set";
      return nullptr;
    }
  }
  int e = 0;
  UniqueFd fd = open_upstream_socket(be, c.info, &e);
  std::string where = maps::format_backend(be);
  if (!fd) {
    count(kH2_up_connect_failed);
    *err = "connecting to " + where + ": " + relay_detail::errstr(e);
    return nullptr;
  }
  auto u = std::make_unique<Upstream>();
  u->fd = std::move(fd);
  u->owner = this;
  u->client = &c;
  u->svc_id = svc_id;
  u->env_id = env_id;
  u->be = be;
  u->backend = where;
  u->connecting = true;
  u->want_out = true;
  u->last = u->checked = Clock::now();
  if (nghttp2_session_client_new2(&u->session, client_cbs, static_cast<Conn*>(u.get()), opts) != 0) {
    *err = "nghttp2 session";
    return nullptr;
  }
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}, {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.window}};
  nghttp2_submit_settings(u->session, NGHTTP2_FLAG_NONE, iv, 2);
  nghttp2_session_set_local_window_size(u->session, NGHTTP2_FLAG_NONE, 0, static_cast<int32_t>(o.conn_window));
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
  ev.data.ptr = static_cast<Conn*>(u.get());
  epoll_ctl(epoll.get(), EPOLL_CTL_ADD, u->fd.get(), &ev);
  count(kH2_up_connects);
  Upstream* raw = u.get();
  ups[raw] = std::move(u);
  c.ups.push_back(raw);
  c.by_set[env_id] = raw;
  g_ups = ups.size();
  spdlog::debug("HTTP/2 endpoint: {} -> upstream {} (set env {})", c.peer, where, env_id);
  return raw;
}

void H2Proxy::Impl::on_connected(Upstream& u) {
  int e = 0;
  socklen_t l = sizeof(e);
  getsockopt(u.fd.get(), SOL_SOCKET, SO_ERROR, &e, &l);
  if (e != 0) {
    lose_upstream(u, "connect: " + relay_detail::errstr(e));
    return;
  }
  u.connecting = false;
  mark(u);
}

// The upstream connection failed or closed: its streams that have their whole
// response are delivered, the others fail (UNAVAILABLE); other streams of the
// client connection go on.
void H2Proxy::Impl::lose_upstream(Upstream& u, const std::string& why) {
  if (u.dead) return;
  u.dead = true;
  if (u.connecting) count(kH2_up_connect_failed);
  else if (!u.streams.empty()) count(kH2_up_lost);
  std::vector<Stream*> sts;
  for (auto& [id, st] : u.streams) sts.push_back(st);
  if (!sts.empty() || u.connecting)
    spdlog::info("HTTP/2 endpoint: upstream {} lost ({}): {} stream(s) on it", u.backend, why, sts.size());
  for (Stream* st : sts) {
    st->up_closed = true;
    if (!st->rsp_end && !st->client_closed) {
      count_stream(*st, u.svc_id, u.env_id, StreamOutcome::UpstreamFailed);
      fail_stream(*st, StreamOutcome::UpstreamFailed, "envsteer: upstream " + u.backend + " lost: " + why);
    } else {
      u.streams.erase(st->up_id);
      st->up = nullptr;
      maybe_free(*st);
    }
  }
  u.streams.clear();
}

void H2Proxy::Impl::submit_upstream(Stream& st, Upstream& u) {
  auto nv = to_nv(st.req_hdrs);
  nghttp2_data_provider prd{};
  prd.source.ptr = &st;
  prd.read_callback = req_read;
  bool headers_only = st.req_end && st.req.size() == 0 && st.req_trailers.empty();
  int32_t id = nghttp2_submit_request(u.session, nullptr, nv.data(), nv.size(), headers_only ? nullptr : &prd, &st);
  if (id < 0) {
    count_stream(st, u.svc_id, u.env_id, StreamOutcome::UpstreamFailed);
    fail_stream(st, StreamOutcome::UpstreamFailed, std::string("envsteer: ") + nghttp2_strerror(id));
    return;
  }
  st.up = &u;
  st.up_id = id;
  st.in_up_session = true;
  u.streams[id] = &st;
  u.last = Clock::now();
  mark(u);
}

// A stream its server refused unprocessed: above the last-stream-id of its
// GOAWAY, or reset with REFUSED_STREAM (RFC 9113 6.8, 8.7). While its response
// has not begun and the request bytes sent are all kept, it is submitted again,
// with what was sent, on an upstream connection of the same backend set (a new
// one after a GOAWAY: the old one drains); at most kMaxRetries times, counted.
// Called from the old session's stream-close callback. False: not retried (the
// caller fails the stream as before).
bool H2Proxy::Impl::retry_refused(Stream& st, Upstream& old) {
  if (!st.client || st.client_closed || st.failed || st.rsp_started || !st.retry_ok) return false;
  if (st.retries >= kMaxRetries) {
    count(kH2_retry_gave_up);
    spdlog::info("HTTP/2 endpoint: {}: stream {} refused by {} again after {} retries: failed", st.client->peer, st.id,
                 old.backend, st.retries);
    return false;
  }
  old.streams.erase(st.up_id);
  st.up = nullptr;
  st.up_id = -1;
  st.in_up_session = false;
  st.up_closed = false;
  // what was sent goes first again; its window was given back already
  Buf again;
  again.append(reinterpret_cast<const uint8_t*>(st.sent.data.data() + st.sent.off), st.sent.size());
  again.append(reinterpret_cast<const uint8_t*>(st.req.data.data() + st.req.off), st.req.size());
  st.req_free += st.sent.size();
  st.req = std::move(again);  // bytes held are unchanged: sent moved into req
  st.sent = {};
  st.retries++;
  count(kH2_retried);
  std::string err;
  Upstream* u = upstream_for(*st.client, old.svc_id, old.env_id, &err);
  if (!u) {
    bool limit = err.rfind("limit", 0) == 0;
    count_stream(st, old.svc_id, old.env_id, limit ? StreamOutcome::Limit : StreamOutcome::UpstreamFailed);
    fail_stream(st, limit ? StreamOutcome::Limit : StreamOutcome::UpstreamFailed, "envsteer: " + err);
    return true;
  }
  spdlog::debug("HTTP/2 endpoint: {}: stream {} refused by {}: sent again to {}", st.client->peer, st.id, old.backend,
                u->backend);
  submit_upstream(st, *u);
  return true;
}

}  // namespace envsteer
