// Feeds the bytes as a torch.save file: to the zip reader (weights/zip_reader.h) — every
// entry's bytes read back — and then to the whole checkpoint reader on top of it
// (weights/torch_checkpoint.h: the zip, data.pkl unpickled, every tensor of the state_dict
// gathered from its storage), as `seqrec convert` opens a checkpoint.
// A failure: any sanitizer report; an exception other than seqrec::Error (the readers promise
// one for any bad file); an entry whose bytes lie outside the file; find() disagreeing with
// entries().
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "fuzz/fuzz_common.h"
#include "weights/torch_checkpoint.h"
#include "weights/zip_reader.h"

using seqrec::fuzz::fail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);

  try {
    const seqrec::ZipReader zip = seqrec::ZipReader::from_memory("fuzz.pt", bytes);
    uint64_t checksum = 0;
    for (const seqrec::ZipReader::Entry& entry : zip.entries()) {
      if (entry.data_offset > size || entry.size > size - entry.data_offset)
        fail("entry '" + entry.name + "' lies outside the " + std::to_string(size) + "-byte file");
      const std::span<const uint8_t> content = zip.data(entry);
      if (content.size() != entry.size) fail("entry '" + entry.name + "': data() size differs from entry.size");
      // Touch every byte: ASan reports any read outside the owned buffer.
      for (uint8_t b : content) checksum += b;
      const seqrec::ZipReader::Entry* found = zip.find(entry.name);
      if (!found || found->name != entry.name) fail("find('" + entry.name + "') does not find a listed entry");
    }
    if (checksum == 1) std::fprintf(stderr, " ");  // keeps the loop from being optimised away
  } catch (const seqrec::Error&) {
  }

  try {
    const seqrec::TorchCheckpoint checkpoint = seqrec::TorchCheckpoint::from_memory("fuzz.pt", bytes);
    (void)checkpoint.root().describe();
    if (checkpoint.root().is_dict()) {
      for (const auto& [name, tensor] : checkpoint.state_dict()) (void)tensor.numel();
    } else if (const seqrec::pickle::Value* state = checkpoint.root().find("state_dict")) {
      for (const auto& [name, tensor] : checkpoint.state_dict(*state)) (void)tensor.numel();  // RecBole's layout
    }
  } catch (const seqrec::Error&) {
  }
  return 0;
}
