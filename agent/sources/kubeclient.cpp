// SPDX-License-Identifier: Apache-2.0
#include "sources/kubeclient.h"

#include <curl/curl.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace envsteer::sources {

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw KubeConfigError("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') i++;
  return s.substr(i);
}

// kubeconfig's *-data fields; yaml-cpp (already linked) decodes base64. It
// returns nothing for bad input, so an empty result of a non-empty field is an error.
std::string base64_decode(const std::string& in, const std::string& what) {
  std::string compact;
  for (char c : in)
    if (c != '\n' && c != '\r' && c != ' ') compact.push_back(c);
  auto bytes = YAML::DecodeBase64(compact);
  if (bytes.empty() && !compact.empty()) throw KubeConfigError(what + ": not valid base64");
  return std::string(bytes.begin(), bytes.end());
}

void curl_global() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

std::string url_escape(std::string_view s) {
  curl_global();
  // libcurl escapes every byte but ALPHA / DIGIT / "-._~" (RFC 3986 unreserved)
  char* e = curl_easy_escape(nullptr, s.data(), static_cast<int>(s.size()));
  if (!e) throw std::bad_alloc();
  std::string out(e);
  curl_free(e);
  return out;
}

KubeConfig in_cluster_config(const fs::path& sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !port || !*host || !*port)
    throw KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set "
                          "(use --kubeconfig)");
  KubeConfig c;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  c.server = "https://" + h + ":" + port;
  c.token_file = (sa_dir / "token").string();
  c.ca_file = (sa_dir / "ca.crt").string();
  if (!fs::exists(c.token_file)) throw KubeConfigError("service-account token " + c.token_file + " missing");
  if (!fs::exists(c.ca_file)) throw KubeConfigError("service-account CA " + c.ca_file + " missing");
  c.source = "in-cluster service account";
  return c;
}

KubeConfig load_kubeconfig(const fs::path& file, const std::string& context) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::Exception& e) {
    throw KubeConfigError(file.string() + ": " + e.what());
  }
  const std::string f = file.string();
  auto named = [&](const char* list, const std::string& name, const char* inner) -> YAML::Node {
    for (const auto& item : root[list])
      if (item["name"] && item["name"].as<std::string>() == name) return item[inner];
    throw KubeConfigError(f + ": no " + std::string(list) + " entry named \"" + name + "\"");
  };
  std::string ctx = context;
  if (ctx.empty()) {
    if (!root["current-context"]) throw KubeConfigError(f + ": no current-context (pass a context)");
    ctx = root["current-context"].as<std::string>();
  }
  YAML::Node c = named("contexts", ctx, "context");
  if (!c || !c["cluster"]) throw KubeConfigError(f + ": context \"" + ctx + "\" names no cluster");
  YAML::Node cluster = named("clusters", c["cluster"].as<std::string>(), "cluster");
  YAML::Node user = c["user"] ? named("users", c["user"].as<std::string>(), "user") : YAML::Node();

  auto rel = [&](const std::string& p) { return fs::path(p).is_absolute() ? p : (file.parent_path() / p).string(); };
  auto str = [](const YAML::Node& n, const char* k) { return n && n[k] ? n[k].as<std::string>() : std::string(); };

  KubeConfig k;
  k.server = str(cluster, "server");
  if (k.server.empty()) throw KubeConfigError(f + ": cluster of context \"" + ctx + "\" has no server");
  if (!str(cluster, "certificate-authority").empty()) k.ca_file = rel(str(cluster, "certificate-authority"));
  if (!str(cluster, "certificate-authority-data").empty())
    k.ca_data = base64_decode(str(cluster, "certificate-authority-data"), f + ": certificate-authority-data");
  k.insecure_skip_tls_verify = cluster && cluster["insecure-skip-tls-verify"] &&
                               cluster["insecure-skip-tls-verify"].as<bool>();
  k.token = str(user, "token");
  if (!str(user, "tokenFile").empty()) k.token_file = rel(str(user, "tokenFile"));
  if (!str(user, "client-certificate").empty()) k.client_cert_file = rel(str(user, "client-certificate"));
  if (!str(user, "client-key").empty()) k.client_key_file = rel(str(user, "client-key"));
  if (!str(user, "client-certificate-data").empty())
    k.client_cert_data = base64_decode(str(user, "client-certificate-data"), f + ": client-certificate-data");
  if (!str(user, "client-key-data").empty())
    k.client_key_data = base64_decode(str(user, "client-key-data"), f + ": client-key-data");
  if (user && user["exec"])
    throw KubeConfigError(f + ": user of context \"" + ctx + "\" uses an exec credential plugin, which envsteer "
                          "does not run; use a token or client certificate");
  k.source = f + " (context " + ctx + ")";
  return k;
}

KubeClient::KubeClient(KubeConfig cfg) : cfg_(std::move(cfg)) { curl_global(); }
KubeClient::~KubeClient() = default;

std::string KubeClient::bearer() const {
  if (!cfg_.token_file.empty()) {
    try {
      return trim(read_file(cfg_.token_file));  // rotated tokens are picked up here
    } catch (const std::exception&) {
      return cfg_.token;
    }
  }
  return cfg_.token;
}

void* KubeClient::prepare(const std::string& path_query, void* headers_out) {
  CURL* h = curl_easy_init();
  if (!h) return nullptr;
  std::string url = cfg_.server;
  while (!url.empty() && url.back() == '/') url.pop_back();
  url += path_query;
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "envsteer/" ENVSTEER_VERSION);
  if (!cfg_.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, cfg_.ca_file.c_str());
  if (!cfg_.ca_data.empty()) {
    curl_blob b{const_cast<char*>(cfg_.ca_data.data()), cfg_.ca_data.size(), CURL_BLOB_COPY};
    curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &b);
  }
  if (cfg_.insecure_skip_tls_verify) {
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!cfg_.client_cert_file.empty()) curl_easy_setopt(h, CURLOPT_SSLCERT, cfg_.client_cert_file.c_str());
  if (!cfg_.client_key_file.empty()) curl_easy_setopt(h, CURLOPT_SSLKEY, cfg_.client_key_file.c_str());
  if (!cfg_.client_cert_data.empty()) {
    curl_blob b{const_cast<char*>(cfg_.client_cert_data.data()), cfg_.client_cert_data.size(), CURL_BLOB_COPY};
    curl_easy_setopt(h, CURLOPT_SSLCERT_BLOB, &b);
  }
  if (!cfg_.client_key_data.empty()) {
    curl_blob b{const_cast<char*>(cfg_.client_key_data.data()), cfg_.client_key_data.size(), CURL_BLOB_COPY};
    curl_easy_setopt(h, CURLOPT_SSLKEY_BLOB, &b);
  }
  curl_slist* headers = curl_slist_append(nullptr, "Accept: application/json");
  std::string tok = bearer();
  if (!tok.empty()) headers = curl_slist_append(headers, ("Authorization: Bearer " + tok).c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  *static_cast<curl_slist**>(headers_out) = headers;
  return h;
}

namespace {

size_t collect(char* ptr, size_t size, size_t n, void* ud) {
  static_cast<std::string*>(ud)->append(ptr, size * n);
  return size * n;
}

struct StreamState {
  const std::function<bool(std::string_view)>* on_line;
  const std::atomic<bool>* stop;
  std::string buf;
  std::string body_prefix;  // the start of a non-streaming error body
  bool aborted = false;
};

size_t stream_write(char* ptr, size_t size, size_t n, void* ud) {
  auto* st = static_cast<StreamState*>(ud);
  st->buf.append(ptr, size * n);
  if (st->body_prefix.size() < 4096) st->body_prefix.append(ptr, std::min(size * n, 4096 - st->body_prefix.size()));
  size_t start = 0;
  for (;;) {
    size_t nl = st->buf.find('\n', start);
    if (nl == std::string::npos) break;
    std::string_view line(st->buf.data() + start, nl - start);
    start = nl + 1;
    if (line.empty()) continue;
    if (!(*st->on_line)(line)) {
      st->aborted = true;
      return 0;  // ends the transfer
    }
  }
  st->buf.erase(0, start);
  if (st->buf.size() > (64u << 20)) return 0;  // one event over 64 MiB: give up the stream
  return size * n;
}

int stream_progress(void* ud, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<StreamState*>(ud)->stop->load() ? 1 : 0;
}

}  // namespace

// A prepared request: the handle and its header list, freed together.
struct Easy {
  CURL* h = nullptr;
  curl_slist* headers = nullptr;
  ~Easy() {
    curl_slist_free_all(headers);
    if (h) curl_easy_cleanup(h);
  }
};

namespace {

// One bounded request whose whole answer is collected; body set: a JSON POST.
HttpResponse perform(CURL* h, curl_slist*& headers, const std::string* body, std::chrono::seconds timeout) {
  HttpResponse r;
  if (body) {
    headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
  }
  curl_easy_setopt(h, CURLOPT_TIMEOUT, static_cast<long>(timeout.count()));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &r.body);
  CURLcode rc = curl_easy_perform(h);
  if (rc != CURLE_OK) r.error = curl_easy_strerror(rc);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

}  // namespace

HttpResponse KubeClient::get(const std::string& path_query, std::chrono::seconds timeout) {
  Easy e;
  e.h = static_cast<CURL*>(prepare(path_query, &e.headers));
  if (!e.h) return HttpResponse{0, "", "curl_easy_init failed"};
  return perform(e.h, e.headers, nullptr, timeout);
}

HttpResponse KubeClient::post(const std::string& path, const std::string& json_body, std::chrono::seconds timeout) {
  Easy e;
  e.h = static_cast<CURL*>(prepare(path, &e.headers));
  if (!e.h) return HttpResponse{0, "", "curl_easy_init failed"};
  return perform(e.h, e.headers, &json_body, timeout);
}

HttpResponse KubeClient::stream(const std::string& path_query, const std::function<bool(std::string_view)>& on_line,
                                const std::atomic<bool>& stop, std::chrono::seconds idle) {
  HttpResponse r;
  Easy e;
  CURL* h = e.h = static_cast<CURL*>(prepare(path_query, &e.headers));
  if (!h) return HttpResponse{0, "", "curl_easy_init failed"};
  StreamState st{&on_line, &stop, {}, {}, false};
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, stream_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, stream_progress);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, &st);
  // a stream with no byte for `idle` is dead (bookmarks keep live ones busy)
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(idle.count()));
  CURLcode rc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
  if (rc != CURLE_OK && !st.aborted && !stop.load()) r.error = curl_easy_strerror(rc);
  if (r.status != 200) r.body = st.body_prefix;
  return r;
}

}  // namespace envsteer::sources
