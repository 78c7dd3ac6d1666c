// SPDX-License-Identifier: Apache-2.0
// The agent's admin HTTP server: small, bounded, one listener per instance.
//
// Why not a general-purpose HTTP server: the admin endpoints take no request bodies and
// answer small GETs, and the one that matters most, /healthz, must answer while anything
// else goes wrong. So:
// - one thread accepts connections and reads request heads (non-blocking, epoll). A head
//   must be complete within Limits::head_timeout and fit in max_head_bytes and max_headers
//   lines; a request with a body (Content-Length > 0, Transfer-Encoding) is refused without
//   reading it. At most max_pending connections wait for their head: a new one drops the
//   oldest. Slow or idle clients therefore cannot hold anything for more than a few seconds.
// - "inline" routes (/healthz) are answered by that thread as soon as the head is complete:
//   no client can starve them, whatever the workers are doing.
// - other routes run on a few worker threads, which only ever get complete requests; at
//   most max_queued wait (then 503). A response is written within write_timeout, or the
//   connection is dropped.
// - streamed responses (the trace) get a thread of their own, at most max_streams.
// - one request per connection (Connection: close).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "fd.h"

namespace envsteer::admin {

struct Request {
  std::string method;  // GET or HEAD
  std::string target;  // as sent: path and query
  std::string path;    // target up to '?'
  std::vector<std::pair<std::string, std::string>> params;  // the query, decoded
  bool has_param(std::string_view name) const;
  std::string param(std::string_view name) const;  // "" when absent
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // A streamed (chunked) response when set: next(out) is called on a thread of its own until
  // it returns false or the client goes away; what it appends to out is sent as one chunk
  // (nothing appended: nothing sent). done() is called once when the stream ends, whatever
  // the reason (also when the stream is refused).
  std::function<bool(std::string& out)> next;
  std::function<void()> done;
};

using Handler = std::function<Response(const Request&)>;

struct Limits {
  size_t max_head_bytes = 8192;                       // request line and headers
  size_t max_headers = 64;                            // header lines
  std::chrono::milliseconds head_timeout{5000};       // from accept to a complete head
  std::chrono::milliseconds write_timeout{10000};     // a response (a stream: each chunk)
  size_t max_pending = 64;                            // connections waiting for their head
  size_t workers = 1;
  size_t max_queued = 8;                              // complete requests waiting for a worker
  size_t max_streams = 0;                             // streamed responses at once
};

// Parsing, exposed for the unit tests.
// Length of the head (through the blank line) when buf holds a complete one, else 0.
size_t head_length(std::string_view buf);
struct Parsed {
  int status = 0;  // 0: a request we serve; else the error status to answer
  std::string why;
  Request req;
};
Parsed parse_head(std::string_view head, const Limits& limits);
// "HOST:PORT" or "[V6]:PORT" (HOST may be a name, e.g. localhost). Throws
// std::invalid_argument naming `what`.
std::pair<std::string, uint16_t> parse_host_port(const std::string& s, const std::string& what);
std::string reason_phrase(int status);

struct Stats {
  uint64_t accepted = 0, requests = 0, dropped_timeout = 0, dropped_cap = 0, refused_peer = 0,
           refused_busy = 0, bad_requests = 0;
};

class Server {
 public:
  // name: used in logs and metrics ("tcp", "metrics", "socket").
  explicit Server(std::string name, Limits limits = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Answered on the accepting thread: must be cheap and never block.
  void inline_route(std::string path, Handler h);
  // Answered on a worker thread.
  void route(std::string path, Handler h);

  // Throw std::runtime_error (std::invalid_argument for a malformed address).
  void listen_tcp(const std::string& host_port);
  // The socket is created mode 0600 before it accepts anything, and only peers with this
  // process's uid are served. Missing parent directories are created (mode 0700). A stale
  // socket (nobody answers) is replaced; a live one is an error (another agent uses it).
  void listen_unix(const std::filesystem::path& path);
  void start();
  // Closes the listener and every connection; waits for the workers and streams (each step
  // of which is bounded by write_timeout). Idempotent.
  void stop();

  const std::string& name() const { return name_; }
  std::string address() const;  // "http://127.0.0.1:9966" or "unix:/run/envsteer/admin.sock"
  Stats stats() const;

 private:
  struct Pending {
    UniqueFd fd;
    std::string buf;
    std::chrono::steady_clock::time_point deadline;
  };
  struct Job {
    UniqueFd fd;
    Request req;
    const Handler* handler;
  };
  void loop();
  void accept_all();
  void drop_oldest();
  void on_readable(int fd);
  void dispatch(std::list<Pending>::iterator it, size_t head_len);
  void close_pending(std::list<Pending>::iterator it);
  void worker();
  void stream(int fd, Response r, bool head_only);  // the caller closes fd
  // Within write_timeout; false when the client is gone or too slow.
  bool send_all(int fd, std::string_view data) const;
  static std::string head_of(const Response& r, bool chunked);
  // wait=false: one non-blocking send (a small answer on a new socket fits).
  void respond(int fd, const Response& r, bool head_only, bool wait) const;
  // A small error answer written without waiting, then the connection is closed.
  void answer_now(UniqueFd fd, int status, const std::string& why);

  std::string name_;
  Limits limits_;
  std::map<std::string, Handler, std::less<>> inline_routes_, routes_;
  UniqueFd listen_fd_, epoll_fd_, wake_fd_;
  bool unix_ = false;
  std::string address_;
  std::filesystem::path unix_path_;
  dev_t unix_dev_ = 0;
  ino_t unix_ino_ = 0;

  std::list<Pending> pending_;  // oldest first (deadlines ascend)
  std::map<int, std::list<Pending>::iterator> by_fd_;
  std::thread loop_thread_;
  std::vector<std::thread> workers_;

  struct StreamThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  mutable std::mutex mu_;  // guards jobs_, streams_threads_, stopping_ (with cv_), stats_
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::list<StreamThread> streams_threads_;
  bool stopping_ = false;
  Stats stats_;
};

}  // namespace envsteer::admin
