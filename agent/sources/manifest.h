// SPDX-License-Identifier: Apache-2.0
// The manifest source: Kubernetes objects read from a YAML/JSON file or a directory of them,
// and an inotify watcher that tells when to read them again.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "k8s/objects.h"
#include "model.h"

namespace envsteer::sources {

// "<file>: document <n>: <decode error>" or "<file>: line L column C: <parse error>".
class ManifestError : public std::runtime_error {
 public:
  explicit ManifestError(const std::string& message) : std::runtime_error(message) {}
};

// PATH is a file (YAML with one or more `---` separated documents, a `kind: List`, or JSON
// when it ends in .json) or a directory: every *.yaml, *.yml and *.json file directly inside
// it, in name order; hidden files (including editor temp files `.#*`, `.*.swp`) and `*~` are
// skipped; no recursion. Empty documents are skipped. All or nothing: any error throws
// ManifestError.
k8s::ClusterState load_manifests(const std::filesystem::path& path);

// True for names load_manifests() reads from a directory.
bool is_manifest_file_name(const std::string& name);

// The objects of PATH (as load_manifests() reads it) file by file, so that a
// change is read again only in the files that changed. It keeps no objects:
// per file its text's size and hash and the names of its objects.
class ManifestReader {
 public:
  explicit ManifestReader(std::filesystem::path path) : path_(std::move(path)) {}

  // Every file (start-up, SIGHUP, lost events). Throws ManifestError; then
  // nothing of this read is kept.
  k8s::ClusterState read_all();

  // The objects of the files named (names inside the directory, or the
  // file's own name), each as it is now, and deletions of the objects they no
  // longer hold. A file whose text did not change gives nothing. Files that
  // failed to read are read again with them: the state is all or nothing, as
  // with read_all(). Throws ManifestError; then nothing of this read is kept.
  std::vector<ObjectChange> read_changed(const std::set<std::string>& names);

  // read_changed() of every file there is and every file read before (SIGHUP,
  // lost events): a file whose text did not change is hashed, not parsed, so
  // no second copy of the cluster is made. Throws ManifestError.
  std::vector<ObjectChange> read_every_file();

 private:
  using Key = std::pair<int, std::string>;  // (ObjectChange::Kind, key)
  struct FileInfo {
    FileInfo() = default;
    FileInfo(FileInfo&&) = default;  // `items` point into `objects`: moved, never copied
    FileInfo& operator=(FileInfo&&) = default;
    FileInfo(const FileInfo&) = delete;
    FileInfo& operator=(const FileInfo&) = delete;
    size_t size = 0, hash = 0;
    std::set<Key> objects;
    // A JSON list file read item by item (else items is empty): the hash of
    // its text around the items, and per item the hash of its text and the
    // object it holds (into `objects`), sorted by hash. A change of one item
    // is then parsed alone.
    size_t frame_hash = 0;
    std::vector<std::pair<size_t, const Key*>> items;
  };
  // One file's text into OBJS and FI (size, hash, objects, items). A JSON
  // list whose frame is the one OLD read is read item by item, and only the
  // items whose text changed are parsed: OBJS then holds only their objects
  // (FI all the file's); else OBJS holds every object of the file.
  void parse_tracked(const std::filesystem::path& file, const std::string& text, const FileInfo* old,
                     k8s::ClusterState& objs, FileInfo& fi);
  std::filesystem::path file_of(const std::string& name) const;
  std::filesystem::path path_;
  std::map<std::string, FileInfo> files_;                  // by name
  // object -> file name: an entry's key and name are those of that file in files_
  // (set nodes and map keys stay put while the file is there)
  struct KeyLess {
    bool operator()(const Key* a, const Key* b) const { return *a < *b; }
  };
  std::map<const Key*, const std::string*, KeyLess> owner_;
  std::set<std::string> broken_;                            // names whose last read failed
};

// Watches PATH with inotify. For a directory, its entries are watched; for a file, its parent
// directory is watched and events are filtered by name, so that in-place writes (`kubectl get
// -o yaml > file`), editors' rename-replace and Kubernetes ConfigMap volume updates (an atomic
// swap of the `..data` symlink) are all seen. A new regular file counts when it is closed
// after writing or renamed into place, not when it is created empty.
class ManifestWatcher {
 public:
  explicit ManifestWatcher(const std::filesystem::path& path);  // throws ManifestError
  ~ManifestWatcher();
  ManifestWatcher(const ManifestWatcher&) = delete;
  ManifestWatcher& operator=(const ManifestWatcher&) = delete;

  // Non-blocking inotify fd; readable (POLLIN) when drain() has something to read.
  int fd() const { return fd_; }

  // Reads all pending events; true if any of them may have changed what load_manifests(PATH)
  // returns. Also true when the watched directory itself was deleted or moved, or events were
  // lost (queue overflow).
  bool drain();
  // The file names the events since the last call named; empty when anything may have
  // changed (the directory itself, lost events, a ConfigMap's ..data swap).
  std::set<std::string> take_names();

 private:
  bool relevant(uint32_t mask, const std::string& name) const;

  std::filesystem::path dir_;  // the watched directory
  std::string file_name_;      // for a file PATH: its name inside dir_; empty for a directory
  int fd_ = -1;
  std::set<std::string> names_;  // named by events since take_names()
  bool everything_ = false;
};

}  // namespace envsteer::sources
