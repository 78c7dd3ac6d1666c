// SPDX-License-Identifier: Apache-2.0
// The HTTP/2 endpoint: the loop, client connections, routing (h2proxy.h).
#include "h2proxy.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <stdexcept>

#include "admin_server.h"
#include "h2_internal.h"
#include "maps/maps.h"
#include "metrics.h"
#include "relay_internal.h"

namespace envsteer {

using namespace h2detail;

const char* stream_outcome_name(StreamOutcome o) {
  switch (o) {
    case StreamOutcome::Header: return "header";
    case StreamOutcome::Caller: return "caller";
    case StreamOutcome::Invalid: return "invalid_header";
    case StreamOutcome::NoPod: return "no_ready_pod";
    case StreamOutcome::UpstreamFailed: return "upstream_failed";
    case StreamOutcome::Limit: return "limit";
    case StreamOutcome::kCount: break;
  }
  return "?";
}

std::vector<nghttp2_nv> to_nv(const h2::Headers& hdrs) {
  std::vector<nghttp2_nv> nv;
  nv.reserve(hdrs.size());
  for (const auto& [k, v] : hdrs)
    nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(k.data())),
                  reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), k.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
  return nv;
}

namespace {

using Impl = H2Proxy::Impl;

Impl& impl_of(void* conn) { return *static_cast<Impl*>(static_cast<Conn*>(conn)->owner); }

bool is_grpc(const h2::Headers& h) {
  for (const auto& [k, v] : h)
    if (k == "content-type") return v.rfind("application/grpc", 0) == 0;
  return false;
}

// --- the client-facing (server) session's callbacks

int on_begin_headers(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
  auto& c = *static_cast<Client*>(static_cast<Conn*>(ud));
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto st = std::make_unique<Stream>();
  st->id = f->hd.stream_id;
  st->client = &c;
  nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st.get());
  c.streams[f->hd.stream_id] = std::move(st);
  impl_of(ud).g_streams++;
  return 0;
}

int on_header(nghttp2_session* s, const nghttp2_frame* f, const uint8_t* name, size_t namelen, const uint8_t* value,
              size_t valuelen, uint8_t, void*) {
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(s, f->hd.stream_id));
  if (!st) return 0;
  st->hdr_bytes += namelen + valuelen + 32;
  if (st->hdr_bytes > kMaxStreamHeaderBytes) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // the stream is reset
  auto& to = f->headers.cat == NGHTTP2_HCAT_REQUEST ? st->req_hdrs : st->req_trailers;
  to.emplace_back(std::string(reinterpret_cast<const char*>(name), namelen),
                  std::string(reinterpret_cast<const char*>(value), valuelen));
  return 0;
}

int on_frame_recv(nghttp2_session* s, const nghttp2_frame* f, void* ud) {
  Impl& p = impl_of(ud);
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(s, f->hd.stream_id));
  if (!st) return 0;
  bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    st->req_end = end;
    st->grpc = is_grpc(st->req_hdrs);
    p.route(*st);
    return 0;
  }
  if (end || (f->hd.type == NGHTTP2_HEADERS)) {
    st->req_end = true;
    if (st->up && !st->up_closed && st->in_up_session) {
      nghttp2_session_resume_data(st->up->session, st->up_id);
      p.mark(*st->up);
    }
  }
  return 0;
}

int on_data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data, size_t len, void* ud) {
  Impl& p = impl_of(ud);
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(s, id));
  if (!st || !st->up || st->up_closed) {  // nobody to take it: given back at once
    nghttp2_session_consume(s, id, len);
    p.mark(*static_cast<Conn*>(ud));
    return 0;
  }
  st->req.append(data, len);
  p.add_buffered(*st->client, static_cast<int64_t>(len));
  if (st->in_up_session) {
    nghttp2_session_resume_data(st->up->session, st->up_id);
    p.mark(*st->up);
  }
  return 0;
}

int on_stream_close(nghttp2_session* s, int32_t id, uint32_t code, void* ud) {
  Impl& p = impl_of(ud);
  auto* st = static_cast<Stream*>(nghttp2_session_get_stream_user_data(s, id));
  if (!st) return 0;
  st->client_closed = true;
  // bytes it sent that nobody will take: the connection's window back
  if (st->req.size()) {
    if (size_t owed = h2detail::take_owed(*st, st->req.size())) nghttp2_session_consume_connection(s, owed);
    p.add_buffered(*st->client, -static_cast<int64_t>(st->req.size()));
    st->req = {};
  }
  p.drop_sent(*st);
  if (st->up && !st->up_closed && (code != NGHTTP2_NO_ERROR || !st->rsp_end)) {
    nghttp2_submit_rst_stream(st->up->session, NGHTTP2_FLAG_NONE, st->up_id,
                              code != NGHTTP2_NO_ERROR ? code : static_cast<uint32_t>(NGHTTP2_CANCEL));
    p.mark(*st->up);
  }
  p.maybe_free(*st);
  return 0;
}

// Streams refused by the concurrency bound never open: counted as their
// RST_STREAM (REFUSED_STREAM) goes out.
int on_frame_send(nghttp2_session*, const nghttp2_frame* f, void* ud) {
  if (f->hd.type == NGHTTP2_RST_STREAM && f->rst_stream.error_code == NGHTTP2_REFUSED_STREAM)
    impl_of(ud).count(kH2_streams_refused);
  return 0;
}

// The response body toward the client: what the upstream sent, as the
// client's windows allow; the upstream's window is given back as it goes.
ssize_t rsp_read(nghttp2_session* s, int32_t, uint8_t* buf, size_t len, uint32_t* flags, nghttp2_data_source* src,
                 void* ud) {
  Impl& p = impl_of(ud);
  auto* st = static_cast<Stream*>(src->ptr);
  size_t n = st->rsp.take(buf, len);
  if (n) {
    p.add_buffered(*st->client, -static_cast<int64_t>(n));
    if (st->up) {
      nghttp2_session_consume_connection(st->up->session, n);
      if (!st->up_closed) nghttp2_session_consume_stream(st->up->session, st->up_id, n);
      p.mark(*st->up);
    }
  }
  if (st->rsp.size() == 0 && st->rsp_end) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!st->rsp_trailers.empty()) {
      auto nv = to_nv(st->rsp_trailers);
      if (nghttp2_submit_trailer(s, st->id, nv.data(), nv.size()) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return static_cast<ssize_t>(n);
  }
  if (n == 0) return NGHTTP2_ERR_DEFERRED;
  return static_cast<ssize_t>(n);
}

nghttp2_session_callbacks* server_callbacks() {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  return cb;
}

}  // namespace

// Upstream side callbacks live in h2upstream.cpp.
nghttp2_session_callbacks* h2_client_callbacks();
ssize_t h2_rsp_read(nghttp2_session* s, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                    nghttp2_data_source* src, void* ud) {
  return rsp_read(s, id, buf, len, flags, src, ud);
}

// ---------------------------------------------------------------------------

H2Proxy::H2Proxy(const maps::BpfMapBackend& maps, H2Options o, TraceFn trace)
    : p_(std::make_unique<Impl>(maps, std::move(o), std::move(trace))) {}

H2Proxy::~H2Proxy() { stop(); }

void H2Proxy::Impl::bind_listener() {
  h2::ListenAddr la;
  try {
    la = h2::parse_listen(o.listen);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(e.what());
  }
  const std::string& host = la.host;
  const uint16_t port = la.port;
  sockaddr_storage ss{};
  socklen_t sl = 0;
  cfg = {};
  if (in_addr a4{}; inet_pton(AF_INET, host.c_str(), &a4) == 1) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr = a4;
    a->sin_port = htons(port);
    sl = sizeof(*a);
    cfg.addr[0] = a4.s_addr;
    cfg.family = ES_FAMILY_INET;
  } else if (in6_addr a6{}; inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = a6;
    a->sin6_port = htons(port);
    sl = sizeof(*a);
    std::memcpy(cfg.addr, &a6, 16);
    cfg.family = ES_FAMILY_INET6;
  } else {
    throw std::runtime_error("--h2-listen: \"" + o.listen + "\" is no IP address and port");
  }
  listener.fd.reset(socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener.fd) throw std::runtime_error("HTTP/2 endpoint: socket: " + relay_detail::errstr(errno));
  int one = 1;
  setsockopt(listener.fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ss.ss_family == AF_INET6) setsockopt(listener.fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(listener.fd.get(), reinterpret_cast<sockaddr*>(&ss), sl) != 0 || listen(listener.fd.get(), 1024) != 0)
    throw std::runtime_error("HTTP/2 endpoint: cannot listen on " + o.listen + ": " + relay_detail::errstr(errno));
  sockaddr_storage got{};
  socklen_t gl = sizeof(got);
  getsockname(listener.fd.get(), reinterpret_cast<sockaddr*>(&got), &gl);
  cfg.port = got.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                                       : reinterpret_cast<sockaddr_in*>(&got)->sin_port;
}

void H2Proxy::start() {
  Impl& p = *p_;
  p.bind_listener();
  p.epoll.reset(epoll_create1(EPOLL_CLOEXEC));
  p.wake.fd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!p.epoll || !p.wake.fd) throw std::runtime_error("HTTP/2 endpoint: epoll: " + relay_detail::errstr(errno));
  for (Conn* c : {&p.listener, &p.wake}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(p.epoll.get(), EPOLL_CTL_ADD, c->fd.get(), &ev);
  }
  p.server_cbs = server_callbacks();
  p.client_cbs = h2_client_callbacks();
  nghttp2_option_new(&p.opts);
  nghttp2_option_set_no_auto_window_update(p.opts, 1);
  nghttp2_option_set_no_http_messaging(p.opts, 0);
  p.running = true;
  p.thread = std::thread([&p] { p.loop(); });
  uint32_t zero = 0;
  if (bpf_map_update_elem(p.maps.fd(maps::MapId::H2Cfg), &zero, &p.cfg, BPF_ANY) != 0)
    spdlog::warn("HTTP/2 endpoint: cannot publish it to the programs: {}", relay_detail::errstr(errno));
  char a[INET6_ADDRSTRLEN] = "";
  inet_ntop(p.cfg.family == ES_FAMILY_INET6 ? AF_INET6 : AF_INET, p.cfg.addr, a, sizeof(a));
  spdlog::info("HTTP/2 endpoint on {}:{}: declared HTTP/2 ports of services with more than one backend set "
               "are routed per stream",
               a, ntohs(p.cfg.port));
}

void H2Proxy::stop() {
  Impl& p = *p_;
  if (!p.thread.joinable()) return;
  // The endpoint stays published: a new agent (a restart, an upgrade) takes it
  // over; meanwhile new connections are refused and their clients retry, rather
  // than being made to one pod for their whole life. An agent started without
  // --h2-listen unpublishes it (Agent::start_h2).
  p.running = false;
  uint64_t one = 1;
  if (write(p.wake.fd.get(), &one, sizeof(one)) < 0) {
  }
  p.thread.join();
  if (p.server_cbs) nghttp2_session_callbacks_del(p.server_cbs);
  if (p.client_cbs) nghttp2_session_callbacks_del(p.client_cbs);
  if (p.opts) nghttp2_option_del(p.opts);
  p.server_cbs = p.client_cbs = nullptr;
  p.opts = nullptr;
}

void H2Proxy::Impl::mark(Conn& c) {
  if (!c.dead) dirty.push_back(&c);
}

void H2Proxy::Impl::drop_sent(Stream& st) {
  st.retry_ok = false;
  if (!st.sent.size()) return;
  add_buffered(*st.client, -static_cast<int64_t>(st.sent.size()));
  st.sent = {};
}

void H2Proxy::Impl::add_buffered(Client& c, int64_t d) {
  c.buffered = static_cast<uint64_t>(static_cast<int64_t>(c.buffered) + d);
  g_buffered += static_cast<uint64_t>(d);
  if (c.buffered > g_max_buffered) g_max_buffered = c.buffered;
}

void H2Proxy::Impl::loop() {
  std::array<epoll_event, 64> evs{};
  auto next_sweep = Clock::now();
  while (running) {
    int n = epoll_wait(epoll.get(), evs.data(), static_cast<int>(evs.size()), 200);
    for (int i = 0; i < n; i++) {
      auto* c = static_cast<Conn*>(evs[static_cast<size_t>(i)].data.ptr);
      uint32_t e = evs[static_cast<size_t>(i)].events;
      if (c->kind == Kind::Listener) {
        on_accept();
        continue;
      }
      if (c->kind == Kind::Wake) {
        uint64_t v;
        if (read(c->fd.get(), &v, sizeof(v)) < 0) {
        }
        continue;
      }
      if (c->dead) continue;
      c->last = Clock::now();
      if (c->connecting && (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        on_connected(*static_cast<Upstream*>(c));
        if (c->dead) continue;
      }
      if (e & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) on_readable(*c);
      if (!c->dead && (e & EPOLLOUT)) mark(*c);
    }
    // flush what the callbacks produced; flushing can produce more (windows given back)
    for (int round = 0; round < 8 && !dirty.empty(); round++) {
      std::vector<Conn*> d;
      d.swap(dirty);
      std::sort(d.begin(), d.end());
      d.erase(std::unique(d.begin(), d.end()), d.end());
      for (Conn* c : d)
        if (!c->dead) flush(*c);
    }
    if (Clock::now() >= next_sweep) {
      sweep();
      next_sweep = Clock::now() + std::chrono::milliseconds(200);
    }
    reap();
  }
  shutdown_all();
}

void H2Proxy::Impl::on_accept() {
  for (int i = 0; i < 64; i++) {
    sockaddr_storage ss{};
    socklen_t sl = sizeof(ss);
    UniqueFd fd(accept4(listener.fd.get(), reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) return;
    es_h2_conn_key k{};
    if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      std::memcpy(k.addr, &a->sin6_addr, 16);
      k.port = a->sin6_port;
      k.family = ES_FAMILY_INET6;
      if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
        k.addr[0] = k.addr[3];
        k.addr[2] = k.addr[3] = 0;
        k.family = ES_FAMILY_INET;
      }
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      k.addr[0] = a->sin_addr.s_addr;
      k.port = a->sin_port;
      k.family = ES_FAMILY_INET;
    }
    es_h2_conn info{};
    char a[INET6_ADDRSTRLEN] = "";
    inet_ntop(k.family == ES_FAMILY_INET6 ? AF_INET6 : AF_INET, k.addr, a, sizeof(a));
    std::string peer = std::string(a) + ":" + std::to_string(ntohs(k.port));
    if (!maps.lookup(maps::MapId::H2Conns, &k, &info)) {
      // not a connection the programs sent here (or its record aged out):
      // nobody's streams are routed for an unknown caller
      count(kH2_unknown);
      spdlog::warn("HTTP/2 endpoint: connection from {} not made by a managed pod's connect(): closed", peer);
      continue;
    }
    bpf_map_delete_elem(maps.fd(maps::MapId::H2Conns), &k);
    if (clients.size() >= o.max_clients) {
      count(kH2_refused_max_clients);
      spdlog::warn("HTTP/2 endpoint: {} client connections already: {} closed", clients.size(), peer);
      continue;
    }
    if (uint32_t& mine = pod_clients[info.pod_cgroup]; mine >= o.max_clients_per_pod) {
      count(kH2_refused_pod_share);
      spdlog::warn("HTTP/2 endpoint: pod cgroup {} has {} client connections already: {} closed", info.pod_cgroup,
                   mine, peer);
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto c = std::make_unique<Client>();
    c->fd = std::move(fd);
    c->info = info;
    c->peer = peer;
    c->owner = this;
    c->last = c->accepted = Clock::now();
    if (nghttp2_session_server_new2(&c->session, server_cbs, static_cast<Conn*>(c.get()), opts) != 0) continue;
    pod_clients[info.pod_cgroup]++;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o.max_streams},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o.window},
                                   {NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 3);
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, static_cast<int32_t>(o.conn_window));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.ptr = static_cast<Conn*>(c.get());
    epoll_ctl(epoll.get(), EPOLL_CTL_ADD, c->fd.get(), &ev);
    count(kH2_accepted);
    Client* raw = c.get();
    clients[raw] = std::move(c);
    g_clients = clients.size();
    mark(*raw);
  }
}

void H2Proxy::Impl::on_readable(Conn& c) {
  uint8_t buf[65536];
  for (int i = 0; i < 16 && !c.dead; i++) {
    ssize_t r = read(c.fd.get(), buf, sizeof(buf));
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (r <= 0) {
      if (c.kind == Kind::Upstream)
        lose_upstream(static_cast<Upstream&>(c), r == 0 ? "closed by the server" : relay_detail::errstr(errno));
      else
        c.dead = true;
      return;
    }
    if (c.kind == Kind::Client && static_cast<Client&>(c).lingering) {
      auto& cl = static_cast<Client&>(c);
      cl.lingered += static_cast<size_t>(r);  // dropped: the answer went out already
      if (cl.lingered > kLingerBytes) {
        c.dead = true;
        return;
      }
      continue;
    }
    if (c.kind == Kind::Client && static_cast<Client&>(c).opening) {
      if (static_cast<Client&>(c).close_when_flushed) continue;  // answered: the rest is dropped
      on_opening(static_cast<Client&>(c), buf, static_cast<size_t>(r));
      if (c.dead) return;
      continue;
    }
    ssize_t k = nghttp2_session_mem_recv(c.session, buf, static_cast<size_t>(r));
    if (k < 0) {
      count(kH2_protocol_errors);
      spdlog::debug("HTTP/2 endpoint: {}: {}", c.kind == Kind::Client ? static_cast<Client&>(c).peer
                                                                      : static_cast<Upstream&>(c).backend,
                    nghttp2_strerror(static_cast<int>(k)));
      if (c.kind == Kind::Upstream) {
        lose_upstream(static_cast<Upstream&>(c), "protocol error");
      } else {
        flush(c);  // the GOAWAY nghttp2 queued, if it can go
        c.dead = true;
      }
      return;
    }
    if (r < static_cast<ssize_t>(sizeof(buf))) break;
  }
  mark(c);
}

// EPOLLOUT only while bytes wait for the socket (a level-triggered EPOLLOUT on an idle
// socket would wake the loop for nothing).
void H2Proxy::Impl::want_writable(Conn& c, bool on) {
  if (c.want_out == on) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0u);
  ev.data.ptr = &c;
  epoll_ctl(epoll.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
  c.want_out = on;
}

void H2Proxy::Impl::flush(Conn& c) {
  if (c.dead || c.connecting || !c.session) return;
  for (;;) {
    while (c.out_off < c.out.size()) {
      ssize_t w = send(c.fd.get(), c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EAGAIN) {
        want_writable(c, true);
        return;
      }
      if (w <= 0) {
        if (c.kind == Kind::Upstream)
          lose_upstream(static_cast<Upstream&>(c), relay_detail::errstr(errno));
        else
          c.dead = true;
        return;
      }
      c.out_off += static_cast<size_t>(w);
    }
    c.out.clear();
    c.out_off = 0;
    if (c.kind == Kind::Client) {
      auto& cl = static_cast<Client&>(c);
      if (cl.close_when_flushed) {
        shutdown(c.fd.get(), SHUT_WR);
        cl.close_when_flushed = false;
        cl.lingering = true;
        cl.linger_until = Clock::now() + kLinger;
        want_writable(c, false);
        return;
      }
      if (cl.lingering) return;
      if (cl.opening) break;  // nothing goes out before the client said what it speaks
    }
    const uint8_t* data = nullptr;
    ssize_t k = nghttp2_session_mem_send(c.session, &data);
    if (k < 0) {
      count(kH2_protocol_errors);
      if (c.kind == Kind::Upstream)
        lose_upstream(static_cast<Upstream&>(c), nghttp2_strerror(static_cast<int>(k)));
      else
        c.dead = true;
      return;
    }
    if (k == 0) break;
    c.out.assign(reinterpret_cast<const char*>(data), static_cast<size_t>(k));
  }
  want_writable(c, false);
  if (c.kind == Kind::Client && static_cast<Client&>(c).opening) return;
  if (!nghttp2_session_want_read(c.session) && !nghttp2_session_want_write(c.session)) {
    if (c.kind == Kind::Upstream)
      lose_upstream(static_cast<Upstream&>(c), "session ended");
    else
      c.dead = true;
  }
}

// --- the first bytes: the HTTP/2 preface, or an HTTP/1.1 request (h2c Upgrade)

void H2Proxy::Impl::answer_http1(Client& c, int code, const char* reason, const std::string& why) {
  count(kH2_http1_refused);
  spdlog::debug("HTTP/2 endpoint: {}: {} {}: {}", c.peer, code, reason, why);
  std::string body = "envsteer: " + why + "\n";
  c.out = "HTTP/1.1 " + std::to_string(code) + " " + reason +
          "\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\n\r\n" + body;
  c.out_off = 0;
  c.first.clear();
  c.close_when_flushed = true;
  mark(c);
}

void H2Proxy::Impl::on_opening(Client& c, const uint8_t* data, size_t len) {
  c.first.append(reinterpret_cast<const char*>(data), len);
  auto feed_rest = [&](size_t from) {
    c.opening = false;
    std::string rest = c.first.substr(from);
    c.first.clear();
    c.first.shrink_to_fit();
    if (rest.empty()) return;
    ssize_t k = nghttp2_session_mem_recv(c.session, reinterpret_cast<const uint8_t*>(rest.data()), rest.size());
    if (k < 0) {
      count(kH2_protocol_errors);
      flush(c);
      c.dead = true;
    }
  };
  switch (h2::classify_opening(c.first)) {
    case h2::Opening::Need:
      return;
    case h2::Opening::Preface:
      feed_rest(0);
      mark(c);
      return;
    case h2::Opening::Garbage:
      count(kH2_protocol_errors);
      c.dead = true;
      return;
    case h2::Opening::Http1:
      break;
  }
  h2::Http1Request r = h2::parse_http1_request(c.first);
  if (!r.complete) {
    if (c.first.size() > kMaxUpgradeHead)
      answer_http1(c, 431, "Request Header Fields Too Large", "request head over 16 KiB");
    return;
  }
  if (!r.valid) return answer_http1(c, 400, "Bad Request", "not an HTTP/1.1 request");
  if (!r.upgrade_h2c)
    return answer_http1(c, 505, "HTTP Version Not Supported",
                        "this port is declared HTTP/2: use prior knowledge or Upgrade: h2c");
  // A body is read whole before the switch (it is the request of stream 1), so
  // it must have a length, and a small one: the endpoint holds it.
  if (r.chunked)
    return answer_http1(c, 411, "Length Required",
                        "h2c Upgrade with a chunked body: send Content-Length (at most 64 KiB) or use prior knowledge");
  if (r.content_length == -2) return answer_http1(c, 400, "Bad Request", "h2c Upgrade: invalid Content-Length");
  size_t body_len = r.content_length > 0 ? static_cast<size_t>(r.content_length) : 0;
  if (body_len > kMaxUpgradeBody)
    return answer_http1(c, 413, "Content Too Large",
                        "h2c Upgrade with a body over 64 KiB: use prior knowledge, or upgrade with a smaller request");
  if (c.first.size() < r.head_len + body_len) return;  // the rest of the body (opening timeout)
  auto st = std::make_unique<Stream>();
  st->id = 1;
  st->client = &c;
  st->req_hdrs = h2::upgrade_stream_headers(r);
  st->req_end = true;
  st->grpc = is_grpc(st->req_hdrs);
  if (body_len) {
    // not under the session's flow control: never given back to it
    st->req.append(reinterpret_cast<const uint8_t*>(c.first.data() + r.head_len), body_len);
    st->req_free = body_len;
    add_buffered(c, static_cast<int64_t>(body_len));
  }
  int rv = nghttp2_session_upgrade2(c.session, reinterpret_cast<const uint8_t*>(r.settings.data()), r.settings.size(),
                                    r.method == "HEAD", st.get());
  if (rv != 0) return answer_http1(c, 400, "Bad Request", std::string("h2c Upgrade: ") + nghttp2_strerror(rv));
  count(kH2_upgraded);
  // the 101 first, then the session's own SETTINGS and stream 1's response
  c.out = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
  c.out_off = 0;
  Stream* raw = st.get();
  c.streams[1] = std::move(st);
  g_streams++;
  size_t head = r.head_len + body_len;
  feed_rest(head);  // the client's preface and frames that came with the request
  if (c.dead) return;
  route(*raw);
  mark(c);
}

// --- routing

void H2Proxy::Impl::route(Stream& st) {
  Client& c = *st.client;
  h2::StreamEnv se = h2::stream_env(st.req_hdrs, o.route);
  const bool labelled = c.info.pod_flags & ES_POD_F_LABELLED;
  h2::Decision d;
  uint32_t source;
  StreamOutcome outcome;
  if (se.from == h2::EnvFrom::Header) {
    d = h2::resolve(maps, c.info.svc_id, se.env, ES_ENV_NONE, o.route.splitter);
    source = ES_SRC_REQUEST;
    outcome = StreamOutcome::Header;
  } else {
    // not known from the stream: the caller's own environment (law 1), counted
    d = h2::resolve(maps, c.info.svc_id, "", c.info.pod_env_id, o.route.splitter);
    source = labelled ? ES_SRC_POD : ES_SRC_DEFAULT;
    outcome = se.from == h2::EnvFrom::Invalid ? StreamOutcome::Invalid : StreamOutcome::Caller;
  }
  if (d.env_res == ES_ENV_NONE) {
    count_stream(st, c.info.svc_id, d.env_req, StreamOutcome::NoPod);
    emit(st, d, source, nullptr, true);
    fail_stream(st, StreamOutcome::NoPod, "envsteer: no ready pod for this stream's environment");
    return;
  }
  if (se.from != h2::EnvFrom::Header && o.route.auto_inject && labelled) {
    std::string name = h2::env_name(maps, c.info.pod_env_id);
    if (!name.empty()) {
      st.req_hdrs.emplace_back(o.inject_name, name);
      count(kH2_injected);
    }
  }
  std::string err;
  Upstream* u = upstream_for(c, c.info.svc_id, d.env_res, &err);
  if (!u) {
    bool limit = err.rfind("limit", 0) == 0;
    count_stream(st, c.info.svc_id, d.env_res, limit ? StreamOutcome::Limit : StreamOutcome::UpstreamFailed);
    emit(st, d, source, nullptr, true);
    fail_stream(st, limit ? StreamOutcome::Limit : StreamOutcome::UpstreamFailed, "envsteer: " + err);
    return;
  }
  count_stream(st, c.info.svc_id, d.env_res, outcome);
  emit(st, d, source, &u->be, false);
  submit_upstream(st, *u);
}

void H2Proxy::Impl::count_stream(const Stream&, uint32_t svc, uint32_t env, StreamOutcome oc) {
  std::lock_guard<std::mutex> g(stats_mu);
  streams_by[{svc, env, static_cast<uint32_t>(oc)}]++;
}

void H2Proxy::Impl::emit(const Stream& st, const h2::Decision& d, uint32_t source, const es_backend* be, bool failed) {
  if (!trace) return;
  const Client& c = *st.client;
  es_trace_event ev{};
  ev.ts_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
  ev.cgroup_id = c.info.pod_cgroup;
  ev.pod_cgroup_id = c.info.pod_cgroup;
  ev.kind = failed ? ES_EV_STREAM_FAILED : ES_EV_STREAM;
  ev.svc_id = c.info.svc_id;
  ev.env_req = d.env_req;
  ev.env_res = d.env_res;
  ev.pod_env = c.info.pod_env_id;
  ev.level = d.level;
  ev.source = source;
  std::memcpy(ev.fe_addr, c.info.orig_addr, sizeof(ev.fe_addr));
  ev.fe_port = c.info.orig_port;
  ev.family = c.info.family;
  ev.proto = IPPROTO_TCP;
  if (be) {
    std::memcpy(ev.be_addr, be->addr, sizeof(ev.be_addr));
    ev.be_port = be->port;
  }
  ev.flags = static_cast<uint32_t>(st.id);
  trace(ev);
}

// The endpoint answers the stream itself: before a response began, with gRPC
// UNAVAILABLE (trailers only) or 503; after, gRPC streams end with UNAVAILABLE
// trailers behind what arrived, others are reset.
void H2Proxy::Impl::fail_stream(Stream& st, StreamOutcome why, const std::string& msg) {
  Client& c = *st.client;
  st.failed = true;
  if (st.up) {
    st.up->streams.erase(st.up_id);
    if (!st.up_closed && st.in_up_session) {
      nghttp2_session_set_stream_user_data(st.up->session, st.up_id, nullptr);
      nghttp2_submit_rst_stream(st.up->session, NGHTTP2_FLAG_NONE, st.up_id, NGHTTP2_CANCEL);
      mark(*st.up);
    }
    // response bytes held for the client are not taken from this upstream any more
    if (st.rsp.size() && !st.up->dead) nghttp2_session_consume_connection(st.up->session, st.rsp.size());
    st.up = nullptr;
    st.up_closed = true;
  }
  drop_sent(st);
  if (st.req.size()) {  // request bytes nobody will take: the client's window back
    if (size_t owed = h2detail::take_owed(st, st.req.size())) nghttp2_session_consume(c.session, st.id, owed);
    add_buffered(c, -static_cast<int64_t>(st.req.size()));
    st.req = {};
  }
  if (st.client_closed) {
    maybe_free(st);
    return;
  }
  (void)why;
  if (!st.rsp_started) {
    st.rsp_started = true;
    if (st.grpc) {
      h2::Headers h{{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "14"},
                    {"grpc-message", msg}};
      auto nv = to_nv(h);
      nghttp2_submit_response(c.session, st.id, nv.data(), nv.size(), nullptr);
    } else {
      add_buffered(c, -static_cast<int64_t>(st.rsp.size()));
      st.rsp = {};
      std::string body = msg + "\n";
      st.rsp.append(reinterpret_cast<const uint8_t*>(body.data()), body.size());
      add_buffered(c, static_cast<int64_t>(body.size()));
      st.rsp_end = true;
      h2::Headers h{{":status", "503"}, {"content-type", "text/plain"}, {"content-length", std::to_string(body.size())}};
      auto nv = to_nv(h);
      nghttp2_data_provider prd{};
      prd.source.ptr = &st;
      prd.read_callback = rsp_read;
      nghttp2_submit_response(c.session, st.id, nv.data(), nv.size(), &prd);
    }
  } else if (st.grpc) {
    st.rsp_trailers = {{"grpc-status", "14"}, {"grpc-message", msg}};
    st.rsp_end = true;
    nghttp2_session_resume_data(c.session, st.id);
  } else {
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_INTERNAL_ERROR);
  }
  mark(c);
}

void H2Proxy::Impl::maybe_free(Stream& st) {
  if (!st.client_closed) return;
  if (st.up && !st.up_closed) return;  // its upstream stream closes first
  Client& c = *st.client;
  if (st.up) st.up->streams.erase(st.up_id);
  drop_sent(st);
  add_buffered(c, -static_cast<int64_t>(st.req.size() + st.rsp.size()));
  if (st.rsp.size() && st.up && !st.up->dead) nghttp2_session_consume_connection(st.up->session, st.rsp.size());
  auto it = c.streams.find(st.id);
  if (it != c.streams.end() && it->second.get() == &st) {
    if (c.session) nghttp2_session_set_stream_user_data(c.session, st.id, nullptr);
    c.streams.erase(it);
    g_streams--;
  }
}

void H2Proxy::Impl::close_client(Client& c) {
  for (Upstream* u : c.ups) {
    u->dead = true;
    u->client = nullptr;
    u->streams.clear();
  }
  c.ups.clear();
  c.by_set.clear();
  for (auto& [id, st] : c.streams)
    add_buffered(c, -static_cast<int64_t>(st->req.size() + st->rsp.size() + st->sent.size()));
  g_streams -= c.streams.size();
  c.streams.clear();
  count(kH2_closed);
}

// Frees what was closed in this turn of the loop: first everything dead is
// marked (a closed client's upstreams too) and dropped from `dirty`, then freed.
void H2Proxy::Impl::reap() {
  for (auto& [raw, c] : clients)
    if (c->dead) close_client(*c);  // marks its upstreams dead
  dirty.erase(std::remove_if(dirty.begin(), dirty.end(), [](Conn* c) { return c->dead; }), dirty.end());
  for (auto it = ups.begin(); it != ups.end();) {
    Upstream& u = *it->second;
    if (!u.dead) {
      ++it;
      continue;
    }
    if (u.client) {
      auto& v = u.client->ups;
      v.erase(std::remove(v.begin(), v.end(), &u), v.end());
      auto b = u.client->by_set.find(u.env_id);
      if (b != u.client->by_set.end() && b->second == &u) u.client->by_set.erase(b);
    }
    epoll_ctl(epoll.get(), EPOLL_CTL_DEL, u.fd.get(), nullptr);
    it = ups.erase(it);
  }
  std::vector<uint64_t> left;  // pods of closed clients
  for (auto it = clients.begin(); it != clients.end();) {
    if (!it->second->dead) {
      ++it;
      continue;
    }
    left.push_back(it->second->info.pod_cgroup);
    if (auto pc = pod_clients.find(it->second->info.pod_cgroup); pc != pod_clients.end() && --pc->second == 0)
      pod_clients.erase(pc);
    epoll_ctl(epoll.get(), EPOLL_CTL_DEL, it->second->fd.get(), nullptr);
    it = clients.erase(it);
  }
  // a namespace handle keeps the namespace alive: held only while the pod has a client here
  for (uint64_t pod : left)
    if (std::none_of(clients.begin(), clients.end(), [pod](const auto& c) { return c.second->info.pod_cgroup == pod; }))
      nets.forget(pod);
  g_clients = clients.size();
  g_ups = ups.size();
}

void H2Proxy::Impl::sweep() {
  auto now = Clock::now();
  // a connection that has not said what it speaks holds a slot of its pod and of
  // the endpoint: it has opening_timeout to do so
  for (auto& [raw, c] : clients) {
    if (!c->dead && c->lingering && now > c->linger_until) c->dead = true;
    if (!c->dead && c->opening && !c->lingering && !c->close_when_flushed &&
        now - c->accepted > o.opening_timeout) {
      count(kH2_opening_timeout);
      spdlog::debug("HTTP/2 endpoint: {}: no preface or complete request within {} ms: closed", c->peer,
                    o.opening_timeout.count());
      c->dead = true;
    }
  }
  for (auto& [raw, u] : ups) {
    if (u->dead) continue;
    if (u->connecting && now - u->last > o.connect_timeout) {
      lose_upstream(*u, "connect timed out");
      continue;
    }
    if (!u->connecting && u->streams.empty() && now - u->last > o.upstream_idle) {
      count(kH2_up_idle);
      u->dead = true;
    }
  }
}

// The agent stops: every client gets GOAWAY (its streams in flight are reset
// when the connection closes), then everything is closed.
void H2Proxy::Impl::shutdown_all() {
  for (auto& [raw, c] : clients) {
    if (c->dead || !c->session) continue;
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->session),
                          NGHTTP2_NO_ERROR, nullptr, 0);
    flush(*c);
    shutdown(c->fd.get(), SHUT_WR);
  }
  for (auto& [raw, c] : clients) close_client(*c);
  clients.clear();
  pod_clients.clear();
  ups.clear();
  g_clients = 0;
  g_ups = 0;
}

// ---------------------------------------------------------------------------

nlohmann::json H2Proxy::status_json() const {
  const Impl& p = *p_;
  nlohmann::json j;
  char a[INET6_ADDRSTRLEN] = "";
  inet_ntop(p.cfg.family == ES_FAMILY_INET6 ? AF_INET6 : AF_INET, p.cfg.addr, a, sizeof(a));
  j["listen"] = std::string(a) + ":" + std::to_string(ntohs(p.cfg.port));
  j["clients"] = p.g_clients.load();
  j["upstreams"] = p.g_ups.load();
  j["streams"] = p.g_streams.load();
  j["buffered_bytes"] = p.g_buffered.load();
  j["max_buffered_bytes_per_client"] = p.g_max_buffered.load();
  j["limits"] = {{"max_clients", p.o.max_clients},   {"max_clients_per_pod", p.o.max_clients_per_pod},
                 {"opening_timeout_ms", p.o.opening_timeout.count()}, {"max_streams", p.o.max_streams},
                 {"max_upstreams", p.o.max_upstreams}, {"window", p.o.window},
                 {"conn_window", p.o.conn_window}};
  nlohmann::json cnt;
#define ES_H2_JSON(id, name, label, value) \
  cnt[std::string(name) + (std::string(value).empty() ? "" : std::string(".") + value)] = p.n[kH2_##id].load();
  ES_H2_COUNTERS(ES_H2_JSON)
#undef ES_H2_JSON
  j["counters"] = cnt;
  nlohmann::json by = nlohmann::json::object();
  {
    std::lock_guard<std::mutex> g(p.stats_mu);
    for (const auto& [k, v] : p.streams_by) by[stream_outcome_name(static_cast<StreamOutcome>(std::get<2>(k)))] =
        by.value(stream_outcome_name(static_cast<StreamOutcome>(std::get<2>(k))), uint64_t{0}) + v;
  }
  j["streams_by_outcome"] = by;
  return j;
}

std::string H2Proxy::metrics(const std::function<std::string(uint32_t)>& svc_name,
                             const std::function<std::string(uint32_t)>& env_name) const {
  const Impl& p = *p_;
  std::string out;
  std::set<std::string> helped;
#define ES_H2_METRIC(id, name, label, value)                                                                 \
  if (helped.insert(name).second)                                                                           \
    out += std::string("# TYPE envsteer_h2_") + name + " counter\n";                                        \
  out += std::string("envsteer_h2_") + name +                                                               \
         (std::string(label).empty() ? std::string() : std::string("{") + label + "=\"" + value + "\"}") + " " + \
         std::to_string(p.n[kH2_##id].load()) + "\n";
  ES_H2_COUNTERS(ES_H2_METRIC)
#undef ES_H2_METRIC
  out += "# TYPE envsteer_h2_clients gauge\nenvsteer_h2_clients " + std::to_string(p.g_clients.load()) + "\n";
  out += "# TYPE envsteer_h2_upstreams gauge\nenvsteer_h2_upstreams " + std::to_string(p.g_ups.load()) + "\n";
  out += "# TYPE envsteer_h2_streams gauge\nenvsteer_h2_streams " + std::to_string(p.g_streams.load()) + "\n";
  out += "# TYPE envsteer_h2_buffered_bytes gauge\nenvsteer_h2_buffered_bytes " + std::to_string(p.g_buffered.load()) +
         "\n";
  out += "# TYPE envsteer_h2_max_buffered_bytes_per_client gauge\nenvsteer_h2_max_buffered_bytes_per_client " +
         std::to_string(p.g_max_buffered.load()) + "\n";
  out += "# HELP envsteer_h2_streams_total HTTP/2 streams routed by the agent's endpoint by service address, "
         "environment (resolved; requested when no pod) and outcome.\n# TYPE envsteer_h2_streams_total counter\n";
  std::lock_guard<std::mutex> g(p.stats_mu);
  for (const auto& [k, v] : p.streams_by) {
    auto [svc, env, oc] = k;
    out += "envsteer_h2_streams_total{service=\"" + prom_label(svc_name(svc)) + "\",env=\"" +
           prom_label(env_name(env)) + "\",outcome=\"" + stream_outcome_name(static_cast<StreamOutcome>(oc)) +
           "\"} " + std::to_string(v) + "\n";
  }
  return out;
}

}  // namespace envsteer
