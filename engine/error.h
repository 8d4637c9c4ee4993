// The one exception type of seqrec. Its message is a single line meant for the user:
// it names the file / field / value at fault and, where it applies, expected vs. found.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace seqrec {

// `text` with every byte that is not printable UTF-8 written as \xNN: control bytes (NUL
// included, which would otherwise end the message at what()), DEL, and bytes that are not
// valid UTF-8. Messages quote user text (ids, paths, field values); this keeps them one
// visible line that says exactly which bytes were sent.
inline std::string visible_text(std::string_view text) {
  auto sequence_length = [&](size_t i) -> size_t {  // 0: not the start of valid UTF-8
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    const unsigned char c = byte(i);
    if (c < 0x80) return 1;
    size_t n = 0;
    uint32_t code = 0;
    if (c >= 0xc2 && c <= 0xdf) n = 2, code = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) n = 3, code = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) n = 4, code = c & 0x07;
    else return 0;
    if (i + n > text.size()) return 0;
    for (size_t k = 1; k < n; ++k) {
      if ((byte(i + k) & 0xc0) != 0x80) return 0;
      code = (code << 6) | (byte(i + k) & 0x3f);
    }
    const bool overlong = (n == 3 && code < 0x800) || (n == 4 && code < 0x10000);
    const bool surrogate = code >= 0xd800 && code <= 0xdfff;
    return overlong || surrogate || code > 0x10ffff ? 0 : n;
  };
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t n = sequence_length(i);
    if (n == 0 || c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(visible_text(message)) {}
};

}  // namespace seqrec
