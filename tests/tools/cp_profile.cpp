// SPDX-License-Identifier: Apache-2.0
// The control plane's user-space part alone, for profiling (perf, heaptrack,
// callgrind): reads a manifest directory as the agent does (ManifestReader),
// builds the incremental model and applies it through the reconciler to maps
// that only count the writes. Then pod label changes: a file rewritten with one
// pod's env label changed, read again and applied. Prints time and RSS by phase.
//
//   tests/tools/cp_manifests.py DIR && envsteer_cp_profile DIR [EVENTS [KEPT_DIR]]
//   (DIR: the control-plane bench's cluster as manifest files; EVENTS rewrites them;
//   KEPT_DIR: where the reader keeps the files' texts, "" = in memory, default $TMPDIR)
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <optional>
#include <string>

#include "maps/maps.h"
#include "model.h"
#include "procstatus.h"
#include "reconciler.h"
#include "sources/manifest.h"

using namespace envsteer;
namespace fs = std::filesystem;

namespace {

class CountingMaps : public maps::MapBackend {
 public:
  size_t writes = 0;
  int update(maps::MapId, const void*, const void*) override { return ++writes, 0; }
  int remove(maps::MapId, const void*) override { return ++writes, 0; }
  bool lookup(maps::MapId, const void*, void*) const override { return false; }
  void for_each(maps::MapId, const std::function<void(const void*, const void*)>&) const override {}
  uint32_t capacity(maps::MapId) const override { return 0; }
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void phase(const char* what, double ms) {
  std::printf("%-28s %9.1f ms   RSS %6.1f MiB  peak %6.1f MiB\n", what, ms, proc_self_status_mib("VmRSS"),
              proc_self_status_mib("VmHWM"));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: envsteer_cp_profile DIR [EVENTS [KEPT_DIR]]\n";
    return 2;
  }
  const fs::path dir = argv[1];
  const int events = argc > 2 ? std::atoi(argv[2]) : 20;
  ModelOptions o;
  o.default_env = "dev";
  phase("start", 0);
  auto t0 = std::chrono::steady_clock::now();
  std::optional<fs::path> kept;
  if (argc > 3) kept = fs::path(argv[3]);
  sources::ManifestReader reader(dir, {}, kept);
  std::printf("texts kept %s\n", reader.texts_in_file() ? "in a file" : "in memory");
  k8s::ClusterState cs = reader.read_all();
  phase("read_all (parse + decode)", ms_since(t0));
  t0 = std::chrono::steady_clock::now();
  IncrementalModel inc(o);
  inc.reset(std::move(cs));
  const DesiredState& want = inc.state();
  phase("model", ms_since(t0));
  t0 = std::chrono::steady_clock::now();
  CountingMaps maps;
  Reconciler rec(maps, '.');
  inc.take_delta();
  rec.apply(want);
  phase("reconciler (full apply)", ms_since(t0));
  std::printf("  %zu frontends, %zu sets, %zu envs, %zu map writes\n", want.frontends.size(), want.sets.size(),
              want.envs.size(), maps.writes);

  malloc_trim(0);  // as the agent does after a full read
  phase("after malloc_trim", 0);
  // re-read of everything (SIGHUP): the agent's path
  t0 = std::chrono::steady_clock::now();
  auto changes = reader.read_every_file();
  phase("SIGHUP: read_every_file", ms_since(t0));
  std::printf("  %zu change(s)\n", changes.size());

  // label changes: rewrite one file with one pod's label changed
  std::vector<double> read_ms, apply_ms;
  for (int e = 0; e < events; e++) {
    int i = (e * 7919) % 10000;
    std::string name = "ns-" + std::to_string(i % 100) + ".json";
    std::ifstream in(dir / name);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    std::string pod = "\"name\":\"pod-" + std::to_string(i) + "-1\"";
    size_t at = text.find(pod);
    size_t lab = text.find("\"virtual-env\":\"dev.e", at);
    size_t end = text.find('"', lab + 20);
    text.replace(lab + 20, end - (lab + 20), std::to_string((e * 31 + 7) % 1000));
    fs::path tmp = dir.parent_path() / (name + ".tmp");
    std::ofstream(tmp) << text;
    fs::rename(tmp, dir / name);
    t0 = std::chrono::steady_clock::now();
    auto ch = reader.read_changed({name});
    read_ms.push_back(ms_since(t0));
    t0 = std::chrono::steady_clock::now();
    for (auto& c : ch) inc.apply(std::move(c));
    const DesiredState& w = inc.state();
    ModelDelta d = inc.take_delta();
    size_t before = maps.writes;
    rec.apply(w, d);
    apply_ms.push_back(ms_since(t0));
    if (e == 0) std::printf("  event 0: %zu change(s), %zu map writes\n", ch.size(), maps.writes - before);
  }
  std::sort(read_ms.begin(), read_ms.end());
  std::sort(apply_ms.begin(), apply_ms.end());
  if (events > 0)
    std::printf("events: read p50 %.2f ms max %.2f; model+maps p50 %.2f ms max %.2f\n", read_ms[read_ms.size() / 2],
                read_ms.back(), apply_ms[apply_ms.size() / 2], apply_ms.back());
  phase("after events", 0);
  return 0;
}
