// The compact binary form of a user's interactions, shared by the LMDB and Redis backends.
//
// A value is one version byte (kEncodingVersion) followed by records, oldest first:
//   item id length   unsigned LEB128 varint
//   item id bytes    any bytes (ids are binary-safe)
//   flags            bit 0: timestamp follows, bit 1: rating follows; other bits must be 0
//   timestamp        zigzag LEB128 varint (int64)
//   rating           8 bytes, IEEE-754 double, little-endian
// LMDB stores a user's whole history as one value; Redis stores one value per list element.
// Decoding validates every length and flag: a corrupt value is a seqrec::Error, never a crash.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/request.h"

namespace seqrec::history {

inline constexpr uint8_t kEncodingVersion = 1;

// Appends the records of `interactions` (no version byte) to `out`.
void encode_records(std::span<const Interaction> interactions, std::string& out);

// A complete value: the version byte plus the records.
std::string encode_history(std::span<const Interaction> interactions);

// Byte offsets (into `value`) of the start of every record, after validating the whole value.
// Throws seqrec::Error describing what is wrong and at which byte.
std::vector<size_t> record_offsets(std::string_view value);

// What an append needs of a stored value without decoding it (one validating pass, no item
// id copied): where every record starts and the last timestamp (none: no record has one).
struct RecordIndex {
  std::vector<size_t> offsets;
  std::optional<int64_t> latest_timestamp;
};
RecordIndex index_records(std::string_view value);

// Decodes a complete value, appending its interactions to `out`. Throws seqrec::Error.
void decode_history(std::string_view value, std::vector<Interaction>& out);

// SHA-256 of `data`: the LMDB backend's key for ids longer than LMDB's key limit.
std::array<uint8_t, 32> sha256(std::string_view data);

}  // namespace seqrec::history
