// The interactions file `seqrec import` and `seqrec eval` both read: its two flags.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace seqrec::cli {

// --interactions FILE (required) and --columns ROLE=NAME,... (turned into history::ImportColumns
// by history::parse_import_columns; empty means the default names).
inline void add_interaction_file_options(CLI::App& app, std::string& interactions, std::string& columns) {
  app.add_option("--interactions", interactions,
                 "CSV/TSV with a header (user, item[, rating][, timestamp]) or SASRec-style 'user item' lines")
      ->required();
  app.add_option("--columns", columns,
                 "Header names to use, e.g. user=userId,item=movieId,rating=rating,timestamp=timestamp "
                 "(default: user/userId/user_id, item/movieId/item_id, rating, timestamp; any case)");
}

}  // namespace seqrec::cli
