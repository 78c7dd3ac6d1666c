// SPDX-License-Identifier: Apache-2.0
#include "podcgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <system_error>

namespace fs = std::filesystem;

namespace envsteer::podcgroup {
namespace {

constexpr const char* kQos[] = {"guaranteed", "burstable", "besteffort"};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool is_dir(const fs::path& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Names of the subdirectories of dir (not following symlinks), sorted; empty
// when it cannot be read.
std::vector<std::string> list_subdirs(const fs::path& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (struct dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0)))
      continue;
    bool dir_entry = e->d_type == DT_DIR;
    if (e->d_type == DT_UNKNOWN) {
      struct stat st{};
      dir_entry = ::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
    }
    if (dir_entry) out.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

fs::path absolute_mount(const fs::path& mount) {
  std::error_code ec;
  fs::path abs = fs::absolute(mount, ec);
  if (ec) abs = mount;
  abs = abs.lexically_normal();
  if (abs.filename().empty() && abs.has_relative_path()) abs = abs.parent_path();
  return abs;
}

std::string systemd_uid(const std::string& canonical) {
  std::string s = canonical;
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// QoS classes in search order: the given one first.
std::vector<std::string> qos_order(const std::string& normalized) {
  std::vector<std::string> order;
  if (!normalized.empty()) order.push_back(normalized);
  for (const char* q : kQos)
    if (normalized != q) order.emplace_back(q);
  return order;
}

enum class Driver { Systemd, Cgroupfs };

// A kubepods root by its directory name: "kubepods" (cgroupfs),
// "kubepods.slice" or "<prefix>-kubepods.slice" (systemd).
std::optional<Driver> root_driver(const std::string& name) {
  if (name == "kubepods") return Driver::Cgroupfs;
  if (name == "kubepods.slice" || ends_with(name, "-kubepods.slice")) return Driver::Systemd;
  return std::nullopt;
}

// The slice prefix of a systemd root: "kubepods", "kubelet-kubepods".
std::string slice_prefix(const fs::path& root) {
  std::string n = root.filename().string();
  return n.substr(0, n.size() - std::string(".slice").size());
}

// The directory of a QoS class below a root (the root itself for guaranteed).
fs::path qos_dir(const fs::path& root, Driver drv, const std::string& qos) {
  if (qos == "guaranteed") return root;
  if (drv == Driver::Cgroupfs) return root / qos;
  return root / (slice_prefix(root) + "-" + qos + ".slice");
}

fs::path pod_dir_under(const fs::path& root, Driver drv, const std::string& qos,
                       const std::string& uid) {
  fs::path parent = qos_dir(root, drv, qos);
  if (drv == Driver::Cgroupfs) return parent / ("pod" + uid);
  std::string p = slice_prefix(root);
  if (qos != "guaranteed") p += "-" + qos;
  return parent / (p + "-pod" + systemd_uid(uid) + ".slice");
}

std::optional<fs::path> probe_root(const fs::path& root, const std::string& uid,
                                   const std::vector<std::string>& order) {
  auto drv = root_driver(root.filename().string());
  if (!drv) return std::nullopt;
  for (const auto& q : order) {
    fs::path p = pod_dir_under(root, *drv, q, uid);
    if (is_dir(p)) return p;
  }
  return std::nullopt;
}

// The usual roots: kubelet defaults and --cgroup-root=/kubelet.
std::vector<fs::path> default_roots(const fs::path& mount) {
  return {mount / "kubepods.slice", mount / "kubepods",
          mount / "kubelet.slice" / "kubelet-kubepods.slice", mount / "kubelet" / "kubepods"};
}

enum class Step { Descend, Skip, Stop };

// Breadth-first over the directories below mount within limits; visit(path,
// name, depth) is called for every subdirectory at depth <= max_depth.
template <typename Visit>
void walk(const fs::path& mount, const SearchLimits& limits, Visit&& visit) {
  std::deque<std::pair<fs::path, int>> queue{{mount, 0}};
  size_t listed = 0;
  while (!queue.empty() && listed < limits.max_dirs) {
    auto [dir, depth] = std::move(queue.front());
    queue.pop_front();
    listed++;
    for (const auto& name : list_subdirs(dir)) {
      fs::path p = dir / name;
      Step s = visit(p, name, depth + 1);
      if (s == Step::Stop) return;
      if (s == Step::Descend && depth + 1 < limits.max_depth) queue.emplace_back(std::move(p), depth + 1);
    }
  }
}

bool uid_chars_ok(const std::string& s) {
  if (s.size() < 8) return false;
  for (unsigned char c : s)
    if (!std::isxdigit(c) && c != '-' && c != '_') return false;
  return true;
}

}  // namespace

std::string normalize_qos(const std::string& qos_class) {
  std::string q;
  for (unsigned char c : qos_class) q += static_cast<char>(std::tolower(c));
  for (const char* k : kQos)
    if (q == k) return q;
  return "";
}

std::string canonical_uid(const std::string& pod_uid) {
  if (!uid_chars_ok(pod_uid)) return "";
  std::string s;
  for (unsigned char c : pod_uid) s += c == '_' ? '-' : static_cast<char>(std::tolower(c));
  return s;
}

std::optional<std::string> pod_uid_from_dirname(const std::string& name) {
  std::string raw;
  if (ends_with(name, ".slice")) {
    auto pos = name.rfind("-pod");
    if (pos == std::string::npos || pos == 0) return std::nullopt;
    raw = name.substr(pos + 4, name.size() - pos - 4 - 6);
    if (raw.find('-') != std::string::npos) return std::nullopt;  // escaped form only
  } else if (starts_with(name, "pod")) {
    raw = name.substr(3);
  } else {
    return std::nullopt;
  }
  std::string u = canonical_uid(raw);
  if (u.empty()) return std::nullopt;
  return u;
}

std::optional<fs::path> find_pod_cgroup(const fs::path& cgroup2_mount, const std::string& pod_uid,
                                        const std::string& qos_class, const SearchLimits& limits) {
  const std::string uid = canonical_uid(pod_uid);
  if (uid.empty()) return std::nullopt;
  const fs::path mount = absolute_mount(cgroup2_mount);
  const auto order = qos_order(normalize_qos(qos_class));

  // 1. The usual places, the given QoS class first.
  const auto roots = default_roots(mount);
  for (const auto& q : order)
    for (const auto& root : roots)
      if (auto p = probe_root(root, uid, {q})) return p;

  // 2. Bounded walk for a pod directory or a kubepods root anywhere else.
  const std::string cgroupfs_name = "pod" + uid;
  const std::string systemd_suffix = "-pod" + systemd_uid(uid) + ".slice";
  std::optional<fs::path> found;
  walk(mount, limits, [&](const fs::path& p, const std::string& name, int) {
    if (name == cgroupfs_name || (ends_with(name, systemd_suffix) && name.size() > systemd_suffix.size())) {
      found = p;
      return Step::Stop;
    }
    if (root_driver(name)) {
      if ((found = probe_root(p, uid, order))) return Step::Stop;
      return Step::Descend;
    }
    if (pod_uid_from_dirname(name)) return Step::Skip;  // another pod
    return Step::Descend;
  });
  return found;
}

// ---------------------------------------------------------------------------
// PodCgroupWatcher

namespace {
// Pod parents: pod cgroups created, removed, moved in or out; the parent itself going.
constexpr uint32_t kParentMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |
                                 IN_MOVE_SELF | IN_ONLYDIR;
// A pod's own cgroup: only its removal or move (what happens inside it, containers
// starting and stopping, changes nothing the agent acts on).
constexpr uint32_t kPodMask = IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
}

PodCgroupWatcher::PodCgroupWatcher(fs::path cgroup2_mount, SearchLimits limits)
    : mount_(absolute_mount(cgroup2_mount)), limits_(limits) {
  fd_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd_) throw std::system_error(errno, std::generic_category(), "inotify_init1");
  discover();
  arm();
}

PodCgroupWatcher::~PodCgroupWatcher() = default;

void PodCgroupWatcher::discover() {
  for (auto& r : default_roots(mount_)) roots_.insert(r);
  walk(mount_, limits_, [&](const fs::path& p, const std::string& name, int) {
    if (root_driver(name)) {
      roots_.insert(p);
      return Step::Skip;  // its QoS directories are watched and scanned directly
    }
    if (pod_uid_from_dirname(name)) {
      pod_parents_.insert(p.parent_path());
      return Step::Skip;
    }
    return Step::Descend;
  });
}

// Directories whose children may be pod cgroups: existing roots, their QoS
// directories, and the unusual pod parents.
static std::set<fs::path> pod_parent_dirs(const std::set<fs::path>& roots,
                                          const std::set<fs::path>& pod_parents) {
  std::set<fs::path> out;
  for (const auto& root : roots) {
    auto drv = root_driver(root.filename().string());
    if (!drv || !is_dir(root)) continue;
    for (const char* q : kQos) {
      fs::path d = qos_dir(root, *drv, q);
      if (is_dir(d)) out.insert(d);
    }
  }
  for (const auto& p : pod_parents)
    if (is_dir(p)) out.insert(p);
  return out;
}

void PodCgroupWatcher::arm() {
  std::set<fs::path> want = pod_parent_dirs(roots_, pod_parents_);
  for (const auto& root : roots_) {
    if (is_dir(root)) continue;
    // Not there yet: watch the nearest existing ancestor inside the mount.
    for (fs::path a = root.parent_path();; a = a.parent_path()) {
      if (is_dir(a)) {
        want.insert(a);
        break;
      }
      if (a == mount_ || a == a.parent_path()) break;
    }
  }
  for (const auto& dir : want)
    if (!parent_wd_.count(dir)) add_watch(dir, Role::Parent, "");
  std::vector<int> stale;
  for (const auto& [dir, wd] : parent_wd_)
    if (!want.count(dir)) stale.push_back(wd);
  for (int wd : stale) remove_watch(wd);
}

int PodCgroupWatcher::add_watch(const fs::path& dir, Role role, const std::string& uid) {
  int wd = ::inotify_add_watch(fd_.get(), dir.c_str(), role == Role::Parent ? kParentMask : kPodMask);
  if (wd < 0) return -1;  // gone meanwhile (the parent's event follows), or out of watches
  auto it = by_wd_.find(wd);
  if (it != by_wd_.end() && it->second.dir != dir) {
    // The same inode under another name (a move): forget the old entry.
    if (it->second.role == Role::Parent) parent_wd_.erase(it->second.dir);
  }
  by_wd_[wd] = Watch{dir, role, uid};
  if (role == Role::Parent) parent_wd_[dir] = wd;
  return wd;
}

void PodCgroupWatcher::remove_watch(int wd) {
  auto it = by_wd_.find(wd);
  if (it == by_wd_.end()) return;
  ::inotify_rm_watch(fd_.get(), wd);  // EINVAL when the kernel already dropped it
  if (it->second.role == Role::Parent) {
    auto p = parent_wd_.find(it->second.dir);
    if (p != parent_wd_.end() && p->second == wd) parent_wd_.erase(p);
  }
  by_wd_.erase(it);
}

std::map<std::string, fs::path> PodCgroupWatcher::scan_parents() const {
  std::map<std::string, fs::path> found;
  if (pods_.empty()) return found;
  for (const auto& dir : pod_parent_dirs(roots_, pod_parents_)) {
    for (const auto& name : list_subdirs(dir)) {
      auto uid = pod_uid_from_dirname(name);
      if (!uid) continue;
      auto pod = pods_.find(*uid);
      if (pod == pods_.end()) continue;
      fs::path p = dir / name;
      // Keep the known location when it is still there.
      if (!found.count(*uid) || pod->second.path == p) found[*uid] = p;
    }
  }
  return found;
}

void PodCgroupWatcher::set_pod_path(const std::string& uid, Pod& pod,
                                    const std::optional<fs::path>& path, std::vector<Event>& out) {
  if (pod.path && pod.path != path) {
    if (pod.wd >= 0) remove_watch(pod.wd);
    pod.wd = -1;
    out.push_back(Event{uid, *pod.path, Event::Kind::Disappeared});
    pod.path.reset();
  }
  if (!path) return;
  if (!pod.path) {
    pod.path = path;
    out.push_back(Event{uid, *path, Event::Kind::Appeared});
  }
  if (pod.wd < 0) pod.wd = add_watch(*path, Role::Pod, uid);
}

void PodCgroupWatcher::refresh(std::vector<Event>& out) {
  arm();
  auto found = scan_parents();
  for (auto& [uid, pod] : pods_) {
    auto it = found.find(uid);
    std::optional<fs::path> now;
    if (it != found.end()) now = it->second;
    set_pod_path(uid, pod, now, out);
  }
}

std::optional<fs::path> PodCgroupWatcher::watch(const std::string& pod_uid,
                                                const std::string& qos_class) {
  const std::string uid = canonical_uid(pod_uid);
  if (uid.empty()) throw std::invalid_argument("not a pod UID: \"" + pod_uid + "\"");
  Pod& pod = pods_[uid];
  pod.qos = normalize_qos(qos_class);
  if (pod.path) return pod.path;
  arm();  // before looking, so a directory created right after is reported
  std::optional<fs::path> path;
  const auto order = qos_order(pod.qos);
  for (const auto& q : order) {
    for (const auto& root : roots_)
      if ((path = probe_root(root, uid, {q}))) break;
    if (path) break;
  }
  if (!path && !pod_parents_.empty()) {
    const std::string cgroupfs_name = "pod" + uid;
    const std::string systemd_suffix = "-pod" + systemd_uid(uid) + ".slice";
    for (const auto& dir : pod_parents_) {
      for (const auto& name : list_subdirs(dir))
        if (name == cgroupfs_name || ends_with(name, systemd_suffix)) path = dir / name;
      if (path) break;
    }
  }
  if (path) {
    pod.path = path;
    pod.wd = add_watch(*path, Role::Pod, uid);
  }
  return pod.path;
}

void PodCgroupWatcher::unwatch(const std::string& pod_uid) {
  auto it = pods_.find(canonical_uid(pod_uid));
  if (it == pods_.end()) return;
  if (it->second.wd >= 0) remove_watch(it->second.wd);
  pods_.erase(it);
}

std::optional<fs::path> PodCgroupWatcher::path_of(const std::string& pod_uid) const {
  auto it = pods_.find(canonical_uid(pod_uid));
  if (it == pods_.end()) return std::nullopt;
  return it->second.path;
}

std::vector<PodCgroupWatcher::Event> PodCgroupWatcher::drain() {
  std::vector<Event> out;
  bool dirty = false, overflow = false;
  alignas(struct inotify_event) std::array<char, 64 * 1024> buf;
  for (;;) {
    ssize_t n = ::read(fd_.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EAGAIN: nothing more
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const struct inotify_event*>(buf.data() + off);
      off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      if (ev->mask & IN_Q_OVERFLOW) {
        overflow = true;
        continue;
      }
      auto it = by_wd_.find(ev->wd);
      if (it == by_wd_.end()) continue;  // a watch removed earlier
      const Watch w = it->second;
      if (ev->mask & IN_IGNORED) {  // the directory is gone
        by_wd_.erase(it);
        if (w.role == Role::Parent) {
          auto p = parent_wd_.find(w.dir);
          if (p != parent_wd_.end() && p->second == ev->wd) parent_wd_.erase(p);
        } else if (auto pod = pods_.find(w.uid); pod != pods_.end() && pod->second.wd == ev->wd) {
          pod->second.wd = -1;
          set_pod_path(w.uid, pod->second, std::nullopt, out);
        }
        dirty = true;
        continue;
      }
      if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        if (w.role == Role::Pod) {
          if (auto pod = pods_.find(w.uid); pod != pods_.end() && pod->second.wd == ev->wd)
            set_pod_path(w.uid, pod->second, std::nullopt, out);  // removes the watch
        } else {
          remove_watch(ev->wd);
        }
        dirty = true;
        continue;
      }
      // a directory created, removed or moved below a pod parent
      if (w.role == Role::Parent && ev->mask & IN_ISDIR && ev->len > 0) dirty = true;
    }
  }
  if (overflow) discover();
  if (overflow || dirty) refresh(out);
  return out;
}

std::vector<PodCgroupWatcher::Event> PodCgroupWatcher::rescan() {
  std::vector<Event> out = drain();
  discover();
  refresh(out);
  bool more = false;
  for (const auto& [uid, pod] : pods_) {
    if (pod.path) continue;
    if (auto p = find_pod_cgroup(mount_, uid, pod.qos, limits_)) {
      pod_parents_.insert(p->parent_path());
      more = true;
    }
  }
  if (more) refresh(out);
  return out;
}

}  // namespace envsteer::podcgroup
