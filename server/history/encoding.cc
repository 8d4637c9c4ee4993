#include "server/history/encoding.h"

#include <bit>
#include <cstring>

#include "engine/error.h"

namespace seqrec::history {
namespace {

constexpr uint8_t kHasTimestamp = 1;
constexpr uint8_t kHasRating = 2;

void put_varint(uint64_t v, std::string& out) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

[[noreturn]] void corrupt(size_t pos, const std::string& what) {
  throw Error("corrupt stored history at byte " + std::to_string(pos) + ": " + what);
}

uint64_t get_varint(std::string_view value, size_t& pos, const char* field) {
  uint64_t v = 0;
  const size_t start = pos;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= value.size()) corrupt(start, std::string(field) + " varint truncated");
    const auto byte = static_cast<uint8_t>(value[pos++]);
    // The 10th byte may only carry the top bit of a 64-bit value.
    if (shift == 63 && byte > 1) corrupt(start, std::string(field) + " varint overflows 64 bits");
    v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return v;
  }
  corrupt(start, std::string(field) + " varint longer than 10 bytes");
}

// Parses the record at `pos`; fills `out` when given, and `timestamp_out` with the record's
// timestamp when it has one. Returns the position after it.
size_t parse_record(std::string_view value, size_t pos, Interaction* out, std::optional<int64_t>* timestamp_out = nullptr) {
  const size_t start = pos;
  const uint64_t id_size = get_varint(value, pos, "item id length");
  if (id_size > value.size() - pos)
    corrupt(start, "item id length " + std::to_string(id_size) + " exceeds the " +
                       std::to_string(value.size() - pos) + " bytes left");
  const std::string_view id = value.substr(pos, id_size);
  pos += id_size;
  if (pos >= value.size()) corrupt(start, "record flags missing");
  const auto flags = static_cast<uint8_t>(value[pos++]);
  if (flags & ~(kHasTimestamp | kHasRating)) corrupt(start, "unknown record flags " + std::to_string(flags));
  std::optional<int64_t> timestamp;
  std::optional<double> rating;
  if (flags & kHasTimestamp) {
    const uint64_t zigzag = get_varint(value, pos, "timestamp");
    timestamp = static_cast<int64_t>(zigzag >> 1) ^ -static_cast<int64_t>(zigzag & 1);
  }
  if (flags & kHasRating) {
    if (value.size() - pos < 8) corrupt(start, "rating truncated");
    uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits |= static_cast<uint64_t>(static_cast<uint8_t>(value[pos + i])) << (8 * i);
    pos += 8;
    rating = std::bit_cast<double>(bits);
  }
  if (timestamp_out && timestamp) *timestamp_out = timestamp;
  if (out) {
    out->item_id.assign(id);
    out->timestamp = timestamp;
    out->rating = rating;
  }
  return pos;
}

void check_version(std::string_view value) {
  if (value.empty()) corrupt(0, "empty value");
  if (static_cast<uint8_t>(value[0]) != kEncodingVersion)
    corrupt(0, "unknown encoding version " + std::to_string(static_cast<uint8_t>(value[0])) + " (expected " +
                   std::to_string(kEncodingVersion) + ")");
}

}  // namespace

void encode_records(std::span<const Interaction> interactions, std::string& out) {
  for (const Interaction& it : interactions) {
    put_varint(it.item_id.size(), out);
    out.append(it.item_id);
    out.push_back(static_cast<char>((it.timestamp ? kHasTimestamp : 0) | (it.rating ? kHasRating : 0)));
    if (it.timestamp) {
      const auto v = static_cast<uint64_t>(*it.timestamp);
      put_varint((v << 1) ^ static_cast<uint64_t>(*it.timestamp >> 63), out);
    }
    if (it.rating) {
      const auto bits = std::bit_cast<uint64_t>(*it.rating);
      for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
    }
  }
}

std::string encode_history(std::span<const Interaction> interactions) {
  std::string out;
  out.reserve(1 + interactions.size() * 24);
  out.push_back(static_cast<char>(kEncodingVersion));
  encode_records(interactions, out);
  return out;
}

std::vector<size_t> record_offsets(std::string_view value) {
  check_version(value);
  std::vector<size_t> offsets;
  for (size_t pos = 1; pos < value.size();) {
    offsets.push_back(pos);
    pos = parse_record(value, pos, nullptr);
  }
  return offsets;
}

RecordIndex index_records(std::string_view value) {
  check_version(value);
  RecordIndex index;
  for (size_t pos = 1; pos < value.size();) {
    index.offsets.push_back(pos);
    pos = parse_record(value, pos, nullptr, &index.latest_timestamp);
  }
  return index;
}

void decode_history(std::string_view value, std::vector<Interaction>& out) {
  check_version(value);
  for (size_t pos = 1; pos < value.size();) {
    Interaction it;
    pos = parse_record(value, pos, &it);
    out.push_back(std::move(it));
  }
}

// FIPS 180-4 SHA-256, written out to avoid a crypto dependency for one key hash.
std::array<uint8_t, 32> sha256(std::string_view data) {
  static constexpr uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

  std::string message(data);
  const uint64_t bit_length = static_cast<uint64_t>(data.size()) * 8;
  message.push_back(static_cast<char>(0x80));
  while (message.size() % 64 != 56) message.push_back(0);
  for (int i = 7; i >= 0; --i) message.push_back(static_cast<char>((bit_length >> (8 * i)) & 0xff));

  for (size_t block = 0; block < message.size(); block += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const uint8_t*>(message.data() + block + 4 * i);
      w[i] = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
    }
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = std::rotr(w[i - 15], 7) ^ std::rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = std::rotr(w[i - 2], 17) ^ std::rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t s1 = std::rotr(e, 6) ^ std::rotr(e, 11) ^ std::rotr(e, 25);
      const uint32_t ch = (e & f) ^ (~e & g);
      const uint32_t t1 = hh + s1 + ch + k[i] + w[i];
      const uint32_t s0 = std::rotr(a, 2) ^ std::rotr(a, 13) ^ std::rotr(a, 22);
      const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      const uint32_t t2 = s0 + maj;
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  std::array<uint8_t, 32> digest{};
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) digest[4 * i + j] = static_cast<uint8_t>((h[i] >> (24 - 8 * j)) & 0xff);
  return digest;
}

}  // namespace seqrec::history
