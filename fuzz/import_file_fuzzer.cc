// Feeds the bytes as an interactions file to the import reader (server/history/import.h:
// InteractionFile + load_into) reading into a fresh memory history store, as `seqrec import`
// does. The file arrives through a pipe in pieces whose size the input chooses, so the reader's
// refills split records, quoted fields and "\r\n" at every place a real slow stream could.
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
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "engine/error.h"
#include "fuzz/fuzz_common.h"
#include "server/history/backends.h"
#include "server/history/import.h"

namespace {

using seqrec::fuzz::fail;
namespace history = seqrec::history;

// Writes `bytes` into a pipe `piece` bytes at a time, each piece only once the reader has taken
// everything before it, so every read() of the reader returns exactly one piece (or what is left
// of it), the same way on every run of the input. The pipe holds one page: a writer's poll for
// POLLOUT then returns only once that page is empty, so the writer waits without spinning.
//
// Only the first kSplitPieces pieces have the chosen size; the rest goes a page at a time. Each
// piece costs two thread wake-ups, and 1-byte pieces over a whole file held the fuzzer at ~40
// executions a second; the records the mutations move into the first 128 bytes still meet every
// split point. The writer is one thread for the fuzzer's life: a thread started per input (its
// stack mapped and unmapped under ASan) cost more than the reading it fed.
class PipeFeeder {
 public:
  static constexpr size_t kSplitPieces = 128;
  static constexpr size_t kPage = 4096;

  PipeFeeder(std::string bytes, size_t piece) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) fail("pipe2 failed");
    read_fd_ = fds[0];
    if (fcntl(fds[1], F_SETPIPE_SZ, kPage) < 0) fail("F_SETPIPE_SZ failed");
    Writer& writer = Writer::instance();
    std::lock_guard<std::mutex> lock(writer.mutex);
    writer.job = Job{std::move(bytes), piece, fds[1]};
    writer.wake.notify_one();
  }
  ~PipeFeeder() {
    // The reader may have stopped early (a fatal bad line): with no read end left, the
    // writer's poll reports an error and it stops.
    ::close(read_fd_);
    Writer& writer = Writer::instance();
    std::unique_lock<std::mutex> lock(writer.mutex);
    writer.wake.wait(lock, [&] { return !writer.job; });
  }
  std::string path() const { return "/proc/self/fd/" + std::to_string(read_fd_); }

 private:
  struct Job {
    std::string bytes;
    size_t piece;
    int write_fd;
  };
  struct Writer {
    std::mutex mutex;
    std::condition_variable wake;  // a job given (writer waits), a job done (the feeder waits)
    std::optional<Job> job;

    static Writer& instance() {
      static Writer* writer = [] {
        auto* w = new Writer;  // never destroyed: the thread runs until the process ends
        std::thread([w] { w->run(); }).detach();
        return w;
      }();
      return *writer;
    }
    void run() {
      for (;;) {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [&] { return job.has_value(); });
        Job& current = *job;
        lock.unlock();
        feed(current);
        lock.lock();
        job.reset();
        wake.notify_all();
      }
    }
    static void feed(const Job& job) {
      const std::string& bytes = job.bytes;
      for (size_t at = 0, pieces = 0; at < bytes.size(); ++pieces) {
        const size_t n = std::min(pieces < kSplitPieces ? job.piece : kPage, bytes.size() - at);
        const ssize_t written = ::write(job.write_fd, bytes.data() + at, n);  // the pipe is empty: never blocks
        if (written <= 0) break;  // the reader is gone (EPIPE)
        at += static_cast<size_t>(written);
        pollfd empty{job.write_fd, POLLOUT, 0};
        while (::poll(&empty, 1, -1) < 0 && errno == EINTR) {
        }
        if (empty.revents & (POLLERR | POLLHUP)) break;
      }
      ::close(job.write_fd);
    }
  };

  int read_fd_ = -1;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t choice = data[0];
  std::string file(reinterpret_cast<const char*>(data + 1), size - 1);

  history::ImportOptions options;
  options.skip_bad_lines = (choice & 1) != 0;
  static const size_t kPerChunk[] = {1, 3, 64, history::ImportOptions{}.interactions_per_chunk};
  options.interactions_per_chunk = kPerChunk[(choice >> 1) & 3];
  static constexpr size_t kPieces[] = {1, 2, 3, 7, 64, 512, 1024, 4096};  // at most the pipe's one page
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
  PipeFeeder feeder(std::move(file), piece);
  try {
    history::InteractionFile interactions(feeder.path(), columns);
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
