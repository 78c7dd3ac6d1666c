// SPDX-License-Identifier: Apache-2.0
#include "sources/manifest.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "fd.h"
#include "k8s/decode.h"
#include "k8s/fastdecode.h"

namespace envsteer::sources {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The directory entry that Kubernetes swaps atomically when a ConfigMap volume changes.
constexpr const char* kConfigMapDataLink = "..data";

// The file's bytes in one buffer (read(2) into a string of the file's size:
// no stream buffer and copies on the way of a changed file).
std::string read_file(const fs::path& file) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw ManifestError(file.string() + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  std::string text;
  if (fstat(fd.get(), &st) == 0 && st.st_size > 0) text.resize(static_cast<size_t>(st.st_size));
  size_t have = 0;
  char more[4096];  // past the size fstat gave (a file that grew meanwhile): appended
  for (;;) {
    const bool past = have == text.size();
    ssize_t n = past ? ::read(fd.get(), more, sizeof more) : ::read(fd.get(), text.data() + have, text.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw ManifestError(file.string() + ": read error: " + std::strerror(errno));
    if (n == 0) break;
    if (past) text.append(more, static_cast<size_t>(n));
    have += static_cast<size_t>(n);
  }
  text.resize(have);  // a file that shrank meanwhile
  return text;
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

// The objects of one file as last parsed, and its text then.
struct ParsedFile {
  std::string text;
  k8s::ClusterState objects;
};

// Per manifest directory, its files' parsed objects. A watched directory of many files
// (one per namespace, say) changes one file at a time; re-parsing all of them on every
// change cost seconds at 100 000 pods. Files are still read in full every time (a cheap
// part): only a file whose text is unchanged (compared byte by byte) skips parsing.
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
      ParsedFile pf;
      auto it = cache.find(file.string());
      if (it != cache.end() && it->second.text == text) {
        pf = std::move(it->second);
      } else {
        parse_file(file, text, pf.objects);
        pf.text = std::move(text);
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
// KeptText

// One unlinked file; each text at a page boundary, so that a released text's
// pages are punched out without touching another's.
class TextStore {
 public:
  static constexpr uint64_t kPage = 4096;
  explicit TextStore(UniqueFd fd) : fd_(std::move(fd)) {}

  // nullptr when DIR cannot hold one.
  static std::shared_ptr<TextStore> open(const fs::path& dir) {
    UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) return nullptr;
    // released texts must give their space back: a file system that cannot punch holes is not used
    std::string page(kPage, 'x');
    if (::pwrite(fd.get(), page.data(), page.size(), 0) != static_cast<ssize_t>(page.size()) ||
        ::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, kPage) != 0 ||
        ::ftruncate(fd.get(), 0) != 0)
      return nullptr;
    return std::make_shared<TextStore>(std::move(fd));
  }

  static void keep(const std::shared_ptr<TextStore>& self, std::string text, KeptText& into) {
    into = KeptText{};
    into.len_ = text.size();
    if (text.empty()) return;
    if (self) {
      const uint64_t off = (self->end_ + kPage - 1) / kPage * kPage;
      size_t done = 0;
      while (done < text.size()) {
        ssize_t n = ::pwrite(self->fd_.get(), text.data() + done, text.size() - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += static_cast<size_t>(n);
      }
      if (done == text.size()) {
        self->end_ = off + text.size();
        self->live_++;
        into.store_ = self;
        into.off_ = off;
        return;
      }
      self->drop(off, done);  // no space: this one stays in memory
    }
    into.mem_ = std::move(text);
  }

  bool read(uint64_t off, char* buf, size_t len) const {
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::pread(fd_.get(), buf + done, len - done, static_cast<off_t>(off + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  void release(uint64_t off, size_t len) {
    drop(off, len);
    if (--live_ == 0 && ::ftruncate(fd_.get(), 0) == 0) end_ = 0;  // nothing kept: start again at 0
  }

 private:
  void drop(uint64_t off, size_t len) {
    if (len > 0) (void)::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                                   static_cast<off_t>(len));
  }
  UniqueFd fd_;
  uint64_t end_ = 0;  // past the last text written
  size_t live_ = 0;   // texts kept
};

KeptText& KeptText::operator=(KeptText&& o) noexcept {
  if (this == &o) return *this;
  release();
  store_ = std::move(o.store_);
  off_ = o.off_;
  len_ = o.len_;
  mem_ = std::move(o.mem_);
  o.store_.reset();
  o.len_ = 0;
  o.mem_.clear();
  return *this;
}

KeptText::~KeptText() { release(); }

void KeptText::release() {
  if (store_) store_->release(off_, len_);
  store_.reset();
  len_ = 0;
  mem_ = std::string();
}

bool KeptText::equals(std::string_view text) const {
  if (text.size() != len_) return false;
  if (!store_) return text == mem_;
  constexpr size_t kChunk = 64 * 1024;  // read back a chunk at a time: no second copy of the text
  std::vector<char> buf(std::min(kChunk, len_));
  for (size_t at = 0; at < len_; at += kChunk) {
    const size_t n = std::min(kChunk, len_ - at);
    if (!store_->read(off_ + at, buf.data(), n) || std::memcmp(buf.data(), text.data() + at, n) != 0) return false;
  }
  return true;
}

std::optional<std::string> KeptText::load() const {
  if (!store_) return mem_;
  std::string out(len_, '\0');
  if (!store_->read(off_, out.data(), len_)) return std::nullopt;
  return out;
}

// ---------------------------------------------------------------------------------------------
// ManifestReader

namespace {

using Key = std::pair<int, std::string>;
constexpr size_t npos = std::string_view::npos;

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
  return npos;
}

// The end of the value that starts at t[i]; npos when it runs off the text.
size_t value_end(std::string_view t, size_t i) {
  if (i >= t.size()) return npos;
  if (t[i] == '"') return string_end(t, i);
  if (t[i] == '{' || t[i] == '[') {
    int depth = 0;
    for (; i < t.size(); i++) {
      const char c = t[i];
      if (c == '"') {
        size_t e = string_end(t, i);
        if (e == npos) return e;
        i = e - 1;
      } else if (c == '{' || c == '[') {
        depth++;
      } else if ((c == '}' || c == ']') && --depth == 0) {
        return i + 1;
      }
    }
    return npos;
  }
  while (i < t.size() && t[i] != ',' && t[i] != '}' && t[i] != ']' && !json_ws(t[i])) i++;
  return i;
}

// The values of a JSON array, from i: just after its '[' (first) or just after
// one of its values. on_item(off, len) for each; stop(off) is asked at each
// value's start and ends the scan there (*resume = off). Else *close is the
// array's ']'. false: not an array of values (the parser says what is wrong).
template <class OnItem, class Stop>
bool scan_items(std::string_view t, size_t i, bool first, OnItem&& on_item, Stop&& stop, size_t* close, size_t* resume) {
  *close = *resume = npos;
  i = skip_ws(t, i);
  if (i >= t.size()) return false;
  if (t[i] == ']') {
    *close = i;
    return true;
  }
  if (!first) {
    if (t[i] != ',') return false;
    i = skip_ws(t, i + 1);  // a value must follow the comma
    if (i >= t.size() || t[i] == ']') return false;
  }
  for (;;) {
    if (stop(i)) {
      *resume = i;
      return true;
    }
    size_t e = value_end(t, i);
    if (e == npos) return false;
    on_item(i, e - i);
    i = skip_ws(t, e);
    if (i >= t.size() || (t[i] != ',' && t[i] != ']')) return false;
    if (t[i] == ']') {
      *close = i;
      return true;
    }
    i = skip_ws(t, i + 1);
    if (i >= t.size() || t[i] == ']') return false;
  }
}

// A JSON object with an `items` array: where the array opens and closes and
// its values. Not validated here: the parser checks each item and the frame
// (the text with the array emptied).
struct ListSplit {
  size_t open = 0, close = 0;
  std::vector<std::pair<size_t, size_t>> items;  // offset, length
};

std::optional<ListSplit> split_json_list(std::string_view t) {
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
      size_t resume;
      if (!scan_items(
              t, i + 1, true, [&](size_t off, size_t len) { out.items.emplace_back(off, len); },
              [](size_t) { return false; }, &close, &resume))
        return std::nullopt;
      i = close + 1;
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
  out.open = open;
  out.close = close;
  return out;
}

// How many bytes a and b have in common at their start; at their end (at most max).
size_t common_prefix(std::string_view a, std::string_view b) {
  const size_t n = std::min(a.size(), b.size());
  constexpr size_t kBlock = 256;  // memcmp per block, then the byte
  size_t i = 0;
  while (i + kBlock <= n && std::memcmp(a.data() + i, b.data() + i, kBlock) == 0) i += kBlock;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

size_t common_suffix(std::string_view a, std::string_view b, size_t max) {
  constexpr size_t kBlock = 256;
  size_t i = 0;
  while (i + kBlock <= max && std::memcmp(a.data() + a.size() - i - kBlock, b.data() + b.size() - i - kBlock, kBlock) == 0)
    i += kBlock;
  while (i < max && a[a.size() - 1 - i] == b[b.size() - 1 - i]) i++;
  return i;
}

template <class T>
void note_objects(const std::map<std::string, T>& objs, ObjectChange::Kind kind, std::vector<Key>& into) {
  for (const auto& [key, o] : objs) into.emplace_back(static_cast<int>(kind), key);
}

// Sorted: by kind (the order below), then by key (each map's order).
std::vector<Key> objects_of(const k8s::ClusterState& cs) {
  static_assert(static_cast<int>(ObjectChange::Kind::Service) < static_cast<int>(ObjectChange::Kind::Pod) &&
                static_cast<int>(ObjectChange::Kind::Pod) < static_cast<int>(ObjectChange::Kind::EndpointSlice) &&
                static_cast<int>(ObjectChange::Kind::EndpointSlice) < static_cast<int>(ObjectChange::Kind::Namespace));
  std::vector<Key> out;
  out.reserve(cs.services.size() + cs.pods.size() + cs.slices.size() + cs.namespaces.size());
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
  std::vector<Key> keys = objects_of(one);
  if (keys.size() != 1 || !one.invalid.empty()) return std::nullopt;
  return std::move(keys.front());
}

template <class T>
bool move_new(std::map<std::string, T>& into, std::map<std::string, T>& from) {
  for (auto& [key, obj] : from)
    if (!into.emplace(key, std::move(obj)).second) return false;
  return true;
}

// One list item alone, into objs; its object's name, nullopt when it is not
// one object of a kind (the whole read then says what is wrong).
std::optional<Key> parse_item(std::string_view item, k8s::ClusterState& objs) {
  // The common items, a v1 Pod or Service, without nlohmann's DOM (issue 18); it declines
  // anything else, and anything unusual, which then goes the way below.
  k8s::FastObject fast = k8s::fast_decode(item);
  if (auto* pod = std::get_if<k8s::Pod>(&fast)) {
    std::string key = k8s::object_key(pod->ns, pod->name);
    if (!objs.pods.emplace(key, std::move(*pod)).second) return std::nullopt;
    return Key{static_cast<int>(ObjectChange::Kind::Pod), std::move(key)};
  }
  if (auto* svc = std::get_if<k8s::Service>(&fast)) {
    std::string key = k8s::object_key(svc->ns, svc->name);
    if (!objs.services.emplace(key, std::move(*svc)).second) return std::nullopt;
    return Key{static_cast<int>(ObjectChange::Kind::Service), std::move(key)};
  }
  json doc = json::parse(item, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("kind") || is_list_kind(doc)) return std::nullopt;
  k8s::ClusterState one;
  try {
    k8s::add_object(doc, one);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  auto key = only_object(one);
  if (!key) return std::nullopt;
  if (!move_new(objs.services, one.services) || !move_new(objs.pods, one.pods) ||
      !move_new(objs.slices, one.slices) || !move_new(objs.namespaces, one.namespaces))
    return std::nullopt;
  return key;
}

}  // namespace

// What reading one file gives, kept apart from files_ until every file read
// together is known good (all or nothing).
struct ManifestReader::FileRead {
  std::string text;        // the file's text now (kept in info.text at commit)
  FileInfo info;           // whole: complete; else its items (objects: the old ones, patched at commit)
  bool whole = true;
  k8s::ClusterState objs;  // the objects parsed: given as changes
  // names the file did not hold before, sorted; with no old info (a file new
  // to the reader) not listed: every name of info.objects is (added_names())
  std::vector<Key> added;
  std::vector<uint32_t> removed;  // names it holds no more: indexes into the old info's objects, sorted
  // patch: item index -> its name (the item's index into the objects at commit);
  // the kept items hold their indexes into the old objects until then
  std::vector<std::pair<size_t, Key>> parsed;
  const std::vector<Key>& added_names(const FileInfo* old) const { return old ? added : info.objects; }
  bool holds(const Key& k, const FileInfo* old) const {
    if (whole) return std::binary_search(info.objects.begin(), info.objects.end(), k);
    if (std::binary_search(added.begin(), added.end(), k)) return true;
    if (!old) return false;
    auto it = std::lower_bound(old->objects.begin(), old->objects.end(), k);
    return it != old->objects.end() && *it == k &&
           !std::binary_search(removed.begin(), removed.end(), static_cast<uint32_t>(it - old->objects.begin()));
  }
};

ManifestReader::ManifestReader(fs::path path, ItemHash item_hash, std::optional<fs::path> kept_dir)
    : path_(std::move(path)), item_hash_(item_hash ? std::move(item_hash) : ItemHash([](std::string_view s) {
        return static_cast<uint64_t>(std::hash<std::string_view>{}(s));
      })) {
  if (!kept_dir) {
    std::error_code ec;
    kept_dir = fs::temp_directory_path(ec);
    if (ec) kept_dir = fs::path();
  }
  if (!kept_dir->empty()) store_ = TextStore::open(*kept_dir);
  // Where the last-read texts live (compared byte by byte before an item is reused): an
  // unlinked file costs page cache, not the agent's heap; tmpfs would cost the same memory.
  if (store_)
    spdlog::info("manifests: last-read texts kept in an unlinked file in {}", kept_dir->string());
  else
    spdlog::info("manifests: last-read texts kept in memory ({} cannot hold an unlinked file; set TMPDIR)",
                 kept_dir->empty() ? std::string("no temporary directory") : kept_dir->string());
}

ManifestReader::~ManifestReader() = default;

KeptText ManifestReader::keep(std::string text) const {
  KeptText k;
  TextStore::keep(store_, std::move(text), k);
  return k;
}

// A JSON list item by item, every item parsed (a first read, or a frame that
// changed). false: the file is read whole instead (not such a list, an item
// without its kind or that is a list itself, two items of one name, any error:
// the whole read says the error as it always did).
bool ManifestReader::read_list(const FileInfo* old, std::string_view old_text, FileRead& fr) const {
  FileInfo& fi = fr.info;
  const std::string_view t = fr.text;
  if (t.size() > kMaxListedText) return false;
  auto split = split_json_list(t);
  if (!split) return false;
  const bool same_frame = old && old->listed && old_text.size() == old->text.size() && old->open == split->open &&
                          t.substr(0, split->open) == old_text.substr(0, old->open) &&
                          t.substr(split->close) == old_text.substr(old->close);
  if (!same_frame) {  // (else the frame is the one read before, checked then)
    std::string frame_text(t.substr(0, split->open + 1));
    frame_text.append(t.substr(split->close));
    json frame = json::parse(frame_text, nullptr, false);
    if (frame.is_discarded() || !is_list_kind(frame)) return false;
    auto it = frame.find("items");
    if (it == frame.end() || !it->is_array() || !it->empty()) return false;
    try {
      k8s::add_object(frame, fr.objs);  // the list's own checks
    } catch (const std::exception&) {
      return false;
    }
  }
  std::vector<Key> keys;
  keys.reserve(split->items.size());
  for (const auto& [off, len] : split->items) {
    auto key = parse_item(t.substr(off, len), fr.objs);
    if (!key) return false;
    keys.push_back(std::move(*key));
  }
  // the names sorted; each item's name by its index among them
  std::vector<uint32_t> order(keys.size());
  for (uint32_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) { return keys[x] < keys[y]; });
  for (size_t j = 1; j < order.size(); j++)
    if (keys[order[j - 1]] == keys[order[j]]) return false;  // one name twice
  fi.items.resize(keys.size());
  fi.objects.reserve(keys.size());
  for (uint32_t j = 0; j < order.size(); j++) {
    const uint32_t i = order[j];
    fi.items[i] = Item{static_cast<uint32_t>(split->items[i].first), static_cast<uint32_t>(split->items[i].second), j};
    fi.objects.push_back(std::move(keys[i]));
  }
  fi.listed = true;
  fi.open = split->open;
  fi.close = split->close;
  return true;
}

// A JSON list whose text changed only between its '[' and ']': the items
// before the first changed byte and after the last one are the old ones (their
// bytes are), the items between are compared with the old items of the same
// hash byte by byte, and only those that match none are parsed. false: read it
// another way (the frame changed, items alike or of one name, any error).
bool ManifestReader::read_list_patch(const FileInfo& old, std::string_view o, FileRead& fr) const {
  FileInfo& fi = fr.info;
  const std::string_view t = fr.text;
  if (t.size() > kMaxListedText) return false;
  const size_t pre = common_prefix(o, t);
  const size_t suf = common_suffix(o, t, std::min(o.size(), t.size()) - pre);
  if (pre <= old.open || old.close < o.size() - suf) return false;  // the frame's bytes changed
  const std::vector<Item>& oi = old.items;
  // old items [0, a) lie in the common prefix: the same at the same place
  size_t a = std::upper_bound(oi.begin(), oi.end(), pre, [](size_t p, const Item& it) { return p < size_t{it.off} + it.len; }) -
             oi.begin();
  const ptrdiff_t shift = static_cast<ptrdiff_t>(t.size()) - static_cast<ptrdiff_t>(o.size());
  size_t b = oi.size();  // old items [b, n) lie in the common suffix: the same, moved by shift
  std::vector<std::pair<size_t, size_t>> mid;
  size_t close, resume;
  const size_t from = a ? size_t{oi[a - 1].off} + oi[a - 1].len : old.open + 1;
  bool ok = scan_items(
      t, from, a == 0, [&](size_t off, size_t len) { mid.emplace_back(off, len); },
      [&](size_t off) {
        // the rest is the old text's, from an old item's start on: the scan there is the old one
        if (off < t.size() - suf) return false;
        const size_t old_off = static_cast<size_t>(static_cast<ptrdiff_t>(off) - shift);
        auto it = std::lower_bound(oi.begin(), oi.end(), old_off, [](const Item& i, size_t p) { return i.off < p; });
        if (it == oi.end() || it->off != old_off) return false;
        b = static_cast<size_t>(it - oi.begin());
        return true;
      },
      &close, &resume);
  if (!ok) return false;
  if (resume == npos) {  // scanned to the ']': the rest of the frame must be the old one
    if (t.substr(close) != o.substr(old.close)) return false;
    fi.close = close;
  } else {
    fi.close = static_cast<size_t>(static_cast<ptrdiff_t>(old.close) + shift);
  }
  fi.open = old.open;
  fi.listed = true;
  // the items between: an old one of the same hash and bytes, else parsed
  // (hashed here, of the old text and the new: no hash is kept)
  std::vector<bool> used(oi.size(), false);
  for (size_t i = 0; i < a; i++) used[i] = true;
  for (size_t i = b; i < oi.size(); i++) used[i] = true;
  std::vector<std::pair<uint64_t, size_t>> by_hash;  // of the old items between, when there are new ones
  if (!mid.empty()) {
    for (size_t i = a; i < b; i++) by_hash.emplace_back(item_hash_(o.substr(oi[i].off, oi[i].len)), i);
    std::sort(by_hash.begin(), by_hash.end());
  }
  fi.items.reserve(a + mid.size() + (oi.size() - b));
  fi.items.insert(fi.items.end(), oi.begin(), oi.begin() + static_cast<ptrdiff_t>(a));
  std::vector<Key> parsed_keys;
  for (const auto& [off, len] : mid) {
    const std::string_view text = t.substr(off, len);
    const Item* same = nullptr;
    if (b > a) {
      const uint64_t h = item_hash_(text);
      for (auto it = std::lower_bound(by_hash.begin(), by_hash.end(), std::make_pair(h, size_t{0}));
           it != by_hash.end() && it->first == h; ++it)
        if (!used[it->second] && o.substr(oi[it->second].off, oi[it->second].len) == text) {
          same = &oi[it->second];
          used[it->second] = true;
          break;
        }
    }
    if (same) {
      fi.items.push_back(Item{static_cast<uint32_t>(off), static_cast<uint32_t>(len), same->key});
      continue;
    }
    auto key = parse_item(text, fr.objs);
    if (!key) return false;
    fr.parsed.emplace_back(fi.items.size(), *key);
    parsed_keys.push_back(std::move(*key));
    fi.items.push_back(Item{static_cast<uint32_t>(off), static_cast<uint32_t>(len), kNoKey});
  }
  for (size_t i = b; i < oi.size(); i++) {
    Item it = oi[i];
    it.off = static_cast<uint32_t>(static_cast<ptrdiff_t>(it.off) + shift);
    fi.items.push_back(it);
  }
  // names: a parsed name held by a kept item or parsed twice is one name
  // twice (the whole read's error); kept items are of distinct old items
  std::sort(parsed_keys.begin(), parsed_keys.end());
  if (std::adjacent_find(parsed_keys.begin(), parsed_keys.end()) != parsed_keys.end()) return false;
  if (!parsed_keys.empty()) {
    std::vector<bool> kept(old.objects.size(), false);  // by index into old.objects
    for (const Item& it : fi.items)
      if (it.key != kNoKey) kept[it.key] = true;
    for (const Key& k : parsed_keys) {
      auto it = std::lower_bound(old.objects.begin(), old.objects.end(), k);
      if (it == old.objects.end() || *it != k) {
        fr.added.push_back(k);
      } else if (kept[static_cast<size_t>(it - old.objects.begin())]) {
        return false;
      }
    }
  }
  for (size_t i = 0; i < oi.size(); i++)
    if (!used[i] && !std::binary_search(parsed_keys.begin(), parsed_keys.end(), old.objects[oi[i].key]))
      fr.removed.push_back(oi[i].key);
  std::sort(fr.removed.begin(), fr.removed.end());
  fr.whole = false;
  return true;
}

namespace {

// fr emptied but for the text.
template <class FR>
void restart(FR& fr) {
  std::string text = std::move(fr.text);
  fr = FR{};
  fr.text = std::move(text);
}

}  // namespace

void ManifestReader::read_file_text(const fs::path& file, std::string text, const FileInfo* old, FileRead& fr) const {
  fr.text = std::move(text);
  bool done = false;
  if (file.extension() == ".json") {
    // the old text read back for the compares (one file's, for this read only)
    std::optional<std::string> old_text;
    if (old && old->listed) old_text = old->text.load();
    // one pod's label changed: one item parsed
    if (old_text && read_list_patch(*old, *old_text, fr)) return;
    restart(fr);
    done = read_list(old_text ? old : nullptr, old_text ? std::string_view(*old_text) : std::string_view(), fr);
    if (!done) restart(fr);
  }
  if (!done) {
    parse_file(file, fr.text, fr.objs);
    fr.info.objects = objects_of(fr.objs);
  }
  if (!old) return;  // every name is new (FileRead::added_names)
  // the names gained and lost (both lists sorted)
  const std::vector<Key>& now = fr.info.objects;
  const std::vector<Key>& was = old->objects;
  size_t i = 0, j = 0;
  while (i < now.size() || j < was.size()) {
    if (j == was.size() || (i < now.size() && now[i] < was[j])) {
      fr.added.push_back(now[i++]);
    } else if (i == now.size() || was[j] < now[i]) {
      fr.removed.push_back(static_cast<uint32_t>(j++));
    } else {
      i++, j++;
    }
  }
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
    FileRead fr;
    read_file_text(file, read_file(file), nullptr, fr);
    auto move_into = [](auto& into, auto& from) {
      into.merge(from);  // the nodes move; those of names `into` has stay in `from`
      return from.empty();
    };
    k8s::ClusterState& one = fr.objs;
    bool ok = move_into(state.services, one.services);
    ok = move_into(state.pods, one.pods) && ok;
    ok = move_into(state.slices, one.slices) && ok;
    ok = move_into(state.namespaces, one.namespaces) && ok;
    if (!ok) {  // a name defined twice: the usual error, for the later file
      k8s::ClusterState plain;
      for (const fs::path& f : files) load_file(f, plain);
    }
    fr.info.text = keep(std::move(fr.text));  // out of the heap before the next file is read
    infos[file.filename().string()] = std::move(fr.info);
  }
  files_ = std::move(infos);
  broken_.clear();
  return state;
}

const std::string* ManifestReader::holder_of(const Key& k) const {
  for (const auto& [name, fi] : files_)
    if (std::binary_search(fi.objects.begin(), fi.objects.end(), k)) return &name;
  return nullptr;
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
  std::map<std::string, std::optional<FileRead>> next;  // nullopt: the file is gone
  auto old_info = [&](const std::string& name) -> const FileInfo* {
    auto it = files_.find(name);
    return it == files_.end() ? nullptr : &it->second;
  };
  for (const std::string& name : names) {
    if (dir && !is_manifest_file_name(name)) continue;
    if (!dir && name != path_.filename().string()) continue;
    fs::path file = file_of(name);
    if (!fs::is_regular_file(file, ec)) {  // deleted or renamed away
      if (!dir) throw ManifestError(path_.string() + ": no such file or directory");
      next[name] = std::nullopt;
      continue;
    }
    const FileInfo* old = old_info(name);
    try {
      std::string text = read_file(file);
      if (old && old->text.equals(text)) continue;  // unchanged: nothing to parse
      FileRead fr;
      read_file_text(file, std::move(text), old, fr);
      next.emplace(name, std::move(fr));
    } catch (const ManifestError&) {
      broken_.insert(names.begin(), names.end());
      throw;
    }
  }
  // Names new to a file read now: held by no other file (read now or not), as
  // read_all() says it.
  std::map<Key, std::string> claimed;
  for (const auto& [name, fr] : next) {
    if (!fr) continue;
    for (const Key& k : fr->added_names(old_info(name)))
      if (auto [it, fresh] = claimed.emplace(k, name); !fresh) {
        broken_.insert(names.begin(), names.end());
        throw ManifestError(file_of(name).string() + ": " + kind_name(k.first) + " " + k.second +
                            ": metadata.name: duplicate: another " + kind_name(k.first) +
                            " with this namespace/name was already defined (in " + it->second + ")");
      }
  }
  for (const auto& [k, name] : claimed) {
    const std::string* held = holder_of(k);
    if (!held || *held == name) continue;
    const std::string& holder = *held;
    auto other = next.find(holder);
    if (other != next.end() && !(other->second && other->second->holds(k, old_info(holder)))) continue;
    broken_.insert(names.begin(), names.end());
    throw ManifestError(file_of(std::max(name, holder)).string() + ": " + kind_name(k.first) + " " + k.second +
                        ": metadata.name: duplicate: another " + kind_name(k.first) +
                        " with this namespace/name was already defined (in " + std::min(name, holder) + ")");
  }
  std::vector<ObjectChange> out;
  for (auto& [name, fr] : next) {
    if (!fr) continue;
    auto& objs = fr->objs;
    for (auto& [key, o] : objs.services) out.push_back({ObjectChange::Kind::Service, key, std::move(o)});
    for (auto& [key, o] : objs.pods) out.push_back({ObjectChange::Kind::Pod, key, std::move(o)});
    for (auto& [key, o] : objs.slices) out.push_back({ObjectChange::Kind::EndpointSlice, key, std::move(o)});
    for (auto& [key, o] : objs.namespaces) out.push_back({ObjectChange::Kind::Namespace, key, std::move(o)});
  }
  // Objects the files read now no longer hold: deleted (unless another file read now has them).
  auto gone = [&](const Key& k) {
    if (!claimed.count(k)) out.push_back({static_cast<ObjectChange::Kind>(k.first), k.second, std::monostate{}});
  };
  for (const auto& [name, fr] : next) {
    const FileInfo* old = old_info(name);
    if (!old) continue;
    if (!fr)
      for (const auto& k : old->objects) gone(k);
    else
      for (uint32_t k : fr->removed) gone(old->objects[k]);
  }
  // commit
  for (auto& [name, fr] : next) {
    auto old = files_.find(name);
    if (!fr) {
      if (old != files_.end()) files_.erase(old);
      continue;
    }
    FileInfo& fi = fr->info;
    fi.text = keep(std::move(fr->text));
    if (!fr->whole) {
      // the old names but those removed, and those added (both sorted): the
      // kept items' indexes renumbered, the parsed items' found
      std::vector<Key>& was = old->second.objects;
      if (fr->removed.empty() && fr->added.empty()) {
        fi.objects = std::move(was);  // the same names (items relabelled, moved): the same indexes
      } else {
        std::vector<uint32_t> renumbered(was.size(), kNoKey);
        fi.objects.reserve(was.size() - fr->removed.size() + fr->added.size());
        size_t i = 0, j = 0, r = 0;
        while (i < was.size() || j < fr->added.size()) {
          if (i < was.size() && r < fr->removed.size() && fr->removed[r] == i) {
            i++, r++;
          } else if (j == fr->added.size() || (i < was.size() && was[i] < fr->added[j])) {
            renumbered[i] = static_cast<uint32_t>(fi.objects.size());
            fi.objects.push_back(std::move(was[i++]));
          } else {
            fi.objects.push_back(std::move(fr->added[j++]));
          }
        }
        for (Item& it : fi.items)
          if (it.key != kNoKey) it.key = renumbered[it.key];
      }
      for (auto& [idx, k] : fr->parsed)
        fi.items[idx].key =
            static_cast<uint32_t>(std::lower_bound(fi.objects.begin(), fi.objects.end(), k) - fi.objects.begin());
    }
    files_.insert_or_assign(name, std::move(fi));
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
