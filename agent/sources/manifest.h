// SPDX-License-Identifier: Apache-2.0
// The manifest source: Kubernetes objects read from a YAML/JSON file or a directory of them,
// and an inotify watcher that tells when to read them again.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "k8s/objects.h"

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

 private:
  bool relevant(uint32_t mask, const std::string& name) const;

  std::filesystem::path dir_;  // the watched directory
  std::string file_name_;      // for a file PATH: its name inside dir_; empty for a directory
  int fd_ = -1;
};

}  // namespace envsteer::sources
