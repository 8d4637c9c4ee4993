// The in-process store: tests and throwaway servers. Same semantics as the durable ones.
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "server/history/backends.h"

namespace seqrec::history {
namespace {

class MemoryStore final : public HistoryStore {
 public:
  explicit MemoryStore(const StoreOptions& options) : max_per_user_(std::max<int64_t>(options.max_per_user, 1)) {}

  std::vector<Interaction> get(std::string_view user_id) override {
    std::shared_lock lock(mutex_);
    auto it = users_.find(std::string(user_id));
    if (it == users_.end()) return {};
    return {it->second.begin(), it->second.end()};
  }

  void append(std::string_view user_id, std::span<const Interaction> interactions) override {
    std::unique_lock lock(mutex_);
    append_locked(std::string(user_id), interactions);
  }

  void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) override {
    std::unique_lock lock(mutex_);
    for (const auto& [user_id, interactions] : users) append_locked(user_id, interactions);
  }

  // The history and its contribution to the item counts go together.
  bool erase(std::string_view user_id) override {
    std::unique_lock lock(mutex_);
    auto it = users_.find(std::string(user_id));
    if (it == users_.end()) return false;
    for (const Interaction& interaction : it->second) uncount(interaction.item_id);
    users_.erase(it);
    return true;
  }

  std::vector<std::pair<std::string, uint64_t>> item_counts() override {
    std::vector<std::pair<std::string, uint64_t>> counts;
    {
      std::shared_lock lock(mutex_);
      counts.assign(counts_.begin(), counts_.end());
    }
    sort_item_counts(counts);
    return counts;
  }

  bool ready() override { return true; }
  std::string describe() const override { return "memory"; }

 private:
  void append_locked(const std::string& user_id, std::span<const Interaction> interactions) {
    if (interactions.empty()) return;
    std::deque<Interaction>& history = users_[user_id];
    for (const Interaction& it : interactions) {
      history.push_back(it);
      ++counts_[it.item_id];
    }
    while (static_cast<int64_t>(history.size()) > max_per_user_) {
      uncount(history.front().item_id);
      history.pop_front();
    }
  }

  void uncount(const std::string& item_id) {
    auto it = counts_.find(item_id);
    if (it != counts_.end() && --it->second == 0) counts_.erase(it);
  }

  const int64_t max_per_user_;
  std::shared_mutex mutex_;
  std::unordered_map<std::string, std::deque<Interaction>> users_;
  std::unordered_map<std::string, uint64_t> counts_;
};

}  // namespace

std::unique_ptr<HistoryStore> make_memory_store(const StoreOptions& options) {
  return std::make_unique<MemoryStore>(options);
}

}  // namespace seqrec::history
