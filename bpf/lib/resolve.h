/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The resolution walk of the routing rule (README.md, "The routing rule"): for frontend S and environment
 * E, take the first of E, parent(E), ... that has a ready backend of S, else
 * the default environment. Shared by connect() in the kernel and by
 * `envsteer explain`, which runs the same walk over the live maps.
 *
 * The includer defines, before including this header:
 *   ES_LOOKUP_SET(ctx, key)  -> const struct es_set *   (NULL when absent)
 *   ES_LOOKUP_ENV(ctx, id)   -> const struct es_env *   (NULL when absent)
 */
#ifndef ENVSTEER_RESOLVE_H
#define ENVSTEER_RESOLVE_H

#include "compat.h"
#include "../../maps/abi.h"

enum es_outcome {
	ES_OUT_NONE = 0,     /* no ready backend at any level: refuse */
	ES_OUT_OWN = 1,      /* the requested environment itself */
	ES_OUT_FALLBACK = 2, /* an ancestor of it */
	ES_OUT_DEFAULT = 3,  /* the default environment, outside the chain */
};

struct es_resolution {
	__u32 env_id; /* environment whose backends are used */
	__u32 level;  /* steps walked up the chain (0 = own) */
	__u32 count;  /* backends in that set */
	__u32 outcome;
};

ES_INLINE int es_resolve(void *ctx, __u32 svc_id, __u32 env_id, __u32 default_env,
			 struct es_resolution *res)
{
	const struct es_set *set;
	const struct es_env *env;
	struct es_set_key key = { .svc_id = svc_id };
	__u32 e = env_id;
	int i;

	res->env_id = ES_ENV_NONE;
	res->level = 0;
	res->count = 0;
	res->outcome = ES_OUT_NONE;

	for (i = 0; i < ES_MAX_ENV_DEPTH; i++) {
		if (e == ES_ENV_NONE)
			break;
		key.env_id = e;
		set = ES_LOOKUP_SET(ctx, &key);
		if (set && set->count > 0) {
			res->env_id = e;
			res->level = i;
			res->count = set->count;
			res->outcome = i == 0 ? ES_OUT_OWN : ES_OUT_FALLBACK;
			return 1;
		}
		env = ES_LOOKUP_ENV(ctx, e);
		if (!env)
			break;
		e = env->parent_id;
	}

	if (default_env == ES_ENV_NONE)
		return 0;
	key.env_id = default_env;
	set = ES_LOOKUP_SET(ctx, &key);
	if (set && set->count > 0) {
		res->env_id = default_env;
		res->level = i;
		res->count = set->count;
		res->outcome = ES_OUT_DEFAULT;
		return 1;
	}
	return 0;
}

#endif
