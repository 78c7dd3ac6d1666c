// SPDX-License-Identifier: Apache-2.0
// The admin server (agent/admin_server.h): request-head parsing and its bounds, and a live
// server on a unix socket in a private temp dir (short timeouts; every socket closed).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "admin_server.h"

namespace envsteer::admin_test {
namespace {

namespace fs = std::filesystem;
using namespace envsteer::admin;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ------------------------------------------------------------------------- parsing

TEST(AdminParse, HeadLength) {
  EXPECT_EQ(head_length("GET / HTTP/1.1\r\nHost: x\r\n"), 0u);
  EXPECT_EQ(head_length("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 27u);
  EXPECT_EQ(head_length("GET / HTTP/1.1\nHost: x\n\nbody"), 24u);
}

TEST(AdminParse, GetWithQuery) {
  Limits l;
  auto p = parse_head("GET /v1/explain?from=ns%2Fa&to=ns/b+c&env HTTP/1.1\r\nHost: x\r\n\r\n", l);
  ASSERT_EQ(p.status, 0) << p.why;
  EXPECT_EQ(p.req.method, "GET");
  EXPECT_EQ(p.req.path, "/v1/explain");
  EXPECT_EQ(p.req.param("from"), "ns/a");
  EXPECT_EQ(p.req.param("to"), "ns/b c");
  EXPECT_TRUE(p.req.has_param("env"));
  EXPECT_EQ(p.req.param("env"), "");
  EXPECT_FALSE(p.req.has_param("rate"));
  EXPECT_EQ(parse_head("HEAD /healthz HTTP/1.0\r\n\r\n", l).status, 0);
}

TEST(AdminParse, Refusals) {
  Limits l;
  auto status = [&](const std::string& head) { return parse_head(head, l).status; };
  EXPECT_EQ(status("POST /healthz HTTP/1.1\r\nContent-Length: 448000000\r\n\r\n"), 413);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nContent-Length: 1\r\n\r\n"), 413);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 0);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 413);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
  EXPECT_EQ(status("DELETE /healthz HTTP/1.1\r\n\r\n"), 405);
  EXPECT_EQ(status("GET http://x/healthz HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(status("GET /healthz HTTP/2.0\r\n\r\n"), 505);
  EXPECT_EQ(status("GET /healthz\r\n\r\n"), 400);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\n folded\r\n\r\n"), 400);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nno colon\r\n\r\n"), 400);
  std::string many = "GET /healthz HTTP/1.1\r\n";
  for (int i = 0; i < 65; i++) many += "X-H" + std::to_string(i) + ": v\r\n";
  EXPECT_EQ(status(many + "\r\n"), 431);
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nX: " + std::string(9000, 'v') + "\r\n\r\n"), 431);
}

TEST(AdminParse, HostPort) {
  EXPECT_EQ(parse_host_port("127.0.0.1:9966", "x"), std::make_pair(std::string("127.0.0.1"), uint16_t{9966}));
  EXPECT_EQ(parse_host_port("[::1]:80", "x"), std::make_pair(std::string("::1"), uint16_t{80}));
  EXPECT_EQ(parse_host_port("localhost:0", "x").first, "localhost");
  for (const char* bad : {"9966", ":9966", "::1:80", "[::1]80", "host:", "host:65536", "host:x1"})
    EXPECT_THROW(parse_host_port(bad, "--admin"), std::invalid_argument) << bad;
  try {
    parse_host_port("0.0.0.0", "--metrics-bind");
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("--metrics-bind"));
  }
}

// ------------------------------------------------------------------------- a live server

class AdminServer : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("envsteer-admin-" + std::to_string(getpid()) + "-" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    path_ = dir_ / "run" / "admin.sock";
  }
  void TearDown() override {
    for (int fd : fds_) close(fd);
    if (srv_) srv_->stop();
    fs::remove_all(dir_);
  }

  void start(Limits l) {
    srv_ = std::make_unique<Server>("test", l);
    srv_->inline_route("/healthz", [](const Request&) {
      Response r;
      r.body = "ok\n";
      return r;
    });
    srv_->route("/slow", [this](const Request&) {
      busy_++;
      std::this_thread::sleep_for(std::chrono::milliseconds(800));
      Response r;
      r.body = "slow\n";
      return r;
    });
    srv_->route("/stream", [this](const Request&) {
      Response r;
      auto n = std::make_shared<int>(0);
      r.next = [n](std::string& out) {
        out = "event " + std::to_string((*n)++) + "\n";
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        return *n < 3;
      };
      r.done = [this] { streams_done_++; };
      return r;
    });
    srv_->listen_unix(path_);
    srv_->start();
  }

  int connect_fd() {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path_.c_str(), sizeof(sa.sun_path) - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      close(fd);
      return -1;
    }
    timeval tv{3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    {
      std::lock_guard<std::mutex> g(fds_mu_);  // exchange() runs on several threads at once
      fds_.push_back(fd);
    }
    return fd;
  }

  // The whole answer to request on a new connection ("" when none).
  std::string exchange(const std::string& request) {
    int fd = connect_fd();
    if (fd < 0) return "";
    (void)!send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    std::string out;
    char buf[4096];
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }

  fs::path dir_, path_;
  std::unique_ptr<Server> srv_;
  std::mutex fds_mu_;
  std::vector<int> fds_;
  std::atomic<int> busy_{0}, streams_done_{0};
};

TEST_F(AdminServer, SocketIsOwnerOnlyAndRemovedOnStop) {
  start(Limits{});
  struct stat st{};
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(stat(path_.parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);  // created by the server
  EXPECT_THAT(exchange("GET /healthz HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(exchange("GET /nothing HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 404 "));
  EXPECT_THAT(exchange("HEAD /healthz HTTP/1.1\r\n\r\n"), ::testing::EndsWith("\r\n\r\n"));
  srv_->stop();
  EXPECT_FALSE(fs::exists(path_));
}

TEST_F(AdminServer, LiveSocketIsRefusedStaleOneReplaced) {
  start(Limits{});
  Server second("second");
  EXPECT_THROW(second.listen_unix(path_), std::runtime_error);
  // a stale socket file (nobody listens): replaced
  srv_->stop();
  srv_.reset();
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path_.c_str(), sizeof(sa.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  close(fd);
  start(Limits{});
  EXPECT_THAT(exchange("GET /healthz HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 200 "));
  // not a socket: left alone
  Server third("third");
  fs::path file = dir_ / "file";
  { std::ofstream(file.string()) << "x"; }
  EXPECT_THROW(third.listen_unix(file), std::runtime_error);
  EXPECT_TRUE(fs::exists(file));
}

TEST_F(AdminServer, SlowAndIdleClientsDoNotStarveHealth) {
  Limits l;
  l.head_timeout = std::chrono::milliseconds(1500);
  l.max_pending = 8;
  start(l);
  // 20 connections holding a partial head, more than max_pending
  for (int i = 0; i < 20; i++) {
    int fd = connect_fd();
    ASSERT_GE(fd, 0);
    (void)!send(fd, "GET /healthz HTTP/1.1\r\nX: y\r\n", 29, MSG_NOSIGNAL);
  }
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(exchange("GET /healthz HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 200 "));
  // well before any of them times out: not queued behind them
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1000));
  std::this_thread::sleep_for(std::chrono::milliseconds(1700));
  auto st = srv_->stats();
  EXPECT_GE(st.dropped_cap, 12u);
  EXPECT_GE(st.dropped_timeout, 1u);
  // the ones that timed out were told so
  char buf[256] = {};
  int answered = 0;
  for (size_t i = 0; i + 1 < fds_.size(); i++) {
    ssize_t n = recv(fds_[i], buf, sizeof(buf) - 1, MSG_DONTWAIT);
    if (n > 0 && std::string(buf, static_cast<size_t>(n)).find(" 408 ") != std::string::npos) answered++;
  }
  EXPECT_GE(answered, 1);
}

TEST_F(AdminServer, OversizedHeadsAreRefusedEarly) {
  Limits l;
  start(l);
  EXPECT_THAT(exchange("GET /healthz HTTP/1.1\r\nX: " + std::string(20000, 'v')), StartsWith("HTTP/1.1 431 "));
  std::string many = "GET /healthz HTTP/1.1\r\n";
  for (int i = 0; i < 200; i++) many += "X: v\r\n";
  EXPECT_THAT(exchange(many), StartsWith("HTTP/1.1 431 "));
  EXPECT_THAT(exchange("POST /healthz HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"), StartsWith("HTTP/1.1 413 "));
  EXPECT_THAT(exchange("PUT /healthz HTTP/1.1\r\n\r\n"), HasSubstr("Allow: GET, HEAD\r\n"));
}

TEST_F(AdminServer, HealthAnswersWhileWorkersAreBusyAndTheQueueIsBounded) {
  Limits l;
  l.workers = 1;
  l.max_queued = 2;
  start(l);
  std::vector<std::thread> ts;
  std::atomic<int> ok{0}, busy503{0};
  for (int i = 0; i < 6; i++)
    ts.emplace_back([&] {
      auto a = exchange("GET /slow HTTP/1.1\r\n\r\n");
      if (a.rfind("HTTP/1.1 200 ", 0) == 0) ok++;
      if (a.rfind("HTTP/1.1 503 ", 0) == 0) busy503++;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(exchange("GET /healthz HTTP/1.1\r\n\r\n"), StartsWith("HTTP/1.1 200 "));
  // not behind the worker (each /slow takes 800 ms)
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok + busy503, 6);
  EXPECT_LE(ok.load(), 3);  // one running, two queued
  EXPECT_GE(busy503.load(), 3);
}

TEST_F(AdminServer, StreamsAreChunkedAndCapped) {
  Limits l;
  l.max_streams = 1;
  l.workers = 2;
  start(l);
  auto a = exchange("GET /stream HTTP/1.1\r\n\r\n");
  EXPECT_THAT(a, StartsWith("HTTP/1.1 200 "));
  EXPECT_THAT(a, HasSubstr("Transfer-Encoding: chunked\r\n"));
  EXPECT_THAT(a, HasSubstr("8\r\nevent 0\n\r\n8\r\nevent 1\n\r\n8\r\nevent 2\n\r\n0\r\n\r\n"));
  EXPECT_EQ(streams_done_.load(), 1);
  // two at once with max_streams 1: one is refused, and its done() still runs
  std::string b, c;
  std::thread t1([&] { b = exchange("GET /stream HTTP/1.1\r\n\r\n"); });
  std::thread t2([&] { c = exchange("GET /stream HTTP/1.1\r\n\r\n"); });
  t1.join();
  t2.join();
  int refused = (b.rfind("HTTP/1.1 503 ", 0) == 0) + (c.rfind("HTTP/1.1 503 ", 0) == 0);
  EXPECT_LE(refused, 1);
  EXPECT_EQ(streams_done_.load(), 3);
}

TEST_F(AdminServer, TcpListener) {
  Server s("tcp");
  s.inline_route("/healthz", [](const Request&) {
    Response r;
    r.body = "ok\n";
    return r;
  });
  s.listen_tcp("127.0.0.1:0");
  EXPECT_THAT(s.address(), StartsWith("http://127.0.0.1:"));
  s.start();
  s.stop();
  Server bad("tcp");
  EXPECT_THROW(bad.listen_tcp("127.0.0.1"), std::invalid_argument);
}

}  // namespace
}  // namespace envsteer::admin_test
