// One function per subcommand: each registers its flags on the app and returns the
// action to run once the command line is parsed.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace seqrec::cli {

using Action = std::function<int()>;

Action add_convert(CLI::App& app);
Action add_recommend(CLI::App& app);
Action add_inspect(CLI::App& app);
Action add_import(CLI::App& app);
Action add_serve(CLI::App& app);
Action add_export(CLI::App& app);
Action add_eval(CLI::App& app);
Action add_similar(CLI::App& app);
Action add_routes(CLI::App& app);

}  // namespace seqrec::cli
