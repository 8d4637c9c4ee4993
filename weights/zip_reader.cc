#include "weights/zip_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "engine/error.h"

namespace seqrec {

namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kZip64EndSize = 56;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kMaxCommentSize = 0xFFFF;
constexpr uint16_t kZip64ExtraId = 0x0001;

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const uint8_t* p) { return le32(p) | (static_cast<uint64_t>(le32(p + 4)) << 32); }

// [offset, offset + length) lies within [0, limit), without overflowing.
bool fits(uint64_t offset, uint64_t length, uint64_t limit) {
  return offset <= limit && length <= limit - offset;
}

// Entry names come from the file: no control characters in a one-line message.
std::string printable(const std::string& text) {
  std::string out;
  for (char c : text.substr(0, 200)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  return text.size() > 200 ? out + "..." : out;
}

std::string hex(uint64_t value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "0x%llx", static_cast<unsigned long long>(value));
  return buffer;
}

// Slicing-by-8 tables: checkpoints are hundreds of MB, so the CRC must not be the
// bottleneck of opening one.
struct Crc32Tables {
  std::array<std::array<uint32_t, 256>, 8> table{};
  Crc32Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int t = 1; t < 8; ++t) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
  }
};

}  // namespace

struct ZipReader::Storage {
  std::vector<uint8_t> owned;
  void* mapped = nullptr;
  std::size_t mapped_size = 0;
  ~Storage() {
    if (mapped) munmap(mapped, mapped_size);
  }
  std::span<const uint8_t> bytes() const {
    if (mapped) return {static_cast<const uint8_t*>(mapped), mapped_size};
    return {owned.data(), owned.size()};
  }
};

ZipReader::ZipReader(std::string name, std::unique_ptr<Storage> storage)
    : name_(std::move(name)), storage_(std::move(storage)), file_(storage_->bytes()) {}
ZipReader::ZipReader(ZipReader&&) noexcept = default;
ZipReader& ZipReader::operator=(ZipReader&&) noexcept = default;
ZipReader::~ZipReader() = default;

ZipReader ZipReader::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file, expected a torch.save zip archive");
  }
  auto storage = std::make_unique<Storage>();
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size > 0) {
    void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      storage->mapped = p;
      storage->mapped_size = size;
    } else {
      // Some filesystems cannot map; read the file instead.
      storage->owned.resize(size);
      std::size_t done = 0;
      while (done < size) {
        ssize_t n = ::read(fd, storage->owned.data() + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          ::close(fd);
          throw Error(path + ": read failed after " + std::to_string(done) + " of " +
                      std::to_string(size) + " bytes");
        }
        done += static_cast<std::size_t>(n);
      }
    }
  }
  ::close(fd);
  ZipReader reader(path, std::move(storage));
  reader.parse();
  return reader;
}

ZipReader ZipReader::from_memory(std::string name, std::vector<uint8_t> bytes) {
  auto storage = std::make_unique<Storage>();
  storage->owned = std::move(bytes);
  ZipReader reader(std::move(name), std::move(storage));
  reader.parse();
  return reader;
}

const ZipReader::Entry* ZipReader::find(const std::string& entry_name) const {
  auto it = index_.find(entry_name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::span<const uint8_t> ZipReader::data(const Entry& entry) const {
  // parse() checked the range; entries are immutable afterwards.
  return file_.subspan(static_cast<std::size_t>(entry.data_offset), static_cast<std::size_t>(entry.size));
}

std::span<const uint8_t> ZipReader::data(const std::string& entry_name) const {
  const Entry* entry = find(entry_name);
  if (!entry) throw Error(name_ + ": zip entry '" + printable(entry_name) + "' not found");
  return data(*entry);
}

uint32_t ZipReader::crc32(std::span<const uint8_t> bytes) {
  static const Crc32Tables tables;
  const auto& t = tables.table;
  uint32_t c = 0xFFFFFFFFu;
  const uint8_t* p = bytes.data();
  std::size_t n = bytes.size();
  while (n >= 8) {
    uint32_t lo = c ^ le32(p);
    uint32_t hi = le32(p + 4);
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
        t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

void ZipReader::parse() {
  const uint8_t* base = file_.data();
  const uint64_t file_size = file_.size();
  auto fail = [&](const std::string& message) -> void { throw Error(name_ + ": " + message); };

  if (file_size == 0) fail("empty file, expected a torch.save zip archive");
  if (file_size < 4 || (le32(base) != kLocalHeaderSignature && le32(base) != kEndSignature)) {
    if (base[0] == 0x80)
      fail("not a zip archive but a bare pickle: the legacy torch.save format (torch < 1.6 or "
           "_use_new_zipfile_serialization=False) is not supported; re-save it with "
           "torch.save(obj, path) from torch >= 1.6");
    std::string found;
    for (uint64_t i = 0; i < std::min<uint64_t>(4, file_size); ++i) found += (i ? " " : "") + hex(base[i]);
    fail("not a zip archive (expected it to start with 0x50 0x4b 0x03 0x04 \"PK\\3\\4\", found " + found +
         "); torch.save writes zip archives");
  }
  if (file_size < kEndSize)
    fail("truncated zip: " + std::to_string(file_size) + " bytes, expected at least " + std::to_string(kEndSize) +
         " (an end-of-central-directory record)");

  // The end record is the last thing in the file, followed only by its comment.
  uint64_t end = file_size;  // position of the end record; file_size = not found
  const uint64_t lowest = file_size - kEndSize > kMaxCommentSize ? file_size - kEndSize - kMaxCommentSize : 0;
  for (uint64_t pos = file_size - kEndSize + 1; pos-- > lowest;) {
    if (le32(base + pos) == kEndSignature && pos + kEndSize + le16(base + pos + 20) == file_size) {
      end = pos;
      break;
    }
  }
  if (end == file_size) fail("no zip end-of-central-directory record (truncated or not a zip archive)");

  const uint8_t* e = base + end;
  if (le16(e + 4) != 0 || le16(e + 6) != 0)
    fail("multi-disk zip archives are not supported (disk " + std::to_string(le16(e + 4)) + ")");
  uint64_t entry_count = le16(e + 10);
  uint64_t cd_size = le32(e + 12);
  uint64_t cd_offset = le32(e + 16);
  uint64_t cd_limit = end;  // the central directory must end before this

  // ZIP64: a locator right before the end record points at the ZIP64 end record, whose
  // 64-bit fields win. torch writes them even for small files.
  if (end >= kZip64LocatorSize && le32(base + end - kZip64LocatorSize) == kZip64LocatorSignature) {
    const uint64_t locator = end - kZip64LocatorSize;
    const uint64_t record = le64(base + locator + 8);
    if (!fits(record, kZip64EndSize, locator))
      fail("ZIP64 end record offset " + std::to_string(record) + " is outside the file (" +
           std::to_string(locator) + " bytes before the locator)");
    const uint8_t* z = base + record;
    if (le32(z) != kZip64EndSignature)
      fail("bad ZIP64 end record signature at offset " + std::to_string(record) + ": expected " +
           hex(kZip64EndSignature) + ", found " + hex(le32(z)));
    const uint64_t entries64 = le64(z + 32), cd_size64 = le64(z + 40), cd_offset64 = le64(z + 48);
    auto check = [&](const char* field, uint64_t narrow, uint64_t saturated, uint64_t wide) {
      if (narrow != saturated && narrow != wide)
        fail(std::string("zip end record and ZIP64 end record disagree on ") + field + ": " +
             std::to_string(narrow) + " vs " + std::to_string(wide));
    };
    check("entry count", entry_count, 0xFFFF, entries64);
    check("central directory size", cd_size, 0xFFFFFFFF, cd_size64);
    check("central directory offset", cd_offset, 0xFFFFFFFF, cd_offset64);
    entry_count = entries64;
    cd_size = cd_size64;
    cd_offset = cd_offset64;
    cd_limit = record;
  }

  if (!fits(cd_offset, cd_size, cd_limit))
    fail("central directory [" + std::to_string(cd_offset) + ", +" + std::to_string(cd_size) +
         ") does not fit before its end record at offset " + std::to_string(cd_limit));
  if (entry_count > cd_size / kCentralHeaderSize)
    fail("zip claims " + std::to_string(entry_count) + " entries but its central directory of " +
         std::to_string(cd_size) + " bytes holds at most " + std::to_string(cd_size / kCentralHeaderSize));

  entries_.reserve(static_cast<std::size_t>(entry_count));
  const uint64_t cd_end = cd_offset + cd_size;
  uint64_t pos = cd_offset;
  for (uint64_t i = 0; i < entry_count; ++i) {
    const std::string where = "central directory entry " + std::to_string(i) + " at offset " + std::to_string(pos);
    if (!fits(pos, kCentralHeaderSize, cd_end)) fail(where + ": runs past the end of the central directory");
    const uint8_t* h = base + pos;
    if (le32(h) != kCentralHeaderSignature)
      fail(where + ": bad signature, expected " + hex(kCentralHeaderSignature) + ", found " + hex(le32(h)));
    const uint16_t flags = le16(h + 8), method = le16(h + 10);
    const uint32_t crc = le32(h + 16);
    uint64_t compressed = le32(h + 20), size = le32(h + 24);
    const uint16_t name_len = le16(h + 28), extra_len = le16(h + 30), comment_len = le16(h + 32);
    const uint16_t disk = le16(h + 34);
    uint64_t local_offset = le32(h + 42);
    const uint64_t variable = uint64_t{name_len} + extra_len + comment_len;
    if (!fits(pos + kCentralHeaderSize, variable, cd_end))
      fail(where + ": name/extra/comment of " + std::to_string(variable) + " bytes run past the central directory");
    std::string name(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
    const std::string what = "zip entry '" + printable(name) + "'";

    // ZIP64 extended information: 8-byte values, present only for saturated fields, in
    // this order.
    const uint8_t* extra = h + kCentralHeaderSize + name_len;
    for (uint64_t x = 0; x + 4 <= extra_len;) {
      const uint16_t id = le16(extra + x), len = le16(extra + x + 2);
      if (x + 4 + len > extra_len) fail(what + ": extra field runs past its extra data");
      if (id == kZip64ExtraId) {
        const uint8_t* field = extra + x + 4;
        uint64_t used = 0;
        for (uint64_t* value : {&size, &compressed, &local_offset}) {
          if (*value != 0xFFFFFFFF) continue;
          if (used + 8 > len) fail(what + ": ZIP64 extra field too short (" + std::to_string(len) + " bytes)");
          *value = le64(field + used);
          used += 8;
        }
      }
      x += 4 + len;
    }

    if (flags & 0x41) fail(what + ": encrypted entries are not supported");
    if (method != 0)
      fail(what + ": compression method " + std::to_string(method) +
           " is not supported, expected 0 (stored); torch.save never compresses - was the file re-zipped?");
    if (compressed != size)
      fail(what + ": stored entry with compressed size " + std::to_string(compressed) + " != size " + std::to_string(size));
    if (disk != 0) fail(what + ": on disk " + std::to_string(disk) + ", multi-disk archives are not supported");
    if (name.empty()) fail(where + ": empty entry name");

    // The local header only tells where the data starts (its sizes may be zero).
    if (!fits(local_offset, kLocalHeaderSize, cd_offset))
      fail(what + ": local header offset " + std::to_string(local_offset) + " is not before the central directory at " +
           std::to_string(cd_offset));
    const uint8_t* l = base + local_offset;
    if (le32(l) != kLocalHeaderSignature)
      fail(what + ": bad local header signature at offset " + std::to_string(local_offset) + ": expected " +
           hex(kLocalHeaderSignature) + ", found " + hex(le32(l)));
    const uint16_t local_name_len = le16(l + 26), local_extra_len = le16(l + 28);
    const uint64_t data_offset = local_offset + kLocalHeaderSize + local_name_len + local_extra_len;
    if (local_name_len != name_len || !fits(local_offset + kLocalHeaderSize, name_len, cd_offset) ||
        std::memcmp(l + kLocalHeaderSize, name.data(), name_len) != 0)
      fail(what + ": local header names a different entry");
    if (!fits(data_offset, size, cd_offset))
      fail(what + ": data [" + std::to_string(data_offset) + ", +" + std::to_string(size) +
           ") runs past the start of the central directory at " + std::to_string(cd_offset));

    const uint32_t actual_crc = crc32(file_.subspan(static_cast<std::size_t>(data_offset), static_cast<std::size_t>(size)));
    if (actual_crc != crc)
      fail(what + ": CRC-32 mismatch, expected " + hex(crc) + ", found " + hex(actual_crc) + " (corrupted file)");

    if (!index_.emplace(name, entries_.size()).second) fail(what + ": duplicate entry name");
    entries_.push_back(Entry{std::move(name), data_offset, size, crc});
    pos += kCentralHeaderSize + variable;
  }
  if (pos != cd_end)
    fail("central directory has " + std::to_string(cd_end - pos) + " bytes left after its " +
         std::to_string(entry_count) + " entries");
}

}  // namespace seqrec
