// Records of a delimited text file (CSV with RFC 4180 quoting, TSV, blank-separated lines),
// read in blocks: `seqrec import` (interactions) and `--items` (item metadata) share it.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"

namespace seqrec::tabular {

inline constexpr size_t kReadBlockBytes = size_t{4} << 20;
inline constexpr size_t kStreamBlockBytes = size_t{64} << 10;  // a pipe's default capacity
inline constexpr size_t kMaxRecordBytes = size_t{64} << 20;

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

enum class Format { kCsv, kTsv, kUserItem };

// One record of the file: its fields, the line it starts on, and what is wrong with it.
struct Record {
  std::vector<std::string> fields;
  uint64_t line = 0;
  std::string error;  // a malformed record (bad quoting); the line is reported as bad
};

inline bool blank(const Record& r) { return r.fields.empty() || (r.fields.size() == 1 && r.fields[0].empty()); }

// Reads the file in blocks and splits it into records: lines, except that a quoted CSV field
// may span lines. Never holds more than the longest record plus one block in memory.
class RecordReader {
 public:
  explicit RecordReader(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (fstat(fd_, &st) != 0 || S_ISDIR(st.st_mode)) {
      ::close(fd_);
      throw Error(path + ": cannot read: " + (S_ISDIR(st.st_mode) ? "is a directory" : std::strerror(errno)));
    }
    size_ = S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
    // A regular file needs no more than its size plus one byte (to see its end in one read); a
    // pipe hands over at most its capacity per read. The buffer still doubles for a longer
    // record. Zeroing a 4 MiB block was most of the time a small import took.
    // The bytes are left uninitialised: read() writes every byte before the parser sees it.
    capacity_ = S_ISREG(st.st_mode) ? static_cast<size_t>(std::clamp<uint64_t>(size_ + 1, 4096, kReadBlockBytes))
                                    : kStreamBlockBytes;
    buffer_ = std::make_unique_for_overwrite<char[]>(capacity_);
  }
  ~RecordReader() { ::close(fd_); }
  RecordReader(const RecordReader&) = delete;
  RecordReader& operator=(const RecordReader&) = delete;

  uint64_t size() const { return size_; }
  uint64_t bytes_read() const { return consumed_; }

  // The first non-blank line, without consuming anything (and past a UTF-8 byte order
  // mark); nullopt when the file holds no such line.
  std::optional<std::string> first_line() {
    for (;;) {
      std::string_view data(buffer_.get() + pos_, end_ - pos_);
      if (pos_ == 0 && data.size() >= 3 && data.substr(0, 3) == "\xEF\xBB\xBF") {
        pos_ = 3;
        consumed_ = 3;
        continue;
      }
      while (!data.empty()) {
        const size_t newline = data.find('\n');
        if (newline == std::string_view::npos && !eof_) break;
        const std::string_view line = trim(data.substr(0, newline));
        if (!line.empty() && line.find_first_not_of(" \t\r") != std::string_view::npos) return std::string(line);
        data.remove_prefix(newline == std::string_view::npos ? data.size() : newline + 1);
      }
      if (eof_) return std::nullopt;
      refill();
    }
  }

  void set_format(Format format) { format_ = format; }

  // The next record; false at the end of the file.
  bool next(Record& record) {
    for (;;) {
      if (pos_ == end_ && eof_) return false;
      const char* begin = buffer_.get() + pos_;
      const char* end = buffer_.get() + end_;
      uint64_t lines = 1;
      record.error.clear();
      const char* after = format_ == Format::kCsv ? parse_csv(begin, end, record, lines) : parse_split(begin, end, record);
      if (after) {
        record.line = line_;
        line_ += lines;
        pos_ += static_cast<size_t>(after - begin);
        consumed_ += static_cast<uint64_t>(after - begin);
        return true;
      }
      if (end_ - pos_ > kMaxRecordBytes)
        throw Error(path_ + ":" + std::to_string(line_) + ": a record longer than " +
                    std::to_string(kMaxRecordBytes >> 20) + " MiB (an unclosed quote?)");
      refill();
    }
  }

 private:
  // Moves the unread bytes to the front (growing the buffer when one record fills it) and
  // reads more; sets eof_ when there is nothing more.
  void refill() {
    if (pos_ > 0) {
      std::memmove(buffer_.get(), buffer_.get() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
    if (end_ == capacity_) {  // one record fills the buffer: double it
      auto grown = std::make_unique_for_overwrite<char[]>(capacity_ * 2);
      std::memcpy(grown.get(), buffer_.get(), end_);
      buffer_ = std::move(grown);
      capacity_ *= 2;
    }
    for (;;) {
      const ssize_t n = ::read(fd_, buffer_.get() + end_, capacity_ - end_);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw Error(path_ + ": read error: " + std::strerror(errno));
      if (n == 0) eof_ = true;
      end_ += static_cast<size_t>(n);
      return;
    }
  }

  // A CSV record (RFC 4180: a field starting with '"' is quoted, "" is a quote inside it and
  // it may hold delimiters and newlines). Returns the position after the record, or nullptr
  // when the buffer ends before the record does and more may come.
  const char* parse_csv(const char* p, const char* end, Record& record, uint64_t& lines) {
    record.fields.clear();
    for (;;) {
      while (p < end && *p == ' ') ++p;
      std::string field;
      if (p < end && *p == '"') {
        ++p;
        for (;;) {
          const char* quote = static_cast<const char*>(std::memchr(p, '"', static_cast<size_t>(end - p)));
          const char* stop = quote ? quote : end;
          lines += static_cast<uint64_t>(std::count(p, stop, '\n'));
          field.append(p, stop);
          p = stop;
          if (!quote) {
            if (!eof_) return nullptr;
            record.error = "field " + std::to_string(record.fields.size() + 1) + ": a quote is never closed";
            record.fields.push_back(std::move(field));
            return end;
          }
          if (quote + 1 == end && !eof_) return nullptr;
          if (quote + 1 < end && quote[1] == '"') {
            field.push_back('"');
            p = quote + 2;
            continue;
          }
          p = quote + 1;
          break;
        }
        while (p < end && (*p == ' ' || *p == '\r')) ++p;
        if (p < end && *p != ',' && *p != '\n') {
          record.error = "field " + std::to_string(record.fields.size() + 1) + ": text after its closing quote";
          const char* newline = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
          if (!newline && !eof_) return nullptr;
          record.fields.push_back(std::move(field));
          return newline ? newline + 1 : end;
        }
      } else {
        const char* start = p;
        while (p < end && *p != ',' && *p != '\n') ++p;
        if (p == end && !eof_) return nullptr;
        field = trim(std::string_view(start, static_cast<size_t>(p - start)));
      }
      record.fields.push_back(std::move(field));
      if (p == end) return end;
      if (*p == '\n') return p + 1;
      ++p;  // the comma
      if (p == end && !eof_) return nullptr;
      if (p == end) {  // a trailing comma at the end of the file: one more, empty field
        record.fields.emplace_back();
        return end;
      }
    }
  }

  // A line split on tabs (TSV) or on runs of blanks (user item).
  const char* parse_split(const char* begin, const char* end, Record& record) {
    const char* newline = static_cast<const char*>(std::memchr(begin, '\n', static_cast<size_t>(end - begin)));
    if (!newline && !eof_) return nullptr;
    const std::string_view line(begin, static_cast<size_t>((newline ? newline : end) - begin));
    record.fields.clear();
    if (format_ == Format::kTsv) {
      size_t start = 0;
      for (;;) {
        const size_t tab = line.find('\t', start);
        record.fields.emplace_back(trim(line.substr(start, tab == std::string_view::npos ? tab : tab - start)));
        if (tab == std::string_view::npos) break;
        start = tab + 1;
      }
    } else {
      size_t i = 0;
      for (;;) {
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
        if (i == line.size()) break;
        const size_t start = i;
        while (i < line.size() && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') ++i;
        record.fields.emplace_back(line.substr(start, i - start));
      }
    }
    return newline ? newline + 1 : end;
  }

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::unique_ptr<char[]> buffer_;
  size_t capacity_ = 0;
  size_t pos_ = 0, end_ = 0;
  bool eof_ = false;
  uint64_t consumed_ = 0;
  uint64_t line_ = 1;
  Format format_ = Format::kCsv;
};

}  // namespace seqrec::tabular
