// Read-only access to the stored entries of a zip archive, as torch.save writes them
// (docs/models.md "File formats the converter reads").
//
// Sizes and offsets come from the central directory (torch's local headers carry zeros and
// a data descriptor); ZIP64 records are honoured. Only stored (method 0), unencrypted
// entries are supported. Every offset and size is checked against the file size before it
// is used, and every entry's CRC-32 is verified when the archive is opened, so a reader
// never sees silently corrupted bytes. All failures are seqrec::Error naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace seqrec {

class ZipReader {
 public:
  struct Entry {
    std::string name;
    uint64_t data_offset = 0;  // where the entry's bytes start in the file
    uint64_t size = 0;
    uint32_t crc32 = 0;
  };

  // Maps (or reads) the whole file. Throws seqrec::Error naming `path`; a file that is
  // not a zip at all gets an error saying so (and naming the legacy torch format if the
  // file starts like a pickle).
  static ZipReader open(const std::string& path);
  // The same over bytes already in memory; `name` is used in error messages.
  static ZipReader from_memory(std::string name, std::vector<uint8_t> bytes);

  ZipReader(ZipReader&&) noexcept;
  ZipReader& operator=(ZipReader&&) noexcept;
  ~ZipReader();

  const std::string& name() const { return name_; }
  // Entries in central-directory order.
  const std::vector<Entry>& entries() const { return entries_; }
  // nullptr if there is no entry of that name.
  const Entry* find(const std::string& entry_name) const;
  // The bytes of an entry (a view into the mapped file, valid while this reader lives).
  std::span<const uint8_t> data(const Entry& entry) const;
  // data(*find(name)), or seqrec::Error naming the file and the missing entry.
  std::span<const uint8_t> data(const std::string& entry_name) const;

  // CRC-32 (the zip / IEEE 802.3 polynomial) of `bytes`.
  static uint32_t crc32(std::span<const uint8_t> bytes);

 private:
  struct Storage;  // the mapped or owned bytes of the file
  ZipReader(std::string name, std::unique_ptr<Storage> storage);
  void parse();

  std::string name_;
  std::unique_ptr<Storage> storage_;
  std::span<const uint8_t> file_;
  std::vector<Entry> entries_;
  std::map<std::string, std::size_t> index_;  // name -> position in entries_
};

}  // namespace seqrec
