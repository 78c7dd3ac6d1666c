// SPDX-License-Identifier: Apache-2.0
#include "podnet.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <vector>

namespace envsteer::podnet {

namespace {

uint64_t ino_of(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

// The calling thread's namespace when first asked: where socket_in() returns to.
const NetNs& own() {
  static const NetNs n = [] {
    NetNs x;
    x.fd.reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    if (x.fd) x.ino = ino_of(x.fd.get());
    return x;
  }();
  return n;
}

void back_home() {
  if (setns(own().fd.get(), CLONE_NEWNET) != 0) {
    spdlog::critical("podnet: cannot return to the agent's network namespace: {}: aborting", std::strerror(errno));
    std::abort();
  }
}

std::vector<int> read_pids(const std::filesystem::path& dir, size_t max) {
  std::vector<int> out;
  std::ifstream f(dir / "cgroup.procs");
  int pid;
  while (out.size() < max && f >> pid) out.push_back(pid);
  return out;
}

bool in_cgroup(const std::filesystem::path& dir, int pid) {
  for (int p : read_pids(dir, 1u << 16))
    if (p == pid) return true;
  return false;
}

bool exited(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

// The namespace of the process behind pidfd, opened from inside it.
std::optional<NetNs> enter_and_open(int pidfd, int* err) {
  if (!own().fd) {
    *err = EBADF;
    return std::nullopt;
  }
  if (setns(pidfd, CLONE_NEWNET) != 0) {
    *err = errno;
    return std::nullopt;
  }
  NetNs n;
  n.fd.reset(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  *err = errno;
  back_home();
  if (!n.fd) return std::nullopt;
  n.ino = ino_of(n.fd.get());
  return n;
}

}  // namespace

uint64_t own_ino() { return own().ino; }

std::optional<NetNs> of_cgroup(const std::filesystem::path& dir, std::string* err, UniqueFd* pidfd_out) {
  std::deque<std::pair<std::filesystem::path, int>> todo{{dir, 0}};
  size_t dirs = 0;
  int last = ESRCH;
  while (!todo.empty() && dirs < 64) {
    auto [d, depth] = todo.front();
    todo.pop_front();
    dirs++;
    for (int pid : read_pids(d, 8)) {
      UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
      if (!pidfd) {
        last = errno;
        continue;
      }
      // The pidfd names one process; it is the pid read above only if the pid
      // is in the cgroup now and the process still lives when we enter it.
      if (!in_cgroup(d, pid)) continue;
      // the agent's own namespace (the loopback tests, hostNetwork pods): no setns
      struct stat st {};
      std::string link = "/proc/" + std::to_string(pid) + "/ns/net";
      if (stat(link.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_ino) == own().ino && own().ino &&
          !exited(pidfd.get())) {
        NetNs n;
        n.ino = own().ino;
        if (pidfd_out) *pidfd_out = std::move(pidfd);
        return n;
      }
      int e = 0;
      auto n = enter_and_open(pidfd.get(), &e);
      if (!n) {
        last = e;
        continue;
      }
      if (pidfd_out) *pidfd_out = std::move(pidfd);
      return n;
    }
    if (depth >= 3) continue;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(d, ec))
      if (e.is_directory(ec)) todo.emplace_back(e.path(), depth + 1);
  }
  if (err)
    *err = "no process of cgroup " + dir.string() + " whose network namespace could be entered (" +
           std::strerror(last) + ")";
  return std::nullopt;
}

int socket_in(const NetNs* ns, int domain, int type, int protocol) {
  if (!ns || !ns->fd || ns->ino == own().ino) return ::socket(domain, type, protocol);
  if (!own().fd) {
    errno = EBADF;
    return -1;
  }
  if (setns(ns->fd.get(), CLONE_NEWNET) != 0) return -1;
  int s = ::socket(domain, type, protocol);
  int e = errno;
  back_home();
  errno = e;
  return s;
}

PodNets::Lookup PodNets::get(uint64_t pod) {
  if (auto it = pods_.find(pod); it != pods_.end()) {
    if (!it->second.pidfd || !exited(it->second.pidfd.get())) return {it->second.ns, true};
    pods_.erase(it);  // the process it came from is gone: found again (the pod may have a new sandbox)
  }
  auto dir = resolve_ ? resolve_(pod) : std::nullopt;
  if (!dir) {
    err_ = "the pod's cgroup (id " + std::to_string(pod) + ") is not known";
    return {};
  }
  UniqueFd pidfd;
  auto n = of_cgroup(*dir, &err_, &pidfd);
  if (!n) return {};
  Entry e;
  e.pidfd = std::move(pidfd);
  if (n->ino != own_ino()) {
    // one handle per namespace: pods sharing one (a hostNetwork pod) share it
    e.ns = by_ino(n->ino);
    if (!e.ns) e.ns = std::make_shared<const NetNs>(std::move(*n));
  }
  auto& slot = pods_[pod] = std::move(e);
  return {slot.ns, true};
}

std::shared_ptr<const NetNs> PodNets::by_ino(uint64_t ino) const {
  for (const auto& [pod, e] : pods_)
    if (e.ns && e.ns->ino == ino) return e.ns;
  return nullptr;
}

std::vector<uint64_t> PodNets::pods() const {
  std::vector<uint64_t> out;
  for (const auto& [pod, e] : pods_) out.push_back(pod);
  return out;
}

size_t PodNets::held() const {
  std::vector<const NetNs*> seen;
  for (const auto& [pod, e] : pods_)
    if (e.ns && std::find(seen.begin(), seen.end(), e.ns.get()) == seen.end()) seen.push_back(e.ns.get());
  return seen.size();
}

}  // namespace envsteer::podnet
