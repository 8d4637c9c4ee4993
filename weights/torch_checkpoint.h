// Reader for files written by torch.save (the zip container + pickle, see
// docs/models.md "File formats the converter reads"). No Python involved.
//
// The pickle is evaluated into a small object model (weights/pickle.h). Tensors stay
// references into their storages until asked for; the file is mapped once and storages are
// shared between views (tied weights), each converted tensor being gathered from them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"
#include "weights/pickle.h"
#include "weights/zip_reader.h"

namespace seqrec {

class TorchCheckpoint {
 public:
  // Reads the zip directory and unpickles data.pkl. Throws seqrec::Error naming `path`.
  // Also checks that every storage the pickle references has an entry of at least its
  // size, and that every tensor view stays inside its storage.
  static TorchCheckpoint open(const std::string& path);
  // The same over the bytes of a file already in memory; `name` stands for the path.
  static TorchCheckpoint from_memory(std::string name, std::vector<uint8_t> bytes);

  // The unpickled root object (a state_dict OrderedDict, or RecBole's checkpoint dict).
  const pickle::Value& root() const { return root_; }
  const std::string& path() const { return path_; }

  // The tensors of a state_dict (an OrderedDict/dict of str -> tensor), in file order,
  // converted to contiguous fp32 (float, double, half, bfloat16 and integer dtypes).
  // Views (transposed, sliced) are gathered; tensors sharing a storage (tied weights) each
  // get their own copy. `dict` must be root() or a Value inside it.
  // Throws seqrec::Error if `dict` is not such a mapping or a tensor is out of its storage.
  std::vector<std::pair<std::string, Tensor>> state_dict(const pickle::Value& dict) const;
  // state_dict(root()).
  std::vector<std::pair<std::string, Tensor>> state_dict() const { return state_dict(root_); }

  // Whatever precedes the first '/' of the entries ("archive", or the file's stem).
  const std::string& prefix() const { return prefix_; }
  // One tensor of the pickle as contiguous fp32; `name` is used in errors.
  Tensor read_tensor(const pickle::TensorRef& tensor, const std::string& name) const;

 private:
  static TorchCheckpoint from_zip(ZipReader zip);
  // The storage's entry, checked to exist and to hold numel elements.
  std::span<const uint8_t> storage_bytes(const pickle::StorageRef& storage, const std::string& name) const;
  // Checks the view against its storage; returns its element count.
  uint64_t check_view(const pickle::TensorRef& tensor, const std::string& name) const;

  std::string path_;
  std::string prefix_;
  std::unique_ptr<ZipReader> zip_;  // owns the file's bytes that tensors are read from
  pickle::Value root_;
};

}  // namespace seqrec
