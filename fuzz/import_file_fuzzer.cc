// Feeds the bytes as an interactions file to the import reader (server/history/import.h:
// InteractionFile + load_into) reading into a fresh memory history store, as `seqrec import`
// does. The file arrives through a packet-mode pipe in pieces whose size the input chooses, so
// the reader's refills split records, quoted fields and "\r\n" at every place a real slow
// stream could.
//
// Input: byte 0 chooses the run (bit 0: --skip-bad-lines; bits 1-2: interactions per chunk
// 1 / 3 / 64 / the default; bits 3-5: the pipe piece size 1 / 2 / 3 / 7 / 64 / 512 / 1024 /
// 4096 for the first 128 pieces; bit 6: the text up to the first '\n' is a --columns value);
// the rest is the file.
//
// A failure: any sanitizer report; an exception other than seqrec::Error (what the reader
// promises for any bad file); a load that returns with no interaction appended, or with bad
// lines counted although --skip-bad-lines was not given; a hang (libFuzzer's -timeout).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/error.h"
#include "fuzz/fuzz_common.h"
#include "server/history/backends.h"
#include "server/history/import.h"
#include "server/tabular/record_reader.h"

namespace {

using seqrec::fuzz::fail;
namespace history = seqrec::history;

// Hands `bytes` to the reader through a pipe in packet mode (O_DIRECT, Linux 3.4+): each
// write() is one packet and each read() returns at most one packet, so every refill of the
// reader gets exactly one piece (or what is left of it), the same way on every run of the
// input, as from a slow stream. All pieces are written before the reader starts, into a pipe
// made large enough to hold them, so no writer thread is needed: a thread woken twice per
// piece held this fuzzer at ~640 executions a second.
//
// Only the first kSplitPieces pieces have the chosen size; the rest goes a page at a time (a
// packet is at most a page). The records the mutations move into the first 128 bytes still meet
// every split point. A packet is cut when a read asks for fewer bytes than it holds: the reader
// asks for at least its 64 KiB stream buffer less what it keeps, so files are capped at
// kMaxBytes (libFuzzer's inputs here stay far below it).
class PacketPipe {
 public:
  static constexpr size_t kSplitPieces = 128;
  static constexpr size_t kPage = 4096;
  static constexpr size_t kMaxBytes = seqrec::tabular::kStreamBlockBytes - kPage;

  // `ok()` is false when the file is over kMaxBytes (nothing is written then); a failing pipe
  // call is the harness's fault and stops the fuzzer.
  PacketPipe(const std::string& bytes, size_t piece) {
    if (bytes.size() > kMaxBytes) return;
    const size_t split = std::min(bytes.size(), kSplitPieces * piece);
    const size_t packets = (split + piece - 1) / piece + (bytes.size() - split + kPage - 1) / kPage;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_DIRECT) != 0) fail("pipe2(O_DIRECT) failed");
    read_fd_ = fds[0];
    // One page of pipe capacity per packet, whatever its size (a pipe's default is 16 pages; at
    // kMaxBytes in 1-byte pieces, 143 packets: 256 pages, the default pipe-max-size of 1 MiB).
    const size_t pages = std::max<size_t>(std::bit_ceil(packets + 1), 16);
    if (fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(pages * kPage)) < 0) fail("F_SETPIPE_SZ failed");
    for (size_t at = 0, n = 0; at < bytes.size(); ++n) {
      const size_t size = std::min(n < kSplitPieces ? piece : kPage, bytes.size() - at);
      const ssize_t written = ::write(fds[1], bytes.data() + at, size);  // room for every packet: never blocks
      if (written != static_cast<ssize_t>(size)) fail("write to the packet pipe failed");
      at += size;
    }
    ::close(fds[1]);  // the reader sees the end after the last packet
  }
  ~PacketPipe() {
    if (read_fd_ >= 0) ::close(read_fd_);
  }
  PacketPipe(const PacketPipe&) = delete;
  PacketPipe& operator=(const PacketPipe&) = delete;

  bool ok() const { return read_fd_ >= 0; }
  std::string path() const { return "/proc/self/fd/" + std::to_string(read_fd_); }

 private:
  int read_fd_ = -1;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t choice = data[0];
  std::string file(reinterpret_cast<const char*>(data + 1), size - 1);

  history::ImportOptions options;
  options.skip_bad_lines = (choice & 1) != 0;
  static const size_t kPerChunk[] = {1, 3, 64, history::ImportOptions{}.interactions_per_chunk};
  options.interactions_per_chunk = kPerChunk[(choice >> 1) & 3];
  static constexpr size_t kPieces[] = {1, 2, 3, 7, 64, 512, 1024, 4096};  // at most a packet's one page
  const size_t piece = kPieces[(choice >> 3) & 7];
  uint64_t progress_calls = 0;
  options.progress = [&progress_calls](uint64_t, uint64_t) { ++progress_calls; };

  history::ImportColumns columns;
  if (choice & 64) {
    const size_t newline = file.find('\n');
    const std::string text = file.substr(0, newline);
    file.erase(0, newline == std::string::npos ? file.size() : newline + 1);
    try {
      columns = history::parse_import_columns(text);
    } catch (const seqrec::Error&) {
      return 0;  // a bad --columns value is refused before any file is read
    }
  }

  const std::unique_ptr<history::HistoryStore> store = history::make_memory_store(history::StoreOptions{});
  const PacketPipe pipe(file, piece);
  if (!pipe.ok()) return 0;  // over kMaxBytes
  try {
    history::InteractionFile interactions(pipe.path(), columns);
    const history::ImportResult result = interactions.load_into(*store, options);
    if (result.interactions == 0) fail("load_into returned without appending an interaction");
    if (result.users == 0 || result.users > result.interactions)
      fail("load_into: " + std::to_string(result.users) + " users for " + std::to_string(result.interactions) +
           " interactions");
    if (!options.skip_bad_lines && result.bad_lines != 0) fail("bad lines counted without --skip-bad-lines");
    if (result.first_bad_lines.size() > result.bad_lines) fail("more bad lines shown than counted");
  } catch (const seqrec::Error&) {
    // A bad file, named in the message: what the reader promises.
  }
  return 0;
}
