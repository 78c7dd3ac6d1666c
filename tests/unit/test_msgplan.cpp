// SPDX-License-Identifier: Apache-2.0
// The sk_msg program's decision after its byte loops (bpf/lib/msgplan.h): how much of a send
// the verdict covers and what changes for the connection, for every shape of send the program
// sees (pipelined heads, refused targets, heads spanning sends, unframed bytes, tunnels). The
// BPF side (outbound.h) only applies the plan; tests/fuzz/fuzz_msg.c runs both together.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

extern "C" {
#include "bpf/lib/msgplan.h"
}

namespace {

std::string acts(uint32_t a) {
  static const std::pair<uint32_t, const char*> kNames[] = {
      {ES_MSG_A_REWIND, "REWIND"},     {ES_MSG_A_PIPELINED, "PIPELINED"},
      {ES_MSG_A_REFUSE, "REFUSE"},     {ES_MSG_A_FAIL_MSG, "FAIL_MSG"},
      {ES_MSG_A_FOLLOW, "FOLLOW"},     {ES_MSG_A_UNFRAMED_FAIL, "UNFRAMED_FAIL"},
      {ES_MSG_A_UNROUTABLE, "UNROUTABLE"}, {ES_MSG_A_CORK, "CORK"},
      {ES_MSG_A_HINT_REFUSED, "HINT_REFUSED"},
  };
  std::string s;
  for (const auto& [bit, name] : kNames)
    if (a & bit) s += (s.empty() ? "" : "|") + std::string(name);
  return s.empty() ? "-" : s;
}

constexpr uint32_t kWindow = 4096;
constexpr uint32_t kHold = kWindow + ES_PULL;  // the longest message a head is held in, plus one

// A send of 300 bytes, parsed to its end, the parser idle, nothing pending.
es_msg_state base() {
  es_msg_state s{};
  s.off = 300;
  s.size = 300;
  s.req_begin = 0;
  s.window = kWindow;
  s.phase = ES_HTTP_P_IDLE;
  s.route_kind = ES_ROUTE_PASS;
  return s;
}

struct Case {
  const char* name;
  es_msg_state s;
  uint32_t covered;
  uint32_t act;
};

template <typename F>
es_msg_state with(F f) {
  es_msg_state s = base();
  f(s);
  return s;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> kCases = {
      // Requests that end within the send: all of it goes along the route.
      {"complete requests", base(), 300, 0},
      {"body continues in a later send", with([](auto& s) { s.phase = ES_HTTP_P_BODY; }), 300, 0},
      {"chunked body continues", with([](auto& s) { s.phase = ES_HTTP_P_CHUNK_DATA; s.req_begin = -1; }), 300, 0},
      // Pipelining: a second head in the send is decided in a run of its own.
      {"second head after a complete request",
       with([](auto& s) { s.second_head = 1; s.off = 180; s.req_begin = 120; }), 120,
       ES_MSG_A_REWIND | ES_MSG_A_PIPELINED},
      {"second head, no boundary in this send",
       with([](auto& s) { s.second_head = 1; s.off = 180; s.req_begin = -1; }), 180, 0},
      {"more heads than one run decides", with([](auto& s) { s.off = 200; s.phase = ES_HTTP_P_METHOD; }), 200, 0},
      // A pipelined request for another target is refused, the bytes before it go out.
      {"refused head after another request in the send",
       with([](auto& s) { s.refused = 1; s.req_begin = 120; s.off = 180; s.route_kind = ES_ROUTE_KERNEL; }), 120,
       ES_MSG_A_REFUSE},
      {"refused head pipelined from an earlier run",
       with([](auto& s) { s.refused = 1; s.pipelined = 1; s.req_begin = 0; s.off = 60; }), 300,
       ES_MSG_A_REFUSE | ES_MSG_A_FAIL_MSG},
      // A head that spans sends: held, or pipelined, or too long to hold.
      {"head spanning sends is held", with([](auto& s) { s.phase = ES_HTTP_P_NAME; }), 300,
       ES_MSG_A_REWIND | ES_MSG_A_CORK},
      {"head spanning sends, cut in its request line", with([](auto& s) { s.phase = ES_HTTP_P_TARGET; }), 300,
       ES_MSG_A_REWIND | ES_MSG_A_CORK},
      {"head spanning sends, held up to the limit",
       with([](auto& s) { s.phase = ES_HTTP_P_VALUE; s.size = s.off = kHold - 1; }), kHold - 1,
       ES_MSG_A_REWIND | ES_MSG_A_CORK},
      {"head spanning sends after another request in the send",
       with([](auto& s) { s.phase = ES_HTTP_P_LINE; s.req_begin = 90; }), 90, ES_MSG_A_REWIND | ES_MSG_A_PIPELINED},
      {"head too long to hold goes to the connection's pod",
       with([](auto& s) { s.phase = ES_HTTP_P_VALUE; s.size = s.off = kHold; }), kHold, ES_MSG_A_UNROUTABLE},
      {"head too long to hold, pipelined after a request that went out on the connection",
       with([](auto& s) { s.phase = ES_HTTP_P_VALUE; s.size = s.off = kHold; s.pipelined = 1; }), kHold,
       ES_MSG_A_UNROUTABLE},
      {"head too long to hold, pipelined after a re-routed request",
       with([](auto& s) {
         s.phase = ES_HTTP_P_VALUE;
         s.size = s.off = kHold;
         s.pipelined = 1;
         s.route_kind = ES_ROUTE_SLOW;
       }),
       kHold, ES_MSG_A_REFUSE | ES_MSG_A_FAIL_MSG},
      {"head begun in an earlier send and not held (unroutable) continues",
       with([](auto& s) { s.phase = ES_HTTP_P_VALUE; s.req_begin = -1; }), 300, 0},
      {"no parse window: held below one pull",
       with([](auto& s) { s.phase = ES_HTTP_P_NAME; s.window = 0; s.size = s.off = ES_PULL - 1; }), ES_PULL - 1,
       ES_MSG_A_REWIND | ES_MSG_A_CORK},
      {"no parse window: one pull is too long",
       with([](auto& s) { s.phase = ES_HTTP_P_NAME; s.window = 0; s.size = s.off = ES_PULL; }), ES_PULL,
       ES_MSG_A_UNROUTABLE},
      // Bytes the parser cannot frame.
      {"parser gave up on a request that began in the send",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = 150; s.off = 160; s.route_kind = ES_ROUTE_KERNEL; }),
       150, 0},
      {"unframed after a request on the connection", with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = -1; }),
       300, ES_MSG_A_FOLLOW},
      {"unframed after a failed request",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = -1; s.route_kind = ES_ROUTE_FAIL; }), 300,
       ES_MSG_A_FOLLOW},
      {"unframed after a re-routed request (kernel)",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = -1; s.route_kind = ES_ROUTE_KERNEL; }), 300,
       ES_MSG_A_UNFRAMED_FAIL},
      {"unframed after a re-routed request (agent)",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = 0; s.route_kind = ES_ROUTE_SLOW; }), 300,
       ES_MSG_A_UNFRAMED_FAIL},
      // Upgrade and CONNECT: the tunnel follows its request wherever it went.
      {"tunnel after an upgrade follows its request",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = -1; s.upgrade = 1; s.route_kind = ES_ROUTE_KERNEL; }),
       300, 0},
      {"tunnel the parser stopped at follows its request",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = 40; s.tunnel = 1; s.route_kind = ES_ROUTE_SLOW; }),
       300, 0},
      {"tunnel after an upgrade request earlier in the send",
       with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = 40; s.upgrade = 1; s.route_kind = ES_ROUTE_PASS; }),
       300, 0},
  };
  return kCases;
}

TEST(MsgPlan, DecisionTable) {
  for (const auto& c : cases()) {
    es_msg_plan p{};
    es_msg_decide(&c.s, &p);
    EXPECT_EQ(p.covered, c.covered) << c.name;
    EXPECT_EQ(acts(p.act), acts(c.act)) << c.name;
  }
}

TEST(MsgPlan, RefusesHeadOnlyWhenItsRouteDiffersFromBytesBeforeIt) {
  struct {
    int32_t req_begin;
    uint8_t pipelined;
    int same_route;
    int refused;
  } const kRows[] = {
      {0, 0, 0, 0},   // the send's first request: any route
      {-1, 0, 0, 0},  // a head that began in an earlier send (held): any route
      {120, 0, 0, 1}, // after another request in the send, another target
      {120, 0, 1, 0}, // same target: in order on one connection
      {0, 1, 0, 1},   // pipelined from an earlier run, another target
      {0, 1, 1, 0},
  };
  for (const auto& r : kRows)
    EXPECT_EQ(es_msg_refuses_head(r.req_begin, r.pipelined, r.same_route), r.refused)
        << r.req_begin << " " << int(r.pipelined) << " " << r.same_route;
}

TEST(MsgPlan, UnframedBytes) {
  EXPECT_EQ(acts(es_msg_unframed_act(0, 0, ES_ROUTE_PASS, 0)), "FOLLOW");
  EXPECT_EQ(acts(es_msg_unframed_act(0, 0, ES_ROUTE_FAIL, 0)), "FOLLOW");
  EXPECT_EQ(acts(es_msg_unframed_act(0, 0, ES_ROUTE_KERNEL, 0)), "UNFRAMED_FAIL");
  EXPECT_EQ(acts(es_msg_unframed_act(0, 0, ES_ROUTE_SLOW, 0)), "UNFRAMED_FAIL");
  for (uint32_t kind : {ES_ROUTE_PASS, ES_ROUTE_KERNEL, ES_ROUTE_SLOW, ES_ROUTE_FAIL}) {
    EXPECT_EQ(es_msg_unframed_act(1, 0, kind, 0), 0u) << kind;
    EXPECT_EQ(es_msg_unframed_act(0, 1, kind, 0), 0u) << kind;
  }
}

// A connection a hint made (ES_STEER_F_HINT) went to another environment's pod than the
// caller's: bytes whose environment is unknown may not go there. Its first bytes unframed, or a
// head too long to hold, are refused (and the hint dropped); after a routed request, unframed
// bytes follow it as on any connection.
TEST(MsgPlan, HintedConnectionsNeverSendUnroutedBytesToTheirPod) {
  for (uint32_t kind : {ES_ROUTE_PASS, ES_ROUTE_KERNEL, ES_ROUTE_SLOW, ES_ROUTE_FAIL}) {
    EXPECT_EQ(acts(es_msg_unframed_act(0, 0, kind, 1)), "UNFRAMED_FAIL|HINT_REFUSED") << kind;
    EXPECT_EQ(acts(es_msg_unframed_act(1, 0, kind, 1)), "UNFRAMED_FAIL|HINT_REFUSED") << kind;
  }
  es_msg_plan p{};
  auto first_unframed = with([](auto& s) { s.phase = ES_HTTP_P_DEAD; s.req_begin = -1; s.hint = 1; });
  es_msg_decide(&first_unframed, &p);
  EXPECT_EQ(acts(p.act), "UNFRAMED_FAIL|HINT_REFUSED");
  EXPECT_EQ(p.covered, 300u);
  auto after_request = first_unframed;
  after_request.decided = 1;
  es_msg_decide(&after_request, &p);
  EXPECT_EQ(acts(p.act), "FOLLOW");
  auto long_head = with([](auto& s) { s.phase = ES_HTTP_P_VALUE; s.size = s.off = kHold; s.hint = 1; });
  es_msg_decide(&long_head, &p);
  EXPECT_EQ(acts(p.act), "REFUSE|FAIL_MSG|HINT_REFUSED");
  long_head.decided = 1;  // a later request's head too long to hold: the same
  es_msg_decide(&long_head, &p);
  EXPECT_EQ(acts(p.act), "REFUSE|FAIL_MSG|HINT_REFUSED");
  auto held = with([](auto& s) { s.phase = ES_HTTP_P_VALUE; s.hint = 1; });  // short: held as anywhere
  es_msg_decide(&held, &p);
  EXPECT_EQ(acts(p.act), "REWIND|CORK");
}

// Over a grid of states: the verdict covers at least one byte and never more than the
// message; a held message is only rewound; a refusal never lets the refused request's bytes
// out on the route of the bytes before it.
TEST(MsgPlan, InvariantsOverAllStates) {
  const uint32_t sizes[] = {1, 300, kHold - 1, kHold, 70000};
  const int32_t begins[] = {-1, 0, 1, 120};
  for (uint32_t size : sizes)
    for (int32_t rb : begins)
      for (uint8_t phase = ES_HTTP_P_IDLE; phase <= ES_HTTP_P_DEAD; phase++)
        for (uint32_t bits = 0; bits < 256; bits++)
          for (uint8_t kind = ES_ROUTE_PASS; kind <= ES_ROUTE_FAIL; kind++) {
            es_msg_state s{};
            s.size = size;
            s.off = bits & 32 ? size / 2 : size;
            s.req_begin = rb >= static_cast<int32_t>(size) ? -1 : rb;
            s.window = kWindow;
            s.phase = phase;
            s.tunnel = bits & 1;
            s.upgrade = (bits >> 1) & 1;
            s.pipelined = (bits >> 2) & 1;
            s.refused = (bits >> 3) & 1;
            s.second_head = !s.refused && ((bits >> 4) & 1);
            s.route_kind = kind;
            s.hint = (bits >> 6) & 1;
            s.decided = (bits >> 7) & 1;
            es_msg_plan p{};
            es_msg_decide(&s, &p);
            SCOPED_TRACE(testing::Message() << "size " << size << " req_begin " << s.req_begin << " phase "
                                            << int(phase) << " bits " << bits << " kind " << int(kind));
            ASSERT_GE(p.covered, 1u);
            ASSERT_LE(p.covered, size);
            if (p.act & ES_MSG_A_CORK) {
              ASSERT_EQ(p.act, ES_MSG_A_CORK | ES_MSG_A_REWIND);
            }
            if (p.act & ES_MSG_A_REFUSE && !(p.act & ES_MSG_A_FAIL_MSG)) {
              ASSERT_EQ(p.covered, static_cast<uint32_t>(s.req_begin));
            }
            if (s.hint) {  // nothing unrouted goes to a hint's pod
              ASSERT_FALSE(p.act & ES_MSG_A_UNROUTABLE);
              if (!s.decided) {
                ASSERT_FALSE(p.act & ES_MSG_A_FOLLOW);
              }
            } else {
              ASSERT_FALSE(p.act & ES_MSG_A_HINT_REFUSED);
            }
            if (p.act & ES_MSG_A_PIPELINED) {
              ASSERT_EQ(p.covered, static_cast<uint32_t>(s.req_begin));
            }
          }
}


// A run of the program is told apart by the size of its message against the rest the last
// verdict left (es_tx.rest): the kernel gives the next run exactly that rest, unless a redirect
// to the relay delivered less than it covered (then more comes back: those bytes were parsed).
TEST(MsgPlan, RunKindBySizeOfTheRest) {
  EXPECT_EQ(es_msg_run_kind(0, 0, 100), ES_RUN_FRESH);     // no rest expected
  EXPECT_EQ(es_msg_run_kind(0, 0, 1), ES_RUN_FRESH);
  EXPECT_EQ(es_msg_run_kind(300, 0, 300), ES_RUN_REST);    // the rest, as expected
  EXPECT_EQ(es_msg_run_kind(300, 0, 301), ES_RUN_PARTLY);  // one covered byte came back
  EXPECT_EQ(es_msg_run_kind(300, 0, 348), ES_RUN_PARTLY);  // a frame header delivered, its payload not
  EXPECT_EQ(es_msg_run_kind(300, 0, 299), ES_RUN_FRESH);   // a new send (the last one failed)
  EXPECT_EQ(es_msg_run_kind(1, 1, 1), ES_RUN_CARRY);       // the last byte of a large frame
  EXPECT_EQ(es_msg_run_kind(1, 1, 2), ES_RUN_PARTLY);      // ... after a part of that frame came back
  for (uint32_t rest = 1; rest < 70; rest++)
    for (uint32_t size = 1; size < 140; size++) {
      int k = es_msg_run_kind(rest, 0, size);
      ASSERT_EQ(k == ES_RUN_PARTLY, size > rest);
      ASSERT_EQ(k == ES_RUN_REST, size == rest);
      ASSERT_NE(k, ES_RUN_CARRY);
    }
}

// Every frame for the relay leaves a part delivered visible in the next run: a frame that
// leaves a rest of its message shows it by a longer rest; one that takes the whole message is
// one scatterlist element (pulled, at most a page) or leaves its last byte to a run of its own.
TEST(MsgPlan, RelayFrameCutShowsAPartDelivered) {
  uint8_t pull = 9, carry = 9;
  EXPECT_EQ(es_relay_frame_cut(100, 300, &pull, &carry), 100u);  // a rest follows: as it is
  EXPECT_EQ(pull, 0);
  EXPECT_EQ(carry, 0);
  EXPECT_EQ(es_relay_frame_cut(300, 300, &pull, &carry), 300u);  // the whole message, small
  EXPECT_EQ(pull, 1);
  EXPECT_EQ(carry, 0);
  EXPECT_EQ(es_relay_frame_cut(ES_RELAY_ONE_ELEM, ES_RELAY_ONE_ELEM, &pull, &carry), uint32_t{ES_RELAY_ONE_ELEM});
  EXPECT_EQ(pull, 1);
  EXPECT_EQ(es_relay_frame_cut(ES_RELAY_ONE_ELEM + 1, ES_RELAY_ONE_ELEM + 1, &pull, &carry),
            uint32_t{ES_RELAY_ONE_ELEM});  // large: its last byte next run
  EXPECT_EQ(pull, 0);
  EXPECT_EQ(carry, 1);
  EXPECT_LE(ES_RELAY_ONE_ELEM + ES_RELAY_HDR_LEN, 4096);  // a pulled frame fits an order-0 page
  for (uint32_t size = 1; size < 9000; size += 7)
    for (uint32_t len : {1u, size / 2 + 1, size}) {
      uint32_t n = es_relay_frame_cut(len, size, &pull, &carry);
      ASSERT_GE(n, 1u);
      ASSERT_LE(n, len);
      const uint32_t rest = size - n;
      // a frame is either one element (all or nothing) or leaves a rest for the next run
      ASSERT_TRUE(pull || rest > 0) << size << " " << len;
      ASSERT_EQ(carry, rest > 0 && len == size);
      if (carry) {
        // the carried byte's own frame is pulled
        uint8_t p2, c2;
        ASSERT_EQ(es_relay_frame_cut(rest, rest, &p2, &c2), rest);
        ASSERT_EQ(p2, 1);
      }
    }
}

}  // namespace
