// The safetensors format (github: huggingface/safetensors), read and written without Python:
//
//   u64 little-endian N | N bytes of JSON header | data
//   header = {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {"<key>": "<string>", ...}}        (__metadata__ optional)
//
// Offsets are byte offsets into the data that follows the header, end exclusive.
//
// The reader trusts nothing: N is at most 100 MB and inside the file; the header must be a
// JSON object of well-formed entries with unique names; dtypes are F32, F16, BF16 or F64
// (anything else is refused by name); shapes are non-negative and their byte size equals
// the entry's offsets; entries, sorted by offset, tile the data exactly (no gap, overlap or
// trailing bytes), as the format requires. Every failure is one seqrec::Error line naming
// the file, the tensor / key, and expected vs. found.
//
// The writer emits F32 tensors in the order given, __metadata__ first, and pads the header
// with spaces to a multiple of 8 bytes (as the reference implementation does).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace seqrec::safetensors {

inline constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

enum class DType : uint8_t { F32, F16, BF16, F64 };
const char* dtype_name(DType dtype);  // "F32", ...
std::size_t dtype_size(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section, [begin, end)
  uint64_t end = 0;
};

class File {
 public:
  // Reads and validates the whole file. Throws seqrec::Error naming `path`.
  static File open(const std::string& path);
  // The same over bytes already in memory; `name` stands for the path in errors.
  static File from_memory(std::string name, std::vector<uint8_t> bytes);

  const std::string& name() const { return name_; }
  // __metadata__ (empty if the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Every tensor, in data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr if there is no tensor of that name.
  const TensorInfo* find(const std::string& name) const;
  // The tensor's values converted to contiguous fp32.
  Tensor read(const TensorInfo& info) const;

 private:
  std::string name_;
  std::vector<uint8_t> bytes_;
  uint64_t data_begin_ = 0;  // 8 + N
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
};

// Writes `tensors` (F32, in this order) and `metadata` to `path`. Names must be unique and
// non-empty and must not be "__metadata__". Throws seqrec::Error naming `path`.
void write(const std::string& path, const std::vector<std::pair<std::string, const Tensor*>>& tensors,
           const std::map<std::string, std::string>& metadata);

// `text` as a JSON string literal, quotes included (for header and metadata values).
std::string json_quote(const std::string& text);

}  // namespace seqrec::safetensors
