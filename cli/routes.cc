// seqrec routes: the HTTP API's route table, as the server dispatches it (server/routes.cc).
#include <cstdio>

#include "cli/commands.h"
#include "server/routes.h"

namespace seqrec::cli {

Action add_routes(CLI::App& app) {
  auto json = std::make_shared<bool>(false);
  app.add_flag("--json", *json, "One JSON object per line: method, path, access, summary");
  return [json] {
    for (const server::RouteInfo& route : server::route_table()) {
      if (*json)
        std::printf("{\"method\": \"%s\", \"path\": \"%s\", \"access\": \"%s\", \"summary\": %s}\n", route.method,
                    route.path, route.access, api::quote(route.summary).c_str());
      else
        std::printf("%-7s %-32s %-6s %s\n", route.method, route.path, route.access, route.summary);
    }
    return 0;
  };
}

}  // namespace seqrec::cli
