// Tensor: fp32 values, 64-byte aligned, plus their shape (row-major, contiguous). Either it
// owns its values (`data`), or it views values held elsewhere — a model file's bytes, loaded
// once and used in place (weights/seqrec_file.h) — which `backing` keeps alive.
// The engine computes in fp32 only; readers convert other dtypes when they load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace seqrec {

template <class T, std::size_t Alignment = 64>
struct AlignedAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, Alignment>;
  };
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, Alignment>&) {}
  T* allocate(std::size_t n) {
    std::size_t bytes = (n * sizeof(T) + Alignment - 1) / Alignment * Alignment;
    void* p = std::aligned_alloc(Alignment, bytes == 0 ? Alignment : bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  template <class U>
  bool operator==(const AlignedAllocator<U, Alignment>&) const { return true; }
  template <class U>
  bool operator!=(const AlignedAllocator<U, Alignment>&) const { return false; }
};

using FloatBuffer = std::vector<float, AlignedAllocator<float>>;

// As AlignedAllocator, but resize() leaves new elements uninitialised: for large buffers a
// kernel fills whole right after (zeroing 60 MB first cost as much as filling it).
template <class T, std::size_t Alignment = 64>
struct UninitAlignedAllocator : AlignedAllocator<T, Alignment> {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = UninitAlignedAllocator<U, Alignment>;
  };
  UninitAlignedAllocator() = default;
  template <class U>
  UninitAlignedAllocator(const UninitAlignedAllocator<U, Alignment>&) {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialised: no value for trivial types
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <class U>
  bool operator==(const UninitAlignedAllocator<U, Alignment>&) const { return true; }
  template <class U>
  bool operator!=(const UninitAlignedAllocator<U, Alignment>&) const { return false; }
};

struct Tensor {
  std::vector<int64_t> shape;
  FloatBuffer data;                      // owned values (empty for a view)
  const float* view = nullptr;           // or: values held by `backing`
  std::shared_ptr<const void> backing;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(count(shape), 0.0f) {}
  // A view of `values` (count(shape) floats) that keeps `owner` alive.
  static Tensor view_of(std::vector<int64_t> s, const float* values, std::shared_ptr<const void> owner) {
    Tensor t;
    t.shape = std::move(s);
    t.view = values;
    t.backing = std::move(owner);
    return t;
  }

  static std::size_t count(const std::vector<int64_t>& s) {
    std::size_t n = 1;
    for (int64_t d : s) n *= static_cast<std::size_t>(d);
    return n;
  }
  std::size_t numel() const { return count(shape); }
  int64_t dim(std::size_t i) const { return shape.at(i); }
  // Values of an owned tensor, to fill (a view is read-only).
  float* ptr() { return data.data(); }
  const float* ptr() const { return view ? view : data.data(); }
};

// "[3, 50]" — used in every shape error message.
inline std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace seqrec
