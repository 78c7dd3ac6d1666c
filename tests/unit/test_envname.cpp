// SPDX-License-Identifier: Apache-2.0
// Environment names (bpf/lib/envname.h and its C++ face agent/envname.h):
// validation by Kubernetes label-value rules plus non-empty segments, parent,
// depth and the fallback chain of DESIGN.md "Semantics".
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "envname.h"

namespace envsteer {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

bool valid(const std::string& s, char splitter = '.') { return env_valid(s, splitter); }

int depth(const std::string& s, char splitter = '.') {
  return es_env_depth(s.data(), static_cast<int>(s.size()), splitter);
}

TEST(EnvNameValid, AcceptsLabelValues) {
  for (const char* s : {"dev", "d", "0", "Dev", "dev.proj1", "dev.proj1.alice", "dev.proj-abc",
                        "a_b", "a-b", "a.b.c.d", "9.8.7", "A-._Z"}) {
    EXPECT_TRUE(valid(s)) << s;
  }
}

TEST(EnvNameValid, RejectsEmpty) {
  EXPECT_FALSE(valid(""));
  EXPECT_FALSE(es_env_valid("dev", 0, '.'));
  EXPECT_FALSE(es_env_valid("dev", -1, '.'));
}

TEST(EnvNameValid, AtMost63Bytes) {
  const std::string n63(63, 'a');
  const std::string n64(64, 'a');
  EXPECT_TRUE(valid(n63));
  EXPECT_FALSE(valid(n64));
  EXPECT_FALSE(valid(std::string(200, 'a')));
  // The same with segments: 31 "a." + "a" = 63 bytes, 32 segments.
  std::string segs;
  for (int i = 0; i < 31; i++) segs += "a.";
  segs += "a";
  ASSERT_EQ(segs.size(), 63u);
  EXPECT_TRUE(valid(segs));
  EXPECT_FALSE(valid(segs + ".a"));
  // A 64th byte that is valid by itself still makes the name too long.
  EXPECT_FALSE(valid(n63 + "b"));
}

TEST(EnvNameValid, FirstAndLastByteAlphanumeric) {
  for (const char* s : {"-dev", "dev-", ".dev", "dev.", "_dev", "dev_", ".", "-", "_", "..", "a.", ".a"}) {
    EXPECT_FALSE(valid(s)) << s;
  }
}

TEST(EnvNameValid, EmptySegmentsRejected) {
  EXPECT_FALSE(valid("a..b"));
  EXPECT_FALSE(valid("dev..proj1"));
  EXPECT_FALSE(valid("a...b"));
  // Only the splitter makes segments: with '-' as splitter "a..b" is a valid
  // label value with one segment, "a--b" has an empty one.
  EXPECT_TRUE(valid("a..b", '-'));
  EXPECT_FALSE(valid("a--b", '-'));
  EXPECT_TRUE(valid("a--b", '.'));
  EXPECT_FALSE(valid("a__b", '_'));
  EXPECT_TRUE(valid("a__b", '.'));
}

TEST(EnvNameValid, RejectsCharactersOutsideLabelAlphabet) {
  for (const char* s : {"a b", "a/b", "a:b", "a@b", "a,b", "dev\tx", "a+b", "a*b", "a~b", "é", "aé",
                        "a\xff" "b"}) {
    EXPECT_FALSE(valid(s)) << s;
  }
  // An embedded NUL is a byte like any other: not a label character.
  EXPECT_FALSE(valid(std::string("a\0b", 3)));
  // Leading/trailing whitespace is not trimmed by the validator.
  EXPECT_FALSE(valid(" dev"));
  EXPECT_FALSE(valid("dev "));
}

TEST(EnvNameValid, OnlyTheGivenLengthIsRead) {
  // es_env_valid looks at s[0..len) only (the BPF side passes a fixed buffer).
  const char buf[] = "dev.x!!!";
  EXPECT_TRUE(es_env_valid(buf, 5, '.'));
  EXPECT_FALSE(es_env_valid(buf, 6, '.'));
  EXPECT_FALSE(es_env_valid(buf, 4, '.'));  // "dev." ends with the splitter
}

TEST(EnvNameParent, DotSplitter) {
  EXPECT_EQ(env_parent("dev.proj1.alice", '.'), "dev.proj1");
  EXPECT_EQ(env_parent("dev.proj1", '.'), "dev");
  EXPECT_EQ(env_parent("dev", '.'), "");
  // Unknown names fall back segment by segment, never by characters.
  EXPECT_EQ(env_parent("dev.proj-abc", '.'), "dev");
  EXPECT_EQ(env_parent("dev_x.y-z", '.'), "dev_x");
}

TEST(EnvNameParent, OtherSplitters) {
  EXPECT_EQ(env_parent("dev-proj1-alice", '-'), "dev-proj1");
  EXPECT_EQ(env_parent("dev.proj1-alice", '-'), "dev.proj1");
  EXPECT_EQ(env_parent("dev.proj1", '-'), "");
  EXPECT_EQ(env_parent("dev_proj1_alice", '_'), "dev_proj1");
  EXPECT_EQ(env_parent("dev-proj1_alice.x", '_'), "dev-proj1");
}

TEST(EnvNameParent, ParentLenOfOneSegmentIsZero) {
  EXPECT_EQ(es_env_parent_len("dev", 3, '.'), 0);
  EXPECT_EQ(es_env_parent_len("a.b", 3, '.'), 1);
  EXPECT_EQ(es_env_parent_len("a.b.c", 5, '.'), 3);
}

TEST(EnvNameDepth, CountsLevelsBelowTheRoot) {
  // 0 for a one-segment name: the es_env.depth convention of maps/abi.h.
  EXPECT_EQ(depth("dev"), 0);
  EXPECT_EQ(depth("dev.proj1"), 1);
  EXPECT_EQ(depth("dev.proj1.alice"), 2);
  EXPECT_EQ(depth("dev-proj1.alice"), 1);
  EXPECT_EQ(depth("dev-proj1.alice", '-'), 1);
  EXPECT_EQ(depth("a-b-c-d", '-'), 3);
  EXPECT_EQ(depth("a_b_c", '_'), 2);
  std::string deepest;
  for (int i = 0; i < 31; i++) deepest += "a.";
  deepest += "a";
  EXPECT_EQ(depth(deepest), ES_MAX_ENV_DEPTH - 1);
}

TEST(EnvNameChain, WalksToTheRoot) {
  EXPECT_THAT(env_chain("dev.proj1.alice", '.'), ElementsAre("dev.proj1.alice", "dev.proj1", "dev"));
  EXPECT_THAT(env_chain("dev", '.'), ElementsAre("dev"));
  EXPECT_THAT(env_chain("", '.'), IsEmpty());
  EXPECT_THAT(env_chain("dev.proj-abc", '.'), ElementsAre("dev.proj-abc", "dev"));
  EXPECT_THAT(env_chain("a-b.c-d", '-'), ElementsAre("a-b.c-d", "a-b.c", "a"));
}

TEST(EnvNameChain, LongestChainFitsTheBpfWalk) {
  std::string deepest;
  for (int i = 0; i < 31; i++) deepest += "a.";
  deepest += "a";
  auto chain = env_chain(deepest, '.');
  EXPECT_EQ(chain.size(), static_cast<size_t>(ES_MAX_ENV_DEPTH));
  EXPECT_EQ(chain.back(), "a");
  for (size_t i = 0; i < chain.size(); i++)
    EXPECT_EQ(depth(chain[i]), static_cast<int>(chain.size() - 1 - i)) << chain[i];
}

TEST(EnvNameSplitter, OnlyNonLeadingLabelCharacters) {
  EXPECT_TRUE(es_splitter_valid('.'));
  EXPECT_TRUE(es_splitter_valid('-'));
  EXPECT_TRUE(es_splitter_valid('_'));
  for (char c : {'a', 'Z', '0', '/', ' ', ':', '\0', '+', ','}) EXPECT_FALSE(es_splitter_valid(c)) << int(c);
}

}  // namespace
}  // namespace envsteer

// es_env_copy_words (bpf/lib/envname.h: es_rx_headers_done, the hand-off) copies
// an env name eight bytes at a time: the padded words and the splitter count must be the byte loop's
// (NUL past the length, every splitter below it), for any bytes in the buffer,
// including NULs, splitters and bytes >= 0x80 past the name.
TEST(EnvNameWords, SameAsTheByteLoop) {
  std::mt19937_64 rng(20261203);
  const char alphabet[] = {'a', 'Z', '0', '.', '-', '_', '\0', '\x80', '\xff', '\x7f', '\x01', '.'};
  for (int round = 0; round < 20000; round++) {
    unsigned char buf[ES_ENV_NAME_MAX];
    for (auto& b : buf)
      b = static_cast<unsigned char>(round % 3 == 0 ? rng() & 0xff : alphabet[rng() % sizeof(alphabet)]);
    const __u32 n = 1 + static_cast<__u32>(rng() % (ES_ENV_NAME_MAX - 1));
    const char splitter = "._-"[round % 3];
    unsigned char want[ES_ENV_NAME_MAX], got[ES_ENV_NAME_MAX];
    __u32 want_depth = 0, got_depth = 0;
    for (__u32 i = 0; i < ES_ENV_NAME_MAX; i++) {
      want[i] = i < n ? buf[i] : 0;
      want_depth += want[i] == static_cast<unsigned char>(splitter);
    }
    alignas(8) char src[ES_ENV_NAME_MAX], dst[ES_ENV_NAME_MAX];
    std::memcpy(src, buf, sizeof src);
    std::memset(dst, 0x5a, sizeof dst);
    got_depth = es_env_copy_words(dst, src, n, splitter);
    std::memcpy(got, dst, sizeof got);
    ASSERT_EQ(0, std::memcmp(want, got, sizeof want)) << "round " << round << " n " << n;
    ASSERT_EQ(want_depth, got_depth) << "round " << round << " n " << n;
  }
}

// No name (the hand-off's record of a request without one): all NULs, depth 0.
TEST(EnvNameWords, CopyOfNoNameIsAllNul) {
  alignas(8) char dst[ES_ENV_NAME_MAX];
  std::memset(dst, 0x5a, sizeof dst);
  EXPECT_EQ(es_env_copy_words(dst, nullptr, 0, '.'), 0u);
  for (char ch : dst) EXPECT_EQ(ch, 0);
}

TEST(EnvNameWords, CountsEveryByteOfAWord) {
  __u64 w;
  std::memcpy(&w, "........", 8);
  EXPECT_EQ(es_env_word_count(w, '.'), 8u);
  std::memcpy(&w, ".a.b.c.d", 8);
  EXPECT_EQ(es_env_word_count(w, '.'), 4u);
  EXPECT_EQ(es_env_word_count(w, '-'), 0u);
  EXPECT_EQ(es_env_word_count(0, '.'), 0u);
  EXPECT_EQ(es_env_word_pad(w, 0, 3), 0x612eULL | (0x2eULL << 16));  // ".a." then NULs
  EXPECT_EQ(es_env_word_pad(w, 8, 8), 0u);
  EXPECT_EQ(es_env_word_pad(w, 8, 16), w);
}
