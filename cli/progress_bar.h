// A progress bar on stderr for long commands (import, eval), drawn only when stderr is a
// terminal and at most five times a second.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

namespace seqrec::cli {

class ProgressBar {
 public:
  ProgressBar() : enabled_(isatty(STDERR_FILENO)) {}

  // "stage [#####     ]  42%  detail"; `force` draws even within the rate limit.
  void update(const char* stage, double fraction, const std::string& detail, bool force = false) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    constexpr int kWidth = 30;
    fraction = std::clamp(fraction, 0.0, 1.0);
    const int filled = static_cast<int>(fraction * kWidth);
    char line[256];
    std::snprintf(line, sizeof line, "\r%-8s [%s%s] %3d%%  %s", stage, std::string(filled, '#').c_str(),
                  std::string(kWidth - filled, ' ').c_str(), static_cast<int>(fraction * 100), detail.c_str());
    std::cerr << line << "\033[K" << std::flush;
    drawn_ = true;
  }

  // Erases the bar (before printing anything else).
  void clear() {
    if (drawn_) std::cerr << "\r\033[K" << std::flush;
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace seqrec::cli
