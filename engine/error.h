// The one exception type of seqrec. Its message is a single line meant for the user:
// it names the file / field / value at fault and, where it applies, expected vs. found.
#pragma once

#include <stdexcept>
#include <string>

namespace seqrec {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace seqrec
