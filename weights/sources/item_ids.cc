#include <cmath>
#include <algorithm>
#include <fstream>
#include <unordered_map>

#include "engine/error.h"
#include "weights/sources/source.h"

namespace seqrec {

std::vector<std::string> read_item_ids(const std::string& path, int64_t rows) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open item-id file");
  std::vector<std::string> ids;
  std::unordered_map<std::string, int64_t> first_line;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const int64_t number = static_cast<int64_t>(ids.size());
    if (number >= rows)
      throw Error(path + ": more lines than the model has item rows (expected " + std::to_string(rows) +
                  " lines, line 0 being the padding row)");
    if (number > 0 && !line.empty()) {  // an empty line: a row that is not an item
      auto [it, inserted] = first_line.emplace(line, number);
      if (!inserted)
        throw Error(path + ": line " + std::to_string(number) + ": item id '" + line + "' already on line " +
                    std::to_string(it->second));
    }
    ids.push_back(line);
  }
  if (static_cast<int64_t>(ids.size()) != rows)
    throw Error(path + ": " + std::to_string(ids.size()) + " lines, expected " + std::to_string(rows) +
                " (one per item-embedding row, line 0 being the padding row)");
  if (first_line.empty()) throw Error(path + ": every line after line 0 is empty: no item");
  return ids;
}

void drop_non_item_rows(ModelFile& model) {
  std::vector<int64_t> keep{0};
  for (int64_t r = 1; r < static_cast<int64_t>(model.catalog.size()); ++r)
    if (!model.catalog[static_cast<size_t>(r)].empty()) keep.push_back(r);
  const int64_t n = model.spec.n_items, kept = static_cast<int64_t>(keep.size());
  if (kept == n) return;
  // Row-indexed tensors: their first n rows are the catalog rows (a [MASK] row follows).
  for (auto& [name, t] : model.tensors) {
    const bool item_rows = name == "embedding/item/weight" || name == "output/item/weight" || name == "output/bias";
    if (!item_rows) continue;
    const int64_t cols = t.shape.size() > 1 ? t.shape[1] : 1;
    Tensor out(t.shape);
    out.shape[0] = t.shape[0] - (n - kept);
    out.data.resize(Tensor::count(out.shape));
    for (int64_t i = 0; i < kept; ++i)
      std::copy(t.ptr() + keep[i] * cols, t.ptr() + (keep[i] + 1) * cols, out.ptr() + i * cols);
    std::copy(t.ptr() + n * cols, t.ptr() + t.shape[0] * cols, out.ptr() + kept * cols);  // rows past the catalog
    t = std::move(out);
  }
  std::vector<std::string> catalog;
  std::vector<uint64_t> popularity;
  for (int64_t r : keep) {
    catalog.push_back(std::move(model.catalog[static_cast<size_t>(r)]));
    if (!model.popularity.empty()) popularity.push_back(model.popularity[static_cast<size_t>(r)]);
  }
  model.catalog = std::move(catalog);
  model.popularity = std::move(popularity);
  model.spec.n_items = kept;
}

std::vector<std::string> row_number_ids(int64_t rows) {
  std::vector<std::string> ids(static_cast<size_t>(rows));
  ids[0] = "[PAD]";
  for (int64_t r = 1; r < rows; ++r) ids[r] = std::to_string(r);
  return ids;
}

void require_finite(const Tensor& tensor, const std::string& what) {
  for (size_t i = 0; i < tensor.numel(); ++i)
    if (!std::isfinite(tensor.data[i]))
      throw Error(what + ": " + (std::isnan(tensor.data[i]) ? "NaN" : "Inf") + " at flat index " + std::to_string(i));
}

}  // namespace seqrec
