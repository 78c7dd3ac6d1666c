// SPDX-License-Identifier: Apache-2.0
#include "h2route.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <stdexcept>

#include "admin_server.h"
#include "envname.h"
#include "livewalk.h"

namespace envsteer::h2 {

namespace {

bool blank(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view v) {
  while (!v.empty() && blank(v.front())) v.remove_prefix(1);
  while (!v.empty() && blank(v.back())) v.remove_suffix(1);
  return v;
}

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

uint32_t env_id_of(const maps::MapBackend& live, std::string_view name) {
  if (name.empty() || name.size() >= ES_ENV_NAME_MAX) return ES_ENV_NONE;
  es_env_name k = maps::make_env_name(name);
  uint32_t id = 0;
  return live.lookup(maps::MapId::EnvNames, &k, &id) ? id : ES_ENV_NONE;
}

}  // namespace

std::optional<std::string> baggage_member(std::string_view value, std::string_view key) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view member = value.substr(0, comma);
    value = comma == std::string_view::npos ? std::string_view{} : value.substr(comma + 1);
    member = member.substr(0, member.find(';'));  // properties are not the value
    size_t eq = member.find('=');
    if (eq == std::string_view::npos) continue;
    if (trim(member.substr(0, eq)) == key) return std::string(trim(member.substr(eq + 1)));
  }
  return std::nullopt;
}

StreamEnv stream_env(const Headers& h, const RouteConfig& cfg) {
  StreamEnv out;
  bool invalid = false;
  auto offer = [&](std::string_view v, int rank) {
    if (out.from == EnvFrom::Header && out.rank <= rank) return;
    v = trim(v);
    if (!env_valid(v, cfg.splitter)) {
      invalid = true;
      return;
    }
    out.from = EnvFrom::Header;
    out.env = std::string(v);
    out.rank = rank;
  };
  for (const auto& [name, value] : h) {
    if (name.empty() || name[0] == ':') continue;
    for (size_t i = 0; i < cfg.names.size(); i++)
      if (iequal(name, cfg.names[i])) offer(value, i == 0 ? 1 : 2);
    if (!cfg.baggage_key.empty() && iequal(name, "baggage"))
      if (auto v = baggage_member(value, cfg.baggage_key)) offer(*v, 3);
  }
  if (out.from != EnvFrom::Header && invalid) out.from = EnvFrom::Invalid;
  return out;
}

Decision resolve(const maps::MapBackend& live, uint32_t svc_id, const std::string& env, uint32_t start_id,
                 char splitter) {
  Decision d;
  uint32_t zero = 0, skipped = 0;
  es_config cfg{};
  live.lookup(maps::MapId::Config, &zero, &cfg);
  uint32_t start = start_id;
  if (!env.empty()) {
    // unknown names fall back segment by segment (es_request_env_id); a name no
    // level of which is known starts from the default, as an HTTP/1.x request's does
    start = ES_ENV_NONE;
    for (const auto& level : env_chain(env, splitter)) {
      if ((start = env_id_of(live, level)) != ES_ENV_NONE) break;
      skipped++;
    }
    if (start == ES_ENV_NONE) {
      skipped = 0;
      start = cfg.default_env_id;
    }
  }
  if (start == ES_ENV_NONE) start = cfg.default_env_id;
  d.env_req = start;
  es_resolution res{};
  if (!resolve_live(live, svc_id, start, cfg.default_env_id, &res)) return d;
  if (skipped && (res.outcome == ES_OUT_OWN || res.outcome == ES_OUT_FALLBACK)) {
    res.outcome = ES_OUT_FALLBACK;
    res.level += skipped;
  }
  d.env_res = res.env_id;
  d.level = res.level;
  d.outcome = res.outcome;
  d.count = res.count;
  return d;
}

std::string env_name(const maps::MapBackend& live, uint32_t env_id) {
  es_env e{};
  if (env_id == ES_ENV_NONE || !live.lookup(maps::MapId::Envs, &env_id, &e)) return "";
  return std::string(e.name, strnlen(e.name, sizeof(e.name)));
}

// --- h2c Upgrade

namespace {
constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

std::string lower(std::string_view v) {
  std::string s(v);
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// Whether a comma-separated header value lists token (case-insensitively).
bool lists_token(std::string_view v, std::string_view token) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    if (iequal(trim(v.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return false;
}

bool is_tchar(char ch) {
  return std::isalnum(static_cast<unsigned char>(ch)) || std::strchr("!#$%&'*+-.^_`|~", ch) != nullptr;
}
}  // namespace

Opening classify_opening(std::string_view first) {
  size_t n = std::min(first.size(), kPreface.size());
  if (first.substr(0, n) == kPreface.substr(0, n)) return n == kPreface.size() ? Opening::Preface : Opening::Need;
  // an HTTP/1.x request starts with a method token and a space
  for (size_t i = 0; i < first.size(); i++) {
    if (first[i] == ' ') return i > 0 ? Opening::Http1 : Opening::Garbage;
    if (!is_tchar(first[i]) || i >= 32) return Opening::Garbage;
  }
  return Opening::Need;
}

std::optional<std::string> base64url_decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char ch : in) {
    int v;
    if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
    else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
    else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
    else if (ch == '-' || ch == '+') v = 62;
    else if (ch == '_' || ch == '/') v = 63;
    else if (ch == '=') break;
    else return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

Http1Request parse_http1_request(std::string_view bytes) {
  Http1Request r;
  size_t end = bytes.find("\r\n\r\n");
  if (end == std::string_view::npos) return r;
  r.complete = true;
  r.head_len = end + 4;
  std::string_view head = bytes.substr(0, end);
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || sp1 == 0) return r;
  r.method = std::string(line.substr(0, sp1));
  r.path = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
  r.version = std::string(line.substr(sp2 + 1));
  if (r.path.empty() || r.version.rfind("HTTP/1.", 0) != 0) return r;
  for (char ch : r.method)
    if (!is_tchar(ch)) return r;
  std::string_view rest = eol == std::string_view::npos ? std::string_view{} : head.substr(eol + 2);
  bool conn_upgrade = false, conn_settings = false, up_h2c = false, have_settings = false;
  std::string settings_b64;
  while (!rest.empty()) {
    size_t e = rest.find("\r\n");
    std::string_view h = rest.substr(0, e);
    rest = e == std::string_view::npos ? std::string_view{} : rest.substr(e + 2);
    size_t colon = h.find(':');
    if (colon == std::string_view::npos || colon == 0) return r;
    for (size_t i = 0; i < colon; i++)
      if (!is_tchar(h[i])) return r;  // also refuses obsolete line folding
    std::string name = lower(h.substr(0, colon));
    std::string_view value = trim(h.substr(colon + 1));
    if (name == "connection") {
      conn_upgrade |= lists_token(value, "upgrade");
      conn_settings |= lists_token(value, "http2-settings");
    } else if (name == "upgrade") {
      up_h2c |= lists_token(value, "h2c");
    } else if (name == "http2-settings") {
      if (have_settings) return r;  // exactly one (RFC 7540 3.2.1)
      have_settings = true;
      settings_b64 = std::string(value);
    } else if (name == "content-length") {
      if (value != "0") r.has_body = true;
      int64_t n = 0;
      bool ok = !value.empty() && value.size() <= 15;
      for (char ch : value) {
        if (ch < '0' || ch > '9') ok = false;
        n = n * 10 + (ch - '0');
      }
      if (!ok || (r.content_length >= 0 && r.content_length != n)) r.content_length = -2;
      else if (r.content_length != -2) r.content_length = n;
    } else if (name == "transfer-encoding") {
      r.has_body = true;
      r.chunked = true;
    }
    r.headers.emplace_back(std::move(name), std::string(value));
  }
  r.valid = true;
  if (conn_upgrade && conn_settings && up_h2c && have_settings) {
    if (auto s = base64url_decode(settings_b64); s && s->size() % 6 == 0) {
      r.upgrade_h2c = true;
      r.settings = std::move(*s);
    }
  }
  return r;
}

Headers upgrade_stream_headers(const Http1Request& r) {
  Headers h{{":method", r.method}, {":scheme", "http"}};
  for (const auto& [k, v] : r.headers)
    if (k == "host") h.emplace_back(":authority", v);
  h.emplace_back(":path", r.path);
  for (const auto& [k, v] : r.headers) {
    if (k == "connection" || k == "upgrade" || k == "http2-settings" || k == "keep-alive" ||
        k == "proxy-connection" || k == "transfer-encoding" || k == "host")
      continue;
    if (k == "te" && !iequal(v, "trailers")) continue;
    h.emplace_back(k, v);
  }
  return h;
}

ListenAddr parse_listen(const std::string& s) {
  std::string where = s;
  if (where.find('[') == std::string::npos && std::count(where.begin(), where.end(), ':') > 1) {
    size_t colon = where.rfind(':');
    where = "[" + where.substr(0, colon) + "]" + where.substr(colon);
  }
  auto [host, port] = admin::parse_host_port(where, "--h2-listen");
  ListenAddr out;
  out.host = host;
  out.port = port;
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1)
    out.family = AF_INET;
  else if (inet_pton(AF_INET6, host.c_str(), &a6) == 1)
    out.family = AF_INET6;
  else
    throw std::invalid_argument("--h2-listen: \"" + s + "\": \"" + host +
                                "\" is no IP address (the programs divert connections to an address)");
  return out;
}

}  // namespace envsteer::h2
