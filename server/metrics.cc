#include "server/metrics.h"

#include <cstdio>

#include "engine/platform.h"

namespace seqrec::server {

namespace {
std::vector<double> latency_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}
std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}
std::string with(const std::string& labels, const std::string& extra) {
  return "{" + labels + (labels.empty() ? "" : ",") + extra + "}";
}
}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  std::lock_guard lock(mutex_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::write(std::string& out, const std::string& name, const std::string& labels) const {
  std::lock_guard lock(mutex_);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket" + with(labels, "le=\"" + number(bounds_[i]) + "\"") + " " + std::to_string(cumulative) + "\n";
  }
  cumulative += counts_.back();
  out += name + "_bucket" + with(labels, "le=\"+Inf\"") + " " + std::to_string(cumulative) + "\n";
  const std::string plain = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + plain + " " + number(sum_) + "\n";
  out += name + "_count" + plain + " " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : batch_size_({1, 2, 4, 8, 16, 32, 64, 128, 256}), inference_seconds_(latency_buckets()) {
  // Microseconds matter here: a stage of one request is often under 10 us.
  const std::vector<double> fine = {2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 2e-2, 1e-1, 1.0};
  for (const char* stage : {"parse", "history", "queue", "serialize", "write"}) stages_.try_emplace(stage, fine);
}

void Metrics::observe_stage(std::string_view stage, double seconds) {
  if (const auto it = stages_.find(stage); it != stages_.end()) it->second.observe(seconds);
}

void Metrics::count_request(const std::string& route, int status, double seconds, const std::string& model) {
  std::lock_guard lock(mutex_);
  ++requests_[{route, status}];
  latency_.try_emplace(route, latency_buckets()).first->second.observe(seconds);
  if (model.empty()) return;
  ++model_requests_[{model, route, status}];
  model_latency_.try_emplace(model, latency_buckets()).first->second.observe(seconds);
}

void Metrics::observe_batch(size_t batch_size, double seconds) {
  batch_size_.observe(static_cast<double>(batch_size));
  inference_seconds_.observe(seconds);
}

void Metrics::count_reload(bool ok, const std::string& model) {
  ++(ok ? reloads_ok_ : reloads_failed_);
  if (model.empty()) return;
  std::lock_guard lock(mutex_);
  ++model_reloads_[{model, ok}];
}

std::string Metrics::render() const {
  std::string out;
  out += "# HELP seqrec_http_requests_total HTTP requests answered, by route and status.\n";
  out += "# TYPE seqrec_http_requests_total counter\n";
  {
    std::lock_guard lock(mutex_);
    for (const auto& [key, count] : requests_)
      out += "seqrec_http_requests_total{route=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
             std::to_string(count) + "\n";
    out += "# HELP seqrec_http_request_duration_seconds Time from a request read to its answer, by route.\n";
    out += "# TYPE seqrec_http_request_duration_seconds histogram\n";
    for (const auto& [route, histogram] : latency_)
      histogram.write(out, "seqrec_http_request_duration_seconds", "route=\"" + route + "\"");
    out += "# HELP seqrec_model_requests_total Requests answered by each model (recommend, batch, similar items), by route and status.\n";
    out += "# TYPE seqrec_model_requests_total counter\n";
    for (const auto& [key, count] : model_requests_)
      out += "seqrec_model_requests_total{model=\"" + std::get<0>(key) + "\",route=\"" + std::get<1>(key) +
             "\",status=\"" + std::to_string(std::get<2>(key)) + "\"} " + std::to_string(count) + "\n";
    out += "# HELP seqrec_model_request_duration_seconds Time from a request read to its answer, by the model that answered.\n";
    out += "# TYPE seqrec_model_request_duration_seconds histogram\n";
    for (const auto& [model, histogram] : model_latency_)
      histogram.write(out, "seqrec_model_request_duration_seconds", "model=\"" + model + "\"");
    out += "# HELP seqrec_model_reloads_by_model_total Model reloads, by model and result.\n";
    out += "# TYPE seqrec_model_reloads_by_model_total counter\n";
    for (const auto& [key, count] : model_reloads_)
      out += "seqrec_model_reloads_by_model_total{model=\"" + key.first + "\",result=\"" + (key.second ? "ok" : "failed") +
             "\"} " + std::to_string(count) + "\n";
  }
  out += "# HELP seqrec_batch_size Requests answered by one forward pass.\n";
  out += "# TYPE seqrec_batch_size histogram\n";
  batch_size_.write(out, "seqrec_batch_size", "");
  out += "# HELP seqrec_inference_seconds Compute time of one batch.\n";
  out += "# TYPE seqrec_inference_seconds histogram\n";
  inference_seconds_.write(out, "seqrec_inference_seconds", "");
  out += "# HELP seqrec_request_stage_seconds Where a request's time goes, stage by stage (inference: seqrec_inference_seconds).\n";
  out += "# TYPE seqrec_request_stage_seconds histogram\n";
  for (const auto& [stage, histogram] : stages_)
    histogram.write(out, "seqrec_request_stage_seconds", "stage=\"" + stage + "\"");
  out += "# HELP seqrec_queue_depth Requests waiting for an inference worker.\n";
  out += "# TYPE seqrec_queue_depth gauge\n";
  out += "seqrec_queue_depth " + std::to_string(queue_depth ? queue_depth() : 0) + "\n";
  out += "# HELP seqrec_model_reloads_total Model reloads, by result.\n";
  out += "# TYPE seqrec_model_reloads_total counter\n";
  out += "seqrec_model_reloads_total{result=\"ok\"} " + std::to_string(reloads_ok_.load()) + "\n";
  out += "seqrec_model_reloads_total{result=\"failed\"} " + std::to_string(reloads_failed_.load()) + "\n";
  out += "# HELP seqrec_build_info The running binary: its version and the kernels' CPU path.\n";
  out += "# TYPE seqrec_build_info gauge\n";
  out += "seqrec_build_info{version=\"" SEQREC_VERSION "\",cpu_path=\"" + kernel_path() + "\"} 1\n";
  out += "# HELP seqrec_model_info The models being served (one series each).\n";
  out += "# TYPE seqrec_model_info gauge\n";
  if (model_labels)
    for (const std::string& labels : model_labels()) out += "seqrec_model_info{" + labels + "} 1\n";
  for (const auto& collect : collectors) collect(out);
  return out;
}

}  // namespace seqrec::server
