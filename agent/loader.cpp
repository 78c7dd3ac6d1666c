// SPDX-License-Identifier: Apache-2.0
#include "loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <thread>
#include <stdexcept>

#include "cgroup.h"
#include "envsteer.skel.h"

namespace fs = std::filesystem;

namespace envsteer {

namespace {

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list args) {
  // verifier logs come as one long message: format it whole
  char* buf = nullptr;
  if (vasprintf(&buf, fmt, args) < 0 || !buf) return 0;
  size_t n = strlen(buf);
  while (n > 0 && buf[n - 1] == '\n') buf[--n] = 0;
  if (level == LIBBPF_WARN) spdlog::warn("libbpf: {}", buf);
  else if (level == LIBBPF_INFO) spdlog::debug("libbpf: {}", buf);
  else spdlog::trace("libbpf: {}", buf);
  free(buf);
  return 0;
}

// Loads a four-instruction cgroup/connect4 program that calls bpf_set_retval.
bool probe_set_retval() {
  struct bpf_insn insns[4] = {};
  insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;  // r1 = -ECONNREFUSED
  insns[0].dst_reg = BPF_REG_1;
  insns[0].imm = -111;
  insns[1].code = BPF_JMP | BPF_CALL;
  insns[1].imm = BPF_FUNC_set_retval;
  insns[2].code = BPF_ALU64 | BPF_MOV | BPF_K;  // r0 = 1
  insns[2].dst_reg = BPF_REG_0;
  insns[2].imm = 1;
  insns[3].code = BPF_JMP | BPF_EXIT;
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_CGROUP_INET4_CONNECT);
  UniqueFd fd(bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "es_probe", "GPL", insns, 4, &opts));
  return static_cast<bool>(fd);
}

const char* attach_type_name(uint32_t t) {
  const char* n = libbpf_bpf_attach_type_str(static_cast<bpf_attach_type>(t));
  return n ? n : "?";
}

struct LinkInfo {
  bpf_link_info info{};
  bool ok = false;
};

LinkInfo link_info(int fd) {
  LinkInfo li;
  __u32 len = sizeof(li.info);
  li.ok = bpf_obj_get_info_by_fd(fd, &li.info, &len) == 0;
  return li;
}

}  // namespace

void route_libbpf_logs() { libbpf_set_print(libbpf_print); }

Features probe_features() {
  Features f;
  utsname u{};
  if (uname(&u) == 0) f.kernel = u.release;
  f.set_retval = probe_set_retval();
  if (!f.set_retval)
    f.notes.push_back("bpf_set_retval unavailable for cgroup programs (kernel < 5.19): connects with "
                      "no ready pod fail with EPERM instead of ECONNREFUSED");
  f.cgroup_links = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, nullptr) == 1;
  // both came in 6.3; the thread context needs the end of a request (send) too
  f.recv_tracepoint = libbpf_find_vmlinux_btf_id("sock_recv_length", BPF_TRACE_RAW_TP) > 0 &&
                      libbpf_find_vmlinux_btf_id("sock_send_length", BPF_TRACE_RAW_TP) > 0;
  f.bpf_loop = libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_loop, nullptr) == 1;
  f.task_storage = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_TASK_STORAGE, nullptr) == 1;
  if (!f.recv_tracepoint)
    f.notes.push_back("no tp_btf/sock_recv_length or sock_send_length (kernel < 6.3): threads cannot adopt the environment of "
                      "the request they read; connects use the pod's own environment");
  if (!f.bpf_loop)
    f.notes.push_back("no bpf_loop (kernel < 5.17): inbound env headers are not parsed");
  if (!f.task_storage)
    f.notes.push_back("no task storage (kernel < 5.11): no per-thread request environment");
  return f;
}

PinLock::PinLock(const fs::path& pin_dir) {
  fd_.reset(open(pin_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd_) throw std::runtime_error("cannot open pin directory " + pin_dir.string() + ": " + errstr(errno));
  if (flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    fd_.reset();
    throw std::runtime_error("another envsteer agent is running on pin directory " + pin_dir.string() +
                             " (it holds the lock); stop it first, or give this one its own --bpffs");
  }
}

PinLock::~PinLock() = default;

bool PinLock::held(const fs::path& pin_dir) {
  UniqueFd fd(open(pin_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return false;
  return flock(fd.get(), LOCK_EX | LOCK_NB) != 0;
}

Datapath::~Datapath() {
  // Links are pinned: destroying the skeletons leaves them attached.
  for (envsteer_bpf* skel : lanes_) envsteer_bpf__destroy(skel);
  if (maps_skel_) envsteer_bpf__destroy(maps_skel_);
}

namespace {

// The programs load in two instances of the object on two threads, split so
// that the verifier's work is about even: the request parser of the thread
// context (cgroup_skb ingress, 301k instructions processed) and the response
// parser (sk_skb verdict, 132k) beside the sk_msg parser (200k) and the small
// ones (~0.3 s together).
bool is_http_ingress(const bpf_program* prog) { return std::strcmp(bpf_program__name(prog), "es_http_ingress") == 0; }
bool in_first_lane(const bpf_program* prog) {
  return is_http_ingress(prog) || std::strcmp(bpf_program__name(prog), "es_skb_verdict") == 0;
}

// Checks every pinned map of an earlier agent against this object's layout, and
// keeps the pinned size where it differs from the configured one. The maps not
// pinned yet go to *created, unpinned: the load creates them, and they are
// pinned only once the agent goes on to attach (Datapath::attach).
void check_pinned_maps(envsteer_bpf* skel, const fs::path& map_dir, const Settings& s, AttachReport& rep,
                       std::vector<bpf_map*>* created) {
  bpf_map* map;
  bpf_object__for_each_map(map, skel->obj) {
    if (!bpf_map__pin_path(map)) continue;  // internal maps (.rodata) are not pinned
    fs::path p = map_dir / bpf_map__name(map);
    UniqueFd fd(bpf_obj_get(p.c_str()));
    if (!fd) {
      if (int err = bpf_map__set_pin_path(map, nullptr); err != 0)
        throw std::runtime_error(std::string("map ") + bpf_map__name(map) + ": " + errstr(err));
      created->push_back(map);
      rep.maps_created++;
      continue;
    }
    bpf_map_info info{};
    __u32 len = sizeof(info);
    int err = bpf_obj_get_info_by_fd(fd.get(), &info, &len);
    fd.reset();
    if (err || info.key_size != bpf_map__key_size(map) || info.value_size != bpf_map__value_size(map) ||
        info.type != bpf_map__type(map))
      throw std::runtime_error("pinned map " + p.string() +
                               " was made by an incompatible envsteer version; run `envsteer uninstall "
                               "--bpffs " + s.bpffs + "` first (steering stops until the new agent is up)");
    if (info.max_entries != bpf_map__max_entries(map) && bpf_map__type(map) != BPF_MAP_TYPE_SK_STORAGE) {
      spdlog::warn("pinned map {} holds {} entries, not the {} configured; keeping the pinned size "
                   "(a new size takes effect after `envsteer uninstall`)",
                   bpf_map__name(map), info.max_entries, bpf_map__max_entries(map));
      bpf_map__set_max_entries(map, info.max_entries);
    }
    rep.maps_reused++;
  }
}

// The sk_msg and sk_skb programs attach to the pinned sockhash itself (no link
// on this libbpf); attaching again replaces them for sockets added from now on.
void attach_to_sockhash(envsteer_bpf* skel, bpf_program* prog, AttachReport& rep) {
  const std::string name = bpf_program__name(prog);
  int map_fd = bpf_map__fd(skel->maps.es_sockhash);
  if (bpf_prog_attach(bpf_program__fd(prog), map_fd, bpf_program__expected_attach_type(prog), 0) != 0)
    throw std::runtime_error("attaching " + name + " to map es_sockhash failed: " + errstr(errno));
  rep.created.push_back(name);
}

// Tracing links cannot be updated in place: attach the new program, then swap
// the pin and drop the old link (both run for a moment).
void attach_tracing(bpf_program* prog, const fs::path& lp, AttachReport& rep) {
  const std::string name = bpf_program__name(prog);
  bpf_link* link = bpf_program__attach_trace(prog);
  if (!link) throw std::runtime_error("attaching " + name + " failed: " + errstr(errno));
  bpf_link* old = fs::exists(lp) ? bpf_link__open(lp.c_str()) : nullptr;
  fs::remove(lp);
  if (int err = bpf_link__pin(link, lp.c_str()); err != 0) {
    bpf_link__destroy(link);
    if (old) bpf_link__destroy(old);
    throw std::runtime_error("pinning link " + lp.string() + " failed: " + errstr(err));
  }
  bpf_link__disconnect(link);
  bpf_link__destroy(link);
  if (old) {
    bpf_link__detach(old);
    bpf_link__destroy(old);
    rep.replaced.push_back(name);
  } else {
    rep.created.push_back(name);
  }
}

// Every loaded program that is not a cgroup program, attached where it
// belongs; returns the link pin names. The cgroup programs go to *cgroup_progs:
// they are attached per pod (PodAttacher).
std::vector<std::string> attach_all(envsteer_bpf* skel, envsteer_bpf* maps, const fs::path& link_dir,
                                    AttachReport& rep, std::vector<CgroupProgram>* cgroup_progs) {
  std::vector<std::string> linked;
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel->obj) {
    if (!bpf_program__autoload(prog)) continue;
    const std::string name = bpf_program__name(prog);
    auto type = bpf_program__type(prog);
    if (type == BPF_PROG_TYPE_SK_MSG || type == BPF_PROG_TYPE_SK_SKB) {
      attach_to_sockhash(maps, prog, rep);
      continue;
    }
    if (type == BPF_PROG_TYPE_TRACING) {
      linked.push_back(name);
      attach_tracing(prog, link_dir / name, rep);
      continue;
    }
    // cgroup_skb ingress parses requests for the thread context only
    cgroup_progs->push_back({name, bpf_program__fd(prog), static_cast<uint32_t>(bpf_program__expected_attach_type(prog)),
                             is_http_ingress(prog)});
  }
  return linked;
}

// Links of programs this version no longer has. Cgroup links of an older
// agent (attached at the cgroup root) are left attached and returned: they are
// removed once the pods have their own (Datapath::sync_pods).
std::vector<fs::path> detach_obsolete(const fs::path& link_dir, const std::vector<std::string>& wanted) {
  std::vector<fs::path> root_links;
  for (const auto& e : fs::directory_iterator(link_dir)) {
    auto n = e.path().filename().string();
    if (e.is_directory()) continue;  // pods/: PodAttacher's
    if (std::find(wanted.begin(), wanted.end(), n) != wanted.end()) continue;
    {
      UniqueFd fd(bpf_obj_get(e.path().c_str()));
      auto li = fd ? link_info(fd.get()) : LinkInfo{};
      if (li.ok && li.info.type == BPF_LINK_TYPE_CGROUP) {
        root_links.push_back(e.path());
        continue;
      }
    }
    if (bpf_link* old = bpf_link__open(e.path().c_str())) {
      bpf_link__detach(old);
      bpf_link__destroy(old);
    }
    fs::remove(e.path());
    spdlog::info("detached obsolete program link {}", n);
  }
  return root_links;
}

}  // namespace

void Datapath::configure(envsteer_bpf* skel, const Settings& s) const {
  const std::pair<bpf_map*, uint32_t> sized[] = {
      {skel->maps.es_frontends, s.limits.frontends}, {skel->maps.es_sets, s.limits.sets},
      {skel->maps.es_slots, s.limits.slots},         {skel->maps.es_envs, s.limits.envs},
      {skel->maps.es_env_names, s.limits.envs},      {skel->maps.es_pods, s.limits.pods}};
  for (auto [map, limit] : sized) bpf_map__set_max_entries(map, limit);

  skel->rodata->es_feat_set_retval = features_.set_retval ? 1 : 0;
  skel->rodata->es_feat_request_ctx = request_ctx_ ? 1 : 0;
  skel->rodata->es_feat_per_request = per_request_ ? 1 : 0;
  skel->rodata->es_feat_hints = per_request_ && s.connect_hints ? 1 : 0;
  skel->rodata->es_feat_handoff = per_request_ && request_ctx_ && s.handoff ? 1 : 0;
  skel->rodata->es_splitter = s.splitter;
  if (!request_ctx_) {
    bpf_program__set_autoload(skel->progs.es_http_ingress, false);
    bpf_program__set_autoload(skel->progs.es_sock_recv_length, false);
    bpf_program__set_autoload(skel->progs.es_sock_send_length, false);
  }
  if (!per_request_) {
    bpf_program__set_autoload(skel->progs.es_sockops_prog, false);
    bpf_program__set_autoload(skel->progs.es_msg_prog, false);
    bpf_program__set_autoload(skel->progs.es_skb_verdict, false);
  }
}

std::unique_ptr<Datapath> Datapath::open(const Settings& s, const Features& f) {
  const fs::path pin = s.bpffs, map_dir = pin / "maps";
  std::unique_ptr<Datapath> dp(new Datapath());
  dp->pin_dir_ = pin;
  dp->features_ = f;
  dp->request_ctx_ = s.header_context && f.request_context();
  dp->per_request_ = s.header_context && f.bpf_loop;
  // The maps come from a first instance of the object that loads no program:
  // libbpf creates (or reuses the pinned) maps in a tenth of a second, and
  // the verifier's seconds go to the second instance, which load() fills with
  // these same maps (bpf_map__reuse_fd).
  const std::string map_root = map_dir.string();
  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = map_root.c_str());
  dp->maps_skel_ = envsteer_bpf__open_opts(&opts);
  if (!dp->maps_skel_) throw std::runtime_error("cannot open the BPF object: " + errstr(errno));
  dp->configure(dp->maps_skel_, s);
  check_pinned_maps(dp->maps_skel_, map_dir, s, dp->loaded_, &dp->unpinned_);
  bpf_program* prog;
  bpf_object__for_each_program(prog, dp->maps_skel_->obj) bpf_program__set_autoload(prog, false);
  if (int err = envsteer_bpf__load(dp->maps_skel_); err != 0)
    throw std::runtime_error("creating the BPF maps failed: " + errstr(err));
  for (size_t i = 0; i < maps::kMapCount; i++) {
    auto id = static_cast<maps::MapId>(i);
    bpf_map* m = bpf_object__find_map_by_name(dp->maps_skel_->obj, maps::map_name(id));
    if (!m) throw std::runtime_error(std::string("BPF object has no map ") + maps::map_name(id));
    dp->maps_.set_fd(id, bpf_map__fd(m));
  }
  uint32_t zero = 0;
  es_config cfg{};
  if (dp->maps_.lookup(maps::MapId::Config, &zero, &cfg) && cfg.abi_version != 0 && cfg.abi_version != ES_ABI_VERSION)
    throw std::runtime_error("pinned maps under " + s.bpffs + " use ABI version " +
                             std::to_string(cfg.abi_version) + ", this agent " +
                             std::to_string(ES_ABI_VERSION) + "; run `envsteer uninstall` first");
  return dp;
}

envsteer_bpf* Datapath::open_lane(const Settings& s, bool first) {
  envsteer_bpf* skel = envsteer_bpf__open();
  if (!skel) throw std::runtime_error("cannot open the BPF object: " + errstr(errno));
  lanes_.push_back(skel);  // owned from here (the destructor)
  configure(skel, s);
  bool any = false;
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel->obj) {
    if (in_first_lane(prog) != first) bpf_program__set_autoload(prog, false);
    any |= bpf_program__autoload(prog);
  }
  if (!any) {  // nothing of this lane is loaded with these settings
    lanes_.pop_back();
    envsteer_bpf__destroy(skel);
    return nullptr;
  }
  // Every map of the instance is one open() made or reused.
  bpf_map* m;
  bpf_object__for_each_map(m, maps_skel_->obj) {
    if (bpf_map__is_internal(m)) continue;  // .rodata: each instance its own, with the same values
    bpf_map* mine = bpf_object__find_map_by_name(skel->obj, bpf_map__name(m));
    if (!mine) throw std::runtime_error(std::string("BPF object has no map ") + bpf_map__name(m));
    // not pinned by this instance (nor looked up under libbpf's default /sys/fs/bpf)
    if (int err = bpf_map__set_pin_path(mine, nullptr); err != 0)
      throw std::runtime_error(std::string("map ") + bpf_map__name(m) + ": " + errstr(err));
    if (int err = bpf_map__reuse_fd(mine, bpf_map__fd(m)); err != 0)
      throw std::runtime_error(std::string("map ") + bpf_map__name(m) + ": " + errstr(err));
  }
  return skel;
}

void Datapath::load(const Settings& s) {
  envsteer_bpf* first = open_lane(s, true);
  envsteer_bpf* rest = open_lane(s, false);
  auto load_lane = [](envsteer_bpf* skel) {
    return skel ? envsteer_bpf__load(skel) : 0;
  };
  int err_first = 0;
  std::thread t([&] { err_first = load_lane(first); });
  int err = load_lane(rest);
  t.join();
  if (err == 0) err = err_first;
  if (err != 0)
    throw std::runtime_error("loading the BPF programs failed: " + errstr(err) +
                             " (run with --log-level debug for the verifier log)");
}

void Datapath::attach(const fs::path& cgroup_root, AttachReport* report) {
  const fs::path map_dir = pin_dir_ / "maps", link_dir = pin_dir_ / "links";
  fs::create_directories(map_dir);
  fs::create_directories(link_dir);
  AttachReport rep = loaded_;
  // the maps this agent created, before any program that uses them is attached
  for (bpf_map* m : unpinned_) {
    const fs::path p = map_dir / bpf_map__name(m);
    if (int err = bpf_map__pin(m, p.c_str()); err != 0)
      throw std::runtime_error("pinning map " + p.string() + " failed: " + errstr(err));
  }
  unpinned_.clear();
  std::vector<CgroupProgram> cgroup_progs;
  std::vector<std::string> linked;
  for (envsteer_bpf* skel : lanes_) {
    auto l = attach_all(skel, maps_skel_, link_dir, rep, &cgroup_progs);
    linked.insert(linked.end(), l.begin(), l.end());
  }
  root_links_ = detach_obsolete(link_dir, linked);
  pods_ = std::make_unique<PodAttacher>(link_dir / "pods", std::move(cgroup_progs));
  rep.pods_adopted = pods_->adopt();
  link_dir_ = link_dir;
  bpf_program* prog;
  for (envsteer_bpf* skel : lanes_)
    bpf_object__for_each_program(prog, skel->obj)
      if (bpf_program__autoload(prog) && bpf_program__type(prog) == BPF_PROG_TYPE_TRACING) tracing_.push_back(prog);
  tracing_on_ = !tracing_.empty();  // attached by attach_all: kept until the model says
  if (!root_links_.empty())
    spdlog::info("{} cgroup link(s) at {} of an agent older than per-pod attachment: removed once the pods have "
                 "their own", root_links_.size(), cgroup_root.string());
  if (report) *report = rep;
}

bool Datapath::set_thread_tracing(bool on) {
  if (tracing_.empty() || on == tracing_on_) return false;
  if (on) {
    AttachReport rep;
    try {
      for (bpf_program* p : tracing_) attach_tracing(p, link_dir_ / bpf_program__name(p), rep);
    } catch (const std::exception& e) {
      spdlog::warn("thread context programs: {}; tried again with the next change", e.what());
      return false;
    }
  } else {
    for (bpf_program* p : tracing_) {
      const fs::path lp = link_dir_ / bpf_program__name(p);
      if (bpf_link* l = bpf_link__open(lp.c_str())) {
        bpf_link__detach(l);
        bpf_link__destroy(l);
      }
      std::error_code ec;
      fs::remove(lp, ec);
    }
  }
  tracing_on_ = on;
  return true;
}

PodAttacher::Result Datapath::sync_pods(const std::map<uint64_t, std::string>& want,
                                        const std::set<uint64_t>& thread_ctx) {
  auto r = pods_->sync(want, thread_ctx);
  if (!root_links_.empty() && !pods_->has_failures()) {
    for (const auto& p : root_links_) {
      if (bpf_link* l = bpf_link__open(p.c_str())) {
        bpf_link__detach(l);
        bpf_link__destroy(l);
      }
      std::error_code ec;
      fs::remove(p, ec);
    }
    spdlog::info("removed {} cgroup link(s) at the cgroup root (per-pod attachment now)", root_links_.size());
    root_links_.clear();
  }
  return r;
}

std::vector<std::string> uninstall(const fs::path& pin_dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::exists(pin_dir / "links", ec) && !fs::exists(pin_dir / "maps", ec)) {
    if (fs::exists(pin_dir, ec) && fs::is_empty(pin_dir, ec)) fs::remove(pin_dir, ec);
    return removed;
  }
  if (fs::exists(pin_dir / "links", ec)) {
    std::vector<fs::path> dirs, files;
    for (auto it = fs::recursive_directory_iterator(pin_dir / "links", ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec))
      (it->is_directory(ec) ? dirs : files).push_back(it->path());
    ec.clear();
    for (const auto& f : files) {
      if (bpf_link* l = bpf_link__open(f.c_str())) {
        // a pod's link whose cgroup is gone is detached already
        if (bpf_link__detach(l) != 0 && errno != ENOLINK && errno != EINVAL)
          spdlog::warn("detaching {}: {}", f.string(), errstr(errno));
        bpf_link__destroy(l);
      }
      fs::remove(f, ec);
      removed.push_back(f.string());
    }
    for (auto d = dirs.rbegin(); d != dirs.rend(); ++d) fs::remove(*d, ec);  // deepest first
  }
  if (fs::exists(pin_dir / "maps", ec)) {
    for (const auto& e : fs::directory_iterator(pin_dir / "maps")) {
      fs::remove(e.path(), ec);
      removed.push_back(e.path().string());
    }
  }
  fs::remove(pin_dir / "links", ec);
  fs::remove(pin_dir / "maps", ec);
  fs::remove(pin_dir, ec);
  return removed;
}

std::vector<LinkStatus> pinned_links(const fs::path& pin_dir) {
  std::vector<LinkStatus> out;
  std::error_code ec;
  if (!fs::exists(pin_dir / "links", ec)) return out;
  for (auto it = fs::recursive_directory_iterator(pin_dir / "links", ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const auto& e = *it;
    if (e.is_directory(ec)) continue;
    LinkStatus st;
    st.name = e.path().lexically_relative(pin_dir / "links").string();
    UniqueFd fd(bpf_obj_get(e.path().c_str()));
    if (!fd) {
      out.push_back(st);
      continue;
    }
    auto li = link_info(fd.get());
    fd.reset();
    if (li.ok) {
      st.link_id = li.info.id;
      st.prog_id = li.info.prog_id;
      if (li.info.type == BPF_LINK_TYPE_CGROUP) {
        st.cgroup_id = li.info.cgroup.cgroup_id;
        st.attach_type = attach_type_name(li.info.cgroup.attach_type);
      }
      UniqueFd pfd(bpf_prog_get_fd_by_id(st.prog_id));
      if (pfd) {
        bpf_prog_info pi{};
        __u32 len = sizeof(pi);
        if (bpf_obj_get_info_by_fd(pfd.get(), &pi, &len) == 0) {
          st.prog_name = pi.name;
          st.run_cnt = pi.run_cnt;
          st.run_time_ns = pi.run_time_ns;
        }
      }
    }
    out.push_back(st);
  }
  return out;
}

}  // namespace envsteer
