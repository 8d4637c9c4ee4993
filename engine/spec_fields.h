// Reading and writing a ModelSpec as named text fields (engine/model_spec.h): shared by the
// spec's own stages and by each block kind, which reads and writes its own fields.
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "engine/model_spec.h"

namespace seqrec {

class FieldWriter {
 public:
  explicit FieldWriter(SpecFields& out) : out_(out) {}
  void text(const char* name, const std::string& value) { out_.emplace_back(name, value); }
  void flag(const char* name, bool value) { text(name, value ? "true" : "false"); }
  void integer(const char* name, int64_t value) { text(name, std::to_string(value)); }
  void number(const char* name, float value);  // shortest text that reads back to the same float
  template <class E>
  void enumeration(const char* name, E value) { text(name, to_string(value)); }

 private:
  SpecFields& out_;
};

// Errors read "<where> '<field>': <problem>". Every field must be read exactly once: what is
// left unread at the end is an error (a field this version does not know).
class FieldReader {
 public:
  FieldReader(const SpecFields& fields, std::string where);

  bool has(const char* name) const;
  const std::string& text(const char* name);  // required
  bool flag(const char* name);
  int64_t integer(const char* name);
  float number(const char* name);
  template <class E>
  E enumeration(const char* name, E (*parse)(const std::string&, const std::string&)) {
    return parse(field(name), text(name));
  }
  // The same with a default for an absent field.
  bool flag_or(const char* name, bool fallback) { return has(name) ? flag(name) : fallback; }
  int64_t integer_or(const char* name, int64_t fallback) { return has(name) ? integer(name) : fallback; }
  float number_or(const char* name, float fallback) { return has(name) ? number(name) : fallback; }

  std::string field(const char* name) const { return where_ + " '" + name + "'"; }
  [[noreturn]] void bad(const char* name, const std::string& expected);
  // Fails on the first field nobody read.
  void require_all_read() const;

 private:
  const SpecFields& fields_;
  std::string where_;
  std::set<std::string> read_;
};

}  // namespace seqrec
