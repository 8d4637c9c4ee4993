// seqrec: one binary, one subcommand per job. main only parses and hands over.
#include <algorithm>
#include <iostream>
#include <map>

#include "cli/commands.h"
#include "engine/error.h"
#include "engine/platform.h"
#include "engine/text.h"

int main(int argc, char** argv) {
  CLI::App app{"seqrec " SEQREC_VERSION " — serve transformer sequential recommenders (SASRec, BERT4Rec) on CPUs",
               "seqrec"};
  app.require_subcommand(1);
  app.set_version_flag("--version", SEQREC_VERSION);
  std::map<CLI::App*, seqrec::cli::Action> actions;
  auto add = [&](const char* name, const char* help, seqrec::cli::Action (*add_command)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    actions[sub] = add_command(*sub);
  };
  add("convert", "Convert a training checkpoint into a .seqrec model file", seqrec::cli::add_convert);
  add("recommend",
      "Answer one POST /recommend request body (stdin) with the response (stdout), or export every user's "
      "recommendations from a history store (--history, --out)",
      seqrec::cli::add_recommend);
  add("similar", "The items most similar to one item (as POST /similar_items)", seqrec::cli::add_similar);
  add("routes", "List the HTTP API's routes (method, path, who may call it)", seqrec::cli::add_routes);
  add("inspect", "Print a model file's architecture, sizes, catalog size and provenance", seqrec::cli::add_inspect);
  add("import", "Bulk-load users' interaction histories from a CSV/TSV file into a history store",
      seqrec::cli::add_import);
  add("serve", "Serve the HTTP API for a model, with a history store", seqrec::cli::add_serve);
  add("export", "Write a .seqrec model as safetensors (seqrec's tensor names, the spec in __metadata__)",
      seqrec::cli::add_export);
  add("eval", "Offline leave-one-out HR@k / NDCG@k / MRR / coverage@k of a model on an interactions file",
      seqrec::cli::add_eval);

  if (argc > 1 && argv[1][0] != '-' &&
      std::none_of(actions.begin(), actions.end(), [&](const auto& a) { return a.first->get_name() == argv[1]; })) {
    std::string known;
    for (const auto& [sub, action] : actions) known += (known.empty() ? "" : "|") + sub->get_name();
    std::cerr << "seqrec: error: unknown command '" << seqrec::printable(argv[1]) << "' (expected " << known << ")\n";
    return 2;
  }
  if (const auto error = seqrec::check_kernel_path_request()) {
    std::cerr << "seqrec: error: " << seqrec::printable(*error) << "\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, as for every other bad input.
    std::cerr << "seqrec: error: " << seqrec::printable(e.what()) << " (see --help)\n";
    return 2;
  }
  for (auto& [sub, action] : actions) {
    if (!sub->parsed()) continue;
    try {
      return action();
    } catch (const seqrec::Error& e) {
      // Messages can quote bytes from hostile files: keep them one printable line.
      std::cerr << "seqrec " << sub->get_name() << ": error: " << seqrec::printable(e.what()) << "\n";
      return 1;
    } catch (const std::bad_alloc&) {
      std::cerr << "seqrec " << sub->get_name() << ": error: out of memory\n";
      return 1;
    } catch (const std::exception& e) {
      // Anything else that escapes (a library's own exception, e.g. oneDNN's): still one line
      // and a non-zero exit, never std::terminate.
      std::cerr << "seqrec " << sub->get_name() << ": error: " << seqrec::printable(e.what()) << "\n";
      return 1;
    } catch (...) {
      std::cerr << "seqrec " << sub->get_name() << ": error: unexpected failure\n";
      return 1;
    }
  }
  return 2;
}
