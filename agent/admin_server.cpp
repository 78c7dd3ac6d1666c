// SPDX-License-Identifier: Apache-2.0
#include "admin_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace envsteer::admin {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string decode_component(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && hexval(s[i + 1]) >= 0 &&
               hexval(s[i + 2]) >= 0) {
      out += static_cast<char>(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool is_tchar(unsigned char c) {
  return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

std::string errstr(int e) { return std::strerror(e); }

}  // namespace

bool Request::has_param(std::string_view name) const {
  return std::any_of(params.begin(), params.end(), [&](const auto& kv) { return kv.first == name; });
}

std::string Request::param(std::string_view name) const {
  for (const auto& [k, v] : params)
    if (k == name) return v;
  return "";
}

std::string reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Status";
  }
}

size_t head_length(std::string_view buf) {
  size_t crlf = buf.find("\r\n\r\n");
  size_t lf = buf.find("\n\n");
  size_t a = crlf == std::string_view::npos ? std::string_view::npos : crlf + 4;
  size_t b = lf == std::string_view::npos ? std::string_view::npos : lf + 2;
  size_t n = std::min(a, b);
  return n == std::string_view::npos ? 0 : n;
}

Parsed parse_head(std::string_view head, const Limits& limits) {
  Parsed p;
  auto fail = [&](int status, std::string why) {
    p.status = status;
    p.why = std::move(why);
    return p;
  };
  if (head.size() > limits.max_head_bytes) return fail(431, "request head over " + std::to_string(limits.max_head_bytes) + " bytes");
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    size_t nl = head.find('\n');
    std::string_view line = head.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;  // the blank line ending the head
    lines.push_back(line);
    if (nl == std::string_view::npos) break;
    head.remove_prefix(nl + 1);
  }
  if (lines.empty()) return fail(400, "no request line");
  if (lines.size() - 1 > limits.max_headers)
    return fail(431, "more than " + std::to_string(limits.max_headers) + " header lines");

  // request line: METHOD SP TARGET SP HTTP/1.x
  std::string_view rl = lines[0];
  size_t s1 = rl.find(' ');
  size_t s2 = s1 == std::string_view::npos ? s1 : rl.find(' ', s1 + 1);
  if (s1 == std::string_view::npos || s2 == std::string_view::npos || rl.find(' ', s2 + 1) != std::string_view::npos)
    return fail(400, "malformed request line");
  std::string_view method = rl.substr(0, s1), target = rl.substr(s1 + 1, s2 - s1 - 1), version = rl.substr(s2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0")
    return fail(version.substr(0, 5) == "HTTP/" ? 505 : 400, "HTTP/1.0 or HTTP/1.1 only");
  if (method.empty() || !std::all_of(method.begin(), method.end(), [](char c) { return is_tchar(c); }))
    return fail(400, "malformed method");
  if (target.empty() || target[0] != '/') return fail(400, "the target must be a path");

  bool body = false;
  for (size_t i = 1; i < lines.size(); i++) {
    std::string_view l = lines[i];
    if (l[0] == ' ' || l[0] == '\t') return fail(400, "folded header line");
    size_t colon = l.find(':');
    if (colon == 0 || colon == std::string_view::npos) return fail(400, "malformed header line");
    std::string_view name = l.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); }))
      return fail(400, "malformed header name");
    std::string n = lower(name);
    std::string_view v = trim(l.substr(colon + 1));
    if (n == "transfer-encoding") body = true;
    if (n == "content-length") {
      if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return fail(400, "malformed Content-Length");
      if (v.find_first_not_of('0') != std::string_view::npos) body = true;
    }
  }
  if (body) return fail(413, "no request body is accepted here");
  if (method != "GET" && method != "HEAD") return fail(405, "GET or HEAD only");

  p.req.method = std::string(method);
  p.req.target = std::string(target);
  size_t q = target.find('?');
  p.req.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) {
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
      size_t amp = query.find('&');
      std::string_view kv = query.substr(0, amp);
      if (!kv.empty()) {
        size_t eq = kv.find('=');
        p.req.params.emplace_back(decode_component(kv.substr(0, eq)),
                                  eq == std::string_view::npos ? "" : decode_component(kv.substr(eq + 1)));
      }
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
  }
  return p;
}

std::pair<std::string, uint16_t> parse_host_port(const std::string& s, const std::string& what) {
  auto bad = [&](const std::string& why) {
    return std::invalid_argument(what + ": expected HOST:PORT or [IPV6]:PORT, got \"" + s + "\" (" + why + ")");
  };
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') throw bad("unclosed [");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos) throw bad("no port");
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.find(':') != std::string::npos) throw bad("an IPv6 address needs brackets");
  }
  if (host.empty()) throw bad("no host");
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(port) > 65535)
    throw bad("port must be 0..65535");
  return {host, static_cast<uint16_t>(std::stoul(port))};
}

// ------------------------------------------------------------------------------- Server

Server::Server(std::string name, Limits limits) : name_(std::move(name)), limits_(limits) {}

Server::~Server() { stop(); }

void Server::inline_route(std::string path, Handler h) { inline_routes_[std::move(path)] = std::move(h); }
void Server::route(std::string path, Handler h) { routes_[std::move(path)] = std::move(h); }

std::string Server::address() const { return address_; }

Stats Server::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return stats_;
}

void Server::listen_tcp(const std::string& host_port) {
  auto [host, port] = parse_host_port(host_port, name_);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string h = host;
  int rc = getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) throw std::runtime_error(name_ + ": cannot resolve " + host_port + ": " + gai_strerror(rc));
  UniqueFd fd;
  std::string err = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd.reset(socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      err = errstr(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd.get(), a->ai_addr, a->ai_addrlen) == 0 && listen(fd.get(), 128) == 0) break;
    err = errstr(errno);
    fd.reset();
  }
  freeaddrinfo(res);
  if (!fd) throw std::runtime_error(name_ + ": cannot listen on " + host_port + ": " + err);
  listen_fd_ = std::move(fd);
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  char hb[NI_MAXHOST] = "?", pb[NI_MAXSERV] = "?";
  if (getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0)
    getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, hb, sizeof(hb), pb, sizeof(pb), NI_NUMERICHOST | NI_NUMERICSERV);
  address_ = std::string("http://") + (ss.ss_family == AF_INET6 ? "[" + std::string(hb) + "]" : std::string(hb)) +
             ":" + pb;
}

void Server::listen_unix(const fs::path& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const std::string p = path.string();
  if (p.empty() || p.size() >= sizeof(sa.sun_path))
    throw std::invalid_argument(name_ + ": socket path must be 1.." + std::to_string(sizeof(sa.sun_path) - 1) +
                                " bytes: " + p);
  std::memcpy(sa.sun_path, p.data(), p.size());
  fs::path dir = path.parent_path();
  if (!dir.empty() && !fs::exists(dir)) {
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
  }
  struct stat st{};
  if (lstat(p.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw std::runtime_error(name_ + ": " + p + " exists and is not a socket");
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    bool live = probe && connect(probe.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
    probe.reset();
    if (live) throw std::runtime_error(name_ + ": another process serves " + p + " (another agent?)");
    unlink(p.c_str());  // stale: its agent is gone
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(name_ + ": socket: " + errstr(errno));
  // Nobody can connect before listen(): the mode is 0600 by then.
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int e = errno;
    fd.reset();
    throw std::runtime_error(name_ + ": cannot bind " + p + ": " + errstr(e));
  }
  if (chmod(p.c_str(), 0600) != 0 || lstat(p.c_str(), &st) != 0 || listen(fd.get(), 128) != 0) {
    int e = errno;
    fd.reset();
    unlink(p.c_str());
    throw std::runtime_error(name_ + ": cannot set up " + p + ": " + errstr(e));
  }
  listen_fd_ = std::move(fd);
  unix_ = true;
  unix_path_ = path;
  unix_dev_ = st.st_dev;
  unix_ino_ = st.st_ino;
  address_ = "unix:" + p;
}

void Server::start() {
  if (!listen_fd_) throw std::logic_error(name_ + ": start() before listen");
  epoll_fd_.reset(epoll_create1(EPOLL_CLOEXEC));
  wake_fd_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!epoll_fd_ || !wake_fd_) throw std::runtime_error(name_ + ": epoll/eventfd: " + errstr(errno));
  for (int fd : {listen_fd_.get(), wake_fd_.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      throw std::runtime_error(name_ + ": epoll_ctl: " + errstr(errno));
  }
  loop_thread_ = std::thread([this] { loop(); });
  if (!routes_.empty())
    for (size_t i = 0; i < std::max<size_t>(limits_.workers, 1); i++) workers_.emplace_back([this] { worker(); });
}

void Server::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (wake_fd_) {
    uint64_t one = 1;
    (void)!write(wake_fd_.get(), &one, sizeof(one));
  }
  if (loop_thread_.joinable()) loop_thread_.join();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  {
    std::lock_guard<std::mutex> g(mu_);
    jobs_.clear();  // closes their connections
  }
  for (auto& s : streams_threads_)
    if (s.thread.joinable()) s.thread.join();
  streams_threads_.clear();
  for (UniqueFd* fd : {&listen_fd_, &epoll_fd_, &wake_fd_}) fd->reset();
  if (unix_) {
    struct stat st{};
    // only our socket: a successor may have replaced it already
    if (lstat(unix_path_.c_str(), &st) == 0 && st.st_dev == unix_dev_ && st.st_ino == unix_ino_)
      unlink(unix_path_.c_str());
    unix_ = false;
  }
}

void Server::loop() {
  epoll_event evs[64];
  for (;;) {
    int timeout = -1;
    if (!pending_.empty()) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(pending_.front().deadline - Clock::now()).count();
      timeout = ms < 0 ? 0 : static_cast<int>(ms) + 1;
    }
    int n = epoll_wait(epoll_fd_.get(), evs, 64, timeout);
    if (n < 0) {
      if (errno != EINTR) {
        spdlog::error("admin {}: epoll_wait: {}", name_, errstr(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      n = 0;
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == wake_fd_.get()) {
        uint64_t v;
        (void)!read(wake_fd_.get(), &v, sizeof(v));
        bool stop;
        {
          std::lock_guard<std::mutex> g(mu_);
          stop = stopping_;
        }
        if (stop) {
          while (!pending_.empty()) close_pending(pending_.begin());
          return;
        }
      } else if (fd == listen_fd_.get()) {
        accept_all();
      } else {
        on_readable(fd);
      }
    }
    auto now = Clock::now();
    while (!pending_.empty() && pending_.front().deadline <= now) {
      {
        std::lock_guard<std::mutex> g(mu_);
        stats_.dropped_timeout++;
      }
      auto it = pending_.begin();
      UniqueFd fd = std::move(it->fd);
      epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd.get(), nullptr);
      by_fd_.erase(fd.get());
      pending_.erase(it);
      answer_now(std::move(fd), 408, "the request head must arrive within " +
                              std::to_string(limits_.head_timeout.count()) + " ms");
    }
  }
}

void Server::close_pending(std::list<Pending>::iterator it) {
  int fd = it->fd.get();
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  it->fd.reset();
  by_fd_.erase(fd);
  pending_.erase(it);
}

void Server::drop_oldest() {
  if (pending_.empty()) return;
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.dropped_cap++;
  }
  close_pending(pending_.begin());
}

void Server::accept_all() {
  for (int i = 0; i < 256; i++) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) && !pending_.empty()) {
        drop_oldest();
        continue;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        spdlog::warn("admin {}: accept: {}", name_, errstr(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return;
    }
    {
      std::lock_guard<std::mutex> g(mu_);
      stats_.accepted++;
    }
    if (unix_) {
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != geteuid()) {
        {
          std::lock_guard<std::mutex> g(mu_);
          stats_.refused_peer++;
        }
        answer_now(std::move(fd), 403, "only uid " + std::to_string(geteuid()) + " is served here");
        continue;
      }
    }
    if (pending_.size() >= std::max<size_t>(limits_.max_pending, 1)) drop_oldest();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd.get();
    if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) continue;  // fd closes here
    int raw = fd.get();
    pending_.push_back(Pending{std::move(fd), {}, Clock::now() + limits_.head_timeout});
    by_fd_[raw] = std::prev(pending_.end());
  }
}

void Server::on_readable(int fd) {
  auto f = by_fd_.find(fd);
  if (f == by_fd_.end()) return;
  auto it = f->second;
  char tmp[4096];
  // at most one byte beyond the limit: enough to know it is exceeded
  size_t room = limits_.max_head_bytes + 1 - it->buf.size();
  ssize_t n = recv(fd, tmp, std::min(room, sizeof(tmp)), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    close_pending(it);
    return;
  }
  it->buf.append(tmp, static_cast<size_t>(n));
  size_t hl = head_length(it->buf);
  if (hl) {
    dispatch(it, hl);
    return;
  }
  bool too_big = it->buf.size() > limits_.max_head_bytes ||
                 static_cast<size_t>(std::count(it->buf.begin(), it->buf.end(), '\n')) > limits_.max_headers + 1;
  if (too_big) {
    UniqueFd owned = std::move(it->fd);
    epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
    by_fd_.erase(fd);
    pending_.erase(it);
    {
      std::lock_guard<std::mutex> g(mu_);
      stats_.requests++;
      stats_.bad_requests++;
    }
    answer_now(std::move(owned), 431, "at most " + std::to_string(limits_.max_head_bytes) + " bytes and " +
                            std::to_string(limits_.max_headers) + " header lines");
  }
}

void Server::dispatch(std::list<Pending>::iterator it, size_t head_len) {
  UniqueFd fd = std::move(it->fd);
  Parsed p = parse_head(std::string_view(it->buf).substr(0, head_len), limits_);
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd.get(), nullptr);
  by_fd_.erase(fd.get());
  pending_.erase(it);
  {
    std::lock_guard<std::mutex> g(mu_);
    stats_.requests++;
    if (p.status) stats_.bad_requests++;
  }
  if (p.status) {
    answer_now(std::move(fd), p.status, p.why);
    return;
  }
  bool head_only = p.req.method == "HEAD";
  if (auto r = inline_routes_.find(p.req.path); r != inline_routes_.end()) {
    Response resp;
    try {
      resp = r->second(p.req);
    } catch (const std::exception& e) {
      resp = Response{500, "text/plain; charset=utf-8", std::string(e.what()) + "\n", {}, {}, {}};
    }
    // one non-blocking send: inline answers are small and the socket is new
    respond(fd.get(), resp, head_only, /*wait=*/false);
    fd.reset();
    return;
  }
  auto r = routes_.find(p.req.path);
  if (r == routes_.end()) {
    answer_now(std::move(fd), 404, "");
    return;
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    if (jobs_.size() < std::max<size_t>(limits_.max_queued, 1)) {
      jobs_.push_back(Job{std::move(fd), std::move(p.req), &r->second});
      cv_.notify_one();
      return;
    }
    stats_.refused_busy++;
  }
  answer_now(std::move(fd), 503, "busy");
}

void Server::answer_now(UniqueFd fd, int status, const std::string& why) {
  Response r;
  r.status = status;
  r.body = reason_phrase(status) + (why.empty() ? "" : ": " + why) + "\n";
  if (status == 405) r.headers.emplace_back("Allow", "GET, HEAD");
  respond(fd.get(), r, false, /*wait=*/false);
  fd.reset();
}

std::string Server::head_of(const Response& r, bool chunked) {
  std::string h = "HTTP/1.1 " + std::to_string(r.status) + " " + reason_phrase(r.status) + "\r\n";
  h += "Content-Type: " + r.content_type + "\r\n";
  h += chunked ? std::string("Transfer-Encoding: chunked\r\n") : "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  h += "Connection: close\r\nCache-Control: no-store\r\n";
  for (const auto& [k, v] : r.headers) h += k + ": " + v + "\r\n";
  return h + "\r\n";
}

void Server::respond(int fd, const Response& r, bool head_only, bool wait) const {
  std::string out = head_of(r, false);
  if (!head_only) out += r.body;
  if (wait) {
    send_all(fd, out);
  } else {
    (void)!send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
}

bool Server::send_all(int fd, std::string_view data) const {
  auto deadline = Clock::now() + limits_.write_timeout;
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (ms <= 0) return false;
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, static_cast<int>(std::min<long long>(ms, 1000)));
      continue;
    }
    return false;
  }
  return true;
}

void Server::worker() {
  for (;;) {
    Job j;
    {
      std::unique_lock<std::mutex> g(mu_);
      cv_.wait(g, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      j = std::move(jobs_.front());
      jobs_.pop_front();
    }
    Response r;
    try {
      r = (*j.handler)(j.req);
    } catch (const std::exception& e) {
      r = Response{};
      r.status = 500;
      r.body = std::string(e.what()) + "\n";
    }
    bool head_only = j.req.method == "HEAD";
    if (!r.next) {
      respond(j.fd.get(), r, head_only, /*wait=*/true);
      j.fd.reset();
      continue;
    }
    std::lock_guard<std::mutex> g(mu_);
    // reap the streams that ended
    streams_threads_.remove_if([](StreamThread& s) {
      if (!s.finished->load()) return false;
      s.thread.join();
      return true;
    });
    if (stopping_ || streams_threads_.size() >= limits_.max_streams) {
      if (r.done) r.done();
      stats_.refused_busy++;
      Response busy;
      busy.status = 503;
      busy.body = "too many streams\n";
      respond(j.fd.get(), busy, head_only, /*wait=*/false);
      j.fd.reset();
      continue;
    }
    auto finished = std::make_shared<std::atomic<bool>>(false);
    streams_threads_.push_back(StreamThread{
        std::thread([this, fd = std::move(j.fd), r = std::move(r), head_only, finished]() mutable {
          stream(fd.get(), std::move(r), head_only);
          // the slot is free before the client sees the end (the close), so a
          // client that asks again right after is not refused for its own stream
          finished->store(true);
          fd.reset();
        }),
        finished});
  }
}

void Server::stream(int fd, Response r, bool head_only) {
  bool ok = send_all(fd, head_of(r, true));
  while (ok && !head_only) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (stopping_) break;
    }
    pollfd p{fd, POLLRDHUP, 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) break;  // the client went away
    std::string out;
    bool more = false;
    try {
      more = r.next(out);
    } catch (const std::exception& e) {
      spdlog::warn("admin {}: stream: {}", name_, e.what());
    }
    if (!out.empty()) {
      char len[32];
      std::snprintf(len, sizeof(len), "%zx\r\n", out.size());
      ok = send_all(fd, std::string(len) + out + "\r\n");
    }
    if (!more) {
      if (ok) send_all(fd, "0\r\n\r\n");
      break;
    }
  }
  if (r.done) r.done();
}

}  // namespace envsteer::admin
