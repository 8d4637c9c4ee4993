#include "weights/seqrec_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cereal/archives/binary.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <unordered_map>

#include "engine/error.h"

namespace seqrec {
namespace {

// cereal's binary archives use host byte order; the format is defined as little-endian.
static_assert(std::endian::native == std::endian::little, "the .seqrec format is little-endian");

constexpr char kMagic[8] = {'S', 'E', 'Q', 'R', 'E', 'C', '\0', '\1'};
constexpr std::string_view kDtypeF32 = "f32";
constexpr uint32_t kMaxRank = 8;
// Smallest possible tensor record: name length, dtype length + "f32", rank, byte length.
constexpr uint64_t kMinTensorRecordBytes = 8 + 8 + 3 + 4 + 8;

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

// Shared by the loader (which checks counts before it allocates) and validate_model_file.
std::string missing_tensor_error(std::string_view name) {
  return tensor_field(name) + ": missing (required by the spec)";
}
std::string catalog_size_error(uint64_t found, int64_t n_items) {
  return "catalog: " + std::to_string(found) + " ids, expected n_items = " + std::to_string(n_items);
}
std::string popularity_size_error(uint64_t found, int64_t n_items) {
  return "popularity: " + std::to_string(found) + " counts, expected 0 or n_items = " + std::to_string(n_items);
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

// ---- reading -----------------------------------------------------------------------------

// Bounds-checked reads over a file of known size: every length and count is checked
// against the bytes that remain before anything is allocated or read, so a corrupt
// length fails here instead of asking the allocator for it.
class Reader {
 public:
  Reader(std::istream& is, uint64_t size, const std::string& path)
      : archive_(is), size_(size), remaining_(size), path_(path) {}

  [[noreturn]] void fail(const std::string& message) const { throw Error(path_ + ": " + message); }
  uint64_t remaining() const { return remaining_; }

  // Fails unless `n` more bytes are there; call before allocating room for them.
  void need(uint64_t n, std::string_view field) const {
    if (n > remaining_)
      fail(std::string(field) + ": truncated, needs " + std::to_string(n) + " bytes at offset " +
           std::to_string(size_ - remaining_) + ", found " + std::to_string(remaining_));
  }
  void bytes(void* dst, uint64_t n, std::string_view field) {
    need(n, field);
    if (n) archive_(cereal::binary_data(dst, static_cast<std::size_t>(n)));
    remaining_ -= n;
  }
  template <class T>
  T pod(std::string_view field) {
    static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>);
    T value;
    bytes(&value, sizeof value, field);
    return value;
  }
  // A count of records that each take at least `min_bytes` in the file.
  uint64_t count(std::string_view field, uint64_t min_bytes) {
    const uint64_t n = pod<uint64_t>(field);
    if (n > remaining_ / min_bytes)
      fail(std::string(field) + ": " + std::to_string(n) + " does not fit in the " + std::to_string(remaining_) +
           " bytes that remain");
    return n;
  }
  std::string string(std::string_view field) {
    std::string s(count(field, 1), '\0');
    bytes(s.data(), s.size(), field);
    return s;
  }
  bool flag(std::string_view field) {
    const auto b = pod<uint8_t>(field);
    if (b > 1) fail(std::string(field) + ": " + std::to_string(b) + ", expected 0 or 1");
    return b == 1;
  }

 private:
  cereal::BinaryInputArchive archive_;
  uint64_t size_;
  uint64_t remaining_;
  const std::string& path_;
};

// ---- the spec ----------------------------------------------------------------------------

// The spec fields in file order, shared by writer and reader so they cannot drift apart.
// Enums are stored as their text names, so reordering an enum never changes old files.
template <class V>
void visit_spec(ModelSpec& s, V&& v) {
  v.enumeration("block", s.block, parse_block);
  v.enumeration("attention", s.attention, parse_attention);
  v.flag("mask_padded_keys", s.mask_padded_keys);
  v.flag("zero_padded_rows", s.zero_padded_rows);
  v.flag("embed_scale", s.embed_scale);
  v.flag("embed_norm", s.embed_norm);
  v.enumeration("positions", s.positions, parse_positions);
  v.enumeration("padding", s.padding, parse_padding);
  v.enumeration("activation", s.activation, parse_activation);
  v.flag("final_norm", s.final_norm);
  v.enumeration("readout", s.readout, parse_readout);
  v.flag("head", s.head);
  v.flag("output_bias", s.output_bias);
  v.number("ln_eps", s.ln_eps);
  v.enumeration("score", s.score, parse_score);
  v.number("max_len", s.max_len);
  v.number("d", s.d);
  v.number("heads", s.heads);
  v.number("ffn_dim", s.ffn_dim);
  v.number("n_layers", s.n_layers);
  v.number("n_items", s.n_items);
}

struct SpecWriter {
  Writer& w;
  template <class E, class Parse>
  void enumeration(const char*, E value, Parse) { w.string(to_string(value)); }
  void flag(const char*, bool value) { w.pod<uint8_t>(value ? 1 : 0); }
  template <class T>
  void number(const char*, T value) { w.pod<T>(value); }
};

struct SpecReader {
  Reader& r;
  static std::string field(const char* name) { return std::string("spec.") + name; }
  template <class E>
  void enumeration(const char* name, E& value, E (*parse)(const std::string&, const std::string&)) {
    const std::string text = r.string(field(name));
    // Escaping keeps valid names intact and garbage on one line (it then matches nothing).
    try {
      value = parse(field(name), escaped(text));
    } catch (const Error& e) {
      r.fail(e.what());
    }
  }
  void flag(const char* name, bool& value) { value = r.flag(field(name)); }
  template <class T>
  void number(const char* name, T& value) { value = r.pod<T>(field(name)); }
};

// ---- whole file --------------------------------------------------------------------------

void write_model(std::ostream& os, const ModelFile& m) {
  Writer w(os);
  w.bytes(kMagic, sizeof kMagic);
  w.pod<uint32_t>(kSeqrecFormatVersion);
  ModelSpec spec = m.spec;
  visit_spec(spec, SpecWriter{w});

  // Canonical order (required_tensors), so equal models give equal files.
  const auto decls = required_tensors(m.spec);
  w.pod<uint64_t>(decls.size());
  for (const auto& decl : decls) {
    const Tensor& t = m.tensors.at(decl.name);
    w.string(decl.name);
    w.string(kDtypeF32);
    w.pod<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (int64_t dim : t.shape) w.pod<int64_t>(dim);
    w.pod<uint64_t>(t.numel() * sizeof(float));
    w.bytes(t.ptr(), t.numel() * sizeof(float));
  }

  w.pod<uint64_t>(m.catalog.size());
  for (const auto& id : m.catalog) w.string(id);
  w.pod<uint64_t>(m.popularity.size());
  w.bytes(m.popularity.data(), m.popularity.size() * sizeof(uint64_t));

  const Provenance& p = m.provenance;
  w.string(p.source);
  w.string(p.source_detail);
  w.string(p.source_file);
  w.string(p.converter_version);
  w.pod<uint8_t>(p.rating_threshold ? 1 : 0);
  if (p.rating_threshold) w.pod<double>(*p.rating_threshold);
}

// Reads the framing and checks everything needed to allocate safely (spec, tensor names and
// shapes, lengths); validate_model_file does the remaining semantic checks afterwards.
void read_model(Reader& r, ModelFile& m) {
  char magic[sizeof kMagic];
  if (r.remaining() < sizeof magic)
    r.fail("not a .seqrec file (" + std::to_string(r.remaining()) + " bytes, shorter than the magic)");
  r.bytes(magic, sizeof magic, "magic");
  if (std::memcmp(magic, kMagic, sizeof magic) != 0)
    r.fail("not a .seqrec file (magic " + single_quoted(std::string_view(magic, sizeof magic)) +
           ", expected 'SEQREC\\x00\\x01')");
  const auto version = r.pod<uint32_t>("format version");
  if (version > kSeqrecFormatVersion)
    r.fail("format version " + std::to_string(version) + ": written by a newer seqrec (this build reads version " +
           std::to_string(kSeqrecFormatVersion) + ")");
  if (version != kSeqrecFormatVersion)
    r.fail("format version " + std::to_string(version) + ", expected " + std::to_string(kSeqrecFormatVersion));

  visit_spec(m.spec, SpecReader{r});
  try {
    m.spec.validate();  // bounds the sizes every tensor shape below is derived from
  } catch (const Error& e) {
    r.fail(e.what());
  }

  std::unordered_map<std::string, const TensorDecl*> declared;
  const auto decls = required_tensors(m.spec);
  for (const auto& decl : decls) declared.emplace(decl.name, &decl);
  // Each record must be a declared, not yet seen name, so at most decls.size() + 1 are read.
  const uint64_t n_tensors = r.count("tensor count", kMinTensorRecordBytes);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string name = r.string("tensor name");
    const std::string field = tensor_field(name);
    const auto it = declared.find(name);
    if (it == declared.end()) r.fail(field + ": unexpected (not required by the spec)");
    if (m.tensors.count(name)) r.fail(field + ": appears twice");
    const TensorDecl& decl = *it->second;

    const std::string dtype = r.string(field + " dtype");
    if (dtype != kDtypeF32) r.fail(field + ": dtype " + single_quoted(dtype) + ", expected 'f32'");
    const auto rank = r.pod<uint32_t>(field + " rank");
    if (rank > kMaxRank)
      r.fail(field + ": rank " + std::to_string(rank) + ", expected " + std::to_string(decl.shape.size()));
    std::vector<int64_t> shape(rank);
    for (auto& dim : shape) dim = r.pod<int64_t>(field + " shape");
    if (shape != decl.shape)
      r.fail(field + ": shape " + shape_string(shape) + ", expected " + shape_string(decl.shape));
    const auto n_bytes = r.pod<uint64_t>(field + " byte length");
    const uint64_t expected_bytes = Tensor::count(shape) * sizeof(float);
    if (n_bytes != expected_bytes)
      r.fail(field + ": byte length " + std::to_string(n_bytes) + ", expected " + std::to_string(expected_bytes));
    r.need(n_bytes, field + " data");
    Tensor t(shape);
    r.bytes(t.ptr(), n_bytes, field + " data");
    m.tensors.emplace(name, std::move(t));
  }
  for (const auto& decl : decls)
    if (!m.tensors.count(decl.name)) r.fail(missing_tensor_error(decl.name));

  // n_items is vouched for by the item table just read, so it bounds the allocations.
  const auto n_items = static_cast<uint64_t>(m.spec.n_items);
  const uint64_t n_ids = r.count("catalog count", sizeof(uint64_t));
  if (n_ids != n_items) r.fail(catalog_size_error(n_ids, m.spec.n_items));
  m.catalog.reserve(n_ids);
  for (uint64_t i = 0; i < n_ids; ++i) m.catalog.push_back(r.string("catalog id"));
  const uint64_t n_counts = r.count("popularity count", sizeof(uint64_t));
  if (n_counts != 0 && n_counts != n_items) r.fail(popularity_size_error(n_counts, m.spec.n_items));
  m.popularity.resize(n_counts);
  r.bytes(m.popularity.data(), n_counts * sizeof(uint64_t), "popularity");

  Provenance& p = m.provenance;
  p.source = r.string("provenance.source");
  p.source_detail = r.string("provenance.source_detail");
  p.source_file = r.string("provenance.source_file");
  p.converter_version = r.string("provenance.converter_version");
  if (r.flag("provenance.rating_threshold present")) p.rating_threshold = r.pod<double>("provenance.rating_threshold");

  if (r.remaining() != 0)
    r.fail("trailing bytes: " + std::to_string(r.remaining()) + " after the provenance, expected end of file");
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
    if (t.numel() != Tensor::count(t.shape))
      fail(field + ": holds " + std::to_string(t.numel()) + " values, shape " + shape_string(t.shape) + " needs " +
           std::to_string(Tensor::count(t.shape)));
    const float* v = t.ptr();
    for (std::size_t i = 0; i < t.numel(); ++i)
      if (!std::isfinite(v[i]))
        fail(field + ": value at flat index " + std::to_string(i) + " is " +
             (std::isnan(v[i]) ? "nan" : v[i] > 0 ? "inf" : "-inf") + ", expected a finite number");
  }
  if (m.tensors.size() != decls.size()) {
    for (const auto& [name, t] : m.tensors) {
      bool known = false;
      for (const auto& decl : decls) known = known || decl.name == name;
      if (!known) fail(tensor_field(name) + ": unexpected (not required by the spec)");
    }
  }

  const auto n_items = static_cast<uint64_t>(m.spec.n_items);
  if (m.catalog.size() != n_items) fail(catalog_size_error(m.catalog.size(), m.spec.n_items));
  std::unordered_map<std::string_view, std::size_t> row_of;
  row_of.reserve(m.catalog.size());
  for (std::size_t row = 1; row < m.catalog.size(); ++row) {  // row 0 is padding: its text is ignored
    const std::string& id = m.catalog[row];
    if (id.empty()) fail("catalog: row " + std::to_string(row) + ": empty id");
    const auto [it, inserted] = row_of.emplace(id, row);
    if (!inserted)
      fail("catalog: duplicate id " + single_quoted(id) + " at rows " + std::to_string(it->second) + " and " +
           std::to_string(row));
  }
  if (!m.popularity.empty() && m.popularity.size() != n_items)
    fail(popularity_size_error(m.popularity.size(), m.spec.n_items));
  if (m.provenance.rating_threshold && !std::isfinite(*m.provenance.rating_threshold))
    fail("provenance.rating_threshold: " + std::to_string(*m.provenance.rating_threshold) +
         ", expected a finite number");
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

ModelFile load_model_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::not_found) throw Error(path + ": cannot open: no such file");
  if (ec) throw Error(path + ": cannot open: " + ec.message());
  if (!std::filesystem::is_regular_file(status)) throw Error(path + ": cannot open: not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(path + ": cannot open: " + ec.message());
  std::ifstream is(path, std::ios::binary);
  if (!is) throw Error(path + ": cannot open: " + std::strerror(errno));

  ModelFile model;
  Reader reader(is, size, path);
  try {
    read_model(reader, model);
  } catch (const cereal::Exception& e) {  // the file shrank while being read
    throw Error(path + ": read failed: " + e.what());
  }
  validate_model_file(model, path);
  return model;
}

}  // namespace seqrec
