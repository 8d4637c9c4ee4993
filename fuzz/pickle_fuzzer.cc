// Feeds the bytes as a data.pkl to the pickle machine (weights/pickle.h: pickle::load), then
// walks everything it built (pickle::reachable) through every accessor of each value's kind,
// as the checkpoint mappers do.
// A failure: any sanitizer report (the reader promises that hostile input cannot crash it);
// an exception other than seqrec::Error; a hang or runaway memory (its Limits promise neither:
// -timeout / -rss_limit_mb); a Value whose accessors disagree with its kind.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "engine/error.h"
#include "fuzz/fuzz_common.h"
#include "weights/pickle.h"

namespace {

using seqrec::fuzz::fail;
namespace pickle = seqrec::pickle;

// Every accessor a value of this kind offers (each may throw seqrec::Error, e.g. a Tensor
// whose size is not a tuple of ints is refused when it is built, not here).
void visit(const pickle::Value& value) {
  const std::string description = value.describe();
  if (description.size() > 80) fail("describe() returned " + std::to_string(description.size()) + " characters, at most 80");
  switch (value.kind()) {
    case pickle::Kind::None: break;
    case pickle::Kind::Bool: (void)value.as_bool(); (void)value.as_int(); break;
    case pickle::Kind::Int: (void)value.as_int(); (void)value.as_float(); break;
    case pickle::Kind::Float: (void)value.as_float(); break;
    case pickle::Kind::BigInt: (void)value.as_bytes(); break;
    case pickle::Kind::String: (void)pickle::printable(value.as_string()); break;
    case pickle::Kind::Bytes: (void)value.as_bytes().size(); break;
    case pickle::Kind::List:
    case pickle::Kind::Tuple:
    case pickle::Kind::Set: {
      const auto elements = value.elements();
      if (elements.size() != value.size()) fail("elements() and size() disagree on a " + description);
      for (size_t i = 0; i < elements.size(); ++i)
        if (&value.at(i) != elements[i]) fail("at(i) and elements()[i] disagree on a " + description);
      break;
    }
    case pickle::Kind::Dict: {
      const auto items = value.items();
      if (items.size() != value.size()) fail("items() and size() disagree on a " + description);
      for (const pickle::Value::Item& item : items) {
        if (!item.key || !item.value) fail("a null key or value in a " + description);
        if (item.key->is_string()) (void)value.find(item.key->as_string());
        if (item.key->is_int()) (void)value.find_int(item.key->as_int());
      }
      (void)value.state();
      break;
    }
    case pickle::Kind::Global: (void)value.qualified_name(); break;
    case pickle::Kind::Object:
      (void)value.qualified_name();
      (void)value.callable().describe();
      (void)value.args().describe();
      (void)value.kwargs();
      (void)value.state();
      (void)value.find("final_config_dict");
      break;
    case pickle::Kind::Storage: {
      const pickle::StorageRef& s = value.storage();
      if (s.numel < 0) fail("a storage of " + std::to_string(s.numel) + " elements");
      (void)pickle::dtype_size(s.dtype);
      break;
    }
    case pickle::Kind::Tensor: {
      const pickle::TensorRef& t = value.tensor();
      if (t.size.size() != t.stride.size()) fail("a tensor whose size and stride differ in rank: " + description);
      if (t.offset < 0) fail("a tensor at offset " + std::to_string(t.offset));
      for (size_t i = 0; i < t.size.size(); ++i)
        if (t.size[i] < 0 || t.stride[i] < 0) fail("a tensor of negative size or stride: " + description);
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const pickle::Value root = pickle::load(std::span<const uint8_t>(data, size), "fuzz.pkl");
    for (const pickle::Value* value : pickle::reachable(root)) {
      try {
        visit(*value);
      } catch (const seqrec::Error&) {
      }
    }
  } catch (const seqrec::Error&) {
  }
  return 0;
}
