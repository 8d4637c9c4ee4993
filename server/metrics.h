// Prometheus text exposition (format 0.0.4) of what the service does: requests by route
// and status, latency per route, batch sizes, inference time, queue depth, model info.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace seqrec::server {

// A fixed-bucket histogram, safe to observe from any thread.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the _bucket / _sum / _count lines for `name` with `labels` ("" or `route="/x"`).
  void write(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mutex_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // `model`: the model that answered (routes that run one), also counted per model.
  void count_request(const std::string& route, int status, double seconds, const std::string& model = {});
  void observe_batch(size_t batch_size, double seconds);
  // Where one request's time goes: "parse" (routing and JSON), "history" (the store read of a
  // user_id request), "queue" (waiting for a worker), "serialize" (the answer's JSON), "write"
  // (the HTTP answer to the socket). Inference itself is seqrec_inference_seconds.
  void observe_stage(std::string_view stage, double seconds);
  void count_reload(bool ok, const std::string& model = {});
  // Gauges read at scrape time.
  std::function<size_t()> queue_depth;
  // One label set per served model: `model="a",source="pmixer",n_items="9725",...`.
  std::function<std::vector<std::string>()> model_labels;
  // More families appended at scrape time (the HTTP front end's connection figures).
  std::vector<std::function<void(std::string& out)>> collectors;

  std::string render() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (route, status) -> count
  std::map<std::string, Histogram> latency_;                    // route -> seconds
  std::map<std::tuple<std::string, std::string, int>, uint64_t> model_requests_;  // (model, route, status)
  std::map<std::string, Histogram> model_latency_;                                 // model -> seconds
  std::map<std::pair<std::string, bool>, uint64_t> model_reloads_;                 // (model, ok)
  std::map<std::string, Histogram, std::less<>> stages_;  // fixed at construction
  Histogram batch_size_;
  Histogram inference_seconds_;
  std::atomic<uint64_t> reloads_ok_{0}, reloads_failed_{0};
};

}  // namespace seqrec::server
