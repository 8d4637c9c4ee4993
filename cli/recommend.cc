// seqrec recommend: one request from stdin (the POST /recommend body), or a batch export of
// every user of a history store (--history, --users all|FILE) to a JSON-lines file.
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <mutex>
#include <thread>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/progress_bar.h"
#include "engine/error.h"
#include "engine/text.h"
#include "server/history/store.h"
#include "server/items/item_metadata.h"
#include "server/json_io.h"
#include "weights/model_loader.h"

namespace seqrec::cli {

namespace {

struct ExportFlags {
  std::string history, users = "all", out, filter, items, item_columns, tags_separator = "|";
  int64_t k = 10;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int batch = 64;
  bool recommend_seen = false;
};

// Where the users come from: a walk over the store, or a file of ids (one per line).
class UserSource {
 public:
  UserSource(history::HistoryStore& store, const std::string& users) : store_(store) {
    if (users == "all") {
      scan_ = store.scan_users();
      total_ = scan_->estimated_users();
    } else {
      file_.open(users);
      if (!file_) throw Error("--users: cannot read '" + users + "' (expected all, or a file of user ids, one per line)");
      path_ = users;
    }
  }
  std::optional<uint64_t> total() const { return total_; }

  // The next users (at most n) with their histories; false at the end. One caller at a time.
  bool next(std::vector<history::StoredUser>& batch, size_t n) {
    batch.clear();
    if (scan_) return scan_->next(batch, n);
    std::string line;
    while (batch.size() < n && std::getline(file_, line)) {
      ++line_;
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (line.empty()) continue;
      history::StoredUser user;
      user.user_id = line;
      user.interactions = store_.get(line);
      batch.push_back(std::move(user));
    }
    return !batch.empty();
  }

 private:
  history::HistoryStore& store_;
  std::unique_ptr<history::UserScan> scan_;
  std::ifstream file_;
  std::string path_;
  uint64_t line_ = 0;
  std::optional<uint64_t> total_;
};

int run_export(const std::string& model_path, std::optional<double> threshold, const api::Limits& limits,
               const ExportFlags& f) {
  if (f.out.empty()) throw Error("--out: required with --history (the JSON-lines file to write)");
  if (f.k < 1 || f.k > limits.max_k) throw Error("--k: " + std::to_string(f.k) + " (expected 1.." + std::to_string(limits.max_k) + ")");
  if (f.threads < 1) throw Error("--threads: " + std::to_string(f.threads) + " (expected >= 1)");
  if (f.batch < 1) throw Error("--batch: " + std::to_string(f.batch) + " (expected >= 1)");
  std::optional<ItemFilter> filter;
  if (!f.filter.empty()) {
    try {
      filter = api::parse_filter(f.filter, limits);
    } catch (const Error& e) {
      throw Error(std::string("--filter: ") + e.what());
    }
  }
  std::shared_ptr<const items::ItemMetadata> metadata;
  if (!f.items.empty()) metadata = items::ItemMetadata::load(f.items, items::parse_item_columns(f.item_columns), f.tags_separator);
  const LoadedModel loaded = load_recommender(model_path, threshold, items::tags_for(metadata.get()));
  std::unique_ptr<history::HistoryStore> store = history::open_store(f.history);
  UserSource source(*store, f.users);

  // Written under a temporary name and renamed once complete: a partial file never sits
  // under the final name (an interrupted export leaves only the .partial file).
  const std::string partial = f.out + ".partial";
  std::FILE* out = std::fopen(partial.c_str(), "wb");
  if (!out) throw Error("--out: cannot write '" + partial + "': " + std::strerror(errno));

  std::mutex source_mutex, out_mutex;
  std::condition_variable written;
  uint64_t next_to_write = 0, next_to_take = 0;
  std::map<uint64_t, std::string> finished;  // batch number → its lines, until its turn
  std::atomic<uint64_t> users{0}, failed{0};
  std::exception_ptr error;
  ProgressBar bar;
  const auto start = std::chrono::steady_clock::now();

  auto work = [&] {
    Workspace ws;
    std::vector<history::StoredUser> batch;
    std::vector<Request> requests;
    for (;;) {
      uint64_t number;
      {
        std::lock_guard lock(source_mutex);
        if (error) return;
        try {
          if (!source.next(batch, static_cast<size_t>(f.batch))) return;
        } catch (...) {
          error = std::current_exception();
          return;
        }
        number = next_to_take++;
      }
      requests.clear();
      for (history::StoredUser& user : batch) {
        Request r;
        r.interactions = std::move(user.interactions);
        r.k = f.k;
        r.recommend_seen = f.recommend_seen;
        r.filter = filter;
        requests.push_back(std::move(r));
      }
      std::string lines;
      try {
        const std::vector<Response> responses = loaded.recommender->recommend(requests, ws);
        for (size_t i = 0; i < batch.size(); ++i) {
          std::string answer;
          if (batch[i].error)
            answer = api::write_error("history_corrupt", *batch[i].error);
          else if (responses[i].error)
            answer = api::write_error(responses[i].error->code, responses[i].error->message);
          else
            answer = api::write_response(responses[i]);
          if (batch[i].error || responses[i].error) ++failed;
          // {"user_id": ..., "recommendations": [...], "message": ...} (or "error": {...})
          lines += "{\"user_id\": " + api::quote(batch[i].user_id) + ", " + answer.substr(1) + "\n";
        }
      } catch (...) {
        std::lock_guard lock(source_mutex);
        error = std::current_exception();
        return;
      }
      users += batch.size();
      std::unique_lock lock(out_mutex);
      finished.emplace(number, std::move(lines));
      while (!finished.empty() && finished.begin()->first == next_to_write) {
        const std::string& text = finished.begin()->second;
        if (std::fwrite(text.data(), 1, text.size(), out) != text.size()) {
          std::lock_guard source_lock(source_mutex);
          error = std::make_exception_ptr(Error("--out: write failed on '" + partial + "': " + std::strerror(errno)));
        }
        finished.erase(finished.begin());
        ++next_to_write;
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const uint64_t done = users.load();
      const auto total = source.total();
      bar.update("export", total && *total ? static_cast<double>(done) / static_cast<double>(*total) : 0.0,
                 std::to_string(done) + (total ? "/" + std::to_string(*total) : "") + " users, " +
                     std::to_string(static_cast<uint64_t>(done / std::max(seconds, 1e-9))) + " users/s");
    }
  };
  std::vector<std::thread> workers;
  for (int t = 0; t < f.threads; ++t) workers.emplace_back(work);
  for (std::thread& t : workers) t.join();
  bar.clear();
  const bool flushed = std::fflush(out) == 0 && fsync(fileno(out)) == 0;
  std::fclose(out);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
    std::rethrow_exception(error);
  }
  if (!flushed) throw Error("--out: cannot write '" + partial + "': " + std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(partial, f.out, ec);
  if (ec) throw Error("--out: cannot rename '" + partial + "' to '" + f.out + "': " + ec.message());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "seqrec recommend: %llu users in %.2f s (%.0f users/s, %d thread%s)%s -> %s\n",
               static_cast<unsigned long long>(users.load()), seconds, users.load() / std::max(seconds, 1e-9), f.threads,
               f.threads == 1 ? "" : "s",
               failed ? (", " + std::to_string(failed.load()) + " answered with an error line").c_str() : "", f.out.c_str());
  return 0;
}

}  // namespace

Action add_recommend(CLI::App& app) {
  struct Flags {
    std::string model;
    std::optional<double> rating_threshold;
    api::Limits limits;
    ExportFlags batch;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "The .seqrec model file")->required();
  app.add_option("--rating-threshold", f->rating_threshold, "Override the model file's rating threshold");
  app.add_option("--max-k", f->limits.max_k, "Largest k a request may ask for")->capture_default_str();
  app.add_option("--history", f->batch.history,
                 "Batch export: the history store to read users from (lmdb:PATH | redis://HOST:PORT[/DB] | redis-cluster://HOST:PORT[,...])");
  app.add_option("--users", f->batch.users, "Batch export: all, or a file of user ids (one per line)")->capture_default_str();
  app.add_option("--out", f->batch.out, "Batch export: the JSON-lines file to write (one line per user)");
  app.add_option("--k", f->batch.k, "Batch export: recommendations per user")->capture_default_str();
  app.add_option("--threads", f->batch.threads, "Batch export: worker threads (default: one per core)");
  app.add_option("--batch", f->batch.batch, "Batch export: users per forward pass")->capture_default_str();
  app.add_flag("--recommend-seen", f->batch.recommend_seen, "Batch export: allow items the user interacted with");
  app.add_option("--filter", f->batch.filter, R"(Batch export: an item filter, e.g. '{"tags_any": ["Comedy"]}' (needs --items))");
  app.add_option("--items", f->batch.items, "Item metadata for --filter (CSV/TSV with a header, as for serve)");
  app.add_option("--item-columns", f->batch.item_columns, "Columns of --items: item=NAME,title=NAME,tags=NAME");
  app.add_option("--tags-separator", f->batch.tags_separator, "What separates the tags in --items")->capture_default_str();
  app.footer(
      "Without --history: reads one POST /recommend body (JSON) on stdin, writes the response JSON on stdout.\n"
      "With --history: writes every user's recommendations (--users all|FILE) to --out, one JSON line per user,\n"
      "under OUT.partial until complete.");

  return [f] {
    if (f->limits.max_k < 1) throw Error("--max-k: " + std::to_string(f->limits.max_k) + " (expected >= 1)");
    if (!f->batch.history.empty()) return run_export(f->model, f->rating_threshold, f->limits, f->batch);
    if (!f->batch.out.empty()) throw Error("--out: only with --history (a batch export)");
    std::shared_ptr<const items::ItemMetadata> metadata;
    if (!f->batch.items.empty())
      metadata = items::ItemMetadata::load(f->batch.items, items::parse_item_columns(f->batch.item_columns),
                                           f->batch.tags_separator);
    const ItemTagsFor tags_for = items::tags_for(metadata.get());
    LoadedModel loaded = load_recommender(f->model, f->rating_threshold, tags_for);
    const std::string body{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
    try {
      api::RecommendRequest parsed = api::parse_recommend_request(body, f->limits);
      if (parsed.user_id)
        throw api::ApiError(400, "invalid_request",
                            "user_id: \"" + *parsed.user_id +
                                "\" needs a history store; `seqrec recommend` takes user_interactions only");
      if (!parsed.fields.empty() && !metadata)
        throw api::ApiError(400, "invalid_request", "fields: needs item metadata (--items FILE)");
      if (metadata) metadata->check_fields(parsed.fields);
      Workspace workspace;
      std::vector<Response> responses = loaded.recommender->recommend({&parsed.request, 1}, workspace);
      if (const auto& error = responses.front().error) throw api::ApiError(400, error->code, error->message);
      api::ItemFieldsWriter writer;
      if (!parsed.fields.empty())
        writer = [&](std::string& out, const std::string& id) { metadata->append_fields(out, metadata->find(id), parsed.fields); };
      std::cout << api::write_response(responses.front(), parsed.fields.empty() ? nullptr : &writer) << "\n";
      return 0;
    } catch (const Error& e) {
      std::cerr << "seqrec recommend: error: " << printable(e.what()) << "\n";
      return 1;
    }
  };
}

Action add_similar(CLI::App& app) {
  struct Flags {
    std::string model, item, items, item_columns, tags_separator = "|", filter;
    int64_t k = 10;
    std::vector<std::string> fields;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "The .seqrec model file")->required();
  app.add_option("--item", f->item, "The item to find similar items for")->required();
  app.add_option("--k", f->k, "How many")->capture_default_str();
  app.add_option("--items", f->items, "Item metadata (titles, tags) to filter on and show");
  app.add_option("--item-columns", f->item_columns, "Columns of --items: item=NAME,title=NAME,tags=NAME");
  app.add_option("--tags-separator", f->tags_separator, "What separates the tags in --items")->capture_default_str();
  app.add_option("--filter", f->filter, R"(An item filter, e.g. '{"tags_any": ["Comedy"]}' (needs --items))");
  app.add_option("--fields", f->fields, "Metadata returned with each item (e.g. title tags; needs --items)");
  app.footer("Prints the POST /similar_items answer: the cosine similarity of the model's item representations.");
  return [f] {
    api::Limits limits;
    if (f->k < 1 || f->k > limits.max_k) throw Error("--k: " + std::to_string(f->k) + " (expected 1.." + std::to_string(limits.max_k) + ")");
    std::shared_ptr<const items::ItemMetadata> metadata;
    if (!f->items.empty()) metadata = items::ItemMetadata::load(f->items, items::parse_item_columns(f->item_columns), f->tags_separator);
    if (!f->fields.empty()) {
      if (!metadata) throw Error("--fields: needs item metadata (--items FILE)");
      metadata->check_fields(f->fields);
    }
    const ItemTagsFor tags_for = items::tags_for(metadata.get());
    LoadedModel loaded = load_recommender(f->model, std::nullopt, tags_for);
    Request request;
    request.k = f->k;
    if (!f->filter.empty()) request.filter = api::parse_filter(f->filter, limits);
    Workspace ws;
    const Response response = loaded.recommender->similar_items(f->item, request, ws);
    if (response.error) {
      std::cerr << "seqrec similar: error: " << printable(response.error->message) << "\n";
      return 1;
    }
    api::ItemFieldsWriter writer;
    if (!f->fields.empty())
      writer = [&](std::string& out, const std::string& id) { metadata->append_fields(out, metadata->find(id), f->fields); };
    std::cout << api::write_response(response, f->fields.empty() ? nullptr : &writer) << "\n";
    return 0;
  };
}

}  // namespace seqrec::cli
