// Bulk import of an interactions file into a history store (`seqrec import`).
//
// Formats: CSV or TSV with a header line (the delimiter is the header's: a tab, else a comma;
// RFC 4180 quoting for CSV; a RecBole ":type" suffix on a name is ignored), a header line
// separated by blanks, or the headerless "user item" lines of SASRec-style data files, whose
// line order is the time order. Columns: user and item required, rating and timestamp optional.
//
// The file is read in blocks and grouped by user in memory one chunk at a time; each user's
// interactions in a chunk are put oldest first (stable by timestamp, when there is one) and
// each chunk is one append_many (LMDB: one transaction, one sync). A user whose lines span
// chunks gets each chunk's interactions appended after the previous chunk's.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/history/store.h"

namespace seqrec::history {

// Header names chosen by the user (--columns); unset roles use the defaults:
// user/userId/user_id, item/movieId/item_id/itemId, rating, timestamp (any case).
struct ImportColumns {
  std::optional<std::string> user, item, rating, timestamp;
};

// Parses "user=..,item=..,rating=..,timestamp=.." (the --columns text; empty: the default
// names). Throws seqrec::Error.
ImportColumns parse_import_columns(const std::string& text);

struct ImportOptions {
  bool skip_bad_lines = false;         // else the first bad line is an Error naming it
  size_t interactions_per_chunk = size_t{1} << 20;  // grouped in memory, ~100 bytes each
  // Called now and then with the bytes read so far and the interactions parsed.
  std::function<void(uint64_t bytes_read, uint64_t interactions)> progress;
};

struct ImportResult {
  uint64_t interactions = 0;                // appended to the store
  uint64_t users = 0;                       // distinct users among them
  uint64_t bad_lines = 0;                   // skipped (skip_bad_lines)
  std::vector<std::string> first_bad_lines;  // "FILE:LINE: what", the first few
};

// An interactions file, opened and its layout (format, header, columns) decided.
class InteractionFile {
 public:
  // Throws seqrec::Error naming the file (missing, empty, no usable header) or the column
  // (a --columns name not in the header).
  InteractionFile(const std::string& path, const ImportColumns& columns = {});
  ~InteractionFile();
  InteractionFile(const InteractionFile&) = delete;
  InteractionFile& operator=(const InteractionFile&) = delete;

  uint64_t size_bytes() const;  // 0 when not a regular file

  // Reads the whole file into `store`. Throws seqrec::Error naming the file, line, field and
  // value of a bad line (unless skipped), or when no line holds an interaction; the store's
  // own errors (StoreUnavailable, ...) pass through.
  ImportResult load_into(HistoryStore& store, const ImportOptions& options = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace seqrec::history
