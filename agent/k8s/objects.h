// SPDX-License-Identifier: Apache-2.0
// The Kubernetes objects envsteer reads, reduced to the fields it uses.
// Filled by the decoder (agent/k8s/decode.h) from manifests or API JSON.
#pragma once

#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace envsteer::k8s {

// The storage of Labels and ContainerPorts: entries in one heap block (none
// when there are none) that starts with a uint32 entry count; copied and
// compared as bytes. OWNER gives `static VALUE entry(const char* b, uint32_t i)`
// (a view of entry i) and `static size_t bytes(const char* b)` (the block's size).
template <class Owner, class Value>
class EntryBlock {
 public:
  // Random access over the entries; operator* builds the view, so it gives a
  // value, not a reference.
  class const_iterator {
   public:
    using iterator_concept = std::random_access_iterator_tag;
    using iterator_category = std::input_iterator_tag;
    using value_type = Value;
    using difference_type = std::ptrdiff_t;
    using reference = value_type;
    using pointer = void;
    struct arrow {  // it->first, it->name, ...
      value_type v;
      const value_type* operator->() const { return &v; }
    };

    const_iterator() = default;
    value_type operator*() const { return Owner::entry(b_, i_); }
    arrow operator->() const { return {**this}; }
    value_type operator[](difference_type n) const { return *(*this + n); }
    const_iterator& operator++() { ++i_; return *this; }
    const_iterator operator++(int) { const_iterator t = *this; ++i_; return t; }
    const_iterator& operator--() { --i_; return *this; }
    const_iterator operator--(int) { const_iterator t = *this; --i_; return t; }
    const_iterator& operator+=(difference_type n) { i_ = static_cast<uint32_t>(i_ + n); return *this; }
    const_iterator& operator-=(difference_type n) { i_ = static_cast<uint32_t>(i_ - n); return *this; }
    friend const_iterator operator+(const_iterator it, difference_type n) { return it += n; }
    friend const_iterator operator+(difference_type n, const_iterator it) { return it += n; }
    friend const_iterator operator-(const_iterator it, difference_type n) { return it -= n; }
    friend difference_type operator-(const const_iterator& a, const const_iterator& b) {
      return static_cast<difference_type>(a.i_) - static_cast<difference_type>(b.i_);
    }
    bool operator==(const const_iterator& o) const { return b_ == o.b_ && i_ == o.i_; }
    auto operator<=>(const const_iterator& o) const { return i_ <=> o.i_; }

   private:
    friend class EntryBlock;
    friend Owner;
    const_iterator(const char* b, uint32_t i) : b_(b), i_(i) {}
    const char* b_ = nullptr;
    uint32_t i_ = 0;
  };
  using iterator = const_iterator;

  EntryBlock() = default;
  EntryBlock(const EntryBlock& o) : b_(copy(o.b_.get())) {}
  EntryBlock(EntryBlock&&) noexcept = default;
  EntryBlock& operator=(const EntryBlock& o) {
    if (this != &o) b_ = copy(o.b_.get());
    return *this;
  }
  EntryBlock& operator=(EntryBlock&&) noexcept = default;

  size_t size() const { return b_ ? u32(b_.get()) : 0; }
  bool empty() const { return !b_; }
  void clear() { b_.reset(); }
  const_iterator begin() const { return {b_.get(), 0}; }
  const_iterator end() const { return {b_.get(), static_cast<uint32_t>(size())}; }
  // By content: equal entries are the same bytes.
  bool operator==(const EntryBlock& o) const {
    const size_t n = Owner::bytes(b_.get());
    return n == Owner::bytes(o.b_.get()) && (n == 0 || std::memcmp(b_.get(), o.b_.get(), n) == 0);
  }

 protected:
  static uint32_t u32(const char* p) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static std::unique_ptr<char[]> copy(const char* b) {
    if (!b) return nullptr;
    const size_t n = Owner::bytes(b);
    std::unique_ptr<char[]> c(new char[n]);
    std::memcpy(c.get(), b, n);
    return c;
  }
  std::unique_ptr<char[]> b_;
};

// Labels, annotations, a selector: string -> string, sorted by key, with the
// part of std::map's interface the agent uses, as string_views. One heap block
// per object holds every key and value (no block at all when empty):
//   uint32 n | uint32 ends[2n] | bytes
// where the bytes are key 0, value 0, key 1, ... and ends[2i] (ends[2i+1]) is
// the end offset of key (value) i in them. 100 000 pods' labels as a vector of
// string pairs were 64 B an entry plus a heap block per long string; as one
// block they are their bytes and 8 B an entry (issue 18). Labels are small:
// a change builds the block anew (the decoders build each one once).
class Labels : public EntryBlock<Labels, std::pair<std::string_view, std::string_view>> {
 public:
  using value_type = std::pair<std::string_view, std::string_view>;

  Labels() = default;
  Labels(std::initializer_list<value_type> init) : Labels(std::span<const value_type>(init.begin(), init.size())) {}
  // ENTRIES in any order; of a key given twice the first stays (as emplacing them one by one).
  explicit Labels(std::span<const value_type> entries) {
    bool sorted = true;
    for (size_t i = 1; i < entries.size() && sorted; i++) sorted = entries[i - 1].first < entries[i].first;
    if (sorted) {
      b_ = build(entries.data(), entries.size());
      return;
    }
    std::vector<value_type> e(entries.begin(), entries.end());
    std::stable_sort(e.begin(), e.end(), [](const value_type& a, const value_type& b) { return a.first < b.first; });
    e.erase(std::unique(e.begin(), e.end(), [](const value_type& a, const value_type& b) { return a.first == b.first; }),
            e.end());
    b_ = build(e.data(), e.size());
  }

  const_iterator find(std::string_view k) const {
    const_iterator it = lower(k);
    return it != end() && it->first == k ? it : end();
  }
  size_t count(std::string_view k) const { return find(k) != end() ? 1 : 0; }
  bool contains(std::string_view k) const { return find(k) != end(); }
  std::string_view at(std::string_view k) const {
    const_iterator it = find(k);
    if (it == end()) throw std::out_of_range("Labels::at: no key " + std::string(k));
    return it->second;
  }
  // Like std::map: an existing key keeps its value.
  std::pair<const_iterator, bool> emplace(std::string_view k, std::string_view v) {
    const_iterator it = lower(k);
    if (it != end() && it->first == k) return {it, false};
    return {put(it.i_, k, v, false), true};
  }
  // Like std::map: the value of K is V from now on; true when K is new.
  std::pair<const_iterator, bool> insert_or_assign(std::string_view k, std::string_view v) {
    const_iterator it = lower(k);
    const bool found = it != end() && it->first == k;
    if (found && it->second == v) return {it, false};
    return {put(it.i_, k, v, found), !found};
  }
  size_t erase(std::string_view k) {
    const_iterator it = find(k);
    if (it == end()) return 0;
    std::vector<value_type> e(begin(), end());
    e.erase(e.begin() + it.i_);
    b_ = build(e.data(), e.size());  // (from the views into the old block, freed after)
    return 1;
  }
 private:
  friend EntryBlock;
  static value_type entry(const char* b, uint32_t i) {
    const char* ends = b + 4;
    const char* data = ends + 8 * static_cast<size_t>(u32(b));
    const uint32_t kb = i == 0 ? 0 : u32(ends + 8 * static_cast<size_t>(i) - 4);
    const uint32_t ke = u32(ends + 8 * static_cast<size_t>(i));
    const uint32_t ve = u32(ends + 8 * static_cast<size_t>(i) + 4);
    return {{data + kb, ke - kb}, {data + ke, ve - ke}};
  }
  // The size of block B (0 for none).
  static size_t bytes(const char* b) {
    if (!b) return 0;
    const size_t n = u32(b);
    return 4 + 8 * n + u32(b + 4 + 8 * n - 4);
  }
  // The block of N entries E, sorted by key, no key twice; none when N is 0.
  static std::unique_ptr<char[]> build(const value_type* e, size_t n) {
    if (n == 0) return nullptr;
    size_t data = 0;
    for (size_t i = 0; i < n; i++) data += e[i].first.size() + e[i].second.size();
    const size_t head = 4 + 8 * n;
    if (n > UINT32_MAX / 8 || data > UINT32_MAX - head) throw std::length_error("Labels: too large");
    std::unique_ptr<char[]> b(new char[head + data]);
    auto put32 = [&](size_t at, size_t v) {
      const uint32_t x = static_cast<uint32_t>(v);
      std::memcpy(b.get() + at, &x, sizeof x);
    };
    put32(0, n);
    char* out = b.get() + head;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
      if (!e[i].first.empty()) std::memcpy(out + off, e[i].first.data(), e[i].first.size());
      off += e[i].first.size();
      put32(4 + 8 * i, off);
      if (!e[i].second.empty()) std::memcpy(out + off, e[i].second.data(), e[i].second.size());
      off += e[i].second.size();
      put32(8 + 8 * i, off);
    }
    return b;
  }
  // Entry (K, V) at index I, in place of the entry there when REPLACE; the block is built anew.
  const_iterator put(uint32_t i, std::string_view k, std::string_view v, bool replace) {
    std::vector<value_type> e(begin(), end());
    if (replace) e[i].second = v;
    else e.insert(e.begin() + i, value_type{k, v});
    b_ = build(e.data(), e.size());  // K and V may be views into the old block: freed only now
    return {b_.get(), i};
  }
  const_iterator lower(std::string_view k) const {
    uint32_t lo = 0, hi = static_cast<uint32_t>(size());
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (entry(b_.get(), mid).first < k) lo = mid + 1;
      else hi = mid;
    }
    return {b_.get(), lo};
  }
};

// "namespace/name"
std::string object_key(const std::string& ns, const std::string& name);

// spec.ports[].protocol and the like: one byte, not a string (100 000 pods'
// container ports were 72 B each with two strings, issue 18). The decoders
// accept exactly these three names; absent means TCP.
enum class Protocol : uint8_t { TCP, UDP, SCTP };
// "TCP" -> TCP, ...; nullopt for anything else (exact names, as the API writes them).
inline std::optional<Protocol> protocol_of(std::string_view s) {
  if (s == "TCP") return Protocol::TCP;
  if (s == "UDP") return Protocol::UDP;
  if (s == "SCTP") return Protocol::SCTP;
  return std::nullopt;
}
inline const char* protocol_name(Protocol p) {
  switch (p) {
    case Protocol::TCP: return "TCP";
    case Protocol::UDP: return "UDP";
    case Protocol::SCTP: return "SCTP";
  }
  return "?";
}

struct ServicePort {
  std::string name;        // may be empty for a single-port service
  int32_t port = 0;        // 1..65535
  Protocol protocol = Protocol::TCP;
  int32_t target_port = 0; // numeric targetPort; 0 when named or absent
  std::string target_port_name;  // named targetPort, resolved per pod
  std::string app_protocol;      // spec.ports[].appProtocol ("" when absent)
  bool operator==(const ServicePort&) const = default;
};

struct Service {
  std::string ns, name, uid, resource_version;
  std::vector<std::string> cluster_ips;  // spec.clusterIPs, else [spec.clusterIP]; "None" dropped
  std::vector<ServicePort> ports;
  Labels selector;
  Labels annotations;                    // metadata.annotations (envsteer.io/...)
  bool has_selector = false;             // spec.selector present and non-empty
  std::string type;                      // ClusterIP, NodePort, ... (informational)
  bool operator==(const Service&) const = default;
};

// status.phase as the agent tells it apart (a pod that Succeeded or Failed
// never has its cgroup again); a value none of these is Other. One byte, not a
// string: 100 000 pods' phase and QoS class strings were 6 MiB (issue 18).
enum class PodPhase : uint8_t { None, Pending, Running, Succeeded, Failed, Unknown, Other };
inline PodPhase pod_phase_of(std::string_view s) {  // "" = None; exact names, as the API writes them
  if (s.empty()) return PodPhase::None;
  if (s == "Pending") return PodPhase::Pending;
  if (s == "Running") return PodPhase::Running;
  if (s == "Succeeded") return PodPhase::Succeeded;
  if (s == "Failed") return PodPhase::Failed;
  if (s == "Unknown") return PodPhase::Unknown;
  return PodPhase::Other;
}

// status.qosClass, any case (it names the kubelet's slice of the pod's
// cgroup); None when absent, Other when no known class: both mean "look in
// every slice" (podcgroup.h).
enum class QosClass : uint8_t { None, Guaranteed, Burstable, BestEffort, Other };
inline QosClass qos_class_of(std::string_view s) {
  if (s.empty()) return QosClass::None;
  auto is = [&](std::string_view lower) {
    return s.size() == lower.size() && std::equal(s.begin(), s.end(), lower.begin(), [](char a, char b) {
             return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
           });
  };
  if (is("guaranteed")) return QosClass::Guaranteed;
  if (is("burstable")) return QosClass::Burstable;
  if (is("besteffort")) return QosClass::BestEffort;
  return QosClass::Other;
}
// "Guaranteed", "Burstable", "BestEffort"; "" for None and Other.
inline const char* qos_class_name(QosClass q) {
  switch (q) {
    case QosClass::Guaranteed: return "Guaranteed";
    case QosClass::Burstable: return "Burstable";
    case QosClass::BestEffort: return "BestEffort";
    default: return "";
  }
}

// A pod's addresses (status.podIPs): nearly always one, two when dual-stack.
// One address is held in place, more (or one empty string) in a vector of
// their own: 100 000 pods' one-string vectors were a 32-byte heap block each,
// 3.2 MiB (issue 18). The part of std::vector's interface the agent uses; an
// element's address is stable while the IpList is neither changed nor moved.
class IpList {
 public:
  using value_type = std::string;
  using const_iterator = const std::string*;  // the one in place, or the vector's
  using iterator = const_iterator;

  IpList() = default;
  IpList(std::initializer_list<std::string> init) {
    for (const std::string& ip : init) push_back(ip);
  }
  IpList(std::vector<std::string> v) {  // NOLINT: as a vector converts
    if (v.size() == 1 && !v[0].empty()) one_ = std::move(v[0]);
    else if (!v.empty()) more_ = std::make_unique<std::vector<std::string>>(std::move(v));
  }
  IpList(const IpList& o) : one_(o.one_), more_(o.more_ ? std::make_unique<std::vector<std::string>>(*o.more_) : nullptr) {}
  IpList(IpList&&) noexcept = default;
  IpList& operator=(const IpList& o) {
    if (this != &o) *this = IpList(o);
    return *this;
  }
  IpList& operator=(IpList&&) noexcept = default;

  size_t size() const { return more_ ? more_->size() : one_.empty() ? 0 : 1; }
  bool empty() const { return size() == 0; }
  const std::string& operator[](size_t i) const { return more_ ? (*more_)[i] : one_; }
  const_iterator begin() const { return more_ ? more_->data() : &one_; }
  const_iterator end() const { return begin() + size(); }
  void clear() {
    one_.clear();
    more_.reset();
  }
  void reserve(size_t) {}  // (one is held in place; more are few)
  void push_back(std::string ip) {
    if (!more_ && one_.empty() && !ip.empty()) {
      one_ = std::move(ip);
      return;
    }
    if (!more_) {
      more_ = std::make_unique<std::vector<std::string>>();
      if (!one_.empty()) more_->push_back(std::move(one_));
      one_.clear();
    }
    more_->push_back(std::move(ip));
  }
  template <class S>
  void emplace_back(S&& ip) {
    push_back(std::string(std::forward<S>(ip)));
  }
  bool operator==(const IpList& o) const { return std::equal(begin(), end(), o.begin(), o.end()); }
  bool operator==(const std::vector<std::string>& v) const { return std::equal(begin(), end(), v.begin(), v.end()); }

 private:
  std::string one_;                                  // the one address, when there is one (non-empty)
  std::unique_ptr<std::vector<std::string>> more_;   // every address, when not (then one_ is "")
};

struct ContainerPort {
  std::string name;
  int32_t port = 0;
  Protocol protocol = Protocol::TCP;
  bool operator==(const ContainerPort&) const = default;
};

// One container port as ContainerPorts gives it: NAME is a view into them.
struct ContainerPortView {
  std::string_view name;
  int32_t port = 0;
  Protocol protocol = Protocol::TCP;
  ContainerPortView() = default;
  ContainerPortView(std::string_view n, int32_t p, Protocol pr = Protocol::TCP) : name(n), port(p), protocol(pr) {}
  ContainerPortView(const ContainerPort& c) : name(c.name), port(c.port), protocol(c.protocol) {}  // NOLINT
  bool operator==(const ContainerPortView&) const = default;
};

// A pod's container ports (spec.containers[].ports[]) in one heap block (none
// when there are none): uint32 n | int32 port[n] | uint32 name end[n] |
// uint8 protocol[n] | the names. A vector of ContainerPort was a 24-byte
// vector in the Pod and 40 B a port (issue 18). Read-only but for push_back,
// which builds the block anew (the decoders build it once).
class ContainerPorts : public EntryBlock<ContainerPorts, ContainerPortView> {
 public:
  using value_type = ContainerPortView;

  ContainerPorts() = default;
  ContainerPorts(std::initializer_list<ContainerPortView> init)
      : ContainerPorts(std::span<const ContainerPortView>(init.begin(), init.size())) {}
  explicit ContainerPorts(std::span<const ContainerPortView> ports) { b_ = build(ports); }

  ContainerPortView operator[](size_t i) const { return entry(b_.get(), static_cast<uint32_t>(i)); }
  ContainerPortView at(size_t i) const {
    if (i >= size()) throw std::out_of_range("ContainerPorts::at");
    return (*this)[i];
  }
  void push_back(ContainerPortView p) {
    std::vector<ContainerPortView> all(begin(), end());
    all.push_back(p);
    b_ = build(all);  // (P's name may be a view into the old block: freed only now)
  }

 private:
  friend EntryBlock;
  static ContainerPortView entry(const char* b, uint32_t i) {
    const size_t n = u32(b);
    int32_t port;
    std::memcpy(&port, b + 4 + 4 * static_cast<size_t>(i), sizeof port);
    const uint32_t nb = i == 0 ? 0 : u32(b + 4 + 4 * n + 4 * (static_cast<size_t>(i) - 1));
    const uint32_t ne = u32(b + 4 + 4 * n + 4 * static_cast<size_t>(i));
    const char* names = b + 4 + 9 * n;
    return {std::string_view(names + nb, ne - nb), port, static_cast<Protocol>(static_cast<uint8_t>(b[4 + 8 * n + i]))};
  }
  static size_t bytes(const char* b) {
    if (!b) return 0;
    const size_t n = u32(b);
    return 4 + 9 * n + u32(b + 4 + 4 * n + 4 * (n - 1));
  }
  static std::unique_ptr<char[]> build(std::span<const ContainerPortView> p) {
    const size_t n = p.size();
    if (n == 0) return nullptr;
    size_t names = 0;
    for (const auto& e : p) names += e.name.size();
    const size_t head = 4 + 9 * n;
    if (n > UINT32_MAX / 9 || names > UINT32_MAX - head) throw std::length_error("ContainerPorts: too large");
    std::unique_ptr<char[]> b(new char[head + names]);
    const uint32_t n32 = static_cast<uint32_t>(n);
    std::memcpy(b.get(), &n32, 4);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
      std::memcpy(b.get() + 4 + 4 * i, &p[i].port, 4);
      if (!p[i].name.empty()) std::memcpy(b.get() + head + off, p[i].name.data(), p[i].name.size());
      off += p[i].name.size();
      const uint32_t end = static_cast<uint32_t>(off);
      std::memcpy(b.get() + 4 + 4 * n + 4 * i, &end, 4);
      b[4 + 8 * n + i] = static_cast<char>(static_cast<uint8_t>(p[i].protocol));
    }
    return b;
  }
};

struct Pod {
  std::string ns, name, uid, resource_version;
  Labels labels;
  Labels annotations;
  IpList pod_ips;                    // status.podIPs, else [status.podIP]
  bool ready = false;                // status.conditions[type=Ready].status == "True"
  bool terminating = false;          // metadata.deletionTimestamp set
  PodPhase phase = PodPhase::None;   // status.phase (pod_phase_of)
  QosClass qos_class = QosClass::None;  // status.qosClass (qos_class_of)
  std::string node_name;
  ContainerPorts ports;              // spec.containers[].ports[]
  bool operator==(const Pod&) const = default;
};

struct EndpointPort {
  std::string name;
  int32_t port = 0;
  Protocol protocol = Protocol::TCP;
  bool operator==(const EndpointPort&) const = default;
};

struct ObjectRef {
  std::string kind, ns, name, uid;
  bool operator==(const ObjectRef&) const = default;
};

struct Endpoint {
  std::vector<std::string> addresses;
  bool ready = true;  // conditions.ready; absent means ready (API semantics)
  std::optional<ObjectRef> target;  // targetRef
  std::string node_name;
  bool operator==(const Endpoint&) const = default;
};

struct EndpointSlice {
  std::string ns, name, uid, resource_version;
  std::string service_name;  // label kubernetes.io/service-name
  std::string address_type;  // IPv4, IPv6, FQDN
  std::vector<Endpoint> endpoints;
  std::vector<EndpointPort> ports;
  bool operator==(const EndpointSlice&) const = default;
};

// A Namespace (cluster-scoped): only its labels matter (participation by
// namespace label, participation.h). Keyed by its name.
struct Namespace {
  std::string name, uid, resource_version;
  Labels labels;
  bool operator==(const Namespace&) const = default;
};

// An object a source has but could not decode (the Kubernetes source skips it
// and the model reports it; the manifest source rejects the whole file).
struct InvalidObject {
  std::string kind;  // "Service", "Pod", "EndpointSlice", "Namespace"
  std::string key;   // "namespace/name" ("name" for a Namespace)
  std::string uid;
  std::string message;
  bool operator==(const InvalidObject&) const = default;
};

// Everything a source knows, keyed by "namespace/name".
struct ClusterState {
  std::map<std::string, Service> services;
  std::map<std::string, Pod> pods;
  std::map<std::string, EndpointSlice> slices;
  std::map<std::string, Namespace> namespaces;  // by name
  std::vector<InvalidObject> invalid;  // sorted by (kind, key)

  size_t size() const { return services.size() + pods.size() + slices.size() + namespaces.size(); }
};

}  // namespace envsteer::k8s
