#include "weights/seqrec_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <bit>
#include <cerrno>
#include <cereal/archives/binary.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include "engine/error.h"
#include "engine/scorer.h"
#include "kernels/quantized_scan.h"

namespace seqrec {
namespace {

// cereal's binary archives use host byte order; the format is defined as little-endian.
static_assert(std::endian::native == std::endian::little, "the .seqrec format is little-endian");

constexpr char kMagic[8] = {'S', 'E', 'Q', 'R', 'E', 'C', '\0', '\1'};
constexpr std::string_view kDtypeF32 = "f32";
constexpr uint32_t kMaxRank = 8;
constexpr uint64_t kAlign = 64;
constexpr uint64_t kPrefixBytes = 32;  // magic, version, reserved, header length, header checksum
constexpr uint64_t kChunk = 64 << 10;   // checksum and finite check share each chunk while it is in cache

uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Text from a file goes into one-line error messages: escape control and non-ASCII bytes,
// cut long text.
std::string escaped(std::string_view s) {
  constexpr std::size_t kMaxShown = 80;
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  if (s.size() > kMaxShown) out += "...";
  return out;
}
std::string single_quoted(std::string_view s) { return "'" + escaped(s) + "'"; }
std::string tensor_field(std::string_view name) { return "tensor " + single_quoted(name); }

std::string missing_tensor_error(std::string_view name) {
  return tensor_field(name) + ": missing (required by the spec)";
}
std::string catalog_size_error(uint64_t found, int64_t n_items) {
  return "catalog: " + std::to_string(found) + " ids, expected n_items = " + std::to_string(n_items);
}
std::string popularity_size_error(uint64_t found, int64_t n_items) {
  return "popularity: " + std::to_string(found) + " counts, expected 0 or n_items = " + std::to_string(n_items);
}

// The first non-finite value among n floats, or -1.
int64_t first_non_finite(const float* v, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return static_cast<int64_t>(i);
  return -1;
}
// Whether n floats are all finite: exponent bits not all ones (branch-free, vectorizes).
bool all_finite(const float* v, uint64_t n) {
  uint32_t bad = 0;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, v + i, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}
std::string non_finite_error(std::string_view field, int64_t index, float v) {
  return std::string(field) + ": value at flat index " + std::to_string(index) + " is " +
         (std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf") + ", expected a finite number";
}

uint64_t checksum(const void* data, uint64_t n) { return XXH3_64bits(data, static_cast<size_t>(n)); }
// From version 3 the header's checksum is seeded with the format version, so that a damaged
// version field (3 read as 2, whose files lack only the derived sections) fails it too.
uint64_t header_checksum(const void* data, uint64_t n, uint32_t version) {
  return version >= 3 ? XXH3_64bits_withSeed(data, static_cast<size_t>(n), version) : checksum(data, n);
}

// ---- writing -----------------------------------------------------------------------------

class Writer {
 public:
  explicit Writer(std::ostream& os) : archive_(os) {}
  void bytes(const void* data, std::size_t n) {
    if (n) archive_(cereal::binary_data(data, n));
  }
  template <class T>
  void pod(T value) {
    static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>);
    archive_(value);
  }
  void string(std::string_view s) {
    pod<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }

 private:
  cereal::BinaryOutputArchive archive_;
};

// A span of the data area: what the header lists for a tensor or a section.
struct Extent {
  const void* data = nullptr;
  uint64_t bytes = 0;
  uint64_t offset = 0;
  uint64_t sum = 0;
};

std::string catalog_blob(const std::vector<std::string>& ids) {
  std::string blob;
  const uint64_t n = ids.size();
  blob.resize(8 * (n + 2));
  std::memcpy(blob.data(), &n, 8);
  uint64_t at = 0;
  for (uint64_t i = 0; i <= n; ++i) {
    std::memcpy(blob.data() + 8 * (i + 1), &at, 8);
    if (i < n) at += ids[i].size();
  }
  for (const std::string& id : ids) blob += id;
  return blob;
}

std::string header_bytes(const ModelFile& m, const std::vector<TensorDecl>& decls, const std::vector<Extent>& tensors,
                         const std::vector<std::pair<std::string, Extent>>& sections) {
  std::ostringstream os;
  {
    Writer w(os);
    const SpecFields fields = spec_fields(m.spec);
    w.pod<uint64_t>(fields.size());
    for (const auto& [name, value] : fields) {
      w.string(name);
      w.string(value);
    }
    w.pod<uint64_t>(decls.size());
    for (size_t i = 0; i < decls.size(); ++i) {
      w.string(decls[i].name);
      w.string(kDtypeF32);
      w.pod<uint32_t>(static_cast<uint32_t>(decls[i].shape.size()));
      for (int64_t dim : decls[i].shape) w.pod<int64_t>(dim);
      w.pod<uint64_t>(tensors[i].offset);
      w.pod<uint64_t>(tensors[i].bytes);
      w.pod<uint64_t>(tensors[i].sum);
    }
    w.pod<uint64_t>(sections.size());
    for (const auto& [name, e] : sections) {
      w.string(name);
      w.pod<uint64_t>(e.offset);
      w.pod<uint64_t>(e.bytes);
      w.pod<uint64_t>(e.sum);
    }
    const Provenance& p = m.provenance;
    w.string(p.source);
    w.string(p.source_detail);
    w.string(p.source_file);
    w.string(p.converter_version);
    w.pod<uint8_t>(p.rating_threshold ? 1 : 0);
    if (p.rating_threshold) w.pod<double>(*p.rating_threshold);
  }
  return os.str();
}

void write_model(std::ostream& os, const ModelFile& m) {
  // Canonical order (required_tensors), so equal models give equal files.
  const auto decls = required_tensors(m.spec);
  std::vector<Extent> tensors(decls.size());
  for (size_t i = 0; i < decls.size(); ++i) {
    const Tensor& t = m.tensors.at(decls[i].name);
    tensors[i] = {t.ptr(), t.numel() * sizeof(float), 0, 0};
  }
  const std::string catalog = catalog_blob(m.catalog);
  std::vector<std::pair<std::string, Extent>> sections;
  sections.emplace_back("catalog", Extent{catalog.data(), catalog.size(), 0, 0});
  if (!m.popularity.empty())
    sections.emplace_back("popularity", Extent{m.popularity.data(), m.popularity.size() * sizeof(uint64_t), 0, 0});
  // What the scorer would otherwise make at every load (engine/scorer_tables.h).
  const DerivedScorerTables derived = Scorer::derive_tables(m.spec, m.tensors);
  if (!derived.scan_table.empty()) {
    sections.emplace_back("scan_table", Extent{derived.scan_table.data(), derived.scan_table.size(), 0, 0});
    sections.emplace_back("inverse_norms",
                          Extent{derived.inverse_norms.data(), derived.inverse_norms.size() * sizeof(float), 0, 0});
  }
  if (!derived.scan_table_int4.empty())
    sections.emplace_back("scan_table_int4",
                          Extent{derived.scan_table_int4.data(), derived.scan_table_int4.size(), 0, 0});

  // The header's length does not depend on the offsets and sums (fixed-width fields): lay the
  // data out after a first rendering, then render it again with them.
  uint64_t at = align_up(kPrefixBytes + header_bytes(m, decls, tensors, sections).size());
  for (Extent& e : tensors) {
    e.offset = at;
    e.sum = checksum(e.data, e.bytes);
    at = align_up(at + e.bytes);
  }
  for (auto& [name, e] : sections) {
    e.offset = at;
    e.sum = checksum(e.data, e.bytes);
    at = align_up(at + e.bytes);
  }
  const std::string header = header_bytes(m, decls, tensors, sections);

  Writer w(os);
  w.bytes(kMagic, sizeof kMagic);
  w.pod<uint32_t>(kSeqrecFormatVersion);
  w.pod<uint32_t>(0);
  w.pod<uint64_t>(header.size());
  w.pod<uint64_t>(header_checksum(header.data(), header.size(), kSeqrecFormatVersion));
  w.bytes(header.data(), header.size());
  uint64_t written = kPrefixBytes + header.size();
  static const char zeros[kAlign] = {};
  auto pad_to = [&](uint64_t offset) {
    w.bytes(zeros, static_cast<size_t>(offset - written));
    written = offset;
  };
  uint64_t end = written;
  for (const Extent& e : tensors) {
    pad_to(e.offset);
    w.bytes(e.data, static_cast<size_t>(e.bytes));
    written = end = e.offset + e.bytes;
  }
  for (const auto& [name, e] : sections) {
    pad_to(e.offset);
    w.bytes(e.data, static_cast<size_t>(e.bytes));
    written = end = e.offset + e.bytes;
  }
}

// ---- reading -----------------------------------------------------------------------------

// The file's bytes, mapped: tensors are views of the mapping, used in place (page-aligned, so
// the file's 64-byte tensor alignment holds). Loading then costs no copy and no zeroed memory:
// the pages are the page cache's own (a 200 MB model loaded in a third of the time it took to
// read it into fresh memory). Read-only: nothing writes to weights (a writable private mapping
// would also make MAP_POPULATE copy every page). The file must not be rewritten in place while it is served (truncating a
// mapped file makes its pages unreadable): replace it by renaming a new file over it, as
// `seqrec convert` and every deployment tool do (README "Reloads").
struct FileBytes {
  struct Unmap {
    size_t bytes;
    void operator()(uint8_t* p) const { ::munmap(p, bytes); }
  };
  std::unique_ptr<uint8_t, Unmap> memory{nullptr, Unmap{0}};
  uint64_t length = 0;
  const uint8_t* data() const { return memory.get(); }
  uint64_t size() const { return length; }

  void map(int fd, uint64_t n, const std::string& path) {
    void* p = ::mmap(nullptr, static_cast<size_t>(n), PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) throw Error(path + ": cannot map: " + std::strerror(errno));
    memory = std::unique_ptr<uint8_t, Unmap>(static_cast<uint8_t*>(p), Unmap{static_cast<size_t>(n)});
    length = n;
  }
};

// Bounds-checked reads over a byte range: every length and count is checked against the
// bytes that remain before anything is allocated or read.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size, uint64_t base, const std::string& path)
      : data_(data), size_(size), at_(0), base_(base), path_(path) {}

  [[noreturn]] void fail(const std::string& message) const { throw Error(path_ + ": " + message); }
  uint64_t remaining() const { return size_ - at_; }

  void need(uint64_t n, std::string_view field) const {
    if (n > remaining())
      fail(std::string(field) + ": truncated, needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(base_ + at_) + ", found " + std::to_string(remaining()));
  }
  const uint8_t* take(uint64_t n, std::string_view field) {
    need(n, field);
    const uint8_t* p = data_ + at_;
    at_ += n;
    return p;
  }
  template <class T>
  T pod(std::string_view field) {
    static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>);
    T value;
    std::memcpy(&value, take(sizeof value, field), sizeof value);
    return value;
  }
  // A count of records that each take at least `min_bytes`.
  uint64_t count(std::string_view field, uint64_t min_bytes) {
    const uint64_t n = pod<uint64_t>(field);
    if (n > remaining() / min_bytes)
      fail(std::string(field) + ": " + std::to_string(n) + " does not fit in the " + std::to_string(remaining()) +
           " bytes that remain");
    return n;
  }
  std::string string(std::string_view field) {
    const uint64_t n = count(field, 1);
    const uint8_t* p = take(n, field);
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  bool flag(std::string_view field) {
    const auto b = pod<uint8_t>(field);
    if (b > 1) fail(std::string(field) + ": " + std::to_string(b) + ", expected 0 or 1");
    return b == 1;
  }

 private:
  const uint8_t* data_;
  uint64_t size_, at_, base_;
  const std::string& path_;
};

void read_provenance(Reader& r, Provenance& p) {
  p.source = r.string("provenance.source");
  p.source_detail = r.string("provenance.source_detail");
  p.source_file = r.string("provenance.source_file");
  p.converter_version = r.string("provenance.converter_version");
  if (r.flag("provenance.rating_threshold present")) p.rating_threshold = r.pod<double>("provenance.rating_threshold");
}

// A tensor or section's place in the file, checked: inside the data area, aligned, after the
// one before it (so none overlap), and its checksum.
// A tensor entry's dtype, rank and shape (after its name), each checked against the spec's
// declaration of that name, in the order the entry stores them (versions 1 and 2 alike) → the shape.
std::vector<int64_t> read_tensor_type(Reader& r, const std::unordered_map<std::string, const TensorDecl*>& declared,
                                      const ModelFile& m, const std::string& name, const std::string& field) {
  const auto it = declared.find(name);
  if (it == declared.end()) r.fail(field + ": unexpected (not required by the spec)");
  if (m.tensors.count(name)) r.fail(field + ": appears twice");
  const std::string dtype = r.string(field + " dtype");
  if (dtype != kDtypeF32) r.fail(field + ": dtype " + single_quoted(dtype) + ", expected 'f32'");
  const auto rank = r.pod<uint32_t>(field + " rank");
  if (rank > kMaxRank) r.fail(field + ": rank " + std::to_string(rank) + ", expected " + std::to_string(it->second->shape.size()));
  std::vector<int64_t> shape(rank);
  for (auto& dim : shape) dim = r.pod<int64_t>(field + " shape");
  if (shape != it->second->shape)
    r.fail(field + ": shape " + shape_string(shape) + ", expected " + shape_string(it->second->shape));
  return shape;
}

struct Placed {
  uint64_t offset, bytes, sum;
};

void check_placement(const Reader& r, const std::string& field, const Placed& e, uint64_t data_start, uint64_t& end,
                     uint64_t file_size) {
  if (e.offset % kAlign != 0)
    r.fail(field + ": offset " + std::to_string(e.offset) + " is not 64-byte aligned");
  if (e.offset < std::max(data_start, end))
    r.fail(field + ": offset " + std::to_string(e.offset) + ", expected >= " + std::to_string(std::max(data_start, end)) +
           " (after the header and the data before it)");
  if (e.bytes > file_size || e.offset > file_size - e.bytes)
    r.fail(field + ": bytes [" + std::to_string(e.offset) + ", " + std::to_string(e.offset + e.bytes) +
           ") run past the end of the file (" + std::to_string(file_size) + " bytes)");
  end = e.offset + e.bytes;
}

void verify_finite(const Reader& r, const std::string& field, const uint8_t* data, uint64_t bytes) {
  const float* v = reinterpret_cast<const float*>(data);
  if (!all_finite(v, bytes / sizeof(float))) {
    const int64_t i = first_non_finite(v, bytes / sizeof(float));
    r.fail(non_finite_error(field, i, v[i]));
  }
}

// Checksum, and for floats the finite check, in one pass over the bytes.
void verify(const Reader& r, const std::string& field, const uint8_t* data, const Placed& e, bool floats) {
  XXH3_state_t* state = XXH3_createState();
  if (!state) throw std::bad_alloc();
  XXH3_64bits_reset(state);
  for (uint64_t at = 0; at < e.bytes; at += kChunk) {
    const uint64_t n = std::min(kChunk, e.bytes - at);
    XXH3_64bits_update(state, data + at, static_cast<size_t>(n));
    if (floats) {
      const float* v = reinterpret_cast<const float*>(data + at);
      if (!all_finite(v, n / sizeof(float))) {
        XXH3_freeState(state);
        const int64_t i = first_non_finite(v, n / sizeof(float));
        r.fail(non_finite_error(field, static_cast<int64_t>(at / sizeof(float)) + i, v[i]));
      }
    }
  }
  const uint64_t sum = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  if (sum != e.sum)
    r.fail(field + ": checksum " + std::to_string(sum) + ", expected " + std::to_string(e.sum) +
           " (the file is damaged)");
}

// Versions 2, 3 and 4 (3 adds the derived sections, 4 the int4 scan table; m.format_version
// says which).
void read_v2(const std::shared_ptr<FileBytes>& file, const std::string& path, ModelFile& m, bool in_place) {
  const uint8_t* base = file->data();
  const uint64_t size = file->size();
  Reader prefix(base, size, 0, path);
  prefix.take(sizeof kMagic, "magic");
  prefix.pod<uint32_t>("format version");
  if (const auto reserved = prefix.pod<uint32_t>("reserved"); reserved != 0)
    prefix.fail("reserved field: " + std::to_string(reserved) + ", expected 0");
  const auto header_size = prefix.pod<uint64_t>("header length");
  const auto header_sum = prefix.pod<uint64_t>("header checksum");
  if (header_size > size - kPrefixBytes)
    prefix.fail("header length " + std::to_string(header_size) + " runs past the end of the file (" +
                std::to_string(size) + " bytes)");
  const uint8_t* header = base + kPrefixBytes;
  if (header_checksum(header, header_size, m.format_version) != header_sum)
    prefix.fail("header: checksum mismatch (the file is damaged)");
  Reader r(header, header_size, kPrefixBytes, path);
  const uint64_t data_start = align_up(kPrefixBytes + header_size);

  SpecFields fields(r.count("spec field count", 16));
  for (auto& [name, value] : fields) {
    name = r.string("spec field name");
    value = r.string("spec field '" + escaped(name) + "'");
  }
  m.spec = parse_spec_fields(fields, path + ": spec");  // validates: bounds every shape below

  std::unordered_map<std::string, const TensorDecl*> declared;
  const auto decls = required_tensors(m.spec);
  for (const auto& decl : decls) declared.emplace(decl.name, &decl);
  uint64_t end = data_start;
  const uint64_t n_tensors = r.count("tensor count", 8 + 8 + 3 + 4 + 24);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string name = r.string("tensor name");
    const std::string field = tensor_field(name);
    const std::vector<int64_t> shape = read_tensor_type(r, declared, m, name, field);
    Placed e;
    e.offset = r.pod<uint64_t>(field + " offset");
    e.bytes = r.pod<uint64_t>(field + " byte length");
    e.sum = r.pod<uint64_t>(field + " checksum");
    const uint64_t expected_bytes = Tensor::count(shape) * sizeof(float);
    if (e.bytes != expected_bytes)
      r.fail(field + ": byte length " + std::to_string(e.bytes) + ", expected " + std::to_string(expected_bytes));
    check_placement(r, field, e, data_start, end, size);
    verify(r, field, base + e.offset, e, true);
    m.tensors.emplace(name, Tensor::view_of(shape, reinterpret_cast<const float*>(base + e.offset), file));
  }
  for (const auto& decl : decls)
    if (!m.tensors.count(decl.name)) r.fail(missing_tensor_error(decl.name));

  bool has_catalog = false;
  const uint64_t n_sections = r.count("section count", 8 + 24);
  for (uint64_t i = 0; i < n_sections; ++i) {
    const std::string name = r.string("section name");
    const std::string field = "section " + single_quoted(name);
    Placed e;
    e.offset = r.pod<uint64_t>(field + " offset");
    e.bytes = r.pod<uint64_t>(field + " byte length");
    e.sum = r.pod<uint64_t>(field + " checksum");
    check_placement(r, field, e, data_start, end, size);
    verify(r, field, base + e.offset, e, false);
    const uint8_t* data = base + e.offset;
    const auto n_items = static_cast<uint64_t>(m.spec.n_items);
    if (name == "catalog") {
      if (has_catalog) r.fail(field + ": appears twice");
      has_catalog = true;
      Reader c(data, e.bytes, e.offset, path);
      const uint64_t n = c.count("catalog count", 8);
      if (n != n_items) c.fail(catalog_size_error(n, m.spec.n_items));
      c.need(8 * (n + 1), "catalog offsets");
      const uint8_t* offsets = c.take(8 * (n + 1), "catalog offsets");
      const uint64_t text_bytes = c.remaining();
      const uint8_t* text = c.take(text_bytes, "catalog ids");
      if (!in_place) m.catalog.resize(static_cast<size_t>(n));
      uint64_t previous = 0;
      for (uint64_t k = 0; k <= n; ++k) {
        uint64_t at;
        std::memcpy(&at, offsets + 8 * k, 8);
        if (at < previous || at > text_bytes || (k == n && at != text_bytes) || (k == 0 && at != 0))
          c.fail("catalog offsets: entry " + std::to_string(k) + " = " + std::to_string(at) +
                 ", expected non-decreasing from 0 to " + std::to_string(text_bytes));
        if (k > 0 && !in_place) m.catalog[k - 1].assign(reinterpret_cast<const char*>(text) + previous, at - previous);
        previous = at;
      }
      // The offsets sit 8 bytes into a 64-byte aligned section: u64-aligned in the mapping.
      if (in_place)
        m.catalog_in_place = std::make_shared<Catalog>(static_cast<int64_t>(n), reinterpret_cast<const uint64_t*>(offsets),
                                                       reinterpret_cast<const char*>(text), file);
    } else if ((name == "scan_table" && m.format_version >= 3) || (name == "scan_table_int4" && m.format_version >= 4)) {
      const bool int8 = name == "scan_table";
      const uint8_t*& table = int8 ? m.scorer_tables.scan_table : m.scorer_tables.scan_table_int4;
      if (table) r.fail(field + ": appears twice");
      const auto expected = static_cast<uint64_t>(kernels::quantized_table_bytes(
          m.spec.n_items, m.spec.d, int8 ? kernels::ScanCode::int8 : kernels::ScanCode::int4));
      if (e.bytes != expected)
        r.fail(field + ": " + std::to_string(e.bytes) + " bytes, expected " + std::to_string(expected) + " (n_items " +
               std::to_string(m.spec.n_items) + ", d " + std::to_string(m.spec.d) + ")");
      table = data;
      (int8 ? m.scorer_tables.scan_table_bytes : m.scorer_tables.scan_table_int4_bytes) = e.bytes;
      m.scorer_tables.backing = file;
    } else if (name == "inverse_norms" && m.format_version >= 3) {
      if (m.scorer_tables.inverse_norms) r.fail(field + ": appears twice");
      if (e.bytes != n_items * sizeof(float))
        r.fail(field + ": " + std::to_string(e.bytes) + " bytes, expected " + std::to_string(n_items * sizeof(float)) +
               " (one f32 per item)");
      verify_finite(r, field, data, e.bytes);
      m.scorer_tables.inverse_norms = reinterpret_cast<const float*>(data);
      m.scorer_tables.backing = file;
    } else if (name == "popularity") {
      if (!m.popularity.empty()) r.fail(field + ": appears twice");
      if (e.bytes != n_items * sizeof(uint64_t)) r.fail(popularity_size_error(e.bytes / sizeof(uint64_t), m.spec.n_items));
      m.popularity.resize(static_cast<size_t>(n_items));
      std::memcpy(m.popularity.data(), data, e.bytes);
    } else {
      r.fail(field + ": unknown section (written by a newer seqrec?)");
    }
  }
  if (!has_catalog) r.fail("section 'catalog': missing");
  if ((m.scorer_tables.scan_table == nullptr) != (m.scorer_tables.inverse_norms == nullptr))
    r.fail(std::string("section '") + (m.scorer_tables.scan_table ? "inverse_norms" : "scan_table") +
           "': missing (the scan table and the inverse norms are stored together)");
  if (m.scorer_tables.scan_table_int4 && !m.scorer_tables.scan_table)
    r.fail("section 'scan_table': missing (the int4 scan table is stored with it)");
  read_provenance(r, m.provenance);
  if (r.remaining() != 0)
    r.fail("header: " + std::to_string(r.remaining()) + " trailing bytes after the provenance, expected none");
  if (size != end)
    prefix.fail("trailing bytes: the file is " + std::to_string(size) + " bytes, its last section ends at " +
                std::to_string(end));
}

// ---- version 1 (seqrec 0.1), read for compatibility -----------------------------------------
//
//   magic | version (u32) = 1 | spec: block, attention (str) | mask_padded_keys,
//   zero_padded_rows, embed_scale, embed_norm (u8) | positions, padding, activation (str) |
//   final_norm (u8) | readout (str) | head, output_bias (u8) | ln_eps (f32) | score (str) |
//   max_len, d, heads, ffn_dim, n_layers, n_items (i64) | tensors: u64 count, per tensor name,
//   dtype, rank, shape, byte length, data | catalog: u64 count, one str each | popularity: u64
//   count, u64 each | provenance | end.

void read_v1(const uint8_t* base, uint64_t size, const std::string& path, ModelFile& m) {
  Reader r(base, size, 0, path);
  r.take(sizeof kMagic + sizeof(uint32_t), "magic");
  SpecFields fields;
  auto text = [&](const char* name) { fields.emplace_back(name, escaped(r.string(std::string("spec.") + name))); };
  auto flag = [&](const char* name) { fields.emplace_back(name, r.flag(std::string("spec.") + name) ? "true" : "false"); };
  auto integer = [&](const char* name) {
    fields.emplace_back(name, std::to_string(r.pod<int64_t>(std::string("spec.") + name)));
  };
  text("block");
  text("attention");
  flag("mask_padded_keys");
  flag("zero_padded_rows");
  flag("embed_scale");
  flag("embed_norm");
  text("positions");
  text("padding");
  text("activation");
  flag("final_norm");
  text("readout");
  flag("head");
  flag("output_bias");
  {
    char eps[32];
    std::snprintf(eps, sizeof eps, "%.9g", static_cast<double>(r.pod<float>("spec.ln_eps")));
    fields.emplace_back("ln_eps", eps);
  }
  text("score");
  integer("max_len");
  integer("d");
  integer("heads");
  integer("ffn_dim");
  integer("n_layers");
  integer("n_items");
  // The version 1 spec had one block family: it is the transformer kind's fields.
  const std::string block = fields[0].second;
  if (block != "pre_ln" && block != "post_ln" && block != "sasrec_original")
    r.fail("spec.block: unknown value " + single_quoted(block) + " (expected pre_ln|post_ln|sasrec_original)");
  m.spec = parse_spec_fields(fields, path + ": spec");

  std::unordered_map<std::string, const TensorDecl*> declared;
  const auto decls = required_tensors(m.spec);
  for (const auto& decl : decls) declared.emplace(decl.name, &decl);
  const uint64_t n_tensors = r.count("tensor count", 8 + 8 + 3 + 4 + 8);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string name = r.string("tensor name");
    const std::string field = tensor_field(name);
    const std::vector<int64_t> shape = read_tensor_type(r, declared, m, name, field);
    const auto n_bytes = r.pod<uint64_t>(field + " byte length");
    const uint64_t expected_bytes = Tensor::count(shape) * sizeof(float);
    if (n_bytes != expected_bytes)
      r.fail(field + ": byte length " + std::to_string(n_bytes) + ", expected " + std::to_string(expected_bytes));
    const uint8_t* data = r.take(n_bytes, field + " data");
    Tensor t(shape);
    std::memcpy(t.ptr(), data, n_bytes);  // unaligned in the file: copied
    const int64_t bad = first_non_finite(t.ptr(), t.numel());
    if (bad >= 0) r.fail(non_finite_error(field, bad, t.ptr()[bad]));
    m.tensors.emplace(name, std::move(t));
  }
  for (const auto& decl : decls)
    if (!m.tensors.count(decl.name)) r.fail(missing_tensor_error(decl.name));
  const auto n_items = static_cast<uint64_t>(m.spec.n_items);
  const uint64_t n_ids = r.count("catalog count", sizeof(uint64_t));
  if (n_ids != n_items) r.fail(catalog_size_error(n_ids, m.spec.n_items));
  m.catalog.reserve(n_ids);
  for (uint64_t i = 0; i < n_ids; ++i) m.catalog.push_back(r.string("catalog id"));
  const uint64_t n_counts = r.count("popularity count", sizeof(uint64_t));
  if (n_counts != 0 && n_counts != n_items) r.fail(popularity_size_error(n_counts, m.spec.n_items));
  m.popularity.resize(n_counts);
  if (n_counts) std::memcpy(m.popularity.data(), r.take(n_counts * sizeof(uint64_t), "popularity"), n_counts * 8);
  read_provenance(r, m.provenance);
  if (r.remaining() != 0)
    r.fail("trailing bytes: " + std::to_string(r.remaining()) + " after the provenance, expected end of file");
}

void validate_catalog_ids(const ModelFile& m, const std::function<void(const std::string&)>& fail,
                          const std::function<void(std::string_view, std::size_t, std::size_t)>& duplicate);

// What validate_model_file checks beyond the framing the readers check.
void validate_catalog(const ModelFile& m, const std::function<void(const std::string&)>& fail) {
  const auto n_items = static_cast<uint64_t>(m.spec.n_items);
  auto duplicate = [&](std::string_view id, std::size_t first, std::size_t row) {
    fail("catalog: duplicate id " + single_quoted(std::string(id)) + " at rows " + std::to_string(first) + " and " +
         std::to_string(row));
  };
  if (m.catalog_in_place) {
    // Indexing the ids found what would make them unusable.
    const Catalog& c = *m.catalog_in_place;
    if (static_cast<uint64_t>(c.size()) != n_items) fail(catalog_size_error(static_cast<uint64_t>(c.size()), m.spec.n_items));
    if (const auto d = c.duplicate()) duplicate(c.id(d->second), static_cast<size_t>(d->first), static_cast<size_t>(d->second));
    if (const auto e = c.empty_id()) fail("catalog: row " + std::to_string(*e) + ": empty id");
  } else {
    validate_catalog_ids(m, fail, duplicate);
  }
  if (!m.popularity.empty() && m.popularity.size() != n_items)
    fail(popularity_size_error(m.popularity.size(), m.spec.n_items));
  if (m.provenance.rating_threshold && !std::isfinite(*m.provenance.rating_threshold))
    fail("provenance.rating_threshold: " + std::to_string(*m.provenance.rating_threshold) +
         ", expected a finite number");
}

void validate_catalog_ids(const ModelFile& m, const std::function<void(const std::string&)>& fail,
                          const std::function<void(std::string_view, std::size_t, std::size_t)>& duplicate) {
  if (m.catalog.size() != static_cast<uint64_t>(m.spec.n_items)) fail(catalog_size_error(m.catalog.size(), m.spec.n_items));
  // Most catalogs are small decimal numbers (MovieLens, exported row ids): those are checked
  // with a table indexed by value, which for a million ids is ~20x faster than hashing them.
  constexpr uint64_t kNumericLimit = uint64_t{1} << 28;
  std::vector<uint32_t> row_of_number;
  bool numeric = m.catalog.size() > 1;
  for (std::size_t row = 1; row < m.catalog.size() && numeric; ++row) {
    const std::string& id = m.catalog[row];
    if (id.empty() || id.size() > 9 || (id.size() > 1 && id[0] == '0')) {
      numeric = false;
      break;
    }
    uint64_t value = 0;
    for (char c : id) {
      if (c < '0' || c > '9') {
        numeric = false;
        break;
      }
      value = value * 10 + static_cast<uint64_t>(c - '0');
    }
    if (!numeric || value >= kNumericLimit || value > 8 * m.catalog.size()) {
      numeric = false;
      break;
    }
    if (value >= row_of_number.size()) row_of_number.resize(std::max<size_t>(value + 1, 2 * row_of_number.size()), 0);
    if (row_of_number[value] != 0) duplicate(id, row_of_number[value], row);
    row_of_number[value] = static_cast<uint32_t>(row);
  }
  if (!numeric) {
    std::unordered_map<std::string_view, std::size_t> row_of;
    row_of.reserve(m.catalog.size());
    for (std::size_t row = 1; row < m.catalog.size(); ++row) {  // row 0 is padding: its text is ignored
      const std::string& id = m.catalog[row];
      if (id.empty()) fail("catalog: row " + std::to_string(row) + ": empty id");
      const auto [it, inserted] = row_of.emplace(id, row);
      if (!inserted) duplicate(id, it->second, row);
    }
  }
}

}  // namespace

void validate_model_file(const ModelFile& m, const std::string& what) {
  auto fail = [&](const std::string& message) { throw Error(what + ": " + message); };
  try {
    m.spec.validate();
  } catch (const Error& e) {
    fail(e.what());
  }
  const auto decls = required_tensors(m.spec);
  for (const auto& decl : decls) {
    const std::string field = tensor_field(decl.name);
    const auto it = m.tensors.find(decl.name);
    if (it == m.tensors.end()) fail(missing_tensor_error(decl.name));
    const Tensor& t = it->second;
    if (t.shape != decl.shape)
      fail(field + ": shape " + shape_string(t.shape) + ", expected " + shape_string(decl.shape));
    if (!t.view && t.data.size() != Tensor::count(t.shape))
      fail(field + ": holds " + std::to_string(t.data.size()) + " values, shape " + shape_string(t.shape) + " needs " +
           std::to_string(Tensor::count(t.shape)));
    const int64_t bad = first_non_finite(t.ptr(), t.numel());
    if (bad >= 0) fail(non_finite_error(field, bad, t.ptr()[bad]));
  }
  if (m.tensors.size() != decls.size()) {
    for (const auto& [name, t] : m.tensors) {
      bool known = false;
      for (const auto& decl : decls) known = known || decl.name == name;
      if (!known) fail(tensor_field(name) + ": unexpected (not required by the spec)");
    }
  }
  validate_catalog(m, fail);
}

void save_model_file(const ModelFile& model, const std::string& path) {
  validate_model_file(model, path);  // never write a file the loader would reject
  // Write beside the target and rename: a crash leaves at worst a stray .tmp, never a
  // half-written file under the real name.
  const std::string tmp = path + ".tmp";
  auto fail = [&](const std::string& message) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw Error(path + ": " + message);
  };
  {
    std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
    if (!os) fail("cannot write " + tmp + ": " + std::strerror(errno));
    try {
      write_model(os, model);
    } catch (const cereal::Exception& e) {
      fail(std::string("write failed: ") + e.what());
    }
    os.close();
    if (!os) fail("write failed: " + std::string(std::strerror(errno)));
  }
  // The data must be on disk before the rename makes it visible under the real name.
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    fail("cannot sync " + tmp + ": " + std::strerror(err));
  }
  ::close(fd);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("cannot rename " + tmp + ": " + ec.message());
}

ModelFile load_model_file(const std::string& path, CatalogLoad catalog) {
  // The whole file, mapped (FileBytes): nothing is copied, and nothing is parsed twice.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw Error(path + ": cannot open: " + (err == ENOENT ? std::string("no such file") : std::strerror(err)));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + ": cannot open: not a regular file");
  auto file = std::make_shared<FileBytes>();
  if (st.st_size < static_cast<off_t>(sizeof kMagic + sizeof(uint32_t)))
    throw Error(path + ": not a .seqrec file (" + std::to_string(st.st_size) + " bytes, shorter than the magic)");
  file->map(fd, static_cast<uint64_t>(st.st_size), path);
  const uint8_t* base = file->data();
  const uint64_t size = file->size();
  if (size < sizeof kMagic + sizeof(uint32_t))
    throw Error(path + ": not a .seqrec file (" + std::to_string(size) + " bytes, shorter than the magic)");
  if (std::memcmp(base, kMagic, sizeof kMagic) != 0)
    throw Error(path + ": not a .seqrec file (the first bytes are not the .seqrec magic)");
  uint32_t version;
  std::memcpy(&version, base + sizeof kMagic, sizeof version);
  ModelFile model;
  model.format_version = version;
  if (version == 1)
    read_v1(base, size, path, model);
  else if (version >= 2 && version <= kSeqrecFormatVersion)
    read_v2(file, path, model, catalog == CatalogLoad::in_place);
  else if (version > kSeqrecFormatVersion)
    throw Error(path + ": format version " + std::to_string(version) +
                ": written by a newer seqrec (this build reads versions 1 to 4)");
  else
    throw Error(path + ": format version " + std::to_string(version) + ", expected 1 to 4");
  auto fail = [&](const std::string& message) { throw Error(path + ": " + message); };
  validate_catalog(model, fail);
  return model;
}

}  // namespace seqrec
