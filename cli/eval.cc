// seqrec eval: leave-one-out HR@k / NDCG@k / MRR / coverage@k of a model on an interactions
// file (the protocol is engine/evaluation.h; the file reader is `seqrec import`'s). Here:
// flags, reading the file into per-user interactions, the catalog check, progress and output.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "cli/commands.h"
#include "cli/interaction_file_flags.h"
#include "cli/progress_bar.h"
#include "engine/error.h"
#include "engine/evaluation.h"
#include "engine/text.h"
#include "server/history/import.h"
#include "server/history/store.h"
#include "server/json_io.h"
#include "weights/model_loader.h"

namespace seqrec::cli {
namespace {

// Receives the file's interactions from InteractionFile::load_into (a chunk at a time, each
// user's interactions oldest first within the chunk) and keeps what the evaluation needs.
class Collector final : public history::HistoryStore {
 public:
  Collector(const Catalog& catalog, std::optional<double> threshold)
      : catalog_(catalog), threshold_(threshold) {}

  std::vector<Interaction> get(std::string_view) override { return {}; }
  void append(std::string_view user, std::span<const Interaction> interactions) override { add(user, interactions); }
  void append_many(std::span<const std::pair<std::string, std::vector<Interaction>>> users) override {
    for (const auto& [user, interactions] : users) add(user, interactions);
  }
  bool erase(std::string_view) override { return false; }
  std::vector<std::pair<std::string, uint64_t>> item_counts() override { return {}; }
  bool ready() override { return true; }
  std::string describe() const override { return "seqrec eval"; }

  // The users, in id order (decimal ids numerically, before any other id).
  std::vector<EvalUser> take_users() {
    std::sort(users_.begin(), users_.end(), [](const EvalUser& a, const EvalUser& b) {
      const bool da = decimal(a.id), db = decimal(b.id);
      if (da != db) return da;
      if (da && a.id.size() != b.id.size()) return a.id.size() < b.id.size();
      return a.id < b.id;
    });
    index_.clear();
    return std::move(users_);
  }

  uint64_t interactions = 0, positives = 0, unknown_interactions = 0, unknown_positives = 0;
  std::unordered_set<std::string> unknown_items, unknown_positive_items;
  std::vector<std::string> first_unknown;  // a few unknown ids, for messages

 private:
  static bool decimal(const std::string& id) {
    return !id.empty() && id.size() < 19 && (id == "0" || id[0] != '0') &&
           std::all_of(id.begin(), id.end(), [](char c) { return c >= '0' && c <= '9'; });
  }

  void add(std::string_view user, std::span<const Interaction> interactions) {
    auto [at, inserted] = index_.try_emplace(std::string(user), users_.size());
    if (inserted) users_.push_back(EvalUser{std::string(user), {}});
    EvalUser& target = users_[at->second];
    for (const Interaction& it : interactions) {
      EvalInteraction e;
      const int32_t row = catalog_.row(it.item_id);
      e.row = row > 0 ? row : -1;
      e.positive = !it.rating || !threshold_ || *it.rating >= *threshold_;
      e.timestamp = it.timestamp;
      target.interactions.push_back(e);
      ++this->interactions;
      positives += e.positive;
      if (e.row < 0) {
        ++unknown_interactions;
        if (unknown_items.insert(it.item_id).second && first_unknown.size() < 3) first_unknown.push_back(it.item_id);
        if (e.positive) {
          ++unknown_positives;
          unknown_positive_items.insert(it.item_id);
        }
      }
    }
  }

  const Catalog& catalog_;
  std::optional<double> threshold_;
  std::vector<EvalUser> users_;
  std::unordered_map<std::string, size_t> index_;
};

std::vector<int64_t> parse_ks(const std::string& text) {
  std::vector<int64_t> ks;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    std::string_view part = std::string_view(text).substr(start, comma - start);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
    int64_t k = 0;
    const auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), k);
    if (part.empty() || ec != std::errc() || end != part.data() + part.size() || k < 1 || k > 1000000)
      throw Error("--k: '" + printable(part) + "' in '" + printable(text) +
                  "' is not a whole number from 1 to 1000000 (expected a list like 1,5,10,20)");
    ks.push_back(k);
    start = comma + 1;
  }
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  return ks;
}

std::string number(double value) {
  char text[64];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string with_commas(uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace

Action add_eval(CLI::App& app) {
  struct Flags {
    std::string model, interactions, columns, ks = "1,5,10,20", protocol = "full", split = "last", save_negatives;
    int64_t negatives = 100;
    uint64_t seed = 42;
    bool json = false, skip_bad_lines = false, allow_unknown = false;
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int64_t batch_size = 128;
    std::optional<double> rating_threshold;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "The .seqrec model file")->required();
  add_interaction_file_options(app, f->interactions, f->columns);
  app.add_option("--k", f->ks, "Cut-offs for HR@k, NDCG@k and coverage@k, comma-separated")->capture_default_str();
  app.add_option("--protocol", f->protocol,
                 "full: rank the held-out item against the whole catalog minus the user's other interacted items; "
                 "sampled: against --negatives items the user never interacted with")
      ->capture_default_str();
  app.add_option("--negatives", f->negatives, "sampled: negatives per user")->capture_default_str();
  app.add_option("--seed", f->seed, "sampled: seed of the negatives' generator")->capture_default_str();
  app.add_option("--split", f->split,
                 "last: the last positive is the target (test); valid: the second-to-last (validation)")
      ->capture_default_str();
  app.add_option("--save-negatives", f->save_negatives,
                 "sampled: write each evaluated user's target and negatives (item ids) to this TSV file");
  app.add_option("--rating-threshold", f->rating_threshold,
                 "Interactions with rating >= X are positives (default: the model file's threshold)");
  app.add_flag("--json", f->json, "Print the results as one JSON object instead of a table");
  app.add_option("--threads", f->threads, "Worker threads (default: one per core)")->capture_default_str();
  app.add_option("--batch-size", f->batch_size, "Users per forward pass")->capture_default_str();
  app.add_flag("--skip-bad-lines", f->skip_bad_lines, "Skip malformed lines (reporting how many) instead of stopping");
  app.add_flag("--allow-unknown", f->allow_unknown,
               "Evaluate even when most positive interactions name items the model does not know");
  app.footer(
      "Leave-one-out: each user's positives (rating >= the threshold, items the model knows) sorted by time; "
      "the last is the test target, the one before it the validation target; users with fewer than 3 are "
      "skipped. Every interaction in the file, positive or not, counts as interacted. Ties between the "
      "target and another item go to the lower catalog row, as in `recommend`. See README, "
      "\"Offline evaluation: seqrec eval\".");

  return [f] {
    const auto started = std::chrono::steady_clock::now();
    if (f->protocol != "full" && f->protocol != "sampled")
      throw Error("--protocol: '" + printable(f->protocol) + "' (expected full or sampled)");
    if (f->split != "last" && f->split != "valid")
      throw Error("--split: '" + printable(f->split) + "' (expected last or valid)");
    const bool sampled = f->protocol == "sampled";
    if (f->negatives < 1) throw Error("--negatives: " + std::to_string(f->negatives) + " (expected >= 1)");
    if (f->threads < 1) throw Error("--threads: " + std::to_string(f->threads) + " (expected >= 1)");
    if (f->batch_size < 1) throw Error("--batch-size: " + std::to_string(f->batch_size) + " (expected >= 1)");
    if (!f->save_negatives.empty() && !sampled) throw Error("--save-negatives: needs --protocol sampled");
    if (f->rating_threshold && !std::isfinite(*f->rating_threshold))
      throw Error("--rating-threshold: not a finite number");
    EvalOptions options;
    options.ks = parse_ks(f->ks);
    options.protocol = sampled ? EvalProtocol::sampled : EvalProtocol::full;
    options.split = f->split == "last" ? EvalSplit::last : EvalSplit::valid;
    options.negatives = f->negatives;
    options.seed = f->seed;
    options.threads = f->threads;
    options.batch_size = f->batch_size;
    options.keep_negatives = !f->save_negatives.empty();

    // The file first (a bad file or column is reported before the model is loaded), then the model.
    history::InteractionFile file(f->interactions, history::parse_import_columns(f->columns));
    const LoadedModel loaded = load_recommender(f->model, f->rating_threshold);
    const Recommender& recommender = *loaded.recommender;
    const Catalog& catalog = recommender.catalog();

    ProgressBar progress;
    Collector collector(catalog, recommender.rating_threshold());
    history::ImportOptions read_options;
    read_options.skip_bad_lines = f->skip_bad_lines;
    const uint64_t file_bytes = file.size_bytes();
    read_options.progress = [&](uint64_t bytes, uint64_t interactions) {
      progress.update("reading", file_bytes ? static_cast<double>(bytes) / static_cast<double>(file_bytes) : 0.0,
                      with_commas(interactions) + " interactions");
    };
    history::ImportResult read;
    try {
      read = file.load_into(collector, read_options);
    } catch (...) {
      progress.clear();
      throw;
    }
    progress.clear();
    if (read.bad_lines)
      std::cerr << "seqrec eval: warning: skipped " << read.bad_lines << " bad line" << (read.bad_lines == 1 ? "" : "s")
                << "; the first: " << printable(read.first_bad_lines.front()) << "\n";

    // The model and the file must describe the same catalog.
    const std::string threshold_text =
        recommender.rating_threshold() ? "rating >= " + number(*recommender.rating_threshold()) : "no threshold";
    if (collector.positives == 0)
      throw Error(f->interactions + ": none of its " + with_commas(collector.interactions) +
                  " interactions is positive (" + threshold_text + "; --rating-threshold to change it)");
    const auto examples = [&] {
      std::string out;
      for (const std::string& id : collector.first_unknown) out += (out.empty() ? "'" : ", '") + printable(id) + "'";
      std::string model_ids;
      for (int32_t r = 1; r < catalog.size() && r <= 3; ++r)
        model_ids += (model_ids.empty() ? "'" : ", '") + printable(catalog.id(r)) + "'";
      return "file ids like " + out + "; model ids like " + model_ids;
    };
    const uint64_t known_positives = collector.positives - collector.unknown_positives;
    const std::string mismatch =
        with_commas(collector.unknown_positives) + " of " + with_commas(collector.positives) +
        " positive interactions (" + with_commas(collector.unknown_positive_items.size()) +
        " distinct items) name items the model's catalog (" + with_commas(static_cast<uint64_t>(catalog.size() - 1)) +
        " items) does not know";
    if (known_positives == 0)
      throw Error(f->interactions + ": " + mismatch + " (" + examples() +
                  "): is --columns item=... the right column, and the model trained on this data?");
    if (collector.unknown_positives * 2 > collector.positives && !f->allow_unknown)
      throw Error(f->interactions + ": " + mismatch + " (" + examples() +
                  "): a model trained on other data? (--allow-unknown evaluates anyway)");
    if (collector.unknown_positives)
      std::cerr << "seqrec eval: warning: " << mismatch << "; they are left out of the sequences and targets\n";
    std::vector<EvalUser> users = collector.take_users();
    const double read_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    options.progress = [&](uint64_t done, uint64_t total) {
      progress.update("scoring", total ? static_cast<double>(done) / static_cast<double>(total) : 1.0,
                      with_commas(done) + " / " + with_commas(total) + " users", done == total);
    };
    EvalResult result;
    try {
      result = evaluate(recommender.model(), users, options);
    } catch (...) {
      progress.clear();
      throw;
    }
    progress.clear();
    if (result.users_evaluated == 0)
      throw Error(f->interactions + ": no user has 3 or more positives the model knows (" +
                  with_commas(result.users_skipped) + " users, " + threshold_text + ")");

    if (!f->save_negatives.empty()) {
      std::ofstream out(f->save_negatives, std::ios::binary | std::ios::trunc);
      if (!out) throw Error("--save-negatives: cannot write " + f->save_negatives);
      out << "# seqrec eval negatives: seed " << options.seed << ", split " << f->split << ", " << options.negatives
          << " per user (fewer when the user has not that many never-interacted items)\n";
      out << "user\ttarget\tnegatives\n";
      for (const EvalCase& c : result.cases) {
        out << users[c.user].id << '\t' << catalog.id(c.target) << '\t';
        for (size_t i = 0; i < c.negatives.size(); ++i) out << (i ? " " : "") << catalog.id(c.negatives[i]);
        out << '\n';
      }
      out.flush();
      if (!out) throw Error("--save-negatives: write error on " + f->save_negatives);
    }

    const double total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const std::string protocol_text = sampled ? "sampled (" + std::to_string(options.negatives) + " negatives, seed " +
                                                    std::to_string(options.seed) + ")"
                                              : std::string("full ranking");
    if (f->json) {
      std::string j = "{";
      j += "\"model\": " + api::quote(f->model) + ", \"interactions_file\": " + api::quote(f->interactions);
      j += ", \"protocol\": \"" + f->protocol + "\", \"split\": \"" + f->split + "\"";
      j += ", \"negatives\": " + (sampled ? std::to_string(options.negatives) : std::string("null"));
      j += ", \"seed\": " + (sampled ? std::to_string(options.seed) : std::string("null"));
      j += ", \"rating_threshold\": " +
           (recommender.rating_threshold() ? number(*recommender.rating_threshold()) : std::string("null"));
      j += ", \"catalog_items\": " + std::to_string(result.catalog_items);
      j += ", \"users\": {\"total\": " + std::to_string(result.users) +
           ", \"evaluated\": " + std::to_string(result.users_evaluated) +
           ", \"skipped\": " + std::to_string(result.users_skipped) +
           ", \"short_of_negatives\": " + std::to_string(result.users_short_of_negatives) + "}";
      j += ", \"interactions\": {\"total\": " + std::to_string(collector.interactions) +
           ", \"positive\": " + std::to_string(collector.positives) +
           ", \"unknown_item\": " + std::to_string(collector.unknown_interactions) +
           ", \"unknown_item_positive\": " + std::to_string(collector.unknown_positives) +
           ", \"bad_lines_skipped\": " + std::to_string(read.bad_lines) + "}";
      j += ", \"metrics\": {";
      bool first = true;
      for (const EvalAtK& m : result.at_k) {
        const std::string k = std::to_string(m.k);
        j += std::string(first ? "" : ", ") + "\"hr@" + k + "\": " + number(m.hr) + ", \"ndcg@" + k +
             "\": " + number(m.ndcg) + ", \"coverage@" + k + "\": " + number(m.coverage);
        first = false;
      }
      j += ", \"mrr\": " + number(result.mrr) + "}";
      j += ", \"seconds\": {\"read\": " + number(read_seconds) + ", \"evaluate\": " + number(result.seconds) +
           ", \"total\": " + number(total_seconds) + "}";
      j += ", \"users_per_second\": " + number(result.users_per_second);
      j += ", \"threads\": " + std::to_string(options.threads) + "}";
      std::cout << j << "\n";
      return 0;
    }

    std::printf("seqrec eval: %s, split %s, %s\n", protocol_text.c_str(), f->split.c_str(), threshold_text.c_str());
    std::printf("users         %s evaluated, %s skipped (fewer than 3 positives known to the model)\n",
                with_commas(result.users_evaluated).c_str(), with_commas(result.users_skipped).c_str());
    if (result.users_short_of_negatives)
      std::printf("              %s with fewer than %lld never-interacted items (ranked against all of them)\n",
                  with_commas(result.users_short_of_negatives).c_str(), static_cast<long long>(options.negatives));
    std::printf("catalog       %s items; %s of %s interactions positive, %s naming items the model does not know\n",
                with_commas(result.catalog_items).c_str(), with_commas(collector.positives).c_str(),
                with_commas(collector.interactions).c_str(), with_commas(collector.unknown_interactions).c_str());
    std::printf("\n%8s  %8s  %8s  %11s\n", "k", "HR@k", "NDCG@k", "coverage@k");
    for (const EvalAtK& m : result.at_k)
      std::printf("%8lld  %8.4f  %8.4f  %11.4f\n", static_cast<long long>(m.k), m.hr, m.ndcg, m.coverage);
    std::printf("\nMRR           %.4f\n", result.mrr);
    std::printf("time          %.2f s evaluating (%.0f users/s, %d thread%s) + %.2f s reading and loading\n",
                result.seconds, result.users_per_second, options.threads, options.threads == 1 ? "" : "s",
                read_seconds);
    if (!f->save_negatives.empty()) std::printf("negatives     written to %s\n", f->save_negatives.c_str());
    return 0;
  };
}

}  // namespace seqrec::cli
