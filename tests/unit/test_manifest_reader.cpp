// SPDX-License-Identifier: Apache-2.0
// ManifestReader: read_every_file() (SIGHUP, lost events) gives exactly the changes
// between the files as last read and as they are now, without parsing unchanged files;
// JSON lists decoded item by item give what a whole-DOM decode gives.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>

#include "fixtures.h"
#include "k8s/decode.h"
#include "sources/manifest.h"

namespace envsteer::sources {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string pod_json(const std::string& name, const std::string& env, bool with_kind = true) {
  return std::string("{") + (with_kind ? "\"apiVersion\":\"v1\",\"kind\":\"Pod\"," : "") +
         "\"metadata\":{\"name\":\"" + name + "\",\"namespace\":\"a\",\"labels\":{\"virtual-env\":\"" + env +
         "\"}},\"status\":{\"podIP\":\"10.1.0.1\",\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}";
}

std::string list(const std::string& kind, const std::string& items) {
  return "{\"apiVersion\":\"v1\",\"items\":[" + items + "],\"kind\":\"" + kind + "\"}";
}

std::string error_of(ManifestReader& r, const std::string& name) {
  try {
    r.read_changed({name});
  } catch (const ManifestError& e) {
    return e.what();
  }
  return "";
}

// The whole-directory read (the reference): its error ("" when none) and state.
std::string whole_read(const fs::path& dir, k8s::ClusterState& whole) {
  try {
    whole = load_manifests(dir);
  } catch (const ManifestError& e) {
    return e.what();
  }
  return "";
}

// The changes as key -> the pod's env label ("" = deleted, or not a Pod).
std::map<std::string, std::string> envs_of(const std::vector<ObjectChange>& ch) {
  std::map<std::string, std::string> out;
  for (const auto& c : ch) {
    const auto* p = std::get_if<k8s::Pod>(&c.object);
    out[c.key] = p ? std::string(p->labels.at("virtual-env")) : "";
  }
  return out;
}

class ManifestReaderTest : public ::testing::Test {
 protected:
  void write(const std::string& name, const std::string& text) { tmp_.write(name, text); }
  testutil::TempDir tmp_{"envsteer-reader"};
  const fs::path dir_ = tmp_.path();
};

TEST_F(ManifestReaderTest, EveryFileGivesOnlyWhatChanged) {
  write("1.json", list("List", pod_json("p1", "dev.a")));
  write("2.json", list("List", pod_json("p2", "dev.b") + "," + pod_json("p3", "dev.b")));
  ManifestReader r(dir_);
  auto all = r.read_all();
  ASSERT_EQ(all.pods.size(), 3u);
  EXPECT_TRUE(r.read_every_file().empty());  // nothing changed: nothing parsed, nothing given
  write("2.json", list("List", pod_json("p2", "dev.c")));  // p2 changed, p3 gone
  write("3.json", list("List", pod_json("p4", "dev.d")));  // a new file
  auto ch = r.read_every_file();
  std::map<std::string, std::string> got;  // key -> env, "" = deleted
  for (const auto& c : ch) {
    const auto* p = std::get_if<k8s::Pod>(&c.object);
    got[c.key] = p ? p->labels.at("virtual-env") : "";
  }
  // the changed items of a changed file (a JSON list is read item by item)
  EXPECT_EQ(got, (std::map<std::string, std::string>{{"a/p2", "dev.c"}, {"a/p3", ""}, {"a/p4", "dev.d"}}));
  fs::remove(dir_ / "1.json");
  ch = r.read_every_file();
  ASSERT_EQ(ch.size(), 1u);
  EXPECT_EQ(ch[0].key, "a/p1");
  EXPECT_TRUE(std::holds_alternative<std::monostate>(ch[0].object));
  EXPECT_TRUE(r.read_every_file().empty());
}

TEST_F(ManifestReaderTest, EveryFileKeepsTheAllOrNothingRule) {
  write("1.json", list("List", pod_json("p1", "dev.a")));
  ManifestReader r(dir_);
  r.read_all();
  write("2.json", list("List", pod_json("p1", "dev.b")));  // the same pod again
  EXPECT_THROW(r.read_every_file(), ManifestError);
  fs::remove(dir_ / "2.json");
  EXPECT_TRUE(r.read_every_file().empty());
}

// Item-by-item decoding of a JSON list against the whole-DOM decode (k8s::add_object).
void expect_like_dom(const fs::path& dir, const std::string& text) {
  k8s::ClusterState dom;
  std::string dom_error, streamed_error;
  try {
    k8s::add_object(nlohmann::json::parse(text), dom);
  } catch (const std::exception& e) {
    dom_error = e.what();
  }
  k8s::ClusterState streamed;
  try {
    streamed = load_manifests(dir);
  } catch (const ManifestError& e) {
    streamed_error = e.what();
  }
  if (dom_error.empty()) {
    EXPECT_EQ(streamed_error, "") << text;
    EXPECT_EQ(streamed.pods, dom.pods) << text;
  } else {
    EXPECT_THAT(streamed_error, HasSubstr(dom_error)) << text;
  }
}

TEST_F(ManifestReaderTest, ListsDecodedWhileParsedLikeAWholeDocument) {
  const std::string a = pod_json("p1", "dev.a"), b = pod_json("p2", "dev.b");
  for (const std::string& text : {
           list("List", a + "," + b),
           list("PodList", pod_json("p1", "dev.a", false) + "," + b),  // typed list: items without kind
           list("List", a + "," + a),                                   // duplicate
           list("List", a + ",{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{}}"),  // bad item
           list("List", ""),
           "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"x\"},\"items\":[" + a + "]}",  // no list
       }) {
    write("m.json", text);
    expect_like_dom(dir_, text);
  }
  // a syntax error is reported even after a bad item (as the whole-document parse does)
  write("m.json", list("List", "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{}}") + "x");
  try {
    load_manifests(dir_);
    ADD_FAILURE() << "no error";
  } catch (const ManifestError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("line 1 column"));
  }
}

// ManifestReader reads JSON lists item by item: the same objects and errors as
// the whole read (load_manifests), for lists, typed lists, duplicates, bad items,
// syntax errors, escaped keys and odd spacing.
TEST_F(ManifestReaderTest, ItemByItemReadsLikeTheWholeFile) {
  const std::string a = pod_json("p1", "dev.a"), b = pod_json("p2", "dev.b");
  const std::string svc = "{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"s\",\"namespace\":\"a\"},"
                          "\"spec\":{\"clusterIP\":\"10.96.0.1\",\"ports\":[{\"port\":80}]}}";
  const std::string ns = "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"a\",\"labels\":{\"x\":\"y\"}}}";
  for (const std::string& text : {
           list("List", a + "," + b + "," + svc + "," + ns),
           " {\n \"apiVersion\" : \"v1\" , \"items\" : [ " + a + " ,\n\t" + b + " ] , \"kind\":\"List\" } \n",
           list("PodList", pod_json("p1", "dev.a", false) + "," + b),
           list("List", a + "," + a),
           list("List", a + "," + pod_json("p1", "dev.b")),  // one name twice, texts differ
           list("List", a + ",{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{}}"),
           list("List", a + "," + list("List", b)),  // a list inside
           list("List", ""),
           list("List", a) + "x",
           list("List", a + ",") ,
           "{\"apiVersion\":\"v1\",\"it\\u0065ms\":[" + a + "],\"kind\":\"List\"}",  // an escaped key
           "{\"apiVersion\":\"v1\",\"items\":[" + a + "],\"items\":[" + b + "],\"kind\":\"List\"}",
           "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"x\"},\"items\":[" + a + "]}",
           list("List", "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"q\\\"]}\",\"namespace\":\"a\"}}"),
       }) {
    write("m.json", text);
    std::string reader_error;
    k8s::ClusterState whole, got;
    const std::string whole_error = whole_read(dir_, whole);
    ManifestReader r(dir_);
    try {
      got = r.read_all();
    } catch (const ManifestError& e) {
      reader_error = e.what();
    }
    EXPECT_EQ(reader_error, whole_error) << text;
    EXPECT_EQ(got.pods, whole.pods) << text;
    EXPECT_EQ(got.services, whole.services) << text;
    EXPECT_EQ(got.namespaces, whole.namespaces) << text;
  }
}

// One item of a JSON list changed: only it is given (parsed); an item gone is a
// deletion, a new one an object; a change of the text around the items reads all.
TEST_F(ManifestReaderTest, OneChangedItemIsTheOnlyChange) {
  auto items = [](std::initializer_list<std::pair<const char*, const char*>> pods) {
    std::string out;
    for (const auto& [name, env] : pods) out += (out.empty() ? "" : ",") + pod_json(name, env);
    return out;
  };
  write("1.json", list("List", items({{"p1", "dev.a"}, {"p2", "dev.a"}, {"p3", "dev.a"}})));
  ManifestReader r(dir_);
  ASSERT_EQ(r.read_all().pods.size(), 3u);
  auto got = [&](const std::vector<ObjectChange>& ch) {
    std::map<std::string, std::string> out;  // key -> env, "" = deleted
    for (const auto& c : ch) {
      const auto* p = std::get_if<k8s::Pod>(&c.object);
      out[c.key] = p ? p->labels.at("virtual-env") : "";
    }
    return out;
  };
  write("1.json", list("List", items({{"p1", "dev.a"}, {"p2", "dev.b"}, {"p3", "dev.a"}})));
  EXPECT_EQ(got(r.read_changed({"1.json"})), (std::map<std::string, std::string>{{"a/p2", "dev.b"}}));
  write("1.json", list("List", items({{"p1", "dev.a"}, {"p2", "dev.b"}})));  // p3 gone
  EXPECT_EQ(got(r.read_changed({"1.json"})), (std::map<std::string, std::string>{{"a/p3", ""}}));
  write("1.json", list("List", items({{"p4", "dev.c"}, {"p1", "dev.a"}, {"p2", "dev.b"}})));  // p4 new, order moved
  EXPECT_EQ(got(r.read_changed({"1.json"})), (std::map<std::string, std::string>{{"a/p4", "dev.c"}}));
  // an item renamed to the name of another: the whole read's duplicate error, nothing kept
  write("1.json", list("List", items({{"p4", "dev.c"}, {"p1", "dev.a"}, {"p1", "dev.b"}})));
  EXPECT_THAT(error_of(r, "1.json"), HasSubstr("duplicate"));
  write("1.json", list("List", items({{"p4", "dev.c"}, {"p1", "dev.a"}, {"p2", "dev.b"}})));
  EXPECT_TRUE(r.read_changed({"1.json"}).empty());  // back as it was read last
  // a syntax error in a changed item: the whole read's message (line and column of the file)
  write("1.json", list("List", items({{"p4", "dev.c"}, {"p1", "dev.a"}})) + ",");
  EXPECT_THAT(error_of(r, "1.json"), HasSubstr("line 1 column"));
  // the frame changed (a typed list now): everything again, as before
  write("1.json", "{\"apiVersion\":\"v1\",\"kind\":\"PodList\",\"items\":[" + items({{"p4", "dev.c"}, {"p1", "dev.d"}}) + "]}");
  EXPECT_EQ(got(r.read_changed({"1.json"})),
            (std::map<std::string, std::string>{{"a/p1", "dev.d"}, {"a/p2", ""}, {"a/p4", "dev.c"}}));
}


// The pods a reader holds after its reads: read_all() and then every change given.
class Tracked {
 public:
  explicit Tracked(ManifestReader& r) : r_(r) {
    for (const auto& [k, p] : r_.read_all().pods) pods_[k] = p;
  }
  // The error of a read_changed() of every name, "" when it read.
  std::string read(const std::set<std::string>& names) {
    try {
      for (auto& c : r_.read_changed(names)) {
        if (const auto* p = std::get_if<k8s::Pod>(&c.object)) pods_[c.key] = *p;
        else pods_.erase(c.key);
      }
    } catch (const ManifestError& e) {
      return e.what();
    }
    return "";
  }
  const std::map<std::string, k8s::Pod>& pods() const { return pods_; }

 private:
  ManifestReader& r_;
  std::map<std::string, k8s::Pod> pods_;
};

// Where the texts are kept: in an unlinked file of /tmp (the default), in memory.
const std::optional<fs::path> kKeptModes[] = {fs::path("/tmp"), fs::path()};

// Whether DIR can hold the reader's file (O_TMPFILE and hole punching), asked
// apart from the reader: a file system without them keeps the texts in memory.
bool can_keep_in(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  const std::string page(4096, 'x');
  const bool ok = ::pwrite(fd, page.data(), page.size(), 0) == static_cast<ssize_t>(page.size()) &&
                  ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0;
  ::close(fd);
  return ok;
}

// The texts kept in a file are compared byte by byte like those in memory: an
// edit that keeps the size is seen, a file written back as it was is not read
// again (texts released and kept again many times). Without a usable directory
// the texts stay in memory.
TEST_F(ManifestReaderTest, KeptTextsInAFileAreComparedByteByByte) {
  testutil::TempDir kept_dir{"envsteer-kept"};
  for (const auto& kept : {std::optional<fs::path>(kept_dir.path()), std::optional<fs::path>(dir_ / "no-such-dir")}) {
    const bool in_file = kept == kept_dir.path() && can_keep_in(kept_dir.path());
    write("1.json", list("List", pod_json("p1", "dev.a") + "," + pod_json("p2", "dev.a")));
    write("2.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n1\n");
    ManifestReader r(dir_, {}, kept);
    ASSERT_EQ(r.texts_in_file(), in_file);
    ASSERT_EQ(r.read_all().pods.size(), 2u);
    EXPECT_TRUE(r.read_every_file().empty());
    for (int i = 0; i < 20; i++) {
      // same size, one byte differs (dev.b <-> dev.c): parsed and given
      const std::string env = i % 2 ? "dev.b" : "dev.c";
      write("1.json", list("List", pod_json("p1", "dev.a") + "," + pod_json("p2", env)));
      EXPECT_EQ(envs_of(r.read_every_file()), (std::map<std::string, std::string>{{"a/p2", env}})) << i;
      EXPECT_TRUE(r.read_changed({"1.json", "2.yaml"}).empty()) << i;  // as read last
    }
    write("2.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: n2\n");  // same size
    EXPECT_EQ(r.read_every_file().size(), 2u);  // n1 gone, n2 new
    fs::remove(dir_ / "1.json");
    fs::remove(dir_ / "2.yaml");
    EXPECT_EQ(envs_of(r.read_every_file()), (std::map<std::string, std::string>{{"a/p1", ""}, {"a/p2", ""}, {"n2", ""}}));
  }
}

// An unchanged item is known by its bytes, not by its hash: with a hash that
// ignores the env label (every relabelled item collides with its old text) or
// one that is the same for every item, a changed item is still parsed and given.
TEST_F(ManifestReaderTest, AHashHitIsComparedByteByByte) {
  const ManifestReader::ItemHash without_env = [](std::string_view s) {
    auto at = s.find("virtual-env");
    return static_cast<uint64_t>(std::hash<std::string_view>{}(s.substr(0, at)));
  };
  const ManifestReader::ItemHash constant = [](std::string_view) { return uint64_t{42}; };
  for (const auto& kept : kKeptModes)
  for (const auto& hash : {without_env, constant}) {
    write("1.json", list("List", pod_json("p1", "dev.a") + "," + pod_json("p2", "dev.a") + "," + pod_json("p3", "dev.a")));
    ManifestReader r(dir_, hash, kept);
    ASSERT_EQ(r.texts_in_file(), !kept->empty() && can_keep_in(*kept));
    Tracked t(r);
    ASSERT_EQ(t.pods().size(), 3u);
    // relabelled in place: the item's old text has its hash
    write("1.json", list("List", pod_json("p1", "dev.a") + "," + pod_json("p2", "dev.b") + "," + pod_json("p3", "dev.a")));
    EXPECT_EQ(t.read({"1.json"}), "");
    EXPECT_EQ(t.pods().at("a/p2").labels.at("virtual-env"), "dev.b");
    // moved and relabelled: every item is compared with the old ones of its hash
    write("1.json", list("List", pod_json("p3", "dev.c") + "," + pod_json("p2", "dev.b") + "," + pod_json("p1", "dev.a")));
    EXPECT_EQ(t.read({"1.json"}), "");
    EXPECT_EQ(t.pods().at("a/p3").labels.at("virtual-env"), "dev.c");
    EXPECT_EQ(t.pods().at("a/p2").labels.at("virtual-env"), "dev.b");
    EXPECT_EQ(t.pods().at("a/p1").labels.at("virtual-env"), "dev.a");
    EXPECT_EQ(t.pods(), load_manifests(dir_).pods);
  }
}

// A file read item by item keeps its names sorted and each item by its name's
// index: a change that adds or removes names sorting before the kept items
// renumbers them, and the changes after it still name the right objects (a
// deletion, a move, a duplicate, a name moved between two files).
TEST_F(ManifestReaderTest, ItemNamesStayRightWhenNamesBeforeThemComeAndGo) {
  using Items = std::vector<std::pair<std::string, std::string>>;  // name, env
  auto text = [](const Items& items) {
    std::string out;
    for (const auto& [name, env] : items) out += (out.empty() ? "" : ",") + pod_json(name, env);
    return list("List", out);
  };
  using Got = std::map<std::string, std::string>;
  for (const auto& kept : kKeptModes) {
    write("1.json", text({{"p4", "e"}, {"p6", "e"}, {"p8", "e"}}));
    fs::remove(dir_ / "2.json");
    ManifestReader r(dir_, {}, kept);
    ASSERT_EQ(r.read_all().pods.size(), 3u);
    const std::vector<std::pair<Items, Got>> steps = {
        {{{"p2", "e"}, {"p4", "e"}, {"p6", "e"}, {"p8", "e"}}, {{"a/p2", "e"}}},  // a name before all
        {{{"p2", "e"}, {"p6", "e"}, {"p8", "e"}}, {{"a/p4", ""}}},                // one between gone
        {{{"p2", "e"}, {"p6", "e"}, {"p8", "f"}}, {{"a/p8", "f"}}},               // the last relabelled
        {{{"p1", "e"}, {"p6", "e"}, {"p8", "f"}}, {{"a/p1", "e"}, {"a/p2", ""}}},  // the first renamed
        {{{"p6", "e"}, {"p8", "f"}, {"p1", "e"}}, {}},                            // moved: the same items
        {{{"p6", "e"}, {"p1", "e"}}, {{"a/p8", ""}}},                             // after the move: p8 gone
        {{{"p0", "g"}, {"p6", "e"}, {"p1", "e"}}, {{"a/p0", "g"}}},               // a name before all again
        {{{"p0", "g"}, {"p1", "f"}}, {{"a/p1", "f"}, {"a/p6", ""}}},             // both kinds at once
    };
    for (size_t i = 0; i < steps.size(); i++) {
      write("1.json", text(steps[i].first));
      EXPECT_EQ(envs_of(r.read_changed({"1.json"})), steps[i].second) << "step " << i;
    }
    // an item duplicated: the whole read's error; nothing kept, the file as read last again gives nothing
    write("1.json", text({{"p0", "g"}, {"p1", "f"}, {"p1", "f"}}));
    EXPECT_THAT(error_of(r, "1.json"), HasSubstr("duplicate"));
    write("1.json", text({{"p0", "g"}, {"p1", "f"}}));
    EXPECT_TRUE(r.read_changed({"1.json"}).empty());
    // a name moved to another file in one read: given, not deleted; then a
    // name of the first file before the moved one's place is deleted by name
    write("1.json", text({{"p0", "g"}}));
    write("2.json", text({{"p1", "f"}, {"p9", "e"}}));
    EXPECT_EQ(envs_of(r.read_changed({"1.json", "2.json"})), (Got{{"a/p1", "f"}, {"a/p9", "e"}}));
    write("1.json", text({}));
    EXPECT_EQ(envs_of(r.read_changed({"1.json"})), (Got{{"a/p0", ""}}));
    write("2.json", text({{"p9", "e"}}));
    EXPECT_EQ(envs_of(r.read_changed({"2.json"})), (Got{{"a/p1", ""}}));
    EXPECT_EQ(load_manifests(dir_).pods.size(), 1u);
    EXPECT_TRUE(r.read_every_file().empty());
  }
}

// Random moves of pods between files (relabelled or not, a file removed or
// new, a name in two files now and then), read file by file as events name
// them or all at once: after each read the reader's objects are the whole
// directory's, and it fails when the whole read fails (which file holds a name
// is kept per name, pointing at the files' own copies of the names).
TEST_F(ManifestReaderTest, RandomMovesBetweenFilesReadLikeTheWholeDirectory) {
  std::mt19937 rng(181);
  auto pick = [&](size_t m) { return std::uniform_int_distribution<size_t>(0, m - 1)(rng); };
  const std::vector<std::string> names = {"a.json", "b.json", "c.json"};
  std::map<std::string, std::vector<std::string>> files;  // file -> its items; absent: no file
  auto write_file = [&](const std::string& f) {
    std::string items;
    for (const auto& it : files[f]) items += (items.empty() ? "" : ",") + it;
    write(f, list("List", items));
  };
  for (int i = 0; i < 6; i++) files[names[i % 3]].push_back(pod_json("p" + std::to_string(i), "dev.e0"));
  for (const auto& f : names) write_file(f);
  ManifestReader r(dir_);
  Tracked t(r);
  int errors = 0, reads = 0;
  for (int step = 0; step < 300; step++) {
    std::set<std::string> touched;
    for (size_t n = 1 + pick(2); n > 0; n--) {
      const std::string& from = names[pick(3)];
      const std::string& to = names[pick(3)];
      switch (pick(6)) {
        case 0: case 1: case 2: {  // move one pod (maybe relabelled) to another file, or within one
          if (!files.count(from) || files[from].empty()) break;
          auto& src = files[from];
          size_t i = pick(src.size());
          std::string item = src[i];
          if (pick(2)) {
            auto at = item.find("dev.e");
            item.replace(at, 6, "dev.e" + std::to_string(pick(10)));
          }
          src.erase(src.begin() + static_cast<ptrdiff_t>(i));
          auto& dst = files[to];
          dst.insert(dst.begin() + static_cast<ptrdiff_t>(pick(dst.size() + 1)), item);
          touched.insert(from);
          touched.insert(to);
          break;
        }
        case 3:  // a new pod, or a name another file may hold
          files[to].push_back(pod_json("p" + std::to_string(pick(9)), "dev.e" + std::to_string(pick(10))));
          touched.insert(to);
          break;
        case 4:  // a file removed (its pods with it)
          if (files.erase(from)) {
            fs::remove(dir_ / from);
            touched.insert(from);
          }
          break;
        case 5:  // relabel in place
          if (files.count(from) && !files[from].empty()) {
            auto& it = files[from][pick(files[from].size())];
            it.replace(it.find("dev.e"), 6, "dev.e" + std::to_string(pick(10)));
            touched.insert(from);
          }
          break;
      }
    }
    for (const auto& f : touched)
      if (files.count(f)) write_file(f);
    k8s::ClusterState whole;
    const std::string whole_error = whole_read(dir_, whole);
    std::set<std::string> asked = touched;
    if (pick(4) == 0) asked.insert(names.begin(), names.end());  // as for lost events
    const std::string got_error = t.read(asked);
    ASSERT_EQ(got_error.empty(), whole_error.empty()) << "step " << step << ": " << got_error << " / " << whole_error;
    if (whole_error.empty()) {
      ASSERT_EQ(t.pods(), whole.pods) << "step " << step;
      reads++;
    } else {
      errors++;
    }
  }
  EXPECT_GT(reads, 100);
  EXPECT_GT(errors, 5);
}

// Random edits of a JSON list (relabel, insert, delete, move, duplicate an
// item, spacing, the frame, a syntax error): after each read the reader's
// objects are the whole read's, and its errors the whole read's; with the
// standard hash and with one that collides often.
TEST_F(ManifestReaderTest, RandomEditsReadLikeTheWholeFile) {
  std::mt19937 rng(18);
  const ManifestReader::ItemHash few = [](std::string_view s) { return static_cast<uint64_t>(s.size() % 3); };
  for (const auto& kept : kKeptModes)
  for (const ManifestReader::ItemHash& hash : {ManifestReader::ItemHash{}, few}) {
    std::vector<std::string> items;
    for (int i = 0; i < 8; i++) items.push_back(pod_json("p" + std::to_string(i), "dev.e" + std::to_string(i % 3)));
    std::string sep = ",", kind = "List", tail;
    auto text = [&] {
      std::string out;
      for (size_t i = 0; i < items.size(); i++) out += (i ? sep : "") + items[i];
      return list(kind, out) + tail;
    };
    write("1.json", text());
    ManifestReader r(dir_, hash, kept);
    ASSERT_EQ(r.texts_in_file(), !kept->empty() && can_keep_in(*kept));
    Tracked t(r);
    int errors = 0, reads = 0;
    for (int step = 0; step < 400; step++) {
      const size_t n = items.size();
      auto pick = [&](size_t m) { return std::uniform_int_distribution<size_t>(0, m - 1)(rng); };
      switch (pick(9)) {
        case 0: case 1: case 2:  // relabel one
          if (n) items[pick(n)] = pod_json("p" + std::to_string(pick(12)), "dev.e" + std::to_string(pick(5)));
          break;
        case 3:  // insert
          items.insert(items.begin() + static_cast<ptrdiff_t>(pick(n + 1)),
                       pod_json("p" + std::to_string(pick(12)), "dev.e" + std::to_string(pick(5))));
          break;
        case 4:  // delete
          if (n) items.erase(items.begin() + static_cast<ptrdiff_t>(pick(n)));
          break;
        case 5:  // move
          if (n > 1) std::swap(items[pick(n)], items[pick(n)]);
          break;
        case 6:  // duplicate one
          if (n) items.insert(items.begin() + static_cast<ptrdiff_t>(pick(n + 1)), items[pick(n)]);
          break;
        case 7:  // spacing between items
          sep = pick(2) ? "," : " ,\n ";
          break;
        case 8:  // the frame, or a syntax error after the list
          if (pick(2)) kind = pick(2) ? "List" : "PodList";
          else tail = pick(3) == 0 ? "x" : "";
          break;
      }
      // no duplicate names for most steps: drop one of a name twice now and then
      if (pick(3)) {
        std::set<std::string> seen;
        std::vector<std::string> kept;
        for (const auto& it : items) {
          auto at = it.find("\"name\":\"");
          if (seen.insert(it.substr(at, it.find('"', at + 8) - at)).second) kept.push_back(it);
        }
        items = kept;
      }
      write("1.json", text());
      k8s::ClusterState whole;
      const std::string whole_error = whole_read(dir_, whole);
      std::string got_error = t.read({"1.json"});
      ASSERT_EQ(got_error, whole_error) << "step " << step << ": " << text();
      if (whole_error.empty()) {
        ASSERT_EQ(t.pods(), whole.pods) << "step " << step << ": " << text();
        reads++;
      } else {
        errors++;
      }
    }
    EXPECT_GT(reads, 100);  // the edits were mostly readable ...
    EXPECT_GT(errors, 5);   // ... and some not
  }
}

}  // namespace
}  // namespace envsteer::sources
