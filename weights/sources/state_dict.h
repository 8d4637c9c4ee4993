// A checkpoint's state_dict while a source mapper takes its tensors out by name (every key
// must be used: a key left over is a model the mapper does not reproduce), and the reshaping
// helpers the mappers share.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace seqrec {

class StateDict {
 public:
  // missing_hint ends the missing-key error: "(not a SASRec.pytorch state_dict?)"; model names
  // what a left-over key is not part of: "SASRec.pytorch's SASRec".
  StateDict(std::string file, std::vector<std::pair<std::string, Tensor>> tensors, std::string missing_hint,
            std::string model);

  bool has(const std::string& key) const { return tensors_.count(key) > 0; }
  const Tensor& peek(const std::string& key) const;
  // Takes a tensor out, checking its shape and that every value is finite.
  Tensor take(const std::string& key, const std::vector<int64_t>& shape);
  Tensor take_any(const std::string& key);
  // Every key must have been taken.
  void require_all_used() const;
  // The number of consecutive i = 0, 1, ... for which `prefix + i + suffix` is a key.
  int64_t count_indexed(const std::string& prefix, const std::string& suffix) const;
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::map<std::string, Tensor> tensors_;
  std::string missing_hint_, model_;
};

// Rows [begin, begin + count) of a tensor (its first dimension).
Tensor row_slice(const Tensor& t, int64_t begin, int64_t count);
// The rows `rows` of a 2-D tensor, in that order.
Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& rows);
Tensor reshaped(Tensor t, std::vector<int64_t> shape);
// A 2-D tensor transposed: [a, b] -> [b, a].
Tensor transposed(const Tensor& t);

// "SASRec.epoch=601.lr=0.001.layer=2.head=1.hidden=50.maxlen=200.pth", "head" -> 1.
std::optional<int64_t> file_name_number(const std::string& path, const std::string& key);

}  // namespace seqrec
