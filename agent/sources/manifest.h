// SPDX-License-Identifier: Apache-2.0
// The manifest source: Kubernetes objects read from a YAML/JSON file or a directory of them,
// and an inotify watcher that tells when to read them again.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <map>
#include <set>
#include <string>
#include <string_view>
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

// Where ManifestReader keeps the texts of the files it read, for byte compares
// only: in one unlinked file (O_TMPFILE) of a directory, read back with pread
// when compared (page cache, not the agent's heap: 45 MiB at 100 000 pods), or
// in memory when there is no such file.
class TextStore;
class KeptText {
 public:
  KeptText() = default;
  KeptText(KeptText&& o) noexcept { *this = std::move(o); }
  KeptText& operator=(KeptText&& o) noexcept;
  KeptText(const KeptText&) = delete;
  KeptText& operator=(const KeptText&) = delete;
  ~KeptText();
  size_t size() const { return len_; }
  bool in_file() const { return store_ != nullptr; }
  // Byte by byte; false also when the kept copy cannot be read back (then the
  // caller reads the file as changed: never a guess).
  bool equals(std::string_view text) const;
  // The whole text; nullopt when it cannot be read back.
  std::optional<std::string> load() const;

 private:
  friend class TextStore;
  void release();
  std::shared_ptr<TextStore> store_;  // null: in mem_
  uint64_t off_ = 0;
  size_t len_ = 0;
  std::string mem_;
};

// The objects of PATH (as load_manifests() reads it) file by file, so that a
// change is read again only in the files that changed. It keeps no objects:
// per file its text (an unchanged file or list item is known by its bytes,
// never by a hash alone) and the names of its objects.
class ManifestReader {
 public:
  // Of a JSON list item's text: finds an unchanged item that moved. A hit is
  // compared byte by byte, so any function is exact (tests give colliding ones).
  // Only the items of a change are hashed, when they are compared (none are kept).
  using ItemHash = std::function<uint64_t(std::string_view)>;
  // kept_dir: where the files' texts are kept (KeptText): nullopt = $TMPDIR or
  // /tmp; "" = in memory; a directory where no unlinked file can be made
  // (O_TMPFILE unsupported, not writable, no hole punching) = in memory.
  explicit ManifestReader(std::filesystem::path path, ItemHash item_hash = {},
                          std::optional<std::filesystem::path> kept_dir = std::nullopt);
  ~ManifestReader();
  // True when the texts are kept in a file, not in memory.
  bool texts_in_file() const { return store_ != nullptr; }

  // Every file (start-up, SIGHUP, lost events). Throws ManifestError; then
  // nothing of this read is kept.
  k8s::ClusterState read_all();

  // The objects of the files named (names inside the directory, or the
  // file's own name), each as it is now, and deletions of the objects they no
  // longer hold. A file whose text did not change gives nothing. The files of
  // a read that failed (every one: nothing of it was kept) are read again with
  // the next: the state is all or nothing, as with read_all(). Throws
  // ManifestError; then nothing of this read is kept.
  std::vector<ObjectChange> read_changed(const std::set<std::string>& names);

  // read_changed() of every file there is and every file read before (SIGHUP,
  // lost events): a file whose text did not change is compared, not parsed, so
  // no second copy of the cluster is made. Throws ManifestError.
  std::vector<ObjectChange> read_every_file();

 private:
  using Key = std::pair<int, std::string>;  // (ObjectChange::Kind, key)
  // Offsets into a file's text are 32-bit: a file of 4 GiB or more is not
  // read item by item (kMaxListedText), but whole, as any other.
  static constexpr size_t kMaxListedText = UINT32_MAX;
  static constexpr uint32_t kNoKey = UINT32_MAX;  // an Item's name while it is not known
  struct Item {
    uint32_t off = 0, len = 0;  // its text in FileInfo::text
    uint32_t key = 0;           // its name: an index into FileInfo::objects
  };
  struct FileInfo {
    KeptText text;  // as last read
    std::vector<Key> objects;  // the names of its objects, sorted, each once
    // A JSON list read item by item: where its items array opens ('[') and
    // closes (']') in text, and its items in file order. A change of one item
    // is then parsed alone.
    bool listed = false;
    size_t open = 0, close = 0;
    std::vector<Item> items;
  };
  struct FileRead;
  // One file's new text against OLD (null: not read before) into FR: every
  // object of the file, or (a JSON list whose frame OLD read) only the items
  // whose text changed, and the names the file gained and lost.
  void read_file_text(const std::filesystem::path& file, std::string text, const FileInfo* old, FileRead& fr) const;
  // OLD_TEXT: old's text, read back (empty when there is no old or it is not listed)
  bool read_list(const FileInfo* old, std::string_view old_text, FileRead& fr) const;
  bool read_list_patch(const FileInfo& old, std::string_view old_text, FileRead& fr) const;
  KeptText keep(std::string text) const;
  std::filesystem::path file_of(const std::string& name) const;
  std::filesystem::path path_;
  ItemHash item_hash_;
  std::shared_ptr<TextStore> store_;  // null: texts in memory
  std::map<std::string, FileInfo> files_;                  // by name
  // The file of files_ that holds name k (one at most), nullptr when none. A
  // look in every file's names: only names new to a file are looked up, and
  // an index of them (object -> file) was 7 MiB at 110 000 objects (issue 18).
  const std::string* holder_of(const Key& k) const;
  std::set<std::string> broken_;                            // the names of the last read, when it failed
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
