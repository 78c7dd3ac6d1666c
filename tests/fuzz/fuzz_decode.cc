// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the fast Pod and Service decoder (agent/k8s/fastdecode.h), with ASan
// and UBSan. Input: one manifest list item's text. The law checked: when the fast path
// returns a Pod (a Service), the nlohmann path (json::parse, then add_object as the manifest
// reader does) decodes the same text to exactly that Pod (Service), and does not throw. When it declines, nothing is asked
// (declining only costs time). Seeds: tests/fuzz/corpus-decode.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <variant>

#include "k8s/decode.h"
#include "k8s/fastdecode.h"

using namespace envsteer::k8s;

namespace {

[[noreturn]] void fail(const char* why, const std::string& text, const std::string& more = {}) {
  std::fprintf(stderr, "fuzz_decode: %s%s%s\ninput: %s\n", why, more.empty() ? "" : ": ", more.c_str(),
               text.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  FastObject fast = fast_decode(text);
  if (std::holds_alternative<std::monostate>(fast)) return 0;
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) fail("fast accepted text nlohmann cannot parse", text);
  ClusterState cs;
  try {
    add_object(doc, cs);
  } catch (const std::exception& e) {
    fail("fast accepted what the nlohmann path rejects", text, e.what());
  }
  if (cs.size() != 1) fail("the nlohmann path gave not one object", text);
  if (const Pod* pod = std::get_if<Pod>(&fast)) {
    if (cs.pods.size() != 1) fail("the nlohmann path gave no Pod", text);
    if (!(cs.pods.begin()->second == *pod)) fail("the Pods differ", text);
    if (cs.pods.begin()->first != object_key(pod->ns, pod->name)) fail("the keys differ", text);
    if (fast_decode_service(text)) fail("a Pod is a Service too", text);
  } else {
    const Service& svc = std::get<Service>(fast);
    if (cs.services.size() != 1) fail("the nlohmann path gave no Service", text);
    if (!(cs.services.begin()->second == svc)) fail("the Services differ", text);
    if (cs.services.begin()->first != object_key(svc.ns, svc.name)) fail("the keys differ", text);
    if (fast_decode_pod(text)) fail("a Service is a Pod too", text);
  }
  return 0;
}
