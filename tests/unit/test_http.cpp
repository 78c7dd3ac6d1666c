// SPDX-License-Identifier: Apache-2.0
// The streaming HTTP/1.x request parser (bpf/lib/http.h): env header matching, aliases,
// baggage, the parse window, body framing of keep-alive and pipelined requests, input split at
// every byte boundary, and non-HTTP input.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

extern "C" {
#include "bpf/lib/http.h"
}

namespace {

static_assert(sizeof(struct es_http_state) <= 200, "parser state lives in socket storage");
// es_http_lit_load (BPF) loads a configured name as four aligned words
static_assert(ES_HTTP_NAME_MAX == 4 * sizeof(__u64) && offsetof(struct es_http_cfg, names) == 0,
              "a name is four words at the start of the map value");

// What a finished header section said.
struct Head {
  std::string env;
  int outcome = 0;
  uint32_t line_len = 0;
  uint16_t flags = 0;
  size_t at = 0;  // stream offset just after the byte that ended the head

  bool operator==(const Head&) const = default;
};

// Events of one stream, up to and including the first NOT_HTTP.
struct Trace {
  std::vector<std::pair<size_t, int>> events;
  std::vector<Head> heads;
  bool not_http = false;
  int err = 0;
  int all = 0;  // OR of all events

  bool operator==(const Trace&) const = default;
  int count(int ev) const {
    int n = 0;
    for (const auto& e : events) n += (e.second & ev) != 0;
    return n;
  }
};

struct es_http_cfg Cfg(const std::vector<std::string>& names = {"X-Virtual-Env"},
                       const std::string& baggage = "virtual-env", char splitter = '.',
                       uint16_t window = ES_HTTP_WINDOW_DEFAULT) {
  struct es_http_cfg cfg;
  es_http_cfg_init(&cfg, splitter, window);
  for (const auto& n : names) EXPECT_EQ(es_http_cfg_add_name(&cfg, n.data(), n.size()), 0) << n;
  EXPECT_EQ(es_http_cfg_set_baggage_key(&cfg, baggage.data(), baggage.size()), 0);
  return cfg;
}

void Record(Trace& t, const struct es_http_state& st, int ev, size_t at) {
  if (!ev || t.not_http) return;
  t.events.emplace_back(at, ev);
  t.all |= ev;
  if (ev & ES_HTTP_EV_HEADERS) {
    Head h;
    h.env.assign(es_http_env(&st), es_http_env_len(&st));
    h.outcome = es_http_env_outcome(&st);
    h.line_len = st.line_len;
    h.flags = st.flags;
    h.at = at;
    t.heads.push_back(h);
  }
  if (ev & ES_HTTP_EV_NOT_HTTP) {
    t.not_http = true;
    t.err = st.err;
  }
}

// One byte at a time through es_http_feed.
Trace FeedBytes(const struct es_http_cfg& cfg, const std::string& data) {
  struct es_http_state st = {};
  Trace t;
  for (size_t i = 0; i < data.size(); i++)
    Record(t, st, es_http_feed(&st, &cfg, static_cast<__u8>(data[i])), i + 1);
  return t;
}

// In pieces ending at the given offsets, through es_http_feed_buf (bodies taken in bulk).
Trace FeedPieces(const struct es_http_cfg& cfg, const std::string& data, std::vector<size_t> cuts) {
  struct es_http_state st = {};
  Trace t;
  size_t start = 0;
  cuts.push_back(data.size());
  for (size_t end : cuts) {
    size_t off = start;
    while (off < end) {
      __u32 used = 0;
      int ev = es_http_feed_buf(&st, &cfg, data.data() + off, end - off, 0xff, &used);
      EXPECT_GT(used, 0u);
      off += used;
      Record(t, st, ev, off);
      if (ev & ES_HTTP_EV_NOT_HTTP) break;
    }
    start = end;
  }
  return t;
}

Trace Parse(const std::string& data, const struct es_http_cfg& cfg = Cfg()) {
  Trace t = FeedBytes(cfg, data);
  EXPECT_EQ(FeedPieces(cfg, data, {}), t) << "one-shot feeding differs for: " << data;
  return t;
}

// The single head of a one-request stream.
Head One(const std::string& data, const struct es_http_cfg& cfg = Cfg()) {
  Trace t = Parse(data, cfg);
  EXPECT_FALSE(t.not_http) << data;
  EXPECT_EQ(t.heads.size(), 1u) << data;
  return t.heads.empty() ? Head{} : t.heads[0];
}

std::string Get(const std::string& headers, const std::string& target = "/") {
  return "GET " + target + " HTTP/1.1\r\nHost: svc\r\n" + headers + "\r\n";
}

std::string Env(const std::string& value) { return Get("X-Virtual-Env: " + value + "\r\n"); }

// ---- basics ----

TEST(HttpParse, SimpleGetWithEnv) {
  std::string req = "GET /api/v1 HTTP/1.1\r\nHost: a\r\nX-Virtual-Env: dev.proj1\r\n\r\n";
  Trace t = Parse(req);
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].env, "dev.proj1");
  EXPECT_EQ(t.heads[0].outcome, ES_HTTP_ENV_FOUND);
  EXPECT_EQ(t.heads[0].line_len, std::string("GET /api/v1 HTTP/1.1\r\n").size());
  EXPECT_TRUE(t.heads[0].flags & ES_HTTP_F_ENV_SEEN);
  ASSERT_EQ(t.events.size(), 2u);
  EXPECT_EQ(t.events[0], std::make_pair(size_t{22}, ES_HTTP_EV_REQLINE));
  EXPECT_EQ(t.events[1], std::make_pair(req.size(), ES_HTTP_EV_HEADERS | ES_HTTP_EV_DONE));
}

TEST(HttpParse, AbsentHeader) {
  Head h = One(Get("Accept: */*\r\n"));
  EXPECT_EQ(h.outcome, ES_HTTP_ENV_ABSENT);
  EXPECT_EQ(h.env, "");
  EXPECT_FALSE(h.flags & ES_HTTP_F_ENV_SEEN);
}

TEST(HttpParse, InsertOffsetIsRequestLineLength) {
  for (std::string line : {"GET / HTTP/1.1\r\n", "POST /a/b?c=d&e=%20 HTTP/1.0\r\n",
                           "OPTIONS * HTTP/1.1\r\n", "GET http://svc:8080/x HTTP/1.1\r\n",
                           "M-SEARCH * HTTP/1.1\n", "PROPFIND /dav HTTP/1.1\r\n"}) {
    std::string req = line + "Host: x\r\nContent-Length: 0\r\n\r\n";
    Trace t = Parse(req);
    ASSERT_EQ(t.heads.size(), 1u) << line;
    EXPECT_EQ(t.heads[0].line_len, line.size()) << line;
    ASSERT_FALSE(t.events.empty());
    EXPECT_EQ(t.events[0], std::make_pair(line.size(), ES_HTTP_EV_REQLINE)) << line;
    // what the kernel does with it: the result parses as a request with the header
    std::string injected = req.substr(0, line.size()) + "x-virtual-env: dev.a\r\n" +
                           req.substr(line.size());
    EXPECT_EQ(One(injected).env, "dev.a") << injected;
  }
}

TEST(HttpParse, HeaderNameInAnyCase) {
  for (std::string name : {"X-Virtual-Env", "x-virtual-env", "X-VIRTUAL-ENV", "x-ViRtUaL-eNv"})
    EXPECT_EQ(One(Get(name + ": dev.proj1\r\n")).env, "dev.proj1") << name;
  // configured in any case, too
  EXPECT_EQ(One(Get("x-env: dev\r\n"), Cfg({"X-ENV"})).env, "dev");
}

TEST(HttpParse, SimilarNamesDoNotMatch) {
  for (std::string name : {"X-Virtual-Envx", "X-Virtual-En", "X-Virtual-Env2", "XX-Virtual-Env",
                           "Virtual-Env", "X-Virtual_Env"}) {
    Head h = One(Get(name + ": dev\r\n"));
    EXPECT_EQ(h.outcome, ES_HTTP_ENV_ABSENT) << name;
    EXPECT_FALSE(h.flags & ES_HTTP_F_ENV_SEEN) << name;
  }
}

TEST(HttpParse, ValueTrimmed) {
  for (std::string v : {"dev.proj1", " dev.proj1", "dev.proj1 ", "  \t dev.proj1\t  ", "\tdev.proj1"})
    EXPECT_EQ(One(Env(v)).env, "dev.proj1") << "[" << v << "]";
  // no blank after the colon at all
  EXPECT_EQ(One(Get("X-Virtual-Env:dev\r\n")).env, "dev");
}

TEST(HttpParse, InvalidValuesCountAsAbsent) {
  std::vector<std::string> bad = {
      "",         " ",          "dev proj",  "dev/proj", "dev..proj", ".dev",      "dev.",
      "-dev",     "dev-",       "dev_",      "dev%2Eproj", "dev,proj", "dév",      "dev;x",
      "\"dev\"",  std::string(64, 'a'), std::string(63, 'a') + " b", std::string(200, 'x'),
      "dev.proj1\x01"};
  for (const auto& v : bad) {
    Head h = One(Env(v));
    EXPECT_EQ(h.outcome, ES_HTTP_ENV_INVALID) << "[" << v << "]";
    EXPECT_EQ(h.env, "") << "[" << v << "]";
    EXPECT_TRUE(h.flags & ES_HTTP_F_ENV_INVALID);
    EXPECT_TRUE(h.flags & ES_HTTP_F_ENV_SEEN);
  }
  std::vector<std::string> good = {"a", "dev", "dev.proj1", "dev.proj-abc.alice", "A_b-C.9",
                                   std::string(63, 'a'), std::string(63, 'a') + "   ",
                                   "0.1.2.3", "dev-.x"};
  for (const auto& v : good) EXPECT_EQ(One(Env(v)).outcome, ES_HTTP_ENV_FOUND) << "[" << v << "]";
}

TEST(HttpParse, SplitterFromConfig) {
  auto cfg = Cfg({"x-virtual-env"}, "virtual-env", '-');
  EXPECT_EQ(One(Env("dev-proj1"), cfg).env, "dev-proj1");
  EXPECT_EQ(One(Env("dev--proj1"), cfg).outcome, ES_HTTP_ENV_INVALID);
  EXPECT_EQ(One(Env("dev..proj1"), cfg).outcome, ES_HTTP_ENV_FOUND);  // '.' is a plain char then
}

// The byte-by-byte checks must say exactly what es_env_valid() says.
TEST(HttpParse, ValidationAgreesWithEnvValid) {
  std::mt19937 rng(42);
  const std::string alphabet = "ab9Z.-_ \t%/";
  for (int n = 0; n < 20000; n++) {
    std::string v;
    size_t len = rng() % 70;
    for (size_t i = 0; i < len; i++) v += alphabet[rng() % alphabet.size()];
    size_t b = v.find_first_not_of(" \t"), e = v.find_last_not_of(" \t");
    std::string trimmed = b == std::string::npos ? "" : v.substr(b, e - b + 1);
    char splitter = n % 2 ? '.' : '_';
    bool valid = es_env_valid(trimmed.data(), static_cast<int>(trimmed.size()), splitter);
    Head h = One(Env(v), Cfg({"x-virtual-env"}, "virtual-env", splitter));
    ASSERT_EQ(h.outcome, valid ? ES_HTTP_ENV_FOUND : ES_HTTP_ENV_INVALID) << "[" << v << "]";
    if (valid) {
      ASSERT_EQ(h.env, trimmed);
    }
  }
}

TEST(HttpParse, FirstValidOccurrenceWins) {
  EXPECT_EQ(One(Get("X-Virtual-Env: dev.a\r\nX-Virtual-Env: dev.b\r\n")).env, "dev.a");
  Head h = One(Get("X-Virtual-Env: bad/one\r\nX-Virtual-Env: dev.b\r\n"));
  EXPECT_EQ(h.env, "dev.b");
  EXPECT_EQ(h.outcome, ES_HTTP_ENV_FOUND);
  EXPECT_TRUE(h.flags & ES_HTTP_F_ENV_INVALID);  // still counted
}

// ---- aliases and baggage ----

TEST(HttpAlias, AliasesAndPriority) {
  auto cfg = Cfg({"x-virtual-env", "x-env", "x-tenant-env"});
  EXPECT_EQ(One(Get("X-Env: dev.alias\r\n"), cfg).env, "dev.alias");
  EXPECT_EQ(One(Get("X-Tenant-Env: dev.t\r\n"), cfg).env, "dev.t");
  // the primary wins over aliases wherever it stands
  EXPECT_EQ(One(Get("X-Env: dev.alias\r\nX-Virtual-Env: dev.primary\r\n"), cfg).env, "dev.primary");
  EXPECT_EQ(One(Get("X-Virtual-Env: dev.primary\r\nX-Env: dev.alias\r\n"), cfg).env, "dev.primary");
  // among aliases the first valid one
  EXPECT_EQ(One(Get("X-Tenant-Env: dev.t\r\nX-Env: dev.e\r\n"), cfg).env, "dev.t");
  // an invalid primary falls back to a valid alias
  Head h = One(Get("X-Virtual-Env: no way\r\nX-Env: dev.alias\r\n"), cfg);
  EXPECT_EQ(h.env, "dev.alias");
  EXPECT_TRUE(h.flags & ES_HTTP_F_ENV_INVALID);
  // aliases over baggage
  EXPECT_EQ(One(Get("baggage: virtual-env=dev.bag\r\nX-Env: dev.alias\r\n"), cfg).env, "dev.alias");
  EXPECT_EQ(One(Get("baggage: virtual-env=dev.bag\r\nX-Virtual-Env: dev.p\r\n"), cfg).env, "dev.p");
  EXPECT_EQ(One(Get("X-Virtual-Env: dev.p\r\nbaggage: virtual-env=dev.bag\r\n"), cfg).env, "dev.p");
}

TEST(HttpAlias, ConfigRejectsBadNames) {
  struct es_http_cfg cfg;
  es_http_cfg_init(&cfg, '.', 4096);
  EXPECT_EQ(es_http_cfg_add_name(&cfg, "bad name", 8), -1);
  EXPECT_EQ(es_http_cfg_add_name(&cfg, "bad:", 4), -1);
  EXPECT_EQ(es_http_cfg_add_name(&cfg, "", 0), -1);
  std::string longname(ES_HTTP_NAME_MAX + 1, 'x');
  EXPECT_EQ(es_http_cfg_add_name(&cfg, longname.data(), longname.size()), -1);
  std::string maxname(ES_HTTP_NAME_MAX, 'x');
  EXPECT_EQ(es_http_cfg_add_name(&cfg, maxname.data(), maxname.size()), 0);
  for (int i = 1; i < ES_HTTP_MAX_NAMES; i++) EXPECT_EQ(es_http_cfg_add_name(&cfg, "a", 1), 0);
  EXPECT_EQ(es_http_cfg_add_name(&cfg, "b", 1), -1);
  EXPECT_EQ(es_http_cfg_set_baggage_key(&cfg, "a b", 3), -1);
  EXPECT_EQ(es_http_cfg_set_baggage_key(&cfg, longname.data(), longname.size()), -1);
  // a 32-byte name matches
  auto cfg2 = Cfg({maxname});
  EXPECT_EQ(One(Get(maxname + ": dev\r\n"), cfg2).env, "dev");
  EXPECT_EQ(One(Get(maxname + "x: dev\r\n"), cfg2).outcome, ES_HTTP_ENV_ABSENT);
}

TEST(HttpBaggage, MemberAmongOthers) {
  EXPECT_EQ(One(Get("baggage: k1=v1,virtual-env=dev.proj1;prop=x, k3=v3\r\n")).env, "dev.proj1");
  EXPECT_EQ(One(Get("baggage: virtual-env=dev.proj1\r\n")).env, "dev.proj1");
  EXPECT_EQ(One(Get("Baggage: k1=v1 , virtual-env = dev.proj1 ; p1 ; p2=x , k3=v3\r\n")).env,
            "dev.proj1");
  EXPECT_EQ(One(Get("BAGGAGE:\tk1=v1,\tvirtual-env\t=\tdev\t,k=v\r\n")).env, "dev");
  EXPECT_EQ(One(Get("baggage: k1=v1,,, virtual-env=dev.x,\r\n")).env, "dev.x");
  // in a second baggage header
  EXPECT_EQ(One(Get("baggage: k1=v1\r\nbaggage: virtual-env=dev.two\r\n")).env, "dev.two");
  // properties of another member may contain the key
  EXPECT_EQ(One(Get("baggage: a=b;virtual-env=dev.no, virtual-env=dev.yes\r\n")).env, "dev.yes");
  // first valid member wins
  EXPECT_EQ(One(Get("baggage: virtual-env=dev.a,virtual-env=dev.b\r\n")).env, "dev.a");
  EXPECT_EQ(One(Get("baggage: virtual-env=bad%20,virtual-env=dev.b\r\n")).env, "dev.b");
}

TEST(HttpBaggage, KeyMustMatchExactly) {
  for (std::string b : {"Virtual-Env=dev", "virtual-env2=dev", "xvirtual-env=dev", "virtual-en=dev",
                        "virtual-env", "=dev", "k=virtual-env=dev", "virtual env=dev"}) {
    Head h = One(Get("baggage: " + b + "\r\n"));
    EXPECT_EQ(h.outcome, ES_HTTP_ENV_ABSENT) << b;
  }
}

TEST(HttpBaggage, PercentEncodedOrBadValueIsInvalid) {
  for (std::string b : {"virtual-env=dev%2Eproj1", "virtual-env=", "virtual-env= ;p",
                        "virtual-env=dev proj"}) {
    Head h = One(Get("baggage: " + b + "\r\n"));
    EXPECT_EQ(h.outcome, ES_HTTP_ENV_INVALID) << b;
  }
}

TEST(HttpBaggage, OffWhenNoKey) {
  auto cfg = Cfg({"x-virtual-env"}, "");
  EXPECT_EQ(One(Get("baggage: virtual-env=dev\r\n"), cfg).outcome, ES_HTTP_ENV_ABSENT);
  auto other = Cfg({"x-virtual-env"}, "env");
  EXPECT_EQ(One(Get("baggage: virtual-env=dev, env=dev.other\r\n"), other).env, "dev.other");
}

// ---- split input ----

const std::string kStream =
    "POST /upload HTTP/1.1\r\nHost: svc\r\nx-virtual-env: dev.proj1\r\nContent-Length: 11\r\n\r\n"
    "hello world"
    "GET /b HTTP/1.1\r\nbaggage: a=b, virtual-env = dev.proj2 ;p\r\n\r\n"
    "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-VIRTUAL-ENV: dev\r\n\r\n"
    "5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    "GET /d HTTP/1.0\nX-Virtual-Env:dev.proj1.alice\n\n";

TEST(HttpSplit, EverySplitPointGivesTheSameResult) {
  auto cfg = Cfg();
  Trace whole = FeedBytes(cfg, kStream);
  ASSERT_FALSE(whole.not_http);
  ASSERT_EQ(whole.heads.size(), 4u);
  EXPECT_EQ(whole.heads[0].env, "dev.proj1");
  EXPECT_EQ(whole.heads[1].env, "dev.proj2");
  EXPECT_EQ(whole.heads[2].env, "dev");
  EXPECT_EQ(whole.heads[3].env, "dev.proj1.alice");
  EXPECT_EQ(whole.count(ES_HTTP_EV_DONE), 4);
  for (size_t cut = 0; cut <= kStream.size(); cut++)
    ASSERT_EQ(FeedPieces(cfg, kStream, {cut}), whole) << "split at " << cut;
  for (size_t a = 0; a < kStream.size(); a += 7)
    for (size_t b = a; b <= kStream.size(); b += 5)
      ASSERT_EQ(FeedPieces(cfg, kStream, {a, b}), whole) << "split at " << a << "," << b;
}

TEST(HttpSplit, OneBytePieces) {
  auto cfg = Cfg();
  std::vector<size_t> cuts;
  for (size_t i = 1; i < kStream.size(); i++) cuts.push_back(i);
  EXPECT_EQ(FeedPieces(cfg, kStream, cuts), FeedBytes(cfg, kStream));
}

TEST(HttpSplit, HeaderInSecondSegment) {
  std::string seg1 = "GET / HTTP/1.1\r\nHost: svc\r\nUser-Agent: x\r\n";
  std::string seg2 = "X-Virtual-Env: dev.proj1\r\n\r\n";
  auto cfg = Cfg();
  struct es_http_state st = {};
  EXPECT_EQ(es_http_parse_buf(&st, &cfg, seg1.data(), seg1.size()), ES_HTTP_EV_REQLINE);
  EXPECT_EQ(es_http_pos(&st), seg1.size());
  EXPECT_EQ(es_http_parse_buf(&st, &cfg, seg2.data(), seg2.size()),
            ES_HTTP_EV_HEADERS | ES_HTTP_EV_DONE);
  EXPECT_EQ(std::string(es_http_env(&st), es_http_env_len(&st)), "dev.proj1");
}

// ---- the window ----

std::string Pad(size_t bytes) {  // header lines of exactly `bytes` bytes
  std::string out;
  int n = 0;
  while (bytes - out.size() > 0) {
    size_t left = bytes - out.size();
    std::string name = "X-Pad-" + std::to_string(n++) + ": ";
    size_t v = (left > 220 ? 200 : left) - name.size() - 2;
    out += name + std::string(v, 'p') + "\r\n";
  }
  return out;
}

TEST(HttpWindow, HeaderAfterFourKiBIsBeyond) {
  std::string req = Get(Pad(4200) + "X-Virtual-Env: dev.proj1\r\n");
  Trace t = Parse(req);
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].outcome, ES_HTTP_ENV_BEYOND);
  EXPECT_EQ(t.heads[0].env, "");
  EXPECT_TRUE(t.heads[0].flags & ES_HTTP_F_WINDOW);
  EXPECT_TRUE(t.heads[0].flags & ES_HTTP_F_ENV_BEYOND);
  EXPECT_EQ(t.count(ES_HTTP_EV_WINDOW), 1);
  // the window event comes at the first byte past the window
  for (const auto& e : t.events) {
    if (e.second & ES_HTTP_EV_WINDOW) {
      EXPECT_EQ(e.first, 4097u);
    }
  }
}

TEST(HttpWindow, LongHeadWithEnvInsideIsFound) {
  Trace t = Parse(Get("X-Virtual-Env: dev.proj1\r\n" + Pad(6000)));
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].outcome, ES_HTTP_ENV_FOUND);
  EXPECT_TRUE(t.heads[0].flags & ES_HTTP_F_WINDOW);  // still reported, to be counted
}

TEST(HttpWindow, BoundaryIsTheLineEnd) {
  const std::string start = "GET / HTTP/1.1\r\nHost: svc\r\n";
  const std::string env = "X-Virtual-Env: dev.proj1\r\n";
  for (int window : {256, 1024, 4096}) {
    auto cfg = Cfg({"x-virtual-env"}, "virtual-env", '.', window);
    // the env line's LF is the window-th byte: inside
    std::string in = start + Pad(window - start.size() - env.size()) + env;
    ASSERT_EQ(in.size(), static_cast<size_t>(window));
    EXPECT_EQ(One(in + "\r\n", cfg).outcome, ES_HTTP_ENV_FOUND) << window;
    // one byte later: beyond
    std::string out = start + Pad(window - start.size() - env.size() + 1) + env;
    Head h = One(out + "\r\n", cfg);
    EXPECT_EQ(h.outcome, ES_HTTP_ENV_BEYOND) << window;
  }
}

TEST(HttpWindow, BeyondBaggageAndAliasToo) {
  auto cfg = Cfg({"x-virtual-env", "x-env"});
  EXPECT_EQ(One(Get(Pad(5000) + "X-Env: dev\r\n"), cfg).outcome, ES_HTTP_ENV_BEYOND);
  EXPECT_EQ(One(Get(Pad(5000) + "baggage: virtual-env=dev\r\n"), cfg).outcome, ES_HTTP_ENV_BEYOND);
  // a primary beyond the window does not beat an alias inside it
  EXPECT_EQ(One(Get("X-Env: dev.a\r\n" + Pad(5000) + "X-Virtual-Env: dev.p\r\n"), cfg).env, "dev.a");
}

TEST(HttpWindow, ZeroMeansNoLimit) {
  auto cfg = Cfg({"x-virtual-env"}, "virtual-env", '.', 0);
  Trace t = Parse(Get(Pad(70000) + "X-Virtual-Env: dev\r\n"), cfg);
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].env, "dev");
  EXPECT_EQ(t.count(ES_HTTP_EV_WINDOW), 0);
}

// ---- keep-alive and pipelining ----

TEST(HttpPipeline, AlternatingEnvsWithContentLength) {
  std::string s;
  std::vector<std::string> envs;
  for (int i = 0; i < 10; i++) {
    std::string env = i % 2 ? "dev.proj1" : "dev.proj2";
    std::string body(static_cast<size_t>(i * 37), 'b');
    s += "POST /x HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nX-Virtual-Env: " + env + "\r\n\r\n" + body;
    envs.push_back(env);
  }
  Trace t = Parse(s);
  ASSERT_FALSE(t.not_http);
  ASSERT_EQ(t.heads.size(), envs.size());
  for (size_t i = 0; i < envs.size(); i++) EXPECT_EQ(t.heads[i].env, envs[i]) << i;
  EXPECT_EQ(t.count(ES_HTTP_EV_DONE), 10);
  EXPECT_EQ(t.events.back().first, s.size());
}

TEST(HttpPipeline, BodyThatLooksLikeARequestIsBody) {
  std::string body = "GET / HTTP/1.1\r\nX-Virtual-Env: dev.evil\r\n\r\n";
  std::string s = "POST / HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) +
                  "\r\nX-Virtual-Env: dev.good\r\n\r\n" + body + Get("");
  Trace t = Parse(s);
  ASSERT_EQ(t.heads.size(), 2u);
  EXPECT_EQ(t.heads[0].env, "dev.good");
  EXPECT_EQ(t.heads[1].outcome, ES_HTTP_ENV_ABSENT);
}

TEST(HttpPipeline, ChunkedBodies) {
  std::string s =
      "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Virtual-Env: dev.one\r\n\r\n"
      "4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n"
      "POST /b HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\nX-Virtual-Env: dev.two\r\n\r\n"
      "1a; name=\"q;x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0 ; last\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n"
      "POST /c HTTP/1.1\r\ntransfer-encoding: CHUNKED\r\n\r\n"
      "000010\nGET / HTTP/1.1\r\n\n0\n\n"
      "GET /d HTTP/1.1\r\nX-Virtual-Env: dev.three\r\n\r\n";
  Trace t = Parse(s);
  ASSERT_FALSE(t.not_http) << t.err;
  ASSERT_EQ(t.heads.size(), 4u);
  EXPECT_EQ(t.heads[0].env, "dev.one");
  EXPECT_EQ(t.heads[1].env, "dev.two");
  EXPECT_EQ(t.heads[2].outcome, ES_HTTP_ENV_ABSENT);
  EXPECT_EQ(t.heads[3].env, "dev.three");
  EXPECT_EQ(t.count(ES_HTTP_EV_DONE), 4);
  EXPECT_TRUE(t.heads[1].flags & ES_HTTP_F_CHUNKED);
}

TEST(HttpPipeline, NoStaleEnv) {
  std::string s = Env("dev.proj1") + Get("") + Env("dev.proj2") + Get("Content-Length: 0\r\n");
  Trace t = Parse(s);
  ASSERT_EQ(t.heads.size(), 4u);
  EXPECT_EQ(t.heads[0].env, "dev.proj1");
  EXPECT_EQ(t.heads[1].outcome, ES_HTTP_ENV_ABSENT);
  EXPECT_EQ(t.heads[1].env, "");
  EXPECT_FALSE(t.heads[1].flags & ES_HTTP_F_ENV_SEEN);
  EXPECT_EQ(t.heads[2].env, "dev.proj2");
  EXPECT_EQ(t.heads[3].outcome, ES_HTTP_ENV_ABSENT);
  // window and invalid flags do not leak either
  Trace u = Parse(Get(Pad(5000)) + Env("bad value") + Env("dev"));
  ASSERT_EQ(u.heads.size(), 3u);
  EXPECT_TRUE(u.heads[0].flags & ES_HTTP_F_WINDOW);
  EXPECT_FALSE(u.heads[1].flags & ES_HTTP_F_WINDOW);
  EXPECT_EQ(u.heads[1].outcome, ES_HTTP_ENV_INVALID);
  EXPECT_EQ(u.heads[2].flags & (ES_HTTP_F_WINDOW | ES_HTTP_F_ENV_INVALID), 0);
}

TEST(HttpPipeline, ResultStaysUntilTheNextRequestStarts) {
  auto cfg = Cfg();
  struct es_http_state st = {};
  std::string r = Env("dev.proj1");
  EXPECT_EQ(es_http_parse_buf(&st, &cfg, r.data(), r.size()), ES_HTTP_EV_REQLINE |
                                                                 ES_HTTP_EV_HEADERS | ES_HTTP_EV_DONE);
  EXPECT_EQ(std::string(es_http_env(&st), es_http_env_len(&st)), "dev.proj1");
  EXPECT_EQ(es_http_feed(&st, &cfg, '\r'), 0);  // an empty line between requests is ignored
  EXPECT_EQ(es_http_feed(&st, &cfg, '\n'), 0);
  EXPECT_EQ(es_http_env_len(&st), 9);
  EXPECT_EQ(es_http_feed(&st, &cfg, 'G'), 0);
  EXPECT_EQ(es_http_env_len(&st), 0);
  EXPECT_EQ(es_http_pos(&st), 1u);
}

TEST(HttpPipeline, ExpectContinueIsJustAHeader) {
  std::string s = "PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
                  "X-Virtual-Env: dev.a\r\n\r\n";
  auto cfg = Cfg();
  struct es_http_state st = {};
  // the client waits for "100 Continue" between head and body
  EXPECT_EQ(es_http_parse_buf(&st, &cfg, s.data(), s.size()),
            ES_HTTP_EV_REQLINE | ES_HTTP_EV_HEADERS);
  EXPECT_EQ(es_http_skippable(&st), 5u);
  EXPECT_EQ(es_http_parse_buf(&st, &cfg, "hello", 5), ES_HTTP_EV_DONE);
  std::string next = Env("dev.b");
  es_http_parse_buf(&st, &cfg, next.data(), next.size());
  EXPECT_EQ(std::string(es_http_env(&st), es_http_env_len(&st)), "dev.b");
}

TEST(HttpPipeline, BulkSkipAndStop) {
  auto cfg = Cfg();
  struct es_http_state st = {};
  std::string s = "POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n";
  EXPECT_EQ(es_http_parse_buf(&st, &cfg, s.data(), s.size()) & ES_HTTP_EV_HEADERS,
            ES_HTTP_EV_HEADERS);
  EXPECT_EQ(es_http_skippable(&st), 100000u);
  EXPECT_EQ(es_http_skip(&st, 99999), 0);
  EXPECT_EQ(es_http_skip(&st, 50), ES_HTTP_EV_DONE);  // clamped to the 1 byte left
  EXPECT_EQ(es_http_skippable(&st), 0u);
  EXPECT_EQ(es_http_pos(&st), s.size() + 100000);
  // feed_buf stops after the first byte raising a stop event
  std::string two = Env("dev.a") + Env("dev.b");
  struct es_http_state st2 = {};
  __u32 used = 0;
  EXPECT_EQ(es_http_feed_buf(&st2, &cfg, two.data(), two.size(), ES_HTTP_EV_HEADERS, &used) &
                ES_HTTP_EV_HEADERS,
            ES_HTTP_EV_HEADERS);
  EXPECT_EQ(used, two.size() / 2);
  EXPECT_EQ(std::string(es_http_env(&st2), es_http_env_len(&st2)), "dev.a");
}

// Runs (http.h): bytes that change only the position are taken in bulk by
// es_http_feed_buf; the state must be the one byte-by-byte feeding leaves, at
// every cut, also where a run meets the window.
TEST(HttpRuns, SameStateAsByteByByte) {
  const std::string long_value(300, 'a');
  const std::vector<std::string> streams = {
      Get("User-Agent: curl/8.0\r\nAccept: */*\r\nX-Virtual-Env: dev.a\r\n"),
      Get("Hxst: x\r\nHTTP2-Settingx: y\r\nContent-Lengtx: 5\r\nX-Virtual-Envy: dev.b\r\n"),
      Get("Zzzz: " + long_value + "\r\nX-Virtual-Env: dev.c\r\n", "/" + long_value),
      Get("Bad Name: x\r\n"),
      Get("Xyz: a\rb\r\n"),
      Get("Xyz:\r\n\r\n"),
      "GET /p\x7fq HTTP/1.1\r\n\r\n",
      Get("Zz: v\r\n") + "POST / HTTP/1.1\r\nContent-Length: 3\r\nQq: 1\r\n\r\nabc" + Env("dev.d"),
      // the literal runs: methods, the version, names matching one name only
      "CONNECT h:1 HTTP/1.1\r\n\r\n",
      "CONNECTS / HTTP/1.1\r\n\r\n",
      "COPY / HTTP/1.1\r\n\r\n",
      "ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n\r\n",
      "ABCDEFGHIJKLMNOPQRSTUVW / HTTP/1.1\r\n\r\n",
      "HEAD / HTTP/1.0\r\n\r\n",
      "GET / HTTP/1.2\r\n\r\n",
      "GET / HTTP/2.0\r\n\r\n",
      "GET / http/1.1\r\n\r\n",
      "GET / HTTP/1\r\n\r\n",
      "G-_T / HTTP/1.1\r\n\r\n",
      "GEt / HTTP/1.1\r\n\r\n",
      Get("X-VIRTUAL-ENV: dev.e\r\nx-virtual-envx: dev.f\r\nX-Virtual-En: dev.g\r\n"),
      Get("X-Env: dev.h\r\nx-e: 1\r\nX-Virtual-Env\r\n"),
      Get("CONTENT-LENGTH: 0\r\nContent-Lengthy: 1\r\ncontent-len: 2\r\n"),
      Get("Transfer-Encoding: chunked\r\n") + "0\r\n\r\n",
      Get("transfer-encodinG: gzip\r\nTransfer-Encodings: x\r\n"),
      Get("Baggage: virtual-env=dev.i\r\nbaggagex: 1\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n"),
      Get("Upgrad: x\r\nupgradee: y\r\nHttp2-Setting: z\r\n"),
      Get("X-Virtual-Env" + std::string("\0", 1) + ": dev.j\r\n"),
  };
  for (uint16_t window : {0, 20, 40, 64, 333, 4096}) {
    auto cfg = Cfg({"X-Virtual-Env", "x-env"}, "virtual-env", '.', window);
    for (const auto& s : streams) {
      struct es_http_state a = {};
      Trace ta;
      for (size_t i = 0; i < s.size(); i++)
        Record(ta, a, es_http_feed(&a, &cfg, static_cast<__u8>(s[i])), i + 1);
      for (size_t piece : {size_t(1), size_t(2), size_t(7), size_t(64), s.size()}) {
        std::vector<size_t> cuts;
        for (size_t c = piece; c < s.size(); c += piece) cuts.push_back(c);
        struct es_http_state b = {};
        Trace tb;
        size_t start = 0;
        cuts.push_back(s.size());
        for (size_t end : cuts) {
          size_t off = start;
          while (off < end && !tb.not_http) {
            __u32 used = 0;
            int ev = es_http_feed_buf(&b, &cfg, s.data() + off, end - off, 0xff, &used);
            ASSERT_GT(used, 0u);
            off += used;
            Record(tb, b, ev, off);
          }
          start = end;
        }
        EXPECT_EQ(ta, tb) << "window " << window << " piece " << piece << ": " << s;
        a.ev = b.ev = 0;
        EXPECT_EQ(memcmp(&a, &b, sizeof(a)), 0) << "window " << window << " piece " << piece << ": " << s;
      }
    }
  }
}

// The kind of run the next bytes may be taken in (ES_HTTP_RUN_NONE: feed them).
int es_http_run_kind(const struct es_http_state* st, const struct es_http_cfg* cfg) {
  struct es_http_run run;
  return es_http_run_start(st, cfg, &run);
}

TEST(HttpRuns, Kinds) {
  auto cfg = Cfg();
  struct es_http_state st = {};
  auto feed = [&](const std::string& s) {
    for (char c : s) es_http_feed(&st, &cfg, static_cast<__u8>(c));
  };
  feed("G");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_METHOD);  // no longer CONNECT
  feed("ET /");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_TARGET);
  feed("abc ");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_VERSION);
  feed("HTTP/1.");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_NONE);  // the minor version is read
  feed("1\r\nH");
  // "h" may still be http2-settings, and only that: the rest of it is a literal
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_LIT_NAME);
  feed("o");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_NAME);  // no name starts with "ho"
  feed("st:");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_VALUE);
  feed("\r");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_NONE);  // a CR wants its LF
  feed("\nX");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_LIT_NAME);  // x-virtual-env only
  feed("-Virtual-Env:");
  EXPECT_EQ(es_http_run_kind(&st, &cfg), ES_HTTP_RUN_NONE);  // the env value is read

  struct es_http_state m = {};
  struct es_http_run run;
  for (char c : std::string("CONN")) es_http_feed(&m, &cfg, static_cast<__u8>(c));
  EXPECT_EQ(es_http_run_start(&m, &cfg, &run), ES_HTTP_RUN_NONE);  // may be CONNECT
  es_http_feed(&m, &cfg, 'X');
  EXPECT_EQ(es_http_run_start(&m, &cfg, &run), ES_HTTP_RUN_METHOD);
  EXPECT_TRUE(es_http_run_byte(&run, 0, 'A'));
  EXPECT_TRUE(es_http_run_byte(&run, ES_HTTP_METHOD_MAX - 6, '_'));
  EXPECT_FALSE(es_http_run_byte(&run, ES_HTTP_METHOD_MAX - 5, 'A'));  // the method's limit
  EXPECT_FALSE(es_http_run_byte(&run, 0, 'a'));
  EXPECT_FALSE(es_http_run_byte(&run, 0, ' '));

  struct es_http_state v = {};
  for (char c : std::string("GET / HT")) es_http_feed(&v, &cfg, static_cast<__u8>(c));
  EXPECT_EQ(es_http_run_start(&v, &cfg, &run), ES_HTTP_RUN_VERSION);
  EXPECT_TRUE(es_http_run_byte(&run, 0, 'T'));
  EXPECT_TRUE(es_http_run_byte(&run, 4, '.'));
  EXPECT_FALSE(es_http_run_byte(&run, 0, 't'));  // the version is case-sensitive
  EXPECT_FALSE(es_http_run_byte(&run, 5, '1'));  // the minor version is fed

  struct es_http_state n = {};
  for (char c : std::string("GET / HTTP/1.1\r\nTransfer-E")) es_http_feed(&n, &cfg, static_cast<__u8>(c));
  EXPECT_EQ(es_http_run_start(&n, &cfg, &run), ES_HTTP_RUN_LIT_NAME);
  EXPECT_TRUE(es_http_run_byte(&run, 0, 'N'));
  EXPECT_TRUE(es_http_run_byte(&run, 6, 'g'));
  EXPECT_FALSE(es_http_run_byte(&run, 7, 's'));  // past the name
  EXPECT_FALSE(es_http_run_byte(&run, 0, ':'));

  EXPECT_EQ(es_http_run_start(&st, &cfg, &run), ES_HTTP_RUN_NONE);
  run.kind = ES_HTTP_RUN_VALUE;
  EXPECT_TRUE(es_http_run_byte(&run, 0, ' '));
  EXPECT_FALSE(es_http_run_byte(&run, 0, '\n'));
  run.kind = ES_HTTP_RUN_NAME;
  EXPECT_FALSE(es_http_run_byte(&run, 0, ':'));
  run.kind = ES_HTTP_RUN_TARGET;
  EXPECT_FALSE(es_http_run_byte(&run, 0, ' '));
}

// Random streams of request pieces and stray bytes: the state es_http_feed_buf leaves (runs
// and bodies in bulk, whole and in random pieces) is the one byte-by-byte feeding leaves.
TEST(HttpRuns, RandomStreamsSameStateAsByteByByte) {
  std::mt19937 rng(17);
  const std::vector<std::string> parts = {
      "GET ", "POST ", "CONNECT ", "CONNEC", "HEAD ", "PUT ", "OPTIONS ", "/ ", "/a?b=c ", "* ",
      "HTTP/1.1\r\n", "HTTP/1.0\r\n", "HTTP/1.", "HTTP/", "HTtP/1.1\r\n", "Host: x\r\n",
      "X-Virtual-Env: dev.a\r\n", "x-virtual-env:dev.b\n", "X-Virtual-En", "X-Env: dev.c\r\n",
      "Content-Length: 3\r\n", "content-length", "Transfer-Encoding: chunked\r\n", "Transfer-",
      "baggage: virtual-env=dev.d\r\n", "Upgrade: h2c\r\n", "HTTP2-Settings: x\r\n", "H",
      "\r\n", "\n", "\r", ":", " ", "\t", "abc", "3\r\nabc\r\n0\r\n\r\n", std::string("\0", 1),
      "\x7f", "x"};
  for (uint16_t window : {0, 9, 30, 4096}) {
    auto cfg = Cfg({"X-Virtual-Env", "x-env"}, "virtual-env", '.', window);
    for (int i = 0; i < 5000; i++) {
      std::string s;
      int n = 1 + static_cast<int>(rng() % 24);
      for (int k = 0; k < n; k++) s += parts[rng() % parts.size()];
      struct es_http_state a = {}, b = {}, c = {};
      for (char ch : s) es_http_feed(&a, &cfg, static_cast<__u8>(ch));
      es_http_parse_buf(&b, &cfg, s.data(), static_cast<__u32>(s.size()));
      size_t off = 0;
      while (off < s.size()) {
        size_t len = 1 + rng() % 9;
        if (len > s.size() - off) len = s.size() - off;
        es_http_parse_buf(&c, &cfg, s.data() + off, static_cast<__u32>(len));
        off += len;
      }
      a.ev = b.ev = c.ev = 0;
      ASSERT_EQ(memcmp(&a, &b, sizeof(a)), 0) << "window " << window << ": " << s;
      ASSERT_EQ(memcmp(&a, &c, sizeof(a)), 0) << "window " << window << ": " << s;
    }
  }
}

// es_http_feeds_next (the BPF byte loops feed bytes on while it holds) never says "feed" where
// es_http_run_start would start a run, at a request boundary or in a body.
TEST(HttpRuns, FeedsNextOnlyWhereNoRunStarts) {
  std::mt19937 rng(23);
  const std::vector<std::string> parts = {
      "GET ", "CONNECT ", "CONNEC", "/a ", "HTTP/1.1\r\n", "HTTP/1.", "Host: x\r\n",
      "X-Virtual-Env: dev.a\r\n", "X-Virtual-En", "Content-Length: 3\r\nabc", "content-length",
      "Transfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n", "Transfer-",
      "baggage: virtual-env=dev.d\r\n", "Upgrade: h2c\r\n", "\r\n", "\n", "\r", ":", " ", "abc"};
  auto cfg = Cfg({"X-Virtual-Env"}, "virtual-env", '.', 0);
  size_t said = 0;
  for (int i = 0; i < 3000; i++) {
    std::string s;
    int n = 1 + static_cast<int>(rng() % 20);
    for (int k = 0; k < n; k++) s += parts[rng() % parts.size()];
    struct es_http_state st = {};
    for (char ch : s) {
      struct es_http_run run;
      if (es_http_feeds_next(&st)) {
        said++;
        ASSERT_EQ(es_http_run_start(&st, &cfg, &run), ES_HTTP_RUN_NONE) << s;
        ASSERT_NE(st.phase, ES_HTTP_P_IDLE) << s;
        ASSERT_LE(es_http_skippable(&st), 1u) << s;
      }
      es_http_feed(&st, &cfg, static_cast<__u8>(ch));
    }
  }
  EXPECT_GT(said, 1000u);  // the checks above ran
}

// A typical request head is mostly runs: the steps the BPF byte loops save (one per run).
TEST(HttpRuns, MostHeadBytesAreRuns) {
  auto cfg = Cfg();
  const std::string s = "GET / HTTP/1.1\r\nHost: 198.19.0.1\r\nX-Virtual-Env: dev.proj1\r\n\r\n";
  struct es_http_state st = {};
  struct es_http_run run;
  size_t steps = 0, i = 0;
  while (i < s.size()) {
    int kind = es_http_run_start(&st, &cfg, &run);
    if (kind && es_http_run_byte(&run, 0, static_cast<__u8>(s[i]))) {
      size_t k = 1;
      while (i + k < s.size() && es_http_run_byte(&run, static_cast<__u32>(k), static_cast<__u8>(s[i + k]))) k++;
      es_http_run_take(&st, kind, static_cast<__u32>(k));
      i += k;
    } else {
      es_http_feed(&st, &cfg, static_cast<__u8>(s[i]));
      i++;
    }
    steps++;
  }
  EXPECT_EQ(std::string(es_http_env(&st), es_http_env_len(&st)), "dev.proj1");
  // byte by byte: one step per byte (62); with the runs of value, name and target only: 51;
  // with those of method, version and a name matching one name (the env header's): 33
  EXPECT_EQ(s.size(), 62u);
  EXPECT_EQ(steps, 33u);
}

// ---- framing errors ----

TEST(HttpFraming, ContentLength) {
  EXPECT_EQ(One("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc").flags &
                ES_HTTP_F_CL,
            ES_HTTP_F_CL);
  EXPECT_FALSE(Parse("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc" + Get("")).not_http);
  EXPECT_FALSE(Parse("POST / HTTP/1.1\r\nContent-Length:  007 \r\n\r\n1234567" + Get("")).not_http);
  for (std::string bad : {"Content-Length: 3\r\nContent-Length: 4\r\n", "Content-Length: 3, 4\r\n",
                          "Content-Length: \r\n", "Content-Length: 3x\r\n", "Content-Length: -1\r\n",
                          "Content-Length: 1 2\r\n", "Content-Length: +1\r\n",
                          "Content-Length: 3,\r\n", "Content-Length: 0x10\r\n",
                          "Content-Length: 1000000000000000000\r\n",
                          "Content-Length: 99999999999999999999999999\r\n"}) {
    Trace t = Parse("POST / HTTP/1.1\r\n" + bad + "\r\nabc");
    EXPECT_TRUE(t.not_http) << bad;
    EXPECT_TRUE(t.heads.empty()) << bad;
    EXPECT_TRUE(t.err == ES_HTTP_ERR_FRAMING || t.err == ES_HTTP_ERR_TOO_BIG) << bad;
  }
  // the largest accepted
  auto cfg = Cfg();
  struct es_http_state st = {};
  std::string big = "POST / HTTP/1.1\r\nContent-Length: 999999999999999999\r\n\r\n";
  es_http_parse_buf(&st, &cfg, big.data(), big.size());
  EXPECT_EQ(es_http_skippable(&st), 999999999999999999ULL);
}

TEST(HttpFraming, TransferEncoding) {
  for (std::string bad :
       {"Transfer-Encoding: gzip\r\n", "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "Transfer-Encoding: chunkedx\r\n",
        "Transfer-Encoding: chunked x\r\n", "Transfer-Encoding:\r\n"}) {
    Trace t = Parse("POST / HTTP/1.1\r\n" + bad + "\r\n0\r\n\r\n");
    EXPECT_TRUE(t.not_http) << bad;
    EXPECT_EQ(t.err, ES_HTTP_ERR_FRAMING) << bad;
  }
  EXPECT_FALSE(Parse("POST / HTTP/1.1\r\nTransfer-Encoding: ,gzip ,, chunked \r\n\r\n0\r\n\r\n" +
                   Get(""))
                   .not_http);
}

TEST(HttpFraming, BadChunks) {
  for (std::string body : {"x\r\n", "\r\n", ";ext\r\n", "5\r\nhelloX\r\n", "5\r\nhello\rX",
                           "1000000000000000\r\n"}) {
    Trace t = Parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body);
    EXPECT_TRUE(t.not_http) << body;
  }
  // the largest chunk size taken
  EXPECT_FALSE(
      Parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFF\r\nab").not_http);
}

// ---- not HTTP ----

TEST(HttpNotHttp, ForeignProtocols) {
  const unsigned char tls[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03};
  std::vector<std::string> inputs = {
      std::string(reinterpret_cast<const char*>(tls), sizeof(tls)),
      "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
      std::string("\0\0\0\x01\x02", 5),
      "*1\r\n$4\r\nPING\r\n",                     // redis
      "get / HTTP/1.1\r\n\r\n",                   // methods are upper case
      "GET /\r\n",                                // HTTP/0.9
      "GET / HTTP/1.2\r\n\r\n",
      "GET / HTTP/2\r\n\r\n",
      "GET  / HTTP/1.1\r\n\r\n",                  // empty target
      "GET / HTTP/1.1 \r\n\r\n",
      "GET\t/ HTTP/1.1\r\n\r\n",
      " GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\r\n\r\n",
      "VERYLONGMETHODNAMEISNOTHTTPATALL / HTTP/1.1\r\n\r\n",
  };
  for (const auto& in : inputs) {
    Trace t = Parse(in);
    EXPECT_TRUE(t.not_http) << in;
    EXPECT_TRUE(t.heads.empty()) << in;
  }
  EXPECT_EQ(Parse(inputs[0]).events, (std::vector<std::pair<size_t, int>>{{1, ES_HTTP_EV_NOT_HTTP}}));
  EXPECT_EQ(Parse(inputs[1]).events[0].first, 5u);  // "SSH-2": a digit in the method
  EXPECT_EQ(Parse(inputs[3]).events[0].first, 5u);  // "HTTP/"
}

TEST(HttpNotHttp, MalformedHeaders) {
  for (std::string h : {"Host : x\r\n", " folded: x\r\n", "Host: a\r\n continued\r\n",
                        ": empty\r\n", "No colon\r\n", "Bad\x01name: x\r\n", "X: a\rb\r\n"}) {
    Trace t = Parse(Get(h));
    EXPECT_TRUE(t.not_http) << h;
    EXPECT_EQ(t.err, ES_HTTP_ERR_MALFORMED) << h;
  }
}

TEST(HttpNotHttp, InertUntilReset) {
  auto cfg = Cfg();
  struct es_http_state st = {};
  std::string junk = "SSH-2.0-x\r\n";
  EXPECT_TRUE(es_http_parse_buf(&st, &cfg, junk.data(), junk.size()) & ES_HTTP_EV_NOT_HTTP);
  EXPECT_TRUE(es_http_inert(&st));
  std::string req = Env("dev");
  __u32 used = 0;
  EXPECT_EQ(es_http_feed_buf(&st, &cfg, req.data(), req.size(), 0, &used), ES_HTTP_EV_NOT_HTTP);
  EXPECT_EQ(used, 1u);
  es_http_reset(&st);
  EXPECT_FALSE(es_http_inert(&st));
  es_http_parse_buf(&st, &cfg, req.data(), req.size());
  EXPECT_EQ(std::string(es_http_env(&st), es_http_env_len(&st)), "dev");
}

TEST(HttpMethod, HeadIsFlagged) {
  // a HEAD answer has no body despite its Content-Length: response trackers
  // cannot follow it, so the sk_msg program must know the request was HEAD
  Trace h = Parse("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
  ASSERT_EQ(h.heads.size(), 1u);
  EXPECT_TRUE(h.heads[0].flags & ES_HTTP_F_HEAD);
  for (const char* m : {"GET", "HEADER", "HED", "POST", "OPTIONS", "PATCH"}) {
    Trace t = Parse(std::string(m) + " / HTTP/1.1\r\nHost: a\r\n\r\n");
    ASSERT_EQ(t.heads.size(), 1u) << m;
    EXPECT_FALSE(t.heads[0].flags & ES_HTTP_F_HEAD) << m;
  }
  // per request: a GET after a HEAD on the same connection is not flagged
  Trace two = Parse("HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
  ASSERT_EQ(two.heads.size(), 2u);
  EXPECT_TRUE(two.heads[0].flags & ES_HTTP_F_HEAD);
  EXPECT_FALSE(two.heads[1].flags & ES_HTTP_F_HEAD);
}

TEST(HttpNotHttp, ConnectTunnelIsOpaque) {
  std::string s = "CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\nX-Virtual-Env: dev.t\r\n\r\n"
                  "\x16\x03\x01 anything GET / HTTP/1.1\r\n\r\n";
  Trace t = Parse(s);
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].env, "dev.t");
  EXPECT_TRUE(t.heads[0].flags & ES_HTTP_F_CONNECT);
  EXPECT_TRUE(t.not_http);
  EXPECT_EQ(t.err, ES_HTTP_ERR_TUNNEL);
  // CONNECTX is just a method
  Trace u = Parse("CONNECTX / HTTP/1.1\r\n\r\n" + Get(""));
  EXPECT_FALSE(u.not_http);
  EXPECT_EQ(u.heads.size(), 2u);
}

// ---- line ends ----

TEST(HttpLineEnds, BareLfAccepted) {
  Trace t = Parse("GET / HTTP/1.1\nX-Virtual-Env: dev\n\nGET / HTTP/1.1\r\nA: b\n\r\n");
  ASSERT_FALSE(t.not_http);
  ASSERT_EQ(t.heads.size(), 2u);
  EXPECT_EQ(t.heads[0].env, "dev");
  EXPECT_EQ(t.heads[0].line_len, 15u);
}

TEST(HttpLineEnds, LeadingEmptyLinesIgnored) {
  Trace t = Parse("\r\n\n" + Env("dev"));
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].line_len, 16u);  // counted from the request's first byte
  EXPECT_TRUE(Parse("\r\rGET / HTTP/1.1\r\n\r\n").not_http);
}

// ---- internals pinned to their definitions ----

TEST(HttpTables, CharacterClasses) {
  const std::string tchar_extra = "!#$%&'*+-.^_`|~";
  for (int c = 0; c < 256; c++) {
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    bool tchar = alnum || (c && tchar_extra.find(static_cast<char>(c)) != std::string::npos);
    EXPECT_EQ(es_http_tchar(static_cast<__u8>(c)), tchar) << c;
    EXPECT_EQ(es_http_in(ES_HTTP_ALNUM_LO, ES_HTTP_ALNUM_HI, static_cast<__u8>(c)),
              es_is_alnum(static_cast<char>(c)))
        << c;
    EXPECT_EQ(es_http_in(ES_HTTP_LABEL_LO, ES_HTTP_LABEL_HI, static_cast<__u8>(c)),
              es_is_label_char(static_cast<char>(c)))
        << c;
  }
}

std::string Unpack(__u64 a, __u64 b, __u64 c) {
  std::string s;
  for (__u32 i = 0; es_http_kc(a, b, c, i); i++) s += static_cast<char>(es_http_kc(a, b, c, i));
  return s;
}

TEST(HttpTables, PackedNames) {
  EXPECT_EQ(Unpack(ES_HTTP_K_CL0, ES_HTTP_K_CL1, 0), "content-length");
  EXPECT_EQ(Unpack(ES_HTTP_K_TE0, ES_HTTP_K_TE1, ES_HTTP_K_TE2), "transfer-encoding");
  EXPECT_EQ(Unpack(ES_HTTP_K_BAGGAGE, 0, 0), "baggage");
  EXPECT_EQ(Unpack(ES_HTTP_K_CHUNKED, 0, 0), "chunked");
  EXPECT_EQ(Unpack(ES_HTTP_K_CONNECT, 0, 0), "CONNECT");
  EXPECT_EQ(Unpack(ES_HTTP_K_VERSION, 0, 0), "HTTP/1.");
}

TEST(HttpTables, ZeroConfigFindsNothingButFollowsFraming) {
  struct es_http_cfg cfg = {};
  Trace t = Parse(Env("dev") + "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab" + Env("dev"), cfg);
  ASSERT_FALSE(t.not_http);
  ASSERT_EQ(t.heads.size(), 3u);
  for (const auto& h : t.heads) EXPECT_EQ(h.outcome, ES_HTTP_ENV_ABSENT);
}

}  // namespace
