#include "weights/safetensors.h"


#include <simdjson.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "engine/error.h"
#include "engine/text.h"
#include "weights/float_formats.h"

namespace seqrec::safetensors {

static_assert(std::endian::native == std::endian::little, "the safetensors reader assumes a little-endian host");

namespace {

constexpr std::size_t kMaxRank = 64;
constexpr const char* kMetadataKey = "__metadata__";

std::string single_quoted(std::string_view text) {
  std::string shown = printable(text);
  if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
  return "'" + shown + "'";
}

const char* type_name(simdjson::dom::element_type type) {
  using simdjson::dom::element_type;
  switch (type) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64: return "an integer";
    case element_type::DOUBLE: return "a number";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a boolean";
    case element_type::NULL_VALUE: return "null";
  }
  return "a value";
}


bool parse_dtype(std::string_view text, DType& out) {
  if (text == "F32") out = DType::F32;
  else if (text == "F16") out = DType::F16;
  else if (text == "BF16") out = DType::BF16;
  else if (text == "F64") out = DType::F64;
  else return false;
  return true;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(path + ": is a directory, not a safetensors file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) throw Error(path + ": cannot determine the file size");
  in.seekg(0, std::ios::beg);
  std::vector<uint8_t> bytes(static_cast<std::size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) throw Error(path + ": read error");
  return bytes;
}

}  // namespace

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
  }
  return "?";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::F64: return 8;
  }
  return 0;
}

File File::open(const std::string& path) { return from_memory(path, read_file(path)); }

File File::from_memory(std::string name, std::vector<uint8_t> bytes) {
  File file;
  file.name_ = std::move(name);
  file.bytes_ = std::move(bytes);
  const std::string& f = file.name_;
  const uint64_t size = file.bytes_.size();

  if (size < 8)
    throw Error(f + ": " + std::to_string(size) + " bytes, too short for a safetensors file (expected an 8-byte header length)");
  uint64_t header_length;
  std::memcpy(&header_length, file.bytes_.data(), 8);
  if (header_length > kMaxHeaderBytes)
    throw Error(f + ": header length " + std::to_string(header_length) + " bytes exceeds the limit of " +
                std::to_string(kMaxHeaderBytes) + " (not a safetensors file?)");
  if (header_length > size - 8)
    throw Error(f + ": header length " + std::to_string(header_length) + " bytes, but only " + std::to_string(size - 8) +
                " bytes follow it (truncated file?)");
  if (header_length < 2) throw Error(f + ": header length " + std::to_string(header_length) + " is too small for a JSON object");
  file.data_begin_ = 8 + header_length;
  const uint64_t data_size = size - file.data_begin_;

  const std::string_view header(reinterpret_cast<const char*>(file.bytes_.data() + 8), header_length);
  simdjson::dom::parser parser;
  simdjson::padded_string padded(header);
  simdjson::dom::element root;
  if (auto error = parser.parse(padded).get(root))
    throw Error(f + ": header is not valid JSON (" + simdjson::error_message(error) + ")");
  if (root.type() != simdjson::dom::element_type::OBJECT)
    throw Error(f + ": header is " + type_name(root.type()) + ", expected a JSON object");

  std::set<std::string, std::less<>> seen;
  const simdjson::dom::object root_object = root.get_object().value_unsafe();
  for (auto field : root_object) {
    const std::string key(field.key);
    if (!seen.insert(key).second) throw Error(f + ": header: key " + single_quoted(key) + " appears twice");
    const simdjson::dom::element value = field.value;
    if (key == kMetadataKey) {
      if (value.type() == simdjson::dom::element_type::NULL_VALUE) continue;
      if (value.type() != simdjson::dom::element_type::OBJECT)
        throw Error(f + ": __metadata__ is " + type_name(value.type()) + ", expected an object of strings");
      const simdjson::dom::object metadata_object = value.get_object().value_unsafe();
      for (auto entry : metadata_object) {
        const std::string meta_key(entry.key);
        if (entry.value.type() != simdjson::dom::element_type::STRING)
          throw Error(f + ": __metadata__ key " + single_quoted(meta_key) + " is " + type_name(entry.value.type()) +
                      ", expected a string");
        if (!file.metadata_.emplace(meta_key, std::string(entry.value.get_string().value_unsafe())).second)
          throw Error(f + ": __metadata__ key " + single_quoted(meta_key) + " appears twice");
      }
      continue;
    }

    const std::string where = f + ": tensor " + single_quoted(key);
    if (key.empty()) throw Error(f + ": header has a tensor with an empty name");
    if (value.type() != simdjson::dom::element_type::OBJECT)
      throw Error(where + " is " + type_name(value.type()) + ", expected an object {dtype, shape, data_offsets}");
    const simdjson::dom::object entry = value.get_object().value_unsafe();
    TensorInfo info;
    info.name = key;

    simdjson::dom::element dtype;
    if (entry["dtype"].get(dtype)) throw Error(where + ": missing 'dtype'");
    if (dtype.type() != simdjson::dom::element_type::STRING)
      throw Error(where + ": 'dtype' is " + type_name(dtype.type()) + ", expected a string");
    const std::string_view dtype_text = dtype.get_string().value_unsafe();
    if (!parse_dtype(dtype_text, info.dtype))
      throw Error(where + ": dtype " + single_quoted(dtype_text) + " is not supported (expected F32|F16|BF16|F64)");

    simdjson::dom::element shape;
    if (entry["shape"].get(shape)) throw Error(where + ": missing 'shape'");
    if (shape.type() != simdjson::dom::element_type::ARRAY)
      throw Error(where + ": 'shape' is " + type_name(shape.type()) + ", expected an array of integers");
    uint64_t numel = 1;
    bool overflow = false;
    const simdjson::dom::array dims = shape.get_array().value_unsafe();
    for (simdjson::dom::element dim : dims) {
      if (dim.type() != simdjson::dom::element_type::INT64 && dim.type() != simdjson::dom::element_type::UINT64)
        throw Error(where + ": 'shape' holds " + type_name(dim.type()) + ", expected integers >= 0");
      if (dim.type() == simdjson::dom::element_type::INT64 && dim.get_int64().value_unsafe() < 0)
        throw Error(where + ": 'shape' has a negative dimension " + std::to_string(dim.get_int64().value_unsafe()));
      const uint64_t n = dim.get_uint64().value_unsafe();
      if (info.shape.size() == kMaxRank) throw Error(where + ": 'shape' has more than " + std::to_string(kMaxRank) + " dimensions");
      if (n > static_cast<uint64_t>(INT64_MAX)) overflow = true;
      info.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(n, INT64_MAX)));
      if (n != 0 && numel > UINT64_MAX / n) overflow = true;
      numel *= n;
    }
    if (!overflow && numel > UINT64_MAX / dtype_size(info.dtype)) overflow = true;
    if (overflow) throw Error(where + ": shape " + shape_string(info.shape) + " is too large");

    simdjson::dom::element offsets;
    if (entry["data_offsets"].get(offsets)) throw Error(where + ": missing 'data_offsets'");
    simdjson::dom::array offset_array;
    if (offsets.get_array().get(offset_array) || offset_array.size() != 2)
      throw Error(where + ": 'data_offsets' must be an array [begin, end]");
    uint64_t begin = 0, end = 0;
    if (offset_array.at(0).get_uint64().get(begin) || offset_array.at(1).get_uint64().get(end))
      throw Error(where + ": 'data_offsets' must hold two integers >= 0");
    if (end < begin)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] end before begin");
    if (end > data_size)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] past the end of the data (" +
                  std::to_string(data_size) + " bytes)");
    const uint64_t expected = numel * dtype_size(info.dtype);
    if (end - begin != expected)
      throw Error(where + ": " + std::to_string(end - begin) + " bytes in data_offsets, expected " + std::to_string(expected) +
                  " for " + dtype_name(info.dtype) + " " + shape_string(info.shape));
    info.begin = begin;
    info.end = end;
    file.tensors_.push_back(std::move(info));
  }

  // The entries must tile the data section exactly, in offset order.
  std::stable_sort(file.tensors_.begin(), file.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const TensorInfo& t : file.tensors_) {
    if (t.begin != cursor)
      throw Error(f + ": tensor " + single_quoted(t.name) + " starts at data offset " + std::to_string(t.begin) + ", expected " +
                  std::to_string(cursor) + (t.begin < cursor ? " (overlaps the tensor before it)" : " (gap in the data)"));
    cursor = t.end;
  }
  if (cursor != data_size)
    throw Error(f + ": " + std::to_string(data_size - cursor) + " bytes of data after the last tensor (expected the tensors to end at " +
                std::to_string(data_size) + ")");
  for (std::size_t i = 0; i < file.tensors_.size(); ++i) file.index_.emplace(file.tensors_[i].name, i);
  return file;
}

const TensorInfo* File::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor File::read(const TensorInfo& info) const {
  Tensor out(info.shape);
  const uint8_t* p = bytes_.data() + data_begin_ + info.begin;
  const std::size_t n = out.numel();
  float* y = out.ptr();
  switch (info.dtype) {
    case DType::F32:
      if (n > 0) std::memcpy(y, p, n * 4);
      break;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, p + 8 * i, 8);
        y[i] = static_cast<float>(v);
      }
      break;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        y[i] = half_to_float(v);
      }
      break;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        y[i] = bfloat16_to_float(v);
      }
      break;
  }
  return out;
}

std::string json_quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void write(const std::string& path, const std::vector<std::pair<std::string, const Tensor*>>& tensors,
           const std::map<std::string, std::string>& metadata) {
  auto require_utf8 = [&](const std::string& text, const std::string& what) {
    if (!simdjson::validate_utf8(text.data(), text.size()))
      throw Error(path + ": " + what + " " + single_quoted(text) + " is not valid UTF-8 (safetensors headers are JSON)");
  };
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      require_utf8(key, "metadata key");
      require_utf8(value, "metadata value of '" + key + "'");
      if (!first) header += ',';
      first = false;
      header += json_quote(key) + ":" + json_quote(value);
    }
    header += "}";
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == kMetadataKey || !names.insert(name).second)
      throw Error(path + ": cannot write a tensor named " + single_quoted(name) + " (empty, reserved or repeated)");
    require_utf8(name, "tensor name");
    const uint64_t bytes = tensor->numel() * 4;
    if (header.size() > 1) header += ',';
    header += json_quote(name) + ":{\"dtype\":\"F32\",\"shape\":[";
    for (std::size_t i = 0; i < tensor->shape.size(); ++i) header += (i ? "," : "") + std::to_string(tensor->shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  if (header.size() > kMaxHeaderBytes)
    throw Error(path + ": the header would be " + std::to_string(header.size()) + " bytes, over the format's limit of " +
                std::to_string(kMaxHeaderBytes));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing (" + std::strerror(errno) + ")");
  const uint64_t length = header.size();
  out.write(reinterpret_cast<const char*>(&length), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& [name, tensor] : tensors)
    if (tensor->numel() > 0)
      out.write(reinterpret_cast<const char*>(tensor->ptr()), static_cast<std::streamsize>(tensor->numel() * 4));
  out.flush();
  if (!out) throw Error(path + ": write error");
}

}  // namespace seqrec::safetensors
