// Feeds the bytes as a .safetensors file: to the reader (weights/safetensors.h: every tensor
// read back as fp32), and, when the reader accepts it, to the conversion `seqrec convert --from
// safetensors` runs on it (weights/sources/safetensors_source.h: the spec from __metadata__,
// the tensors it requires, the catalog) and the steps `seqrec convert` takes after it
// (drop_non_item_rows, validate_model_file).
// A failure: any sanitizer report; an exception other than seqrec::Error (the reader and the
// converter promise one naming the file and field); tensors that overlap or lie outside the
// data, or that read back as another number of values than their bytes hold.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.h"
#include "fuzz/fuzz_common.h"
#include "weights/safetensors.h"
#include "weights/seqrec_file.h"
#include "weights/sources/safetensors_source.h"
#include "weights/sources/source.h"

using seqrec::fuzz::fail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const seqrec::safetensors::File file =
        seqrec::safetensors::File::from_memory("fuzz.safetensors", std::vector<uint8_t>(data, data + size));
    uint64_t previous_end = 0;
    for (const seqrec::safetensors::TensorInfo& info : file.tensors()) {
      if (info.begin < previous_end || info.end < info.begin || info.end > size)
        fail("tensor '" + info.name + "' at [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
             ") overlaps another or lies outside the file");
      previous_end = info.end;
      if (file.find(info.name) == nullptr) fail("find('" + info.name + "') does not find a listed tensor");
      const seqrec::Tensor values = file.read(info);
      const uint64_t expected = (info.end - info.begin) / seqrec::safetensors::dtype_size(info.dtype);
      if (values.numel() != expected)
        fail("tensor '" + info.name + "': read() gave " + std::to_string(values.numel()) + " values, its bytes hold " +
             std::to_string(expected));
    }
  } catch (const seqrec::Error&) {
    return 0;  // refused by the reader: the converter would refuse it the same way
  }

  const seqrec::fuzz::BytesFile file(data, size);
  seqrec::ConvertOptions options;
  options.checkpoint = file.path();
  try {
    seqrec::ModelFile model = seqrec::convert_safetensors(options);
    seqrec::drop_non_item_rows(model);
    seqrec::validate_model_file(model, "converted");
  } catch (const seqrec::Error&) {
  }
  return 0;
}
