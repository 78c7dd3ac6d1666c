// SPDX-License-Identifier: Apache-2.0
// A fast decode path for the common objects of a manifest list: one v1 Pod or v1 Service as
// JSON text, decoded with simdjson (a validating DOM parser) straight into k8s::Pod or
// k8s::Service, without nlohmann's DOM (issue 18: its maps and lexer were most of the
// start-up read).
//
// Never wrong: a Pod it returns is exactly k8s::decode_pod(nlohmann::json::parse(text)) (a
// Service, decode_service's), as add_object() would give it for the item. Anything else it
// declines, and the caller takes the nlohmann path, which decodes it or says what is wrong
// as before: text that is not valid JSON, not a v1 Pod or v1 Service, a key the decoder
// reads given twice (nlohmann keeps the last value, simdjson would find the first), any
// field the decoder would reject or that has an unexpected type, numbers other than plain
// integers.
#pragma once

#include <optional>
#include <string_view>
#include <variant>

#include "k8s/objects.h"

namespace envsteer::k8s {

// One list item: a v1 Pod, a v1 Service, or nothing (declined).
using FastObject = std::variant<std::monostate, Pod, Service>;
FastObject fast_decode(std::string_view item_json);

// fast_decode's Pod (a Service or anything else: nullopt); its Service.
std::optional<Pod> fast_decode_pod(std::string_view item_json);
std::optional<Service> fast_decode_service(std::string_view item_json);

}  // namespace envsteer::k8s
