#include "weights/sources/state_dict.h"

#include <algorithm>
#include <filesystem>
#include <regex>

#include "engine/error.h"
#include "weights/sources/source.h"

namespace seqrec {

StateDict::StateDict(std::string file, std::vector<std::pair<std::string, Tensor>> tensors, std::string missing_hint,
                     std::string model)
    : file_(std::move(file)), missing_hint_(std::move(missing_hint)), model_(std::move(model)) {
  for (auto& [name, tensor] : tensors) tensors_.emplace(name, std::move(tensor));
}

const Tensor& StateDict::peek(const std::string& key) const {
  auto it = tensors_.find(key);
  if (it == tensors_.end()) throw Error(file_ + ": missing key '" + key + "' " + missing_hint_);
  return it->second;
}

Tensor StateDict::take_any(const std::string& key) {
  auto it = tensors_.find(key);
  if (it == tensors_.end()) throw Error(file_ + ": missing key '" + key + "' " + missing_hint_);
  Tensor t = std::move(it->second);
  tensors_.erase(it);
  require_finite(t, file_ + ": key '" + key + "'");
  return t;
}

Tensor StateDict::take(const std::string& key, const std::vector<int64_t>& shape) {
  const Tensor& t = peek(key);
  if (t.shape != shape)
    throw Error(file_ + ": key '" + key + "': shape " + shape_string(t.shape) + ", expected " + shape_string(shape));
  return take_any(key);
}

void StateDict::require_all_used() const {
  if (!tensors_.empty())
    throw Error(file_ + ": unexpected key '" + tensors_.begin()->first + "' (not part of " + model_ +
                "; refusing to drop weights silently)");
}

int64_t StateDict::count_indexed(const std::string& prefix, const std::string& suffix) const {
  int64_t n = 0;
  while (has(prefix + std::to_string(n) + suffix)) ++n;
  return n;
}

Tensor row_slice(const Tensor& t, int64_t begin, int64_t count) {
  const int64_t cols = t.shape.size() > 1 ? static_cast<int64_t>(t.numel()) / t.shape[0] : 1;
  std::vector<int64_t> shape = t.shape;
  shape[0] = count;
  Tensor out(shape);
  std::copy(t.ptr() + begin * cols, t.ptr() + (begin + count) * cols, out.ptr());
  return out;
}

Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  const int64_t cols = t.shape[1];
  Tensor out({static_cast<int64_t>(rows.size()), cols});
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy(t.ptr() + rows[i] * cols, t.ptr() + (rows[i] + 1) * cols, out.ptr() + static_cast<int64_t>(i) * cols);
  return out;
}

Tensor reshaped(Tensor t, std::vector<int64_t> shape) {
  t.shape = std::move(shape);
  return t;
}

Tensor transposed(const Tensor& t) {
  const int64_t a = t.shape[0], b = t.shape[1];
  Tensor out({b, a});
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j) out.ptr()[j * a + i] = t.ptr()[i * b + j];
  return out;
}

std::optional<int64_t> file_name_number(const std::string& path, const std::string& key) {
  const std::string name = std::filesystem::path(path).filename().string();
  std::smatch m;
  if (std::regex_search(name, m, std::regex("(^|[._])" + key + "=([0-9]+)"))) {
    try {
      return std::stoll(m[2].str());
    } catch (const std::out_of_range&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace seqrec
