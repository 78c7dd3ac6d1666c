// SPDX-License-Identifier: Apache-2.0
// The response framing tracker of an upstream (bpf/lib/response.h): what the agent decides an
// upstream's close from. Every stream is also fed split at every byte boundary: the outcome
// must not depend on how the bytes arrive.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "bpf/lib/response.h"
}

namespace {

static_assert(sizeof(struct es_rsp) == 56, "map value layout");

es_rsp feed(const std::string& s) {
  es_rsp r{};
  es_rsp_feed_buf(&r, s.data(), s.size());
  return r;
}

// The same stream fed in two pieces, split at every offset, ends in the same state.
void expect_split_invariant(const std::string& s) {
  es_rsp whole = feed(s);
  for (size_t cut = 0; cut <= s.size(); cut++) {
    es_rsp r{};
    es_rsp_feed_buf(&r, s.data(), cut);
    es_rsp_feed_buf(&r, s.data() + cut, s.size() - cut);
    ASSERT_EQ(0, memcmp(&r, &whole, sizeof(r))) << "split at " << cut << " of " << s;
  }
}

const std::string kOk = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Pod: a\r\n\r\nhello";
const std::string kChunked =
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\n";

TEST(Response, ContentLengthResponseCompletes) {
  es_rsp r = feed(kOk);
  EXPECT_EQ(r.done, 1u);
  EXPECT_EQ(r.phase, ES_RSP_P_IDLE);
  EXPECT_EQ(r.bytes, kOk.size());
  expect_split_invariant(kOk);
}

TEST(Response, PartialResponseIsNotIdle) {
  for (size_t n = 1; n < kOk.size(); n++) {
    es_rsp r = feed(kOk.substr(0, n));
    r.reqs = 1;
    EXPECT_FALSE(es_rsp_idle(&r, 0)) << n;
    EXPECT_EQ(r.done, 0u) << n;
  }
}

TEST(Response, ChunkedWithExtensionsAndTrailers) {
  es_rsp r = feed(kChunked);
  EXPECT_EQ(r.done, 1u);
  EXPECT_EQ(r.phase, ES_RSP_P_IDLE);
  expect_split_invariant(kChunked);
  // cut anywhere before the final blank line: not done
  for (size_t n = 1; n < kChunked.size(); n++) EXPECT_EQ(feed(kChunked.substr(0, n)).done, 0u) << n;
}

TEST(Response, BareLineFeedsAndUpperCaseNames) {
  es_rsp r = feed("HTTP/1.0 200 OK\nCONTENT-LENGTH:3\n\nabcHTTP/1.1 200 OK\nTransfer-Encoding: Chunked\n\n0\n\n");
  EXPECT_EQ(r.done, 2u);
  EXPECT_EQ(r.phase, ES_RSP_P_IDLE);
}

TEST(Response, PipelinedResponsesInOneBuffer) {
  std::string s = kOk + kChunked + "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n" + kOk;
  es_rsp r = feed(s);
  EXPECT_EQ(r.done, 4u);
  r.reqs = 3;
  EXPECT_TRUE(es_rsp_idle(&r, 1));   // three in the kernel, one forwarded by the agent
  EXPECT_FALSE(es_rsp_idle(&r, 2));  // one more sent than answered
  expect_split_invariant(s);
}

TEST(Response, InterimResponsesDoNotAnswerTheRequest) {
  std::string cont = "HTTP/1.1 100 Continue\r\n\r\n";
  es_rsp r = feed(cont);
  EXPECT_EQ(r.done, 0u);
  EXPECT_EQ(r.phase, ES_RSP_P_IDLE);
  r.reqs = 1;
  EXPECT_FALSE(es_rsp_idle(&r, 0));
  es_rsp_feed_buf(&r, kOk.data(), kOk.size());
  EXPECT_TRUE(es_rsp_idle(&r, 0));
  expect_split_invariant(cont + "HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + kOk);
}

TEST(Response, NoBodyStatuses) {
  EXPECT_EQ(feed("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n").done, 1u);
  EXPECT_EQ(feed("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n").done, 1u);
  EXPECT_EQ(feed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").done, 1u);
  EXPECT_EQ(feed("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").done, 1u);  // no reason phrase
}

TEST(Response, FramedByTheClose) {
  for (const char* s : {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome bytes",
                        "HTTP/1.0 200 OK\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 4\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"}) {
    es_rsp r = feed(s);
    EXPECT_EQ(r.phase, ES_RSP_P_UNTIL_CLOSE) << s;
    EXPECT_EQ(r.done, 0u) << s;
    r.reqs = 1;
    EXPECT_FALSE(es_rsp_idle(&r, 0)) << s;
  }
}

TEST(Response, TransferEncodingWinsOverContentLength) {
  es_rsp r = feed("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
  EXPECT_EQ(r.done, 1u);
  EXPECT_EQ(r.phase, ES_RSP_P_IDLE);
}

TEST(Response, ContentLengthLists) {
  EXPECT_EQ(feed("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc").done, 1u);
  EXPECT_EQ(feed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc").done, 1u);
  for (const char* s : {"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nContent-Length: 3 3\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"}) {
    es_rsp r = feed(s);
    EXPECT_EQ(r.phase, ES_RSP_P_DEAD) << s;
    EXPECT_EQ(r.err, ES_RSP_ERR_FRAMING) << s;
  }
}

TEST(Response, OnlyTheExactNamesFrame) {
  // neither is Content-Length: the response ends with the close
  EXPECT_EQ(feed("HTTP/1.1 200 OK\r\nContent-Lengthx: 3\r\n\r\nabc").phase, ES_RSP_P_UNTIL_CLOSE);
  EXPECT_EQ(feed("HTTP/1.1 200 OK\r\nX-Content-Length: 3\r\n\r\nabc").phase, ES_RSP_P_UNTIL_CLOSE);
  EXPECT_EQ(feed("HTTP/1.1 200 OK\r\nContent-Lengt: 3\r\n\r\nabc").phase, ES_RSP_P_UNTIL_CLOSE);
}

TEST(Response, NotAResponseGivesUp) {
  for (const char* s : {"HTTP/2.0 200 OK\r\n", "http/1.1 200 OK\r\n", "HTTP/1.1 20 OK\r\n", "HTTP/1.1 2000 OK\r\n",
                        "SSH-2.0-OpenSSH\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                        "HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n"}) {
    es_rsp r = feed(s);
    EXPECT_EQ(r.phase, ES_RSP_P_DEAD) << s;
    EXPECT_NE(r.err, ES_RSP_ERR_NONE) << s;
    // and stays so: a dead tracker never claims idle
    std::string more = kOk;
    es_rsp_feed_buf(&r, more.data(), more.size());
    EXPECT_EQ(r.phase, ES_RSP_P_DEAD) << s;
    r.reqs = r.done;
    EXPECT_FALSE(es_rsp_idle(&r, 0)) << s;
  }
}

TEST(Response, AHeadResponseIsNeverTakenForIdle) {
  // HEAD: a Content-Length and no body. The tracker cannot know; what follows is taken for its
  // body, the counts stop adding up, and the upstream does not look idle again.
  std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n";
  es_rsp r = feed(head + kOk + kOk);
  r.reqs = 3;
  EXPECT_FALSE(es_rsp_idle(&r, 0));
}

TEST(Response, LeadingBlankLinesAreIgnored) {
  EXPECT_EQ(feed("\r\n\r\n" + kOk).done, 1u);
  EXPECT_EQ(feed(kOk + "\r\n" + kOk).done, 2u);
}

// A run of requests on an upstream owes its client something until every one has its final
// response (counted from where the run began) and none is under way.
TEST(Response, RunOwesUntilEveryResponseIsIn) {
  const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  es_rsp r = feed(ok + ok);  // two answered before the run began
  EXPECT_FALSE(es_rsp_run_owes(&r, 2, 0));
  EXPECT_TRUE(es_rsp_run_owes(&r, 2, 1));  // the run's one request: not answered yet
  es_rsp_feed_buf(&r, ok.data(), 10);         // its response under way
  EXPECT_TRUE(es_rsp_run_owes(&r, 2, 1));
  es_rsp_feed_buf(&r, ok.data() + 10, ok.size() - 10);
  EXPECT_FALSE(es_rsp_run_owes(&r, 2, 1));
  EXPECT_TRUE(es_rsp_run_owes(&r, 2, 2));   // a second request of the run
  EXPECT_FALSE(es_rsp_run_owes(nullptr, 0, 3));  // closed: the agent reset the client if it owed
  es_rsp interim = feed("HTTP/1.1 100 Continue\r\n\r\n");
  EXPECT_TRUE(es_rsp_run_owes(&interim, 0, 1));  // an interim response answers nothing
}

// The requests a connection sent to its own pod (es_own_rsp.reqs, counted by sk_msg) owe the
// client something until each has its final response and none is under way; a connection whose
// own pod's responses are not followed (no tracker) never proves them answered.
TEST(Response, OwnPodOwesUntilEveryResponseIsIn) {
  const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  es_rsp r{};
  EXPECT_FALSE(es_rsp_own_owes(&r));  // nothing sent yet
  r.reqs = 2;                         // two pipelined requests
  EXPECT_TRUE(es_rsp_own_owes(&r));
  es_rsp_feed_buf(&r, ok.data(), ok.size());
  EXPECT_TRUE(es_rsp_own_owes(&r));  // one answered
  es_rsp_feed_buf(&r, ok.data(), ok.size() - 1);
  EXPECT_TRUE(es_rsp_own_owes(&r));  // the second under way: its last byte missing
  es_rsp_feed_buf(&r, ok.data() + ok.size() - 1, 1);
  EXPECT_FALSE(es_rsp_own_owes(&r));
  es_rsp_feed_buf(&r, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  r.reqs = 3;
  EXPECT_TRUE(es_rsp_own_owes(&r));  // an interim response answers nothing
  es_rsp_feed_buf(&r, "HTTP/1.1 204 No Content\r\n\r\n", 27);
  EXPECT_FALSE(es_rsp_own_owes(&r));
  EXPECT_TRUE(es_rsp_own_owes(nullptr));  // not followed: never proven
  // bytes that do not frame as responses: never answered again
  es_rsp_feed_buf(&r, "garbage\r\n", 9);
  EXPECT_TRUE(es_rsp_own_owes(&r));
}

// Runs (es_rsp_run_kind): feeding in bulk (bodies and runs, es_rsp_feed_buf) leaves exactly the
// state byte-by-byte feeding (es_rsp_feed alone) leaves, whole and in pieces; also the events.
es_rsp feed_bytes(const std::string& s, int* all = nullptr) {
  es_rsp r{};
  int ev = 0;
  for (char c : s) ev |= es_rsp_feed(&r, static_cast<__u8>(c));
  if (all) *all = ev;
  return r;
}

void expect_runs_equivalent(const std::string& s, std::mt19937& rng) {
  int all_bytes = 0, all_bulk = 0;
  es_rsp want = feed_bytes(s, &all_bytes);
  es_rsp r{};
  all_bulk = es_rsp_feed_buf(&r, s.data(), s.size());
  ASSERT_EQ(0, memcmp(&r, &want, sizeof(r))) << s;
  ASSERT_EQ(all_bulk, all_bytes) << s;
  // in pieces: a run cut anywhere is two runs
  es_rsp p{};
  size_t off = 0;
  while (off < s.size()) {
    size_t n = 1 + rng() % 9;
    if (n > s.size() - off) n = s.size() - off;
    es_rsp_feed_buf(&p, s.data() + off, n);
    off += n;
  }
  ASSERT_EQ(0, memcmp(&p, &want, sizeof(p))) << s;
}

TEST(ResponseRuns, SameStateAsByteByByte) {
  std::mt19937 rng(17);
  for (const std::string& s :
       {kOk, kChunked,
        std::string("HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 17:30:49 GMT\r\n"
                    "Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody"),
        std::string("HTTP/1.1 200 A reason phrase longer than two hundred and fifty five bytes ") +
            std::string(300, 'x') + "\r\nContent-Length: 1\r\n\r\nz",
        std::string("HTTP/1.1 200 OK\r\nX-") + std::string(300, 'n') + ": v\r\nContent-Length: 0\r\n\r\n",
        std::string("HTTP/1.1 200 OK\r\nCon\rtent-Length: 3\r\n\r\nabc"),
        std::string("HTTP/1.1 200 OK\r\nServer\r: x\r\n\r\n"),
        std::string("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3;a=b;c\nabc\n0\nT: 1\nU: 2\n\n")}) {
    expect_runs_equivalent(s, rng);
  }
  // random streams from the pieces responses are made of, and stray bytes
  const std::vector<std::string> parts = {
      "HTTP/1.1 200 OK\r\n", "HTTP/1.0 204 No Content\r\n", "HTTP/1.1 100 Continue\r\n", "HTTP/1.1 101 Up\r\n",
      "HTTP/1.1 304\r\n", "Content-Length: 3\r\n", "content-length:0\n", "Transfer-Encoding: chunked\r\n",
      "TRANSFER-ENCODING: gzip\r\n", "Server: x\r\n", "Date: Wed, 02 Dec 2026\r\n", "Connection: keep-alive\r\n",
      "Content-Type: text/plain\r\n", "Content-Lengthy: 9\r\n", "X: \r\n", "\r\n", "\n", "\r", ":", " ", "\t",
      "abc", "3\r\n", "0\r\n", "1;ext\r\n", "a\r\n", "abcdefghij", "T: x\r\n", "@", "\x80", "Cont", "Trans", "C",
      "t", "HTTP/1.1 200 ", "ok"};
  for (int i = 0; i < 20000; i++) {
    std::string s;
    int n = 1 + static_cast<int>(rng() % 24);
    for (int k = 0; k < n; k++) s += parts[rng() % parts.size()];
    expect_runs_equivalent(s, rng);
  }
}

// Typical heads are mostly runs: what the agent's tracker saves (one step per run, not per byte).
TEST(ResponseRuns, MostHeadBytesAreRuns) {
  const std::string s =
      "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 17:30:49 GMT\r\n"
      "Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody";
  es_rsp r{};
  size_t steps = 0, i = 0;
  while (i < s.size()) {
    int kind = es_rsp_run_kind(&r);
    __u64 n = es_rsp_skippable(&r);
    if (n) {
      if (n > s.size() - i) n = s.size() - i;
      es_rsp_skip(&r, n);
      i += n;
    } else if (kind && es_rsp_run_byte(&r, kind, 0, static_cast<__u8>(s[i]))) {
      size_t k = 1;
      while (i + k < s.size() && es_rsp_run_byte(&r, kind, static_cast<__u32>(k), static_cast<__u8>(s[i + k]))) k++;
      es_rsp_run_take(&r, kind, static_cast<__u32>(k));
      i += k;
    } else {
      es_rsp_feed(&r, static_cast<__u8>(s[i]));
      i++;
    }
    steps++;
  }
  EXPECT_EQ(r.done, 1u);
  // byte by byte: one step per head byte (147 here); with runs: 44 (the status code, the first
  // byte of each name and line ends, Content-Length's value still go byte by byte)
  EXPECT_LE(steps, s.size() / 3) << steps << " steps for " << s.size() << " bytes";
}

}  // namespace
