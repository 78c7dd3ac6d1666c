// SPDX-License-Identifier: Apache-2.0
// Fixtures the unit tests share: what a call throws, and a private temporary directory.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>

namespace envsteer::testutil {

// The what() of the E that f() throws, or "<no error>" when it throws none (any other
// exception goes on to the test).
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no error>";
}

// Writes text to file (binary, replacing it); throws when that fails.
inline void write_file(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.good()) throw std::runtime_error("cannot write " + file.string());
}

// A fresh directory under the system's temporary directory, removed with everything in it.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "envsteer-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (!::mkdtemp(tmpl.data())) throw std::system_error(errno, std::generic_category(), "mkdtemp " + tmpl);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Creates the directory rel (and its parents) below the temporary directory.
  std::filesystem::path mk(const std::string& rel) const {
    std::filesystem::create_directories(path_ / rel);
    return path_ / rel;
  }
  // Writes the file rel below the temporary directory; returns its path.
  std::filesystem::path write(const std::string& rel, const std::string& text) const {
    write_file(path_ / rel, text);
    return path_ / rel;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace envsteer::testutil
