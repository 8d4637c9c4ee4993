// Run-time sizes to the compile-time ones of the register-tile kernels (kernels/attention.cc,
// kernels/relative_attention.cc): a tile is ROWS query rows (1..8) by BLOCKS 16-float blocks
// of the head width (1..4, so heads up to 64 wide stay in registers), each pair its own
// instantiation. f gets the size as a std::integral_constant; its result is returned.
#pragma once

#include <cstdint>
#include <type_traits>

// A tile kernel may take a vector (__m512) by value; GCC then warns that the vector type's
// alignment attribute is dropped where the kernel's pointer type becomes a template argument
// here, which changes nothing in how it is called.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"

namespace seqrec::kernels {

inline constexpr int kMaxTileRows = 8;
inline constexpr int kMaxTileBlocks = 4;

// f(integral_constant<int, R>) with R = rows clamped to 1..kMaxTileRows.
template <class F>
decltype(auto) with_tile_rows(int64_t rows, F&& f) {
  static_assert(kMaxTileRows == 8);
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// f(integral_constant<int, B>) with B = ceil(width / 16) clamped to 1..kMaxTileBlocks.
template <class F>
decltype(auto) with_tile_blocks(int64_t width, F&& f) {
  static_assert(kMaxTileBlocks == 4);
  switch ((width + 15) / 16) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

}  // namespace seqrec::kernels

#pragma GCC diagnostic pop
