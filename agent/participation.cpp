// SPDX-License-Identifier: Apache-2.0
#include "participation.h"

#include <cctype>
#include <stdexcept>

namespace envsteer {

namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// A label key ([prefix/]name) or value: letters, digits, '-', '_', '.' ('/' once in a key).
bool label_text_ok(const std::string& s, bool key) {
  if (s.empty()) return !key;
  if (s.size() > (key ? 316u : 63u)) return false;
  int slashes = 0;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.') continue;
    if (key && c == '/' && ++slashes == 1) continue;
    return false;
  }
  return true;
}

}  // namespace

LabelSelector LabelSelector::parse(const std::string& text) {
  LabelSelector sel;
  sel.text_ = text;
  if (trim(text).empty()) return sel;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string term = trim(text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    pos = comma == std::string::npos ? text.size() + 1 : comma + 1;
    auto bad = [&](const char* why) {
      return std::invalid_argument("label selector \"" + text + "\": term \"" + term + "\": " + why);
    };
    if (term.empty()) throw bad("empty term");
    Term t;
    size_t op;
    if ((op = term.find("!=")) != std::string::npos) {
      t.op = Op::Ne;
      t.key = trim(term.substr(0, op));
      t.value = trim(term.substr(op + 2));
    } else if ((op = term.find("==")) != std::string::npos) {
      t.key = trim(term.substr(0, op));
      t.value = trim(term.substr(op + 2));
    } else if ((op = term.find('=')) != std::string::npos) {
      t.key = trim(term.substr(0, op));
      t.value = trim(term.substr(op + 1));
    } else if (term[0] == '!') {
      t.op = Op::Absent;
      t.key = trim(term.substr(1));
    } else {
      t.op = Op::Exists;
      t.key = term;
    }
    if (!label_text_ok(t.key, true)) throw bad("not a label key (set-based terms such as `in (...)` are not supported)");
    if (!label_text_ok(t.value, false)) throw bad("not a label value");
    sel.terms_.push_back(std::move(t));
  }
  return sel;
}

bool LabelSelector::matches(const k8s::Labels& labels) const {
  if (terms_.empty()) return false;
  for (const auto& t : terms_) {
    auto it = labels.find(t.key);
    bool has = it != labels.end();
    switch (t.op) {
      case Op::Eq:
        if (!has || it->second != t.value) return false;
        break;
      case Op::Ne:
        if (has && it->second == t.value) return false;
        break;
      case Op::Exists:
        if (!has) return false;
        break;
      case Op::Absent:
        if (has) return false;
        break;
    }
  }
  return true;
}

bool Participation::takes_part(const k8s::Pod& p, const std::string& env_label, const k8s::Labels* ns_labels) const {
  if (all) return true;
  auto it = p.labels.find(env_label);
  if (it != p.labels.end() && !it->second.empty()) return true;
  return selector.matches(p.labels) || namespace_takes_part(ns_labels);
}

}  // namespace envsteer
