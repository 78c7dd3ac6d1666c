// SPDX-License-Identifier: Apache-2.0
// Participation (issue 17): which of this node's pods take part in envsteer.
// Only pods that take part get the cgroup programs and an es_pods entry; the
// others run no envsteer program at all (their connects go wherever they
// would without envsteer). A pod takes part when
//   - the agent runs with --participation all, or
//   - it carries the env label (it is in an environment), or
//   - its labels match the participation selector (default
//     `envsteer.io/enabled=true`), or
//   - the labels of its Namespace match the namespace selector (default
//     `envsteer.io/enabled=true`).
// Services are steered for every caller that takes part, whatever their pods.
#pragma once

#include <string>
#include <vector>

#include "k8s/objects.h"

namespace envsteer {

inline constexpr const char* kDefaultParticipationSelector = "envsteer.io/enabled=true";
inline constexpr const char* kDefaultParticipationNamespaceSelector = "envsteer.io/enabled=true";

// An equality-based label selector, as `kubectl -l` takes it: terms joined by
// ',' (all must hold), each `key=value`, `key==value`, `key!=value`, `key`
// (present) or `!key` (absent). "" matches nothing here (use --participation
// all for every pod).
class LabelSelector {
 public:
  LabelSelector() = default;
  // Throws std::invalid_argument naming the bad term.
  static LabelSelector parse(const std::string& text);
  bool matches(const k8s::Labels& labels) const;
  bool empty() const { return terms_.empty(); }
  const std::string& text() const { return text_; }
  bool operator==(const LabelSelector& o) const { return text_ == o.text_; }

 private:
  enum class Op { Eq, Ne, Exists, Absent };
  struct Term {
    std::string key, value;
    Op op = Op::Eq;
  };
  std::vector<Term> terms_;
  std::string text_;
};

struct Participation {
  bool all = true;  // every local pod (the model's default; the agent's is "selected")
  LabelSelector selector;            // on the pod's labels
  LabelSelector namespace_selector;  // on its Namespace's labels ("" matches none)
  // Whether pod p takes part, given the env label's name and its Namespace's
  // labels (nullptr: the Namespace is not known).
  bool takes_part(const k8s::Pod& p, const std::string& env_label, const k8s::Labels* ns_labels) const;
  // Whether a Namespace with these labels makes all its pods take part.
  bool namespace_takes_part(const k8s::Labels* ns_labels) const {
    return !all && ns_labels && namespace_selector.matches(*ns_labels);
  }
};

}  // namespace envsteer
