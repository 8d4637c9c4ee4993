#include "weights/torch_checkpoint.h"


#include <bit>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "engine/error.h"
#include "weights/float_formats.h"

namespace seqrec {

// Storages are raw little-endian bytes, copied as-is into host values.
static_assert(std::endian::native == std::endian::little, "the torch reader assumes a little-endian host");

namespace {

using pickle::DType;
using pickle::TensorRef;
using pickle::Value;


template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float load_as_float(DType dtype, const uint8_t* p) {
  switch (dtype) {
    case DType::F32: return load<float>(p);
    case DType::F64: return static_cast<float>(load<double>(p));
    case DType::F16: return half_to_float(load<uint16_t>(p));
    case DType::BF16: return bfloat16_to_float(load<uint16_t>(p));
    case DType::I64: return static_cast<float>(load<int64_t>(p));
    case DType::I32: return static_cast<float>(load<int32_t>(p));
    case DType::I16: return static_cast<float>(load<int16_t>(p));
    case DType::I8: return static_cast<float>(load<int8_t>(p));
    case DType::U8: return static_cast<float>(*p);
    case DType::Bool: return *p ? 1.0f : 0.0f;
  }
  return 0.0f;
}

// out[j] = storage[first + j * stride] for j < n, converted; one dtype switch per run.
template <DType D>
void convert_run(const uint8_t* storage, uint64_t first, int64_t stride, int64_t n, float* out) {
  constexpr std::size_t width = D == DType::F32 || D == DType::I32   ? 4
                                : D == DType::F64 || D == DType::I64 ? 8
                                : D == DType::F16 || D == DType::BF16 || D == DType::I16 ? 2
                                                                                         : 1;
  // check_view() proved first + (n - 1) * stride < the storage's element count.
  for (int64_t j = 0; j < n; ++j)
    out[j] = load_as_float(D, storage + (first + static_cast<uint64_t>(j) * static_cast<uint64_t>(stride)) * width);
}

void convert(DType dtype, const uint8_t* storage, uint64_t first, int64_t stride, int64_t n, float* out) {
  switch (dtype) {
    case DType::F32: return convert_run<DType::F32>(storage, first, stride, n, out);
    case DType::F64: return convert_run<DType::F64>(storage, first, stride, n, out);
    case DType::F16: return convert_run<DType::F16>(storage, first, stride, n, out);
    case DType::BF16: return convert_run<DType::BF16>(storage, first, stride, n, out);
    case DType::I64: return convert_run<DType::I64>(storage, first, stride, n, out);
    case DType::I32: return convert_run<DType::I32>(storage, first, stride, n, out);
    case DType::I16: return convert_run<DType::I16>(storage, first, stride, n, out);
    case DType::I8: return convert_run<DType::I8>(storage, first, stride, n, out);
    case DType::U8: return convert_run<DType::U8>(storage, first, stride, n, out);
    case DType::Bool: return convert_run<DType::Bool>(storage, first, stride, n, out);
  }
}

// Where a Value sits in the pickle ("optimizer/state/0/exp_avg"), for error messages.
struct Visit {
  const Value* value;
  std::size_t parent;  // index into the visit list; npos for the root
  std::string label;
};

std::string visit_path(const std::vector<Visit>& visits, std::size_t i) {
  std::vector<const std::string*> labels;
  for (; i != std::string::npos && labels.size() < 16; i = visits[i].parent)
    if (!visits[i].label.empty()) labels.push_back(&visits[i].label);
  if (labels.empty()) return "the root object";
  std::string path = i != std::string::npos ? ".../" : "";
  for (auto it = labels.rbegin(); it != labels.rend(); ++it) path += (it == labels.rbegin() ? "" : "/") + **it;
  return "'" + path + "'";
}

std::string key_label(const Value& key) {
  if (key.is_string()) return pickle::printable(key.as_string(), 64);
  if (key.is_int()) return std::to_string(key.as_int());
  return "<" + key.describe(40) + ">";
}

}  // namespace

TorchCheckpoint TorchCheckpoint::open(const std::string& path) { return from_zip(ZipReader::open(path)); }

TorchCheckpoint TorchCheckpoint::from_memory(std::string name, std::vector<uint8_t> bytes) {
  return from_zip(ZipReader::from_memory(std::move(name), std::move(bytes)));
}

TorchCheckpoint TorchCheckpoint::from_zip(ZipReader zip) {
  TorchCheckpoint checkpoint;
  checkpoint.path_ = zip.name();
  checkpoint.zip_ = std::make_unique<ZipReader>(std::move(zip));
  const ZipReader& z = *checkpoint.zip_;
  const std::string& path = checkpoint.path_;

  if (z.entries().empty()) throw Error(path + ": zip archive has no entries, expected <prefix>/data.pkl");
  const std::string& first = z.entries().front().name;
  const std::size_t slash = first.find('/');
  if (slash == std::string::npos || slash == 0)
    throw Error(path + ": first zip entry '" + pickle::printable(first) +
                "' is not inside a '<prefix>/' folder; not a torch.save archive");
  checkpoint.prefix_ = first.substr(0, slash);
  const std::string pkl_name = checkpoint.prefix_ + "/data.pkl";
  const ZipReader::Entry* pkl = z.find(pkl_name);
  if (!pkl) throw Error(path + ": no zip entry '" + pickle::printable(pkl_name) + "'; not a torch.save archive");

  if (const ZipReader::Entry* order = z.find(checkpoint.prefix_ + "/byteorder")) {
    auto bytes = z.data(*order);
    std::string text(bytes.begin(), bytes.end());
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (text != "little")
      throw Error(path + ": byteorder is '" + pickle::printable(text, 20) + "', expected 'little'");
  }

  checkpoint.root_ = pickle::load(z.data(*pkl), path + ": " + pkl_name);

  // Check every storage and view now, while we can say where in the pickle it sits, so a
  // malformed file fails at open and not halfway through a conversion.
  std::vector<Visit> visits{{&checkpoint.root_, std::string::npos, ""}};
  std::unordered_set<const Value*> seen{&checkpoint.root_};
  for (std::size_t i = 0; i < visits.size(); ++i) {
    const Value& v = *visits[i].value;
    auto visit = [&](const Value* child, std::string label) {
      if (child && seen.insert(child).second) visits.push_back({child, i, std::move(label)});
    };
    for (const auto& item : v.items()) {
      visit(item.key, "");
      visit(item.value, key_label(*item.key));
    }
    std::size_t index = 0;
    for (const Value* element : v.elements()) visit(element, std::to_string(index++));
    if (v.is_object()) {
      visit(&v.callable(), "");
      visit(&v.args(), "");
      visit(v.kwargs(), "");
    }
    visit(v.state(), "");
    if (v.is_storage()) checkpoint.storage_bytes(v.storage(), "storage at " + visit_path(visits, i));
    if (v.is_tensor()) {
      // A tensor holds a copy of its storage reference, so the storage is checked here too.
      const std::string name = "tensor " + visit_path(visits, i);
      checkpoint.storage_bytes(v.tensor().storage, name);
      checkpoint.check_view(v.tensor(), name);
    }
  }
  return checkpoint;
}

std::span<const uint8_t> TorchCheckpoint::storage_bytes(const pickle::StorageRef& storage,
                                                        const std::string& name) const {
  const std::string entry_name = prefix_ + "/data/" + storage.key;
  const ZipReader::Entry* entry = zip_->find(entry_name);
  if (!entry)
    throw Error(path_ + ": " + name + ": storage '" + pickle::printable(storage.key) + "' has no zip entry '" +
                pickle::printable(entry_name) + "'");
  const uint64_t width = pickle::dtype_size(storage.dtype);
  if (static_cast<uint64_t>(storage.numel) > entry->size / width)
    throw Error(path_ + ": " + name + ": storage '" + pickle::printable(storage.key) + "' holds " +
                std::to_string(storage.numel) + " " + pickle::dtype_name(storage.dtype) + " elements, expected " +
                "its entry '" + pickle::printable(entry_name) + "' to have at least " +
                (static_cast<uint64_t>(storage.numel) <= std::numeric_limits<uint64_t>::max() / width
                     ? std::to_string(static_cast<uint64_t>(storage.numel) * width)
                     : std::string("2^64")) +
                " bytes, found " + std::to_string(entry->size));
  return zip_->data(*entry).first(static_cast<std::size_t>(static_cast<uint64_t>(storage.numel) * width));
}

uint64_t TorchCheckpoint::check_view(const pickle::TensorRef& tensor, const std::string& name) const {
  const auto& size = tensor.size;
  const auto& stride = tensor.stride;
  const auto storage_numel = static_cast<uint64_t>(tensor.storage.numel);
  auto where = [&] {
    return path_ + ": " + name + " (" + pickle::dtype_name(tensor.storage.dtype) + " size " + shape_string(size) +
           " stride " + shape_string(stride) + " offset " + std::to_string(tensor.offset) + ")";
  };
  if (size.size() != stride.size())
    throw Error(where() + ": size has " + std::to_string(size.size()) + " dimensions, stride " +
                std::to_string(stride.size()));
  // Elements: a product that must not overflow. Last element touched: offset + sum of
  // (size - 1) * stride, also overflow-checked (sizes and strides are >= 0, see pickle.cc).
  uint64_t numel = 1;
  uint64_t last = static_cast<uint64_t>(tensor.offset);
  bool overflow = false;
  for (std::size_t d = 0; d < size.size(); ++d) {
    const auto n = static_cast<uint64_t>(size[d]);
    overflow |= __builtin_mul_overflow(numel, n, &numel);
    if (n > 0) {
      uint64_t reach = 0;
      overflow |= __builtin_mul_overflow(n - 1, static_cast<uint64_t>(stride[d]), &reach);
      overflow |= __builtin_add_overflow(last, reach, &last);
    }
  }
  if (overflow) throw Error(where() + ": size/stride arithmetic overflows 64 bits");
  if (numel == 0) {
    if (static_cast<uint64_t>(tensor.offset) > storage_numel)
      throw Error(where() + ": offset is past the end of storage '" + pickle::printable(tensor.storage.key) +
                  "' of " + std::to_string(storage_numel) + " elements");
    return 0;
  }
  if (last >= storage_numel)
    throw Error(where() + ": reaches element " + std::to_string(last) + ", expected < " +
                std::to_string(storage_numel) + " (the size of storage '" + pickle::printable(tensor.storage.key) +
                "')");
  // A view with more elements than its storage repeats elements (expand / stride 0); torch
  // never saves parameters like that, and allowing it would let a tiny file ask for huge outputs.
  if (numel > storage_numel)
    throw Error(where() + ": has " + std::to_string(numel) + " elements, more than its storage's " +
                std::to_string(storage_numel) + " (broadcast/overlapping views are not supported)");
  return numel;
}

Tensor TorchCheckpoint::read_tensor(const pickle::TensorRef& tensor, const std::string& name) const {
  const uint64_t numel = check_view(tensor, name);
  std::span<const uint8_t> bytes = storage_bytes(tensor.storage, name);
  Tensor out(tensor.size);
  if (numel == 0) return out;
  const std::size_t rank = tensor.size.size();
  if (rank == 0) {
    convert(tensor.storage.dtype, bytes.data(), static_cast<uint64_t>(tensor.offset), 1, 1, out.ptr());
    return out;
  }
  // Odometer over all dimensions but the last; the last one is converted as one strided run.
  const int64_t run = tensor.size[rank - 1];
  const int64_t run_stride = tensor.stride[rank - 1];
  std::vector<int64_t> index(rank - 1, 0);
  uint64_t first = static_cast<uint64_t>(tensor.offset);
  float* dst = out.ptr();
  for (uint64_t done = 0; done < numel; done += static_cast<uint64_t>(run), dst += run) {
    convert(tensor.storage.dtype, bytes.data(), first, run_stride, run, dst);
    for (std::size_t d = rank - 1; d-- > 0;) {
      if (++index[d] < tensor.size[d]) {
        first += static_cast<uint64_t>(tensor.stride[d]);
        break;
      }
      first -= static_cast<uint64_t>(tensor.stride[d]) * static_cast<uint64_t>(tensor.size[d] - 1);
      index[d] = 0;
    }
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> TorchCheckpoint::state_dict(const pickle::Value& dict) const {
  if (!dict.is_dict())
    throw Error(path_ + ": expected a state_dict (a dict of name -> tensor), found " + dict.describe());
  // Tied weights convert once per name; still, a file must not make us allocate far more than
  // its own size (a tiny storage viewed by a million names).
  uint64_t file_bytes = 0;
  for (const auto& entry : zip_->entries()) file_bytes += entry.size;
  const uint64_t max_elements = 4 * file_bytes + (uint64_t{1} << 20);
  uint64_t total = 0;

  std::vector<std::pair<std::string, Tensor>> tensors;
  std::unordered_set<std::string> names;
  tensors.reserve(dict.items().size());
  for (std::size_t i = 0; i < dict.items().size(); ++i) {
    const auto& item = dict.items()[i];
    if (!item.key->is_string())
      throw Error(path_ + ": state_dict key #" + std::to_string(i) + " is " + item.key->describe() +
                  ", expected a str");
    const std::string& name = item.key->as_string();
    const std::string quoted = "state_dict entry '" + pickle::printable(name) + "'";
    if (!item.value->is_tensor())
      throw Error(path_ + ": " + quoted + " is " + item.value->describe() + ", expected a tensor");
    if (!names.insert(name).second) throw Error(path_ + ": " + quoted + " appears twice");
    const uint64_t numel = check_view(item.value->tensor(), quoted);
    total += numel;
    if (total > max_elements)
      throw Error(path_ + ": " + quoted + ": the state_dict's tensors add up to more than " +
                  std::to_string(max_elements) + " elements, 4 per byte of the file");
    tensors.emplace_back(name, read_tensor(item.value->tensor(), quoted));
  }
  return tensors;
}

}  // namespace seqrec
