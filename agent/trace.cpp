// SPDX-License-Identifier: Apache-2.0
#include "trace.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "cgroup.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace envsteer {

std::string NameTable::service(uint32_t id) const {
  auto it = services.find(id);
  return it == services.end() ? "" : it->second.name;
}

std::string NameTable::frontend(uint32_t id) const {
  auto it = services.find(id);
  return it == services.end() ? "" : it->second.frontend;
}

std::string NameTable::env(uint32_t id) const {
  if (id == ES_ENV_NONE) return "";
  auto it = envs.find(id);
  if (it != envs.end()) return it->second;
  return id == ES_ENV_BASE ? "<base>" : "#" + std::to_string(id);
}

std::string NameTable::pod(uint64_t cgroup_id) const {
  auto it = pods.find(cgroup_id);
  return it == pods.end() ? "" : it->second;
}

std::string NameTable::pod_of_cgroup(uint64_t cgroup_id) const {
  std::string p = pod(cgroup_id);
  if (!p.empty()) return p;
  for (const auto& [dir, name] : pod_dirs) {
    std::error_code ec;
    size_t seen = 0;
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator() && seen < 256; it.increment(ec)) {
      if (!it->is_directory(ec)) continue;
      seen++;
      if (cgroup::cgroup_id(it->path()) == cgroup_id) return name;
    }
  }
  return "";
}

std::string NameTable::backend_pod(const std::string& addr) const {
  auto it = backends.find(addr);
  return it == backends.end() ? "" : it->second;
}

NameTable build_names(const DesiredState& model, const Shadow& shadow) {
  NameTable t;
  for (const auto& [key, fe] : shadow.frontends) {
    auto it = model.frontends.find(key);
    t.services[fe.svc_id] = {it == model.frontends.end() ? "" : it->second.service, maps::format_frontend(key)};
  }
  t.envs[ES_ENV_BASE] = "<base>";
  for (const auto& [id, e] : shadow.envs) t.envs[id] = maps::env_name_of(e);
  for (const auto& [cg, p] : model.pods) {
    t.pods[cg] = p.pod;
    if (!p.cgroup.empty()) t.pod_dirs[p.cgroup] = p.pod;
  }
  for (const auto& [name, refs] : model.sets)
    for (const auto& r : refs)
      if (!r.pod.empty()) t.backends[maps::format_backend(r.backend)] = r.pod;
  return t;
}

std::string event_kind_name(uint32_t kind) {
  switch (kind) {
    case ES_EV_CONNECT_STEERED: return "steered";
    case ES_EV_CONNECT_FALLBACK: return "fallback";
    case ES_EV_CONNECT_DEFAULT: return "default";
    case ES_EV_CONNECT_REFUSED: return "refused";
    case ES_EV_REQ_PASS: return "request-pass";
    case ES_EV_REQ_REDIRECT: return "request-redirect";
    case ES_EV_REQ_SLOW: return "request-slow";
    case ES_EV_REQ_FAILED: return "request-failed";
    case ES_EV_H2_UNROUTED: return "h2-unrouted";
    case ES_EV_STREAM: return "stream";
    case ES_EV_STREAM_FAILED: return "stream-failed";
    default: return "kind-" + std::to_string(kind);
  }
}

namespace {

const char* source_name(uint32_t s) {
  switch (s) {
    case ES_SRC_REQUEST: return "request";
    case ES_SRC_POD: return "pod";
    case ES_SRC_DEFAULT: return "default";
    case ES_SRC_HINT: return "hint";
    default: return "";
  }
}

std::string iso_time(int64_t real_ns) {
  time_t sec = static_cast<time_t>(real_ns / 1000000000);
  std::tm tm{};
  gmtime_r(&sec, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[96];
  std::snprintf(out, sizeof(out), "%s.%06lldZ", buf, static_cast<long long>((real_ns % 1000000000) / 1000));
  return out;
}

int64_t mono_to_real_offset() {
  timespec r{}, m{};
  clock_gettime(CLOCK_REALTIME, &r);
  clock_gettime(CLOCK_MONOTONIC, &m);
  return (static_cast<int64_t>(r.tv_sec) - m.tv_sec) * 1000000000 + (r.tv_nsec - m.tv_nsec);
}

std::string str_or(const json& j, const char* k, const char* dflt = "-") {
  if (!j.contains(k) || !j[k].is_string() || j[k].get<std::string>().empty()) return dflt;
  return j[k].get<std::string>();
}

}  // namespace

json decode_event(const es_trace_event& ev, const NameTable& names, int64_t mono_to_real_ns) {
  json j;
  j["time"] = iso_time(static_cast<int64_t>(ev.ts_ns) + mono_to_real_ns);
  j["ts_ns"] = ev.ts_ns;
  j["kind"] = event_kind_name(ev.kind);
  j["pid"] = ev.pid;
  j["cgroup_id"] = ev.cgroup_id;
  j["pod"] = names.pod(ev.pod_cgroup_id ? ev.pod_cgroup_id : ev.cgroup_id);
  j["pod_env"] = names.env(ev.pod_env);
  j["service"] = names.service(ev.svc_id);
  es_frontend_key fk{};
  std::memcpy(fk.addr, ev.fe_addr, sizeof(fk.addr));
  fk.port = ev.fe_port;
  fk.proto = ev.proto;
  fk.family = ev.family;
  j["frontend"] = maps::format_frontend(fk);
  j["env_source"] = source_name(ev.source);
  j["env_requested"] = names.env(ev.env_req);
  size_t tl = std::min<size_t>(ev.env_len, sizeof(ev.thread_env));
  j["thread_env"] = std::string(ev.thread_env, strnlen(ev.thread_env, tl));
  j["env_resolved"] = names.env(ev.env_res);
  j["level"] = ev.level;
  std::string be;
  if (ev.kind != ES_EV_CONNECT_REFUSED && ev.be_port != 0) {
    es_backend b{};
    std::memcpy(b.addr, ev.be_addr, sizeof(b.addr));
    b.port = ev.be_port;
    b.family = ev.family;
    be = maps::format_backend(b);
  }
  j["backend"] = be;
  j["backend_pod"] = be.empty() ? "" : names.backend_pod(be);
  if (ev.kind == ES_EV_STREAM || ev.kind == ES_EV_STREAM_FAILED) j["stream"] = ev.flags;
  return j;
}

std::string format_event(const json& ev) {
  // 08:30:01.123456 fallback shop/c-1 -> shop/s (127.96.2.1:80/TCP) env dev.proj1.zed [request, thread
  // dev.proj1.zed] -> dev level 2 -> 127.1.2.1:8080 shop/s-dev
  std::string t = str_or(ev, "time", "");
  auto tpos = t.find('T');
  std::string clock = tpos == std::string::npos ? t : t.substr(tpos + 1, 15);
  std::string kind = str_or(ev, "kind");
  std::string out = clock + " " + kind + std::string(kind.size() < 8 ? 8 - kind.size() : 0, ' ') + " " +
                    str_or(ev, "pod", "?") + " -> " + str_or(ev, "service", "?") + " (" + str_or(ev, "frontend") +
                    ")";
  out += " env " + str_or(ev, "env_requested") + " [" + str_or(ev, "env_source");
  if (!str_or(ev, "thread_env", "").empty()) out += ", thread " + str_or(ev, "thread_env");
  out += "]";
  if (kind == "refused") {
    out += " -> no ready pod: ECONNREFUSED";
    return out;
  }
  if (ev.contains("stream")) out += " stream " + std::to_string(ev.value("stream", 0u));
  if (kind == "stream-failed" && str_or(ev, "backend", "").empty()) {
    out += " -> " + str_or(ev, "env_resolved") + " -> failed (UNAVAILABLE)";
    return out;
  }
  if (kind == "h2-unrouted") {
    out += " -> HTTP/2 on an undeclared port: every stream stays on " + str_or(ev, "env_resolved") +
           " (declare appProtocol: kubernetes.io/h2c or grpc)";
    return out;
  }
  out += " -> " + str_or(ev, "env_resolved") + " level " + std::to_string(ev.value("level", 0u)) + " -> " +
         str_or(ev, "backend");
  if (!str_or(ev, "backend_pod", "").empty()) out += " " + str_or(ev, "backend_pod");
  return out;
}

bool TraceFilter::matches(const json& ev) const {
  auto is = [&](const char* k, const std::string& want) { return ev.value(k, std::string()) == want; };
  if (!service.empty() && !is("service", service) && !is("frontend", service)) return false;
  if (!env.empty() && !is("env_requested", env) && !is("env_resolved", env) && !is("thread_env", env) &&
      !is("pod_env", env))
    return false;
  if (!pod.empty() && !is("pod", pod) && !is("backend_pod", pod)) return false;
  return true;
}

TraceHub::TraceHub(const maps::BpfMapBackend& m, std::function<std::shared_ptr<const NameTable>()> names)
    : cfg_fd_(m.fd(maps::MapId::TraceCfg)), rb_fd_(m.fd(maps::MapId::TraceRb)), names_(std::move(names)) {
  rb_ = ring_buffer__new(rb_fd_, &TraceHub::on_event, this, nullptr);
  if (!rb_) throw std::runtime_error(std::string("cannot read the trace ring buffer: ") + std::strerror(errno));
  {
    std::lock_guard<std::mutex> g(mu_);
    write_switch();  // off: a previous agent may have stopped with a client attached
  }
  // Events written while nobody listened are stale: drop them.
  ring_buffer__consume(rb_);
  reader_ = std::thread([this] { run(); });
}

TraceHub::~TraceHub() {
  close();
  if (rb_) ring_buffer__free(rb_);  // the map fds are the Datapath's
}

void TraceHub::write_switch() {
  es_trace_cfg c{};
  if (!closed_ && !clients_.empty()) {
    uint32_t rate = kMaxRate;
    for (const auto& cl : clients_) rate = std::min(rate, cl->rate);
    c.enabled = 1;
    c.rate = rate;
    c.burst = std::max<uint32_t>(rate, 1);
  }
  active_ = c.enabled != 0;
  uint32_t zero = 0;
  if (bpf_map_update_elem(cfg_fd_, &zero, &c, BPF_ANY) != 0)
    spdlog::warn("trace: cannot write {}: {}", ES_MAP_TRACE_CFG, std::strerror(errno));
}

std::shared_ptr<TraceHub::Client> TraceHub::attach(TraceFilter filter, uint32_t rate) {
  std::lock_guard<std::mutex> g(mu_);
  if (closed_ || clients_.size() >= kMaxClients) return nullptr;
  auto c = std::make_shared<Client>();
  c->filter = std::move(filter);
  c->rate = std::clamp<uint32_t>(rate ? rate : kDefaultRate, 1, kMaxRate);
  clients_.push_back(c);
  write_switch();
  cv_.notify_all();
  spdlog::info("trace: client attached ({} now; rate limit {}/s per CPU)", clients_.size(), c->rate);
  return c;
}

void TraceHub::detach(const std::shared_ptr<Client>& c) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = std::find(clients_.begin(), clients_.end(), c);
  if (it == clients_.end()) return;
  clients_.erase(it);
  write_switch();
  spdlog::info("trace: client detached ({} left{})", clients_.size(),
               c->dropped ? "; it was too slow for " + std::to_string(c->dropped) + " event(s)" : "");
}

size_t TraceHub::clients() const {
  std::lock_guard<std::mutex> g(mu_);
  return clients_.size();
}

std::optional<std::vector<json>> TraceHub::take(Client& c, std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> g(mu_);
  cv_.wait_for(g, wait, [&] { return closed_ || !c.queue.empty(); });
  if (closed_) return std::nullopt;
  std::vector<json> out(std::make_move_iterator(c.queue.begin()), std::make_move_iterator(c.queue.end()));
  c.queue.clear();
  return out;
}

void TraceHub::close() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_ && !reader_.joinable()) return;
    closed_ = true;
    write_switch();
  }
  cv_.notify_all();
  if (reader_.joinable()) reader_.join();
}

int TraceHub::on_event(void* ctx, void* data, size_t size) {
  auto* self = static_cast<TraceHub*>(ctx);
  if (size < sizeof(es_trace_event)) return 0;
  es_trace_event ev;
  std::memcpy(&ev, data, sizeof(ev));
  json j = decode_event(ev, *self->batch_names_, self->mono_to_real_ns_);
  if (ev.pod_cgroup_id == 0 && j["pod"].get<std::string>().empty()) {
    // the task's cgroup is a container's below its pod's: find the pod once per cgroup
    auto it = self->pod_cache_.find(ev.cgroup_id);
    if (it == self->pod_cache_.end()) {
      if (self->pod_cache_.size() >= 4096) self->pod_cache_.clear();
      it = self->pod_cache_.emplace(ev.cgroup_id, self->batch_names_->pod_of_cgroup(ev.cgroup_id)).first;
    }
    j["pod"] = it->second;
  }
  self->deliver(j);
  return 0;
}

void TraceHub::publish(const es_trace_event& ev) {
  if (!active_.load(std::memory_order_relaxed)) return;
  auto names = names_();
  if (!names) names = std::make_shared<NameTable>();
  json j = decode_event(ev, *names, mono_to_real_offset());
  {
    std::lock_guard<std::mutex> g(mu_);
    // the kernel's rate limit, for the whole endpoint: the lowest client rate per second
    auto now = std::chrono::steady_clock::now();
    if (now - user_window_ >= std::chrono::seconds(1)) {
      user_window_ = now;
      user_sent_ = 0;
    }
    uint32_t rate = kMaxRate;
    for (const auto& cl : clients_) rate = std::min(rate, cl->rate);
    if (user_sent_ >= rate) return;
    user_sent_++;
  }
  deliver(j);
}

void TraceHub::deliver(const json& j) {
  std::lock_guard<std::mutex> g(mu_);
  for (auto& c : clients_) {
    if (!c->filter.matches(j)) continue;
    if (c->queue.size() >= kQueueLimit) {
      c->dropped++;
      continue;
    }
    c->queue.push_back(j);
  }
}

void TraceHub::run() {
  for (;;) {
    {
      std::unique_lock<std::mutex> g(mu_);
      cv_.wait(g, [&] { return closed_ || !clients_.empty(); });
      if (closed_) return;
    }
    auto names = names_();
    if (!names) names = std::make_shared<NameTable>();
    if (names != batch_names_) pod_cache_.clear();
    batch_names_ = std::move(names);
    mono_to_real_ns_ = mono_to_real_offset();
    int n = ring_buffer__poll(rb_, 200);
    if (n < 0 && n != -EINTR) {
      spdlog::warn("trace: ring buffer poll: {}", std::strerror(-n));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (n > 0) cv_.notify_all();
  }
}

admin::Response trace_response(TraceHub& hub, const admin::Request& q) {
  admin::Response r;
  TraceFilter f;
  f.service = q.param("service");
  f.env = q.param("env");
  f.pod = q.param("pod");
  bool as_json = q.param("format") == "json";
  uint32_t rate = TraceHub::kDefaultRate;
  if (q.has_param("rate")) {
    try {
      rate = static_cast<uint32_t>(std::stoul(q.param("rate")));
    } catch (const std::exception&) {
      r.status = 400;
      r.body = "rate: expected a number of events per second\n";
      return r;
    }
  }
  auto client = hub.attach(f, rate);
  if (!client) {
    r.status = 429;
    r.body = "too many trace clients (at most " + std::to_string(TraceHub::kMaxClients) + ")\n";
    return r;
  }
  r.headers.emplace_back("X-Envsteer-Trace-Rate", std::to_string(client->rate));
  r.content_type = as_json ? "application/x-ndjson" : "text/plain; charset=utf-8";
  r.next = [&hub, client, as_json](std::string& out) {
    auto events = hub.take(*client, std::chrono::milliseconds(1000));
    if (!events) return false;
    for (const auto& e : *events) out += (as_json ? e.dump() : format_event(e)) + "\n";
    if (out.empty()) out = "\n";  // heartbeat: notices a client that went away
    return true;
  };
  r.done = [&hub, client] { hub.detach(client); };
  return r;
}

int run_trace_client(const std::string& socket_path, const TraceFilter& f, bool as_json, uint32_t rate,
                     uint64_t count, double duration) {
  if (socket_path.empty()) {
    std::fprintf(stderr, "envsteer trace: --admin-socket: the agent's admin socket is needed\n");
    return 1;
  }
  std::string q = "/v1/trace?format=" + std::string(as_json ? "json" : "text");
  if (!f.service.empty()) q += "&service=" + httplib::detail::encode_query_param(f.service);
  if (!f.env.empty()) q += "&env=" + httplib::detail::encode_query_param(f.env);
  if (!f.pod.empty()) q += "&pod=" + httplib::detail::encode_query_param(f.pod);
  if (rate) q += "&rate=" + std::to_string(rate);
  httplib::Client c(socket_path);
  c.set_address_family(AF_UNIX);
  c.set_connection_timeout(2);
  c.set_read_timeout(10);  // the agent sends a heartbeat every second
  auto start = std::chrono::steady_clock::now();
  uint64_t seen = 0;
  std::string partial;
  bool limit_reached = false;
  int status = 0;
  auto res = c.Get(
      q, httplib::Headers{},
      [&](const httplib::Response& r) {
        status = r.status;
        if (r.status == 200 && !as_json)
          std::fprintf(stderr, "tracing steering decisions (rate limit %s/s per CPU; Ctrl-C to stop)\n",
                       r.get_header_value("X-Envsteer-Trace-Rate").c_str());
        return true;
      },
      [&](const char* data, size_t len) {
        if (status != 200) {
          partial.append(data, len);
          return true;
        }
        partial.append(data, len);
        size_t nl;
        while ((nl = partial.find('\n')) != std::string::npos) {
          std::string line = partial.substr(0, nl);
          partial.erase(0, nl + 1);
          if (line.empty()) continue;  // heartbeat
          std::fwrite(line.data(), 1, line.size(), stdout);
          std::fputc('\n', stdout);
          std::fflush(stdout);
          if (count && ++seen >= count) {
            limit_reached = true;
            return false;
          }
        }
        if (duration > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >= duration) {
          limit_reached = true;
          return false;
        }
        return true;
      });
  if (limit_reached) return 0;
  if (!res) {
    std::fprintf(stderr, "envsteer trace: agent not reachable at %s (%s)\n", socket_path.c_str(),
                 httplib::to_string(res.error()).c_str());
    return 1;
  }
  if (res->status != 200) {
    std::fprintf(stderr, "envsteer trace: %s", (partial.empty() ? res->body : partial).c_str());
    return 1;
  }
  return 0;  // the agent stopped
}

}  // namespace envsteer
