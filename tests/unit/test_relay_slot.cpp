// SPDX-License-Identifier: Apache-2.0
// es_relay_slot (maps/abi.h): the relay socket of a pod's clients, the same
// function in the programs and the agent.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>

#include "maps/abi.h"

namespace {

TEST(RelaySlot, InRangeAndStable) {
  for (uint32_t n = 1; n <= ES_RELAY_SOCKETS_MAX; n++)
    for (uint64_t pod = 0; pod < 5000; pod += 7) {
      uint32_t s = es_relay_slot(pod, n);
      EXPECT_LT(s, n);
      EXPECT_EQ(s, es_relay_slot(pod, n));
    }
  EXPECT_EQ(es_relay_slot(12345, 1), 0u);
  EXPECT_EQ(es_relay_slot(12345, 0), 0u);  // no sockets: never an index past the array
}

// cgroup ids are inode numbers, often close together: they must still spread.
TEST(RelaySlot, ConsecutiveCgroupIdsSpreadOverTheSockets) {
  constexpr uint32_t n = 4, pods = 1000;
  std::array<uint32_t, n> per{};
  for (uint64_t pod = 4096; pod < 4096 + pods; pod++) per[es_relay_slot(pod, n)]++;
  for (uint32_t c : per) {
    EXPECT_GT(c, pods / n * 3 / 4);
    EXPECT_LT(c, pods / n * 5 / 4);
  }
}

}  // namespace
