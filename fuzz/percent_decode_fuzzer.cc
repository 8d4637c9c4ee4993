// Feeds the bytes as the user-id part of a /users/{id} path to server::percent_decode
// (server/routes.h).
// A failure: any sanitizer report; an exception other than api::ApiError, or one that is not a
// 400 with a valid JSON error object; a decoded id longer than its text; text without '%'
// that does not decode to itself; a decoded id that, percent-encoded again, does not decode
// back to itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_common.h"
#include "server/json_io.h"
#include "server/routes.h"

using seqrec::fuzz::fail;
namespace api = seqrec::api;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string decoded;
  try {
    decoded = seqrec::server::percent_decode(text);
  } catch (const api::ApiError& e) {
    if (e.status() != 400) fail("percent_decode: ApiError status " + std::to_string(e.status()));
    if (text.find('%') == std::string_view::npos) fail("percent_decode refused text without a '%'");
    seqrec::fuzz::require_valid_json(api::write_error(e.code(), e.what()), "percent_decode's error object");
    return 0;
  }
  if (decoded.size() > text.size()) fail("percent_decode made the text longer");
  if (text.find('%') == std::string_view::npos && decoded != text) fail("text without '%' changed by percent_decode");

  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string encoded;
  for (unsigned char c : decoded) {
    encoded += '%';
    encoded += kHex[c >> 4];
    encoded += kHex[c & 15];
  }
  if (seqrec::server::percent_decode(encoded) != decoded) fail("percent-encoding the decoded id does not round-trip");
  return 0;
}
