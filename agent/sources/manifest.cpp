// SPDX-License-Identifier: Apache-2.0
#include "sources/manifest.h"

#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "k8s/decode.h"

namespace envsteer::sources {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The directory entry that Kubernetes swaps atomically when a ConfigMap volume changes.
constexpr const char* kConfigMapDataLink = "..data";

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ManifestError(file.string() + ": cannot open: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ManifestError(file.string() + ": read error");
  return text.str();
}

void add_document(const fs::path& file, size_t n, const json& doc, k8s::ClusterState& out) {
  if (doc.is_null()) return;  // empty document
  try {
    k8s::add_object(doc, out);
  } catch (const k8s::DecodeError& e) {
    throw ManifestError(file.string() + ": document " + std::to_string(n) + ": " + e.what());
  }
}

std::string yaml_error(const fs::path& file, const YAML::Exception& e) {
  if (e.mark.is_null()) return file.string() + ": " + e.msg;
  return file.string() + ": line " + std::to_string(e.mark.line + 1) + " column " +
         std::to_string(e.mark.column + 1) + ": " + e.msg;
}

void load_yaml(const fs::path& file, const std::string& text, k8s::ClusterState& out) {
  std::vector<json> docs;
  try {
    for (const YAML::Node& node : YAML::LoadAll(text)) docs.push_back(k8s::yaml_to_json(node));
  } catch (const YAML::Exception& e) {
    throw ManifestError(yaml_error(file, e));
  }
  for (size_t i = 0; i < docs.size(); ++i) add_document(file, i + 1, docs[i], out);
}

std::string json_error(const fs::path& file, const json::parse_error& e) {
  // nlohmann: "[json.exception.parse_error.101] parse error at line 3, column 5: <what>"
  static const std::regex re(".*parse error at line ([0-9]+), column ([0-9]+): (.*)");
  std::cmatch m;
  if (std::regex_match(e.what(), m, re))
    return file.string() + ": line " + m[1].str() + " column " + m[2].str() + ": " + m[3].str();
  return file.string() + ": " + e.what();
}

bool is_list_kind(const json& doc) {
  auto k = doc.is_object() ? doc.find("kind") : doc.end();
  if (k == doc.end() || !k->is_string()) return false;
  const auto& s = k->get_ref<const std::string&>();
  return s.size() >= 4 && s.compare(s.size() - 4, 4, "List") == 0;
}

// The whole document as one DOM, decoded after the parse.
void load_json_dom(const fs::path& file, const std::string& text, k8s::ClusterState& out) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ManifestError(json_error(file, e));
  }
  add_document(file, 1, doc, out);
}

// A list (`kind: List`, a typed list) is decoded item by item while it is
// parsed: each item of the top-level `items` that names its kind is decoded
// as soon as it is complete and dropped, so only one item's DOM exists at a
// time (a 46 MB file of 100 000 pods would be ~10x that as one DOM). Items
// without a kind (typed lists) stay for the list's own decoding. Same result
// and errors as the whole-DOM path: a decode error is kept until the parse
// ends (a syntax error anywhere is reported first, as before); a top level
// that turns out not to be a list is decoded again the plain way.
void load_json(const fs::path& file, const std::string& text, k8s::ClusterState& out) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return;  // empty file
  k8s::ClusterState items;
  std::optional<ManifestError> decode_error;
  bool streamed = false, in_items = false, items_key = false;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth == 1 && ev == json::parse_event_t::key) {
      items_key = parsed.is_string() && parsed.get_ref<const std::string&>() == "items";
    } else if (depth == 1 && ev == json::parse_event_t::array_start) {
      in_items = items_key;
    } else if (depth == 1 && ev == json::parse_event_t::array_end) {
      in_items = false;
    } else if (in_items && depth == 2 && ev == json::parse_event_t::object_end && parsed.is_object() &&
               parsed.contains("kind")) {
      streamed = true;
      if (!decode_error) {
        try {
          k8s::add_object(parsed, items);
        } catch (const k8s::DecodeError& e) {
          decode_error.emplace(file.string() + ": document 1: " + e.what());
        }
      }
      return false;  // decoded: not kept in the DOM
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text, cb);
  } catch (const json::parse_error& e) {
    throw ManifestError(json_error(file, e));
  }
  if (streamed && !is_list_kind(doc)) {  // "items" of something else: the plain way
    load_json_dom(file, text, out);
    return;
  }
  if (decode_error) throw *decode_error;
  add_document(file, 1, doc, items);  // the list's remaining items (typed lists) and its checks
  auto move_into = [&](auto& into, auto& from, const char* kind) {
    for (auto& [key, obj] : from)
      if (!into.emplace(key, std::move(obj)).second)
        throw ManifestError(file.string() + ": document 1: " + kind + " " + key +
                            ": metadata.name: duplicate: another " + kind +
                            " with this namespace/name was already defined");
  };
  move_into(out.services, items.services, "Service");
  move_into(out.pods, items.pods, "Pod");
  move_into(out.slices, items.slices, "EndpointSlice");
  move_into(out.namespaces, items.namespaces, "Namespace");
}

void parse_file(const fs::path& file, const std::string& text, k8s::ClusterState& out) {
  if (file.extension() == ".json")
    load_json(file, text, out);
  else
    load_yaml(file, text, out);
}

void load_file(const fs::path& file, k8s::ClusterState& out) { parse_file(file, read_file(file), out); }

// The objects of one file as last parsed, and what its text was (size and hash).
struct ParsedFile {
  size_t size = 0;
  size_t hash = 0;
  k8s::ClusterState objects;
};

// Per manifest directory, its files' parsed objects. A watched directory of many files
// (one per namespace, say) changes one file at a time; re-parsing all of them on every
// change cost seconds at 100 000 pods. Files are still read in full every time (a cheap
// part): only a file whose size and content hash are unchanged skips parsing.
std::mutex g_parsed_mu;
std::map<std::string, std::map<std::string, ParsedFile>> g_parsed;

template <typename T>
bool merge_unique(std::map<std::string, T>& into, const std::map<std::string, T>& from) {
  for (const auto& [key, obj] : from)
    if (!into.emplace(key, obj).second) return false;
  return true;
}

// load_file() for every file of a directory, reusing the objects of unchanged files.
// A name defined in two files falls back to the plain path, which throws the usual error.
k8s::ClusterState load_directory(const fs::path& dir, const std::vector<fs::path>& files) {
  std::lock_guard<std::mutex> g(g_parsed_mu);
  auto& cache = g_parsed[dir.string()];
  std::map<std::string, ParsedFile> next;
  k8s::ClusterState state;
  bool clash = false;
  try {
    for (const fs::path& file : files) {
      std::string text = read_file(file);
      size_t hash = std::hash<std::string>{}(text);
      ParsedFile pf;
      auto it = cache.find(file.string());
      if (it != cache.end() && it->second.size == text.size() && it->second.hash == hash) {
        pf = std::move(it->second);
      } else {
        pf.size = text.size();
        pf.hash = hash;
        parse_file(file, text, pf.objects);
      }
      clash = clash || !merge_unique(state.services, pf.objects.services) ||
              !merge_unique(state.pods, pf.objects.pods) || !merge_unique(state.slices, pf.objects.slices) ||
              !merge_unique(state.namespaces, pf.objects.namespaces);
      next.emplace(file.string(), std::move(pf));
    }
  } catch (...) {
    g_parsed.erase(dir.string());  // entries were moved out of it
    throw;
  }
  if (clash) {
    g_parsed.erase(dir.string());
    k8s::ClusterState plain;
    for (const fs::path& file : files) load_file(file, plain);
    return plain;  // not reached when names clash: load_file throws
  }
  cache = std::move(next);
  return state;
}

std::vector<fs::path> manifest_files(const fs::path& dir) {
  std::vector<fs::path> files;
  try {
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
      if (!is_manifest_file_name(entry.path().filename().string())) continue;
      std::error_code ec;
      if (entry.is_regular_file(ec)) files.push_back(entry.path());  // follows symlinks
    }
  } catch (const fs::filesystem_error& e) {
    throw ManifestError(dir.string() + ": cannot list: " + e.code().message());
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return files;
}

}  // namespace

bool is_manifest_file_name(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.ends_with("~")) return false;
  return name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
}

k8s::ClusterState load_manifests(const fs::path& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found)
    throw ManifestError(path.string() + ": no such file or directory");
  if (ec) throw ManifestError(path.string() + ": " + ec.message());

  k8s::ClusterState state;
  if (fs::is_directory(st)) {
    return load_directory(path, manifest_files(path));
  } else if (fs::is_regular_file(st)) {
    load_file(path, state);
  } else {
    throw ManifestError(path.string() + ": not a regular file or directory");
  }
  return state;
}

// ---------------------------------------------------------------------------------------------
// ManifestReader

namespace {

using Key = std::pair<int, std::string>;

// A JSON object with an `items` array, cut into the text of each item and the
// rest (the frame: the text with the array emptied). Not validated here: the
// parser checks each item and the frame.
struct ListSplit {
  std::string frame;
  std::vector<std::string_view> items;
};

bool json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t skip_ws(std::string_view t, size_t i) {
  while (i < t.size() && json_ws(t[i])) i++;
  return i;
}

// The end of the string that starts at t[i] == '"'; npos when it has none.
size_t string_end(std::string_view t, size_t i) {
  for (i++; i < t.size(); i++) {
    if (t[i] == '\\') i++;
    else if (t[i] == '"') return i + 1;
  }
  return std::string_view::npos;
}

// The end of the value that starts at t[i]; npos when it runs off the text.
size_t value_end(std::string_view t, size_t i) {
  if (i >= t.size()) return std::string_view::npos;
  if (t[i] == '"') return string_end(t, i);
  if (t[i] == '{' || t[i] == '[') {
    int depth = 0;
    for (; i < t.size(); i++) {
      const char c = t[i];
      if (c == '"') {
        size_t e = string_end(t, i);
        if (e == std::string_view::npos) return e;
        i = e - 1;
      } else if (c == '{' || c == '[') {
        depth++;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        return i + 1;
      }
    }
    return std::string_view::npos;
  }
  while (i < t.size() && t[i] != ',' && t[i] != '}' && t[i] != ']' && !json_ws(t[i])) i++;
  return i;
}

std::optional<ListSplit> split_json_list(std::string_view t) {
  constexpr size_t npos = std::string_view::npos;
  ListSplit out;
  size_t i = skip_ws(t, 0), open = npos, close = npos;
  if (i >= t.size() || t[i] != '{') return std::nullopt;
  i = skip_ws(t, i + 1);
  for (;;) {
    if (i >= t.size() || t[i] != '"') return std::nullopt;
    size_t ke = string_end(t, i);
    if (ke == npos) return std::nullopt;
    const bool items = t.substr(i, ke - i) == "\"items\"";
    i = skip_ws(t, ke);
    if (i >= t.size() || t[i] != ':') return std::nullopt;
    i = skip_ws(t, i + 1);
    if (items) {
      if (open != npos || i >= t.size() || t[i] != '[') return std::nullopt;
      open = i;
      i = skip_ws(t, i + 1);
      if (i < t.size() && t[i] != ']')
        for (;;) {
          size_t e = value_end(t, i);
          if (e == npos) return std::nullopt;
          out.items.push_back(t.substr(i, e - i));
          i = skip_ws(t, e);
          if (i >= t.size() || (t[i] != ',' && t[i] != ']')) return std::nullopt;
          if (t[i] == ']') break;
          i = skip_ws(t, i + 1);  // a value must follow the comma
          if (i >= t.size() || t[i] == ']') return std::nullopt;
        }
      if (i >= t.size()) return std::nullopt;
      close = i++;
    } else {
      i = value_end(t, i);
      if (i == npos) return std::nullopt;
    }
    i = skip_ws(t, i);
    if (i < t.size() && t[i] == ',') {
      i = skip_ws(t, i + 1);
      continue;
    }
    if (i < t.size() && t[i] == '}') break;
    return std::nullopt;
  }
  if (open == npos) return std::nullopt;
  out.frame.reserve(t.size() - (close - open - 1));
  out.frame.append(t.substr(0, open + 1)).append(t.substr(close));
  return out;
}

template <class T>
void note_objects(const std::map<std::string, T>& objs, ObjectChange::Kind kind, std::set<Key>& into) {
  for (const auto& [key, o] : objs) into.insert({static_cast<int>(kind), key});
}

std::set<Key> objects_of(const k8s::ClusterState& cs) {
  std::set<Key> out;
  note_objects(cs.services, ObjectChange::Kind::Service, out);
  note_objects(cs.pods, ObjectChange::Kind::Pod, out);
  note_objects(cs.slices, ObjectChange::Kind::EndpointSlice, out);
  note_objects(cs.namespaces, ObjectChange::Kind::Namespace, out);
  return out;
}

const char* kind_name(int k) {
  switch (static_cast<ObjectChange::Kind>(k)) {
    case ObjectChange::Kind::Service: return "Service";
    case ObjectChange::Kind::Pod: return "Pod";
    case ObjectChange::Kind::Namespace: return "Namespace";
    default: return "EndpointSlice";
  }
}

// The one object a decoded item gave, nullopt when it gave none or several.
std::optional<Key> only_object(const k8s::ClusterState& one) {
  if (one.size() != 1 || !one.invalid.empty()) return std::nullopt;
  using K = ObjectChange::Kind;
  if (!one.pods.empty()) return Key{static_cast<int>(K::Pod), one.pods.begin()->first};
  if (!one.services.empty()) return Key{static_cast<int>(K::Service), one.services.begin()->first};
  if (!one.slices.empty()) return Key{static_cast<int>(K::EndpointSlice), one.slices.begin()->first};
  return Key{static_cast<int>(K::Namespace), one.namespaces.begin()->first};
}

template <class T>
bool move_new(std::map<std::string, T>& into, std::map<std::string, T>& from) {
  into.merge(from);  // moves the nodes; what stays in `from` was in `into` already
  return from.empty();
}

}  // namespace

// A JSON list item by item. false: the file is read whole instead (not such a
// list, an item without its kind or that is a list itself, two items alike or
// of one name, any error: the whole read says the error as it always did).
static bool read_items(const ListSplit& split, const std::vector<std::pair<size_t, const Key*>>* old,
                       k8s::ClusterState& objs, std::set<Key>& objects,
                       std::vector<std::pair<size_t, const Key*>>& table) {
  if (!old) {  // (else the frame is the one read before, checked then)
    json frame = json::parse(split.frame, nullptr, false);
    if (frame.is_discarded() || !is_list_kind(frame)) return false;
    auto it = frame.find("items");
    if (it == frame.end() || !it->is_array() || !it->empty()) return false;
    try {
      k8s::add_object(frame, objs);  // the list's own checks
    } catch (const std::exception&) {
      return false;
    }
  }
  std::vector<std::pair<size_t, Key>> keys;
  keys.reserve(split.items.size());
  for (std::string_view item : split.items) {
    const size_t h = std::hash<std::string_view>{}(item);
    if (old) {
      auto it = std::lower_bound(old->begin(), old->end(), std::make_pair(h, static_cast<const Key*>(nullptr)),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it != old->end() && it->first == h) {
        keys.emplace_back(h, *it->second);
        continue;
      }
    }
    json doc = json::parse(item, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("kind") || is_list_kind(doc)) return false;
    k8s::ClusterState one;
    try {
      k8s::add_object(doc, one);
    } catch (const std::exception&) {
      return false;
    }
    auto key = only_object(one);
    if (!key) return false;
    keys.emplace_back(h, *key);
    if (!move_new(objs.services, one.services) || !move_new(objs.pods, one.pods) ||
        !move_new(objs.slices, one.slices) || !move_new(objs.namespaces, one.namespaces))
      return false;
  }
  for (const auto& [h, key] : keys)
    if (!objects.insert(key).second) return false;  // one name twice
  table.reserve(keys.size());
  for (const auto& [h, key] : keys) table.emplace_back(h, &*objects.find(key));
  std::sort(table.begin(), table.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < table.size(); i++)
    if (table[i].first == table[i - 1].first) return false;  // two items alike: one name twice
  return true;
}

void ManifestReader::parse_tracked(const fs::path& file, const std::string& text, const FileInfo* old,
                                   k8s::ClusterState& objs, FileInfo& fi) {
  fi.size = text.size();
  fi.hash = std::hash<std::string>{}(text);
  fi.objects.clear();
  fi.items.clear();
  if (file.extension() == ".json") {
    if (auto split = split_json_list(text)) {
      const size_t frame_hash = std::hash<std::string>{}(split->frame);
      const bool reuse = old && !old->items.empty() && old->frame_hash == frame_hash;
      if (read_items(*split, reuse ? &old->items : nullptr, objs, fi.objects, fi.items)) {
        fi.frame_hash = frame_hash;
        return;
      }
      objs = k8s::ClusterState{};
      fi.objects.clear();
      fi.items.clear();
    }
  }
  parse_file(file, text, objs);
  fi.objects = objects_of(objs);
}

fs::path ManifestReader::file_of(const std::string& name) const {
  std::error_code ec;
  return fs::is_directory(path_, ec) ? path_ / name : path_;
}

k8s::ClusterState ManifestReader::read_all() {
  std::error_code ec;
  fs::file_status st = fs::status(path_, ec);
  if (st.type() == fs::file_type::not_found) throw ManifestError(path_.string() + ": no such file or directory");
  if (ec) throw ManifestError(path_.string() + ": " + ec.message());
  std::vector<fs::path> files;
  if (fs::is_directory(st)) files = manifest_files(path_);
  else if (fs::is_regular_file(st)) files = {path_};
  else throw ManifestError(path_.string() + ": not a regular file or directory");
  // One file after the other: parsing them on two threads was tried (read
  // 7.1 s -> about half on two idle cores) but the second thread's malloc
  // arena kept 25 MiB more of the peak (RSS is the farther target).
  k8s::ClusterState state;
  std::map<std::string, FileInfo> infos;
  for (const fs::path& file : files) {
    std::string text = read_file(file);
    FileInfo fi;
    k8s::ClusterState one;
    parse_tracked(file, text, nullptr, one, fi);
    auto move_into = [](auto& into, auto& from) {
      into.merge(from);  // moves the nodes; what stays in `from` was in `into` already
      return from.empty();
    };
    bool ok = move_into(state.services, one.services);
    ok = move_into(state.pods, one.pods) && ok;
    ok = move_into(state.slices, one.slices) && ok;
    ok = move_into(state.namespaces, one.namespaces) && ok;
    if (!ok) {  // a name defined twice: the usual error, for the later file
      k8s::ClusterState plain;
      for (const fs::path& f : files) load_file(f, plain);
    }
    infos[file.filename().string()] = std::move(fi);
  }
  owner_.clear();
  files_ = std::move(infos);
  for (const auto& [name, fi] : files_)
    for (const auto& k : fi.objects) {
      owner_.erase(&k);
      owner_.emplace(&k, &name);
    }
  broken_.clear();
  return state;
}

std::vector<ObjectChange> ManifestReader::read_every_file() {
  std::error_code ec;
  fs::file_status st = fs::status(path_, ec);
  if (st.type() == fs::file_type::not_found) throw ManifestError(path_.string() + ": no such file or directory");
  if (ec) throw ManifestError(path_.string() + ": " + ec.message());
  std::set<std::string> names;
  if (fs::is_directory(st)) {
    for (const fs::path& f : manifest_files(path_)) names.insert(f.filename().string());
  } else if (fs::is_regular_file(st)) {
    names.insert(path_.filename().string());
  } else {
    throw ManifestError(path_.string() + ": not a regular file or directory");
  }
  for (const auto& [name, fi] : files_) names.insert(name);
  return read_changed(names);
}

std::vector<ObjectChange> ManifestReader::read_changed(const std::set<std::string>& asked) {
  std::set<std::string> names = asked;
  names.insert(broken_.begin(), broken_.end());
  std::error_code ec;
  const bool dir = fs::is_directory(path_, ec);
  std::vector<ObjectChange> out;
  std::map<std::string, std::optional<FileInfo>> next;  // nullopt: the file is gone
  std::map<Key, std::string> claimed;                    // objects the files read now hold
  for (const std::string& name : names) {
    if (dir && !is_manifest_file_name(name)) continue;
    if (!dir && name != path_.filename().string()) continue;
    fs::path file = file_of(name);
    if (!fs::is_regular_file(file, ec)) {  // deleted or renamed away
      if (!dir) throw ManifestError(path_.string() + ": no such file or directory");
      next[name] = std::nullopt;
      continue;
    }
    std::string text;
    try {
      text = read_file(file);
    } catch (const ManifestError&) {
      broken_.insert(name);
      throw;
    }
    size_t hash = std::hash<std::string>{}(text);
    auto old = files_.find(name);
    if (old != files_.end() && old->second.size == text.size() && old->second.hash == hash) continue;
    k8s::ClusterState objs;
    FileInfo fi;
    try {
      // a JSON list: only the items whose text changed are parsed (one pod's label: one item)
      parse_tracked(file, text, old != files_.end() ? &old->second : nullptr, objs, fi);
    } catch (const ManifestError&) {
      broken_.insert(name);
      throw;
    }
    for (const auto& k : fi.objects)
      if (auto [it, fresh] = claimed.emplace(k, name); !fresh) {
        broken_.insert(name);
        throw ManifestError(file.string() + ": " + kind_name(k.first) + " " + k.second +
                            ": metadata.name: duplicate: another " + kind_name(k.first) +
                            " with this namespace/name was already defined (in " + it->second + ")");
      }
    for (auto& [key, o] : objs.services) out.push_back({ObjectChange::Kind::Service, key, std::move(o)});
    for (auto& [key, o] : objs.pods) out.push_back({ObjectChange::Kind::Pod, key, std::move(o)});
    for (auto& [key, o] : objs.slices) out.push_back({ObjectChange::Kind::EndpointSlice, key, std::move(o)});
    for (auto& [key, o] : objs.namespaces) out.push_back({ObjectChange::Kind::Namespace, key, std::move(o)});
    next[name] = std::move(fi);
  }
  // A name defined in two files: an error, as read_all() says it.
  for (const auto& [k, name] : claimed) {
    auto it = owner_.find(&k);
    if (it == owner_.end() || *it->second == name || next.count(*it->second)) continue;
    broken_.insert(name);
    const std::string& other = *it->second;
    throw ManifestError(file_of(std::max(name, other)).string() + ": " + kind_name(k.first) + " " + k.second +
                        ": metadata.name: duplicate: another " + kind_name(k.first) +
                        " with this namespace/name was already defined (in " + std::min(name, other) + ")");
  }
  // Objects the files read now no longer hold: deleted (unless another file read now has them).
  for (const auto& [name, fi] : next) {
    auto old = files_.find(name);
    if (old == files_.end()) continue;
    for (const auto& k : old->second.objects)
      if (!claimed.count(k)) out.push_back({static_cast<ObjectChange::Kind>(k.first), k.second, std::monostate{}});
  }
  // commit
  for (auto& [name, fi] : next) {
    if (auto old = files_.find(name); old != files_.end()) {
      for (const auto& k : old->second.objects)
        if (auto o = owner_.find(&k); o != owner_.end() && *o->second == name) owner_.erase(o);
      files_.erase(old);
    }
    if (fi) {
      auto at = files_.emplace(name, std::move(*fi)).first;
      for (const auto& k : at->second.objects) {
        owner_.erase(&k);  // (another file's entry: its pointers must not stay)
        owner_.emplace(&k, &at->first);
      }
    }
  }
  broken_.clear();
  return out;
}

// ---------------------------------------------------------------------------------------------
// ManifestWatcher

std::set<std::string> ManifestWatcher::take_names() {
  std::set<std::string> out;
  if (!everything_) out.swap(names_);
  names_.clear();
  everything_ = false;
  return out;
}

ManifestWatcher::ManifestWatcher(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    dir_ = path;
  } else {
    dir_ = path.parent_path();
    if (dir_.empty()) dir_ = ".";
    file_name_ = path.filename().string();
  }

  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) throw ManifestError(path.string() + ": inotify_init1: " + std::strerror(errno));
  uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                  IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
  if (inotify_add_watch(fd_, dir_.c_str(), mask) < 0) {
    int err = errno;
    close(fd_);
    throw ManifestError(dir_.string() + ": cannot watch: " + std::strerror(err));
  }
}

ManifestWatcher::~ManifestWatcher() {
  if (fd_ >= 0) close(fd_);
}

bool ManifestWatcher::relevant(uint32_t mask, const std::string& name) const {
  // The directory itself went away, or events were lost: the caller must re-read.
  if (mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT))
    return true;

  bool ours = name == kConfigMapDataLink ||
              (file_name_.empty() ? is_manifest_file_name(name) : name == file_name_);
  if (!ours) return false;

  // A regular file is still empty when created; it counts once closed after writing
  // (IN_CLOSE_WRITE). A symlink is complete when created.
  if (mask & IN_CREATE) {
    std::error_code ec;
    return fs::is_symlink(fs::symlink_status(dir_ / name, ec));
  }
  return true;
}

bool ManifestWatcher::drain() {
  alignas(inotify_event) char buf[4096];
  bool changed = false;
  for (;;) {
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) throw ManifestError(dir_.string() + ": inotify read: " + std::strerror(errno));
    if (n == 0) break;
    for (char* p = buf; p < buf + n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(p);
      std::string name = ev->len > 0 ? std::string(ev->name) : std::string();
      if (relevant(ev->mask, name)) {
        changed = true;
        if (name.empty() || name == kConfigMapDataLink || (ev->mask & IN_Q_OVERFLOW)) everything_ = true;
        else names_.insert(name);
      }
      p += sizeof(inotify_event) + ev->len;
    }
  }
  return changed;
}

}  // namespace envsteer::sources
