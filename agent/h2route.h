// SPDX-License-Identifier: Apache-2.0
// HTTP/2 per stream, the routing part: a stream's environment from its own
// headers (the same names, aliases and W3C baggage member as the kernel's
// HTTP/1.x parser, bpf/lib/http.h), and the kernel's walk (bpf/lib/resolve.h)
// over the live maps. Pure functions over a map backend: unit tested.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "maps/abi.h"
#include "maps/maps.h"

namespace envsteer::h2 {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct RouteConfig {
  std::vector<std::string> names;  // env header [0] and its aliases, lower case
  std::string baggage_key;         // W3C baggage member; "" = not looked at
  char splitter = '.';
  bool auto_inject = true;         // labelled callers' streams without a header get theirs
};

enum class EnvFrom { Header, Absent, Invalid };

struct StreamEnv {
  EnvFrom from = EnvFrom::Absent;
  std::string env;  // the valid value (Header only)
  int rank = 0;     // 1 the env header, 2 an alias, 3 baggage
};

// The environment a stream carries. Header names are matched case-insensitively
// (HTTP/2 sends them in lower case); values are trimmed of blanks and validated;
// the best rank wins (the env header over an alias over baggage), the first one
// of a rank. A value that is present but not a valid name counts as absent
// (EnvFrom::Invalid, so that it is counted).
StreamEnv stream_env(const Headers& h, const RouteConfig& cfg);

// The W3C baggage member `key` of one baggage header value, trimmed; nullopt
// when absent.
std::optional<std::string> baggage_member(std::string_view value, std::string_view key);

// What the walk decided for one stream.
struct Decision {
  uint32_t env_req = ES_ENV_NONE;  // environment the walk started from
  uint32_t env_res = ES_ENV_NONE;  // the backend set used (ES_ENV_NONE: no ready pod)
  uint32_t level = 0;              // levels walked up (unknown names count by segment)
  uint32_t outcome = 0;            // ES_OUT_* (bpf/lib/resolve.h)
  uint32_t count = 0;              // pods in the set
};

// The kernel's walk for svc_id from a named environment ("" = start from
// start_id, e.g. the caller's own environment id). Unknown names are walked
// segment by segment, as es_request_env_id() does.
Decision resolve(const maps::MapBackend& live, uint32_t svc_id, const std::string& env, uint32_t start_id,
                 char splitter);

// The environment's name as the kernel knows it ("" when unknown).
std::string env_name(const maps::MapBackend& live, uint32_t env_id);

// --h2-listen: an IP address (IPv6 with or without brackets: the last colon is
// the port's, so `$(POD_IP):PORT` serves either family) and a port. Throws
// std::invalid_argument with what is wrong.
struct ListenAddr {
  int family = 0;  // AF_INET or AF_INET6
  std::string host;
  uint16_t port = 0;
};
ListenAddr parse_listen(const std::string& s);

// --- h2c Upgrade (RFC 7540 3.2): the first bytes of a diverted connection.

// What the first bytes are: the HTTP/2 preface, an HTTP/1.x request head, or
// not known yet (a prefix of either; Need).
enum class Opening { Need, Preface, Http1, Garbage };
Opening classify_opening(std::string_view first);

struct Http1Request {
  bool complete = false;  // the head ended (\r\n\r\n) within the bytes given
  bool valid = false;     // a request line and headers that parse
  size_t head_len = 0;    // bytes of the head, the blank line included
  std::string method, path, version;
  Headers headers;        // names in lower case, values trimmed, in order
  bool upgrade_h2c = false;        // Upgrade lists h2c, Connection lists Upgrade and HTTP2-Settings
  std::string settings;            // HTTP2-Settings, base64url-decoded (upgrade_h2c only)
  bool has_body = false;           // Content-Length > 0 or Transfer-Encoding
  bool chunked = false;            // Transfer-Encoding present (no length known before the body)
  // Content-Length: -1 none, -2 not a number or two different values
  int64_t content_length = -1;
};

// Parses an HTTP/1.x request head from the first bytes of a connection.
Http1Request parse_http1_request(std::string_view bytes);

// The stream-1 request of an upgrade as HTTP/2 headers: pseudo-headers from
// the request line and Host, the other headers in lower case without the
// connection-specific ones (Connection, Upgrade, HTTP2-Settings, Keep-Alive,
// Proxy-Connection, Transfer-Encoding, Host, TE other than "trailers").
Headers upgrade_stream_headers(const Http1Request& r);

// base64url (and plain base64), padding optional; nullopt on a bad character.
std::optional<std::string> base64url_decode(std::string_view in);

}  // namespace envsteer::h2
