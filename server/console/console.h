// The web console (GET /, /console, /console/...): a few static files embedded in the binary
// at build time (server/console/assets/, see CMakeLists.txt). No CDN, no network: the page
// talks to this server's own JSON routes and /metrics.
#pragma once

#include <string_view>

namespace seqrec::server::console {

struct Asset {
  std::string_view body;
  std::string_view content_type;
};

// The asset served at `path` ("/" and "/console" are the page itself), or null.
const Asset* find(std::string_view path);

}  // namespace seqrec::server::console
