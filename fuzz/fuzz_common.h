// What the fuzzers share: failing loudly (libFuzzer saves the input of any abort), checking
// that text the product writes is valid JSON, and handing fuzz bytes to loaders that only
// take a path.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <simdjson.h>

namespace seqrec::fuzz {

// A property the product promises is broken: print why and abort, so libFuzzer keeps the input.
[[noreturn]] inline void fail(const std::string& why) {
  std::fprintf(stderr, "\n*** seqrec fuzz: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

// What the product writes for a client must be JSON a client can read (valid UTF-8 included).
inline void require_valid_json(std::string_view json, const std::string& what) {
  static thread_local simdjson::dom::parser parser;
  const simdjson::padded_string padded(json);
  const auto parsed = parser.parse(padded);
  if (parsed.error())
    fail(what + " is not valid JSON (" + simdjson::error_message(parsed.error()) + "): " +
         std::string(json.substr(0, 400)));
}

// The fuzz bytes as a file the product can open by path: an anonymous memory file (memfd, a
// regular file to fstat) named /proc/self/fd/N. Nothing touches the disk; closed on scope exit.
class BytesFile {
 public:
  BytesFile(const uint8_t* data, size_t size) {
    fd_ = memfd_create("seqrec-fuzz-input", MFD_CLOEXEC);
    if (fd_ < 0) fail("memfd_create failed");
    for (size_t done = 0; done < size;) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      if (n <= 0) fail("writing the memfd failed");
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~BytesFile() { ::close(fd_); }
  BytesFile(const BytesFile&) = delete;
  BytesFile& operator=(const BytesFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace seqrec::fuzz
