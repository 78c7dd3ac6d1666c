// SPDX-License-Identifier: Apache-2.0
// The HTTP/2 endpoint's inner parts, shared by h2proxy.cpp (the loop, client
// connections, routing) and h2upstream.cpp (upstream connections); not part of
// its interface (h2proxy.h).
#pragma once

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fd.h"
#include "h2proxy.h"
#include "h2route.h"

namespace envsteer {

namespace h2detail {

using Clock = std::chrono::steady_clock;

// Bytes received from one side, not yet taken by the other side's session.
struct Buf {
  std::string data;
  size_t off = 0;
  size_t size() const { return data.size() - off; }
  void append(const uint8_t* p, size_t n) { data.append(reinterpret_cast<const char*>(p), n); }
  size_t take(uint8_t* dst, size_t n) {
    n = std::min(n, size());
    std::memcpy(dst, data.data() + off, n);
    off += n;
    if (off == data.size()) {
      data.clear();
      off = 0;
    } else if (off > 65536 && off * 2 > data.size()) {
      data.erase(0, off);
      off = 0;
    }
    return n;
  }
};

struct Client;
struct Upstream;

// One client stream and, once routed, its upstream stream.
struct Stream {
  int32_t id = 0;  // the client's stream id
  Client* client = nullptr;
  Upstream* up = nullptr;  // nullptr: not routed, failed, or its upstream is gone
  int32_t up_id = -1;
  h2::Headers req_hdrs, req_trailers, rsp_hdrs, rsp_trailers;
  Buf req, rsp;
  bool req_end = false;      // the client ended its side (all of req has arrived)
  bool rsp_end = false;      // the response is complete (all of rsp has arrived)
  bool rsp_started = false;  // response headers submitted to the client
  bool client_closed = false, up_closed = false;
  bool grpc = false;
  bool failed = false;       // answered by the endpoint itself
  bool in_up_session = false;  // submitted to the upstream session (its data provider may run)
  size_t hdr_bytes = 0;        // header and trailer bytes kept, both directions (bounded)
  // A stream its server refused unprocessed (above a GOAWAY's last-stream-id, or
  // RST_STREAM REFUSED_STREAM; RFC 9113 6.8, 8.7) is sent again on another
  // upstream connection: until its response begins, the request bytes already
  // sent are kept (at most kRetryKeep; beyond, the stream is not retried).
  bool retry_ok = true;
  uint32_t retries = 0;
  Buf sent;
  // Bytes at the front of `req` whose flow-control window was given back
  // already (kept for a retry, or an h2c Upgrade request's body): not given
  // back again when they go on.
  size_t req_free = 0;
};

// Of n request bytes taken from the front of st.req, those whose window is to
// be given back to the client (the others were given back before).
inline size_t take_owed(Stream& st, size_t n) {
  size_t f = std::min(n, st.req_free);
  st.req_free -= f;
  return n - f;
}

// Request bytes kept per stream for a retry, and the retries of one stream.
constexpr size_t kRetryKeep = 16 * 1024;
constexpr uint32_t kMaxRetries = 2;

// Header bytes one stream may carry (request and response heads and trailers
// together): beyond, the stream is reset.
constexpr size_t kMaxStreamHeaderBytes = 256 * 1024;

enum class Kind { Listener, Wake, Client, Upstream };

// What epoll's tag points at.
struct Conn {
  explicit Conn(Kind k) : kind(k) {}
  virtual ~Conn() {
    if (session) nghttp2_session_del(session);
  }
  Kind kind;
  UniqueFd fd;
  nghttp2_session* session = nullptr;
  std::string out;  // bytes the session produced that the socket did not take yet
  size_t out_off = 0;
  bool want_out = false;  // EPOLLOUT registered
  bool dead = false;      // closed at the end of the loop's turn
  bool connecting = false;
  Clock::time_point last{};
  void* owner = nullptr;  // the H2Proxy::Impl (the sessions' callbacks get the Conn)
};

struct Client : Conn {
  Client() : Conn(Kind::Client) {}
  es_h2_conn info{};
  std::string peer;
  std::map<int32_t, std::unique_ptr<Stream>> streams;
  std::map<uint32_t, Upstream*> by_set;  // the upstream new streams of a set go on
  std::vector<Upstream*> ups;            // all of them (owned by Impl::ups_)
  uint64_t buffered = 0;                 // bytes in its streams' buffers, both directions
  // Until the first bytes say what the connection speaks (the HTTP/2 preface or
  // an HTTP/1.1 h2c Upgrade request), they are kept here and nothing is sent.
  bool opening = true;
  std::string first;
  bool close_when_flushed = false;  // an HTTP/1.x answer (505/400) goes out, then the close
  Clock::time_point accepted{};     // the first bytes are due within opening_timeout of it
  // After an HTTP/1.x answer: the write side is shut, what the client still
  // sends is read and dropped (at most kLingerBytes, until linger_until), so
  // that the close does not reset the answer away (RFC 9112 9.6).
  bool lingering = false;
  size_t lingered = 0;
  Clock::time_point linger_until{};
};

constexpr size_t kLingerBytes = 1 << 20;
constexpr std::chrono::milliseconds kLinger{2000};

// Bytes of an HTTP/1.x request head the endpoint waits for before it answers
// 431 and closes.
constexpr size_t kMaxUpgradeHead = 16 * 1024;
// Body bytes of an h2c Upgrade request (Content-Length) the endpoint reads
// before the switch; a larger or chunked body is answered 413.
constexpr size_t kMaxUpgradeBody = 64 * 1024;

struct Upstream : Conn {
  Upstream() : Conn(Kind::Upstream) {}
  Client* client = nullptr;
  uint32_t svc_id = 0, env_id = 0;
  es_backend be{};
  std::string backend;
  bool draining = false;  // GOAWAY received or the pod left the set: no new streams
  std::map<int32_t, Stream*> streams;
  Clock::time_point checked{};  // the pod was last seen in its set
};

}  // namespace h2detail

struct H2Proxy::Impl {
  using Stream = h2detail::Stream;
  using Client = h2detail::Client;
  using Upstream = h2detail::Upstream;
  using Conn = h2detail::Conn;
  using Clock = h2detail::Clock;

  Impl(const maps::BpfMapBackend& m, H2Options opt, TraceFn t)
      : maps(m), o(std::move(opt)), trace(std::move(t)), nets(o.pod_dir ? o.pod_dir : podnet::PodNets::Resolver(
                                                                  [](uint64_t) { return std::nullopt; })) {}

  const maps::BpfMapBackend& maps;
  H2Options o;
  TraceFn trace;
  h2detail::Conn listener{h2detail::Kind::Listener}, wake{h2detail::Kind::Wake};
  UniqueFd epoll;
  es_h2_cfg cfg{};
  std::thread thread;
  std::atomic<bool> running{false};
  std::map<Client*, std::unique_ptr<Client>> clients;
  std::map<Upstream*, std::unique_ptr<Upstream>> ups;
  std::map<uint64_t, uint32_t> pod_clients;  // client connections per calling pod (its cgroup)
  std::vector<Conn*> dirty;  // sessions with something to send
  nghttp2_session_callbacks *server_cbs = nullptr, *client_cbs = nullptr;
  nghttp2_option* opts = nullptr;
  podnet::PodNets nets;  // calling pods' network namespaces (loop thread)

  // counters and gauges (read by other threads)
  std::array<std::atomic<uint64_t>, 32> n{};
  std::atomic<uint64_t> g_clients{0}, g_ups{0}, g_streams{0}, g_buffered{0}, g_max_buffered{0};
  mutable std::mutex stats_mu;
  std::map<std::tuple<uint32_t, uint32_t, uint32_t>, uint64_t> streams_by;  // (svc, env, outcome)

  // h2proxy.cpp
  void bind_listener();
  void loop();
  void on_accept();
  void on_readable(Conn& c);
  void flush(Conn& c);
  void want_writable(Conn& c, bool on);
  void mark(Conn& c);
  void reap();
  void close_client(Client& c);
  void route(Stream& st);
  void fail_stream(Stream& st, StreamOutcome why, const std::string& msg);
  void count_stream(const Stream& st, uint32_t svc, uint32_t env, StreamOutcome o);
  void emit(const Stream& st, const h2::Decision& d, uint32_t source, const es_backend* be, bool failed);
  void maybe_free(Stream& st);
  void on_opening(Client& c, const uint8_t* data, size_t len);
  void answer_http1(Client& c, int code, const char* reason, const std::string& why);
  void sweep();
  void shutdown_all();
  // h2upstream.cpp
  UniqueFd open_upstream_socket(const es_backend& be, const es_h2_conn& caller, int* err);
  void count(int i, uint64_t k = 1) { n[static_cast<size_t>(i)] += k; }
  void add_buffered(Client& c, int64_t d);
  // h2upstream.cpp
  Upstream* upstream_for(Client& c, uint32_t svc_id, uint32_t env_id, std::string* err);
  Upstream* open_upstream(Client& c, uint32_t svc_id, uint32_t env_id, std::string* err);
  bool still_in_set(Upstream& u);
  void on_connected(Upstream& u);
  void lose_upstream(Upstream& u, const std::string& why);
  void submit_upstream(Stream& st, Upstream& u);
  bool retry_refused(Stream& st, Upstream& old);
  void drop_sent(Stream& st);
};

// Counter indexes (ES_H2_COUNTERS order).
enum H2Counter {
#define ES_H2_ENUM(id, name, label, value) kH2_##id,
  ES_H2_COUNTERS(ES_H2_ENUM)
#undef ES_H2_ENUM
      kH2_count
};

// nghttp2 name/value pairs pointing into hdrs (which must outlive the call).
std::vector<nghttp2_nv> to_nv(const h2::Headers& hdrs);

}  // namespace envsteer
