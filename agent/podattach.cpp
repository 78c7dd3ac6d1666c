// SPDX-License-Identifier: Apache-2.0
#include "podattach.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cgroup.h"
#include "fd.h"

namespace fs = std::filesystem;

namespace envsteer {

namespace {

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

// Detaches a pinned link and removes its pin (a link whose cgroup is gone is
// already detached: the pin is all that holds it).
void drop_link(const fs::path& pin) {
  UniqueFd fd(bpf_obj_get(pin.c_str()));
  if (fd) bpf_link_detach(fd.get());
  std::error_code ec;
  fs::remove(pin, ec);
}

}  // namespace

PodAttacher::PodAttacher(fs::path dir, std::vector<CgroupProgram> progs) : dir_(std::move(dir)), progs_(std::move(progs)) {
  fs::create_directories(dir_);
}

fs::path PodAttacher::pod_dir(uint64_t id) const { return dir_ / std::to_string(id); }

size_t PodAttacher::adopt() {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string n = e.path().filename().string();
    char* end = nullptr;
    uint64_t id = std::strtoull(n.c_str(), &end, 10);
    if (!e.is_directory(ec) || n.empty() || *end != 0 || id == 0) {
      fs::remove_all(e.path(), ec);
      continue;
    }
    std::set<std::string> kept;
    for (const auto& l : fs::directory_iterator(e.path(), ec)) {
      const std::string prog = l.path().filename().string();
      auto p = std::find_if(progs_.begin(), progs_.end(), [&](const CgroupProgram& c) { return c.name == prog; });
      UniqueFd fd(bpf_obj_get(l.path().c_str()));
      bpf_link_info info{};
      __u32 len = sizeof(info);
      bool live = fd && bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0 && info.type == BPF_LINK_TYPE_CGROUP &&
                  info.cgroup.cgroup_id == id;
      if (p != progs_.end() && live && info.cgroup.attach_type == p->attach_type &&
          bpf_link_update(fd.get(), p->fd, nullptr) == 0) {
        kept.insert(prog);
        continue;
      }
      fd.reset();
      drop_link(l.path());
    }
    if (kept.empty()) {
      fs::remove_all(e.path(), ec);
      continue;
    }
    pods_[id] = std::move(kept);
  }
  return pods_.size();
}

void PodAttacher::detach_pod(uint64_t id) {
  std::error_code ec;
  const fs::path d = pod_dir(id);
  for (const auto& l : fs::directory_iterator(d, ec)) drop_link(l.path());
  fs::remove_all(d, ec);
  pods_.erase(id);
}

bool PodAttacher::complete(uint64_t id, bool thread_ctx) const {
  auto have = pods_.find(id);
  if (have == pods_.end()) return false;
  for (const auto& p : progs_)
    if ((!p.thread_ctx_only || thread_ctx) && !have->second.count(p.name)) return false;
  return true;
}

std::string PodAttacher::attach_pod(uint64_t id, const std::string& path, bool thread_ctx) {
  UniqueFd cg(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cg) return "cannot open pod cgroup " + path + ": " + errstr(errno);
  // the directory may have been made again since the model resolved it
  if (cgroup::cgroup_id(path) != id) return "pod cgroup " + path + " is no longer cgroup " + std::to_string(id);
  const fs::path d = pod_dir(id);
  std::error_code ec;
  fs::create_directories(d, ec);
  auto& have = pods_[id];
  for (const auto& p : progs_) {
    if (have.count(p.name) || (p.thread_ctx_only && !thread_ctx)) continue;
    const fs::path pin = d / p.name;
    if (fs::exists(pin, ec)) drop_link(pin);  // left over by a failed attempt
    UniqueFd link(bpf_link_create(p.fd, cg.get(), static_cast<bpf_attach_type>(p.attach_type), nullptr));
    if (!link) return "attaching " + p.name + " to pod cgroup " + path + " failed: " + errstr(errno);
    if (bpf_obj_pin(link.get(), pin.c_str()) != 0) {
      int err = errno;
      bpf_link_detach(link.get());
      return "pinning link " + pin.string() + " failed: " + errstr(err);
    }
    have.insert(p.name);
  }
  return "";
}

PodAttacher::Result PodAttacher::sync(const std::map<uint64_t, std::string>& want,
                                      const std::set<uint64_t>& thread_ctx) {
  Result r;
  std::vector<uint64_t> gone;
  for (const auto& [id, _] : pods_)
    if (!want.count(id)) gone.push_back(id);
  for (uint64_t id : gone) {
    detach_pod(id);
    failing_.erase(id);
    r.detached++;
  }
  for (auto it = failing_.begin(); it != failing_.end();) it = want.count(*it) ? std::next(it) : failing_.erase(it);
  for (const auto& [id, path] : want) {
    const bool ctx = thread_ctx.count(id) != 0;
    if (complete(id, ctx)) continue;
    std::string err = attach_pod(id, path, ctx);
    if (err.empty()) {
      if (failing_.erase(id)) spdlog::info("pod cgroup {}: programs attached after all", path);
      r.attached++;
      continue;
    }
    // logged once per pod until it works; tried again on every sync (every 2 s)
    if (failing_.insert(id).second) spdlog::warn("{}; tried again every 2 s", err);
    attach_failures_++;
    r.failed++;
  }
  return r;
}

}  // namespace envsteer
