// The models a server serves, by name (`--model NAME=PATH`, repeatable; the first is the
// default), and the A/B split between them (`--split a=90,b=10`, changed live with POST
// /admin/split). Each model is held once, whatever the number of workers: a request takes a
// snapshot (ServedModel) and the WorkerPool job holds it until answered, so a reload swaps one
// model atomically while requests in flight finish on the old one.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/loaded_model.h"
#include "engine/worker_pool.h"

namespace seqrec::server {

// One model as served now.
struct ServedModel {
  std::string name;
  LoadedModel loaded;
  ModelHandle handle;     // recommender + the store's cold-start counts for its catalog
  std::string loaded_at;  // RFC 3339, UTC
};

// Weights in percent (summing to 100), in the order given: each user falls in one arm.
struct Split {
  std::vector<std::pair<std::string, double>> arms;
};

// "NAME=PATH" → (NAME, PATH); a plain PATH is named after its file stem ("ml1m.seqrec" → ml1m).
// Names: 1-64 of [A-Za-z0-9_.-]. Throws seqrec::Error naming the flag value.
std::pair<std::string, std::string> parse_model_flag(const std::string& text);
// "a=90,b=10" → Split (names and sum checked by ModelRegistry::set_split). Throws seqrec::Error.
Split parse_split_flag(const std::string& text);

class ModelRegistry {
 public:
  // `models` in flag order; the first is the default. Names must be unique.
  explicit ModelRegistry(std::vector<std::pair<std::string, LoadedModel>> models);

  std::shared_ptr<const ServedModel> find(std::string_view name) const;  // null when unknown
  std::shared_ptr<const ServedModel> default_model() const;
  std::vector<std::shared_ptr<const ServedModel>> all() const;  // in flag order
  std::vector<std::string> names() const;

  // The model for a request that names none: the split's arm for `key` when a split is set
  // and a key is given, else the default.
  std::shared_ptr<const ServedModel> route(std::optional<std::string_view> key) const;
  // The arm of the split `key` falls in: a hash of the key (XXH64, seed 0) modulo 10000 against
  // the cumulative weights in basis points; the same key always lands in the same arm, on every
  // replica and after restarts, as long as the split is the same.
  static const std::string& arm_for(const Split& split, std::string_view key);

  // Replaces a model (reload); its cold-start counts are reset until set_popularity.
  void replace(const std::string& name, LoadedModel loaded);
  void set_popularity(const std::string& name, std::shared_ptr<const std::vector<uint64_t>> counts);

  // Sets (or with nullopt clears) the split. Throws seqrec::Error naming the bad arm: an
  // unknown model, a repeated one, a negative weight, weights not summing to 100.
  void set_split(std::optional<Split> split);
  std::optional<Split> split() const;

 private:
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<const ServedModel>> models_;  // [0]: the default
  std::optional<Split> split_;
};

}  // namespace seqrec::server
