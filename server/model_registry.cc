#include "server/model_registry.h"

#include <xxhash.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>

#include "engine/error.h"

namespace seqrec::server {

namespace {

std::string percent(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') return false;
  return true;
}

std::shared_ptr<const ServedModel> make_served(std::string name, LoadedModel loaded) {
  auto served = std::make_shared<ServedModel>();
  served->name = std::move(name);
  served->handle.recommender = loaded.recommender;
  served->loaded = std::move(loaded);
  served->loaded_at = utc_now();
  return served;
}

}  // namespace

std::pair<std::string, std::string> parse_model_flag(const std::string& text) {
  const size_t equals = text.find('=');
  std::string name, path;
  if (equals == std::string::npos) {
    path = text;
    name = std::filesystem::path(text).stem().string();
    if (!valid_name(name))
      throw Error("--model '" + visible_text(text) + "': the file name '" + visible_text(name) +
                  "' is not a usable model name; name it: --model NAME=PATH (NAME: letters, digits, _ . -)");
  } else {
    name = text.substr(0, equals);
    path = text.substr(equals + 1);
    if (!valid_name(name))
      throw Error("--model '" + visible_text(text) + "': model name '" + visible_text(name) +
                  "' (expected 1-64 letters, digits, _ . -)");
  }
  if (path.empty()) throw Error("--model '" + visible_text(text) + "': empty path");
  return {name, path};
}

Split parse_split_flag(const std::string& text) {
  Split split;
  size_t start = 0;
  while (start < text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string part = text.substr(start, comma - start);
    start = comma + 1;
    const size_t equals = part.find('=');
    if (equals == std::string::npos || equals == 0)
      throw Error("--split '" + visible_text(text) + "': '" + visible_text(part) + "' (expected NAME=PERCENT, e.g. a=90,b=10)");
    const std::string weight_text = part.substr(equals + 1);
    char* end = nullptr;
    const double weight = std::strtod(weight_text.c_str(), &end);
    if (weight_text.empty() || end != weight_text.c_str() + weight_text.size() || !std::isfinite(weight))
      throw Error("--split '" + visible_text(text) + "': weight '" + visible_text(weight_text) + "' of " +
                  visible_text(part.substr(0, equals)) + " is not a number");
    split.arms.emplace_back(part.substr(0, equals), weight);
  }
  if (split.arms.empty()) throw Error("--split: empty (expected NAME=PERCENT,NAME=PERCENT)");
  return split;
}

ModelRegistry::ModelRegistry(std::vector<std::pair<std::string, LoadedModel>> models) {
  if (models.empty()) throw Error("no model to serve");
  for (auto& [name, loaded] : models) {
    if (find(name)) throw Error("--model: the name '" + name + "' is given twice");
    models_.push_back(make_served(name, std::move(loaded)));
  }
}

std::shared_ptr<const ServedModel> ModelRegistry::find(std::string_view name) const {
  std::lock_guard lock(mutex_);
  for (const auto& model : models_)
    if (model->name == name) return model;
  return nullptr;
}

std::shared_ptr<const ServedModel> ModelRegistry::default_model() const {
  std::lock_guard lock(mutex_);
  return models_.front();
}

std::vector<std::shared_ptr<const ServedModel>> ModelRegistry::all() const {
  std::lock_guard lock(mutex_);
  return models_;
}

std::vector<std::string> ModelRegistry::names() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  for (const auto& model : models_) out.push_back(model->name);
  return out;
}

const std::string& ModelRegistry::arm_for(const Split& split, std::string_view key) {
  const uint64_t bucket = XXH64(key.data(), key.size(), 0) % 10000;
  double cumulative = 0;
  for (const auto& [name, weight] : split.arms) {
    cumulative += weight * 100;
    if (static_cast<double>(bucket) < std::round(cumulative)) return name;
  }
  return split.arms.back().first;  // rounding: the last arm takes what is left
}

std::shared_ptr<const ServedModel> ModelRegistry::route(std::optional<std::string_view> key) const {
  std::lock_guard lock(mutex_);
  if (split_ && key) {
    const std::string& name = arm_for(*split_, *key);
    for (const auto& model : models_)
      if (model->name == name) return model;
  }
  return models_.front();
}

void ModelRegistry::replace(const std::string& name, LoadedModel loaded) {
  auto served = make_served(name, std::move(loaded));
  std::lock_guard lock(mutex_);
  for (auto& model : models_)
    if (model->name == name) {
      model = std::move(served);
      return;
    }
  throw Error("no model named '" + name + "'");
}

void ModelRegistry::set_popularity(const std::string& name, std::shared_ptr<const std::vector<uint64_t>> counts) {
  std::lock_guard lock(mutex_);
  for (auto& model : models_)
    if (model->name == name) {
      // Only for the catalog the counts were built for (a reload may have swapped it since).
      if (counts && static_cast<int64_t>(counts->size()) != model->loaded.recommender->catalog().size()) return;
      auto updated = std::make_shared<ServedModel>(*model);
      updated->handle.popularity = std::move(counts);
      model = std::move(updated);
      return;
    }
}

void ModelRegistry::set_split(std::optional<Split> split) {
  if (split) {
    double sum = 0;
    for (size_t i = 0; i < split->arms.size(); ++i) {
      const auto& [name, weight] = split->arms[i];
      if (!find(name)) throw Error("split: no model named '" + visible_text(name) + "' (serving: " + [&] {
        std::string list;
        for (const std::string& n : names()) list += (list.empty() ? "" : ", ") + n;
        return list;
      }() + ")");
      for (size_t j = 0; j < i; ++j)
        if (split->arms[j].first == name) throw Error("split: model '" + name + "' appears twice");
      if (!(weight >= 0 && weight <= 100))
        throw Error("split: weight " + percent(weight) + " of '" + name + "' is out of range 0..100");
      sum += weight;
    }
    if (std::abs(sum - 100) > 1e-6) throw Error("split: the weights sum to " + percent(sum) + ", not 100");
  }
  std::lock_guard lock(mutex_);
  split_ = std::move(split);
}

std::optional<Split> ModelRegistry::split() const {
  std::lock_guard lock(mutex_);
  return split_;
}

}  // namespace seqrec::server
