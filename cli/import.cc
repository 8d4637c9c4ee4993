// seqrec import: bulk-loads users' histories from an interactions file into a history store
// (the work is server/history/import.h; here: flags, the progress bar and the summary).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/interaction_file_flags.h"
#include "cli/progress_bar.h"
#include "engine/error.h"
#include "server/history/import.h"
#include "server/history/store.h"

namespace seqrec::cli {

Action add_import(CLI::App& app) {
  struct Flags {
    std::string history, interactions, columns;
    bool skip_bad_lines = false;
    int64_t max_per_user = history::StoreOptions{}.max_per_user;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--history", f->history, "The store: lmdb:PATH, redis://HOST:PORT[/DB], redis-cluster://HOST:PORT[,HOST:PORT...] or memory")->required();
  add_interaction_file_options(app, f->interactions, f->columns);
  app.add_flag("--skip-bad-lines", f->skip_bad_lines, "Skip malformed lines (reporting how many) instead of stopping");
  app.add_option("--max-per-user", f->max_per_user, "Interactions kept per user; the oldest beyond are trimmed")
      ->capture_default_str();
  app.footer(
      "Each user's interactions are stored oldest first (by timestamp when the file has one, else in file "
      "order) and appended to what the store already holds.");

  return [f] {
    const auto start = std::chrono::steady_clock::now();
    if (f->max_per_user < 1) throw Error("--max-per-user: " + std::to_string(f->max_per_user) + " (expected >= 1)");
    // The file first: a bad file is reported before anything is created.
    history::InteractionFile file(f->interactions, history::parse_import_columns(f->columns));

    history::StoreOptions store_options;
    store_options.max_per_user = f->max_per_user;
    std::unique_ptr<history::HistoryStore> store = history::open_store(f->history, store_options);
    if (!store->ready()) {
      store->get("");  // throws StoreUnavailable with the reason (connection refused, ...)
      throw Error(store->describe() + ": not reachable");
    }

    ProgressBar progress;
    const uint64_t total_bytes = file.size_bytes();
    history::ImportOptions options;
    options.skip_bad_lines = f->skip_bad_lines;
    options.progress = [&](uint64_t bytes, uint64_t interactions) {
      char detail[96];
      std::snprintf(detail, sizeof detail, "%.1f / %.1f MB  %llu interactions", bytes / 1e6, total_bytes / 1e6,
                    static_cast<unsigned long long>(interactions));
      progress.update("import", total_bytes ? static_cast<double>(bytes) / static_cast<double>(total_bytes) : 0.0,
                      detail);
    };
    history::ImportResult result;
    try {
      result = file.load_into(*store, options);
    } catch (...) {
      progress.clear();
      throw;
    }
    progress.clear();

    if (result.bad_lines) {
      std::cerr << "seqrec import: skipped " << result.bad_lines << " bad line" << (result.bad_lines == 1 ? "" : "s")
                << (result.bad_lines > result.first_bad_lines.size()
                        ? "; the first " + std::to_string(result.first_bad_lines.size()) + ":"
                        : ":")
                << "\n";
      for (const std::string& line : result.first_bad_lines) std::cerr << "  " << line << "\n";
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto per_minute = static_cast<unsigned long long>(static_cast<double>(result.interactions) / std::max(seconds, 1e-9) * 60);
    char summary[512];
    std::snprintf(summary, sizeof summary, "imported %llu interactions of %llu users into %s in %.2f s (%llu interactions/min)",
                  static_cast<unsigned long long>(result.interactions), static_cast<unsigned long long>(result.users),
                  store->describe().c_str(), seconds, per_minute);
    std::cerr << summary << (result.bad_lines ? "; " + std::to_string(result.bad_lines) + " bad lines skipped" : "") << "\n";
    return 0;
  };
}

}  // namespace seqrec::cli
