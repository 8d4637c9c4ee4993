// Reading interactions files into a history store: see import.h for the formats and rules.
#include "server/history/import.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include "engine/error.h"
#include "server/tabular/record_reader.h"

namespace seqrec::history {
namespace {

using tabular::blank;
using tabular::Format;
using tabular::Record;
using tabular::RecordReader;
using tabular::trim;

constexpr size_t kBadLinesShown = 5;

// A value as it appears in a message: quoted, control bytes escaped, cut short when long.
std::string shown(std::string_view value) {
  static constexpr size_t kMaxShown = 40;
  std::string out = "'";
  for (size_t i = 0; i < value.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += value.size() > kMaxShown ? "'..." : "'";
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}


// Which field holds what; -1: the file has no such column.
struct Layout {
  Format format = Format::kCsv;
  bool header = false;
  size_t n_fields = 2;
  int user = 0, item = 1, rating = -1, timestamp = -1;
};

bool any(const ImportColumns& c) { return c.user || c.item || c.rating || c.timestamp; }

}  // namespace

ImportColumns parse_import_columns(const std::string& text) {
  ImportColumns flag;
  if (trim(text).empty()) return flag;  // no --columns: the default names
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string_view part = trim(std::string_view(text).substr(start, comma - start));
    const size_t equals = part.find('=');
    if (equals == std::string_view::npos)
      throw Error("--columns: " + shown(part) + " is not ROLE=NAME (roles: user, item, rating, timestamp)");
    const std::string role = lower(trim(part.substr(0, equals)));
    const std::string name(trim(part.substr(equals + 1)));
    if (name.empty()) throw Error("--columns: no column name for " + shown(role));
    std::optional<std::string>* slot = role == "user"        ? &flag.user
                                       : role == "item"      ? &flag.item
                                       : role == "rating"    ? &flag.rating
                                       : role == "timestamp" ? &flag.timestamp
                                                             : nullptr;
    if (!slot) throw Error("--columns: unknown role " + shown(role) + " (expected user, item, rating or timestamp)");
    if (*slot) throw Error("--columns: " + role + " is given twice");
    *slot = name;
    start = comma + 1;
  }
  return flag;
}

namespace {

// A header name as compared: lower case, without a RecBole ":type" suffix.
std::string column_key(std::string_view name) {
  const size_t colon = name.rfind(':');
  if (colon != std::string_view::npos && colon > 0) name = name.substr(0, colon);
  return lower(trim(name));
}

// Default header names, compared case-insensitively.
const std::vector<std::string> kUserNames = {"user", "userId", "user_id"};
const std::vector<std::string> kItemNames = {"item", "movieId", "item_id", "itemId"};
const std::vector<std::string> kRatingNames = {"rating"};
const std::vector<std::string> kTimestampNames = {"timestamp"};

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

Layout detect_layout(const std::string& path, const std::string& first_line, const Record& first,
                     const ImportColumns& flag, Format format) {
  Layout layout;
  layout.format = format;
  std::vector<std::string> keys;
  for (const std::string& f : first.fields) keys.push_back(column_key(f));
  const auto find = [&](const std::string& name) -> int {
    const auto at = std::find(keys.begin(), keys.end(), column_key(name));
    return at == keys.end() ? -1 : static_cast<int>(at - keys.begin());
  };
  const auto find_any = [&](const std::vector<std::string>& names) {
    for (const std::string& n : names)
      if (int i = find(n); i >= 0) return i;
    return -1;
  };
  const bool named = find_any(kUserNames) >= 0 || find_any(kItemNames) >= 0 || find_any(kRatingNames) >= 0 ||
                     find_any(kTimestampNames) >= 0;
  if (!named && !any(flag) && format != Format::kCsv) {
    layout.format = Format::kUserItem;  // SASRec-style "user item" lines, no header
    return layout;
  }
  std::string header_names;
  for (const std::string& f : first.fields) header_names += (header_names.empty() ? "" : ", ") + f;
  const auto resolve = [&](const char* role, const std::optional<std::string>& given,
                           const std::vector<std::string>& defaults, bool required) {
    if (given) {
      const int i = find(*given);
      if (i < 0)
        throw Error("--columns: " + std::string(role) + " column " + shown(*given) + " is not in the header of " +
                    path + " (" + header_names + ")");
      return i;
    }
    const int i = find_any(defaults);
    if (i < 0 && required)
      throw Error(path + ":1: no " + role + " column in the header " + shown(first_line) + " (expected " +
                  joined(defaults) + ", or name it with --columns " + role + "=NAME)");
    return i;
  };
  layout.header = true;
  layout.n_fields = first.fields.size();
  layout.user = resolve("user", flag.user, kUserNames, true);
  layout.item = resolve("item", flag.item, kItemNames, true);
  layout.rating = resolve("rating", flag.rating, kRatingNames, false);
  layout.timestamp = resolve("timestamp", flag.timestamp, kTimestampNames, false);
  if (layout.user == layout.item)
    throw Error(path + ":1: the user and item columns are the same column " + shown(first.fields[layout.user]));
  return layout;
}

// Bad lines: the first is fatal, or (--skip-bad-lines) counted and the first few kept.
class BadLines {
 public:
  BadLines(std::string path, bool skip) : path_(std::move(path)), skip_(skip) {}

  void add(uint64_t line, const std::string& what) {
    std::string message = path_ + ":" + std::to_string(line) + ": " + what;
    if (!skip_) throw Error(message);
    if (shown_.size() < kBadLinesShown) shown_.push_back(std::move(message));
    ++count_;
  }

  uint64_t count() const { return count_; }

  const std::vector<std::string>& first() const { return shown_; }

 private:
  std::string path_;
  bool skip_;
  uint64_t count_ = 0;
  std::vector<std::string> shown_;
};

// Groups interactions by user and writes them a chunk at a time.
class Loader {
 public:
  Loader(HistoryStore& store, bool sort_by_time, size_t per_chunk)
      : store_(store), sort_by_time_(sort_by_time), per_chunk_(std::max<size_t>(per_chunk, 1)) {}

  void add(const std::string& user, Interaction interaction) {
    auto [at, inserted] = chunk_.try_emplace(user);
    at->second.push_back(std::move(interaction));
    if (inserted) users_.insert(user);
    if (++in_chunk_ >= per_chunk_) flush();
  }

  void flush() {
    if (chunk_.empty()) return;
    std::vector<std::pair<std::string, std::vector<Interaction>>> batch;
    batch.reserve(chunk_.size());
    for (auto& [user, interactions] : chunk_) batch.emplace_back(user, std::move(interactions));
    chunk_.clear();
    in_chunk_ = 0;
    // Key order keeps LMDB's B-tree writes local.
    std::sort(batch.begin(), batch.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    if (sort_by_time_)
      for (auto& [user, interactions] : batch) sort_oldest_first(interactions);
    store_.append_many(batch);
    for (const auto& [user, interactions] : batch) written_ += interactions.size();
  }

  uint64_t users() const { return users_.size(); }
  uint64_t written() const { return written_; }

 private:
  // Oldest first and stable, by the request rules (engine/request.h): an interaction without
  // a timestamp keeps its place after the one before it.
  static void sort_oldest_first(std::vector<Interaction>& interactions) {
    std::vector<std::pair<int64_t, size_t>> order;
    order.reserve(interactions.size());
    int64_t previous = std::numeric_limits<int64_t>::min();
    bool sorted = true;
    for (size_t i = 0; i < interactions.size(); ++i) {
      const int64_t time = interactions[i].timestamp.value_or(previous);
      if (time < previous) sorted = false;
      previous = time;
      order.emplace_back(time, i);
    }
    if (sorted) return;
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<Interaction> out;
    out.reserve(interactions.size());
    for (const auto& [time, i] : order) out.push_back(std::move(interactions[i]));
    interactions.swap(out);
  }

  HistoryStore& store_;
  const bool sort_by_time_;
  const size_t per_chunk_;
  std::unordered_map<std::string, std::vector<Interaction>> chunk_;
  size_t in_chunk_ = 0;
  std::unordered_set<std::string> users_;
  uint64_t written_ = 0;
};

std::optional<double> parse_rating(std::string_view text, std::string& error) {
  if (text.empty()) return std::nullopt;
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value))
    error = "rating " + shown(text) + " is not a finite number";
  return value;
}

std::optional<int64_t> parse_timestamp(std::string_view text, std::string& error) {
  if (text.empty()) return std::nullopt;
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc() && end == text.data() + text.size()) return value;
  // "978300760.0" (RecBole's float timestamps): accepted when it is a whole number.
  double real = 0;
  const auto parsed = std::from_chars(text.data(), text.data() + text.size(), real);
  if (parsed.ec == std::errc() && parsed.ptr == text.data() + text.size() && std::isfinite(real) &&
      real == std::floor(real) && std::fabs(real) < 9.2e18)
    return static_cast<int64_t>(real);
  error = "timestamp " + shown(text) + " is not a whole number";
  return std::nullopt;
}

}  // namespace

struct InteractionFile::Impl {
  std::string path;
  RecordReader reader;
  Layout layout;
  Record first;  // the first non-blank record: the header, or data when there is none

  Impl(const std::string& path, const ImportColumns& columns) : path(path), reader(path) {
    const std::optional<std::string> first_line = reader.first_line();
    if (!first_line) throw Error(path + ": the file is empty (no header, no interactions)");
    const Format guess = first_line->find('\t') != std::string::npos  ? Format::kTsv
                         : first_line->find(',') != std::string::npos ? Format::kCsv
                                                                      : Format::kUserItem;
    reader.set_format(guess);
    while (reader.next(first) && blank(first)) {
    }
    if (!first.error.empty()) throw Error(path + ":" + std::to_string(first.line) + ": " + first.error);
    layout = detect_layout(path, *first_line, first, columns, guess);
    reader.set_format(layout.format);
  }
};

InteractionFile::InteractionFile(const std::string& path, const ImportColumns& columns)
    : impl_(std::make_unique<Impl>(path, columns)) {}

InteractionFile::~InteractionFile() = default;

uint64_t InteractionFile::size_bytes() const { return impl_->reader.size(); }

ImportResult InteractionFile::load_into(HistoryStore& store, const ImportOptions& options) {
  const Layout& layout = impl_->layout;
  RecordReader& reader = impl_->reader;
  Loader loader(store, layout.timestamp >= 0, options.interactions_per_chunk);
  BadLines bad(impl_->path, options.skip_bad_lines);
  uint64_t parsed = 0;
  std::string error;
  const auto take = [&](const Record& r) {
    if (blank(r)) return;
    if (!r.error.empty()) return bad.add(r.line, r.error);
    if (r.fields.size() != layout.n_fields) {
      return bad.add(r.line, std::to_string(r.fields.size()) + " field" + (r.fields.size() == 1 ? "" : "s") +
                                 ", expected " + std::to_string(layout.n_fields) +
                                 (layout.header ? " (as in the header)" : " (user item)"));
    }
    const std::string& user = r.fields[layout.user];
    const std::string& item = r.fields[layout.item];
    if (user.empty()) return bad.add(r.line, "empty user");
    if (item.empty()) return bad.add(r.line, "empty item");
    error.clear();
    Interaction interaction;
    if (layout.rating >= 0) interaction.rating = parse_rating(r.fields[layout.rating], error);
    if (error.empty() && layout.timestamp >= 0) interaction.timestamp = parse_timestamp(r.fields[layout.timestamp], error);
    if (!error.empty()) return bad.add(r.line, error);
    interaction.item_id = item;
    loader.add(user, std::move(interaction));
    ++parsed;
  };
  if (!layout.header) take(impl_->first);  // the first line was data
  Record record;
  for (uint64_t n = 0; reader.next(record); ++n) {
    take(record);
    if (options.progress && n % 4096 == 0) options.progress(reader.bytes_read(), parsed);
  }
  loader.flush();
  if (options.progress) options.progress(reader.bytes_read(), parsed);
  if (parsed == 0)
    throw Error(impl_->path + ": no interactions" + (layout.header ? " after the header" : "") +
                (bad.count() ? " (" + std::to_string(bad.count()) + " bad line" + (bad.count() == 1 ? "" : "s") +
                                   " skipped; the first: " + bad.first().front() + ")"
                             : ""));
  ImportResult result;
  result.interactions = loader.written();
  result.users = loader.users();
  result.bad_lines = bad.count();
  result.first_bad_lines = bad.first();
  return result;
}

}  // namespace seqrec::history
