/* SPDX-License-Identifier: Apache-2.0 */
/* Token bucket of the trace rate limit. Pure: the kernel keeps one bucket per
 * CPU; the unit tests run the same function. */
#ifndef ENVSTEER_RATELIMIT_H
#define ENVSTEER_RATELIMIT_H

#include "compat.h"
#include "../../maps/abi.h"

/* Takes one token at now_ns: 1 when the event may be emitted, else 0. A bucket
 * never seen (last_ns 0) starts full. rate is per second, burst the bucket
 * size; tokens are kept in thousandths so that low rates refill smoothly. */
ES_INLINE int es_bucket_take(struct es_trace_bucket *b, __u64 now_ns, __u32 rate, __u32 burst)
{
	__u64 cap = (__u64)(burst ? burst : 1) * 1000;
	__u64 add;

	if (b->last_ns == 0 || now_ns < b->last_ns) {
		b->tokens_milli = cap;
	} else {
		__u64 dt = now_ns - b->last_ns;

		/* more than a few seconds refill the bucket anyway (no overflow) */
		if (dt > 4000000000ULL * 16)
			add = cap;
		else
			add = dt * rate / 1000000; /* ns x (events/s) x 1000 / 1e9 */
		b->tokens_milli = b->tokens_milli + add > cap ? cap : b->tokens_milli + add;
	}
	b->last_ns = now_ns;
	if (b->tokens_milli < 1000)
		return 0;
	b->tokens_milli -= 1000;
	return 1;
}

#endif
