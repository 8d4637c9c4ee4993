// The in-process store: tests and throwaway servers. Same semantics as the durable ones.
#include <algorithm>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "server/history/backends.h"
#include "server/history/time_order.h"

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

  std::unique_ptr<UserScan> scan_users() override { return std::make_unique<Scan>(*this); }

  bool ready() override { return true; }
  std::string describe() const override { return "memory"; }

 private:
  // The user ids as they were when the walk began (sorted); each batch reads the histories
  // of the next ones still there.
  class Scan final : public UserScan {
   public:
    explicit Scan(MemoryStore& store) : store_(store) {
      std::shared_lock lock(store.mutex_);
      ids_.reserve(store.users_.size());
      for (const auto& [id, history] : store.users_) ids_.push_back(id);
      std::sort(ids_.begin(), ids_.end());
    }
    bool next(std::vector<StoredUser>& batch, size_t max_users) override {
      batch.clear();
      std::shared_lock lock(store_.mutex_);
      for (; next_ < ids_.size() && batch.size() < std::max<size_t>(max_users, 1); ++next_) {
        const auto it = store_.users_.find(ids_[next_]);
        if (it != store_.users_.end()) batch.push_back({it->first, it->second, std::nullopt});
      }
      return !batch.empty();
    }
    std::optional<uint64_t> estimated_users() const override { return ids_.size(); }

   private:
    MemoryStore& store_;
    std::vector<std::string> ids_;
    size_t next_ = 0;
  };

  void append_locked(const std::string& user_id, std::span<const Interaction> interactions) {
    if (interactions.empty()) return;
    std::vector<Interaction>& history = users_[user_id];
    if (appends_in_order(latest_time(history), interactions))
      history.insert(history.end(), interactions.begin(), interactions.end());
    else
      merge_in_time_order(history, interactions);
    for (const Interaction& it : interactions) ++counts_[it.item_id];
    std::vector<Interaction> trimmed;
    trim_oldest(history, static_cast<size_t>(max_per_user_), trimmed);
    for (const Interaction& it : trimmed) uncount(it.item_id);
  }

  void uncount(const std::string& item_id) {
    auto it = counts_.find(item_id);
    if (it != counts_.end() && --it->second == 0) counts_.erase(it);
  }

  const int64_t max_per_user_;
  std::shared_mutex mutex_;
  std::unordered_map<std::string, std::vector<Interaction>> users_;
  std::unordered_map<std::string, uint64_t> counts_;
};

}  // namespace

std::unique_ptr<HistoryStore> make_memory_store(const StoreOptions& options) {
  return std::make_unique<MemoryStore>(options);
}

}  // namespace seqrec::history
