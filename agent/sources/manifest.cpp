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
#include <regex>
#include <sstream>
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

void load_json(const fs::path& file, const std::string& text, k8s::ClusterState& out) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return;  // empty file
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ManifestError(json_error(file, e));
  }
  add_document(file, 1, doc, out);
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
              !merge_unique(state.pods, pf.objects.pods) || !merge_unique(state.slices, pf.objects.slices);
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
// ManifestWatcher

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
      if (relevant(ev->mask, name)) changed = true;
      p += sizeof(inotify_event) + ev->len;
    }
  }
  return changed;
}

}  // namespace envsteer::sources
