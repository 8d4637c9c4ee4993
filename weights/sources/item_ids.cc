#include <cmath>
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
    if (number > 0) {
      if (line.empty()) throw Error(path + ": line " + std::to_string(number) + ": empty item id");
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
  return ids;
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
