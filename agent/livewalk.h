// SPDX-License-Identifier: Apache-2.0
// The walk of the routing rule (bpf/lib/resolve.h) over the live maps, as the
// BPF programs run it: for `envsteer explain` and the HTTP/2 endpoint. Include
// it once per file, instead of resolve.h.
#pragma once

#include <cstdint>

#include "maps/maps.h"

namespace envsteer::livewalk {

struct Ctx {
  const maps::MapBackend* live;
  es_set set;
  es_env env;
};

inline const es_set* set_of(void* ctx, const es_set_key* k) {
  auto* c = static_cast<Ctx*>(ctx);
  return c->live->lookup(maps::MapId::Sets, k, &c->set) ? &c->set : nullptr;
}

inline const es_env* env_of(void* ctx, __u32 id) {
  auto* c = static_cast<Ctx*>(ctx);
  return c->live->lookup(maps::MapId::Envs, &id, &c->env) ? &c->env : nullptr;
}

}  // namespace envsteer::livewalk

#define ES_LOOKUP_SET(ctx, key) envsteer::livewalk::set_of((ctx), (key))
#define ES_LOOKUP_ENV(ctx, id) envsteer::livewalk::env_of((ctx), (id))
extern "C" {
#include "bpf/lib/resolve.h"
}

namespace envsteer {

// es_resolve over the live maps: 0 when no level (nor the default) has a ready backend.
inline int resolve_live(const maps::MapBackend& live, uint32_t svc_id, uint32_t env_id, uint32_t default_env,
                        es_resolution* res) {
  livewalk::Ctx c{&live, {}, {}};
  return es_resolve(&c, svc_id, env_id, default_env, res);
}

}  // namespace envsteer
