// SPDX-License-Identifier: Apache-2.0
// A small Kubernetes API client over libcurl: connection settings from the
// in-cluster service account or a kubeconfig file, plain GETs, and watch
// streams read line by line.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace envsteer::sources {

class KubeConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct KubeConfig {
  std::string server;           // https://host:port
  std::string ca_file;          // PEM file, or
  std::string ca_data;          // PEM text (from certificate-authority-data)
  std::string token;            // bearer token, or
  std::string token_file;       // re-read on every request (service-account tokens rotate)
  std::string client_cert_file, client_key_file;  // client-certificate auth, or
  std::string client_cert_data, client_key_data;  // the same inline (PEM text)
  bool insecure_skip_tls_verify = false;
  std::string source;           // where it came from, for logs and status
};

// The pod's service account: KUBERNETES_SERVICE_HOST/PORT, the token and CA
// under /var/run/secrets/kubernetes.io/serviceaccount (sa_dir for tests).
KubeConfig in_cluster_config(
    const std::filesystem::path& sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");

// A kubeconfig file: the given context, else current-context. Relative file
// paths are resolved against the kubeconfig's directory. Throws KubeConfigError
// naming the file and what is wrong.
KubeConfig load_kubeconfig(const std::filesystem::path& file, const std::string& context = "");

struct HttpResponse {
  long status = 0;     // 0: no response (transport error in `error`)
  std::string body;
  std::string error;
};

class KubeClient {
 public:
  explicit KubeClient(KubeConfig cfg);
  ~KubeClient();
  KubeClient(const KubeClient&) = delete;
  KubeClient& operator=(const KubeClient&) = delete;

  // GET path?query with a timeout.
  HttpResponse get(const std::string& path_query, std::chrono::seconds timeout = std::chrono::seconds(30));

  // POST a JSON body to path with a timeout.
  HttpResponse post(const std::string& path, const std::string& json_body,
                    std::chrono::seconds timeout = std::chrono::seconds(10));

  // GET a streaming response, calling on_line for every complete line. Stops
  // when the server ends the stream, on_line returns false, stop becomes true,
  // or nothing arrives for `idle` (a dead stream). Returns the HTTP status and
  // transport error, if any.
  HttpResponse stream(const std::string& path_query, const std::function<bool(std::string_view)>& on_line,
                      const std::atomic<bool>& stop, std::chrono::seconds idle = std::chrono::seconds(90));

  const KubeConfig& config() const { return cfg_; }

 private:
  void* prepare(const std::string& path_query, void* headers_out);  // a configured CURL handle
  std::string bearer() const;

  KubeConfig cfg_;
};

// "a=b,c" style selector values and paths are passed through curl's escaping.
std::string url_escape(std::string_view s);

}  // namespace envsteer::sources
